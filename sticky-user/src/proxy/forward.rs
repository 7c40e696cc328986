//! One request: its client, session and cookie; its backend by the shared decision; sent over
//! a pooled backend connection; its response with the cookie set and the session learnt.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderValue, Method, Request, Response, StatusCode, Version,
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, SET_COOKIE, TRANSFER_ENCODING},
};
use hyper::body::{Body as _, Incoming};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};

use super::{
    backend::{self, BackendConn, ExchangeError, ResponseHead},
    body::{Prefix, Relay, Rest, read_prefix},
    client_ip::{ClientIpError, client_ip},
    cookie, framing, guard,
    pool::Pool,
    response_body::{ResponseBody, Return},
    routing::{Choice, Reason, choose},
    server::Proxy,
    sid, upgrade,
};
use crate::clock::monotonic_ns;

/// Backends tried for a client without live affinity before answering 502.
const CONNECT_ATTEMPTS: usize = 3;
/// A request body up to this size that arrives with its head (within `HOLD_PATIENCE`) is read
/// in full before anything is sent to a backend, so a malformed one (a bad chunk size)
/// reaches no backend and a failed send can be retried.
const BODY_HOLD: usize = 64 * 1024;
/// A polling handshake's response larger than this is passed on without looking for its sid.
const HANDSHAKE_HOLD: usize = 4 * 1024;
/// How long a body is waited for before what came of it is forwarded: a client may stream,
/// waiting for the response before it sends more.
const HOLD_PATIENCE: Duration = Duration::from_millis(100);

/// The client connection a request arrived on.
pub struct Conn {
    pub proxy: Arc<Proxy>,
    /// The backend pool of the worker serving it.
    pub pool: Arc<Pool>,
    pub peer: SocketAddr,
    /// The peer, or a trusted PROXY header's source.
    pub peer_ip: IpAddr,
    /// Its place under `--max-connections`, taken over by an upgrade.
    pub slot: Mutex<Option<OwnedSemaphorePermit>>,
}

/// An answer sticky gives itself; the connection closes after it.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub detail: String,
}

pub fn refusal(status: u16, detail: impl Into<String>) -> Refusal {
    Refusal {
        status,
        detail: detail.into(),
    }
}

