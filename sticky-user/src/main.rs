//! `sticky`: a kernel-accelerated sticky-session load balancer.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sticky::config::Layer;

/// Kernel-accelerated sticky-session load balancer: every connection of a client reaches the
/// same backend (socket.io, long-polling), consistently across nodes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Balance VIP traffic on interfaces to backends, in the kernel (tc eBPF).
    Run(RunArgs),
    /// Build a namespace sandbox, balance 250 clients over 3 backends, show they stick, clean up.
    /// (What `sticky` does with no command.)
    Demo,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Client-facing interface to attach to (repeatable).
    #[arg(long = "iface", value_name = "IF")]
    iface: Vec<String>,
    /// Virtual IP and port clients connect to (repeatable; IPv6 as [ADDR]:PORT).
    #[arg(long = "vip", value_name = "ADDR:PORT")]
    vip: Vec<String>,
    /// Backend and optional weight (repeatable; weight 1-1000, default 1).
    #[arg(long = "backend", value_name = "ADDR:PORT[@WEIGHT]")]
    backend: Vec<String>,
    /// TOML file with the same settings (flag names as keys); flags override it, SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Hash seed: nodes with the same seed and backends pick the same backend per client.
    #[arg(long)]
    seed: Option<u32>,
    /// Maglev table slots, a prime [default: 65537].
    #[arg(long)]
    table_size: Option<u32>,
    /// How long a client's new connections keep going to its backend after its last packet
    /// [default: 30m].
    #[arg(long, value_name = "DURATION")]
    affinity_timeout: Option<String>,
    /// Connection-tracking entries (two per connection) [default: 262144].
    #[arg(long)]
    max_flows: Option<u32>,
    /// Client-affinity entries [default: 131072].
    #[arg(long)]
    max_clients: Option<u32>,
    /// Instance name, for several balancers on one host [default: default].
    #[arg(long)]
    instance: Option<String>,
}

impl RunArgs {
    fn into_layer(self) -> (Layer, Option<PathBuf>) {
        let layer = Layer {
            iface: self.iface,
            vip: self.vip,
            backend: self.backend,
            seed: self.seed,
            table_size: self.table_size,
            affinity_timeout: self.affinity_timeout,
            max_flows: self.max_flows,
            max_clients: self.max_clients,
            instance: self.instance,
        };
        (layer, self.config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Run(args) => {
            let (layer, file) = args.into_layer();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(sticky::run::run(layer, file)))
        }
        Command::Demo => sticky::demo::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sticky: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
