//! `sticky_dsr` (tc) and `sticky_dsr_xdp` through BPF_PROG_TEST_RUN, in a namespace whose FIB
//! and neighbour table the programs really consult: a client packet to the VIP comes out
//! behind an outer IPv4 (protocol 4) or IPv6 (next header 41) header — every outer field and
//! the IPv4 header checksum recomputed here from the bytes — towards its backend, with the next
//! hop's MAC addresses, the inner packet byte for byte as it came in. A backend behind a
//! gateway gets the gateway's MAC; an unresolved neighbour goes to the kernel's neighbour
//! redirect (tc) or on to tc (XDP); a packet too big for the path and an unroutable backend
//! are dropped and counted; what is not ours (malformed, fragments, other protocols, other
//! addresses) comes out untouched and goes on.

mod common;

use std::net::{IpAddr, SocketAddr};

use aya::programs::{TestRun as _, TestRunOptions};
use common::{
    datapath::{SEED, TABLE_SIZE, TCX_NEXT, TC_ACT_SHOT, bpf_or_skip, sa},
    packets::{ETH_LEN, Pkt, checksum},
};
use sticky::{
    config::{Config, ForwardMode, Layer, XdpMode},
    datapath::Datapath,
};
use sticky_common::maps::{COUNTER_DSR, COUNTER_ENCAP_ERROR, COUNTER_TOO_BIG};
use sticky_tests::{Netns, unique_name, veth};

const TC_ACT_REDIRECT: i32 = 7;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const XDP_TX: i32 = 3;
const XDP_REDIRECT: i32 = 4;

const IF: &str = "dsrfx0";
const PEER: &str = "dsrfx1";
const NODE_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
const BACKEND_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];
const NODE_V4: &str = "10.77.0.1";
const NODE_V6: &str = "fd00:77::1";
const VIP_V4: &str = "198.19.255.100:80";
const VIP_V6: &str = "[fd00:19:ff::100]:80";
const CLIENT_V4: &str = "198.18.1.1:40000";
const CLIENT_V6: &str = "[fd00:18::1]:40000";

/// A namespace with the node's interface, a backend on its segment (permanent neighbour), a
/// gateway to a routed backend network, a neighbour never resolved, forwarding on.
fn namespace() -> Netns {
    let ns = Netns::create(&unique_name("dsrfx")).expect("namespace");
    veth(&ns, IF, &ns, PEER).expect("veth");
    let mac = NODE_MAC.map(|b| format!("{b:02x}")).join(":");
    let lladdr = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let batch = format!(
        "link set {IF} address {mac}\n\
         addr add {NODE_V4}/24 dev {IF}\n\
         addr add {NODE_V6}/64 dev {IF} nodad\n\
         neigh add 10.77.0.2 lladdr {be} dev {IF} nud permanent\n\
         neigh add fd00:77::2 lladdr {be} dev {IF} nud permanent\n\
         neigh add 10.77.0.254 lladdr {gw} dev {IF} nud permanent\n\
         neigh add fd00:77::fe lladdr {gw} dev {IF} nud permanent\n\
         route add 10.78.0.0/24 via 10.77.0.254 dev {IF}\n\
         route add fd00:78::/64 via fd00:77::fe dev {IF}\n",
        be = lladdr(BACKEND_MAC),
        gw = lladdr(GATEWAY_MAC),
    );
    ns.ip_batch(&batch).expect("addresses, neighbours, routes");
    ns.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").expect("forwarding");
    ns
}

