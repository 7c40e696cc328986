//! The programs' shared fail policy: what is not ours passes untouched to the next program on
//! the hook, counted by kind; VIP traffic we cannot deliver is dropped, counted; only packets
//! we rewrote end the chain.
//!
//! "Not ours" returns `TCX_NEXT` (`TC_ACT_UNSPEC` on legacy tc, the same -1): with tcx,
//! `TC_ACT_OK` ends the hook's chain, so returning it for other traffic would hide that
//! traffic from every program attached after us — a second sticky instance on the same
//! interface, a firewall, Cilium. On the last program of a chain, next behaves as pass.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, tcx_action_base::TCX_NEXT},
    programs::TcContext,
};
use sticky_common::maps::{
    COUNTER_DROP_NAT_ERROR, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_UNHANDLED,
};

use crate::{
    maps::count,
    parse::{Packet, Parsed, parse},
};

/// Parses the packet and hands TCP segments to `on_tcp`.
#[inline(always)]
pub fn on_tcp(ctx: &TcContext, on_tcp: impl FnOnce(&Packet) -> i32) -> i32 {
    match parse(ctx) {
        Parsed::Tcp(pkt) => on_tcp(&pkt),
        Parsed::NotTcp => pass(COUNTER_PASS),
        Parsed::Malformed => pass(COUNTER_PARSE_ERROR),
        Parsed::Unhandled => pass(COUNTER_UNHANDLED),
    }
}

/// Not ours: counted, and on to the next program of the hook.
#[inline(always)]
pub fn pass(counter: u32) -> i32 {
    count(counter);
    TCX_NEXT
}

/// Ours and rewritten: the chain ends here and the stack routes the packet.
#[inline(always)]
pub fn forwarded() -> i32 {
    TC_ACT_OK
}

/// A rewrite helper failed half way (it should not): dropped, counted, and logged through
/// aya-log, the one kernel path that logs (never per ordinary packet).
#[inline(always)]
pub fn rewrite_failed(ctx: &TcContext) -> i32 {
    aya_log_ebpf::error!(ctx, "sticky: a NAT rewrite failed, packet dropped");
    drop(COUNTER_DROP_NAT_ERROR)
}

#[inline(always)]
pub fn drop(counter: u32) -> i32 {
    count(counter);
    TC_ACT_SHOT
}
