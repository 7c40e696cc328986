//! Live operations against a running daemon in a namespace topology: every CLI command, with
//! its effect checked on real traffic, health checks, drain, restart without loss, metrics.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use common::{
    args_with, assign, backend, exchange, ok, open_long_lived, predicted, scrape, spread, status,
    sticky_bin, write_config,
};
use sticky::status::Status;
use sticky_tests::{HttpBackend, StickyProcess, Topology, plan, root_or_skip};

const CLIENTS: usize = 250;

fn refused(out: &Output, what: &str, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded");
    assert!(
        stderr.contains(expect),
        "{what}: expected '{expect}' in: {stderr}"
    );
}

fn state_of(status: &Status, addr: &str) -> Option<String> {
    status
        .backends
        .iter()
        .find(|b| b.addr.to_string() == addr)
        .map(|b| b.state.name().to_string())
}

fn list(daemon: &StickyProcess) -> String {
    ok(
        &daemon.ctl(&sticky_bin(), &["backend", "list", "--json"]),
        "backend list",
    )
}

#[test]
fn every_backend_command_changes_real_traffic() {
    if !root_or_skip("every_backend_command_changes_real_traffic") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("ops", 4, 2 * CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon =
        StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &[0, 1, 2], &[])).expect("sticky");
    let initial = list(&daemon);
    assert_eq!(initial.matches("\"up\"").count(), 3, "{initial}");

    let before = assign(&topo, 0..CLIENTS, 2, false);
    let s = status(&daemon);
    let share: f64 = s.backends.iter().map(|b| b.table_share).sum();
    assert!((share - 1.0).abs() < 1e-9, "table shares sum to {share}");
    for b in &s.backends {
        let ours = before
            .values()
            .filter(|v| **v == format!("be{}", b.id))
            .count() as u64;
        assert_eq!(b.affine_clients, ours, "affine clients of {}", b.addr);
        assert!(b.new_flows_total >= 2 * ours && b.bytes > 0 && b.active_flows >= ours);
        assert_eq!((b.state.name(), b.health.name()), ("up", "unchecked"));
    }
    let text = ok(&daemon.ctl(&bin, &["status"]), "status");
    assert!(
        text.contains("BACKEND") && text.contains(&backend(0)) && text.contains('#'),
        "{text}"
    );

    // lookup: a client we sent gets its backend by affinity; a new one by the table.
    let c0 = plan::client(0, false).to_string();
    let l = ok(&daemon.ctl(&bin, &["lookup", &c0, "--json"]), "lookup");
    let want = backend(before[&0].trim_start_matches("be").parse().expect("id"));
    assert!(l.contains("\"affinity\"") && l.contains(&want), "{l}");
    let fresh = plan::client(CLIENTS, false);
    let l = ok(&daemon.ctl(&bin, &["lookup", &fresh.to_string()]), "lookup");
    let backends3: Vec<_> = (0..3)
        .map(|k| (k, plan::backend(k, false).0, plan::BACKEND_PORT))
        .collect();
    let want = predicted(&backends3, fresh, 0);
    assert!(
        l.contains("(table)") && l.contains(&backend(want[2..].parse().expect("id"))),
        "{l}"
    );

    // preview add: about a quarter of the slots, no affine client.
    let p = ok(
        &daemon.ctl(&bin, &["preview", "--json", "add", &backend(3)]),
        "preview add",
    );
    let p: serde_json::Value = serde_json::from_str(&p).expect("json");
    let moved = p["slots_moved"].as_f64().expect("slots") / p["table_size"].as_f64().expect("size");
    assert!((0.2..0.3).contains(&moved), "preview add moves {moved}");
    assert_eq!(p["affine_clients_moved"], 0);
    assert_eq!(p["affine_clients"], CLIENTS as u64);
    assert_eq!(list(&daemon), initial, "preview changed the state");

    // Bad input: clear error, state unchanged.
    refused(
        &daemon.ctl(&bin, &["backend", "add", &backend(0)]),
        "duplicate add",
        "already exists",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "remove", "198.19.9.9:80"]),
        "unknown remove",
        "no backend 198.19.9.9:80",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "weight", &backend(0), "0"]),
        "weight 0",
        "weight must be",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "weight", &backend(0), "-2"]),
        "weight -2",
        "",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "weight", &backend(0), "100000"]),
        "huge weight",
        "weight must be",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "add", "198.19.0.x:80"]),
        "malformed",
        "not an address",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "add", "[fd00::1]:80"]),
        "wrong family",
        "address family",
    );
    refused(
        &daemon.ctl(&bin, &["backend", "undrain", &backend(0)]),
        "undrain up",
        "not draining",
    );
    assert_eq!(
        list(&daemon),
        initial,
        "a refused command changed the state"
    );

    // add: affine clients stay, new clients reach the new backend.
    ok(&daemon.ctl(&bin, &["backend", "add", &backend(3)]), "add");
    assert_eq!(
        assign(&topo, 0..CLIENTS, 1, false),
        before,
        "affine clients moved on add"
    );
    let newcomers = assign(&topo, CLIENTS..2 * CLIENTS, 1, false);
    assert!(
        newcomers.values().any(|b| b == "be3"),
        "{:?}",
        spread(&newcomers)
    );

    // weight: the table follows (5 of 8 weight units).
    ok(
        &daemon.ctl(&bin, &["backend", "weight", &backend(0), "5"]),
        "weight",
    );
    let s = status(&daemon);
    let b0 = s
        .backends
        .iter()
        .find(|b| b.addr.to_string() == backend(0))
        .expect("be0");
    assert!(
        (b0.table_share - 5.0 / 8.0).abs() < 0.01,
        "share {}",
        b0.table_share
    );
    assert_eq!(b0.weight, 5);

    // preview remove counts exactly the removed backend's affine clients.
    let on_be1 = before
        .values()
        .chain(newcomers.values())
        .filter(|b| *b == "be1")
        .count();
    let p = ok(
        &daemon.ctl(&bin, &["preview", "--json", "remove", &backend(1)]),
        "preview remove",
    );
    let p: serde_json::Value = serde_json::from_str(&p).expect("json");
    assert_eq!(p["affine_clients_moved"], on_be1 as u64, "{p}");

    // remove: only its clients move.
    ok(
        &daemon.ctl(&bin, &["backend", "remove", &backend(1)]),
        "remove",
    );
    let after = assign(&topo, 0..CLIENTS, 1, false);
    for (i, b) in &before {
        if b == "be1" {
            assert_ne!(after[i], "be1");
        } else {
            assert_eq!(after[i], *b, "client {i} moved");
        }
    }
    assert!(!list(&daemon).contains(&backend(1)));

    // One daemon per instance; commands without a daemon say so.
    let second = StickyProcess::start(
        &bin,
        &topo.lb,
        &args_with(&topo, &[0], &["--instance", &daemon.instance]),
    );
    let err = format!("{:#}", second.err().expect("second daemon refused"));
    assert!(err.contains("already running"), "{err}");
    let out = std::process::Command::new(&bin)
        .args(["status", "--instance", "no-such-instance"])
        .output()
        .expect("run sticky");
    refused(
        &out,
        "status without daemon",
        "no sticky daemon for instance 'no-such-instance'",
    );

    let mode = std::fs::metadata(format!("/run/sticky/{}.sock", daemon.instance))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("socket");
    assert_eq!(mode, 0o600, "control socket must be root only");
}

