//! `sticky backend …`: change a running daemon's backends.

use std::net::SocketAddr;

use super::control::{call, deadline, endpoint, weight};
use crate::control::{Change, Request};

#[derive(clap::Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Add a backend: it takes its share of new clients; affine clients stay where they are.
    Add {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        /// Relative weight, 1-1000.
        #[arg(long, default_value_t = 1, value_parser = weight)]
        weight: u32,
    },
    /// Remove a backend: its clients move; its established connections continue.
    Remove {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
    },
    /// Drain: no new clients; established connections and affine clients continue until they
    /// end or the deadline passes (then the backend is removed and its flows dropped).
    Drain {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        /// Like 10m; without it the drain lasts until undrain or remove.
        #[arg(long, value_parser = deadline, value_name = "DURATION")]
        deadline: Option<u64>,
    },
    /// Put a draining backend back in service.
    Undrain {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
    },
    /// Set a backend's weight, 1-1000.
    Weight {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        #[arg(value_parser = weight)]
        weight: u32,
    },
    /// List backends with weight and state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: BackendArgs, instance: &str) -> anyhow::Result<()> {
    let request = match args.action {
        Action::Add { addr, weight } => Request::Apply {
            change: Change::Add { addr, weight },
        },
        Action::Remove { addr } => Request::Apply {
            change: Change::Remove { addr },
        },
        Action::Weight { addr, weight } => Request::Apply {
            change: Change::Weight { addr, weight },
        },
        Action::Drain { addr, deadline } => Request::Drain {
            addr,
            deadline_ms: deadline,
        },
        Action::Undrain { addr } => Request::Undrain { addr },
        Action::List { json } => {
            let data = call(instance, &Request::List)?;
            if json {
                println!("{data}");
            } else {
                for b in data.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} weight {:<5} {}",
                        b["addr"].as_str().unwrap_or("?"),
                        b["weight"],
                        b["state"].as_str().unwrap_or("?")
                    );
                }
            }
            return Ok(());
        }
    };
    let data = call(instance, &request)?;
    println!("{}", data.as_str().unwrap_or("ok"));
    Ok(())
}
