//! `cargo xtask package`: the Debian package, built with `dpkg-deb` from a staged tree.
//!
//! Not cargo-deb: it would be one more crate of some 200 dependencies to build on every fresh
//! machine, and the package's man pages and completions come from running the built binary
//! anyway, so the tree has to be staged by hand; `dpkg-deb` and `dpkg-shlibdeps` are the tools
//! Debian itself builds packages with.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{build_cmd, setup, sh};

/// The package's only conffile: a commented example (each instance reads its own copy).
pub const CONFFILE: &str = "/etc/sticky/sticky.toml";
const UNIT: &str = "lib/systemd/system/sticky@.service";
/// Where each shell looks for completions of `sticky`.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/sticky"),
    ("zsh", "usr/share/zsh/vendor-completions/_sticky"),
    ("fish", "usr/share/fish/vendor_completions.d/sticky.fish"),
];

/// Runs setup, builds `sticky` with its eBPF object and packages it; returns the `.deb`.
pub fn run(release: bool) -> Result<PathBuf> {
    setup::run()?;
    let bin = build_cmd::build_sticky(release)?;
    package(&bin, release)
}

/// Packages an already built `bin`. Release packages are xz-compressed; debug ones (for the
/// tests) use fast gzip, as xz takes a minute over a debug binary.
pub fn package(bin: &Path, release: bool) -> Result<PathBuf> {
    let root = sh::workspace_root()?;
    let deploy = root.join("deploy");
    let out_dir = bin
        .parent()
        .context("the binary has no parent directory")?
        .join("debian");
    let stage = out_dir.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("remove {}", stage.display()))?;
    }

    let staged_bin = stage.join("usr/bin/sticky");
    copy(bin, &staged_bin, 0o755)?;
    // As in every Debian binary package; the eBPF object is data inside the binary and stays.
    sh::run(sh::cmd("strip")?.arg(&staged_bin))
        .context("strip the binary (binutils; `cargo xtask setup` installs it)")?;
    copy(
        &deploy.join("sticky.toml"),
        &stage.join(CONFFILE.trim_start_matches('/')),
        0o644,
    )?;
    copy(
        &deploy.join("systemd/sticky@.service"),
        &stage.join(UNIT),
        0o644,
    )?;
    copy(
        &deploy.join("debian/copyright"),
        &stage.join("usr/share/doc/sticky/copyright"),
        0o644,
    )?;
    man_pages(&staged_bin, &stage.join("usr/share/man/man1"))?;
    for (shell, path) in COMPLETIONS {
        let script = sh::output(sh::cmd(&staged_bin)?.args(["completions", shell]))?;
        write(&stage.join(path), &script, 0o644)?;
    }

    let debian = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &deploy.join("debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    write(&debian.join("conffiles"), &format!("{CONFFILE}\n"), 0o644)?;
    let arch = sh::output(sh::cmd("dpkg")?.arg("--print-architecture"))?;
    let control = fs::read_to_string(deploy.join("debian/control"))?
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@ARCH@", arch.trim())
        .replace("@SIZE@", &installed_kib(&stage)?.to_string())
        .replace("@DEPENDS@", &depends(&staged_bin, &out_dir)?);
    write(&debian.join("control"), &control, 0o644)?;
    dirs_0755(&stage)?;

    let deb = out_dir.join(format!(
        "sticky_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    ));
    let mut dpkg = sh::cmd("dpkg-deb")?;
    dpkg.arg("--root-owner-group");
    if release {
        dpkg.arg("-Zxz");
    } else {
        dpkg.args(["-Zgzip", "-z1"]);
    }
    dpkg.arg("--build").arg(&stage).arg(&deb);
    sh::run(&mut dpkg).context("dpkg-deb --build")?;
    println!("packaged: {}", deb.display());
    Ok(deb)
}

/// sticky.1 and one page per command, from the clap definitions, gzipped as Debian wants.
fn man_pages(bin: &Path, dir: &Path) -> Result<()> {
    sh::run(sh::cmd(bin)?.arg("man").arg("--dir").arg(dir))?;
    let mut pages = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        pages.push(path);
    }
    if pages.is_empty() {
        bail!("`sticky man --dir` wrote no pages");
    }
    // -n: no name or time stamp inside, so the same sources give the same package.
    sh::run(sh::cmd("gzip")?.args(["-9nf"]).args(&pages))
}

/// The shared libraries the binary needs, as package dependencies.
fn depends(bin: &Path, scratch: &Path) -> Result<String> {
    // dpkg-shlibdeps reads the package list from debian/control in its working directory.
    let dir = scratch.join("shlibdeps");
    write(
        &dir.join("debian/control"),
        "Source: sticky\n\nPackage: sticky\nArchitecture: any\n",
        0o644,
    )?;
    let out = sh::output(
        sh::cmd("dpkg-shlibdeps")?
            .current_dir(&dir)
            .arg("-O")
            .arg(format!("-e{}", bin.display()))
            .stderr(std::process::Stdio::null()),
    )
    .context("dpkg-shlibdeps (dpkg-dev; `cargo xtask setup` installs it)")?;
    let _ = fs::remove_dir_all(&dir);
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

fn installed_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            bytes += 1024 * installed_kib(&entry.path())?;
        } else {
            bytes += meta.len();
        }
    }
    Ok(bytes.div_ceil(1024))
}

/// dpkg-deb refuses a DEBIAN directory writable by others; a umask may have made it so.
fn dirs_0755(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs_0755(&entry.path())?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    mkdir_for(to)?;
    fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    mkdir_for(to)?;
    fs::write(to, text).with_context(|| format!("write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn mkdir_for(file: &Path) -> Result<()> {
    let dir: PathBuf = file.parent().context("a file without a directory")?.into();
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))
}
