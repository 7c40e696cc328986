//! Health probes: one task per checked backend, HAProxy rise/fall, state changes published.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use super::{Daemon, say};
use crate::{
    health::{self, Tracker, Transition},
    status::Health,
};

/// How often the kernel path's refused-connection counts are read.
pub(super) const REFUSAL_POLL: Duration = Duration::from_millis(50);

/// A probe result: the backend, the epoch of the task that probed, whether it passed.
type Probe = (SocketAddr, u64, bool);

/// The probe tasks and the channel their results come back on.
pub(super) struct HealthChecks {
    pub(super) tasks: BTreeMap<SocketAddr, HealthTask>,
    /// Bumped on each restart: results of tasks from an earlier epoch are stale.
    epoch: u64,
    tx: mpsc::Sender<Probe>,
    pub(super) rx: mpsc::Receiver<Probe>,
}

pub(super) struct HealthTask {
    pub(super) tracker: Tracker,
    transitions: u64,
    task: JoinHandle<()>,
    /// The backend's refused-handshake count when last looked at.
    refused_seen: u64,
}

impl HealthChecks {
    pub(super) fn new() -> Self {
        let (tx, rx) = mpsc::channel(256);
        Self {
            tasks: BTreeMap::new(),
            epoch: 0,
            tx,
            rx,
        }
    }

    pub(super) fn stop(&self) {
        for task in self.tasks.values() {
            task.task.abort();
        }
    }

    /// What status reports of `addr`: `None` when it has no check.
    pub(super) fn report(&self, addr: SocketAddr) -> Option<(Health, u64)> {
        let h = self.tasks.get(&addr)?;
        let health = if h.tracker.healthy() {
            Health::Healthy
        } else {
            Health::Failing
        };
        Some((health, h.transitions))
    }
}

impl Daemon {
    /// (Re)starts one probe task per checked backend, keeping trackers of unchanged checks.
    pub(super) fn restart_health(&mut self) {
        self.health.epoch += 1;
        let old = std::mem::take(&mut self.health.tasks);
        for task in old.values() {
            task.task.abort();
        }
        for b in &self.config.backends {
            let Some(check) = self.config.health.for_backend(b.addr).cloned() else {
                continue;
            };
            let (rise, fall) = (check.rise, check.fall);
            let (addr, epoch, tx) = (b.addr, self.health.epoch, self.health.tx.clone());
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
                None => (Tracker::new(rise, fall), 0),
            };
            let refused_seen = self.refused_count(b.addr).unwrap_or(0);
            self.health.tasks.insert(
                b.addr,
                HealthTask {
                    tracker,
                    transitions,
                    task,
                    refused_seen,
                },
            );
        }
    }

    pub(super) fn on_probe(&mut self, addr: SocketAddr, epoch: u64, ok: bool) {
        if epoch != self.health.epoch {
            return;
        }
        let Some(h) = self.health.tasks.get_mut(&addr) else {
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

    /// Passive check: a checked backend that reset new connections since the last look (the
    /// kernel path counts RSTs answering a SYN) is taken out now rather than after `fall`
    /// failed probes; its probes bring it back.
    pub(super) fn on_refusals(&mut self) {
        let addrs: Vec<SocketAddr> = self.health.tasks.keys().copied().collect();
        let mut changed = false;
        for addr in addrs {
            let Some(now) = self.refused_count(addr) else {
                continue;
            };
            let Some(h) = self.health.tasks.get_mut(&addr) else {
                continue;
            };
            let new = now.saturating_sub(h.refused_seen);
            h.refused_seen = now;
            if new > 0 && h.tracker.fail_now().is_some() {
                h.transitions += 1;
                changed = true;
                say(&format!(
                    "health: {addr} refused {new} new connections, out of the table"
                ));
            }
        }
        if changed && let Err(e) = self.publish(&[]) {
            warn!("publish after refused connections: {e:#}");
        }
    }

    fn refused_count(&self, addr: SocketAddr) -> Option<u64> {
        let id = self.publishing.set.id_of(addr)?;
        self.dp.backend_stats(id).ok().map(|s| s.refused)
    }
}
