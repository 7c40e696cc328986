//! UDP VIPs end to end, NAT and DSR (tc and native XDP), IPv4 and IPv6: 200 clients from
//! their own addresses exchange request/response datagrams from several sockets each. Judged
//! on what clients see: every answer comes from the VIP (a connected socket accepts nothing
//! else), every client stays on one backend which saw its real address, every backend gets
//! clients; a client's UDP goes where its TCP goes; an idle UDP flow ends after
//! `--udp-timeout` and its next datagram is balanced afresh.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{DsrHook as Hook, assign_via, spread, sticky_bin};
use socket2::{Domain, Socket, Type};
use sticky_tests::{
    DsrTopology, Netns, StickyProcess, Topology, dsr, plan, root_or_skip, servers::UdpBackend,
};

const CLIENTS: usize = 200;
/// Sockets (source ports: flows) per client, and datagrams on each.
const SOCKETS: usize = 2;
const DATAGRAMS: usize = 3;
const BACKENDS: usize = 3;
/// Sends of one request before giving up (a datagram may be lost; none should be).
const TRIES: usize = 3;

/// A UDP socket of `src` connected to `vip`: it receives only what comes from `vip`.
fn socket(src: IpAddr, vip: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if vip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::DGRAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect(&vip.into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(s)
}

/// One request/response: the answer's backend id and the client address it saw. A request
/// unanswered within a second is sent again; a late answer to an earlier send is skipped.
fn exchange(s: &UdpSocket, request: &str) -> Result<(String, IpAddr), String> {
    let mut buf = [0u8; 2048];
    for _ in 0..TRIES {
        s.send(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| format!("timeout: {e}"))?;
            let n = match s.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                // A port unreachable from the stack (nothing answered): say so.
                Err(e) => return Err(format!("recv: {e}")),
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let mut words = text.splitn(3, ' ');
            let (Some(id), Some(seen), Some(echo)) = (words.next(), words.next(), words.next())
            else {
                return Err(format!("answer {text:?}"));
            };
            if echo != request {
                // The answer to an earlier request of this socket, sent twice.
                continue;
            }
            let seen: IpAddr = seen.parse().map_err(|_| format!("answer {text:?}"))?;
            return Ok((id.to_string(), seen));
        }
    }
    Err(format!("no answer in {TRIES} tries"))
}

/// Every client `i` sends `DATAGRAMS` requests on each of `SOCKETS` sockets to `vip`. Panics
/// unless every answer came from one backend per client that saw the client's own address.
/// Returns client → backend id.
fn udp_assign(client: &Netns, vip: SocketAddr, v6: bool) -> BTreeMap<usize, String> {
    let answers = client
        .run(move || {
            let mut out = Vec::new();
            for i in 0..CLIENTS {
                let src = plan::client(i, v6);
                for k in 0..SOCKETS {
                    let s = socket(src, vip).unwrap_or_else(|e| panic!("socket {src}: {e}"));
                    for n in 0..DATAGRAMS {
                        let a = exchange(&s, &format!("c{i} s{k} n{n}"))
                            .unwrap_or_else(|e| panic!("udp {src} -> {vip}: {e}"));
                        out.push((i, a));
                    }
                }
            }
            out
        })
        .expect("client namespace");
    let mut per_client: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, (backend, seen)) in answers {
        let src = plan::client(i, v6);
        assert_eq!(seen, src, "backend {backend} saw the wrong client address");
        per_client.entry(i).or_default().insert(backend);
    }
    per_client
        .into_iter()
        .map(|(i, set)| {
            assert_eq!(
                set.len(),
                1,
                "client {} reached several backends: {set:?}",
                plan::client(i, v6)
            );
            (i, set.into_iter().next().expect("one"))
        })
        .collect()
}

fn udp_vip(addr: SocketAddr) -> String {
    format!("udp:{addr}")
}

/// NAT: a TCP and a UDP VIP on one address and port; backends serve HTTP and UDP on theirs.
fn nat(v6: bool) {
    let topo =
        Topology::build(&format!("udpn{}", u8::from(v6)), BACKENDS, CLIENTS).expect("topology");
    let _http = topo.start_backends().expect("http backends");
    let _udp: Vec<UdpBackend> = (topo.backends.iter().enumerate())
        .map(|(k, ns)| {
            let any = SocketAddr::new(plan::backend(k, v6).0, plan::BACKEND_PORT);
            UdpBackend::start(ns, any, &format!("be{k}")).expect("udp backend")
        })
        .collect();
    let vip = topo.vip(v6);
    let mut args = topo.sticky_args(v6);
    args.extend(["--vip".to_string(), udp_vip(vip)]);
    let _lb = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky run");
    let udp = udp_assign(&topo.client, vip, v6);
    let tcp = assign_via(&topo.client, vip, 0..CLIENTS, 1, v6);
    let spread = spread(&udp);
    assert_eq!(
        spread.len(),
        BACKENDS,
        "every backend gets UDP clients: {spread:?}"
    );
    let apart: Vec<_> = (0..CLIENTS).filter(|i| udp[i] != tcp[i]).collect();
    assert!(
        apart.is_empty(),
        "clients whose UDP and TCP went to different backends: {:?}",
        apart
            .iter()
            .map(|i| (i, &udp[i], &tcp[i]))
            .collect::<Vec<_>>()
    );
}

