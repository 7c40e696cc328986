//! Backend changes, previews and lookups: validated on a copy, then published whole.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sticky_common::{Addr16, BackendState, maps::Affinity};
use tracing::info;

use super::{Daemon, cookie_key, slow_start};
use crate::{
    addr::{BackendSpec, MAX_WEIGHT},
    clock::monotonic_ns,
    control::{BackendListEntry, Change, Lookup, Preview, Response},
    decision::{Published, no_affinity},
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
        if self.config.slow_start.is_some() {
            let now = Instant::now();
            for b in specs
                .iter()
                .filter(|b| self.publishing.set.id_of(b.addr).is_none())
            {
                self.publishing.ramps.insert(b.addr, now);
            }
        }
        self.publishing.set = set;
        self.config.backends = specs;
        let configured = |a: &SocketAddr| self.config.backends.iter().any(|b| b.addr == *a);
        self.publishing.drains.retain(|a, _| configured(a));
        self.publishing.close_rates.retain(|a, _| configured(a));
        self.publishing.ramps.retain(|a, _| configured(a));
        self.publish(&removed)?;
        self.restart_health();
        Ok(())
    }

    /// The kernel state each backend should have: health first, then drain; the table with
    /// the weights of any slow start.
    pub(super) fn publish(&mut self, removed: &[u32]) -> anyhow::Result<()> {
        let now = Instant::now();
        for b in &self.config.backends {
            let healthy = self
                .health
                .tasks
                .get(&b.addr)
                .is_none_or(|h| h.tracker.healthy());
            let state = if !healthy {
                BackendState::Down
            } else if self.publishing.drains.contains_key(&b.addr) {
                BackendState::Draining
            } else {
                BackendState::Up
            };
            let was = self
                .publishing
                .set
                .id_of(b.addr)
                .and_then(|id| self.publishing.set.get(id));
            if self.config.slow_start.is_some()
                && state == BackendState::Up
                && was.is_some_and(|e| e.state == BackendState::Down)
            {
                self.publishing.ramps.insert(b.addr, now);
            }
            self.publishing.set.set_state(b.addr, state);
        }
        let ramps = self.ramp_progress(now);
        // A ramp ends when it is complete, or when its backend leaves the table (a new one
        // starts when it comes back).
        self.publishing.ramps.retain(|a, _| {
            let id = self.publishing.set.id_of(*a);
            id.is_some_and(|id| ramps.get(&id).is_some_and(|p| *p < 1.0))
        });
        let table = if ramps.is_empty() {
            self.dp.apply(&self.publishing.set, removed)?
        } else {
            self.dp
                .apply(&slow_start::ramped(&self.publishing.set, &ramps), removed)?
        };
        self.publishing.table = Arc::new(table);
        if let Some(routing) = &self.publishing.routing
            && let Ok(mut r) = routing.write()
        {
            *r = Routing::new(
                self.publishing.table.to_vec(),
                &self.publishing.set,
                self.dp.settings(),
                cookie_key(self.dp.seed()),
            );
        }
        Ok(())
    }

    /// How far each ramping backend in the table is (id → 0..1).
    pub(super) fn ramp_progress(&self, now: Instant) -> BTreeMap<u32, f64> {
        let Some(window) = self.config.slow_start else {
            return BTreeMap::new();
        };
        self.publishing
            .ramps
            .iter()
            .filter_map(|(addr, since)| {
                let id = self.publishing.set.id_of(*addr)?;
                let up = self.publishing.set.get(id)?.state == BackendState::Up;
                up.then(|| (id, slow_start::progress(*since, now, window)))
            })
            .collect()
    }

    pub(super) fn drain(
        &mut self,
        addr: SocketAddr,
        deadline_ms: Option<u64>,
        close_rate: Option<u32>,
    ) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        if close_rate.is_some() && deadline_ms.is_none() {
            bail!("a close rate paces the flows ended at the deadline: give --deadline too");
        }
        let deadline = deadline_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        self.publishing.drains.insert(addr, deadline);
        match close_rate {
            Some(rate) => self.publishing.close_rates.insert(addr, rate),
            None => self.publishing.close_rates.remove(&addr),
        };
        self.publish(&[])?;
        info!("draining {addr}");
        Ok(Response::ok("draining"))
    }

    pub(super) fn undrain(&mut self, addr: SocketAddr) -> anyhow::Result<Response> {
        self.spec_index(addr)?;
        if self.publishing.drains.remove(&addr).is_none() {
            bail!("backend {addr} is not draining");
        }
        self.publishing.close_rates.remove(&addr);
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

    /// The published state as the backend decision sees it, affinity from `affinity`.
    fn published<A: Fn(&Addr16) -> Option<Affinity>>(&self, affinity: A) -> Published<'_, A> {
        Published::new(
            &self.publishing.set,
            &self.publishing.table,
            self.dp.settings(),
            affinity,
        )
    }

    /// What `change` would do: table slots that change hands, and affine clients whose
    /// affinity would no longer hold (their backend gone) after it.
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
        let now = monotonic_ns();
        let view = self.published(no_affinity);
        let after = Published::new(&set, &new_table, *view.settings(), no_affinity);
        let mut affine = 0u64;
        let mut moved = 0u64;
        for (c, a) in self.dp.affinity_entries()? {
            if view.holding(&c, a, now).is_some() {
                affine += 1;
                if after.holding(&c, a, now).is_none() {
                    moved += 1;
                }
            }
        }
        Ok(Preview {
            slots_moved: slots_moved as u64,
            table_size: self.dp.table_size(),
            affine_clients: affine,
            affine_clients_moved: moved,
        })
    }

    pub(super) fn lookup(&self, ip: std::net::IpAddr) -> anyhow::Result<Lookup> {
        if ip.is_ipv4() != self.config.vips[0].is_ipv4() {
            bail!("{ip} is not of the VIPs' address family");
        }
        let client = Addr16::from_ip(ip);
        let key = self.published(no_affinity).key(&client);
        let affinity = self.dp.affinity_of(&key)?;
        let (id, why) = self
            .published(|c: &Addr16| affinity.filter(|_| *c == key))
            .explain(&client, monotonic_ns());
        Ok(Lookup {
            client: ip,
            backend: id
                .and_then(|id| self.publishing.set.get(id))
                .map(|s| s.addr),
            reason: why.reason(),
            idle_secs: why.idle_secs(),
        })
    }
}
