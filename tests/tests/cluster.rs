//! `sticky cluster` with real worker processes (node): loopback and remote clients stick,
//! crashed workers come back with their clients, a rolling reload fails no request, and a
//! stop takes everything down.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::sticky_bin;
use sticky_tests::{Netns, StickyProcess, Topology, get_once, plan, root_or_skip};

const CLIENTS: usize = 200;

fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("workers/http_worker.js")
}

/// (worker index, pid) from an answer's id `w<index>-<pid>`.
fn worker(id: &str) -> (String, u32) {
    let (w, pid) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("odd worker id {id}"));
    (
        w.to_string(),
        pid.parse().unwrap_or_else(|_| panic!("odd pid in {id}")),
    )
}

/// Every client (remote from the client namespace, and loopback from inside the balancer)
/// makes `conns` connections; panics unless each stays on one worker. Client → worker index.
fn assign(topo: &Topology, conns: usize) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let remote = topo
        .client
        .run(|| {
            let to = SocketAddr::new(plan::lb_client_side(false), 3000);
            (0..CLIENTS)
                .flat_map(|i| (0..conns).map(move |_| i))
                .map(|i| {
                    let src = plan::client(i, false);
                    let a = get_once(src, to).unwrap_or_else(|e| panic!("{src}: {e:#}"));
                    assert_eq!(a.seen_client, src, "worker saw the wrong client");
                    (src.to_string(), worker(&a.backend).0)
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    let local = topo
        .lb
        .run(|| {
            let to = SocketAddr::from(([127, 0, 0, 1], 3000));
            (0..50u8)
                .flat_map(|i| (0..conns).map(move |_| i))
                .map(|i| {
                    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i + 1));
                    let a = get_once(src, to).unwrap_or_else(|e| panic!("loopback {src}: {e:#}"));
                    (src.to_string(), worker(&a.backend).0)
                })
                .collect::<Vec<_>>()
        })
        .expect("balancer namespace");
    for (client, w) in remote.into_iter().chain(local) {
        seen.entry(client).or_default().insert(w);
    }
    seen.into_iter()
        .map(|(c, ws)| {
            assert_eq!(ws.len(), 1, "client {c} split over workers {ws:?}");
            (c, ws.into_iter().next().expect("one"))
        })
        .collect()
}

fn start_cluster(topo: &Topology, extra: &[&str]) -> StickyProcess {
    common::start_cluster(topo, extra, &worker_script())
}

#[test]
fn cluster_balances_restarts_reloads_and_stops() {
    if !root_or_skip("cluster_balances_restarts_reloads_and_stops") {
        return;
    }
    let topo = Topology::build("cluster", 0, CLIENTS).expect("topology");
    let mut cluster = start_cluster(&topo, &[]);
    let before = assign(&topo, 2);
    let workers: BTreeSet<&String> = before.values().collect();
    assert_eq!(workers.len(), 3, "every worker gets clients: {workers:?}");

    // Crash a worker: it restarts with the same index and its clients come back to it.
    let pid = topo
        .lb
        .run(|| {
            get_once(
                IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)),
                SocketAddr::from(([127, 0, 0, 1], 3000)),
            )
        })
        .expect("lb")
        .map(|a| worker(&a.backend))
        .expect("a worker");
    // SAFETY: the pid of a worker our cluster started (it told us).
    assert_eq!(unsafe { libc::kill(pid.1 as i32, libc::SIGKILL) }, 0);
    cluster
        .wait_for(
            &format!("worker {} exited", &pid.0[1..]),
            Duration::from_secs(10),
        )
        .expect("crash noticed");
    cluster
        .wait_for(
            &format!("worker {} accepts", &pid.0[1..]),
            Duration::from_secs(20),
        )
        .expect("restarted");
    let after_crash = assign(&topo, 1);
    assert_eq!(
        after_crash, before,
        "clients did not come back to their restarted worker"
    );

    // Rolling reload under load: not one request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        topo.client
            .spawn(move || {
                let to = SocketAddr::new(plan::lb_client_side(false), 3000);
                let (mut ok, mut failed) = (0u32, Vec::new());
                'outer: for _ in 0..1000 {
                    for i in 0..CLIENTS {
                        if stop.load(Ordering::Relaxed) {
                            break 'outer;
                        }
                        match get_once(plan::client(i, false), to) {
                            Ok(_) => ok += 1,
                            Err(e) => failed.push(format!("client {i}: {e:#}")),
                        }
                    }
                }
                (ok, failed)
            })
            .expect("load")
    };
    let out = cluster.ctl(&sticky_bin(), &["cluster", "reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reloaded 3 workers"));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(
        failed.is_empty(),
        "{} requests failed during the reload: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok > 0);
    // Every worker is a new process now, still serving sticky.
    let after_reload = assign(&topo, 2);
    assert_eq!(after_reload.len(), before.len());

    // Stop: workers get SIGTERM, the data path is detached, pins removed.
    let instance = cluster.instance.clone();
    let status = cluster.stop().expect("stop");
    assert!(status.success(), "{status}");
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/sticky/{instance}")).exists(),
        "pins left"
    );
    let refused = topo
        .lb
        .run(|| {
            get_once(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::from(([127, 0, 0, 1], 3001)),
            )
        })
        .expect("lb");
    assert!(refused.is_err(), "a worker outlived the cluster");
}

#[test]
fn cluster_refuses_bad_arguments() {
    if !root_or_skip("cluster_refuses_bad_arguments") {
        return;
    }
    let ns = Netns::create(&sticky_tests::unique_name("clbad")).expect("netns");
    let run = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(sticky_bin())
            .args(args)
            .output()
            .expect("run sticky")
    };
    for (args, expect) in [
        (&["cluster", "--workers", "2"][..], "no worker command"),
        (
            &["cluster", "--workers", "0", "--", "true"][..],
            "--workers must be",
        ),
        (
            &[
                "cluster",
                "--workers",
                "3",
                "--port",
                "3001",
                "--base-port",
                "3000",
                "--",
                "true",
            ][..],
            "must fit below 65536 and not include",
        ),
        (
            &["cluster", "--env", "NOEQUALS", "--", "true"][..],
            "is not KEY=VALUE",
        ),
        (
            &["cluster", "--workers", "1", "--", "false"][..],
            "exited before accepting",
        ),
        (
            &["cluster", "reload", "--instance", "no-such-cluster"][..],
            "no sticky cluster for instance",
        ),
    ] {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected '{expect}' in {stderr}"
        );
    }
}
