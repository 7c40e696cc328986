//! `sticky status` and the metrics endpoint. The loop hands the small state it published
//! (backends, table, health, drains, rates) to a watch channel; a snapshot walks the maps on
//! a blocking thread with its own handles, each map once, so full maps never stall the loop.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sticky_common::{
    choice::affinity_holds,
    maps::{self as names, Affinity, BackendStats, COUNTER_NAMES, FLOW_FORWARD, Flow, FlowKey},
};
use tokio::sync::{oneshot, watch};

use super::Daemon;
use crate::{
    addr::{BackendSpec, VipAddr},
    backends::BackendSet,
    clock::monotonic_ns,
    control::Response,
    datapath::{Counters, Datapath, MapMemory, MapReader},
    namespaces::PinScope,
    peers::{PeerStats, PeersConfig},
    status::{BackendStatus, ClosingStatus, DnsStatus, Health, MapFill, Status},
};

/// What the loop hands over for status reports: small, replaced whole.
#[derive(Default)]
pub(super) struct ReportInput {
    instance: String,
    vips: Vec<VipAddr>,
    ifaces: Vec<String>,
    table_size: u32,
    affinity_timeout_ns: u64,
    affinity_prefix: String,
    forwarding: String,
    backends: Vec<BackendSpec>,
    set: BackendSet,
    table: Arc<Vec<u32>>,
    /// Health and health transitions per checked backend.
    health: BTreeMap<SocketAddr, (Health, u64)>,
    drains: BTreeMap<SocketAddr, Option<Instant>>,
    close_rates: BTreeMap<SocketAddr, u32>,
    closing: Vec<ClosingStatus>,
    /// Slow start progress by backend id.
    ramps: BTreeMap<u32, f64>,
    dns: Vec<DnsStatus>,
    /// New flows per second by backend id.
    rates: BTreeMap<u32, f64>,
    pins: PinScope,
    announce: Option<crate::status::AnnounceStatus>,
    /// The affinity exchange's settings and counters, when on.
    peers: Option<(PeersConfig, Arc<PeerStats>)>,
}

/// The loop's side of reporting.
pub(super) struct Reporting {
    /// Last new-flow totals per backend id: when, the total, the rate since the one before.
    rates: BTreeMap<u32, (Instant, u64, f64)>,
    published: watch::Sender<Arc<ReportInput>>,
    snapshots: Arc<Snapshots>,
}

impl Reporting {
    pub(super) fn new(maps: Arc<MapReader>) -> Self {
        let (published, receiver) = watch::channel(Arc::default());
        Self {
            rates: BTreeMap::new(),
            published,
            snapshots: Arc::new(Snapshots {
                maps,
                published: receiver,
                last: Mutex::new(None),
            }),
        }
    }

    pub(super) fn snapshots(&self) -> Arc<Snapshots> {
        Arc::clone(&self.snapshots)
    }

    /// Reads each backend's new-flow total (one lookup per backend) for its rate.
    pub(super) fn measure_rates(&mut self, set: &BackendSet, dp: &Datapath, now: Instant) {
        for (id, _) in set.iter() {
            if let Ok(stats) = dp.backend_stats(id) {
                let entry = self.rates.entry(id).or_insert((now, stats.new_flows, 0.0));
                let secs = now.duration_since(entry.0).as_secs_f64();
                if secs > 0.0 {
                    *entry = (
                        now,
                        stats.new_flows,
                        (stats.new_flows.saturating_sub(entry.1)) as f64 / secs,
                    );
                }
            }
        }
    }
}

/// Builds status snapshots from the published state and the maps; any thread may call it.
pub(super) struct Snapshots {
    maps: Arc<MapReader>,
    published: watch::Receiver<Arc<ReportInput>>,
    /// The last walk of the maps, when it started and how long it took.
    last: Mutex<Option<(Instant, Duration, Walk)>>,
}

