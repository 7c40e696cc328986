//! [`render`] encodes a [`Status`] through prometheus-client: a [`Collector`] over the snapshot,
//! registered under the `sticky` prefix, encoded in the text format 0.0.4 that every
//! Prometheus reads. Counters are named without `_total` here; the encoder appends it.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder, prometheus_text},
    metrics::{
        MetricType::{self, Counter, Gauge},
        counter::ConstCounter,
        gauge::ConstGauge,
    },
    registry::Registry,
};
use sticky_common::BackendState;

use crate::{
    peers::PeersStatus,
    status::{BackendStatus, ClosingStatus, DnsStatus, Health, MapFill, Status},
};

/// `Content-Type` of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Every family's name starts with this and `_`.
const PREFIX: &str = "sticky";

const BACKEND_STATES: [BackendState; 3] =
    [BackendState::Up, BackendState::Draining, BackendState::Down];

/// A family with one sample per backend, labelled `backend`: name, type, help, value.
type PerBackend = (
    &'static str,
    MetricType,
    &'static str,
    fn(&BackendStatus) -> Value,
);
const PER_BACKEND: [PerBackend; 12] = [
    (
        "backend_healthy",
        Gauge,
        "Whether the backend passes its health checks or is unchecked (1) rather than failing (0).",
        |b| Value::flag(b.health != Health::Failing),
    ),
    (
        "backend_weight",
        Gauge,
        "Configured weight of the backend.",
        |b| Value::Int(b.weight.into()),
    ),
    (
        "backend_table_share",
        Gauge,
        "Share of the lookup table slots held by the backend (0..1).",
        |b| Value::Float(b.table_share),
    ),
    (
        "backend_ideal_share",
        Gauge,
        "Backend weight over the total weight of the backends in the table (0..1).",
        |b| Value::Float(b.ideal_share),
    ),
    (
        "backend_slow_start",
        Gauge,
        "How far the backend's slow start has ramped its table share (0..1; 1 when not ramping).",
        |b| Value::Float(b.slow_start.unwrap_or(1.0)),
    ),
    (
        "backend_affine_clients",
        Gauge,
        "Clients whose unexpired affinity names the backend.",
        |b| Value::Int(b.affine_clients),
    ),
    (
        "backend_active_flows",
        Gauge,
        "Connections to the backend in the flow table.",
        |b| Value::Int(b.active_flows),
    ),
    (
        "backend_new_flows",
        Counter,
        "Connections the data path assigned to the backend.",
        |b| Value::Int(b.new_flows_total),
    ),
    (
        "backend_refused",
        Counter,
        "New connections the backend reset during their handshake (nothing listening).",
        |b| Value::Int(b.refused_total),
    ),
    (
        "backend_packets",
        Counter,
        "Packets the data path steered to the backend.",
        |b| Value::Int(b.packets),
    ),
    (
        "backend_bytes",
        Counter,
        "Bytes the data path steered to the backend.",
        |b| Value::Int(b.bytes),
    ),
    (
        "backend_health_transitions",
        Counter,
        "Health state changes of the backend since start.",
        |b| Value::Int(b.health_transitions),
    ),
];

/// The whole exposition for `status`.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(StatusCollector(status.clone())));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Reports one snapshot: every family from the same walk of the maps.
#[derive(Debug)]
struct StatusCollector(Status);