impl Refusal {
    fn response(self) -> Response<Relay> {
        let mut r = Response::new(Relay::bytes(format!("{}\n", self.detail)));
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let h = r.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("close"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}

/// hyper's service: every request gets an answer, the backend's or sticky's.
pub async fn serve(conn: Arc<Conn>, req: Request<Incoming>) -> Result<Response<Relay>, Infallible> {
    Ok(match forward(&conn, req).await {
        Ok(r) => r,
        Err(r) => {
            debug!("proxy {}: {} {}", conn.peer, r.status, r.detail);
            r.response()
        }
    })
}

/// What the request says about routing, read before its headers are changed.
struct Route {
    client: IpAddr,
    token: Option<String>,
    sid: Option<String>,
    handshake: bool,
}

fn route_of(conn: &Conn, req: &Request<Incoming>) -> Result<Route, Refusal> {
    let cfg = &conn.proxy.config;
    let client = if cfg.proxy_protocol {
        conn.peer_ip
    } else {
        match client_ip(req.headers(), &cfg.source, conn.peer_ip, &cfg.trusted) {
            Ok(ip) => ip.to_canonical(),
            Err(ClientIpError::Missing { .. }) if cfg.ignore_missing_header => conn.peer_ip,
            Err(ClientIpError::Missing { .. }) => {
                return Err(refusal(400, format!("missing {} header", cfg.header_name)));
            }
            Err(e) => return Err(refusal(400, e.to_string())),
        }
    };
    let token = cfg
        .cookie
        .as_ref()
        .and_then(|name| cookie::find(req.headers(), name));
    let engine = cfg
        .sid
        .then(|| req.uri().path_and_query())
        .flatten()
        .and_then(|pq| sid::from_target(pq.as_str()));
    Ok(Route {
        client,
        token,
        sid: engine.as_ref().and_then(|e| e.sid.map(str::to_owned)),
        handshake: engine.is_some_and(|e| e.sid.is_none() && !e.websocket)
            && req.method() == Method::GET,
    })
}

async fn forward(conn: &Conn, mut req: Request<Incoming>) -> Result<Response<Relay>, Refusal> {
    let proxy = &conn.proxy;
    let cfg = &proxy.config;
    if let Some(why) = req.headers().get(&guard::REFUSED_NAME) {
        let why = String::from_utf8_lossy(why.as_bytes());
        return Err(refusal(400, format!("request refused: {why}")));
    }
    let route = route_of(conn, &req)?;
    let upgrade = framing::wants_upgrade(req.headers());
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let body = if body.is_end_stream() {
        Prefix::Whole(Bytes::new())
    } else {
        read_prefix(body, BODY_HOLD, HOLD_PATIENCE)
            .await
            .map_err(|e| refusal(400, format!("malformed request body: {e}")))?
    };
    let protect = [cfg.source.header_name(), framing::X_FORWARDED_FOR];
    framing::strip_hop_by_hop(&mut parts.headers, upgrade, &protect);
    framing::forwarded_for(
        &mut parts.headers,
        cfg.forwarded_for,
        conn.peer_ip,
        route.client,
    );
    // hyper answered an `Expect: 100-continue` when the body was read.
    parts.headers.remove(EXPECT);
    parts.version = Version::HTTP_11;
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );

    let (head, backend, choice) =
        send(conn, &route, &parts, Relay::from_prefix(body), idempotent).await?;
    let ResponseHead {
        status,
        version,
        mut headers,
        framing: body_framing,
        close,
        stripped,
    } = head;
    let learn = |sid: &str| {
        proxy
            .sids
            .put(sid, choice.id, choice.backend.generation, monotonic_ns());
    };

    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(on_client) = on_client_upgrade else {
            return Err(refusal(502, "backend switched protocols unasked"));
        };
        let (splicer, after) = (proxy.splicer.clone(), cfg.splice_after);
        let slot = conn.slot.lock().ok().and_then(|mut s| s.take());
        let taken = backend
            .into_parts()
            .map_err(|e| refusal(502, format!("upgrade: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = upgrade::carry(on_client, taken, splicer, after).await {
                debug!("upgraded connection: {e:#}");
            }
            drop(slot);
        });
        if let Some(sid) = &route.sid {
            learn(sid);
        }
        set_cookie(conn, &route, &choice, &mut headers);
        return Ok(response(status, headers, Relay::empty()));
    }

    let keep = !close && version == Version::HTTP_11;
    let back = keep.then(|| Return {
        pool: conn.pool.clone(),
        addr: choice.backend.addr,
    });
    let incoming = ResponseBody::new(backend, body_framing, back);
    let out = if status.is_success() && route.handshake {
        let prefix = read_prefix(incoming, HANDSHAKE_HOLD, HOLD_PATIENCE)
            .await
            .map_err(|e| refusal(502, format!("backend response: {e}")))?;
        if let Prefix::Whole(b) = &prefix
            && let Some(sid) = sid::from_handshake(b)
        {
            learn(&sid);
        }
        Relay::from_prefix(prefix)
    } else {
        if status.is_success()
            && let Some(sid) = &route.sid
        {
            learn(sid);
        }
        Relay::stream(incoming)
    };
    if !stripped {
        framing::strip_hop_by_hop(&mut headers, false, &[]);
    }
    set_cookie(conn, &route, &choice, &mut headers);
    Ok(response(status, headers, out))
}

fn response(status: StatusCode, headers: http::HeaderMap, body: Relay) -> Response<Relay> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// Cookie insert (HAProxy `cookie insert`): tells a client without a valid cookie where it
/// landed.
fn set_cookie(conn: &Conn, route: &Route, choice: &Choice, headers: &mut http::HeaderMap) {
    if let Some(name) = &conn.proxy.config.cookie
        && (choice.reason != Reason::Cookie
            || route.token.as_deref() != Some(choice.backend.token.as_str()))
        && let Ok(v) = HeaderValue::from_str(&cookie::set_cookie_value(name, &choice.backend.token))
    {
        headers.append(SET_COOKIE, v);
    }
}

