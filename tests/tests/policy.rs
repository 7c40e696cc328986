//! Traffic policy through the kernel path with real clients in namespaces: affinity by
//! client prefix (`--affinity-prefix`), paced drain (`backend drain --close-rate`), slow start
//! (`--slow-start`), backends from DNS (`--backend-dns`, `--backend-srv`) served by dnsmasq.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{args_with, assign, backend, ok, predicted, sticky_bin};
use sticky_common::{Addr16, client_key, maps::Settings};
use sticky_tests::{
    HoldBackend, HttpBackend, HttpConn, StickyProcess, Topology, get_once, plan, raise_fd_limit,
    root_or_skip,
};

/// 500 clients: two IPv4 /24s (250 each), one IPv6 /64.
const CLIENTS: usize = 500;

fn key(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    let settings = Settings {
        affinity_prefix_v4: v4,
        affinity_prefix_v6: v6,
        ..Settings::default()
    };
    client_key(&Addr16::from_ip(ip), &settings).to_ip()
}

/// Backends by client key: panics unless every client of a key reached one backend.
fn by_prefix(
    assignment: &BTreeMap<usize, String>,
    v6: bool,
    v4len: u8,
    v6len: u8,
) -> BTreeMap<IpAddr, String> {
    let mut groups: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for (&i, b) in assignment {
        let k = key(plan::client(i, v6), v4len, v6len);
        groups.entry(k).or_default().insert(b.clone());
    }
    groups
        .into_iter()
        .map(|(k, set)| {
            assert_eq!(set.len(), 1, "clients of {k} split over {set:?}");
            (k, set.into_iter().next().expect("one backend"))
        })
        .collect()
}