impl Collector for StatusCollector {
    fn encode(&self, mut out: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let backends: Vec<(&BackendStatus, String)> =
            s.backends.iter().map(|b| (b, b.addr.to_string())).collect();
        per_backend(
            &mut out,
            Family(
                "backend_up",
                Gauge,
                "Whether the backend is up (1) rather than draining or down (0).",
            ),
            &backends,
            |b| Value::flag(b.state == BackendState::Up),
        )?;
        let state = Family(
            "backend_state",
            Gauge,
            "Backend state, one-hot over up, draining and down.",
        );
        let mut metric = state.describe(&mut out)?;
        for (b, addr) in &backends {
            for one in BACKEND_STATES {
                let labels = [("backend", addr.as_str()), ("state", one.name())];
                state.sample(&mut metric, &labels, Value::flag(b.state == one))?;
            }
        }
        for (name, kind, help, value) in PER_BACKEND {
            per_backend(&mut out, Family(name, kind, help), &backends, value)?;
        }
        paced_drain(&mut out, s)?;
        dns_sources(&mut out, s)?;
        announcement(&mut out, s)?;
        peer_exchange(&mut out, s)?;

        let packets = Family(
            "packets",
            Counter,
            "Packets seen by the data path, by result.",
        );
        let mut metric = packets.describe(&mut out)?;
        for (result, &count) in &s.counters {
            packets.sample(&mut metric, &[("result", result)], Value::Int(count))?;
        }
        // DSR's failures, also under `sticky_packets_total{result=…}`: alertable by name.
        let dsr = [
            (
                "encap_errors",
                "DSR packets dropped: no route to the backend, or encapsulation failed.",
                "encap_error",
            ),
            (
                "too_big",
                "DSR packets dropped: encapsulated, they exceed the path MTU (backends \
                 should clamp their MSS: sticky backend-setup).",
                "too_big",
            ),
        ];
        for (name, help, counter) in dsr {
            let family = Family(name, Counter, help);
            let mut metric = family.describe(&mut out)?;
            let count = s.counters.get(counter).copied().unwrap_or(0);
            family.sample(&mut metric, &[], Value::Int(count))?;
        }
        let globals = [
            (
                "affinity_entries",
                "Entries in the client affinity map.",
                s.affinity_entries,
            ),
            (
                "flow_entries",
                "Entries in the flow table (established flows, both directions).",
                s.flow_entries,
            ),
            (
                "new_flow_entries",
                "Entries of flows still in their handshake (both directions).",
                s.new_flow_entries,
            ),
            (
                "map_bytes",
                "Memory the kernel charges for the instance's maps.",
                s.map_bytes,
            ),
            (
                "table_slots",
                "Slots in the lookup table.",
                s.table_size.into(),
            ),
        ];
        for (name, help, value) in globals {
            let family = Family(name, Gauge, help);
            family.sample(&mut family.describe(&mut out)?, &[], Value::Int(value))?;
        }
        let fill = [
            (
                Family(
                    "map_entries",
                    Gauge,
                    "Entries in each map that fills with traffic (flows, new_flows, affinity).",
                ),
                (|m| m.entries) as fn(&MapFill) -> u64,
            ),
            (
                Family(
                    "map_max_entries",
                    Gauge,
                    "Most entries each map holds; when full, its least recently used entries go.",
                ),
                |m| m.max_entries,
            ),
        ];
        for (family, value) in fill {
            let mut metric = family.describe(&mut out)?;
            for m in &s.maps {
                family.sample(&mut metric, &[("map", &m.map)], Value::Int(value(m)))?;
            }
        }
        let info = Family("info", Gauge, "Always 1; labelled with the instance name.");
        let labels = [("instance", s.instance.as_str())];
        info.sample(&mut info.describe(&mut out)?, &labels, Value::Int(1))
    }
}

