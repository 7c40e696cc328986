//! `sticky trace ADDR`: one client's packets through the data path, live.

use std::{
    io::Write as _,
    net::IpAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use crate::{
    datapath::Pins,
    trace::{Decision, Tracer, clock_time},
};

/// Print each data-path decision for one client's packets, live: new flows and why they got
/// their backend (affinity or table slot), established packets, rewritten replies, drops and
/// why. Times are UTC. Ctrl-C stops; tracing costs nothing measurable once stopped.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// The client's address (IPv4 or IPv6, no port).
    #[arg(value_name = "ADDR", value_parser = client_addr)]
    pub addr: IpAddr,
    /// Stop after N events [default: until Ctrl-C].
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per event and line.
    #[arg(long)]
    pub json: bool,
}

fn client_addr(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| {
        if s.parse::<std::net::SocketAddr>().is_ok() {
            format!("'{s}' has a port: give the client's address alone (all its ports are traced)")
        } else {
            format!("'{s}' is not an IPv4 or IPv6 address")
        }
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C, `kill` and a closed terminal end the loop, so the tracer is dropped and the trace
/// cleared rather than left running in the kernel.
fn stop_on_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); no SA_RESTART, so
        // a signal also ends the poll it interrupts.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn run(args: TraceArgs, instance: &str) -> anyhow::Result<()> {
    stop_on_signals();
    let pins = Pins::for_instance(instance);
    let mut tracer = Tracer::open(&pins, instance, args.addr)?;
    eprintln!(
        "tracing {} on instance '{instance}' (Ctrl-C to stop)",
        args.addr
    );
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    while !STOP.load(Ordering::Relaxed) && args.count.is_none_or(|n| seen < n) {
        let Some(event) = tracer.next_event() else {
            tracer.wait(Duration::from_millis(200));
            continue;
        };
        seen += 1;
        let decision = Decision::of(&event);
        let unix_ns = tracer.unix_ns(&event);
        let line = if args.json {
            let mut value = serde_json::to_value(&decision)?;
            value["unix_ms"] = serde_json::json!(unix_ns / 1_000_000);
            value.to_string()
        } else {
            format!("{} {}", clock_time(unix_ns), decision.describe())
        };
        // A closed pipe (`sticky trace … | head`) ends the trace like Ctrl-C.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    drop(tracer);
    Ok(())
}
