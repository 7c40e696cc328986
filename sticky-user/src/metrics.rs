//! The Prometheus endpoint: [`render`] writes a [`Status`] in the text exposition format
//! 0.0.4, and [`serve`] answers `GET /metrics` with a deliberately small HTTP/1.1 server
//! that reads one request head per connection, answers it and closes.

use std::{fmt, io, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, error, warn};

use crate::status::{BackendStatus, Status};

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

const BACKEND_STATES: [&str; 3] = ["up", "draining", "down"];

/// The per-backend families after `up` and `state`: name, kind, help, value.
type PerBackend = (
    &'static str,
    Kind,
    &'static str,
    fn(&BackendStatus) -> Value,
);
const PER_BACKEND: [PerBackend; 11] = [
    (
        "sticky_backend_healthy",
        Kind::Gauge,
        "Whether the backend passes its health checks or is unchecked (1) rather than failing (0).",
        |b| Value::flag(b.health != "failing"),
    ),
    (
        "sticky_backend_weight",
        Kind::Gauge,
        "Configured weight of the backend.",
        |b| Value::Int(b.weight.into()),
    ),
    (
        "sticky_backend_table_share",
        Kind::Gauge,
        "Share of the lookup table slots held by the backend (0..1).",
        |b| Value::Float(b.table_share),
    ),
    (
        "sticky_backend_ideal_share",
        Kind::Gauge,
        "Backend weight over the total weight of the backends in the table (0..1).",
        |b| Value::Float(b.ideal_share),
    ),
    (
        "sticky_backend_affine_clients",
        Kind::Gauge,
        "Clients whose unexpired affinity names the backend.",
        |b| Value::Int(b.affine_clients),
    ),
    (
        "sticky_backend_active_flows",
        Kind::Gauge,
        "Connections to the backend in the flow table.",
        |b| Value::Int(b.active_flows),
    ),
    (
        "sticky_backend_new_flows_total",
        Kind::Counter,
        "Connections the data path assigned to the backend.",
        |b| Value::Int(b.new_flows_total),
    ),
    (
        "sticky_backend_refused_total",
        Kind::Counter,
        "New connections the backend reset during their handshake (nothing listening).",
        |b| Value::Int(b.refused_total),
    ),
    (
        "sticky_backend_packets_total",
        Kind::Counter,
        "Packets the data path steered to the backend.",
        |b| Value::Int(b.packets),
    ),
    (
        "sticky_backend_bytes_total",
        Kind::Counter,
        "Bytes the data path steered to the backend.",
        |b| Value::Int(b.bytes),
    ),
    (
        "sticky_backend_health_transitions_total",
        Kind::Counter,
        "Health state changes of the backend since start.",
        |b| Value::Int(b.health_transitions),
    ),
];

/// The whole exposition for `status`.
pub fn render(status: &Status) -> String {
    use Kind::{Counter, Gauge};
    let mut out = Exposition::default();
    let backends = &status.backends;

    out.per_backend(
        backends,
        ("sticky_backend_up", Gauge),
        "Whether the backend is up (1) rather than draining or down (0).",
        |b| Value::flag(b.state == "up"),
    );
    out.family(
        "sticky_backend_state",
        Gauge,
        "Backend state, one-hot over up, draining and down.",
    );
    for b in backends {
        let addr = b.addr.to_string();
        for state in BACKEND_STATES {
            out.sample(
                "sticky_backend_state",
                &[("backend", &addr), ("state", state)],
                Value::flag(b.state == state),
            );
        }
    }
    for (name, kind, help, value) in PER_BACKEND {
        out.per_backend(backends, (name, kind), help, value);
    }

    out.family(
        "sticky_packets_total",
        Counter,
        "Packets seen by the data path, by result.",
    );
    for (result, &count) in &status.counters {
        out.sample(
            "sticky_packets_total",
            &[("result", result)],
            Value::Int(count),
        );
    }
    let globals = [
        (
            "sticky_affinity_entries",
            "Entries in the client affinity map.",
            status.affinity_entries,
        ),
        (
            "sticky_flow_entries",
            "Entries in the flow table (established flows, both directions).",
            status.flow_entries,
        ),
        (
            "sticky_new_flow_entries",
            "Entries of flows still in their handshake (both directions).",
            status.new_flow_entries,
        ),
        (
            "sticky_map_bytes",
            "Memory the kernel charges for the instance's maps.",
            status.map_bytes,
        ),
        (
            "sticky_table_slots",
            "Slots in the lookup table.",
            status.table_size.into(),
        ),
    ];
    for (name, help, value) in globals {
        out.family(name, Gauge, help);
        out.sample(name, &[], Value::Int(value));
    }
    out.family(
        "sticky_info",
        Gauge,
        "Always 1; labelled with the instance name.",
    );
    out.sample(
        "sticky_info",
        &[("instance", &status.instance)],
        Value::Int(1),
    );
    out.0
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Clone, Copy, Debug)]
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn flag(on: bool) -> Self {
        Self::Int(on.into())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) if x.is_nan() => f.write_str("NaN"),
            Self::Float(x) if x == f64::INFINITY => f.write_str("+Inf"),
            Self::Float(x) if x == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust never writes an exponent here, and Prometheus reads plain decimals.
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// HELP and TYPE for a family. Call once per family, before its samples.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        self.0.push_str("# HELP ");
        self.0.push_str(name);
        self.0.push(' ');
        escape_help(help, &mut self.0);
        self.0.push_str("\n# TYPE ");
        self.0.push_str(name);
        self.0.push(' ');
        self.0.push_str(kind);
        self.0.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(label);
                self.0.push_str("=\"");
                escape_label_value(value, &mut self.0);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        self.0.push_str(&value.to_string());
        self.0.push('\n');
    }

    /// A family with one sample per backend, labelled `backend`.
    fn per_backend(
        &mut self,
        backends: &[BackendStatus],
        (name, kind): (&str, Kind),
        help: &str,
        value: impl Fn(&BackendStatus) -> Value,
    ) {
        self.family(name, kind, help);
        for b in backends {
            self.sample(name, &[("backend", &b.addr.to_string())], value(b));
        }
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed only.
fn escape_help(help: &str, out: &mut String) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
}

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

