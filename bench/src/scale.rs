//! How the kernel path's cost grows with the work it holds: for 1k, 100k and 1M live flows
//! (each its own client, so as many affinity entries), the eBPF cost of an established
//! packet, the daemon's CPU and memory while its metrics are scraped every second, and the
//! time `sticky status` takes.
//!
//! A real daemon (`sticky run`, maps sized to fit) runs in a namespace of its own. The bench
//! loads the same programs on the daemon's pinned maps (as a restarted daemon adopts them)
//! and fills them by running the ingress program itself through BPF_PROG_TEST_RUN: a SYN and
//! then an ACK per client, as a connection's first packets set up its flow and its client's
//! affinity. An established packet's cost is then taken over single runs, each an ACK of a
//! distinct held flow, its first packet more than a second after the fill (a NAT rewrite makes a packet no longer ours, so it
//! cannot be repeated): the median of ten blocks' means, less the harness's timer overhead
//! (as `crate::testrun` does).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sticky::{
    config::{Config, Layer},
    datapath::{Datapath, Pins},
};
use sticky_tests::{HttpBackend, Netns, StickyProcess, unique_name, veth};

use crate::{cpu, testrun};

/// Live flows (and clients) at each point of the curve.
pub const SIZES: [u32; 3] = [1_000, 100_000, 1_000_000];
const IF: &str = "scl0";
const PEER: &str = "scl1";
const VIP: &str = "198.19.255.100:80";
const BACKENDS: [&str; 2] = ["10.78.0.2:80", "10.78.0.3:80"];
const METRICS: &str = "127.0.0.1:9464";
/// The clients: one address each, from 100.64.0.0/10 (room for 4M).
const FIRST_CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Single runs per figure, in blocks whose median mean is the figure, and repeated runs of
/// the overhead baseline.
const SINGLE: u32 = 10_000;
const REPEAT: u32 = 100_000;
/// How long the daemon's CPU is watched while its metrics are scraped once a second.
/// Longer than the daemon's longest reuse of a walk's counts (15 s), so walks recur in it.
const WATCH: Duration = Duration::from_secs(20);
const STATUS_RUNS: usize = 3;

/// One point of the curve.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Point {
    /// Flows (and clients) asked for.
    pub flows: u32,
    /// Flows and affinity entries the maps held once filled.
    pub held_flows: usize,
    pub held_clients: usize,
    /// Seconds the program took to set them up (two test runs per client).
    pub fill_secs: f64,
    /// ns per established packet of a random held flow.
    pub ebpf_ns: f64,
    /// The daemon's CPU, share of one CPU, while scraped every second.
    pub daemon_cpu: f64,
    /// Its resident memory, MiB (the maps are the kernel's: `map_mib`).
    pub rss_mib: f64,
    /// The kernel memory of its maps, MiB.
    pub map_mib: f64,
    /// The first scrape (a walk of the maps), ms.
    pub walk_ms: f64,
    /// Median time of one metrics scrape over the watch (most reuse the walk's counts), ms.
    pub scrape_ms: f64,
    /// Median time of `sticky status`, ms.
    pub status_ms: f64,
}

impl Point {
    /// Its row of the report's table (the bench prints it as it goes, too).
    pub fn row(&self) -> String {
        format!(
            "| {} | {} / {} | {:.0} | {:.1}% | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} |",
            self.flows,
            self.held_flows,
            self.held_clients,
            self.ebpf_ns,
            self.daemon_cpu * 100.0,
            self.rss_mib,
            self.map_mib,
            self.walk_ms,
            self.scrape_ms,
            self.status_ms
        )
    }
}

/// Every point of the curve, in `SIZES` order.
pub fn curve(sticky: &Path, sizes: &[u32]) -> anyhow::Result<Vec<Point>> {
    sizes
        .iter()
        .map(|&n| {
            let p = point(sticky, n).with_context(|| format!("{n} live flows"))?;
            println!("  {}", p.row());
            Ok(p)
        })
        .collect()
}

