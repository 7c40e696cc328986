//! Affinity shared between nodes (`--peers`): two sticky nodes with one configuration, each
//! with its own link from the clients (as behind ECMP) and a direct link between them for the
//! exchange. 100 clients become affine through node 1; a backend is added on both nodes; every
//! client's next connection goes through node 2 and must reach the backend node 1 gave it.
//! Without the exchange some clients move (the check that the test can fail). Then the
//! exchange's socket is attacked from a peer's address: wrong key, replay, truncated,
//! oversized, bit-flipped and flooded datagrams are refused and counted, and change nothing.
//!
//! ```text
//! client:eth0 ── n1:cli0   n1:be0 ── backend:eth0   (backend default route: node 1)
//! client:eth1 ── n2:cli0   n2:be0 ── backend:eth1
//!                n1:peer0 ── n2:peer0                (the exchange)
//! ```
//!
//! Backend replies always leave through node 1 (`--replies-any-node` on both nodes rewrites
//! those of flows node 2 balanced).

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{ok, status, sticky_bin};
use sticky::peers::{
    sync::RESYNC_PERIOD,
    wire::{self, Header, Key, Record},
};
use sticky_tests::{
    Netns, StickyProcess, clients::get_once, root_or_skip, servers::HttpBackend, unique_name, veth,
};

const VIP: &str = "10.82.100.1:80";
const CLIENTS: u8 = 100;
const BACKENDS: [&str; 4] = [
    "10.82.10.2:8080",
    "10.82.10.3:8080",
    "10.82.10.4:8080",
    "10.82.10.5:8080",
];
/// Backends 0-2 are configured at start; this one is added once clients are affine.
const ADDED: usize = 3;
const N1_PEER: &str = "10.82.50.1:7946";
const N2_PEER: &str = "10.82.50.2:7946";
/// The same link over IPv6 (the late-node test exchanges over it).
const N1_PEER_V6: &str = "[fd00:82:50::1]:7946";
const N2_PEER_V6: &str = "[fd00:82:50::2]:7946";

struct Rig {
    // Dropped last: processes first.
    client: Netns,
    n1: Netns,
    n2: Netns,
    backend: Netns,
    key: KeyFile,
}

/// A key file in a directory of its own, removed on drop.
struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl KeyFile {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).expect("key dir");
        let path = dir.join("peer.key");
        let bytes = b"0123456789abcdef0123456789abcdef-test-key".to_vec();
        std::fs::write(&path, &bytes).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Self { dir, path, bytes }
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_ip(i: u8) -> IpAddr {
    IpAddr::from([10, 82, 200, i + 1])
}

fn rig() -> Rig {
    let ns = |tag: &str| Netns::create(&unique_name(tag)).expect("namespace");
    let r = Rig {
        client: ns("pc"),
        n1: ns("p1"),
        n2: ns("p2"),
        backend: ns("pb"),
        key: KeyFile::new("pkey"),
    };
    veth(&r.client, "eth0", &r.n1, "cli0").expect("veth");
    veth(&r.client, "eth1", &r.n2, "cli0").expect("veth");
    veth(&r.n1, "be0", &r.backend, "eth0").expect("veth");
    veth(&r.n2, "be0", &r.backend, "eth1").expect("veth");
    veth(&r.n1, "peer0", &r.n2, "peer0").expect("veth");
    // Replies arrive on another interface than their route's: no reverse-path filter.
    let no_rp = |n: &Netns, devs: &[&str]| {
        for dev in ["all", "default"].iter().chain(devs) {
            n.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")
                .expect("rp_filter");
        }
    };
    let mut batch = String::from(
        "addr add 10.82.1.2/24 dev eth0\n\
         addr add 10.82.2.2/24 dev eth1\n\
         route add 10.82.100.0/24 via 10.82.1.1 dev eth0\n",
    );
    for i in 0..CLIENTS {
        batch.push_str(&format!("addr add {}/32 dev lo\n", client_ip(i)));
    }
    r.client.ip_batch(&batch).expect("client addresses");
    no_rp(&r.client, &["eth0", "eth1"]);
    for (n, k) in [(&r.n1, 1), (&r.n2, 2)] {
        n.ip_batch(&format!(
            "addr add 10.82.{k}.1/24 dev cli0\n\
             addr add 10.82.100.1/32 dev cli0\n\
             addr add 10.82.{k}0.1/24 dev be0\n\
             addr add 10.82.50.{k}/24 dev peer0\n\
             addr add fd00:82:50::{k}/64 dev peer0 nodad\n\
             route add 10.82.200.0/24 via 10.82.{k}.2 dev cli0\n"
        ))
        .expect("node addresses");
        n.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
        no_rp(n, &["cli0", "be0"]);
    }
    r.n2.ip_batch("route add 10.82.10.0/24 via 10.82.20.2 dev be0\n")
        .expect("node 2 route to the backends");
    let mut batch = String::from("addr add 10.82.20.2/24 dev eth1\n");
    for b in BACKENDS {
        let ip = b.split(':').next().expect("address");
        batch.push_str(&format!("addr add {ip}/24 dev eth0\n"));
    }
    batch.push_str("route add default via 10.82.10.1 dev eth0\n");
    r.backend.ip_batch(&batch).expect("backend addresses");
    no_rp(&r.backend, &["eth0", "eth1"]);
    r
}

