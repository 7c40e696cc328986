//! `cargo xtask bench`: installs the benchmark's peers, builds sticky and sticky-bench in
//! release, then runs `sticky-bench run`, which writes `bench/results/latest.{md,png,json}`.

use std::process::{Command, ExitCode};

use anyhow::Result;

use crate::{build_cmd, run_cmd, setup, sh, test_cmd};

/// Debian packages only the benchmark uses (`cargo xtask test` does not install them): the
/// load and bulk tools, the balancers sticky is compared with, conntrack to flush between
/// cases, and the chart's font.
pub const BENCH_PACKAGES: &[&str] = &[
    "wrk",
    "iperf3",
    "haproxy",
    "nginx",
    "libnginx-mod-stream",
    "nftables",
    "conntrack",
    "fonts-dejavu-core",
];

pub fn run(quick: bool, extra: &[String]) -> Result<ExitCode> {
    setup::run()?;
    setup::deb_packages(BENCH_PACKAGES)?;
    // The Node balancers `sticky cluster` is compared with, at their locked versions.
    if !extra.iter().any(|a| a == "--no-seeds") {
        test_cmd::npm_ci("bench/cluster")?;
    }
    build_cmd::build_packages(true, &["sticky-user", "sticky-bench"])?;
    let sticky = sh::target_bin("sticky", true)?;
    let bench = sh::target_bin("sticky-bench", true)?;
    if !sh::is_root() {
        anyhow::bail!("the benchmark builds network namespaces and loads eBPF: run it as root");
    }
    let mut cmd = Command::new(&bench);
    cmd.arg("run")
        .arg("--sticky")
        .arg(&sticky)
        .arg("--out")
        .arg(sh::workspace_root()?.join("bench").join("results"));
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(extra);
    run_cmd::foreground(&mut cmd)
}
