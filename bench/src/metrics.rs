//! What is measured, the samples collected per case and metric over the rounds, and their
//! summaries (median, min, max, ratio to the routed path).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{machine::Machine, peers::Case};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Metric {
    KeepAlive,
    NewConn,
    Handshake,
    P50,
    P99,
    CpuPerRequest,
    Bulk1,
    Bulk4,
    /// `iperf3 -R`: backend → client, the direction DSR takes off the balancer.
    Download1,
    /// Bytes the balancer namespace's interfaces sent during the download, per byte the client
    /// received: about 1 when replies pass the balancer, the encapsulated ACKs' share when not.
    DownloadLbTx,
    /// Our own sender after an HTTP upgrade: the one bulk figure every case has.
    UpgradeBulk1,
    UpgradeBulk4,
    Echo,
    UpgradeEcho,
    /// Share of the fixed rate a path sustained (not a table row: it qualifies latency).
    RateReached,
}

impl Metric {
    pub const ALL: [Self; 14] = [
        Self::KeepAlive,
        Self::NewConn,
        Self::Handshake,
        Self::P50,
        Self::P99,
        Self::CpuPerRequest,
        Self::Bulk1,
        Self::Bulk4,
        Self::Download1,
        Self::DownloadLbTx,
        Self::UpgradeBulk1,
        Self::UpgradeBulk4,
        Self::Echo,
        Self::UpgradeEcho,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive req/s",
            Self::NewConn => "new-connection req/s",
            Self::Handshake => "socket.io handshakes/s",
            Self::P50 => "p50 latency µs (fixed rate)",
            Self::P99 => "p99 latency µs (fixed rate)",
            Self::CpuPerRequest => "CPU µs per request (fixed rate)",
            Self::Bulk1 => "bulk Gbit/s, 1 stream",
            Self::Bulk4 => "bulk Gbit/s, 4 streams",
            Self::Download1 => "download Gbit/s, 1 stream",
            Self::DownloadLbTx => "balancer tx bytes per byte downloaded",
            Self::UpgradeBulk1 => "bulk via upgrade Gbit/s, 1 stream",
            Self::UpgradeBulk4 => "bulk via upgrade Gbit/s, 4 streams",
            Self::Echo => "64 B echo round trip µs",
            Self::UpgradeEcho => "64 B echo via upgrade µs",
            Self::RateReached => "share of the fixed rate reached",
        }
    }

    /// A short name for the chart's axis.
    pub fn short(self) -> &'static str {
        match self {
            Self::KeepAlive => "keep-alive",
            Self::NewConn => "new conn",
            Self::Handshake => "handshake",
            Self::P50 => "p50 (lower)",
            Self::P99 => "p99 (lower)",
            Self::CpuPerRequest => "CPU/req (lower)",
            Self::Bulk1 => "bulk x1",
            Self::Bulk4 => "bulk x4",
            Self::Download1 => "download",
            Self::DownloadLbTx => "LB tx/byte (lower)",
            Self::UpgradeBulk1 => "upg. bulk x1",
            Self::UpgradeBulk4 => "upg. bulk x4",
            Self::Echo => "echo (lower)",
            Self::UpgradeEcho => "upg. echo (lower)",
            Self::RateReached => "rate reached",
        }
    }

    /// Measured in the fixed-rate latency run.
    pub fn at_fixed_rate(self) -> bool {
        matches!(
            self,
            Self::P50 | Self::P99 | Self::CpuPerRequest | Self::RateReached
        )
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(
            self,
            Self::P50
                | Self::P99
                | Self::CpuPerRequest
                | Self::Echo
                | Self::UpgradeEcho
                | Self::DownloadLbTx
        )
    }

    pub fn format(self, v: f64) -> String {
        match self {
            Self::KeepAlive | Self::NewConn | Self::Handshake if v >= 10_000.0 => {
                format!("{:.1}k", v / 1e3)
            }
            Self::KeepAlive | Self::NewConn | Self::Handshake => format!("{v:.0}"),
            Self::Bulk1
            | Self::Bulk4
            | Self::Download1
            | Self::UpgradeBulk1
            | Self::UpgradeBulk4 => format!("{v:.2}"),
            Self::DownloadLbTx => format!("{v:.3}"),
            _ if v >= 100.0 => format!("{v:.0}"),
            _ => format!("{v:.1}"),
        }
    }
}

/// Median, min and max of one case's samples for one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v.get(mid).copied()?
        } else {
            (v.get(mid - 1).copied()? + v.get(mid).copied()?) / 2.0
        };
        Some(Self {
            median,
            min: *v.first()?,
            max: *v.last()?,
            n: v.len(),
        })
    }
}

/// Per-program eBPF run time and count, added up over every sticky run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EbpfCost {
    pub programs: BTreeMap<String, (u64, u64)>,
}

impl EbpfCost {
    pub fn add(&mut self, name: &str, run_ns: u64, runs: u64) {
        let e = self.programs.entry(name.to_string()).or_default();
        e.0 += run_ns;
        e.1 += runs;
    }

