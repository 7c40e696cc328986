//! eBPF cost per packet through BPF_PROG_TEST_RUN: the NAT ingress program (`sticky_ingress`)
//! and the DSR programs (`sticky_dsr_xdp`, `sticky_dsr`), in a namespace of its own whose FIB
//! and neighbour table the DSR programs consult, as on a node: the frame arrives on a veth
//! (`ctx_in` ifindex), its backend sits on the segment with a permanent neighbour entry, so
//! every DSR run encapsulates and sends.
//!
//! A repeated run re-runs the same buffer, and a rewritten packet is no longer ours (it is
//! addressed to the backend): after the first run the rest would time the pass path. So
//! forwarding runs are single runs (`repeat` 1) averaged, and a single run carries the
//! harness's timer around one program run; that overhead is the single-run time of a packet
//! that is not ours minus its time over `REPEAT` repeated runs, and is taken off. Single runs
//! also start with cold caches after the syscall. Warm figures: for DSR, all but the rewrite, from a packet
//! too big for the path, which takes the same decision and FIB lookup, is dropped unchanged
//! and so can be repeated; for NAT, the whole established path, its rewritten output made an
//! established flow back to the VIP (`mirror`), so every repeated run rewrites.

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
use sticky_common::{
    Addr16,
    maps::{
        self as names, Flow, FlowKey, PROG_DSR, PROG_DSR_XDP, PROG_INGRESS, PROTO_TCP, SETTINGS,
        Settings, Vip, VipKey,
    },
};
use sticky_tests::{Netns, unique_name, veth};

const IF: &str = "trx0";
const PEER: &str = "trx1";
const NODE: &str = "10.77.0.1";
const BACKEND: &str = "10.77.0.2:80";
/// NAT's backend: another port than the VIP's, so both address and port are rewritten.
const NAT_BACKEND: &str = "10.77.0.2:3000";
const BACKEND_MAC: &str = "02:77:00:00:00:02";
const VIP: &str = "198.19.255.100:80";
/// Repeated runs of the pass path (the overhead baseline).
const REPEAT: u32 = 100_000;
/// Single runs averaged per figure.
const SINGLE: u32 = 5_000;
/// Blocks a figure's single runs are split in; the figure is the median block's mean.
const BLOCKS: u32 = 10;

const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;
const XDP_REDIRECT: i32 = 4;
const XDP_PASS: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;
const TCX_NEXT: i32 = -1;
const TC_ACT_OK: i32 = 0;
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

/// Prints the figures, one per line.
pub fn print(costs: &[Cost]) {
    for c in costs {
        println!("  {:<80} {:.0} ns", c.what, c.ns);
    }
}

/// `sticky-bench testrun`: only the BPF_PROG_TEST_RUN figures, printed (as root).
pub fn run_alone() -> anyhow::Result<()> {
    let costs = costs()?;
    print(&costs);
    Ok(())
}

/// A program under test: how it is run and what its actions mean.
#[derive(Clone, Copy)]
pub struct Program {
    name: &'static str,
    xdp: bool,
    /// The action of a packet it forwarded.
    pub sent: i32,
    pass: i32,
    /// The action of a packet too big for the path, for programs that look the path up.
    too_big: Option<i32>,
}

pub const NAT: Program = Program {
    name: PROG_INGRESS,
    xdp: false,
    sent: TC_ACT_OK,
    pass: TCX_NEXT,
    too_big: None,
};
const DSR_XDP: Program = Program {
    name: PROG_DSR_XDP,
    xdp: true,
    sent: XDP_REDIRECT,
    pass: XDP_PASS,
    too_big: Some(XDP_DROP),
};
const DSR_TC: Program = Program {
    name: PROG_DSR,
    xdp: false,
    sent: TC_ACT_REDIRECT,
    pass: TCX_NEXT,
    too_big: Some(TC_ACT_SHOT),
};

