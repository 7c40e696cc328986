//! `cargo xtask test`: everything CI runs, from a bare machine to a test report, then a
//! short fuzzing campaign.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::{build_cmd, fuzz_cmd, package_cmd, setup, sh};

pub fn run(release: bool, extra: &[String]) -> Result<()> {
    let start = Instant::now();
    let result = run_tests(release, extra);
    println!("xtask test: {} s", start.elapsed().as_secs());
    result
}

fn run_tests(release: bool, extra: &[String]) -> Result<()> {
    setup::run()?;
    npm_ci_example()?;
    let bin = build_cmd::build_sticky(release)?;
    // The package tests (tests/tests/operations.rs) unpack and run this one: ~1 s here.
    let deb = package_cmd::package(&bin, release)?;
    if sh::is_root() {
        println!("running as root: integration tests will load eBPF programs");
    } else {
        println!(
            "not root: integration tests will be skipped (each prints why), or fail under \
             CI=true or STICKY_REQUIRE_ROOT=1; rerun as root"
        );
    }
    let mut cargo = sh::cargo()?;
    cargo
        .current_dir(sh::workspace_root()?)
        .env("AYA_BUILD_SKIP", "0")
        .env("STICKY_BIN", &bin)
        .env("STICKY_DEB", &deb)
        // sticky-ebpf only builds for the bpf target; sticky-user's build script covers it.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "sticky-ebpf",
            "--no-fail-fast",
        ]);
    if release {
        cargo.arg("--release");
    }
    cargo.args(extra);
    // Tests share kernel state (interfaces, pinned maps), so they must not overlap.
    if !extra.iter().any(|a| a == "--") {
        cargo.arg("--");
    }
    cargo.arg("--test-threads=1");
    sh::run(&mut cargo).context("tests failed; see cargo's output above")?;
    // A test filter asks for a focused run: the campaign would only get in the way.
    if !extra.is_empty() {
        println!("note: fuzzing skipped because test arguments were given");
        return Ok(());
    }
    // The packet campaign already ran (300k frames) as part of `cargo test`: 0 frames here.
    fuzz_cmd::run(fuzz_cmd::TEST_SECONDS, None, 0)
}

/// The socket.io tests run the example with its locked dependencies: install them once.
fn npm_ci_example() -> Result<()> {
    npm_ci("examples/socketio")
}

/// `npm ci` in `dir` (relative to the workspace) unless its locked packages are installed
/// already (npm's own record of them is newer than the lockfile).
pub fn npm_ci(dir: &str) -> Result<()> {
    let path = sh::workspace_root()?.join(dir);
    // npm's record of what it installed, newer than the lockfile: nothing changed since.
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(&path.join("node_modules/.package-lock.json"));
    if installed.is_some() && installed >= modified(&path.join("package-lock.json")) {
        println!("ok: {dir} dependencies installed");
        return Ok(());
    }
    println!("installing: {dir} dependencies (npm ci)");
    let mut npm = sh::cmd("npm")?;
    npm.current_dir(&path)
        .args(["ci", "--no-audit", "--no-fund"]);
    sh::run(&mut npm).with_context(|| format!("npm ci in {dir} (is node/npm installed?)"))
}
