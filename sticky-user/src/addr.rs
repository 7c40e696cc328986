//! Endpoint syntax shared by flags and config files: `ADDR:PORT`, `[V6]:PORT`,
//! backends as `ADDR:PORT[@WEIGHT]`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
