//! `sticky node …`: this node's place among several behind routers (`--announce-table`).

use super::control::{call, deadline};
use crate::control::Request;

#[derive(clap::Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Withdraw the VIPs' announcement so routers move traffic to the other nodes; the node
    /// keeps forwarding what still reaches it.
    Drain {
        /// Like 30s: then stop the daemon (detach), as `sticky stop`.
        #[arg(long, value_parser = deadline, value_name = "DURATION")]
        deadline: Option<u64>,
    },
    /// Announce the VIPs again (once a backend is in service).
    Undrain,
}

pub fn run(args: NodeArgs, instance: &str) -> anyhow::Result<()> {
    let request = match args.action {
        Action::Drain { deadline } => Request::NodeDrain {
            deadline_ms: deadline,
        },
        Action::Undrain => Request::NodeUndrain,
    };
    let data = call(instance, &request)?;
    println!("{}", data.as_str().unwrap_or("ok"));
    Ok(())
}
