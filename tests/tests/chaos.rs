//! Fault and flood campaigns against a real daemon in namespace topologies: a SYN flood from
//! spoofed sources, `kill -9` of the daemon in a loop, backends killed and restarted under
//! load, a proxy connection flood, and the control socket's permissions and bad requests.
//!
//! Each campaign runs short here (`cargo xtask test`); `cargo xtask chaos` runs the same tests
//! with `STICKY_CHAOS=full` (bigger floods, more kills, a minute of churn). Every campaign
//! prints its size and result: the README's reliability table is made of these lines.

mod common;
#[path = "common/flood.rs"]
mod flood;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::{linux::fs::MetadataExt as _, unix::net::UnixStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{args_with, assign, backend, ok, open_long_lived, status, sticky_bin};
use sticky::control;
use sticky_tests::{
    HttpBackend, HttpConn, Netns, StickyProcess, Topology, get_once, plan, raise_fd_limit,
    root_or_skip,
};

/// How big a campaign is: short in `cargo xtask test`, full in `cargo xtask chaos`.
struct Scale {
    name: &'static str,
    /// Spoofed SYNs.
    flood: u32,
    /// `kill -9` and restart cycles.
    kills: usize,
    /// How long backends are killed and restarted.
    churn: Duration,
    /// The proxy's connection limit, filled with idle connections.
    connections: usize,
}

fn scale() -> Scale {
    if std::env::var("STICKY_CHAOS").is_ok_and(|v| v == "full") {
        Scale {
            name: "full",
            flood: 1_000_000,
            kills: 20,
            churn: Duration::from_secs(60),
            connections: 10_000,
        }
    } else {
        Scale {
            name: "short",
            flood: 100_000,
            kills: 3,
            churn: Duration::from_secs(12),
            connections: 10_000,
        }
    }
}

/// One line per campaign, `chaos: <campaign> · <size> · <result>`.
fn report(campaign: &str, size: &str, result: &str) {
    println!("chaos ({}): {campaign} · {size} · {result}", scale().name);
}

/// Every backend of the topology.
fn all(topo: &Topology) -> Vec<usize> {
    (0..topo.backends.len()).collect()
}

type Held = Vec<(usize, HttpConn, String)>;

/// Every held connection answers, from the backend it started on.
fn exchange(held: &mut Held, when: &str) {
    for (i, conn, first) in held.iter_mut() {
        let a = conn
            .get(false)
            .unwrap_or_else(|e| panic!("{when}: connection of client {i} broke: {e:#}"));
        assert_eq!(a.backend, *first, "{when}: client {i}'s connection moved");
    }
}

/// New connections from `clients`, round after round until stopped: (served, failures).
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<(Instant, String)>)>,
}

