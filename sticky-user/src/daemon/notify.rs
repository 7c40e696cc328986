//! systemd's notify protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without
//! the variable every call does nothing, so the daemon behaves the same outside systemd.
//!
//! Written here rather than linked from libsystemd: it is one `sendto`, and the daemon must
//! not depend on a C library for it.

use std::{
    os::{linux::net::SocketAddrExt as _, unix::net},
    sync::OnceLock,
    time::Duration,
};

use tracing::debug;

use crate::clock::monotonic_ns;

struct Notifier {
    socket: net::UnixDatagram,
    addr: net::SocketAddr,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
}

/// Read once: `$NOTIFY_SOCKET` does not change while the process runs.
fn notifier() -> Option<&'static Notifier> {
    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
    NOTIFIER.get_or_init(from_env).as_ref()
}

fn from_env() -> Option<Notifier> {
    let target = std::env::var("NOTIFY_SOCKET").ok()?;
    let addr = match target.strip_prefix('@') {
        Some(name) => net::SocketAddr::from_abstract_name(name.as_bytes()),
        None if target.starts_with('/') => net::SocketAddr::from_pathname(&target),
        // vsock and other forms are for VMs and containers, not for this daemon.
        None => return None,
    }
    .ok()?;
    let socket = net::UnixDatagram::unbound().ok()?;
    Some(Notifier {
        socket,
        addr,
        watchdog: watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        ),
    })
}

/// How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises. A
/// `WATCHDOG_PID` naming another process means the watchdog is not ours.
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

fn send(message: &str) {
    let Some(n) = notifier() else {
        return;
    };
    // A lost notification must never stop the daemon: systemd then times the unit out.
    if let Err(e) = n.socket.send_to_addr(message.as_bytes(), &n.addr) {
        debug!("sd_notify {message:?}: {e}");
    }
}

/// Attached, serving and handling signals: `systemctl start` returns now.
pub fn ready() {
    send("READY=1");
}

/// A line `systemctl status` shows.
pub fn status(line: &str) {
    send(&format!("STATUS={line}"));
}

/// Runs a reload between `RELOADING=1` and `READY=1`, so `systemctl reload` (and
/// `Type=notify-reload`) waits for it; a refused reload also ends in `READY=1`, since the
/// running configuration still serves.
pub fn around_reload<T>(reload: impl FnOnce() -> T) -> T {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        monotonic_ns() / 1_000
    ));
    let result = reload();
    send("READY=1");
    result
}

pub fn stopping() {
    send("STOPPING=1");
}

/// The interval at which the daemon's loop should call [`watchdog`], if systemd watches it.
pub fn watchdog_interval() -> Option<Duration> {
    notifier()?.watchdog
}

/// Sent from the daemon's own loop: a loop stuck in a handler stops pinging and systemd
/// restarts the unit.
pub fn watchdog() {
    send("WATCHDOG=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_timeout_and_only_for_this_process() {
        let half = Some(Duration::from_millis(200));
        assert_eq!(watchdog_period(Some("400000"), None, 7), half);
        assert_eq!(watchdog_period(Some("400000"), Some("7"), 7), half);
        assert_eq!(watchdog_period(Some("400000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }
}
