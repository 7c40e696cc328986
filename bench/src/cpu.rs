//! Machine-wide CPU time from `/proc/stat` (every CPU, every process, softirqs included), and
//! CPU pinning for the processes we start.

use std::time::Duration;

use anyhow::Context as _;

/// CPU time spent not idle since boot, summed over all CPUs: user, nice, system, irq and
/// softirq (guest time is inside user; iowait and steal are not ours).
pub fn busy() -> anyhow::Result<Duration> {
    Ok(times()?.busy)
}

/// Machine-wide CPU times since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Times {
    pub busy: Duration,
    /// Time the hypervisor ran something else while our vCPUs wanted to run.
    pub steal: Duration,
    pub total: Duration,
}

pub fn times() -> anyhow::Result<Times> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse(&stat, clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

fn parse(stat: &str, hz: u64) -> anyhow::Result<Times> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no `cpu` line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parse /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest, guest_nice: inside user)
    let sum = |idx: &[usize]| {
        let ticks: u64 = idx
            .iter()
            .map(|&i| fields.get(i).copied().unwrap_or(0))
            .sum();
        Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / hz))
    };
    Ok(Times {
        busy: sum(&[0, 1, 2, 5, 6]),
        steal: sum(&[7]),
        total: sum(&[0, 1, 2, 3, 4, 5, 6, 7]),
    })
}

/// One process's line of `/proc/<pid>/stat`: what the bench reads of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    pub ppid: i32,
    /// utime + stime of all its threads.
    pub cpu: Duration,
    /// Since boot, in clock ticks: tells a process from a later one with its PID.
    pub start_time: u64,
}

/// `/proc/<pid>/stat`, `None` once the process is gone.
pub fn process(pid: i32) -> Option<Process> {
    parse_process(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        clock_ticks(),
    )
}

fn parse_process(stat: &str, hz: u64) -> Option<Process> {
    // After the command's closing parenthesis: state is field 3, ppid 4, utime 14, stime 15,
    // starttime 22.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |k: usize| f.get(k - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    Some(Process {
        ppid: i32::try_from(field(4)?).ok()?,
        cpu: Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / hz)),
        start_time: field(22)?,
    })
}

/// Pins the calling thread (and what it spawns afterwards) to `cpu`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPUs online on the machine (not only those this thread is pinned to).
pub fn count() -> usize {
    // SAFETY: no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_line_with_spaces_in_its_name() {
        let line = "4242 (node seeds.js) S 4000 4242 4000 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 11 0 987654 1000000 2000";
        let p = parse_process(line, 100).unwrap();
        assert_eq!(p.ppid, 4000);
        assert_eq!(p.cpu, Duration::from_secs(3));
        assert_eq!(p.start_time, 987654);
        assert!(parse_process("4242 (x) S", 100).is_none());
    }

    #[test]
    fn busy_counts_user_system_and_interrupts() {
        let stat = "cpu  100 5 50 1000 7 3 2 9 0 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n";
        let t = parse(stat, 100).unwrap();
        assert_eq!(t.busy, Duration::from_millis(1600));
        assert_eq!(t.steal, Duration::from_millis(90));
        assert_eq!(t.total, Duration::from_millis(11760));
        assert!(parse("intr 1\n", 100).is_err());
    }
}
