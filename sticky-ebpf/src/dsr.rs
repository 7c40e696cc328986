//! Direct server return: client → VIP packets go to their backend encapsulated, IPIP (IPv4 in
//! IPv4) or IP6IP6; the backend (`sticky backend-setup`) decapsulates and answers the client
//! itself, so replies never pass this node.
//!
//! The backend decision is the NAT path's (`ingress::decide`, `Forward::Dsr`: no reverse
//! entries). The inner packet is never touched: client address, VIP, ports and checksums
//! arrive as the client sent them. The outer header is built from scratch: source the node's
//! address (`Settings::dsr_source_v4/v6`), destination the backend, checksum computed over
//! the 20 bytes we wrote. The next hop comes from the kernel's FIB (`bpf_fib_lookup`), so the
//! backend may be on the same segment or behind routers.
//!
//! Two entry points share all of it: tc (`sticky_dsr`, grows the skb with
//! `bpf_skb_adjust_room`, which keeps GRO super-packets valid as IPIP/IP6IP6 GSO) and XDP
//! (`sticky_dsr_xdp`, grows the frame's head and transmits with XDP_TX or XDP_REDIRECT). What
//! XDP cannot finish (the next hop's neighbour unresolved) it passes on to the tc program,
//! which redirects through the neighbour subsystem.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup,
        xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_head,
    },
    programs::{TcContext, XdpContext},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};
use sticky_common::maps::{COUNTER_DSR, COUNTER_ENCAP_ERROR, COUNTER_TOO_BIG};