/// The programs' cost per packet: NAT ingress on tc, DSR on XDP and tc; for each an
/// established flow's packet, a new client's SYN and the pass path of a packet that is not
/// ours.
pub fn costs() -> anyhow::Result<Vec<Cost>> {
    let ns = Netns::create(&unique_name("bench-tr")).context("test-run namespace")?;
    veth(&ns, IF, &ns, PEER)?;
    ns.ip_batch(&format!(
        "addr add {NODE}/24 dev {IF}\n\
         neigh add 10.77.0.2 lladdr {BACKEND_MAC} dev {IF} nud permanent\n"
    ))?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.run(|| {
        let mut out = Vec::new();
        let mut nat = load(ForwardMode::Nat)?;
        out.extend(measure(&mut nat, NAT, 0)?);
        let mut dsr = load(ForwardMode::Dsr)?;
        // Clients offset per program, past the other's new clients (1000 on): the DSR
        // programs share their flows.
        out.extend(measure(&mut dsr, DSR_XDP, 0)?);
        out.extend(measure(&mut dsr, DSR_TC, 2 * SINGLE)?);
        Ok(out)
    })?
}

/// Times `prog` on `dp`'s maps; its new clients are numbered from `offset` on.
fn measure(dp: &mut Datapath, prog: Program, offset: u32) -> anyhow::Result<Vec<Cost>> {
    let ifindex = ifindex()?;
    let vip: SocketAddr = VIP.parse()?;
    let client = |i: u32| {
        SocketAddr::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 0)) + i).into(),
            40000,
        )
    };
    let name = prog.name;
    let other = frame(client(0), SocketAddr::new(vip.ip(), 81), TCP_ACK, PAYLOAD);
    let (action, repeated) = run(dp, prog, ifindex, &other, REPEAT)?;
    anyhow::ensure!(
        action == prog.pass,
        "{name}: a packet to another port gave {action}"
    );
    let repeated = repeated.as_nanos() as f64;
    let single = average(
        SINGLE,
        |_| run(dp, prog, ifindex, &other, 1),
        prog.pass,
        name,
    )?;
    let overhead = (single - repeated).max(0.0);
    // One client's flow, set up by its SYN and confirmed by its ACK: the packets of an
    // established connection.
    let first = client(1 + offset);
    run(dp, prog, ifindex, &frame(first, vip, TCP_SYN, PAYLOAD), 1)?;
    let ack = frame(first, vip, TCP_ACK, PAYLOAD);
    run(dp, prog, ifindex, &ack, 1)?;
    let established = average(SINGLE, |_| run(dp, prog, ifindex, &ack, 1), prog.sent, name)?;
    let mut out = vec![Cost {
        what: Timed::Established.what(name),
        ns: established - overhead,
    }];
    if prog.name == PROG_INGRESS {
        // Warm: the rewritten packet made an established flow of its own back to the VIP,
        // so repeated runs alternate between two established packets, each rewritten.
        mirror(dp, first, vip, NAT_BACKEND.parse()?)?;
        let (action, warm, last) = run_with_output(dp, prog, ifindex, &ack, REPEAT)?;
        anyhow::ensure!(
            action == prog.sent,
            "{name}: a repeated established packet gave {action}"
        );
        // An even number of rewrites, each undoing the one before, checksums included: had
        // the mirror not matched, the packet would have stayed at the backend.
        anyhow::ensure!(
            REPEAT.is_multiple_of(2) && last == ack,
            "{name}: the repeated established packet did not alternate between its two flows"
        );
        out.push(Cost {
            what: Timed::EstablishedRepeated.what(name),
            ns: warm.as_nanos() as f64,
        });
    }
    if let Some(dropped) = prog.too_big {
        let big = frame(first, vip, TCP_ACK, FULL_PAYLOAD);
        let (action, too_big) = run(dp, prog, ifindex, &big, REPEAT)?;
        anyhow::ensure!(action == dropped, "{name}: a packet too big gave {action}");
        out.push(Cost {
            what: Timed::TooBig.what(name),
            ns: too_big.as_nanos() as f64,
        });
    }
    // A new client per run.
    let base = 1_000 + offset;
    let syn = average(
        SINGLE,
        |i| {
            let f = frame(client(base + i), vip, TCP_SYN, PAYLOAD);
            run(dp, prog, ifindex, &f, 1)
        },
        prog.sent,
        name,
    )?;
    // A known client's next connections (another port each): its SYN and the ACK that
    // confirms the flow and renews the client's affinity, timed together.
    let connection = average(
        SINGLE,
        |i| {
            let from = SocketAddr::new(first.ip(), 41000 + i as u16);
            let (a, syn) = run(dp, prog, ifindex, &frame(from, vip, TCP_SYN, PAYLOAD), 1)?;
            anyhow::ensure!(a == prog.sent, "{name}: a known client's SYN gave {a}");
            let (a, ack) = run(dp, prog, ifindex, &frame(from, vip, TCP_ACK, PAYLOAD), 1)?;
            Ok((a, syn + ack))
        },
        prog.sent,
        name,
    )?;
    out.extend([
        Cost {
            what: Timed::NewClient.what(name),
            ns: syn - overhead,
        },
        Cost {
            what: Timed::KnownClient.what(name),
            ns: connection - 2.0 * overhead,
        },
        Cost {
            what: Timed::Pass.what(name),
            ns: repeated,
        },
    ]);
    Ok(out)
}

