//! `sticky trace`: follows one client through a running instance's data path. The tracer
//! opens the instance's pinned trace maps itself (no daemon involved, so it also works on a
//! data path left running with `sticky stop --keep`), names the client in `STICKY_TRACE` and
//! reads what the programs report into `STICKY_TRACE_EVENTS`. Dropping the tracer clears the
//! client again: with nobody traced the programs only do one array lookup per VIP packet.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, RingBuf};
use sticky_common::{
    Addr16,
    maps::{self as names, NO_BACKEND, Vip, VipKey},
    trace::{
        TRACE, TRACE_CONFIRMED, TRACE_DROPPED, TRACE_ESTABLISHED, TRACE_EVENTS,
        TRACE_FLAG_HANDSHAKE, TRACE_FLAG_RST, TRACE_FLAG_SYN, TRACE_FLAG_UDP, TRACE_NEW_FLOW,
        TRACE_REASON_AFFINITY, TRACE_REASON_NAT_ERROR, TRACE_REASON_NO_BACKEND, TRACE_REASON_TABLE,
        TRACE_REPLY, TraceEvent, TraceTarget,
    },
};

use crate::datapath::Pins;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "no instance '{instance}' runs here (nothing pinned at {}): start it with `sticky run \
         --instance {instance}`, or name the running one with --instance",
        dir.display()
    )]
    NoInstance { instance: String, dir: PathBuf },
    #[error(
        "instance '{instance}' was started by a sticky without tracing (no {}): restart it with \
         this version (`sticky stop --keep`, then `sticky run` again; connections are kept)",
        path.display()
    )]
    Unsupported { instance: String, path: PathBuf },
    #[error("open {}: {source} (tracing needs root, or CAP_BPF)", path.display())]
    Open { path: PathBuf, source: MapError },
    #[error(
        "{client} is an IPv{} address, but instance '{instance}' balances only IPv{} VIPs: \
         none of its clients can have it",
        if client.is_ipv4() { 4 } else { 6 },
        if client.is_ipv4() { 6 } else { 4 }
    )]
    WrongFamily { instance: String, client: IpAddr },
    #[error(
        "a trace of {client} is already running (pid {pid}); one trace at a time: stop it first"
    )]
    Busy { client: IpAddr, pid: u32 },
    #[error("trace map: {0}")]
    Map(#[from] MapError),
}

/// A running trace. Dropping it stops the trace.
pub struct Tracer {
    target: Array<MapData, TraceTarget>,
    events: RingBuf<MapData>,
    /// Wall clock minus `CLOCK_MONOTONIC`, to date the programs' timestamps.
    epoch_offset_ns: i128,
}