/// A metrics scrape reuses the last walk's map counts while they are younger than this many
/// times the walk took, and never longer than [`MAX_REUSE`]; everything else in the scrape
/// (backend states and health, counters, per-backend packets and bytes) is read afresh.
/// Walking 1M flows and clients takes over a second (mostly the kernel's bucket walk):
/// scraped every second that was a whole CPU, now about a tenth of one. Small tables walk in
/// milliseconds: their counts stay fresh.
const SCRAPE_DUTY: u32 = 10;
const MAX_REUSE: Duration = Duration::from_secs(15);

/// Whether the counts of a walk that started `at` and took `took` may still answer a scrape.
fn reusable(at: Instant, took: Duration, now: Instant) -> bool {
    now.saturating_duration_since(at) < (took * SCRAPE_DUTY).min(MAX_REUSE)
}

impl Snapshots {
    /// A snapshot whose walk started after this call: callers that arrive while a walk runs
    /// wait for the next one, and callers queued behind the same walk share its counts.
    pub(super) fn take(&self) -> anyhow::Result<Status> {
        let asked = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let published = Arc::clone(&self.published.borrow());
        if let Some((at, _, walk)) = last.as_mut()
            && *at >= asked
        {
            walk.refresh(&published, &self.maps)?;
            return Ok(assemble(&published, walk, Instant::now()));
        }
        self.walk(&published, &mut last)
    }

    /// For metrics scrapes: the last walk's map counts while [`reusable`], everything else
    /// read afresh; else a new walk.
    pub(super) fn take_recent(&self) -> anyhow::Result<Status> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let published = Arc::clone(&self.published.borrow());
        if let Some((at, took, walk)) = last.as_mut()
            && reusable(*at, *took, Instant::now())
        {
            walk.refresh(&published, &self.maps)?;
            return Ok(assemble(&published, walk, Instant::now()));
        }
        self.walk(&published, &mut last)
    }

    fn walk(
        &self,
        published: &ReportInput,
        last: &mut Option<(Instant, Duration, Walk)>,
    ) -> anyhow::Result<Status> {
        let started = Instant::now();
        let walk = walk(published, &self.maps)?;
        let status = assemble(published, &walk, Instant::now());
        *last = Some((started, started.elapsed(), walk));
        Ok(status)
    }
}

/// What one pass over the maps counted: each map read once, its entries counted as they
/// stream by and none kept (at 1M flows and clients the entries were 150 MB, and putting
/// every flow key in a set a third of the walk's CPU). The counters, per-backend stats and
/// map sizes are cheap reads, refreshed when the counts are reused.
#[derive(Clone, Default)]
struct Walk {
    affinity_entries: u64,
    /// Clients whose affinity holds, by backend id.
    affine: BTreeMap<u32, u64>,
    flow_entries: u64,
    /// Forward flows, by backend id.
    active: BTreeMap<u32, u64>,
    /// Keys in the new-flow table, and how many of them are established flows (confirmed
    /// flows stay in the new-flow table until they age out).
    new_flow_keys: u64,
    new_flows_established: u64,
    counters: Counters,
    /// By backend id, for the backends status reports.
    stats: BTreeMap<u32, BackendStats>,
    /// Size and memory of every per-instance map.
    memory: Vec<MapMemory>,
}

impl Walk {
    fn count_affinity(&mut self, p: &ReportInput, a: &Affinity, now_ns: u64) {
        self.affinity_entries += 1;
        if affinity_holds(a, &p.set.entry(a.backend_id), now_ns, p.affinity_timeout_ns) {
            *self.affine.entry(a.backend_id).or_default() += 1;
        }
    }

    /// `new_flow_keys` loses the keys found established: each is counted once, even when a
    /// walk meets a key twice.
    fn count_flow(&mut self, key: &FlowKey, f: &Flow, new_flow_keys: &mut HashSet<FlowKey>) {
        self.flow_entries += 1;
        if f.direction == FLOW_FORWARD {
            *self.active.entry(f.backend_id).or_default() += 1;
        }
        if new_flow_keys.remove(key) {
            self.new_flows_established += 1;
        }
    }

