//! Scale-out behind ECMP with real socket.io: three sticky nodes (DSR, each announcing the VIP
//! through its own BIRD) behind a router running BIRD 2 with multipath and L4 hashing, so
//! every long-polling request (a new TCP connection) of one client may land on any node.
//! Four backends run the socket.io example on the VIP, each on its own: a session lives in
//! the one backend that made it, any other answers `Session ID unknown`. The nodes start with
//! three backends; 200 polling clients connect; the fourth backend is added on every node;
//! the clients keep polling for a minute (35 rounds 2 s apart). With the affinity exchange (`--peers`) every node
//! knows every client's backend: not one `Session ID unknown`. Without it a node that had not
//! seen a client sends it where the new table says, and sessions break (the check that the
//! test can fail).

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{run_load, socketio_example, status, sticky_bin};
use serde_json::Value;
use sticky_tests::{
    DsrTopology, StickyProcess, dsr, plan, root_or_skip,
    routing::{Daemon, node_bird, remove_scratch, router_bird, scratch, wait_for_hops},
};

const NODES: usize = 3;
/// Backends 0..ADDED serve from the start; backend ADDED is added while clients poll.
const BACKENDS: usize = 4;
const ADDED: usize = 3;
const CLIENTS: usize = 200;
/// Fresh clients after the add (addresses after the first 200), to see the new backend used.
const LATE: usize = 40;
const PEER_PORT: u16 = 7946;
/// Rounds of `whoami` + `echo` per client, a pause between them: about a minute of polling.
const ROUNDS: &str = "35";
const PAUSE_MS: &str = "2000";

fn backend_addr(k: usize) -> SocketAddr {
    SocketAddr::new(plan::backend(k, false).0, dsr::VIP_PORT)
}

fn peer_addr(k: usize) -> SocketAddr {
    SocketAddr::new(dsr::node_addr(k, false).0, PEER_PORT)
}

