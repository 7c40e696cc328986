//! `cargo xtask setup`: installs only what is missing, so it is safe to run on every build.

use std::fs;

use anyhow::{Context, Result};

use crate::{bpf_linker, sh};

/// Debian packages the integration tests and the demo shell out to.
/// Append here when tests start needing more tools.
pub const DEB_PACKAGES: &[&str] = &[
    "ethtool",
    "iproute2",
    "util-linux",
    "procps",
    "redis-server",
    "nftables",
    // `cargo xtask package` (dpkg-shlibdeps, strip) and its tests (systemd-analyze verify,
    // the unit's system-call filter checked against strace).
    "dpkg-dev",
    "systemd",
    "strace",
    // promtool: tests/observability.rs checks deploy/prometheus and the /metrics scrape.
    "prometheus",
    "nginx",
    "haproxy",
    // A DNS server the tests change records on: backends from DNS (tests/policy.rs).
    "dnsmasq-base",
    // Routing daemons exporting the VIPs sticky announces (tests/announce.rs, deploy/).
    "bird2",
    "frr",
];

const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker::ensure()?;
    bpffs()?;
    deb_packages(DEB_PACKAGES)?;
    Ok(())
}

pub fn nightly() -> Result<()> {
    let list = sh::output(sh::cmd("rustup")?.args(["toolchain", "list"]))
        .context("listing toolchains failed; install rustup from https://rustup.rs")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        println!("ok: nightly toolchain already installed");
        return Ok(());
    }
    println!("installing: nightly toolchain");
    sh::run(sh::cmd("rustup")?.args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("installing the nightly toolchain failed; check network access")
}

fn rust_src() -> Result<()> {
    let installed = sh::output(sh::cmd("rustup")?.args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    // Lines look like `rust-src` (no host suffix, unlike other components).
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("ok: nightly rust-src already installed");
        return Ok(());
    }
    println!("installing: nightly rust-src (needed for -Z build-std=core)");
    sh::run(sh::cmd("rustup")?.args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to nightly failed; check network access")
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts failed")?;
    let mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    if mounted {
        println!("ok: bpffs already mounted at {BPFFS}");
        return Ok(());
    }
    if !sh::is_root() {
        println!("note: bpffs is not mounted at {BPFFS}; as root run `mount -t bpf bpf {BPFFS}`");
        return Ok(());
    }
    println!("installing: mounting bpffs at {BPFFS}");
    sh::run(sh::cmd("mount")?.args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs failed; does {BPFFS} exist?"))
}

/// Installs whichever of `packages` are missing (one `apt-get update` first, only then).
pub fn deb_packages(packages: &[&str]) -> Result<()> {
    if sh::find_in_path("dpkg-query")?.is_none() {
        println!(
            "note: dpkg-query not found; install these tools yourself: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let mut missing = Vec::new();
    for &pkg in packages {
        if deb_installed(pkg)? {
            println!("ok: {pkg} already installed");
        } else {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !sh::is_root() {
        println!("note: missing packages: {list}; as root run `apt-get install {list}`");
        return Ok(());
    }
    println!("installing: {list}");
    // Fresh containers ship without package lists, so install would find nothing.
    sh::run(sh::cmd("apt-get")?.arg("update")).context("`apt-get update` failed; check network")?;
    sh::run(
        sh::cmd("apt-get")?
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("installing {list} failed; install them by hand"))
}

fn deb_installed(pkg: &str) -> Result<bool> {
    // Exits non-zero for packages dpkg has never heard of, which also means "missing".
    let out = sh::cmd("dpkg-query")?
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("could not run dpkg-query")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}
