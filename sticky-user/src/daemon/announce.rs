//! VIP announcement through the host's routing daemon (`--announce-table`): sticky keeps each
//! VIP's host route (`/32`, `/128`, `dev lo`) in a routing table of its own exactly while the
//! instance is ready — programs attached and at least one backend in service, not drained —
//! and a routing daemon (BIRD, FRR, GoBGP; configs under `deploy/`) exports that table's routes
//! to the routers. sticky speaks no BGP itself. The table is never used for forwarding (no
//! rule points at it): its routes only say "announce this".

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{backend_setup::net, logging::say, status::AnnounceStatus};

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
}

impl Announcer {
    /// The VIPs' addresses (each once, whatever its ports and protocols).
    pub fn new(table: u32, vips: impl IntoIterator<Item = IpAddr>) -> Self {
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
        }
    }

    /// Announces or withdraws to match: `in_service` backends (≥ 1) and not drained.
    pub fn update(&mut self, in_service: usize) {
        let want = in_service > 0 && !self.drained && self.why != Some(Withdrawn::Stopping);
        if want && !self.announced {
            match self.routes("replace") {
                Ok(()) => {
                    self.announced = true;
                    self.why = None;
                    say(&format!("announced {} (table {})", self.list(), self.table));
                }
                Err(e) => {
                    warn!("announce {} in table {}: {e:#}", self.list(), self.table);
                    // Half added: take back what went in, so nothing is half announced.
                    let _ = self.routes("del");
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
            if let Err(e) = self.routes("del") {
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
        }
    }

    fn list(&self) -> String {
        let all: Vec<String> = self.vips.iter().map(|ip| prefix(*ip)).collect();
        all.join(",")
    }

    /// `ip route OP VIP/len dev lo table T` for every VIP; `del` of a route already gone is
    /// no error.
    fn routes(&self, op: &str) -> anyhow::Result<()> {
        let table = self.table.to_string();
        for ip in &self.vips {
            let family = if ip.is_ipv4() { "-4" } else { "-6" };
            let dst = prefix(*ip);
            let mut args = vec![family, "route", op, &dst, "dev", "lo", "table", &table];
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