fn node(r: &Rig, ns: &Netns, listen: &str, peer: &str, exchange: bool) -> StickyProcess {
    let mut args: Vec<String> = [
        "--iface",
        "cli0",
        "--vip",
        VIP,
        "--seed",
        "7",
        "--replies-any-node",
    ]
    .map(String::from)
    .to_vec();
    for b in &BACKENDS[..ADDED] {
        args.extend(["--backend".into(), b.to_string()]);
    }
    if exchange {
        args.extend([
            "--peers".into(),
            peer.into(),
            "--peer-listen".into(),
            listen.into(),
            "--peer-key-file".into(),
            r.key.path.display().to_string(),
        ]);
    }
    StickyProcess::start(&sticky_bin(), ns, &args).expect("sticky run")
}

/// Every client connects once through the route the client namespace has now; client →
/// backend id.
fn connect_all(r: &Rig) -> BTreeMap<u8, String> {
    let vip: SocketAddr = VIP.parse().expect("address");
    let answers = r
        .client
        .run(move || {
            (0..CLIENTS)
                .map(|i| (i, get_once(client_ip(i), vip)))
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    answers
        .into_iter()
        .map(|(i, a)| {
            let a = a.unwrap_or_else(|e| panic!("client {} -> {vip}: {e:#}", client_ip(i)));
            assert_eq!(
                a.seen_client,
                client_ip(i),
                "the backend saw the real client"
            );
            (i, a.backend)
        })
        .collect()
}

/// HTTP servers for `backends` in the backend namespace.
fn servers(r: &Rig, backends: &[&str]) -> Vec<HttpBackend> {
    backends
        .iter()
        .enumerate()
        .map(|(k, b)| {
            HttpBackend::start(&r.backend, b.parse().expect("address"), &format!("be{k}"))
                .expect("backend")
        })
        .collect()
}

/// Polls `value` every `every` until `done` says yes, for at most `limit`; panics with `what`
/// and the last value then. Returns how long it took.
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut value: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let v = value();
        if done(&v) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: still {v:?} after {limit:?}"
        );
        std::thread::sleep(every);
    }
}

fn nat_count(p: &StickyProcess) -> u64 {
    status(p).counters.get("nat").copied().unwrap_or(0)
}

