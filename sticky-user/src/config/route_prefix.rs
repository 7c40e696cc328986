//! `--announce-return PREFIX`: a network as `ip route` writes it (`0.0.0.0/0`, `198.18.0.0/15`,
//! `::/0`), parsed as every network in a configuration is (`Cidr`), and refused when host bits
//! are set, so the route the kernel keeps is the one written.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::proxy::cidr::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoutePrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl RoutePrefix {
    /// The host route of `addr` (`/32`, `/128`).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, len }
    }
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
        let (written, _) = s.trim().split_once('/').ok_or_else(bad)?;
        let written: IpAddr = written.parse().map_err(|_| bad())?;
        let net: Cidr = s.parse().map_err(|_| bad())?;
        // Cidr clears host bits (and unmaps IPv4-mapped networks): a route must be as written.
        if net.addr() != written {
            return Err(bad());
        }
        Ok(Self {
            addr: net.addr(),
            len: net.prefix(),
        })
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
            "10.0.0.0/+8",
            "::1/64",
            "::/129",
            "::ffff:10.0.0.0/104",
            "x/0",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(bad.parse::<RoutePrefix>().is_err(), "{bad}");
        }
        assert_eq!(
            RoutePrefix::host("fd00::1".parse().unwrap()).to_string(),
            "fd00::1/128"
        );
    }
}
