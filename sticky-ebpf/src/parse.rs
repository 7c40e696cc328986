//! Header parsing with direct packet access: TCP and UDP over IPv4 and IPv6. Respects IHL and walks the IPv6 extension
//! headers that carry nothing we must honour (hop-by-hop, destination options: BIG TCP on
//! `lo` adds a hop-by-hop header to every segment). Anything else is reported, not guessed.

use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use sticky_common::{
    Addr16,
    maps::{PROTO_TCP, PROTO_UDP},
};

use crate::frame::Frame;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up (bounded loop for the verifier).
const IPV6_MAX_EXT: usize = 4;
/// IPv4 more-fragments flag and fragment offset, host order.
pub const IPV4_FRAG_MASK: u16 = 0x3fff;

/// A TCP segment's or UDP datagram's addresses, ports and where its headers sit.
pub struct Packet {
    pub is_v6: bool,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    pub src: Addr16,
    pub dst: Addr16,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP SYN without ACK: a connection attempt, possibly reusing a closed connection's
    /// ports. Never set for UDP.
    pub syn: bool,
    /// TCP RST: a reset (from a backend: it refused or dropped the connection).
    pub rst: bool,
}

impl Packet {
    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == PROTO_UDP
    }
}

pub enum Parsed {
    /// A TCP segment or UDP datagram.
    Transport(Packet),
    /// Valid, but neither TCP nor UDP over IP.
    Other,
    /// Truncated or inconsistent headers.
    Malformed,
    /// Fragments and IPv6 routing headers: valid, but we do not rewrite them.
    Unhandled,
}

/// A pointer to a `T` at `off`, or `None` when the linear data is shorter.
#[inline(always)]
fn ptr_at<T, F: Frame>(ctx: &F, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads a header: one bounds check, then plain field loads.
#[inline(always)]
pub fn header<T: Copy, F: Frame>(ctx: &F, off: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked the bounds; packet data has no alignment guarantee.
    ptr_at::<T, F>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn word(b: [u8; 4]) -> u32 {
    u32::from_ne_bytes(b)
}

#[inline(always)]
fn addr(b: &[u8; 16]) -> Addr16 {
    Addr16 {
        words: [
            word([b[0], b[1], b[2], b[3]]),
            word([b[4], b[5], b[6], b[7]]),
            word([b[8], b[9], b[10], b[11]]),
            word([b[12], b[13], b[14], b[15]]),
        ],
    }
}

#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Parsed {
    let Some(eth) = header::<EthHdr, F>(ctx, 0) else {
        return Parsed::Malformed;
    };
    match u16::from_be(eth.ether_type) {
        ETH_P_IP => parse_v4(ctx, EthHdr::LEN),
        ETH_P_IPV6 => parse_v6(ctx, EthHdr::LEN),
        _ => Parsed::Other,
    }
}

#[inline(always)]
fn parse_v4<F: Frame>(ctx: &F, l3: usize) -> Parsed {
    let Some(ip) = header::<Ipv4Hdr, F>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Malformed;
    }
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    let skb_len = ctx.len() as usize;
    // tot_len 0 is IPv4 BIG TCP (a GSO packet over 64 KiB); otherwise it must fit the skb.
    let big_tcp = tot_len == 0 && skb_len > usize::from(u16::MAX);
    if !big_tcp && (tot_len < ihl || l3 + tot_len > skb_len) {
        return Parsed::Malformed;
    }
    if u16::from_be_bytes(ip.frags) & IPV4_FRAG_MASK != 0 {
        return Parsed::Unhandled;
    }
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return Parsed::Other;
    }
    let end = if big_tcp { skb_len } else { l3 + tot_len };
    parse_l4(
        ctx,
        ip.proto,
        false,
        l3,
        l3 + ihl,
        end,
        Addr16::from_v4_word(word(ip.src_addr)),
        Addr16::from_v4_word(word(ip.dst_addr)),
    )
}

#[inline(always)]
fn parse_v6<F: Frame>(ctx: &F, l3: usize) -> Parsed {
    let Some(ip) = header::<Ipv6Hdr, F>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload_len = usize::from(u16::from_be_bytes(ip.payload_len));
    // Payload length 0 is a jumbogram (BIG TCP); the hop-by-hop header carries the length.
    let end = if payload_len == 0 {
        ctx.len() as usize
    } else {
        l3 + Ipv6Hdr::LEN + payload_len
    };
    if end > ctx.len() as usize {
        return Parsed::Malformed;
    }
    let src = addr(&ip.src_addr);
    let dst = addr(&ip.dst_addr);
    // IPv4-mapped addresses never appear on the wire (RFC 4291 2.5.5.2); accepting them would
    // let an IPv6 packet share the map keys of an IPv4 client.
    if src.is_v4() || dst.is_v4() {
        return Parsed::Malformed;
    }
    let mut next = ip.next_hdr;
    let mut off = l3 + Ipv6Hdr::LEN;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            PROTO_TCP | PROTO_UDP => return parse_l4(ctx, next, true, l3, off, end, src, dst),
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                let Some(ext) = header::<[u8; 2], F>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_ROUTING | IPV6_FRAGMENT => return Parsed::Unhandled,
            _ => return Parsed::Other,
        }
    }
    if next == PROTO_TCP || next == PROTO_UDP {
        return parse_l4(ctx, next, true, l3, off, end, src, dst);
    }
    Parsed::Unhandled
}