/// Runs the scenario; returns how many clients moved to another backend through node 2, and
/// the rig and nodes for more.
fn scenario(exchange: bool) -> (usize, Rig, StickyProcess, StickyProcess) {
    let r = rig();
    let servers = servers(&r, &BACKENDS);
    let n1 = node(&r, &r.n1, N1_PEER, N2_PEER, exchange);
    let n2 = node(&r, &r.n2, N2_PEER, N1_PEER, exchange);
    if exchange {
        // How fast one record reaches the peer: a connection's end to node 2 counting it.
        let (c, vip) = (client_ip(0), VIP.parse().expect("address"));
        r.client
            .run(move || get_once(c, vip))
            .expect("client namespace")
            .expect("first connection");
        let took = wait_until(
            "records node 2 applied",
            Duration::from_secs(10),
            Duration::from_millis(2),
            || status(&n2).peers.expect("peers status").records_applied,
            |&n| n > 0,
        );
        println!(
            "one record applied by node 2 {:.1} ms after its connection ended (status polled)",
            took.as_secs_f64() * 1000.0
        );
    }
    let sent = Instant::now();
    let first = connect_all(&r);
    assert!(
        first
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == ADDED,
        "100 clients use every backend: {first:?}"
    );
    if exchange {
        // Every client's affinity reaches node 2 (bounded wait).
        wait_until(
            "affinities node 2 holds",
            Duration::from_secs(15),
            Duration::from_millis(20),
            || status(&n2).affinity_entries,
            |&n| n >= u64::from(CLIENTS),
        );
        println!(
            "node 2 held all {CLIENTS} affinities {:.0} ms after the first of 100 sequential \
             connections started",
            sent.elapsed().as_secs_f64() * 1000.0
        );
    }
    for n in [&n1, &n2] {
        ok(
            &n.ctl(&sticky_bin(), &["backend", "add", BACKENDS[ADDED]]),
            "backend add",
        );
    }
    r.client
        .ip(&[
            "route",
            "replace",
            "10.82.100.0/24",
            "via",
            "10.82.2.1",
            "dev",
            "eth1",
        ])
        .expect("route the clients through node 2");
    let before = nat_count(&n2);
    let second = connect_all(&r);
    assert!(
        nat_count(&n2) >= before + u64::from(CLIENTS),
        "the second round did not go through node 2"
    );
    let moved = (0..CLIENTS).filter(|i| first[i] != second[i]).count();
    drop(servers);
    (moved, r, n1, n2)
}

#[test]
fn clients_keep_their_backend_across_nodes() {
    if !root_or_skip("clients_keep_their_backend_across_nodes") {
        return;
    }
    let (moved, _r, _n1, n2) = scenario(true);
    assert_eq!(moved, 0, "clients moved although node 2 had their affinity");
    let p = status(&n2).peers.expect("peers status");
    assert!(p.rejected.values().all(|&n| n == 0), "{p:?}");
}

/// Loss tolerance: node 2 starts only after the clients became affine on node 1 (every live
/// datagram lost); its greeting starts a resync round on node 1, which brings it every
/// affinity within one period. The exchange runs over
/// IPv6 here (the clients and backends are IPv4: the two are independent).
#[test]
fn a_node_that_missed_the_records_gets_them_by_resync() {
    if !root_or_skip("a_node_that_missed_the_records_gets_them_by_resync") {
        return;
    }
    let r = rig();
    let _servers = servers(&r, &BACKENDS[..ADDED]);
    let _n1 = node(&r, &r.n1, N1_PEER_V6, N2_PEER_V6, true);
    connect_all(&r);
    let n2 = node(&r, &r.n2, N2_PEER_V6, N1_PEER_V6, true);
    let took = wait_until(
        "affinities the late node holds",
        RESYNC_PERIOD + Duration::from_secs(2),
        Duration::from_millis(50),
        || status(&n2).affinity_entries,
        |&n| n >= u64::from(CLIENTS),
    );
    println!(
        "a late node held all {CLIENTS} affinities {:.1} s after it started (a round spreads \
         over {RESYNC_PERIOD:?})",
        took.as_secs_f64()
    );
}

/// Sync is best effort, off the packet path: a node whose peers are all unreachable (one
/// without a route, one whose daemon is not running) forwards every client as alone, records
/// their affinity, and counts the sends that failed.
#[test]
fn a_node_whose_peers_are_unreachable_forwards_alone() {
    if !root_or_skip("a_node_whose_peers_are_unreachable_forwards_alone") {
        return;
    }
    let r = rig();
    let _servers = servers(&r, &BACKENDS[..ADDED]);
    let peers = format!("10.99.0.1:7946,{N2_PEER}");
    let n1 = node(&r, &r.n1, N1_PEER, &peers, true);
    // Every client answered (connect_all fails on any error), twice, by one backend each.
    let first = connect_all(&r);
    let again = connect_all(&r);
    assert_eq!(first, again, "clients moved on a node without its peers");
    let s = status(&n1);
    assert!(
        s.affinity_entries >= u64::from(CLIENTS),
        "affinities recorded: {}",
        s.affinity_entries
    );
    let p = s.peers.expect("peers status");
    assert!(
        p.send_errors > 0,
        "no failed send counted towards the unroutable peer: {p:?}"
    );
    println!(
        "alone: {} clients served twice, {} sends failed, {} datagrams sent",
        CLIENTS, p.send_errors, p.datagrams_sent
    );
}

