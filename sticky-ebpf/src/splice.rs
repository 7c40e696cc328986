//! Proxy mode's kernel splice: a stream verdict over whole segments (no parser), redirecting
//! each to the peer socket registered under this socket's cookie.

use aya_ebpf::{bindings::sk_action, helpers::bpf_get_socket_cookie, programs::SkBuffContext};

use crate::maps::{SPLICE_BYTES, SPLICE_PEERS};

#[inline(always)]
pub fn verdict(ctx: &SkBuffContext) -> u32 {
    let len = ctx.len();
    // A zero-length skb is a FIN; redirecting it makes the peer fail with EPIPE. Userspace
    // forwards the half-close itself once the peer has sent every redirected byte.
    if len == 0 {
        return sk_action::SK_DROP;
    }
    // SAFETY: the helper only reads the skb's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    if let Some(sent) = SPLICE_BYTES.get_ptr_mut(&cookie) {
        // SAFETY: one socket's segments are handled under its lock, one at a time.
        unsafe { *sent += u64::from(len) };
    }
    SPLICE_PEERS.redirect_skb(ctx, cookie, 0) as u32
}
