//! The proxy against in-process fake backends over loopback: per-request routing on shared
//! connections, framing, pipelining, smuggling refused, sessions, pooling, upgrades.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use sticky_common::{Addr16, maps::Affinity};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::http::MAX_HEADERS;

use super::{
    config::ProxyLayer,
    routing::{AffinityStore, Routing, choose},
    server::{Proxy, serve},
};
use crate::{addr::BackendSpec, backends::BackendSet, table};

const SEED: u32 = 3;
const TIMEOUT_NS: u64 = 60_000_000_000;

#[derive(Default)]
struct Store(Mutex<HashMap<Addr16, Affinity>>);

impl AffinityStore for Store {
    fn get(&self, client: &Addr16) -> Option<Affinity> {
        self.0.lock().unwrap().get(client).copied()
    }
    fn set(&self, client: &Addr16, value: Affinity) {
        self.0.lock().unwrap().insert(*client, value);
    }
}

/// What a fake backend received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: HeaderMap,
}

struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend answering by path, `x-backend: N` on every answer.
async fn backend(n: usize) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let (s, c) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let seen = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(n, seen.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend {
        addr,
        seen,
        connections,
    }
}

async fn answer(
    n: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req.uri().to_string();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
    });
    let path = parts.uri.path();
    let mut resp = Response::new(Full::new(body.clone()));
    resp.headers_mut().insert("x-backend", HeaderValue::from(n));
    resp.headers_mut()
        .insert("x-target", HeaderValue::from_str(&target).unwrap());
    match path {
        "/ws" => {
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *resp.body_mut() = Full::default();
            let h = resp.headers_mut();
            h.insert("connection", HeaderValue::from_static("upgrade"));
            h.insert("upgrade", HeaderValue::from_static("websocket"));
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
        "/len5" => *resp.body_mut() = Full::new(Bytes::from("hello")),
        "/chunked" => {
            resp.headers_mut()
                .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        }
        "/close" => {
            resp.headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        "/204" => {
            *resp.status_mut() = StatusCode::NO_CONTENT;
            *resp.body_mut() = Full::default();
        }
        "/304" => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.body_mut() = Full::default();
        }
        "/socket.io/" => {
            let query = parts.uri.query().unwrap_or_default();
            let sid = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("sid="))
                .map(str::to_owned);
            let count = seen.lock().unwrap().len();
            *resp.body_mut() = match sid {
                None => Full::new(Bytes::from(format!(
                    r#"0{{"sid":"b{n}s{count}","upgrades":["websocket"],"pingInterval":25000}}"#
                ))),
                Some(s) if s.starts_with(&format!("b{n}s")) => Full::new(Bytes::from("ok")),
                Some(_) => {
                    *resp.status_mut() = StatusCode::BAD_REQUEST;
                    Full::new(Bytes::from(r#"{"code":1,"message":"Session ID unknown"}"#))
                }
            };
        }
        _ => {}
    }
    Ok(resp)
}

struct Rig {
    proxy: SocketAddr,
    backends: Vec<Backend>,
    routing: Routing,
}

impl Rig {
    async fn new(layer: impl FnOnce(&mut ProxyLayer)) -> Self {
        let mut backends = Vec::new();
        for n in 0..3 {
            backends.push(backend(n).await);
        }
        Self::with(backends, layer).await
    }

    async fn with(backends: Vec<Backend>, layer: impl FnOnce(&mut ProxyLayer)) -> Self {
        let specs: Vec<BackendSpec> = backends
            .iter()
            .map(|b| b.addr.to_string().parse().unwrap())
            .collect();
        let mut set = BackendSet::default();
        set.reconcile(&specs).unwrap();
        let routing = Routing::new(
            table::build(&set.members(), 101, SEED),
            &set,
            crate::decision::settings(SEED, TIMEOUT_NS),
            9,
        );
        let mut l = ProxyLayer {
            listen: Some("127.0.0.1:1".into()),
            trusted_proxies: Some("127.0.0.0/8".into()),
            ..ProxyLayer::default()
        };
        layer(&mut l);
        let config = l.validate().unwrap().unwrap();
        let proxy = Arc::new(Proxy::new(
            config,
            Arc::new(std::sync::RwLock::new(routing.clone())),
            Store::default(),
            None,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(proxy, listener));
        Self {
            proxy: addr,
            backends,
            routing,
        }
    }

    /// The backend the table gives `client` (what a client without affinity gets).
    fn by_table(&self, client: IpAddr) -> String {
        let id = choose(
            &self.routing,
            &Store::default(),
            client,
            None,
            None,
            None,
            &[],
            0,
        )
        .unwrap()
        .id;
        let addr = self.routing.set.get(id).unwrap().addr;
        let n = self.backends.iter().position(|b| b.addr == addr).unwrap();
        n.to_string()
    }

    async fn connect(&self) -> Client {
        Client::new(TcpStream::connect(self.proxy).await.unwrap())
    }

    fn seen(&self) -> usize {
        self.backends.iter().map(|b| b.seen().len()).sum()
    }
}

/// A response as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(s: TcpStream) -> Self {
        Self {
            r: BufReader::new(s),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    async fn get(&mut self, path: &str, extra: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes())
            .await;
        self.read(false).await.expect("an answer")
    }

    /// The next response (`head`: to a HEAD request); `None` if the connection closed first.
    async fn read(&mut self, head: bool) -> Option<Answer> {
        let read = async {
            let mut raw = Vec::new();
            loop {
                let mut line = Vec::new();
                if self.r.read_until(b'\n', &mut line).await.ok()? == 0 {
                    return None;
                }
                raw.extend_from_slice(&line);
                if line == b"\r\n" {
                    break;
                }
            }
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            resp.parse(&raw).ok()?;
            let status = resp.code?;
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).to_string(),
                    )
                })
                .collect();
            let mut a = Answer {
                status,
                headers,
                body: Vec::new(),
            };
            let no_body = head || status < 200 || status == 204 || status == 304;
            if no_body {
                return Some(a);
            }
            if a.header("transfer-encoding").is_some() {
                loop {
                    let mut size = String::new();
                    self.r.read_line(&mut size).await.ok()?;
                    let n = usize::from_str_radix(size.trim(), 16).ok()?;
                    let mut chunk = vec![0u8; n + 2];
                    self.r.read_exact(&mut chunk).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    a.body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(len) = a.header("content-length") {
                let mut body = vec![0u8; len.parse().ok()?];
                self.r.read_exact(&mut body).await.ok()?;
                a.body = body;
            } else {
                self.r.read_to_end(&mut a.body).await.ok()?;
            }
            Some(a)
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answer in time")
    }

    /// Whether the proxy closed the connection (EOF within a second).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.r.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

fn xff(i: usize) -> String {
    format!("X-Forwarded-For: 198.51.{}.{}\r\n", i / 200, i % 200 + 1)
}

fn client(i: usize) -> IpAddr {
    format!("198.51.{}.{}", i / 200, i % 200 + 1)
        .parse()
        .unwrap()
}

#[tokio::test]
async fn requests_of_many_clients_on_shared_connections_each_reach_their_own_backend() {
    let rig = Rig::new(|_| {}).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(rig.connect().await);
    }
    let mut used = std::collections::BTreeSet::new();
    for round in 0..3 {
        for i in 0..50 {
            let c = &mut conns[(i + round) % 4];
            let a = c.get(&format!("/r{round}/c{i}"), &xff(i)).await;
            assert_eq!(a.status, 200);
            let want = rig.by_table(client(i));
            assert_eq!(a.header("x-backend"), Some(want.as_str()), "client {i}");
            assert_eq!(
                a.header("x-target"),
                Some(format!("/r{round}/c{i}").as_str())
            );
            used.insert(want);
        }
    }
    assert_eq!(used.len(), 3, "all backends used");
    // 150 requests over 4 client connections: backend connections were reused.
    let opened: usize = rig
        .backends
        .iter()
        .map(|b| b.connections.load(Ordering::SeqCst))
        .sum();
    assert!(
        opened <= 12,
        "{opened} backend connections for 150 requests"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let rig = Rig::new(|_| {}).await;
    let mut c = rig.connect().await;
    let mut batch = String::new();
    for i in 0..8 {
        batch.push_str(&format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n{}\r\n", xff(i)));
    }
    c.send(batch.as_bytes()).await;
    for i in 0..8 {
        let a = c.read(false).await.unwrap();
        assert_eq!(a.header("x-target"), Some(format!("/p{i}").as_str()));
        assert_eq!(
            a.header("x-backend"),
            Some(rig.by_table(client(i)).as_str())
        );
    }
}

#[tokio::test]
async fn the_header_limit_is_the_same_on_every_request_of_a_connection() {
    let rig = Rig::new(|l| l.ignore_missing_header = Some(true)).await;
    let head = |lines: usize| {
        let mut h = "GET / HTTP/1.1\r\nHost: x\r\n".to_string();
        for i in 1..lines {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        h + "\r\n"
    };
    let mut c = rig.connect().await;
    // The first head is checked by sticky, the later ones by hyper: the same limit.
    for _ in 0..2 {
        c.send(head(MAX_HEADERS).as_bytes()).await;
        assert_eq!(c.read(false).await.map(|a| a.status), Some(200));
    }
    c.send(head(MAX_HEADERS + 1).as_bytes()).await;
    let refused = c.read(false).await.map(|a| a.status);
    assert!(refused.is_some_and(|s| s >= 400), "{refused:?}");
    let mut first = rig.connect().await;
    first.send(head(MAX_HEADERS + 1).as_bytes()).await;
    assert_eq!(first.read(false).await.map(|a| a.status), Some(400));
    assert_eq!(rig.seen(), 2);
}

#[tokio::test]
async fn bodies_are_framed_both_ways() {
    let rig = Rig::new(|_| {}).await;
    let mut c = rig.connect().await;
    let x = xff(1);
    // Content-Length, then a chunked request body (forwarded whole), then a large one.
    c.send(format!("POST /e HTTP/1.1\r\nHost: x\r\n{x}Content-Length: 5\r\n\r\nhello").as_bytes())
        .await;
    assert_eq!(c.read(false).await.unwrap().body, b"hello");
    c.send(
        format!(
            "POST /e HTTP/1.1\r\nHost: x\r\n{x}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.read(false).await.unwrap().body, b"abcde");
    let big = vec![b'z'; 300_000];
    c.send(
        format!(
            "POST /e HTTP/1.1\r\nHost: x\r\n{x}Content-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&big).await;
    assert_eq!(c.read(false).await.unwrap().body, big);
    // Expect: 100-continue gets its interim answer, then the final one.
    c.send(
        format!(
            "PUT /e HTTP/1.1\r\nHost: x\r\n{x}Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.read(false).await.unwrap().status, 100);
    c.send(b"ok").await;
    assert_eq!(c.read(false).await.unwrap().body, b"ok");
    // A chunked response, HEAD, 204 and 304: the next request on the connection still works.
    let a = c.get("/chunked", &x).await;
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    c.send(format!("HEAD /len5 HTTP/1.1\r\nHost: x\r\n{x}\r\n").as_bytes())
        .await;
    let a = c.read(true).await.unwrap();
    assert_eq!((a.status, a.header("content-length")), (200, Some("5")));
    assert_eq!(c.get("/204", &x).await.status, 204);
    assert_eq!(c.get("/304", &x).await.status, 304);
    let a = c.get("/last", &x).await;
    assert_eq!(a.header("x-target"), Some("/last"));
    let seen: Vec<Seen> = rig.backends.iter().flat_map(Backend::seen).collect();
    assert_eq!(seen.len(), 9);
    assert!(
        seen.iter().all(|s| !s.headers.contains_key("expect")
            && s.headers.get_all("transfer-encoding").iter().count() <= 1),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s.method == "HEAD"));
}

/// The classic smuggling shapes; each must be refused with 400 and a close, first on a new
/// connection and again after a good request on a kept-alive one, with nothing forwarded.
#[tokio::test]
async fn smuggling_is_refused_and_reaches_no_backend() {
    let corpus: &[&[u8]] = &[
        // CL.TE and TE.CL
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // TE.TE obfuscations
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // Duplicate and invalid lengths
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        // Invalid chunk sizes
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",
        // Obsolete line folding, whitespace before the colon, bare CR
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\rContent-Length: 5\r\n\r\n",
        b"GET / HTTP/1.1\rHost: x\r\n\r\n",
    ];
    let rig = Rig::new(|l| l.ignore_missing_header = Some(true)).await;
    for (i, raw) in corpus.iter().enumerate() {
        let text = String::from_utf8_lossy(raw);
        let mut c = rig.connect().await;
        c.send(raw).await;
        let a = c.read(false).await;
        assert_eq!(a.map(|a| a.status), Some(400), "case {i} first: {text:?}");
        assert!(c.closed().await, "case {i} first: not closed");
        assert_eq!(rig.seen(), i, "case {i} first reached a backend: {text:?}");

        let mut c = rig.connect().await;
        assert_eq!(c.get("/good", "").await.status, 200);
        c.send(raw).await;
        let a = c.read(false).await;
        assert_eq!(
            a.map(|a| a.status),
            Some(400),
            "case {i} kept-alive: {text:?}"
        );
        assert!(c.closed().await, "case {i} kept-alive: not closed");
        let seen: Vec<Seen> = rig.backends.iter().flat_map(Backend::seen).collect();
        assert_eq!(
            seen.len(),
            i + 1,
            "case {i} kept-alive reached a backend: {seen:?}"
        );
        assert!(seen.iter().all(|s| s.target == "/good"));
    }
}

#[tokio::test]
async fn a_session_stays_on_its_backend_from_any_address() {
    let rig = Rig::new(|_| {}).await;
    // Two clients the table sends to different backends.
    let a = 0;
    let b = (1..200)
        .find(|&i| rig.by_table(client(i)) != rig.by_table(client(a)))
        .unwrap();
    let mut c = rig.connect().await;
    let hs = c
        .get("/socket.io/?EIO=4&transport=polling&t=1", &xff(a))
        .await;
    let owner = hs.header("x-backend").unwrap().to_string();
    assert_eq!(owner, rig.by_table(client(a)));
    let body = String::from_utf8(hs.body).unwrap();
    let sid = super::sid::from_handshake(body.as_bytes()).unwrap();
    for path in [
        format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        format!("/socket.io/?EIO=4&transport=polling&t=2&sid={sid}"),
    ] {
        let mut other = rig.connect().await;
        let got = other.get(&path, &xff(b)).await;
        assert_eq!(
            (got.status, got.header("x-backend")),
            (200, Some(owner.as_str()))
        );
    }
    // Unknown and forged sids: routed as usual, answered by that backend, not by sticky.
    for forged in ["nope", "b9s1", &"x".repeat(200)] {
        let got = c
            .get(
                &format!("/socket.io/?EIO=4&transport=polling&sid={forged}"),
                &xff(b),
            )
            .await;
        assert_eq!(
            got.header("x-backend"),
            Some(rig.by_table(client(b)).as_str())
        );
    }
    // With --no-sid the session is not followed.
    let rig = Rig::new(|l| l.sid = Some(false)).await;
    let b = (1..200)
        .find(|&i| rig.by_table(client(i)) != rig.by_table(client(a)))
        .unwrap();
    let mut c = rig.connect().await;
    let hs = c.get("/socket.io/?EIO=4&transport=polling", &xff(a)).await;
    let sid = super::sid::from_handshake(&hs.body).unwrap();
    let got = c
        .get(
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            &xff(b),
        )
        .await;
    assert_eq!(got.status, 400, "session unknown on the other backend");
}

#[tokio::test]
async fn forwarded_for_and_refusals() {
    for (how, want) in [
        (None, "203.0.113.5"),
        (Some("append"), "203.0.113.5, 127.0.0.1"),
        (Some("replace"), "203.0.113.5"),
    ] {
        let rig = Rig::new(|l| {
            l.forwarded_for = how.map(|h| clap::ValueEnum::from_str(h, false).unwrap());
            l.trusted_proxies = Some("127.0.0.0/8,10.0.0.0/8".into());
        })
        .await;
        let mut c = rig.connect().await;
        let extra = "X-Forwarded-For: 203.0.113.5\r\n";
        assert_eq!(c.get("/", extra).await.status, 200);
        let seen: Vec<Seen> = rig.backends.iter().flat_map(Backend::seen).collect();
        assert_eq!(seen[0].headers["x-forwarded-for"], want, "{how:?}");
    }
    let rig = Rig::new(|l| l.cookie = Some("SRV".into())).await;
    let mut c = rig.connect().await;
    let a = c.get("/", &xff(1)).await;
    let cookie = a.header("set-cookie").unwrap().to_string();
    assert!(cookie.starts_with("SRV="), "{cookie}");
    let token = cookie.split(';').next().unwrap().to_string();
    let again = c.get("/", &format!("{}Cookie: {token}\r\n", xff(2))).await;
    assert_eq!(again.header("x-backend"), a.header("x-backend"));
    assert!(again.header("set-cookie").is_none());
    // A trusted peer without the header: 400, closed, nothing forwarded.
    let before = rig.seen();
    let mut c = rig.connect().await;
    assert_eq!(c.get("/", "").await.status, 400);
    assert!(c.closed().await);
    assert_eq!(rig.seen(), before);
}

#[tokio::test]
async fn backend_connections_are_pooled_bounded_and_closed_when_asked() {
    let rig = Rig::new(|l| l.pool_max_idle = Some(1)).await;
    let x = xff(7);
    let n: usize = rig.by_table(client(7)).parse().unwrap();
    let opened = || rig.backends[n].connections.load(Ordering::SeqCst);
    let mut c = rig.connect().await;
    for _ in 0..5 {
        assert_eq!(c.get("/", &x).await.status, 200);
    }
    assert_eq!(
        opened(),
        1,
        "one backend connection for sequential requests"
    );
    // The backend closes after this answer: the next request opens a new connection.
    assert_eq!(c.get("/close", &x).await.status, 200);
    assert_eq!(c.get("/", &x).await.status, 200);
    assert_eq!(opened(), 2);
    // Three at once need three connections; one stays idle.
    let mut cs = Vec::new();
    for _ in 0..3 {
        let mut c = rig.connect().await;
        c.send(format!("POST /e HTTP/1.1\r\nHost: x\r\n{x}Content-Length: 3\r\n\r\n").as_bytes())
            .await;
        cs.push(c);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for c in &mut cs {
        c.send(b"abc").await;
        assert_eq!(c.read(false).await.unwrap().body, b"abc");
    }
    for c in &mut cs {
        assert_eq!(c.get("/", &x).await.status, 200);
    }
    assert!(opened() <= 5, "{}", opened());
}

/// A keep-alive connection idle past `--keepalive-timeout` is closed: not before it, and at
/// most a coarse timer tick (plus a loaded machine's slack) after it.
#[tokio::test]
async fn an_idle_keepalive_connection_is_closed_after_its_timeout() {
    let rig = Rig::new(|l| l.keepalive_timeout = Some("600ms".into())).await;
    let mut c = rig.connect().await;
    assert_eq!(c.get("/", &xff(1)).await.status, 200);
    let idle = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), c.r.read_to_end(&mut rest))
        .await
        .expect("not closed within 5 s")
        .unwrap_or(0);
    let waited = idle.elapsed();
    assert_eq!(n, 0, "closed without a word: {rest:?}");
    assert!(
        waited >= Duration::from_millis(600),
        "closed early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(600) + 6 * super::coarse_timer::TICK,
        "closed late: {waited:?}"
    );
}

#[tokio::test]
async fn an_upgrade_hands_both_sockets_over_with_early_bytes() {
    let rig = Rig::new(|l| l.max_connections = Some(1)).await;
    let mut c = rig.connect().await;
    // A request first, then the upgrade with bytes right behind it in the same write.
    assert_eq!(c.get("/before", &xff(3)).await.status, 200);
    c.send(
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\n{}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly",
            xff(3)
        )
        .as_bytes(),
    )
    .await;
    let a = c.read(true).await.unwrap();
    assert_eq!(a.status, 101);
    let mut got = vec![0u8; 5];
    c.r.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"early");
    // The upgraded connection still holds its place under --max-connections.
    let mut second = rig.connect().await;
    assert_eq!(second.read(false).await.map(|a| a.status), Some(503));
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.r.into_inner().into_split();
    let p = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&p).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back, payload, "echoed after the upgrade, then closed");
}

/// A backend speaking raw bytes: `serve` gets each connection it accepts.
async fn raw<F, Fut>(serve: F) -> Backend
where
    F: Fn(BufReader<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(BufReader::new(tcp)));
        }
    });
    Backend {
        addr,
        seen: Arc::default(),
        connections,
    }
}

