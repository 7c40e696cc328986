//! NAT replies through any node (`--replies-any-node`): two sticky nodes with one
//! configuration; client packets reach the backend through node 1, the backend's replies leave
//! through node 2 (its default route), which never saw the flows. Node 2 rewrites them by the
//! backend's address alone, so connections work; without the option they cannot (the check
//! that the topology really sends replies the other way).
//!
//! ```text
//! client:eth0 ── n1:cli0   n1:be0 ── backend:eth0      (client → VIP)
//! client:eth1 ── n2:cli0   n2:be0 ── backend:eth1      (backend → client, default route)
//! ```

mod common;

use std::net::{IpAddr, SocketAddr};

use common::sticky_bin;
use sticky_tests::{
    Netns, StickyProcess, clients::get_once, root_or_skip, servers::HttpBackend, unique_name, veth,
};

const CLIENT: &str = "10.81.1.2";
const VIP: &str = "10.81.100.1:80";
const BACKEND: &str = "10.81.10.2:8080";
const CONNECTIONS: usize = 50;

struct Rig {
    // Dropped last: processes first.
    client: Netns,
    n1: Netns,
    n2: Netns,
    backend: Netns,
}

fn rig() -> Rig {
    let ns = |tag: &str| Netns::create(&unique_name(tag)).expect("namespace");
    let r = Rig {
        client: ns("anyc"),
        n1: ns("any1"),
        n2: ns("any2"),
        backend: ns("anyb"),
    };
    veth(&r.client, "eth0", &r.n1, "cli0").expect("veth");
    veth(&r.client, "eth1", &r.n2, "cli0").expect("veth");
    veth(&r.n1, "be0", &r.backend, "eth0").expect("veth");
    veth(&r.n2, "be0", &r.backend, "eth1").expect("veth");
    // Replies arrive on another interface than their route's: no reverse-path filter.
    let no_rp = |n: &Netns, devs: &[&str]| {
        for dev in ["all", "default"].iter().chain(devs) {
            n.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")
                .expect("rp_filter");
        }
    };
    r.client
        .ip_batch(
            "addr add 10.81.1.2/24 dev eth0\n\
             addr add 10.81.2.2/24 dev eth1\n\
             route add 10.81.100.0/24 via 10.81.1.1 dev eth0\n",
        )
        .expect("client addresses");
    no_rp(&r.client, &["eth0", "eth1"]);
    for (n, k) in [(&r.n1, 1), (&r.n2, 2)] {
        n.ip_batch(&format!(
            "addr add 10.81.{k}.1/24 dev cli0\n\
             addr add 10.81.100.1/32 dev cli0\n\
             addr add 10.81.{k}0.1/24 dev be0\n"
        ))
        .expect("node addresses");
        n.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
        no_rp(n, &["cli0", "be0"]);
    }
    r.n2.ip_batch(
        "route add 10.81.1.0/24 via 10.81.2.2 dev cli0\n\
         route add 10.81.10.0/24 via 10.81.20.2 dev be0\n",
    )
    .expect("node 2 routes to the clients and the backend");
    r.backend
        .ip_batch(
            "addr add 10.81.10.2/24 dev eth0\n\
             addr add 10.81.20.2/24 dev eth1\n\
             route add default via 10.81.20.1 dev eth1\n",
        )
        .expect("backend addresses");
    no_rp(&r.backend, &["eth0", "eth1"]);
    r
}

fn node(ns: &Netns, any_node: bool) -> StickyProcess {
    let mut args: Vec<String> = ["--iface", "cli0", "--vip", VIP, "--backend", BACKEND]
        .map(String::from)
        .to_vec();
    if any_node {
        args.push("--replies-any-node".into());
    }
    let p = StickyProcess::start(&sticky_bin(), ns, &args).expect("sticky run");
    if any_node {
        let status = p.ctl(&sticky_bin(), &["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.contains("replies through any node"),
            "status does not say so: {text}"
        );
    }
    p
}

#[test]
fn replies_through_another_node() {
    if !root_or_skip("replies_through_another_node") {
        return;
    }
    let r = rig();
    let bind: SocketAddr = BACKEND.parse().expect("address");
    let _server = HttpBackend::start(&r.backend, bind, "be0").expect("backend");
    let client: IpAddr = CLIENT.parse().expect("address");
    let vip: SocketAddr = VIP.parse().expect("address");
    let n1 = node(&r.n1, true);
    // Nothing announced, nothing to drain: refused, said so.
    let out = n1.ctl(&sticky_bin(), &["node", "drain"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("announces nothing to drain"),
        "node drain without --announce-table: {out:?}"
    );
    // Node 2 as it would be without the option: the replies leave with the backend's address
    // and the client never completes a connection.
    {
        let _n2 = node(&r.n2, false);
        let refused = r
            .client
            .run(move || get_once(client, vip))
            .expect("client namespace");
        assert!(
            refused.is_err(),
            "a connection worked without --replies-any-node on the reply path: the replies do \
             not go through node 2"
        );
    }
    let _n2 = node(&r.n2, true);
    let answers = r
        .client
        .run(move || {
            (0..CONNECTIONS)
                .map(|_| get_once(client, vip))
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    for a in answers {
        let a = a.unwrap_or_else(|e| panic!("{client} -> {vip} through node 2's replies: {e:#}"));
        assert_eq!(a.backend, "be0");
        assert_eq!(a.seen_client, client, "the backend saw the real client");
    }
}
