//! `sticky_dsr` (tc) and `sticky_dsr_xdp` through BPF_PROG_TEST_RUN, in a namespace whose FIB
//! and neighbour table the programs really consult: a client packet to the VIP comes out
//! behind an outer IPv4 (protocol 4) or IPv6 (next header 41) header — every outer field and
//! the IPv4 header checksum recomputed here from the bytes — towards its backend, with the next
//! hop's MAC addresses, the inner packet byte for byte as it came in. A backend behind a
//! gateway gets the gateway's MAC; an unresolved neighbour goes to the kernel's neighbour
//! redirect (tc) or on to tc (XDP); a packet too big for the path and an unroutable backend
//! are dropped and counted; what is not ours (malformed, fragments, other protocols, other
//! addresses) comes out untouched and goes on. UDP datagrams to a UDP VIP are encapsulated
//! the same way (the inner datagram untouched, a zero checksum included); UDP to a TCP-only
//! port, TCP to a UDP-only port and malformed datagrams pass.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::{
    datapath::{SEED, TABLE_SIZE, TC_ACT_SHOT, TCX_NEXT, bpf_or_skip, sa},
    dsr_net::{
        self, BACKEND_MAC, GATEWAY_MAC, IF, NODE_MAC, NODE_V4, NODE_V6, TC_ACT_REDIRECT, XDP_DROP,
        XDP_PASS, XDP_REDIRECT, XDP_TX, encapsulated, namespace, tx_by_redirect,
    },
    packets::{ETH_LEN, Ext, Pkt, Shape, classify},
};
use sticky::{
    config::{Config, ForwardMode, Layer, XdpMode},
    datapath::Datapath,
};
use sticky_common::maps::{
    COUNTER_DSR, COUNTER_ENCAP_ERROR, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_TOO_BIG,
    COUNTER_UNHANDLED,
};

const VIP_V4: &str = "198.19.255.100:80";
const VIP_V6: &str = "[fd00:19:ff::100]:80";
/// UDP VIPs on the TCP VIPs' addresses, another port (DSR leaves ports as they are, so the
/// backend's port does not matter).
const UDP_VIP_V4: &str = "udp:198.19.255.100:53";
const UDP_VIP_V6: &str = "udp:[fd00:19:ff::100]:53";
const CLIENT_V4: &str = "198.18.1.1:40000";
const CLIENT_V6: &str = "[fd00:18::1]:40000";

/// A DSR datapath (tc and XDP programs loaded) for the TCP VIP `vip` with one backend, in the
/// current namespace.
fn load(vip: &str, backend: SocketAddr) -> Datapath {
    load_vips(&[vip], backend)
}

