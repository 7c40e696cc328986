//! Traffic policy through the kernel path with real clients in namespaces: affinity by
//! client prefix (`--affinity-prefix`).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use common::{assign, predicted, sticky_bin};
use sticky_common::{Addr16, client_key, maps::Settings};
use sticky_tests::{StickyProcess, Topology, plan, root_or_skip};

/// 500 clients: two IPv4 /24s (250 each), one IPv6 /64.
const CLIENTS: usize = 500;

fn key(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    let settings = Settings {
        affinity_prefix_v4: v4,
        affinity_prefix_v6: v6,
        ..Settings::default()
    };
    client_key(&Addr16::from_ip(ip), &settings).to_ip()
}

/// Backends by client key: panics unless every client of a key reached one backend.
fn by_prefix(
    assignment: &BTreeMap<usize, String>,
    v6: bool,
    v4len: u8,
    v6len: u8,
) -> BTreeMap<IpAddr, String> {
    let mut groups: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for (&i, b) in assignment {
        let k = key(plan::client(i, v6), v4len, v6len);
        groups.entry(k).or_default().insert(b.clone());
    }
    groups
        .into_iter()
        .map(|(k, set)| {
            assert_eq!(set.len(), 1, "clients of {k} split over {set:?}");
            (k, set.into_iter().next().expect("one backend"))
        })
        .collect()
}

fn lookup_reason(daemon: &StickyProcess, ip: IpAddr) -> String {
    let out = common::ok(
        &daemon.ctl(&sticky_bin(), &["lookup", &ip.to_string(), "--json"]),
        "lookup",
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("lookup JSON");
    v["reason"].as_str().expect("reason").to_string()
}

fn start(topo: &Topology, v6: bool, prefix: &str) -> StickyProcess {
    let mut args = topo.sticky_args(v6);
    args.extend(["--affinity-prefix".into(), prefix.into()]);
    StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky")
}

/// A client that changes address within its /24 (IPv4) or /64 (IPv6) keeps its backend: the
/// first address's connection makes the whole prefix affine, and every other address of it
/// lands on the same backend.
#[test]
fn clients_rotating_within_a_prefix_stay_on_one_backend() {
    if !root_or_skip("clients_rotating_within_a_prefix_stay_on_one_backend") {
        return;
    }
    let topo = Topology::build("pfx", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    for v6 in [false, true] {
        let daemon = start(&topo, v6, "24,64");
        let first = assign(&topo, [0usize, 250].into_iter(), 1, v6);
        for i in [0usize, 250] {
            let other = plan::client(i + 249, v6);
            assert_eq!(
                lookup_reason(&daemon, other),
                "affinity",
                "v6={v6}: {other} shares {}'s prefix, its affinity",
                plan::client(i, v6)
            );
        }
        let all = assign(&topo, 0..CLIENTS, 2, v6);
        let groups = by_prefix(&all, v6, 24, 64);
        let expected = if v6 { 1 } else { 2 };
        assert_eq!(groups.len(), expected, "v6={v6}: {groups:?}");
        for (i, b) in &first {
            assert_eq!(&all[i], b, "v6={v6}: client {i} moved");
        }
        let status = common::status(&daemon);
        assert_eq!(status.affinity_prefix, "24,64");
        assert_eq!(
            status.affinity_entries, expected as u64,
            "v6={v6}: one affinity entry per prefix"
        );
        daemon.stop().expect("stop sticky");
    }
}

/// Keys spread over the backends as the table says: each /28 of the clients on one backend,
/// the one userspace computes for the key, and every backend holding a fair part of them.
#[test]
fn prefixes_spread_as_the_table_says() {
    if !root_or_skip("prefixes_spread_as_the_table_says") {
        return;
    }
    let topo = Topology::build("pfxs", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon = start(&topo, false, "28,128");
    let all = assign(&topo, 0..CLIENTS, 1, false);
    let groups = by_prefix(&all, false, 28, 128);
    assert!(groups.len() >= 30, "{} /28s", groups.len());
    let backends: Vec<_> = (0..3)
        .map(|k| (k, plan::backend(k, false).0, plan::BACKEND_PORT))
        .collect();
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, b) in &groups {
        assert_eq!(
            *b,
            predicted(&backends, *k, 0),
            "kernel and userspace disagree for {k}"
        );
        *per_backend.entry(b).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for n in per_backend.values() {
        assert!(
            *n >= groups.len() / 6,
            "uneven spread of prefixes {per_backend:?}"
        );
    }
    daemon.stop().expect("stop sticky");
}
