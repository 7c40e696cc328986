//! Entry points only. Fail policy (`verdict`): traffic that is not ours, or that we cannot
//! parse, passes untouched to the next program on the hook (`TCX_NEXT`); VIP traffic we
//! cannot deliver is dropped and counted; what we rewrote ends the chain (`TC_ACT_OK`).
#![no_std]
#![no_main]

mod decap;
mod dsr;
mod egress;
mod frame;
mod ingress;
mod maps;
mod nat;
mod parse;
mod splice;
mod trace;
mod verdict;

use aya_ebpf::{
    macros::{classifier, stream_verdict, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};

/// Client → VIP on the client-facing interface: DNAT to the client's backend.
#[classifier]
pub fn sticky_ingress(ctx: TcContext) -> i32 {
    ingress::ingress(&ctx)
}

/// Backend → client on the client-facing interface: restore the VIP as source.
#[classifier]
pub fn sticky_egress(ctx: TcContext) -> i32 {
    egress::egress(&ctx)
}

/// Direct server return (`--forward dsr`), tc: client → VIP encapsulated to its backend.
#[classifier]
pub fn sticky_dsr(ctx: TcContext) -> i32 {
    dsr::tc(&ctx)
}

/// Direct server return on XDP: the same decision, encapsulated in place.
#[xdp]
pub fn sticky_dsr_xdp(ctx: XdpContext) -> u32 {
    dsr::xdp(&ctx)
}

/// DSR on a backend (`sticky backend-setup`): IPIP/IP6IP6 from balancers, decapsulated.
#[classifier]
pub fn sticky_decap(ctx: TcContext) -> i32 {
    decap::decap(&ctx)
}

/// Proxy mode: bytes arriving on a spliced socket go straight to its peer's send queue.
#[stream_verdict]
pub fn sticky_splice(ctx: SkBuffContext) -> u32 {
    splice::verdict(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
