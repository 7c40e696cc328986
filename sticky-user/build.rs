use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the eBPF object into OUT_DIR (aya-build), or, when `AYA_BUILD_SKIP` is set (plain
/// `cargo check`/`clippy`/`build`, see .cargo/config.toml), writes an empty placeholder so the
/// crate still compiles; the binary then says to build with `cargo xtask build`.
fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("sticky-ebpf");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, []).with_context(|| format!("write {}", object.display()))?;
        return Ok(());
    }
    let cargo_metadata_dir = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = PathBuf::from(cargo_metadata_dir)
        .parent()
        .ok_or_else(|| anyhow!("sticky-user has no parent folder"))?
        .join("sticky-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "sticky-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
