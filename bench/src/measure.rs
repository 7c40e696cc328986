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
use sticky_tests::HttpConn;

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
    /// `--quick`: bulk only through our own tool (no iperf3 service), to stay under 2 minutes.
    pub quick: bool,
}

/// The routed path's keep-alive capacity; latency is measured at a share of it.
pub fn calibrate(ctx: &Ctx) -> anyhow::Result<f64> {
    let route = peers::route(Case::Routed, Service::Http, ctx.bench.backends().len());
    preflight(ctx, Case::Routed, &route)?;
    let target = *route.targets.first().context("no target")?;
    let w = tools::wrk(
        ctx.bench.client(),
        target,
        WRK_CONNECTIONS,
        ctx.secs.max(2),
        None,
    )
    .context("calibrate with wrk on the routed path")?;
    anyhow::ensure!(
        w.requests_per_sec > 100.0,
        "routed path does only {:.0} requests/s",
        w.requests_per_sec
    );
    Ok((w.requests_per_sec * RATE_SHARE).round())
}

pub fn run_case(ctx: &Ctx, case: Case, results: &mut Results) -> anyhow::Result<()> {
    // Nothing carries over: conntrack emptied here, middleboxes (and sticky's maps) restarted
    // for every service below.
    peers::flush_conntrack(ctx.bench)?;
    let _stats = if case == Case::Sticky {
        Some(ebpf::enable_stats()?)
    } else {
        None
    };
    for &service in case.services() {
        if ctx.quick && service == Service::Bulk {
            continue;
        }
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
                for (metric, streams) in [(Metric::Bulk1, 1), (Metric::Bulk4, 4)] {
                    measure(results, case, metric, || {
                        let _servers = tools::iperf3_servers(ctx.bench.backends())?;
                        let target = *route.targets.first().context("no target")?;
                        tools::iperf3(ctx.bench.client(), target, streams, ctx.secs)
                    });
                }
            }
        }
        middlebox
            .check_alive()
            .with_context(|| format!("{} died", case.label()))?;
        if let Some(instance) = middlebox.sticky_instance() {
            let cost = results.ebpf.entry(service.name().to_string()).or_default();
            for p in ebpf::sticky_programs(instance)? {
                cost.add(&p.name, p.run_ns, p.runs);
            }
        }
    }
    Ok(())
}

fn http_metrics(ctx: &Ctx, case: Case, route: &Route, results: &mut Results) -> anyhow::Result<()> {
    preflight(ctx, case, route)?;
    measure(results, case, Metric::KeepAlive, || {
        let target = *route.targets.first().context("no target")?;
        // wrk sends one header to every connection: one client, as one user behind a CDN.
        let xff = case
            .forwards_for()
            .then(|| format!("X-Forwarded-For: {}", route.sources.addr(1)));
        let w = tools::wrk(
            ctx.bench.client(),
            target,
            WRK_CONNECTIONS,
            ctx.secs,
            xff.as_deref(),
        )?;
        anyhow::ensure!(w.errors == 0, "wrk counted {} errors", w.errors);
        Ok(w.requests_per_sec)
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
    let rate = format!("{}", ctx.rate);
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
            results.add(case, Metric::RateReached, r.rate() / ctx.rate);
            println!(
                "  {:<34} {:.0} / {:.0} at {:.0} requests/s, {:.1} CPU µs per request",
                "p50 / p99 latency µs",
                lat.p50_us,
                lat.p99_us,
                r.rate(),
                r.cpu_secs * 1e6 / r.ops.max(1) as f64
            );
            if r.rate() < ctx.rate * 0.95 {
                results.note(format!(
                    "{}: fixed-rate run reached {:.0} of {:.0} requests/s",
                    case.label(),
                    r.rate(),
                    ctx.rate
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
        .client()
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
    let mut c = cmd::in_ns(ctx.bench.client(), Some(LOAD_CPU), &ctx.exe);
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
