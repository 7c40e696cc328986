//! Small-frame round trips on one connection, as a socket.io message exchange: write a frame,
//! wait for it to come back, repeat. With `head`, after an HTTP upgrade (`crate::upgrade`).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use socket2::{Domain, Socket, Type};

use super::{LoadResult, Percentiles};
use crate::upgrade::{self, Kind};

pub fn run(
    src: Ipv4Addr,
    dst: SocketAddr,
    size: usize,
    head: bool,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    socket
        .connect_timeout(&dst.into(), Duration::from_secs(3))
        .with_context(|| format!("connect {src} -> {dst}"))?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut stream: std::net::TcpStream = socket.into();
    if head {
        upgrade::open(&mut stream, Kind::Echo)?;
    }
    let frame: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut once = || -> anyhow::Result<()> {
        stream.write_all(&frame).context("send frame")?;
        stream.read_exact(&mut back).context("read echo")?;
        anyhow::ensure!(back == frame, "echo returned different bytes");
        Ok(())
    };
    for _ in 0..200 {
        once()?;
    }
    let start = Instant::now();
    let end = start + duration;
    let mut rtts = Vec::new();
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        once()?;
        rtts.push(u64::try_from(t.elapsed().as_nanos())?);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(LoadResult {
        ops: rtts.len() as u64,
        secs,
        latency: Some(Percentiles::of(&mut rtts).context("no round trip")?),
        ..LoadResult::default()
    })
}
