//! `sticky trace`: events for one client's packets. Untraced packets pay one array lookup and
//! a load (and a compare while some trace runs); events go straight into the ring buffer's
//! reserved record, never through the stack, which the ingress program has little of left.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use sticky_common::{
    Addr16,
    trace::{TRACE_DROPPED, TRACE_FLAG_RST, TRACE_FLAG_SYN, TRACE_FLAG_UDP, TraceEvent},
};

use crate::{
    maps::{TRACE, TRACE_EVENTS},
    parse::{Packet, same_addr},
};

/// Whether `client`'s packets are traced.
#[inline(always)]
pub fn traced(client: &Addr16) -> bool {
    match TRACE.get(0) {
        Some(t) => t.enabled != 0 && same_addr(&t.client, client),
        None => false,
    }
}

/// What the data path decided for a packet and the backend it concerns (zero address and
/// `NO_BACKEND` when there is none).
pub struct Decision<'a> {
    pub kind: u8,
    pub reason: u8,
    pub flags: u8,
    pub slot: u32,
    pub backend: &'a Addr16,
    pub backend_port_be: u16,
    pub backend_id: u32,
}

impl<'a> Decision<'a> {
    /// A drop for `reason` of a packet bound for `backend`.
    #[inline(always)]
    pub fn dropped(reason: u8, backend: &'a Addr16, backend_port_be: u16, backend_id: u32) -> Self {
        Self {
            kind: TRACE_DROPPED,
            reason,
            flags: 0,
            slot: 0,
            backend,
            backend_port_be,
            backend_id,
        }
    }
}

/// A client → VIP packet: the client is the source.
#[inline(always)]
pub fn ingress(pkt: &Packet, d: &Decision) {
    emit(d, &pkt.src, pkt.sport_be, &pkt.dst, pkt.dport_be, pkt);
}

/// A backend → client reply: the client is the destination, `vip` what the source becomes.
#[inline(always)]
pub fn egress(pkt: &Packet, d: &Decision, vip: &Addr16, vip_port_be: u16) {
    emit(d, &pkt.dst, pkt.dport_be, vip, vip_port_be, pkt);
}

#[inline(always)]
fn emit(
    d: &Decision,
    client: &Addr16,
    client_port_be: u16,
    vip: &Addr16,
    vip_port_be: u16,
    pkt: &Packet,
) {
    // Full ring (no reader keeping up): the event is lost, the packet is not.
    let Some(mut entry) = TRACE_EVENTS.reserve::<TraceEvent>(0) else {
        return;
    };
    let mut flags = d.flags;
    if pkt.syn {
        flags |= TRACE_FLAG_SYN;
    }
    if pkt.rst {
        flags |= TRACE_FLAG_RST;
    }
    if pkt.is_udp() {
        flags |= TRACE_FLAG_UDP;
    }
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, sized for a `TraceEvent`; every field is plain data,
    // written one by one (no struct built on the stack).
    unsafe {
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).client = *client;
        (*e).vip = *vip;
        (*e).backend = *d.backend;
        (*e).client_port_be = client_port_be;
        (*e).vip_port_be = vip_port_be;
        (*e).backend_port_be = d.backend_port_be;
        (*e).kind = d.kind;
        (*e).reason = d.reason;
        (*e).flags = flags;
        (*e)._pad0 = 0;
        (*e)._pad1 = 0;
        (*e).backend_id = d.backend_id;
        (*e).slot = d.slot;
        (*e)._pad2 = 0;
    }
    entry.submit(0);
}
