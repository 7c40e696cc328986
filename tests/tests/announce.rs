//! VIP announcement through a real routing daemon (`--announce-table`), on the DSR one-arm
//! topology grown to several balancer nodes: a router running BIRD 2 learns the VIP from
//! each node over eBGP (with BFD) and spreads flows over them by L4 hash (ECMP). Each node
//! runs `sticky run --forward dsr --announce-table 100` and BIRD (`deploy/bird`) or FRR
//! (`deploy/frr`) exporting that table. Judged on the router's kernel route to the VIP and
//! on what clients see:
//! - readiness: no route before sticky runs; a node's next hop appears once it is attached
//!   with a backend in service, goes when its backends fail health checks, returns when one
//!   rises;
//! - drain: 200 long-lived keep-alive connections and new ones over three nodes; `sticky node
//!   drain` on one node, then SIGTERM: not one long-lived connection reset, not one new
//!   connection failed. In DSR mode, and in NAT mode with replies through any node: the
//!   backends' replies to clients take the router's table 200, where the nodes announce the
//!   return path (`--announce-return 0.0.0.0/0`) while attached, so a stopping node leaves
//!   both directions before it detaches.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{status, sticky_bin};
use sticky_tests::{
    DsrTopology, HttpConn, Launch, Netns, StickyProcess, dsr, get_once, plan, root_or_skip,
    routing::{
        Daemon, bird, deploy, hops_in, next_hops, node_bird, node_bird_conf, remove_scratch,
        router_bird, scratch, wait_for, wait_for_hops,
    },
    unique_name,
};

const TABLE: &str = "100";
const NODES: usize = 3;
const BACKENDS: usize = 3;
const CLIENTS: usize = 200;
/// How the nodes forward.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dsr,
    /// NAT, `--replies-any-node --announce-return 0.0.0.0/0`.
    NatAnyNode,
}

/// `sticky run --forward dsr --announce-table 100` on node `k`.
fn sticky_node(topo: &DsrTopology, k: usize, extra: &[&str]) -> StickyProcess {
    sticky_node_in(topo, k, Mode::Dsr, extra)
}

