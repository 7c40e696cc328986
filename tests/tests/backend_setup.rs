//! `sticky backend-setup` on a DSR backend namespace: setup → `--check` 0; each piece broken by
//! hand → `--check` names it with its exit code; idempotent; `--undo` removes what it added and
//! restores sysctls; bad input exits 2 and changes nothing. And a backend configured only by
//! backend-setup accepts an IPIP and an IP6IP6 SYN to its VIP and answers the client directly
//! (the encapsulating side is a raw socket in the balancer namespace, not sticky's eBPF).

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{packets::Pkt, sticky_bin};
use socket2::{Domain, Protocol, Socket, Type};
use sticky_tests::{DsrTopology, Netns, dsr, plan, root_or_skip, sh, unique_name, veth};

const TABLE: &str = "sticky_dsr";

/// Everything backend-setup may touch in `ns`, as text to compare.
fn snapshot(ns: &Netns) -> String {
    let mut out = String::new();
    out.push_str(&ns.ip(&["addr", "show", "dev", "lo"]).expect("lo"));
    out.push_str(
        &ns.exec("tc", &["qdisc", "show", "dev", "eth0"])
            .expect("qdisc"),
    );
    out.push_str(
        &ns.exec("tc", &["filter", "show", "dev", "eth0", "ingress"])
            .unwrap_or_default(),
    );
    out.push_str(&ns.exec("nft", &["list", "ruleset"]).expect("nft"));
    for key in [
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.eth0.rp_filter",
    ] {
        out.push_str(&ns.exec("sysctl", &[key]).expect("sysctl"));
    }
    out
}

fn stdout(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `--check` in backend 0: its exit code and output.
fn check(topo: &DsrTopology) -> (i32, String) {
    let out = topo
        .backend_setup_raw(0, &["--check"])
        .expect("run --check");
    (out.status.code().unwrap_or(-1), stdout(&out))
}

/// The state file of `ns`: keyed by its inode.
fn state_file(ns: &Netns) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(ns.path()).expect("netns").ino();
    std::path::PathBuf::from(format!("/run/sticky/backend-setup-net{ino}.json"))
}

fn state_files() -> Vec<String> {
    std::fs::read_dir("/run/sticky")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("backend-setup-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn check_names_each_missing_piece_with_its_code() {
    if !root_or_skip("check_names_each_missing_piece_with_its_code") {
        return;
    }
    let mut topo = DsrTopology::build("bsck", 1, 1, &sticky_bin()).expect("topology");
    let be = &topo.backends[0];
    let (code, text) = check(&topo);
    assert_eq!(code, 0, "after setup: {text}");
    assert_eq!(
        text.matches("ok ").count(),
        5,
        "five pieces, all ok: {text}"
    );

    // Idempotent: a second setup changes nothing.
    let once = snapshot(be);
    topo.backend_setup(0, &[]).expect("setup again");
    let be = &topo.backends[0];
    assert_eq!(snapshot(be), once, "setup twice = setup once");

    let vip4 = format!("{}/32", dsr::vip(false));
    type Break<'a> = Box<dyn Fn(&Netns) + 'a>;
    let cases: [(&str, u8, Break); 5] = [
        (
            "decap",
            20,
            Box::new(|ns| drop(ns.exec("tc", &["filter", "del", "dev", "eth0", "ingress"]))),
        ),
        (
            "vip",
            21,
            Box::new(|ns| drop(ns.ip(&["addr", "del", &vip4, "dev", "lo"]))),
        ),
        (
            "arp",
            22,
            Box::new(|ns| drop(ns.sysctl("net.ipv4.conf.all.arp_ignore", "0"))),
        ),
        (
            "rp-filter",
            23,
            Box::new(|ns| drop(ns.sysctl("net.ipv4.conf.eth0.rp_filter", "1"))),
        ),
        (
            "mss",
            24,
            Box::new(|ns| drop(ns.exec("nft", &["delete", "table", "inet", TABLE]))),
        ),
    ];
    for (name, want, break_it) in &cases {
        break_it(&topo.backends[0]);
        let (code, text) = check(&topo);
        assert_eq!(code, i32::from(*want), "{name} broken: {text}");
        let missing: Vec<&str> = text.lines().filter(|l| l.starts_with("MISSING")).collect();
        assert_eq!(missing.len(), 1, "only {name} is missing: {text}");
        assert!(missing[0].contains(name), "{name} named: {text}");
        topo.backend_setup(0, &[]).expect("repair");
        let (code, text) = check(&topo);
        assert_eq!(code, 0, "repaired {name}: {text}");
    }

    // Several missing: every one named, the first one's code.
    (cases[4].2)(&topo.backends[0]);
    (cases[1].2)(&topo.backends[0]);
    let (code, text) = check(&topo);
    assert_eq!(code, 21, "vip and mss missing: {text}");
    for name in ["vip", "mss"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("MISSING") && l.contains(name)),
            "{name} named: {text}"
        );
    }
}

