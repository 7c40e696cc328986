//! Packets for BPF_PROG_TEST_RUN: a builder for Ethernet + IPv4/IPv6 + TCP/UDP/ICMP frames,
//! an independent parser that says what the data path must make of any frame, and the checks
//! on what came back (byte-identical, or a NAT rewrite with its checksums carried over: TCP's,
//! and UDP's with RFC 768's zero rules).

use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
};

use sticky_common::maps::PROTO_TCP;

// ---------------------------------------------------------------------------------------------
// Output checks
// ---------------------------------------------------------------------------------------------

pub fn unchanged(input: &[u8], out: &[u8]) -> Result<(), String> {
    if out.len() != input.len() {
        return Err(format!(
            "output is {} bytes, input {}",
            out.len(),
            input.len()
        ));
    }
    match input.iter().zip(out).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!(
            "output differs from input at byte {i} ({:#04x} -> {:#04x}); {}",
            input[i],
            out[i],
            Layout::parse(out).map_or("not a TCP segment or UDP datagram".into(), |l| l.describe())
        )),
    }
}

/// A rewrite of a valid packet: the ends are `src` and `dst`, the checksums valid, and only
/// the NAT fields and checksums differ from the input. (A UDP checksum of zero is taken as
/// input whatever the family: IPv4's "no checksum", or IPv6's forbidden zero, which
/// `nat_rewrite` wants kept as it came.)
pub fn rewritten(input: &[u8], out: &[u8], src: SocketAddr, dst: SocketAddr) -> Result<(), String> {
    let before =
        Layout::parse(input).ok_or("input is not a TCP segment or UDP datagram (bad fixture)")?;
    if !before.no_udp_checksum(input) {
        before
            .verify_checksums(input)
            .map_err(|e| format!("bad fixture: input {e}"))?;
    }
    let after = nat_rewrite(input, out, &before)?;
    if after.src != src || after.dst != dst {
        return Err(format!(
            "got {}, want {src} -> {dst} (input {})",
            after.describe(),
            before.describe()
        ));
    }
    Ok(())
}

/// Checks that `out` is a NAT rewrite of `input` (laid out as `before`) and returns its
/// layout: same length; no byte changed but an end's address and port (both, if both ends
/// changed) and the checksums; and each checksum's error carried over. An incremental update
/// (RFC 1624, what `l3/l4_csum_replace` do) keeps the ones'-complement sum over the header,
/// checksum included, exactly as it was: a valid checksum stays valid, and one that was wrong
/// on input (the programs never verify checksums) stays wrong by the same amount. A missed or
/// wrong fix, a pseudo-header update forgotten, a recomputation from scratch all change it.
///
/// UDP (RFC 768) adds two rules: a checksum field of zero on input (IPv4's "none"; in IPv6 a
/// forbidden value) comes out exactly zero, whatever else changed; and a checksum field is
/// never written as zero otherwise (a sum that comes out zero is sent as 0xffff, which the
/// modulo-0xffff comparison of the sums accepts).
pub fn nat_rewrite(input: &[u8], out: &[u8], before: &Layout) -> Result<Layout, String> {
    if out.len() != input.len() {
        return Err(format!(
            "output is {} bytes, input {}",
            out.len(),
            input.len()
        ));
    }
    let after = before.reread(out);
    let mut may_change: Vec<Range<usize>> = after.checksum_ranges();
    if before.src != after.src {
        may_change.extend([after.src_addr_range(), after.l4..after.l4 + 2]);
    }
    if before.dst != after.dst {
        may_change.extend([after.dst_addr_range(), after.l4 + 2..after.l4 + 4]);
    }
    for (i, (a, b)) in input.iter().zip(out).enumerate() {
        if a != b && !may_change.iter().any(|r| r.contains(&i)) {
            return Err(format!(
                "byte {i} changed ({a:#04x} -> {b:#04x}) outside the NAT fields"
            ));
        }
    }
    if !after.v6 {
        let (was, now) = (before.ip_sum(input), after.ip_sum(out));
        if !same_sum(was, now) {
            return Err(format!(
                "IPv4 header checksum {:#06x}: header sums to {now:#06x}, the input's to \
                 {was:#06x} (0xffff is valid)",
                be16(out, after.l3 + 10).unwrap_or(0)
            ));
        }
    }
    let name = after.l4_name();
    let field = be16(out, after.csum_off()).unwrap_or(0);
    if before.no_udp_checksum(input) {
        // RFC 768: zero is "no checksum" (IPv4); IPv6 forbids it, and a rewrite must not make
        // such a datagram look checked either. Incremental updates leave it alone.
        if field != 0 {
            return Err(format!(
                "UDP checksum: the input's was 0 (none), the output's is {field:#06x}: a \
                 datagram without a checksum must keep none"
            ));
        }
        return Ok(after);
    }
    if after.is_udp() && field == 0 {
        return Err(format!(
            "UDP checksum written as 0x0000, which means \"no checksum\": a computed zero is \
             sent as 0xffff (RFC 768); the input's was {:#06x}",
            be16(input, before.csum_off()).unwrap_or(0)
        ));
    }
    let (was, now) = (before.l4_sum(input), after.l4_sum(out));
    if !same_sum(was, now) {
        return Err(format!(
            "{name} checksum {field:#06x}: {} sums to {now:#06x}, the input's to {was:#06x} \
             (0xffff is valid; recomputed from scratch {:#06x})",
            if after.is_udp() {
                "datagram"
            } else {
                "segment"
            },
            after.recomputed(out)
        ));
    }
    Ok(after)
}