    /// Reads the cheap parts again: counters, per-backend stats, map sizes.
    fn refresh(&mut self, p: &ReportInput, maps: &MapReader) -> anyhow::Result<()> {
        let mut stats = BTreeMap::new();
        for b in &p.backends {
            if let Some(id) = p.set.id_of(b.addr) {
                stats.insert(id, maps.backend_stats(id)?);
            }
        }
        self.stats = stats;
        self.counters = maps.counters()?;
        self.memory = maps.map_memory()?;
        Ok(())
    }
}

/// One pass over the maps.
fn walk(p: &ReportInput, maps: &MapReader) -> anyhow::Result<Walk> {
    let now_ns = monotonic_ns();
    // The new-flow table's keys are kept (it is the smaller table: `--max-new-flows`).
    let mut new_flow_keys: HashSet<FlowKey> = maps.new_flow_keys().into_iter().collect();
    let mut walk = Walk {
        new_flow_keys: new_flow_keys.len() as u64,
        ..Walk::default()
    };
    walk.refresh(p, maps)?;
    maps.each_affinity(|_, a| walk.count_affinity(p, a, now_ns));
    maps.each_flow(|k, f| walk.count_flow(k, f, &mut new_flow_keys));
    Ok(walk)
}

/// The snapshot of what a walk counted.
fn assemble(p: &ReportInput, walk: &Walk, now: Instant) -> Status {
    let (affine, active) = (&walk.affine, &walk.active);
    let new_flow_entries = walk.new_flow_keys - walk.new_flows_established.min(walk.new_flow_keys);
    let mut slots: BTreeMap<u32, u64> = BTreeMap::new();
    for &id in p.table.iter() {
        *slots.entry(id).or_default() += 1;
    }
    let size = p.table.len().max(1) as f64;
    let members = p.set.members();
    let total_weight: u32 = members.iter().map(|m| m.weight).sum();
    let mut backends = Vec::new();
    for b in &p.backends {
        let Some(id) = p.set.id_of(b.addr) else {
            continue;
        };
        let stats = walk.stats.get(&id).copied().unwrap_or_default();
        let in_table = members.iter().any(|m| m.id == id);
        let (health, health_transitions) = p
            .health
            .get(&b.addr)
            .copied()
            .unwrap_or((Health::Unchecked, 0));
        backends.push(BackendStatus {
            id,
            addr: b.addr,
            state: p.set.entry(id).state(),
            health,
            weight: b.weight,
            table_share: slots.get(&id).copied().unwrap_or(0) as f64 / size,
            ideal_share: if in_table && total_weight > 0 {
                f64::from(b.weight) / f64::from(total_weight)
            } else {
                0.0
            },
            affine_clients: affine.get(&id).copied().unwrap_or(0),
            active_flows: active.get(&id).copied().unwrap_or(0),
            new_flows_total: stats.new_flows,
            refused_total: stats.refused,
            new_flows_per_sec: p.rates.get(&id).copied().unwrap_or(0.0),
            packets: stats.packets,
            bytes: stats.bytes,
            health_transitions,
            drain_deadline_secs: p
                .drains
                .get(&b.addr)
                .copied()
                .flatten()
                .map(|d| d.saturating_duration_since(now).as_secs()),
            drain_close_rate: p.close_rates.get(&b.addr).copied(),
            slow_start: p.ramps.get(&id).copied(),
        });
    }
    Status {
        announce: p.announce.clone(),
        instance: p.instance.clone(),
        vips: p.vips.clone(),
        ifaces: p.ifaces.clone(),
        table_size: p.table_size,
        affinity_prefix: p.affinity_prefix.clone(),
        forwarding: p.forwarding.clone(),
        backends,
        counters: COUNTER_NAMES
            .iter()
            .map(|n| n.to_string())
            .zip(walk.counters.values)
            .collect(),
        affinity_entries: walk.affinity_entries,
        flow_entries: walk.flow_entries,
        new_flow_entries,
        map_bytes: walk.memory.iter().map(|m| m.bytes).sum(),
        maps: map_fill(walk),
        pins: p.pins.name().to_string(),
        closing: p.closing.clone(),
        dns: p.dns.clone(),
        peers: p.peers.as_ref().map(|(config, stats)| stats.status(config)),
    }
}

