use which::which;

/// Rebuild the object when bpf-linker changes: the linker is part of what produces it.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
