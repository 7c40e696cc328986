//! `sticky_decap` (a DSR backend's ingress, attached by `sticky backend-setup`) through
//! BPF_PROG_TEST_RUN: an IPIP or IP6IP6 frame comes out as the inner packet byte for byte
//! under the same Ethernet header; anything else (plain traffic, outer IPv4 options or
//! fragments, a truncated or foreign inner packet, frames for another host) comes out
//! untouched and goes on to the next program.

mod common;

use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use common::{
    datapath::{TC_ACT_OK, TCX_NEXT, action_name, bpf_or_skip, sa},
    packets::{Pkt, arp_request, checksum, patched},
};
use sticky_common::maps::PROG_DECAP;

const ETH_LEN: usize = 14;
/// BPF_PROG_TEST_RUN runs frames as if received on `lo`, whose address is all zeros: frames
/// to it are PACKET_HOST, others PACKET_OTHERHOST.
const HOST_MAC: [u8; 6] = [0; 6];

fn load() -> Ebpf {
    let bytes = sticky::object::bytes().expect("object");
    let mut ebpf = Ebpf::load(bytes).expect("load the object");
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_DECAP)
        .expect("sticky_decap in the object")
        .try_into()
        .expect("a classifier");
    prog.load().expect("verifier accepts sticky_decap");
    ebpf
}

fn run(ebpf: &mut Ebpf, input: &[u8]) -> (i32, Vec<u8>) {
    try_run(ebpf, input).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {input:02x?}: {e}"))
}

fn try_run(ebpf: &mut Ebpf, input: &[u8]) -> Result<(i32, Vec<u8>), aya::programs::ProgramError> {
    let prog: &mut SchedClassifier = ebpf.program_mut(PROG_DECAP).unwrap().try_into().unwrap();
    let mut out = vec![0u8; input.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ..Default::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value as i32, out))
}

/// A client's SYN to the VIP as a frame to this host.
fn inner(v6: bool) -> Vec<u8> {
    let (client, vip) = if v6 {
        (sa("[fd00:18::1:0:1]:40000"), sa("[fd00:19:ff::100]:80"))
    } else {
        (sa("198.18.1.1:40000"), sa("198.19.255.100:80"))
    };
    let frame = Pkt::syn(client, vip).payload(b"inner bytes").build();
    patched(&frame, 0, &HOST_MAC)
}

/// `frame`'s IP packet inside an outer IPv4 (protocol 4) or IPv6 (next header 41) header from
/// a balancer to a backend; `proto` overrides the outer protocol.
fn encap(frame: &[u8], outer_v6: bool, proto: Option<u8>) -> Vec<u8> {
    let packet = &frame[ETH_LEN..];
    let mut out = frame[..12].to_vec();
    if outer_v6 {
        out.extend(0x86ddu16.to_be_bytes());
        out.extend([0x60, 0, 0, 0]);
        out.extend((packet.len() as u16).to_be_bytes());
        out.extend([proto.unwrap_or(41), 64]);
        for addr in ["fd00:20::2", "fd00:19::2"] {
            let IpAddr::V6(a) = addr.parse().unwrap() else {
                unreachable!()
            };
            out.extend(a.octets());
        }
    } else {
        out.extend(0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0];
        ip.extend(((20 + packet.len()) as u16).to_be_bytes());
        ip.extend([0, 1, 0x40, 0, 64, proto.unwrap_or(4), 0, 0]);
        ip.extend([198, 20, 0, 2, 198, 19, 0, 2]);
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend(ip);
    }
    out.extend(packet);
    out
}

#[test]
fn ipip_and_ip6ip6_come_out_as_the_inner_packet() {
    if !bpf_or_skip() {
        return;
    }
    let mut ebpf = load();
    for v6 in [false, true] {
        let want = inner(v6);
        let (action, out) = run(&mut ebpf, &encap(&want, v6, None));
        assert_eq!(action, TC_ACT_OK, "v6 {v6}: {}", action_name(action));
        assert_eq!(out, want, "v6 {v6}: the inner frame byte for byte");
    }
}