/// Makes the NAT of `client`'s flow to `vip` an established flow in its own right: its
/// backend's address and port become a VIP, and the client's flow to it leads back to `vip`.
/// The program then rewrites its own output back to the input, both on the established path.
fn mirror(
    dp: &mut Datapath,
    client: SocketAddr,
    vip: SocketAddr,
    backend: SocketAddr,
) -> anyhow::Result<()> {
    let vips = dp.map_mut(names::VIPS).context("VIPs map")?;
    let mut vips: aya::maps::HashMap<_, VipKey, Vip> = aya::maps::HashMap::try_from(vips)?;
    let key = VipKey {
        addr: Addr16::from_ip(backend.ip()),
        port_be: backend.port().to_be(),
        proto: PROTO_TCP,
        _pad0: 0,
    };
    vips.insert(key, Vip { index: 0 }, 0)?;
    let flows = dp.map_mut(names::FLOWS).context("flows map")?;
    let mut flows: aya::maps::HashMap<_, FlowKey, Flow> = aya::maps::HashMap::try_from(flows)?;
    let forward = FlowKey {
        src: Addr16::from_ip(client.ip()),
        dst: Addr16::from_ip(vip.ip()),
        sport_be: client.port().to_be(),
        dport_be: vip.port().to_be(),
        proto: PROTO_TCP,
        _pad0: 0,
        _pad1: 0,
    };
    let flow = flows
        .get(&forward, 0)
        .context("the established flow is not in the flows map")?;
    let back = FlowKey {
        dst: Addr16::from_ip(backend.ip()),
        dport_be: backend.port().to_be(),
        ..forward
    };
    let to_vip = Flow {
        nat_addr: forward.dst,
        nat_port_be: forward.dport_be,
        ..flow
    };
    flows.insert(back, to_vip, 0)?;
    Ok(())
}

/// What a figure timed; its label in the report names the program and the packet.
#[derive(Clone, Copy)]
pub enum Timed {
    /// An established flow's packet, single runs.
    Established,
    /// The same, repeated (NAT: its output mirrored back into an established flow).
    EstablishedRepeated,
    /// DSR: an established flow's packet too big for the path, repeated.
    TooBig,
    /// A new client's SYN.
    NewClient,
    /// A known client's next connection: SYN and confirming ACK together.
    KnownClient,
    /// A packet that is not ours, repeated.
    Pass,
}

