//! Proxy-mode settings: `--proxy ADDR:PORT` and friends, or a `[proxy]` table with the same
//! names.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{cidr::CidrList, client_ip::Source};
use crate::{
    addr::{AddrError, parse_endpoint},
    config::{merge_fields, with_default},
    duration::{self, DurationError},
};

pub const DEFAULT_HEADER: &str = "X-Forwarded-For";
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Client connections served at once; each also holds a backend connection.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const MAX_MAX_CONNECTIONS: usize = 1_000_000;
/// How long a kept-alive client connection may wait for its next request head.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Under Node's default `keepAliveTimeout` (5 s): a pooled connection is dropped before its
/// backend is likely to close it.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_POOL_MAX_IDLE: usize = 64;

/// What the proxy does with `X-Forwarded-For` on the requests it forwards.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedFor {
    /// Forward it as received.
    #[default]
    Keep,
    /// Add the peer (or the PROXY header's source) at its end, as a proxy does.
    Append,
    /// Set it to the client address the request was routed by.
    Replace,
}

/// Proxy settings, each optional: one layer from the command line, one from the config file's
/// `[proxy]` table. A flag's name is its key, except `--proxy` (`listen`) and `--no-splice`
/// (`splice = false`). Switches take no value and are `Some` only when given (a clap `SetTrue`
/// flag would be `Some(false)` when absent and override the file).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyLayer {
    /// Proxy mode: listen on ADDR:PORT, take the client from a header or PROXY protocol.
    #[arg(long = "proxy", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    #[arg(long, value_name = "NAME", help = with_default(
        "Header naming the client: X-Forwarded-For, Forwarded, X-Real-IP or another list header",
        DEFAULT_HEADER,
    ))]
    pub header: Option<String>,
    /// Expect a PROXY protocol v1/v2 header (HAProxy, cloud balancers) instead of a header.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// Peers whose header or PROXY header is believed, like 10.0.0.0/8,fd00::/8 [default: none].
    #[arg(long, value_name = "CIDR,...")]
    pub trusted_proxies: Option<String>,
    /// Route a trusted peer's request without the header by the peer address instead of 400.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub ignore_missing_header: Option<bool>,
    /// Cookie stickiness: insert NAME=<backend token> and route by it while valid.
    #[arg(long, value_name = "NAME")]
    pub cookie: Option<String>,
    /// Copy bytes in userspace instead of splicing them in the kernel (sockmap).
    #[arg(long = "no-splice", num_args = 0, default_missing_value = "false")]
    pub splice: Option<bool>,
    /// Splice an upgraded (`101`, WebSocket) connection only once it moved this many bytes
    /// after the upgrade, copying them before [default: 0, at once]. Requests before an
    /// upgrade are always framed and forwarded one by one.
    #[arg(long, value_name = "BYTES")]
    pub splice_after: Option<u64>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "Time a client has to send its request head",
        duration::format(DEFAULT_HEADER_TIMEOUT),
    ))]
    pub header_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "Time to connect to a backend",
        duration::format(DEFAULT_CONNECT_TIMEOUT),
    ))]
    pub connect_timeout: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default(
        "Largest request head; larger gets 431",
        DEFAULT_MAX_HEAD,
    ))]
    pub max_head_bytes: Option<usize>,
    #[arg(long, value_name = "N", help = with_default(
        "Client connections the proxy serves at once; past it new ones get 503 and are closed \
         while the others carry on",
        DEFAULT_MAX_CONNECTIONS,
    ))]
    pub max_connections: Option<usize>,
    /// X-Forwarded-For sent to backends: keep, append the peer, or replace it with the client
    /// [default: keep].
    #[arg(long, value_name = "HOW")]
    pub forwarded_for: Option<ForwardedFor>,
    /// Route engine.io / socket.io requests by their session id (`?sid=`) only by client
    /// [default: by sid first, to the backend that made it].
    #[arg(long = "no-sid", num_args = 0, default_missing_value = "false")]
    pub sid: Option<bool>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "Time a kept-alive client connection may wait for its next request",
        duration::format(DEFAULT_KEEPALIVE_TIMEOUT),
    ))]
    pub keepalive_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "Time an unused backend connection is kept for reuse",
        duration::format(DEFAULT_POOL_IDLE_TIMEOUT),
    ))]
    pub pool_idle_timeout: Option<String>,
    #[arg(long, value_name = "N", help = with_default(
        "Unused connections kept per backend (0: a new connection per request)",
        DEFAULT_POOL_MAX_IDLE,
    ))]
    pub pool_max_idle: Option<usize>,
}

