//! `sticky trace`: the traced client the kernel programs check, and the events they report for
//! it. The check is one array lookup and a word compare per VIP packet; events are only written
//! for the traced client's packets.

use crate::Addr16;

/// One [`TraceTarget`] entry: whom to trace, if anyone.
pub const TRACE: &str = "STICKY_TRACE";
/// Ring buffer of [`TraceEvent`]s for the traced client.
pub const TRACE_EVENTS: &str = "STICKY_TRACE_EVENTS";
/// Ring buffer size: a power-of-two multiple of the page size; 800 events of room.
pub const TRACE_EVENTS_BYTES: u32 = 64 * 1024;

/// Who is traced. `enabled` 0: nobody, and the programs write nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceTarget {
    pub client: Addr16,
    pub enabled: u32,
    /// The tracing process, so a trace left enabled by a killed tracer can be taken over.
    pub pid: u32,
}
const _: () = assert!(core::mem::size_of::<TraceTarget>() == 24);

/// A new flow was balanced; `reason` says why it got its backend.
pub const TRACE_NEW_FLOW: u8 = 1;
/// A packet of an established flow (flow table hit).
pub const TRACE_ESTABLISHED: u8 = 2;
/// The client's first packet after its SYN: the flow is established, the client affine.
pub const TRACE_CONFIRMED: u8 = 3;
/// A backend's reply got the VIP back as its source.
pub const TRACE_REPLY: u8 = 4;
/// The packet was dropped; `reason` says why.
pub const TRACE_DROPPED: u8 = 5;

/// New flow: the client's affinity held.
pub const TRACE_REASON_AFFINITY: u8 = 1;
/// New flow: the table slot of the client's hash (`slot`).
pub const TRACE_REASON_TABLE: u8 = 2;
/// Dropped: no backend in service for the client.
pub const TRACE_REASON_NO_BACKEND: u8 = 3;
/// Dropped: a rewrite helper failed half way.
pub const TRACE_REASON_NAT_ERROR: u8 = 4;

/// The packet was a SYN.
pub const TRACE_FLAG_SYN: u8 = 1;
/// The packet was a reset.
pub const TRACE_FLAG_RST: u8 = 2;
/// A reply of a flow still in its handshake (the SYN-ACK, or a refusal).
pub const TRACE_FLAG_HANDSHAKE: u8 = 4;
/// The packet was a UDP datagram (else a TCP segment).
pub const TRACE_FLAG_UDP: u8 = 8;

/// One data-path decision for the traced client's packet. Addresses as the packet had them
/// before the rewrite: the client, the VIP it reached and the backend behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `CLOCK_MONOTONIC` ns.
    pub time_ns: u64,
    pub client: Addr16,
    pub vip: Addr16,
    /// Zero when there is none (dropped for lack of one).
    pub backend: Addr16,
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub backend_port_be: u16,
    /// One of `TRACE_*` kinds.
    pub kind: u8,
    /// One of `TRACE_REASON_*`, or 0.
    pub reason: u8,
    /// `TRACE_FLAG_*` bits.
    pub flags: u8,
    pub _pad0: u8,
    pub _pad1: u16,
    /// `NO_BACKEND` when there is none.
    pub backend_id: u32,
    /// The table slot, for [`TRACE_REASON_TABLE`].
    pub slot: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, plain integers, padding written out as fields.
    unsafe impl aya::Pod for super::TraceTarget {}
}