#[test]
fn drain_keeps_sessions_and_takes_no_new_clients() {
    if !root_or_skip("drain_keeps_sessions_and_takes_no_new_clients") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("drain", 3, 2 * CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon =
        StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &[0, 1, 2], &[])).expect("sticky");
    let mut held = open_long_lived(&topo, 0..CLIENTS, false);
    let before = assign(&topo, 0..CLIENTS, 1, false);

    ok(
        &daemon.ctl(&bin, &["backend", "drain", &backend(0)]),
        "drain",
    );
    assert_eq!(
        state_of(&status(&daemon), &backend(0)).as_deref(),
        Some("draining")
    );
    for (i, conn, first) in &mut held {
        let again = conn
            .get(false)
            .unwrap_or_else(|e| panic!("connection of {i} dropped: {e:#}"));
        assert_eq!(again.backend, *first);
    }
    // Affine clients of be0 keep reaching it (their socket.io sessions live there).
    assert_eq!(assign(&topo, 0..CLIENTS, 1, false), before);
    let newcomers = assign(&topo, CLIENTS..2 * CLIENTS, 1, false);
    assert!(
        !newcomers.values().any(|b| b == "be0"),
        "a new client landed on a draining backend"
    );

    ok(
        &daemon.ctl(&bin, &["backend", "undrain", &backend(0)]),
        "undrain",
    );
    assert_eq!(
        state_of(&status(&daemon), &backend(0)).as_deref(),
        Some("up")
    );

    // A deadline ends the drain: the backend is removed and its clients move.
    ok(
        &daemon.ctl(&bin, &["backend", "drain", &backend(0), "--deadline", "1s"]),
        "drain --deadline",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&status(&daemon), &backend(0)).is_some() {
        assert!(
            Instant::now() < deadline,
            "drain deadline never removed the backend"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = assign(&topo, 0..CLIENTS, 1, false);
    assert!(!after.values().any(|b| b == "be0"));
}

#[test]
fn health_checks_take_a_dead_backend_out_and_back() {
    if !root_or_skip("health_checks_take_a_dead_backend_out_and_back") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("health", 3, CLIENTS).expect("topology");
    let mut servers = topo.start_backends().expect("backends");
    let interval = Duration::from_millis(500);
    let extra = [
        "--health-check",
        "http:/",
        "--health-interval",
        "500ms",
        "--health-timeout",
        "200ms",
        "--health-fall",
        "2",
        "--health-rise",
        "2",
    ];
    let daemon = StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &[0, 1, 2], &extra))
        .expect("sticky");
    let before = assign(&topo, 0..CLIENTS, 1, false);
    assert!(
        status(&daemon)
            .backends
            .iter()
            .all(|b| b.health.name() == "healthy")
    );

    // Kill be1's server: out of the table within 3 intervals.
    let killed_at = Instant::now();
    drop(servers.remove(1));
    loop {
        let s = status(&daemon);
        if state_of(&s, &backend(1)).as_deref() == Some("down") {
            break;
        }
        assert!(
            killed_at.elapsed() <= 3 * interval + Duration::from_millis(200),
            "still in after 3 intervals"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then not a single new connection fails: be1's clients move, the others stay.
    let during = assign(&topo, 0..CLIENTS, 2, false);
    for (i, b) in &before {
        if b == "be1" {
            assert_ne!(during[i], "be1");
        } else {
            assert_eq!(during[i], *b);
        }
    }
    let s = status(&daemon);
    let b1 = s
        .backends
        .iter()
        .find(|b| b.addr.to_string() == backend(1))
        .expect("be1");
    assert_eq!(
        (b1.health.name(), b1.health_transitions, b1.table_share),
        ("failing", 1, 0.0)
    );

    // Restart it: back in the table, its share of clients back.
    servers.insert(
        1,
        HttpBackend::start(
            &topo.backends[1],
            SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), plan::BACKEND_PORT),
            "be1",
        )
        .expect("restart be1"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(&status(&daemon), &backend(1)).as_deref() != Some("up") {
        assert!(Instant::now() < deadline, "be1 never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = status(&daemon);
    assert!(
        s.backends
            .iter()
            .find(|b| b.addr.to_string() == backend(1))
            .expect("be1")
            .table_share
            > 0.2
    );
}

#[test]
fn restart_keeps_every_connection_and_affinity() {
    if !root_or_skip("restart_keeps_every_connection_and_affinity") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("restart", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &[0, 1, 2], &[]);
    let daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let instance = daemon.instance.clone();
    let pin_dir = format!("/sys/fs/bpf/sticky/{instance}");
    let mut held = open_long_lived(&topo, 0..120, false);
    let before = assign(&topo, 0..CLIENTS, 1, false);

    // Load through the whole sequence: new connections from every client, round after round.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, vip, expected) = (stop.clone(), topo.vip(false), before.clone());
        topo.client
            .spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                'rounds: for _ in 0..200 {
                    for (i, want) in &expected {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break 'rounds;
                        }
                        match sticky_tests::get_once(plan::client(*i, false), vip) {
                            Ok(a) if a.backend == *want => ok += 1,
                            Ok(a) => failed.push(format!("client {i} went to {}", a.backend)),
                            Err(e) => failed.push(format!("client {i}: {e:#}")),
                        }
                    }
                }
                (ok, failed)
            })
            .expect("load thread")
    };

    // An upgrade: stop --keep, traffic flows with no daemon, a new daemon adopts.
    let out = daemon.ctl(&bin, &["stop", "--keep"]);
    ok(&out, "stop --keep");
    assert!(daemon.wait_exit().expect("exit").success());
    assert!(Path::new(&pin_dir).exists(), "pins removed by stop --keep");
    exchange(&mut held, "daemon down");
    assert_eq!(assign(&topo, 0..CLIENTS, 1, false), before, "daemon down");
    let daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("restart");
    assert!(
        daemon.ready_line.contains("adopted"),
        "{}",
        daemon.ready_line
    );
    exchange(&mut held, "after restart");
    assert_eq!(
        assign(&topo, 0..CLIENTS, 1, false),
        before,
        "affinity lost across restart"
    );

    // A crash (SIGKILL) leaves the data path running; the next daemon adopts it.
    daemon.signal(libc::SIGKILL).expect("kill -9");
    assert!(!daemon.wait_exit().expect("exit").success());
    exchange(&mut held, "after kill -9");
    let daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("restart after crash");
    assert!(daemon.ready_line.contains("adopted"));
    exchange(&mut held, "after crash restart");
    assert_eq!(assign(&topo, 0..CLIENTS, 1, false), before);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.join().expect("load thread");
    assert!(
        failed.is_empty(),
        "{} of {} connections failed or moved during restarts: {:?}",
        failed.len(),
        served as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        served > CLIENTS as u32,
        "the load barely ran: {served} requests"
    );

    // A plain stop detaches and unpins everything.
    assert!(daemon.stop().expect("stop").success());
    assert!(!Path::new(&pin_dir).exists(), "pins left behind");
}

