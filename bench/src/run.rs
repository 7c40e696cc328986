//! `sticky-bench run`: builds the namespaces, starts the backend servers, then for each round
//! runs every case (in an order rotated per round) through every metric, flushing conntrack
//! and restarting the middlebox between cases, and writes the report.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    cmd::{self, Proc},
    cpu,
    machine::Machine,
    measure::{self, Ctx, RATE_SHARE},
    metrics::Results,
    peers::Case,
    report, scale, seeds, testrun,
    topology::{Bench, LOAD_CPU, SERVER_CPU},
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The sticky binary, built with its eBPF object (`cargo xtask build --release`).
    #[arg(long, value_name = "PATH")]
    sticky: PathBuf,
    /// Folder for latest.md, latest.png and latest.json (the last one given wins, so
    /// `cargo xtask bench -- --out DIR` keeps trial runs away from bench/results).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "bench/results",
        overrides_with = "out"
    )]
    out: PathBuf,
    /// Sanity check in under 2 minutes: one round of 1-second measurements, not a result.
    #[arg(long)]
    quick: bool,
    /// Rounds [default: 3, 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per measurement [default: 5, 1 with --quick].
    #[arg(long)]
    seconds: Option<u64>,
    /// Backend namespaces.
    #[arg(long, default_value_t = 2)]
    backends: usize,
    /// Requests per second for the latency runs [default: half the routed path's keep-alive
    /// capacity, measured first].
    #[arg(long)]
    rate: Option<f64>,
    /// Skip the scale section (the kernel path with 1k, 100k and 1M live flows).
    #[arg(long)]
    no_scale: bool,
    /// Skip the comparison of `sticky cluster` with the Node balancers.
    #[arg(long)]
    no_seeds: bool,
    /// Run only these cases (repeatable) [default: all].
    #[arg(long = "case", value_enum)]
    cases: Vec<Case>,
    /// A sysctl for the balancer namespace, like net.ipv4.tcp_wmem="4096 4194304 16777216"
    /// (repeatable; noted in the report): tries socket buffer sizes for proxy mode.
    #[arg(long = "lb-sysctl", value_name = "KEY=VALUE", value_parser = parse_sysctl)]
    lb_sysctls: Vec<(String, String)>,
}