/// Ones'-complement sums are equal modulo 0xffff: 0x0000 and 0xffff are both zero.
fn same_sum(a: u16, b: u16) -> bool {
    let norm = |x: u16| if x == 0 { 0xffff } else { x };
    norm(a) == norm(b)
}

// ---------------------------------------------------------------------------------------------
// What a frame is: the data path's parsing rules, written out independently
// ---------------------------------------------------------------------------------------------

/// What the programs must make of a frame. The rules are `sticky-ebpf/src/parse.rs`'s, stated
/// here on their own so the fuzzer and the fixtures can tell which frames are TCP segments or
/// UDP datagrams the data path may rewrite (everything else must come back byte-identical):
/// - IPv4: version 4, IHL ≥ 5, IHL ≤ total length ≤ frame (Ethernet padding after it is
///   fine); total length 0 only as BIG TCP (frames over 64 KiB, which BPF_PROG_TEST_RUN
///   cannot build); no MF flag or offset; protocol TCP or UDP.
/// - IPv6: version 6; payload length ≤ frame, or 0 (a jumbogram: the packet runs to the end
///   of the frame, as BIG TCP on `lo`); neither address IPv4-mapped; up to 4 hop-by-hop or
///   destination-options headers walked, then TCP or UDP (a routing or fragment header, or a
///   longer chain: unhandled; any other next header: other).
/// - Either transport: its header starts within the first 512 bytes of the frame.
/// - TCP: its 20-byte header and its data offset (≥ 5 words) inside the IP packet.
/// - UDP: its 8-byte header inside the IP packet; its length field ≥ 8 and not past the IP
///   packet's end (bytes between the two are not the datagram's). The one exception, an IPv6
///   jumbogram's UDP length 0 over more than 65535 bytes, cannot be built here. A datagram
///   has no flags: never a SYN.
#[derive(Debug)]
pub enum Shape {
    /// A TCP segment or UDP datagram (`Layout::proto`).
    Transport(Layout),
    /// Another ethertype or protocol: not ours.
    Other,
    /// Truncated or inconsistent headers.
    Malformed,
    /// Valid, but not rewritten: fragments, IPv6 routing and fragment headers, chains longer
    /// than the walk.
    Unhandled,
}

/// IPv6 extension headers walked before giving up, as the program's bounded loop.
pub const IPV6_MAX_EXT: usize = 4;
/// The program parses no TCP or UDP header that starts later than this (a verifier bound).
pub const MAX_L4_OFF: usize = 512;

pub fn classify(p: &[u8]) -> Shape {
    match be16(p, 12) {
        Some(ETH_P_IP) => classify_v4(p),
        Some(ETH_P_IPV6) => classify_v6(p),
        Some(_) => Shape::Other,
        None => Shape::Malformed,
    }
}