/// What a transport header says beyond the addresses: ports (network order) and, for TCP,
/// the flags the data path acts on.
struct Ports {
    sport_be: u16,
    dport_be: u16,
    syn: bool,
    rst: bool,
}

/// `end`: where the IP packet ends (its length field; the skb's end for BIG TCP).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn parse_l4<F: Frame>(
    ctx: &F,
    proto: u8,
    is_v6: bool,
    l3_off: usize,
    l4_off: usize,
    end: usize,
    src: Addr16,
    dst: Addr16,
) -> Parsed {
    // Bounds the offset for the verifier: IPv4 options and IPv6 extension headers can only
    // push the transport header this far.
    if l4_off > 512 {
        return Parsed::Malformed;
    }
    let ports = if proto == PROTO_UDP {
        udp_ports(ctx, is_v6, l4_off, end)
    } else {
        tcp_ports(ctx, l4_off, end)
    };
    let Some(ports) = ports else {
        return Parsed::Malformed;
    };
    Parsed::Transport(Packet {
        is_v6,
        proto,
        l3_off,
        l4_off,
        src,
        dst,
        sport_be: ports.sport_be,
        dport_be: ports.dport_be,
        syn: ports.syn,
        rst: ports.rst,
    })
}

/// The UDP length must cover the header and lie inside the IP packet (a datagram claiming
/// more than it carries is one no receiver accepts). Zero is an IPv6 jumbogram's length.
/// `None`: malformed.
#[inline(always)]
fn udp_ports<F: Frame>(ctx: &F, is_v6: bool, l4_off: usize, end: usize) -> Option<Ports> {
    if l4_off + UdpHdr::LEN > end {
        return None;
    }
    let udp = header::<UdpHdr, F>(ctx, l4_off)?;
    // SAFETY: `UdpHdr` is plain bytes: source, destination, length, checksum.
    let raw: [u8; UdpHdr::LEN] = unsafe { core::mem::transmute(udp) };
    let len = usize::from(u16::from_be_bytes([raw[4], raw[5]]));
    let jumbo = is_v6 && len == 0 && end - l4_off > usize::from(u16::MAX);
    if !jumbo && (len < UdpHdr::LEN || l4_off + len > end) {
        return None;
    }
    Some(Ports {
        sport_be: u16::from_ne_bytes([raw[0], raw[1]]),
        dport_be: u16::from_ne_bytes([raw[2], raw[3]]),
        syn: false,
        rst: false,
    })
}

/// The TCP header, options included, must lie inside the IP packet: bytes past it are
/// Ethernet padding or garbage, and a segment whose data offset overruns it is one no
/// receiver accepts. `None`: malformed.
#[inline(always)]
fn tcp_ports<F: Frame>(ctx: &F, l4_off: usize, end: usize) -> Option<Ports> {
    if l4_off + TcpHdr::LEN > end {
        return None;
    }
    let tcp = header::<TcpHdr, F>(ctx, l4_off)?;
    // SAFETY: `TcpHdr` is plain bytes; the data offset is the high nibble of byte 12.
    let raw: [u8; TcpHdr::LEN] = unsafe { core::mem::transmute(tcp) };
    let data_offset = usize::from(raw[12] >> 4) * 4;
    if data_offset < TcpHdr::LEN || l4_off + data_offset > end {
        return None;
    }
    const RST: u8 = 0x04;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    Some(Ports {
        sport_be: u16::from_ne_bytes(tcp.source),
        dport_be: u16::from_ne_bytes(tcp.dest),
        syn: raw[13] & (SYN | ACK) == SYN,
        rst: raw[13] & RST != 0,
    })
}

/// Word-wise: a derived `==` on arrays may become a `bcmp` call the verifier rejects.
#[inline(always)]
pub fn same_addr(a: &Addr16, b: &Addr16) -> bool {
    let [a0, a1, a2, a3] = a.words;
    let [b0, b1, b2, b3] = b.words;
    a0 == b0 && a1 == b1 && a2 == b2 && a3 == b3
}
