//! Installs bpf-linker linked against the nightly rustc's own LLVM, so the bitcode rustc
//! emits always matches the LLVM that links it and no system LLVM package is needed.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::sh;

pub fn ensure() -> Result<()> {
    if let Some(version) = installed_version()? {
        println!("ok: {version} already installed");
        return Ok(());
    }
    let major = llvm_major()?;
    let lib = sysroot_libllvm(major)?;
    let prefix = sh::cargo_home()?.join("bpf-linker-llvm");
    link_prefix(&prefix, &lib)?;
    println!("installing: bpf-linker against rustc's LLVM {major} (takes a few minutes)");
    sh::run(
        sh::cmd("cargo")?
            .args(["+nightly", "install", "bpf-linker", "--no-default-features"])
            .arg(format!("--features=llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker failed; see cargo's output above")?;
    match installed_version()? {
        Some(version) => {
            println!("ok: {version} installed");
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but `bpf-linker --version` fails; check that {} \
             still points at the nightly toolchain's libLLVM",
            prefix.display()
        ),
    }
}

/// `bpf-linker --version` output, or None if it is missing or cannot run
/// (e.g. its libLLVM vanished after a nightly update).
fn installed_version() -> Result<Option<String>> {
    let Some(bin) = sh::find_in_path("bpf-linker")? else {
        return Ok(None);
    };
    let out = sh::cmd(&bin)?.arg("--version").output();
    Ok(match out {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        _ => None,
    })
}

fn llvm_major() -> Result<u32> {
    let info = sh::output(sh::cmd("rustc")?.args(["+nightly", "-vV"]))
        .context("`rustc +nightly -vV` failed; run `rustup toolchain install nightly`")?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    let major = version.trim().split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("cannot parse LLVM major version from `{}`", version.trim()))
}

/// The real libLLVM shared object shipped with nightly. The sysroot also holds a tiny
/// `libLLVM-<major>-rust-*.so` linker script, which the name prefix filter skips.
fn sysroot_libllvm(major: u32) -> Result<PathBuf> {
    let sysroot = sh::output(sh::cmd("rustc")?.args(["+nightly", "--print", "sysroot"]))?;
    let dir = Path::new(sysroot.trim()).join("lib");
    let prefix = format!("libLLVM.so.{major}");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {prefix}* in {}; reinstall nightly with `rustup toolchain install nightly --force`",
            dir.display()
        )
    })
}

/// Makes `prefix/lib` look like an LLVM install for bpf-linker's build script. Kept after
/// install: the binary finds libLLVM through a runpath into this directory.
fn link_prefix(prefix: &Path, lib: &Path) -> Result<()> {
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    let file_name = lib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = lib_dir.join(name);
        // symlink_metadata sees dangling links too, which a nightly update leaves behind.
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link)
                .with_context(|| format!("cannot replace stale {}", link.display()))?;
        }
        symlink(lib, &link).with_context(|| format!("cannot create symlink {}", link.display()))?;
    }
    Ok(())
}