/// [`load`] for any VIPs (`udp:` for UDP).
fn load_vips(vips: &[&str], backend: SocketAddr) -> Datapath {
    let layer = Layer {
        iface: vec![IF.into()],
        vip: vips.iter().map(|v| v.to_string()).collect(),
        backend: vec![backend.to_string()],
        forward: Some(ForwardMode::Dsr),
        xdp: Some(XdpMode::Native),
        ..Layer::default()
    };
    let config = layer.validate().expect("DSR config");
    let config = Config {
        seed: SEED,
        table_size: TABLE_SIZE,
        ..config
    };
    let mut dp = Datapath::load(&config).expect("load the DSR datapath");
    let mut set = sticky::backends::BackendSet::default();
    let removed = set
        .reconcile(&common::datapath::specs(&[backend]))
        .expect("backend set");
    dp.apply(&set, &removed).expect("publish the backend");
    dp
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `encapsulated` towards `dst`, or the test fails saying why.
fn assert_encapsulated(
    input: &[u8],
    out: &[u8],
    src: IpAddr,
    dst: IpAddr,
    macs: Option<([u8; 6], [u8; 6])>,
) {
    match encapsulated(input, out, src, macs) {
        Ok(to) => assert_eq!(to, dst, "outer destination: the backend"),
        Err(why) => panic!("{why}\n  in:  {input:02x?}\n  out: {out:02x?}"),
    }
}

fn run_tc(dp: &mut Datapath, input: &[u8]) -> (i32, Vec<u8>) {
    dsr_net::run_tc(dp, input).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN sticky_dsr: {e}"))
}

fn run_xdp(dp: &mut Datapath, input: &[u8]) -> (i32, Vec<u8>) {
    dsr_net::run_xdp(dp, input).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN sticky_dsr_xdp: {e}"))
}

/// A client SYN to `vip` with payload and a non-zero TOS / traffic class.
fn syn(client: &str, vip: &str) -> Vec<u8> {
    let mut frame = Pkt::syn(sa(client), sa(vip)).payload(b"hello").build();
    if sa(vip).is_ipv6() {
        frame[ETH_LEN] = (frame[ETH_LEN] & 0xf0) | 0x0a;
        frame[ETH_LEN + 1] = 0x80 | (frame[ETH_LEN + 1] & 0x0f);
    } else {
        frame[ETH_LEN + 1] = 0x28;
    }
    frame
}

fn in_namespace(f: impl FnOnce() + Send) {
    let ns = namespace(1500);
    ns.run(f).expect("namespace thread");
}

#[test]
fn ipv4_on_the_segment_tc_and_xdp() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let mut dp = load(VIP_V4, sa("10.77.0.2:80"));
        let input = syn(CLIENT_V4, VIP_V4);
        let (rc, out) = run_tc(&mut dp, &input);
        assert_eq!(rc, TC_ACT_REDIRECT, "tc redirects the encapsulated packet");
        let macs = Some((NODE_MAC, BACKEND_MAC));
        assert_encapsulated(&input, &out, ip(NODE_V4), ip("10.77.0.2"), macs);
        let (rc, out) = run_xdp(&mut dp, &input);
        assert_eq!(rc, XDP_REDIRECT, "on veth, back out by redirect");
        assert_encapsulated(&input, &out, ip(NODE_V4), ip("10.77.0.2"), macs);
        // Elsewhere, out of the interface it came in on is XDP_TX; a second packet of the
        // flow (the handshake's ACK) takes the same way.
        tx_by_redirect(&mut dp, false);
        let ack = Pkt::tcp(sa(CLIENT_V4), sa(VIP_V4), 0x10).build();
        let (rc, out) = run_xdp(&mut dp, &ack);
        assert_eq!(rc, XDP_TX);
        assert_encapsulated(&ack, &out, ip(NODE_V4), ip("10.77.0.2"), macs);
        assert_eq!(dp.counters().unwrap().values[COUNTER_DSR as usize], 3);
    });
}

#[test]
fn ipv6_on_the_segment_tc_and_xdp() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let mut dp = load(VIP_V6, sa("[fd00:77::2]:80"));
        let input = syn(CLIENT_V6, VIP_V6);
        let macs = Some((NODE_MAC, BACKEND_MAC));
        let (rc, out) = run_tc(&mut dp, &input);
        assert_eq!(rc, TC_ACT_REDIRECT);
        assert_encapsulated(&input, &out, ip(NODE_V6), ip("fd00:77::2"), macs);
        let (rc, out) = run_xdp(&mut dp, &input);
        assert_eq!(rc, XDP_REDIRECT);
        assert_encapsulated(&input, &out, ip(NODE_V6), ip("fd00:77::2"), macs);
    });
}

#[test]
fn routed_backends_get_the_gateways_mac() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let macs = Some((NODE_MAC, GATEWAY_MAC));
        for (vip, client, backend, node) in [
            (VIP_V4, CLIENT_V4, "10.78.0.5:80", NODE_V4),
            (VIP_V6, CLIENT_V6, "[fd00:78::5]:80", NODE_V6),
        ] {
            let mut dp = load(vip, sa(backend));
            let input = syn(client, vip);
            let (rc, out) = run_tc(&mut dp, &input);
            assert_eq!(rc, TC_ACT_REDIRECT, "{backend}");
            assert_encapsulated(&input, &out, ip(node), sa(backend).ip(), macs);
            let (rc, out) = run_xdp(&mut dp, &input);
            assert_eq!(rc, XDP_REDIRECT, "{backend}");
            assert_encapsulated(&input, &out, ip(node), sa(backend).ip(), macs);
        }
    });
}

