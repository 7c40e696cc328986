//! Address and port rewrites. Checksums are only ever fixed through the kernel's
//! `l3_csum_replace`/`l4_csum_replace` (incremental, offload-aware), never recomputed by hand.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use sticky_common::Addr16;

use crate::parse::Packet;

const IPV4_CSUM_OFF: usize = 10;
const IPV4_SRC_OFF: usize = 12;
const IPV4_DST_OFF: usize = 16;
const IPV6_SRC_OFF: usize = 8;
const IPV6_DST_OFF: usize = 24;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;

/// Which end of the segment to rewrite.
#[derive(Clone, Copy)]
pub enum End {
    Source,
    Destination,
}

pub struct NatError;

impl From<i64> for NatError {
    fn from(_: i64) -> Self {
        NatError
    }
}

/// Rewrites one end of `pkt` to `addr`:`port_be`, fixing the IPv4 header checksum and the
/// TCP or UDP checksum (pseudo-header included). An IPv4 UDP datagram without a checksum
/// (zero) keeps none; a checksum that comes out zero is written as 0xffff (RFC 768). On error the packet may be half rewritten: drop it.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    addr: &Addr16,
    port_be: u16,
) -> Result<(), NatError> {
    let (old_addr, old_port, v4_off, v6_off, port_off) = match end {
        End::Source => (&pkt.src, pkt.sport_be, IPV4_SRC_OFF, IPV6_SRC_OFF, 0),
        End::Destination => (&pkt.dst, pkt.dport_be, IPV4_DST_OFF, IPV6_DST_OFF, 2),
    };
    // A v4 packet can't carry a v6 address or the reverse; config validation forbids mixing,
    // this guards against maps written by something else.
    if pkt.is_v6 == addr.is_v4() {
        return Err(NatError);
    }
    let (csum_off, mangled_0) = if pkt.is_udp() {
        (pkt.l4_off + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    } else {
        (pkt.l4_off + TCP_CSUM_OFF, 0)
    };
    let [o0, o1, o2, o3] = old_addr.words;
    let [n0, n1, n2, n3] = addr.words;
    if pkt.is_v6 {
        let base = pkt.l3_off + v6_off;
        replace_word(ctx, csum_off, mangled_0, base, o0, n0)?;
        replace_word(ctx, csum_off, mangled_0, base + 4, o1, n1)?;
        replace_word(ctx, csum_off, mangled_0, base + 8, o2, n2)?;
        replace_word(ctx, csum_off, mangled_0, base + 12, o3, n3)?;
    } else if o3 != n3 {
        ctx.l3_csum_replace(pkt.l3_off + IPV4_CSUM_OFF, u64::from(o3), u64::from(n3), 4)?;
        replace_word(ctx, csum_off, mangled_0, pkt.l3_off + v4_off, o3, n3)?;
    }
    if old_port != port_be {
        let flags = mangled_0 | 2;
        ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port_be), flags)?;
        ctx.store(pkt.l4_off + port_off, &port_be, 0)?;
    }
    Ok(())
}

/// One 32-bit word of an address, which the TCP checksum covers through the pseudo-header.
#[inline(always)]
fn replace_word(
    ctx: &TcContext,
    csum_off: usize,
    mangled_0: u64,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), NatError> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(
        csum_off,
        u64::from(old),
        u64::from(new),
        u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4,
    )?;
    ctx.store(off, &new, 0)?;
    Ok(())
}
