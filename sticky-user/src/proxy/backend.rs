//! One backend connection, driven by the task of the client connection whose request holds
//! it: the request head written with the body's first bytes in one call, the response head
//! parsed where it was read, the body framed (`response_body`) as hyper serves it to the
//! client, and the connection handed back to its pool at the body's end.
//!
//! hyper's client ran every backend connection as a task of its own, a channel each way
//! (request, response, body): 12k of the proxy's 34k instructions per keep-alive request,
//! where HAProxy's http mode spends 29k on the whole request (callgrind, the same load).

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header::HOST};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::{io::Interest, net::TcpStream};
use tracing::debug;

use super::{
    framing,
    response_body::{self, Framing},
};
use crate::http::header_slots;

/// The longest response head read before the backend is given up (`502`).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read buffer growth: room for a head and a small body in one read.
const READ_CHUNK: usize = 16 * 1024;

/// Why no connection to a backend could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Writing the request failed: the backend has not read it.
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("response head over {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The client's body broke off.
    #[error("request body: {0}")]
    Body(String),
}

impl ExchangeError {
    /// Whether the request may go again on another connection after this on a reused one:
    /// it was never written, or it was and the connection broke before any response, and
    /// sending it twice does no harm (`idempotent`). A pooled connection the backend timed
    /// out fails so.
    pub fn may_resend(&self, idempotent: bool) -> bool {
        match self {
            Self::Write(_) => true,
            Self::Closed | Self::Io(_) => idempotent,
            _ => false,
        }
    }
}

pub struct BackendConn {
    /// Shared with the task uploading a request body still streaming when the response
    /// starts (a backend may answer, even echo, before the body's end).
    tcp: Arc<TcpStream>,
    /// Set by that task once the whole body is written; the connection is used again only
    /// then.
    upload: Option<Arc<AtomicBool>>,
    /// Read from `tcp`, not consumed yet.
    buf: BytesMut,
    /// Bytes read from `tcp` in all (the splice's half-close accounting needs the total).
    read: u64,
}

/// A response head, and how its body is delimited.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Without the hop-by-hop headers when `stripped`.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The backend closes the connection after this response (`Connection: close`).
    pub close: bool,
    /// The hop-by-hop headers were left out of `headers` as it was built. Not for a `101`
    /// (its `Upgrade` goes on) nor when `Connection` names other headers (`strip_hop_by_hop`).
    pub stripped: bool,
}