/// The maps that fill with traffic, by the short name metrics label them with.
fn map_fill(walk: &Walk) -> Vec<MapFill> {
    let max_entries = |name: &str| {
        walk.memory
            .iter()
            .find(|m| m.name == name)
            .map_or(0, |m| m.max_entries)
    };
    [
        ("flows", names::FLOWS, walk.flow_entries),
        ("new_flows", names::NEW_FLOWS, walk.new_flow_keys),
        ("affinity", names::AFFINITY, walk.affinity_entries),
    ]
    .into_iter()
    .map(|(map, name, entries)| MapFill {
        map: map.to_string(),
        entries,
        max_entries: max_entries(name),
    })
    .collect()
}

impl Daemon {
    /// Hands the state status reports over to the snapshot side.
    pub(super) fn share(&self) {
        let health = self
            .config
            .backends
            .iter()
            .filter_map(|b| Some((b.addr, self.health.report(b.addr)?)))
            .collect();
        self.report.published.send_replace(Arc::new(ReportInput {
            instance: self.config.instance.clone(),
            vips: self.config.vips.clone(),
            ifaces: self.config.ifaces.clone(),
            table_size: self.dp.table_size(),
            affinity_timeout_ns: self.dp.affinity_timeout().as_nanos() as u64,
            affinity_prefix: self.config.affinity_prefix.to_string(),
            forwarding: self.dp.forwarding(),
            backends: self.config.backends.clone(),
            set: self.publishing.set.clone(),
            table: Arc::clone(&self.publishing.table),
            health,
            drains: self.publishing.drains.clone(),
            close_rates: self.publishing.close_rates.clone(),
            closing: self.publishing.closing.iter().map(|c| c.status()).collect(),
            ramps: self.ramp_progress(Instant::now()),
            dns: self.dns.status(),
            rates: self.report.rates.iter().map(|(&id, r)| (id, r.2)).collect(),
            pins: self.pin_scope,
            announce: self
                .announce
                .as_ref()
                .map(super::announce::Announcer::status),
            peers: (self.config.peers.clone())
                .zip(self.peers.as_ref().map(|p| Arc::clone(&p.stats))),
        }));
        if let Some(peers) = &self.peers {
            peers.backends.send_replace(self.publishing.set.clone());
        }
    }

