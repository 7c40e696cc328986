//! The kernel data path with real TCP/HTTP clients: namespaces and veths built per test,
//! transmit checksum offload off (a wrong checksum is dropped, not hidden), real backends.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{assign, open_long_lived, predicted, spread, sticky_bin};
use sticky_tests::{HttpBackend, StickyProcess, Topology, plan, root_or_skip};

const CLIENTS: usize = 250;

fn remote_backends(topo: &Topology, v6: bool) -> Vec<(usize, std::net::IpAddr, u16)> {
    (0..topo.backends.len())
        .map(|k| (k, plan::backend(k, v6).0, plan::BACKEND_PORT))
        .collect()
}

fn sticky_and_spread(v6: bool) {
    let topo = Topology::build(if v6 { "v6" } else { "v4" }, 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let _daemon =
        StickyProcess::start(&sticky_bin(), &topo.lb, &topo.sticky_args(v6)).expect("sticky");
    let assignment = assign(&topo, 0..CLIENTS, 3, v6);
    let spread = spread(&assignment);
    assert_eq!(spread.len(), 3, "every backend gets clients: {spread:?}");
    for n in spread.values() {
        assert!(*n >= CLIENTS / 6, "uneven spread {spread:?}");
    }
    let backends = remote_backends(&topo, v6);
    for (i, got) in &assignment {
        let client = plan::client(*i, v6);
        assert_eq!(
            *got,
            predicted(&backends, client, 0),
            "kernel and userspace disagree for {client}"
        );
    }
}

#[test]
fn ipv4_clients_stick_spread_and_match_userspace() {
    if root_or_skip("ipv4_clients_stick_spread_and_match_userspace") {
        sticky_and_spread(false);
    }
}

#[test]
fn ipv6_clients_stick_spread_and_match_userspace() {
    if root_or_skip("ipv6_clients_stick_spread_and_match_userspace") {
        sticky_and_spread(true);
    }
}

/// Backends on the balancer itself, other ports: the node cluster / pm2 case.
#[test]
fn local_port_backends() {
    if !root_or_skip("local_port_backends") {
        return;
    }
    let topo = Topology::build("local", 0, 200).expect("topology");
    for v6 in [false, true] {
        let vip = plan::vip(v6);
        let servers: Vec<HttpBackend> = (0..3)
            .map(|k| {
                let bind = SocketAddr::new(vip, 8081 + k as u16);
                HttpBackend::start(&topo.lb, bind, &format!("be{k}")).expect("local backend")
            })
            .collect();
        let mut args = vec![
            "--iface".to_string(),
            "cli0".into(),
            "--vip".into(),
            topo.vip(v6).to_string(),
        ];
        for k in 0..3u16 {
            args.extend([
                "--backend".into(),
                SocketAddr::new(vip, 8081 + k).to_string(),
            ]);
        }
        let daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
        let assignment = assign(&topo, 0..200, 3, v6);
        assert_eq!(
            spread(&assignment).len(),
            3,
            "v6={v6}: {:?}",
            spread(&assignment)
        );
        let backends: Vec<_> = (0..3).map(|k| (k, vip, 8081 + k as u16)).collect();
        for (i, got) in &assignment {
            assert_eq!(*got, predicted(&backends, plan::client(*i, v6), 0));
        }
        daemon.stop().expect("stop sticky");
        drop(servers);
    }
}

fn write_config(path: &std::path::Path, topo: &Topology, backends: &[usize], extra: &str) {
    let list: Vec<String> = backends
        .iter()
        .map(|&k| {
            format!(
                "\"{}\"",
                SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT)
            )
        })
        .collect();
    let text = format!(
        "iface = [\"cli0\"]\nvip = [\"{}\"]\nbackend = [{}]\n{extra}",
        topo.vip(false),
        list.join(", ")
    );
    std::fs::write(path, text).expect("write config");
}

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(sticky_tests::unique_name(tag) + ".toml"))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn reload(daemon: &mut StickyProcess) {
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    daemon
        .wait_for("sticky reloaded", Duration::from_secs(10))
        .expect("reload applied");
}