fn classify_v4(p: &[u8]) -> Shape {
    let l3 = ETH_LEN;
    let Some(h) = p.get(l3..l3 + 20) else {
        return Shape::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Shape::Malformed;
    }
    let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let big_tcp = tot == 0 && p.len() > usize::from(u16::MAX);
    let end = if big_tcp { p.len() } else { l3 + tot };
    if !big_tcp && (tot < ihl || end > p.len()) {
        return Shape::Malformed;
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Shape::Unhandled;
    }
    if h[9] != PROTO_TCP && h[9] != PROTO_UDP {
        return Shape::Other;
    }
    let src: [u8; 4] = h[12..16].try_into().expect("4 bytes");
    let dst: [u8; 4] = h[16..20].try_into().expect("4 bytes");
    let ends = Ends {
        v6: false,
        l3,
        src: src.into(),
        dst: dst.into(),
    };
    classify_l4(p, h[9], &ends, l3 + ihl, end)
}

fn classify_v6(p: &[u8]) -> Shape {
    let l3 = ETH_LEN;
    let Some(h) = p.get(l3..l3 + 40) else {
        return Shape::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Shape::Malformed;
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let end = if payload_len == 0 {
        p.len()
    } else {
        l3 + 40 + payload_len
    };
    if end > p.len() {
        return Shape::Malformed;
    }
    let src: [u8; 16] = h[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = h[24..40].try_into().expect("16 bytes");
    let mapped = |a: &[u8; 16]| a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
    if mapped(&src) || mapped(&dst) {
        return Shape::Malformed;
    }
    let ends = Ends {
        v6: true,
        l3,
        src: src.into(),
        dst: dst.into(),
    };
    let mut next = h[6];
    let mut off = l3 + 40;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            PROTO_TCP | PROTO_UDP => return classify_l4(p, next, &ends, off, end),
            EXT_HOP_BY_HOP | EXT_DEST_OPTS => {
                let Some(ext) = p.get(off..off + 2) else {
                    return Shape::Malformed;
                };
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            EXT_ROUTING | EXT_FRAGMENT => return Shape::Unhandled,
            _ => return Shape::Other,
        }
    }
    if next == PROTO_TCP || next == PROTO_UDP {
        return classify_l4(p, next, &ends, off, end);
    }
    Shape::Unhandled
}

/// The IP header's part of a layout.
struct Ends {
    v6: bool,
    l3: usize,
    src: IpAddr,
    dst: IpAddr,
}

/// `end`: where the IP packet ends.
fn classify_l4(p: &[u8], proto: u8, ip: &Ends, l4: usize, end: usize) -> Shape {
    if l4 > MAX_L4_OFF {
        return Shape::Malformed;
    }
    if proto == PROTO_UDP {
        classify_udp(p, ip, l4, end)
    } else {
        classify_tcp(p, ip, l4, end)
    }
}

fn classify_tcp(p: &[u8], ip: &Ends, l4: usize, end: usize) -> Shape {
    if l4 + 20 > end {
        return Shape::Malformed;
    }
    let data_offset = usize::from(p[l4 + 12] >> 4) * 4;
    if data_offset < 20 || l4 + data_offset > end {
        return Shape::Malformed;
    }
    Shape::Transport(Layout::at(p, PROTO_TCP, ip, l4, end))
}

fn classify_udp(p: &[u8], ip: &Ends, l4: usize, end: usize) -> Shape {
    if l4 + UDP_HLEN > end {
        return Shape::Malformed;
    }
    let len = usize::from(u16::from_be_bytes([p[l4 + 4], p[l4 + 5]]));
    let jumbo = ip.v6 && len == 0 && end - l4 > usize::from(u16::MAX);
    if jumbo {
        return Shape::Transport(Layout::at(p, PROTO_UDP, ip, l4, end));
    }
    if len < UDP_HLEN || l4 + len > end {
        return Shape::Malformed;
    }
    Shape::Transport(Layout::at(p, PROTO_UDP, ip, l4, l4 + len))
}

/// Where a TCP segment's or UDP datagram's fields sit (see `classify`).
#[derive(Clone, Debug)]
pub struct Layout {
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    pub v6: bool,
    pub l3: usize,
    pub l4: usize,
    /// End of the TCP segment (IPv4 total length / IPv6 payload length; trailing Ethernet
    /// padding excluded), or of the UDP datagram (its length field: what its checksum covers).
    pub end: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP flags; 0 for UDP.
    pub flags: u8,
}

impl Layout {
    pub fn parse(p: &[u8]) -> Option<Self> {
        match classify(p) {
            Shape::Transport(l) => Some(l),
            _ => None,
        }
    }

    fn at(p: &[u8], proto: u8, ip: &Ends, l4: usize, end: usize) -> Self {
        let port = |off: usize| u16::from_be_bytes([p[off], p[off + 1]]);
        Layout {
            proto,
            v6: ip.v6,
            l3: ip.l3,
            l4,
            end,
            src: SocketAddr::new(ip.src, port(l4)),
            dst: SocketAddr::new(ip.dst, port(l4 + 2)),
            flags: if proto == PROTO_TCP { p[l4 + 13] } else { 0 },
        }
    }

    pub fn is_udp(&self) -> bool {
        self.proto == PROTO_UDP
    }

    /// "TCP" or "UDP".
    pub fn l4_name(&self) -> &'static str {
        if self.is_udp() { "UDP" } else { "TCP" }
    }

    /// TCP SYN without ACK: a connection attempt. A UDP datagram never is one.
    pub fn syn(&self) -> bool {
        self.proto == PROTO_TCP && self.flags & (SYN | ACK) == SYN
    }

    /// Where the transport checksum sits: TCP at 16, UDP at 6.
    pub fn csum_off(&self) -> usize {
        self.l4 + if self.is_udp() { 6 } else { 16 }
    }

    /// A UDP datagram whose checksum field is zero: none (IPv4), or IPv6's forbidden zero.
    pub fn no_udp_checksum(&self, p: &[u8]) -> bool {
        self.is_udp() && be16(p, self.csum_off()) == Some(0)
    }

    /// The same layout with the addresses and ports `p` holds at its offsets.
    fn reread(&self, p: &[u8]) -> Self {
        let ip = |r: Range<usize>| -> IpAddr {
            if self.v6 {
                <[u8; 16]>::try_from(&p[r]).expect("16 bytes").into()
            } else {
                <[u8; 4]>::try_from(&p[r]).expect("4 bytes").into()
            }
        };
        let port = |off: usize| u16::from_be_bytes([p[off], p[off + 1]]);
        Layout {
            src: SocketAddr::new(ip(self.src_addr_range()), port(self.l4)),
            dst: SocketAddr::new(ip(self.dst_addr_range()), port(self.l4 + 2)),
            flags: if self.is_udp() { 0 } else { p[self.l4 + 13] },
            ..self.clone()
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {} -> {}", self.l4_name(), self.src, self.dst)
    }

    pub fn src_addr_range(&self) -> Range<usize> {
        if self.v6 {
            self.l3 + 8..self.l3 + 24
        } else {
            self.l3 + 12..self.l3 + 16
        }
    }

    pub fn dst_addr_range(&self) -> Range<usize> {
        if self.v6 {
            self.l3 + 24..self.l3 + 40
        } else {
            self.l3 + 16..self.l3 + 20
        }
    }

    pub fn checksum_ranges(&self) -> Vec<Range<usize>> {
        let l4 = self.csum_off()..self.csum_off() + 2;
        if self.v6 {
            Vec::from([l4])
        } else {
            Vec::from([l4, self.l3 + 10..self.l3 + 12])
        }
    }

    fn pseudo_header(&self) -> Vec<u8> {
        pseudo_header(self.src.ip(), self.dst.ip(), self.proto, self.end - self.l4)
    }

    /// The IPv4 header's ones'-complement sum, checksum included (0xffff when valid).
    fn ip_sum(&self, p: &[u8]) -> u16 {
        ones_sum(&[&p[self.l3..self.l4]])
    }

    /// The segment's or datagram's sum over the pseudo-header, checksum included (0xffff
    /// when valid).
    fn l4_sum(&self, p: &[u8]) -> u16 {
        ones_sum(&[&self.pseudo_header(), &p[self.l4..self.end]])
    }

    /// The transport checksum `p` should carry, computed from scratch (a UDP zero as 0xffff).
    pub fn recomputed(&self, p: &[u8]) -> u16 {
        let mut zeroed = p[self.l4..self.end].to_vec();
        let off = self.csum_off() - self.l4;
        zeroed[off..off + 2].fill(0);
        match checksum(&[&self.pseudo_header(), &zeroed]) {
            0 if self.is_udp() => 0xffff,
            sum => sum,
        }
    }

    /// A header verifies when its ones'-complement sum, checksum field included, is all ones
    /// (either representation of zero in the field passes, as RFC 1624 allows). A UDP checksum
    /// of zero is "none" in IPv4 and passes; IPv6 forbids it.
    pub fn verify_checksums(&self, p: &[u8]) -> Result<(), String> {
        if !self.v6 && self.ip_sum(p) != 0xffff {
            let mut zeroed = p[self.l3..self.l4].to_vec();
            zeroed[10..12].fill(0);
            return Err(format!(
                "IPv4 header checksum {:#06x}, recomputed {:#06x}",
                be16(p, self.l3 + 10).unwrap_or(0),
                checksum(&[&zeroed])
            ));
        }
        if self.no_udp_checksum(p) {
            if self.v6 {
                return Err("IPv6 UDP checksum 0, which IPv6 forbids".into());
            }
            return Ok(());
        }
        if self.l4_sum(p) != 0xffff {
            return Err(format!(
                "{} checksum {:#06x}, recomputed {:#06x}",
                self.l4_name(),
                be16(p, self.csum_off()).unwrap_or(0),
                self.recomputed(p)
            ));
        }
        Ok(())
    }
}

pub fn be16(p: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(off..off + 2)?.try_into().ok()?))
}

