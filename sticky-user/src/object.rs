//! The eBPF object built by `cargo xtask build` and embedded in the binary.

/// Aligned so aya can parse the ELF in place.
#[repr(C, align(32))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/sticky-ebpf")));

/// The object's bytes, or an error telling how to build it when this binary was compiled by a
/// plain `cargo build` (which skips the eBPF build).
pub fn bytes() -> anyhow::Result<&'static [u8]> {
    if OBJECT.0.is_empty() {
        anyhow::bail!(
            "this sticky binary was built without its eBPF object (plain `cargo build` skips it): \
             build with `cargo xtask build` or run with `cargo xtask run`"
        );
    }
    Ok(&OBJECT.0)
}