/// The socket.io example on the VIP's port in backend `k` (worker index `k`), once it listens.
fn socketio_backend(topo: &DsrTopology, k: usize) -> Daemon {
    let app = socketio_example().join("app.js").display().to_string();
    let index = k.to_string();
    let d = Daemon::start_env(
        &topo.backends[k],
        "node",
        &[&app],
        &[
            ("PORT", "80"),
            ("HOST", "::"),
            ("STICKY_WORKER_INDEX", &index),
        ],
        &format!("socketio{k}"),
    );
    let up = topo.backends[k]
        .run(|| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if TcpStream::connect(("127.0.0.1", dsr::VIP_PORT)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
        .expect("backend namespace");
    assert!(up, "socket.io backend {k} did not listen on port 80");
    d
}

/// The exchange's key, readable by its owner only.
fn key_file() -> PathBuf {
    let path = scratch("peer.key");
    std::fs::write(&path, b"scale-out test key: 32 bytes or more, not a secret").expect("key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// `sticky run --forward dsr --announce-table 100` on node `k` with backends 0..ADDED, and the
/// exchange with the other nodes if `exchange`.
fn node(topo: &DsrTopology, k: usize, exchange: bool) -> StickyProcess {
    let mut args: Vec<String> = [
        "--iface",
        dsr::BALANCER_IF,
        "--vip",
        &topo.vip(false, dsr::VIP_PORT).to_string(),
        "--seed",
        "7",
        "--forward",
        "dsr",
        "--xdp",
        "off",
        "--announce-table",
        "100",
        "--withdraw-grace",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    for b in 0..ADDED {
        args.extend(["--backend".into(), backend_addr(b).to_string()]);
    }
    if exchange {
        let peers: Vec<String> = (0..NODES)
            .filter(|&j| j != k)
            .map(|j| peer_addr(j).to_string())
            .collect();
        args.extend([
            "--peers".into(),
            peers.join(","),
            "--peer-listen".into(),
            peer_addr(k).to_string(),
            "--peer-key-file".into(),
            key_file().display().to_string(),
        ]);
    }
    StickyProcess::start(&sticky_bin(), topo.node(k), &args)
        .unwrap_or_else(|e| panic!("sticky on node {k}: {e:#}"))
}

/// A number in a JSON report; a missing one fails the test (not a silent pass or fail).
fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

/// What the clients saw: the report of the 200 that polled across the add, and of the late
/// ones that connected after it.
struct Outcome {
    polling: Value,
    late: Value,
    /// From the add on every node to the last polling client's end.
    polled_after_add: Duration,
}

fn scenario(tag: &str, exchange: bool) -> Outcome {
    let topo = DsrTopology::build_nodes(tag, NODES, BACKENDS, CLIENTS + LATE, &sticky_bin())
        .expect("topology");
    let _backends: Vec<Daemon> = (0..BACKENDS).map(|k| socketio_backend(&topo, k)).collect();
    let _router = router_bird(&topo, NODES);
    let _birds: Vec<Daemon> = (0..NODES).map(|k| node_bird(&topo, k)).collect();
    let nodes: Vec<StickyProcess> = (0..NODES).map(|k| node(&topo, k, exchange)).collect();
    wait_for_hops(&topo, &[0, 1, 2], "three nodes ready");

    let url = format!("http://{}", topo.vip(false, dsr::VIP_PORT));
    let ready = scratch(&format!("{tag}-ready"));
    let _ = std::fs::remove_file(&ready);
    let client = topo.client.path();
    let args: Vec<String> = [
        "--url",
        &url,
        "--clients",
        &CLIENTS.to_string(),
        "--parallel",
        &CLIENTS.to_string(),
        "--transport",
        "polling",
        "--local-address-base",
        &plan::client(0, false).to_string(),
        "--rounds",
        ROUNDS,
        "--pause-ms",
        PAUSE_MS,
        "--ready-file",
        &ready.display().to_string(),
        "--timeout-ms",
        "150000",
    ]
    .map(String::from)
    .to_vec();
    let (polling, late, polled_after_add) = std::thread::scope(|s| {
        let load = s.spawn(|| run_load(&client, &args));
        // Every client connected (all sessions open): add the backend on every node.
        let start = Instant::now();
        while !ready.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(90) && !load.is_finished(),
                "the clients did not all connect"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if exchange {
            // Each node holds every client's affinity: its own or a peer's record.
            for (k, n) in nodes.iter().enumerate() {
                let start = Instant::now();
                loop {
                    let held = status(n).affinity_entries;
                    if held >= CLIENTS as u64 {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "node {k} holds {held} affinities of {CLIENTS} clients"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let added = backend_addr(ADDED).to_string();
        for (k, n) in nodes.iter().enumerate() {
            let out = n.ctl(&sticky_bin(), &["backend", "add", &added]);
            assert!(out.status.success(), "backend add on node {k}: {out:?}");
        }
        let added_at = Instant::now();
        // Clients that are new after the add: the new table, on every node alike.
        let late_args: Vec<String> = [
            "--url",
            &url,
            "--clients",
            &LATE.to_string(),
            "--transport",
            "polling",
            "--local-address-base",
            &plan::client(CLIENTS, false).to_string(),
            "--rounds",
            "3",
        ]
        .map(String::from)
        .to_vec();
        let late = run_load(&client, &late_args);
        let polling = load.join().expect("load thread");
        (polling, late, added_at.elapsed())
    });
    for (k, n) in nodes.iter().enumerate() {
        let dsr = status(n).counters.get("dsr").copied().unwrap_or(0);
        assert!(dsr > 0, "node {k} carried no traffic: ECMP did not spread");
    }
    eprintln!("exchange {exchange}: polling {polling}\nlate {late}");
    // Fails the scenario on what the late clients saw either way: that part does not depend
    // on the exchange.
    assert_eq!(
        count(&late, "connected"),
        LATE as u64,
        "late clients: {late}"
    );
    for key in ["session_id_unknown", "failed_handshakes", "ack_timeouts"] {
        assert_eq!(count(&late, key), 0, "late clients, {key}: {late}");
    }
    assert!(
        late["workers"].get(ADDED.to_string()).is_some(),
        "no late client reached the added backend: {late}"
    );
    drop(nodes);
    Outcome {
        polling,
        late,
        polled_after_add,
    }
}

#[test]
fn socketio_sessions_survive_a_backend_added_behind_three_nodes() {
    if !root_or_skip("socketio_sessions_survive_a_backend_added_behind_three_nodes") {
        return;
    }
    let out = scenario("scx", true);
    let r = &out.polling;
    assert_eq!(count(r, "connected"), CLIENTS as u64, "{r}");
    for key in [
        "session_id_unknown",
        "failed_handshakes",
        "ack_timeouts",
        "split_clients",
        "unexpected_disconnects",
        "echo_mismatches",
    ] {
        assert_eq!(count(r, key), 0, "{key}: {r}");
    }
    assert_eq!(r["timed_out"], false, "{r}");
    assert_eq!(r["client_addresses_seen_ok"], true, "{r}");
    assert!(
        out.polled_after_add >= Duration::from_secs(60),
        "the clients polled {:?} after the add, not a minute",
        out.polled_after_add
    );
    let workers = r["workers"].as_object().expect("workers");
    assert_eq!(
        workers.len(),
        ADDED,
        "the 200 clients were not spread over the first three backends, or moved: {r}"
    );
    eprintln!("late clients: {}", out.late["workers"]);
    remove_scratch();
}

/// The same without the exchange: sessions break (the first test can fail).
#[test]
fn without_the_exchange_socketio_sessions_break() {
    if !root_or_skip("without_the_exchange_socketio_sessions_break") {
        return;
    }
    let out = scenario("scn", false);
    let unknown = count(&out.polling, "session_id_unknown");
    eprintln!("without the exchange: {unknown} `Session ID unknown`");
    assert!(
        unknown > 0,
        "no session broke without the exchange: {}",
        out.polling
    );
    remove_scratch();
}
