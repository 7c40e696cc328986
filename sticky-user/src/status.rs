//! What `sticky status`, `--json` and the metrics endpoint report: one snapshot type.

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};
use sticky_common::BackendState;

/// What the health checks say of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Passes its checks.
    Healthy,
    /// Failed its checks: down, out of the table.
    Failing,
    /// Has no health check.
    Unchecked,
}

impl Health {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Failing => "failing",
            Self::Unchecked => "unchecked",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Serialises a [`BackendState`] as its name (`up`, `draining`, `down`, `removed`), for
/// `#[serde(with = "backend_state")]`.
pub mod backend_state {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};
    use sticky_common::BackendState;

    const ALL: [BackendState; 4] = [
        BackendState::Up,
        BackendState::Draining,
        BackendState::Down,
        BackendState::Empty,
    ];

    pub fn serialize<S: Serializer>(state: &BackendState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(state.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BackendState, D::Error> {
        let name = String::deserialize(d)?;
        ALL.into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown backend state '{name}'")))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: u32,
    pub addr: SocketAddr,
    /// `up`, `draining` or `down` (failed health checks).
    #[serde(with = "backend_state")]
    pub state: BackendState,
    pub health: Health,
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
    /// Flows per second ended once the drain deadline passes (`--close-rate`); none: all at
    /// once.
    #[serde(default)]
    pub drain_close_rate: Option<u32>,
    /// Slow start in progress: how far (0..1) its table share has ramped to the full one.
    #[serde(default)]
    pub slow_start: Option<f64>,
}

/// A backend removed at its drain deadline whose flows are being ended at its close rate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosingStatus {
    pub addr: SocketAddr,
    /// Flows ended per second.
    pub close_rate: u32,
    pub flows_ended: u64,
    pub flows_left: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub instance: String,
    pub vips: Vec<crate::addr::VipAddr>,
    pub ifaces: Vec<String>,
    pub table_size: u32,
    /// Client key prefix lengths, `V4LEN,V6LEN` (`--affinity-prefix`).
    #[serde(default)]
    pub affinity_prefix: String,
    /// How the node forwards: `nat`, or `dsr` with where it runs per interface.
    #[serde(default)]
    pub forwarding: String,
    pub backends: Vec<BackendStatus>,
    /// Global data-path counters by name ([`sticky_common::maps::COUNTER_NAMES`]).
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
    /// How long the instance's pins live: `persistent` (restarts lose nothing) or
    /// `process-lifetime` (a restart drops every connection).
    #[serde(default)]
    pub pins: String,
    /// Fill of the maps that grow with traffic: LRU maps, whose oldest entries go when full.
    #[serde(default)]
    pub maps: Vec<MapFill>,
    /// Backends past their drain deadline whose flows are still being ended.
    #[serde(default)]
    pub closing: Vec<ClosingStatus>,
    /// Each DNS source of backends: its last good answer, and its error while it fails.
    #[serde(default)]
    pub dns: Vec<DnsStatus>,
    /// The VIPs' announcement, with `--announce-table`.
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
    /// The affinity exchange with other nodes (`--peers`), when on.
    #[serde(default)]
    pub peers: Option<crate::peers::PeersStatus>,
}

/// The VIPs' announcement through the routing daemon (`--announce-table`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    /// The host routes kept in the table while announced (`VIP/32`, `VIP/128`).
    pub prefixes: Vec<String>,
    pub announced: bool,
    /// While withdrawn: no backend in service, node drained, stopping, or adding failed.
    pub withdrawn_because: Option<String>,
    /// `sticky node drain` holds it withdrawn.
    pub drained: bool,
    /// `--announce-return`: the clients' networks announced for the backends' replies.
    #[serde(default)]
    pub return_prefixes: Vec<String>,
    #[serde(default)]
    pub return_announced: bool,
}

/// A `--backend-dns` or `--backend-srv` source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// `dns NAME:PORT` or `srv NAME`.
    pub source: String,
    /// The backends of its last good answer (kept while it fails).
    pub backends: Vec<SocketAddr>,
    /// Why its last resolution failed; none while it answers.
    pub error: Option<String>,
}

/// Entries in one map against the most it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    /// `flows`, `new_flows` or `affinity`.
    pub map: String,
    pub entries: u64,
    pub max_entries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_health_keep_their_wire_names() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Both {
            #[serde(with = "backend_state")]
            state: BackendState,
            health: Health,
        }
        for (state, health, json) in [
            (
                BackendState::Up,
                Health::Healthy,
                r#"{"state":"up","health":"healthy"}"#,
            ),
            (
                BackendState::Draining,
                Health::Failing,
                r#"{"state":"draining","health":"failing"}"#,
            ),
            (
                BackendState::Down,
                Health::Unchecked,
                r#"{"state":"down","health":"unchecked"}"#,
            ),
            (
                BackendState::Empty,
                Health::Unchecked,
                r#"{"state":"removed","health":"unchecked"}"#,
            ),
        ] {
            let both = Both { state, health };
            assert_eq!(serde_json::to_string(&both).unwrap(), json);
            assert_eq!(serde_json::from_str::<Both>(json).unwrap(), both);
        }
        assert!(
            serde_json::from_str::<Both>(r#"{"state":"sideways","health":"healthy"}"#).is_err()
        );
        assert_eq!(format!("{:<9}|", Health::Failing), "failing  |");
    }
}
