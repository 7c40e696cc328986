//! The programs' shared fail policy: what is not ours passes untouched to the next program on
//! the hook, counted by kind; VIP traffic we cannot deliver is dropped, counted; only packets
//! we rewrote end the chain.
//!
//! "Not ours" returns `TCX_NEXT` (`TC_ACT_UNSPEC` on legacy tc, the same -1): with tcx,
//! `TC_ACT_OK` ends the hook's chain, so returning it for other traffic would hide that
//! traffic from every program attached after us — a second sticky instance on the same
//! interface, a firewall, Cilium. On the last program of a chain, next behaves as pass.
//! On XDP "not ours" is `XDP_PASS`: the packet goes on to tc, where our tc program (always
//! attached beside the XDP one) counts it, so XDP does not count it twice.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, tcx_action_base::TCX_NEXT, xdp_action},
    programs::TcContext,
};
use sticky_common::maps::{
    COUNTER_DROP_NAT_ERROR, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_UNHANDLED,
};

use crate::{
    frame::Frame,
    maps::count,
    parse::{Packet, Parsed, parse},
};

/// The return codes of one hook.
pub trait Hook {
    /// Not ours: on to whatever comes next.
    const NEXT: i32;
    const DROP: i32;
    /// Whether packets passed on are counted here (tc) or by the program after us (XDP).
    const COUNTS_PASS: bool;
}

pub struct Tc;

impl Hook for Tc {
    const NEXT: i32 = TCX_NEXT;
    const DROP: i32 = TC_ACT_SHOT;
    const COUNTS_PASS: bool = true;
}

pub struct Xdp;

impl Hook for Xdp {
    const NEXT: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;
    const COUNTS_PASS: bool = false;
}

/// Parses the packet and hands TCP segments and UDP datagrams to `on_packet`.
#[inline(always)]
pub fn on_transport<H: Hook, F: Frame>(ctx: &F, on_packet: impl FnOnce(&Packet) -> i32) -> i32 {
    match parse(ctx) {
        Parsed::Transport(pkt) => on_packet(&pkt),
        Parsed::Other => pass::<H>(COUNTER_PASS),
        Parsed::Malformed => pass::<H>(COUNTER_PARSE_ERROR),
        Parsed::Unhandled => pass::<H>(COUNTER_UNHANDLED),
    }
}

/// Not ours: counted, and on to the next program of the hook.
#[inline(always)]
pub fn pass<H: Hook>(counter: u32) -> i32 {
    if H::COUNTS_PASS {
        count(counter);
    }
    H::NEXT
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
    drop::<Tc>(COUNTER_DROP_NAT_ERROR)
}

#[inline(always)]
pub fn drop<H: Hook>(counter: u32) -> i32 {
    count(counter);
    H::DROP
}
