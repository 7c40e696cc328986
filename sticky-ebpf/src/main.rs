//! Entry points only. Fail policy: traffic that is not ours, or that we cannot parse, passes
//! untouched (`TC_ACT_OK`); VIP traffic we cannot deliver is dropped and counted.
#![no_std]
#![no_main]

mod egress;
mod ingress;
mod maps;
mod nat;
mod parse;

use aya_ebpf::{macros::classifier, programs::TcContext};

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
