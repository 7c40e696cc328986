//! Backend changes, previews and lookups: validated on a copy, then published whole.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sticky_common::{
    Addr16, BackendState,
    maps::{BACKEND_DOWN, BACKEND_DRAINING, BACKEND_UP, NO_BACKEND},
};
use tracing::info;

use super::{Daemon, cookie_key};
use crate::{
    addr::{BackendSpec, MAX_WEIGHT},
    clock::monotonic_ns,
    control::{BackendListEntry, Change, Lookup, Preview, Response},
    proxy::routing::Routing,
    table,
};

impl Daemon {
    pub(super) fn spec_index(&self, addr: SocketAddr) -> anyhow::Result<usize> {
        self.config
            .backends
            .iter()
            .position(|b| b.addr == addr)
            .with_context(|| format!("no backend {addr} (`sticky backend list` shows them)"))
    }

    /// The backend list after `change`, validated; the running state is not touched.
    pub(super) fn changed_specs(&self, change: &Change) -> anyhow::Result<Vec<BackendSpec>> {
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

    pub(super) fn apply_change(&mut self, change: &Change) -> anyhow::Result<()> {
        let specs = self.changed_specs(change)?;
        self.set_backends(specs)?;
        info!("applied {change:?}");
        Ok(())
    }

    /// Makes `specs` the backend set and publishes it.
    pub(super) fn set_backends(&mut self, specs: Vec<BackendSpec>) -> anyhow::Result<()> {
        let mut set = self.publishing.set.clone();
        let removed = set.reconcile(&specs)?;
        self.publishing.set = set;
        self.config.backends = specs;
        self.publishing
            .drains
            .retain(|a, _| self.config.backends.iter().any(|b| b.addr == *a));
        self.publish(&removed)?;
        self.restart_health();
        Ok(())
    }

    /// The kernel state each backend should have: health first, then drain.
    pub(super) fn publish(&mut self, removed: &[u32]) -> anyhow::Result<()> {
        for b in &self.config.backends {
            let healthy = self
                .health
                .tasks
                .get(&b.addr)
                .is_none_or(|h| h.tracker.healthy());
            let state = if !healthy {
                BACKEND_DOWN
            } else if self.publishing.drains.contains_key(&b.addr) {
                BACKEND_DRAINING
            } else {
                BACKEND_UP
            };
            self.publishing.set.set_state(b.addr, state);
        }
        self.publishing.table = self.dp.apply(&self.publishing.set, removed)?;
        if let Some(routing) = &self.publishing.routing
            && let Ok(mut r) = routing.write()
        {
            *r = Routing::new(
                self.publishing.table.clone(),
                &self.publishing.set,
                self.dp.seed(),
                self.dp.affinity_timeout().as_nanos() as u64,
                cookie_key(self.dp.seed()),
            );
        }
        Ok(())
    }

    pub(super) fn drain(
        &mut self,
        addr: SocketAddr,
        deadline_ms: Option<u64>,
    ) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        let deadline = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.publishing.drains.insert(addr, deadline);
        self.publish(&[])?;
        info!("draining {addr}");
        Ok(Response::ok("draining"))
    }

    pub(super) fn undrain(&mut self, addr: SocketAddr) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        if self.publishing.drains.remove(&addr).is_none() {
            bail!("backend {addr} is not draining");
        }
        self.publish(&[])?;
        Ok(Response::ok("in service"))
    }

    pub(super) fn list(&self) -> Vec<BackendListEntry> {
        self.config
            .backends
            .iter()
            .map(|b| BackendListEntry {
                addr: b.addr,
                weight: b.weight,
                state: self
                    .publishing
                    .set
                    .id_of(b.addr)
                    .map_or(BackendState::Empty, |id| {
                        self.publishing.set.entry(id).state()
                    }),
            })
            .collect()
    }

    pub(super) fn fresh_affinity(&self) -> anyhow::Result<Vec<(Addr16, u32)>> {
        let now = monotonic_ns();
        let timeout = self.dp.affinity_timeout().as_nanos() as u64;
        Ok(self
            .dp
            .affinity_entries()?
            .into_iter()
            .filter(|(_, a)| {
                now.saturating_sub(a.last_seen_ns) <= timeout
                    && self.publishing.set.get(a.backend_id).is_some_and(|s| {
                        s.generation == a.generation
                            && (s.state == BACKEND_UP || s.state == BACKEND_DRAINING)
                    })
            })
            .map(|(c, a)| (c, a.backend_id))
            .collect())
    }

    pub(super) fn preview(&self, change: &Change) -> anyhow::Result<Preview> {
        let specs = self.changed_specs(change)?;
        let mut set = self.publishing.set.clone();
        set.reconcile(&specs)?;
        let new_table = table::build(&set.members(), self.dp.table_size(), self.dp.seed());
        let slots_moved = self
            .publishing
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

    pub(super) fn lookup(&self, ip: std::net::IpAddr) -> anyhow::Result<Lookup> {
        if ip.is_ipv4() != self.config.vips[0].is_ipv4() {
            bail!("{ip} is not of the VIPs' address family");
        }
        let client = Addr16::from_ip(ip);
        let backend_addr = |id: u32| self.publishing.set.get(id).map(|s| s.addr);
        if let Some(a) = self.dp.affinity_of(&client)? {
            let idle = monotonic_ns().saturating_sub(a.last_seen_ns);
            let honoured = self.publishing.set.get(a.backend_id).is_some_and(|s| {
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
        let id = table::lookup(&self.publishing.table, &client, self.dp.seed());
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
}
