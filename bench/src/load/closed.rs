//! Closed-loop new-connection load: `concurrency` connections in flight, each one request with
//! `Connection: close`, sources cycling through the /20. In handshake mode every session is
//! two connections from one source (socket.io's open request, then the one carrying the
//! session id) and both must reach the same backend.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::Socket;

use super::{
    LoadResult,
    http::{self, Read},
    poll::{EDGE, Epoll, HANGUP, READ, WRITE},
};
use crate::{cpu, topology::Net};

/// A connection that takes longer than this is counted as an error and replaced.
const STALL: Duration = Duration::from_secs(2);

struct Slot {
    socket: Socket,
    source: u32,
    connected: bool,
    /// 0: a plain request or the handshake's first; 1: the handshake's second.
    step: u8,
    first_backend: Vec<u8>,
    buf: Vec<u8>,
    started: Instant,
}

pub struct Closed<'a> {
    targets: &'a [SocketAddr],
    sources: Net,
    handshake: bool,
    /// Requests carry `X-Forwarded-For: <source>`.
    xff: bool,
    epoll: Epoll,
    slots: Vec<Option<Slot>>,
    next_source: u32,
    /// Counts calls of `step`: a fresh session id for every handshake's second request.
    steps: u64,
    done: u64,
    errors: u64,
    split: u64,
    first_error: Option<String>,
}

impl<'a> Closed<'a> {
    pub fn run(
        targets: &'a [SocketAddr],
        sources: Net,
        concurrency: usize,
        duration: Duration,
        handshake: bool,
        xff: bool,
    ) -> anyhow::Result<LoadResult> {
        let mut me = Self {
            targets,
            sources,
            handshake,
            xff,
            epoll: Epoll::new(concurrency * 2)?,
            slots: (0..concurrency).map(|_| None).collect(),
            next_source: 0,
            steps: 0,
            done: 0,
            errors: 0,
            split: 0,
            first_error: None,
        };
        let start = Instant::now();
        let cpu_start = cpu::busy()?;
        let end = start + duration;
        for i in 0..concurrency {
            me.open(i, None, 0);
        }
        let mut last_scan = start;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            for (token, events) in me.epoll.wait(left.min(Duration::from_millis(100)))? {
                me.progress(usize::try_from(token).unwrap_or(usize::MAX), events);
            }
            let now = Instant::now();
            if now.duration_since(last_scan) > Duration::from_millis(100) {
                last_scan = now;
                me.replace_stalled(now);
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu_secs = cpu::busy()?.saturating_sub(cpu_start).as_secs_f64();
        if me.done == 0 {
            anyhow::bail!(
                "no request completed ({} errors, first: {})",
                me.errors,
                me.first_error.as_deref().unwrap_or("none")
            );
        }
        Ok(LoadResult {
            ops: me.done,
            secs,
            errors: me.errors,
            split: me.split,
            cpu_secs,
            first_error: me.first_error,
            ..LoadResult::default()
        })
    }

    fn target(&self, source: u32) -> anyhow::Result<SocketAddr> {
        let n = u32::try_from(self.targets.len()).unwrap_or(1).max(1);
        self.targets
            .get((source % n) as usize)
            .copied()
            .context("no target")
    }

    /// Opens slot `i`: the handshake's second step reuses its source, anything else takes the
    /// next one.
    fn open(&mut self, i: usize, source: Option<u32>, step: u8) {
        let source = source.unwrap_or_else(|| {
            let s = self.next_source;
            self.next_source = (s + 1) % self.sources.len();
            s
        });
        let opened = self.target(source).and_then(|dst| {
            let socket = http::connect(self.sources.addr(source), dst)
                .with_context(|| format!("connect {} -> {dst}", self.sources.addr(source)))?;
            self.epoll
                .add(socket.as_raw_fd(), READ | WRITE | EDGE | HANGUP, i as u64)?;
            Ok(socket)
        });
        let first_backend = match self.slots.get_mut(i).and_then(Option::take) {
            Some(old) if step == 1 => old.first_backend,
            _ => Vec::new(),
        };
        match opened {
            Ok(socket) => {
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = Some(Slot {
                        socket,
                        source,
                        connected: false,
                        step,
                        first_backend,
                        buf: Vec::with_capacity(256),
                        started: Instant::now(),
                    });
                }
            }
            Err(e) => self.error(&e),
        }
    }

    fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn progress(&mut self, i: usize, events: u32) {
        match self.step(i, events) {
            Ok(Some((source, step))) => self.open(i, source, step),
            Ok(None) => {}
            Err(e) => {
                self.error(&e);
                self.open(i, None, 0);
            }
        }
    }

    /// Advances slot `i`; returns what to open next when its connection is finished.
    fn step(&mut self, i: usize, events: u32) -> anyhow::Result<Option<(Option<u32>, u8)>> {
        let (handshake, xff, sources) = (self.handshake, self.xff, self.sources);
        self.steps += 1;
        let session = self.steps;
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return Ok(None);
        };
        if !slot.connected {
            if let Some(e) = slot.socket.take_error()? {
                return Err(anyhow::Error::new(e).context("connect"));
            }
            if events & WRITE == 0 {
                return Ok(None);
            }
            slot.connected = true;
            let second;
            let request = match (handshake, slot.step) {
                (false, _) => http::CLOSE,
                (true, 0) => http::HANDSHAKE_OPEN,
                (true, _) => {
                    second = http::handshake_second(session);
                    &second
                }
            };
            let client = xff.then(|| sources.addr(slot.source));
            http::send(&slot.socket, &http::forwarded(request, client)).context("send")?;
        }
        let state = http::read_available(&slot.socket, &mut slot.buf).context("read")?;
        let Some((_, body)) = http::parse_response(&slot.buf)? else {
            if matches!(state, Read::Eof) {
                anyhow::bail!("connection closed before a full answer");
            }
            return Ok(None);
        };
        let backend = http::backend_id(slot.buf.get(body).unwrap_or_default()).to_vec();
        if handshake && slot.step == 0 {
            slot.first_backend = backend;
            return Ok(Some((Some(slot.source), 1)));
        }
        if handshake && slot.first_backend != backend {
            self.split += 1;
        }
        self.done += 1;
        Ok(Some((None, 0)))
    }

    fn replace_stalled(&mut self, now: Instant) {
        let stalled: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref()
                    .is_none_or(|s| now.duration_since(s.started) > STALL)
            })
            .map(|(i, _)| i)
            .collect();
        for i in stalled {
            if self.slots.get(i).is_some_and(Option::is_some) {
                self.error(&anyhow::anyhow!("no answer within {STALL:?}"));
            }
            self.open(i, None, 0);
        }
    }
}
