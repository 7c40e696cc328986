//! Backend → client: replies of flows we DNATed get the VIP back as their source. With
//! `--replies-any-node`, so do replies of flows another node DNATed (behind ECMP, or with
//! backends routing through a gateway any node may be): by the backend's address alone.

use aya_ebpf::programs::TcContext;
use sticky_common::{
    maps::{COUNTER_NAT, COUNTER_PASS, FLOW_REVERSE, FlowKey, VipKey},
    trace::{TRACE_DROPPED, TRACE_FLAG_HANDSHAKE, TRACE_REASON_NAT_ERROR, TRACE_REPLY},
};

use crate::{
    maps::{FLOWS, NEW_FLOWS, REPLY_VIPS, count, count_backend, count_refused},
    nat::{End, rewrite},
    parse::Packet,
    trace::{self, Decision},
    verdict::{Tc, forwarded, on_transport, pass, rewrite_failed},
};

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    on_transport::<Tc, _>(ctx, |pkt| reply(ctx, pkt))
}

#[inline(always)]
fn reply(ctx: &TcContext, pkt: &Packet) -> i32 {
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        _pad0: 0,
        _pad1: 0,
    };
    // Established flows first; a SYN-ACK finds its flow among the new ones.
    // SAFETY: read-only copies of LRU values.
    let (found, handshake) = match FLOWS.get_ptr(&key) {
        Some(f) => (Some(unsafe { *f }), false),
        None => (NEW_FLOWS.get_ptr(&key).map(|f| unsafe { *f }), true),
    };
    let Some(flow) = found else {
        return stateless(ctx, pkt);
    };
    if flow.direction != FLOW_REVERSE {
        return pass::<Tc>(COUNTER_PASS);
    }
    let failed = rewrite(ctx, pkt, End::Source, &flow.nat_addr, flow.nat_port_be).is_err();
    if trace::traced(&pkt.dst) {
        let d = Decision {
            kind: if failed { TRACE_DROPPED } else { TRACE_REPLY },
            reason: if failed { TRACE_REASON_NAT_ERROR } else { 0 },
            flags: if handshake { TRACE_FLAG_HANDSHAKE } else { 0 },
            slot: 0,
            backend: &pkt.src,
            backend_port_be: pkt.sport_be,
            backend_id: flow.backend_id,
        };
        trace::egress(pkt, &d, &flow.nat_addr, flow.nat_port_be);
    }
    if failed {
        return rewrite_failed(ctx);
    }
    count(COUNTER_NAT);
    count_backend(flow.backend_id, ctx.len(), false);
    if handshake && pkt.rst {
        count_refused(flow.backend_id);
    }
    forwarded()
}

/// A reply of a flow this node holds no state for: rewritten by its backend's VIP when the
/// backend has one in `REPLY_VIPS` (only with `--replies-any-node`), else not ours.
#[inline(always)]
fn stateless(ctx: &TcContext, pkt: &Packet) -> i32 {
    let backend = VipKey {
        addr: pkt.src,
        port_be: pkt.sport_be,
        proto: pkt.proto,
        _pad0: 0,
    };
    // SAFETY: read-only copy of a hash map value.
    let Some(vip) = REPLY_VIPS.get_ptr(&backend).map(|v| unsafe { *v }) else {
        return pass::<Tc>(COUNTER_PASS);
    };
    if rewrite(ctx, pkt, End::Source, &vip.addr, vip.port_be).is_err() {
        return rewrite_failed(ctx);
    }
    count(COUNTER_NAT);
    forwarded()
}
