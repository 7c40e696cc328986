//! One probe: a TCP connect, or an HTTP request judged by the status line.

use std::{io, net::SocketAddr};

use tokio::{
    io::AsyncWriteExt as _,
    net::TcpStream,
    time::{Instant, timeout_at},
};

use super::config::{CheckKind, HealthCheck};
use crate::http;

/// Probes `addr` once; any error, timeout or unexpected answer counts as unhealthy.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    let deadline = Instant::now() + check.timeout;
    matches!(
        timeout_at(deadline, exchange(addr, &check.kind, deadline)).await,
        Ok(Ok(true))
    )
}

async fn exchange(addr: SocketAddr, kind: &CheckKind, deadline: Instant) -> io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    let CheckKind::Http { path, status } = kind else {
        return Ok(true);
    };
    let host = addr.to_string();
    let request = http::write::request(
        "GET",
        path,
        &[
            ("Host", &host),
            ("User-Agent", "sticky-health"),
            ("Connection", "close"),
        ],
    );
    stream.write_all(&request).await?;
    // Judged as soon as the code is in (a dozen bytes, or a refusal): a hostile peer cannot
    // make us buffer more than one read.
    let mut buf = Vec::new();
    let line = http::read::until(&mut stream, &mut buf, deadline, http::status_line).await;
    Ok(line.is_ok_and(|line| status.contains(&line.code)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    use super::*;
    use crate::health::config::DEFAULT_STATUS;

    fn check(kind: CheckKind) -> HealthCheck {
        HealthCheck {
            kind,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            rise: 1,
            fall: 1,
        }
    }

    fn http(path: &str) -> HealthCheck {
        check(CheckKind::Http {
            path: path.to_string(),
            status: DEFAULT_STATUS,
        })
    }

    /// Serves `answer` to every connection after reading the request; `None` never answers.
    async fn server(answer: Option<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 512];
                    while !request.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    match answer {
                        Some(a) => {
                            let _ = conn.write_all(a).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tcp_probe_sees_listener_and_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        assert!(probe(up, &check(CheckKind::Tcp)).await);

        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(!probe(closed, &check(CheckKind::Tcp)).await);
    }

    #[tokio::test]
    async fn http_probe_judges_the_status() {
        let ok = server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        assert!(probe(ok, &http("/healthz")).await);

        let unavailable = server(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        assert!(!probe(unavailable, &http("/healthz")).await);
        let accept_503 = check(CheckKind::Http {
            path: "/".to_string(),
            status: 500..=599,
        });
        assert!(probe(unavailable, &accept_503).await);

        // A peer that closes right after the code has still said it.
        let cut = server(Some(b"HTTP/1.1 204")).await;
        assert!(probe(cut, &http("/")).await);
    }

    #[tokio::test]
    async fn http_probe_rejects_garbage() {
        let garbage = server(Some(b"SSH-2.0-OpenSSH_9.6\r\n")).await;
        assert!(!probe(garbage, &http("/")).await);
        let endless = server(Some(&[b'A'; 4096])).await;
        assert!(!probe(endless, &http("/")).await);
        let empty = server(Some(b"")).await;
        assert!(!probe(empty, &http("/")).await);
    }

    #[tokio::test]
    async fn http_probe_gives_up_on_silent_backend() {
        let silent = server(None).await;
        let started = Instant::now();
        assert!(!probe(silent, &http("/")).await);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn http_probe_sends_a_well_formed_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "probe closed before finishing its request");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await.unwrap();
            String::from_utf8(request).unwrap()
        });
        assert!(probe(addr, &http("/healthz?full=1")).await);
        let request = backend.await.unwrap();
        assert_eq!(
            request,
            format!(
                "GET /healthz?full=1 HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sticky-health\r\n\
                 Connection: close\r\n\r\n"
            )
        );
    }
}
