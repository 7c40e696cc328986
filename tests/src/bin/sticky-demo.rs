//! `sticky-demo` (what `cargo xtask run` with no arguments runs): a self-contained sandbox
//! showing that every client sticks to one backend, with an even spread and real client
//! addresses. It runs the `sticky` binary named by `STICKY_BIN` (`cargo xtask run` sets it),
//! else the one next to itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};
use sticky::{
    cli::control::{call, render_status},
    control::Request,
    status::Status,
};
use sticky_tests::{StickyProcess, Topology, get_once, plan};

const CLIENTS: usize = 250;
const BACKENDS: usize = 3;
const CONNECTIONS_PER_CLIENT: usize = 4;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: sandbox removed");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sticky-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `STICKY_BIN`, else `sticky` in this binary's directory (both are built into one target
/// directory).
fn sticky_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("STICKY_BIN") {
        return Ok(bin.into());
    }
    let me = std::env::current_exe().context("locate the sticky-demo binary")?;
    let bin = me.with_file_name("sticky");
    if !bin.is_file() {
        bail!(
            "no sticky binary at {}: run the demo with `cargo xtask run`, or set STICKY_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn run() -> anyhow::Result<()> {
    // SAFETY: no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo builds network namespaces and loads eBPF: run it as root");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let bin = sticky_bin()?;

    println!(
        "sandbox: 1 client namespace with {CLIENTS} addresses, a balancer namespace, \
         {BACKENDS} backend namespaces with an HTTP server each"
    );
    let topo = Topology::build("demo", BACKENDS, CLIENTS)?;
    let _servers = topo.start_backends()?;
    check_interrupted()?;
    let args = topo.sticky_args(false);
    println!("sticky run {}", args.join(" "));
    let daemon = StickyProcess::start(&bin, &topo.lb, &args)?;
    println!("{}", daemon.ready_line);

    let vip = topo.vip(false);
    println!(
        "sending {CONNECTIONS_PER_CLIENT} requests per client to {vip}, each on a new connection"
    );
    let answers = topo
        .client
        .run(|| -> anyhow::Result<Vec<(usize, String)>> {
            let mut out = Vec::new();
            for i in 0..CLIENTS {
                for _ in 0..CONNECTIONS_PER_CLIENT {
                    check_interrupted()?;
                    let src = plan::client(i, false);
                    let answer = get_once(src, vip)?;
                    if answer.seen_client != src {
                        bail!(
                            "backend saw {} instead of the client {src}",
                            answer.seen_client
                        );
                    }
                    out.push((i, answer.backend));
                }
            }
            Ok(out)
        })??;

    let mut per_client: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (client, backend) in &answers {
        per_client
            .entry(*client)
            .or_default()
            .insert(backend.clone());
    }
    let mut clients_per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for backends in per_client.values() {
        for b in backends {
            *clients_per_backend.entry(b.clone()).or_default() += 1;
        }
    }
    let ideal = 100.0 / BACKENDS as f64;
    println!("\nbackend  clients  share   ideal");
    for (backend, n) in &clients_per_backend {
        let share = 100.0 * *n as f64 / CLIENTS as f64;
        let bar = "#".repeat((share / 2.0).round() as usize);
        println!("{backend:<8} {n:>7}  {share:>5.1}%  {ideal:>5.1}%  {bar}");
    }
    let split: Vec<_> = per_client.iter().filter(|(_, b)| b.len() > 1).collect();
    println!(
        "\n{} requests, {} clients: {} stayed on one backend, {} were split; \
         every backend saw the real client address",
        answers.len(),
        per_client.len(),
        per_client.len() - split.len(),
        split.len()
    );
    let data = call(&daemon.instance, &Request::Status)?;
    let status: Status = serde_json::from_value(data)?;
    println!("\n$ sticky status --instance {}", daemon.instance);
    print!("{}", render_status(&status));
    let status = daemon.stop()?;
    if !status.success() {
        bail!("sticky exited with {status}");
    }
    if !split.is_empty() {
        bail!("clients split across backends: {split:?}");
    }
    if clients_per_backend.len() != BACKENDS {
        bail!("not every backend got clients: {clients_per_backend:?}");
    }
    println!("sandbox removed");
    Ok(())
}
