//! The DSR programs under BPF_PROG_TEST_RUN: a namespace whose FIB and neighbour table they
//! really consult, runs with the node's interface as the receiving device, and the check of
//! an encapsulated frame (every outer field, the IPv4 header checksum recomputed from the
//! bytes, the inner packet byte for byte) that the fixtures and the packet fuzz share.

use std::net::IpAddr;

use aya::programs::{ProgramError, TestRun as _, TestRunOptions};
use sticky::datapath::Datapath;
use sticky_common::maps::{PROG_DSR, SETTINGS, Settings};
use sticky_tests::{Netns, unique_name, veth};

use super::packets::{ETH_LEN, checksum};

pub const IF: &str = "dsrfx0";
const PEER: &str = "dsrfx1";
pub const NODE_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
pub const BACKEND_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0xfe];
pub const NODE_V4: &str = "10.77.0.1";
pub const NODE_V6: &str = "fd00:77::1";

pub const TC_ACT_REDIRECT: i32 = 7;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

/// A namespace with the node's interface (`IF`, MTU `mtu`, forwarding on): 10.77.0.2 and
/// fd00:77::2 on its segment (permanent neighbours), 10.77.0.3 / fd00:77::3 on it with no
/// neighbour entry, everything else in 10.0.0.0/8 and fd00::/16 through the gateway .254 /
/// ::fe; nothing else routed.
pub fn namespace(mtu: u32) -> Netns {
    let ns = Netns::create(&unique_name("dsrfx")).expect("namespace");
    veth(&ns, IF, &ns, PEER).expect("veth");
    let lladdr = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
    let batch = format!(
        "link set {IF} address {mac} mtu {mtu}\n\
         link set {PEER} mtu {mtu}\n\
         addr add {NODE_V4}/24 dev {IF}\n\
         addr add {NODE_V6}/64 dev {IF} nodad\n\
         neigh add 10.77.0.2 lladdr {be} dev {IF} nud permanent\n\
         neigh add fd00:77::2 lladdr {be} dev {IF} nud permanent\n\
         neigh add 10.77.0.254 lladdr {gw} dev {IF} nud permanent\n\
         neigh add fd00:77::fe lladdr {gw} dev {IF} nud permanent\n\
         route add 10.0.0.0/8 via 10.77.0.254 dev {IF}\n\
         route add fd00::/16 via fd00:77::fe dev {IF}\n",
        mac = lladdr(NODE_MAC),
        be = lladdr(BACKEND_MAC),
        gw = lladdr(GATEWAY_MAC),
    );
    ns.ip_batch(&batch).expect("addresses, neighbours, routes");
    ns.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        .expect("forwarding");
    ns
}

fn ifindex() -> u32 {
    let name = std::ffi::CString::new(IF).expect("no NUL");
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(i, 0, "{IF} exists in this namespace");
    i
}

/// tc: the skb arrives on `IF` (`__sk_buff.ifindex`). Returns the action and the frame.
pub fn run_tc(dp: &mut Datapath, input: &[u8]) -> Result<(i32, Vec<u8>), ProgramError> {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex().to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let prog = dp.classifier(PROG_DSR).expect("sticky_dsr");
    let res = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value as i32, out))
}

/// XDP: the frame arrives on `IF`, queue 0 (`xdp_md`).
pub fn run_xdp(dp: &mut Datapath, input: &[u8]) -> Result<(i32, Vec<u8>), ProgramError> {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex().to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let prog = dp.xdp_program().expect("sticky_dsr_xdp");
    let res = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value as i32, out))
}

/// Whether XDP sends back out with XDP_REDIRECT (what the daemon sets on veth, as here) or
/// XDP_TX (what it sets on other drivers).
pub fn tx_by_redirect(dp: &mut Datapath, on: bool) {
    let map = dp.map_mut(SETTINGS).expect("settings map");
    let mut settings: aya::maps::Array<_, Settings> =
        aya::maps::Array::try_from(map).expect("settings array");
    let mut s = settings.get(&0, 0).expect("settings");
    s.xdp_tx_by_redirect = u8::from(on);
    settings.set(0, s, 0).expect("write settings");
}

/// Checks `out` is `input`'s IP packet behind an outer header from `src`, in a frame from
/// `smac` to `dmac` (none: the Ethernet header as it came, for the neighbour redirect).
/// Returns the outer destination.
pub fn encapsulated(
    input: &[u8],
    out: &[u8],
    src: IpAddr,
    macs: Option<([u8; 6], [u8; 6])>,
) -> Result<IpAddr, String> {
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    let inner = input.get(ETH_LEN..).ok_or("input shorter than Ethernet")?;
    let v6 = src.is_ipv6();
    let outer_len = if v6 { 40 } else { 20 };
    check(
        out.len() == input.len() + outer_len,
        &format!(
            "output {} bytes, want the input's {} + {outer_len}",
            out.len(),
            input.len()
        ),
    )?;
    match macs {
        Some((smac, dmac)) => {
            check(out[0..6] == dmac, "destination MAC is not the next hop's")?;
            check(out[6..12] == smac, "source MAC is not the node's")?;
        }
        None => check(
            out[0..12] == input[0..12],
            "MACs changed before the neighbour redirect",
        )?,
    }
    check(out[12..14] == input[12..14], "ethertype changed")?;
    let outer = &out[ETH_LEN..ETH_LEN + outer_len];
    check(
        &out[ETH_LEN + outer_len..] == inner,
        "inner packet not byte for byte the input's",
    )?;
    let u16_at = |o: usize| u16::from_be_bytes([outer[o], outer[o + 1]]);
    let dst = if v6 {
        let tc_in = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
        check(outer[0] >> 4 == 6, "outer version not 6")?;
        check(
            ((outer[0] & 0x0f) << 4) | (outer[1] >> 4) == tc_in,
            "traffic class not carried over",
        )?;
        check(usize::from(u16_at(4)) == inner.len(), "payload length")?;
        check(outer[6] == 41, "next header not IPv6 (41)")?;
        check(outer[7] == 64, "hop limit not 64")?;
        let s: [u8; 16] = outer[8..24].try_into().expect("16 bytes");
        check(IpAddr::from(s) == src, "outer source not the node's")?;
        let d: [u8; 16] = outer[24..40].try_into().expect("16 bytes");
        IpAddr::from(d)
    } else {
        check(outer[0] == 0x45, "not version 4 without options")?;
        check(outer[1] == inner[1], "TOS not carried over")?;
        check(usize::from(u16_at(2)) == inner.len() + 20, "total length")?;
        check(u16_at(6) == 0x4000, "flags/fragment not DF/0")?;
        check(outer[8] == 64, "TTL not 64")?;
        check(outer[9] == 4, "protocol not IPIP (4)")?;
        let s: [u8; 4] = outer[12..16].try_into().expect("4 bytes");
        check(IpAddr::from(s) == src, "outer source not the node's")?;
        let mut zeroed = outer.to_vec();
        zeroed[10..12].fill(0);
        check(
            u16_at(10) == checksum(&[&zeroed]),
            "outer header checksum wrong (recomputed from the bytes)",
        )?;
        let d: [u8; 4] = outer[16..20].try_into().expect("4 bytes");
        IpAddr::from(d)
    };
    Ok(dst)
}