impl Load {
    /// Checks each answer against `expected` (client → backend) when given.
    fn start(topo: &Topology, expected: Option<BTreeMap<usize, String>>, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, vip) = (stop.clone(), topo.vip(false));
        let thread = topo
            .client
            .spawn(move || {
                let (mut served, mut failed) = (0u64, Vec::new());
                // Bounded: at most this many rounds even if nobody stops us.
                'rounds: for _ in 0..100_000 {
                    for i in 0..clients {
                        if flag.load(Ordering::Relaxed) {
                            break 'rounds;
                        }
                        match get_once(plan::client(i, false), vip) {
                            Ok(a) => match expected.as_ref().and_then(|e| e.get(&i)) {
                                Some(want) if *want != a.backend => failed.push((
                                    Instant::now(),
                                    format!("client {i} went to {} not {want}", a.backend),
                                )),
                                _ => served += 1,
                            },
                            Err(e) => failed.push((Instant::now(), format!("client {i}: {e:#}"))),
                        }
                    }
                }
                (served, failed)
            })
            .expect("load thread");
        Self { stop, thread }
    }

    fn finish(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// A SYN flood from spoofed sources, far larger than every flow table, while long-lived
/// connections exchange requests: none breaks or moves, affinity survives, and the map memory
/// stays what the sizes say.
#[test]
fn syn_flood_keeps_established_connections() {
    if !root_or_skip("syn_flood_keeps_established_connections") {
        return;
    }
    const HELD: usize = 120;
    let s = scale();
    let bin = sticky_bin();
    let topo = Topology::build("flood", 2, HELD).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    // The SYN-ACKs to the spoofed sources go back to the client namespace, which drops them.
    topo.lb
        .ip(&["route", "add", "100.64.0.0/10", "via", "198.18.0.2"])
        .expect("route for the spoofed sources");
    let sizes = [
        "--max-flows",
        "4096",
        "--max-new-flows",
        "8192",
        "--max-clients",
        "4096",
    ];
    let daemon = StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &all(&topo), &sizes))
        .expect("sticky");
    let mut held = open_long_lived(&topo, 0..HELD, false);
    let before = assign(&topo, 0..HELD, 1, false);
    let wire = flood::Wire::between(&topo.client, "eth0", &topo.lb, "cli0").expect("wire");

    // The held connections talk all through the flood, from their own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        topo.client
            .spawn(move || {
                let mut rounds = 0u32;
                while !stop.load(Ordering::Relaxed) && rounds < 10_000 {
                    exchange(&mut held, "during the SYN flood");
                    rounds += 1;
                }
                (held, rounds)
            })
            .expect("talker")
    };
    let IpAddr::V4(vip) = topo.vip(false).ip() else {
        unreachable!("IPv4 VIP")
    };
    let started = Instant::now();
    let sent = topo
        .client
        .run(|| {
            flood::syn_flood(
                &wire,
                vip,
                plan::VIP_PORT,
                s.flood,
                Duration::from_secs(120),
            )
        })
        .expect("flood namespace")
        .expect("SYN flood");
    let flood_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut held, rounds) = talker.join().expect("the held connections broke");
    assert_eq!(sent, s.flood, "the flood was cut short");
    assert!(
        rounds > 0,
        "the held connections never talked during the flood"
    );

    exchange(&mut held, "after the SYN flood");
    assert_eq!(
        assign(&topo, 0..HELD, 1, false),
        before,
        "clients lost their backend"
    );
    let st = status(&daemon);
    let spoofed = u64::from(s.flood) * 2;
    assert!(
        st.new_flow_entries <= 8192 && st.flow_entries <= 4096,
        "tables beyond their sizes: {st:?}"
    );
    assert!(
        st.affinity_entries <= HELD as u64,
        "{} affinity entries: spoofed sources became affine",
        st.affinity_entries
    );
    report(
        "SYN flood, spoofed sources",
        &format!(
            "{sent} SYNs from {sent} sources in {:.1} s ({spoofed} would-be flow entries) \
             while {HELD} connections made {} requests",
            flood_time.as_secs_f64(),
            u64::from(rounds) * HELD as u64
        ),
        &format!(
            "0 connections broken or moved; tables held {} established + {} new flow entries, \
             {} affine clients; maps {:.1} MiB",
            st.flow_entries,
            st.new_flow_entries,
            st.affinity_entries,
            st.map_bytes as f64 / (1024.0 * 1024.0)
        ),
    );
}