merge_fields!(ProxyLayer {
    listen,
    header,
    proxy_protocol,
    trusted_proxies,
    ignore_missing_header,
    cookie,
    splice,
    splice_after,
    header_timeout,
    connect_timeout,
    max_head_bytes,
    max_connections,
    forwarded_for,
    sid,
    keepalive_timeout,
    pool_idle_timeout,
    pool_max_idle,
});

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub source: Source,
    pub header_name: String,
    pub proxy_protocol: bool,
    pub trusted: CidrList,
    pub ignore_missing_header: bool,
    pub cookie: Option<String>,
    pub splice: bool,
    pub header_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_head: usize,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Splice an upgraded connection once it moved this many bytes after the upgrade;
    /// `None` or 0: at once.
    pub splice_after: Option<u64>,
    pub forwarded_for: ForwardedFor,
    /// Route engine.io requests by their `sid`.
    pub sid: bool,
    pub keepalive_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("proxy listen {0}")]
    Listen(AddrError),
    #[error("proxy trusted-proxies '{input}': {reason} (write CIDRs like 10.0.0.0/8,fd00::/8)")]
    Trusted { input: String, reason: String },
    #[error("proxy {field}: {source}")]
    Duration {
        field: &'static str,
        source: DurationError,
    },
    #[error("proxy header name '{0}' is not a valid HTTP header name")]
    Header(String),
    #[error("proxy cookie name '{0}' must be 1-64 letters, digits, '-' or '_'")]
    Cookie(String),
    #[error("proxy max-head-bytes {0} must be from 1024 to 1048576")]
    MaxHead(usize),
    #[error("proxy max-connections {0} must be from 1 to 1000000")]
    MaxConnections(usize),
    #[error("proxy settings given without --proxy ADDR:PORT (or listen in [proxy])")]
    NoListen,
}

impl ProxyLayer {
    /// `None` when proxy mode is off.
    pub fn validate(&self) -> Result<Option<ProxyConfig>, ProxyConfigError> {
        let Some(listen) = &self.listen else {
            let other = self.header.is_some()
                || self.proxy_protocol.is_some()
                || self.trusted_proxies.is_some()
                || self.cookie.is_some()
                || self.ignore_missing_header.is_some()
                || self.max_connections.is_some()
                || self.splice_after.is_some()
                || self.forwarded_for.is_some()
                || self.sid.is_some()
                || self.keepalive_timeout.is_some()
                || self.pool_idle_timeout.is_some()
                || self.pool_max_idle.is_some();
            return if other {
                Err(ProxyConfigError::NoListen)
            } else {
                Ok(None)
            };
        };
        let listen = parse_endpoint(listen).map_err(ProxyConfigError::Listen)?;
        let header_name = self
            .header
            .clone()
            .unwrap_or_else(|| DEFAULT_HEADER.to_string());
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(&header_name) {
            return Err(ProxyConfigError::Header(header_name));
        }
        let trusted_text = self.trusted_proxies.clone().unwrap_or_default();
        let trusted: CidrList = trusted_text.parse().map_err(|e: super::cidr::CidrError| {
            ProxyConfigError::Trusted {
                input: trusted_text.clone(),
                reason: e.to_string(),
            }
        })?;
        if let Some(c) = &self.cookie {
            let ok = (1..=64).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ProxyConfigError::Cookie(c.clone()));
            }
        }
        let dur = |field: &'static str, v: &Option<String>, default: Duration| match v {
            Some(s) => {
                duration::parse(s).map_err(|source| ProxyConfigError::Duration { field, source })
            }
            None => Ok(default),
        };
        let max_head = self.max_head_bytes.unwrap_or(DEFAULT_MAX_HEAD);
        if !(1024..=1 << 20).contains(&max_head) {
            return Err(ProxyConfigError::MaxHead(max_head));
        }
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
            return Err(ProxyConfigError::MaxConnections(max_connections));
        }
        Ok(Some(ProxyConfig {
            listen,
            source: Source::from_header_name(&header_name)
                .ok_or_else(|| ProxyConfigError::Header(header_name.clone()))?,
            header_name,
            proxy_protocol: self.proxy_protocol.unwrap_or(false),
            trusted,
            ignore_missing_header: self.ignore_missing_header.unwrap_or(false),
            cookie: self.cookie.clone(),
            splice: self.splice.unwrap_or(true),
            header_timeout: dur(
                "header-timeout",
                &self.header_timeout,
                DEFAULT_HEADER_TIMEOUT,
            )?,
            connect_timeout: dur(
                "connect-timeout",
                &self.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT,
            )?,
            max_head,
            max_connections,
            splice_after: self.splice_after,
            forwarded_for: self.forwarded_for.unwrap_or_default(),
            sid: self.sid.unwrap_or(true),
            keepalive_timeout: dur(
                "keepalive-timeout",
                &self.keepalive_timeout,
                DEFAULT_KEEPALIVE_TIMEOUT,
            )?,
            pool_idle_timeout: dur(
                "pool-idle-timeout",
                &self.pool_idle_timeout,
                DEFAULT_POOL_IDLE_TIMEOUT,
            )?,
            pool_max_idle: self.pool_max_idle.unwrap_or(DEFAULT_POOL_MAX_IDLE),
        }))
    }
}
