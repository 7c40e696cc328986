//! Fixed-rate keep-alive requests for latency: `conns` connections from distinct sources, each
//! sending on its own schedule so the total is `rate` per second. Latency counts from the
//! scheduled send time, so a stalled answer also delays (and is charged to) the requests behind
//! it, as in wrk2: queueing is not hidden. The CPU the whole machine spent is read over the
//! same window, for CPU time per request.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::Socket;

use super::{
    LoadResult, Percentiles,
    http::{self, Read},
    poll::{EDGE, Epoll, HANGUP, READ},
};
use crate::{cpu, topology::Net};

const STALL: Duration = Duration::from_secs(3);

struct Conn {
    socket: Socket,
    /// The request it sends, again and again.
    request: Vec<u8>,
    buf: Vec<u8>,
    due: Instant,
    /// Scheduled send time of the request in flight.
    in_flight: Option<Instant>,
}

pub fn run(
    targets: &[SocketAddr],
    sources: Net,
    conns: usize,
    rate: f64,
    duration: Duration,
    xff: bool,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        rate > 0.0 && conns > 0,
        "rate and connections must be positive"
    );
    let mut epoll = Epoll::new(conns)?;
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let warmup = (duration / 5).min(Duration::from_millis(500));
    let mut list = Vec::with_capacity(conns);
    for i in 0..conns {
        let i32 = u32::try_from(i).context("too many connections")?;
        let dst = *targets.get(i % targets.len().max(1)).context("no target")?;
        let src = sources.addr(i32);
        let socket = open(src, dst).with_context(|| format!("connect {src} -> {dst}"))?;
        epoll.add(socket.as_raw_fd(), READ | EDGE | HANGUP, i as u64)?;
        list.push((
            socket,
            http::forwarded(http::KEEP_ALIVE, xff.then_some(src)),
        ));
    }
    let start = Instant::now();
    let mut conns: Vec<Conn> = list
        .into_iter()
        .enumerate()
        .map(|(i, (socket, request))| Conn {
            socket,
            request,
            buf: Vec::with_capacity(512),
            // Spread the first sends evenly over one period.
            due: start + period.mul_f64(i as f64 / conns as f64),
            in_flight: None,
        })
        .collect();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut cpu_start = None;
    let mut latencies: Vec<u64> = Vec::with_capacity((rate * duration.as_secs_f64()) as usize + 16);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if cpu_start.is_none() && now >= measure_from {
            cpu_start = Some(cpu::busy()?);
        }
        let mut next = end;
        for c in &mut conns {
            if c.in_flight.is_none() {
                if c.due <= now {
                    http::send(&c.socket, &c.request).context("send")?;
                    c.in_flight = Some(c.due);
                    c.due += period;
                } else {
                    next = next.min(c.due);
                }
            } else if c.in_flight.is_some_and(|t| now.duration_since(t) > STALL) {
                anyhow::bail!("no answer within {STALL:?} at {rate:.0} requests/s");
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        for (token, _) in epoll.wait(wait.min(Duration::from_millis(100)))? {
            let c = conns
                .get_mut(usize::try_from(token).unwrap_or(usize::MAX))
                .context("unknown epoll token")?;
            if matches!(http::read_available(&c.socket, &mut c.buf)?, Read::Eof) {
                anyhow::bail!("server closed a keep-alive connection");
            }
            while let Some((len, _)) = http::parse_response(&c.buf)? {
                let sent = c.in_flight.take().context("an answer nobody asked for")?;
                let done = Instant::now();
                if sent >= measure_from {
                    latencies.push(u64::try_from(done.duration_since(sent).as_nanos())?);
                }
                c.buf.drain(..len);
            }
        }
    }
    let cpu_secs = cpu::busy()?
        .saturating_sub(cpu_start.unwrap_or_default())
        .as_secs_f64();
    let latency = Percentiles::of(&mut latencies).context("no answer in the measured window")?;
    Ok(LoadResult {
        ops: latencies.len() as u64,
        secs: duration.as_secs_f64(),
        cpu_secs,
        latency: Some(latency),
        ..LoadResult::default()
    })
}

/// A keep-alive connection, connected before the clock starts.
fn open(src: std::net::Ipv4Addr, dst: SocketAddr) -> anyhow::Result<Socket> {
    let socket = http::connect(src, dst)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    // Writable means connected (or failed: take_error says which).
    let mut epoll = Epoll::new(1)?;
    epoll.add(socket.as_raw_fd(), libc::EPOLLOUT as u32, 0)?;
    while Instant::now() < deadline {
        if !epoll.wait(Duration::from_millis(100))?.is_empty() {
            if let Some(e) = socket.take_error()? {
                return Err(e.into());
            }
            return Ok(socket);
        }
    }
    anyhow::bail!("not connected within 3 s")
}