fn sticky_node_in(topo: &DsrTopology, k: usize, mode: Mode, extra: &[&str]) -> StickyProcess {
    let mut args = topo.sticky_args(false, dsr::VIP_PORT);
    let forward: &[&str] = match mode {
        Mode::Dsr => &["--forward", "dsr", "--xdp", "off"],
        Mode::NatAnyNode => &["--replies-any-node", "--announce-return", "0.0.0.0/0"],
    };
    args.extend(forward.iter().map(|s| s.to_string()));
    args.extend(
        [
            "--announce-table",
            TABLE,
            "--withdraw-grace",
            "2s",
            "--health-interval",
            "500ms",
            "--health-timeout",
            "300ms",
            "--health-fall",
            "2",
            "--health-rise",
            "1",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    // Node 1 runs as many operators start a daemon in a namespace, under `ip netns exec` (a
    // mount namespace of its own); the others under `nsenter`.
    let launch = if k == 1 {
        Launch::IpNetnsExec
    } else {
        Launch::Nsenter
    };
    args.insert(0, "run".into());
    StickyProcess::launch(launch, &sticky_bin(), topo.node(k), &args, "sticky ready")
        .unwrap_or_else(|e| panic!("sticky on node {k}: {e:#}"))
}

/// `sticky status` of a node's announcement.
fn announce(p: &StickyProcess) -> sticky::status::AnnounceStatus {
    status(p).announce.expect("an announcement in status")
}

/// Readiness and drain with BIRD on every node, DSR.
#[test]
fn bird_readiness_and_drain() {
    if root_or_skip("bird_readiness_and_drain") {
        drain(Mode::Dsr);
    }
}

/// Drain with NAT nodes whose replies come back through any node.
#[test]
fn bird_drain_nat_replies_through_any_node() {
    if root_or_skip("bird_drain_nat_replies_through_any_node") {
        drain(Mode::NatAnyNode);
    }
}

fn drain(mode: Mode) {
    let tag = match mode {
        Mode::Dsr => "annb",
        Mode::NatAnyNode => "annn",
    };
    let topo =
        DsrTopology::build_nodes(tag, NODES, BACKENDS, CLIENTS, &sticky_bin()).expect("topology");
    let servers = topo.start_servers().expect("backend servers");
    let _router = router_bird(&topo, NODES);
    if mode == Mode::NatAnyNode {
        // What the backends send to the clients takes the nodes' return path (table 200);
        // the rest (health-check answers to a node's own address) the main table.
        let clients = format!("{}/16", plan::lb_client_side(false));
        for k in 0..BACKENDS {
            topo.router
                .ip(&[
                    "rule",
                    "add",
                    "iif",
                    &format!("be{k}"),
                    "to",
                    &clients,
                    "lookup",
                    "200",
                ])
                .expect("rule for the backends' replies");
        }
    }
    let mut birds: Vec<Daemon> = (0..NODES).map(|k| node_bird(&topo, k)).collect();
    // BIRD runs, sticky does not: nothing is announced.
    std::thread::sleep(Duration::from_secs(3));
    assert!(birds.iter_mut().all(Daemon::alive), "a BIRD exited");
    assert!(
        next_hops(&topo).is_empty(),
        "a route before any sticky runs"
    );
    let mut nodes = vec![sticky_node_in(&topo, 0, mode, &[])];
    let t0 = wait_for_hops(&topo, &[0], "node 0 attached with backends in service");
    nodes.extend((1..NODES).map(|k| sticky_node_in(&topo, k, mode, &[])));
    let all: Vec<usize> = (0..NODES).collect();
    wait_for_hops(&topo, &all, "every node ready");
    let a = announce(&nodes[0]);
    assert!(a.announced, "status: {a:?}");
    eprintln!("node 0's route reached the router {t0:?} after its ready line");
    if mode == Mode::NatAnyNode {
        assert!(a.return_announced, "status: {a:?}");
        wait_for_return_hops(&topo, &all, "every node carries replies");
    }

    // 200 long-lived keep-alive connections, spread over the nodes by the router's L4 hash.
    let vip = topo.vip(false, dsr::VIP_PORT);
    let mut conns: Vec<(IpAddr, HttpConn, String)> = topo
        .client
        .run(move || {
            (0..CLIENTS)
                .map(|i| {
                    let src = plan::client(i, false);
                    let mut c = HttpConn::open(src, vip, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("open {src}: {e:#}"));
                    let a = c
                        .get(false)
                        .unwrap_or_else(|e| panic!("first get {src}: {e:#}"));
                    assert_eq!(a.seen_client, src);
                    (src, c, a.backend)
                })
                .collect()
        })
        .expect("client namespace");
    let counter = match mode {
        Mode::Dsr => "dsr",
        Mode::NatAnyNode => "nat",
    };
    let carried: Vec<u64> = nodes
        .iter()
        .map(|p| status(p).counters.get(counter).copied().unwrap_or(0))
        .collect();
    assert!(
        carried.iter().all(|&n| n > 0),
        "ECMP left a node without flows: {counter} packets {carried:?}"
    );
    let probe_all = |conns: &mut Vec<(IpAddr, HttpConn, String)>, when: &str| {
        let taken = std::mem::take(conns);
        let (kept, failures) = topo
            .client
            .run(move || {
                let mut kept = Vec::new();
                let mut failures = Vec::new();
                for (src, mut c, backend) in taken {
                    match c.get(false) {
                        Ok(a) if a.backend == backend => kept.push((src, c, backend)),
                        Ok(a) => failures.push(format!("{src}: moved {backend} -> {}", a.backend)),
                        Err(e) => failures.push(format!("{src}: {e:#}")),
                    }
                }
                (kept, failures)
            })
            .expect("client namespace");
        *conns = kept;
        assert!(
            failures.is_empty(),
            "{when}: {} long-lived connections broke: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    };
    let new_ones = |from: usize, when: &str| {
        let failures: Vec<String> = topo
            .client
            .run(move || {
                (from..from + 50)
                    .filter_map(|i| {
                        let src = plan::client(i % CLIENTS, false);
                        get_once(src, vip).err().map(|e| format!("{src}: {e:#}"))
                    })
                    .collect()
            })
            .expect("client namespace");
        assert!(
            failures.is_empty(),
            "{when}: new connections failed: {failures:?}"
        );
    };

    // A stream of new connections (one every 20 ms, each a request) from before the drain
    // until node 0 has stopped.
    let streaming = std::sync::atomic::AtomicBool::new(true);
    let (stream, conns_left) = std::thread::scope(|s| {
        // Ends the stream however this scope ends (a failed assertion too), so the scope's
        // join never waits on it.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = Stop(&streaming);
        let stream = s.spawn(|| {
            topo.client
                .run(|| {
                    let (mut made, mut failed) = (0usize, Vec::new());
                    let start = Instant::now();
                    while streaming.load(std::sync::atomic::Ordering::Relaxed)
                        && start.elapsed() < Duration::from_secs(120)
                    {
                        let src = plan::client(made % CLIENTS, false);
                        if let Err(e) = get_once(src, vip) {
                            failed.push(format!("{src}: {e:#}"));
                        }
                        made += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (made, failed)
                })
                .expect("client namespace")
        });
        // Drain node 0: its next hop goes; its flows move to the others, which pick the same
        // backends.
        let n0 = nodes.remove(0);
        let out = n0.ctl(&sticky_bin(), &["node", "drain"]);
        assert!(out.status.success(), "node drain: {out:?}");
        let moved = wait_for_hops(&topo, &all[1..], "node 0 drained");
        eprintln!("node 0's withdrawal reached the router in {moved:?}");
        let a = announce(&n0);
        assert_eq!(a.withdrawn_because.as_deref(), Some("node drained"));
        if mode == Mode::NatAnyNode {
            // Drained, still attached: it still carries replies.
            assert!(a.return_announced, "status: {a:?}");
            assert_eq!(
                return_hops(&topo).len(),
                NODES,
                "the return path lost node 0"
            );
        }
        new_ones(0, "after the drain");
        probe_all(&mut conns, "after the drain");
        // Then stopped: withdrawn already. NAT: the return path leaves the router while the
        // programs still rewrite, a grace period before they detach.
        if mode == Mode::NatAnyNode {
            n0.signal(libc::SIGTERM).expect("SIGTERM");
            wait_for_return_hops(&topo, &all[1..], "node 0 stopping");
            assert!(
                still_running(&n0),
                "node 0 detached before its return path left the router"
            );
        }
        let code = n0.stop().expect("stop node 0");
        assert!(code.success(), "node 0 exit status {code}");
        new_ones(50, "after node 0 stopped");
        probe_all(&mut conns, "after node 0 stopped");
        drop(stop);
        (stream.join().expect("stream thread"), conns)
    });
    let conns = conns_left;
    let (made, failed) = stream;
    eprintln!(
        "{made} new connections while node 0 drained and stopped, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "new connections failed while node 0 drained and stopped: {failed:?}"
    );
    assert_eq!(conns.len(), CLIENTS);
    if mode == Mode::NatAnyNode {
        drop(conns);
        drop(nodes);
        drop(birds);
        remove_scratch();
        return;
    }

    // Readiness follows health: every backend fails, the routes go; one rises, back.
    let (http, echo) = servers;
    drop(http);
    let gone = wait_for_hops(&topo, &[], "every backend failed its health checks");
    eprintln!("withdrawn {gone:?} after the backends stopped");
    assert_eq!(
        announce(&nodes[0]).withdrawn_because.as_deref(),
        Some("no backend in service")
    );
    let _http = sticky_tests::servers::HttpBackend::start(
        &topo.backends[0],
        SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), dsr::VIP_PORT),
        "be0",
    )
    .expect("backend 0 again");
    wait_for_hops(&topo, &all[1..], "backend 0 rose again");
    drop(echo);
    drop(nodes);
    remove_scratch();
}

/// Whether `p` runs still (not exited, not a zombie waiting to be reaped).
fn still_running(p: &StickyProcess) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
    state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// The router's next hops in table 200 (the nodes' return path).
fn return_hops(topo: &DsrTopology) -> Vec<IpAddr> {
    hops_in(topo, "default", "200")
}

fn wait_for_return_hops(topo: &DsrTopology, nodes: &[usize], why: &str) {
    wait_for(topo, return_hops, nodes, why);
}

/// FRR (zebra, bgpd, bfdd) on node `k` with `deploy/frr/frr.conf`, its addresses filled in;
/// every path (config, sockets, pid files) in the scratch directory.
fn node_frr(topo: &DsrTopology, k: usize) -> Vec<Daemon> {
    let (node, gw) = dsr::node_addr(k, false);
    let conf = deploy("frr/frr.conf")
        .replace("192.0.2.2", &node.to_string())
        .replace("192.0.2.1", &gw.to_string());
    let file = scratch(&format!("frr{k}.conf"));
    std::fs::write(&file, conf).expect("frr config");
    let file = file.display().to_string();
    // FRR drops to its own user (as packaged): its sockets, pid files and logs go in a
    // directory that user owns.
    let run = scratch(&format!("frr{k}"));
    std::fs::create_dir_all(&run).expect("FRR directory");
    let chown = Command::new("chown")
        .args(["frr:frr"])
        .arg(&run)
        .status()
        .expect("chown");
    assert!(chown.success(), "chown frr:frr {}", run.display());
    let in_run = |name: &str| run.join(name).display().to_string();
    let zserv = in_run("zserv.api");
    let vty = run.display().to_string();
    let ns = topo.node(k);
    let mut daemons = Vec::new();
    for (name, extra) in [
        ("zebra", vec![]),
        ("bfdd", vec!["--bfdctl".to_string(), in_run("bfdd.sock")]),
        ("bgpd", vec![]),
    ] {
        let pid = in_run(&format!("{name}.pid"));
        let log = format!("file:{}", in_run(&format!("{name}.log")));
        let mut args: Vec<&str> = vec![
            "-f",
            &file,
            "-i",
            &pid,
            "-z",
            &zserv,
            "--vty_socket",
            &vty,
            "-A",
            "127.0.0.1",
            "--log",
            &log,
        ];
        args.extend(extra.iter().map(String::as_str));
        daemons.push(Daemon::start(
            ns,
            &format!("/usr/lib/frr/{name}"),
            &args,
            &format!("frr{k}-{name}"),
        ));
        if name == "zebra" {
            // bfdd and bgpd connect to zebra's socket: let it appear.
            let start = Instant::now();
            while !Path::new(&zserv).exists() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(Path::new(&zserv).exists(), "zebra did not open {zserv}");
        }
    }
    daemons
}

/// The same readiness with FRR on the node: announced once ready, withdrawn on `node drain`,
/// back on `node undrain`, withdrawn before a SIGTERM detaches.
#[test]
fn frr_readiness_drain_and_stop() {
    if !root_or_skip("frr_readiness_drain_and_stop") {
        return;
    }
    let topo = DsrTopology::build_nodes("annf", 1, BACKENDS, 4, &sticky_bin()).expect("topology");
    let _servers = topo.start_servers().expect("backend servers");
    let _router = router_bird(&topo, 1);
    let mut frr = node_frr(&topo, 0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(frr.iter_mut().all(Daemon::alive), "an FRR daemon exited");
    assert!(next_hops(&topo).is_empty(), "a route before sticky runs");
    let n0 = sticky_node(&topo, 0, &[]);
    wait_for_hops(&topo, &[0], "node 0 ready, announced through FRR");
    let vip = topo.vip(false, dsr::VIP_PORT);
    let src = plan::client(0, false);
    let ok = |when: &str| {
        let a = topo
            .client
            .run(move || get_once(src, vip))
            .expect("client namespace")
            .unwrap_or_else(|e| panic!("{when}: {e:#}"));
        assert_eq!(a.seen_client, src);
    };
    ok("announced");
    let out = n0.ctl(&sticky_bin(), &["node", "drain"]);
    assert!(out.status.success(), "node drain: {out:?}");
    wait_for_hops(&topo, &[], "node 0 drained");
    let out = n0.ctl(&sticky_bin(), &["node", "undrain"]);
    assert!(out.status.success(), "node undrain: {out:?}");
    wait_for_hops(&topo, &[0], "node 0 undrained");
    ok("announced again");
    // SIGTERM: the route goes first; the programs stay the grace period (2 s) after it.
    n0.signal(libc::SIGTERM).expect("SIGTERM");
    let gone = wait_for_hops(&topo, &[], "node 0 stopping");
    assert!(
        gone < Duration::from_secs(2),
        "withdrawn only {gone:?} after SIGTERM, after the grace period"
    );
    assert!(
        still_running(&n0),
        "sticky had exited before its route was withdrawn"
    );
    let code = n0.stop().expect("node 0 exits");
    assert!(code.success(), "exit status {code}");
    drop(frr);
    remove_scratch();
}

/// A node dies (nothing it sends reaches the router any more, then its daemons are killed
/// with SIGKILL, so nothing says goodbye): new connections fail only until the router notices, by BFD (a
/// few hundred ms) or, without it, by the BGP hold timer (9 s here). Prints the window.
fn crash(bfd: bool) {
    let tag = if bfd { "anxb" } else { "anxh" };
    let topo =
        DsrTopology::build_nodes(tag, NODES, BACKENDS, CLIENTS, &sticky_bin()).expect("topology");
    let _servers = topo.start_servers().expect("backend servers");
    let _router = router_bird(&topo, NODES);
    // The nodes' BIRD with or without BFD (the router's asks for it; a peer without answers
    // nothing and BIRD then keeps the session on the hold timer alone).
    let mut birds: Vec<Daemon> = (0..NODES)
        .map(|k| {
            let conf = node_bird_conf(k, bfd);
            bird(topo.node(k), &conf, &format!("{tag}-node{k}"))
        })
        .collect();
    let nodes: Vec<StickyProcess> = (0..NODES).map(|k| sticky_node(&topo, k, &[])).collect();
    let all: Vec<usize> = (0..NODES).collect();
    wait_for_hops(&topo, &all, "every node ready");
    let vip = topo.vip(false, dsr::VIP_PORT);
    // Attempts every 20 ms for 16 s: a connection and one request within 500 ms, or failed.
    let crash_at = Duration::from_secs(3);
    let attempts = std::thread::scope(|s| {
        let load = s.spawn(|| {
            topo.client
                .run(move || {
                    let start = Instant::now();
                    let mut out = Vec::new();
                    let mut i = 0;
                    while start.elapsed() < Duration::from_secs(16) {
                        let src = plan::client(i % CLIENTS, false);
                        i += 1;
                        let at = start.elapsed();
                        let ok = HttpConn::open(src, vip, Duration::from_millis(500))
                            .and_then(|mut c| c.get(true))
                            .is_ok();
                        out.push((at, ok));
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    out
                })
                .expect("client namespace")
        });
        std::thread::sleep(crash_at);
        // Node 1 goes silent (nothing it sends reaches the router any more), then its
        // daemons die without a word.
        topo.router
            .exec(
                "nft",
                &[
                    "add table netdev crash; add chain netdev crash in { type filter hook \
                     ingress device lb1 priority 0; policy drop; }",
                ],
            )
            .expect("silence node 1");
        // SAFETY: our own children's PIDs.
        unsafe {
            libc::kill(nodes[1].pid(), libc::SIGKILL);
            libc::kill(birds[1].pid(), libc::SIGKILL);
        }
        load.join().expect("load thread")
    });
    let failed: Vec<Duration> = attempts
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(at, _)| *at)
        .collect();
    let before = failed.iter().filter(|at| **at < crash_at).count();
    assert_eq!(before, 0, "connections failed before the crash: {failed:?}");
    let window = failed
        .last()
        .map_or(Duration::ZERO, |last| *last - crash_at);
    eprintln!(
        "crash of 1 of {NODES} nodes, {}: {} of {} new connections failed, the last {window:.1?} \
         after the crash",
        if bfd {
            "BFD 100 ms x 3"
        } else {
            "no BFD, hold time 9 s"
        },
        failed.len(),
        attempts.len()
    );
    let bound = if bfd {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(9 + 3)
    };
    assert!(
        window <= bound,
        "failures went on {window:?} after the crash (detection bound {bound:?}): {failed:?}"
    );
    assert!(
        attempts
            .iter()
            .any(|(at, ok)| *at > crash_at + bound && *ok),
        "nothing succeeded after the detection window"
    );
    drop(nodes);
    birds.clear();
}

#[test]
fn crash_with_bfd_fails_only_until_detection() {
    if root_or_skip("crash_with_bfd_fails_only_until_detection") {
        crash(true);
    }
}

#[test]
fn crash_without_bfd_fails_until_the_hold_timer() {
    if root_or_skip("crash_without_bfd_fails_until_the_hold_timer") {
        crash(false);
    }
}

/// Which of 3 next hops each of 3000 flows (5-tuples from 200 clients) takes, before and after
/// one next hop leaves, with the kernel's L4 multipath hash: a plain multipath route (what
/// BIRD and FRR install) against a resilient nexthop group (`ip nexthop … type resilient`).
/// Flows of the leaving node must move; the others move only with the plain route. Prints
/// the shares.
#[test]
fn flows_that_move_when_one_of_three_nodes_leaves() {
    if !root_or_skip("flows_that_move_when_one_of_three_nodes_leaves") {
        return;
    }
    let ns = Netns::create(&unique_name("annm")).expect("namespace");
    for (key, value) in [
        ("net.ipv4.fib_multipath_hash_policy", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns.sysctl(key, value).expect("sysctl");
    }
    ns.ip_batch(
        "link add nh0 type veth peer name nh1\nlink set nh0 up\nlink set nh1 up\naddr add 10.84.0.1/24 dev nh0\n\
         neigh add 10.84.0.2 lladdr 02:00:00:00:00:02 dev nh0 nud permanent\n\
         neigh add 10.84.0.3 lladdr 02:00:00:00:00:03 dev nh0 nud permanent\n\
         neigh add 10.84.0.4 lladdr 02:00:00:00:00:04 dev nh0 nud permanent\n\
         nexthop add id 2 via 10.84.0.2 dev nh0\n\
         nexthop add id 3 via 10.84.0.3 dev nh0\n\
         nexthop add id 4 via 10.84.0.4 dev nh0\n",
    )
    .expect("next hops");
    let flows: Vec<(String, u16)> = (0..3000)
        .map(|i| {
            let c = plan::client(i % CLIENTS, false).to_string();
            (c, 20_000 + (i / CLIENTS) as u16 * 7 + 1)
        })
        .collect();
    // Each flow's next hop for VIP 198.19.255.100:80.
    let hops = |ns: &Netns| -> Vec<String> {
        let batch: String = flows
            .iter()
            .map(|(c, sport)| {
                format!(
                    "route get 198.19.255.100 from {c} iif nh0 ipproto tcp sport {sport} dport \
                     80\n"
                )
            })
            .collect();
        // From a file: 3000 answers fill a pipe long before 3000 questions are written.
        let file = scratch("route-get.batch");
        std::fs::write(&file, batch).expect("batch file");
        let out = Command::new("ip")
            .args(["-n", &ns.name, "-batch"])
            .arg(&file)
            .output()
            .expect("ip -batch");
        assert!(
            out.status.success(),
            "route get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|l| l.contains(" via "))
            .map(|l| {
                l.split(" via ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    let moved = |before: &[String], after: &[String]| -> (f64, f64) {
        assert_eq!(before.len(), flows.len(), "one answer per flow");
        assert_eq!(after.len(), flows.len(), "one answer per flow");
        let (mut left, mut others, mut others_moved) = (0, 0, 0);
        for (b, a) in before.iter().zip(after) {
            if b == "10.84.0.4" {
                left += 1;
                assert_ne!(a, b, "a flow still uses the next hop that left");
            } else {
                others += 1;
                others_moved += usize::from(a != b);
            }
        }
        let total = flows.len() as f64;
        (
            (left + others_moved) as f64 / total,
            others_moved as f64 / others as f64,
        )
    };
    // Plain multipath: three next hops, then two.
    ns.ip_batch("route replace 198.19.255.100/32 nexthop via 10.84.0.2 dev nh0 nexthop via 10.84.0.3 dev nh0 nexthop via 10.84.0.4 dev nh0\n")
        .expect("plain multipath");
    let before = hops(&ns);
    ns.ip_batch("route replace 198.19.255.100/32 nexthop via 10.84.0.2 dev nh0 nexthop via 10.84.0.3 dev nh0\n")
        .expect("plain multipath, one gone");
    let (plain_all, plain_others) = moved(&before, &hops(&ns));
    // Resilient group: the leaving member's buckets go to the others, nothing else moves.
    ns.ip_batch(
        "nexthop add id 10 group 2/3/4 type resilient buckets 512 idle_timer 0\n\
         route replace 198.19.255.100/32 nhid 10\n",
    )
    .expect("resilient group");
    let before = hops(&ns);
    ns.ip_batch("nexthop replace id 10 group 2/3 type resilient buckets 512 idle_timer 0\n")
        .expect("resilient group, one gone");
    let (res_all, res_others) = moved(&before, &hops(&ns));
    eprintln!(
        "one of 3 next hops leaves, 3000 flows: plain multipath moves {:.1}% of all flows \
         ({:.1}% of those on the staying nodes); resilient group {:.1}% ({:.1}%)",
        plain_all * 100.0,
        plain_others * 100.0,
        res_all * 100.0,
        res_others * 100.0
    );
    assert_eq!(
        res_others, 0.0,
        "a resilient group moved flows of staying nodes"
    );
    assert!(
        plain_others > 0.0,
        "plain multipath moved no flow of the staying nodes: the measurement sees nothing"
    );
    remove_scratch();
}
