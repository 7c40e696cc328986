//! The text exposition format 0.0.4: [`render`] writes a [`Status`] as Prometheus reads it.

use std::fmt;

use sticky_common::BackendState;

use crate::status::{BackendStatus, Health, Status};

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const BACKEND_STATES: [BackendState; 3] =
    [BackendState::Up, BackendState::Draining, BackendState::Down];

/// The per-backend families after `up` and `state`: name, kind, help, value.
type PerBackend = (
    &'static str,
    Kind,
    &'static str,
    fn(&BackendStatus) -> Value,
);
const PER_BACKEND: [PerBackend; 11] = [
    (
        "sticky_backend_healthy",
        Kind::Gauge,
        "Whether the backend passes its health checks or is unchecked (1) rather than failing (0).",
        |b| Value::flag(b.health != Health::Failing),
    ),
    (
        "sticky_backend_weight",
        Kind::Gauge,
        "Configured weight of the backend.",
        |b| Value::Int(b.weight.into()),
    ),
    (
        "sticky_backend_table_share",
        Kind::Gauge,
        "Share of the lookup table slots held by the backend (0..1).",
        |b| Value::Float(b.table_share),
    ),
    (
        "sticky_backend_ideal_share",
        Kind::Gauge,
        "Backend weight over the total weight of the backends in the table (0..1).",
        |b| Value::Float(b.ideal_share),
    ),
    (
        "sticky_backend_affine_clients",
        Kind::Gauge,
        "Clients whose unexpired affinity names the backend.",
        |b| Value::Int(b.affine_clients),
    ),
    (
        "sticky_backend_active_flows",
        Kind::Gauge,
        "Connections to the backend in the flow table.",
        |b| Value::Int(b.active_flows),
    ),
    (
        "sticky_backend_new_flows_total",
        Kind::Counter,
        "Connections the data path assigned to the backend.",
        |b| Value::Int(b.new_flows_total),
    ),
    (
        "sticky_backend_refused_total",
        Kind::Counter,
        "New connections the backend reset during their handshake (nothing listening).",
        |b| Value::Int(b.refused_total),
    ),
    (
        "sticky_backend_packets_total",
        Kind::Counter,
        "Packets the data path steered to the backend.",
        |b| Value::Int(b.packets),
    ),
    (
        "sticky_backend_bytes_total",
        Kind::Counter,
        "Bytes the data path steered to the backend.",
        |b| Value::Int(b.bytes),
    ),
    (
        "sticky_backend_health_transitions_total",
        Kind::Counter,
        "Health state changes of the backend since start.",
        |b| Value::Int(b.health_transitions),
    ),
];

