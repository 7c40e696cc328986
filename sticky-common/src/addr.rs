//! One address type for IPv4 and IPv6, so the data path has one code path.

/// An IPv6 address, or an IPv4 address in its IPv4-mapped form (`::ffff:a.b.c.d`).
///
/// The words hold the address bytes exactly as they appear on the wire (each `u32` is the
/// native-endian reading of four network-order bytes), so the kernel can copy them straight
/// out of a packet and userspace builds the same value with [`Addr16::from_bytes`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr16 {
    pub words: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<Addr16>() == 16);

/// The third word of an IPv4-mapped address, as it sits in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl Addr16 {
    /// From the 16 network-order bytes of an IPv6 address.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self {
            words: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// From an IPv4 address word as read from a packet (network-order bytes in memory).
    #[inline(always)]
    pub const fn from_v4_word(word: u32) -> Self {
        Self {
            words: [0, 0, V4_MAPPED_WORD, word],
        }
    }

    /// The 16 network-order bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        let [a, b, c, d] = self.words;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// `0.0.0.0` or `::`: as a backend address, "the address the client connected to" (the
    /// backend is a local port; only the port is translated).
    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        let [a, b, c, d] = self.words;
        a == 0 && b == 0 && d == 0 && (c == 0 || c == V4_MAPPED_WORD)
    }

    /// Whether this is an IPv4-mapped address.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == V4_MAPPED_WORD
    }

    pub fn from_ip(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => Self::from_bytes(v4.to_ipv6_mapped().octets()),
            core::net::IpAddr::V6(v6) => Self::from_bytes(v6.octets()),
        }
    }

    /// Back to an `IpAddr`, IPv4 for mapped addresses.
    pub fn to_ip(self) -> core::net::IpAddr {
        let v6 = core::net::Ipv6Addr::from(self.to_bytes());
        match v6.to_ipv4_mapped() {
            Some(v4) => core::net::IpAddr::V4(v4),
            None => core::net::IpAddr::V6(v6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::IpAddr;

    #[test]
    fn round_trips_v4_and_v6() {
        for s in [
            "198.18.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "fd00::1",
            "::1",
            "::",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let a = Addr16::from_ip(ip);
            assert_eq!(a.to_ip(), ip, "{s}");
            assert_eq!(a.is_v4(), ip.is_ipv4(), "{s}");
        }
    }

    #[test]
    fn v4_word_matches_mapped_form() {
        let ip: core::net::Ipv4Addr = "10.1.2.3".parse().unwrap();
        let word = u32::from_ne_bytes(ip.octets());
        assert_eq!(Addr16::from_v4_word(word), Addr16::from_ip(IpAddr::V4(ip)));
    }
}
