//! `--announce-return PREFIX`: a network as `ip route` writes it (`0.0.0.0/0`, `198.18.0.0/15`,
//! `::/0`): no host bits set, so the route the kernel keeps is the one given.

use std::{fmt, net::IpAddr, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutePrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for RoutePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "announce-return '{0}' must be a network ADDR/LEN with no host bits set (e.g. 0.0.0.0/0, \
     ::/0, 198.18.0.0/15)"
)]
pub struct RoutePrefixError(pub String);

impl FromStr for RoutePrefix {
    type Err = RoutePrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RoutePrefixError(s.to_string());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let host_bits_clear = match addr {
            IpAddr::V4(a) if len <= 32 => {
                u32::from(a).checked_shl(u32::from(len)).unwrap_or(0) == 0
            }
            IpAddr::V6(a) if len <= 128 => {
                u128::from(a).checked_shl(u32::from(len)).unwrap_or(0) == 0
            }
            _ => false,
        };
        if !host_bits_clear {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_and_refuses_the_rest() {
        for good in [
            "0.0.0.0/0",
            "::/0",
            "198.18.0.0/15",
            "10.1.2.3/32",
            "fd00::/8",
        ] {
            let p: RoutePrefix = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(p.to_string(), good);
        }
        for bad in [
            "",
            "0.0.0.0",
            "10.1.2.3/24",
            "10.0.0.0/33",
            "::1/64",
            "::/129",
            "x/0",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<RoutePrefix>().is_err(), "{bad}");
        }
    }
}
