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
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{info, warn};

mod backend_ops;
mod control_server;
mod health_tasks;
mod host;
mod notify;
mod proxy_start;
mod report;

use self::{
    control_server::serve_control,
    health_tasks::REFUSAL_POLL,
    host::{InstanceLock, ensure_bpffs, raise_fd_limit, require_privileges},
    proxy_start::start_proxy,
};
use crate::{
    addr::{BackendSpec, MAX_WEIGHT},
    backends::BackendSet,
    clock::monotonic_ns,
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
    raise_fd_limit(config.proxy.as_ref());
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
    notify::stopping();
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
    /// The backend's refused-handshake count when last looked at.
    refused_seen: u64,
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
        let ready = format!(
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
        say(&ready);
        notify::status(&ready);
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
        // Only now: a SIGTERM sent on READY=1 must find the handler that detaches.
        notify::ready();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut refusals = tokio::time::interval(REFUSAL_POLL);
        let watchdog_period = notify::watchdog_interval();
        // Without a watchdog the arm is disabled; the period only has to be valid.
        let mut watchdog =
            tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
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
                _ = hup.recv() => match notify::around_reload(|| self.reload()) {
                    Ok(()) => say(&format!("sticky reloaded: {} backends", self.config.backends.len())),
                    Err(e) => warn!("reload refused, running configuration unchanged: {e:#}"),
                },
                _ = watchdog.tick(), if watchdog_period.is_some() => notify::watchdog(),
                _ = tick.tick() => self.on_tick(),
                _ = refusals.tick(), if !self.health.is_empty() => self.on_refusals(),
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
            Request::Reload => {
                notify::around_reload(|| self.reload()).map(|()| Response::ok("reloaded"))
            }
            Request::Stop { keep } => Ok(Response::ok(if keep {
                "stopping, keeping the data path"
            } else {
                "stopping"
            })),
        };
        result.unwrap_or_else(|e| Response::err(format!("{e:#}")))
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
                c.max_new_flows,
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

/// A line for operators (and tests) on stdout, flushed.
fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().ok();
}
