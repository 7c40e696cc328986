//! `sticky`: a kernel-accelerated sticky-session load balancer.

use std::process::ExitCode;

use clap::Parser as _;
use sticky::{
    cli::{Cli, Command, dispatch},
    logging::{self, LogFormat},
};
use tracing::Level;

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