#[test]
fn undo_removes_what_setup_added_and_restores_sysctls() {
    if !root_or_skip("undo_removes_what_setup_added_and_restores_sysctls") {
        return;
    }
    let mut topo = DsrTopology::build("bsundo", 1, 1, &sticky_bin()).expect("topology");
    let undo = |topo: &DsrTopology| {
        let out = topo.backend_setup_raw(0, &["--undo"]).expect("undo");
        assert!(out.status.success(), "undo: {}", stdout(&out));
    };
    undo(&topo);
    let pristine = snapshot(&topo.backends[0]);
    // Values that are not the defaults, and a VIP already there: undo must bring back these.
    let be = &topo.backends[0];
    be.sysctl("net.ipv4.conf.all.arp_announce", "1")
        .expect("sysctl");
    be.sysctl("net.ipv4.conf.eth0.rp_filter", "1")
        .expect("sysctl");
    be.ip(&[
        "addr",
        "add",
        &format!("{}/128", dsr::vip(true)),
        "dev",
        "lo",
    ])
    .expect("vip6 by hand");
    let before = snapshot(be);
    assert_ne!(before, pristine);
    topo.backend_setup(0, &[]).expect("setup");
    topo.backend_setup(0, &[]).expect("setup twice");
    let be = &topo.backends[0];
    let during = snapshot(be);
    assert!(during.contains("arp_announce = 2"), "{during}");
    assert!(during.contains("eth0.rp_filter = 2"), "{during}");
    assert!(during.contains("sticky_decap"), "{during}");
    assert!(during.contains(TABLE), "{during}");
    let state = state_file(&topo.backends[0]);
    assert!(state.exists(), "{} written", state.display());
    undo(&topo);
    assert!(!state.exists(), "{} removed by undo", state.display());
    let after = snapshot(&topo.backends[0]);
    assert_eq!(after, before, "undo restores what was there before setup");
    let (code, text) = check(&topo);
    assert_eq!(code, 20, "after undo: {text}");
    assert!(
        text.lines().filter(|l| l.starts_with("MISSING")).count() >= 3,
        "{text}"
    );
}

/// A namespace shaped like a backend (eth0 with a default route) that nothing configured.
fn bare_backend() -> (Netns, Netns) {
    let ns = Netns::create(&unique_name("bsbad")).expect("netns");
    let peer = Netns::create(&unique_name("bsbadp")).expect("netns");
    veth(&ns, "eth0", &peer, "eth0").expect("veth");
    ns.ip(&["addr", "add", "198.19.0.2/24", "dev", "eth0"])
        .expect("addr");
    ns.ip(&["route", "add", "default", "via", "198.19.0.1"])
        .expect("route");
    (ns, peer)
}

