//! The daemon's control API: newline-delimited JSON over a unix socket per instance
//! (`/run/sticky/<instance>.sock`, mode 0600), one request and one response per line. A
//! cluster supervisor answers the same protocol on its own socket.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use sticky_common::BackendState;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::warn;

use crate::status::backend_state;

pub const RUN_DIR: &str = "/run/sticky";
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

pub fn socket_path(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{instance}.sock"))
}

pub fn lock_path(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{instance}.lock"))
}

/// A change to the backend set, applied or previewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum Change {
    Add { addr: SocketAddr, weight: u32 },
    Remove { addr: SocketAddr },
    Weight { addr: SocketAddr, weight: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Apply {
        change: Change,
    },
    Preview {
        change: Change,
    },
    Drain {
        addr: SocketAddr,
        deadline_ms: Option<u64>,
        /// Past the deadline, end at most this many of its flows per second (oldest first)
        /// instead of all at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        close_rate: Option<u32>,
    },
    Undrain {
        addr: SocketAddr,
    },
    /// `sticky node drain`: withdraw the announcement; with a deadline, stop then.
    NodeDrain {
        deadline_ms: Option<u64>,
    },
    NodeUndrain,
    List,
    Status,
    Lookup {
        ip: IpAddr,
    },
    Reload,
    Stop {
        keep: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        Self {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn err(message: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(message.to_string()),
            data: serde_json::Value::Null,
        }
    }
}

/// What `preview` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preview {
    pub slots_moved: u64,
    pub table_size: u32,
    pub affine_clients: u64,
    pub affine_clients_moved: u64,
}

/// One backend of what `list` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendListEntry {
    pub addr: SocketAddr,
    pub weight: u32,
    #[serde(with = "backend_state")]
    pub state: BackendState,
}

/// Why a lookup gave its answer: `affinity`, `table`, or `none` (nothing in service).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LookupReason {
    Affinity,
    Table,
    #[serde(rename = "none")]
    Nothing,
}

/// What `lookup` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub client: IpAddr,
    pub backend: Option<SocketAddr>,
    pub reason: LookupReason,
    /// Seconds since the client's last traffic, when it has live affinity.
    pub idle_secs: Option<u64>,
}

/// Parses one request line; the error text is sent back to the client.
pub fn parse_request(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))
}

/// A request on its way to whoever answers it, with the channel for the answer.
pub type Incoming = (Request, oneshot::Sender<Response>);

/// Serves the protocol on a unix socket at `path` (mode 0600): each request goes to
/// `requests`, each answer back on its connection.
pub fn serve(path: &Path, requests: mpsc::Sender<Incoming>) -> anyhow::Result<JoinHandle<()>> {
    // The caller owns the instance: a socket file here is a crashed process's leftover.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, requests).await {
                    warn!("control connection: {e:#}");
                }
            });
        }
    }))
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Incoming>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 2));
    let mut line = Vec::new();
    loop {
        line.clear();
        // The limit is per request, not per connection: a client may send many.
        reader.get_mut().set_limit(MAX_REQUEST as u64 + 2);
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read_until(b'\n', &mut line))
            .await
            .context("idle control connection")??;
        if n == 0 {
            return Ok(());
        }
        let response = match std::str::from_utf8(&line) {
            Err(_) => Response::err("malformed request: not UTF-8"),
            Ok(text) => match parse_request(text.trim_end_matches(['\n', '\r'])) {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    requests
                        .send((request, tx))
                        .await
                        .context("the serving loop is gone")?;
                    rx.await.context("the serving loop dropped the request")?
                }
                Err(message) => Response::err(message),
            },
        };
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
}

/// A control socket and what to say about whoever answers there.
pub struct Endpoint {
    pub path: PathBuf,
    /// Who answers, in error messages ("the daemon").
    pub who: &'static str,
    /// The error when nothing listens: what to start.
    pub absent: String,
    /// How long an answer may take; `None`: as long as it takes.
    pub answer_within: Option<Duration>,
}