fn parse_sysctl(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!("'{key}' is not a sysctl name"));
    }
    Ok((key.to_string(), value.trim().to_string()))
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    // sticky (proxy mode) sizes its runtime by CPUs at start, before the bench pins it to one:
    // one worker, like HAProxy's `nbthread 1` and nginx's one worker.
    // SAFETY: first thing in the process, before any thread exists.
    unsafe { std::env::set_var("TOKIO_WORKER_THREADS", "1") };
    // SAFETY: no arguments.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the bench builds network namespaces and loads eBPF: run it as root \
         (`cargo xtask bench` as root)"
    );
    anyhow::ensure!(
        args.sticky.is_file(),
        "{} does not exist: build it with `cargo xtask build --release`",
        args.sticky.display()
    );
    anyhow::ensure!((1..=16).contains(&args.backends), "--backends must be 1-16");
    require_tools()?;
    cmd::catch_interrupts();
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let secs = args
        .seconds
        .unwrap_or(if args.quick { 1 } else { 5 })
        .clamp(1, 120);
    let cases = if args.cases.is_empty() {
        Case::ALL.to_vec()
    } else {
        args.cases.clone()
    };
    let mut results = Results {
        machine: Machine::here(),
        quick: args.quick,
        rounds,
        seconds_per_metric: secs,
        ..Results::default()
    };
    anyhow::ensure!(
        cpu::count() >= 2,
        "the bench pins load generators to CPU {LOAD_CPU} and servers to CPU {SERVER_CPU}: it \
         needs 2 CPUs or more"
    );
    // Threads and children inherit this; servers and balancers are moved to SERVER_CPU.
    cpu::pin_self(LOAD_CPU)?;
    results.background_cpu = background_cpu(Duration::from_secs(1))?;
    if results.background_cpu > 0.05 {
        results.note(format!(
            "other processes kept {:.0}% of the CPUs busy just before the run: figures are \
             noisier than usual",
            results.background_cpu * 100.0
        ));
    }
    let started = Instant::now();
    let times_at_start = cpu::times()?;

    println!("bench: eBPF cost per packet of the NAT and DSR programs (BPF_PROG_TEST_RUN)");
    match testrun::costs() {
        Ok(costs) => {
            testrun::print(&costs);
            results.testrun = costs;
        }
        Err(e) => results.note(format!("programs through BPF_PROG_TEST_RUN: {e:#}")),
    }
    if !args.no_scale {
        println!("bench: the kernel path with more live flows (scale)");
        match scale::curve(&args.sticky, &scale::SIZES) {
            Ok(points) => results.scale = points,
            Err(e) => results.note(format!("scale: {e:#}")),
        }
    }
    if !args.no_seeds {
        println!(
            "bench: sticky cluster and the Node balancers (socket.io over long-polling, 3 \
             workers)"
        );
        let exe = std::env::current_exe().context("locate sticky-bench")?;
        let mut notes = Vec::new();
        results.seeds = seeds::compare(&args.sticky, &exe, secs, rounds, &mut |n| notes.push(n));
        for n in notes {
            results.note(n);
        }
    }
    println!(
        "bench: building namespaces (client /20, balancer, {} backends; the same one-arm for DSR)",
        args.backends
    );
    let bench = Bench::build(args.backends, &args.sticky)?;
    for (key, value) in &args.lb_sysctls {
        bench
            .lb()
            .sysctl(key, value)
            .with_context(|| format!("set {key} in the balancer namespace"))?;
        results.note(format!("balancer namespace: {key} = {value}"));
    }
    let quiet_wait = quiet_wait(args.quick);
    let exe = std::env::current_exe().context("locate sticky-bench")?;
    let _servers = start_servers(&bench, &exe)?;
    let mut ctx = Ctx {
        bench: &bench,
        sticky: &args.sticky,
        exe,
        secs,
        rate: 0.0,
        proxy_rate: 0.0,
    };
    ctx.rate = match args.rate {
        Some(r) if r > 0.0 => r,
        Some(r) => anyhow::bail!("--rate {r}: must be positive"),
        None => {
            wait_for_quiet(quiet_wait)?;
            measure::calibrate(&ctx)?
        }
    };
    ctx.proxy_rate = match args.rate {
        Some(r) => r,
        None if cases.iter().any(|c| c.forwards_for()) => {
            wait_for_quiet(quiet_wait)?;
            let rate = measure::calibrate_proxies(&ctx)?;
            println!(
                "bench: fixed rate for the HTTP proxies' latency {rate:.0} requests/s ({:.0}% of \
                 HAProxy http's keep-alive capacity)",
                RATE_SHARE * 100.0
            );
            rate
        }
        None => 0.0,
    };
    results.fixed_rate = ctx.rate;
    results.proxy_rate = ctx.proxy_rate;
    results.rate_from_capacity = args.rate.is_none();
    results.backends = args.backends;
    let origin = if args.rate.is_some() {
        "from --rate".to_string()
    } else {
        format!("{:.0}% of routed keep-alive capacity", RATE_SHARE * 100.0)
    };
    println!(
        "bench: fixed rate for latency {:.0} requests/s ({origin})",
        ctx.rate
    );

    for round in 0..rounds {
        for i in 0..cases.len() {
            let Some(&case) = cases.get((i + round) % cases.len()) else {
                continue;
            };
            println!("bench: round {}/{rounds}: {}", round + 1, case.label());
            let idle = wait_for_quiet(quiet_wait)?;
            results.between_cases_cpu.push(idle);
            if idle > QUIET {
                results.note(format!(
                    "other processes still kept {:.0}% of the CPUs busy after waiting {} s \
                     before {} (round {})",
                    idle * 100.0,
                    quiet_wait.as_secs(),
                    case.label(),
                    round + 1
                ));
            }
            let t = Instant::now();
            if let Err(e) = measure::run_case(&ctx, case, &mut results) {
                cmd::check_interrupted()?;
                results.note(format!("{} (round {}): {e:#}", case.label(), round + 1));
            }
            println!("  ({:.1} s)", t.elapsed().as_secs_f64());
        }
    }
    println!("bench: measured in {} s", started.elapsed().as_secs());
    let now = cpu::times()?;
    let total = now.total.saturating_sub(times_at_start.total).as_secs_f64();
    if total > 0.0 {
        results.steal = now.steal.saturating_sub(times_at_start.steal).as_secs_f64() / total;
    }
    results.hash = Some(hash_and_table());
    let md = report::write(&args.out, &results)?;
    println!("\n{md}");
    Ok(())
}

