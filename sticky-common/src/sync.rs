//! Affinity exchange between nodes (`--peers`): the kernel reports each affinity it records
//! (a confirmed flow) into a ring buffer, only while `Settings::sync_events` is set; the
//! daemon sends them to its peers. Off, the ingress path pays one settings load.

use crate::Addr16;

/// Ring buffer of [`AffinityEvent`]s, written only while `Settings::sync_events` is 1.
pub const AFFINITY_EVENTS: &str = "STICKY_AFFINITY_EVENTS";
/// Ring buffer size: a power-of-two multiple of the page size; 1,170 events of room (56 bytes
/// each with its header): the daemon reads it at once, so about 50,000 new clients a second
/// fit even when it is 20 ms late. What does not fit is lost until the client's next connection
/// reports it again.
pub const AFFINITY_EVENTS_BYTES: u32 = 64 * 1024;

/// A client became (or stayed) affine to a backend: its flow was confirmed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEvent {
    /// The affinity map's key (the client's address masked to the prefix).
    pub client: Addr16,
    /// The backend as configured (`BACKENDS`): ids are per node, addresses are not.
    pub backend: Addr16,
    pub backend_port_be: u16,
    pub _pad0: u16,
    pub backend_id: u32,
    /// `CLOCK_MONOTONIC` ns.
    pub time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityEvent>() == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, plain integers, padding written out as fields.
    unsafe impl aya::Pod for super::AffinityEvent {}
}
