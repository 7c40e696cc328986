//! `sticky`: a kernel-accelerated sticky-session load balancer.

use std::process::ExitCode;

use clap::Parser as _;
use sticky::{
    cli::{Cli, Command, dispatch},
    logging::{self, LogFormat},
};
use tracing::Level;

/// Proxy mode allocates per request (hyper's heads, header maps, body frames): glibc's
/// malloc and free took 8.5% of its CPU under keep-alive load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Chosen before anything logs: from `sticky run`'s flag or its config file's key.
    let format = match &cli.command {
        Command::Run(run) => run.log_format(),
        _ => LogFormat::Text,
    };
    logging::init(cli.verbose, format);
    match dispatch(cli.command, cli.instance) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::complain(Level::ERROR, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