#[test]
fn udp_nat_v4_sticky_spread_from_the_vip() {
    if root_or_skip("udp_nat_v4_sticky_spread_from_the_vip") {
        nat(false);
    }
}

#[test]
fn udp_nat_v6_sticky_spread_from_the_vip() {
    if root_or_skip("udp_nat_v6_sticky_spread_from_the_vip") {
        nat(true);
    }
}

/// An idle UDP flow ends: a client's flow to a removed backend keeps going there while it is
/// active (removal breaks no flow), and after `--udp-timeout` of silence its next datagram,
/// from the same socket, is balanced afresh onto a backend in service.
#[test]
fn udp_flow_ends_after_its_idle_timeout() {
    if !root_or_skip("udp_flow_ends_after_its_idle_timeout") {
        return;
    }
    const TIMEOUT: Duration = Duration::from_secs(5);
    let topo = Topology::build("udpt", BACKENDS, 1).expect("topology");
    let _udp: Vec<UdpBackend> = (topo.backends.iter().enumerate())
        .map(|(k, ns)| {
            let bind = SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT);
            UdpBackend::start(ns, bind, &format!("be{k}")).expect("udp backend")
        })
        .collect();
    let vip = topo.vip(false);
    let mut args = vec![
        "--iface".to_string(),
        "cli0".into(),
        "--vip".into(),
        udp_vip(vip),
    ];
    for k in 0..BACKENDS {
        args.push("--backend".into());
        args.push(SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT).to_string());
    }
    args.extend(["--udp-timeout".to_string(), "5s".into()]);
    let lb = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky run");
    let src = plan::client(0, false);
    let s = topo
        .client
        .run(move || socket(src, vip))
        .expect("client namespace")
        .expect("socket");
    let send = |n: usize| {
        let (id, seen) = exchange(&s, &format!("n{n}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, src, "backend {id} saw the wrong client address");
        id
    };
    // Two datagrams: the flow is confirmed.
    let first = send(0);
    assert_eq!(send(1), first, "one flow, one backend");
    let k: usize = first[2..].parse().expect("be{k}");
    let removed = SocketAddr::new(plan::backend(k, false).0, plan::BACKEND_PORT).to_string();
    let out = lb.ctl(&sticky_bin(), &["backend", "remove", &removed]);
    assert!(out.status.success(), "remove {removed}: {out:?}");
    // Active: still there, every second for longer than the timeout.
    let start = Instant::now();
    let mut n = 2;
    while start.elapsed() < TIMEOUT + Duration::from_secs(2) {
        assert_eq!(
            send(n),
            first,
            "an active UDP flow left its removed backend after {:?}",
            start.elapsed()
        );
        n += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    // Idle past the timeout (a second of slack for the once-a-second refresh): balanced afresh.
    std::thread::sleep(TIMEOUT + Duration::from_millis(1500));
    let after = send(n);
    assert_ne!(
        after, first,
        "the idle flow still went to the removed backend after {TIMEOUT:?} of silence"
    );
    assert_eq!(send(n + 1), after, "the new flow stays on its backend");
}

/// DSR: backends (set up by `sticky backend-setup`) serve UDP on the VIP itself and answer
/// clients directly; HTTP on the same port is the health check.
fn dsr(hook: Hook, v6: bool) {
    let topo = DsrTopology::build(
        &format!("udpd{}{}", u8::from(v6), matches!(hook, Hook::Xdp) as u8),
        BACKENDS,
        CLIENTS,
        &sticky_bin(),
    )
    .expect("DSR topology");
    let port = dsr::VIP_PORT;
    let vip = topo.vip(v6, port);
    let _servers = topo.start_servers().expect("backend servers");
    let _udp: Vec<UdpBackend> = (topo.backends.iter().enumerate())
        .map(|(k, ns)| UdpBackend::start(ns, vip, &format!("be{k}")).expect("udp backend"))
        .collect();
    let mut args = vec!["--iface".to_string(), dsr::BALANCER_IF.into()];
    args.extend(["--vip".to_string(), udp_vip(vip)]);
    for k in 0..BACKENDS {
        args.push("--backend".into());
        args.push(SocketAddr::new(plan::backend(k, v6).0, port).to_string());
    }
    args.extend(
        [
            "--forward",
            "dsr",
            "--xdp",
            hook.xdp(),
            "--health-check",
            "tcp",
        ]
        .map(String::from),
    );
    let _lb = StickyProcess::start(&sticky_bin(), &topo.lb, &args)
        .unwrap_or_else(|e| panic!("sticky run --forward dsr ({hook:?}, v6 {v6}): {e:#}"));
    let udp = udp_assign(&topo.client, vip, v6);
    let spread = spread(&udp);
    assert_eq!(
        spread.len(),
        BACKENDS,
        "every backend gets clients: {spread:?}"
    );
}

#[test]
fn udp_dsr_tc_v4() {
    if root_or_skip("udp_dsr_tc_v4") {
        dsr(Hook::Tc, false);
    }
}

#[test]
fn udp_dsr_tc_v6() {
    if root_or_skip("udp_dsr_tc_v6") {
        dsr(Hook::Tc, true);
    }
}

#[test]
fn udp_dsr_xdp_v4() {
    if root_or_skip("udp_dsr_xdp_v4") {
        dsr(Hook::Xdp, false);
    }
}

#[test]
fn udp_dsr_xdp_v6() {
    if root_or_skip("udp_dsr_xdp_v6") {
        dsr(Hook::Xdp, true);
    }
}
