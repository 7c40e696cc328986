//! `sticky run`: the daemon. Loads (or adopts) the pinned data path, attaches it, publishes
//! the backends, then serves the control API, health checks and signals from one loop that
//! owns all state, so every change is applied whole and in order. Status and metrics walk the
//! maps on a blocking thread, from state the loop hands over (see `report`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sticky_common::BackendState;
use tokio::io::{Interest, unix::AsyncFd};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::warn;

mod announce;
mod backend_ops;
mod dns;
mod health_tasks;
mod host;
mod notify;
mod paced_close;
mod proxy_start;
mod report;
mod slow_start;

use self::{
    announce::Announcer,
    dns::Discovery,
    health_tasks::{HealthChecks, REFUSAL_POLL},
    host::{InstanceLock, ensure_bpffs, raise_fd_limit, require_privileges},
    paced_close::Closing,
    proxy_start::start_proxy,
    report::Reporting,
};
use crate::{
    backends::BackendSet,
    config::{Config, Layer},
    control::{self, Change, Incoming, Request, Response},
    datapath::{Datapath, KernelLog, Pins},
    logging::say,
    metrics,
    namespaces::PinScope,
    peers::{PeerStats, sync::SyncInputs},
    proxy::routing::SharedRouting,
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

/// Runs the daemon; `pin_scope` says how long its pins live (see `namespaces`).
pub async fn run(flags: Layer, file: Option<PathBuf>, pin_scope: PinScope) -> anyhow::Result<()> {
    let config = resolve(flags.clone(), file.as_ref())?;
    require_privileges()?;
    let lock = InstanceLock::acquire(&config.instance)?;
    ensure_bpffs()?;
    raise_fd_limit(config.proxy.as_ref());
    let peer_socket = (config.peers.as_ref())
        .map(|p| crate::peers::sync::bind(p.listen))
        .transpose()?;
    let pins = Pins::for_instance(&config.instance);
    let dp = Datapath::load_with(&config, Some(pins.clone()))?;
    let adopted = dp.adopted();
    // Before anything says "ready": a SIGTERM from then on must detach, not kill.
    let signals = Signals::install()?;
    let mut daemon = match Daemon::start(config, flags, file, dp, pin_scope, peer_socket).await {
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
    let keep = daemon.serve(signals).await;
    notify::stopping();
    daemon.withdraw_before_stopping(keep).await;
    let instance = daemon.config.instance.clone();
    daemon.shutdown(keep)?;
    // Removed while still held: a daemon starting now either saw our lock or none.
    let _ = std::fs::remove_file(control::lock_path(&instance));
    drop(lock);
    Ok(())
}

struct Daemon {
    config: Config,
    flags: Layer,
    file: Option<PathBuf>,
    dp: Datapath,
    /// Whether the pins outlive this process.
    pin_scope: PinScope,
    publishing: Publishing,
    health: HealthChecks,
    control: Control,
    report: Reporting,
    dns: Discovery,
    /// `--announce-table`: the VIPs' host routes for the routing daemon.
    announce: Option<Announcer>,
    /// The affinity exchange (`--peers`), when on.
    peers: Option<Peers>,
}

/// The daemon's side of the affinity exchange: the backends it publishes to the task, and the
/// task's counters for status.
struct Peers {
    backends: watch::Sender<BackendSet>,
    stats: Arc<PeerStats>,
}

/// What the daemon publishes to the data path and proxy mode, and the drains behind it.
struct Publishing {
    set: BackendSet,
    /// The live table; shared with each report so a status request copies no slots.
    table: Arc<Vec<u32>>,
    /// Draining backends and their optional deadline.
    drains: BTreeMap<SocketAddr, Option<Instant>>,
    /// Close rates (flows per second) of draining backends past their deadline.
    close_rates: BTreeMap<SocketAddr, u32>,
    /// Backends past their deadline whose flows are being ended at their close rate.
    closing: Vec<Closing>,
    /// Backends ramping up their table share (`--slow-start`), since when.
    ramps: BTreeMap<SocketAddr, Instant>,
    /// Proxy mode's view of the backends, refreshed on every publish.
    routing: Option<SharedRouting>,
}

/// The control socket's requests, and the task accepting its connections.
struct Control {
    requests: mpsc::Receiver<Incoming>,
    _server: JoinHandle<()>,
}

/// The signals the daemon handles: SIGHUP reloads, SIGTERM and SIGINT stop.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup()).context("install the SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
        })
    }
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
        pin_scope: PinScope,
        peer_socket: Option<std::net::UdpSocket>,
    ) -> anyhow::Result<Self> {
        let mut set = BackendSet::default();
        if dp.adopted() {
            set.adopt(&dp.read_backends()?);
        }
        let removed = set.reconcile(&config.backends)?;
        // Adopted drain/down states are re-derived below from this daemon's own knowledge.
        for b in &config.backends {
            set.set_state(b.addr, BackendState::Up);
        }
        if let Some(log) = dp.take_log() {
            follow_kernel_log(log);
        }
        let table = dp.apply(&set, &removed)?;
        for iface in &config.ifaces {
            dp.attach(iface)?;
        }
        let (req_tx, requests) = mpsc::channel(64);
        let server = control::serve(&control::socket_path(&config.instance), req_tx)?;
        let report = Reporting::new(dp.reader());
        if let Some(addr) = config.metrics {
            let listener = metrics::bind(addr).await?;
            let snapshots = report.snapshots();
            let snapshot: metrics::Snapshot = Arc::new(move || snapshots.take_recent());
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, snapshot).await {
                    warn!("metrics endpoint stopped: {e:#}");
                }
            });
        }
        let routing = match &config.proxy {
            Some(proxy) => Some(start_proxy(proxy, &config, &mut dp, &set, &table).await?),
            None => None,
        };
        let dns = Discovery::start(&config)?;
        let announce = config.announce_table.map(|t| {
            Announcer::new(
                t,
                config.vips.iter().map(|v| v.addr.ip()),
                &config.announce_return,
            )
        });
        let peers = match peer_socket {
            Some(socket) => Some(start_peers(&config, &dp, &set, socket)?),
            None => None,
        };
        let mut daemon = Self {
            peers,
            announce,
            dns,
            config,
            flags,
            file,
            dp,
            pin_scope,
            publishing: Publishing {
                set,
                table: Arc::new(table),
                drains: BTreeMap::new(),
                close_rates: BTreeMap::new(),
                closing: Vec::new(),
                ramps: BTreeMap::new(),
                routing,
            },
            health: HealthChecks::new(),
            control: Control {
                requests,
                _server: server,
            },
            report,
        };
        daemon.restart_health();
        daemon.update_announcement();
        daemon.share();
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
    async fn serve(&mut self, signals: Signals) -> bool {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = signals;
        // The handlers were installed before the ready line: a SIGTERM sent on it, or on
        // READY=1, finds the handler that detaches.
        notify::ready();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut refusals = tokio::time::interval(REFUSAL_POLL);
        let mut pace = tokio::time::interval(paced_close::PACE);
        let watchdog_period = notify::watchdog_interval();
        // Without a watchdog the arm is disabled; the period only has to be valid.
        let mut watchdog =
            tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                Some((request, reply)) = self.control.requests.recv() => {
                    if let Some(keep) = self.handle(request, reply) {
                        // Let the connection task write the answer before the process exits.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return keep;
                    }
                }
                Some((addr, epoch, ok)) = self.health.rx.recv() => self.on_probe(addr, epoch, ok),
                Some(answer) = self.dns.rx.recv() => self.on_dns(answer),
                _ = hup.recv() => match notify::around_reload(|| self.reload()) {
                    Ok(()) => say(&format!("sticky reloaded: {} backends", self.config.backends.len())),
                    Err(e) => warn!("reload refused, running configuration unchanged: {e:#}"),
                },
                _ = watchdog.tick(), if watchdog_period.is_some() => notify::watchdog(),
                _ = tick.tick() => {
                    self.on_tick();
                    if self.announce.as_ref().is_some_and(|a| a.deadline_passed(Instant::now())) {
                        say("node drain deadline passed: stopping");
                        return false;
                    }
                }
                _ = pace.tick(), if !self.publishing.closing.is_empty() => self.on_pace(),
                _ = refusals.tick(), if !self.health.tasks.is_empty() => self.on_refusals(),
                _ = term.recv() => return false,
                _ = int.recv() => return false,
            }
            self.update_announcement();
        }
    }

    /// Announces while a backend is in service (and not drained), withdraws otherwise.
    fn update_announcement(&mut self) {
        let in_service = self.publishing.set.in_service();
        if let Some(a) = &mut self.announce {
            a.update(in_service);
        }
    }

    /// Stopping for good (not `--keep`): the announcement goes first, then the programs stay a
    /// grace period so routers move traffic away before nothing answers it.
    async fn withdraw_before_stopping(&mut self, keep: bool) {
        if keep {
            return;
        }
        let grace = self.config.withdraw_grace;
        if self.announce.as_mut().is_some_and(Announcer::stop) {
            say(&format!(
                "waiting {} for routers to move traffic away",
                crate::duration::format(grace)
            ));
            tokio::time::sleep(grace).await;
        }
        if self.announce.as_mut().is_some_and(Announcer::stop_returns) {
            say(&format!(
                "waiting {} for routers to move replies to the other nodes",
                crate::duration::format(grace)
            ));
            tokio::time::sleep(grace).await;
        }
    }

    fn node_drain(&mut self, deadline_ms: Option<u64>) -> anyhow::Result<Response> {
        let a = self
            .announce
            .as_mut()
            .context("this instance announces nothing to drain: start it with --announce-table")?;
        a.drain(deadline_ms.map(Duration::from_millis));
        let s = a.status();
        let then = match deadline_ms {
            Some(ms) => format!(
                "; stopping in {}",
                crate::duration::format(Duration::from_millis(ms))
            ),
            None => String::new(),
        };
        Ok(Response::ok(format!(
            "drained: withdrew {} from table {}{then}",
            s.prefixes.join(","),
            s.table
        )))
    }

    fn node_undrain(&mut self) -> anyhow::Result<Response> {
        let in_service = self.publishing.set.in_service();
        let a = self
            .announce
            .as_mut()
            .context("this instance announces nothing: start it with --announce-table")?;
        a.undrain(in_service);
        let s = a.status();
        Ok(Response::ok(if s.announced {
            format!("undrained: announced {}", s.prefixes.join(","))
        } else {
            "undrained: announced once a backend is in service".to_string()
        }))
    }

    fn shutdown(self, keep: bool) -> anyhow::Result<()> {
        self.health.stop();
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

    /// Answers one control request; `Some(keep)` when it asks the daemon to stop.
    fn handle(&mut self, request: Request, reply: oneshot::Sender<Response>) -> Option<bool> {
        let stop = match request {
            Request::Stop { keep } => Some(keep),
            _ => None,
        };
        let result = match request {
            Request::Apply { change } => {
                self.apply_change(&change).map(|()| Response::ok("applied"))
            }
            Request::Preview { change } => self.preview(&change).map(Response::ok),
            Request::Drain {
                addr,
                deadline_ms,
                close_rate,
            } => self.drain(addr, deadline_ms, close_rate),
            Request::Undrain { addr } => self.undrain(addr),
            Request::NodeDrain { deadline_ms } => self.node_drain(deadline_ms),
            Request::NodeUndrain => self.node_undrain(),
            Request::List => Ok(Response::ok(self.list())),
            Request::Status => {
                self.status_later(reply);
                return None;
            }
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
        let _ = reply.send(result.unwrap_or_else(|e| Response::err(format!("{e:#}"))));
        self.share();
        stop
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        let file = self.file.clone().context("no --config file to reload")?;
        let new = resolve(self.flags.clone(), Some(&file))?;
        let restart_only = self.config.restart_only(&new);
        if !restart_only.is_empty() {
            bail!(
                "only backends, health checks and slow-start change on reload; restart to change {}",
                restart_only.join(", ")
            );
        }
        self.config.health = new.health;
        self.config.slow_start = new.slow_start;
        let mut specs = new.backends;
        self.keep_discovered(&mut specs);
        self.set_backends(specs)
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let expired: Vec<SocketAddr> = self
            .publishing
            .drains
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(a, _)| *a)
            .collect();
        for addr in expired {
            let id = self.publishing.set.id_of(addr);
            let rate = self.publishing.close_rates.get(&addr).copied();
            match self.apply_change(&Change::Remove { addr }) {
                Ok(()) => match (id, rate) {
                    (Some(id), Some(rate)) => self.close_paced(addr, id, rate),
                    _ => {
                        let purged = id.map_or(Ok(0), |id| self.dp.purge_flows(id)).unwrap_or(0);
                        say(&format!(
                            "drain deadline of {addr} passed: removed, {purged} flow entries \
                             dropped"
                        ));
                    }
                },
                Err(e) => warn!("remove {addr} after its drain deadline: {e:#}"),
            }
        }
        if !self.publishing.ramps.is_empty()
            && let Err(e) = self.publish(&[])
        {
            warn!("slow start step: {e:#}");
        }
        self.report
            .measure_rates(&self.publishing.set, &self.dp, now);
        self.share();
    }

    /// Starts ending removed backend `id`'s established flows at `rate` per second; flows
    /// still in their handshake go at once.
    fn close_paced(&mut self, addr: SocketAddr, id: u32, rate: u32) {
        let flows = self.dp.established_flows(id);
        if let Err(e) = self.dp.purge_new_flows(id) {
            warn!("drop {addr}'s handshaking flows: {e:#}");
        }
        // The rate counts from now, after the walks: time spent before is no backlog to burst.
        let closing = Closing::new(addr, rate, flows, Instant::now());
        say(&format!(
            "drain deadline of {addr} passed: removed, ending its {} flows at {rate}/s (done in \
             {:.0} s)",
            closing.status().flows_left,
            closing.total_secs().ceil()
        ));
        self.publishing.closing.push(closing);
    }

    /// Ends the flows that came due under their backend's close rate.
    fn on_pace(&mut self) {
        let now = Instant::now();
        for closing in &mut self.publishing.closing {
            for (key, flow) in closing.due(now) {
                if let Err(e) = self.dp.end_flow(&key, &flow) {
                    warn!("end a flow of {}: {e:#}", closing.addr);
                }
            }
            if closing.done() {
                say(&format!(
                    "{}: all {} flows ended at {}/s",
                    closing.addr,
                    closing.ended(),
                    closing.rate
                ));
            }
        }
        self.publishing.closing.retain(|c| !c.done());
    }
}

