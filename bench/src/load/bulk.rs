//! Bulk throughput with our own sender, so paths that need an HTTP head first (sticky's proxy
//! mode) are measured with the same tool as the others: one blocking thread per stream, large
//! writes, then a half-close; the sink answers how many bytes it received, which must be every
//! byte sent. The rate is the sinks' bytes over the time from the common start to the last
//! count, so bytes still queued at the deadline are counted with the time they took.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};

use super::LoadResult;
use crate::{
    topology::Net,
    upgrade::{self, Kind},
};

/// Bytes per write: large enough that the sender is not the bottleneck.
const WRITE: usize = 256 * 1024;

/// One stream's outcome.
struct Stream {
    start: Instant,
    done: Instant,
    sent: u64,
    counted: u64,
}

pub fn run(
    targets: &[SocketAddr],
    sources: Net,
    streams: usize,
    head: bool,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!((1..=64).contains(&streams), "--streams must be 1-64");
    anyhow::ensure!(!targets.is_empty(), "no target");
    // Everyone connects (and upgrades) before anyone sends.
    let ready = Arc::new(Barrier::new(streams));
    let threads: Vec<_> = (0..streams)
        .map(|i| {
            let src = sources.addr(u32::try_from(i).unwrap_or(0));
            let dst = targets.get(i % targets.len()).copied();
            let ready = ready.clone();
            std::thread::spawn(move || {
                let dst = dst.context("no target")?;
                one(src, dst, head, duration, &ready)
                    .with_context(|| format!("stream {i}: {src} -> {dst}"))
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        results.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a bulk thread panicked"))??,
        );
    }
    let start = results.iter().map(|s| s.start).min().context("no stream")?;
    let done = results.iter().map(|s| s.done).max().context("no stream")?;
    for s in &results {
        anyhow::ensure!(
            s.counted == s.sent,
            "sink counted {} bytes of {} sent",
            s.counted,
            s.sent
        );
    }
    Ok(LoadResult {
        ops: streams as u64,
        secs: done.duration_since(start).as_secs_f64(),
        bytes: results.iter().map(|s| s.counted).sum(),
        ..LoadResult::default()
    })
}

fn one(
    src: Ipv4Addr,
    dst: SocketAddr,
    head: bool,
    duration: Duration,
    ready: &Barrier,
) -> anyhow::Result<Stream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    socket
        .connect_timeout(&dst.into(), Duration::from_secs(3))
        .context("connect")?;
    // Generous: a spliced proxy may take a moment to flush at the end.
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut stream: TcpStream = socket.into();
    if head {
        upgrade::open(&mut stream, Kind::Sink)?;
    }
    let block: Vec<u8> = (0..WRITE).map(|i| (i % 251) as u8).collect();
    ready.wait();
    let start = Instant::now();
    let end = start + duration;
    let mut sent = 0u64;
    while Instant::now() < end {
        stream.write_all(&block).context("send")?;
        sent += WRITE as u64;
    }
    stream.shutdown(Shutdown::Write).context("half-close")?;
    let mut count = Vec::new();
    stream
        .read_to_end(&mut count)
        .context("read the sink's count")?;
    Ok(Stream {
        start,
        done: Instant::now(),
        sent,
        counted: upgrade::parse_count(&count)?,
    })
}