#[test]
fn an_unresolved_neighbour_goes_through_the_kernel() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let mut dp = load(VIP_V4, sa("10.77.0.3:80"));
        let input = syn(CLIENT_V4, VIP_V4);
        let (rc, out) = run_xdp(&mut dp, &input);
        assert_eq!(rc, XDP_PASS, "XDP leaves it to tc");
        assert_eq!(out, input, "untouched by XDP");
        let (rc, out) = run_tc(&mut dp, &input);
        assert_eq!(rc, TC_ACT_REDIRECT, "tc: bpf_redirect_neigh");
        assert_encapsulated(&input, &out, ip(NODE_V4), ip("10.77.0.3"), None);
    });
}

#[test]
fn too_big_and_unroutable_are_dropped_and_counted() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let mut dp = load(VIP_V4, sa("10.77.0.2:80"));
        // A full 1500-byte packet (SYN with its MSS option): 1520 encapsulated, over the
        // interface's MTU.
        let big = Pkt::syn(sa(CLIENT_V4), sa(VIP_V4))
            .payload(&[7u8; 1456])
            .build();
        assert_eq!(big.len(), ETH_LEN + 1500);
        assert_eq!(run_tc(&mut dp, &big).0, TC_ACT_SHOT);
        assert_eq!(run_xdp(&mut dp, &big).0, XDP_DROP);
        let fits = Pkt::syn(sa(CLIENT_V4), sa(VIP_V4))
            .payload(&[7u8; 1436])
            .build();
        assert_eq!(run_tc(&mut dp, &fits).0, TC_ACT_REDIRECT, "MSS 1440 fits");
        let counters = dp.counters().unwrap();
        assert_eq!(counters.values[COUNTER_TOO_BIG as usize], 2);

        let mut dp = load(VIP_V4, sa("192.0.2.1:80"));
        let input = syn(CLIENT_V4, VIP_V4);
        assert_eq!(
            run_tc(&mut dp, &input).0,
            TC_ACT_SHOT,
            "no route to the backend"
        );
        assert_eq!(run_xdp(&mut dp, &input).0, XDP_DROP);
        let counters = dp.counters().unwrap();
        assert_eq!(counters.values[COUNTER_ENCAP_ERROR as usize], 2);
        assert_eq!(counters.values[COUNTER_DSR as usize], 0);
    });
}

#[test]
fn what_is_not_ours_passes_untouched() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        let mut dp = load(VIP_V4, sa("10.77.0.2:80"));
        let syn_frame = syn(CLIENT_V4, VIP_V4);
        let mut inputs = vec![
            (
                "other address",
                Pkt::syn(sa(CLIENT_V4), sa("198.19.255.101:80")).build(),
            ),
            (
                "other port",
                Pkt::syn(sa(CLIENT_V4), sa("198.19.255.100:81")).build(),
            ),
            (
                "UDP to the VIP",
                Pkt::syn(sa(CLIENT_V4), sa(VIP_V4)).udp().build(),
            ),
            (
                "fragment",
                Pkt::syn(sa(CLIENT_V4), sa(VIP_V4)).frag(0x2001).build(),
            ),
            ("truncated TCP", syn_frame[..ETH_LEN + 20 + 10].to_vec()),
            ("IPv4 length past the frame", {
                let mut f = syn_frame.clone();
                f[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&1000u16.to_be_bytes());
                f
            }),
            ("IPv4 header length 4", {
                let mut f = syn_frame.clone();
                f[ETH_LEN] = 0x41;
                f
            }),
            (
                "IPv6 truncated TCP",
                syn(CLIENT_V6, VIP_V6)[..ETH_LEN + 40 + 8].to_vec(),
            ),
        ];
        let mut arp = syn_frame[..42].to_vec();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        inputs.push(("ARP", arp));
        for (what, input) in &inputs {
            let (rc, out) = run_tc(&mut dp, input);
            assert_eq!((rc, &out), (TCX_NEXT, input), "tc, {what}");
            let (rc, out) = run_xdp(&mut dp, input);
            assert_eq!((rc, &out), (XDP_PASS, input), "XDP, {what}");
        }
        assert_eq!(dp.counters().unwrap().values[COUNTER_DSR as usize], 0);
    });
}