fn lookup_reason(daemon: &StickyProcess, ip: IpAddr) -> String {
    let out = common::ok(
        &daemon.ctl(&sticky_bin(), &["lookup", &ip.to_string(), "--json"]),
        "lookup",
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("lookup JSON");
    v["reason"].as_str().expect("reason").to_string()
}

fn start(topo: &Topology, v6: bool, prefix: &str) -> StickyProcess {
    let mut args = topo.sticky_args(v6);
    args.extend(["--affinity-prefix".into(), prefix.into()]);
    StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky")
}

/// A client that changes address within its /24 (IPv4) or /64 (IPv6) keeps its backend: the
/// first address's connection makes the whole prefix affine, and every other address of it
/// lands on the same backend.
#[test]
fn clients_rotating_within_a_prefix_stay_on_one_backend() {
    if !root_or_skip("clients_rotating_within_a_prefix_stay_on_one_backend") {
        return;
    }
    let topo = Topology::build("pfx", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    for v6 in [false, true] {
        let daemon = start(&topo, v6, "24,64");
        let first = assign(&topo, [0usize, 250].into_iter(), 1, v6);
        for i in [0usize, 250] {
            let other = plan::client(i + 249, v6);
            assert_eq!(
                lookup_reason(&daemon, other),
                "affinity",
                "v6={v6}: {other} shares {}'s prefix, its affinity",
                plan::client(i, v6)
            );
        }
        let all = assign(&topo, 0..CLIENTS, 2, v6);
        let groups = by_prefix(&all, v6, 24, 64);
        let expected = if v6 { 1 } else { 2 };
        assert_eq!(groups.len(), expected, "v6={v6}: {groups:?}");
        for (i, b) in &first {
            assert_eq!(&all[i], b, "v6={v6}: client {i} moved");
        }
        let status = common::status(&daemon);
        assert_eq!(status.affinity_prefix, "24,64");
        assert_eq!(
            status.affinity_entries, expected as u64,
            "v6={v6}: one affinity entry per prefix"
        );
        daemon.stop().expect("stop sticky");
    }
}

/// Keys spread over the backends as the table says: each /28 of the clients on one backend,
/// the one userspace computes for the key, and every backend holding a fair part of them.
#[test]
fn prefixes_spread_as_the_table_says() {
    if !root_or_skip("prefixes_spread_as_the_table_says") {
        return;
    }
    let topo = Topology::build("pfxs", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon = start(&topo, false, "28,128");
    let all = assign(&topo, 0..CLIENTS, 1, false);
    let groups = by_prefix(&all, false, 28, 128);
    assert!(groups.len() >= 30, "{} /28s", groups.len());
    let backends: Vec<_> = (0..3)
        .map(|k| (k, plan::backend(k, false).0, plan::BACKEND_PORT))
        .collect();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, b) in &groups {
        assert_eq!(
            *b,
            predicted(&backends, *k, 0),
            "kernel and userspace disagree for {k}"
        );
        *per_backend.entry(b).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for n in per_backend.values() {
        assert!(
            *n >= groups.len() / 6,
            "uneven spread of prefixes {per_backend:?}"
        );
    }
    daemon.stop().expect("stop sticky");
}

/// Proxy mode keys clients by the same prefix: requests forwarded for addresses rotating
/// within a /24 reach one backend, the first one's makes the /24 affine, 30 /24s spread over
/// the 3 backends, and a /24 reached both directly and through the proxy gets one backend.
#[test]
fn proxy_mode_keys_clients_by_the_same_prefix() {
    if !root_or_skip("proxy_mode_keys_clients_by_the_same_prefix") {
        return;
    }
    let topo = Topology::build("pfxp", 3, 20).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let proxy = SocketAddr::new(topo.vip(false).ip(), 8080);
    let extra = [
        "--affinity-prefix",
        "24,64",
        "--proxy",
        &proxy.to_string(),
        "--trusted-proxies",
        "198.18.0.0/16",
    ];
    let daemon = StickyProcess::start(
        &sticky_bin(),
        &topo.lb,
        &args_with(&topo, &[0, 1, 2], &extra),
    )
    .expect("sticky --proxy");
    // Through the proxy, for `client` (X-Forwarded-For), from the client namespace.
    let forwarded = |client: IpAddr| -> String {
        topo.client
            .run(|| {
                let mut c = HttpConn::open(plan::client(0, false), proxy, Duration::from_secs(3))
                    .expect("connect to the proxy");
                let header = format!("X-Forwarded-For: {client}\r\n");
                c.get_with(&header, true)
                    .expect("answer through the proxy")
                    .backend
            })
            .expect("client namespace")
    };
    let net = |k: u8, host: u8| IpAddr::from([203, 0, k, host]);
    let first = forwarded(net(0, 1));
    assert_eq!(lookup_reason(&daemon, net(0, 254)), "affinity");
    let mut per_prefix: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
    for k in 0..30u8 {
        for host in [7, 99, 200] {
            per_prefix
                .entry(k)
                .or_default()
                .insert(forwarded(net(k, host)));
        }
    }
    assert_eq!(
        per_prefix[&0],
        BTreeSet::from([first]),
        "the /24's affinity"
    );
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    for (k, backends) in &per_prefix {
        assert_eq!(backends.len(), 1, "203.0.{k}.0/24 split over {backends:?}");
        *spread
            .entry(backends.iter().next().expect("one").clone())
            .or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(
        spread.values().all(|n| *n >= 5),
        "uneven spread of /24s {spread:?}"
    );
    // Direct from 198.18.1.0/24, then forwarded for another address of it: one backend.
    let direct = assign(&topo, 0..20, 1, false);
    let via = forwarded(IpAddr::from([198, 18, 1, 200]));
    assert!(
        direct.values().all(|b| *b == via),
        "direct {direct:?}, proxied {via}"
    );
    daemon.stop().expect("stop sticky");
}

/// Open connections to the drained backend.
const HELD: usize = 1000;
const CLOSE_RATE: usize = 50;
/// Each held connection is probed this often: a byte out, then a look for a reset.
const PROBE: Duration = Duration::from_millis(25);

/// `drain --deadline 1s --close-rate 50/s` under 1000 open connections: none ends before the
/// deadline; after it they end at most 55 in any one second, and all by the time the rate
/// allows (deadline + the daemon's 1 s tick + 1000/50 s + 1 s for the removal and a probe's delay); status shows the
/// rate and the progress meanwhile.
#[test]
fn paced_drain_ends_flows_at_the_close_rate() {
    if !root_or_skip("paced_drain_ends_flows_at_the_close_rate") {
        return;
    }
    raise_fd_limit(4 * HELD as u64 + 1024);
    let topo = Topology::build("pace", 2, 250).expect("topology");
    let at = |k: usize| SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT);
    let _sinks: Vec<HoldBackend> = (0..2)
        .map(|k| HoldBackend::start(&topo.backends[k], at(k)).expect("hold backend"))
        .collect();
    let daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args_with(&topo, &[0], &[]))
        .expect("sticky");
    let vip = topo.vip(false);
    let conns: Vec<TcpStream> = topo
        .client
        .run(|| {
            (0..HELD)
                .map(|i| connect(plan::client(i % 250, false), vip))
                .collect()
        })
        .expect("client namespace");
    // Where re-balanced packets of ended flows go: a backend that resets them.
    let ctl = |args: &[&str]| ok(&daemon.ctl(&sticky_bin(), args), &args.join(" "));
    ctl(&["backend", "add", &backend(1)]);
    ctl(&[
        "backend",
        "drain",
        &backend(0),
        "--deadline",
        "1s",
        "--close-rate",
        "50/s",
    ]);
    let start = Instant::now();
    let watcher = std::thread::scope(|s| {
        let instance = daemon.instance.clone();
        let watcher = s.spawn(move || {
            std::thread::sleep(Duration::from_secs(6));
            let out = std::process::Command::new(sticky_bin())
                .args(["status", "--json", "--instance", &instance])
                .output()
                .expect("run sticky status");
            let text = ok(&out, "status --json");
            serde_json::from_str::<sticky::status::Status>(&text).expect("status JSON")
        });
        let closed = probe_until_closed(conns, start + Duration::from_secs(40));
        (closed, watcher.join().expect("status thread"))
    });
    let (closed, mid) = watcher;
    let ends: Vec<f64> = closed
        .iter()
        .map(|t| t.duration_since(start).as_secs_f64())
        .collect();
    assert_eq!(ends.len(), HELD, "connections never ended");
    let first = ends.iter().copied().fold(f64::MAX, f64::min);
    let last = ends.iter().copied().fold(0.0, f64::max);
    assert!(
        first >= 1.0,
        "a connection ended {first:.2} s in, before the 1 s deadline"
    );
    let bound = 1.0 + 1.0 + (HELD / CLOSE_RATE) as f64 + 1.0;
    assert!(
        last <= bound,
        "the last connection ended {last:.2} s in, past {bound} s"
    );
    // Closes per second: whole seconds from the first close.
    let mut per_second = vec![0usize; (last - first) as usize + 1];
    for t in &ends {
        per_second[(t - first) as usize] += 1;
    }
    let busiest = per_second.iter().copied().max().unwrap_or(0);
    println!(
        "paced drain: {HELD} connections ended from {first:.2} s to {last:.2} s, per second \
         {per_second:?}"
    );
    assert!(
        busiest <= 55,
        "{busiest} connections ended within one second"
    );
    let closing = mid
        .closing
        .first()
        .expect("status shows the backend being closed");
    assert_eq!(closing.addr, at(0));
    assert_eq!(closing.close_rate, CLOSE_RATE as u32);
    assert!(
        closing.flows_ended > 0 && closing.flows_left > 0,
        "{closing:?}"
    );
    assert_eq!(closing.flows_ended + closing.flows_left, HELD as u64);
    daemon.stop().expect("stop sticky");
}

/// A connection from `src` to `dst`, one descriptor, non-blocking once connected.
fn connect(src: IpAddr, dst: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::new(src, 0).into()).expect("bind");
    socket
        .connect_timeout(&dst.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_nonblocking(true).expect("non-blocking");
    stream
}

/// Probes every connection each [`PROBE`] until all ended (reset) or `until`: when each
/// ending was seen.
fn probe_until_closed(conns: Vec<TcpStream>, until: Instant) -> Vec<Instant> {
    let mut open: Vec<Option<TcpStream>> = conns.into_iter().map(Some).collect();
    let mut ended = Vec::new();
    let mut buf = [0u8; 64];
    while ended.len() < open.len() && Instant::now() < until {
        let round = Instant::now();
        for slot in &mut open {
            let Some(conn) = slot else { continue };
            let gone = match conn.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            } || conn.write(b".").is_err();
            if gone {
                ended.push(Instant::now());
                *slot = None;
            }
        }
        std::thread::sleep(PROBE.saturating_sub(round.elapsed()));
    }
    ended
}

/// The slow-start window of the test.
const RAMP: Duration = Duration::from_secs(20);

/// `--slow-start 20s`: a backend added to two others takes a share of new connections that
/// grows linearly to its third — within 10 points of the line at each quarter of the window.
/// Affinity is off (`--affinity-timeout 0s`), so each round of 500 connections from fixed
/// clients measures the table itself; a round's share is held against the line at its middle.
#[test]
fn slow_start_ramps_the_share_of_new_connections_linearly() {
    if !root_or_skip("slow_start_ramps_the_share_of_new_connections_linearly") {
        return;
    }
    let topo = Topology::build("ramp", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(
        &topo,
        &[0, 1],
        &["--slow-start", "20s", "--affinity-timeout", "0s"],
    );
    let daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
    let vip = topo.vip(false);
    ok(
        &daemon.ctl(&sticky_bin(), &["backend", "add", &backend(2)]),
        "backend add",
    );
    let start = Instant::now();
    let mut rounds: Vec<(f64, f64)> = Vec::new();
    while start.elapsed() < RAMP + Duration::from_secs(3) {
        let begin = start.elapsed().as_secs_f64();
        let answers: Vec<String> = topo
            .client
            .run(|| {
                (0..CLIENTS)
                    .map(|i| {
                        let src = plan::client(i, false);
                        get_once(src, vip)
                            .unwrap_or_else(|e| panic!("{src} -> {vip}: {e:#}"))
                            .backend
                    })
                    .collect()
            })
            .expect("client namespace");
        let mid = (begin + start.elapsed().as_secs_f64()) / 2.0;
        let share = answers.iter().filter(|b| *b == "be2").count() as f64 / CLIENTS as f64;
        rounds.push((mid, share));
    }
    let line = |t: f64| (t / RAMP.as_secs_f64()).min(1.0) / 3.0;
    let shown: Vec<String> = rounds
        .iter()
        .map(|(t, s)| format!("{t:.1}s {:.1}% (line {:.1}%)", s * 100.0, line(*t) * 100.0))
        .collect();
    println!("slow start: {}", shown.join(", "));
    for quarter in [0.25, 0.5, 0.75, 1.0] {
        let at = quarter * RAMP.as_secs_f64();
        let (t, share) = rounds
            .iter()
            .copied()
            .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
            .expect("rounds");
        assert!((t - at).abs() < 1.5, "no round near {at} s: {shown:?}");
        assert!(
            (share - line(t)).abs() <= 0.10,
            "at {t:.1} s be2 took {:.1}% of new connections, the line says {:.1}%: {shown:?}",
            share * 100.0,
            line(t) * 100.0
        );
    }
    let status = common::status(&daemon);
    assert!(
        status.backends.iter().all(|b| b.slow_start.is_none()),
        "ramp not over"
    );
    daemon.stop().expect("stop sticky");
}

/// During and after a slow start, clients affine to the other backends stay where they are.
#[test]
fn slow_start_leaves_affine_clients_of_others_alone() {
    if !root_or_skip("slow_start_leaves_affine_clients_of_others_alone") {
        return;
    }
    let topo = Topology::build("rampa", 3, 200).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &[0, 1], &["--slow-start", "4s"]);
    let daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
    let before = assign(&topo, 0..200, 1, false);
    ok(
        &daemon.ctl(&sticky_bin(), &["backend", "add", &backend(2)]),
        "backend add",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        assign(&topo, 0..200, 1, false),
        before,
        "moved during the ramp"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        assign(&topo, 0..200, 1, false),
        before,
        "moved after the ramp"
    );
    let status = common::status(&daemon);
    let be2 = status
        .backends
        .iter()
        .find(|b| b.addr.to_string() == backend(2));
    assert!(
        be2.is_some_and(|b| b.slow_start.is_none() && b.table_share > 0.25),
        "the ramp ended with its full share: {be2:?}"
    );
    daemon.stop().expect("stop sticky");
}

/// A backend that comes back up after failing its health checks ramps too: its share starts
/// small and reaches the full third when the window has passed.
#[test]
fn a_backend_that_rises_ramps_its_share() {
    if !root_or_skip("a_backend_that_rises_ramps_its_share") {
        return;
    }
    let topo = Topology::build("rampr", 3, 20).expect("topology");
    let mut servers = topo.start_backends().expect("backends");
    let extra: Vec<&str> = "--slow-start 6s --health-check tcp --health-interval 200ms \
                             --health-timeout 100ms --health-fall 1 --health-rise 1"
        .split_whitespace()
        .collect();
    let daemon = StickyProcess::start(
        &sticky_bin(),
        &topo.lb,
        &args_with(&topo, &[0, 1, 2], &extra),
    )
    .expect("sticky");
    let be2 = |s: &sticky::status::Status| {
        s.backends
            .iter()
            .find(|b| b.addr.to_string() == backend(2))
            .cloned()
            .expect("be2 in status")
    };
    // Started with the daemon: no ramp, full share.
    assert!(be2(&common::status(&daemon)).slow_start.is_none());
    drop(servers.remove(2));
    status_until(&daemon, "be2 down", |s| state(s, 2) == Some("down"));
    let at = SocketAddr::new(plan::backend(2, false).0, plan::BACKEND_PORT);
    servers.push(HttpBackend::start(&topo.backends[2], at, "be2").expect("be2 again"));
    let risen = status_until(&daemon, "be2 up again", |s| state(s, 2) == Some("up"));
    let b = be2(&risen);
    assert!(
        b.slow_start.is_some_and(|p| p < 0.5) && b.table_share < 0.2,
        "be2 took a large share at once: {b:?}"
    );
    std::thread::sleep(Duration::from_secs(7));
    let b = be2(&common::status(&daemon));
    assert!(
        b.slow_start.is_none() && b.table_share > 0.3,
        "be2 never reached its share: {b:?}"
    );
    daemon.stop().expect("stop sticky");
}

/// The names dnsmasq serves in the dns test.
const WEB: &str = "web.sticky.test";
const SRV: &str = "_http._tcp.sticky.test";

/// dnsmasq in the balancer's namespace on 127.0.0.1:5353, answering from a hosts file the
/// test rewrites (SIGHUP re-reads it), TTL 1 s; killed (by its PID) on drop.
struct Dnsmasq {
    child: std::process::Child,
    hosts: std::path::PathBuf,
}

impl Dnsmasq {
    fn start(ns: &str, hosts: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{ns}.hosts"));
        std::fs::write(&path, hosts).expect("write hosts");
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
            ])
            .args([
                "--port=5353",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--addn-hosts={}", path.display()))
            .arg(format!(
                "--srv-host={SRV},srv.sticky.test,{}",
                plan::BACKEND_PORT
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian package dnsmasq-base)");
        Self { child, hosts: path }
    }

    fn serve(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.hosts);
    }
}

/// A hosts file naming `web` for backends `web` and `srv.sticky.test` for backend `srv`.
fn hosts(web: &[usize], srv: usize) -> String {
    let mut text: String = web
        .iter()
        .map(|&k| format!("{} {WEB}\n", plan::backend(k, false).0))
        .collect();
    text.push_str(&format!(
        "{} srv.sticky.test\n",
        plan::backend(srv, false).0
    ));
    text
}

/// Polls status until `done` holds (15 s at most); the last status.
fn status_until(
    daemon: &StickyProcess,
    what: &str,
    done: impl Fn(&sticky::status::Status) -> bool,
) -> sticky::status::Status {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let status = common::status(daemon);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < until,
            "{what}: never happened: {status:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state(status: &sticky::status::Status, k: usize) -> Option<&'static str> {
    let addr = SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT);
    status
        .backends
        .iter()
        .find(|b| b.addr == addr)
        .map(|b| b.state.name())
}

