//! Every map of the object. Names come from `sticky_common::maps`; sizes marked "set by
//! userspace" are overridden at load time from the configuration.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use sticky_common::{
    Addr16,
    defaults::{
        DEFAULT_MAX_CLIENTS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_NEW_FLOWS, DEFAULT_TABLE_SIZE, MAX_VIPS,
    },
    maps::{
        Affinity, Backend, BackendStats, COUNTER_COUNT, Flow, FlowKey, MAX_BACKENDS, MAX_SPLICED,
        Settings, Vip, VipKey,
    },
    sync::AFFINITY_EVENTS_BYTES,
    trace::{TRACE_EVENTS_BYTES, TraceTarget},
};

#[map(name = "STICKY_VIPS")]
pub static VIPS: HashMap<VipKey, Vip> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Backend → the VIP its replies leave as (`sticky_common::maps::REPLY_VIPS`): one per
/// backend and VIP protocol.
#[map(name = "STICKY_REPLY_VIPS")]
pub static REPLY_VIPS: HashMap<VipKey, VipKey> = HashMap::with_max_entries(2 * MAX_BACKENDS, 0);

#[map(name = "STICKY_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Set by userspace: 2 × table size.
#[map(name = "STICKY_TABLE")]
pub static TABLE: Array<u32> = Array::with_max_entries(2 * DEFAULT_TABLE_SIZE, 0);

#[map(name = "STICKY_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Set by userspace (`max_flows`).
#[map(name = "STICKY_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Set by userspace (`max_new_flows`).
#[map(name = "STICKY_NEW_FLOWS")]
pub static NEW_FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_MAX_NEW_FLOWS, 0);

/// Set by userspace (`max_clients`).
#[map(name = "STICKY_AFFINITY")]
pub static AFFINITY: LruHashMap<Addr16, Affinity> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CLIENTS, 0);

/// Direct server return: a backend's next hop as the FIB last gave it, on this CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedHop {
    /// The backend address it was looked up for (an id may be reused for another).
    pub dst: Addr16,
    /// Valid until then (`bpf_ktime_get_coarse_ns`).
    pub expires_ns: u64,
    pub ifindex: u32,
    /// The route's MTU: a packet larger once encapsulated is too big.
    pub mtu: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 4],
}

/// DSR next hops by backend id (`dsr::route`): the FIB lookup once per backend, CPU and
/// `NEXT_HOP_TTL_NS`, not once per packet.
#[map(name = "STICKY_DSR_NEXT_HOPS")]
pub static DSR_NEXT_HOPS: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Direct server return: the FIB lookup's parameters, off the 512-byte stack.
#[map(name = "STICKY_DSR_SCRATCH")]
pub static DSR_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "STICKY_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map(name = "STICKY_BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "STICKY_SPLICE_SOCKS")]
pub static SPLICE_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED, 0);

#[map(name = "STICKY_SPLICE_PEERS")]
pub static SPLICE_PEERS: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED, 0);

#[map(name = "STICKY_SPLICE_BYTES")]
pub static SPLICE_BYTES: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SPLICED, 0);

#[inline(always)]
pub fn count(counter: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_backend(id: u32, bytes: u32, new_flow: bool) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(bytes);
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

/// The backend reset a connection still in its handshake.
#[inline(always)]
pub fn count_refused(id: u32) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { (*s).refused += 1 };
    }
}

/// Whom `sticky trace` follows; read once per VIP packet.
#[map(name = "STICKY_TRACE")]
pub static TRACE: Array<TraceTarget> = Array::with_max_entries(1, 0);

/// What happened to the traced client's packets, for `sticky trace` to print.
#[map(name = "STICKY_TRACE_EVENTS")]
pub static TRACE_EVENTS: RingBuf = RingBuf::with_byte_size(TRACE_EVENTS_BYTES, 0);

/// Affinities the kernel recorded, for the daemon to send to its peers (`--peers`); written
/// only while `Settings::sync_events` is set.
#[map(name = "STICKY_AFFINITY_EVENTS")]
pub static AFFINITY_EVENTS: RingBuf = RingBuf::with_byte_size(AFFINITY_EVENTS_BYTES, 0);