#[test]
fn metrics_and_reload() {
    if !root_or_skip("metrics_and_reload") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("metrics", 3, 50).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let config = std::env::temp_dir().join(sticky_tests::unique_name("metrics") + ".toml");
    let write = |backends: &[usize], junk: &str| write_config(&config, junk, backends);
    write(&[0, 1, 2], "");
    let mut args = args_with(&topo, &[], &["--metrics", "127.0.0.1:9464", "--config"]);
    args.push(config.display().to_string());
    let daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let _ = assign(&topo, 0..50, 2, false);
    let scrape = || -> String {
        std::thread::sleep(Duration::from_millis(1200)); // metrics refresh every second
        scrape(&topo, "127.0.0.1:9464")
    };
    let body = scrape();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains(&format!(
            "sticky_backend_up{{backend=\"{}\"}} 1",
            backend(0)
        )),
        "{body}"
    );
    let flows: BTreeMap<String, u64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("sticky_backend_new_flows_total{backend=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(b, v)| (b.to_string(), v.parse().expect("number")))
        .collect();
    assert_eq!(flows.values().sum::<u64>(), 100, "{flows:?}");

    // An invalid file is refused and changes nothing; a valid one applies.
    write(&[0, 1], "bogus = 1\n");
    refused(&daemon.ctl(&bin, &["reload"]), "invalid reload", "bogus");
    assert_eq!(status(&daemon).backends.len(), 3);
    write(&[0, 1], "");
    ok(&daemon.ctl(&bin, &["reload"]), "reload");
    assert_eq!(status(&daemon).backends.len(), 2);
    let body = scrape();
    assert!(
        !body.contains(&backend(2)),
        "removed backend still reported"
    );
    let _ = std::fs::remove_file(&config);
}
