//! eBPF cost per packet of the DSR programs (`sticky_dsr_xdp`, `sticky_dsr`) through
//! BPF_PROG_TEST_RUN, in a namespace of its own whose FIB and neighbour table the programs
//! consult, as on a node: the frame arrives on a veth (`ctx_in` ifindex), its backend sits on
//! the segment with a permanent neighbour entry, so every run encapsulates and sends.
//!
//! A repeated run re-runs the same buffer, and an encapsulated packet is no longer ours (it is
//! addressed to the backend): after the first run the rest would time the pass path. So DSR
//! runs are single runs (`repeat` 1) averaged, and a single run carries the harness's timer
//! around one program run; that overhead is the single-run time of a packet that is not ours
//! minus its time over `REPEAT` repeated runs, and is taken off. Single runs also start with
//! cold caches after the syscall; a warm figure for all but the rewrite comes from a packet
//! too big for the path, which takes the same decision and FIB lookup, is dropped unchanged
//! and so can be repeated.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use serde::{Deserialize, Serialize};
use sticky::{
    addr::BackendSpec,
    backends::BackendSet,
    config::{Config, ForwardMode, Layer, XdpMode},
    datapath::Datapath,
};
use sticky_common::maps::{PROG_DSR, SETTINGS, Settings};
use sticky_tests::{Netns, unique_name, veth};

const IF: &str = "trx0";
const PEER: &str = "trx1";
const NODE: &str = "10.77.0.1";
const BACKEND: &str = "10.77.0.2:80";
const BACKEND_MAC: &str = "02:77:00:00:00:02";
const VIP: &str = "198.19.255.100:80";
/// Repeated runs of the pass path (the overhead baseline).
const REPEAT: u32 = 100_000;
/// Single runs averaged per figure.
const SINGLE: u32 = 5_000;

const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;
const XDP_REDIRECT: i32 = 4;
const XDP_PASS: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
/// The frames' TCP payload; the too-big one's fills a 1500-byte packet, which the outer
/// header then pushes over the MTU.
pub const PAYLOAD: usize = 64;
const FULL_PAYLOAD: usize = 1500 - 40;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// One figure: what was run and its ns per packet, harness overhead taken off.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cost {
    pub what: String,
    pub ns: f64,
}

/// The DSR programs' cost per packet, XDP and tc: an established flow's packet and a new
/// client's SYN, and the pass path of a packet that is not ours.
pub fn dsr_costs() -> anyhow::Result<Vec<Cost>> {
    let ns = Netns::create(&unique_name("bench-tr")).context("test-run namespace")?;
    veth(&ns, IF, &ns, PEER)?;
    ns.ip_batch(&format!(
        "addr add {NODE}/24 dev {IF}\n\
         neigh add 10.77.0.2 lladdr {BACKEND_MAC} dev {IF} nud permanent\n"
    ))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.run(measure)?
}

fn measure() -> anyhow::Result<Vec<Cost>> {
    let mut dp = load()?;
    let ifindex = ifindex()?;
    let vip: SocketAddr = VIP.parse()?;
    let client = |i: u32| {
        SocketAddr::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i).into(),
            40000,
        )
    };
    let other = frame(client(0), SocketAddr::new(vip.ip(), 81), TCP_ACK, PAYLOAD);
    let mut out = Vec::new();
    for xdp in [true, false] {
        let name = if xdp { "sticky_dsr_xdp" } else { "sticky_dsr" };
        let sent = if xdp { XDP_REDIRECT } else { TC_ACT_REDIRECT };
        let pass = if xdp { XDP_PASS } else { TCX_NEXT };
        let dropped = if xdp { XDP_DROP } else { TC_ACT_SHOT };
        let (action, repeated) = run(&mut dp, xdp, ifindex, &other, REPEAT)?;
        anyhow::ensure!(
            action == pass,
            "{name}: a packet to another port gave {action}"
        );
        let repeated = repeated.as_nanos() as f64;
        let single = average(
            SINGLE,
            |_| run(&mut dp, xdp, ifindex, &other, 1),
            pass,
            name,
        )?;
        let overhead = (single - repeated).max(0.0);
        // One client's flow, set up by its SYN: the packets of an established connection.
        run(
            &mut dp,
            xdp,
            ifindex,
            &frame(client(1), vip, TCP_SYN, PAYLOAD),
            1,
        )?;
        let ack = frame(client(1), vip, TCP_ACK, PAYLOAD);
        let established = average(SINGLE, |_| run(&mut dp, xdp, ifindex, &ack, 1), sent, name)?;
        let big = frame(client(1), vip, TCP_ACK, FULL_PAYLOAD);
        let (action, too_big) = run(&mut dp, xdp, ifindex, &big, REPEAT)?;
        anyhow::ensure!(action == dropped, "{name}: a packet too big gave {action}");
        // A new client per run (offset per program: their flows are shared).
        let base = if xdp { 1_000 } else { 1_000 + SINGLE };
        let syn = average(
            SINGLE,
            |i| {
                run(
                    &mut dp,
                    xdp,
                    ifindex,
                    &frame(client(base + i), vip, TCP_SYN, PAYLOAD),
                    1,
                )
            },
            sent,
            name,
        )?;
        out.extend([
            Cost {
                what: format!("`{name}`, established flow (encapsulate, send)"),
                ns: established - overhead,
            },
            Cost {
                what: format!(
                    "`{name}`, established flow up to the FIB lookup (too big: dropped before \
                     the rewrite), ×{REPEAT}"
                ),
                ns: too_big.as_nanos() as f64,
            },
            Cost {
                what: format!("`{name}`, new client's SYN (encapsulate, send, new flow)"),
                ns: syn - overhead,
            },
            Cost {
                what: format!("`{name}`, not ours (pass), ×{REPEAT}"),
                ns: repeated,
            },
        ]);
    }
    Ok(out)
}

