//! The measurements of one case: its middlebox started per service (HTTP, echo, bulk,
//! upgrade), a
//! first request to check the path, then every metric; a failed metric becomes a note in the
//! report rather than ending the run. Also the calibration of the fixed rate.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use sticky_tests::{HttpConn, Netns};

use crate::{
    cmd, ebpf,
    load::LoadResult,
    metrics::{Metric, Results},
    peers::{self, Case, Route, Service},
    tools::{self, GRACE},
    topology::{Bench, LOAD_CPU},
};

/// Connections wrk keeps open.
pub const WRK_CONNECTIONS: usize = 32;
/// Connections (or handshakes) the load generator keeps in flight.
pub const CONCURRENCY: usize = 64;
/// Keep-alive connections sharing the fixed rate.
pub const RATE_CONNECTIONS: usize = 32;
/// Share of the routed path's keep-alive capacity used for latency.
pub const RATE_SHARE: f64 = 0.5;

/// What every measurement of a run shares.
pub struct Ctx<'a> {
    pub bench: &'a Bench,
    pub sticky: &'a std::path::Path,
    /// sticky-bench itself, for `load`.
    pub exe: PathBuf,
    pub secs: u64,
    /// Requests per second of the latency runs.
    pub rate: f64,
    /// The same for the HTTP proxies (`Case::forwards_for`).
    pub proxy_rate: f64,
}

impl Ctx<'_> {
    /// The fixed rate `case`'s latency is measured at.
    pub fn rate_for(&self, case: Case) -> f64 {
        if case.forwards_for() {
            self.proxy_rate
        } else {
            self.rate
        }
    }
}

/// The routed path's keep-alive capacity; latency is measured at a share of it.
pub fn calibrate(ctx: &Ctx) -> anyhow::Result<f64> {
    capacity_share(ctx, Case::Routed)
}

/// HAProxy http's keep-alive capacity: the HTTP proxies route every request in userspace on
/// one CPU, far below the routed path's capacity, so their latency is measured at a share of
/// their reference peer's instead (at the routed path's rate it would be time spent queueing).
pub fn calibrate_proxies(ctx: &Ctx) -> anyhow::Result<f64> {
    capacity_share(ctx, Case::HaproxyHttp)
}

/// `RATE_SHARE` of `case`'s keep-alive requests per second, its middlebox started for it.
fn capacity_share(ctx: &Ctx, case: Case) -> anyhow::Result<f64> {
    let _middlebox = peers::start(case, Service::Http, ctx.bench, ctx.sticky)?;
    let route = peers::route(case, Service::Http, ctx.bench.backends().len());
    preflight(ctx, case, &route)?;
    let rps = keep_alive(ctx, case, &route, ctx.secs.max(2))
        .with_context(|| format!("calibrate with wrk through {}", case.label()))?;
    anyhow::ensure!(
        rps > 100.0,
        "{} does only {rps:.0} requests/s",
        case.label()
    );
    Ok((rps * RATE_SHARE).round())
}

/// Keep-alive requests per second through `case`: wrk, its one header (for the HTTP proxies
/// an X-Forwarded-For) sent on every connection: one client, as one user behind a CDN.
fn keep_alive(ctx: &Ctx, case: Case, route: &Route, secs: u64) -> anyhow::Result<f64> {
    let target = *route.targets.first().context("no target")?;
    let xff = case
        .forwards_for()
        .then(|| format!("X-Forwarded-For: {}", route.sources.addr(1)));
    let w = tools::wrk(
        ctx.bench.client_of(case.dsr()),
        target,
        WRK_CONNECTIONS,
        secs,
        xff.as_deref(),
    )?;
    anyhow::ensure!(w.errors == 0, "wrk counted {} errors", w.errors);
    Ok(w.requests_per_sec)
}