impl Timed {
    pub fn what(self, program: &str) -> String {
        let forwarding = if program == PROG_INGRESS {
            "rewrite"
        } else {
            "encapsulate, send"
        };
        match self {
            Timed::Established => format!("`{program}`, established flow ({forwarding})"),
            Timed::EstablishedRepeated => {
                format!("`{program}`, established flow ({forwarding}), ×{REPEAT}")
            }
            Timed::TooBig => format!(
                "`{program}`, established flow up to the FIB lookup (too big: dropped before the \
                 rewrite), ×{REPEAT}"
            ),
            Timed::NewClient => format!("`{program}`, new client's SYN ({forwarding}, new flow)"),
            Timed::KnownClient => {
                format!("`{program}`, known client's connection: SYN + confirming ACK")
            }
            Timed::Pass => format!("`{program}`, not ours (pass), ×{REPEAT}"),
        }
    }
}

/// A datapath (programs loaded, not attached) with one backend; in DSR, XDP sends by
/// redirect, as the daemon sets it on veth. The NAT backend listens on another port than the
/// VIP, so the rewrite changes both address and port.
fn load(mode: ForwardMode) -> anyhow::Result<Datapath> {
    let backend = if mode == ForwardMode::Dsr {
        BACKEND
    } else {
        NAT_BACKEND
    };
    let layer = Layer {
        iface: vec![IF.into()],
        vip: vec![VIP.into()],
        backend: vec![backend.into()],
        forward: Some(mode),
        xdp: (mode == ForwardMode::Dsr).then_some(XdpMode::Native),
        ..Layer::default()
    };
    let config: Config = layer.validate().context("test-run configuration")?;
    let mut dp = Datapath::load(&config).context("load the datapath")?;
    let mut set = BackendSet::default();
    let removed = set.reconcile(&[BackendSpec {
        addr: backend.parse()?,
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

/// Runs `frame` through `prog` `repeat` times, as received on `ifindex`: the
/// action and the kernel's time per run.
pub fn run(
    dp: &mut Datapath,
    prog: Program,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(i32, Duration)> {
    run_with_output(dp, prog, ifindex, frame, repeat).map(|(action, d, _)| (action, d))
}

/// [`run`], and the packet as the last run left it.
fn run_with_output(
    dp: &mut Datapath,
    prog: Program,
    ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(i32, Duration, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let res = if prog.xdp {
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
        dp.classifier(prog.name)?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
    }
    .context("BPF_PROG_TEST_RUN")?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value as i32, res.duration, out))
}

/// ns per run over `n` single runs, each of which must end in `want` (XDP_TX counts as sent
/// too): the median of `BLOCKS` blocks' means.
fn average(
    n: u32,
    mut one: impl FnMut(u32) -> anyhow::Result<(i32, Duration)>,
    want: i32,
    name: &str,
) -> anyhow::Result<f64> {
    median_of_blocks(n, |i| {
        let (action, d) = one(i)?;
        anyhow::ensure!(
            action == want || (want == XDP_REDIRECT && action == XDP_TX),
            "{name}: run {i} gave action {action}, expected {want}"
        );
        Ok(d)
    })
}

/// The median over `BLOCKS` blocks of the mean ns of `runs / BLOCKS` runs each: a block
/// that a hypervisor's steal or an interrupt lands in does not move the figure.
pub fn median_of_blocks(
    runs: u32,
    mut one: impl FnMut(u32) -> anyhow::Result<Duration>,
) -> anyhow::Result<f64> {
    let per_block = (runs / BLOCKS).max(1);
    let mut means = Vec::new();
    for b in 0..BLOCKS {
        let mut total = Duration::ZERO;
        for i in 0..per_block {
            total += one(b * per_block + i)?;
        }
        means.push(total.as_nanos() as f64 / f64::from(per_block));
    }
    means.sort_by(f64::total_cmp);
    Ok(means.get(means.len() / 2).copied().unwrap_or(0.0))
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
