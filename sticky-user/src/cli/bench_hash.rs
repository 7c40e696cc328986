//! `sticky bench-hash`: runs offline, without root or the eBPF object.

use crate::hashbench::{self, DEFAULT_BACKENDS, DEFAULT_CLIENTS, DEFAULT_SEED, Report};

#[derive(clap::Args)]
pub struct BenchHashArgs {
    /// Simulated clients, half IPv4 and half IPv6.
    #[arg(long, default_value_t = DEFAULT_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub clients: u32,
    /// Backends before the change (then the last is removed, or one is added).
    #[arg(long, default_value_t = DEFAULT_BACKENDS,
          value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub backends: u32,
    /// Seed the client addresses (and int31's per-process seed) are drawn from.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchHashArgs) -> anyhow::Result<()> {
    let clients = args.clients as usize;
    let schemes = hashbench::run(clients, args.backends, args.seed);
    if args.json {
        let report = Report {
            clients,
            backends: args.backends,
            seed: args.seed,
            debug_build: cfg!(debug_assertions),
            schemes,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", hashbench::render_text(&schemes));
    }
    Ok(())
}