    /// ns per run of one program, or of all together.
    pub fn per_packet(&self, name: Option<&str>) -> Option<f64> {
        let (ns, n) = self
            .programs
            .iter()
            .filter(|(k, _)| name.is_none_or(|want| want == k.as_str()))
            .fold((0u64, 0u64), |(a, b), (_, (ns, n))| (a + ns, b + n));
        (n > 0).then(|| ns as f64 / n as f64)
    }
}

/// Every sample of a run, kept as JSON beside the report (which can be rendered again from
/// it: `sticky-bench report`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Results {
    pub machine: Machine,
    /// A `--quick` sanity check, not a result.
    pub quick: bool,
    /// `sticky-bench hash`'s table, in markdown.
    pub hash: Option<String>,
    pub samples: BTreeMap<Case, BTreeMap<Metric, Vec<f64>>>,
    /// eBPF cost per service (`http`, `echo`, `bulk`) of the NAT kernel path: they differ in
    /// packet mix.
    pub ebpf: BTreeMap<String, EbpfCost>,
    /// eBPF cost of each DSR case, over its services.
    pub ebpf_dsr: BTreeMap<Case, EbpfCost>,
    /// The DSR programs through BPF_PROG_TEST_RUN (`crate::testrun`).
    pub testrun: Vec<crate::testrun::Cost>,
    /// The kernel path's cost with 1k, 100k and 1M live flows (`crate::scale`).
    pub scale: Vec<crate::scale::Point>,
    /// `sticky cluster` against the Node balancers, every round (`crate::seeds`).
    pub seeds: Vec<crate::seeds::SeedRun>,
    /// Share of the CPUs other processes kept busy in the second before the run.
    pub background_cpu: f64,
    /// The same, in the pause before each case.
    pub between_cases_cpu: Vec<f64>,
    /// Share of CPU time the hypervisor took (steal) over the whole run.
    pub steal: f64,
    /// Requests per second of the fixed-rate latency runs.
    pub fixed_rate: f64,
    /// Whether that rate is a share of the routed path's capacity (not given by hand).
    pub rate_from_capacity: bool,
    /// The fixed rate of the HTTP proxies' latency runs (`Case::forwards_for`): a share of
    /// HAProxy http's capacity (0: none ran).
    #[serde(default)]
    pub proxy_rate: f64,
    pub backends: usize,
    pub rounds: usize,
    pub seconds_per_metric: u64,
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(&mut self, case: Case, metric: Metric, value: f64) {
        self.samples
            .entry(case)
            .or_default()
            .entry(metric)
            .or_default()
            .push(value);
    }

    pub fn summary(&self, case: Case, metric: Metric) -> Option<Summary> {
        Summary::of(self.samples.get(&case)?.get(&metric)?)
    }

    /// This case's median over the routed path's median.
    pub fn ratio(&self, case: Case, metric: Metric) -> Option<f64> {
        self.vs(case, self.base_of(case, metric), metric)
    }

    /// The case `case`'s `metric` is compared with: the routed path, but for a fixed-rate
    /// figure of an HTTP proxy, HAProxy http, whose capacity set that rate.
    pub fn base_of(&self, case: Case, metric: Metric) -> Case {
        if metric.at_fixed_rate() && case.forwards_for() && self.proxy_rate > 0.0 {
            Case::HaproxyHttp
        } else {
            Case::Routed
        }
    }

    /// The fixed rate `case`'s latency was measured at.
    pub fn rate_of(&self, case: Case) -> f64 {
        if case.forwards_for() && self.proxy_rate > 0.0 {
            self.proxy_rate
        } else {
            self.fixed_rate
        }
    }

    /// This case's median over another case's median.
    pub fn vs(&self, case: Case, base: Case, metric: Metric) -> Option<f64> {
        let base = self.summary(base, metric)?.median;
        let v = self.summary(case, metric)?.median;
        (base > 0.0).then(|| v / base)
    }

    /// The eBPF cost over every service.
    pub fn ebpf_total(&self) -> EbpfCost {
        let mut total = EbpfCost::default();
        for cost in self.ebpf.values() {
            for (name, (ns, n)) in &cost.programs {
                total.add(name, *ns, *n);
            }
        }
        total
    }

    pub fn note(&mut self, text: String) {
        eprintln!("note: {text}");
        self.notes.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_middle() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn ratios_are_against_the_routed_median() {
        let mut r = Results::default();
        for v in [100.0, 90.0, 110.0] {
            r.add(Case::Routed, Metric::KeepAlive, v);
            r.add(Case::Sticky, Metric::KeepAlive, v * 0.98);
        }
        let ratio = r.ratio(Case::Sticky, Metric::KeepAlive).unwrap();
        assert!((ratio - 0.98).abs() < 1e-9);
        assert!(r.ratio(Case::Nginx, Metric::KeepAlive).is_none());
    }

    #[test]
    fn ebpf_cost_per_packet() {
        let mut c = EbpfCost::default();
        c.add("sticky_ingress", 1000, 10);
        c.add("sticky_egress", 500, 10);
        c.add("sticky_ingress", 1000, 10);
        assert_eq!(c.per_packet(Some("sticky_ingress")), Some(100.0));
        assert_eq!(c.per_packet(None), Some(2500.0 / 30.0));
        assert_eq!(c.per_packet(Some("nope")), None);
    }
}