impl BackendConn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, ConnectError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let _ = tcp.set_nodelay(true);
        Ok(Self {
            tcp: Arc::new(tcp),
            upload: None,
            buf: BytesMut::new(),
            read: 0,
        })
    }

    /// Whether an idle connection can carry another request: nothing arrived on it since
    /// its last response (no end of stream, no bytes nobody asked for). Costs no system call
    /// unless the socket reported something.
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() || !self.upload_done() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: it may only be the last response's readiness, never cleared.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Whether no body upload is running or failed.
    fn upload_done(&mut self) -> bool {
        match &self.upload {
            None => true,
            Some(done) if done.load(Ordering::Acquire) && Arc::strong_count(&self.tcp) == 1 => {
                self.upload = None;
                true
            }
            Some(_) => false,
        }
    }

    /// Writes `out` (a head, and the body's first bytes).
    pub async fn write(&mut self, out: &[u8]) -> io::Result<()> {
        write_all(&self.tcp, out).await
    }

    /// Writes the rest of a request body in a task of its own while the response is read
    /// (framed as one chunk a frame when `chunked`, ended by the last chunk). A body that
    /// breaks off shuts the connection's sending side, so the backend stops waiting for it;
    /// the connection is not used again then.
    pub fn upload(&mut self, mut body: Incoming, chunked: bool) {
        let done = Arc::new(AtomicBool::new(false));
        self.upload = Some(done.clone());
        let tcp = self.tcp.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let result: Result<(), String> = async {
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| e.to_string())?;
                    if let Ok(data) = frame.into_data() {
                        out.clear();
                        put_data(&mut out, &data, chunked);
                        write_all(&tcp, &out).await.map_err(|e| e.to_string())?;
                    }
                }
                if chunked {
                    write_all(&tcp, LAST_CHUNK)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => done.store(true, Ordering::Release),
                Err(e) => {
                    debug!("request body to the backend: {e}");
                    let _ = socket2::SockRef::from(&*tcp).shutdown(std::net::Shutdown::Write);
                }
            }
        });
    }

    /// Reads the response head to `method`, skipping informational responses other than
    /// `101`.
    pub async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, ExchangeError> {
        loop {
            if let Some(head) = self.parse_head(method)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() >= MAX_RESPONSE_HEAD {
                return Err(ExchangeError::HeadTooLarge);
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(ExchangeError::Closed);
            }
        }
    }

    /// A complete head at the start of `buf`, consumed.
    fn parse_head(&mut self, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
        let mut slots = header_slots();
        let mut resp = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut resp, &self.buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(ExchangeError::Malformed(e.to_string())),
        };
        let malformed = |what: &str| ExchangeError::Malformed(what.to_string());
        let status =
            StatusCode::from_u16(resp.code.unwrap_or(0)).map_err(|_| malformed("status"))?;
        let version = match resp.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let lines = resp.headers.iter().map(|h| (h.name, h.value));
        let framing = response_body::framing(method, status, lines)
            .map_err(|e| ExchangeError::Malformed(e.to_string()))?;
        let connection = framing::connection_options(
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .map(|h| h.value),
        );
        // Most responses name nothing in `Connection` but hop-by-hop headers: those are left
        // out here, not inserted and removed.
        let stripped = status != StatusCode::SWITCHING_PROTOCOLS && !connection.names_others;
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        for h in resp.headers.iter() {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| malformed("header name"))?;
            if stripped && framing::is_hop_by_hop(&name) {
                continue;
            }
            let value = HeaderValue::from_bytes(h.value).map_err(|_| malformed("header value"))?;
            headers.append(name, value);
        }

        self.buf.advance(len);
        Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            close: connection.close,
            stripped,
        }))
    }

    /// Reads what the socket has into `buf`; 0 at its end. A read that leaves room in the
    /// buffer drained the socket, as tokio's own reads assume: its readiness is cleared, so
    /// the next look at an idle connection costs no system call.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        loop {
            std::task::ready!(self.tcp.poll_read_ready(cx))?;
            let room = self.buf.capacity() - self.buf.len();
            match self.tcp.try_read_buf(&mut self.buf) {
                Ok(n) => {
                    self.read += n as u64;
                    if n > 0 && n < room {
                        let _ = self.tcp.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub fn buffered(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The socket, what was read from it past the response head (the peer's), and the total
    /// read from it: for an upgraded connection.
    pub fn into_parts(self) -> io::Result<(TcpStream, Vec<u8>, u64)> {
        let tcp = Arc::try_unwrap(self.tcp).map_err(|_| {
            io::Error::other("the request body is still being sent on an upgraded connection")
        })?;
        Ok((tcp, self.buf.to_vec(), self.read))
    }
}

/// The end of a chunked body: the last chunk, no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as it goes on the wire: as it is, or as one chunk.
pub fn put_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

async fn write_all(tcp: &TcpStream, mut out: &[u8]) -> io::Result<()> {
    while !out.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(out) {
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A request head as sent to a backend: `parts` with `Host` added if it has none, header
/// names in title case (as most servers write them), and `extra` (framing the proxy adds).
pub fn encode_request(
    parts: &http::request::Parts,
    backend: SocketAddr,
    extra: Option<(HeaderName, HeaderValue)>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        out.extend_from_slice(format!("Host: {backend}\r\n").as_bytes());
    }
    let extra = extra.iter().map(|(n, v)| (n, v));
    for (name, value) in parts.headers.iter().chain(extra) {
        title_case(name.as_str().as_bytes(), out);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn title_case(name: &[u8], out: &mut Vec<u8>) {
    let mut upper = true;
    for &b in name {
        out.push(if upper { b.to_ascii_uppercase() } else { b });
        upper = b == b'-';
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::proxy::response_body::ResponseBody;

    /// A connection to a backend that sends `pieces` (10 ms apart) once it has read a
    /// request head, then closes; the response to `method` read through it, body and all.
    async fn exchange(method: Method, pieces: &[&'static [u8]]) -> (ResponseHead, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pieces = pieces.to_vec();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                tcp.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            for p in pieces {
                tcp.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut conn = BackendConn::connect(addr, Duration::from_secs(1))
            .await
            .unwrap();
        conn.write(format!("{method} / HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = conn.read_head(&method).await.unwrap();
        let body = ResponseBody::new(conn, head.framing, None);
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (head, bytes)
    }

    #[tokio::test]
    async fn responses_are_framed_as_they_arrive() {
        type Case = (Method, &'static [&'static [u8]], Framing, &'static [u8]);
        let cases: [Case; 4] = [
            // Informational answers are skipped; a chunked body in pieces, with an extension
            // and a trailer, comes out decoded.
            (
                Method::GET,
                &[
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r",
                    b"\nabc\r\n2;x=1\r\nd",
                    b"e\r\n0\r\nTrailer: t\r\n\r\n",
                ],
                Framing::Chunked,
                b"abcde",
            ),
            // Neither length nor chunked: the body runs to the close.
            (Method::GET, &[b"HTTP/1.0 200 OK\r\n\r\nab", b"cd"], Framing::ToClose, b"abcd"),
            // A length, the head and body split anywhere.
            (
                Method::GET,
                &[b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 4\r\n\r\nwx", b"yz"],
                Framing::Length(4),
                b"wxyz",
            ),
            // A HEAD answer has no body whatever its length says.
            (
                Method::HEAD,
                &[b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"],
                Framing::Empty,
                b"",
            ),
        ];
        for (method, pieces, framing, want) in cases {
            let (head, body) = exchange(method, pieces).await;
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(
                (head.framing, body.as_slice()),
                (framing, want),
                "{pieces:?}"
            );
        }
    }

    /// A response's hop-by-hop headers are left out as its header map is built, except in a
    /// `101` (its `Upgrade` goes on) or when `Connection` names other headers: then
    /// `strip_hop_by_hop` removes them, the named ones too.
    #[tokio::test]
    async fn response_heads_leave_hop_by_hop_headers_out() {
        let names = |h: &HeaderMap| {
            let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            v.sort_unstable();
            v.join(",")
        };
        let (head, body) = exchange(
            Method::GET,
            &[
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
                Transfer-Encoding: chunked\r\nTrailer: x\r\nX-App: 1\r\n\r\n1\r\na\r\n0\r\n\r\n",
            ],
        )
        .await;
        assert_eq!(names(&head.headers), "x-app");
        assert_eq!(
            (head.stripped, head.close, body.as_slice()),
            (true, false, &b"a"[..])
        );

        let (head, _) = exchange(
            Method::GET,
            &[
                b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\
                Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            ],
        )
        .await;
        assert_eq!((head.stripped, head.close), (false, true));
        let mut headers = head.headers;
        framing::strip_hop_by_hop(&mut headers, false, &[]);
        assert_eq!(names(&headers), "content-length");

        let (head, _) = exchange(
            Method::GET,
            &[b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"],
        )
        .await;
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            (names(&head.headers).as_str(), head.stripped),
            ("connection,upgrade", false)
        );
    }

    #[test]
    fn request_heads_are_title_cased_with_a_host() {
        let (mut parts, ()) = http::Request::builder()
            .method("POST")
            .uri("http://ignored/a/b?x=1")
            .header("x-forwarded-for", "192.0.2.1")
            .header("content-length", "3")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_request(&parts, "10.0.0.1:80".parse().unwrap(), None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?x=1 HTTP/1.1\r\nHost: 10.0.0.1:80\r\nX-Forwarded-For: 192.0.2.1\r\n\
             Content-Length: 3\r\n\r\n"
        );
        parts.headers.insert(HOST, HeaderValue::from_static("app"));
        let mut out = Vec::new();
        let te = (
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        encode_request(&parts, "10.0.0.1:80".parse().unwrap(), Some(te), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("POST /a/b?x=1 HTTP/1.1\r\nX-Forwarded-For"),
            "{text}"
        );
        assert!(
            text.contains("Host: app\r\n") && text.ends_with("Transfer-Encoding: chunked\r\n\r\n")
        );
    }
}
