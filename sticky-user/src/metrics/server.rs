//! The HTTP side of the endpoint: a deliberately small HTTP/1.1 server that reads one request
//! head per connection, answers it and closes.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{Instant, timeout},
};
use tracing::{debug, error, warn};

use super::exposition::{CONTENT_TYPE, render};
use crate::{
    http::{self, HeadError, MAX_HEADERS, Part, ReadError, RequestHead},
    status::Status,
};

/// Produces the snapshot a scrape reports. Called on the blocking pool: it may read BPF maps.
pub type Snapshot = Arc<dyn Fn() -> anyhow::Result<Status> + Send + Sync>;

/// Longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections handled at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// After answering, how long and how much unread request data (a body, the rest of an
/// oversized head) is drained: closing with unread data sends a reset, which can destroy
/// the response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The listener for [`serve`].
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics on {addr}"))
}

/// Serves scrapes on `listener` until the listener itself fails. Each connection gets its
/// own task, one request and a `Connection: close` response.
pub async fn serve(listener: TcpListener, snapshot: Snapshot) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("metrics connection limit closed")?;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                accept_failed(err).await?;
                continue;
            }
        };
        let snapshot = Arc::clone(&snapshot);
        tokio::spawn(async move {
            if let Err(err) = handle(stream, &snapshot).await {
                debug!(%peer, %err, "metrics connection");
            }
            drop(permit);
        });
    }
}

/// Returns an error only when the listener itself is unusable; waits a little when out of
/// file descriptors or memory rather than spinning.
async fn accept_failed(err: io::Error) -> anyhow::Result<()> {
    use io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) {
        return Ok(());
    }
    if matches!(
        err.raw_os_error(),
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT)
    ) {
        return Err(err).context("accept metrics connection");
    }
    warn!(%err, "accept metrics connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Why a request was refused; the text is the body of the answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("request head is over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line: expected METHOD /path HTTP/1.1")]
    RequestLine,
    #[error("malformed header line: expected Name: value")]
    HeaderLine,
    #[error("request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("expected exactly one Host header")]
    Host,
    #[error("connection closed in the middle of the request head")]
    Truncated,
    #[error("no complete request head within {HEAD_TIMEOUT:?}")]
    Timeout,
}

impl Refused {
    fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Timeout => 408,
            _ => 400,
        }
    }
}

impl From<HeadError> for Refused {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge { .. } => Self::TooLarge,
            HeadError::TooManyHeaders => Self::TooManyHeaders,
            HeadError::Malformed {
                at: Part::RequestLine,
                ..
            } => Self::RequestLine,
            HeadError::Malformed {
                at: Part::Headers, ..
            } => Self::HeaderLine,
        }
    }
}

/// The request head at the start of `buf`, if complete and one this server takes.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, Refused> {
    let Some(head) = http::request::parse(buf, MAX_HEAD)? else {
        return Ok(None);
    };
    if !head.host_is_valid() {
        return Err(Refused::Host);
    }
    Ok(Some(head))
}

struct Reply {
    code: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(code: u16, body: impl Into<String>) -> Self {
        Self {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

async fn handle(mut stream: TcpStream, snapshot: &Snapshot) -> io::Result<()> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let refused = match http::read::until(&mut stream, &mut buf, deadline, parse_request).await {
        Ok(request) => {
            let reply = route(&request, snapshot).await;
            return answer(&mut stream, &reply, request.method == "HEAD").await;
        }
        Err(ReadError::Closed) if buf.is_empty() => return Ok(()),
        Err(ReadError::Io(err)) => return Err(err),
        Err(ReadError::Closed) => Refused::Truncated,
        Err(ReadError::Timeout) => Refused::Timeout,
        Err(ReadError::Parse(refused)) => refused,
    };
    let reply = Reply::text(refused.status(), format!("{refused}\n"));
    answer(&mut stream, &reply, false).await
}

async fn route(request: &RequestHead, snapshot: &Snapshot) -> Reply {
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    match request.origin_path() {
        "/metrics" | "/" if !readable => Reply::text(405, "only GET and HEAD are served\n"),
        "/metrics" => metrics(snapshot).await,
        "/" => Reply::text(200, "sticky: Prometheus metrics are at /metrics\n"),
        _ => Reply::text(404, "not found: metrics are at /metrics\n"),
    }
}

async fn metrics(snapshot: &Snapshot) -> Reply {
    let snapshot = Arc::clone(snapshot);
    match tokio::task::spawn_blocking(move || snapshot().map(|status| render(&status))).await {
        Ok(Ok(body)) => Reply {
            code: 200,
            content_type: CONTENT_TYPE,
            body,
        },
        Ok(Err(err)) => {
            warn!("metrics snapshot: {err:#}");
            Reply::text(500, format!("snapshot failed: {err:#}\n"))
        }
        Err(err) => {
            error!(%err, "metrics snapshot");
            Reply::text(500, "snapshot failed: it panicked\n")
        }
    }
}

/// Writes `reply` (only its head if `head_only`), closes our side and lingers.
async fn answer(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> io::Result<()> {
    let length = reply.body.len().to_string();
    let mut headers = vec![
        ("Content-Type", reply.content_type),
        ("Content-Length", length.as_str()),
        ("Connection", "close"),
    ];
    if reply.code == 405 {
        headers.push(("Allow", "GET, HEAD"));
    }
    let body = if head_only { "" } else { &reply.body };
    let bytes = http::write::response(
        reply.code,
        http::write::reason(reply.code),
        &headers,
        body.as_bytes(),
    );
    let write = async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    };
    timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_elapsed| io::Error::new(io::ErrorKind::TimedOut, "client took no response"))??;
    linger(stream).await;
    Ok(())
}

/// Drains what the client still sends until it closes, bounded by [`LINGER`] and
/// [`LINGER_BYTES`].
async fn linger(stream: &mut TcpStream) {
    let drain = async {
        let mut sink = [0; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    // Timing out is the normal end for a client that keeps its side open.
    let _ = timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exposition::tests::{has_line, sample};

    #[test]
    fn request_parsing() {
        let parsed = |head: &[u8]| {
            let h = parse_request(head).unwrap().unwrap();
            (h.method.clone(), h.origin_path().to_owned(), h.version)
        };
        let get = |path: &str| ("GET".to_owned(), path.to_owned(), 1);
        for (head, expected) in [
            (
                &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                get("/metrics"),
            ),
            (b"GET /metrics?a=b HTTP/1.1\nhost: x\n\n", get("/metrics")),
            (
                b"GET http://x:9000/metrics HTTP/1.1\r\nHost: x:9000\r\n\r\n",
                get("/metrics"),
            ),
            (
                b"GET http://x:9000 HTTP/1.1\r\nHost: x:9000\r\n\r\n",
                get("/"),
            ),
            (
                b"GET / HTTP/1.0\r\n\r\n",
                ("GET".to_owned(), "/".to_owned(), 0),
            ),
        ] {
            assert_eq!(parsed(head), expected, "{head:?}");
        }
        for head in [
            &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\rY: z\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(parse_request(head).is_err(), "{head:?}");
        }
        // Blank lines before the request line are skipped (RFC 9112 §2.2): no request yet.
        assert_eq!(parse_request(b"\r\n\r\n"), Ok(None));
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Err(Refused::Host)
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n"),
            Err(Refused::HeaderLine)
        );
        assert_eq!(
            parse_request(b"G(T /metrics HTTP/1.1\r\n"),
            Err(Refused::RequestLine)
        );
        let len = |head: &[u8]| parse_request(head).unwrap().map(|h| h.len);
        assert_eq!(len(b"GET / HTTP/1.0\r\n\r\nbody"), Some(18));
        assert_eq!(len(b"GET / HTTP/1.0\n\nbody"), Some(16));
        assert_eq!(len(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
    }

    const TIME_LIMIT: Duration = Duration::from_secs(10);

    async fn start(snapshot: Snapshot) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, snapshot));
        addr
    }

    fn sample_snapshot() -> Snapshot {
        Arc::new(|| Ok(sample()))
    }

    struct Response {
        code: u16,
        head: String,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.head
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        }
    }