/// Fails early, naming every missing tool, rather than case by case mid-run.
fn require_tools() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = [
        "ip",
        "ethtool",
        "nsenter",
        "taskset",
        "ss",
        "wrk",
        "iperf3",
        "haproxy",
        "nginx",
        "nft",
        "conntrack",
    ]
    .into_iter()
    .filter(|tool| !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing tools: {} (`cargo xtask bench` installs them; or apt-get install wrk iperf3 \
         haproxy nginx libnginx-mod-stream nftables conntrack ethtool)",
        missing.join(" ")
    );
    Ok(())
}

/// `sticky-bench hash`'s comparison of client hashes, in process (a fraction of a second).
fn hash_and_table() -> String {
    use crate::hash::{self, DEFAULT_BACKENDS, DEFAULT_CLIENTS, DEFAULT_SEED};
    let clients = DEFAULT_CLIENTS as usize;
    let schemes = hash::compare(clients, DEFAULT_BACKENDS, DEFAULT_SEED);
    format!(
        "`sticky-bench hash`: {clients} simulated clients (half IPv4, half IPv6), \
         {DEFAULT_BACKENDS} backends, seed {DEFAULT_SEED:#x}; lookups timed in this process \
         (pinned to CPU {LOAD_CPU}).\n\n{}",
        hash::render_markdown(&schemes)
    )
}

/// Other processes' CPU share above which the bench waits before a case.
pub const QUIET: f64 = 0.10;
/// The longest it waits for them to quiet down.
const QUIET_WAIT: Duration = Duration::from_secs(30);
/// The same for `--quick`, a sanity check that must stay short.
const QUICK_QUIET_WAIT: Duration = Duration::from_secs(1);

pub fn quiet_wait(quick: bool) -> Duration {
    if quick { QUICK_QUIET_WAIT } else { QUIET_WAIT }
}

/// Waits (up to `limit`) until other processes leave the CPUs mostly idle, so a shared
/// machine's builds and tests do not land inside a measurement; returns their last share.
/// Our servers idle between cases, so what the CPUs do then is someone else's work.
fn wait_for_quiet(limit: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + limit;
    let mut said = false;
    loop {
        let idle = background_cpu(Duration::from_millis(300))?;
        if idle <= QUIET || Instant::now() >= deadline {
            return Ok(idle);
        }
        if !said {
            println!(
                "  waiting for other processes ({:.0}% of the CPUs) to quiet down",
                idle * 100.0
            );
            said = true;
        }
        cmd::sleep(Duration::from_secs(1))?;
    }
}

/// Share of all CPUs busy over `d` while we run nothing: other processes' noise.
fn background_cpu(d: Duration) -> anyhow::Result<f64> {
    let before = cpu::busy()?;
    let t = Instant::now();
    cmd::sleep(d)?;
    let busy = cpu::busy()?.saturating_sub(before).as_secs_f64();
    Ok(busy / (t.elapsed().as_secs_f64() * cpu::count() as f64))
}

/// `sticky-bench serve` in every backend namespace (of both topologies), pinned to the server
/// CPU.
fn start_servers(bench: &Bench, exe: &std::path::Path) -> anyhow::Result<Vec<Proc>> {
    let mut servers = Vec::new();
    let both = bench.backends().iter().enumerate();
    for (k, ns) in both.chain(bench.dsr.backends.iter().enumerate()) {
        let mut p = Proc::spawn(
            "backend server",
            cmd::in_ns(ns, Some(SERVER_CPU), exe).args(["serve", "--id", &format!("be{k}")]),
        )?;
        p.wait_line("ready", Duration::from_secs(10))?;
        servers.push(p);
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn the_last_out_wins_and_sysctls_parse() {
        let cli = Cli::try_parse_from([
            "run",
            "--sticky",
            "s",
            "--out",
            "bench/results",
            "--out",
            "/tmp/trial",
            "--lb-sysctl",
            "net.ipv4.tcp_wmem=4096 4194304 16777216",
        ])
        .unwrap();
        assert_eq!(cli.run.out, PathBuf::from("/tmp/trial"));
        assert_eq!(
            cli.run.lb_sysctls,
            [(
                "net.ipv4.tcp_wmem".to_string(),
                "4096 4194304 16777216".to_string()
            )]
        );
        assert!(parse_sysctl("novalue").is_err());
        assert!(parse_sysctl("a b=1").is_err());
    }
}