/// Why a request head was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request head is over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line: expected METHOD /path HTTP/1.1")]
    RequestLine,
    #[error("malformed header line: expected Name: value")]
    HeaderLine,
    #[error("expected exactly one Host header")]
    Host,
    #[error("connection closed in the middle of the request head")]
    Truncated,
    #[error("connection closed before a request")]
    Closed,
    #[error("read request: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    method: &'a str,
    /// Without the query.
    path: &'a str,
    http11: bool,
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
    let head = timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let mut head_only = false;
    let reply = match head {
        Err(_elapsed) => Reply::text(
            408,
            format!("no complete request head within {HEAD_TIMEOUT:?}\n"),
        ),
        Ok(Ok(head)) => match parse_head(&head) {
            Ok(request) => {
                head_only = request.method == "HEAD";
                route(&request, snapshot).await
            }
            Err(err) => Reply::text(400, format!("{err}\n")),
        },
        Ok(Err(RequestError::Closed)) => return Ok(()),
        Ok(Err(RequestError::Io(err))) => return Err(err),
        Ok(Err(err @ RequestError::TooLarge)) => Reply::text(431, format!("{err}\n")),
        Ok(Err(err)) => Reply::text(400, format!("{err}\n")),
    };
    timeout(WRITE_TIMEOUT, write_reply(&mut stream, &reply, head_only))
        .await
        .map_err(|_elapsed| io::Error::new(io::ErrorKind::TimedOut, "client took no response"))??;
    linger(&mut stream).await;
    Ok(())
}

async fn route(request: &Request<'_>, snapshot: &Snapshot) -> Reply {
    let readable = matches!(request.method, "GET" | "HEAD");
    match request.path {
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

/// Reads up to the blank line ending the head; returns the head with it. A bad request
/// line is refused as soon as it is complete, without waiting for the rest.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, RequestError> {
    let mut buf = vec![0; MAX_HEAD];
    let mut len = 0;
    let mut line_checked = false;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(if len == 0 {
                RequestError::Closed
            } else {
                RequestError::Truncated
            });
        }
        len += n;
        if !line_checked {
            // RFC 9112 §2.2: ignore empty lines before the request line.
            let blank = buf[..len]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            buf.copy_within(blank..len, 0);
            len -= blank;
        }
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(end);
            return Ok(buf);
        }
        if !line_checked && let Some(eol) = buf[..len].iter().position(|&b| b == b'\n') {
            parse_request_line(trim_cr(&buf[..eol]))?;
            line_checked = true;
        }
        if len == MAX_HEAD {
            return Err(RequestError::TooLarge);
        }
    }
}