/// Paced drains: the close rate of each draining backend that has one, and of each removed
/// backend whose flows are being ended; for the latter, flows ended and left.
fn paced_drain(out: &mut DescriptorEncoder, s: &Status) -> fmt::Result {
    let rates: Vec<(String, u32)> = s
        .backends
        .iter()
        .filter_map(|b| Some((b.addr.to_string(), b.drain_close_rate?)))
        .chain(s.closing.iter().map(|c| (c.addr.to_string(), c.close_rate)))
        .collect();
    let rate = Family(
        "drain_close_rate",
        Gauge,
        "Flows per second a drained backend's flows are ended at once its deadline passes.",
    );
    let mut metric = rate.describe(out)?;
    for (addr, r) in &rates {
        rate.sample(&mut metric, &[("backend", addr)], Value::Int((*r).into()))?;
    }
    let closing = [
        (
            Family(
                "drain_flows_ended",
                Counter,
                "Flows of a backend past its drain deadline ended so far at its close rate.",
            ),
            (|c| c.flows_ended) as fn(&ClosingStatus) -> u64,
        ),
        (
            Family(
                "drain_flows_left",
                Gauge,
                "Flows of a backend past its drain deadline still to be ended at its close rate.",
            ),
            |c| c.flows_left,
        ),
    ];
    for (family, value) in closing {
        let mut metric = family.describe(out)?;
        for c in &s.closing {
            let addr = c.addr.to_string();
            family.sample(&mut metric, &[("backend", &addr)], Value::Int(value(c)))?;
        }
    }
    Ok(())
}

/// `--announce-table`: whether the VIPs' host routes are in the table now.
fn announcement(out: &mut DescriptorEncoder, s: &Status) -> fmt::Result {
    let Some(a) = &s.announce else {
        return Ok(());
    };
    let family = Family(
        "announced",
        Gauge,
        "Whether the VIPs are announced through the routing daemon (1) or withdrawn (0).",
    );
    let mut metric = family.describe(out)?;
    let table = a.table.to_string();
    family.sample(&mut metric, &[("table", &table)], Value::flag(a.announced))
}

/// Each DNS source: the backends of its last good answer, and whether it fails now.
fn dns_sources(out: &mut DescriptorEncoder, s: &Status) -> fmt::Result {
    let families = [
        (
            Family(
                "dns_backends",
                Gauge,
                "Backends in a DNS source's last good answer (kept while it fails).",
            ),
            (|d| Value::Int(d.backends.len() as u64)) as fn(&DnsStatus) -> Value,
        ),
        (
            Family(
                "dns_failing",
                Gauge,
                "Whether a DNS source's last resolution failed (1) or answered (0).",
            ),
            |d| Value::flag(d.error.is_some()),
        ),
    ];
    for (family, value) in families {
        let mut metric = family.describe(out)?;
        for d in &s.dns {
            family.sample(&mut metric, &[("source", &d.source)], value(d))?;
        }
    }
    Ok(())
}

/// The affinity exchange (`--peers`): the families without samples when it is off.
fn peer_exchange(out: &mut DescriptorEncoder, s: &Status) -> fmt::Result {
    type Field = fn(&PeersStatus) -> u64;
    let families: [(&str, &str, Field); 6] = [
        (
            "peer_datagrams_sent",
            "Affinity datagrams sent to peers.",
            |p| p.datagrams_sent,
        ),
        (
            "peer_records_sent",
            "Affinity records sent to peers.",
            |p| p.records_sent,
        ),
        (
            "peer_send_errors",
            "Datagrams that could not be sent to a peer.",
            |p| p.send_errors,
        ),
        (
            "peer_datagrams_accepted",
            "Peer datagrams that passed every check.",
            |p| p.datagrams_accepted,
        ),
        (
            "peer_records_applied",
            "Peer affinity records written into this node's affinity map.",
            |p| p.records_applied,
        ),
        (
            "peer_records_ignored",
            "Authentic peer records not applied (backend unknown here or not taking affine \
             clients, stale, or a fresher local affinity).",
            |p| p.records_ignored,
        ),
    ];
    for (name, help, value) in families {
        let family = Family(name, Counter, help);
        let mut metric = family.describe(out)?;
        if let Some(p) = &s.peers {
            family.sample(&mut metric, &[], Value::Int(value(p)))?;
        }
    }
    let family = Family(
        "peer_rejected",
        Counter,
        "Peer datagrams refused, by reason; a refused datagram changes nothing.",
    );
    let mut metric = family.describe(out)?;
    for (reason, &n) in s.peers.iter().flat_map(|p| &p.rejected) {
        family.sample(&mut metric, &[("reason", reason)], Value::Int(n))?;
    }
    Ok(())
}

