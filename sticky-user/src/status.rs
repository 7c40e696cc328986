//! What `sticky status`, `--json` and the metrics endpoint report: one snapshot type.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: u32,
    pub addr: SocketAddr,
    /// `up`, `draining` or `down` (failed health checks).
    pub state: String,
    /// `healthy`, `failing` or `unchecked`.
    pub health: String,
    pub weight: u32,
    /// Share of table slots (0..1).
    pub table_share: f64,
    /// Weight over total weight of the backends in the table (0..1); 0 when out of it.
    pub ideal_share: f64,
    /// Clients whose affinity names this backend and has not lapsed.
    pub affine_clients: u64,
    /// Connections in the flow table.
    pub active_flows: u64,
    pub new_flows_total: u64,
    /// New connections the backend reset during their handshake (nothing listening).
    #[serde(default)]
    pub refused_total: u64,
    pub new_flows_per_sec: f64,
    pub packets: u64,
    pub bytes: u64,
    /// Health state changes since start.
    pub health_transitions: u64,
    /// Seconds until a drain deadline removes the backend.
    pub drain_deadline_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub vips: Vec<SocketAddr>,
    pub ifaces: Vec<String>,
    pub table_size: u32,
    pub backends: Vec<BackendStatus>,
    /// Global data-path counters by name (`pass`, `parse_error`, `unhandled`,
    /// `drop_no_backend`, `drop_nat_error`, `nat`).
    pub counters: BTreeMap<String, u64>,
    pub affinity_entries: u64,
    /// Established flows, both directions.
    pub flow_entries: u64,
    /// Flows still in their handshake (not yet confirmed by the client), both directions.
    #[serde(default)]
    pub new_flow_entries: u64,
    /// Memory the kernel charges for the instance's maps (flows, affinity, table…).
    #[serde(default)]
    pub map_bytes: u64,
}
