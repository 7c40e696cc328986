//! The exchange's task: sends the affinities the kernel reports (within ~20 ms, batched) and,
//! every `RESYNC_PERIOD`, every affinity it sent that still holds (datagrams lost on the way
//! are carried by the next round). A starting task greets its peers with an empty datagram;
//! a peer seen starting (a new boot id) starts a new round at once, so a node that was down
//! or started late has every affinity within one period. It receives its peers' datagrams,
//! checks each (peer address, rate, size, tag, replay) before reading a record, and writes
//! what passes into the local affinity map. Never on the packet path: the kernel only fills a
//! ring buffer.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, RingBuf};
use sticky_common::{
    Addr16,
    choice::affinity_holds,
    client_key,
    maps::{Affinity, Settings},
    sync::AffinityEvent,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::watch,
};
use tracing::{debug, warn};

use super::{
    PeerStats, PeersConfig,
    wire::{self, Header, MAX_DATAGRAM, MAX_RECORDS, Record, Reject, ReplayWindow, TokenBucket},
};
use crate::{backends::BackendSet, clock::monotonic_ns};

/// Every affinity sent is sent again this often while it holds.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(5);
/// The resync is spread over the period in this many steps (no burst of the whole cache)...
const RESYNC_STEPS: u32 = 20;
/// ... of at least this many clients (4 datagrams), so a small cache goes out at once.
const RESYNC_STEP_MIN: usize = 4 * MAX_RECORDS;
/// New affinities wait at most this long for others to share their datagram.
const BATCH_DELAY: Duration = Duration::from_millis(20);
/// Most clients remembered for resync; past it new clients are sent once, live only.
pub const MAX_CACHED: usize = 65_536;
/// Datagrams accepted per peer address and second on average, and in one burst: a resync of
/// a full cache at `RESYNC_STEPS` steps stays well under it.
pub const PEER_RATE: f64 = 1000.0;
pub const PEER_BURST: f64 = 1000.0;

