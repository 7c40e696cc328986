//! The proxy listener: per connection, the connection limit, the PROXY header and the first
//! request head (size limit, slowloris), then hyper serves its requests one by one
//! (`forward`) until it closes or switches protocols (`upgrade`).
//!
//! With one worker (`TOKIO_WORKER_THREADS=1`, as HAProxy's `nbthread 1` or one nginx worker)
//! the proxy runs on a thread of its own, a single-threaded runtime: every request read in one
//! turn of the event loop is passed on before the backends are written to, where the
//! multi-threaded runtime ran each woken backend connection at once, one request per wake-up
//! of the backend (0.83 context switches per request against 0.56; keep-alive req/s 0.65x
//! -> 0.82x HAProxy's). With more, it runs on the daemon's multi-threaded runtime: one such
//! single-threaded worker per CPU, each accepting on the shared listener with its own pool,
//! was tried and made the 10k sequential connections of tests/tests/proxy.rs 2.6x slower
//! (cause not found yet).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context as _;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, warn};

use crate::http::{self, HeadError, ReadError};

use super::{
    coarse_timer::CoarseTimer,
    config::ProxyConfig,
    forward::{self, Conn},
    guard::Guard,
    io::Stream,
    pool::Pool,
    proxy_protocol,
    routing::{AffinityStore, SharedRouting},
    sid::{self, SidTable},
    splice::SharedSplicer,
};

/// hyper's smallest read buffer: heads after the first are limited to at least this.
const MIN_HEAD_BUFFER: usize = 8192;

pub struct Proxy {
    pub config: ProxyConfig,
    pub routing: SharedRouting,
    /// The kernel's client-affinity map (another store in tests).
    pub affinity: Box<dyn AffinityStore + Send + Sync>,
    pub splicer: Option<SharedSplicer>,
    pub sids: SidTable,
    http: http1::Builder,
    /// Places under `--max-connections`, shared by every worker.
    slots: Arc<Semaphore>,
    /// Connections past the limit being told so, shared by every worker.
    refusals: Arc<Semaphore>,
}

impl Proxy {
    pub fn new(
        config: ProxyConfig,
        routing: SharedRouting,
        affinity: impl AffinityStore + Send + Sync + 'static,
        splicer: Option<SharedSplicer>,
    ) -> Self {
        let affinity_timeout = routing.read().map_or(0, |r| r.settings.affinity_timeout_ns);
        let mut http = http1::Builder::new();
        http.timer(CoarseTimer)
            // Starts when the connection waits for a request: the keep-alive idle limit (at
            // most a `coarse_timer::TICK` late).
            .header_read_timeout(config.keepalive_timeout)
            // A client may half-close after its request and still read the answer.
            .half_close(true)
            .max_buf_size(config.max_head.max(MIN_HEAD_BUFFER))
            // hyper's own header limit is `http::MAX_HEADERS`; setting one costs two
            // allocations a head.
            // Header names as most servers write them (hyper's own are lower case).
            .title_case_headers(true)
            .auto_date_header(false);
        Self {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            refusals: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            sids: SidTable::new(sid::MAX_ENTRIES, affinity_timeout),
            http,
            config,
            routing,
            affinity: Box::new(affinity),
            splicer,
        }
    }
}

/// Runtime workers: `TOKIO_WORKER_THREADS` if set, else one per CPU the process may use (as
/// tokio counts them for the daemon's runtime).
pub fn worker_count() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1)
}

/// The proxy's listening socket. Its accept queue holds `max_connections` (the kernel caps it
/// at `net.core.somaxconn`), never fewer than 1024: a burst of connections the workers have
/// not accepted yet waits there. A full queue drops handshakes: the client's SYN is sent
/// again a second later, and a client whose last ACK was dropped believes it is connected
/// to a proxy that may never see it (its SYN-ACK retries run out while the queue stays full).
pub fn listen(addr: SocketAddr, max_connections: usize) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(u32::try_from(max_connections).unwrap_or(u32::MAX).max(1024))
}

/// Serves `listener` on a thread of its own, a single-threaded runtime, until the process
/// exits.
pub fn spawn_worker(proxy: Arc<Proxy>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    listener
        .set_nonblocking(true)
        .context("proxy listener: non-blocking")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("proxy worker runtime")?;
    std::thread::Builder::new()
        .name("sticky-proxy".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(proxy, listener).await,
                    Err(e) => warn!("proxy worker: {e}"),
                }
            });
        })
        .context("start the proxy worker thread")?;
    Ok(())
}