/// The folded 16-bit ones'-complement sum of the parts laid end to end (every part but the
/// last has even length).
pub fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut acc: u64 = 0;
    for part in parts {
        for c in part.chunks(2) {
            acc += u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

pub fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

pub fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, proto]);
            p.extend(u16::try_from(len).unwrap().to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend(u32::try_from(len).unwrap().to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => panic!("pseudo-header over mixed families {src} / {dst}"),
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Packet builder
// ---------------------------------------------------------------------------------------------

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
/// The UDP header: ports, length, checksum.
pub const UDP_HLEN: usize = 8;
pub const PROTO_ICMPV6: u8 = 58;
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;
pub const NO_NEXT_HEADER: u8 = 59;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// IPv4 flags/offset field values.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

pub const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: sticky\r\n\r\n";

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
    Icmp,
}

#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
    Fragment,
    /// A hop-by-hop header with a jumbo payload option; the IPv6 payload length becomes 0.
    Jumbo,
}

impl Ext {
    pub fn kind(self) -> u8 {
        match self {
            Ext::HopByHop | Ext::Jumbo => EXT_HOP_BY_HOP,
            Ext::DestOpts => EXT_DEST_OPTS,
            Ext::Routing => EXT_ROUTING,
            Ext::Fragment => EXT_FRAGMENT,
        }
    }