/// Length of the head through its closing blank line; bare LF line ends are accepted as
/// RFC 9112 allows.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'\n')
        .find_map(|(i, _)| {
            let rest = &buf[i + 1..];
            if rest.starts_with(b"\n") {
                Some(i + 2)
            } else if rest.starts_with(b"\r\n") {
                Some(i + 3)
            } else {
                None
            }
        })
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub fn parse_head(head: &[u8]) -> Result<Request<'_>, RequestError> {
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let request = parse_request_line(lines.next().unwrap_or_default())?;
    let mut hosts = 0;
    for line in lines.take_while(|line| !line.is_empty()) {
        // A leading space or tab is obsolete line folding, which RFC 9112 lets us refuse.
        let name = line
            .split(|&b| b == b':')
            .next()
            .filter(|name| name.len() < line.len() && !name.is_empty())
            .ok_or(RequestError::HeaderLine)?;
        if !name.iter().all(|&b| is_tchar(b)) || line.contains(&b'\r') {
            return Err(RequestError::HeaderLine);
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host gets 400.
    if hosts > 1 || (request.http11 && hosts == 0) {
        return Err(RequestError::Host);
    }
    Ok(request)
}

fn parse_request_line(line: &[u8]) -> Result<Request<'_>, RequestError> {
    let line = std::str::from_utf8(line).map_err(|_| RequestError::RequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::RequestLine);
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(RequestError::RequestLine),
    };
    if method.is_empty()
        || !method.bytes().all(is_tchar)
        || target.is_empty()
        || !target.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(RequestError::RequestLine);
    }
    // Absolute form (`http://host:9000/metrics`), which proxies send.
    let origin = ["http://", "https://"]
        .iter()
        .find_map(|scheme| target.strip_prefix(scheme))
        .map_or(target, |rest| rest.find('/').map_or("/", |at| &rest[at..]));
    let path = origin.split(['?', '#']).next().unwrap_or_default();
    Ok(Request {
        method,
        path,
        http11,
    })
}

/// Token characters (RFC 9110 §5.6.2), as in methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "",
    }
}

