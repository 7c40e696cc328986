//! `cargo xtask chaos`: the fault and flood campaigns of `tests/tests/chaos.rs` at full size
//! (`STICKY_CHAOS=full`: a million spoofed SYNs, 20 `kill -9` cycles, a minute of backend
//! churn, the proxy filled to its connection limit). `cargo xtask test` runs them short.

use anyhow::{Context, Result};

use crate::{build_cmd, setup, sh};

pub fn run(release: bool) -> Result<()> {
    setup::run()?;
    let bin = build_cmd::build_sticky(release)?;
    if !sh::is_root() {
        anyhow::bail!("the campaigns build network namespaces and load eBPF: run them as root");
    }
    let mut cargo = sh::cargo()?;
    cargo
        .current_dir(sh::workspace_root()?)
        .env("AYA_BUILD_SKIP", "0")
        .env("STICKY_BIN", &bin)
        .env("STICKY_CHAOS", "full")
        .args(["test", "--package", "sticky-tests", "--test", "chaos"]);
    if release {
        cargo.arg("--release");
    }
    // One campaign at a time, each printing its `chaos (full): …` line.
    cargo.args(["--", "--test-threads=1", "--nocapture"]);
    sh::run(&mut cargo).context("a chaos campaign failed; see its output above")
}
