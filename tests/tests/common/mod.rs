//! Shared by the integration tests: the sticky binary, running many clients through a
//! topology; `packets` and `datapath` for the BPF_PROG_TEST_RUN tests. The rig itself, and
//! skipping without root, are the `sticky-tests` library.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod datapath;
pub mod dsr_net;
pub mod packets;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use sticky::{addr::BackendSpec, backends::BackendSet, table};
use sticky_common::Addr16;
use sticky_tests::{Answer, HttpConn, StickyProcess, Topology, get_once, plan};

/// The `sticky` binary built with its eBPF object (`cargo xtask test` sets STICKY_BIN).
pub fn sticky_bin() -> PathBuf {
    let path = std::env::var_os("STICKY_BIN").unwrap_or_else(|| {
        panic!("STICKY_BIN is not set: run the tests with `cargo xtask test`, which builds sticky")
    });
    PathBuf::from(path)
}

/// Each client `i` in `clients` makes `conns` requests, each on a new connection. Panics
/// unless every answer comes from one backend per client and saw the real client address.
/// Returns client → backend id.
pub fn assign(
    topo: &Topology,
    clients: impl Iterator<Item = usize> + Send,
    conns: usize,
    v6: bool,
) -> BTreeMap<usize, String> {
    assign_via(&topo.client, topo.vip(v6), clients, conns, v6)
}

/// [`assign`] from any client namespace holding the plan's client addresses, to `vip`.
pub fn assign_via(
    client: &sticky_tests::Netns,
    vip: std::net::SocketAddr,
    clients: impl Iterator<Item = usize> + Send,
    conns: usize,
    v6: bool,
) -> BTreeMap<usize, String> {
    let answers: Vec<(usize, Answer)> = client
        .run(|| {
            let mut out = Vec::new();
            for i in clients {
                for _ in 0..conns {
                    let src = plan::client(i, v6);
                    let a = get_once(src, vip)
                        .unwrap_or_else(|e| panic!("client {src} -> {vip}: {e:#}"));
                    out.push((i, a));
                }
            }
            out
        })
        .expect("client namespace");
    let mut per_client: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, a) in answers {
        let src = plan::client(i, v6);
        assert_eq!(
            a.seen_client, src,
            "backend {} saw the wrong client address",
            a.backend
        );
        per_client.entry(i).or_default().insert(a.backend);
    }
    per_client
        .into_iter()
        .map(|(i, set)| {
            assert_eq!(
                set.len(),
                1,
                "client {} split over {set:?}",
                plan::client(i, v6)
            );
            (i, set.into_iter().next().expect("one backend"))
        })
        .collect()
}

/// Opens one keep-alive connection per client and makes a first request on it.
pub fn open_long_lived(
    topo: &Topology,
    clients: impl Iterator<Item = usize> + Send,
    v6: bool,
) -> Vec<(usize, HttpConn, String)> {
    let vip = topo.vip(v6);
    topo.client
        .run(|| {
            clients
                .map(|i| {
                    let src = plan::client(i, v6);
                    let mut conn = HttpConn::open(src, vip, std::time::Duration::from_secs(3))
                        .unwrap_or_else(|e| panic!("open {src} -> {vip}: {e:#}"));
                    let first = conn.get(false).unwrap_or_else(|e| panic!("{src}: {e:#}"));
                    (i, conn, first.backend)
                })
                .collect()
        })
        .expect("client namespace")
}

/// One more request on each held connection: panics unless every one still answers from the
/// backend it first reached.
pub fn exchange(held: &mut [(usize, HttpConn, String)], when: &str) {
    for (i, conn, first) in held.iter_mut() {
        let a = conn
            .get(false)
            .unwrap_or_else(|e| panic!("{when}: connection {i} broke: {e:#}"));
        assert_eq!(a.backend, *first, "{when}: connection {i} changed backend");
    }
}

/// Clients per backend id.
pub fn spread(assignment: &BTreeMap<usize, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for b in assignment.values() {
        *out.entry(b.clone()).or_insert(0) += 1;
    }
    out
}

/// What userspace computes for `client` with these backends (ids `be{k}` by position): the
/// kernel must agree, it runs the same hash and the same table.
pub fn predicted(backends: &[(usize, IpAddr, u16)], client: IpAddr, seed: u32) -> String {
    let specs: Vec<BackendSpec> = backends
        .iter()
        .map(|(_, ip, port)| BackendSpec {
            addr: std::net::SocketAddr::new(*ip, *port),
            weight: 1,
        })
        .collect();
    let mut set = BackendSet::default();
    set.reconcile(&specs).expect("backend set");
    let t = table::build(&set.members(), sticky::config::DEFAULT_TABLE_SIZE, seed);
    let view = sticky::decision::Published::new(
        &set,
        &t,
        sticky::decision::settings(seed, 0),
        sticky::decision::no_affinity,
    );
    let id = sticky_common::choice::by_table(&view, &Addr16::from_ip(client), view.settings())
        .expect("table names a backend")
        .id;
    let backend = set.get(id).expect("a configured backend");
    let k = backends
        .iter()
        .find(|(_, ip, port)| backend.addr == std::net::SocketAddr::new(*ip, *port))
        .expect("known backend")
        .0;
    format!("be{k}")
}

