//! Clocks shared with the kernel programs. They stamp flows and affinity with the coarse
//! monotonic clock (`bpf_ktime_get_coarse_ns`): `CLOCK_MONOTONIC` as of the last tick, at most
//! one tick behind it; times compared across the two are only ever taken to the second.

/// `CLOCK_MONOTONIC` in ns.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