/// The socket address of a `udp:ADDR:PORT` VIP.
fn udp_addr(vip: &str) -> SocketAddr {
    sa(vip.strip_prefix("udp:").expect("a udp: VIP"))
}

/// A datagram to a UDP VIP is encapsulated on tc and XDP like a TCP segment, the inner
/// datagram byte for byte (checksum 0 included: DSR never touches it), and the next one of its
/// flow takes the same way; IPv4 and IPv6, on the segment.
#[test]
fn udp_is_encapsulated_like_tcp() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        for (vip, udp, client, backend, node) in [
            (VIP_V4, UDP_VIP_V4, CLIENT_V4, "10.77.0.2:80", NODE_V4),
            (VIP_V6, UDP_VIP_V6, CLIENT_V6, "[fd00:77::2]:80", NODE_V6),
        ] {
            let mut dp = load_vips(&[vip, udp], sa(backend));
            let (be, uv) = (sa(backend).ip(), udp_addr(udp));
            let macs = Some((NODE_MAC, BACKEND_MAC));
            let client = sa(client);
            let first = Pkt::datagram(client, uv).payload(b"query").build();
            let (rc, out) = run_tc(&mut dp, &first);
            assert_eq!(rc, TC_ACT_REDIRECT, "{udp}: tc");
            assert_encapsulated(&first, &out, ip(node), be, macs);
            let second = Pkt::datagram(client, uv).payload(b"second").build();
            let (rc, out) = run_xdp(&mut dp, &second);
            assert_eq!(rc, XDP_REDIRECT, "{udp}: XDP");
            assert_encapsulated(&second, &out, ip(node), be, macs);
            let other = SocketAddr::new(client.ip(), 40_001);
            for input in [
                Pkt::datagram(other, uv).checksum(0).payload(b"no checksum"),
                Pkt::datagram(other, uv).payload(b"odd"),
                Pkt::datagram(other, uv).pad_to(60),
            ]
            .map(|p| p.build())
            {
                for xdp in [false, true] {
                    let (rc, out) = if xdp {
                        run_xdp(&mut dp, &input)
                    } else {
                        run_tc(&mut dp, &input)
                    };
                    let want = if xdp { XDP_REDIRECT } else { TC_ACT_REDIRECT };
                    assert_eq!(rc, want, "{udp}, XDP {xdp}");
                    assert_encapsulated(&input, &out, ip(node), be, macs);
                }
            }
            // TCP to the TCP VIP still goes the same way beside it.
            let syn_frame = syn(&client.to_string(), vip);
            let (rc, out) = run_tc(&mut dp, &syn_frame);
            assert_eq!(rc, TC_ACT_REDIRECT, "{vip}: TCP beside UDP");
            assert_encapsulated(&syn_frame, &out, ip(node), be, macs);
            assert_eq!(dp.counters().unwrap().values[COUNTER_DSR as usize], 9);
        }
    });
}

