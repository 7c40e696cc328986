//! `cargo xtask run`: build, then run sticky in the foreground, or with no arguments the demo
//! (`sticky-demo`, from the test rig in `tests/`), which runs that sticky.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::{build_cmd, setup, sh};

pub fn run(release: bool, args: &[String]) -> Result<ExitCode> {
    if !args.is_empty() {
        let bin = build_cmd::run(release)?;
        return foreground(Command::new(&bin).args(args));
    }
    setup::run()?;
    // One cargo run: sticky with its eBPF object, and the demo.
    build_cmd::build_packages(release, &["sticky-user", "sticky-tests"])?;
    let sticky = sh::target_bin("sticky", release)?;
    let demo = sh::target_bin("sticky-demo", release)?;
    println!("built: {}", sticky.display());
    foreground(Command::new(&demo).env("STICKY_BIN", &sticky))
}

/// Runs `cmd` in the foreground and returns its exit code. Ctrl-C reaches the child directly
/// (same process group); xtask ignores it so it stays to report the exit code after the child
/// has cleaned up (detached its programs, removed its namespaces).
pub fn foreground(cmd: &mut Command) -> Result<ExitCode> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {program}"))?;
    // Done after spawn so the child does not inherit the ignored disposition.
    // SAFETY: SIG_IGN installs no handler code; nothing else in xtask touches SIGINT.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program} failed"))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        // Shell convention for death by signal.
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
