//! What DSR asks of the node's interfaces: their addresses (the default outer source) and
//! their driver.

use std::{
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::bail;

/// The first global address of `iface` in the family of `v4`: not loopback, link-local or
/// unspecified.
pub fn global_addr(iface: &str, v4: bool) -> anyhow::Result<Option<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() && found.is_none() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name from getifaddrs.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and its family says which sockaddr it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET if v4 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
                }
                libc::AF_INET6 if !v4 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        let local = match ip {
            IpAddr::V4(a) => a.is_loopback() || a.is_link_local() || a.is_unspecified(),
            IpAddr::V6(a) => a.is_loopback() || a.is_unicast_link_local() || a.is_unspecified(),
        };
        if !local {
            found = Some(ip);
        }
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(found)
}

/// The interface's driver name (`ethtool -i`), e.g. `veth`.
pub fn driver(iface: &str) -> anyhow::Result<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    /// `struct ethtool_drvinfo`: the command, then the driver name first.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 32 * 4 + 12 + 4 * 5],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if iface.len() >= libc::IFNAMSIZ {
        bail!("interface name {iface} too long");
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 32 * 4 + 12 + 4 * 5],
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `req` points at a live ethtool_drvinfo the kernel fills.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if rc != 0 {
        bail!("ETHTOOL_GDRVINFO on {iface}: {err}");
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_global_address() {
        assert_eq!(global_addr("lo", true).unwrap(), None);
        assert_eq!(global_addr("lo", false).unwrap(), None);
        assert_eq!(global_addr("no-such-if0", true).unwrap(), None);
    }

    #[test]
    fn drivers_are_named() {
        assert!(driver("no-such-if0").is_err());
        // Loopback answers GDRVINFO on some kernels and not others; when it does, it is not veth.
        if let Ok(d) = driver("lo") {
            assert_ne!(d, "veth");
        }
    }
}
