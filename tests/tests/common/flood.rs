//! A SYN flood from spoofed sources: Ethernet frames written on an `AF_PACKET` socket, so the
//! source addresses are anything we like while the frames still travel the real veth into
//! the balancer's tc ingress.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, bail};
use sticky_tests::Netns;

/// Where the frames go: the sender's interface (in the namespace the flood runs in) and the
/// MAC addresses of both ends.
pub struct Wire {
    pub ifindex: i32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Wire {
    /// `ns_if` in `ns` sends to its veth peer `peer_if` in `peer`.
    pub fn between(ns: &Netns, ns_if: &str, peer: &Netns, peer_if: &str) -> anyhow::Result<Self> {
        let ifindex = ns
            .run(|| {
                let name = std::ffi::CString::new(ns_if).expect("no NUL");
                // SAFETY: a valid C string.
                unsafe { libc::if_nametoindex(name.as_ptr()) }
            })
            .context("enter the flood namespace")?;
        if ifindex == 0 {
            bail!("no interface {ns_if} in {}", ns.name);
        }
        Ok(Self {
            ifindex: i32::try_from(ifindex)?,
            src_mac: mac(ns, ns_if)?,
            dst_mac: mac(peer, peer_if)?,
        })
    }
}

fn mac(ns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let json = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&json).context("ip -j link")?;
    let text = links[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC for {iface} in {json}"))?;
    let mut out = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC {text}");
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(out)
}

/// The `i`-th spoofed source: distinct for every `i` below 2^22, inside 100.64.0.0/10.
pub fn spoofed_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000 | (i & 0x003f_ffff))
}

/// One TCP SYN frame (valid IPv4 and TCP checksums) from `src:sport` to `dst:dport`.
pub fn syn_frame(wire: &Wire, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&wire.dst_mac);
    f.extend_from_slice(&wire.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let sum = checksum(&f[ip_start..], 0);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    let tcp_start = f.len();
    let seq = u32::from(src) ^ u32::from(sport).rotate_left(16);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    let mut pseudo = 0u32;
    for w in src.octets().chunks(2).chain(dst.octets().chunks(2)) {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += 6 + 20;
    let sum = checksum(&f[tcp_start..], pseudo);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum of `data`, starting from a partial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for w in data.chunks(2) {
        let hi = w[0];
        let lo = w.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` SYNs from distinct spoofed sources to `dst:dport`; must run inside the
/// namespace `wire` belongs to. Stops at `deadline` at the latest; returns frames sent.
pub fn syn_flood(
    wire: &Wire,
    dst: Ipv4Addr,
    dport: u16,
    count: u32,
    deadline: Duration,
) -> anyhow::Result<u32> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = wire.ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&wire.dst_mac);
    let started = std::time::Instant::now();
    let mut sent = 0;
    let mut result = Ok(());
    for i in 0..count {
        if started.elapsed() > deadline {
            break;
        }
        let frame = syn_frame(
            wire,
            spoofed_source(i),
            1024 + (i % 64_000) as u16,
            dst,
            dport,
        );
        // SAFETY: a valid buffer and address of the right length.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full transmit queue: give the receiver a moment, then carry on.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            result = Err(anyhow::anyhow!("sendto: {e}"));
            break;
        }
        sent += 1;
    }
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    result.map(|()| sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let wire = Wire {
            ifindex: 1,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
        };
        let f = syn_frame(
            &wire,
            spoofed_source(7),
            1234,
            Ipv4Addr::new(198, 18, 0, 100),
            80,
        );
        assert_eq!(f.len(), 54);
        assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum");
        let pseudo = 0x6440 + 0x0007 + 198 * 256 + 18 + 100 + 6 + 20;
        assert_eq!(checksum(&f[34..], pseudo), 0, "TCP checksum");
        assert_ne!(spoofed_source(1), spoofed_source(2));
    }
}