    /// 8 bytes: next header, then the body (`jumbo_len` only for `Jumbo`).
    pub fn bytes(self, next: u8, jumbo_len: u32) -> [u8; 8] {
        match self {
            // Hdr Ext Len 0 (8 bytes), one PadN option filling the rest.
            Ext::HopByHop | Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            // Segment routing type 4 with no segments left.
            Ext::Routing => [next, 0, 4, 0, 0, 0, 0, 0],
            // Offset 0, M clear (an atomic fragment), identification 0x01020304.
            Ext::Fragment => [next, 0, 0, 0, 1, 2, 3, 4],
            Ext::Jumbo => {
                let [a, b, c, d] = jumbo_len.to_be_bytes();
                [next, 0, 0xc2, 4, a, b, c, d]
            }
        }
    }
}

/// Ethernet + IPv4/IPv6 + TCP/UDP/ICMP with correct lengths and checksums.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 option bytes (NOPs ending in EOL), a multiple of 4 up to 40.
    pub ip_options: usize,
    /// IPv4 flags and fragment offset.
    pub frag: u16,
    pub ext: Vec<Ext>,
    /// TCP data offset in 32-bit words, when not the true header length.
    pub data_offset: Option<u8>,
    /// Minimum frame length: zero bytes after the IP packet, as Ethernet padding.
    pub pad_to: usize,
    /// UDP length field, when not the true datagram length (the checksum covers what it
    /// claims, as far as there are bytes).
    pub udp_len: Option<u16>,
    /// Transport checksum field as given instead of computed (UDP 0: no checksum).
    pub l4_checksum: Option<u16>,
}

