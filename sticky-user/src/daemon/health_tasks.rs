//! Health probes: one task per checked backend, HAProxy rise/fall, state changes published.

use super::*;

impl Daemon {
    /// (Re)starts one probe task per checked backend, keeping trackers of unchanged checks.
    pub(super) fn restart_health(&mut self) {
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
            let refused_seen = self.refused_count(b.addr).unwrap_or(0);
            self.health.insert(
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

    /// Passive check: a checked backend that reset new connections since the last look (the
    /// kernel path counts RSTs answering a SYN) is taken out now rather than after `fall`
    /// failed probes; its probes bring it back.
    pub(super) fn on_refusals(&mut self) {
        let addrs: Vec<SocketAddr> = self.health.keys().copied().collect();
        let mut changed = false;
        for addr in addrs {
            let Some(now) = self.refused_count(addr) else {
                continue;
            };
            let Some(h) = self.health.get_mut(&addr) else {
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
        let id = self.set.id_of(addr)?;
        self.dp.backend_stats(id).ok().map(|s| s.refused)
    }
}

/// How often the kernel path's refused-connection counts are read.
pub(super) const REFUSAL_POLL: Duration = Duration::from_millis(50);

pub(super) fn check_rise(config: &Config, addr: SocketAddr) -> u32 {
    config.health.for_backend(addr).map_or(1, |c| c.rise)
}

pub(super) fn check_fall(config: &Config, addr: SocketAddr) -> u32 {
    config.health.for_backend(addr).map_or(1, |c| c.fall)
}
