//! `sticky run`: the daemon. Loads (or adopts) the pinned data path, attaches it, publishes
//! the backends, then serves the control API, health checks, metrics and signals from one
//! loop that owns all state, so every change is applied whole and in order.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sticky_common::{
    Addr16,
    maps::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, COUNTER_COUNT, FLOW_FORWARD, NO_BACKEND},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    addr::{BackendSpec, MAX_WEIGHT},
    backends::BackendSet,
    config::{Config, Layer},
    control::{self, Change, Lookup, Preview, Request, Response},
    datapath::{Datapath, Pins},
    health::{self, Tracker, Transition},
    metrics,
    proxy::{
        self,
        config::ProxyConfig,
        routing::{AffinityMap, Routing, SharedRouting},
        server::Proxy,
        splice::Splicer,
    },
    status::{BackendStatus, Status},
    table,
};

/// Builds the configuration from flags over the optional file.
pub fn resolve(flags: Layer, file: Option<&PathBuf>) -> anyhow::Result<Config> {
    let base = match file {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    let config = flags.over(base).validate()?;
    config.check_host()?;
    Ok(config)
}

pub async fn run(flags: Layer, file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = resolve(flags.clone(), file.as_ref())?;
    require_privileges()?;
    let lock = InstanceLock::acquire(&config.instance)?;
    ensure_bpffs()?;
    let pins = Pins::for_instance(&config.instance);
    let dp = Datapath::load_with(&config, Some(pins.clone()))?;
    let adopted = dp.adopted();
    let mut daemon = match Daemon::start(config, flags, file, dp).await {
        Ok(d) => d,
        Err(e) => {
            // A fresh instance that failed half way leaves nothing behind; adopted state
            // keeps serving traffic as it did.
            if !adopted {
                let _ = pins.remove();
            }
            return Err(e);
        }
    };
    let keep = daemon.serve().await;
    let instance = daemon.config.instance.clone();
    daemon.shutdown(keep)?;
    // Removed while still held: a daemon starting now either saw our lock or none.
    let _ = std::fs::remove_file(control::lock_path(&instance));
    drop(lock);
    Ok(())
}

struct HealthTask {
    tracker: Tracker,
    transitions: u64,
    task: JoinHandle<()>,
}

struct Daemon {
    config: Config,
    flags: Layer,
    file: Option<PathBuf>,
    dp: Datapath,
    set: BackendSet,
    table: Vec<u32>,
    /// Draining backends and their optional deadline.
    drains: BTreeMap<SocketAddr, Option<Instant>>,
    health: BTreeMap<SocketAddr, HealthTask>,
    health_epoch: u64,
    health_tx: mpsc::Sender<(SocketAddr, u64, bool)>,
    health_rx: mpsc::Receiver<(SocketAddr, u64, bool)>,
    requests: mpsc::Receiver<(Request, oneshot::Sender<Response>)>,
    /// Last new-flow totals per backend id, for rates.
    rates: BTreeMap<u32, (Instant, u64, f64)>,
    metrics_cache: Option<Arc<Mutex<Status>>>,
    /// Proxy mode's view of the backends, refreshed on every publish.
    routing: Option<SharedRouting>,
    _server: JoinHandle<()>,
}

/// Cookie tokens derive from the seed: every node with the same seed names backends alike.
fn cookie_key(seed: u32) -> u64 {
    0x5717_c0c1_e000_0000 ^ u64::from(seed)
}

impl Daemon {
    async fn start(
        config: Config,
        flags: Layer,
        file: Option<PathBuf>,
        mut dp: Datapath,
    ) -> anyhow::Result<Self> {
        let mut set = BackendSet::default();
        if dp.adopted() {
            set.adopt(&dp.read_backends()?);
        }
        let removed = set.reconcile(&config.backends)?;
        // Adopted drain/down states are re-derived below from this daemon's own knowledge.
        for b in &config.backends {
            set.set_state(b.addr, BACKEND_UP);
        }
        let table = dp.apply(&set, &removed)?;
        for iface in &config.ifaces {
            dp.attach(iface)?;
        }
        let (req_tx, requests) = mpsc::channel(64);
        let server = serve_control(&config.instance, req_tx)?;
        let metrics_cache = match config.metrics {
            Some(addr) => {
                let listener = metrics::bind(addr).await?;
                let cache = Arc::new(Mutex::new(Status::default()));
                let reader = cache.clone();
                let snapshot: Arc<dyn Fn() -> anyhow::Result<Status> + Send + Sync> =
                    Arc::new(move || {
                        reader
                            .lock()
                            .map(|s| s.clone())
                            .map_err(|_| anyhow::anyhow!("poisoned"))
                    });
                tokio::spawn(async move {
                    if let Err(e) = metrics::serve(listener, snapshot).await {
                        warn!("metrics endpoint stopped: {e:#}");
                    }
                });
                Some(cache)
            }
            None => None,
        };
        let routing = match &config.proxy {
            Some(proxy) => Some(start_proxy(proxy, &config, &mut dp, &set, &table).await?),
            None => None,
        };
        let (health_tx, health_rx) = mpsc::channel(256);
        let mut daemon = Self {
            routing,
            config,
            flags,
            file,
            dp,
            set,
            table,
            drains: BTreeMap::new(),
            health: BTreeMap::new(),
            health_epoch: 0,
            health_tx,
            health_rx,
            requests,
            rates: BTreeMap::new(),
            metrics_cache,
            _server: server,
        };
        daemon.restart_health();
        daemon.refresh_metrics();
        let vips: Vec<String> = daemon.config.vips.iter().map(ToString::to_string).collect();
        println!(
            "sticky ready: vip {} on {} -> {} backends (instance {}{})",
            vips.join(","),
            daemon.config.ifaces.join(","),
            daemon.config.backends.len(),
            daemon.config.instance,
            if daemon.dp.adopted() {
                ", adopted pinned flows and affinity"
            } else {
                ""
            }
        );
        std::io::stdout().flush().ok();
        Ok(daemon)
    }

    /// Runs until asked to stop; returns whether to keep the data path running.
    async fn serve(&mut self) -> bool {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            warn!("cannot install signal handlers");
            return false;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some((request, reply)) = self.requests.recv() => {
                    let stop = match &request {
                        Request::Stop { keep } => Some(*keep),
                        _ => None,
                    };
                    let response = self.handle(request);
                    let _ = reply.send(response);
                    if let Some(keep) = stop {
                        // Let the connection task write the answer before the process exits.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return keep;
                    }
                }
                Some((addr, epoch, ok)) = self.health_rx.recv() => self.on_probe(addr, epoch, ok),
                _ = hup.recv() => match self.reload() {
                    Ok(()) => say(&format!("sticky reloaded: {} backends", self.config.backends.len())),
                    Err(e) => warn!("reload refused, running configuration unchanged: {e:#}"),
                },
                _ = tick.tick() => self.on_tick(),
                _ = term.recv() => return false,
                _ = int.recv() => return false,
            }
        }
    }

    fn shutdown(self, keep: bool) -> anyhow::Result<()> {
        for task in self.health.values() {
            task.task.abort();
        }
        let _ = std::fs::remove_file(control::socket_path(&self.config.instance));
        if keep {
            say("sticky stopped: data path left running (pinned)");
            return Ok(());
        }
        if let Some(pins) = self.dp.pins() {
            pins.remove().context("detach and unpin")?;
        }
        say("sticky stopped: detached");
        Ok(())
    }

    fn handle(&mut self, request: Request) -> Response {
        let result = match request {
            Request::Apply { change } => {
                self.apply_change(&change).map(|()| Response::ok("applied"))
            }
            Request::Preview { change } => self.preview(&change).map(Response::ok),
            Request::Drain { addr, deadline_ms } => self.drain(addr, deadline_ms),
            Request::Undrain { addr } => self.undrain(addr),
            Request::List => Ok(Response::ok(self.list())),
            Request::Status => self.status().map(Response::ok),
            Request::Lookup { ip } => self.lookup(ip).map(Response::ok),
            Request::Reload => self.reload().map(|()| Response::ok("reloaded")),
            Request::Stop { keep } => Ok(Response::ok(if keep {
                "stopping, keeping the data path"
            } else {
                "stopping"
            })),
        };
        result.unwrap_or_else(|e| Response::err(format!("{e:#}")))
    }

    fn spec_index(&self, addr: SocketAddr) -> anyhow::Result<usize> {
        self.config
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .with_context(|| format!("no backend {addr} (`sticky backend list` shows them)"))
    }

    /// The backend list after `change`, validated; the running state is not touched.
    fn changed_specs(&self, change: &Change) -> anyhow::Result<Vec<BackendSpec>> {
        let mut specs = self.config.backends.clone();
        let check_weight = |w: u32| {
            if !(1..=MAX_WEIGHT).contains(&w) {
                bail!("weight must be a whole number from 1 to {MAX_WEIGHT}");
            }
            Ok(())
        };
        match *change {
            Change::Add { addr, weight } => {
                check_weight(weight)?;
                if specs.iter().any(|b| b.addr == addr) {
                    bail!("backend {addr} already exists");
                }
                if addr.is_ipv4() != self.config.vips[0].is_ipv4() {
                    bail!("backend {addr} is not of the VIPs' address family");
                }
                if addr.port() == 0 {
                    bail!("backend {addr}: port 0 is not a port");
                }
                specs.push(BackendSpec { addr, weight });
            }
            Change::Remove { addr } => {
                let i = self.spec_index(addr)?;
                specs.remove(i);
            }
            Change::Weight { addr, weight } => {
                check_weight(weight)?;
                let i = self.spec_index(addr)?;
                specs[i].weight = weight;
            }
        }
        Ok(specs)
    }

    fn apply_change(&mut self, change: &Change) -> anyhow::Result<()> {
        let specs = self.changed_specs(change)?;
        self.set_backends(specs)?;
        info!("applied {change:?}");
        Ok(())
    }

    /// Makes `specs` the backend set and publishes it.
    fn set_backends(&mut self, specs: Vec<BackendSpec>) -> anyhow::Result<()> {
        let mut set = self.set.clone();
        let removed = set.reconcile(&specs)?;
        self.set = set;
        self.config.backends = specs;
        self.drains
            .retain(|a, _| self.config.backends.iter().any(|b| b.addr == *a));
        self.publish(&removed)?;
        self.restart_health();
        Ok(())
    }

    /// The kernel state each backend should have: health first, then drain.
    fn publish(&mut self, removed: &[u32]) -> anyhow::Result<()> {
        for b in &self.config.backends {
            let healthy = self.health.get(&b.addr).is_none_or(|h| h.tracker.healthy());
            let state = if !healthy {
                BACKEND_DOWN
            } else if self.drains.contains_key(&b.addr) {
                BACKEND_DRAINING
            } else {
                BACKEND_UP
            };
            self.set.set_state(b.addr, state);
        }
        self.table = self.dp.apply(&self.set, removed)?;
        if let Some(routing) = &self.routing
            && let Ok(mut r) = routing.write()
        {
            *r = Routing::new(
                self.table.clone(),
                &self.set,
                self.dp.seed(),
                self.dp.affinity_timeout().as_nanos() as u64,
                cookie_key(self.dp.seed()),
            );
        }
        Ok(())
    }

    fn drain(&mut self, addr: SocketAddr, deadline_ms: Option<u64>) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        let deadline = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.drains.insert(addr, deadline);
        self.publish(&[])?;
        info!("draining {addr}");
        Ok(Response::ok("draining"))
    }

    fn undrain(&mut self, addr: SocketAddr) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        if self.drains.remove(&addr).is_none() {
            bail!("backend {addr} is not draining");
        }
        self.publish(&[])?;
        Ok(Response::ok("in service"))
    }

    fn list(&self) -> Vec<serde_json::Value> {
        self.config
            .backends
            .iter()
            .map(|b| {
                serde_json::json!({
                    "addr": b.addr,
                    "weight": b.weight,
                    "state": self.state_name(b.addr),
                })
            })
            .collect()
    }

    fn state_name(&self, addr: SocketAddr) -> &'static str {
        let state = self
            .set
            .id_of(addr)
            .and_then(|id| self.set.get(id))
            .map_or(0, |s| s.state);
        match state {
            BACKEND_UP => "up",
            BACKEND_DRAINING => "draining",
            BACKEND_DOWN => "down",
            _ => "removed",
        }
    }

    fn fresh_affinity(&self) -> anyhow::Result<Vec<(Addr16, u32)>> {
        let now = monotonic_ns();
        let timeout = self.dp.affinity_timeout().as_nanos() as u64;
        Ok(self
            .dp
            .affinity_entries()?
            .into_iter()
            .filter(|(_, a)| {
                now.saturating_sub(a.last_seen_ns) <= timeout
                    && self.set.get(a.backend_id).is_some_and(|s| {
                        s.generation == a.generation
                            && (s.state == BACKEND_UP || s.state == BACKEND_DRAINING)
                    })
            })
            .map(|(c, a)| (c, a.backend_id))
            .collect())
    }

    fn preview(&self, change: &Change) -> anyhow::Result<Preview> {
        let specs = self.changed_specs(change)?;
        let mut set = self.set.clone();
        set.reconcile(&specs)?;
        let new_table = table::build(&set.members(), self.dp.table_size(), self.dp.seed());
        let slots_moved = self
            .table
            .iter()
            .zip(&new_table)
            .filter(|(a, b)| a != b)
            .count();
        let affine = self.fresh_affinity()?;
        let moved = affine
            .iter()
            .filter(|(_, id)| set.get(*id).is_none())
            .count();
        Ok(Preview {
            slots_moved: slots_moved as u64,
            table_size: self.dp.table_size(),
            affine_clients: affine.len() as u64,
            affine_clients_moved: moved as u64,
        })
    }

    fn lookup(&self, ip: std::net::IpAddr) -> anyhow::Result<Lookup> {
        if ip.is_ipv4() != self.config.vips[0].is_ipv4() {
            bail!("{ip} is not of the VIPs' address family");
        }
        let client = Addr16::from_ip(ip);
        let backend_addr = |id: u32| self.set.get(id).map(|s| s.addr);
        if let Some(a) = self.dp.affinity_of(&client)? {
            let idle = monotonic_ns().saturating_sub(a.last_seen_ns);
            let honoured = self.set.get(a.backend_id).is_some_and(|s| {
                s.generation == a.generation
                    && (s.state == BACKEND_UP || s.state == BACKEND_DRAINING)
            });
            if honoured && idle <= self.dp.affinity_timeout().as_nanos() as u64 {
                return Ok(Lookup {
                    client: ip,
                    backend: backend_addr(a.backend_id),
                    reason: "affinity".into(),
                    idle_secs: Some(idle / 1_000_000_000),
                });
            }
        }
        let id = table::lookup(&self.table, &client, self.dp.seed());
        Ok(Lookup {
            client: ip,
            backend: if id == NO_BACKEND {
                None
            } else {
                backend_addr(id)
            },
            reason: if id == NO_BACKEND { "none" } else { "table" }.into(),
            idle_secs: None,
        })
    }

    fn status(&mut self) -> anyhow::Result<Status> {
        let affine = self.fresh_affinity()?;
        let flows = self.dp.flow_entries()?;
        let counters = self.dp.counters()?;
        let size = self.table.len().max(1) as f64;
        let members = self.set.members();
        let total_weight: u32 = members.iter().map(|m| m.weight).sum();
        let mut backends = Vec::new();
        for b in &self.config.backends {
            let Some(id) = self.set.id_of(b.addr) else {
                continue;
            };
            let stats = self.dp.backend_stats(id)?;
            let in_table = members.iter().any(|m| m.id == id);
            let health = match self.health.get(&b.addr) {
                None => "unchecked",
                Some(h) if h.tracker.healthy() => "healthy",
                Some(_) => "failing",
            };
            backends.push(BackendStatus {
                id,
                addr: b.addr,
                state: self.state_name(b.addr).into(),
                health: health.into(),
                weight: b.weight,
                table_share: self.table.iter().filter(|&&s| s == id).count() as f64 / size,
                ideal_share: if in_table && total_weight > 0 {
                    f64::from(b.weight) / f64::from(total_weight)
                } else {
                    0.0
                },
                affine_clients: affine.iter().filter(|(_, a)| *a == id).count() as u64,
                active_flows: flows
                    .iter()
                    .filter(|(_, f)| f.backend_id == id && f.direction == FLOW_FORWARD)
                    .count() as u64,
                new_flows_total: stats.new_flows,
                new_flows_per_sec: self.rates.get(&id).map_or(0.0, |r| r.2),
                packets: stats.packets,
                bytes: stats.bytes,
                health_transitions: self.health.get(&b.addr).map_or(0, |h| h.transitions),
                drain_deadline_secs: self
                    .drains
                    .get(&b.addr)
                    .copied()
                    .flatten()
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs()),
            });
        }
        const NAMES: [&str; COUNTER_COUNT as usize] = [
            "pass",
            "parse_error",
            "unhandled",
            "drop_no_backend",
            "drop_nat_error",
            "nat",
        ];
        Ok(Status {
            instance: self.config.instance.clone(),
            vips: self.config.vips.clone(),
            ifaces: self.config.ifaces.clone(),
            table_size: self.dp.table_size(),
            backends,
            counters: NAMES
                .iter()
                .map(|n| n.to_string())
                .zip(counters.values)
                .collect(),
            affinity_entries: self.dp.affinity_entries()?.len() as u64,
            flow_entries: flows.len() as u64,
        })
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        let file = self.file.clone().context("no --config file to reload")?;
        let new = resolve(self.flags.clone(), Some(&file))?;
        let fixed = |c: &Config| {
            (
                c.ifaces.clone(),
                c.vips.clone(),
                c.table_size,
                c.seed,
                c.max_flows,
                c.max_clients,
                c.affinity_timeout,
                c.instance.clone(),
                c.metrics,
            )
        };
        if fixed(&new) != fixed(&self.config) {
            bail!(
                "only backends and health checks change on reload; interfaces, VIPs, seed, \
                 table and map sizes, affinity timeout, instance and metrics need a restart"
            );
        }
        self.config.health = new.health;
        self.set_backends(new.backends)
    }

    /// (Re)starts one probe task per checked backend, keeping trackers of unchanged checks.
    fn restart_health(&mut self) {
        self.health_epoch += 1;
        let old = std::mem::take(&mut self.health);
        for task in old.values() {
            task.task.abort();
        }
        for b in &self.config.backends {
            let Some(check) = self.config.health.for_backend(b.addr).cloned() else {
                continue;
            };
            let (addr, epoch, tx) = (b.addr, self.health_epoch, self.health_tx.clone());
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(check.interval);
                loop {
                    tick.tick().await;
                    let ok = health::probe(addr, &check).await;
                    if tx.send((addr, epoch, ok)).await.is_err() {
                        break;
                    }
                }
            });
            let (tracker, transitions) = match old.get(&b.addr) {
                Some(h) => (h.tracker, h.transitions),
                None => (
                    Tracker::new(
                        check_rise(&self.config, b.addr),
                        check_fall(&self.config, b.addr),
                    ),
                    0,
                ),
            };
            self.health.insert(
                b.addr,
                HealthTask {
                    tracker,
                    transitions,
                    task,
                },
            );
        }
    }

    fn on_probe(&mut self, addr: SocketAddr, epoch: u64, ok: bool) {
        if epoch != self.health_epoch {
            return;
        }
        let Some(h) = self.health.get_mut(&addr) else {
            return;
        };
        let Some(transition) = h.tracker.record(ok) else {
            return;
        };
        h.transitions += 1;
        match transition {
            Transition::Down => say(&format!("health: {addr} is down, out of the table")),
            Transition::Up => say(&format!("health: {addr} is up, back in the table")),
        }
        if let Err(e) = self.publish(&[]) {
            warn!("publish after health change of {addr}: {e:#}");
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let expired: Vec<SocketAddr> = self
            .drains
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(a, _)| *a)
            .collect();
        for addr in expired {
            let id = self.set.id_of(addr);
            match self.apply_change(&Change::Remove { addr }) {
                Ok(()) => {
                    let purged = id.map_or(Ok(0), |id| self.dp.purge_flows(id)).unwrap_or(0);
                    say(&format!(
                        "drain deadline of {addr} passed: removed, {purged} flow entries dropped"
                    ));
                }
                Err(e) => warn!("remove {addr} after its drain deadline: {e:#}"),
            }
        }
        let ids: Vec<u32> = self.set.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Ok(stats) = self.dp.backend_stats(id) {
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
        self.refresh_metrics();
    }

    fn refresh_metrics(&mut self) {
        let Some(cache) = self.metrics_cache.clone() else {
            return;
        };
        match self.status() {
            Ok(status) => {
                if let Ok(mut c) = cache.lock() {
                    *c = status;
                }
            }
            Err(e) => warn!("metrics snapshot: {e:#}"),
        }
    }
}