    /// Sends `request` without closing the sending side, so a server that waited for more
    /// would run into the time limit.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
        let raw = timeout(TIME_LIMIT, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.unwrap();
            raw
        })
        .await
        .unwrap_or_else(|_| panic!("no response within {TIME_LIMIT:?} to {request:?}"));
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        Response {
            code,
            head: head.to_string(),
            body: body.to_string(),
        }
    }

    const GET_METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";

    #[tokio::test]
    async fn serves_metrics() {
        let addr = start(sample_snapshot()).await;
        let response = exchange(addr, GET_METRICS).await;
        assert_eq!(response.code, 200, "{}", response.head);
        assert_eq!(response.header("Content-Type"), Some(CONTENT_TYPE));
        assert_eq!(response.header("Connection"), Some("close"));
        let length = response.body.len().to_string();
        assert_eq!(response.header("Content-Length"), Some(length.as_str()));
        has_line(
            &response.body,
            r#"sticky_backend_up{backend="10.0.0.1:80"} 1"#,
        );
        assert_eq!(response.body, render(&sample()));

        let head = exchange(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(head.code, 200);
        assert_eq!(head.header("Content-Length"), Some(length.as_str()));
        assert_eq!(head.body, "");

        let index = exchange(addr, b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(index.code, 200);
        assert!(index.body.contains("/metrics"), "{}", index.body);
    }

    #[tokio::test]
    async fn refuses_bad_requests_and_keeps_serving() {
        let addr = start(sample_snapshot()).await;
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9 * 1024)
        );
        let cases: [(&str, &[u8], u16); 7] = [
            (
                "unknown path",
                b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                404,
            ),
            (
                "POST",
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
                405,
            ),
            (
                "garbage",
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
                400,
            ),
            ("garbage request line alone", b"\x00\x01 hello\n", 400),
            ("no Host", b"GET /metrics HTTP/1.1\r\n\r\n", 400),
            (
                "header without colon",
                b"GET / HTTP/1.1\r\nHost\r\n\r\n",
                400,
            ),
            ("9 KiB header", big.as_bytes(), 431),
        ];
        for (name, request, code) in cases {
            let response = exchange(addr, request).await;
            assert_eq!(response.code, code, "{name}: {}", response.head);
            if code == 405 {
                assert_eq!(response.header("Allow"), Some("GET, HEAD"), "{name}");
            }
            let after = exchange(addr, GET_METRICS).await;
            assert_eq!(after.code, 200, "after {name}");
        }
    }

    #[tokio::test]
    async fn slow_client_does_not_block_others() {
        let addr = start(sample_snapshot()).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        assert_eq!(exchange(addr, GET_METRICS).await.code, 200);
    }

    #[tokio::test]
    async fn snapshot_failure_is_500() {
        let addr = start(Arc::new(|| anyhow::bail!("stats map unreadable"))).await;
        let response = exchange(addr, GET_METRICS).await;
        assert_eq!(response.code, 500);
        assert!(
            response.body.contains("stats map unreadable"),
            "{}",
            response.body
        );
        let panicking: Snapshot = Arc::new(|| panic!("snapshot bug"));
        let addr = start(panicking).await;
        assert_eq!(exchange(addr, GET_METRICS).await.code, 500);
        assert_eq!(exchange(addr, GET_METRICS).await.code, 500);
    }
}
