//! Direct server return end to end on the one-arm topology ([`sticky_tests::dsr`]): the
//! balancer (`sticky run --forward dsr`, on tc and on native XDP) encapsulates client packets
//! towards backends configured only by `sticky backend-setup`; the backends answer the clients
//! through the router, never through the balancer. Judged on what clients see (stickiness,
//! spread, real client addresses, byte-exact bulk transfers over a 1500-byte underlay,
//! socket.io over WebSocket) and on the balancer's interface counters.

mod common;

use std::{
    io::{BufRead, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    DsrHook as Hook, assert_socketio_clean, assign_via, run_load, socketio_example, spread,
    sticky_bin,
};
use socket2::{Domain, Socket, Type};
use sticky_tests::{
    DsrTopology, Netns, StickyProcess, dsr, plan, root_or_skip, servers::download_byte,
};

const CLIENTS: usize = 200;
const CONNS: usize = 3;
const BACKENDS: usize = 3;
const BULK: usize = 10 * 1024 * 1024;

fn topology(tag: &str) -> DsrTopology {
    DsrTopology::build(tag, BACKENDS, CLIENTS, &sticky_bin()).expect("DSR topology")
}

/// `sticky run --forward dsr` on the balancer for `VIP:port`, backends on the same port.
fn balancer(topo: &DsrTopology, v6: bool, port: u16, hook: Hook) -> StickyProcess {
    let mut args = topo.sticky_args(v6, port);
    args.extend(["--forward", "dsr", "--xdp", hook.xdp()].map(String::from));
    StickyProcess::start(&sticky_bin(), &topo.lb, &args)
        .unwrap_or_else(|e| panic!("sticky run --forward dsr ({hook:?}, v6 {v6}): {e:#}"))
}

fn sticky_and_spread(hook: Hook, v6: bool) {
    let topo = topology(&format!("dsrs{}", u8::from(v6)));
    let _servers = topo.start_servers().expect("backend servers");
    let _lb = balancer(&topo, v6, dsr::VIP_PORT, hook);
    let vip = topo.vip(v6, dsr::VIP_PORT);
    // Every client's connections on one backend that saw the client's own address.
    let assignment = assign_via(&topo.client, vip, 0..CLIENTS, CONNS, v6);
    assert_eq!(assignment.len(), CLIENTS);
    let spread = spread(&assignment);
    assert_eq!(
        spread.len(),
        BACKENDS,
        "every backend gets clients ({hook:?}, v6 {v6}): {spread:?}"
    );
}

#[test]
fn dsr_tc_v4_sticky_and_spread() {
    if root_or_skip("dsr_tc_v4_sticky_and_spread") {
        sticky_and_spread(Hook::Tc, false);
    }
}

#[test]
fn dsr_tc_v6_sticky_and_spread() {
    if root_or_skip("dsr_tc_v6_sticky_and_spread") {
        sticky_and_spread(Hook::Tc, true);
    }
}

#[test]
fn dsr_xdp_v4_sticky_and_spread() {
    if root_or_skip("dsr_xdp_v4_sticky_and_spread") {
        sticky_and_spread(Hook::Xdp, false);
    }
}

#[test]
fn dsr_xdp_v6_sticky_and_spread() {
    if root_or_skip("dsr_xdp_v6_sticky_and_spread") {
        sticky_and_spread(Hook::Xdp, true);
    }
}

/// A connection from client 0 to `vip`, in the client namespace.
fn connect(topo: &DsrTopology, v6: bool, vip: SocketAddr) -> TcpStream {
    let src = plan::client(0, v6);
    topo.client
        .run(|| {
            let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
            let s = Socket::new(domain, Type::STREAM, None)?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.connect_timeout(&vip.into(), Duration::from_secs(5))?;
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("client namespace")
        .unwrap_or_else(|e| panic!("connect {src} -> {vip}: {e}"))
}

/// Reads a response head; returns its Content-Length.
fn read_head(reader: &mut impl BufRead) -> usize {
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "status {status:?}");
    let mut len = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    len.expect("content-length")
}

/// 10 MB up (echoed back) and 10 MB down, byte-exact, over the 1500-byte underlay (the MSS
/// backend-setup clamps makes every encapsulated segment fit); the download's bytes never pass
/// the balancer.
fn bulk(hook: Hook, v6: bool) {
    let topo = topology(&format!("dsrb{}", u8::from(v6)));
    let _servers = topo.start_servers().expect("backend servers");
    let _lb = balancer(&topo, v6, dsr::ECHO_PORT, hook);
    let vip = topo.vip(v6, dsr::ECHO_PORT);

    // Upload, echoed: the body goes through the balancer encapsulated.
    let stream = connect(&topo, v6, vip);
    let mut writer = stream.try_clone().expect("clone");
    let body: Vec<u8> = (0..BULK).map(|i| (i * 7 % 253) as u8).collect();
    let sender = {
        let body = body.clone();
        std::thread::spawn(move || {
            write!(
                writer,
                "POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .and_then(|()| writer.write_all(&body))
            .expect("upload")
        })
    };
    let mut reader = BufReader::new(stream);
    assert_eq!(read_head(&mut reader), BULK);
    let mut echoed = vec![0u8; BULK];
    reader.read_exact(&mut echoed).expect("echo of the upload");
    sender.join().expect("sender");
    assert!(
        echoed == body,
        "the 10 MB upload came back byte-exact ({hook:?}, v6 {v6})"
    );

    // Download: only the client's ACKs pass the balancer.
    let before = topo.balancer_bytes().expect("counters");
    let mut stream = connect(&topo, v6, vip);
    write!(stream, "GET /download/{BULK} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut reader = BufReader::new(stream);
    assert_eq!(read_head(&mut reader), BULK);
    let mut got = vec![0u8; BULK];
    reader.read_exact(&mut got).expect("download");
    let wrong = got
        .iter()
        .enumerate()
        .position(|(i, b)| *b != download_byte(i as u64));
    assert_eq!(wrong, None, "download byte-exact ({hook:?}, v6 {v6})");
    let after = topo.balancer_bytes().expect("counters");
    let tx = after.tx - before.tx;
    assert!(
        tx < (BULK / 10) as u64,
        "the download passed the balancer: its tx grew by {tx} bytes for {BULK} downloaded"
    );
}

#[test]
fn dsr_tc_v4_bulk_both_ways() {
    if root_or_skip("dsr_tc_v4_bulk_both_ways") {
        bulk(Hook::Tc, false);
    }
}

#[test]
fn dsr_tc_v6_bulk_both_ways() {
    if root_or_skip("dsr_tc_v6_bulk_both_ways") {
        bulk(Hook::Tc, true);
    }
}

#[test]
fn dsr_xdp_v4_bulk_both_ways() {
    if root_or_skip("dsr_xdp_v4_bulk_both_ways") {
        bulk(Hook::Xdp, false);
    }
}

#[test]
fn dsr_xdp_v6_bulk_both_ways() {
    if root_or_skip("dsr_xdp_v6_bulk_both_ways") {
        bulk(Hook::Xdp, true);
    }
}

/// A socket.io worker (examples/socketio/app.js, in-memory adapter) on a backend, stopped by
/// PID on drop.
struct Worker(Child);

impl Worker {
    fn start(ns: &Netns, index: usize, port: u16) -> Self {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg("node")
            .arg(socketio_example().join("app.js"))
            .env("PORT", port.to_string())
            .env("HOST", "::")
            .env("STICKY_WORKER_INDEX", index.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node app.js");
        let up = || {
            ns.run(move || TcpStream::connect(("::1", port)).is_ok())
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !up() {
            assert!(std::time::Instant::now() < deadline, "app.js did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn socketio(hook: Hook) {
    let modules = socketio_example().join("node_modules/socket.io");
    assert!(
        modules.exists(),
        "{} is missing: `cargo xtask test` runs `npm ci` in examples/socketio",
        modules.display()
    );
    const PORT: u16 = 3000;
    let topo = topology("dsrsio");
    let _workers: Vec<Worker> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(k, ns)| Worker::start(ns, k, PORT))
        .collect();
    let _lb = balancer(&topo, false, PORT, hook);
    let args: Vec<String> = [
        "--url",
        &format!("http://{}", topo.vip(false, PORT)),
        "--clients",
        &CLIENTS.to_string(),
        "--rounds",
        "3",
        "--transport",
        "default",
        "--local-address-base",
        &plan::client(0, false).to_string(),
    ]
    .map(String::from)
    .to_vec();
    let report = run_load(&topo.client.path(), &args);
    let what = format!("socket.io over DSR ({hook:?})");
    assert_socketio_clean(&report, CLIENTS, &what);
    assert_eq!(report["upgraded"], CLIENTS as u64, "{what}: {report}");
    assert_eq!(report["client_addresses_seen_ok"], true, "{what}: {report}");
}

#[test]
fn dsr_tc_socketio_websocket() {
    if root_or_skip("dsr_tc_socketio_websocket") {
        socketio(Hook::Tc);
    }
}

#[test]
fn dsr_xdp_socketio_websocket() {
    if root_or_skip("dsr_xdp_socketio_websocket") {
        socketio(Hook::Xdp);
    }
}

/// A connection to the echo backend, upgraded: from now on it echoes what it is sent.
fn echo_connection(topo: &DsrTopology, vip: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let mut stream = connect(topo, false, vip);
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
    )
    .expect("upgrade");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 101"), "{line:?}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).expect("header");
        assert!(!line.is_empty(), "closed in the head");
    }
    (stream, reader)
}

/// `n` bytes there and back on an echo connection.
fn echo_round(conn: &mut (TcpStream, BufReader<TcpStream>), n: usize) {
    let sent: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    conn.0.write_all(&sent).expect("send");
    let mut got = vec![0u8; n];
    conn.1.read_exact(&mut got).expect("echo");
    assert!(got == sent, "echoed bytes differ");
}

struct PinsGuard(sticky::datapath::Pins);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// `sticky stop --keep` and a new daemon (both hooks pinned and adopted): a connection open
/// across the restart lives on. Between the two, a NAT daemon for the same instance is refused
/// with the reason, and changes nothing.
#[test]
fn dsr_restart_keeps_connections_and_refuses_the_other_mode() {
    if !root_or_skip("dsr_restart_keeps_connections_and_refuses_the_other_mode") {
        return;
    }
    let topo = topology("dsrr");
    let _servers = topo.start_servers().expect("backend servers");
    let daemon = balancer(&topo, false, dsr::ECHO_PORT, Hook::Xdp);
    let vip = topo.vip(false, dsr::ECHO_PORT);
    let mut conn = echo_connection(&topo, vip);
    echo_round(&mut conn, 1000);
    let instance = daemon.instance.clone();
    // Pins outlive a daemon stopped with --keep: removed however the test ends.
    let _pins = PinsGuard(sticky::datapath::Pins::for_instance(&instance));
    let out = daemon.ctl(&sticky_bin(), &["stop", "--keep"]);
    assert!(out.status.success(), "stop --keep: {out:?}");
    assert!(daemon.wait_exit().expect("exit").success());
    // Still forwarded by the pinned programs with no daemon.
    echo_round(&mut conn, 1000);

    let mut nat = vec!["run".to_string()];
    nat.extend(topo.sticky_args(false, dsr::ECHO_PORT));
    nat.extend(["--instance".to_string(), instance.clone()]);
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.lb.path()))
        .arg(sticky_bin())
        .args(&nat)
        .stdout(Stdio::null())
        .output()
        .expect("run sticky");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a NAT daemon started over DSR pins");
    assert!(err.contains("made with --forward dsr"), "{err}");
    echo_round(&mut conn, 1000);

    let daemon = balancer(&topo, false, dsr::ECHO_PORT, Hook::Xdp);
    assert!(
        daemon.ready_line.contains("adopted"),
        "{}",
        daemon.ready_line
    );
    echo_round(&mut conn, 50_000);
    let status = daemon.ctl(&sticky_bin(), &["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("forwarding dsr (eth0 xdp native)"), "{text}");
    assert!(daemon.stop().expect("stop").success());
}

/// Two DSR instances on one interface, one VIP port each, both asking for XDP where it is
/// available: the first gets native XDP, the second (an interface holds one XDP program) runs
/// on tc behind it and says so; each instance's clients reach its backends, sticky and
/// spread, the other's traffic passing through untouched.
#[test]
fn dsr_two_instances_share_one_interface() {
    if !root_or_skip("dsr_two_instances_share_one_interface") {
        return;
    }
    let topo = topology("dsr2");
    let _servers = topo.start_servers().expect("backend servers");
    let auto = |port: u16, instance: &str| {
        let mut args = topo.sticky_args(false, port);
        args.extend(
            ["--forward", "dsr", "--xdp", "auto", "--instance", instance].map(String::from),
        );
        StickyProcess::start(&sticky_bin(), &topo.lb, &args)
            .unwrap_or_else(|e| panic!("sticky run --forward dsr --instance {instance}: {e:#}"))
    };
    let first = auto(dsr::VIP_PORT, &format!("{}-a", topo.lb.name));
    let second = auto(dsr::ECHO_PORT, &format!("{}-b", topo.lb.name));
    let status = |p: &StickyProcess| {
        String::from_utf8_lossy(&p.ctl(&sticky_bin(), &["status"]).stdout).into_owned()
    };
    let (a, b) = (status(&first), status(&second));
    assert!(a.contains("forwarding dsr (eth0 xdp native)"), "{a}");
    assert!(b.contains("forwarding dsr (eth0 tc)"), "{b}");

    let assignment = assign_via(
        &topo.client,
        topo.vip(false, dsr::VIP_PORT),
        0..CLIENTS,
        2,
        false,
    );
    assert_eq!(
        spread(&assignment).len(),
        BACKENDS,
        "the first instance spreads"
    );
    let mut conn = echo_connection(&topo, topo.vip(false, dsr::ECHO_PORT));
    echo_round(&mut conn, 10_000);
    assert!(second.stop().expect("stop").success());
    assert!(first.stop().expect("stop").success());
}