impl Tracer {
    /// Starts tracing `client` on the instance pinned under `pins`.
    pub fn open(pins: &Pins, instance: &str, client: IpAddr) -> Result<Self, TraceError> {
        if !pins.exist() {
            return Err(TraceError::NoInstance {
                instance: instance.into(),
                dir: pins.dir.clone(),
            });
        }
        let open = |name: &str| {
            let path = pins.map(name);
            if !path.exists() {
                return Err(TraceError::Unsupported {
                    instance: instance.into(),
                    path,
                });
            }
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| TraceError::Open { path, source })
        };
        let vips: HashMap<MapData, VipKey, Vip> = HashMap::try_from(open(names::VIPS)?)?;
        let families: Vec<bool> = vips
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.addr.is_v4())
            .collect();
        if !families.is_empty() && !families.contains(&client.is_ipv4()) {
            return Err(TraceError::WrongFamily {
                instance: instance.into(),
                client,
            });
        }
        let target = Array::try_from(open(TRACE)?)?;
        let events = RingBuf::try_from(open(TRACE_EVENTS)?)?;
        Self::start(target, events, client)
    }

    /// Starts tracing `client` with these maps (the pinned ones, or a loaded object's).
    pub fn start(
        mut target: Array<MapData, TraceTarget>,
        mut events: RingBuf<MapData>,
        client: IpAddr,
    ) -> Result<Self, TraceError> {
        let current = target.get(&0, 0)?;
        if current.enabled != 0 && alive(current.pid) {
            return Err(TraceError::Busy {
                client: current.client.to_ip(),
                pid: current.pid,
            });
        }
        // Whatever an earlier trace left unread is not this trace's.
        while events.next().is_some() {}
        let traced = TraceTarget {
            client: Addr16::from_ip(client),
            enabled: 1,
            pid: std::process::id(),
        };
        target.set(0, traced, 0)?;
        Ok(Self {
            target,
            events,
            epoch_offset_ns: epoch_offset_ns(),
        })
    }

    /// The next event already reported, if any.
    pub fn next_event(&mut self) -> Option<TraceEvent> {
        let item = self.events.next()?;
        (item.len() >= size_of::<TraceEvent>())
            // SAFETY: the record holds a `TraceEvent` (plain integers) written by the programs;
            // the read copes with any alignment.
            .then(|| unsafe { item.as_ptr().cast::<TraceEvent>().read_unaligned() })
    }

    /// Waits up to `timeout` for events; `false` on timeout or a signal.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fd = libc::pollfd {
            fd: self.events.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, ms) > 0 }
    }

    /// Unix time in ns of an event's timestamp.
    pub fn unix_ns(&self, event: &TraceEvent) -> i128 {
        i128::from(event.time_ns) + self.epoch_offset_ns
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.target.set(0, TraceTarget::default(), 0);
    }
}

fn alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn epoch_offset_ns() -> i128 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec we own.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC)
}

/// An event in the words `sticky trace` prints, and its JSON form.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// `new-flow`, `established`, `confirmed`, `reply`, `dropped`.
    pub event: &'static str,
    pub backend: Option<SocketAddr>,
    pub backend_id: Option<u32>,
    /// New flow: `affinity` or `table`; dropped: `no-backend` or `rewrite-failed`.
    pub reason: Option<&'static str>,
    /// New flow by the table: its slot.
    pub slot: Option<u32>,
    pub syn: bool,
    pub rst: bool,
    /// Reply: the flow is still in its handshake.
    pub handshake: bool,
    /// A UDP datagram (else a TCP segment).
    pub udp: bool,
}

impl Decision {
    pub fn of(e: &TraceEvent) -> Self {
        let at = |addr: Addr16, port_be: u16| SocketAddr::new(addr.to_ip(), u16::from_be(port_be));
        let has_backend = e.backend_id != NO_BACKEND;
        Self {
            client: at(e.client, e.client_port_be),
            vip: at(e.vip, e.vip_port_be),
            event: match e.kind {
                TRACE_NEW_FLOW => "new-flow",
                TRACE_ESTABLISHED => "established",
                TRACE_CONFIRMED => "confirmed",
                TRACE_REPLY => "reply",
                TRACE_DROPPED => "dropped",
                _ => "unknown",
            },
            backend: has_backend.then(|| at(e.backend, e.backend_port_be)),
            backend_id: has_backend.then_some(e.backend_id),
            reason: match e.reason {
                TRACE_REASON_AFFINITY => Some("affinity"),
                TRACE_REASON_TABLE => Some("table"),
                TRACE_REASON_NO_BACKEND => Some("no-backend"),
                TRACE_REASON_NAT_ERROR => Some("rewrite-failed"),
                _ => None,
            },
            slot: (e.reason == TRACE_REASON_TABLE).then_some(e.slot),
            syn: e.flags & TRACE_FLAG_SYN != 0,
            rst: e.flags & TRACE_FLAG_RST != 0,
            handshake: e.flags & TRACE_FLAG_HANDSHAKE != 0,
            udp: e.flags & TRACE_FLAG_UDP != 0,
        }
    }

