//! `sticky run`: load, attach, publish the backends, then follow signals (SIGHUP re-reads the
//! config file; SIGINT/SIGTERM detach and exit).

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    backends::BackendSet,
    config::{Config, Layer},
    datapath::Datapath,
};

/// Builds the configuration from flags over the optional file.
pub fn resolve(flags: Layer, file: Option<&PathBuf>) -> anyhow::Result<Config> {
    let base = match file {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    let config = flags.over(base).validate()?;
    config.check_host()?;
    Ok(config)
}

pub async fn run(flags: Layer, file: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = resolve(flags.clone(), file.as_ref())?;
    require_privileges()?;
    let mut dp = Datapath::load(&config)?;
    let mut set = BackendSet::default();
    let removed = set.reconcile(&config.backends)?;
    dp.apply(&set, &removed)?;
    for iface in &config.ifaces {
        dp.attach(iface)?;
    }
    let vips: Vec<String> = config.vips.iter().map(ToString::to_string).collect();
    println!(
        "sticky ready: vip {} on {} -> {} backends (instance {})",
        vips.join(","),
        config.ifaces.join(","),
        config.backends.len(),
        config.instance
    );
    std::io::stdout().flush().ok();

    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&mut dp, &mut set, &config, flags.clone(), file.as_ref()) {
                    Ok(new) => {
                        config = new;
                        println!("sticky reloaded: {} backends", config.backends.len());
                        std::io::stdout().flush().ok();
                    }
                    Err(e) => warn!("reload refused, running configuration unchanged: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("detaching");
    drop(dp);
    Ok(())
}

/// Applies the backend changes of a re-read file. Settings fixed at load time (interfaces,
/// VIPs, table size, seed, map sizes) must not change.
fn reload(
    dp: &mut Datapath,
    set: &mut BackendSet,
    current: &Config,
    flags: Layer,
    file: Option<&PathBuf>,
) -> anyhow::Result<Config> {
    let file = file.context("no --config file to reload")?;
    let new = resolve(flags, Some(file))?;
    let fixed = |c: &Config| {
        (
            c.ifaces.clone(),
            c.vips.clone(),
            c.table_size,
            c.seed,
            c.max_flows,
            c.max_clients,
            c.affinity_timeout,
        )
    };
    if fixed(&new) != fixed(current) {
        anyhow::bail!(
            "only backends can change on reload; interfaces, VIPs, seed, table and map sizes \
             need a restart"
        );
    }
    let removed = set.reconcile(&new.backends)?;
    dp.apply(set, &removed)?;
    Ok(new)
}

/// Fails early with one clear line instead of a verifier or netlink error.
fn require_privileges() -> anyhow::Result<()> {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_BPF: u64 = 39;
    if eff & (1 << CAP_NET_ADMIN) != 0 && eff & (1 << CAP_BPF) != 0 {
        return Ok(());
    }
    anyhow::bail!("sticky run needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN")
}