/// A family with one sample per backend, labelled `backend`.
fn per_backend(
    out: &mut DescriptorEncoder,
    family: Family,
    backends: &[(&BackendStatus, String)],
    value: impl Fn(&BackendStatus) -> Value,
) -> fmt::Result {
    let mut metric = family.describe(out)?;
    for (b, addr) in backends {
        family.sample(&mut metric, &[("backend", addr)], value(b))?;
    }
    Ok(())
}

/// A family's name (after the prefix, counters without `_total`), type and help.
#[derive(Clone, Copy)]
struct Family(&'static str, MetricType, &'static str);

impl Family {
    /// HELP and TYPE; the samples follow through the returned encoder.
    fn describe<'a>(
        &self,
        out: &'a mut DescriptorEncoder,
    ) -> Result<MetricEncoder<'a>, fmt::Error> {
        let Self(name, kind, help) = *self;
        out.encode_descriptor(name, help, None, kind)
    }

    fn sample(
        &self,
        metric: &mut MetricEncoder,
        labels: &[(&str, &str)],
        value: Value,
    ) -> fmt::Result {
        let metric = metric.encode_family(&labels)?;
        match (self.1, value) {
            (Counter, Value::Int(v)) => ConstCounter::new(v).encode(metric),
            (Counter, Value::Float(v)) => ConstCounter::new(v).encode(metric),
            (_, Value::Int(v)) => ConstGauge::new(v).encode(metric),
            (_, Value::Float(v)) => ConstGauge::new(v).encode(metric),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn flag(on: bool) -> Self {
        Self::Int(on.into())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    pub(crate) fn sample() -> Status {
        Status {
            announce: None,
            instance: "lab\"1\\x\ny".into(),
            vips: vec!["192.0.2.1:80".parse().unwrap()],
            ifaces: vec!["eth0".into()],
            table_size: 65537,
            affinity_prefix: "24,64".into(),
            forwarding: "dsr (eth0 xdp native)".into(),
            backends: vec![
                BackendStatus {
                    id: 0,
                    addr: "10.0.0.1:80".parse().unwrap(),
                    state: BackendState::Up,
                    health: Health::Healthy,
                    weight: 3,
                    table_share: 0.75,
                    ideal_share: 0.75,
                    affine_clients: 12,
                    active_flows: 4,
                    new_flows_total: 100,
                    refused_total: 2,
                    new_flows_per_sec: 1.5,
                    packets: 1000,
                    bytes: 123_456,
                    health_transitions: 1,
                    drain_deadline_secs: None,
                    drain_close_rate: None,
                    slow_start: Some(0.25),
                },
                BackendStatus {
                    id: 1,
                    addr: "[2001:db8::2]:8080".parse().unwrap(),
                    state: BackendState::Draining,
                    health: Health::Failing,
                    weight: 1,
                    table_share: 0.25,
                    ideal_share: 0.0,
                    affine_clients: 0,
                    active_flows: 2,
                    new_flows_total: 7,
                    refused_total: 0,
                    new_flows_per_sec: 0.0,
                    packets: 50,
                    bytes: 6_000,
                    health_transitions: 3,
                    drain_deadline_secs: Some(30),
                    drain_close_rate: Some(50),
                    slow_start: None,
                },
            ],
            counters: [("pass", 5), ("nat", 1_050), ("drop_no_backend", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            affinity_entries: 12,
            flow_entries: 6,
            new_flow_entries: 4,
            map_bytes: 1 << 20,
            pins: "persistent".into(),
            maps: [("flows", 6, 1024), ("affinity", 12, 512)]
                .into_iter()
                .map(|(map, entries, max_entries)| MapFill {
                    map: map.into(),
                    entries,
                    max_entries,
                })
                .collect(),
            closing: vec![ClosingStatus {
                addr: "10.0.0.9:80".parse().unwrap(),
                close_rate: 20,
                flows_ended: 40,
                flows_left: 960,
            }],
            dns: vec![DnsStatus {
                source: "dns tasks.web:3000".into(),
                backends: vec!["10.0.0.7:3000".parse().unwrap()],
                error: Some("timed out".into()),
            }],
            peers: Some(PeersStatus {
                listen: "10.0.0.1:7946".parse().unwrap(),
                peers: vec!["10.0.0.2:7946".parse().unwrap()],
                datagrams_sent: 10,
                records_sent: 200,
                send_errors: 1,
                datagrams_accepted: 9,
                records_applied: 150,
                records_ignored: 3,
                rejected: [("bad_mac".to_string(), 2), ("replay".to_string(), 1)].into(),
            }),
        }
    }

    /// Every family as scraped (counters with `_total`).
    const FAMILIES: [&str; 37] = [
        "sticky_backend_up",
        "sticky_backend_state",
        "sticky_backend_healthy",
        "sticky_backend_weight",
        "sticky_backend_table_share",
        "sticky_backend_ideal_share",
        "sticky_backend_slow_start",
        "sticky_backend_affine_clients",
        "sticky_backend_active_flows",
        "sticky_backend_new_flows_total",
        "sticky_backend_refused_total",
        "sticky_backend_packets_total",
        "sticky_backend_bytes_total",
        "sticky_backend_health_transitions_total",
        "sticky_drain_close_rate",
        "sticky_drain_flows_ended_total",
        "sticky_drain_flows_left",
        "sticky_dns_backends",
        "sticky_dns_failing",
        "sticky_peer_datagrams_sent_total",
        "sticky_peer_records_sent_total",
        "sticky_peer_send_errors_total",
        "sticky_peer_datagrams_accepted_total",
        "sticky_peer_records_applied_total",
        "sticky_peer_records_ignored_total",
        "sticky_peer_rejected_total",
        "sticky_packets_total",
        "sticky_encap_errors_total",
        "sticky_too_big_total",
        "sticky_affinity_entries",
        "sticky_flow_entries",
        "sticky_new_flow_entries",
        "sticky_map_bytes",
        "sticky_table_slots",
        "sticky_map_entries",
        "sticky_map_max_entries",
        "sticky_info",
    ];

    pub(crate) fn has_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn render_backend_families() {
        let text = render(&sample());
        for line in [
            r#"sticky_backend_up{backend="10.0.0.1:80"} 1"#,
            r#"sticky_backend_up{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="up"} 1"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="draining"} 0"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="down"} 0"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="up"} 0"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="draining"} 1"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="down"} 0"#,
            r#"sticky_backend_healthy{backend="10.0.0.1:80"} 1"#,
            r#"sticky_backend_healthy{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_table_share{backend="10.0.0.1:80"} 0.75"#,
            r#"sticky_backend_ideal_share{backend="[2001:db8::2]:8080"} 0.0"#,
            r#"sticky_backend_slow_start{backend="10.0.0.1:80"} 0.25"#,
            r#"sticky_backend_slow_start{backend="[2001:db8::2]:8080"} 1.0"#,
            r#"sticky_backend_bytes_total{backend="10.0.0.1:80"} 123456"#,
            r#"sticky_backend_new_flows_total{backend="10.0.0.1:80"} 100"#,
            r#"sticky_backend_health_transitions_total{backend="[2001:db8::2]:8080"} 3"#,
            "# HELP sticky_backend_bytes_total Bytes the data path steered to the backend.",
            "# TYPE sticky_backend_bytes_total counter",
            "# TYPE sticky_backend_weight gauge",
        ] {
            has_line(&text, line);
        }
    }

    #[test]
    fn render_global_families() {
        let text = render(&sample());
        for line in [
            "# TYPE sticky_packets_total counter",
            "sticky_affinity_entries 12",
            "sticky_flow_entries 6",
            "sticky_new_flow_entries 4",
            "sticky_map_bytes 1048576",
            "sticky_table_slots 65537",
            r#"sticky_map_entries{map="flows"} 6"#,
            r#"sticky_map_entries{map="affinity"} 12"#,
            r#"sticky_map_max_entries{map="flows"} 1024"#,
            r#"sticky_map_max_entries{map="affinity"} 512"#,
            r#"sticky_drain_close_rate{backend="[2001:db8::2]:8080"} 50"#,
            r#"sticky_drain_close_rate{backend="10.0.0.9:80"} 20"#,
            r#"sticky_drain_flows_ended_total{backend="10.0.0.9:80"} 40"#,
            r#"sticky_drain_flows_left{backend="10.0.0.9:80"} 960"#,
            r#"sticky_dns_backends{source="dns tasks.web:3000"} 1"#,
            r#"sticky_dns_failing{source="dns tasks.web:3000"} 1"#,
            "sticky_peer_records_applied_total 150",
            r#"sticky_peer_rejected_total{reason="bad_mac"} 2"#,
            "# TYPE sticky_map_max_entries gauge",
            // Backslash, double quote and line feed escaped.
            r#"sticky_info{instance="lab\"1\\x\ny"} 1"#,
        ] {
            has_line(&text, line);
        }
        let results: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sticky_packets_total{"))
            .collect();
        assert_eq!(
            results,
            [
                r#"sticky_packets_total{result="drop_no_backend"} 0"#,
                r#"sticky_packets_total{result="nat"} 1050"#,
                r#"sticky_packets_total{result="pass"} 5"#,
            ]
        );
    }

    /// Every family has one HELP and one TYPE, before its samples, which are contiguous;
    /// counters and only counters end in `_total`; every value parses as a float.
    #[test]
    fn render_is_well_formed() {
        for status in [sample(), Status::default()] {
            let text = render(&status);
            assert!(text.ends_with('\n'));
            let mut typed = Vec::new();
            let mut helped = Vec::new();
            let mut current = "";
            let mut finished = BTreeSet::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').unwrap();
                    assert!(kind == "counter" || kind == "gauge", "{line}");
                    assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
                    typed.push(name);
                } else if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').unwrap();
                    assert!(help.ends_with('.') && !help.ends_with(".."), "{line}");
                    helped.push(name);
                } else {
                    let (series, value) = line.rsplit_once(' ').unwrap();
                    let name = series.split('{').next().unwrap();
                    value.parse::<f64>().unwrap();
                    if name != current {
                        assert!(finished.insert(current), "{name} split up");
                        current = name;
                    }
                    assert_eq!(typed.last(), Some(&name), "{line} not under its TYPE");
                }
            }
            assert_eq!(typed, FAMILIES);
            assert_eq!(helped, FAMILIES);
        }
    }

    #[test]
    fn empty_status_has_no_backend_samples() {
        let text = render(&Status::default());
        assert!(!text.contains("{backend="));
        assert!(!text.contains("{map="));
        has_line(&text, "sticky_table_slots 0");
        has_line(&text, r#"sticky_info{instance=""} 1"#);
    }

    #[test]
    fn values_and_escapes() {
        let mut status = sample();
        status.backends.truncate(1);
        let b = &mut status.backends[0];
        b.table_share = f64::NAN;
        b.ideal_share = f64::INFINITY;
        b.bytes = u64::MAX;
        status.instance = "a\\b\"c\nd".into();
        let text = render(&status);
        for line in [
            r#"sticky_backend_table_share{backend="10.0.0.1:80"} NaN"#,
            r#"sticky_backend_ideal_share{backend="10.0.0.1:80"} +Inf"#,
            r#"sticky_backend_bytes_total{backend="10.0.0.1:80"} 18446744073709551615"#,
            r#"sticky_info{instance="a\\b\"c\nd"} 1"#,
        ] {
            has_line(&text, line);
        }
    }
}