#[test]
fn bad_input_exits_2_and_changes_nothing() {
    if !root_or_skip("bad_input_exits_2_and_changes_nothing") {
        return;
    }
    let (ns, _peer) = bare_backend();
    let bin = sticky_bin().display().to_string();
    let vip = dsr::vip(false).to_string();
    let before = snapshot(&ns);
    let files = state_files();
    let rows: Vec<(&str, Vec<&str>)> = vec![
        ("no --vip", vec![]),
        ("not an address", vec!["--vip", "nope"]),
        ("an address with a port", vec!["--vip", "198.19.255.100:80"]),
        (
            "--check with --undo",
            vec!["--vip", &vip, "--check", "--undo"],
        ),
        (
            "MTU below IPv4's minimum",
            vec!["--vip", &vip, "--underlay-mtu", "100"],
        ),
    ];
    let nsenter = format!("--net={}", ns.path());
    for (what, args) in &rows {
        let mut full = vec![nsenter.as_str(), bin.as_str(), "backend-setup"];
        full.extend(args);
        let out = std::process::Command::new("nsenter")
            .args(&full)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stdout(&out));
        assert!(!out.stderr.is_empty(), "{what}: says why");
    }
    // Not root: a clear message, exit 2.
    let out = std::process::Command::new("nsenter")
        .args([
            &nsenter,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args([&bin, "backend-setup", "--vip", &vip])
        .output()
        .expect("run as nobody");
    assert_eq!(out.status.code(), Some(2), "not root: {}", stdout(&out));
    assert!(stdout(&out).contains("root"), "{}", stdout(&out));
    assert_eq!(snapshot(&ns), before, "bad input changed nothing");
    assert_eq!(state_files(), files, "no state file written");
}

/// The TCP header of a SYN-ACK from `from` to `to` read from raw socket `sock`, within 5 s.
fn await_synack(sock: &Socket, from: SocketAddr, to: SocketAddr) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while Instant::now() < deadline {
        let Ok((n, addr)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // SAFETY: recv_from initialised the first n bytes.
        let data: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // IPv4 raw sockets deliver the IP header, IPv6 ones only the payload.
        let tcp = if from.is_ipv4() {
            let ihl = usize::from(data[0] & 0x0f) * 4;
            data[ihl..].to_vec()
        } else {
            data
        };
        let src = addr.as_socket().map(|a| a.ip());
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        if src == Some(from.ip()) && sport == from.port() && dport == to.port() && tcp[13] == 0x12 {
            return Some(tcp);
        }
    }
    None
}

/// The MSS option of a TCP header.
fn mss(tcp: &[u8]) -> Option<u16> {
    let end = usize::from(tcp[12] >> 4) * 4;
    let mut i = 20;
    while i + 1 < end {
        match tcp[i] {
            0 => return None,
            1 => i += 1,
            2 => return Some(u16::from_be_bytes([tcp[i + 2], tcp[i + 3]])),
            _ => i += usize::from(tcp[i + 1].max(2)),
        }
    }
    None
}

#[test]
fn an_encapsulated_syn_reaches_the_vip_and_the_answer_goes_straight_to_the_client() {
    if !root_or_skip(
        "an_encapsulated_syn_reaches_the_vip_and_the_answer_goes_straight_to_the_client",
    ) {
        return;
    }
    let topo = DsrTopology::build("bsenc", 1, 1, &sticky_bin()).expect("topology");
    let _servers = topo.start_servers().expect("servers");
    for v6 in [false, true] {
        let client = SocketAddr::new(plan::client(0, v6), 40_000 + u16::from(v6));
        let vip = topo.vip(v6, dsr::VIP_PORT);
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let capture = topo
            .client
            .run(|| Socket::new(domain, Type::RAW, Some(Protocol::TCP)))
            .expect("client ns")
            .expect("raw TCP socket");
        capture
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        // The stand-in balancer: the inner SYN as the client sent it, inside IPIP/IP6IP6 to
        // the backend (the kernel writes the outer header of a raw socket of protocol 4/41).
        let inner = Pkt::syn(client, vip).build()[14..].to_vec();
        let backend = plan::backend(0, v6).0;
        topo.lb
            .run(|| {
                let proto = if v6 { 41 } else { 4 };
                let s = Socket::new(domain, Type::RAW, Some(Protocol::from(proto)))?;
                s.send_to(&inner, &SocketAddr::new(backend, 0).into())
            })
            .expect("lb ns")
            .expect("send encapsulated SYN");
        // Captured in the client namespace: the backend's route to the client is the router,
        // the balancer namespace is not on it.
        let tcp = await_synack(&capture, vip, client).unwrap_or_else(|| {
            panic!(
                "no SYN-ACK from {vip} to {client} (v6 {v6}); backend: {}",
                sh("ip", &["-n", &topo.backends[0].name, "-s", "link"]).unwrap_or_default()
            )
        });
        let want = if v6 { 1400 } else { 1440 };
        assert_eq!(
            mss(&tcp),
            Some(want),
            "MSS fits the encapsulation (v6 {v6})"
        );
    }
}
