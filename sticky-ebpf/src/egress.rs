//! Backend → client: replies of flows we DNATed get the VIP back as their source.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use sticky_common::maps::{
    COUNTER_DROP_NAT_ERROR, COUNTER_NAT, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_UNHANDLED,
    FLOW_REVERSE, FlowKey, PROTO_TCP,
};

use crate::{
    ingress::pass,
    maps::{FLOWS, count, count_backend},
    nat::{End, rewrite},
    parse::{Packet, Parsed, parse},
};

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    match parse(ctx) {
        Parsed::Tcp(pkt) => reply(ctx, &pkt),
        Parsed::NotTcp => pass(COUNTER_PASS),
        Parsed::Malformed => pass(COUNTER_PARSE_ERROR),
        Parsed::Unhandled => pass(COUNTER_UNHANDLED),
    }
}

#[inline(always)]
fn reply(ctx: &TcContext, pkt: &Packet) -> i32 {
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: PROTO_TCP,
        _pad0: 0,
        _pad1: 0,
    };
    // SAFETY: read-only copy of an LRU value.
    let Some(flow) = FLOWS.get_ptr(&key).map(|f| unsafe { *f }) else {
        return pass(COUNTER_PASS);
    };
    if flow.direction != FLOW_REVERSE {
        return pass(COUNTER_PASS);
    }
    if rewrite(ctx, pkt, End::Source, &flow.nat_addr, flow.nat_port_be).is_err() {
        count(COUNTER_DROP_NAT_ERROR);
        return aya_ebpf::bindings::TC_ACT_SHOT;
    }
    count(COUNTER_NAT);
    count_backend(flow.backend_id, ctx.len(), false);
    TC_ACT_OK
}