/// The whole exposition for `status`.
pub fn render(status: &Status) -> String {
    use Kind::{Counter, Gauge};
    let mut out = Exposition::default();
    let backends = &status.backends;

    out.per_backend(
        backends,
        ("sticky_backend_up", Gauge),
        "Whether the backend is up (1) rather than draining or down (0).",
        |b| Value::flag(b.state == BackendState::Up),
    );
    out.family(
        "sticky_backend_state",
        Gauge,
        "Backend state, one-hot over up, draining and down.",
    );
    for b in backends {
        let addr = b.addr.to_string();
        for state in BACKEND_STATES {
            out.sample(
                "sticky_backend_state",
                &[("backend", &addr), ("state", state.name())],
                Value::flag(b.state == state),
            );
        }
    }
    for (name, kind, help, value) in PER_BACKEND {
        out.per_backend(backends, (name, kind), help, value);
    }

    out.family(
        "sticky_packets_total",
        Counter,
        "Packets seen by the data path, by result.",
    );
    for (result, &count) in &status.counters {
        out.sample(
            "sticky_packets_total",
            &[("result", result)],
            Value::Int(count),
        );
    }
    let globals = [
        (
            "sticky_affinity_entries",
            "Entries in the client affinity map.",
            status.affinity_entries,
        ),
        (
            "sticky_flow_entries",
            "Entries in the flow table (established flows, both directions).",
            status.flow_entries,
        ),
        (
            "sticky_new_flow_entries",
            "Entries of flows still in their handshake (both directions).",
            status.new_flow_entries,
        ),
        (
            "sticky_map_bytes",
            "Memory the kernel charges for the instance's maps.",
            status.map_bytes,
        ),
        (
            "sticky_table_slots",
            "Slots in the lookup table.",
            status.table_size.into(),
        ),
    ];
    for (name, help, value) in globals {
        out.family(name, Gauge, help);
        out.sample(name, &[], Value::Int(value));
    }
    out.family(
        "sticky_info",
        Gauge,
        "Always 1; labelled with the instance name.",
    );
    out.sample(
        "sticky_info",
        &[("instance", &status.instance)],
        Value::Int(1),
    );
    out.0
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
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

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) if x.is_nan() => f.write_str("NaN"),
            Self::Float(x) if x == f64::INFINITY => f.write_str("+Inf"),
            Self::Float(x) if x == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust never writes an exponent here, and Prometheus reads plain decimals.
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// HELP and TYPE for a family. Call once per family, before its samples.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.0.push_str("# HELP ");
        self.0.push_str(name);
        self.0.push(' ');
        escape_help(help, &mut self.0);
        self.0.push_str("\n# TYPE ");
        self.0.push_str(name);
        self.0.push(' ');
        self.0.push_str(kind);
        self.0.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(label);
                self.0.push_str("=\"");
                escape_label_value(value, &mut self.0);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&value.to_string());
        self.0.push('\n');
    }

    /// A family with one sample per backend, labelled `backend`.
    fn per_backend(
        &mut self,
        backends: &[BackendStatus],
        (name, kind): (&str, Kind),
        help: &str,
        value: impl Fn(&BackendStatus) -> Value,
    ) {
        self.family(name, kind, help);
        for b in backends {
            self.sample(name, &[("backend", &b.addr.to_string())], value(b));
        }
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed only.
fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}
#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeSet;

    use super::*;

    pub(crate) fn sample() -> Status {
        Status {
            instance: "lab\"1\\x\ny".into(),
            vips: vec!["192.0.2.1:80".parse().unwrap()],
            ifaces: vec!["eth0".into()],
            table_size: 65537,
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
        }
    }

    const FAMILIES: [&str; 20] = [
        "sticky_backend_up",
        "sticky_backend_state",
        "sticky_backend_healthy",
        "sticky_backend_weight",
        "sticky_backend_table_share",
        "sticky_backend_ideal_share",
        "sticky_backend_affine_clients",
        "sticky_backend_active_flows",
        "sticky_backend_new_flows_total",
        "sticky_backend_refused_total",
        "sticky_backend_packets_total",
        "sticky_backend_bytes_total",
        "sticky_backend_health_transitions_total",
        "sticky_packets_total",
        "sticky_affinity_entries",
        "sticky_flow_entries",
        "sticky_new_flow_entries",
        "sticky_map_bytes",
        "sticky_table_slots",
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
            r#"sticky_backend_ideal_share{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_bytes_total{backend="10.0.0.1:80"} 123456"#,
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
    /// every value parses as a float.
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
                    helped.push(rest.split_once(' ').unwrap().0);
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
        has_line(&text, "sticky_table_slots 0");
        has_line(&text, r#"sticky_info{instance=""} 1"#);
    }

    #[test]
    fn values_and_escapes() {
        let formatted: Vec<String> = [
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(0.1),
            Value::Float(1e-7),
            Value::Int(u64::MAX),
        ]
        .iter()
        .map(Value::to_string)
        .collect();
        assert_eq!(
            formatted,
            [
                "NaN",
                "+Inf",
                "-Inf",
                "0.1",
                "0.0000001",
                "18446744073709551615"
            ]
        );
        let mut label = String::new();
        escape_label_value("a\\b\"c\nd", &mut label);
        assert_eq!(label, r#"a\\b\"c\nd"#);
        let mut help = String::new();
        escape_help("a\\b\"c\nd", &mut help);
        assert_eq!(help, r#"a\\b"c\nd"#);
    }
}