impl Pkt {
    pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Self {
        Pkt {
            src,
            dst,
            l4: L4::Tcp { flags },
            payload: Vec::new(),
            ip_options: 0,
            frag: 0,
            ext: Vec::new(),
            data_offset: None,
            pad_to: 0,
            udp_len: None,
            l4_checksum: None,
        }
    }

    /// A UDP datagram, no payload.
    pub fn datagram(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::tcp(src, dst, 0).udp()
    }

    pub fn syn(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::tcp(src, dst, SYN)
    }

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    pub fn udp(mut self) -> Self {
        self.l4 = L4::Udp;
        self
    }

    pub fn icmp(mut self) -> Self {
        self.l4 = L4::Icmp;
        self
    }

    pub fn ip_options(mut self, bytes: usize) -> Self {
        assert!(
            bytes.is_multiple_of(4) && bytes <= 40,
            "IPv4 options are 0-40 bytes, in words"
        );
        self.ip_options = bytes;
        self
    }

    pub fn frag(mut self, field: u16) -> Self {
        self.frag = field;
        self
    }

    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    pub fn data_offset(mut self, words: u8) -> Self {
        self.data_offset = Some(words);
        self
    }

    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// A UDP length field that is not the datagram's length.
    pub fn udp_len(mut self, len: u16) -> Self {
        self.udp_len = Some(len);
        self
    }

    /// The transport checksum field as given (`0` on UDP: no checksum).
    pub fn checksum(mut self, field: u16) -> Self {
        self.l4_checksum = Some(field);
        self
    }

