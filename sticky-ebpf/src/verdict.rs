//! The programs' shared fail policy: what is not a TCP segment we can read passes untouched,
//! counted by kind; VIP traffic we cannot deliver is dropped, counted.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use sticky_common::maps::{COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_UNHANDLED};

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

#[inline(always)]
pub fn pass(counter: u32) -> i32 {
    count(counter);
    TC_ACT_OK
}

#[inline(always)]
pub fn drop(counter: u32) -> i32 {
    count(counter);
    TC_ACT_SHOT
}
