//! Backends from DNS (`--backend-dns NAME:PORT`, `--backend-srv _svc._tcp.NAME`): each source
//! is resolved by its own task, again when its answer's TTL runs out (bounded by
//! [`MIN_TTL`] and [`MAX_TTL`]), and every answer — or failure — goes to the daemon, which
//! adds what appeared and drains what disappeared. A failing resolver changes nothing: the
//! daemon keeps the source's last good set and says so.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
};
use tokio::sync::mpsc;

/// Answers are kept at least this long, so a TTL of 0 does not hammer the server.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// And at most this long, so a long TTL still notices changes.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// After a failure, the next try.
const RETRY: Duration = Duration::from_secs(2);

/// Where backends come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A/AAAA records of `name`, each address on `port`.
    Host { name: String, port: u16 },
    /// SRV records of `name`: target addresses, their ports and weights.
    Srv { name: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { name, port } => write!(f, "dns {name}:{port}"),
            Self::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("backend-dns '{0}' must be NAME:PORT (a DNS name and a port 1-65535)")]
    Host(String),
    #[error("backend-srv '{0}' must be an SRV name such as _http._tcp.example.com")]
    Srv(String),
}

impl Source {
    pub fn host(s: &str) -> Result<Self, SourceError> {
        let bad = || SourceError::Host(s.to_string());
        let (name, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        if !valid_name(name) {
            return Err(bad());
        }
        Ok(Self::Host {
            name: name.to_string(),
            port,
        })
    }

    pub fn srv(s: &str) -> Result<Self, SourceError> {
        if !s.starts_with('_') || !valid_name(s) {
            return Err(SourceError::Srv(s.to_string()));
        }
        Ok(Self::Srv {
            name: s.to_string(),
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').filter(|l| !l.is_empty()).all(|l| {
            l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// A backend a source named, with its weight (1 for A/AAAA; SRV weight, at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub addr: SocketAddr,
    pub weight: u32,
}

/// One source's answer: its backends, or why it could not be resolved.
#[derive(Debug)]
pub struct Answer {
    pub source: usize,
    pub result: Result<Vec<Found>, String>,
}

/// Starts one resolving task per source, answers to `tx`; `server` replaces the system's
/// resolvers. Only addresses of the VIPs' family (`v4`) are kept.
pub fn spawn(
    sources: &[Source],
    server: Option<SocketAddr>,
    v4: bool,
    tx: mpsc::Sender<Answer>,
) -> anyhow::Result<()> {
    let resolver = resolver(server, v4)?;
    for (index, source) in sources.iter().enumerate() {
        let (resolver, source, tx) = (resolver.clone(), source.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                let (result, valid_until) = match resolve(&resolver, &source, v4).await {
                    Ok((found, until)) => (Ok(found), until),
                    Err(e) => (Err(e), Instant::now() + RETRY),
                };
                if tx
                    .send(Answer {
                        source: index,
                        result,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let ttl = valid_until.saturating_duration_since(Instant::now());
                tokio::time::sleep(ttl.clamp(MIN_TTL, MAX_TTL)).await;
            }
        });
    }
    Ok(())
}

fn resolver(server: Option<SocketAddr>, v4: bool) -> anyhow::Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match server {
        Some(s) => {
            let group = NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                provider,
            )
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| anyhow::anyhow!("read the system's DNS configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    // Every answer comes from the server: a change is seen when the TTL says.
    opts.cache_size = 0;
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(2);
    opts.ip_strategy = if v4 {
        LookupIpStrategy::Ipv4Only
    } else {
        LookupIpStrategy::Ipv6Only
    };
    Ok(builder.build())
}

/// The source's backends and when the answer expires.
async fn resolve(
    resolver: &TokioResolver,
    source: &Source,
    v4: bool,
) -> Result<(Vec<Found>, Instant), String> {
    let family = |ip: &IpAddr| ip.is_ipv4() == v4;
    match source {
        Source::Host { name, port } => {
            let answer = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut found: Vec<Found> = answer
                .iter()
                .filter(family)
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, *port),
                    weight: 1,
                })
                .collect();
            found.sort();
            found.dedup();
            Ok((found, answer.valid_until()))
        }
        Source::Srv { name } => {
            let answer = resolver
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut until = answer.as_lookup().valid_until();
            let mut found = Vec::new();
            for srv in answer.iter() {
                let target = resolver
                    .lookup_ip(srv.target().clone())
                    .await
                    .map_err(|e| format!("{}: {e}", srv.target()))?;
                until = until.min(target.valid_until());
                let weight = u32::from(srv.weight()).clamp(1, crate::addr::MAX_WEIGHT);
                found.extend(target.iter().filter(family).map(|ip| Found {
                    addr: SocketAddr::new(ip, srv.port()),
                    weight,
                }));
            }
            found.sort();
            found.dedup_by_key(|f| f.addr);
            Ok((found, until))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_refuse_the_rest() {
        assert_eq!(
            Source::host("tasks.web:3000").unwrap(),
            Source::Host {
                name: "tasks.web".into(),
                port: 3000
            }
        );
        assert_eq!(
            Source::host("web.svc.cluster.local.:80")
                .unwrap()
                .to_string(),
            "dns web.svc.cluster.local.:80"
        );
        for bad in ["web", "web:0", "web:x", ":80", "we b:80"] {
            assert!(Source::host(bad).is_err(), "{bad}");
        }
        assert!(Source::srv("_http._tcp.web.service.consul").is_ok());
        assert!(Source::srv("web.example").is_err());
    }
}
