//! Address ranges for `--trusted-proxies` and similar options.
//!
//! An IPv4 client reaching a dual-stack socket shows up as `::ffff:a.b.c.d`; both sides of
//! every comparison are therefore put into one 128-bit space (IPv4 as its IPv4-mapped form),
//! so `10.0.0.0/8` matches `::ffff:10.1.2.3` and `::ffff:10.0.0.0/104` matches `10.1.2.3`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What is wrong with a network written in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error(
        "{input:?} is not an IP address or network: write e.g. 10.0.0.0/8, fd00::/8 or 192.0.2.1"
    )]
    Address { input: String },
    #[error("{input:?} has a bad prefix length: use a whole number from 0 to {max}")]
    Prefix { input: String, max: u8 },
}

/// One IP network. Host bits are cleared and IPv4-mapped networks of prefix 96 or more are
/// stored as plain IPv4, so equal networks compare and print equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network holding `addr` with `prefix` leading bits; `None` if `prefix` is longer
    /// than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (bits, prefix) = match addr {
            IpAddr::V4(v4) if prefix <= 32 => (mapped_bits(v4), prefix + 96),
            IpAddr::V6(v6) if prefix <= 128 => (u128::from(v6), prefix),
            _ => return None,
        };
        Some(Self::from_bits(bits & mask(prefix), prefix))
    }

    /// A network of exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }

    /// The first address of the network.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The number of leading bits that are fixed (of 32 for IPv4, 128 for IPv6).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in this network, IPv4-mapped addresses counting as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, prefix) = self.bits();
        bits_of(ip) & mask(prefix) == net
    }

    /// Builds from the 128-bit form, demoting IPv4-mapped networks back to IPv4.
    fn from_bits(bits: u128, prefix: u8) -> Self {
        let v6 = Ipv6Addr::from(bits);
        match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => Self {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            },
            _ => Self {
                addr: IpAddr::V6(v6),
                prefix,
            },
        }
    }

    /// The network and prefix in the 128-bit space.
    fn bits(&self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(v4) => (mapped_bits(v4), self.prefix + 96),
            IpAddr::V6(v6) => (u128::from(v6), self.prefix),
        }
    }
}

fn mapped_bits(v4: Ipv4Addr) -> u128 {
    u128::from(v4.to_ipv6_mapped())
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => mapped_bits(v4),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The netmask of `prefix` leading ones (`prefix` at most 128).
fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address for a single host.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let address_error = || CidrError::Address {
            input: input.to_owned(),
        };
        let Some((addr, prefix)) = text.split_once('/') else {
            return text.parse().map(Self::host).map_err(|_| address_error());
        };
        let addr: IpAddr = addr.parse().map_err(|_| address_error())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_error = || CidrError::Prefix {
            input: input.to_owned(),
            max,
        };
        // `u8::from_str` accepts a sign ("+8"); a prefix is plain digits only.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(prefix_error());
        }
        let prefix: u8 = prefix.parse().map_err(|_| prefix_error())?;
        Self::new(addr, prefix).ok_or_else(prefix_error)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A set of networks, e.g. the proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl CidrList {
    /// Whether any network holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Cidr>> for CidrList {
    fn from(nets: Vec<Cidr>) -> Self {
        Self(nets)
    }
}

impl FromStr for CidrList {
    type Err = CidrError;

