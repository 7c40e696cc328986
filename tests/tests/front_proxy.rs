//! Proxy mode behind real front proxies and as an HTTP/1.1 proxy of its own: nginx with an
//! upstream keep-alive pool and HAProxy `mode http` with `http-reuse always` send requests of
//! different clients over one connection, so sticky must route every request, not every
//! connection. Also: many clients' requests pipelined over a few keep-alive connections,
//! engine.io `sid` routing, and a request smuggling corpus refused before any backend sees it.

mod common;

use std::{
    io::{BufReader, ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::{predicted, run_load, sticky_bin};
use serde_json::Value;
use sticky_tests::{Netns, StickyProcess, Topology, plan, root_or_skip, unique_name};

/// socket.io clients behind the front proxy, each from its own address.
const CLIENTS: usize = 200;
/// sticky's `--proxy` port.
const PROXY_PORT: u16 = 8080;
/// The front proxy's port, on the balancer's client-facing address.
const FRONT_PORT: u16 = 8081;
/// The socket.io workers' port in the backend namespaces.
const WORKER_PORT: u16 = 3000;

/// The client namespace's own address: plays a trusted proxy in front of sticky.
fn trusted_peer() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))
}

fn example() -> PathBuf {
    common::socketio_example()
}

/// `sticky run --proxy LISTEN --trusted-proxies TRUSTED` over the topology's backends on
/// `backend_port`, then `extra`.
fn start_sticky(
    topo: &Topology,
    listen: SocketAddr,
    trusted: &str,
    backend_port: u16,
    extra: &[&str],
) -> StickyProcess {
    let mut args = topo.sticky_args_on(false, plan::VIP_PORT, backend_port);
    args.extend([
        "--proxy".into(),
        listen.to_string(),
        "--trusted-proxies".into(),
        trusted.into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky run --proxy")
}

/// `(k, address, port)` of every backend, for [`predicted`].
fn backend_list(topo: &Topology, port: u16) -> Vec<(usize, IpAddr, u16)> {
    (0..topo.backends.len())
        .map(|k| (k, plan::backend(k, false).0, port))
        .collect()
}

/// Waits until `addr` accepts connections from inside `ns`; `alive` fails early with why not.
fn wait_listening(
    ns: &Netns,
    addr: SocketAddr,
    what: &str,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = ns
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
            .expect("namespace");
        if up {
            return;
        }
        if let Err(e) = alive() {
            panic!("{what} exited before listening on {addr}: {e:#}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process stopped by PID on drop (SIGKILL: nothing of its state matters afterwards).
struct Owned(Child);

impl Owned {
    fn spawn(ns: &Netns, program: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path()))
            .arg(program)
            .args(args)
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self(
            cmd.spawn().unwrap_or_else(|e| {
                panic!("start {program} (`cargo xtask setup` installs it): {e}")
            }),
        )
    }

    fn alive(&mut self) -> anyhow::Result<()> {
        match self.0.try_wait()? {
            Some(status) => bail!("exited with {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder of our own under the temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One socket.io worker (examples/socketio/app.js, in-memory adapter) per backend namespace,
/// listening on `WORKER_PORT`, index `k` in namespace `k`.
fn start_workers(topo: &Topology) -> Vec<Owned> {
    let modules = example().join("node_modules/socket.io");
    assert!(
        modules.exists(),
        "{} is missing: `cargo xtask test` runs `npm ci` in examples/socketio",
        modules.display()
    );
    let app = example().join("app.js").display().to_string();
    let mut workers: Vec<Owned> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(k, ns)| {
            let env = [
                ("PORT", WORKER_PORT.to_string()),
                ("STICKY_WORKER_INDEX", k.to_string()),
            ];
            Owned::spawn(ns, "node", std::slice::from_ref(&app), &env)
        })
        .collect();
    for (k, w) in workers.iter_mut().enumerate() {
        let addr = SocketAddr::new(plan::backend(k, false).0, WORKER_PORT);
        wait_listening(&topo.lb, addr, &format!("socket.io worker {k}"), || {
            w.alive()
        });
    }
    workers
}

#[derive(Clone, Copy, Debug)]
enum Front {
    Nginx,
    Haproxy,
}

/// nginx or HAProxy in the balancer namespace on `listen`, every request to `upstream` over a
/// pool of reused connections. Stopped by PID on drop, its folder removed.
struct FrontProxy {
    process: Owned,
    dir: TempDir,
}

impl FrontProxy {
    fn start(kind: Front, ns: &Netns, listen: SocketAddr, upstream: SocketAddr) -> Self {
        let dir = TempDir::new("front");
        let (program, args) = match kind {
            Front::Nginx => {
                let cfg = dir.write("nginx.conf", &nginx_config(&dir.0, listen, upstream));
                let args = [
                    "-p".to_string(),
                    dir.0.display().to_string(),
                    "-e".into(),
                    dir.0.join("error.log").display().to_string(),
                    "-c".into(),
                    cfg.display().to_string(),
                ];
                ("nginx", args.to_vec())
            }
            Front::Haproxy => {
                let cfg = dir.write("haproxy.cfg", &haproxy_config(listen, upstream));
                (
                    "haproxy",
                    vec!["-db".into(), "-f".into(), cfg.display().to_string()],
                )
            }
        };
        let mut process = Owned::spawn(ns, program, &args, &[]);
        let log = dir.0.join("error.log");
        wait_listening(ns, listen, program, || {
            process.alive().with_context(|| {
                std::fs::read_to_string(&log).unwrap_or_else(|_| "(no error log)".into())
            })
        });
        Self { process, dir }
    }
}

/// nginx as the issue found it: an upstream `keepalive` pool, HTTP/1.1 upstream with the
/// `Connection` header cleared, the client appended to X-Forwarded-For.
fn nginx_config(dir: &std::path::Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log error;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   upstream sticky {{\n        server {upstream};\n        keepalive 32;\n    }}\n\
         \x20   server {{\n        listen {listen};\n        location / {{\n\
         \x20           proxy_pass http://sticky;\n            proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $host;\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20       }}\n    }}\n}}\n"
    )
}

/// HAProxy in HTTP mode, reusing server connections across clients as aggressively as it can.
fn haproxy_config(listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "global\n    maxconn 4096\n    nbthread 1\n\n\
         defaults\n    mode http\n    option http-keep-alive\n    timeout connect 3s\n\
         \x20   timeout client 60s\n    timeout server 60s\n    timeout http-keep-alive 60s\n\n\
         frontend front\n    bind {listen}\n    option forwardfor\n    default_backend sticky\n\n\
         backend sticky\n    http-reuse always\n    server sticky {upstream}\n"
    )
}

/// Runs load.js in the client namespace; its JSON report.
fn load(topo: &Topology, args: &[String]) -> Value {
    run_load(&topo.client.path(), args)
}

/// 200 polling-only socket.io clients from 200 addresses through `front` in front of sticky.
fn socketio_behind(kind: Front, tag: &str) {
    let topo = Topology::build(tag, 3, CLIENTS).expect("topology");
    let _workers = start_workers(&topo);
    let sticky_at = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), PROXY_PORT);
    let _daemon = start_sticky(&topo, sticky_at, "127.0.0.1/32", WORKER_PORT, &[]);
    let listen = SocketAddr::new(plan::lb_client_side(false), FRONT_PORT);
    let mut front = FrontProxy::start(kind, &topo.lb, listen, sticky_at);
    let args: Vec<String> = [
        "--url",
        &format!("http://{listen}"),
        "--clients",
        &CLIENTS.to_string(),
        "--rounds",
        "5",
        "--pause-ms",
        "200",
        "--transport",
        "polling",
        "--local-address-base",
        &plan::client(0, false).to_string(),
        "--expect-xff",
        "--timeout-ms",
        "120000",
    ]
    .map(String::from)
    .to_vec();
    let report = load(&topo, &args);
    let what = format!("{kind:?} in front");
    common::assert_socketio_clean(&report, CLIENTS, &what);
    for key in ["echo_mismatches", "unexpected_disconnects"] {
        assert_eq!(report[key].as_u64(), Some(0), "{what}: {key} in {report}");
    }
    // The workers saw each client's own address in X-Forwarded-For, so the front proxy
    // really carried distinct clients, and sticky passed the header on.
    assert_eq!(report["client_addresses_seen_ok"], true, "{what}: {report}");
    front.process.alive().unwrap_or_else(|e| {
        let log = std::fs::read_to_string(front.dir.0.join("error.log")).unwrap_or_default();
        panic!("{what}: the front proxy died: {e:#} {log}")
    });
}

#[test]
fn socketio_behind_nginx_keepalive_pool() {
    if root_or_skip("socketio_behind_nginx_keepalive_pool") {
        socketio_behind(Front::Nginx, "fpngx");
    }
}

#[test]
fn socketio_behind_haproxy_http_reuse() {
    if root_or_skip("socketio_behind_haproxy_http_reuse") {
        socketio_behind(Front::Haproxy, "fphap");
    }
}

/// A backend that records every byte it receives and answers each complete request (its
/// body read by Content-Length or chunked framing) with `<id> <target> <x-forwarded-for>\n`
/// (`-` without one, occurrences joined by `|`); a request it cannot frame is never answered.
/// Stops on drop.
struct Recorder {
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(ns: &Netns, port: u16, id: &str) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let bind = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
        let listener = ns
            .run(move || TcpListener::bind(bind).and_then(|l| l.set_nonblocking(true).map(|()| l)))
            .expect("namespace")
            .unwrap_or_else(|e| panic!("bind recorder {id} on {bind}: {e}"));
        let (rec, halt, id) = (received.clone(), stop.clone(), id.to_string());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (rec, halt, id) = (rec.clone(), halt.clone(), id.clone());
                        std::thread::spawn(move || record(stream, &id, &rec, &halt));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(mut stream: TcpStream, id: &str, received: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                received
                    .lock()
                    .expect("lock")
                    .extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        loop {
            match frame_request(&buf) {
                Ok(Some(Framed {
                    len,
                    target,
                    xff,
                    close,
                })) => {
                    buf.drain(..len);
                    let body = format!("{id} {target} {xff}\n");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() || close {
                        return;
                    }
                }
                Ok(None) => break,
                // Unframeable: never answered; the bytes stay recorded.
                Err(()) => return,
            }
        }
    }
}

/// A complete request as the recorder read it.
struct Framed {
    len: usize,
    target: String,
    /// Its X-Forwarded-For values joined by `|`, `-` without any.
    xff: String,
    /// It asked to close the connection.
    close: bool,
}

/// One complete request at the start of `buf`; `Ok(None)` until complete.
fn frame_request(buf: &[u8]) -> Result<Option<Framed>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).map_err(drop)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let target = req.path.unwrap_or("").to_string();
    let (mut length, mut chunked, mut close) = (0, false, false);
    let mut xff = Vec::new();
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(drop)?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(drop)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err(());
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            xff.push(value.to_string());
        }
    }
    let body = if chunked {
        match chunked_len(&buf[head..])? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else if buf.len() - head >= length {
        length
    } else {
        return Ok(None);
    };
    let xff = if xff.is_empty() {
        "-".to_string()
    } else {
        xff.join("|")
    };
    Ok(Some(Framed {
        len: head + body,
        target,
        xff,
        close,
    }))
}

/// The length of a complete chunked body (trailers included) at the start of `buf`.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let line_end = |from: usize| {
        buf.get(from..)
            .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
            .map(|p| from + p)
    };
    let mut pos = 0;
    loop {
        let Some(end) = line_end(pos) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..end]).map_err(drop)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(drop)?;
        pos = end + 2;
        if size == 0 {
            // Trailer lines up to the empty one.
            loop {
                let Some(end) = line_end(pos) else {
                    return Ok(None);
                };
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok(Some(pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(());
        }
        pos += size + 2;
    }
}

/// A response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response (Content-Length, chunked, or until close).
fn read_response(r: &mut impl std::io::BufRead) -> anyhow::Result<Response> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).context("read response head")? == 0 {
            bail!("closed mid-head after {head:?}");
        }
        if line == "\r\n" && !head.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line of {head:?}"))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        body.resize(len.parse().context("content-length")?, 0);
        r.read_exact(&mut body).context("read body")?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).context("chunk size")?;
            let n = usize::from_str_radix(size.trim(), 16).context("chunk size")?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).context("chunk")?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if !matches!(status, 100..=199 | 204 | 304) {
        r.read_to_end(&mut body).context("body until close")?;
    }
    Ok(Response {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A keep-alive connection from the trusted peer to sticky's proxy (call inside the client
/// namespace).
fn connect_trusted(to: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(trusted_peer(), 0).into())
        .expect("bind the trusted address");
    socket
        .connect_timeout(&to.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {to}: {e}"));
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    (BufReader::new(stream.try_clone().expect("clone")), stream)
}

/// Request `j` of the interleaved run: client `j % 50`, on connection `(j + j / 50) % 4`, so
/// each client's four requests travel on four different connections. Some carry bodies.
fn interleaved_request(j: usize, client: IpAddr) -> String {
    let target = format!("/c{}/r{j}", j % 50);
    let common = format!("Host: sticky\r\nX-Forwarded-For: {client}\r\n");
    match j % 3 {
        0 => format!("GET {target} HTTP/1.1\r\n{common}\r\n"),
        1 => format!("POST {target} HTTP/1.1\r\n{common}Content-Length: 11\r\n\r\nhello world"),
        _ => format!(
            "POST {target} HTTP/1.1\r\n{common}Transfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ),
    }
}

#[test]
fn many_clients_over_few_keepalive_connections() {
    if !root_or_skip("many_clients_over_few_keepalive_connections") {
        return;
    }
    const SYNTHETIC: usize = 50;
    const CONNS: usize = 4;
    const PER_CLIENT: usize = 4;
    let topo = Topology::build("fpka", 3, 0).expect("topology");
    let _recorders: Vec<Recorder> = (0..3)
        .map(|k| Recorder::start(&topo.backends[k], plan::BACKEND_PORT, &format!("be{k}")))
        .collect();
    let to = SocketAddr::new(topo.vip(false).ip(), PROXY_PORT);
    // The backends also see each request's own client, after the header it came with.
    let _daemon = start_sticky(
        &topo,
        to,
        "198.18.0.2/32",
        plan::BACKEND_PORT,
        &["--forwarded-for", "append"],
    );
    let backends = backend_list(&topo, plan::BACKEND_PORT);
    let client = |i: usize| plan::client(i, false);
    let mut per_conn: Vec<Vec<usize>> = vec![Vec::new(); CONNS];
    for j in 0..SYNTHETIC * PER_CLIENT {
        per_conn[(j + j / SYNTHETIC) % CONNS].push(j);
    }
    let answers: Vec<Vec<(usize, anyhow::Result<Response>)>> = topo
        .client
        .run(move || {
            let runs: Vec<_> = per_conn
                .into_iter()
                .map(|requests| {
                    std::thread::spawn(move || {
                        let (mut reader, mut writer) = connect_trusted(to);
                        // Every request of the connection at once (pipelined), written by its
                        // own thread so that answers can flow back meanwhile.
                        let bytes: String = requests
                            .iter()
                            .map(|&j| interleaved_request(j, client(j % SYNTHETIC)))
                            .collect();
                        let sender = std::thread::spawn(move || writer.write_all(bytes.as_bytes()));
                        let out: Vec<_> = requests
                            .iter()
                            .map(|&j| (j, read_response(&mut reader)))
                            .collect();
                        let _ = sender.join();
                        out
                    })
                })
                .collect();
            runs.into_iter()
                .map(|t| t.join().expect("connection thread"))
                .collect()
        })
        .expect("client namespace");
    let mut seen = 0;
    for (conn, answers) in answers.into_iter().enumerate() {
        for (j, answer) in answers {
            let i = j % SYNTHETIC;
            let answer = answer.unwrap_or_else(|e| panic!("connection {conn}, request {j}: {e:#}"));
            assert_eq!(answer.status, 200, "request {j}: {answer:?}");
            let mut fields = answer.body.trim().splitn(3, ' ');
            let (backend, target, xff) = (
                fields.next().unwrap_or(""),
                fields.next().unwrap_or(""),
                fields.next().unwrap_or(""),
            );
            // In order: the answer on this connection is the one to the request sent there.
            assert_eq!(
                target,
                format!("/c{i}/r{j}"),
                "connection {conn}: answers out of order"
            );
            assert_eq!(
                backend,
                predicted(&backends, client(i), 0),
                "request {j} of client {} went to another backend",
                client(i)
            );
            assert_eq!(
                xff,
                format!("{}, {}", client(i), trusted_peer()),
                "request {j}: --forwarded-for append"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, SYNTHETIC * PER_CLIENT);
}

/// One request on a fresh connection from the trusted peer.
fn once(to: SocketAddr, request: String) -> Response {
    let (mut reader, mut writer) = connect_trusted(to);
    writer.write_all(request.as_bytes()).expect("send");
    read_response(&mut reader).unwrap_or_else(|e| panic!("{request:?}: {e:#}"))
}

fn polling(sid: Option<&str>, client: IpAddr, body: Option<&str>) -> String {
    let sid = sid.map(|s| format!("&sid={s}")).unwrap_or_default();
    let target = format!("/socket.io/?EIO=4&transport=polling{sid}");
    let common = format!("Host: sticky\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n");
    match body {
        None => format!("GET {target} HTTP/1.1\r\n{common}\r\n"),
        Some(b) => format!(
            "POST {target} HTTP/1.1\r\n{common}Content-Type: text/plain;charset=UTF-8\r\n\
             Content-Length: {}\r\n\r\n{b}",
            b.len()
        ),
    }
}

/// An engine.io handshake from `client`: the session id.
fn handshake(to: SocketAddr, client: IpAddr) -> String {
    let open = once(to, polling(None, client, None));
    assert_eq!(open.status, 200, "handshake: {open:?}");
    let json = open
        .body
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("no open packet: {open:?}"));
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    v["sid"].as_str().expect("sid").to_string()
}

/// Whether the session `sid` answers requests from `client` (a socket.io CONNECT posted,
/// then a poll returning its answer), or the worker reached does not know it.
fn session_answers(to: SocketAddr, sid: &str, client: IpAddr) -> Result<(), Response> {
    let post = once(to, polling(Some(sid), client, Some("40")));
    if post.status != 200 {
        return Err(post);
    }
    let poll = once(to, polling(Some(sid), client, None));
    if poll.status != 200 || !poll.body.starts_with("40") {
        return Err(poll);
    }
    Ok(())
}

/// An answer of engine.io itself to a sid it does not know (not one of sticky's).
fn from_a_worker(r: &Response) -> bool {
    r.status == 400
        && r.head.to_ascii_lowercase().contains("application/json")
        && r.body.contains("\"Session ID unknown\"")
}

#[test]
fn engine_io_sid_routes_a_session_from_any_address() {
    if !root_or_skip("engine_io_sid_routes_a_session_from_any_address") {
        return;
    }
    let topo = Topology::build("fpsid", 3, 0).expect("topology");
    let _workers = start_workers(&topo);
    let to = SocketAddr::new(topo.vip(false).ip(), PROXY_PORT);
    let backends = backend_list(&topo, WORKER_PORT);
    let a = plan::client(0, false);
    // B's own choice is another worker: only the sid can bring it to A's session.
    let b = (1..250)
        .map(|i| plan::client(i, false))
        .find(|&b| predicted(&backends, b, 0) != predicted(&backends, a, 0))
        .expect("a client on another worker");

    let daemon = start_sticky(&topo, to, "198.18.0.2/32", WORKER_PORT, &[]);
    let (forged_short, forged_long) = ("AAAAAAAAAAAAAAAAAAAA".to_string(), "x%2F".repeat(300));
    let (moved, forged) = topo
        .client
        .run(move || {
            let moved: Vec<_> = (0..10)
                .map(|_| {
                    let sid = handshake(to, a);
                    session_answers(to, &sid, b)
                })
                .collect();
            let forged: Vec<Response> = [forged_short, forged_long]
                .iter()
                .map(|sid| once(to, polling(Some(sid), a, None)))
                .collect();
            (moved, forged)
        })
        .expect("client namespace");
    for (n, r) in moved.iter().enumerate() {
        if let Err(r) = r {
            panic!("session {n} opened from {a}, used from {b}: {r:?}");
        }
    }
    for r in &forged {
        assert!(
            from_a_worker(r),
            "an unknown sid must be routed to a worker, which refuses it: {r:?}"
        );
    }
    drop(daemon);

    // Control: without sid routing, B's requests go to B's own worker, which does not know
    // the session — the check above can fail.
    let _daemon = start_sticky(&topo, to, "198.18.0.2/32", WORKER_PORT, &["--no-sid"]);
    let lost = topo
        .client
        .run(move || {
            let sid = handshake(to, a);
            session_answers(to, &sid, b)
        })
        .expect("client namespace");
    match lost {
        Err(r) => assert!(from_a_worker(&r), "{r:?}"),
        Ok(()) => panic!("--no-sid still routed {b} to {a}'s session"),
    }
}

/// How far a refused request may have got before sticky saw the problem.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Refused {
    /// In the head: no byte of the request reaches a backend.
    Head,
    /// In the chunked body, found while streaming it: nothing from the bad chunk on (the
    /// smuggled request) reaches a backend.
    Body,
}

/// Request smuggling and malformed framing. `{P}` is replaced with a marker in the target of
/// the request, `{S}` with a marker in the request hidden in its body, both 9 bytes, so the
/// chunk sizes are exact (`24`: the 36 bytes of the smuggled request): only the framing rule
/// a case breaks can refuse it. Every request carries X-Forwarded-For so that a refusal is
/// never about the client address.
const SMUGGLING: &[(&str, Refused, &str)] = &[
    (
        "cl_te",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 6\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "te_cl",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
         24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_xchunked_with_cl",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 4\r\n\
         Transfer-Encoding: xchunked\r\n\r\n24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_xchunked",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "te_space_before_colon",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 4\r\n\
         Transfer-Encoding : chunked\r\n\r\n24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_duplicate_obfuscated",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n\
         0\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "te_duplicate_with_cl",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n\
         24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "te_chunked_not_last",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "te_obs_fold",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 4\r\n\
         Transfer-Encoding:\r\n chunked\r\n\r\n24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "cl_duplicate_different",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 0\r\n\
         Content-Length: 31\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_list_different",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Content-Length: 0, 31\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_plus",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: +5\r\n\
         \r\nhelloGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_hex",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Content-Length: 0x10\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_negative",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: -1\r\n\
         \r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_trailing_garbage",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nContent-Length: 5a\r\n\
         \r\nhelloGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "cl_space_before_colon",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Content-Length : 31\r\n\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "header_space_before_colon",
        Refused::Head,
        "GET /{P} HTTP/1.1\r\nHost : x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n\
         GET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "obs_fold",
        Refused::Head,
        "GET /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nX-Long: a\r\n b\r\n\r\n\
         GET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "bare_cr_in_value",
        Refused::Head,
        "GET /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\nX-A: a\rb\r\n\r\n\
         GET /{S} HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "bare_cr_hides_a_header",
        Refused::Head,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
         24\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk_size_invalid",
        Refused::Body,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk_size_negative",
        Refused::Body,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\n\r\n-5\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk_size_overflow",
        Refused::Body,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\n\r\n10000000000000001c\r\n\
         GET /{S} HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk_size_0x",
        Refused::Body,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\n\r\n0x1c\r\nGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
    (
        "chunk_data_overrun",
        Refused::Body,
        "POST /{P} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabcGET /{S} HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
];

/// What comes before a smuggling case on its connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lead {
    Alone,
    /// A good GET: the case is the connection's second request.
    AfterGet,
    /// A good chunked POST whose chunk size has 20 digits, leading zeros (valid, and hyper
    /// reads it): framing must still be followed past it.
    AfterLongChunkSize,
    /// A GET asking for a WebSocket upgrade that the backend declines (200, not 101): the
    /// connection stays HTTP, and its next heads must still be checked.
    AfterDeclinedUpgrade,
}

impl Lead {
    const ALL: [Self; 4] = [
        Self::Alone,
        Self::AfterGet,
        Self::AfterLongChunkSize,
        Self::AfterDeclinedUpgrade,
    ];

    fn tag(self, name: &str) -> String {
        match self {
            Self::Alone => name.to_string(),
            Self::AfterGet => format!("{name}-after-get"),
            Self::AfterLongChunkSize => format!("{name}-after-long-chunk-size"),
            Self::AfterDeclinedUpgrade => format!("{name}-after-declined-upgrade"),
        }
    }

    /// The good request, its target `/GOOD-<id>`.
    fn request(self, id: &str) -> String {
        let head = format!("/GOOD-{id} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n");
        match self {
            Self::Alone => String::new(),
            Self::AfterGet => format!("GET {head}\r\n"),
            Self::AfterLongChunkSize => format!(
                "POST {head}Transfer-Encoding: chunked\r\n\r\n\
                 00000000000000000005\r\nhello\r\n0\r\n\r\n"
            ),
            Self::AfterDeclinedUpgrade => format!(
                "GET {head}Connection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        }
    }
}

/// The markers' common part for case `n` after `lead`: 3 bytes.
fn marker(n: usize, lead: Lead) -> String {
    let v = match lead {
        Lead::Alone => 'a',
        Lead::AfterGet => 'b',
        Lead::AfterLongChunkSize => 'c',
        Lead::AfterDeclinedUpgrade => 'd',
    };
    format!("{n:02}{v}")
}

/// What a connection got: its bytes, and whether the peer closed it (EOF or reset) within
/// the read timeout.
fn exchange(to: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let (_, mut stream) = connect_trusted(to);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

#[test]
fn smuggling_is_refused_before_any_backend_sees_it() {
    if !root_or_skip("smuggling_is_refused_before_any_backend_sees_it") {
        return;
    }
    let topo = Topology::build("fpsmug", 2, 0).expect("topology");
    let recorders: Vec<Recorder> = (0..2)
        .map(|k| Recorder::start(&topo.backends[k], plan::BACKEND_PORT, &format!("be{k}")))
        .collect();
    let to = SocketAddr::new(topo.vip(false).ip(), PROXY_PORT);
    let _daemon = start_sticky(&topo, to, "198.18.0.2/32", plan::BACKEND_PORT, &[]);
    let mut failures = Vec::new();
    // Each case alone on a connection, then after a good request on the same connection.
    for (n, (name, level, template)) in SMUGGLING.iter().enumerate() {
        for lead in Lead::ALL {
            let (tag, id) = (lead.tag(name), marker(n, lead));
            let fill = |t: &str| {
                t.replace("{P}", &format!("PMARK-{id}"))
                    .replace("{S}", &format!("SMARK-{id}"))
            };
            let bytes = format!("{}{}", lead.request(&id), fill(template));
            let (got, closed) = topo
                .client
                .run(move || exchange(to, bytes.as_bytes()))
                .expect("client namespace");
            // A good request first is answered first, by a backend.
            let rest = if lead == Lead::Alone {
                got.clone()
            } else {
                match got.split_once(&format!(" /GOOD-{id} 198.51.100.7\n")) {
                    Some((_, rest)) if got.starts_with("HTTP/1.1 200") => rest.to_string(),
                    _ => {
                        failures.push(format!("{tag}: the good request first got {got:?}"));
                        continue;
                    }
                }
            };
            if !rest.starts_with("HTTP/1.1 400") || !closed {
                failures.push(format!(
                    "{tag} ({level:?}): wanted 400 and a close, got closed={closed} {rest:?}"
                ));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen: String = recorders.iter().map(Recorder::received).collect();
    for (n, (name, level, _)) in SMUGGLING.iter().enumerate() {
        for lead in Lead::ALL {
            let (tag, id) = (lead.tag(name), marker(n, lead));
            let smuggled = format!("SMARK-{id}");
            let refused = format!("PMARK-{id}");
            if seen.contains(&smuggled) {
                failures.push(format!("{tag}: the smuggled request reached a backend"));
            }
            if *level == Refused::Head && seen.contains(&refused) {
                failures.push(format!("{tag}: the refused head reached a backend"));
            }
        }
    }
    // Control: well-framed bodies of both kinds on one connection pass, and reach a backend
    // where the recorder sees them (so the checks above could see a leak).
    let control = "POST /CTRL-cl HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
                   Content-Length: 5\r\n\r\nhello\
                   POST /CTRL-chunked HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\
                   Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answers = topo
        .client
        .run(move || {
            let (mut reader, mut writer) = connect_trusted(to);
            writer.write_all(control.as_bytes()).expect("send");
            [read_response(&mut reader), read_response(&mut reader)]
        })
        .expect("client namespace");
    for (answer, target) in answers.into_iter().zip(["/CTRL-cl", "/CTRL-chunked"]) {
        let answer = answer.unwrap_or_else(|e| panic!("control {target}: {e:#}"));
        assert!(
            answer.status == 200 && answer.body.contains(target),
            "control {target}: {answer:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let seen: String = recorders.iter().map(Recorder::received).collect();
    assert!(
        seen.contains("POST /CTRL-cl ") && seen.contains("POST /CTRL-chunked "),
        "the recorders missed the control requests: {seen:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures over {} smuggling cases (each alone and after three kinds of good \
         request):\n{}",
        failures.len(),
        SMUGGLING.len(),
        failures.join("\n")
    );
}
