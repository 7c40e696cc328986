//! socket.io sessions over engine.io v4 HTTP long-polling, as a browser without WebSocket
//! runs them: the handshake (`GET`, `0{"sid":…}`), the socket.io connect (`POST 40`, then a
//! `GET` answered `40{…}`), `messages` round trips (`POST 42<id>["echo",…]`, a `GET` answered
//! with the acknowledgement `43<id>[…]`) and the disconnect (`POST 41`). Every request is a
//! new TCP connection from the session's own source address, so each one must reach the
//! session's worker again; an answer `400` (engine.io's `Session ID unknown`) is a lost
//! session. Blocking sockets, one thread per session in flight.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use super::{LoadResult, Percentiles};
use crate::{cpu, topology::Net};

const PATH: &str = "/socket.io/?EIO=4&transport=polling";
/// A request's connect and read limit: a session in flight when the window ends takes at
/// most this long to notice.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How one session ended.
enum Outcome {
    Done,
    /// The window ended before the session did: not counted.
    Stopped,
    /// A request of the session was answered 400: its worker did not know it.
    Lost,
    Failed(String),
}

#[derive(Default)]
struct Totals {
    sessions: AtomicU64,
    messages: AtomicU64,
    lost: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    latencies: Mutex<Vec<u64>>,
}

pub fn run(
    target: SocketAddr,
    sources: Net,
    concurrency: usize,
    messages: u32,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        (1..=1024).contains(&concurrency),
        "--concurrency must be 1-1024"
    );
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next_source = Arc::new(AtomicU32::new(0));
    let cpu_before = cpu::times()?;
    let started = Instant::now();
    let deadline = started + duration;
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (totals, stop, next) = (totals.clone(), stop.clone(), next_source.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let src = sources.addr(next.fetch_add(1, Ordering::Relaxed));
                    let t = Instant::now();
                    match session(src, target, messages, deadline) {
                        Outcome::Stopped => {}
                        // Only sessions that ended within the window count.
                        Outcome::Done if Instant::now() > deadline => {}
                        Outcome::Done => {
                            totals.sessions.fetch_add(1, Ordering::Relaxed);
                            totals
                                .messages
                                .fetch_add(u64::from(messages), Ordering::Relaxed);
                            if let Ok(mut l) = totals.latencies.lock() {
                                l.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        Outcome::Lost => {
                            totals.lost.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Failed(e) => {
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = totals.first_error.lock() {
                                first.get_or_insert(e);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu::times()?;
    for t in threads {
        let _ = t.join();
    }
    let mut latencies =
        std::mem::take(&mut *totals.latencies.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(LoadResult {
        ops: totals.sessions.load(Ordering::Relaxed),
        messages: totals.messages.load(Ordering::Relaxed),
        lost: totals.lost.load(Ordering::Relaxed),
        secs,
        errors: totals.errors.load(Ordering::Relaxed),
        cpu_secs: cpu_after.busy.saturating_sub(cpu_before.busy).as_secs_f64(),
        latency: Percentiles::of(&mut latencies),
        first_error: totals.first_error.lock().ok().and_then(|f| f.clone()),
        ..LoadResult::default()
    })
}

fn session(src: Ipv4Addr, target: SocketAddr, messages: u32, deadline: Instant) -> Outcome {
    match try_session(src, target, messages, deadline) {
        Ok(()) => Outcome::Done,
        Err(Error::Stopped) => Outcome::Stopped,
        Err(Error::Lost) => Outcome::Lost,
        Err(Error::Other(e)) => Outcome::Failed(format!("{src}: {e}")),
    }
}

enum Error {
    Stopped,
    Lost,
    Other(String),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Other(e.to_string())
    }
}

fn try_session(
    src: Ipv4Addr,
    target: SocketAddr,
    messages: u32,
    deadline: Instant,
) -> Result<(), Error> {
    // Every request first checks the window: a session left unfinished when it ends stops
    // there (the run's time stays bounded).
    let request = |method: &str, path: &str, body: &str| {
        if Instant::now() > deadline {
            return Err(Error::Stopped);
        }
        request(src, target, method, path, body)
    };
    let open = request("GET", PATH, "")?;
    let sid = open
        .strip_prefix("0{\"sid\":\"")
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| Error::Other(format!("handshake answered {open:?}")))?
        .to_string();
    let path = format!("{PATH}&sid={sid}");
    expect(&request("POST", &path, "40")?, "ok", "connect")?;
    expect_packet(&request("GET", &path, "")?, "40", "connect answer")?;
    for m in 1..=messages {
        let body = format!("42{m}[\"echo\",\"m{m}\"]");
        expect(&request("POST", &path, &body)?, "ok", "message")?;
        let want = format!("43{m}[\"m{m}\"]");
        expect_packet(&request("GET", &path, "")?, &want, "acknowledgement")?;
    }
    expect(&request("POST", &path, "41")?, "ok", "disconnect")?;
    Ok(())
}

fn expect(got: &str, want: &str, what: &str) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Other(format!("{what} answered {got:?}")))
    }
}

/// A polling answer carries one or more packets separated by 0x1e.
fn expect_packet(got: &str, want: &str, what: &str) -> Result<(), Error> {
    if got.split('\u{1e}').any(|p| p.starts_with(want)) {
        Ok(())
    } else {
        Err(Error::Other(format!("{what} answered {got:?}")))
    }
}

/// One request on a new connection from `src`; the body of a `200`, `Error::Lost` on `400`.
fn request(
    src: Ipv4Addr,
    target: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, Error> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    socket.connect_timeout(&target.into(), IO_TIMEOUT)?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let head = if method == "POST" {
        format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
             Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    };
    s.write_all(head.as_bytes())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::Other(format!("no response head: {text:?}")))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    match status {
        "200" => {}
        "400" => return Err(Error::Lost),
        _ => {
            return Err(Error::Other(format!(
                "{method} answered {status}: {body:?}"
            )));
        }
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(Error::Other("a chunked polling answer".into()));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_found_among_several() {
        assert!(expect_packet("2\u{1e}431[\"m1\"]", "431[\"m1\"]", "ack").is_ok());
        assert!(expect_packet("432[\"m2\"]", "431", "ack").is_err());
    }
}
