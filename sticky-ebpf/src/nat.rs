//! Address and port rewrites, in as few helper calls as the kernel allows:
//! - bytes are written with `bpf_skb_store_bytes`, which unclones only the packets it writes
//!   (direct packet writes would add a verifier prologue that unclones every packet the
//!   program sees);
//! - the IPv4 header checksum is computed here and stored with them (RFC 1624; no offload
//!   touches it);
//! - the TCP or UDP checksum is only ever fixed through the kernel's `l4_csum_replace`, which
//!   knows whether the skb's checksum is offloaded (`CHECKSUM_PARTIAL`: only the
//!   pseudo-header's part belongs in the field) or complete; a program cannot tell.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use sticky_common::{Addr16, csum};

use crate::parse::{Packet, header};

const IPV4_CSUM_OFF: usize = 10;
const IPV4_LEN: usize = 20;
const IPV6_SRC_OFF: usize = 8;
const IPV6_DST_OFF: usize = 24;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
/// `l4_csum_replace`'s size field: 0 takes `to` as a difference (`csum::diff4`).
const CSUM_BY_DIFF: u64 = 0;
/// `l4_csum_replace` on an IPv6 packet (Linux 6.16): with `CHECKSUM_COMPLETE`, an address
/// change leaves `skb->csum` as it is (no header checksum compensates it, unlike IPv4).
/// Older kernels refuse the flag before touching the packet: the call is repeated without.
const BPF_F_IPV6: u64 = 1 << 7;

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

/// An IPv4 header from its checksum to the end of an option-less header, and the ports that
/// follow it: one store rewrites either end.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Ipv4Tail {
    check: u16,
    src: u32,
    dst: u32,
    sport_be: u16,
    dport_be: u16,
}

/// The same without the ports, for a header with options between them.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Ipv4Addrs {
    check: u16,
    src: u32,
    dst: u32,
}

/// Rewrites one end of `pkt` to `addr`:`port_be`, fixing the IPv4 header checksum and the
/// TCP or UDP checksum (pseudo-header included). An IPv4 UDP datagram without a checksum
/// (zero) keeps none; a checksum that comes out zero is written as 0xffff (RFC 768). On error
/// the packet may be half rewritten: drop it.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    addr: &Addr16,
    port_be: u16,
) -> Result<(), NatError> {
    // A v4 packet can't carry a v6 address or the reverse; config validation forbids mixing,
    // this guards against maps written by something else.
    if pkt.is_v6 == addr.is_v4() {
        return Err(NatError);
    }
    let (old_addr, old_port) = match end {
        End::Source => (&pkt.src, pkt.sport_be),
        End::Destination => (&pkt.dst, pkt.dport_be),
    };
    let addr_changed = old_addr.words != addr.words;
    let port_changed = old_port != port_be;
    if !addr_changed && !port_changed {
        return Ok(());
    }
    // The bytes first, then the checksum: the checksum helpers take the change as values,
    // not from the packet.
    if pkt.is_v6 {
        store_v6(ctx, pkt, end, addr, addr_changed, port_be, port_changed)?;
    } else {
        store_v4(ctx, pkt, end, addr.words[3], port_be, port_changed)?;
    }
    let (csum_off, mangled_0) = if pkt.is_udp() {
        (pkt.l4_off + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    } else {
        (pkt.l4_off + TCP_CSUM_OFF, 0)
    };
    if addr_changed {
        // The address is in the pseudo-header: the field changes even when offloaded.
        let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled_0;
        if pkt.is_v6 {
            let d = u64::from(csum::diff4(&old_addr.words, &addr.words));
            let by_diff = pseudo | CSUM_BY_DIFF;
            if ctx
                .l4_csum_replace(csum_off, 0, d, by_diff | BPF_F_IPV6)
                .is_err()
            {
                ctx.l4_csum_replace(csum_off, 0, d, by_diff)?;
            }
        } else {
            let (o, n) = (old_addr.words[3], addr.words[3]);
            ctx.l4_csum_replace(csum_off, u64::from(o), u64::from(n), pseudo | 4)?;
        }
    }
    if port_changed {
        let (o, n) = (u64::from(old_port), u64::from(port_be));
        ctx.l4_csum_replace(csum_off, o, n, mangled_0 | 2)?;
    }
    Ok(())
}

/// IPv4: the new address with the header's checksum, and the new port, in one store when no
/// options sit between them.
#[inline(always)]
fn store_v4(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    new: u32,
    port_be: u16,
    port_changed: bool,
) -> Result<(), NatError> {
    let check_off = pkt.l3_off + IPV4_CSUM_OFF;
    let check: u16 = header(ctx, check_off).ok_or(NatError)?;
    let (mut src, mut dst) = (pkt.src.words[3], pkt.dst.words[3]);
    let (mut sport_be, mut dport_be) = (pkt.sport_be, pkt.dport_be);
    let old = match end {
        End::Source => core::mem::replace(&mut src, new),
        End::Destination => core::mem::replace(&mut dst, new),
    };
    match end {
        End::Source => sport_be = port_be,
        End::Destination => dport_be = port_be,
    }
    let check = csum::replace4(check, old, new);
    if pkt.l4_off == pkt.l3_off + IPV4_LEN {
        let tail = Ipv4Tail {
            check,
            src,
            dst,
            sport_be,
            dport_be,
        };
        ctx.store(check_off, &tail, 0)?;
        return Ok(());
    }
    if old != new {
        ctx.store(check_off, &Ipv4Addrs { check, src, dst }, 0)?;
    }
    if port_changed {
        store_port(ctx, pkt, end, port_be)?;
    }
    Ok(())
}

/// IPv6: the address and the port, each stored only if it changed.
#[inline(always)]
fn store_v6(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    addr: &Addr16,
    addr_changed: bool,
    port_be: u16,
    port_changed: bool,
) -> Result<(), NatError> {
    if addr_changed {
        let off = match end {
            End::Source => IPV6_SRC_OFF,
            End::Destination => IPV6_DST_OFF,
        };
        ctx.store(pkt.l3_off + off, &addr.words, 0)?;
    }
    if port_changed {
        store_port(ctx, pkt, end, port_be)?;
    }
    Ok(())
}

#[inline(always)]
fn store_port(ctx: &TcContext, pkt: &Packet, end: End, port_be: u16) -> Result<(), NatError> {
    let off = match end {
        End::Source => 0,
        End::Destination => 2,
    };
    ctx.store(pkt.l4_off + off, &port_be, 0)?;
    Ok(())
}
