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

pub struct Announcer {
    table: u32,
    vips: Vec<IpAddr>,
    announced: bool,
    why: Option<Withdrawn>,
    /// `sticky node drain`: withdrawn until undrained; with a deadline, the daemon stops then.
    drained: bool,
    deadline: Option<Instant>,
    /// `--announce-return`: kept from attach to stop.
    returns: Vec<RoutePrefix>,
    returns_announced: bool,
}

impl Announcer {
    /// The VIPs' addresses (each once, whatever its ports and protocols).
    pub fn new(
        table: u32,
        vips: impl IntoIterator<Item = IpAddr>,
        returns: &[RoutePrefix],
    ) -> Self {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in vips {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        Self {
            table,
            vips: addrs,
            announced: false,
            why: Some(Withdrawn::NoBackend),
            drained: false,
            deadline: None,
            returns: returns.to_vec(),
            returns_announced: false,
        }
    }

    /// Announces or withdraws to match: `in_service` backends (≥ 1) and not drained.
    pub fn update(&mut self, in_service: usize) {
        self.update_returns();
        let want = in_service > 0 && !self.drained && self.why != Some(Withdrawn::Stopping);
        if want && !self.announced {
            match self.routes("replace", &self.vip_prefixes()) {
                Ok(()) => {
                    self.announced = true;
                    self.why = None;
                    say(&format!("announced {} (table {})", self.list(), self.table));
                }
                Err(e) => {
                    warn!("announce {} in table {}: {e:#}", self.list(), self.table);
                    // Half added: take back what went in, so nothing is half announced.
                    let _ = self.routes("del", &self.vip_prefixes());
                    self.why = Some(Withdrawn::Failed);
                }
            }
        } else if !want {
            let why = if self.why == Some(Withdrawn::Stopping) {
                Withdrawn::Stopping
            } else if self.drained {
                Withdrawn::Drained
            } else {
                Withdrawn::NoBackend
            };
            self.withdraw(why);
        }
    }

    fn withdraw(&mut self, why: Withdrawn) {
        if self.announced {
            if let Err(e) = self.routes("del", &self.vip_prefixes()) {
                warn!("withdraw {} from table {}: {e:#}", self.list(), self.table);
            }
            self.announced = false;
            say(&format!(
                "withdrew {} (table {}): {}",
                self.list(),
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
        self.update(in_service);
    }

    /// The return networks, from the first update (attached) until [`Announcer::stop_returns`];
    /// a failed add is tried again on the next update.
    fn update_returns(&mut self) {
        if self.returns_announced
            || self.returns.is_empty()
            || self.why == Some(Withdrawn::Stopping)
        {
            return;
        }
        let list = self.return_prefixes();
        match self.routes("replace", &list) {
            Ok(()) => {
                self.returns_announced = true;
                say(&format!(
                    "announced the return path {} (table {})",
                    list.join(","),
                    self.table
                ));
            }
            Err(e) => {
                warn!(
                    "announce the return path {} in table {}: {e:#}",
                    list.join(","),
                    self.table
                );
                let _ = self.routes("del", &list);
            }
        }
    }

    /// Stopping, after the VIPs' grace period: withdraws the return networks; returns whether
    /// they were announced (the caller then waits another grace period).
    pub fn stop_returns(&mut self) -> bool {
        let was = self.returns_announced;
        if was {
            let list = self.return_prefixes();
            if let Err(e) = self.routes("del", &list) {
                warn!(
                    "withdraw the return path {} from table {}: {e:#}",
                    list.join(","),
                    self.table
                );
            }
            self.returns_announced = false;
            say(&format!(
                "withdrew the return path {} (table {}): stopping",
                list.join(","),
                self.table
            ));
        }
        was
    }

    pub fn deadline_passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Stopping: withdraws; returns whether routes were announced until now (the caller then
    /// waits the grace period for routers to move traffic away before detaching).
    pub fn stop(&mut self) -> bool {
        let was = self.announced;
        self.withdraw(Withdrawn::Stopping);
        was
    }

    pub fn status(&self) -> AnnounceStatus {
        AnnounceStatus {
            table: self.table,
            prefixes: self.vips.iter().map(|ip| prefix(*ip)).collect(),
            announced: self.announced,
            withdrawn_because: self.why.map(|w| w.describe().to_string()),
            drained: self.drained,
            return_prefixes: self.return_prefixes(),
            return_announced: self.returns_announced,
        }
    }

    fn list(&self) -> String {
        self.vip_prefixes().join(",")
    }

    fn vip_prefixes(&self) -> Vec<String> {
        self.vips.iter().map(|ip| prefix(*ip)).collect()
    }

    fn return_prefixes(&self) -> Vec<String> {
        self.returns.iter().map(ToString::to_string).collect()
    }

    /// `ip route OP PREFIX dev lo table T` for every prefix; `del` of a route already gone is
    /// no error.
    fn routes(&self, op: &str, prefixes: &[String]) -> anyhow::Result<()> {
        let table = self.table.to_string();
        for dst in prefixes {
            let family = if dst.contains(':') { "-6" } else { "-4" };
            let mut args = vec![family, "route", op, dst, "dev", "lo", "table", &table];
            if op != "del" {
                args.extend(["proto", "static"]);
            }
            match net::run("ip", &args) {
                Ok(_) => {}
                Err(e) if op == "del" && e.to_string().contains("No such process") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
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

fn prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}
