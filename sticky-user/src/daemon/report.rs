//! `sticky status`: the snapshot of every backend, built from the maps.

use super::*;

impl Daemon {
    pub(super) fn status(&mut self) -> anyhow::Result<Status> {
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
                refused_total: stats.refused,
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
            new_flow_entries: {
                // Confirmed flows stay in the new-flow table until they age out: count the rest.
                let established: std::collections::HashSet<_> =
                    flows.iter().map(|(k, _)| *k).collect();
                self.dp
                    .new_flow_keys()?
                    .iter()
                    .filter(|k| !established.contains(k))
                    .count() as u64
            },
            map_bytes: self.dp.map_memory()?.iter().map(|m| m.bytes).sum(),
        })
    }
}
