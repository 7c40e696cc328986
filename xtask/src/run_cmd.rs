//! `cargo xtask run`: build, then run sticky in the foreground.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::build_cmd;

pub fn run(release: bool, args: &[String]) -> Result<ExitCode> {
    let bin = build_cmd::run(release)?;
    let mut cmd = Command::new(&bin);
    if args.is_empty() {
        cmd.arg("demo");
    } else {
        cmd.args(args);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start {}", bin.display()))?;
    // Ctrl-C reaches sticky directly (same process group). Ignoring it here keeps xtask
    // alive to report sticky's exit code after sticky has detached its programs.
    // Done after spawn so the child does not inherit the ignored disposition.
    // SAFETY: SIG_IGN installs no handler code; nothing else in xtask touches SIGINT.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {} failed", bin.display()))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        // Shell convention for death by signal.
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
