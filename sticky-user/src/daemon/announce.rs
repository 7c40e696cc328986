//! VIP announcement through the host's routing daemon (`--announce-table`): sticky keeps each
//! VIP's host route (`/32`, `/128`, `dev lo`) in a routing table of its own exactly while the
//! instance is ready — programs attached and at least one backend in service, not drained —
//! and a routing daemon (BIRD, FRR, GoBGP; configs under `deploy/`) exports that table's routes
//! to the routers. sticky speaks no BGP itself. The table is never used for forwarding (no
//! rule points at it): its routes only say "announce this".
//!
//! With `--announce-return` (NAT, `--replies-any-node`) the table also holds the clients'
//! networks from attach to stop, drained or not: routers send the backends' replies through
//! any attached node, which rewrites them. They go one grace period after the VIPs, so a
//! stopping node is out of both directions before it detaches.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{backend_setup::net, config::RoutePrefix, logging::say, status::AnnounceStatus};

/// Why the VIPs are not announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Withdrawn {
    NoBackend,
    Drained,
    Stopping,
    /// Adding the routes failed (logged); tried again on the next change or tick.
    Failed,
}

/// After a failed `ip route` add, the next try waits this long (the loop runs on every event:
/// without a pause a failing route would be added and taken back many times a second).
const RETRY: Duration = Duration::from_secs(1);

pub struct Announcer {
    table: u32,
    /// The VIPs' host routes, each once whatever its ports and protocols.
    vips: Vec<RoutePrefix>,
    announced: bool,
    why: Option<Withdrawn>,
    /// `sticky node drain`: withdrawn until undrained; with a deadline, the daemon stops then.
    drained: bool,
    deadline: Option<Instant>,
    /// `--announce-return`, each with whether it is in the table: kept from attach to stop.
    returns: Vec<(RoutePrefix, bool)>,
    /// No add is tried before this (after a failure).
    retry_at: Option<Instant>,
}

impl Announcer {
    pub fn new(
        table: u32,
        vips: impl IntoIterator<Item = IpAddr>,
        returns: &[RoutePrefix],
    ) -> Self {
        let mut hosts: Vec<RoutePrefix> = Vec::new();
        for ip in vips {
            let p = RoutePrefix::host(ip);
            if !hosts.contains(&p) {
                hosts.push(p);
            }
        }
        Self {
            table,
            vips: hosts,
            announced: false,
            why: Some(Withdrawn::NoBackend),
            drained: false,
            deadline: None,
            returns: returns.iter().map(|p| (*p, false)).collect(),
            retry_at: None,
        }
    }