/// Writes the request, its head and body's first bytes in one call and the rest as it
/// streams, then reads the response head. A body whose length the head does not give (it
/// came chunked, `Transfer-Encoding` being hop-by-hop) gets one: its length when held whole,
/// else chunked again.
async fn exchange(
    backend: &mut BackendConn,
    parts: &http::request::Parts,
    addr: SocketAddr,
    body: Relay,
) -> Result<ResponseHead, ExchangeError> {
    let (held, rest) = body.into_parts();
    let streaming = !matches!(rest, Rest::None);
    let extra = if parts.headers.contains_key(CONTENT_LENGTH) {
        None
    } else if streaming {
        Some((TRANSFER_ENCODING, HeaderValue::from_static("chunked")))
    } else if !held.is_empty() {
        Some((CONTENT_LENGTH, HeaderValue::from(held.len())))
    } else {
        None
    };
    let chunked = extra.as_ref().is_some_and(|(n, _)| *n == TRANSFER_ENCODING);
    let mut out = Vec::with_capacity(512 + held.len());
    backend::encode_request(parts, addr, extra, &mut out);
    backend::put_data(&mut out, &held, chunked);
    match rest {
        Rest::Client(incoming) => {
            backend.write(&out).await.map_err(ExchangeError::Write)?;
            backend.upload(incoming, chunked);
        }
        _ => {
            if chunked {
                out.extend_from_slice(backend::LAST_CHUNK);
            }
            backend.write(&out).await.map_err(ExchangeError::Write)?;
        }
    }
    backend.read_head(&parts.method).await
}

/// Chooses a backend, reaches it (moving on for a client without live affinity when one
/// refuses), and sends; a pooled connection that turns out dead is replaced once, when the
/// request may be sent again: its body held whole, and the request never written or
/// idempotent.
async fn send(
    conn: &Conn,
    route: &Route,
    parts: &http::request::Parts,
    body: Relay,
    idempotent: bool,
) -> Result<(ResponseHead, BackendConn, Choice), Refusal> {
    let proxy = &conn.proxy;
    let cfg = &proxy.config;
    // Cookie mode spreads cookieless requests per connection (see `routing::choose`).
    let per_connection = cfg.cookie.as_ref().map(|_| conn.peer.port());
    let session = route.sid.as_deref().and_then(|s| proxy.sids.get(s));
    let mut exclude = Vec::new();
    for _ in 0..CONNECT_ATTEMPTS {
        let choice = {
            let routing = proxy
                .routing
                .read()
                .map_err(|_| refusal(500, "routing state poisoned"))?;
            choose(
                &routing,
                proxy.affinity.as_ref(),
                route.client,
                session,
                route.token.as_deref(),
                per_connection,
                &exclude,
                monotonic_ns(),
            )
        };
        let Some(choice) = choice else {
            return Err(refusal(503, "no backend in service"));
        };
        let addr = choice.backend.addr;
        let (mut backend, reused) = match conn.pool.take(addr) {
            Some(b) => (b, true),
            None => {
                let started = Instant::now();
                match conn.pool.connect(addr).await {
                    Ok(b) => (b, false),
                    Err(e) => {
                        info!(
                            "backend {addr} unreachable for {} after {:?}: {e}",
                            route.client,
                            started.elapsed()
                        );
                        if choice.reason != Reason::Table {
                            return Err(refusal(502, format!("backend {addr} unreachable")));
                        }
                        exclude.push(choice.id);
                        continue;
                    }
                }
            }
        };
        let whole = body.whole();
        let e = match exchange(&mut backend, parts, addr, body).await {
            Ok(head) => return Ok((head, backend, choice)),
            Err(e) => e,
        };
        debug!("backend {addr} (reused: {reused}): {e}");
        let again = whole.filter(|_| reused && e.may_resend(idempotent));
        let Some(again) = again else {
            return Err(refusal(502, format!("backend {addr}: {e}")));
        };
        let mut fresh = conn
            .pool
            .connect(addr)
            .await
            .map_err(|e| refusal(502, format!("backend {addr} unreachable: {e}")))?;
        return match exchange(&mut fresh, parts, addr, Relay::bytes(again)).await {
            Ok(head) => Ok((head, fresh, choice)),
            Err(e) => Err(refusal(502, format!("backend {addr}: {e}"))),
        };
    }
    Err(refusal(502, "no backend reachable"))
}
