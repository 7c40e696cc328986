//! socket.io end to end: a real socket.io server (examples/socketio, Redis adapter, real Redis)
//! under `sticky cluster`, driven by real socket.io-client processes from ≥200 addresses.
//! Judged on what socket.io users see: "Session ID unknown", failed handshakes, clients split
//! across workers, broadcasts.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{run_load, sticky_bin};
use serde_json::Value;
use sticky_tests::{Netns, StickyProcess, Topology, plan, root_or_skip};

const CLIENTS: usize = 200;

fn example() -> PathBuf {
    common::socketio_example()
}

fn require_example() {
    let modules = example().join("node_modules/socket.io");
    assert!(
        modules.exists(),
        "{} is missing: `cargo xtask test` runs `npm ci` in examples/socketio",
        modules.display()
    );
}

/// A Redis server inside `ns`, stopped by PID on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(ns: &Netns) -> Self {
        let port = 6400 + (std::process::id() % 1000) as u16;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .args([
                "redis-server",
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (`cargo xtask test` installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let up = || {
            ns.run(move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
                .unwrap_or(false)
        };
        while !up() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(topo: &Topology, redis: &Redis, extra: &[&str]) -> StickyProcess {
    let redis_url = format!("REDIS_URL=redis://127.0.0.1:{}", redis.port);
    let mut args = vec!["--env", redis_url.as_str()];
    args.extend_from_slice(extra);
    common::start_cluster(topo, &args, &example().join("app.js"))
}

/// Runs load.js in the client namespace and returns its JSON report.
fn load(topo: &Topology, args: &[&str]) -> Value {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    run_load(&topo.client.path(), &args)
}

fn assert_clean(report: &Value, what: &str) {
    common::assert_socketio_clean(report, CLIENTS, what);
}

fn url(port: u16) -> String {
    format!("http://{}:{port}", plan::lb_client_side(false))
}

#[test]
fn socketio_polling_default_proxy_and_broadcast() {
    if !root_or_skip("socketio_polling_default_proxy_and_broadcast") {
        return;
    }
    require_example();
    let topo = Topology::build("sio", 0, CLIENTS).expect("topology");
    let redis = Redis::start(&topo.lb);
    let _cluster = cluster(
        &topo,
        &redis,
        &[
            "--proxy",
            "198.18.0.1:8080",
            "--trusted-proxies",
            "198.18.0.2/32",
        ],
    );
    let base = plan::client(0, false).to_string();
    let clients = CLIENTS.to_string();

    let polling = load(
        &topo,
        &[
            "--url",
            &url(3000),
            "--clients",
            &clients,
            "--rounds",
            "3",
            "--transport",
            "polling",
            "--local-address-base",
            &base,
        ],
    );
    assert_clean(&polling, "polling only");
    assert_eq!(polling["client_addresses_seen_ok"], true, "{polling}");

    let default = load(
        &topo,
        &[
            "--url",
            &url(3000),
            "--clients",
            &clients,
            "--rounds",
            "3",
            "--transport",
            "default",
            "--local-address-base",
            &base,
            "--broadcast",
        ],
    );
    assert_clean(&default, "polling then websocket");
    assert_eq!(default["upgraded"], CLIENTS as u64, "{default}");
    assert_eq!(
        default["broadcast_received"], CLIENTS as u64,
        "broadcast through Redis: {default}"
    );
    assert_eq!(
        default["broadcast_workers"].as_array().map_or(0, Vec::len),
        3,
        "{default}"
    );

    // Through proxy mode: every connection from one address, the client in X-Forwarded-For.
    let proxied = load(
        &topo,
        &[
            "--url",
            &url(8080),
            "--clients",
            &clients,
            "--rounds",
            "3",
            "--transport",
            "default",
            "--header-xff",
            "--xff-base",
            &base,
        ],
    );
    assert_clean(&proxied, "proxy mode with X-Forwarded-For");
    assert_eq!(
        proxied["upgraded"], CLIENTS as u64,
        "every client upgrades to websocket through proxy mode: {proxied}"
    );
}

#[test]
fn socketio_survives_a_rolling_reload() {
    if !root_or_skip("socketio_survives_a_rolling_reload") {
        return;
    }
    require_example();
    let topo = Topology::build("sioreload", 0, CLIENTS).expect("topology");
    let redis = Redis::start(&topo.lb);
    let cluster = cluster(&topo, &redis, &["--drain-time", "500ms"]);
    let base = plan::client(0, false).to_string();
    let clients = CLIENTS.to_string();
    let path = topo.client.path();
    let url = url(3000);
    let args: Vec<String> = [
        "--url",
        &url,
        "--clients",
        &clients,
        "--rounds",
        "40",
        "--interval-ms",
        "200",
        "--reconnect",
        "--transport",
        "polling",
        "--local-address-base",
        &base,
        "--timeout-ms",
        "90000",
    ]
    .map(String::from)
    .to_vec();
    let runner = std::thread::spawn(move || run_load(&path, &args));
    std::thread::sleep(Duration::from_secs(3));
    let out = cluster.ctl(&sticky_bin(), &["cluster", "reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = runner.join().expect("load thread");
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(n("failed_clients"), 0, "{report}");
    assert_eq!(n("failed_handshakes"), 0, "{report}");
    assert!(
        n("reconnects") > 0,
        "the reload restarted no worker a client was on: {report}"
    );
}
