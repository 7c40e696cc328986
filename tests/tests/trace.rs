//! `sticky trace` against a running daemon: a real client's connection shows up as a new flow
//! with its backend and reason, then its established packets and rewritten replies; with no
//! backend in service its SYNs show up as drops. Bad input gets a clear error.

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use common::{args_with, backend, ok, sticky_bin};
use sticky::datapath::Pins;
use sticky_common::trace::{TRACE, TraceTarget};
use sticky_tests::{HttpConn, Netns, StickyProcess, Topology, plan, root_or_skip};

/// A `sticky trace` child process, started once it says it traces.
struct Trace {
    child: Child,
}

impl Trace {
    fn start(ns: &Netns, instance: &str, args: &[&str]) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(sticky_bin())
            .arg("trace")
            .args(args)
            .args(["--instance", instance])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sticky trace");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.starts_with("tracing ") => {}
            other => {
                let _ = child.kill();
                panic!("sticky trace {args:?} did not start: {other:?}");
            }
        }
        Self { child }
    }

    /// Waits for it to end after its `--count` events; its output.
    fn output(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for sticky trace") {
                break status;
            }
            if Instant::now() > deadline {
                // SIGINT, as Ctrl-C: the trace must still clear itself.
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
                break self.child.wait().expect("wait for sticky trace");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read trace output");
        assert!(status.success(), "sticky trace: {status}; printed:\n{out}");
        out
    }
}

fn backend_addr(id: &str) -> SocketAddr {
    let k: usize = id.trim_start_matches("be").parse().expect("backend id");
    SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT)
}

#[test]
fn trace_follows_a_real_client() {
    if !root_or_skip("trace_follows_a_real_client") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("trace", 2, 2).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon =
        StickyProcess::start(&bin, &topo.lb, &args_with(&topo, &[0, 1], &[])).expect("sticky");
    let vip = topo.vip(false);
    let client = plan::client(0, false);

    // SYN, SYN-ACK, handshake ACK, the first request and its answer: at least six events.
    let trace = Trace::start(
        &topo.lb,
        &daemon.instance,
        &[&client.to_string(), "--count", "6"],
    );
    let answer = topo
        .client
        .run(|| {
            let mut conn = HttpConn::open(client, vip, Duration::from_secs(3))?;
            let first = conn.get(false)?;
            conn.get(true)?;
            anyhow::Ok(first)
        })
        .expect("client namespace")
        .expect("two requests through the VIP");
    let out = trace.output(Duration::from_secs(10));
    println!("sticky trace {client} --count 6:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "--count 6 printed:\n{out}");
    let b = backend_addr(&answer.backend);
    let new_flow = format!("-> {vip} new flow -> {b} (table slot ");
    assert!(
        lines[0].contains(&format!("{client}:")) && lines[0].contains(&new_flow),
        "first line is not the new flow to {b}:\n{out}"
    );
    for want in [
        format!("reply rewritten {b} -> {vip} (handshake)"),
        format!("handshake confirmed -> {b}"),
        format!("established -> {b}"),
        format!("reply rewritten {b} -> {vip}"),
    ] {
        assert!(out.contains(&want), "no '{want}' in:\n{out}");
    }

    // Nothing in service: the client's SYN is dropped, and the trace says why.
    for k in 0..2 {
        ok(
            &daemon.ctl(&bin, &["backend", "remove", &backend(k)]),
            "backend remove",
        );
    }
    let trace = Trace::start(
        &topo.lb,
        &daemon.instance,
        &[&client.to_string(), "--count", "1"],
    );
    let refused = topo
        .client
        .run(|| HttpConn::open(client, vip, Duration::from_millis(500)).is_err())
        .expect("client namespace");
    assert!(refused, "connected with no backend in service");
    let out = trace.output(Duration::from_secs(10));
    println!("sticky trace {client} --count 1:\n{out}");
    assert!(
        out.contains(&format!("-> {vip} dropped: no backend in service")),
        "no drop in:\n{out}"
    );

    // One trace at a time; a wrong-family address is refused.
    let first = Trace::start(&topo.lb, &daemon.instance, &[&client.to_string()]);
    let second = daemon.ctl(&bin, &["trace", &plan::client(1, false).to_string()]);
    assert!(!second.status.success(), "a second trace started");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    drop(first.output(Duration::ZERO));
    let pin = Pins::for_instance(&daemon.instance).map(TRACE);
    let target: Array<MapData, TraceTarget> = Map::from_map_data(MapData::from_pin(&pin).unwrap())
        .and_then(Array::try_from)
        .expect("the pinned trace map");
    assert_eq!(
        target.get(&0, 0).expect("trace entry").enabled,
        0,
        "Ctrl-C left the trace enabled"
    );
    let v6 = daemon.ctl(&bin, &["trace", &plan::client(0, true).to_string()]);
    let stderr = String::from_utf8_lossy(&v6.stderr);
    assert!(
        !v6.status.success() && stderr.contains("is an IPv6 address"),
        "{stderr}"
    );
}

#[test]
fn trace_refuses_bad_input() {
    let bin = sticky_bin();
    let run = |args: &[&str]| {
        let out = Command::new(&bin)
            .arg("trace")
            .args(args)
            .output()
            .expect("run sticky trace");
        assert!(!out.status.success(), "sticky trace {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["notanaddress"]);
    assert!(
        err.contains("'notanaddress' is not an IPv4 or IPv6 address"),
        "{err}"
    );
    let err = run(&["198.18.1.1:80"]);
    assert!(err.contains("has a port"), "{err}");
    if root_or_skip("trace_refuses_bad_input: no running instance") {
        let err = run(&["198.18.1.1", "--instance", "no-such-instance-here"]);
        assert!(
            err.contains("no instance 'no-such-instance-here' runs here"),
            "{err}"
        );
    }
}
