//! Client → VIP: find or make the flow, DNAT it to its backend.
//!
//! TCP and UDP alike: a UDP flow is its 5-tuple; its first datagram opens it like a SYN, its
//! client's next one confirms it, and it ends after `Settings::udp_timeout_ns` without a
//! datagram from the client (the one direction every forwarding mode sees).
//!
//! Backend choice for a new flow: `sticky_common::choose` over the maps (see `choice` there:
//! the one place the rule lives).
//!
//! A new flow first lives in `NEW_FLOWS`; the client's next non-SYN packet (the handshake's
//! ACK) moves it to `FLOWS` and records the client's affinity. Sources that never answer —
//! a SYN flood from spoofed addresses — only churn `NEW_FLOWS`: established flows and
//! affinities are never evicted to make room for them.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use sticky_common::{
    Addr16, Reason, View,
    choice::slot_of,
    choose, client_key,
    maps::{
        AFFINITY_REFRESH_NS, Affinity, Backend, COUNTER_DROP_NO_BACKEND, COUNTER_NAT, COUNTER_PASS,
        FLOW_FORWARD, FLOW_REVERSE, Flow, FlowKey, NO_BACKEND, Settings, VipKey,
    },
    sync::AffinityEvent,
    trace::{
        TRACE_CONFIRMED, TRACE_ESTABLISHED, TRACE_NEW_FLOW, TRACE_REASON_AFFINITY,
        TRACE_REASON_NAT_ERROR, TRACE_REASON_NO_BACKEND, TRACE_REASON_TABLE,
    },
};

use crate::{
    maps::{
        AFFINITY, AFFINITY_EVENTS, BACKENDS, FLOWS, NEW_FLOWS, SETTINGS, TABLE, VIPS, count,
        count_backend,
    },
    nat::{End, rewrite},
    parse::{Packet, same_addr},
    trace::{self, Decision},
    verdict::{Hook, Tc, drop, forwarded, on_transport, pass, rewrite_failed},
};

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    on_transport::<Tc, _>(ctx, |pkt| match decide(pkt, Forward::Nat) {
        Ok(target) => nat(ctx, pkt, &target),
        Err(miss) => miss.verdict::<Tc>(),
    })
}

/// How the node forwards: NAT keeps both directions of a flow (replies come back through
/// it); DSR only the client's (backends answer the client themselves).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    Nat,
    Dsr,
}

/// Where a client packet goes.
pub struct Target {
    pub addr: Addr16,
    pub port_be: u16,
    pub id: u32,
    /// The packet opened its flow.
    pub new_flow: bool,
    /// The client is traced.
    pub traced: bool,
    /// The packet's time (`bpf_ktime_get_coarse_ns`), read once for every use.
    pub now: u64,
}

/// Why a packet has no target.
pub enum Miss {
    /// Not for one of our VIPs.
    NotOurs,
    /// For a VIP, but nothing is in service for the client: dropped.
    NoBackend,
}

impl Miss {
    #[inline(always)]
    pub fn verdict<H: Hook>(&self) -> i32 {
        match self {
            Miss::NotOurs => pass::<H>(COUNTER_PASS),
            Miss::NoBackend => drop::<H>(COUNTER_DROP_NO_BACKEND),
        }
    }
}

