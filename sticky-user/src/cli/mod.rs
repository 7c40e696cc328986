//! The `sticky` command line: one module per subcommand; doc comments are the help text.

pub mod backend;
pub mod backend_setup;
pub mod check_config;
pub mod cluster;
pub mod completions;
pub mod control;
pub mod doctor;
pub mod man;
pub mod node;
pub mod run;
pub mod trace;

use clap::{Parser, Subcommand};

/// The installed command's name (the crate is `sticky-user`).
pub const BIN: &str = "sticky";

/// Kernel-accelerated sticky-session load balancer: every connection of a client reaches the
/// same backend (socket.io, long-polling), consistently across nodes.
#[derive(Parser)]
#[command(name = BIN, version, arg_required_else_help = true)]
pub struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Which balancer: several can run on one host, each with its own pins and control
    /// socket [default: default].
    #[arg(long, global = true, value_name = "NAME")]
    pub instance: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Balance VIP traffic on interfaces to backends, in the kernel (tc eBPF).
    Run(Box<run::RunArgs>),
    /// Change the backends of a running daemon: add, remove, drain, undrain, weight, list.
    Backend(backend::BackendArgs),
    /// This node among several behind routers: drain (withdraw the VIPs' announcement) or
    /// undrain.
    Node(node::NodeArgs),
    /// Prepare this host as a direct-server-return backend (decapsulation, VIPs on lo, ARP,
    /// rp_filter, MSS), or --check / --undo it.
    BackendSetup(backend_setup::BackendSetupArgs),
    /// Show what a change would move before applying it.
    Preview(control::PreviewArgs),
    /// Per-backend state, health, weight, table share, affine clients, flows, rates, bytes.
    Status(control::StatusArgs),
    /// Which backend a client gets, and why (affinity or table).
    Lookup(control::LookupArgs),
    /// Print each data-path decision for one client's packets, live.
    Trace(trace::TraceArgs),
    /// Re-read the daemon's config file and apply the difference (as SIGHUP).
    Reload,
    /// Stop the daemon: detach and unpin, or with --keep leave the data path running.
    Stop(control::StopArgs),
    /// Run N workers of an app (e.g. `-- node app.js`) on their own ports and balance one port
    /// across them in the kernel; `sticky cluster reload` restarts them one by one.
    Cluster(Box<cluster::ClusterArgs>),
    /// Check what would stop a balancer from forwarding (before a start or on --instance).
    Doctor(Box<doctor::DoctorArgs>),
    /// Check a config file as `sticky run --config FILE` would, without root or side effects:
    /// exit 0 with a summary, or 1 with `FILE:LINE: FIELD: what is wrong`.
    CheckConfig(check_config::CheckConfigArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
    /// Print the man page sticky(1), or write every page with --dir.
    Man(man::ManArgs),
}

pub fn dispatch(command: Command, instance: Option<String>) -> anyhow::Result<()> {
    let name = instance
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_INSTANCE.to_string());
    let prints_only = matches!(
        command,
        Command::Status(_)
            | Command::Lookup(_)
            | Command::Preview(_)
            | Command::Backend(_)
            | Command::CheckConfig(_)
            | Command::Completions(_)
            | Command::Man(_)
    );
    if prints_only {
        // `sticky status | head` should end quietly, not panic on a closed pipe. Never for the
        // daemons: a peer closing a socket must not kill them.
        // SAFETY: restores the default disposition; no handler involved.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match command {
        Command::Run(args) => run::run(*args, instance),
        Command::Backend(args) => backend::run(args, &name),
        Command::Node(args) => node::run(args, &name),
        Command::BackendSetup(args) => backend_setup::run(args),
        Command::Preview(args) => control::preview(args, &name),
        Command::Status(args) => control::status(args, &name),
        Command::Lookup(args) => control::lookup(args, &name),
        Command::Trace(args) => trace::run(args, &name),
        Command::Reload => control::reload(&name),
        Command::Stop(args) => control::stop(args, &name),
        Command::Cluster(args) => cluster::run(*args, &name),
        Command::Doctor(args) => doctor::run(*args, instance),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
    }
}
