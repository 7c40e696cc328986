//! HTTP clients bound to chosen source addresses, reading what the backends of
//! [`crate::servers`] answer.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// What a backend answered: its id and the client address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub backend: String,
    pub seen_client: IpAddr,
}

/// A keep-alive HTTP connection from a chosen source address. Call from a thread inside the
/// client namespace.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The status line of the last response read.
    pub last_status: String,
}

impl HttpConn {
    pub fn open(src: IpAddr, dst: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let domain = if dst.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket
            .bind(&SocketAddr::new(src, 0).into())
            .with_context(|| format!("bind {src}"))?;
        socket
            .connect_timeout(&dst.into(), timeout)
            .with_context(|| format!("connect {src} -> {dst}"))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            last_status: String::new(),
        })
    }

    pub fn get(&mut self, close: bool) -> anyhow::Result<Answer> {
        self.get_with("", close)
    }

    /// A GET with extra header lines (each ending in `\r\n`), e.g. `X-Forwarded-For`.
    pub fn get_with(&mut self, headers: &str, close: bool) -> anyhow::Result<Answer> {
        let conn = if close { "close" } else { "keep-alive" };
        write!(
            self.writer,
            "GET / HTTP/1.1\r\nHost: sticky\r\n{headers}Connection: {conn}\r\n\r\n"
        )
        .context("send request")?;
        self.read_answer()
    }

    /// Sends raw bytes (a PROXY protocol header, a hostile head).
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).context("send")
    }

    /// The raw stream, for tests that speak something else after connecting.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Reads one response: the backend's id and the client address it saw.
    pub fn read_answer(&mut self) -> anyhow::Result<Answer> {
        let mut len = None;
        let mut status = String::new();
        self.reader.read_line(&mut status).context("read status")?;
        self.last_status = status.clone();
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected status line {status:?}");
        }
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).context("read header")? == 0 {
                bail!("connection closed mid-response");
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; len.context("no content-length")?];
        self.reader.read_exact(&mut body).context("read body")?;
        let body = String::from_utf8_lossy(&body);
        let (backend, ip) = body.trim().split_once(' ').context("malformed body")?;
        Ok(Answer {
            backend: backend.to_string(),
            seen_client: ip.parse().context("client address in body")?,
        })
    }
}

/// One request on a fresh connection.
pub fn get_once(src: IpAddr, dst: SocketAddr) -> anyhow::Result<Answer> {
    HttpConn::open(src, dst, Duration::from_secs(3))?.get(true)
}

/// The whole answer (status line, headers, body) of one `GET /metrics` to a metrics endpoint,
/// read until it closes. Call from a thread inside the endpoint's namespace.
pub fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connect to the metrics endpoint {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: sticky\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .with_context(|| format!("read the metrics from {addr}"))?;
    Ok(response)
}
