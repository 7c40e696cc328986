//! Network-namespace sandboxes for the demo and the tests: namespaces, veth pairs, small
//! HTTP backends that answer with their id and the client address they saw, HTTP clients
//! bound to chosen source addresses, and a `sticky run` child process. Everything is torn
//! down on drop, in reverse order of creation, also when a test panics.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("run {program} (is it installed? `cargo xtask setup` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A name no other run on this host uses: tag, pid and a per-process counter.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "stk-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates live here.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// Spawns a detached thread inside this namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<JoinHandle<R>> {
        let path = self.path();
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = enter(&path);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // The caller sees the error; this thread must not run `f` in the wrong place.
                loop {
                    std::thread::park();
                }
            }
            f()
        });
        rx.recv().context("namespace thread vanished")??;
        Ok(handle)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects `a_if` in `a` to `b_if` in `b`, both up, transmit checksum offload off on both
/// ends so that a wrong checksum is dropped by the receiver instead of being hidden.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    for (ns, dev) in [(a, a_if), (b, b_if)] {
        ns.exec("ethtool", &["-K", dev, "tx", "off"])
            .with_context(|| format!("turn checksum offload off on {dev} (needs ethtool)"))?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}

/// Addresses of the standard topology. IPv4 from the benchmarking range 198.18.0.0/15,
/// IPv6 from fd00::/8; they exist only inside the namespaces.
pub mod plan {
    use super::*;

    pub const VIP_PORT: u16 = 80;
    pub const BACKEND_PORT: u16 = 8080;

    pub fn vip(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 0x100))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100))
        }
    }

    pub fn lb_client_side(v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))
        }
    }

    /// The `i`-th client source address.
    pub fn client(i: usize, v6: bool) -> IpAddr {
        let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x18,
                0,
                0,
                0,
                1,
                u16::from(hi),
                u16::from(lo) + 1,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 18, 1 + hi, 1 + lo))
        }
    }

    /// Backend `k`'s address in its namespace, and the balancer's address facing it.
    pub fn backend(k: usize, v6: bool) -> (IpAddr, IpAddr) {
        let k = k as u16;
        if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, k, 0, 0, 0, 0, 2)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, k, 0, 0, 0, 0, 1)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(198, 19, k as u8, 2)),
                IpAddr::V4(Ipv4Addr::new(198, 19, k as u8, 1)),
            )
        }
    }
}

/// A client namespace, a balancer namespace and backend namespaces, IPv4 and IPv6:
/// `client:eth0 ── lb:cli0`, `lb:be{k} ── backend{k}:eth0`. The balancer forwards; the
/// backends route everything through it, so replies pass the balancer's `cli0` egress.
pub struct Topology {
    /// Dropped last: namespaces go after everything running in them.
    pub backends: Vec<Netns>,
    pub lb: Netns,
    pub client: Netns,
    pub clients: usize,
}

