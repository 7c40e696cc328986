//! eBPF cost per packet from the kernel's run-time statistics: `BPF_ENABLE_STATS` (the switch
//! behind `sysctl kernel.bpf_stats_enabled=1`, released when its descriptor closes, so a
//! crashed bench leaves it off) and the `run_time_ns` / `run_cnt` of the programs the running
//! sticky daemon attached, found through its pinned links.

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use sticky::datapath::Pins;

/// Statistics collection, on while this lives.
pub struct StatsOn {
    _fd: OwnedFd,
}

pub fn enable_stats() -> anyhow::Result<StatsOn> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enable eBPF run-time statistics (BPF_ENABLE_STATS; needs root)")?;
    Ok(StatsOn { _fd: fd })
}

/// One program's accumulated run time and run count.
pub struct ProgramRuns {
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
}

/// The programs attached through `instance`'s pinned links, with their statistics so far.
pub fn sticky_programs(instance: &str) -> anyhow::Result<Vec<ProgramRuns>> {
    let dir = Pins::for_instance(instance).dir.join("links");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let link: FdLink = PinnedLink::from_pin(&path)
            .with_context(|| format!("open pinned link {}", path.display()))?
            .into();
        ids.push(link.info().context("link info")?.program_id());
    }
    let mut out = Vec::new();
    for info in loaded_programs() {
        let info = info.context("list loaded eBPF programs")?;
        if ids.contains(&info.id()) {
            out.push(ProgramRuns {
                name: info.name_as_str().unwrap_or("?").to_string(),
                run_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                runs: info.run_count(),
            });
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no loaded program behind the links pinned in {}",
        dir.display()
    );
    Ok(out)
}