#[test]
fn anything_else_passes_untouched() {
    if !bpf_or_skip() {
        return;
    }
    let mut ebpf = load();
    let v4 = encap(&inner(false), false, None);
    let v6 = encap(&inner(true), true, None);
    // Outer IPv4 with 4 bytes of options: IHL 6, the options inserted after the header.
    let mut options = v4[..ETH_LEN + 20].to_vec();
    options[ETH_LEN] = 0x46;
    options.extend([1, 1, 1, 0]);
    options.extend(&v4[ETH_LEN + 20..]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("plain IPv4 TCP", inner(false)),
        ("plain IPv6 TCP", inner(true)),
        ("ARP", arp_request()),
        (
            "IPIP for another host",
            patched(&v4, 0, &[2, 0, 0, 0, 0, 1]),
        ),
        (
            "IP6IP6 for another host",
            patched(&v6, 0, &[2, 0, 0, 0, 0, 1]),
        ),
        ("IPIP with outer options", options),
        (
            "IPIP fragment (more fragments)",
            patched(&v4, ETH_LEN + 6, &[0x20, 0]),
        ),
        ("IPIP fragment (offset)", patched(&v4, ETH_LEN + 6, &[0, 8])),
        (
            "IPIP truncated after the outer header",
            v4[..ETH_LEN + 20 + 10].to_vec(),
        ),
        (
            "IPv6 inside IPv4 (not ours)",
            encap(&inner(true), false, Some(4)),
        ),
        (
            "IPv4 inside IPv6 (not ours)",
            encap(&inner(false), true, Some(4)),
        ),
        ("IP6IP6 truncated", v6[..ETH_LEN + 40 + 20].to_vec()),
        ("outer UDP", encap(&inner(false), false, Some(17))),
    ];
    for (what, input) in cases {
        let (action, out) = run(&mut ebpf, &input);
        assert_eq!(action, TCX_NEXT, "{what}: {}", action_name(action));
        assert_eq!(out, input, "{what}: untouched");
    }
}

/// An independent statement of what `sticky_decap` strips: the outer header's length, or
/// `None` when the frame must pass untouched.
fn model(frame: &[u8]) -> Option<usize> {
    let to_host = frame.get(..6)? == HOST_MAC;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(ETH_LEN..)?;
    let strip = match ethertype {
        0x0800 => {
            let plain = *ip.first()? == 0x45
                && *ip.get(9)? == 4
                && u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3fff == 0;
            // The whole inner IPv4 header must be in the frame.
            (plain && ip.len() >= 40 && ip[20] >> 4 == 4).then_some(20)
        }
        0x86dd => {
            let plain = *ip.get(6)? == 41;
            (plain && ip.len() >= 80 && ip[40] >> 4 == 6).then_some(40)
        }
        _ => None,
    }?;
    to_host.then_some(strip)
}

#[test]
fn mutated_frames_match_the_model() {
    if !bpf_or_skip() {
        return;
    }
    let seed = std::env::var("STICKY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xdeca_0001_u64);
    let mut rng = sticky_tests::SplitMix64(seed);
    let mut ebpf = load();
    let bases = [
        encap(&inner(false), false, None),
        encap(&inner(true), true, None),
        inner(false),
        inner(true),
    ];
    let (mut stripped, mut passed, mut refused) = (0, 0, 0);
    for n in 0..20_000u32 {
        let mut frame = bases[(rng.next_u64() % 4) as usize].clone();
        // A few byte changes, mostly in the headers; sometimes a truncation.
        for _ in 0..(rng.next_u64() % 4) {
            let at = (rng.next_u64() % 100.min(frame.len() as u64)) as usize;
            frame[at] = match rng.next_u64() % 4 {
                // The values the program tests, so mutations reach every branch.
                0 => [0x45, 4, 41, 0x60, 0x46, 0][(rng.next_u64() % 6) as usize],
                _ => rng.next_u64() as u8,
            };
        }
        if rng.next_u64().is_multiple_of(8) {
            frame.truncate((rng.next_u64() % frame.len() as u64) as usize);
        }
        if frame.len() < ETH_LEN {
            continue;
        }
        // The harness itself refuses some frames (an IP header shorter than its minimum).
        let Ok((action, out)) = try_run(&mut ebpf, &frame) else {
            refused += 1;
            continue;
        };
        match model(&frame) {
            Some(len) => {
                stripped += 1;
                let mut want = frame[..ETH_LEN].to_vec();
                want.extend(&frame[ETH_LEN + len..]);
                assert_eq!(action, TC_ACT_OK, "frame {n} (seed {seed}): {frame:02x?}");
                assert_eq!(out, want, "frame {n} (seed {seed}) decapsulated");
            }
            None => {
                passed += 1;
                assert_eq!(action, TCX_NEXT, "frame {n} (seed {seed}): {frame:02x?}");
                assert_eq!(out, frame, "frame {n} (seed {seed}) untouched");
            }
        }
    }
    println!(
        "sticky_decap: {stripped} decapsulated, {passed} passed untouched, {refused} refused by \
         BPF_PROG_TEST_RUN"
    );
    assert!(
        stripped > 1_000 && passed > 1_000,
        "{stripped} / {passed}: both ways exercised"
    );
}