/// A backend that answers the first request on each connection and closes the connection
/// when the next one arrives: a kept-alive connection it dropped as the proxy reused it.
async fn one_per_connection() -> Backend {
    raw(|mut r| async move {
        for answered in [false, true] {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            let _ = r.read_exact(&mut body).await;
            if answered {
                return;
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn a_dead_pooled_connection_is_replaced_once_for_an_idempotent_request() {
    let rig = Rig::with(vec![one_per_connection().await], |_| {}).await;
    let mut c = rig.connect().await;
    let x = xff(1);
    assert_eq!(c.get("/", &x).await.status, 200);
    // Reused, found dead after the request was written: a GET is sent again on a new one.
    assert_eq!(c.get("/", &x).await.status, 200);
    assert_eq!(rig.backends[0].connections.load(Ordering::SeqCst), 2);
    // A POST may not be sent twice: 502.
    c.send(format!("POST / HTTP/1.1\r\nHost: x\r\n{x}Content-Length: 1\r\n\r\nz").as_bytes())
        .await;
    assert_eq!(c.read(false).await.map(|a| a.status), Some(502));
}

/// A backend that reads a request head and answers `answer` (as it is), then closes.
async fn raw_backend(answer: Vec<u8>) -> Backend {
    raw(move |mut r| {
        let answer = answer.clone();
        async move {
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = r.get_mut().write_all(&answer).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_malformed_or_missing_response_is_a_502() {
    let huge = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answers: [Vec<u8>; 5] = [
        b"garbage\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
        huge.into_bytes(),
        Vec::new(),
    ];
    for answer in answers {
        let shown = String::from_utf8_lossy(&answer[..answer.len().min(60)]).into_owned();
        let rig = Rig::with(vec![raw_backend(answer).await], |_| {}).await;
        let mut c = rig.connect().await;
        let a = c.get("/", &xff(1)).await;
        assert_eq!(a.status, 502, "{shown:?}");
        assert!(c.closed().await, "{shown:?}");
    }
}
