//! `sticky`: a kernel-accelerated sticky-session load balancer.

use std::process::ExitCode;

use clap::Parser as _;
use sticky::cli::{Cli, dispatch};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match dispatch(cli.command, cli.instance) {
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