/// Starts the affinity exchange (`--peers`) on its bound socket.
fn start_peers(
    config: &Config,
    dp: &Datapath,
    set: &BackendSet,
    socket: std::net::UdpSocket,
) -> anyhow::Result<Peers> {
    let peers = config
        .peers
        .as_ref()
        .context("peers socket without --peers")?;
    let events =
        aya::maps::RingBuf::try_from(dp.map_handle(sticky_common::sync::AFFINITY_EVENTS)?)?;
    let (backends, receiver) = watch::channel(set.clone());
    let stats = Arc::new(PeerStats::default());
    crate::peers::sync::start(SyncInputs {
        config: peers.clone(),
        socket,
        events,
        affinity: dp.affinity_map()?,
        backends: receiver,
        settings: sticky_common::maps::Settings {
            affinity_prefix_v4: config.affinity_prefix.v4,
            affinity_prefix_v6: config.affinity_prefix.v6,
            ..Default::default()
        },
        affinity_timeout: config.affinity_timeout,
        stats: Arc::clone(&stats),
    })?;
    Ok(Peers { backends, stats })
}

/// Hands the kernel programs' log records to `tracing` as they come (rare: error paths only).
fn follow_kernel_log(log: KernelLog) {
    // SAFETY: the logger owns its ring buffer's descriptor for as long as it lives, and its
    // `as_raw_fd` always names that one.
    let mut fd = match unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("kernel log not followed: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut ready) = fd.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
}