/// `sticky cluster --workers 3 --iface cli0 EXTRA… -- node SCRIPT` in the balancer namespace,
/// returned once every worker is in the table (the first joins with the daemon, the other two
/// announce it).
pub fn start_cluster(topo: &Topology, extra: &[&str], script: &std::path::Path) -> StickyProcess {
    let mut args: Vec<String> = [
        "cluster",
        "--workers",
        "3",
        "--iface",
        "cli0",
        "--hard-shutdown-delay",
        "5s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "node".into(), script.display().to_string()]);
    let mut d = StickyProcess::start_with(&sticky_bin(), &topo.lb, &args, "sticky cluster:")
        .expect("sticky cluster");
    for _ in 0..2 {
        d.wait_for("in the table", std::time::Duration::from_secs(30))
            .expect("every worker joins");
    }
    d
}

/// Backend `k`'s IPv4 `ADDR:PORT` in the topology plan.
pub fn backend(k: usize) -> String {
    std::net::SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT).to_string()
}

/// `--iface cli0 --vip <IPv4 VIP>` and a `--backend` for each of `backends` (remote, on
/// `BACKEND_PORT`), then `extra`.
pub fn args_with(topo: &Topology, backends: &[usize], extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--iface".to_string(),
        "cli0".into(),
        "--vip".into(),
        topo.vip(false).to_string(),
    ];
    for &k in backends {
        args.extend(["--backend".into(), backend(k)]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A sticky command's stdout; panics with its output unless it succeeded.
pub fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sticky status --json` of a running daemon.
pub fn status(daemon: &StickyProcess) -> sticky::status::Status {
    let out = ok(
        &daemon.ctl(&sticky_bin(), &["status", "--json"]),
        "status --json",
    );
    serde_json::from_str(&out).expect("status JSON")
}

/// Writes a config file with backends `backends` (by topology index) after `head` lines.
pub fn write_config(path: &Path, head: &str, backends: &[usize]) {
    let list: Vec<String> = backends
        .iter()
        .map(|&k| format!("\"{}\"", backend(k)))
        .collect();
    let text = format!("{head}backend = [{}]\n", list.join(", "));
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// One `GET /metrics` to `addr` from inside the lb namespace: the whole response.
pub fn scrape(topo: &Topology, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("a metrics address");
    topo.lb
        .run(|| sticky_tests::fetch_metrics(addr, Duration::from_secs(30)))
        .expect("lb namespace")
        .unwrap_or_else(|e| panic!("scrape {addr}: {e:#}"))
}

/// examples/socketio: the socket.io worker (app.js) and the load/check client (load.js).
pub fn socketio_example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/socketio")
}

/// Runs load.js in the namespace at `ns_path` (callable from any thread) and returns its
/// JSON report.
pub fn run_load(ns_path: &str, args: &[String]) -> serde_json::Value {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={ns_path}"))
        .arg("node")
        .arg(socketio_example().join("load.js"))
        .args(args)
        .output()
        .expect("run node load.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no report from load.js: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad report {line}: {e}"))
}

/// A load.js report with every client connected and nothing lost: no failed handshake, no
/// "Session ID unknown", no failed ack, no client split over workers; every worker used.
pub fn assert_socketio_clean(report: &serde_json::Value, clients: usize, what: &str) {
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("connected"), clients as u64, "{what}: {report}");
    for key in [
        "failed_handshakes",
        "session_id_unknown",
        "ack_timeouts",
        "split_clients",
    ] {
        assert_eq!(n(key), 0, "{what}: {key} in {report}");
    }
    let workers = report["workers"].as_object().map_or(0, |w| w.len());
    assert_eq!(workers, 3, "{what}: every worker used: {report}");
}

/// Where a DSR balancer's program runs.
#[derive(Clone, Copy, Debug)]
pub enum DsrHook {
    Tc,
    Xdp,
}

impl DsrHook {
    /// The `--xdp` value for it.
    pub fn xdp(self) -> &'static str {
        match self {
            DsrHook::Tc => "off",
            DsrHook::Xdp => "native",
        }
    }
}