/// The one ingress decision, whichever hook and forwarding mode: find or make the client
/// packet's flow and its backend.
#[inline(always)]
pub fn decide(pkt: &Packet, mode: Forward) -> Result<Target, Miss> {
    let vip = VipKey {
        addr: pkt.dst,
        port_be: pkt.dport_be,
        proto: pkt.proto,
        _pad0: 0,
    };
    if VIPS.get_ptr(&vip).is_none() {
        return Err(Miss::NotOurs);
    }
    let traced = trace::traced(&pkt.src);
    let key = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        _pad0: 0,
        _pad1: 0,
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The flow the packet belongs to, if it has one that still holds.
    let known = if pkt.syn {
        // A SYN starts a new connection even when a closed one with the same ports is still
        // in the table: it is balanced afresh instead of following a backend that may be gone.
        forget_established(pkt, &key);
        None
    } else if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a live LRU value; a concurrent update at worst delays a refresh.
        let flow = unsafe { &mut *flow };
        if expired(pkt, flow.touched_ns, now) {
            // An idle UDP flow: its client is balanced afresh, like a new connection.
            let old = *flow;
            forget(pkt, &key, &old);
            None
        } else {
            if now.saturating_sub(flow.touched_ns) > AFFINITY_REFRESH_NS {
                flow.touched_ns = now;
                refresh_affinity(&affinity_key(&pkt.src), flow, now);
            }
            if traced {
                trace::ingress(pkt, &decision(TRACE_ESTABLISHED, 0, 0, flow));
            }
            Some(*flow)
        }
    } else if let Some(flow) = NEW_FLOWS.get_ptr(&key) {
        // SAFETY: read-only copy of an LRU value.
        let flow = unsafe { *flow };
        if expired(pkt, flow.touched_ns, now) {
            None
        } else {
            confirm(pkt, &key, &flow, now, mode);
            if traced {
                trace::ingress(pkt, &decision(TRACE_CONFIRMED, 0, 0, &flow));
            }
            Some(flow)
        }
    } else {
        // Mid-connection with no state (maps lost, evicted, or — behind ECMP — the SYN went
        // to another node): balanced like a SYN, which gives the same backend as that node's
        // table whenever the backend set is the same, and kept with the unconfirmed flows
        // until the client's next packet.
        None
    };
    let (flow, new_flow) = match known {
        Some(flow) => (Some(flow), false),
        None => (open_flow(pkt, &key, now, traced, mode), true),
    };
    let Some(flow) = flow else {
        return Err(no_backend(pkt, traced));
    };
    Ok(Target {
        addr: flow.nat_addr,
        port_be: flow.nat_port_be,
        id: flow.backend_id,
        new_flow,
        traced,
        now,
    })
}

/// A UDP flow last refreshed at `touched_ns` has outlived its idle timeout. (A flow's time is
/// refreshed at most once a second, so the timeout is kept to within a second.)
#[inline(always)]
fn expired(pkt: &Packet, touched_ns: u64, now: u64) -> bool {
    pkt.is_udp()
        && SETTINGS
            .get(0)
            .is_some_and(|s| now.saturating_sub(touched_ns) > s.udp_timeout_ns)
}

/// NAT: the destination becomes the backend; the stack routes the packet.
#[inline(always)]
fn nat(ctx: &TcContext, pkt: &Packet, t: &Target) -> i32 {
    if rewrite(ctx, pkt, End::Destination, &t.addr, t.port_be).is_err() {
        if t.traced {
            let d = Decision::dropped(TRACE_REASON_NAT_ERROR, &t.addr, t.port_be, t.id);
            trace::ingress(pkt, &d);
        }
        return rewrite_failed(ctx);
    }
    count(COUNTER_NAT);
    count_backend(t.id, ctx.len(), t.new_flow);
    forwarded()
}