/// A DSR datapath (tc and XDP programs loaded) with one backend, in the current namespace.
fn load(vip: &str, backend: SocketAddr) -> Datapath {
    let layer = Layer {
        iface: vec![IF.into()],
        vip: vec![vip.into()],
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

/// Whether XDP sends back out with XDP_REDIRECT (what the daemon sets on veth, as here) or
/// XDP_TX (what it sets on other drivers).
fn tx_by_redirect(dp: &mut Datapath, on: bool) {
    let map = dp.map_mut(sticky_common::maps::SETTINGS).expect("settings map");
    let mut settings: aya::maps::Array<_, sticky_common::maps::Settings> =
        aya::maps::Array::try_from(map).expect("settings array");
    let mut s = settings.get(&0, 0).expect("settings");
    s.xdp_tx_by_redirect = u8::from(on);
    settings.set(0, s, 0).expect("write settings");
}

fn ifindex() -> u32 {
    let name = std::ffi::CString::new(IF).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(i, 0, "{IF} exists here");
    i
}

/// tc: the skb arrives on the node's interface (`__sk_buff.ifindex`).
fn run_tc(dp: &mut Datapath, input: &[u8]) -> (i32, Vec<u8>) {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex().to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let prog = dp.classifier(sticky_common::maps::PROG_DSR).expect("sticky_dsr");
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN sticky_dsr: {e}"));
    out.truncate(res.data_size_out as usize);
    (res.return_value as i32, out)
}

/// XDP: the frame arrives on the node's interface, queue 0 (`xdp_md`).
fn run_xdp(dp: &mut Datapath, input: &[u8]) -> (i32, Vec<u8>) {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex().to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let prog = dp.xdp_program().expect("sticky_dsr_xdp");
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN sticky_dsr_xdp: {e}"));
    out.truncate(res.data_size_out as usize);
    (res.return_value as i32, out)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Checks `out` is `input`'s IP packet behind an outer header from `src` to `dst`, in a frame
/// from `smac` to `dmac` (none: the Ethernet header as it came, for the neighbour redirect).
fn assert_encapsulated(
    input: &[u8],
    out: &[u8],
    src: IpAddr,
    dst: IpAddr,
    macs: Option<([u8; 6], [u8; 6])>,
) {
    let inner = &input[ETH_LEN..];
    let v6 = src.is_ipv6();
    let outer_len = if v6 { 40 } else { 20 };
    assert_eq!(out.len(), input.len() + outer_len, "grown by one outer header");
    match macs {
        Some((smac, dmac)) => {
            assert_eq!(&out[0..6], &dmac, "destination MAC: the next hop's");
            assert_eq!(&out[6..12], &smac, "source MAC: the node's");
        }
        None => assert_eq!(&out[0..12], &input[0..12], "MACs left to the neighbour redirect"),
    }
    assert_eq!(&out[12..14], &input[12..14], "ethertype of the outer family");
    let outer = &out[ETH_LEN..ETH_LEN + outer_len];
    assert_eq!(&out[ETH_LEN + outer_len..], inner, "inner packet byte for byte");
    if v6 {
        let tc_in = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
        assert_eq!(outer[0] >> 4, 6, "version");
        assert_eq!(((outer[0] & 0x0f) << 4) | (outer[1] >> 4), tc_in, "traffic class");
        assert_eq!(
            usize::from(u16::from_be_bytes([outer[4], outer[5]])),
            inner.len(),
            "payload length"
        );
        assert_eq!(outer[6], 41, "next header IPv6");
        assert_eq!(outer[7], 64, "hop limit");
        assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&outer[8..24]).unwrap()), src);
        assert_eq!(IpAddr::from(<[u8; 16]>::try_from(&outer[24..40]).unwrap()), dst);
    } else {
        assert_eq!(outer[0], 0x45, "version 4, no options");
        assert_eq!(outer[1], inner[1], "TOS carried over");
        assert_eq!(
            usize::from(u16::from_be_bytes([outer[2], outer[3]])),
            inner.len() + 20,
            "total length"
        );
        assert_eq!(u16::from_be_bytes([outer[6], outer[7]]), 0x4000, "DF, no fragment");
        assert_eq!(outer[8], 64, "TTL");
        assert_eq!(outer[9], 4, "protocol IPIP");
        assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&outer[12..16]).unwrap()), src);
        assert_eq!(IpAddr::from(<[u8; 4]>::try_from(&outer[16..20]).unwrap()), dst);
        let mut zeroed = outer.to_vec();
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(
            u16::from_be_bytes([outer[10], outer[11]]),
            checksum(&[&zeroed]),
            "header checksum, recomputed from the bytes"
        );
    }
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
    let ns = namespace();
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

        let mut dp = load(VIP_V4, sa("10.99.0.1:80"));
        let input = syn(CLIENT_V4, VIP_V4);
        assert_eq!(run_tc(&mut dp, &input).0, TC_ACT_SHOT, "no route to the backend");
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
            ("other address", Pkt::syn(sa(CLIENT_V4), sa("198.19.255.101:80")).build()),
            ("other port", Pkt::syn(sa(CLIENT_V4), sa("198.19.255.100:81")).build()),
            ("UDP to the VIP", Pkt::syn(sa(CLIENT_V4), sa(VIP_V4)).udp().build()),
            ("fragment", Pkt::syn(sa(CLIENT_V4), sa(VIP_V4)).frag(0x2001).build()),
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
            ("IPv6 truncated TCP", syn(CLIENT_V6, VIP_V6)[..ETH_LEN + 40 + 8].to_vec()),
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
