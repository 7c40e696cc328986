//! `sticky-bench`: measures sticky's kernel path (NAT, and direct server return on tc and XDP)
//! and its proxy mode (splicing and copying) against a direct veth, a routed hop with no
//! balancer, nftables NAT, HAProxy and nginx, in network namespaces it builds and removes.
//! `cargo xtask bench` installs the tools, builds everything and runs `sticky-bench run`.

mod chart;
mod cmd;
mod cpu;
mod ebpf;
mod hash;
mod load;
mod machine;
mod measure;
mod metrics;
mod peers;
mod report;
mod run;
mod scale;
mod seeds;
mod serve;
mod testrun;
mod tools;
mod topology;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks for sticky, the kernel-accelerated sticky-session load balancer.
#[derive(Parser, Debug)]
#[command(name = "sticky-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the namespaces, measure every case and metric, write the report (as root).
    Run(run::RunArgs),
    /// Load generator (inside a client namespace): thousands of source addresses, socket.io
    /// handshakes, fixed-rate latency, small-frame echo, bulk streams. Prints one JSON line.
    Load(load::LoadArgs),
    /// Backend servers (inside a backend namespace): HTTP/1.1 keep-alive responder, TCP echo,
    /// an upgrade port (head, 101, then echo or sink) and a plain sink.
    Serve(serve::ServeArgs),
    /// Render latest.md and latest.png again from a run's latest.json (no measuring).
    Report(report::ReportArgs),
    /// Only the eBPF programs' cost per packet through BPF_PROG_TEST_RUN: NAT ingress, DSR on
    /// XDP and tc (as root; builds and removes its own namespace).
    Testrun,
    /// Compare sticky's hash + Maglev table with the hashes of sticky-session, sticky-cluster
    /// and nginx ip_hash: spread, speed, disruption (offline, no root).
    Hash(hash::HashArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Report(args) => report::rerender(&args),
        Command::Hash(args) => hash::run(&args),
        Command::Testrun => testrun::run_alone(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sticky-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