use crate::{
    frame::Frame,
    ingress::{Forward, Target, decide},
    maps::{DSR_NEXT_HOPS, DSR_SCRATCH, SETTINGS, count, count_backend},
    parse::{Packet, header},
    verdict::{Tc, Xdp, drop, on_transport},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const OUTER_TTL: u8 = 64;
/// Don't fragment: a too-big packet is dropped and counted, never fragmented on the way.
const IPV4_DF: u16 = 0x4000;
const ETH_ALEN: usize = 6;
/// How long a backend's next hop is reused before the FIB is asked again: a changed route or
/// neighbour MAC is followed within this long.
const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;
/// Below this a FIB's MTU answer is not believed (IPv6's minimum): such hops are not cached.
const MIN_SANE_MTU: u32 = 1280;

/// Bytes the outer header adds.
#[inline(always)]
const fn outer_len(v6: bool) -> usize {
    if v6 { Ipv6Hdr::LEN } else { Ipv4Hdr::LEN }
}

/// tc entry: encapsulate and redirect.
#[inline(always)]
pub fn tc(ctx: &TcContext) -> i32 {
    on_transport::<Tc, _>(ctx, |pkt| match decide(pkt, Forward::Dsr) {
        Ok(target) => tc_encap(ctx, pkt, &target),
        Err(miss) => miss.verdict::<Tc>(),
    })
}

/// XDP entry: encapsulate in place and transmit.
#[inline(always)]
pub fn xdp(ctx: &XdpContext) -> u32 {
    let verdict = on_transport::<Xdp, _>(ctx, |pkt| match decide(pkt, Forward::Dsr) {
        Ok(target) => xdp_encap(ctx, pkt, &target),
        Err(miss) => miss.verdict::<Xdp>(),
    });
    verdict as u32
}

/// What the outer header needs, read before the packet moves.
struct Outer {
    v6: bool,
    /// The inner packet's L3 length (what follows the Ethernet header).
    inner_len: usize,
    /// IPv4 TOS / IPv6 traffic class of the inner packet, carried over.
    tos: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// IPv6 flow label from the client's ports: routers that hash on it spread flows.
    flow_label: u32,
}

#[inline(always)]
fn outer_for<F: Frame>(ctx: &F, pkt: &Packet, t: &Target) -> Option<Outer> {
    // The backend must be of the packet's family (config validation makes it so; this guards
    // against maps written by something else), and a node address must be configured.
    // VLAN-tagged frames (l3 past the plain Ethernet header) are not encapsulated.
    if pkt.is_v6 == t.addr.is_v4() || pkt.l3_off != EthHdr::LEN {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let src = if pkt.is_v6 {
        settings.dsr_source_v6
    } else {
        settings.dsr_source_v4
    };
    if src.is_unspecified() {
        return None;
    }
    let first = header::<[u8; 2], F>(ctx, pkt.l3_off)?;
    let [b0, b1] = first;
    let tos = if pkt.is_v6 { (b0 << 4) | (b1 >> 4) } else { b1 };
    let inner_len = (ctx.len() as usize).checked_sub(pkt.l3_off)?;
    let ports =
        (u32::from(u16::from_be(pkt.sport_be)) << 4) ^ u32::from(u16::from_be(pkt.dport_be));
    Some(Outer {
        v6: pkt.is_v6,
        inner_len,
        tos,
        src: src.to_bytes(),
        dst: t.addr.to_bytes(),
        flow_label: ports & 0x000f_ffff,
    })
}

/// The outer IPv4 header, checksum computed over it from scratch.
#[inline(always)]
fn ipv4_header(o: &Outer) -> Ipv4Hdr {
    let tot_len = (o.inner_len + Ipv4Hdr::LEN) as u16;
    let [_, _, _, _, _, _, _, _, _, _, _, _, s0, s1, s2, s3] = o.src;
    let [_, _, _, _, _, _, _, _, _, _, _, _, d0, d1, d2, d3] = o.dst;
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: o.tos,
        tot_len: tot_len.to_be_bytes(),
        id: [0, 0],
        frags: IPV4_DF.to_be_bytes(),
        ttl: OUTER_TTL,
        proto: PROTO_IPIP,
        check: [0, 0],
        src_addr: [s0, s1, s2, s3],
        dst_addr: [d0, d1, d2, d3],
    };
    ip.check = ipv4_checksum(&ip).to_be_bytes();
    ip
}

/// RFC 1071 over the 20 header bytes (checksum field zero).
#[inline(always)]
fn ipv4_checksum(ip: &Ipv4Hdr) -> u16 {
    // SAFETY: `Ipv4Hdr` is 20 plain bytes.
    let bytes: [u8; 20] = unsafe { core::mem::transmute_copy(ip) };
    let mut sum: u32 = 0;
    for pair in bytes.chunks_exact(2) {
        if let [hi, lo] = pair {
            sum += u32::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn ipv6_header(o: &Outer) -> Ipv6Hdr {
    let vcf = (6u32 << 28) | (u32::from(o.tos) << 20) | o.flow_label;
    Ipv6Hdr {
        vcf: vcf.to_be_bytes(),
        payload_len: (o.inner_len as u16).to_be_bytes(),
        next_hdr: PROTO_IPV6,
        hop_limit: OUTER_TTL,
        src_addr: o.src,
        dst_addr: o.dst,
    }
}

/// The FIB's answer for the outer destination.
enum NextHop {
    /// Out of `ifindex` to `dmac`, from `smac`; the route's MTU.
    Resolved {
        ifindex: u32,
        smac: [u8; ETH_ALEN],
        dmac: [u8; ETH_ALEN],
        mtu: u32,
    },
    /// Out of `ifindex`, the neighbour not yet resolved.
    NoNeigh {
        ifindex: u32,
    },
    /// The encapsulated packet exceeds the path MTU.
    TooBig,
    Unroutable,
}

/// Looks up the outer destination. `tot_len` 0 (tc, GSO packets) has the kernel check the
/// skb's segments against the MTU instead. A function of its own (a BPF-to-BPF call): the
/// entry points' stacks stay under 512 bytes.
#[inline(never)]
fn next_hop(ctx: *mut core::ffi::c_void, o: &Outer, ifindex: u32, tot_len: u16) -> NextHop {
    let Some(p) = DSR_SCRATCH.get_ptr_mut(0) else {
        return NextHop::Unroutable;
    };
    // SAFETY: this CPU's slot, used only within this call; all-zero is the helper's "no
    // input" for every field.
    let p = unsafe {
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    p.family = if o.v6 { AF_INET6 } else { AF_INET };
    p.l4_protocol = if o.v6 { PROTO_IPV6 } else { PROTO_IPIP };
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ifindex;
    if o.v6 {
        p.__bindgen_anon_2.flowinfo = ((u32::from(o.tos) << 20) | o.flow_label).to_be();
        p.__bindgen_anon_3.ipv6_src = words(&o.src);
        p.__bindgen_anon_4.ipv6_dst = words(&o.dst);
    } else {
        p.__bindgen_anon_2.tos = o.tos;
        let [w0, w1, w2, w3] = words(&o.src);
        let _ = (w0, w1, w2);
        p.__bindgen_anon_3.ipv4_src = w3;
        let [v0, v1, v2, v3] = words(&o.dst);
        let _ = (v0, v1, v2);
        p.__bindgen_anon_4.ipv4_dst = v3;
    }
    let size = core::mem::size_of::<bpf_fib_lookup>() as i32;
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of `size` bytes.
    let mut rc = unsafe { fib_lookup(ctx, p, size, 0) };
    if rc == i64::from(BPF_FIB_LKUP_RET_FWD_DISABLED) {
        // Forwarding off on the interface: route as the node's own output instead.
        p.ifindex = ifindex;
        // SAFETY: as above.
        rc = unsafe { fib_lookup(ctx, p, size, BPF_FIB_LOOKUP_OUTPUT) };
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop::Resolved {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
            // SAFETY: on success the helper leaves the route's MTU in the union.
            mtu: u32::from(unsafe { p.__bindgen_anon_1.mtu_result }),
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeigh { ifindex: p.ifindex },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => NextHop::TooBig,
        _ => NextHop::Unroutable,
    }
}

/// The next hop towards `t`'s backend: from this CPU's cache while it is fresh and `tot_len`
/// is known (not a tc GSO packet, whose segments the kernel checks), else from the FIB, whose
/// resolved answers are cached.
#[inline(always)]
fn route(
    ctx: *mut core::ffi::c_void,
    o: &Outer,
    t: &Target,
    ifindex: u32,
    tot_len: u16,
) -> NextHop {
    let (id, now) = (t.id, t.now);
    let dst = sticky_common::Addr16::from_bytes(o.dst);
    if tot_len != 0
        && let Some(c) = DSR_NEXT_HOPS.get_ptr(id)
    {
        // SAFETY: this CPU's slot, read before anything on this CPU writes it again.
        let c = unsafe { &*c };
        if c.expires_ns > now && c.dst == dst {
            if u32::from(tot_len) > c.mtu {
                return NextHop::TooBig;
            }
            return NextHop::Resolved {
                ifindex: c.ifindex,
                smac: c.smac,
                dmac: c.dmac,
                mtu: c.mtu,
            };
        }
    }
    let hop = next_hop(ctx, o, ifindex, tot_len);
    if let NextHop::Resolved {
        ifindex,
        smac,
        dmac,
        mtu,
    } = hop
        && mtu >= MIN_SANE_MTU
        && let Some(c) = DSR_NEXT_HOPS.get_ptr_mut(id)
    {
        // SAFETY: this CPU's slot; no other writer on this CPU meanwhile.
        let c = unsafe { &mut *c };
        c.dst = dst;
        c.expires_ns = now + NEXT_HOP_TTL_NS;
        c.ifindex = ifindex;
        c.mtu = mtu;
        c.smac = smac;
        c.dmac = dmac;
    }
    hop
}

#[inline(always)]
fn words(b: &[u8; 16]) -> [u32; 4] {
    sticky_common::Addr16::from_bytes(*b).words
}

/// Counted once the packet is on its way.
#[inline(always)]
fn sent(t: &Target, bytes: u32) {
    count(COUNTER_DSR);
    count_backend(t.id, bytes, t.new_flow);
}

#[inline(always)]
fn tc_encap(ctx: &TcContext, pkt: &Packet, t: &Target) -> i32 {
    let Some(o) = outer_for(ctx, pkt, t) else {
        return drop::<Tc>(COUNTER_ENCAP_ERROR);
    };
    // SAFETY: the program's own context.
    let (ifindex, gso) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).gso_size != 0) };
    let grown = o.inner_len + outer_len(o.v6);
    if grown > usize::from(u16::MAX) {
        return drop::<Tc>(COUNTER_TOO_BIG);
    }
    let tot_len = if gso { 0 } else { grown as u16 };
    let hop = route(ctx.skb.skb.cast(), &o, t, ifindex, tot_len);
    let out_ifindex = match hop {
        NextHop::Resolved { ifindex, .. } | NextHop::NoNeigh { ifindex } => ifindex,
        NextHop::TooBig => return drop::<Tc>(COUNTER_TOO_BIG),
        NextHop::Unroutable => return drop::<Tc>(COUNTER_ENCAP_ERROR),
    };
    let flags = if o.v6 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    };
    let room = outer_len(o.v6) as i32;
    if ctx
        .adjust_room(room, BPF_ADJ_ROOM_MAC, u64::from(flags))
        .is_err()
    {
        return drop::<Tc>(COUNTER_ENCAP_ERROR);
    }
    // From here the packet is ours: a failure drops it rather than pass a half-built frame.
    let stored = if o.v6 {
        ctx.store(EthHdr::LEN, &ipv6_header(&o), 0)
    } else {
        ctx.store(EthHdr::LEN, &ipv4_header(&o), 0)
    };
    if stored.is_err() {
        return drop::<Tc>(COUNTER_ENCAP_ERROR);
    }
    let rc = match hop {
        NextHop::Resolved { smac, dmac, .. } => {
            let macs = mac_pair(&dmac, &smac);
            if ctx.store(0, &macs, 0).is_err() {
                return drop::<Tc>(COUNTER_ENCAP_ERROR);
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(out_ifindex, 0) }
        }
        // SAFETY: null parameters: the kernel resolves the outer destination's neighbour.
        _ => unsafe { bpf_redirect_neigh(out_ifindex, core::ptr::null_mut(), 0, 0) },
    };
    if rc == i64::from(TC_ACT_SHOT) {
        return drop::<Tc>(COUNTER_ENCAP_ERROR);
    }
    sent(t, ctx.len());
    rc as i32
}

/// Destination then source MAC, as an Ethernet header starts.
#[inline(always)]
fn mac_pair(dmac: &[u8; ETH_ALEN], smac: &[u8; ETH_ALEN]) -> [u8; 2 * ETH_ALEN] {
    let [d0, d1, d2, d3, d4, d5] = *dmac;
    let [s0, s1, s2, s3, s4, s5] = *smac;
    [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5]
}

#[inline(always)]
fn xdp_encap(ctx: &XdpContext, pkt: &Packet, t: &Target) -> i32 {
    let Some(o) = outer_for(ctx, pkt, t) else {
        return drop::<Xdp>(COUNTER_ENCAP_ERROR);
    };
    let grown = o.inner_len + outer_len(o.v6);
    if grown > usize::from(u16::MAX) {
        return drop::<Xdp>(COUNTER_TOO_BIG);
    }
    let in_ifindex = ctx.ingress_ifindex() as u32;
    let (out_ifindex, smac, dmac) = match route(ctx.ctx.cast(), &o, t, in_ifindex, grown as u16) {
        NextHop::Resolved {
            ifindex,
            smac,
            dmac,
            ..
        } => (ifindex, smac, dmac),
        // The tc program behind us redirects through the neighbour subsystem, which
        // resolves it; later packets take the fast path.
        NextHop::NoNeigh { .. } => return xdp_action::XDP_PASS as i32,
        NextHop::TooBig => return drop::<Xdp>(COUNTER_TOO_BIG),
        NextHop::Unroutable => return drop::<Xdp>(COUNTER_ENCAP_ERROR),
    };
    let room = outer_len(o.v6) as i32;
    // SAFETY: the program's own context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -room) } != 0 {
        return drop::<Xdp>(COUNTER_ENCAP_ERROR);
    }
    let ethertype = if o.v6 { 0x86ddu16 } else { 0x0800u16 };
    let macs = mac_pair(&dmac, &smac);
    let written = if o.v6 {
        write_frame(ctx, &macs, ethertype, &ipv6_header(&o))
    } else {
        write_frame(ctx, &macs, ethertype, &ipv4_header(&o))
    };
    if written.is_none() {
        return drop::<Xdp>(COUNTER_ENCAP_ERROR);
    }
    sent(t, (ctx.data_end() - ctx.data()) as u32);
    let by_redirect = SETTINGS.get(0).is_some_and(|s| s.xdp_tx_by_redirect != 0);
    if out_ifindex == in_ifindex && !by_redirect {
        xdp_action::XDP_TX as i32
    } else {
        // SAFETY: plain helper call; on a bad index it returns XDP_ABORTED.
        unsafe { bpf_redirect(out_ifindex, 0) as i32 }
    }
}

/// Writes the Ethernet header and the outer L3 header `T` at the (grown) frame's start.
#[inline(always)]
fn write_frame<T>(ctx: &XdpContext, macs: &[u8; 12], ethertype: u16, outer: &T) -> Option<()> {
    let start = ctx.data();
    let len = EthHdr::LEN + core::mem::size_of::<T>();
    if start + len > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked above; packet data has no alignment guarantee.
    unsafe {
        (start as *mut [u8; 12]).write_unaligned(*macs);
        ((start + 12) as *mut [u8; 2]).write_unaligned(ethertype.to_be_bytes());
        ((start + EthHdr::LEN) as *mut T).write_unaligned(core::ptr::read(outer));
    }
    Some(())
}