/// `kill -9` of the daemon again and again while connections talk and new ones arrive: the
/// data path never stops, every restart adopts the pinned state, nothing fails or moves.
#[test]
fn kill_9_loop_keeps_the_data_path() {
    if !root_or_skip("kill_9_loop_keeps_the_data_path") {
        return;
    }
    const CLIENTS: usize = 200;
    let s = scale();
    let bin = sticky_bin();
    let topo = Topology::build("kill9", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &all(&topo), &[]);
    let mut daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let mut held = open_long_lived(&topo, 0..100, false);
    let before = assign(&topo, 0..CLIENTS, 1, false);
    let load = Load::start(&topo, Some(before.clone()), CLIENTS);
    let started = Instant::now();
    for cycle in 1..=s.kills {
        daemon.signal(libc::SIGKILL).expect("kill -9");
        assert!(!daemon.wait_exit().expect("exit").success());
        exchange(&mut held, &format!("daemon dead (cycle {cycle})"));
        std::thread::sleep(Duration::from_millis(200));
        daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("restart");
        assert!(
            daemon.ready_line.contains("adopted"),
            "cycle {cycle}: {}",
            daemon.ready_line
        );
        exchange(&mut held, &format!("after restart {cycle}"));
        assert!(status(&daemon).flow_entries > 0, "cycle {cycle}: no flows");
    }
    let (served, failed) = load.finish();
    let took = started.elapsed();
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed or moved: {:?}",
        failed.len(),
        served as usize + failed.len(),
        failed.iter().take(5).map(|f| &f.1).collect::<Vec<_>>()
    );
    assert!(served > CLIENTS as u64, "the load barely ran: {served}");
    assert_eq!(assign(&topo, 0..CLIENTS, 1, false), before);
    let maps = status(&daemon).map_bytes as f64 / (1024.0 * 1024.0);
    println!("chaos: map memory at the default sizes: {maps:.1} MiB");
    report(
        "kill -9 loop",
        &format!(
            "{} kills in {:.0} s, 100 held connections, {served} new connections",
            s.kills,
            took.as_secs_f64()
        ),
        "every restart adopted; 0 connections lost or moved",
    );
    assert!(daemon.stop().expect("stop").success());
}

/// Backends killed and restarted one after the other under a steady stream of new
/// connections: connections may fail only right after a kill (in flight, or refused before the
/// daemon noticed the refusals); afterwards none, and at the end every backend is back in
/// service.
#[test]
fn backend_churn_fails_only_right_after_a_kill() {
    if !root_or_skip("backend_churn_fails_only_right_after_a_kill") {
        return;
    }
    const CLIENTS: usize = 150;
    let s = scale();
    let bin = sticky_bin();
    let topo = Topology::build("churn", 3, CLIENTS).expect("topology");
    let mut servers: Vec<Option<HttpBackend>> = topo
        .start_backends()
        .expect("backends")
        .into_iter()
        .map(Some)
        .collect();
    let health = [
        "--health-check",
        "tcp",
        "--health-interval",
        "200ms",
        "--health-timeout",
        "100ms",
        "--health-fall",
        "2",
        "--health-rise",
        "2",
    ];
    let daemon = StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &all(&topo), &health))
        .expect("sticky");
    // The kernel path counts the dead backend's resets to new connections and the daemon,
    // reading them every 50 ms, takes it out at once (probes alone would need `fall` × 200 ms).
    // Bound: a few polls and the table swap, with room for a loaded machine.
    let detection = Duration::from_millis(500);
    let load = Load::start(&topo, None, CLIENTS);
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut cycle = 0;
    while started.elapsed() < s.churn {
        let k = cycle % servers.len();
        cycle += 1;
        kills.push(Instant::now());
        drop(servers[k].take());
        wait_state(&daemon, &backend(k), "down", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
        let ns = &topo.backends[k];
        let bind = SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            plan::BACKEND_PORT,
        );
        servers[k] = Some(HttpBackend::start(ns, bind, &format!("be{k}")).expect("restart"));
        wait_state(&daemon, &backend(k), "up", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
    }
    let (served, failed) = load.finish();
    // How long after the latest kill each failure came.
    let after_kill: Vec<Duration> = failed
        .iter()
        .filter_map(|(t, _)| kills.iter().rev().find(|k| *k <= t).map(|k| *t - *k))
        .collect();
    let latest = after_kill.iter().max().copied().unwrap_or_default();
    let outside: Vec<&String> = failed
        .iter()
        .filter(|(t, _)| !kills.iter().any(|k| *t >= *k && *t <= *k + detection))
        .map(|(_, why)| why)
        .collect();
    assert!(
        outside.is_empty(),
        "{} connections failed outside a detection window: {:?}",
        outside.len(),
        outside.iter().take(5).collect::<Vec<_>>()
    );
    let st = status(&daemon);
    assert!(
        st.backends
            .iter()
            .all(|b| b.state.name() == "up" && b.health.name() == "healthy"),
        "not every backend back in service: {:?}",
        st.backends
            .iter()
            .map(|b| (b.addr, &b.state, &b.health))
            .collect::<Vec<_>>()
    );
    // No stuck flow or affinity: every client is served on a fresh connection.
    let after = assign(&topo, 0..CLIENTS, 2, false);
    assert_eq!(after.len(), CLIENTS);
    assert!(served > CLIENTS as u64, "the load barely ran: {served}");
    report(
        "backend churn",
        &format!(
            "{} kill/restart cycles over {:.0} s, {} new connections",
            kills.len(),
            started.elapsed().as_secs_f64(),
            served as usize + failed.len()
        ),
        &format!(
            "{} failed (in flight or refused while the kill was being noticed), the latest {} ms \
             after its kill (bound {} ms); every backend back in service",
            failed.len(),
            latest.as_millis(),
            detection.as_millis()
        ),
    );
}

