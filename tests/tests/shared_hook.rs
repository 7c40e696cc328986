//! sticky shares its tc hook: two instances with different VIPs on one interface both serve,
//! and a third-party tc program attached after sticky still sees the traffic that is not
//! sticky's. With tcx a program's `TC_ACT_OK` ends the chain, so "not mine" must return
//! `TCX_NEXT`; before that fix the second instance's VIP got `Connection refused`.

mod common;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use common::sticky_bin;
use sticky_tests::{HttpBackend, StickyProcess, Topology, get_once, plan, root_or_skip};

const CLIENTS: usize = 40;
const PORT_B: u16 = 5201;
const BACKEND_PORT_B: u16 = 8081;

/// Packets the legacy tc filter on `cli0` ingress has counted (`tc -s`: "Sent N bytes M pkt").
fn filter_packets(topo: &Topology) -> u64 {
    let out = topo
        .lb
        .exec("tc", &["-s", "filter", "show", "dev", "cli0", "ingress"])
        .expect("tc -s filter show");
    out.split("Sent ")
        .skip(1)
        .filter_map(|s| {
            let mut words = s.split_whitespace();
            let _bytes = words.next()?;
            let _unit = words.next()?;
            words.next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or_else(|| panic!("no packet count in `tc -s filter show`:\n{out}"))
}

#[test]
fn two_instances_and_a_third_party_program_share_one_interface() {
    if !root_or_skip("two_instances_and_a_third_party_program_share_one_interface") {
        return;
    }
    let topo = Topology::build("hook", 2, CLIENTS).expect("topology");
    let _servers_a = topo.start_backends().expect("backends for instance a");
    let _servers_b: Vec<HttpBackend> = topo
        .backends
        .iter()
        .enumerate()
        .map(|(k, ns)| {
            let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), BACKEND_PORT_B);
            HttpBackend::start(ns, bind, &format!("b{k}")).expect("backend for instance b")
        })
        .collect();

    // A third-party classifier behind sticky: legacy tc runs after every tcx program, and only
    // when the last of them said "next". It mirrors what it sees to a spare veth, and its
    // action's statistics count those packets.
    topo.lb
        .ip(&[
            "link", "add", "mir0", "type", "veth", "peer", "name", "mir1",
        ])
        .expect("spare veth");
    for dev in ["mir0", "mir1"] {
        topo.lb
            .ip(&["link", "set", dev, "up"])
            .expect("spare veth up");
    }
    topo.lb
        .mirror_filter("cli0", "mir0")
        .expect("third-party tc filter");

    let instance = |tag: &str| format!("{}{tag}", &topo.lb.name[..topo.lb.name.len().min(30)]);
    let mut args_a = topo.sticky_args_on(false, plan::VIP_PORT, plan::BACKEND_PORT);
    args_a.extend(["--instance".into(), instance("a")]);
    let mut args_b = topo.sticky_args_on(false, PORT_B, BACKEND_PORT_B);
    args_b.extend(["--instance".into(), instance("b")]);
    let _a = StickyProcess::start(&sticky_bin(), &topo.lb, &args_a).expect("instance a");
    let _b = StickyProcess::start(&sticky_bin(), &topo.lb, &args_b).expect("instance b");

    let vip_a = SocketAddr::new(plan::vip(false), plan::VIP_PORT);
    let vip_b = SocketAddr::new(plan::vip(false), PORT_B);
    let answers = topo
        .client
        .run(|| {
            (0..CLIENTS)
                .map(|i| {
                    let src = plan::client(i, false);
                    let a = get_once(src, vip_a).map_err(|e| format!("{src} -> {vip_a}: {e:#}"));
                    let b = get_once(src, vip_b).map_err(|e| format!("{src} -> {vip_b}: {e:#}"));
                    (a, b)
                })
                .collect::<Vec<_>>()
        })
        .expect("clients");
    for (i, (a, b)) in answers.into_iter().enumerate() {
        let a = a.unwrap_or_else(|e| panic!("instance a did not serve client {i}: {e}"));
        let b = b.unwrap_or_else(|e| panic!("instance b did not serve client {i}: {e}"));
        assert!(
            a.backend.starts_with("be"),
            "instance a answered by {}",
            a.backend
        );
        assert!(
            b.backend.starts_with('b') && !b.backend.starts_with("be"),
            "instance b answered by {}",
            b.backend
        );
        assert_eq!(a.seen_client, plan::client(i, false));
        assert_eq!(b.seen_client, plan::client(i, false));
    }

    // Traffic for neither VIP reaches the program attached after both instances.
    let before = filter_packets(&topo);
    let target = SocketAddr::new(plan::lb_client_side(false), 9);
    let attempts = 20;
    topo.client
        .run(|| {
            for _ in 0..attempts {
                // Nothing listens on port 9: the SYN still crosses the hook, a reset comes back.
                let _ = TcpStream::connect_timeout(&target, Duration::from_millis(500));
            }
        })
        .expect("non-VIP connects");
    let seen = filter_packets(&topo) - before;
    assert!(
        seen >= attempts,
        "the third-party program saw {seen} of at least {attempts} non-VIP packets: sticky \
         ended the tc chain for traffic that is not its own"
    );
}
