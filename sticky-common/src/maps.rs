//! Map names and the `#[repr(C)]` keys and values of every map, shared by both sides.
//! No `bool`, `enum` or `Option` inside; every pad is written out; sizes are asserted.

use crate::Addr16;

/// VIPs we balance: [`VipKey`] → [`Vip`].
pub const VIPS: &str = "STICKY_VIPS";
/// Backends by id: array of [`Backend`], `MAX_BACKENDS` entries.
pub const BACKENDS: &str = "STICKY_BACKENDS";
/// Two Maglev tables back to back (`2 × table_size` backend ids); [`Settings::active_table`]
/// says which half is live, so userspace writes the other half and flips one word.
pub const TABLE: &str = "STICKY_TABLE";
/// One [`Settings`] entry.
pub const SETTINGS: &str = "STICKY_SETTINGS";
/// Connection tracking of established flows, LRU: [`FlowKey`] → [`Flow`], one entry per
/// direction. Only flows whose client answered the handshake get here (see [`NEW_FLOWS`]), so a
/// flood of SYNs from spoofed sources cannot evict them.
pub const FLOWS: &str = "STICKY_FLOWS";
/// Flows not yet confirmed by the client, LRU, same entries as [`FLOWS`]: a SYN (or a packet of
/// a connection we have no state for) opens its flow here; the client's next non-SYN packet
/// moves it to [`FLOWS`] and records the client's affinity.
pub const NEW_FLOWS: &str = "STICKY_NEW_FLOWS";
/// Client affinity, LRU: client [`Addr16`] → [`Affinity`].
pub const AFFINITY: &str = "STICKY_AFFINITY";
/// Per-CPU global counters, indexed by `COUNTER_*`.
pub const COUNTERS: &str = "STICKY_COUNTERS";
/// Per-CPU [`BackendStats`] by backend id.
pub const BACKEND_STATS: &str = "STICKY_BACKEND_STATS";

/// NAT replies through any node (`--replies-any-node`): a backend's address, port and protocol
/// as a [`VipKey`] → the VIP (a [`VipKey`]) its replies leave as, for replies of flows this
/// node's tables do not hold (their SYN came through another node).
pub const REPLY_VIPS: &str = "STICKY_REPLY_VIPS";

/// Every map name, for checks that each one resolves in the loaded object.
pub const ALL_MAPS: [&str; 13] = [
    VIPS,
    BACKENDS,
    TABLE,
    SETTINGS,
    FLOWS,
    NEW_FLOWS,
    AFFINITY,
    COUNTERS,
    BACKEND_STATS,
    REPLY_VIPS,
    crate::trace::TRACE,
    crate::trace::TRACE_EVENTS,
    crate::sync::AFFINITY_EVENTS,
];

// The splice maps are per process, never pinned: sockets die with the proxy.
/// Proxy mode: every spliced socket under its own cookie; the verdict program is attached here.
pub const SPLICE_SOCKS: &str = "STICKY_SPLICE_SOCKS";
/// Proxy mode: every spliced socket under its *peer's* cookie, the redirect target.
pub const SPLICE_PEERS: &str = "STICKY_SPLICE_PEERS";
/// Proxy mode: bytes the kernel redirected away from a socket (by its cookie), so a half-close
/// is forwarded only after the peer has sent them all.
pub const SPLICE_BYTES: &str = "STICKY_SPLICE_BYTES";
/// Most sockets spliced at once (two per connection).
pub const MAX_SPLICED: u32 = 65_536;

/// The tc program on the client-facing ingress: DNAT to the backend.
pub const PROG_INGRESS: &str = "sticky_ingress";
/// The tc program on the client-facing egress: reverse NAT of replies.
pub const PROG_EGRESS: &str = "sticky_egress";
/// Direct server return, tc: the client-facing ingress encapsulates towards the backend
/// (also the fallback of the XDP program for what it passes on).
pub const PROG_DSR: &str = "sticky_dsr";
/// Direct server return, XDP: the same ingress, encapsulating in place.
pub const PROG_DSR_XDP: &str = "sticky_dsr_xdp";
/// The tc program `sticky backend-setup` attaches on a DSR backend's ingress: decapsulates.
pub const PROG_DECAP: &str = "sticky_decap";
/// The sk_skb stream verdict of proxy mode: moves bytes between spliced sockets.
pub const PROG_SPLICE: &str = "sticky_splice";