/// Binds the peer socket (errors name the address): before anything is loaded, so a wrong
/// `--peer-listen` leaves no trace.
pub fn bind(listen: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(listen)
        .with_context(|| format!("bind the peer socket on {listen} (--peer-listen)"))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What the task needs from the daemon.
pub struct SyncInputs {
    pub config: PeersConfig,
    /// From [`bind`].
    pub socket: std::net::UdpSocket,
    /// The kernel's reports (`sticky_common::sync::AFFINITY_EVENTS`).
    pub events: RingBuf<MapData>,
    pub affinity: BpfHashMap<MapData, Addr16, Affinity>,
    /// The backends as last published (ids are this node's).
    pub backends: watch::Receiver<BackendSet>,
    /// For the client key prefix.
    pub settings: Settings,
    pub affinity_timeout: Duration,
    pub stats: Arc<PeerStats>,
}

/// Starts the task (on the daemon's runtime).
pub fn start(inputs: SyncInputs) -> anyhow::Result<()> {
    let socket = UdpSocket::from_std(inputs.socket).context("register the peer socket")?;
    // SAFETY: `Events` owns the ring buffer's descriptor for as long as it lives, and its
    // `as_raw_fd` always names that one.
    let events =
        unsafe { AsyncFd::register_with_interest(Events(inputs.events), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watch the affinity events")?;
    let mut task = Task {
        peer_state: inputs
            .config
            .peers
            .iter()
            .map(|p| (p.ip(), PeerState::new()))
            .collect(),
        boot_id: random_u64(),
        seq: 0,
        socket,
        affinity: inputs.affinity,
        backends: inputs.backends,
        settings: inputs.settings,
        timeout_ns: u64::try_from(inputs.affinity_timeout.as_nanos()).unwrap_or(u64::MAX),
        stats: inputs.stats,
        cache: HashSet::new(),
        new_round: false,
        pending: Vec::new(),
        resync: Vec::new(),
        config: inputs.config,
    };
    tokio::spawn(async move { task.run(events).await });
    Ok(())
}

/// The ring buffer, for the reactor.
struct Events(RingBuf<MapData>);

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct PeerState {
    window: ReplayWindow,
    bucket: TokenBucket,
}

impl PeerState {
    fn new() -> Self {
        Self {
            window: ReplayWindow::default(),
            bucket: TokenBucket::new(PEER_RATE, PEER_BURST, Instant::now()),
        }
    }
}

struct Task {
    config: PeersConfig,
    /// By peer address: datagrams are accepted from these addresses only.
    peer_state: HashMap<IpAddr, PeerState>,
    boot_id: u64,
    seq: u64,
    socket: UdpSocket,
    affinity: BpfHashMap<MapData, Addr16, Affinity>,
    backends: watch::Receiver<BackendSet>,
    settings: Settings,
    timeout_ns: u64,
    stats: Arc<PeerStats>,
    /// Clients whose affinity this node recorded (and so sends again while it holds).
    cache: HashSet<Addr16>,
    /// A peer started: the next resync step begins a new round.
    new_round: bool,
    /// New affinities not yet sent.
    pending: Vec<Record>,
    /// This round's clients still to resend.
    resync: Vec<Addr16>,
}

impl Task {
    async fn run(&mut self, mut events: AsyncFd<Events>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut batch = tokio::time::interval(BATCH_DELAY);
        let mut resync = tokio::time::interval(RESYNC_PERIOD / RESYNC_STEPS);
        let mut step = 0u32;
        self.greet().await;
        loop {
            tokio::select! {
                ready = events.readable_mut() => match ready {
                    Ok(mut guard) => {
                        self.drain_events(&mut guard.get_inner_mut().0);
                        guard.clear_ready();
                        self.drain_events(&mut events.get_mut().0);
                        if self.pending.len() >= MAX_RECORDS {
                            self.flush().await;
                        }
                    }
                    Err(e) => {
                        warn!("affinity events not followed: {e}");
                        return;
                    }
                },
                got = self.socket.recv_from(&mut buf) => match got {
                    Ok((len, from)) => {
                        let len = len.min(buf.len());
                        if let Err(why) = self.receive(&buf[..len], from) {
                            self.stats.reject(why);
                            debug!("peer datagram from {from} refused: {why}");
                        }
                    }
                    Err(e) => debug!("peer socket: {e}"),
                },
                _ = batch.tick(), if !self.pending.is_empty() => self.flush().await,
                _ = resync.tick() => {
                    if std::mem::take(&mut self.new_round) {
                        step = 0;
                    }
                    if step == 0 {
                        self.resync = self.cache.iter().copied().collect();
                    }
                    self.resync_step(RESYNC_STEPS - step).await;
                    step = (step + 1) % RESYNC_STEPS;
                }
            }
        }
    }

    /// Takes every reported affinity into `pending` and the cache.
    fn drain_events(&mut self, ring: &mut RingBuf<MapData>) {
        let now = monotonic_ns();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<AffinityEvent>() {
                continue;
            }
            // SAFETY: the record holds an `AffinityEvent` (plain integers) written by the
            // programs; the read copes with any alignment.
            let e = unsafe { item.as_ptr().cast::<AffinityEvent>().read_unaligned() };
            drop(item);
            let backend = SocketAddr::new(e.backend.to_ip(), u16::from_be(e.backend_port_be));
            self.pending.push(Record {
                client: e.client.to_ip(),
                backend,
                age_ms: age_ms(now, e.time_ns),
            });
            if self.cache.len() < MAX_CACHED {
                self.cache.insert(e.client);
            }
        }
    }

    /// Sends `pending` to every peer.
    async fn flush(&mut self) {
        let records = std::mem::take(&mut self.pending);
        self.send(&records).await;
    }

    /// Resends the affinities of `1 / steps_left` of the round's clients that still hold;
    /// forgets the others.
    async fn resync_step(&mut self, steps_left: u32) {
        let take = (self.resync.len().div_ceil(steps_left.max(1) as usize))
            .max(RESYNC_STEP_MIN)
            .min(self.resync.len());
        let clients: Vec<Addr16> = self.resync.drain(..take).collect();
        if clients.is_empty() {
            return;
        }
        let now = monotonic_ns();
        let set = self.backends.borrow().clone();
        let mut records = Vec::new();
        for client in clients {
            let current = match self.affinity.get(&client, 0) {
                Ok(a) => Some(a),
                Err(MapError::KeyNotFound) => None,
                Err(e) => {
                    debug!("read affinity for resync: {e}");
                    continue;
                }
            };
            let held = current
                .filter(|a| affinity_holds(a, &set.entry(a.backend_id), now, self.timeout_ns));
            match held.and_then(|a| Some((a, set.get(a.backend_id)?.addr))) {
                Some((a, backend)) => records.push(Record {
                    client: client.to_ip(),
                    backend,
                    age_ms: age_ms(now, a.last_seen_ns),
                }),
                None => {
                    self.cache.remove(&client);
                }
            }
        }
        self.send(&records).await;
    }

    /// An empty datagram: peers see this boot start and resend what they hold.
    async fn greet(&mut self) {
        self.send_one(&[]).await;
    }

    async fn send(&mut self, records: &[Record]) {
        for chunk in records.chunks(MAX_RECORDS) {
            self.send_one(chunk).await;
        }
    }

    /// One datagram to every peer.
    async fn send_one(&mut self, chunk: &[Record]) {
        self.seq += 1;
        let header = Header {
            boot_id: self.boot_id,
            seq: self.seq,
        };
        let datagram = wire::encode(&self.config.key, header, chunk);
        for peer in &self.config.peers {
            match self.socket.send_to(&datagram, peer).await {
                Ok(_) => {
                    self.stats.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                    let n = chunk.len() as u64;
                    self.stats.records_sent.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    // An unreachable peer: this node goes on alone; resync retries.
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    debug!("send to peer {peer}: {e}");
                }
            }
        }
    }

    /// Checks one datagram in order of cost (peer, rate, size, tag, replay), then applies it.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr) -> Result<(), Reject> {
        let peer = self
            .peer_state
            .get_mut(&canonical(from.ip()))
            .ok_or(Reject::UnknownPeer)?;
        if !peer.bucket.take(Instant::now()) {
            return Err(Reject::RateLimited);
        }
        let (header, records) = wire::decode(&self.config.key, datagram)?;
        self.new_round |= peer.window.accept(header)?;
        self.stats
            .datagrams_accepted
            .fetch_add(1, Ordering::Relaxed);
        let set = self.backends.borrow().clone();
        let now = monotonic_ns();
        for r in records {
            let counter = match self.apply(&set, &r, now) {
                true => &self.stats.records_applied,
                false => &self.stats.records_ignored,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes a peer's record into the local affinity map when it should win.
    fn apply(&mut self, set: &BackendSet, r: &Record, now: u64) -> bool {
        let Some(id) = set.id_of(r.backend) else {
            return false;
        };
        let backend = set.entry(id);
        let key = client_key(&Addr16::from_ip(r.client), &self.settings);
        let current = match self.affinity.get(&key, 0) {
            Ok(a) => Some(a),
            Err(MapError::KeyNotFound) => None,
            Err(_) => return false,
        };
        let last_seen_ns = now.saturating_sub(u64::from(r.age_ms) * 1_000_000);
        let theirs = Affinity {
            backend_id: id,
            generation: backend.generation,
            last_seen_ns,
        };
        let current = current.map(|a| (a, set.entry(a.backend_id)));
        let Some(merged) = merge(current, theirs, &backend, now, self.timeout_ns) else {
            return false;
        };
        self.affinity.insert(key, merged, 0).is_ok()
    }
}

/// What the affinity map should hold for a client after a peer's record `theirs` (for
/// `backend`): `None` leaves it as it is. A record wins unless it is stale, its backend does
/// not take affine clients here, or this node saw the client later on another backend that
/// still holds.
pub fn merge(
    current: Option<(Affinity, sticky_common::maps::Backend)>,
    theirs: Affinity,
    backend: &sticky_common::maps::Backend,
    now: u64,
    timeout_ns: u64,
) -> Option<Affinity> {
    if !affinity_holds(&theirs, backend, now, timeout_ns) {
        return None;
    }
    match current {
        Some((mine, _))
            if mine.backend_id == theirs.backend_id && mine.generation == theirs.generation =>
        {
            (theirs.last_seen_ns > mine.last_seen_ns).then_some(theirs)
        }
        Some((mine, mine_backend))
            if affinity_holds(&mine, &mine_backend, now, timeout_ns)
                && mine.last_seen_ns >= theirs.last_seen_ns =>
        {
            None
        }
        _ => Some(theirs),
    }
}

fn age_ms(now_ns: u64, then_ns: u64) -> u32 {
    u32::try_from(now_ns.saturating_sub(then_ns) / 1_000_000).unwrap_or(u32::MAX)
}

/// IPv4-mapped IPv6 sources (a dual-stack socket) as the IPv4 address peers are named by.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A random boot id: a restarted daemon's numbers never look like replays of the last boot's.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: a valid buffer of its length. On failure (no entropy source) the clock
    // stands in: boots still differ.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        monotonic_ns() ^ u64::from(std::process::id()) << 32
    }
}

#[cfg(test)]
mod tests {
    use sticky_common::{BackendState, maps::Backend};

    use super::*;

    const T: u64 = 1_000_000;

    fn backend(state: BackendState, generation: u32) -> Backend {
        Backend {
            state: state.raw(),
            generation,
            ..Backend::default()
        }
    }

    fn aff(id: u32, last_seen_ns: u64) -> Affinity {
        Affinity {
            backend_id: id,
            generation: 1,
            last_seen_ns,
        }
    }

    #[test]
    fn a_record_wins_unless_stale_unserved_or_older_than_a_local_one() {
        let up = backend(BackendState::Up, 1);
        let now = 10 * T;
        // Nothing here: taken.
        assert_eq!(
            merge(None, aff(1, 9 * T), &up, now, T * 5),
            Some(aff(1, 9 * T))
        );
        // Stale, or for a backend not honouring affinity here: ignored.
        assert_eq!(merge(None, aff(1, 2 * T), &up, now, T * 5), None);
        let down = backend(BackendState::Down, 1);
        assert_eq!(merge(None, aff(1, 9 * T), &down, now, T * 5), None);
        let draining = backend(BackendState::Draining, 1);
        assert!(merge(None, aff(1, 9 * T), &draining, now, T * 5).is_some());
        // A fresher local affinity to another backend stays; an older one is replaced.
        let mine = Some((aff(2, 9 * T), up));
        assert_eq!(merge(mine, aff(1, 8 * T), &up, now, T * 5), None);
        assert_eq!(
            merge(mine, aff(1, 9 * T + 1), &up, now, T * 5),
            Some(aff(1, 9 * T + 1))
        );
        // A local one that no longer holds (its backend went down) is replaced.
        let gone = Some((aff(2, 9 * T), down));
        assert!(merge(gone, aff(1, 8 * T), &up, now, T * 5).is_some());
        // Same backend: only a later sighting is written.
        let same = Some((aff(1, 9 * T), up));
        assert_eq!(merge(same, aff(1, 8 * T), &up, now, T * 5), None);
        assert_eq!(
            merge(same, aff(1, 9 * T + 5), &up, now, T * 5),
            Some(aff(1, 9 * T + 5))
        );
    }
}
