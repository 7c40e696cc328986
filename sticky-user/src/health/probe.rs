//! One probe: a TCP connect, or an HTTP request judged by the status line.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::config::{CheckKind, HealthCheck};

/// Longest status line read: a real one is ~20 bytes, so this only bounds hostile peers.
const MAX_STATUS_LINE: u64 = 1024;

/// Probes `addr` once; any error, timeout or unexpected answer counts as unhealthy.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> bool {
    matches!(
        tokio::time::timeout(check.timeout, exchange(addr, &check.kind)).await,
        Ok(Ok(true))
    )
}

async fn exchange(addr: SocketAddr, kind: &CheckKind) -> io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    let CheckKind::Http { path, status } = kind else {
        return Ok(true);
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sticky-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_STATUS_LINE))
        .read_until(b'\n', &mut line)
        .await?;
    Ok(status_code(&line).is_some_and(|code| status.contains(&code)))
}

/// The code from an `HTTP/1.x NNN ...` status line, or `None` for anything else.
fn status_code(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let [minor, b' ', digits @ ..] = rest else {
        return None;
    };
    let [a, b, c, tail @ ..] = digits else {
        return None;
    };
    let code_digits = [*a, *b, *c];
    if !minor.is_ascii_digit() || !code_digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if !matches!(tail.first(), None | Some(b' ' | b'\r' | b'\n')) {
        return None;
    }
    Some(
        code_digits
            .iter()
            .fold(0, |n, d| n * 10 + u16::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::net::TcpListener;

    use super::*;
    use crate::health::config::DEFAULT_STATUS;

    #[test]
    fn status_line_parsing_never_trusts_the_peer() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 204"), Some(204));
        for bad in [
            &b""[..],
            b"HTTP/1.1",
            b"HTTP/1.1 ",
            b"HTTP/1.1 20",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 -20 OK",
            b"HTTP/2 200 OK",
            b"http/1.1 200 OK",
            b"HTTP/1.x 200 OK",
            b"\xff\xfe\x00garbage",
        ] {
            assert_eq!(status_code(bad), None, "{bad:?}");
        }
    }

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