/// A DSR datapath (tc and XDP programs loaded, not attached) with one backend; XDP sends by
/// redirect, as the daemon sets it on veth.
fn load() -> anyhow::Result<Datapath> {
    let layer = Layer {
        iface: vec![IF.into()],
        vip: vec![VIP.into()],
        backend: vec![BACKEND.into()],
        forward: Some(ForwardMode::Dsr),
        xdp: Some(XdpMode::Native),
        ..Layer::default()
    };
    let config: Config = layer.validate().context("DSR configuration")?;
    let mut dp = Datapath::load(&config).context("load the DSR datapath")?;
    let mut set = BackendSet::default();
    let removed = set.reconcile(&[BackendSpec {
        addr: BACKEND.parse()?,
        weight: 1,
    }])?;
    dp.apply(&set, &removed).context("publish the backend")?;
    let map = dp.map_mut(SETTINGS).context("settings map")?;
    let mut settings: aya::maps::Array<_, Settings> = aya::maps::Array::try_from(map)?;
    let mut s = settings.get(&0, 0)?;
    s.xdp_tx_by_redirect = 1;
    settings.set(0, s, 0)?;
    Ok(dp)
}

fn ifindex() -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(IF)?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(i != 0, "{IF} missing in the test-run namespace");
    Ok(i)
}

/// Runs `frame` through the XDP or tc program `repeat` times, as received on `ifindex`: the
/// action and the kernel's time per run.
fn run(
    dp: &mut Datapath,
    xdp: bool,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(i32, Duration)> {
    let mut out = vec![0u8; frame.len() + 256];
    let res = if xdp {
        // xdp_md: data_end (offset 4) and ingress_ifindex (offset 12).
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        dp.xdp_program()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
    } else {
        // __sk_buff: ifindex at offset 40.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        dp.classifier(PROG_DSR)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
    }
    .context("BPF_PROG_TEST_RUN")?;
    Ok((res.return_value as i32, res.duration))
}

/// Mean ns over `n` single runs, each of which must end in `want` (XDP_TX counts as sent too).
fn average(
    n: u32,
    mut one: impl FnMut(u32) -> anyhow::Result<(i32, Duration)>,
    want: i32,
    name: &str,
) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    for i in 0..n {
        let (action, d) = one(i)?;
        anyhow::ensure!(
            action == want || (want == XDP_REDIRECT && action == XDP_TX),
            "{name}: run {i} gave action {action}, expected {want}"
        );
        total += d;
    }
    Ok(total.as_nanos() as f64 / f64::from(n))
}

/// Ethernet + IPv4 (checksummed) + TCP with `payload` zero bytes; the programs never check
/// the TCP checksum.
pub fn frame(src: SocketAddr, dst: SocketAddr, flags: u8, payload: usize) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        return Vec::new();
    };
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    f[0..6].copy_from_slice(&[0x02, 0x77, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0x77, 0, 0, 0, 0x99]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = u16::try_from(f.len() - 14).unwrap_or(0);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_a_valid_ipv4_header() {
        let f = frame(
            "198.18.16.1:40000".parse().unwrap(),
            VIP.parse().unwrap(),
            TCP_SYN,
            PAYLOAD,
        );
        assert_eq!(f.len(), 118);
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        assert_eq!(f[47], TCP_SYN);
    }
}
