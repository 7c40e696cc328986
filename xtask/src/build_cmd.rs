//! `cargo xtask build`: the only way to get a sticky binary with its real eBPF object.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::{setup, sh};

/// Runs setup, builds `sticky`, prints and returns the binary's path.
pub fn run(release: bool) -> Result<PathBuf> {
    setup::run()?;
    build_sticky(release)
}

/// Builds `sticky` without setup (callers that already ran it).
pub fn build_sticky(release: bool) -> Result<PathBuf> {
    build_packages(release, &["sticky-user"])?;
    let bin = sh::target_bin("sticky", release)?;
    println!("built: {}", bin.display());
    Ok(bin)
}

/// Builds `packages` in one cargo run, with the real eBPF object (sticky-user's build script
/// embeds it), and checks the `sticky` binary landed where xtask looks.
pub fn build_packages(release: bool, packages: &[&str]) -> Result<()> {
    let mut cargo = sh::cargo()?;
    cargo
        .current_dir(sh::workspace_root()?)
        // Overrides the `AYA_BUILD_SKIP = "1"` default from .cargo/config.toml.
        .env("AYA_BUILD_SKIP", "0")
        .arg("build");
    for p in packages {
        cargo.args(["--package", p]);
    }
    if release {
        cargo.arg("--release");
    }
    sh::run(&mut cargo).context("building sticky failed; see cargo's output above")?;
    let bin = sh::target_bin("sticky", release)?;
    if !bin.is_file() {
        anyhow::bail!(
            "cargo succeeded but {} does not exist; is CARGO_TARGET_DIR or build.target-dir \
             set somewhere xtask does not look?",
            bin.display()
        );
    }
    Ok(())
}