/// Accepts and serves connections on the current runtime, with a backend pool of its own.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let cfg = &proxy.config;
    let pool = Arc::new(Pool::new(
        cfg.pool_max_idle,
        cfg.pool_idle_timeout,
        cfg.connect_timeout,
    ));
    let sweeper = Arc::downgrade(&pool);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        while let Some(pool) = {
            tick.tick().await;
            sweeper.upgrade()
        } {
            pool.sweep();
        }
    });
    let limit = proxy.config.max_connections;
    let full = http::response_status(503, "connection limit reached");
    let mut refused = Refused::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match proxy.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let (proxy, pool) = (proxy.clone(), pool.clone());
                    tokio::spawn(async move {
                        if let Err(e) = handle(proxy, pool, stream, peer, slot).await {
                            debug!("proxy connection from {peer}: {e:#}");
                        }
                    });
                }
                Err(_) => {
                    refused.one(limit);
                    refuse_over_limit(stream, &full, &proxy.refusals);
                }
            },
            Err(e) => {
                // Out of fds or similar: back off instead of spinning.
                warn!("proxy accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connections past the limit being told so at once, at most; past this they are just closed.
const REFUSALS_AT_ONCE: usize = 256;
/// How long a refused client may take to read the 503 before its socket is closed.
const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers 503 and closes, reading what the client already sent so the close is a FIN (not
/// a reset that could destroy the answer); bounded in time and in how many at once.
fn refuse_over_limit(mut stream: TcpStream, answer: &[u8], refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let answer = answer.to_vec();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// Counts refusals and logs them at most every 10 seconds.
#[derive(Default)]
struct Refused {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refused {
    fn one(&mut self, limit: usize) {
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
        {
            warn!(
                "proxy: {limit} connections open (--max-connections): refused {} new ones",
                self.since_log
            );
            self.since_log = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// An answer to the client before any backend is involved.
struct Refusal {
    /// The HTTP status sent.
    status: u16,
    /// What kind of refusal, for the log.
    kind: &'static str,
    /// The response body: what was wrong.
    detail: String,
}

/// `Refusal { status, kind, detail }`, shorter at the many call sites.
fn refusal(status: u16, kind: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        kind,
        detail: detail.into(),
    }
}

async fn refuse(client: &mut TcpStream, r: Refusal) -> anyhow::Result<()> {
    let _ = client
        .write_all(&http::response_status(r.status, &r.detail))
        .await;
    let _ = client.shutdown().await;
    anyhow::bail!("{} {}: {}", r.status, r.kind, r.detail)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What waiting for a complete header gave.
enum Waited<T> {
    Parsed(T),
    /// The client closed first.
    Closed,
    /// Malformed, too large, or not complete before the deadline (`408`).
    Refused(Refusal),
}

/// Reads from the client until `parse` finds a complete header in `buf`, the client closes,
/// `parse` refuses what it got, or `deadline` passes (`408`, `late` saying what was missing).
async fn read_until<T>(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    late: &str,
    parse: impl FnMut(&[u8]) -> Result<Option<T>, Refusal>,
) -> anyhow::Result<Waited<T>> {
    match http::read::until(client, buf, deadline, parse).await {
        Ok(found) => Ok(Waited::Parsed(found)),
        Err(ReadError::Closed) => Ok(Waited::Closed),
        Err(ReadError::Timeout) => Ok(Waited::Refused(refusal(
            408,
            "timeout",
            format!("{late} in time"),
        ))),
        Err(ReadError::Parse(r)) => Ok(Waited::Refused(r)),
        Err(ReadError::Io(e)) => Err(e.into()),
    }
}

/// Serves one client connection; `slot` (its place under `--max-connections`) is held until
/// it closes, by the upgraded connection if it switches protocols.
async fn handle(
    proxy: Arc<Proxy>,
    pool: Arc<Pool>,
    mut client: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
) -> anyhow::Result<()> {
    let cfg = &proxy.config;
    let deadline = tokio::time::Instant::now() + cfg.header_timeout;
    let mut buf = Vec::with_capacity(4096);
    let mut peer_ip = canonical(peer.ip());
    // Everything read from the client so far, PROXY header included.
    let mut client_read = 0u64;

    if cfg.proxy_protocol {
        let parsed = read_until(&mut client, &mut buf, deadline, "no PROXY header", |b| {
            proxy_protocol::parse(b).map_err(|e| refusal(400, "bad PROXY header", e.to_string()))
        })
        .await?;
        let (header, used) = match parsed {
            Waited::Parsed(found) => found,
            Waited::Closed => return Ok(()),
            Waited::Refused(r) => return refuse(&mut client, r).await,
        };
        client_read += used as u64;
        // Only a trusted balancer may tell us who the client is.
        if cfg.trusted.contains(peer_ip)
            && let Some(src) = header.source
        {
            peer_ip = canonical(src.ip());
        }
        buf.drain(..used);
    }

    // The first head is checked here, where its size limit is exact and a client too slow to
    // send it gets a 408; hyper parses it again, and the later ones alone.
    let parsed = read_until(
        &mut client,
        &mut buf,
        deadline,
        "request head not complete",
        |b| {
            http::request::parse(b, cfg.max_head).map_err(|e| match e {
                HeadError::TooLarge { .. } => refusal(
                    e.status(),
                    "head too large",
                    format!("request head over {} bytes", cfg.max_head),
                ),
                e => refusal(e.status(), "malformed", e.to_string()),
            })
        },
    )
    .await?;
    match parsed {
        Waited::Parsed(_) => {}
        Waited::Closed => return Ok(()),
        Waited::Refused(r) => return refuse(&mut client, r).await,
    }
    client_read += buf.len() as u64;
    let _ = client.set_nodelay(true);
    let guard = Guard::new(cfg.max_head.max(MIN_HEAD_BUFFER));
    let io = TokioIo::new(Stream::guarded(client, buf, client_read, guard));
    let conn = Arc::new(Conn {
        proxy: proxy.clone(),
        pool,
        peer,
        peer_ip,
        slot: Mutex::new(Some(slot)),
    });
    let service = service_fn(move |req| forward::serve(conn.clone(), req));
    proxy
        .http
        .serve_connection(io, service)
        .with_upgrades()
        .await
        .context("client connection")
}
