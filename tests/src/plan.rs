//! Addresses of the standard topology. IPv4 from the benchmarking range 198.18.0.0/15,
//! IPv6 from fd00::/8; they exist only inside the namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const VIP_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;

pub fn vip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100))
    }
}

pub fn lb_client_side(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
    }
}

/// The `i`-th client source address.
pub fn client(i: usize, v6: bool) -> IpAddr {
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x18,
            0,
            0,
            0,
            1,
            u16::from(hi),
            u16::from(lo) + 1,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 1 + hi, 1 + lo))
    }
}

/// Backend `k`'s address in its namespace, and the balancer's address facing it.
pub fn backend(k: usize, v6: bool) -> (IpAddr, IpAddr) {
    let k = k as u16;
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, k, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, k, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 19, k as u8, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 19, k as u8, 1)),
        )
    }
}