fn wait_state(daemon: &StickyProcess, addr: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let st = status(daemon);
        let state = st
            .backends
            .iter()
            .find(|b| b.addr.to_string() == addr)
            .map(|b| b.state.name());
        if state == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not {want} within {within:?}: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proxy full of idle connections: exactly `--max-connections` are held, one more gets a
/// clean 503 and is closed, the connections already in keep talking, memory stays bounded,
/// and a freed slot is usable again.
#[test]
fn proxy_connection_limit_holds_under_a_flood() {
    if !root_or_skip("proxy_connection_limit_holds_under_a_flood") {
        return;
    }
    const ACTIVE: usize = 100;
    let s = scale();
    let limit = s.connections;
    // The client ends of every connection live in this process.
    raise_fd_limit(limit as u64 + 2048);
    let bin = sticky_bin();
    let topo = Topology::build("connflood", 2, 1).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let proxy = SocketAddr::new(topo.vip(false).ip(), 8080);
    let limit_arg = limit.to_string();
    let mut extra = vec![
        "--proxy".to_string(),
        proxy.to_string(),
        "--header-timeout".into(),
        "120s".into(),
        "--max-connections".into(),
        limit_arg,
    ];
    let mut full = args_with(&topo, &all(&topo), &[]);
    full.append(&mut extra);
    let daemon = StickyProcess::start(&bin, &topo.lb, &full).expect("sticky --proxy");
    let rss_before = rss_kib(daemon.pid());
    let src = plan::client(0, false);
    let started = Instant::now();
    let (mut active, idle) = topo
        .client
        .run(|| {
            let active: Vec<HttpConn> = (0..ACTIVE)
                .map(|_| {
                    let mut c = HttpConn::open(src, proxy, Duration::from_secs(5)).expect("active");
                    c.get(false).expect("first request through the proxy");
                    c
                })
                .collect();
            let idle: Vec<TcpStream> = (0..limit - ACTIVE)
                .map(|i| {
                    TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
                })
                .collect();
            (active, idle)
        })
        .expect("client namespace");
    let opened = started.elapsed();

    // One more: answered 503 once the proxy has accepted everything before it. A connection
    // the client holds may never have reached the proxy: the last ACK of its handshake met a
    // full accept queue and its SYN-ACK retries ran out (the kernel's doing, counted as a
    // listen overflow). Its slot is then free, so a connection accepted past the flood is
    // replaced by one more idle one, at most one per hundred.
    let most_refills = limit / 100;
    let probed = topo
        .client
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut refills: Vec<TcpStream> = Vec::new();
            loop {
                let mut c = HttpConn::open(src, proxy, Duration::from_secs(5)).expect("extra");
                match c.get(true) {
                    Err(_) if c.last_status.starts_with("HTTP/1.1 503") => {
                        let mut rest = String::new();
                        let _ = c.stream().set_read_timeout(Some(Duration::from_secs(2)));
                        let closed = BufReader::new(c.stream()).read_to_string(&mut rest).is_ok();
                        return Ok((c.last_status.clone(), closed, refills));
                    }
                    Ok(_) if Instant::now() < deadline && refills.len() < most_refills => {
                        refills.push(
                            TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
                                .expect("refill connection"),
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    other => return Err(format!("{other:?} {}", c.last_status)),
                }
            }
        })
        .expect("client namespace");
    let overflows = listen_overflows(&topo.lb);
    let held = topo
        .lb
        .exec("ss", &["-Htn", "state", "established", "( sport = :8080 )"])
        .map(|o| o.lines().count());
    let (status, closed, refills) = probed.unwrap_or_else(|answer| {
        panic!(
            "connection past the limit: {answer}; the proxy's side holds {held:?} established \
             connections, the client {limit} and up to {most_refills} refills; {overflows}"
        )
    });
    let held = held.expect("ss in the balancer's namespace");
    assert!(
        held >= limit,
        "503 while the proxy's side holds only {held} of {limit} connections"
    );
    let refusal = (status, closed);
    assert!(refusal.1, "the refused connection was not closed cleanly");
    let rss_full = rss_kib(daemon.pid());
    topo.client
        .run(|| {
            for c in &mut active {
                c.get(false)
                    .expect("an active connection broke at the limit");
            }
        })
        .expect("client namespace");

    // Freeing slots lets new connections in again.
    drop(idle);
    let admitted = topo
        .client
        .run(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match get_once(src, proxy) {
                    Ok(_) => return true,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(_) => return false,
                }
            }
        })
        .expect("client namespace");
    assert!(
        admitted,
        "no connection admitted after the idle ones closed"
    );
    let per_conn = rss_full.saturating_sub(rss_before) as f64 / limit as f64;
    assert!(
        per_conn < 64.0,
        "{per_conn:.1} KiB of daemon memory per idle connection"
    );
    report(
        "proxy connection flood",
        &format!(
            "--max-connections {limit}: {ACTIVE} active + {} idle opened in {:.1} s, then one more",
            limit - ACTIVE,
            opened.as_secs_f64()
        ),
        &format!(
            "the extra one got `{}` and a clean close; 0 active connections lost; daemon RSS \
             {} → {} KiB ({per_conn:.1} KiB per connection); {} connection(s) refilled \
             ({overflows})",
            refusal.0.trim(),
            rss_before,
            rss_full,
            refills.len()
        ),
    );
}