/// Upper bound on backend ids; sizes `BACKENDS` and `BACKEND_STATS`.
pub const MAX_BACKENDS: u32 = 1024;
/// A table slot with no backend (nothing in service).
pub const NO_BACKEND: u32 = u32::MAX;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr16,
    pub port_be: u16,
    pub proto: u8,
    pub _pad0: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vip {
    /// Position of the VIP in the configuration (reported in stats).
    pub index: u32,
}
const _: () = assert!(core::mem::size_of::<Vip>() == 4);

/// Slot never used or backend removed: no new flows, no affinity honoured. Established flows
/// keep their NAT (the flow entry holds the address), so a removal breaks no connection.
pub const BACKEND_EMPTY: u8 = 0;
/// In the table: takes new clients.
pub const BACKEND_UP: u8 = 1;
/// Out of the table, but established flows and affine clients still reach it.
pub const BACKEND_DRAINING: u8 = 2;
/// Out of the table and affinity ignored (failed health checks); established flows continue.
pub const BACKEND_DOWN: u8 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr16,
    pub port_be: u16,
    /// One of `BACKEND_*`; read it as a [`crate::BackendState`] with [`Backend::state`].
    pub state: u8,
    pub _pad0: u8,
    /// Bumped whenever the id is given to another address, so affinity to an id's previous
    /// owner is recognised as stale.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Slots per table (prime).
    pub table_size: u32,
    /// 0 or 1: which half of `TABLE` lookups use.
    pub active_table: u32,
    pub hash_seed: u32,
    /// Leading bits of an IPv4 client address that make its key for hashing and affinity
    /// (`crate::choice::client_key`): 24 keeps a /24 on one backend.
    pub affinity_prefix_v4: u8,
    /// The same for IPv6 clients.
    pub affinity_prefix_v6: u8,
    /// DSR on XDP: 1 sends packets back out of the interface they came in on with
    /// XDP_REDIRECT instead of XDP_TX. A veth only wakes its peer for XDP_TX when the peer
    /// runs XDP itself; otherwise the frames wait there for unrelated traffic.
    pub xdp_tx_by_redirect: u8,
    /// 1: each affinity the kernel records is reported in `sync::AFFINITY_EVENTS` for the
    /// daemon to send to its peers (`--peers`); 0: nothing is written.
    pub sync_events: u8,
    /// A client's affinity lapses after this long without traffic.
    pub affinity_timeout_ns: u64,
    /// Direct server return: the outer source of IPv4-in-IPv4 packets (the node's address).
    pub dsr_source_v4: Addr16,
    /// Direct server return: the outer source of IPv6-in-IPv6 packets.
    pub dsr_source_v6: Addr16,
    /// A UDP flow ends after this long without a datagram from its client; the next one is
    /// balanced afresh.
    pub udp_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 64);

/// Whole addresses are client keys unless told otherwise: a zero prefix would put every
/// client on one key.
impl Default for Settings {
    fn default() -> Self {
        Self {
            table_size: 0,
            active_table: 0,
            hash_seed: 0,
            affinity_prefix_v4: crate::defaults::DEFAULT_AFFINITY_PREFIX_V4,
            affinity_prefix_v6: crate::defaults::DEFAULT_AFFINITY_PREFIX_V6,
            xdp_tx_by_redirect: 0,
            sync_events: 0,
            affinity_timeout_ns: 0,
            dsr_source_v4: Addr16 { words: [0; 4] },
            dsr_source_v6: Addr16 { words: [0; 4] },
            udp_timeout_ns: crate::defaults::DEFAULT_UDP_TIMEOUT_NS,
        }
    }
}