impl Topology {
    pub fn build(tag: &str, backends: usize, clients: usize) -> anyhow::Result<Self> {
        let client = Netns::create(&unique_name(&format!("{tag}-c")))?;
        let lb = Netns::create(&unique_name(&format!("{tag}-lb")))?;
        let mut bes = Vec::new();
        for k in 0..backends {
            bes.push(Netns::create(&unique_name(&format!("{tag}-b{k}")))?);
        }
        let topo = Self {
            backends: bes,
            lb,
            client,
            clients,
        };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&self) -> anyhow::Result<()> {
        use plan::*;
        veth(&self.client, "eth0", &self.lb, "cli0")?;
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            self.lb.sysctl(key, "1")?;
        }
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/16", lb_client_side(false)),
            "dev",
            "cli0",
        ])?;
        self.lb
            .ip(&["addr", "add", &format!("{}/32", vip(false)), "dev", "cli0"])?;
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/64", lb_client_side(true)),
            "dev",
            "cli0",
            "nodad",
        ])?;
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/128", vip(true)),
            "dev",
            "cli0",
            "nodad",
        ])?;
        let mut batch = String::new();
        batch.push_str("addr add 198.18.0.2/16 dev eth0\naddr add fd00:18::2/64 dev eth0 nodad\n");
        for i in 0..self.clients {
            batch.push_str(&format!(
                "addr add {}/16 dev eth0\n",
                plan::client(i, false)
            ));
            batch.push_str(&format!(
                "addr add {}/64 dev eth0 nodad\n",
                plan::client(i, true)
            ));
        }
        batch.push_str(&format!(
            "route add default via {}\n",
            lb_client_side(false)
        ));
        batch.push_str(&format!("route add default via {}\n", lb_client_side(true)));
        self.client.ip_batch(&batch)?;
        for (k, ns) in self.backends.iter().enumerate() {
            let dev = format!("be{k}");
            veth(&self.lb, &dev, ns, "eth0")?;
            for v6 in [false, true] {
                let (addr, gw) = backend(k, v6);
                let (len, nodad) = if v6 { (64, "nodad") } else { (24, "") };
                let mut args = vec!["addr".to_string(), "add".into(), format!("{gw}/{len}")];
                args.extend(["dev".into(), dev.clone()]);
                let mut be_args = vec!["addr".to_string(), "add".into(), format!("{addr}/{len}")];
                be_args.extend(["dev".into(), "eth0".into()]);
                if v6 {
                    args.push(nodad.into());
                    be_args.push(nodad.into());
                }
                self.lb
                    .ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
                ns.ip(&be_args.iter().map(String::as_str).collect::<Vec<_>>())?;
                let family = if v6 { "-6" } else { "-4" };
                ns.ip(&[family, "route", "add", "default", "via", &gw.to_string()])?;
            }
        }
        Ok(())
    }

    /// `--vip` and `--backend` arguments for remote backends listening on `BACKEND_PORT`.
    pub fn sticky_args(&self, v6: bool) -> Vec<String> {
        self.sticky_args_on(v6, plan::VIP_PORT, plan::BACKEND_PORT)
    }

    /// `--vip` and `--backend` arguments for a VIP port and the port the backends listen on.
    pub fn sticky_args_on(&self, v6: bool, vip_port: u16, backend_port: u16) -> Vec<String> {
        let mut args = vec![
            "--iface".to_string(),
            "cli0".into(),
            "--vip".into(),
            SocketAddr::new(plan::vip(v6), vip_port).to_string(),
        ];
        for k in 0..self.backends.len() {
            args.push("--backend".into());
            args.push(SocketAddr::new(plan::backend(k, v6).0, backend_port).to_string());
        }
        args
    }

    /// Starts an HTTP backend in every backend namespace (both families), ids `be0`, `be1`…
    pub fn start_backends(&self) -> anyhow::Result<Vec<HttpBackend>> {
        let mut servers = Vec::new();
        for (k, ns) in self.backends.iter().enumerate() {
            let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), plan::BACKEND_PORT);
            servers.push(HttpBackend::start(ns, bind, &format!("be{k}"))?);
        }
        Ok(servers)
    }

    pub fn vip(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(plan::vip(v6), plan::VIP_PORT)
    }
}

impl Netns {
    /// `ip -n NS -batch -`: hundreds of addresses in one process.
    pub fn ip_batch(&self, batch: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run ip -batch")?;
        child
            .stdin
            .take()
            .context("ip stdin")?
            .write_all(batch.as_bytes())
            .context("feed ip -batch")?;
        let out = child.wait_with_output().context("wait for ip -batch")?;
        if !out.status.success() {
            bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

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

/// A backend that answers a request head with `101 Switching Protocols` (a WebSocket-style
/// upgrade; `GET /plain`: `200 OK`, streamed until close), then echoes every byte until the
/// client half-closes, then half-closes too.
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
    let mut plain = false;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => plain |= line.starts_with("GET /plain "),
        }
    }
    // `GET /plain`: an ordinary response streamed until close (no protocol switch).
    let answer: &[u8] = if plain {
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    } else {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    };
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

/// What a backend answered: its id and the client address it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub backend: String,
    pub seen_client: IpAddr,
}

/// A keep-alive HTTP connection from a chosen source address. Call from a thread inside the
/// client namespace.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The status line of the last response read.
    pub last_status: String,
}