    /// Two payload bytes chosen so that the checksum of this packet with its ends replaced by
    /// `src` and `dst` computes to zero (a UDP datagram sends it as 0xffff, RFC 768): what a
    /// NAT rewrite to those ends must produce from an incremental update without ever writing
    /// 0x0000. Needs an even-length payload of at least 2 bytes; the last two are replaced.
    pub fn zero_sum_after(mut self, src: SocketAddr, dst: SocketAddr) -> Self {
        let n = self.payload.len();
        assert!(
            n >= 2 && n.is_multiple_of(2),
            "needs an even payload to adjust"
        );
        self.payload[n - 2..].fill(0);
        let after = Pkt {
            src,
            dst,
            l4_checksum: Some(0),
            ..self.clone()
        };
        let (proto, seg) = after.l4_bytes();
        let pseudo = pseudo_header(src.ip(), dst.ip(), proto, seg.len());
        let word = !ones_sum(&[&pseudo, &seg]);
        self.payload[n - 2..].copy_from_slice(&word.to_be_bytes());
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        assert_eq!(v6, self.dst.is_ipv6(), "one family per packet");
        let (proto, l4) = self.l4_bytes();
        let mut frame = Vec::with_capacity(128);
        frame.extend([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
        frame.extend((if v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
        if v6 {
            self.ipv6(&mut frame, proto, &l4);
        } else {
            self.ipv4(&mut frame, proto, &l4);
        }
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        frame
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let v6 = self.src.is_ipv6();
        let (proto, csum_off, mut seg) = match self.l4 {
            L4::Tcp { flags } => {
                // A SYN carries an MSS option, so the TCP header is not always 20 bytes.
                let options: &[u8] = if flags & SYN != 0 {
                    &[2, 4, 0x05, 0xb4]
                } else {
                    &[]
                };
                let hlen = 20 + options.len();
                let words = self.data_offset.unwrap_or((hlen / 4) as u8);
                let ack: u32 = if flags & ACK != 0 { 0x2000_0001 } else { 0 };
                let mut h = Vec::with_capacity(hlen + self.payload.len());
                h.extend(self.src.port().to_be_bytes());
                h.extend(self.dst.port().to_be_bytes());
                h.extend(0x1000_0001u32.to_be_bytes());
                h.extend(ack.to_be_bytes());
                h.extend([words << 4, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
                h.extend(options);
                (PROTO_TCP, 16, h)
            }
            L4::Udp => {
                let len = self
                    .udp_len
                    .unwrap_or_else(|| u16::try_from(UDP_HLEN + self.payload.len()).unwrap());
                let mut h = Vec::new();
                h.extend(self.src.port().to_be_bytes());
                h.extend(self.dst.port().to_be_bytes());
                h.extend(len.to_be_bytes());
                h.extend([0, 0]);
                (PROTO_UDP, 6, h)
            }
            // Echo request, id 0x0101, sequence 1.
            L4::Icmp if v6 => (PROTO_ICMPV6, 2, vec![128, 0, 0, 0, 1, 1, 0, 1]),
            L4::Icmp => (PROTO_ICMP, 2, vec![8, 0, 0, 0, 1, 1, 0, 1]),
        };
        seg.extend(&self.payload);
        // What the checksum covers: a UDP datagram as long as its length field says.
        let covered = match self.l4 {
            L4::Udp => usize::from(u16::from_be_bytes([seg[4], seg[5]])),
            _ => seg.len(),
        };
        let sum = if let Some(field) = self.l4_checksum {
            field
        } else if proto == PROTO_ICMP {
            checksum(&[&seg])
        } else {
            let pseudo = pseudo_header(self.src.ip(), self.dst.ip(), proto, covered);
            match checksum(&[&pseudo, &seg[..covered.min(seg.len())]]) {
                0 if proto == PROTO_UDP => 0xffff,
                sum => sum,
            }
        };
        seg[csum_off..csum_off + 2].copy_from_slice(&sum.to_be_bytes());
        (proto, seg)
    }

    fn ipv4(&self, frame: &mut Vec<u8>, proto: u8, l4: &[u8]) {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (self.src.ip(), self.dst.ip()) else {
            unreachable!("checked by build");
        };
        let ihl = 20 + self.ip_options;
        let tot_len = u16::try_from(ihl + l4.len()).unwrap();
        let mut h = Vec::with_capacity(ihl);
        h.extend([0x40 | (ihl / 4) as u8, 0]);
        h.extend(tot_len.to_be_bytes());
        h.extend([0x12, 0x34]);
        h.extend(self.frag.to_be_bytes());
        h.extend([64, proto, 0, 0]);
        h.extend(src.octets());
        h.extend(dst.octets());
        // NOPs, then End of Option List.
        h.extend((0..self.ip_options).map(|i| u8::from(i + 1 != self.ip_options)));
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend(h);
        frame.extend(l4);
    }

    fn ipv6(&self, frame: &mut Vec<u8>, proto: u8, l4: &[u8]) {
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (self.src.ip(), self.dst.ip()) else {
            unreachable!("checked by build");
        };
        let ext_len = 8 * self.ext.len();
        let jumbo = self.ext.iter().any(|e| matches!(e, Ext::Jumbo));
        let payload_len = if jumbo {
            0
        } else {
            u16::try_from(ext_len + l4.len()).unwrap()
        };
        let first = self.ext.first().map_or(proto, |e| e.kind());
        frame.extend([0x60, 0, 0, 0]);
        frame.extend(payload_len.to_be_bytes());
        frame.extend([first, 64]);
        frame.extend(src.octets());
        frame.extend(dst.octets());
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(proto, |n| n.kind());
            frame.extend(e.bytes(next, u32::try_from(ext_len + l4.len()).unwrap()));
        }
        frame.extend(l4);
    }
}

/// A copy of `frame` with `bytes` written at `off`.
pub fn patched(frame: &[u8], off: usize, bytes: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[off..off + bytes.len()].copy_from_slice(bytes);
    f
}

pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend([0x02, 0, 0, 0, 0, 0x02]);
    f.extend(ETH_P_ARP.to_be_bytes());
    // Ethernet/IPv4, request: who has 192.0.2.10, tell 198.51.100.1.
    f.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend([0x02, 0, 0, 0, 0, 0x02, 198, 51, 100, 1]);
    f.extend([0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
    f
}

/// `frame` with an 802.1Q tag (VLAN 100) after the MAC addresses.
pub fn vlan_tagged(frame: Vec<u8>) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend(ETH_P_8021Q.to_be_bytes());
    f.extend([0x00, 100]);
    f.extend(&frame[12..]);
    f
}

/// Deterministic noise behind a valid Ethernet header with the given ethertype.
pub fn garbage(seed: u64, len: usize, ethertype: u16) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend(ethertype.to_be_bytes());
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f
}
