//! Endpoint syntax shared by flags and config files: `ADDR:PORT`, `[V6]:PORT`,
//! backends as `ADDR:PORT[@WEIGHT]`, VIPs as `[tcp:|udp:]ADDR:PORT`.

use std::{fmt, net::SocketAddr, str::FromStr};

/// Largest weight a backend may have: keeps table builds quick and shares meaningful.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("'{input}' has no port: write ADDR:PORT (IPv6 as [ADDR]:PORT)")]
    MissingPort { input: String },
    #[error("'{input}' is not an address: write ADDR:PORT (IPv6 as [ADDR]:PORT)")]
    Invalid { input: String },
    #[error("'{input}': port 0 is not a port")]
    PortZero { input: String },
    #[error("'{input}': weight must be a whole number from 1 to {MAX_WEIGHT}")]
    Weight { input: String },
    #[error("'{input}': the protocol must be tcp: or udp: (none is tcp)")]
    Protocol { input: String },
}

/// Parses `ADDR:PORT`, telling a missing port apart from a bad address.
pub fn parse_endpoint(input: &str) -> Result<SocketAddr, AddrError> {
    let s = input.trim();
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => Err(AddrError::PortZero {
            input: input.to_string(),
        }),
        Ok(sa) => Ok(sa),
        Err(_)
            if s.parse::<std::net::IpAddr>().is_ok()
                || s.trim_matches(['[', ']'])
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok() =>
        {
            Err(AddrError::MissingPort {
                input: input.to_string(),
            })
        }
        Err(_) => Err(AddrError::Invalid {
            input: input.to_string(),
        }),
    }
}

/// A backend and its weight, as written on the command line or in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub weight: u32,
}

impl FromStr for BackendSpec {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (endpoint, weight) = match input.rsplit_once('@') {
            Some((e, w)) => {
                let weight = w
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| AddrError::Weight {
                        input: input.to_string(),
                    })?;
                (e, weight)
            }
            None => (input, 1),
        };
        Ok(Self {
            addr: parse_endpoint(endpoint)?,
            weight,
        })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.addr, self.weight)
    }
}

/// The transport protocol a VIP balances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

impl Transport {
    /// The IP protocol number the maps key on.
    pub fn number(self) -> u8 {
        match self {
            Transport::Tcp => sticky_common::maps::PROTO_TCP,
            Transport::Udp => sticky_common::maps::PROTO_UDP,
        }
    }
}

/// A VIP: `ADDR:PORT` (TCP), `tcp:ADDR:PORT` or `udp:ADDR:PORT`. Written back the same way,
/// TCP without its prefix, so status and logs read as they always did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VipAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl VipAddr {
    pub fn tcp(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::Tcp,
            addr,
        }
    }

    pub fn is_udp(&self) -> bool {
        self.transport == Transport::Udp
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
}

impl FromStr for VipAddr {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let (transport, endpoint) = if let Some(rest) = s.strip_prefix("udp:") {
            (Transport::Udp, rest)
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            (Transport::Tcp, rest)
        } else {
            // `sctp:…`, `UDP:…`: a protocol we do not know, not a bad address.
            if let Some((word, rest)) = s.split_once(':')
                && !word.is_empty()
                && word.chars().all(|c| c.is_ascii_alphabetic())
                && parse_endpoint(rest).is_ok()
            {
                return Err(AddrError::Protocol {
                    input: input.to_string(),
                });
            }
            (Transport::Tcp, s)
        };
        let addr = parse_endpoint(endpoint).map_err(|e| match e {
            AddrError::MissingPort { .. } => AddrError::MissingPort {
                input: input.to_string(),
            },
            AddrError::PortZero { .. } => AddrError::PortZero {
                input: input.to_string(),
            },
            _ => AddrError::Invalid {
                input: input.to_string(),
            },
        })?;
        Ok(Self { transport, addr })
    }
}

impl fmt::Display for VipAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "{}", self.addr),
            Transport::Udp => write!(f, "udp:{}", self.addr),
        }
    }
}

impl serde::Serialize for VipAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VipAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_forms() {
        let v = |s: &str| s.parse::<VipAddr>().unwrap();
        assert_eq!(
            v("10.0.0.1:80"),
            VipAddr::tcp("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(v("tcp:10.0.0.1:80"), v("10.0.0.1:80"));
        let udp = v("udp:[fd00::1]:443");
        assert_eq!((udp.transport, udp.addr.port()), (Transport::Udp, 443));
        assert_eq!(udp.to_string(), "udp:[fd00::1]:443");
        assert_eq!(v("tcp:10.0.0.1:80").to_string(), "10.0.0.1:80");
        for s in ["udp:10.0.0.1:53", "[::1]:80", "udp:[::1]:4433"] {
            assert_eq!(v(s).to_string().parse::<VipAddr>().unwrap(), v(s));
        }
    }

    #[test]
    fn vip_errors_are_specific() {
        let err = |s: &str| s.parse::<VipAddr>().unwrap_err();
        assert!(matches!(
            err("sctp:10.0.0.1:80"),
            AddrError::Protocol { .. }
        ));
        assert!(matches!(err("UDP:10.0.0.1:80"), AddrError::Protocol { .. }));
        assert!(matches!(err("udp:10.0.0.1"), AddrError::MissingPort { .. }));
        assert!(matches!(err("udp:10.0.0.1:0"), AddrError::PortZero { .. }));
        assert!(matches!(err("udp:"), AddrError::Invalid { .. }));
        assert!(matches!(
            err("udp:udp:10.0.0.1:53"),
            AddrError::Invalid { .. }
        ));
        assert!(matches!(err("fd00::1"), AddrError::MissingPort { .. }));
        assert!(matches!(err("localhost:80"), AddrError::Invalid { .. }));
    }

    #[test]
    fn backend_forms() {
        let b: BackendSpec = "10.0.0.1:8080".parse().unwrap();
        assert_eq!((b.addr.to_string(), b.weight), ("10.0.0.1:8080".into(), 1));
        let b: BackendSpec = "[fd00::2]:80@7".parse().unwrap();
        assert_eq!((b.addr.to_string(), b.weight), ("[fd00::2]:80".into(), 7));
    }

    #[test]
    fn backend_errors_are_specific() {
        let err = |s: &str| s.parse::<BackendSpec>().unwrap_err();
        assert!(matches!(err("10.0.0.1"), AddrError::MissingPort { .. }));
        assert!(matches!(err("fd00::1"), AddrError::MissingPort { .. }));
        assert!(matches!(err("10.0.0.1:80@0"), AddrError::Weight { .. }));
        assert!(matches!(err("10.0.0.1:80@-1"), AddrError::Weight { .. }));
        assert!(matches!(err("10.0.0.1:80@abc"), AddrError::Weight { .. }));
        assert!(matches!(err("10.0.0.1:80@1001"), AddrError::Weight { .. }));
        assert!(matches!(err("10.0.0.1:0"), AddrError::PortZero { .. }));
        assert!(matches!(err("nonsense:80"), AddrError::Invalid { .. }));
        assert!(matches!(err("10.0.0.1:99999"), AddrError::Invalid { .. }));
    }
}