impl HttpConn {
    pub fn open(src: IpAddr, dst: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let domain = if dst.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket
            .bind(&SocketAddr::new(src, 0).into())
            .with_context(|| format!("bind {src}"))?;
        socket
            .connect_timeout(&dst.into(), timeout)
            .with_context(|| format!("connect {src} -> {dst}"))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            last_status: String::new(),
        })
    }

    pub fn get(&mut self, close: bool) -> anyhow::Result<Answer> {
        self.get_with("", close)
    }

    /// A GET with extra header lines (each ending in `\r\n`), e.g. `X-Forwarded-For`.
    pub fn get_with(&mut self, headers: &str, close: bool) -> anyhow::Result<Answer> {
        let conn = if close { "close" } else { "keep-alive" };
        write!(
            self.writer,
            "GET / HTTP/1.1\r\nHost: sticky\r\n{headers}Connection: {conn}\r\n\r\n"
        )
        .context("send request")?;
        self.read_answer()
    }

    /// Sends raw bytes (a PROXY protocol header, a hostile head).
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).context("send")
    }

    /// The raw stream, for tests that speak something else after connecting.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Reads one response: the backend's id and the client address it saw.
    pub fn read_answer(&mut self) -> anyhow::Result<Answer> {
        let mut len = None;
        let mut status = String::new();
        self.reader.read_line(&mut status).context("read status")?;
        self.last_status = status.clone();
        if !status.starts_with("HTTP/1.1 200") {
            bail!("unexpected status line {status:?}");
        }
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).context("read header")? == 0 {
                bail!("connection closed mid-response");
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; len.context("no content-length")?];
        self.reader.read_exact(&mut body).context("read body")?;
        let body = String::from_utf8_lossy(&body);
        let (backend, ip) = body.trim().split_once(' ').context("malformed body")?;
        Ok(Answer {
            backend: backend.to_string(),
            seen_client: ip.parse().context("client address in body")?,
        })
    }
}

/// One request on a fresh connection.
pub fn get_once(src: IpAddr, dst: SocketAddr) -> anyhow::Result<Answer> {
    HttpConn::open(src, dst, Duration::from_secs(3))?.get(true)
}

/// A `sticky run` child process inside a namespace; SIGTERM on drop (SIGKILL if it lingers).
pub struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub ready_line: String,
    /// Every output line read so far that no `wait_for` asked for.
    pub log: Vec<String>,
    /// The `--instance` it runs as (the namespace's name unless the arguments give one).
    pub instance: String,
}

impl Daemon {
    /// Starts `bin run ARGS` in `ns` and waits for its ready line. Without `--instance` in
    /// `args` it runs as an instance named after the namespace, so runs never collide.
    pub fn start(bin: &Path, ns: &Netns, args: &[String]) -> anyhow::Result<Self> {
        let mut full = vec!["run".to_string()];
        full.extend_from_slice(args);
        Self::start_with(bin, ns, &full, "sticky ready")
    }

    /// Starts `bin ARGS` (any subcommand, e.g. `cluster`) in `ns` and waits for a line
    /// containing `ready`.
    pub fn start_with(
        bin: &Path,
        ns: &Netns,
        args: &[String],
        ready: &str,
    ) -> anyhow::Result<Self> {
        let mut args = args.to_vec();
        let ours = args
            .iter()
            .position(|a| a == "--")
            .map_or(&args[..], |end| &args[..end]);
        let instance = match ours.iter().position(|a| a == "--instance") {
            Some(i) => args
                .get(i + 1)
                .cloned()
                .context("--instance without a name")?,
            None => {
                // Before any `--`: what follows it belongs to a worker command.
                let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
                args.splice(at..at, ["--instance".to_string(), ns.name.clone()]);
                ns.name.clone()
            }
        };
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start sticky through nsenter")?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("sticky stdout")?;
        let stderr = child.stderr.take().context("sticky stderr")?;
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut daemon = Self {
            child,
            lines,
            ready_line: String::new(),
            log: Vec::new(),
            instance,
        };
        daemon.ready_line = daemon.wait_for(ready, Duration::from_secs(60))?;
        Ok(daemon)
    }

    /// Waits for an output line containing `needle`; fails with everything it printed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => {
                    self.log.push(line.clone());
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "sticky exited ({status:?}) before '{needle}': {}",
                        seen.join(" | ")
                    );
                }
            }
        }
        bail!(
            "no '{needle}' from sticky within {timeout:?}: {}",
            seen.join(" | ")
        )
    }

    /// Runs `bin ARGS --instance <ours>` (a control command) and returns its output.
    pub fn ctl(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin)
            .args(args)
            .args(["--instance", &self.instance])
            .output()
            .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", bin.display()))
    }

    /// Forgets the process without stopping it (it was killed or stopped by other means).
    pub fn wait_exit(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.reap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: our own child, still unreaped.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            bail!("kill {}: {}", self.pid(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.reap()
    }

    fn reap(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal(libc::SIGTERM);
            let _ = self.reap();
        }
    }
}
