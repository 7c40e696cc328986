//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH`: one system call per few thousand entries,
//! where aya's iterator makes two per entry (next key, then its value). Status and metrics
//! read the flow and affinity tables whole: with 1M flows and clients that walk took 7 s of
//! the daemon's CPU through the iterator (`cargo xtask bench`, scale section).
//!
//! aya 0.14 has no batch operations, so this is the raw command, for hash maps (plain and
//! LRU, not per-CPU), whose batch position is a bucket index. Entries are handed over as
//! they arrive, so a walk that only counts keeps nothing of them.

use std::{
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const CHUNK: usize = 4096;
/// A bucket with more entries than this many per call cannot happen in a sane map; past it
/// the walk gives up rather than grow without bound.
const MAX_CHUNK: usize = 1 << 20;

/// `bpf_attr`'s `batch` member (`BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Hands every entry of the hash map `map` to `each`, read in batches, and returns how many
/// it handed over. An error with none handed over means the kernel refused the command
/// (kernels before 5.6 have none): the caller walks the map the slow way.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    mut each: impl FnMut(&K, &V),
) -> Result<usize, (std::io::Error, usize)> {
    let fd = map.fd().as_fd().as_raw_fd();
    let mut chunk = CHUNK;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The position between calls: a bucket index (u32) for hash maps; room to spare.
    let mut position = [0u64; 8];
    let mut next = [0u64; 8];
    let mut started = false;
    let mut handed = 0;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if started { position.as_ptr() as u64 } else { 0 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: u32::try_from(fd).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values of the map's types,
        // and at position buffers larger than the kernel writes; they outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {}
            // One bucket holds more entries than asked for: ask for more.
            Some(libc::ENOSPC) if chunk < MAX_CHUNK => {
                chunk *= 2;
                continue;
            }
            // Another error (a bucket lock not taken): what was copied before it still counts.
            Some(_) => {}
        }
        let n = (attr.count as usize).min(chunk);
        for (k, v) in keys.iter().zip(&values).take(n) {
            // SAFETY: the kernel filled the first `count` keys and values (it zeroes `count`
            // before it copies anything, whatever the call's outcome).
            let (k, v) = unsafe { (k.assume_init_ref(), v.assume_init_ref()) };
            each(k, v);
        }
        handed += n;
        if let Some(e) = err {
            return match e.raw_os_error() {
                // That was the last batch.
                Some(libc::ENOENT) => Ok(handed),
                _ => Err((e, handed)),
            };
        }
        position = next;
        started = true;
    }
}