/// Removing a backend mid-run: every established connection (also to the removed backend)
/// keeps working on its backend; only the removed backend's clients move.
#[test]
fn removing_a_backend_keeps_connections_and_moves_only_its_clients() {
    if !root_or_skip("removing_a_backend_keeps_connections_and_moves_only_its_clients") {
        return;
    }
    let topo = Topology::build("rm", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let config = TempFile::new("rm");
    write_config(&config.0, &topo, &[0, 1, 2], "");
    let args = vec!["--config".to_string(), config.0.display().to_string()];
    let mut daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");

    let mut held = open_long_lived(&topo, 0..CLIENTS, false);
    let before = assign(&topo, 0..CLIENTS, 2, false);
    for (i, _, first) in &held {
        assert_eq!(
            *first, before[i],
            "long-lived and new connections of {i} disagree"
        );
    }
    write_config(&config.0, &topo, &[0, 2], "");
    reload(&mut daemon);

    for (i, conn, first) in &mut held {
        let again = conn
            .get(false)
            .unwrap_or_else(|e| panic!("established connection of client {i} broke: {e:#}"));
        assert_eq!(
            again.backend, *first,
            "established connection of {i} changed backend"
        );
    }
    let after = assign(&topo, 0..CLIENTS, 2, false);
    let mut moved = 0;
    for (i, b) in &before {
        if b == "be1" {
            assert_ne!(
                after[i], "be1",
                "client {i} still sent to the removed backend"
            );
            moved += 1;
        } else {
            assert_eq!(after[i], *b, "client {i} of a surviving backend moved");
        }
    }
    assert!(moved > 0, "be1 had no clients to move");
}

/// Adding a backend moves no client with live affinity; new clients reach the new backend;
/// once affinity lapses, clients follow the new table.
#[test]
fn adding_a_backend_moves_no_affine_client() {
    if !root_or_skip("adding_a_backend_moves_no_affine_client") {
        return;
    }
    let topo = Topology::build("add", 3, 2 * CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let config = TempFile::new("add");
    write_config(&config.0, &topo, &[0, 1], "affinity-timeout = \"4s\"\n");
    let args = vec!["--config".to_string(), config.0.display().to_string()];
    let mut daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");

    let before = assign(&topo, 0..CLIENTS, 2, false);
    write_config(&config.0, &topo, &[0, 1, 2], "affinity-timeout = \"4s\"\n");
    reload(&mut daemon);
    let after = assign(&topo, 0..CLIENTS, 2, false);
    assert_eq!(
        before, after,
        "affine clients moved when a backend was added"
    );

    let newcomers = assign(&topo, CLIENTS..2 * CLIENTS, 1, false);
    let backends = remote_backends(&topo, false);
    assert!(
        newcomers.values().any(|b| b == "be2"),
        "no new client reached the added backend: {:?}",
        spread(&newcomers)
    );
    for (i, b) in &newcomers {
        assert_eq!(*b, predicted(&backends, plan::client(*i, false), 0));
    }

    // Affinity lapses after 4 s without traffic: then the table decides.
    std::thread::sleep(Duration::from_millis(4500));
    let lapsed = assign(&topo, 0..CLIENTS, 1, false);
    for (i, b) in &lapsed {
        assert_eq!(
            *b,
            predicted(&backends, plan::client(*i, false), 0),
            "client {i}"
        );
    }
    assert!(
        lapsed.values().any(|b| b == "be2"),
        "no client followed the new table"
    );
}

/// Two balancers with the same configuration (two nodes behind ECMP) choose the same
/// backend for every client, with no shared state.
#[test]
fn two_balancers_agree_on_every_client() {
    if !root_or_skip("two_balancers_agree_on_every_client") {
        return;
    }
    let results: Vec<_> = ["ecmpa", "ecmpb"]
        .iter()
        .map(|tag| {
            let topo = Topology::build(tag, 3, CLIENTS).expect("topology");
            let _servers = topo.start_backends().expect("backends");
            let mut args = topo.sticky_args(false);
            args.extend(["--seed".into(), "12345".into()]);
            let _daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
            assign(&topo, 0..CLIENTS, 2, false)
        })
        .collect();
    assert_eq!(results[0].len(), CLIENTS);
    assert_eq!(results[0], results[1], "the two balancers disagree");
    assert_eq!(spread(&results[0]).len(), 3);
}