    /// Announces or withdraws to match: `in_service` backends (≥ 1) and not drained.
    pub fn update(&mut self, in_service: usize) {
        let stopping = self.why == Some(Withdrawn::Stopping);
        let may_add = self.retry_at.is_none_or(|t| Instant::now() >= t);
        if may_add && !stopping {
            self.update_returns();
        }
        let want = in_service > 0 && !self.drained && !stopping;
        if want && !self.announced {
            if !may_add {
                return;
            }
            match self.add(&self.vips) {
                Ok(()) => {
                    self.announced = true;
                    self.why = None;
                    say(&format!(
                        "announced {} (table {})",
                        list(&self.vips),
                        self.table
                    ));
                }
                Err(e) => {
                    warn!(
                        "announce {} in table {}: {e:#}",
                        list(&self.vips),
                        self.table
                    );
                    // Half added: take back what went in, so nothing is half announced.
                    let _ = self.del(&self.vips);
                    self.why = Some(Withdrawn::Failed);
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
        } else if !want {
            let why = if stopping {
                Withdrawn::Stopping
            } else if self.drained {
                Withdrawn::Drained
            } else {
                Withdrawn::NoBackend
            };
            self.withdraw(why);
        }
    }

    /// Adds each return network not yet in the table; one that fails is tried again after
    /// [`RETRY`], the others stay (a return path is per network: nothing to roll back).
    fn update_returns(&mut self) {
        let mut failed = false;
        for i in 0..self.returns.len() {
            let (p, added) = self.returns[i];
            if added {
                continue;
            }
            match self.add(&[p]) {
                Ok(()) => {
                    self.returns[i].1 = true;
                    say(&format!(
                        "announced the return path {p} (table {})",
                        self.table
                    ));
                }
                Err(e) => {
                    warn!(
                        "announce the return path {p} in table {}: {e:#}",
                        self.table
                    );
                    failed = true;
                }
            }
        }
        if failed {
            self.retry_at = Some(Instant::now() + RETRY);
        }
    }

    fn withdraw(&mut self, why: Withdrawn) {
        if self.announced {
            if let Err(e) = self.del(&self.vips) {
                warn!(
                    "withdraw {} from table {}: {e:#}",
                    list(&self.vips),
                    self.table
                );
            }
            self.announced = false;
            say(&format!(
                "withdrew {} (table {}): {}",
                list(&self.vips),
                self.table,
                why.describe()
            ));
        }
        self.why = Some(why);
    }

    /// `sticky node drain`: withdraws now and keeps withdrawn; with `deadline`, the daemon
    /// stops then ([`Announcer::deadline_passed`]).
    pub fn drain(&mut self, deadline: Option<Duration>) {
        self.drained = true;
        self.deadline = deadline.map(|d| Instant::now() + d);
        self.withdraw(Withdrawn::Drained);
    }

    /// `sticky node undrain`: announced again as soon as a backend is in service.
    pub fn undrain(&mut self, in_service: usize) {
        self.drained = false;
        self.deadline = None;
        self.why = Some(Withdrawn::NoBackend);
        self.retry_at = None;
        self.update(in_service);
    }

    pub fn deadline_passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Stopping: withdraws the VIPs; returns whether they were announced until now (the caller
    /// then waits the grace period for routers to move traffic away before detaching).
    pub fn stop(&mut self) -> bool {
        let was = self.announced;
        self.withdraw(Withdrawn::Stopping);
        was
    }

    /// Stopping, after the VIPs' grace period: withdraws the return networks; returns whether
    /// any was announced (the caller then waits another grace period).
    pub fn stop_returns(&mut self) -> bool {
        self.why = Some(Withdrawn::Stopping);
        let added: Vec<RoutePrefix> = (self.returns.iter())
            .filter(|(_, added)| *added)
            .map(|(p, _)| *p)
            .collect();
        if added.is_empty() {
            return false;
        }
        if let Err(e) = self.del(&added) {
            warn!(
                "withdraw the return path {} from table {}: {e:#}",
                list(&added),
                self.table
            );
        }
        for r in &mut self.returns {
            r.1 = false;
        }
        say(&format!(
            "withdrew the return path {} (table {}): stopping",
            list(&added),
            self.table
        ));
        true
    }

    pub fn status(&self) -> AnnounceStatus {
        AnnounceStatus {
            table: self.table,
            prefixes: strings(&self.vips),
            announced: self.announced,
            withdrawn_because: self.why.map(|w| w.describe().to_string()),
            drained: self.drained,
            return_prefixes: self.returns.iter().map(|(p, _)| p.to_string()).collect(),
            return_announced: !self.returns.is_empty() && self.returns.iter().all(|(_, a)| *a),
        }
    }

    /// `ip route replace PREFIX dev lo table T proto static` for each, stopping at the first
    /// failure.
    fn add(&self, prefixes: &[RoutePrefix]) -> anyhow::Result<()> {
        for p in prefixes {
            self.route("replace", p)?;
        }
        Ok(())
    }

    /// `ip route del` for each, every one tried whatever failed before (a route already gone
    /// is no error); the first failure is returned.
    fn del(&self, prefixes: &[RoutePrefix]) -> anyhow::Result<()> {
        let mut first = Ok(());
        for p in prefixes {
            match self.route("del", p) {
                Err(e) if !e.to_string().contains("No such process") && first.is_ok() => {
                    first = Err(e);
                }
                _ => {}
            }
        }
        first
    }

    fn route(&self, op: &str, p: &RoutePrefix) -> anyhow::Result<()> {
        let table = self.table.to_string();
        let family = if p.addr.is_ipv4() { "-4" } else { "-6" };
        let dst = p.to_string();
        let mut args = vec![family, "route", op, &dst, "dev", "lo", "table", &table];
        if op != "del" {
            args.extend(["proto", "static"]);
        }
        net::run("ip", &args).map(drop).map_err(Into::into)
    }
}

fn strings(prefixes: &[RoutePrefix]) -> Vec<String> {
    prefixes.iter().map(ToString::to_string).collect()
}

fn list(prefixes: &[RoutePrefix]) -> String {
    strings(prefixes).join(",")
}

impl Withdrawn {
    fn describe(self) -> &'static str {
        match self {
            Withdrawn::NoBackend => "no backend in service",
            Withdrawn::Drained => "node drained",
            Withdrawn::Stopping => "stopping",
            Withdrawn::Failed => "adding the routes failed",
        }
    }
}