    /// Comma-separated networks; blanks around commas and empty elements (a trailing comma)
    /// are ignored, so an empty string is an empty list.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        input
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl Serialize for CidrList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CidrList {
    /// Either the command-line form (`"10.0.0.0/8, fd00::/8"`) or a list of networks, so a
    /// config file can use whichever reads better.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = CidrList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a comma-separated string or a list of IP networks")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<CidrList, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CidrList, A::Error> {
                let mut nets = Vec::new();
                while let Some(net) = seq.next_element::<Cidr>()? {
                    nets.push(net);
                }
                Ok(CidrList(nets))
            }
        }

        d.deserialize_any(ListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fuzz::XorShift;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_hosts() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
        assert_eq!(cidr(" 0.0.0.0/0 ").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
    }

    #[test]
    fn clears_host_bits() {
        assert_eq!(cidr("10.1.2.3/8"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("fd12:3456::1/8").to_string(), "fd00::/8");
        assert_eq!(cidr("10.1.2.3/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        assert_eq!(cidr("::ffff:10.0.0.0/104"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("::ffff:192.0.2.1"), cidr("192.0.2.1"));
        assert_eq!(cidr("::ffff:0.0.0.0/96").to_string(), "0.0.0.0/0");
        // Shorter than /96 the network reaches beyond the mapped range: stays IPv6.
        assert_eq!(cidr("::ffff:0.0.0.0/95").to_string(), "::fffe:0:0/95");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "10.0.0.0/",
            "/8",
            "10.0.0/8",
            "example.com",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        for (bad, max) in [
            ("10.0.0.0/33", 32),
            ("10.0.0.0/+8", 32),
            ("10.0.0.0/-1", 32),
            ("10.0.0.0/0008", 32),
            ("10.0.0.0/ 8", 32),
            ("fd00::/129", 128),
            ("fd00::/256", 128),
        ] {
            assert_eq!(
                bad.parse::<Cidr>(),
                Err(CidrError::Prefix {
                    input: bad.into(),
                    max
                })
            );
        }
        assert_eq!(
            "10.0.0.300/8".parse::<Cidr>(),
            Err(CidrError::Address {
                input: "10.0.0.300/8".into()
            })
        );
    }

    #[test]
    fn contains_ipv4_and_ipv6() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("fd00::1")));
        let net = cidr("fd00::/8");
        assert!(net.contains(ip("fd12::1")));
        assert!(!net.contains(ip("fe80::1")));
        assert!(!net.contains(ip("10.0.0.1")));
        assert!(cidr("192.0.2.1").contains(ip("192.0.2.1")));
        assert!(!cidr("192.0.2.1").contains(ip("192.0.2.2")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn contains_treats_mapped_as_ipv4_on_both_sides() {
        assert!(cidr("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!cidr("10.0.0.0/8").contains(ip("::ffff:11.1.2.3")));
        assert!(cidr("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
        assert!(Cidr::host(ip("::ffff:192.0.2.1")).contains(ip("192.0.2.1")));
        assert!(Cidr::host(ip("192.0.2.1")).contains(ip("::ffff:192.0.2.1")));
    }

    #[test]
    fn new_checks_the_prefix() {
        assert_eq!(Cidr::new(ip("10.0.0.0"), 33), None);
        assert_eq!(Cidr::new(ip("::"), 129), None);
        let net = Cidr::new(ip("10.9.9.9"), 16).unwrap();
        assert_eq!((net.addr(), net.prefix()), (ip("10.9.0.0"), 16));
    }

    #[test]
    fn lists() {
        let list: CidrList = " 10.0.0.0/8 ,fd00::/8,, 192.0.2.1 ,".parse().unwrap();
        assert_eq!(list.to_string(), "10.0.0.0/8,fd00::/8,192.0.2.1/32");
        assert!(list.contains(ip("10.2.3.4")));
        assert!(list.contains(ip("fd00::9")));
        assert!(list.contains(ip("::ffff:192.0.2.1")));
        assert!(!list.contains(ip("192.0.2.2")));
        let empty: CidrList = "".parse().unwrap();
        assert!(empty.is_empty() && !empty.contains(ip("10.0.0.1")));
        assert!("  ".parse::<CidrList>().unwrap().is_empty());
        assert!("10.0.0.0/8, nonsense".parse::<CidrList>().is_err());
    }

    #[test]
    fn deserializes_from_string_or_list() {
        let from_str: CidrList = serde_json::from_str(r#""10.0.0.0/8, fd00::/8""#).unwrap();
        let from_seq: CidrList = serde_json::from_str(r#"["10.0.0.0/8", "fd00::/8"]"#).unwrap();
        assert_eq!(from_str, from_seq);
        assert!(serde_json::from_str::<CidrList>(r#"["10.0.0.0/40"]"#).is_err());
        assert!(serde_json::from_str::<CidrList>("7").is_err());
        let one: Cidr = serde_json::from_str(r#""10.1.0.0/16""#).unwrap();
        assert_eq!(serde_json::to_string(&one).unwrap(), r#""10.1.0.0/16""#);
        #[derive(Deserialize)]
        struct Config {
            trusted: CidrList,
        }
        let config: Config = toml::from_str(r#"trusted = ["10.0.0.0/8"]"#).unwrap();
        assert!(config.trusted.contains(ip("10.0.0.1")));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0xc1d2);
        let seeds: &[&[u8]] = &[
            b"10.0.0.0/8",
            b"fd00::/8, 192.0.2.1",
            b"::ffff:10.0.0.0/104",
        ];
        for _ in 0..10_000 {
            let input = rng.input(seeds, b"0123456789abcdef.:/, f", 64);
            let text = String::from_utf8_lossy(&input);
            if let Ok(net) = text.parse::<Cidr>() {
                // Whatever parses prints as something that parses back to the same network.
                assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
                assert!(net.contains(net.addr()));
            }
            let _ = text.parse::<CidrList>();
        }
    }
}
