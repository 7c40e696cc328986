//! Small helpers for spawning commands and locating things on disk.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `$CARGO_HOME`, defaulting to `$HOME/.cargo` like rustup does.
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home =
        env::var_os("HOME").context("neither CARGO_HOME nor HOME is set; set one of them")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// PATH for children, with `$CARGO_HOME/bin` first so a freshly installed bpf-linker is
/// found by the nested eBPF cargo build even when the user's shell PATH lacks it.
pub fn child_path() -> Result<OsString> {
    let mut dirs = vec![cargo_home()?.join("bin")];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).context("a PATH entry contains ':'; fix PATH")
}

/// A command that sees [`child_path`]; std also resolves `program` against that PATH.
pub fn cmd(program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path()?);
    Ok(cmd)
}

/// Cargo that is running us, so nested builds use the same toolchain.
pub fn cargo() -> Result<Command> {
    cmd(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Human-readable command line for messages (Command's Debug also dumps the environment).
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` with inherited stdio and fails if it exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`; is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails (with its stderr) if it exits unsuccessfully.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`; is it installed and on PATH?"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// First executable called `name` in [`child_path`].
pub fn find_in_path(name: &str) -> Result<Option<PathBuf>> {
    let path = child_path()?;
    Ok(env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| is_executable(file)))
}

fn is_executable(file: &Path) -> bool {
    fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root: xtask lives at `<root>/xtask`.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent; run xtask from the sticky workspace")
}

/// Where cargo puts the binary `name` for the chosen profile.
pub fn target_bin(name: &str, release: bool) -> Result<PathBuf> {
    let root = workspace_root()?;
    let target = match env::var_os("CARGO_TARGET_DIR") {
        // Cargo resolves a relative CARGO_TARGET_DIR against the directory it runs in,
        // and xtask runs every cargo command from the workspace root.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join(name))
}