pub fn run_case(ctx: &Ctx, case: Case, results: &mut Results) -> anyhow::Result<()> {
    // Nothing carries over: conntrack emptied here, middleboxes (and sticky's maps) restarted
    // for every service below.
    peers::flush_conntrack(ctx.bench)?;
    let _stats = if case.sticky_kernel() {
        Some(ebpf::enable_stats()?)
    } else {
        None
    };
    let client = ctx.bench.client_of(case.dsr());
    for &service in case.services() {
        cmd::check_interrupted()?;
        let mut middlebox = peers::start(case, service, ctx.bench, ctx.sticky)?;
        let route = peers::route(case, service, ctx.bench.backends().len());
        match service {
            Service::Http => http_metrics(ctx, case, &route, results)?,
            Service::Echo => measure(results, case, Metric::Echo, || {
                let r = load(ctx, case, &route, &["echo"])?;
                Ok(r.latency.context("no echo latency")?.mean_us)
            }),
            Service::Upgrade => {
                measure(results, case, Metric::UpgradeEcho, || {
                    let r = load(ctx, case, &route, &["echo", "--head"])?;
                    Ok(r.latency.context("no echo latency")?.mean_us)
                });
                for (metric, streams) in [(Metric::UpgradeBulk1, "1"), (Metric::UpgradeBulk4, "4")]
                {
                    measure(results, case, metric, || {
                        let r = load(ctx, case, &route, &["bulk", "--head", "--streams", streams])?;
                        Ok(r.gbit_per_sec())
                    });
                }
            }
            Service::Bulk => {
                let backends = ctx.bench.backends_of(case.dsr());
                let target = *route.targets.first().context("no target")?;
                for (metric, streams) in [(Metric::Bulk1, 1), (Metric::Bulk4, 4)] {
                    measure(results, case, metric, || {
                        let _servers = tools::iperf3_servers(backends)?;
                        Ok(tools::iperf3(client, target, streams, ctx.secs, false)?.gbit_per_sec)
                    });
                }
                download(ctx, case, target, results);
            }
        }
        middlebox
            .check_alive()
            .with_context(|| format!("{} died", case.label()))?;
        if let Some(instance) = middlebox.sticky_instance() {
            let cost = if case.dsr() {
                results.ebpf_dsr.entry(case).or_default()
            } else {
                results.ebpf.entry(service.name().to_string()).or_default()
            };
            match ebpf::sticky_programs(instance) {
                Ok(programs) => {
                    for p in programs {
                        cost.add(&p.name, p.run_ns, p.runs);
                    }
                }
                Err(e) => results.note(format!("{}: eBPF statistics: {e:#}", case.label())),
            }
        }
    }
    Ok(())
}

/// `iperf3 -R`, backend to client, and what the balancer namespace sent meanwhile per byte
/// the client received (not for the direct veth, which has no balancer).
fn download(ctx: &Ctx, case: Case, target: SocketAddr, results: &mut Results) {
    let lb = ctx.bench.lb_of(case.dsr());
    let mut lb_tx = None;
    measure(results, case, Metric::Download1, || {
        let _servers = tools::iperf3_servers(ctx.bench.backends_of(case.dsr()))?;
        let before = tx_bytes(lb)?;
        let r = tools::iperf3(ctx.bench.client_of(case.dsr()), target, 1, ctx.secs, true)?;
        let sent = tx_bytes(lb)?.saturating_sub(before);
        if r.bytes > 0 {
            lb_tx = Some(sent as f64 / r.bytes as f64);
        }
        Ok(r.gbit_per_sec)
    });
    if let Some(share) = lb_tx.filter(|_| case != Case::Direct) {
        println!(
            "  {:<34} {}",
            Metric::DownloadLbTx.label(),
            Metric::DownloadLbTx.format(share)
        );
        results.add(case, Metric::DownloadLbTx, share);
    }
}

/// Bytes sent so far by every interface of `ns` but `lo`.
fn tx_bytes(ns: &Netns) -> anyhow::Result<u64> {
    let text = ns.ip(&["-j", "-s", "link", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&text).context("ip -j -s link")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != "lo")
        .filter_map(|l| l["stats64"]["tx"]["bytes"].as_u64())
        .sum())
}