    /// The line `sticky trace` prints after the time, e.g. `198.51.100.7:40001 ->
    /// 203.0.113.10:80 new flow -> 10.0.0.12:3000 (table slot 4711)`.
    pub fn describe(&self) -> String {
        let proto = if self.udp { "udp " } else { "" };
        let mut s = format!("{proto}{} -> {} ", self.client, self.vip);
        let backend = self
            .backend
            .map_or_else(|| "?".to_string(), |b| b.to_string());
        let _ = match (self.event, self.reason) {
            ("new-flow", reason) => {
                let why = match (reason, self.slot) {
                    (Some("affinity"), _) => "affinity".to_string(),
                    (_, Some(slot)) => format!("table slot {slot}"),
                    _ => "?".to_string(),
                };
                let state = if self.syn || self.udp {
                    ""
                } else {
                    "; a mid-connection packet with no state"
                };
                write!(s, "new flow -> {backend} ({why}{state})")
            }
            ("established", _) => write!(s, "established -> {backend}"),
            ("confirmed", _) => write!(s, "handshake confirmed -> {backend}"),
            ("reply", _) => {
                let note = match (self.handshake, self.rst) {
                    (true, true) => " (reset in the handshake: the backend refused)",
                    (false, true) => " (reset)",
                    (true, false) => " (handshake)",
                    (false, false) => "",
                };
                write!(s, "reply rewritten {backend} -> {}{note}", self.vip)
            }
            ("dropped", Some("no-backend")) => write!(s, "dropped: no backend in service"),
            ("dropped", _) => write!(s, "dropped: rewrite failed (-> {backend})"),
            _ => write!(s, "unknown event"),
        };
        s
    }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in ns.
pub fn clock_time(unix_ns: i128) -> String {
    let ms = unix_ns.div_euclid(1_000_000);
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u8, reason: u8, flags: u8) -> TraceEvent {
        let addr = |s: &str| Addr16::from_ip(s.parse().unwrap());
        TraceEvent {
            client: addr("198.51.100.7"),
            client_port_be: 40001u16.to_be(),
            vip: addr("203.0.113.10"),
            vip_port_be: 80u16.to_be(),
            backend: addr("10.0.0.12"),
            backend_port_be: 3000u16.to_be(),
            backend_id: 2,
            kind,
            reason,
            flags,
            slot: 4711,
            ..TraceEvent::default()
        }
    }

    fn line(e: TraceEvent) -> String {
        Decision::of(&e).describe()
    }

    #[test]
    fn lines_say_what_happened_and_why() {
        let head = "198.51.100.7:40001 -> 203.0.113.10:80";
        assert_eq!(
            line(event(TRACE_NEW_FLOW, TRACE_REASON_TABLE, TRACE_FLAG_SYN)),
            format!("{head} new flow -> 10.0.0.12:3000 (table slot 4711)")
        );
        assert_eq!(
            line(event(TRACE_NEW_FLOW, TRACE_REASON_AFFINITY, TRACE_FLAG_SYN)),
            format!("{head} new flow -> 10.0.0.12:3000 (affinity)")
        );
        assert!(line(event(TRACE_NEW_FLOW, TRACE_REASON_TABLE, 0)).contains("mid-connection"));
        assert_eq!(
            line(event(TRACE_ESTABLISHED, 0, 0)),
            format!("{head} established -> 10.0.0.12:3000")
        );
        assert_eq!(
            line(event(TRACE_REPLY, 0, 0)),
            format!("{head} reply rewritten 10.0.0.12:3000 -> 203.0.113.10:80")
        );
        let refused = line(event(TRACE_REPLY, 0, TRACE_FLAG_HANDSHAKE | TRACE_FLAG_RST));
        assert!(refused.contains("refused"), "{refused}");
        let mut none = event(TRACE_DROPPED, TRACE_REASON_NO_BACKEND, TRACE_FLAG_SYN);
        none.backend_id = NO_BACKEND;
        assert_eq!(line(none), format!("{head} dropped: no backend in service"));
        assert_eq!(Decision::of(&none).backend, None);
    }

    #[test]
    fn clock_time_is_utc_time_of_day() {
        let ns = (((25 * 24 + 12) * 3600 + 61) * 1000 + 123_i128) * 1_000_000;
        assert_eq!(clock_time(ns), "12:01:01.123");
    }
}
