//! `sticky backend …`: change a running daemon's backends.

use std::net::SocketAddr;

use super::control::{ChangeArgs, call, close_rate, deadline, endpoint};
use crate::control::{BackendListEntry, Change, Request};

#[derive(clap::Args)]
pub struct BackendArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    #[command(flatten)]
    Change(ChangeArgs),
    /// Drain: no new clients; established connections and affine clients continue until they
    /// end or the deadline passes (then the backend is removed and its flows dropped).
    Drain {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        /// Like 10m; without it the drain lasts until undrain or remove.
        #[arg(long, value_parser = deadline, value_name = "DURATION")]
        deadline: Option<u64>,
        /// Past the deadline, end its flows at most N per second, least recently active
        /// first, so its clients reconnect spread out rather than in the same second.
        #[arg(long, value_parser = close_rate, value_name = "N/s", requires = "deadline")]
        close_rate: Option<u32>,
    },
    /// Put a draining backend back in service.
    Undrain {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
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
        Action::Change(change) => Request::Apply {
            change: Change::from(&change),
        },
        Action::Drain {
            addr,
            deadline,
            close_rate,
        } => Request::Drain {
            addr,
            deadline_ms: deadline,
            close_rate,
        },
        Action::Undrain { addr } => Request::Undrain { addr },
        Action::List { json } => {
            let data = call(instance, &Request::List)?;
            if json {
                println!("{data}");
            } else {
                let backends: Vec<BackendListEntry> = serde_json::from_value(data)?;
                // The weight is not padded: this line's format predates the typed list (a
                // JSON value ignores widths) and scripts may read it.
                for b in backends {
                    println!(
                        "{:<24} weight {} {}",
                        b.addr.to_string(),
                        b.weight,
                        b.state.name()
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