#[test]
fn without_the_exchange_clients_move() {
    if !root_or_skip("without_the_exchange_clients_move") {
        return;
    }
    let (moved, _r, _n1, n2) = scenario(false);
    println!("{moved} of {CLIENTS} clients moved without the exchange");
    assert!(
        moved > 0,
        "no client moved: the test cannot tell the exchange works"
    );
    assert!(status(&n2).peers.is_none());
}

/// `sticky lookup` on a node: (backend, reason).
fn lookup(p: &StickyProcess, ip: IpAddr) -> (String, String) {
    let out = ok(
        &p.ctl(&sticky_bin(), &["lookup", &ip.to_string(), "--json"]),
        "lookup",
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("lookup JSON");
    (v["backend"].to_string(), v["reason"].to_string())
}

fn rejected(p: &StickyProcess, reason: &str) -> u64 {
    let peers = status(p).peers.expect("peers status");
    peers.rejected.get(reason).copied().unwrap_or(0)
}

/// Waits (bounded) until node `p` counts `want` rejections for `reason`.
fn wait_rejected(p: &StickyProcess, reason: &str, want: u64) {
    wait_until(
        reason,
        Duration::from_secs(5),
        Duration::from_millis(20),
        || rejected(p, reason),
        |&n| n >= want,
    );
}

#[test]
fn forged_replayed_and_flooded_datagrams_change_nothing() {
    if !root_or_skip("forged_replayed_and_flooded_datagrams_change_nothing") {
        return;
    }
    let (_, r, _n1, n2) = scenario(true);
    let victim = client_ip(0);
    let before = lookup(&n2, victim);
    assert!(before.1.contains("affinity"), "{before:?}");
    // A record that would move the victim to another backend.
    let elsewhere = BACKENDS
        .iter()
        .find(|b| !before.0.contains(*b))
        .expect("another backend");
    let hostile = [Record {
        client: victim,
        backend: elsewhere.parse().expect("address"),
        age_ms: 0,
    }];
    let key = Key::new(r.key.bytes.clone()).expect("key");
    let wrong = Key::new(vec![b'x'; 32]).expect("key");
    let boot = Header {
        boot_id: 0x5eed,
        seq: 1,
    };
    let to: SocketAddr = N2_PEER.parse().expect("address");
    // From node 1's address (a configured peer), another port: the daemon's stays bound.
    let send_all = |ns: &Netns, datagrams: Vec<Vec<u8>>| {
        ns.run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for d in &datagrams {
                s.send_to(d, to).expect("send");
            }
        })
        .expect("namespace")
    };
    let harmless = [Record {
        client: victim,
        backend: before.0.trim_matches('"').parse().expect("backend"),
        age_ms: 0,
    }];
    let genuine = wire::encode(&key, boot, &harmless);
    let older = wire::encode(&key, boot, &hostile);
    let mut flipped = wire::encode(&key, Header { seq: 2, ..boot }, &hostile);
    flipped[30] ^= 0x10;
    let full = wire::encode(&key, Header { seq: 3, ..boot }, &hostile);
    let cases: [(&str, Vec<Vec<u8>>, u64); 4] = [
        (
            "bad_mac",
            vec![wire::encode(&wrong, boot, &hostile), flipped],
            2,
        ),
        // The genuine datagram passes once; again, or another under its number, is a replay.
        ("replay", vec![genuine.clone(), genuine, older], 2),
        (
            "truncated",
            vec![full[..full.len() - 5].to_vec(), full[..10].to_vec()],
            2,
        ),
        ("oversized", vec![vec![0u8; 1500]], 1),
    ];
    for (reason, datagrams, want) in cases {
        let was = rejected(&n2, reason);
        send_all(&r.n1, datagrams);
        wait_rejected(&n2, reason, was + want);
        assert_eq!(lookup(&n2, victim), before, "after {reason}");
    }
    // Authentic but of another version: malformed.
    let was = rejected(&n2, "malformed");
    let mut other_version = wire::encode(&key, Header { seq: 10, ..boot }, &hostile);
    other_version.truncate(other_version.len() - 32);
    other_version[4] = 2;
    send_all(&r.n1, vec![wire::sign(&key, other_version)]);
    wait_rejected(&n2, "malformed", was + 1);
    // Authentic records that must not win: a backend node 2 does not have, one past the
    // affinity timeout, and one older than node 2's own sighting of the client.
    let ignored = status(&n2).peers.expect("peers status").records_ignored;
    let losing = [
        Record {
            backend: "10.82.99.99:8080".parse().expect("address"),
            ..hostile[0]
        },
        Record {
            age_ms: 31 * 60 * 1000,
            ..hostile[0]
        },
        Record {
            age_ms: 60 * 1000,
            ..hostile[0]
        },
    ];
    send_all(
        &r.n1,
        vec![wire::encode(&key, Header { seq: 11, ..boot }, &losing)],
    );
    wait_until(
        "records node 2 ignored",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || status(&n2).peers.expect("peers status").records_ignored,
        |&n| n >= ignored + 3,
    );
    assert_eq!(
        lookup(&n2, victim),
        before,
        "after records that must not win"
    );
    // From an address that is no peer (node 2's own): refused before anything else.
    let was = rejected(&n2, "unknown_peer");
    send_all(
        &r.n2,
        vec![wire::encode(&key, Header { seq: 9, ..boot }, &hostile)],
    );
    wait_rejected(&n2, "unknown_peer", was + 1);
    // A flood above the peer's rate (paced in bursts so that the socket's buffer, not the
    // bucket, is not what drops it): the excess is dropped and counted.
    let flood: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| {
            wire::encode(
                &wrong,
                Header {
                    seq: 100 + i,
                    ..boot
                },
                &hostile,
            )
        })
        .collect();
    let bad_mac = rejected(&n2, "bad_mac");
    let started = Instant::now();
    r.n1.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for burst in flood.chunks(100) {
            for d in burst {
                s.send_to(d, to).expect("send");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .expect("namespace");
    let secs = started.elapsed().as_secs_f64();
    wait_rejected(&n2, "rate_limited", 1);
    std::thread::sleep(Duration::from_millis(200));
    let limited = rejected(&n2, "rate_limited");
    let checked = rejected(&n2, "bad_mac") - bad_mac;
    println!(
        "flood: 20000 datagrams in {secs:.2} s, {limited} dropped by the rate limit, {checked} \
         checked (and refused: wrong key)"
    );
    assert!(
        checked as f64 <= wire_budget(secs),
        "{checked} datagrams passed the rate limit in {secs:.2} s"
    );
    let p = status(&n2).peers.expect("peers status");
    println!("rejections after the attacks: {:?}", p.rejected);
    assert_eq!(lookup(&n2, victim), before, "after the flood");
    // The control: the same hostile record, authentic and fresh, does move a client (once
    // the flood's tokens are back), so every "unchanged" above could have failed.
    std::thread::sleep(Duration::from_secs(2));
    send_all(
        &r.n1,
        vec![wire::encode(
            &key,
            Header {
                seq: 50_000,
                ..boot
            },
            &hostile,
        )],
    );
    let want = format!("\"{elsewhere}\"");
    wait_until(
        "the victim's backend on node 2 after an authentic record",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || lookup(&n2, victim).0,
        |b| *b == want,
    );
}

/// Most datagrams a peer's bucket lets through in `secs` (burst plus rate), with slack for
/// the time the status reads take.
fn wire_budget(secs: f64) -> f64 {
    use sticky::peers::sync::{PEER_BURST, PEER_RATE};
    PEER_BURST + PEER_RATE * (secs + 1.0)
}

/// The exchange's figures under load (a campaign: it prints them, timing is asserted by no
/// one): new clients at [`LOAD_RATE`] a second through node 1 for [`LOAD_SECS`] s, every
/// [`SAMPLE_EVERY`]th one timed from its connection's end until node 2 answers its affinity
/// (`sticky lookup`, polled); node 1's bytes on the exchange link during the load and over
/// one resync period after it. Every sampled client must reach node 2.
#[test]
fn sync_convergence_and_bandwidth_under_new_clients() {
    const LOAD_RATE: u64 = 1000;
    const LOAD_SECS: u64 = 3;
    const SAMPLE_EVERY: u64 = 10;
    if !root_or_skip("sync_convergence_and_bandwidth_under_new_clients") {
        return;
    }
    let r = rig();
    // New clients from 10.83.0.0/16 (a local route: any address of it can be bound).
    r.client
        .ip_batch("route add local 10.83.0.0/16 dev lo\n")
        .expect("client range");
    for (n, k) in [(&r.n1, 1), (&r.n2, 2)] {
        n.ip_batch(&format!(
            "route add 10.83.0.0/16 via 10.82.{k}.2 dev cli0\n"
        ))
        .expect("route to the client range");
    }
    let _servers = servers(&r, &BACKENDS[..ADDED]);
    let n1 = node(&r, &r.n1, N1_PEER, N2_PEER, true);
    let n2 = node(&r, &r.n2, N2_PEER, N1_PEER, true);
    let instance = n2.instance.clone();
    let vip: SocketAddr = VIP.parse().expect("address");
    let link = |ns: &Netns| sticky_tests::dsr::counters(ns, "peer0").expect("peer0 bytes");
    let before = link(&r.n1);
    let sent_before = status(&n1).peers.expect("peers").records_sent;
    let total = LOAD_RATE * LOAD_SECS;
    let (tx, rx) = std::sync::mpsc::channel::<(IpAddr, Instant)>();
    // The poller: each sampled client's affinity on node 2, in the order they connected.
    let poller = std::thread::spawn(move || {
        use sticky::control::Request;
        let mut took = Vec::new();
        let mut missing = Vec::new();
        for (ip, connected) in rx {
            loop {
                let data = sticky::cli::control::call(&instance, &Request::Lookup { ip })
                    .expect("lookup on node 2");
                if data["reason"].to_string().contains("affinity") {
                    took.push(connected.elapsed());
                    break;
                }
                if connected.elapsed() > Duration::from_secs(10) {
                    missing.push(ip);
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        (took, missing)
    });
    let load_started = Instant::now();
    let failed = r
        .client
        .run(move || {
            let start = Instant::now();
            let mut failed = 0u64;
            for i in 0..total {
                let due = start + Duration::from_micros(i * 1_000_000 / LOAD_RATE);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let ip = IpAddr::from([10, 83, (i / 250) as u8, (i % 250) as u8 + 1]);
                match sticky_tests::HttpConn::open(ip, vip, Duration::from_secs(2)) {
                    Ok(c) => {
                        drop(c);
                        if i % SAMPLE_EVERY == 0 {
                            let _ = tx.send((ip, Instant::now()));
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            failed
        })
        .expect("client namespace");
    let load_secs = load_started.elapsed().as_secs_f64();
    let during = link(&r.n1);
    let sent_during = status(&n1).peers.expect("peers").records_sent;
    let (mut took, missing) = poller.join().expect("poller");
    // One whole resync period after the load: what the steady state adds.
    let quiet = link(&r.n1);
    let sent_quiet = status(&n1).peers.expect("peers").records_sent;
    let window = Instant::now();
    std::thread::sleep(RESYNC_PERIOD);
    let after = link(&r.n1);
    let sent_after = status(&n1).peers.expect("peers").records_sent;
    let window = window.elapsed().as_secs_f64();
    assert_eq!(failed, 0, "new connections failed under the load");
    assert!(
        missing.is_empty(),
        "{} sampled clients never reached node 2: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize];
    let per_thousand = |bytes: u64, secs: f64| bytes as f64 / secs / (LOAD_RATE as f64 / 1000.0);
    let rate = total as f64 / load_secs;
    println!(
        "sync campaign: {total} new clients in {load_secs:.2} s ({rate:.0}/s) through node 1; \
         {} sampled: affinity on node 2 after p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         (connection end to `sticky lookup` answering affinity; polled every 0.5 ms)",
        took.len(),
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        took.last().expect("samples").as_secs_f64() * 1000.0,
    );
    println!(
        "sync campaign: node 1 sent {} records, {} bytes on the wire during the load: {:.1} kB/s \
         per 1000 new clients/s; over the next resync period ({RESYNC_PERIOD:?}, resending \
         every affinity it holds) {} records, {} bytes: {:.1} kB/s over {window:.1} s",
        sent_during - sent_before,
        during.tx - before.tx,
        per_thousand(during.tx - before.tx, load_secs) / 1000.0,
        sent_after - sent_quiet,
        after.tx - quiet.tx,
        (after.tx - quiet.tx) as f64 / window / 1000.0,
    );
    drop(n2);
    drop(n1);
}