fn http_metrics(ctx: &Ctx, case: Case, route: &Route, results: &mut Results) -> anyhow::Result<()> {
    preflight(ctx, case, route)?;
    measure(results, case, Metric::KeepAlive, || {
        keep_alive(ctx, case, route, ctx.secs)
    });
    let concurrency = CONCURRENCY.to_string();
    let mut new_conn = None;
    measure(results, case, Metric::NewConn, || {
        let r = load(
            ctx,
            case,
            route,
            &["connect", "--concurrency", &concurrency],
        )?;
        new_conn = Some(r.clone());
        Ok(r.rate())
    });
    if let Some(r) = new_conn.filter(|r| r.errors > 0) {
        results.note(format!(
            "{}: {} of {} new connections failed ({})",
            case.label(),
            r.errors,
            r.ops + r.errors,
            r.first_error.unwrap_or_default()
        ));
    }
    let mut handshake = None;
    measure(results, case, Metric::Handshake, || {
        let r = load(
            ctx,
            case,
            route,
            &["handshake", "--concurrency", &concurrency],
        )?;
        handshake = Some(r.clone());
        Ok(r.rate())
    });
    if let Some(r) = handshake.filter(|r| r.split > 0 || r.errors > 0) {
        results.note(format!(
            "{}: {} of {} handshakes reached two backends, {} failed",
            case.label(),
            r.split,
            r.ops,
            r.errors
        ));
    }
    let asked = ctx.rate_for(case);
    let rate = format!("{asked}");
    let connections = RATE_CONNECTIONS.to_string();
    let fixed = load(
        ctx,
        case,
        route,
        &["rate", "--rate", &rate, "--connections", &connections],
    );
    match fixed {
        Ok(r) => {
            let lat = r.latency.unwrap_or_default();
            results.add(case, Metric::P50, lat.p50_us);
            results.add(case, Metric::P99, lat.p99_us);
            if r.ops > 0 {
                results.add(case, Metric::CpuPerRequest, r.cpu_secs * 1e6 / r.ops as f64);
            }
            results.add(case, Metric::RateReached, r.rate() / asked);
            println!(
                "  {:<34} {:.0} / {:.0} at {:.0} requests/s, {:.1} CPU µs per request",
                "p50 / p99 latency µs",
                lat.p50_us,
                lat.p99_us,
                r.rate(),
                r.cpu_secs * 1e6 / r.ops.max(1) as f64
            );
            if r.rate() < asked * 0.95 {
                results.note(format!(
                    "{}: fixed-rate run reached {:.0} of {asked:.0} requests/s",
                    case.label(),
                    r.rate(),
                ));
            }
        }
        Err(e) => {
            cmd::check_interrupted()?;
            results.note(format!("{}: fixed-rate latency: {e:#}", case.label()));
        }
    }
    Ok(())
}

/// Runs one measurement; a failure becomes a note in the report instead of ending the run.
fn measure(
    results: &mut Results,
    case: Case,
    metric: Metric,
    f: impl FnOnce() -> anyhow::Result<f64>,
) {
    match f() {
        Ok(v) => {
            println!("  {:<34} {}", metric.label(), metric.format(v));
            results.add(case, metric, v);
        }
        // The caller stops at its next interrupt check; no note for that.
        Err(_) if cmd::check_interrupted().is_err() => {}
        Err(e) => results.note(format!("{}: {}: {e:#}", case.label(), metric.label())),
    }
}

/// One request through the path before measuring it; transparent paths must show the
/// backend the client's own address.
fn preflight(ctx: &Ctx, case: Case, route: &Route) -> anyhow::Result<()> {
    let src = IpAddr::V4(route.sources.addr(1));
    let dst: SocketAddr = *route.targets.first().context("no target")?;
    let xff = if case.forwards_for() {
        format!("X-Forwarded-For: {src}\r\n")
    } else {
        String::new()
    };
    let answer = ctx
        .bench
        .client_of(case.dsr())
        .run(|| HttpConn::open(src, dst, Duration::from_secs(3))?.get_with(&xff, true))?
        .with_context(|| format!("{}: first request {src} -> {dst}", case.label()))?;
    anyhow::ensure!(
        !case.transparent() || answer.seen_client == src,
        "{}: backend {} saw {} instead of the client {src}",
        case.label(),
        answer.backend,
        answer.seen_client
    );
    Ok(())
}

/// `sticky-bench load MODE…` in the client namespace on the load CPU.
fn load(ctx: &Ctx, case: Case, route: &Route, mode: &[&str]) -> anyhow::Result<LoadResult> {
    let mut c = cmd::in_ns(ctx.bench.client_of(case.dsr()), Some(LOAD_CPU), &ctx.exe);
    c.arg("load").args(mode);
    if case.forwards_for() {
        c.arg("--xff");
    }
    for t in &route.targets {
        c.args(["--target", &t.to_string()]);
    }
    c.args([
        "--sources",
        &route.sources.to_string(),
        "--duration",
        &ctx.secs.to_string(),
    ]);
    let out = cmd::output(&mut c, Duration::from_secs(ctx.secs) + GRACE)?;
    let line = out.lines().last().context("load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("load output {line:?}"))
}