/// Binds the proxy listener and starts serving; splicing when possible, else copying (the
/// reason logged).
async fn start_proxy(
    proxy: &ProxyConfig,
    config: &Config,
    dp: &mut Datapath,
    set: &BackendSet,
    table: &[u32],
) -> anyhow::Result<SharedRouting> {
    let pins = dp
        .pins()
        .context("proxy mode needs the pinned affinity map")?
        .clone();
    let path = pins.map(sticky_common::maps::AFFINITY);
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("open the affinity map {}", path.display()))?;
    let affinity = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))?;
    let routing: SharedRouting = Arc::new(std::sync::RwLock::new(Routing::new(
        table.to_vec(),
        set,
        config.seed,
        config.affinity_timeout.as_nanos() as u64,
        cookie_key(config.seed),
    )));
    let splicer = if proxy.splice {
        match Splicer::new(dp.ebpf()) {
            Ok(s) => Some(Arc::new(Mutex::new(s))),
            Err(e) => {
                warn!("proxy: splicing unavailable, copying in userspace: {e:#}");
                None
            }
        }
    } else {
        info!("proxy: --no-splice, copying in userspace");
        None
    };
    let listener = tokio::net::TcpListener::bind(proxy.listen)
        .await
        .with_context(|| format!("bind the proxy on {}", proxy.listen))?;
    say(&format!(
        "proxy on {} ({}; client from {})",
        proxy.listen,
        if splicer.is_some() {
            "kernel splice"
        } else {
            "userspace copy"
        },
        if proxy.proxy_protocol {
            "PROXY protocol".to_string()
        } else {
            proxy.header_name.clone()
        }
    ));
    let server = Arc::new(Proxy {
        config: proxy.clone(),
        routing: routing.clone(),
        affinity: AffinityMap::new(affinity),
        splicer,
    });
    tokio::spawn(proxy::server::serve(server, listener));
    Ok(routing)
}