/// A TCP or UDP 5-tuple as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr16,
    pub dst: Addr16,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad0: u8,
    pub _pad1: u16,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The key of the backend's replies to this client → VIP flow, whose forward entry is
    /// `forward`.
    #[inline(always)]
    pub const fn reply_key(&self, forward: &Flow) -> FlowKey {
        FlowKey {
            src: forward.nat_addr,
            dst: self.src,
            sport_be: forward.nat_port_be,
            dport_be: self.sport_be,
            proto: self.proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

/// Client → VIP: rewrite the destination to the backend.
pub const FLOW_FORWARD: u8 = 1;
/// Backend → client: rewrite the source back to the VIP.
pub const FLOW_REVERSE: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Forward: the backend's address; reverse: the VIP's.
    pub nat_addr: Addr16,
    pub nat_port_be: u16,
    /// `FLOW_FORWARD` or `FLOW_REVERSE`.
    pub direction: u8,
    pub _pad0: u8,
    pub backend_id: u32,
    /// Forward only: when this flow last refreshed its client's affinity (ktime ns).
    pub touched_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub backend_id: u32,
    /// The backend's generation when the affinity was made.
    pub generation: u32,
    /// Last traffic from this client (ktime ns, `CLOCK_MONOTONIC`).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Affinity>() == 16);

/// How often (at most) an established flow's packets refresh the client's affinity: one map
/// write per flow per second rather than per packet.
pub const AFFINITY_REFRESH_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Resets the backend sent to connections still in their handshake: it refused them
    /// (nothing listening). Health checks take such a backend out at once.
    pub refused: u64,
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 32);

/// Not ours (other address/port/protocol) and passed untouched.
pub const COUNTER_PASS: u32 = 0;
/// Malformed or truncated, passed untouched.
pub const COUNTER_PARSE_ERROR: u32 = 1;
/// Fragments and IPv6 headers we do not walk, passed untouched.
pub const COUNTER_UNHANDLED: u32 = 2;
/// VIP traffic dropped because no backend is in service.
pub const COUNTER_DROP_NO_BACKEND: u32 = 3;
/// VIP traffic dropped because a rewrite helper failed half way.
pub const COUNTER_DROP_NAT_ERROR: u32 = 4;
/// Packets rewritten (either direction).
pub const COUNTER_NAT: u32 = 5;
/// Direct server return: client packets encapsulated towards their backend.
pub const COUNTER_DSR: u32 = 6;
/// Direct server return: VIP packets dropped because they could not be encapsulated or
/// routed (no route to the backend, a helper failed, no outer source of the family).
pub const COUNTER_ENCAP_ERROR: u32 = 7;
/// Direct server return: VIP packets dropped because with the outer header they exceed the
/// route's MTU (backends advertise a smaller MSS: `sticky backend-setup`).
pub const COUNTER_TOO_BIG: u32 = 8;
pub const COUNTER_COUNT: u32 = 9;
/// Each counter's name in status and metrics, by id.
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = {
    let mut names = [""; COUNTER_COUNT as usize];
    names[COUNTER_PASS as usize] = "pass";
    names[COUNTER_PARSE_ERROR as usize] = "parse_error";
    names[COUNTER_UNHANDLED as usize] = "unhandled";
    names[COUNTER_DROP_NO_BACKEND as usize] = "drop_no_backend";
    names[COUNTER_DROP_NAT_ERROR as usize] = "drop_nat_error";
    names[COUNTER_NAT as usize] = "nat";
    names[COUNTER_DSR as usize] = "dsr";
    names[COUNTER_ENCAP_ERROR as usize] = "encap_error";
    names[COUNTER_TOO_BIG as usize] = "too_big";
    names
};
const _: () = {
    let mut i = 0;
    while i < COUNTER_NAMES.len() {
        assert!(!COUNTER_NAMES[i].is_empty(), "a counter without a name");
        i += 1;
    }
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `#[repr(C)]`, plain integers, padding written out as fields.
    unsafe impl aya::Pod for crate::Addr16 {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for Vip {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for BackendStats {}
}