impl Endpoint {
    /// The daemon of `instance`.
    pub fn daemon(instance: &str) -> Self {
        let path = socket_path(instance);
        Self {
            absent: format!(
                "no sticky daemon for instance '{instance}' ({} is missing or dead): start one \
                 with `sticky run`",
                path.display()
            ),
            path,
            who: "the daemon",
            // Table rebuilds and map walks can take a while on big tables.
            answer_within: Some(Duration::from_secs(60)),
        }
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let path = &self.path;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    anyhow::anyhow!("{}", self.absent)
                }
                std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                    "permission denied on {}: the control socket is root only",
                    path.display()
                ),
                _ => anyhow::Error::new(e).context(format!("connect {}", path.display())),
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .context("send request")?;
        let mut reader = BufReader::new(read);
        let mut answer = String::new();
        let read = reader.read_line(&mut answer);
        match self.answer_within {
            Some(limit) => tokio::time::timeout(limit, read).await.with_context(|| {
                format!("no answer from {} within {} s", self.who, limit.as_secs())
            })?,
            None => read.await,
        }
        .context("read answer")?;
        if answer.is_empty() {
            bail!("{} closed the connection without answering", self.who);
        }
        serde_json::from_str(&answer).with_context(|| format!("malformed answer from {}", self.who))
    }
}

/// Sends one request to the daemon of `instance` and waits for its answer.
pub async fn call(instance: &str, request: &Request) -> anyhow::Result<Response> {
    Endpoint::daemon(instance).call(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Apply {
                change: Change::Add {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    weight: 2,
                },
            },
            Request::Drain {
                addr: "[fd00::1]:80".parse().unwrap(),
                deadline_ms: Some(5000),
                close_rate: Some(50),
            },
            Request::Stop { keep: true },
            Request::Status,
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r);
        }
    }

    #[tokio::test]
    async fn a_served_socket_answers_each_request_in_turn() {
        let path = std::env::temp_dir().join(format!("sticky-control-{}.sock", std::process::id()));
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        let _server = serve(&path, tx).unwrap();
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let answer = match request {
                    Request::Reload => Response::ok("reloaded 2 workers"),
                    _ => Response::err("only reload"),
                };
                let _ = reply.send(answer);
            }
        });
        let endpoint = Endpoint {
            path: path.clone(),
            who: "the test",
            absent: "nobody there".into(),
            answer_within: None,
        };
        let ok = endpoint.call(&Request::Reload).await.unwrap();
        assert_eq!(
            (ok.ok, ok.data.as_str()),
            (true, Some("reloaded 2 workers"))
        );
        let refused = endpoint.call(&Request::List).await.unwrap();
        assert_eq!(refused.error.as_deref(), Some("only reload"));
        let _ = std::fs::remove_file(&path);
        let gone = endpoint.call(&Request::Reload).await.unwrap_err();
        assert_eq!(gone.to_string(), "nobody there");
    }

    /// One connection may carry more than `MAX_REQUEST` bytes of requests in all.
    #[tokio::test]
    async fn the_size_limit_is_per_request_not_per_connection() {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
        let path = std::env::temp_dir().join(format!("sticky-limit-{}.sock", std::process::id()));
        let (tx, mut rx) = mpsc::channel::<Incoming>(4);
        let _server = serve(&path, tx).unwrap();
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Response::ok("fine"));
            }
        });
        let stream = UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let request = b"{\"op\":\"list\"}\n";
        let rounds = 2 * MAX_REQUEST / request.len() + 1;
        for i in 0..rounds {
            write.write_all(request).await.unwrap();
            let answer = lines.next_line().await.unwrap();
            assert!(
                answer.as_deref().is_some_and(|a| a.contains("fine")),
                "request {i} of {rounds}: {answer:?}"
            );
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bad_requests_say_why() {
        for bad in [
            "",
            "{",
            "null",
            r#"{"op":"explode"}"#,
            r#"{"op":"drain"}"#,
            r#"{"op":"drain","addr":"nonsense"}"#,
        ] {
            assert!(
                parse_request(bad)
                    .unwrap_err()
                    .contains("malformed request"),
                "{bad}"
            );
        }
        assert!(
            parse_request(&"x".repeat(MAX_REQUEST + 1))
                .unwrap_err()
                .contains("longer")
        );
    }
}