/// Backends from A records and an SRV record: they join as dnsmasq serves them (later ones
/// with slow start), one that vanishes from the answer drains (new clients avoid it), and with
/// the resolver gone the last good set stays and status says the source fails.
#[test]
fn backends_follow_dns_and_survive_a_resolver_outage() {
    if !root_or_skip("backends_follow_dns_and_survive_a_resolver_outage") {
        return;
    }
    let topo = Topology::build("dns", 3, 100).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let dns = Dnsmasq::start(&topo.lb.name, &hosts(&[0], 2));
    let args: Vec<String> = [
        "--iface",
        "cli0",
        "--vip",
        &topo.vip(false).to_string(),
        "--backend-dns",
        &format!("{WEB}:{}", plan::BACKEND_PORT),
        "--backend-srv",
        SRV,
        "--dns-server",
        "127.0.0.1:5353",
        "--slow-start",
        "20s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
    status_until(&daemon, "be0 (A) and be2 (SRV) from DNS", |s| {
        state(s, 0) == Some("up") && state(s, 2) == Some("up") && state(s, 1).is_none()
    });
    let first = assign(&topo, 0..50, 1, false);
    assert!(first.values().all(|b| b != "be1"), "{first:?}");

    // be1 replaces be0 in the A records: be1 joins with slow start, be0 drains.
    dns.serve(&hosts(&[1], 2));
    let s = status_until(&daemon, "be1 joins, be0 drains", |s| {
        state(s, 0) == Some("draining") && state(s, 1) == Some("up") && state(s, 2) == Some("up")
    });
    let be1 = SocketAddr::new(plan::backend(1, false).0, plan::BACKEND_PORT);
    let joined = s.backends.iter().find(|b| b.addr == be1).expect("be1");
    assert!(
        joined.slow_start.is_some(),
        "be1 joined without slow start: {joined:?}"
    );
    let fresh = assign(&topo, 50..100, 1, false);
    assert!(
        fresh.values().all(|b| b != "be0"),
        "a new client reached the vanished backend: {fresh:?}"
    );

    drop(dns);
    let s = status_until(&daemon, "status says the resolver fails", |s| {
        s.dns.len() == 2 && s.dns.iter().all(|d| d.error.is_some())
    });
    assert_eq!(
        s.dns[0].backends.len(),
        1,
        "last good set kept: {:?}",
        s.dns
    );
    assert_eq!(
        s.dns[1].backends.len(),
        1,
        "last good set kept: {:?}",
        s.dns
    );
    std::thread::sleep(Duration::from_secs(3));
    let s = common::status(&daemon);
    assert_eq!(
        (state(&s, 0), state(&s, 1), state(&s, 2)),
        (Some("draining"), Some("up"), Some("up")),
        "a failing resolver changed the backends"
    );
    let again = assign(&topo, 50..100, 1, false);
    assert_eq!(again, fresh, "clients moved while the resolver was down");
    daemon.stop().expect("stop sticky");
}