async fn write_reply(stream: &mut TcpStream, reply: &Reply, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.code,
        reason(reply.code),
        reply.content_type,
        reply.body.len(),
    );
    if reply.code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
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
    use std::collections::BTreeSet;

    use super::*;

    fn sample() -> Status {
        Status {
            instance: "lab\"1\\x\ny".into(),
            vips: vec!["192.0.2.1:80".parse().unwrap()],
            ifaces: vec!["eth0".into()],
            table_size: 65537,
            backends: vec![
                BackendStatus {
                    id: 0,
                    addr: "10.0.0.1:80".parse().unwrap(),
                    state: "up".into(),
                    health: "healthy".into(),
                    weight: 3,
                    table_share: 0.75,
                    ideal_share: 0.75,
                    affine_clients: 12,
                    active_flows: 4,
                    new_flows_total: 100,
                    refused_total: 2,
                    new_flows_per_sec: 1.5,
                    packets: 1000,
                    bytes: 123_456,
                    health_transitions: 1,
                    drain_deadline_secs: None,
                },
                BackendStatus {
                    id: 1,
                    addr: "[2001:db8::2]:8080".parse().unwrap(),
                    state: "draining".into(),
                    health: "failing".into(),
                    weight: 1,
                    table_share: 0.25,
                    ideal_share: 0.0,
                    affine_clients: 0,
                    active_flows: 2,
                    new_flows_total: 7,
                    refused_total: 0,
                    new_flows_per_sec: 0.0,
                    packets: 50,
                    bytes: 6_000,
                    health_transitions: 3,
                    drain_deadline_secs: Some(30),
                },
            ],
            counters: [("pass", 5), ("nat", 1_050), ("drop_no_backend", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            affinity_entries: 12,
            flow_entries: 6,
            new_flow_entries: 4,
            map_bytes: 1 << 20,
        }
    }

    const FAMILIES: [&str; 20] = [
        "sticky_backend_up",
        "sticky_backend_state",
        "sticky_backend_healthy",
        "sticky_backend_weight",
        "sticky_backend_table_share",
        "sticky_backend_ideal_share",
        "sticky_backend_affine_clients",
        "sticky_backend_active_flows",
        "sticky_backend_new_flows_total",
        "sticky_backend_refused_total",
        "sticky_backend_packets_total",
        "sticky_backend_bytes_total",
        "sticky_backend_health_transitions_total",
        "sticky_packets_total",
        "sticky_affinity_entries",
        "sticky_flow_entries",
        "sticky_new_flow_entries",
        "sticky_map_bytes",
        "sticky_table_slots",
        "sticky_info",
    ];

    fn has_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn render_backend_families() {
        let text = render(&sample());
        for line in [
            r#"sticky_backend_up{backend="10.0.0.1:80"} 1"#,
            r#"sticky_backend_up{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="up"} 1"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="draining"} 0"#,
            r#"sticky_backend_state{backend="10.0.0.1:80",state="down"} 0"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="up"} 0"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="draining"} 1"#,
            r#"sticky_backend_state{backend="[2001:db8::2]:8080",state="down"} 0"#,
            r#"sticky_backend_healthy{backend="10.0.0.1:80"} 1"#,
            r#"sticky_backend_healthy{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_table_share{backend="10.0.0.1:80"} 0.75"#,
            r#"sticky_backend_ideal_share{backend="[2001:db8::2]:8080"} 0"#,
            r#"sticky_backend_bytes_total{backend="10.0.0.1:80"} 123456"#,
            r#"sticky_backend_health_transitions_total{backend="[2001:db8::2]:8080"} 3"#,
            "# HELP sticky_backend_bytes_total Bytes the data path steered to the backend.",
            "# TYPE sticky_backend_bytes_total counter",
            "# TYPE sticky_backend_weight gauge",
        ] {
            has_line(&text, line);
        }
    }

    #[test]
    fn render_global_families() {
        let text = render(&sample());
        for line in [
            "# TYPE sticky_packets_total counter",
            "sticky_affinity_entries 12",
            "sticky_flow_entries 6",
            "sticky_new_flow_entries 4",
            "sticky_map_bytes 1048576",
            "sticky_table_slots 65537",
            // Backslash, double quote and line feed escaped.
            r#"sticky_info{instance="lab\"1\\x\ny"} 1"#,
        ] {
            has_line(&text, line);
        }
        let results: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sticky_packets_total{"))
            .collect();
        assert_eq!(
            results,
            [
                r#"sticky_packets_total{result="drop_no_backend"} 0"#,
                r#"sticky_packets_total{result="nat"} 1050"#,
                r#"sticky_packets_total{result="pass"} 5"#,
            ]
        );
    }

    /// Every family has one HELP and one TYPE, before its samples, which are contiguous;
    /// every value parses as a float.
    #[test]
    fn render_is_well_formed() {
        for status in [sample(), Status::default()] {
            let text = render(&status);
            assert!(text.ends_with('\n'));
            let mut typed = Vec::new();
            let mut helped = Vec::new();
            let mut current = "";
            let mut finished = BTreeSet::new();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, kind) = rest.split_once(' ').unwrap();
                    assert!(kind == "counter" || kind == "gauge", "{line}");
                    assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
                    typed.push(name);
                } else if let Some(rest) = line.strip_prefix("# HELP ") {
                    helped.push(rest.split_once(' ').unwrap().0);
                } else {
                    let (series, value) = line.rsplit_once(' ').unwrap();
                    let name = series.split('{').next().unwrap();
                    value.parse::<f64>().unwrap();
                    if name != current {
                        assert!(finished.insert(current), "{name} split up");
                        current = name;
                    }
                    assert_eq!(typed.last(), Some(&name), "{line} not under its TYPE");
                }
            }
            assert_eq!(typed, FAMILIES);
            assert_eq!(helped, FAMILIES);
        }
    }

    #[test]
    fn empty_status_has_no_backend_samples() {
        let text = render(&Status::default());
        assert!(!text.contains("{backend="));
        has_line(&text, "sticky_table_slots 0");
        has_line(&text, r#"sticky_info{instance=""} 1"#);
    }

    #[test]
    fn values_and_escapes() {
        let formatted: Vec<String> = [
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(f64::NEG_INFINITY),
            Value::Float(0.1),
            Value::Float(1e-7),
            Value::Int(u64::MAX),
        ]
        .iter()
        .map(Value::to_string)
        .collect();
        assert_eq!(
            formatted,
            [
                "NaN",
                "+Inf",
                "-Inf",
                "0.1",
                "0.0000001",
                "18446744073709551615"
            ]
        );
        let mut label = String::new();
        escape_label_value("a\\b\"c\nd", &mut label);
        assert_eq!(label, r#"a\\b\"c\nd"#);
        let mut help = String::new();
        escape_help("a\\b\"c\nd", &mut help);
        assert_eq!(help, r#"a\\b"c\nd"#);
    }

    #[test]
    fn request_parsing() {
        let get = |path| Request {
            method: "GET",
            path,
            http11: true,
        };
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
                Request {
                    method: "GET",
                    path: "/",
                    http11: false,
                },
            ),
        ] {
            assert_eq!(parse_head(head).unwrap(), expected, "{head:?}");
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
            b"\r\n\r\n",
        ] {
            assert!(parse_head(head).is_err(), "{head:?}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
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