fn check_rise(config: &Config, addr: SocketAddr) -> u32 {
    config.health.for_backend(addr).map_or(1, |c| c.rise)
}

fn check_fall(config: &Config, addr: SocketAddr) -> u32 {
    config.health.for_backend(addr).map_or(1, |c| c.fall)
}

/// A line for operators (and tests) on stdout, flushed.
fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().ok();
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Accepts control connections; each request goes to the daemon loop and back.
fn serve_control(
    instance: &str,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> anyhow::Result<JoinHandle<()>> {
    let path = control::socket_path(instance);
    // We hold the instance lock: a socket file here is a crashed daemon's leftover.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = control_connection(stream, requests).await {
                    warn!("control connection: {e:#}");
                }
            });
        }
    }))
}

async fn control_connection(
    stream: UnixStream,
    requests: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(control::MAX_REQUEST as u64 + 2)).lines();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("idle control connection")??
    {
        let response = match control::parse_request(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                requests
                    .send((request, tx))
                    .await
                    .context("daemon loop gone")?;
                rx.await.context("daemon loop dropped the request")?
            }
            Err(message) => Response::err(message),
        };
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// One daemon per instance: an exclusive `flock` on `/run/sticky/<instance>.lock`.
struct InstanceLock {
    _file: std::fs::File,
}

impl InstanceLock {
    fn acquire(instance: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(control::RUN_DIR)
            .with_context(|| format!("create {}", control::RUN_DIR))?;
        std::fs::set_permissions(control::RUN_DIR, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", control::RUN_DIR))?;
        let path = control::lock_path(instance);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: a valid fd; the lock lives as long as the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "instance '{instance}' is already running (control socket {}): stop it with \
                 `sticky stop --instance {instance}` or choose another --instance",
                control::socket_path(instance).display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// Pins need bpffs at /sys/fs/bpf; mount it when absent (we are root by now).
fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, kind) = (f.next(), f.next(), f.next());
        point == Some("/sys/fs/bpf") && kind == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, kind) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({}): run \
             `mount -t bpf bpf /sys/fs/bpf`",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Fails early with one clear line instead of a verifier or netlink error.
fn require_privileges() -> anyhow::Result<()> {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_BPF: u64 = 39;
    if eff & (1 << CAP_NET_ADMIN) != 0 && eff & (1 << CAP_BPF) != 0 {
        return Ok(());
    }
    bail!("sticky run needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN")
}