/// Picks the backend for a flow we have no state for and records both directions of it in
/// `NEW_FLOWS`. Returns the forward entry (backend address and port to NAT to).
#[inline(always)]
fn open_flow(pkt: &Packet, key: &FlowKey, now: u64, traced: bool, mode: Forward) -> Option<Flow> {
    let settings = SETTINGS.get(0)?;
    let choice = choose(&Maps { settings }, &pkt.src, settings, now)?;
    let (id, backend) = (choice.id, choice.backend);
    // A backend at the unspecified address is a local port on whatever address the client
    // reached (`sticky cluster`: loopback and every interface alike).
    let target = if backend.addr.is_unspecified() {
        pkt.dst
    } else {
        backend.addr
    };
    let forward = Flow {
        nat_addr: target,
        nat_port_be: backend.port_be,
        direction: FLOW_FORWARD,
        _pad0: 0,
        backend_id: id,
        touched_ns: now,
    };
    if traced {
        let (reason, slot) = match choice.reason {
            Reason::Affinity => (TRACE_REASON_AFFINITY, 0),
            Reason::Table => (
                TRACE_REASON_TABLE,
                slot_of(&client_key(&pkt.src, settings), settings),
            ),
        };
        trace::ingress(pkt, &decision(TRACE_NEW_FLOW, reason, slot, &forward));
    }
    // Map inserts can only fail on allocation: the packet still goes to the chosen backend,
    // and the next packet tries again. Reverse first: a reply must never find no entry once
    // its SYN went out. DSR replies never pass here: no reverse entry.
    if mode == Forward::Nat {
        let _ = NEW_FLOWS.insert(&reply_key(pkt, &forward), &reverse_of(pkt, &forward), 0);
    }
    let _ = NEW_FLOWS.insert(key, &forward, 0);
    Some(forward)
}

/// Nothing in service for the client: traced here, dropped by the caller.
#[inline(always)]
fn no_backend(pkt: &Packet, traced: bool) -> Miss {
    if traced {
        let none = &Addr16 { words: [0; 4] };
        let d = Decision::dropped(TRACE_REASON_NO_BACKEND, none, 0, NO_BACKEND);
        trace::ingress(pkt, &d);
    }
    Miss::NoBackend
}

/// The traced decision for a forward flow.
#[inline(always)]
fn decision(kind: u8, reason: u8, slot: u32, flow: &Flow) -> Decision<'_> {
    Decision {
        kind,
        reason,
        flags: 0,
        slot,
        backend: &flow.nat_addr,
        backend_port_be: flow.nat_port_be,
        backend_id: flow.backend_id,
    }
}

/// The client answered: its flow becomes established (both directions in `FLOWS`) and the
/// client affine to the flow's backend. The `NEW_FLOWS` entries are left to age out.
#[inline(always)]
fn confirm(pkt: &Packet, key: &FlowKey, forward: &Flow, now: u64, mode: Forward) {
    if mode == Forward::Nat {
        let _ = FLOWS.insert(&reply_key(pkt, forward), &reverse_of(pkt, forward), 0);
    }
    let _ = FLOWS.insert(key, forward, 0);
    remember_client(&affinity_key(&pkt.src), forward, now);
}

/// The key a client's affinity is kept under (`client_key`: its address masked to the prefix).
#[inline(always)]
fn affinity_key(client: &Addr16) -> Addr16 {
    SETTINGS.get(0).map_or(*client, |s| client_key(client, s))
}

/// A SYN reusing the ports of an established flow: both of the old flow's entries go.
#[inline(always)]
fn forget_established(pkt: &Packet, key: &FlowKey) {
    // SAFETY: read-only copy of an LRU value.
    let Some(old) = FLOWS.get_ptr(key).map(|f| unsafe { *f }) else {
        return;
    };
    forget(pkt, key, &old);
}

/// Both entries of the established flow `old` go.
#[inline(always)]
fn forget(pkt: &Packet, key: &FlowKey, old: &Flow) {
    let _ = FLOWS.remove(&reply_key(pkt, old));
    let _ = FLOWS.remove(key);
}

/// The key of the backend's replies to the flow `forward` of `pkt`'s client.
#[inline(always)]
fn reply_key(pkt: &Packet, forward: &Flow) -> FlowKey {
    FlowKey {
        src: forward.nat_addr,
        dst: pkt.src,
        sport_be: forward.nat_port_be,
        dport_be: pkt.sport_be,
        proto: pkt.proto,
        _pad0: 0,
        _pad1: 0,
    }
}

/// The reply direction's entry: the VIP the client reached goes back as the source.
#[inline(always)]
fn reverse_of(pkt: &Packet, forward: &Flow) -> Flow {
    Flow {
        nat_addr: pkt.dst,
        nat_port_be: pkt.dport_be,
        direction: FLOW_REVERSE,
        _pad0: 0,
        backend_id: forward.backend_id,
        touched_ns: forward.touched_ns,
    }
}