    /// Answers a status request from a blocking task: the loop goes on while the maps are
    /// walked.
    pub(super) fn status_later(&self, reply: oneshot::Sender<Response>) {
        self.share();
        let snapshots = self.report.snapshots();
        tokio::spawn(async move {
            let response = match tokio::task::spawn_blocking(move || snapshots.take()).await {
                Ok(Ok(status)) => Response::ok(status),
                Ok(Err(e)) => Response::err(format!("{e:#}")),
                Err(e) => Response::err(format!("status snapshot failed: {e}")),
            };
            let _ = reply.send(response);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use sticky_common::{Addr16, BackendState, maps::FLOW_REVERSE};

    use super::*;

    #[test]
    fn a_scrape_reuses_map_counts_for_ten_walks_at_most_15_s() {
        let at = Instant::now();
        let ms = Duration::from_millis;
        // A walk of a second: reused for ten.
        assert!(reusable(at, ms(1000), at + ms(9_900)));
        assert!(!reusable(at, ms(1000), at + ms(10_000)));
        // Never past 15 s, however slow the walk.
        assert!(reusable(at, ms(7000), at + ms(14_900)));
        assert!(!reusable(at, ms(7000), at + ms(15_000)));
        // Small tables walk in a millisecond: a scrape 20 ms later walks anew.
        assert!(!reusable(at, ms(1), at + ms(20)));
        assert!(reusable(at, ms(1), at + ms(5)));
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn flow(src: u32, backend_id: u32, direction: u8) -> (FlowKey, Flow) {
        let key = FlowKey {
            src: Addr16::from_v4_word(src),
            ..FlowKey::default()
        };
        let flow = Flow {
            backend_id,
            direction,
            ..Flow::default()
        };
        (key, flow)
    }

    #[test]
    fn one_walk_counts_every_backend() {
        let backends = vec![
            BackendSpec {
                addr: addr(1),
                weight: 3,
            },
            BackendSpec {
                addr: addr(2),
                weight: 1,
            },
        ];
        let mut set = BackendSet::default();
        set.reconcile(&backends).unwrap();
        set.set_state(addr(2), BackendState::Draining);
        let (one, two) = (set.id_of(addr(1)).unwrap(), set.id_of(addr(2)).unwrap());
        let now = Instant::now();
        let p = ReportInput {
            table_size: 4,
            affinity_timeout_ns: 100,
            table: Arc::new(vec![one, one, one, one]),
            health: [(addr(2), (Health::Failing, 2))].into(),
            drains: [(addr(2), Some(now + Duration::from_secs(30)))].into(),
            rates: [(one, 1.5)].into(),
            backends,
            set: set.clone(),
            ..ReportInput::default()
        };
        let affinity = |client, backend_id, last_seen_ns| {
            let generation = set.entry(backend_id).generation;
            let a = Affinity {
                backend_id,
                generation,
                last_seen_ns,
            };
            (Addr16::from_v4_word(client), a)
        };
        let flows = vec![
            flow(1, one, FLOW_FORWARD),
            flow(2, one, FLOW_REVERSE),
            flow(3, two, FLOW_FORWARD),
        ];
        // Fresh on both (draining honours affinity), one lapsed.
        let affinities = [
            affinity(1, one, 950),
            affinity(2, two, 900),
            affinity(3, one, 10),
        ];
        let mut new_flow_keys: HashSet<FlowKey> = [flows[0].0, flow(9, two, FLOW_FORWARD).0].into();
        let mut walk = Walk {
            new_flow_keys: new_flow_keys.len() as u64,
            counters: Counters::default(),
            stats: [(
                one,
                BackendStats {
                    new_flows: 7,
                    ..BackendStats::default()
                },
            )]
            .into(),
            memory: [(names::FLOWS, 8), (names::AFFINITY, 4), (names::VIPS, 2)]
                .into_iter()
                .map(|(name, max_entries)| MapMemory {
                    name: name.to_string(),
                    max_entries,
                    bytes: 21,
                })
                .collect(),
            ..Walk::default()
        };
        for (_, a) in &affinities {
            walk.count_affinity(&p, a, 1000);
        }
        for (k, f) in &flows {
            walk.count_flow(k, f, &mut new_flow_keys);
        }
        let s = assemble(&p, &walk, now);
        assert_eq!(
            (
                s.affinity_entries,
                s.flow_entries,
                s.new_flow_entries,
                s.map_bytes
            ),
            (3, 3, 1, 63)
        );
        let fill: Vec<(&str, u64, u64)> = s
            .maps
            .iter()
            .map(|m| (m.map.as_str(), m.entries, m.max_entries))
            .collect();
        assert_eq!(
            fill,
            [("flows", 3, 8), ("new_flows", 2, 0), ("affinity", 3, 4)]
        );
        let (a, b) = (&s.backends[0], &s.backends[1]);
        assert_eq!(
            (a.state, a.health, a.affine_clients, a.active_flows),
            (BackendState::Up, Health::Unchecked, 1, 1)
        );
        assert_eq!(
            (a.table_share, a.ideal_share, a.new_flows_total),
            (1.0, 1.0, 7)
        );
        assert_eq!(a.new_flows_per_sec, 1.5);
        assert_eq!(
            (
                b.state,
                b.health,
                b.health_transitions,
                b.affine_clients,
                b.active_flows
            ),
            (BackendState::Draining, Health::Failing, 2, 1, 1)
        );
        assert_eq!((b.table_share, b.ideal_share), (0.0, 0.0));
        assert!(matches!(b.drain_deadline_secs, Some(29 | 30)));
        assert_eq!(s.counters.len(), COUNTER_NAMES.len());
    }
}