/// With a UDP VIP loaded, what is not a datagram for it passes untouched on both hooks, and tc
/// counts it by kind: UDP to the TCP-only port and TCP to the UDP-only port as pass, bogus
/// lengths and cut headers as parse errors, fragments as unhandled.
#[test]
fn udp_that_is_not_ours_passes_untouched() {
    if !bpf_or_skip() {
        return;
    }
    in_namespace(|| {
        for (vip, udp, client, backend) in [
            (VIP_V4, UDP_VIP_V4, CLIENT_V4, "10.77.0.2:80"),
            (VIP_V6, UDP_VIP_V6, CLIENT_V6, "[fd00:77::2]:80"),
        ] {
            let mut dp = load_vips(&[vip, udp], sa(backend));
            let (client, uv, tv) = (sa(client), udp_addr(udp), sa(vip));
            let dg = || Pkt::datagram(client, uv).payload(b"payload!");
            let full = dg().build();
            let l4 = ETH_LEN + if uv.is_ipv6() { 40 } else { 20 };
            let mut inputs = vec![
                (
                    "UDP to the TCP-only port",
                    Pkt::datagram(client, tv).build(),
                ),
                ("TCP to the UDP-only port", Pkt::syn(client, uv).build()),
                ("UDP length 7", dg().udp_len(7).build()),
                ("UDP length 0", dg().udp_len(0).build()),
                ("UDP length one past the packet", dg().udp_len(17).build()),
                (
                    "UDP length into the padding",
                    dg().udp_len(40).pad_to(100).build(),
                ),
                ("UDP header cut", full[..l4 + 6].to_vec()),
            ];
            if uv.is_ipv6() {
                inputs.push((
                    "UDP behind a fragment header",
                    dg().ext(Ext::Fragment).build(),
                ));
            } else {
                inputs.push(("UDP fragment, MF set", dg().frag(0x2000).build()));
                inputs.push(("UDP fragment, offset 185", dg().frag(185).build()));
            }
            let counters = |dp: &Datapath| {
                let c = dp.counters().unwrap().values;
                [
                    COUNTER_PASS,
                    COUNTER_PARSE_ERROR,
                    COUNTER_UNHANDLED,
                    COUNTER_DSR,
                ]
                .map(|i| c[i as usize])
            };
            for (what, input) in &inputs {
                let want = match classify(input) {
                    Shape::Malformed => 1,
                    Shape::Unhandled => 2,
                    Shape::Transport(_) | Shape::Other => 0,
                };
                let before = counters(&dp);
                let (rc, out) = run_tc(&mut dp, input);
                assert_eq!((rc, &out), (TCX_NEXT, input), "tc, {uv}: {what}");
                let (rc, out) = run_xdp(&mut dp, input);
                assert_eq!((rc, &out), (XDP_PASS, input), "XDP, {uv}: {what}");
                let mut expected = before;
                expected[want] += 1;
                assert_eq!(
                    counters(&dp),
                    expected,
                    "{uv}: {what}: [pass, parse error, unhandled, dsr] counted by tc alone"
                );
            }
            let kinds: Vec<usize> = inputs
                .iter()
                .map(|(_, f)| match classify(f) {
                    Shape::Malformed => 1,
                    Shape::Unhandled => 2,
                    _ => 0,
                })
                .collect();
            assert!(
                kinds.contains(&0) && kinds.contains(&1) && kinds.contains(&2),
                "precondition: every kind among the inputs: {kinds:?}"
            );
        }
    });
}

/// A backend's next hop is looked up once and reused for a second (per CPU: the thread is
/// pinned to one): a neighbour's new MAC is followed after that, not before.
#[test]
fn next_hops_are_reused_for_a_second() {
    if !bpf_or_skip() {
        return;
    }
    let ns = namespace(1500);
    ns.run(|| {
        // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        let mut dp = load(VIP_V4, sa("10.77.0.2:80"));
        let input = syn(CLIENT_V4, VIP_V4);
        let (_, out) = run_tc(&mut dp, &input);
        assert_encapsulated(
            &input,
            &out,
            ip(NODE_V4),
            ip("10.77.0.2"),
            Some((NODE_MAC, BACKEND_MAC)),
        );
        let moved = [0x02, 0x77, 0, 0, 0, 0x03];
        let status = std::process::Command::new("ip")
            .args([
                "neigh",
                "replace",
                "10.77.0.2",
                "lladdr",
                "02:77:00:00:00:03",
                "dev",
                IF,
            ])
            .args(["nud", "permanent"])
            .status()
            .expect("ip neigh replace");
        assert!(status.success());
        let (_, out) = run_xdp(&mut dp, &input);
        assert_encapsulated(
            &input,
            &out,
            ip(NODE_V4),
            ip("10.77.0.2"),
            Some((NODE_MAC, BACKEND_MAC)),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for (rc, out) in [run_tc(&mut dp, &input), run_xdp(&mut dp, &input)] {
            assert_ne!(rc, XDP_DROP, "forwarded");
            assert_encapsulated(
                &input,
                &out,
                ip(NODE_V4),
                ip("10.77.0.2"),
                Some((NODE_MAC, moved)),
            );
        }
    })
    .expect("namespace thread");
}