fn point(sticky: &Path, n: u32) -> anyhow::Result<Point> {
    let ns = Netns::create(&unique_name("bench-scale")).context("scale namespace")?;
    veth(&ns, IF, &ns, PEER)?;
    ns.ip_batch(&format!(
        "addr add 10.78.0.1/24 dev {IF}\naddr add 10.78.0.2/24 dev {PEER}\n\
         addr add 10.78.0.3/24 dev {PEER}\n"
    ))?;
    let _backends = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| HttpBackend::start(&ns, b.parse()?, &format!("be{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Room for both entries of every flow and for every client, with the LRU's slack (it
    // evicts before it is full): the fill is checked to be held whole.
    let flow_room = n.saturating_mul(3).max(4096);
    let client_room = n.saturating_mul(2).max(4096);
    let mut args: Vec<String> = [
        "--iface",
        IF,
        "--vip",
        VIP,
        "--seed",
        "1",
        "--metrics",
        METRICS,
    ]
    .map(String::from)
    .to_vec();
    for b in BACKENDS {
        args.extend(["--backend".to_string(), b.to_string()]);
    }
    args.extend([
        "--max-flows".to_string(),
        flow_room.to_string(),
        "--max-clients".to_string(),
        client_room.to_string(),
    ]);
    let daemon = StickyProcess::start(sticky, &ns, &args).context("start sticky")?;
    let layer = Layer {
        iface: vec![IF.into()],
        vip: vec![VIP.into()],
        backend: BACKENDS.iter().map(|b| b.to_string()).collect(),
        seed: Some(1),
        max_flows: Some(flow_room),
        max_clients: Some(client_room),
        instance: Some(daemon.instance.clone()),
        ..Layer::default()
    };
    let config: Config = layer.validate().context("the daemon's configuration")?;
    let pins = Pins::for_instance(&daemon.instance);
    let (mut point, dp) = ns.run(|| fill_and_time(&config, pins, n))??;
    let map_bytes: u64 = dp.map_memory()?.iter().map(|m| m.bytes).sum();
    point.map_mib = map_bytes as f64 / (1024.0 * 1024.0);
    drop(dp);
    watch_daemon(&ns, daemon.pid(), &mut point)?;
    let mut status = Vec::new();
    for _ in 0..STATUS_RUNS {
        let t = Instant::now();
        let out = daemon.ctl(sticky, &["status"]);
        anyhow::ensure!(
            out.status.success(),
            "sticky status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        status.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    status.sort_by(f64::total_cmp);
    point.status_ms = status.get(STATUS_RUNS / 2).copied().unwrap_or(0.0);
    daemon.stop().context("stop sticky")?;
    Ok(point)
}

/// Loads the programs on the daemon's maps, sets up `n` flows through the ingress program
/// and times established packets of random ones.
fn fill_and_time(config: &Config, pins: Pins, n: u32) -> anyhow::Result<(Point, Datapath)> {
    let mut dp = Datapath::load_with(config, Some(pins)).context("load on the daemon's maps")?;
    anyhow::ensure!(dp.adopted(), "the daemon's maps were not there to adopt");
    let vip: SocketAddr = VIP.parse()?;
    let client =
        |i: u32| SocketAddr::new(Ipv4Addr::from(u32::from(FIRST_CLIENT) + i).into(), 40000);
    let started = Instant::now();
    for i in 0..n {
        for flags in [testrun::TCP_SYN, testrun::TCP_ACK] {
            let f = testrun::frame(client(i), vip, flags, testrun::PAYLOAD);
            let (action, _) = run(&mut dp, &f, 1)?;
            anyhow::ensure!(
                action == testrun::NAT.sent,
                "client {i}: the program gave {action}"
            );
        }
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let (held_flows, held_clients) = (dp.flow_entries()?.len(), dp.affinity_entries()?.len());
    anyhow::ensure!(
        held_flows == 2 * n as usize && held_clients == n as usize,
        "the maps hold {held_flows} flow entries and {held_clients} clients after {n} \
         connections (want {} and {n}): an evicted flow would be timed as a new one",
        2 * n
    );
    // The harness's own time around one run: a packet that is not ours, once and repeated.
    let other = testrun::frame(
        client(0),
        SocketAddr::new(vip.ip(), 81),
        testrun::TCP_ACK,
        64,
    );
    let (_, repeated) = run(&mut dp, &other, REPEAT)?;
    let single = testrun::median_of_blocks(SINGLE, |_| Ok(run(&mut dp, &other, 1)?.1))?;
    let overhead = (single - repeated.as_nanos() as f64).max(0.0);
    // Every timed packet takes the same path at every size: the first packet of its flow
    // more than a second after the last (so it also refreshes its client's affinity, as a
    // connection's first packet after a pause does). Distinct flows, spread over the table.
    std::thread::sleep(Duration::from_millis(1100));
    let timed = n.min(SINGLE);
    let step = n / timed;
    let established = testrun::median_of_blocks(timed, |k| {
        let i = k * step;
        let f = testrun::frame(client(i), vip, testrun::TCP_ACK, testrun::PAYLOAD);
        let (action, d) = run(&mut dp, &f, 1)?;
        anyhow::ensure!(
            action == testrun::NAT.sent,
            "flow {i}: the program gave {action}"
        );
        Ok(d)
    })?;
    let point = Point {
        flows: n,
        held_flows,
        held_clients,
        fill_secs,
        ebpf_ns: (established - overhead).max(0.0),
        ..Point::default()
    };
    Ok((point, dp))
}

/// The ingress program on `frame` (ifindex 0: as if received on loopback).
fn run(dp: &mut Datapath, frame: &[u8], repeat: u32) -> anyhow::Result<(i32, Duration)> {
    testrun::run(dp, testrun::NAT, 0, frame, repeat)
}

/// The daemon's CPU over `WATCH` while its metrics are fetched once a second, its RSS after.
fn watch_daemon(ns: &Netns, pid: i32, point: &mut Point) -> anyhow::Result<()> {
    let cpu_of = |pid| {
        cpu::process(pid)
            .map(|p| p.cpu)
            .context("the daemon exited")
    };
    let before = cpu_of(pid)?;
    let started = Instant::now();
    let mut scrapes = Vec::new();
    while started.elapsed() < WATCH {
        let t = Instant::now();
        let body = ns.run(scrape)??;
        anyhow::ensure!(
            body.contains("sticky_"),
            "the metrics endpoint answered without sticky's metrics"
        );
        scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    let used = cpu_of(pid)?.saturating_sub(before);
    point.daemon_cpu = used.as_secs_f64() / started.elapsed().as_secs_f64();
    point.walk_ms = scrapes.first().copied().unwrap_or(0.0);
    scrapes.sort_by(f64::total_cmp);
    point.scrape_ms = scrapes.get(scrapes.len() / 2).copied().unwrap_or(0.0);
    point.rss_mib = rss_kib(pid)? as f64 / 1024.0;
    Ok(())
}

fn scrape() -> anyhow::Result<String> {
    sticky_tests::fetch_metrics(METRICS.parse()?, Duration::from_secs(30))
}

fn rss_kib(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS missing")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The curve in a sentence: what grew, and by how much, from the smallest to the largest.
pub fn sentence(points: &[Point]) -> Option<String> {
    let (a, b) = (points.first()?, points.last()?);
    if a.flows == b.flows {
        return None;
    }
    let times = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:.2}×", y / x)
        } else {
            "–".into()
        }
    };
    Some(format!(
        "From {} to {} live flows the established packet's eBPF cost went from {:.0} to {:.0} ns \
         ({}), the daemon's CPU while scraped every second from {:.1}% to {:.1}% of a CPU, its \
         RSS from {:.1} to {:.1} MiB (the maps, kernel memory, from {:.0} to {:.0} MiB), a \
         scrape that walks the maps from {:.0} to {:.0} ms and `sticky status` from {:.0} to \
         {:.0} ms.",
        a.flows,
        b.flows,
        a.ebpf_ns,
        b.ebpf_ns,
        times(a.ebpf_ns, b.ebpf_ns),
        a.daemon_cpu * 100.0,
        b.daemon_cpu * 100.0,
        a.rss_mib,
        b.rss_mib,
        a.map_mib,
        b.map_mib,
        a.walk_ms,
        b.walk_ms,
        a.status_ms,
        b.status_ms
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentence_compares_the_ends() {
        let p = |flows, ns| Point {
            flows,
            ebpf_ns: ns,
            ..Point::default()
        };
        let s = sentence(&[p(1_000, 100.0), p(1_000_000, 150.0)]).unwrap();
        assert!(
            s.contains("From 1000 to 1000000") && s.contains("(1.50×)"),
            "{s}"
        );
        assert!(sentence(&[p(1_000, 100.0)]).is_none());
    }
}
