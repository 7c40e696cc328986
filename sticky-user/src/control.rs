//! The daemon's control API: newline-delimited JSON over a unix socket per instance
//! (`/run/sticky/<instance>.sock`, mode 0600), one request and one response per line.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

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
    },
    Undrain {
        addr: SocketAddr,
    },
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

/// What `lookup` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    pub client: IpAddr,
    pub backend: Option<SocketAddr>,
    /// `affinity`, `table`, or `none` (nothing in service).
    pub reason: String,
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

/// Sends one request to the daemon of `instance` and waits for its answer.
pub async fn call(instance: &str, request: &Request) -> anyhow::Result<Response> {
    let path = socket_path(instance);
    let stream = UnixStream::connect(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no sticky daemon for instance '{instance}' ({} is missing or dead): start one with \
             `sticky run`",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("permission denied on {}: the control socket is root only", path.display())
        }
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
    // Table rebuilds and map walks can take a while on big tables.
    tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut answer))
        .await
        .context("no answer from the daemon within 60 s")?
        .context("read answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    serde_json::from_str(&answer).context("malformed answer from the daemon")
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
            },
            Request::Stop { keep: true },
            Request::Status,
        ];
        for r in reqs {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(&line).unwrap(), r);
        }
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
