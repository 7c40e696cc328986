//! The proxy listener: per connection, learn the client, pick and reach the backend, forward
//! the buffered head, then hand the byte pumping to the kernel (or copy).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use crate::{
    clock::monotonic_ns,
    http::{self, HeadError, ReadError, RequestHead},
};

use super::{
    client_ip::{ClientIpError, client_ip},
    config::ProxyConfig,
    cookie, proxy_protocol,
    routing::{AffinityMap, Reason, SharedRouting, choose},
    splice::{self, Handoff, SharedSplicer},
};

/// Backends tried for a client without live affinity before answering 502.
const CONNECT_ATTEMPTS: usize = 3;

pub struct Proxy {
    pub config: ProxyConfig,
    pub routing: SharedRouting,
    pub affinity: AffinityMap,
    pub splicer: Option<SharedSplicer>,
}

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let limit = proxy.config.max_connections;
    let slots = Arc::new(Semaphore::new(limit));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let full = http::response_status(503, "connection limit reached");
    let mut refused = Refused::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(&proxy, stream, peer).await {
                            debug!("proxy connection from {peer}: {e:#}");
                        }
                        drop(slot);
                    });
                }
                Err(_) => {
                    refused.one(limit);
                    refuse_over_limit(stream, &full, &refusals);
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

async fn handle(proxy: &Proxy, mut client: TcpStream, peer: SocketAddr) -> anyhow::Result<()> {
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
    let head: RequestHead = match parsed {
        Waited::Parsed(h) => h,
        Waited::Closed => return Ok(()),
        Waited::Refused(r) => return refuse(&mut client, r).await,
    };

    let client_addr = if cfg.proxy_protocol {
        peer_ip
    } else {
        match client_ip(&head, &cfg.source, peer_ip, &cfg.trusted) {
            Ok(ip) => canonical(ip),
            Err(ClientIpError::Missing { .. }) if cfg.ignore_missing_header => peer_ip,
            Err(ClientIpError::Missing { .. }) => {
                return refuse(
                    &mut client,
                    refusal(
                        400,
                        "missing header",
                        format!("missing {} header", cfg.header_name),
                    ),
                )
                .await;
            }
            Err(e) => return refuse(&mut client, refusal(400, "bad header", e.to_string())).await,
        }
    };

    let token = cfg
        .cookie
        .as_ref()
        .and_then(|name| cookie::find(&head, name));
    // Cookie mode spreads cookieless requests per connection (see `routing::choose`).
    let per_connection = cfg.cookie.as_ref().map(|_| peer.port());
    let (mut backend, choice) =
        match connect(proxy, client_addr, token.as_deref(), per_connection).await {
            Ok(found) => found,
            Err(r) => return refuse(&mut client, r).await,
        };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    client_read += buf.len() as u64;
    backend
        .write_all(&buf)
        .await
        .context("forward the request head")?;
    let mut backend_read = 0u64;

    // Cookie insert (HAProxy `cookie insert`): tell a client without a valid cookie where it
    // landed, in the first response.
    if let Some(name) = &cfg.cookie
        && (choice.reason != Reason::Cookie
            || token.as_deref() != Some(choice.backend.token.as_str()))
    {
        let line = cookie::set_cookie_line(name, &choice.backend.token);
        let mut response = Vec::with_capacity(4096);
        let answer_deadline = tokio::time::Instant::now() + cfg.header_timeout;
        let read = http::read::until(&mut backend, &mut response, answer_deadline, |b| {
            match cookie::insert_into_response(b, &line) {
                Some(with_cookie) => Ok(Some(with_cookie)),
                // No status line within the limit (not HTTP/1.x, say): passed on untouched.
                None if b.len() > cfg.max_head => Err(()),
                None => Ok(None),
            }
        })
        .await;
        backend_read += response.len() as u64;
        match read {
            Ok(with_cookie) => client.write_all(&with_cookie).await?,
            Err(ReadError::Parse(())) => client.write_all(&response).await?,
            Err(ReadError::Closed | ReadError::Timeout) => {
                client.write_all(&response).await?;
                let _ = client.shutdown().await;
                return Ok(());
            }
            Err(ReadError::Io(e)) => return Err(e.into()),
        }
    }

    // Short exchanges stay in small userspace buffers. A WebSocket (101) is spliced: the
    // kernel carries it for its whole life with no proxy CPU. A connection that outgrows the
    // small buffers is copied with large ones (faster than the splice for bulk here, see the
    // README), or spliced when `--splice-after` asks for it.
    let limit = cfg.splice_after.unwrap_or(SMALL_PHASE);
    let splice_now = match splice::copy_until(&mut client, &mut backend, limit).await? {
        Handoff::Closed => return Ok(()),
        Handoff::Grown {
            client_read: c,
            backend_read: b,
            upgraded,
        } => {
            client_read += c;
            backend_read += b;
            upgraded || cfg.splice_after.is_some()
        }
    };
    match &proxy.splicer {
        Some(splicer) if splice_now => {
            if let Err((c, b, why)) =
                splice::splice(splicer, client, backend, client_read, backend_read).await
            {
                debug!("copying instead of splicing: {why}");
                splice::copy(c, b).await?;
            }
        }
        _ => {
            splice::copy(client, backend).await?;
        }
    }
    Ok(())
}

/// Bytes a connection moves through small buffers before it gets large ones (or the splice).
const SMALL_PHASE: u64 = 1 << 20;

/// Chooses and connects; a client with no live affinity or cookie moves on to the next
/// backend when one refuses, an affine one gets 502 (moving it would lose its session).
async fn connect(
    proxy: &Proxy,
    client: IpAddr,
    token: Option<&str>,
    per_connection: Option<u16>,
) -> Result<(TcpStream, super::routing::Choice), Refusal> {
    let mut exclude = Vec::new();
    for _ in 0..CONNECT_ATTEMPTS {
        let choice = {
            let routing = proxy
                .routing
                .read()
                .map_err(|_| refusal(500, "internal", "routing state poisoned"))?;
            choose(
                &routing,
                &proxy.affinity,
                client,
                token,
                per_connection,
                &exclude,
                monotonic_ns(),
            )
        };
        let Some(choice) = choice else {
            return Err(refusal(503, "no backend", "no backend in service"));
        };
        let started = Instant::now();
        match tokio::time::timeout(
            proxy.config.connect_timeout,
            TcpStream::connect(choice.backend.addr),
        )
        .await
        {
            Ok(Ok(stream)) => return Ok((stream, choice)),
            outcome => {
                info!(
                    "backend {} unreachable for {client} after {:?}: {}",
                    choice.backend.addr,
                    started.elapsed(),
                    match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timeout".into(),
                    }
                );
                if choice.reason != Reason::Table {
                    return Err(refusal(
                        502,
                        "backend down",
                        format!("backend {} unreachable", choice.backend.addr),
                    ));
                }
                exclude.push(choice.id);
            }
        }
    }
    Err(refusal(502, "backends down", "no backend reachable"))
}