/// The decision's view of the maps: the live half of the table, backends, affinity.
struct Maps<'a> {
    settings: &'a Settings,
}

impl View for Maps<'_> {
    #[inline(always)]
    fn backend(&self, id: u32) -> Option<Backend> {
        BACKENDS.get(id).copied()
    }

    #[inline(always)]
    fn table_entry(&self, slot: u32) -> Option<u32> {
        let base = if self.settings.active_table == 0 {
            0
        } else {
            self.settings.table_size
        };
        TABLE.get(base + slot).copied()
    }

    #[inline(always)]
    fn affinity(&self, client: &Addr16) -> Option<Affinity> {
        // SAFETY: read-only copy of an LRU value.
        AFFINITY.get_ptr(client).map(|a| unsafe { *a })
    }
}

/// Keeps a client with a long-lived connection affine: at most once a second per flow.
#[inline(always)]
fn refresh_affinity(client: &Addr16, flow: &Flow, now: u64) {
    if let Some(affinity) = AFFINITY.get_ptr_mut(client) {
        // SAFETY: a live LRU value; racing refreshes write the same kind of timestamp.
        let affinity = unsafe { &mut *affinity };
        if affinity.backend_id == flow.backend_id {
            affinity.last_seen_ns = now;
        }
        return;
    }
    // Evicted while the connection lives: recreate it.
    remember_client(client, flow, now);
}

/// Makes `client` affine to `flow`'s backend, if the id still names that backend and it takes
/// new connections of affine clients.
#[inline(always)]
fn remember_client(client: &Addr16, flow: &Flow, now: u64) {
    let Some(backend) = BACKENDS.get(flow.backend_id) else {
        return;
    };
    if backend.honours_affinity()
        && (backend.addr.is_unspecified() || same_addr(&backend.addr, &flow.nat_addr))
        && backend.port_be == flow.nat_port_be
    {
        if !renew(client, flow.backend_id, &backend, now) {
            let affinity = Affinity {
                backend_id: flow.backend_id,
                generation: backend.generation,
                last_seen_ns: now,
            };
            let _ = AFFINITY.insert(client, &affinity, 0);
        }
        if SETTINGS.get(0).is_some_and(|s| s.sync_events != 0) {
            report_affinity(client, &backend, flow.backend_id, now);
        }
    }
}

/// A returning client already affine to this very backend (same id, same generation): its
/// entry is renewed in place, which costs a lookup where an insert into the LRU costs an
/// allocation and its lock. Whether it was.
#[inline(always)]
fn renew(client: &Addr16, id: u32, backend: &Backend, now: u64) -> bool {
    let Some(affinity) = AFFINITY.get_ptr_mut(client) else {
        return false;
    };
    // SAFETY: a live LRU value; racing renewals write the same kind of timestamp.
    let affinity = unsafe { &mut *affinity };
    if affinity.backend_id != id || affinity.generation != backend.generation {
        return false;
    }
    affinity.last_seen_ns = now;
    true
}

/// Tells the daemon (and through it the peers) that `client` is affine to `backend`. The
/// record is written in place in the ring buffer, never on the stack, which ingress has little
/// of left; kept out of line so that stack frame is its own.
#[inline(never)]
fn report_affinity(client: &Addr16, backend: &Backend, id: u32, now: u64) {
    // Full ring (the daemon is behind): this one is lost; the client's next confirmed
    // connection reports it again.
    let Some(mut entry) = AFFINITY_EVENTS.reserve::<AffinityEvent>(0) else {
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record, sized for an `AffinityEvent`; plain data, written
    // field by field.
    unsafe {
        (*e).client = *client;
        (*e).backend = backend.addr;
        (*e).backend_port_be = backend.port_be;
        (*e)._pad0 = 0;
        (*e).backend_id = id;
        (*e).time_ns = now;
    }
    entry.submit(0);
}