/// The kernel's count of handshakes a full accept queue turned away in `ns`.
fn listen_overflows(ns: &Netns) -> String {
    match ns.exec("nstat", &["-asz", "TcpExtListenOverflows"]) {
        Ok(out) => out
            .lines()
            .find_map(|l| l.strip_prefix("TcpExtListenOverflows"))
            .map_or("listen overflows unknown".into(), |v| {
                let n = v.split_whitespace().next().unwrap_or("?");
                format!("{n} listen overflows")
            }),
        Err(e) => format!("listen overflows unknown: {e}"),
    }
}

fn rss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The control socket: root only, bad requests get clear errors and change nothing, and
/// concurrent writers leave a consistent state.
#[test]
fn control_plane_refuses_bad_requests_and_serialises_writers() {
    if !root_or_skip("control_plane_refuses_bad_requests_and_serialises_writers") {
        return;
    }
    const CLIENTS: usize = 100;
    let bin = sticky_bin();
    let topo = Topology::build("ctl", 2, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon =
        StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &all(&topo), &[])).expect("sticky");
    let before = assign(&topo, 0..CLIENTS, 1, false);
    let list = |d: &StickyProcess| ok(&d.ctl(&bin, &["backend", "list", "--json"]), "list");
    let initial = list(&daemon);

    // Permissions: the folder and the socket belong to root, nobody else may connect.
    let sock = control::socket_path(&daemon.instance);
    let meta = std::fs::metadata(&sock).expect("socket");
    assert_eq!(
        (meta.st_uid(), meta.st_mode() & 0o777),
        (0, 0o600),
        "socket"
    );
    let dir = std::fs::metadata(control::RUN_DIR).expect("run dir");
    assert_eq!((dir.st_uid(), dir.st_mode() & 0o777), (0, 0o700), "run dir");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["status", "--instance", &daemon.instance])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(
        !as_nobody.status.success() && stderr.contains("ermission denied"),
        "an unprivileged user reached the control socket: {stderr}"
    );

    // Bad requests: each answered with an error, the connection and the daemon stay usable.
    let bad: [&[u8]; 9] = [
        b"garbage\n",
        b"{}\n",
        b"{\"op\":\"explode\"}\n",
        b"{\"op\":\"apply\",\"change\":{\"change\":\"add\",\"addr\":\"not-an-addr\",\"weight\":1}}\n",
        b"{\"op\":\"apply\",\"change\":{\"change\":\"weight\",\"addr\":\"10.99.0.1:80\",\"weight\":0}}\n",
        b"{\"op\":\"apply\",\"change\":{\"change\":\"remove\",\"addr\":\"10.99.0.1:80\"}}\n",
        b"{\"op\":\"lookup\",\"ip\":\"not-an-ip\"}\n",
        b"\xff\xfe\xfd not UTF-8\n",
        b"[1,2,3]\n",
    ];
    let mut conn = UnixStream::connect(&sock).expect("control socket");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    for request in bad {
        conn.write_all(request).expect("send");
        let mut answer = String::new();
        reader.read_line(&mut answer).expect("an answer");
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{answer:?} for {request:?}: {e}"));
        assert_eq!(v["ok"], false, "{request:?} accepted: {answer}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error text for {request:?}: {answer}"
        );
    }
    // A request over the size limit ends that connection only.
    let mut big = UnixStream::connect(&sock).expect("control socket");
    big.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let huge = vec![b'x'; control::MAX_REQUEST + 4096];
    let _ = big.write_all(&huge);
    let _ = big.write_all(b"\n");
    let mut answer = String::new();
    let _ = BufReader::new(&big).read_line(&mut answer);
    assert!(
        answer.is_empty() || answer.contains("\"ok\":false"),
        "oversized request: {answer}"
    );
    assert_eq!(list(&daemon), initial, "bad requests changed the backends");

    // Concurrent writers, each adding, re-weighting and removing backends of its own.
    const WRITERS: usize = 8;
    const ROUNDS: usize = 5;
    let started = Instant::now();
    let results: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (bin, instance) = (&bin, &daemon.instance);
                s.spawn(move || {
                    let mut errors = Vec::new();
                    for r in 0..ROUNDS {
                        let addr = format!("10.99.{w}.{}:8080", r + 1);
                        for cmd in [
                            vec!["backend", "add", addr.as_str()],
                            vec!["backend", "weight", addr.as_str(), "3"],
                            vec!["status", "--json"],
                            vec!["backend", "remove", addr.as_str()],
                        ] {
                            let out = std::process::Command::new(bin)
                                .args(&cmd)
                                .args(["--instance", instance])
                                .output()
                                .expect("run sticky");
                            if !out.status.success() {
                                errors.push(format!(
                                    "{cmd:?}: {}",
                                    String::from_utf8_lossy(&out.stderr)
                                ));
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let errors: Vec<&String> = results.iter().flatten().collect();
    assert!(errors.is_empty(), "concurrent writers failed: {errors:?}");
    assert_eq!(list(&daemon), initial, "state after the writers");
    assert_eq!(
        assign(&topo, 0..CLIENTS, 1, false),
        before,
        "traffic after the writers"
    );
    report(
        "control plane",
        &format!(
            "{} bad requests, 1 oversized, an unprivileged user, {WRITERS} concurrent writers × \
             {} commands in {:.1} s",
            bad.len(),
            ROUNDS * 4,
            started.elapsed().as_secs_f64()
        ),
        "all refused with clear errors; final state and routing identical",
    );
}
