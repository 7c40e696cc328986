//! `sticky-bench serve`: a backend's servers. An HTTP/1.1 responder answering every request
//! with `<id> <client-ip>\n` (the rig's backend protocol, so `sticky_tests::HttpConn` reads it)
//! on tokio, fast enough not to be the bottleneck; a TCP echo server for round trips; an
//! upgrade port where an HTTP request head comes first (`crate::upgrade`), then echo or a
//! byte sink; and a plain byte sink.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
};

use crate::upgrade::{self, Kind};

/// Largest request head we accept; ours are under 100 bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Read size of the byte sinks: as large as the bulk sender's writes.
const SINK_READ: usize = 256 * 1024;

/// The plain sink's port on the backends (`sticky-bench load bulk` without `--head`).
pub const SINK_PORT: u16 = 8091;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Backend id written into every HTTP answer.
    #[arg(long)]
    id: String,
    /// HTTP port, on every address of the namespace.
    #[arg(long, default_value_t = crate::peers::Service::Http.backend_port())]
    http: u16,
    /// TCP echo port, on every address of the namespace.
    #[arg(long, default_value_t = crate::peers::Service::Echo.backend_port())]
    echo: u16,
    /// Upgrade port (request head, 101, then echo or sink), on every address.
    #[arg(long, default_value_t = crate::peers::Service::Upgrade.backend_port())]
    upgrade: u16,
    /// Plain byte sink (no head), on every address.
    #[arg(long, default_value_t = SINK_PORT)]
    sink: u16,
    /// Exit after this many seconds even if nobody stops us.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    // Follows the CPU affinity we were started with (`taskset`): one worker per allowed CPU.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async {
        let http = listen(args.http).await?;
        let echo = listen(args.echo).await?;
        let upgrade = listen(args.upgrade).await?;
        let sink = listen(args.sink).await?;
        println!(
            "ready: http :{} echo :{} upgrade :{} sink :{}",
            args.http, args.echo, args.upgrade, args.sink
        );
        let id: Arc<str> = args.id.as_str().into();
        tokio::select! {
            r = accept_loop(http, move |s| http_conn(s, id.clone())) => r,
            r = accept_loop(echo, echo_conn) => r,
            r = accept_loop(upgrade, upgrade_conn) => r,
            r = accept_loop(sink, |s| sink_conn(s, 0)) => r,
            () = tokio::time::sleep(Duration::from_secs(args.max_secs)) => Ok(()),
        }
    })
}

async fn listen(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let socket = TcpSocket::new_v6()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("bind {addr}"))?;
    socket
        .listen(4096)
        .with_context(|| format!("listen on {addr}"))
}

async fn accept_loop<F, Fut>(listener: TcpListener, handle: F) -> anyhow::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream));
            }
            // Out of descriptors or a connection reset before accept: keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn http_conn(mut stream: TcpStream, id: Arc<str>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = match stream.peer_addr()?.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let body = format!("{id} {peer}\n");
    let answer = |conn: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let (keep_alive, close) = (answer("keep-alive"), answer("close"));
    let mut buf = vec![0u8; MAX_HEAD];
    let mut have = 0;
    let mut out = Vec::new();
    loop {
        // Pipelined requests are answered in order, in one write.
        while let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = &buf[..end];
            let wants_close = head
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
            out.extend_from_slice(if wants_close { &close } else { &keep_alive });
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
            if wants_close {
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if have == buf.len() {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
    }
}

async fn echo_conn(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await.map(drop)
}

/// Reads a request head; answers 101 and becomes an echo or a sink, or answers 404.
async fn upgrade_conn(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let len = loop {
        if let Some(len) = upgrade::head_len(&buf) {
            break len;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Some(kind) = Kind::of_head(&buf[..len]) else {
        return stream.write_all(upgrade::REFUSED).await;
    };
    stream.write_all(upgrade::ANSWER).await?;
    // Bytes sent along with the head are the connection's first data.
    let early = &buf[len..];
    match kind {
        Kind::Echo => {
            stream.write_all(early).await?;
            echo_conn(stream).await
        }
        Kind::Sink => sink_conn(stream, early.len() as u64).await,
    }
}

/// Counts and drops bytes until the client's FIN, then writes the count (`already` included).
async fn sink_conn(mut stream: TcpStream, already: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; SINK_READ];
    let mut count = already;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        count += n as u64;
    }
    stream.write_all(format!("{count}\n").as_bytes()).await?;
    stream.shutdown().await
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(find(b"GET / HTTP/1.1\r\n\r\nx", b"\r\n\r\n"), Some(14));
        assert_eq!(find(b"GET / HTTP/1.1\r\n", b"\r\n\r\n"), None);
    }
}
