//! `sticky cluster …`: run and balance N workers of an app, and roll them.

use crate::{cluster, duration};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: Option<ClusterAction>,
    /// Worker processes [default: the CPU count].
    #[arg(long)]
    pub workers: Option<usize>,
    /// The port clients connect to (on loopback and on every --iface address).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// First worker port; worker i gets BASE+i [default: PORT+1].
    #[arg(long)]
    pub base_port: Option<u16>,
    /// Also balance remote clients arriving on this interface (repeatable).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Extra environment for the workers (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = cluster::env_pair)]
    pub env: Vec<(String, String)>,
    /// Variable holding a worker's own port.
    #[arg(long, default_value = "PORT")]
    pub port_env: String,
    /// Variable holding a worker's index (0-based), as sticky-cluster's env(index).
    #[arg(long, default_value = "STICKY_WORKER_INDEX")]
    pub index_env: String,
    /// On shutdown and reload, SIGKILL workers still running this long after SIGTERM.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    pub hard_shutdown_delay: std::time::Duration,
    /// On reload, how long a worker drains (handshakes in progress finish) before it stops.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub drain_time: std::time::Duration,
    /// Proxy mode for XFF deployments: listen here (see `sticky run --help`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy: Option<String>,
    /// Proxy mode: header naming the client.
    #[arg(long, value_name = "NAME")]
    pub header: Option<String>,
    /// Proxy mode: peers whose header is believed.
    #[arg(long, value_name = "CIDR,...")]
    pub trusted_proxies: Option<String>,
    /// Proxy mode: route requests without the header by peer address.
    #[arg(long)]
    pub ignore_missing_header: bool,
    /// The worker command and its arguments, after --.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum ClusterAction {
    /// Rolling restart: one worker at a time, each drained first.
    Reload,
}

pub fn run(args: ClusterArgs, instance: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(ClusterAction::Reload) = args.action {
        let done = rt.block_on(cluster::reload(instance))?;
        println!("{done}");
        return Ok(());
    }
    let mut run_args = Vec::new();
    let mut pass = |flag: &str, value: Option<String>| {
        if let Some(v) = value {
            run_args.extend([flag.to_string(), v]);
        }
    };
    pass("--proxy", args.proxy);
    pass("--header", args.header);
    pass("--trusted-proxies", args.trusted_proxies);
    if args.ignore_missing_header {
        run_args.push("--ignore-missing-header".into());
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let spec = cluster::ClusterSpec {
        instance: instance.to_string(),
        workers,
        port: args.port,
        base_port: args.base_port.unwrap_or(args.port.saturating_add(1)),
        ifaces: args.ifaces,
        env: args.env,
        port_env: args.port_env,
        index_env: args.index_env,
        hard_shutdown_delay: args.hard_shutdown_delay,
        drain_time: args.drain_time,
        run_args,
        command: args.command,
    };
    rt.block_on(cluster::run(spec))
}
