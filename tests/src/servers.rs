//! Backends for the tests and the demo: an HTTP server answering with its id and the client
//! address it saw, and an upgrade-then-echo server. Each runs in a namespace, stops on drop.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::Netns;

/// A listener thread inside a namespace handing each connection to `handler` on a thread of
/// its own (which inherits the namespace); stops accepting on drop.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(
        ns: &Netns,
        bind: SocketAddr,
        what: &str,
        handler: impl Fn(TcpStream, SocketAddr, Arc<AtomicBool>) + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stop2 = stop.clone();
        let handler = Arc::new(handler);
        let thread = ns.spawn(move || {
            let bound = TcpListener::bind(bind).and_then(|l| l.set_nonblocking(true).map(|()| l));
            let listener = match bound {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let (handler, stop) = (handler.clone(), stop2.clone());
                        std::thread::spawn(move || handler(stream, peer, stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("{what} did not start"))?
            .with_context(|| format!("bind {what} on {bind}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tiny HTTP/1.1 server answering every request with `<id> <client-ip>\n`, keep-alive
/// unless asked to close. Stops on drop.
pub struct HttpBackend {
    pub id: String,
    _listener: Listener,
}

impl HttpBackend {
    pub fn start(ns: &Netns, bind: SocketAddr, id: &str) -> anyhow::Result<Self> {
        let owned = id.to_string();
        let listener =
            Listener::start(ns, bind, &format!("backend {id}"), move |s, peer, stop| {
                serve(s, peer, &owned, &stop)
            })?;
        Ok(Self {
            id: id.to_string(),
            _listener: listener,
        })
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, id: &str, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    let peer_ip = canonical(peer.ip());
    loop {
        let mut close = false;
        let mut got_request = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => {
                    got_request = true;
                    if line.to_ascii_lowercase().starts_with("connection: close") {
                        close = true;
                    }
                    if line == "\r\n" || line == "\n" {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if !got_request {
                        continue;
                    }
                }
                Err(_) => return,
            }
        }
        let body = format!("{id} {peer_ip}\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        if writer
            .write_all(format!("{head}{body}").as_bytes())
            .is_err()
            || close
        {
            return;
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A backend that accepts connections and holds them open, reading nothing and answering
/// nothing, until dropped: for tests that watch how connections end.
pub struct HoldBackend {
    _listener: Listener,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl HoldBackend {
    pub fn start(ns: &Netns, bind: SocketAddr) -> anyhow::Result<Self> {
        let held = Arc::new(Mutex::new(Vec::new()));
        let into = held.clone();
        let listener = Listener::start(ns, bind, "hold backend", move |s, _, _| {
            if let Ok(mut held) = into.lock() {
                held.push(s);
            }
        })?;
        Ok(Self {
            _listener: listener,
            _held: held,
        })
    }
}

/// A backend that answers a request head with `101 Switching Protocols` (a WebSocket-style
/// upgrade; `GET /plain`: `200 OK`, streamed until close), then echoes every byte until the
/// client half-closes, then half-closes too. `GET /download/N`: N bytes of [`download_byte`].
pub struct EchoBackend {
    _listener: Listener,
}

impl EchoBackend {
    pub fn start(ns: &Netns, bind: SocketAddr) -> anyhow::Result<Self> {
        let listener = Listener::start(ns, bind, "echo backend", |s, _, _| echo(s))?;
        Ok(Self {
            _listener: listener,
        })
    }
}

fn echo(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    let (mut plain, mut length, mut download) = (false, None, None);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {
                plain |= line.starts_with("GET /plain ") || line.starts_with("POST /plain ");
                if let Some(rest) = line.strip_prefix("GET /download/") {
                    download = rest.split(' ').next().and_then(|n| n.parse::<u64>().ok());
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse::<u64>().ok();
                }
            }
        }
    }
    if let Some(n) = download {
        send_download(&mut writer, n);
        return;
    }
    // `/plain`: an ordinary response (no protocol switch) streaming back the request body
    // (`Content-Length` long) or everything until close.
    let answer = match (plain, length) {
        (true, Some(n)) => {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")
        }
        (true, None) => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
        (false, _) => {
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_string()
        }
    };
    let answer = answer.as_bytes();
    // Bytes that arrived with the head are echoed first.
    let pending = reader.buffer().to_vec();
    if writer.write_all(answer).is_err() || writer.write_all(&pending).is_err() {
        return;
    }
    let mut stream = reader.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

/// Byte `i` of a `/download/N` body: a pattern a reader checks byte for byte.
pub fn download_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn send_download(writer: &mut TcpStream, n: u64) {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n");
    if writer.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut sent = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while sent < n {
        let len = (n - sent).min(buf.len() as u64) as usize;
        for (k, b) in buf[..len].iter_mut().enumerate() {
            *b = download_byte(sent + k as u64);
        }
        if writer.write_all(&buf[..len]).is_err() {
            return;
        }
        sent += len as u64;
    }
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

/// A UDP backend answering every datagram with `<id> <client-ip> <payload>`, from the address
/// it was sent to (bind it to that address: behind DSR, the VIP). Stops on drop.
pub struct UdpBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    pub fn start(ns: &Netns, bind: SocketAddr, id: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let (stop2, id) = (stop.clone(), id.to_string());
        let thread = ns.spawn(move || {
            let bound = std::net::UdpSocket::bind(bind).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .map(|()| s)
            });
            let socket = match bound {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let payload = String::from_utf8_lossy(&buf[..n]);
                let answer = format!("{id} {} {payload}", canonical(peer.ip()));
                let _ = socket.send_to(answer.as_bytes(), peer);
            }
        })?;
        rx.recv_timeout(Duration::from_secs(5))
            .context("udp backend did not start")?
            .with_context(|| format!("bind udp backend on {bind}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
