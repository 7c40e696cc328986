//! Packet fuzzing through BPF_PROG_TEST_RUN: random and mutated frames through the real
//! object's `sticky_ingress` and `sticky_egress`, every outcome checked against a model.
//!
//! Every setup has a TCP VIP and a UDP VIP (on another port, or on the same one: then both
//! protocols' traffic to it is ours). Frames: valid client → VIP segments (SYN, ACK, data;
//! IPv4 options, IPv6 extension headers) and datagrams (`UDP_SHARE` percent of the valid
//! packets, some with checksum 0), then the same with 1–8 bit flips, cut at every length, with
//! bogus IHL / version, TCP data offset, UDP length, IPv4 total length / IPv6 payload length,
//! IPv6 extension-header chains (bogus lengths, routing, fragment, unknown, chains past the
//! walk), IPv4 and IPv6 fragments, other protocols (UDP at the TCP VIP's port, TCP at the UDP
//! VIP's, ICMP, ICMPv6, GRE, random) to the VIPs, other ethertypes (802.1Q, ARP, unknown, the
//! other family's), random bytes; on egress, backend replies (segments and datagrams) whole,
//! flipped and cut.
//!
//! Invariants, for every frame (a violation panics with the seed, the frame's index, its
//! category and both frames in hex):
//! - BPF_PROG_TEST_RUN refuses (EINVAL) exactly the frames shorter than Ethernet + the fixed
//!   IP header of their ethertype; everything else runs.
//! - `common::packets::classify` (the parsing rules, written out independently) says which
//!   frames are TCP segments and UDP datagrams. A frame that is neither, or is one not
//!   addressed to its protocol's VIP (ingress) or not a reply of a flow of its protocol the
//!   model saw NATed (egress), comes back byte-identical with `TCX_NEXT` (on to the next
//!   program of the hook).
//! - A segment or datagram to its protocol's VIP comes back with `TC_ACT_OK`, rewritten:
//!   nothing changed but the destination address and port and the checksums, and each
//!   checksum's error carried over (`packets::nat_rewrite`: valid stays valid; the programs
//!   never verify checksums, so a flipped checksum or header byte must stay wrong by exactly
//!   as much; a UDP checksum of 0 stays 0, and none is written as 0). The destination:
//!   - a non-SYN segment of a flow the model saw NATed: the same backend as before, whatever
//!     that backend's state now (draining, down and removed backends keep their established
//!     connections: that is the design, see `removed_backend_keeps_established_flows`);
//!   - a datagram of a UDP flow the model saw NATed: the same backend while the flow is fresh,
//!     a new flow (below) once it has been idle past the setup's UDP timeout. Idle since its last touch
//!     as the data path makes them (when the flow opens; when a packet of the established flow
//!     finds it over a second old), each known to within the bracket of clock readings
//!     around its run (before it the coarse clock the programs read, after it
//!     `CLOCK_MONOTONIC`); a datagram the clock cannot place on either side of the timeout
//!     may go either way;
//!   - a SYN, or a segment or datagram of a flow never seen: a new flow, which goes to the
//!     table's choice for the client (`sticky::table`, so a backend that is up) or to a
//!     backend this client had a flow to that still honours affinity (up or draining, same
//!     generation as when that flow last passed). Which of the two is not pinned down: that
//!     is where the affinity is recorded, free for the data path to change. When neither
//!     exists (no backend in service) the packet is dropped (`TC_ACT_SHOT`), unmodified (a
//!     UDP flow past its timeout is then gone).
//! - A reply of a flow on egress comes back with only its source changed, to the VIP of its
//!   protocol. A reply from a backend the client port's flow has since left (a SYN reusing
//!   the ports, or a datagram after the idle timeout, was balanced elsewhere) may be rewritten
//!   the same way or passed untouched.
//! - The counters: exactly the one counting that outcome (`COUNTER_PASS`, `_PARSE_ERROR` for
//!   `Malformed`, `_UNHANDLED`, `_NAT`, `_DROP_NO_BACKEND`) goes up by one, the others of
//!   these stay; a refused frame changes none.
//!
//! Direct server return (`sticky_dsr` on tc, `sticky_dsr_xdp`, drawn at random per frame,
//! run in a namespace whose FIB routes the backends through a gateway, MTU 9000 so that no
//! frame here is too big): the same frames and model on ingress, with DSR's outcomes — what
//! is not ours untouched with `TCX_NEXT` (tc, counted) or `XDP_PASS` (XDP: not counted there,
//! tc counts it after); a segment or datagram to its VIP redirected (`TC_ACT_REDIRECT` /
//! `XDP_REDIRECT`) as the input frame behind an outer IPIP/IP6IP6 header from the node to an
//! allowed backend (`dsr_net::encapsulated`: every outer field, the outer checksum from the
//! bytes, the inner packet byte for byte — so checksum errors carry over untouched); no
//! backend: dropped (`TC_ACT_SHOT` / `XDP_DROP`) unmodified, counted.
//!
//! Setups, each one loaded datapath whose backends change between phases: IPv4 and IPv6 VIPs
//! with 3 remote backends (all up; one draining; one more down; that one removed; all removed;
//! all back with new generations), and IPv4 and IPv6 local-port backends (the address stays,
//! the port changes). A datapath is reloaded (model reset) before its LRU maps could evict,
//! which would make an established flow's backend unpredictable.
//!
//! `STICKY_FUZZ_SEED` (decimal, 0x-hex, or `random`) and `STICKY_FUZZ_FRAMES` override the
//! defaults. A seed replays the same frames; which UDP flows outlive their idle timeout also
//! depends on how fast they run (the model follows the clock, so every run is checked as
//! strictly). Needs root (skips otherwise) and the real eBPF object.

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use aya::programs::ProgramError;
use common::{
    datapath::*,
    dsr_net::{self, GATEWAY_MAC, NODE_MAC, TC_ACT_REDIRECT, XDP_DROP, XDP_PASS, XDP_REDIRECT},
    packets::*,
};
use sticky::{
    clock::{monotonic_coarse_ns, monotonic_ns},
    config::{Config, Forwarding, XdpMode},
    decision::{Published, no_affinity},
    table,
};
use sticky_common::{
    Addr16, BackendState,
    choice::slot_of,
    maps::{
        Affinity, COUNTER_DROP_NAT_ERROR, COUNTER_DROP_NO_BACKEND, COUNTER_DSR,
        COUNTER_ENCAP_ERROR, COUNTER_NAT, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_TOO_BIG,
        COUNTER_UNHANDLED, NO_BACKEND,
    },
};
use sticky_tests::SplitMix64;

const DEFAULT_SEED: u64 = 0x5715_c4f0_22ed_0001;
const DEFAULT_FRAMES: u64 = 300_000;
/// Flow and client entries the datapath holds; new flows per datapath are kept to a quarter
/// of it (each makes two flow entries), far from where an LRU starts evicting.
const MAX_FLOWS: u32 = 65_536;
const NEW_FLOW_BUDGET: usize = MAX_FLOWS as usize / 4;
/// BPF_PROG_TEST_RUN refuses frames over about a page (less headroom and skb_shared_info).
const MAX_FRAME: usize = 3000;
/// The outcome counters; any others the object grows are not this test's business.
const COUNTERS: [(u32, &str); 9] = [
    (COUNTER_PASS, "pass"),
    (COUNTER_PARSE_ERROR, "parse error"),
    (COUNTER_UNHANDLED, "unhandled"),
    (COUNTER_DROP_NO_BACKEND, "drop: no backend"),
    (COUNTER_DROP_NAT_ERROR, "drop: NAT error"),
    (COUNTER_NAT, "nat"),
    (COUNTER_DSR, "dsr"),
    (COUNTER_ENCAP_ERROR, "drop: encapsulation error"),
    (COUNTER_TOO_BIG, "drop: too big"),
];
/// DSR setups' interface MTU: no frame of this campaign (`MAX_FRAME`) is too big for it.
const DSR_MTU: u32 = 9000;
/// Percent of the valid packets generated to a VIP that are UDP datagrams.
const UDP_SHARE: usize = 40;
/// The setups' UDP idle timeouts (`Scenario::udp_timeout`): short, so that flows of a run
/// outlive them and are balanced afresh, often across a change of backends; the long one over
/// the second after which an established flow's touch is renewed, so renewals matter too.
const UDP_TIMEOUT_SHORT: Duration = Duration::from_millis(300);
const UDP_TIMEOUT_LONG: Duration = Duration::from_millis(1200);
/// How often (at most) an established flow's packets renew its touch (`AFFINITY_REFRESH_NS`).
const REFRESH_NS: u64 = sticky_common::maps::AFFINITY_REFRESH_NS;
/// Widening of every clock bracket: the kernel's clock and `clock_gettime` may disagree by a
/// hair around a timekeeping update.
const CLOCK_SLACK_NS: u64 = 2_000_000;

#[test]
fn packet_fuzz() {
    if !bpf_or_skip() {
        return;
    }
    let seed = env_seed("STICKY_FUZZ_SEED", DEFAULT_SEED);
    let frames = env_count("STICKY_FUZZ_FRAMES", DEFAULT_FRAMES);
    println!(
        "packet fuzz: seed {seed:#x} (STICKY_FUZZ_SEED), {frames} frames (STICKY_FUZZ_FRAMES)"
    );
    let start = Instant::now();
    let mut stats = Stats::default();
    println!(
        "packet fuzz: {UDP_SHARE}% of the valid packets UDP, UDP idle timeouts \
         {UDP_TIMEOUT_SHORT:?} / {UDP_TIMEOUT_LONG:?}"
    );
    let mut rng = Rng::new(seed);
    let scenarios = scenarios();
    let shares: u64 = scenarios.iter().map(|s| s.share).sum();
    for scenario in &scenarios {
        let budget = frames * scenario.share / shares;
        let scenario_rng = Rng::new(rng.next());
        let run = |stats: &mut Stats| {
            let mut fuzz = Fuzz::new(scenario, scenario_rng, seed);
            for (i, step) in scenario.steps.iter().enumerate() {
                fuzz.step(*step);
                let n = budget / scenario.steps.len() as u64
                    + u64::from(i == 0) * (budget % scenario.steps.len() as u64);
                for _ in 0..n {
                    fuzz.one(stats);
                }
            }
            stats.reloads += fuzz.reloads;
            stats.reopened += fuzz.reopened;
            stats.undecided += fuzz.undecided;
            stats.renewed += fuzz.renewed;
        };
        if scenario.dsr {
            let ns = dsr_net::namespace(DSR_MTU);
            ns.run(|| run(&mut stats)).expect("DSR setup's namespace");
        } else {
            run(&mut stats);
        }
    }
    stats.print(start.elapsed());
}

/// The checksum rule itself (no root needed): a rewrite of a frame whose checksums were wrong
/// on input passes only if it carries the error over, as an incremental update does; a
/// checksum recomputed from scratch, or left as it was, fails.
#[test]
fn checksum_errors_must_carry_over() {
    let cases = [
        ("198.51.100.1:40000", "192.0.2.10:80", "10.1.0.2:8080"),
        ("[fd00:c::1]:40000", "[fd00::100]:80", "[fd00:1::2]:8080"),
    ];
    let cases = cases
        .map(|(a, b, c)| (sa(a), sa(b), sa(c)))
        .into_iter()
        .flat_map(|(client, vip, backend)| {
            let tcp = |to| Pkt::tcp(client, to, ACK).payload(HTTP_GET);
            let udp = |to| Pkt::datagram(client, to).payload(HTTP_GET);
            [(tcp(vip), tcp(backend)), (udp(vip), udp(backend))]
                .map(|(i, o)| (client, backend, i, o))
        });
    for (client, backend, input, output) in cases {
        let (input, output) = (input.build(), output.build());
        let l = Layout::parse(&input).expect("a TCP segment or UDP datagram");
        // One more in a checksum field: one more in that header's sum, on both sides.
        let off_by_one = |f: &[u8], off: usize| {
            let v = be16(f, off).expect("in the frame");
            assert!(v < 0xfffe, "precondition: no wrap in the test packet");
            patched(f, off, &(v + 1).to_be_bytes())
        };
        let name = format!("{} checksum", l.l4_name());
        let mut fields = vec![(name.as_str(), l.csum_off())];
        if !l.v6 {
            fields.push(("IPv4 header checksum", l.l3 + 10));
        }
        for (name, off) in fields {
            let bad_in = off_by_one(&input, off);
            assert_eq!(
                nat_rewrite(&bad_in, &off_by_one(&output, off), &l).map(|a| a.dst),
                Ok(backend),
                "{client}: {name} error carried over"
            );
            let err = nat_rewrite(&bad_in, &output, &l).expect_err("recomputed from scratch");
            assert!(err.contains(name), "{client}: {err}");
            let mut stale = output.clone();
            stale[off..off + 2].copy_from_slice(&bad_in[off..off + 2]);
            let err = nat_rewrite(&bad_in, &stale, &l).expect_err("checksum not updated");
            assert!(err.contains(name), "{client}: {err}");
        }
        if l.is_udp() {
            // No checksum on input: none on output, whatever the error elsewhere.
            let none_in = patched(&input, l.csum_off(), &[0, 0]);
            let none_out = patched(&output, l.csum_off(), &[0, 0]);
            assert_eq!(
                nat_rewrite(&none_in, &none_out, &l).map(|a| a.dst),
                Ok(backend)
            );
            let err = nat_rewrite(&none_in, &output, &l).expect_err("a checksum made up");
            assert!(err.contains("must keep none"), "{client}: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Backend changes between phases (indices into `Scenario::backends`).
#[derive(Clone, Copy, Debug)]
enum Step {
    Start,
    Drain(usize),
    Down(usize),
    Remove(usize),
    RemoveAll,
    AddAll,
}

struct Scenario {
    name: &'static str,
    /// The TCP VIP.
    vip: SocketAddr,
    /// The UDP VIP: the same address, another port or the same one.
    udp_vip: SocketAddr,
    backends: Vec<SocketAddr>,
    steps: Vec<Step>,
    /// Relative share of the frames.
    share: u64,
    /// Forwarding by DSR (`Prog::Dsr` / `Prog::DsrXdp` on ingress, no egress).
    dsr: bool,
    /// The UDP idle timeout.
    udp_timeout: Duration,
}

fn scenarios() -> Vec<Scenario> {
    use Step::*;
    let remote = vec![Start, Drain(0), Down(1), Remove(1), RemoveAll, AddAll];
    let local = vec![Start, Drain(0), Remove(0)];
    vec![
        Scenario {
            name: "v4",
            vip: sa("192.0.2.10:80"),
            udp_vip: sa("192.0.2.10:53"),
            backends: v4_backends(3),
            steps: remote.clone(),
            share: 7,
            dsr: false,
            udp_timeout: UDP_TIMEOUT_SHORT,
        },
        Scenario {
            name: "v6",
            vip: sa("[fd00::100]:80"),
            udp_vip: sa("[fd00::100]:80"),
            backends: v6_backends(3),
            steps: remote.clone(),
            share: 7,
            dsr: false,
            udp_timeout: UDP_TIMEOUT_LONG,
        },
        Scenario {
            name: "v4 local",
            vip: sa("192.0.2.10:80"),
            udp_vip: sa("192.0.2.10:80"),
            backends: vec![sa("192.0.2.10:8080"), sa("192.0.2.10:8081")],
            steps: local.clone(),
            share: 3,
            dsr: false,
            udp_timeout: UDP_TIMEOUT_SHORT,
        },
        Scenario {
            name: "v6 local",
            vip: sa("[fd00::100]:80"),
            udp_vip: sa("[fd00::100]:53"),
            backends: vec![sa("[fd00::100]:8080"), sa("[fd00::100]:8081")],
            steps: local,
            share: 3,
            dsr: false,
            udp_timeout: UDP_TIMEOUT_LONG,
        },
        // DSR backends are other hosts on the TCP VIP's port, routed through the gateway (the
        // UDP VIP's datagrams reach them on the VIP's port, as sent).
        Scenario {
            name: "v4 dsr",
            vip: sa("192.0.2.10:80"),
            udp_vip: sa("192.0.2.10:53"),
            backends: (1..=3).map(|i| sa(&format!("10.{i}.0.2:80"))).collect(),
            steps: remote.clone(),
            share: 4,
            dsr: true,
            udp_timeout: UDP_TIMEOUT_SHORT,
        },
        Scenario {
            name: "v6 dsr",
            vip: sa("[fd00::100]:80"),
            udp_vip: sa("[fd00::100]:80"),
            backends: (1..=3).map(|i| sa(&format!("[fd00:{i}::2]:80"))).collect(),
            steps: remote,
            share: 4,
            dsr: true,
            udp_timeout: UDP_TIMEOUT_LONG,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

/// SplitMix64 with the draws the generators need: the same sequence everywhere for a seed.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(SplitMix64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// The model: what the data path must have done so far
// ---------------------------------------------------------------------------------------------

/// A flow in the model: its protocol and client (a setup has one VIP per protocol).
type FlowId = (u8, SocketAddr);

/// A reply the model knows: protocol, backend, client.
type ReplyId = (u8, SocketAddr, SocketAddr);

/// `CLOCK_MONOTONIC` bounds (ns) of an instant: a run's, or a flow's last touch.
type Bracket = (u64, u64);

#[derive(Default)]
struct Model {
    /// Each flow to a VIP → the backend it went to last (and, UDP, its clock).
    flows: HashMap<FlowId, ModelFlow>,
    /// Clients of those flows, for picking one at random.
    flow_clients: Vec<SocketAddr>,
    /// Every flow NATed: the replies egress knows.
    replies: HashSet<ReplyId>,
    reply_list: Vec<ReplyId>,
    /// Client address → (backend id, generation) of the backends its new flows went to.
    affine: HashMap<IpAddr, HashSet<(u32, u32)>>,
    /// Flows opened (or reopened) since the datapath was loaded.
    new_flows: usize,
}

struct ModelFlow {
    backend: SocketAddr,
    /// UDP only: where the data path holds the flow and when it last touched it.
    udp: Option<UdpClock>,
}

#[derive(Clone, Copy, Debug)]
struct UdpClock {
    state: UdpState,
    touched: Bracket,
}

/// Where a UDP flow lives: among the new flows (opened, not confirmed: its touch is never
/// renewed), the established ones (a touch over a second old is renewed by the next datagram),
/// or either (a datagram the clock could not place: confirmed or reopened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UdpState {
    New,
    Established,
    Either,
}

/// Whether a UDP flow has outlived its idle timeout when a datagram of it is run.
enum Idle {
    Fresh,
    Expired,
    Undecided,
}

impl UdpClock {
    /// Opened (or reopened) by a datagram run within `now`.
    fn opened(now: Bracket) -> Self {
        UdpClock {
            state: UdpState::New,
            touched: now,
        }
    }

    fn idle(&self, now: Bracket, timeout: Duration) -> Idle {
        let timeout = timeout.as_nanos() as u64;
        let (least, most) = (
            now.0.saturating_sub(self.touched.1),
            now.1.saturating_sub(self.touched.0),
        );
        if most <= timeout {
            Idle::Fresh
        } else if least > timeout {
            Idle::Expired
        } else {
            Idle::Undecided
        }
    }

    /// After a datagram within `now` that found the flow fresh: confirmed if it was new (its
    /// touch kept), its touch renewed if established and over a second old. Also whether it
    /// surely was renewed.
    fn kept(self, now: Bracket) -> (Self, bool) {
        let (lo, hi) = self.touched;
        let may_renew = self.state != UdpState::New && now.1.saturating_sub(lo) > REFRESH_NS;
        let must_renew =
            self.state == UdpState::Established && now.0.saturating_sub(hi) > REFRESH_NS;
        let touched = if must_renew {
            now
        } else if may_renew {
            (lo, now.1)
        } else {
            (lo, hi)
        };
        let clock = UdpClock {
            state: UdpState::Established,
            touched,
        };
        (clock, must_renew)
    }
}

/// What became of a client packet's flow, as far as the model can tell before the run.
#[derive(Clone, Copy, Debug)]
enum Flowing {
    /// A flow never seen, or a SYN: opened.
    New,
    /// A flow the model knows, kept.
    Established,
    /// A UDP flow past its idle timeout: reopened.
    Reopened,
    /// A UDP flow the clock cannot place: kept (to this backend) or reopened.
    Undecided(SocketAddr),
}

/// What a frame must come back as.
enum Want {
    /// EINVAL from BPF_PROG_TEST_RUN: too short to run.
    Refused,
    /// `TCX_NEXT`, byte-identical, this counter up.
    Unchanged { counter: u32, why: &'static str },
    /// Ingress to its VIP: rewritten to one of `allowed`, or dropped when it is empty (or
    /// when `may_drop`: a flow the clock cannot place, with nothing in service to reopen it).
    Dnat {
        layout: Layout,
        allowed: Vec<SocketAddr>,
        flowing: Flowing,
        may_drop: bool,
    },
    /// Egress reply of a flow: source back to `vip` (`must`), or possibly untouched.
    Snat {
        layout: Layout,
        must: bool,
        vip: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Refused,
    Passed,
    DnatNew,
    DnatEstablished,
    DnatReopened,
    Snat,
    Dropped,
    DsrNew,
    DsrEstablished,
    DsrReopened,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Refused => "refused (EINVAL, too short to run)",
            Outcome::Passed => "TCX_NEXT / XDP_PASS, byte-identical",
            Outcome::DnatNew => "TC_ACT_OK, DNAT of a new flow",
            Outcome::DnatEstablished => "TC_ACT_OK, DNAT of an established flow",
            Outcome::DnatReopened => "TC_ACT_OK, DNAT of a UDP flow reopened after idling",
            Outcome::Snat => "TC_ACT_OK, reverse NAT of a reply",
            Outcome::Dropped => "TC_ACT_SHOT / XDP_DROP (no backend in service)",
            Outcome::DsrNew => "redirected, encapsulated: a new flow",
            Outcome::DsrEstablished => "redirected, encapsulated: an established flow",
            Outcome::DsrReopened => "redirected, encapsulated: a UDP flow reopened",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Categories and statistics
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Valid,
    BitFlip,
    Truncated,
    IpHeader,
    DataOffset,
    UdpLength,
    IpLength,
    ExtHeaders,
    Fragment,
    OtherProto,
    Ethertype,
    RandomBytes,
    Reply,
    ReplyBitFlip,
    ReplyTruncated,
}

impl Category {
    fn name(self) -> &'static str {
        match self {
            Category::Valid => "valid segment/datagram to its VIP",
            Category::BitFlip => "valid packet, 1-8 bits flipped",
            Category::Truncated => "packet cut at every length",
            Category::IpHeader => "bogus IHL (v4) / version (v6)",
            Category::DataOffset => "TCP data offset 0-15",
            Category::UdpLength => "bogus UDP length",
            Category::IpLength => "bogus total / payload length",
            Category::ExtHeaders => "IPv6 ext. chains / IPv4 options",
            Category::Fragment => "fragments",
            Category::OtherProto => "other protocol / other VIP port",
            Category::Ethertype => "VLAN/ARP/unknown/other family",
            Category::RandomBytes => "random bytes",
            Category::Reply => "egress: backend reply",
            Category::ReplyBitFlip => "egress: reply, bits flipped",
            Category::ReplyTruncated => "egress: reply cut at every length",
        }
    }

    /// How often each is drawn (the truncation sweeps come from a queue, one frame a draw).
    const WEIGHTS: [(Category, usize); 15] = [
        (Category::Valid, 14),
        (Category::BitFlip, 22),
        (Category::Truncated, 8),
        (Category::IpHeader, 4),
        (Category::DataOffset, 4),
        (Category::UdpLength, 4),
        (Category::IpLength, 5),
        (Category::ExtHeaders, 6),
        (Category::Fragment, 4),
        (Category::OtherProto, 4),
        (Category::Ethertype, 3),
        (Category::RandomBytes, 4),
        (Category::Reply, 8),
        (Category::ReplyBitFlip, 10),
        (Category::ReplyTruncated, 4),
    ];

    fn draw(rng: &mut Rng) -> Self {
        let total: usize = Self::WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut x = rng.below(total);
        for (c, w) in Self::WEIGHTS {
            if x < w {
                return c;
            }
            x -= w;
        }
        unreachable!("weights sum to total")
    }
}

#[derive(Default)]
struct Stats {
    frames: u64,
    /// Per category: frames, and how many of each outcome.
    categories: BTreeMap<Category, BTreeMap<Outcome, u64>>,
    /// The same by what the model reads the input frame as.
    transports: BTreeMap<&'static str, BTreeMap<Outcome, u64>>,
    actions: BTreeMap<String, u64>,
    reloads: u64,
    /// UDP flows reopened after their idle timeout; datagrams the clock could not place;
    /// datagrams that must have renewed their established flow's touch.
    reopened: u64,
    undecided: u64,
    renewed: u64,
}

/// What the model reads a frame as, for the statistics.
fn transport(frame: &[u8]) -> &'static str {
    match classify(frame) {
        Shape::Transport(l) if l.is_udp() => "UDP datagram",
        Shape::Transport(_) => "TCP segment",
        Shape::Other => "other protocol / ethertype",
        Shape::Malformed => "malformed",
        Shape::Unhandled => "unhandled (fragment, ext. headers)",
    }
}

impl Stats {
    fn record(&mut self, category: Category, outcome: Outcome, action: Option<i32>, frame: &[u8]) {
        self.frames += 1;
        *self
            .categories
            .entry(category)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        *self
            .transports
            .entry(transport(frame))
            .or_default()
            .entry(outcome)
            .or_default() += 1;
        let action = action.map_or("EINVAL (refused)".into(), |a| {
            format!("{a} ({})", action_name(a))
        });
        *self.actions.entry(action).or_default() += 1;
    }

    fn print(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        println!(
            "packet fuzz: {} frames in {secs:.1} s ({:.0} frames/s), {} reloads (maps near full)",
            self.frames,
            self.frames as f64 / secs,
            self.reloads
        );
        println!(
            "  {:<36} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "category", "frames", "passed", "dnat/dsr", "snat", "dropped", "refused"
        );
        let mut totals: BTreeMap<Outcome, u64> = BTreeMap::new();
        let row = |name: &str, outcomes: &BTreeMap<Outcome, u64>| {
            let n = |o: &[Outcome]| -> u64 { o.iter().filter_map(|o| outcomes.get(o)).sum() };
            println!(
                "  {:<36} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                name,
                outcomes.values().sum::<u64>(),
                n(&[Outcome::Passed]),
                n(&[
                    Outcome::DnatNew,
                    Outcome::DnatEstablished,
                    Outcome::DnatReopened,
                    Outcome::DsrNew,
                    Outcome::DsrEstablished,
                    Outcome::DsrReopened,
                ]),
                n(&[Outcome::Snat]),
                n(&[Outcome::Dropped]),
                n(&[Outcome::Refused]),
            );
        };
        for (c, outcomes) in &self.categories {
            for (o, k) in outcomes {
                *totals.entry(*o).or_default() += k;
            }
            row(c.name(), outcomes);
        }
        println!("  by what the model reads the input as:");
        for (t, outcomes) in &self.transports {
            row(t, outcomes);
        }
        println!(
            "  UDP flows balanced afresh after their idle timeout: {}; datagrams the clock \
             could not place on either side of it: {}; touches renewed: {}",
            self.reopened, self.undecided, self.renewed
        );
        println!("  outcomes:");
        for (o, k) in totals {
            println!("    {:<44} {k:>8}", o.name());
        }
        println!("  actions:");
        for (a, k) in &self.actions {
            println!("    {a:<44} {k:>8}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzer for one scenario
// ---------------------------------------------------------------------------------------------

struct Fuzz<'a> {
    scenario: &'a Scenario,
    seed: u64,
    rng: Rng,
    lb: Option<Lb>,
    /// The table the datapath holds (rebuilt after every change).
    table: Vec<u32>,
    model: Model,
    /// Backends configured now, and the phase's name.
    current: Vec<SocketAddr>,
    phase: String,
    /// Frames of a truncation sweep still to run.
    queue: Vec<(Category, Prog, Vec<u8>)>,
    frame: u64,
    reloads: u64,
    /// UDP flows balanced afresh after their idle timeout, datagrams the clock could not
    /// place on either side of it, touches of established flows renewed.
    reopened: u64,
    undecided: u64,
    renewed: u64,
    /// The outcome counters as last read.
    counters: [u64; COUNTERS.len()],
}

impl<'a> Fuzz<'a> {
    fn new(scenario: &'a Scenario, rng: Rng, seed: u64) -> Self {
        Fuzz {
            scenario,
            seed,
            rng,
            lb: None,
            table: Vec::new(),
            model: Model::default(),
            current: Vec::new(),
            phase: String::new(),
            queue: Vec::new(),
            frame: 0,
            reloads: 0,
            reopened: 0,
            undecided: 0,
            renewed: 0,
            counters: [0; COUNTERS.len()],
        }
    }

    fn config(&self) -> Config {
        let vips = [
            sticky::addr::VipAddr::tcp(self.scenario.vip),
            udp_vip(self.scenario.udp_vip),
        ];
        let config = Config {
            max_flows: MAX_FLOWS,
            max_clients: MAX_FLOWS,
            udp_timeout: self.scenario.udp_timeout,
            ..config_with("packet-fuzz", &vips, &self.scenario.backends)
        };
        if !self.scenario.dsr {
            return config;
        }
        Config {
            ifaces: vec![dsr_net::IF.into()],
            forward: Forwarding::Dsr {
                xdp: XdpMode::Native,
                sources: vec![self.node()],
            },
            ..config
        }
    }

    /// The DSR node's address of the VIP's family: the outer source.
    fn node(&self) -> IpAddr {
        let node = if self.v6() {
            dsr_net::NODE_V6
        } else {
            dsr_net::NODE_V4
        };
        node.parse().expect("an address")
    }

    fn lb(&mut self) -> &mut Lb {
        self.lb.as_mut().expect("loaded at Step::Start")
    }

    fn set(&self) -> &sticky::backends::BackendSet {
        &self.lb.as_ref().expect("loaded at Step::Start").set
    }

    fn step(&mut self, step: Step) {
        let backends = &self.scenario.backends;
        match step {
            Step::Start => {
                self.current = backends.clone();
                self.reload();
            }
            Step::Drain(i) => self.lb().set_state(backends[i], BackendState::Draining),
            Step::Down(i) => self.lb().set_state(backends[i], BackendState::Down),
            Step::Remove(i) => {
                self.current.retain(|&b| b != backends[i]);
                let current = self.current.clone();
                self.lb().set_backends(&current);
            }
            Step::RemoveAll => {
                self.current.clear();
                self.lb().set_backends(&[]);
            }
            Step::AddAll => {
                self.current = backends.clone();
                self.lb().set_backends(backends);
            }
        }
        self.phase = format!("{} / {step:?}", self.scenario.name);
        self.after_change();
    }

    /// A fresh datapath with the same backends and states, and a fresh model: the old one's
    /// maps are about to fill up.
    fn reload(&mut self) {
        let states: Vec<(SocketAddr, BackendState)> =
            self.lb.as_ref().map_or_else(Vec::new, |lb| {
                lb.set
                    .iter()
                    .filter(|(_, s)| s.state != BackendState::Up)
                    .map(|(_, s)| (s.addr, s.state))
                    .collect()
            });
        if self.lb.take().is_some() {
            self.reloads += 1;
        }
        let mut lb = Lb::load(&self.config(), std::slice::from_ref(&self.current));
        for (addr, state) in states {
            lb.set_state(addr, state);
        }
        self.lb = Some(lb);
        self.model = Model::default();
        self.after_change();
    }

    fn after_change(&mut self) {
        self.table = table::build(&self.set().members(), TABLE_SIZE, SEED);
        self.counters = self.read_counters();
    }

    fn read_counters(&self) -> [u64; COUNTERS.len()] {
        let all = self.lb.as_ref().expect("loaded").counters();
        COUNTERS.map(|(i, _)| all.values[i as usize])
    }

    /// Backends a new flow from `client` may go to (see the module doc): the decision
    /// (`sticky_common::choice`, through the view `sticky lookup` uses) with no affinity, and
    /// with each affinity the model allows the client to have.
    fn new_flow_targets(&self, client: IpAddr) -> Vec<SocketAddr> {
        let set = self.set();
        let key = Addr16::from_ip(client);
        let view = Published::new(
            set,
            &self.table,
            sticky::decision::settings(SEED, u64::MAX),
            no_affinity,
        );
        let slot = slot_of(&key, view.settings()) as usize;
        if let Some(&id) = self.table.get(slot)
            && id != NO_BACKEND
        {
            let backend = set.get(id).expect("the table names configured backends");
            assert_eq!(
                backend.state,
                BackendState::Up,
                "the table holds only backends that are up"
            );
        }
        let mut out: Vec<SocketAddr> = view
            .choose(&key, 0)
            .and_then(|c| set.get(c.id))
            .map(|b| b.addr)
            .into_iter()
            .collect();
        for &(backend_id, generation) in self.model.affine.get(&client).into_iter().flatten() {
            let affinity = Affinity {
                backend_id,
                generation,
                last_seen_ns: 0,
            };
            if let Some(id) = view.holding(&key, affinity, 0)
                && let Some(b) = set.get(id)
                && !out.contains(&b.addr)
            {
                out.push(b.addr);
            }
        }
        out
    }

    /// The VIP of a protocol.
    fn vip_of(&self, proto: u8) -> SocketAddr {
        if proto == PROTO_UDP {
            self.scenario.udp_vip
        } else {
            self.scenario.vip
        }
    }

    /// What `frame` must come back as, run on `prog` within `now`.
    fn want(&self, prog: Prog, frame: &[u8], now: Bracket) -> Want {
        if refused(prog, frame) {
            return Want::Refused;
        }
        let layout = match classify(frame) {
            Shape::Transport(l) => l,
            Shape::Other => {
                return Want::Unchanged {
                    counter: COUNTER_PASS,
                    why: "neither TCP nor UDP over IP",
                };
            }
            Shape::Malformed => {
                return Want::Unchanged {
                    counter: COUNTER_PARSE_ERROR,
                    why: "malformed",
                };
            }
            Shape::Unhandled => {
                return Want::Unchanged {
                    counter: COUNTER_UNHANDLED,
                    why: "fragment / routing header / long chain",
                };
            }
        };
        let vip = self.vip_of(layout.proto);
        match prog {
            Prog::Ingress | Prog::Dsr | Prog::DsrXdp if layout.dst == vip => {
                self.want_dnat(layout, now)
            }
            Prog::Ingress | Prog::Dsr | Prog::DsrXdp => Want::Unchanged {
                counter: COUNTER_PASS,
                why: "TCP/UDP, not to the VIP of its protocol",
            },
            Prog::Egress => {
                let (proto, backend, client) = (layout.proto, layout.src, layout.dst);
                if self.model.replies.contains(&(proto, backend, client)) {
                    let flow = self.model.flows.get(&(proto, client));
                    let must = flow.map(|f| f.backend) == Some(backend);
                    Want::Snat { layout, must, vip }
                } else {
                    Want::Unchanged {
                        counter: COUNTER_PASS,
                        why: "TCP/UDP, not a reply of a known flow",
                    }
                }
            }
        }
    }

    /// A client packet to its VIP (see the module doc).
    fn want_dnat(&self, layout: Layout, now: Bracket) -> Want {
        let flow = self.model.flows.get(&(layout.proto, layout.src));
        let kept = |b: SocketAddr| Want::Dnat {
            allowed: vec![b],
            flowing: Flowing::Established,
            may_drop: false,
            layout: layout.clone(),
        };
        let opened = |flowing: Flowing| Want::Dnat {
            allowed: self.new_flow_targets(layout.src.ip()),
            flowing,
            may_drop: false,
            layout: layout.clone(),
        };
        let Some(flow) = flow else {
            return opened(Flowing::New);
        };
        let Some(clock) = flow.udp else {
            return if layout.syn() {
                opened(Flowing::New)
            } else {
                kept(flow.backend)
            };
        };
        match clock.idle(now, self.scenario.udp_timeout) {
            Idle::Fresh => kept(flow.backend),
            Idle::Expired => opened(Flowing::Reopened),
            Idle::Undecided => {
                let targets = self.new_flow_targets(layout.src.ip());
                let mut allowed = vec![flow.backend];
                allowed.extend(targets.iter().filter(|&&b| b != flow.backend));
                Want::Dnat {
                    allowed,
                    flowing: Flowing::Undecided(flow.backend),
                    may_drop: targets.is_empty(),
                    layout,
                }
            }
        }
    }

    /// Generates, runs and checks one frame.
    fn one(&mut self, stats: &mut Stats) {
        let (category, prog, frame) = loop {
            let (category, prog, frame) = self.generate();
            if !self.scenario.dsr {
                break (category, prog, frame);
            }
            // DSR has no egress program: replies never pass the node.
            if prog == Prog::Ingress {
                let prog = if self.rng.percent(50) {
                    Prog::Dsr
                } else {
                    Prog::DsrXdp
                };
                break (category, prog, frame);
            }
        };
        let index = self.frame;
        self.frame += 1;
        // The run's time, for the UDP idle timeout: the model did not change meanwhile, so
        // what it wants can be worked out after.
        // The programs read the coarse clock: at most a tick behind the fine one, never ahead.
        let before = monotonic_coarse_ns();
        let run = self.lb().run(prog, &frame);
        let now = (
            before.saturating_sub(CLOCK_SLACK_NS),
            monotonic_ns() + CLOCK_SLACK_NS,
        );
        let want = self.want(prog, &frame, now);
        let (action, out) = match (run, &want) {
            (Err(ProgramError::SyscallError(e)), Want::Refused)
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                self.expect_counter(None, index, category, prog, &frame, &[]);
                stats.record(category, Outcome::Refused, None, &frame);
                return;
            }
            (Err(e), _) => self.fail(
                index,
                category,
                prog,
                &frame,
                &[],
                &format!("BPF_PROG_TEST_RUN failed: {e:?}"),
            ),
            (Ok(_), Want::Refused) => self.fail(
                index,
                category,
                prog,
                &frame,
                &[],
                "the kernel ran a frame expected to be refused (EINVAL)",
            ),
            (Ok(ran), _) => ran,
        };
        let checked = self.verify(prog, &want, action, &frame, &out, now);
        let (outcome, counter) = match checked {
            Ok(done) => done,
            Err(why) => self.fail(index, category, prog, &frame, &out, &why),
        };
        self.expect_counter(counter, index, category, prog, &frame, &out);
        stats.record(category, outcome, Some(action), &frame);
        if self.model.new_flows >= NEW_FLOW_BUDGET {
            self.reload();
        }
    }

    /// Checks the output against `want`; returns the outcome and the counter it must count.
    fn verify(
        &mut self,
        prog: Prog,
        want: &Want,
        action: i32,
        input: &[u8],
        out: &[u8],
        now: Bracket,
    ) -> Result<(Outcome, Option<u32>), String> {
        if prog.is_dsr() {
            return self.verify_dsr(prog == Prog::DsrXdp, want, action, input, out, now);
        }
        let want_action = |want: i32| {
            if action == want {
                Ok(())
            } else {
                Err(format!(
                    "action {action} ({}), want {want} ({})",
                    action_name(action),
                    action_name(want)
                ))
            }
        };
        match want {
            Want::Refused => unreachable!("handled by the caller"),
            Want::Unchanged { counter, why } => {
                want_action(TCX_NEXT).map_err(|e| format!("{why}: {e}"))?;
                unchanged(input, out).map_err(|e| format!("{why}, must pass untouched: {e}"))?;
                Ok((Outcome::Passed, Some(*counter)))
            }
            Want::Dnat {
                layout,
                allowed,
                may_drop,
                ..
            } if allowed.is_empty() || (*may_drop && action == TC_ACT_SHOT) => {
                want_action(TC_ACT_SHOT).map_err(|e| format!("new flow, no backend: {e}"))?;
                unchanged(input, out).map_err(|e| format!("dropped frame modified: {e}"))?;
                self.record_drop(layout);
                Ok((Outcome::Dropped, Some(COUNTER_DROP_NO_BACKEND)))
            }
            Want::Dnat {
                layout,
                allowed,
                flowing,
                ..
            } => {
                let what = flowing.what();
                want_action(TC_ACT_OK).map_err(|e| format!("{what}: {e}"))?;
                let after = nat_rewrite(input, out, layout).map_err(|e| format!("{what}: {e}"))?;
                if after.src != layout.src {
                    return Err(format!(
                        "{what}: source changed on ingress, {} -> {}",
                        layout.src, after.src
                    ));
                }
                if !allowed.contains(&after.dst) {
                    return Err(format!(
                        "{what} from {} sent to {}, allowed: {allowed:?} (backends: {:?})",
                        layout.describe(),
                        after.dst,
                        self.set().iter().map(|(_, s)| s).collect::<Vec<_>>()
                    ));
                }
                let outcome = match self.record_dnat(layout, after.dst, *flowing, now) {
                    Flowing::New => Outcome::DnatNew,
                    Flowing::Reopened => Outcome::DnatReopened,
                    Flowing::Established | Flowing::Undecided(_) => Outcome::DnatEstablished,
                };
                Ok((outcome, Some(COUNTER_NAT)))
            }
            Want::Snat { layout, must, vip } => {
                if !must && input == out {
                    want_action(TCX_NEXT).map_err(|e| format!("reply passed: {e}"))?;
                    return Ok((Outcome::Passed, Some(COUNTER_PASS)));
                }
                want_action(TC_ACT_OK).map_err(|e| format!("reply: {e}"))?;
                let after = nat_rewrite(input, out, layout).map_err(|e| format!("reply: {e}"))?;
                if after.dst != layout.dst || after.src != *vip {
                    return Err(format!(
                        "reply {} became {}, want {vip} -> {}",
                        layout.describe(),
                        after.describe(),
                        layout.dst
                    ));
                }
                Ok((Outcome::Snat, Some(COUNTER_NAT)))
            }
        }
    }

    /// `verify` for the DSR programs (see the module doc).
    fn verify_dsr(
        &mut self,
        xdp: bool,
        want: &Want,
        action: i32,
        input: &[u8],
        out: &[u8],
        now: Bracket,
    ) -> Result<(Outcome, Option<u32>), String> {
        let want_action = |want: i32, name: &str| {
            if action == want {
                Ok(())
            } else {
                Err(format!("action {action}, want {want} ({name})"))
            }
        };
        let hook = if xdp { "XDP" } else { "tc" };
        match want {
            Want::Refused => unreachable!("handled by the caller"),
            Want::Snat { .. } => unreachable!("DSR runs no egress"),
            Want::Unchanged { counter, why } => {
                if xdp {
                    want_action(XDP_PASS, "XDP_PASS")
                } else {
                    want_action(TCX_NEXT, "TCX_NEXT")
                }
                .map_err(|e| format!("{hook}, {why}: {e}"))?;
                unchanged(input, out)
                    .map_err(|e| format!("{hook}, {why}, must pass untouched: {e}"))?;
                // XDP leaves counting what it passes on to the tc program behind it.
                Ok((Outcome::Passed, (!xdp).then_some(*counter)))
            }
            Want::Dnat {
                layout,
                allowed,
                may_drop,
                ..
            } if allowed.is_empty() || (*may_drop && matches!(action, XDP_DROP | TC_ACT_SHOT)) => {
                if xdp {
                    want_action(XDP_DROP, "XDP_DROP")
                } else {
                    want_action(TC_ACT_SHOT, "TC_ACT_SHOT")
                }
                .map_err(|e| format!("{hook}, new flow, no backend: {e}"))?;
                unchanged(input, out).map_err(|e| format!("dropped frame modified: {e}"))?;
                self.record_drop(layout);
                Ok((Outcome::Dropped, Some(COUNTER_DROP_NO_BACKEND)))
            }
            Want::Dnat {
                layout,
                allowed,
                flowing,
                ..
            } => {
                let what = flowing.what();
                if xdp {
                    want_action(XDP_REDIRECT, "XDP_REDIRECT: out again, on veth")
                } else {
                    want_action(TC_ACT_REDIRECT, "TC_ACT_REDIRECT")
                }
                .map_err(|e| format!("{hook}, {what}: {e}"))?;
                let macs = Some((NODE_MAC, GATEWAY_MAC));
                let to = dsr_net::encapsulated(input, out, self.node(), macs)
                    .map_err(|e| format!("{hook}, {what}: {e}"))?;
                // The backend gets the client's packet as sent (on the VIP's port): which one
                // it is, its address says.
                let Some(&backend) = allowed.iter().find(|b| b.ip() == to) else {
                    return Err(format!(
                        "{hook}, {what} from {} sent to {to}, allowed: {allowed:?}",
                        layout.describe()
                    ));
                };
                let outcome = match self.record_dnat(layout, backend, *flowing, now) {
                    Flowing::New => Outcome::DsrNew,
                    Flowing::Reopened => Outcome::DsrReopened,
                    Flowing::Established | Flowing::Undecided(_) => Outcome::DsrEstablished,
                };
                Ok((outcome, Some(COUNTER_DSR)))
            }
        }
    }

    /// A client packet of `layout`'s flow went to `backend` within `now`, its flow `flowing`
    /// as the model foresaw; returns what the flow did, an undecided one resolved where the
    /// backend tells.
    fn record_dnat(
        &mut self,
        layout: &Layout,
        backend: SocketAddr,
        flowing: Flowing,
        now: Bracket,
    ) -> Flowing {
        let (proto, client) = (layout.proto, layout.src);
        let m = &mut self.model;
        let old = m.flows.get(&(proto, client));
        let flowing = match flowing {
            // Elsewhere than the flow went: it was reopened.
            Flowing::Undecided(b) if b != backend => Flowing::Reopened,
            f => f,
        };
        let udp = layout
            .is_udp()
            .then(|| match (flowing, old.and_then(|f| f.udp)) {
                (Flowing::Established, Some(clock)) => {
                    let (clock, renewed) = clock.kept(now);
                    self.renewed += u64::from(renewed);
                    clock
                }
                // Kept (confirmed, its touch maybe renewed) or reopened to the same backend.
                (Flowing::Undecided(_), Some(clock)) => UdpClock {
                    state: UdpState::Either,
                    touched: (clock.touched.0.min(now.0), now.1),
                },
                _ => UdpClock::opened(now),
            });
        match flowing {
            Flowing::Reopened => self.reopened += 1,
            Flowing::Undecided(_) => self.undecided += 1,
            _ => {}
        }
        if m.flows
            .insert((proto, client), ModelFlow { backend, udp })
            .is_none()
        {
            m.flow_clients.push(client);
        }
        if m.replies.insert((proto, backend, client)) {
            m.reply_list.push((proto, backend, client));
        }
        let set = &self.lb.as_ref().expect("loaded").set;
        if !matches!(flowing, Flowing::Established) {
            // Opened or maybe reopened: two new-flow entries.
            m.new_flows += 1;
        }
        if matches!(flowing, Flowing::New | Flowing::Reopened) {
            assert!(
                set.id_of(backend).is_some(),
                "a new flow goes to a configured backend"
            );
        }
        // The client may become affine to the backend of any flow it has, at that backend's
        // generation now: the data path records affinity when a flow is confirmed (the
        // client's first non-SYN packet) or refreshed, which can be after a re-add.
        if let Some(id) = set.id_of(backend) {
            let generation = set.get(id).expect("configured").generation;
            m.affine
                .entry(client.ip())
                .or_default()
                .insert((id, generation));
        }
        flowing
    }

    /// A client packet of `layout`'s flow was dropped for want of a backend. A UDP datagram
    /// is only dropped when its flow is new or past its timeout, whose established entries
    /// the data path removed first: the flow is gone. (A TCP SYN's drop leaves the flow's
    /// new-flow entry: its next non-SYN segment goes on to the old backend, as modelled.)
    fn record_drop(&mut self, layout: &Layout) {
        if layout.is_udp() {
            self.model.flows.remove(&(layout.proto, layout.src));
        }
    }

    /// Exactly `counter` went up by one (none for a refused frame).
    fn expect_counter(
        &mut self,
        counter: Option<u32>,
        index: u64,
        category: Category,
        prog: Prog,
        input: &[u8],
        out: &[u8],
    ) {
        let now = self.read_counters();
        for (k, (id, name)) in COUNTERS.iter().enumerate() {
            let want = self.counters[k] + u64::from(counter == Some(*id));
            if now[k] != want {
                let why = format!(
                    "counter '{name}' went from {} to {} (expected outcome counter: {})",
                    self.counters[k],
                    now[k],
                    counter.map_or("none", |c| COUNTERS
                        .iter()
                        .find(|(i, _)| *i == c)
                        .map_or("?", |(_, n)| n))
                );
                self.fail(index, category, prog, input, out, &why);
            }
        }
        self.counters = now;
    }

    fn fail(
        &self,
        index: u64,
        category: Category,
        prog: Prog,
        input: &[u8],
        out: &[u8],
        why: &str,
    ) -> ! {
        panic!(
            "packet fuzz: invariant violated\n  seed {:#x} (STICKY_FUZZ_SEED), frame {index} of \
             setup '{}', phase '{}', {} on {}\n  {why}\n  input ({} bytes):\n{}  output ({} \
             bytes):\n{}",
            self.seed,
            self.scenario.name,
            self.phase,
            category.name(),
            prog.name(),
            input.len(),
            hex(input),
            out.len(),
            hex(out)
        )
    }

    // -----------------------------------------------------------------------------------------
    // Generators
    // -----------------------------------------------------------------------------------------

    fn v6(&self) -> bool {
        self.scenario.vip.is_ipv6()
    }

    fn generate(&mut self) -> (Category, Prog, Vec<u8>) {
        let category = Category::draw(&mut self.rng);
        let ingress = |f: Vec<u8>| (category, Prog::Ingress, f);
        match category {
            Category::Valid => ingress(self.packet().build()),
            Category::BitFlip => {
                let f = self.packet().build();
                ingress(self.flip(f))
            }
            Category::Truncated | Category::ReplyTruncated => {
                if let Some(next) = self.queue.pop() {
                    return next;
                }
                // A new sweep: one base of each program, every length, drawn in order.
                let base = self.packet().build();
                let reply = self.reply().build();
                for len in (0..base.len()).rev() {
                    self.queue
                        .push((Category::Truncated, Prog::Ingress, base[..len].to_vec()));
                }
                for len in (0..reply.len()).rev() {
                    self.queue.push((
                        Category::ReplyTruncated,
                        Prog::Egress,
                        reply[..len].to_vec(),
                    ));
                }
                self.queue.pop().expect("a sweep has frames")
            }
            Category::IpHeader => {
                let mut f = self.packet().build();
                let l3 = ETH_LEN;
                let nibble = self.rng.range(0, 15) as u8;
                if self.v6() {
                    f[l3] = nibble << 4 | (f[l3] & 0x0f);
                } else {
                    f[l3] = 0x40 | nibble;
                    if self.rng.percent(50) {
                        fix_ipv4_checksum(&mut f);
                    }
                }
                ingress(f)
            }
            Category::DataOffset => {
                let pkt = self.segment();
                let words = self.rng.range(0, 15) as u8;
                ingress(pkt.data_offset(words).build())
            }
            Category::UdpLength => ingress(self.bogus_udp_length()),
            Category::IpLength => {
                let f = self.packet().build();
                ingress(self.bogus_length(f))
            }
            Category::ExtHeaders => {
                let f = if self.v6() {
                    self.ext_chain()
                } else {
                    self.ip_options()
                };
                ingress(f)
            }
            Category::Fragment => {
                let f = if self.v6() {
                    self.ext_chain_with(&[EXT_FRAGMENT])
                } else {
                    let field = self.rng.pick(&[
                        IP_MF,
                        IP_MF | IP_DF,
                        1,
                        185,
                        IP_MF | 185,
                        IP_DF | 1,
                        0x1fff,
                        0x8000 | IP_MF,
                    ]);
                    let field = if self.rng.percent(20) {
                        self.rng.next() as u16 & 0xbfff | 1
                    } else {
                        field
                    };
                    self.packet().frag(field).build()
                };
                ingress(f)
            }
            Category::OtherProto => ingress(self.other_proto()),
            Category::Ethertype => ingress(self.other_ethertype()),
            Category::RandomBytes => ingress(self.random_bytes()),
            Category::Reply => (category, Prog::Egress, self.reply().build()),
            Category::ReplyBitFlip => {
                let f = self.reply().build();
                (category, Prog::Egress, self.flip(f))
            }
        }
    }

    /// A client: one of a small pool (which builds up affinity) or a fresh one.
    fn client(&mut self) -> SocketAddr {
        if !self.model.flow_clients.is_empty() && self.rng.percent(40) {
            let i = self.rng.below(self.model.flow_clients.len());
            return self.model.flow_clients[i];
        }
        let pool = self.rng.percent(70);
        let port = self.rng.range(1024, 65535) as u16;
        let ip: IpAddr = match (self.v6(), pool) {
            (false, true) => Ipv4Addr::new(198, 51, 100, self.rng.range(1, 64) as u8).into(),
            (false, false) => {
                Ipv4Addr::from(0xc612_0000 | (self.rng.next() as u32 & 0xffff)).into()
            }
            (true, true) => {
                Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, self.rng.range(1, 64) as u16).into()
            }
            (true, false) => {
                let r = self.rng.next();
                Ipv6Addr::new(0xfd00, 0xd, 0, 0, 0, 0, (r >> 16) as u16, r as u16).into()
            }
        };
        SocketAddr::new(ip, port)
    }

    fn flags(&mut self) -> u8 {
        match self.rng.below(10) {
            0..=2 => SYN,
            3..=4 => ACK,
            5..=7 => ACK | PSH,
            8 => self.rng.pick(&[FIN | ACK, RST, RST | ACK, SYN | ACK]),
            _ => self.rng.byte(),
        }
    }

    /// A valid packet to a VIP: a datagram `UDP_SHARE` percent of the time, else a segment.
    fn packet(&mut self) -> Pkt {
        if self.rng.percent(UDP_SHARE) {
            self.datagram()
        } else {
            self.segment()
        }
    }

    /// A valid segment to the TCP VIP: random client, flags, payload, header shape.
    fn segment(&mut self) -> Pkt {
        let client = self.client();
        let flags = self.flags();
        let mut p = Pkt::tcp(client, self.scenario.vip, flags);
        self.shape(&mut p);
        p
    }

    /// A valid datagram to the UDP VIP: random client, payload, header shape, checksum.
    fn datagram(&mut self) -> Pkt {
        let client = self.client();
        let mut p = Pkt::datagram(client, self.scenario.udp_vip);
        self.shape(&mut p);
        self.udp_checksum(&mut p);
        p
    }

    /// Now and then no UDP checksum (IPv4: none; IPv6: the zero it forbids).
    fn udp_checksum(&mut self, p: &mut Pkt) {
        if self.rng.percent(10) {
            p.l4_checksum = Some(0);
        }
    }

    /// A backend's reply: mostly of a flow the model knows, else from a random backend, in
    /// either protocol.
    fn reply(&mut self) -> Pkt {
        let known = !self.model.reply_list.is_empty() && self.rng.percent(80);
        let (proto, backend, client) = if known {
            let i = self.rng.below(self.model.reply_list.len());
            self.model.reply_list[i]
        } else {
            let b = self.rng.pick(&self.scenario.backends);
            let proto = if self.rng.percent(UDP_SHARE) {
                PROTO_UDP
            } else {
                sticky_common::maps::PROTO_TCP
            };
            (proto, b, self.client())
        };
        // Now and then the client's side of the flow, seen on egress.
        let (src, dst) = if self.rng.percent(5) {
            (client, self.vip_of(proto))
        } else {
            (backend, client)
        };
        let mut p = if proto == PROTO_UDP {
            let mut p = Pkt::datagram(src, dst);
            self.udp_checksum(&mut p);
            p
        } else {
            let flags = self.flags();
            Pkt::tcp(src, dst, flags)
        };
        self.shape(&mut p);
        p
    }

    /// A datagram to the UDP VIP whose length field is not its length: too short for the
    /// header, short of the datagram (valid: the rest is not the datagram's), one past it, past
    /// the IP packet into Ethernet padding, or anything.
    fn bogus_udp_length(&mut self) -> Vec<u8> {
        let mut p = self.datagram();
        if self.rng.percent(30) {
            p.pad_to = self.rng.range(60, 120);
        }
        let real = UDP_HLEN + p.payload.len();
        let len = match self.rng.below(10) {
            0 => 0,
            1 => self.rng.range(1, UDP_HLEN - 1),
            2 => UDP_HLEN,
            3 => self.rng.range(UDP_HLEN, real),
            4 => real + 1,
            5 => real + self.rng.range(2, 64),
            6 => 0xffff,
            _ => self.rng.below(0x1_0000),
        };
        p.udp_len = Some(u16::try_from(len.min(0xffff)).expect("clamped"));
        p.build()
    }

    /// Payload and header shape: IPv4 options or IPv6 hop-by-hop / destination options,
    /// padding to the Ethernet minimum.
    fn shape(&mut self, p: &mut Pkt) {
        if self.rng.percent(60) {
            let n = self.rng.range(1, 80);
            p.payload = self.rng.bytes(n);
        }
        if self.v6() {
            if self.rng.percent(25) {
                for _ in 0..self.rng.range(1, IPV6_MAX_EXT) {
                    p.ext.push(self.rng.pick(&[Ext::HopByHop, Ext::DestOpts]));
                }
            }
        } else {
            if self.rng.percent(25) {
                p.ip_options = 4 * self.rng.range(1, 10);
            }
            if self.rng.percent(10) {
                p.frag = IP_DF;
            }
        }
        if self.rng.percent(10) {
            p.pad_to = 60;
        }
    }

    fn flip(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        // Half the flips land in the headers, where they change what the frame is.
        let headers = f.len().min(ETH_LEN + 60 + 40);
        for _ in 0..self.rng.range(1, 8) {
            let span = if self.rng.percent(50) {
                headers
            } else {
                f.len()
            };
            let bit = self.rng.below(span * 8);
            f[bit / 8] ^= 1 << (bit % 8);
        }
        f
    }

    fn bogus_length(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        let l3 = ETH_LEN;
        let (off, actual, header) = if self.v6() {
            (l3 + 4, f.len() - l3 - 40, 40)
        } else {
            (l3 + 2, f.len() - l3, usize::from(f[l3] & 0x0f) * 4)
        };
        let value = match self.rng.below(12) {
            0 => 0,
            1 => 1,
            2 => header.saturating_sub(1),
            3 => header,
            4 => header + 19,
            5 => header + 20,
            6 => actual.saturating_sub(1),
            7 => actual + 1,
            8 => 0xffff,
            9 => actual.saturating_sub(self.rng.range(1, 8)),
            _ => self.rng.below(0x1_0000),
        };
        let value = u16::try_from(value.min(0xffff)).expect("clamped");
        f[off..off + 2].copy_from_slice(&value.to_be_bytes());
        if !self.v6() && self.rng.percent(70) {
            fix_ipv4_checksum(&mut f);
        }
        f
    }

    /// IPv4 options of random content (the IHL stays right): options are not ours to judge.
    fn ip_options(&mut self) -> Vec<u8> {
        let mut p = self.packet();
        p.ip_options = 4 * self.rng.range(1, 10);
        let mut f = p.build();
        let l3 = ETH_LEN;
        for b in &mut f[l3 + 20..l3 + 20 + p.ip_options] {
            *b = self.rng.byte();
        }
        fix_ipv4_checksum(&mut f);
        f
    }

    fn ext_chain(&mut self) -> Vec<u8> {
        self.ext_chain_with(&[])
    }

    /// A segment to the VIP behind a random chain of IPv6 extension headers, `forced` among
    /// them: known and unknown kinds, right and bogus lengths, chains past the walk's limit.
    fn ext_chain_with(&mut self, forced: &[u8]) -> Vec<u8> {
        let mut kinds: Vec<u8> = (0..self.rng.range(0, 6))
            .map(|_| match self.rng.below(10) {
                0..=3 => EXT_HOP_BY_HOP,
                4..=6 => EXT_DEST_OPTS,
                7 => EXT_ROUTING,
                8 => EXT_FRAGMENT,
                _ => {
                    let any = self.rng.byte();
                    self.rng
                        .pick(&[NO_NEXT_HEADER, 135, 139, 140, 253, PROTO_UDP, any])
                }
            })
            .collect();
        for &k in forced {
            let at = self.rng.below(kinds.len() + 1);
            kinds.insert(at, k);
        }
        let mut base = self.packet();
        base.ext.clear();
        let last = if self.rng.percent(85) {
            match base.l4 {
                L4::Udp => PROTO_UDP,
                _ => sticky_common::maps::PROTO_TCP,
            }
        } else {
            self.rng.byte()
        };
        let f = base.build();
        let l4 = ETH_LEN + 40;
        let mut chain = Vec::new();
        for (i, &kind) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(last);
            match kind {
                EXT_FRAGMENT => {
                    let offset = if self.rng.percent(50) {
                        0
                    } else {
                        self.rng.below(0x2000) as u16
                    };
                    let m = u16::from(self.rng.percent(50));
                    let field = (offset << 3 | m).to_be_bytes();
                    chain.extend([next, 0, field[0], field[1]]);
                    chain.extend(self.rng.bytes(4));
                }
                _ => {
                    let words = match self.rng.below(10) {
                        0..=6 => 0,
                        7..=8 => self.rng.range(1, 3),
                        _ => self.rng.pick(&[4, 31, 255]),
                    };
                    // The declared length, or (bogus) a different amount of bytes. Frames stay
                    // under MAX_FRAME: BPF_PROG_TEST_RUN takes at most about a page.
                    let actual =
                        if self.rng.percent(85) && chain.len() + (words + 1) * 8 < MAX_FRAME / 2 {
                            (words + 1) * 8
                        } else {
                            self.rng.range(2, 24)
                        };
                    chain.extend([next, words as u8]);
                    if kind == EXT_HOP_BY_HOP || kind == EXT_DEST_OPTS {
                        // PadN over the rest, so a right-length header is a valid one.
                        let rest = actual - 2;
                        if rest >= 2 {
                            chain.extend([1, (rest - 2) as u8]);
                            chain.extend(std::iter::repeat_n(0, rest - 2));
                        } else {
                            chain.extend(std::iter::repeat_n(0, rest));
                        }
                    } else {
                        chain.extend(self.rng.bytes(actual - 2));
                    }
                }
            }
        }
        let mut out = f[..l4].to_vec();
        out[ETH_LEN + 6] = kinds.first().copied().unwrap_or(last);
        out.extend(&chain);
        out.extend(&f[l4..]);
        if self.rng.percent(85) {
            let len = u16::try_from(out.len() - l4).unwrap_or(u16::MAX);
            out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    /// Each protocol at the other's VIP (ours only where the two share a port), and other
    /// protocols to the VIPs.
    fn other_proto(&mut self) -> Vec<u8> {
        let client = self.client();
        let vip = self.scenario.vip;
        let n = self.rng.range(0, 40);
        let payload = self.rng.bytes(n);
        let base = Pkt::syn(client, vip).payload(&payload);
        let proto = match self.rng.below(7) {
            0 => return base.udp().build(),
            1 => {
                let flags = self.flags();
                let mut p = Pkt::tcp(client, self.scenario.udp_vip, flags).payload(&payload);
                self.shape(&mut p);
                return p.build();
            }
            2 => return base.icmp().build(),
            3 => 47,  // GRE
            4 => 132, // SCTP
            5 => 0,
            _ => self.rng.byte(),
        };
        // UDP's layout (the VIP's port where TCP's would be) under another protocol number.
        let mut f = base.udp().build();
        if self.v6() {
            f[ETH_LEN + 6] = proto;
        } else {
            f[ETH_LEN + 9] = proto;
            fix_ipv4_checksum(&mut f);
        }
        f
    }

    fn other_ethertype(&mut self) -> Vec<u8> {
        let valid = self.packet().build();
        match self.rng.below(5) {
            0 => vlan_tagged(valid),
            1 => arp_request(),
            2 => {
                // The other family's ethertype over this one's packet.
                let t = if self.v6() { ETH_P_IP } else { ETH_P_IPV6 };
                patched(&valid, 12, &t.to_be_bytes())
            }
            3 => {
                let t = self
                    .rng
                    .pick(&[0x88a8u16, 0x8847, 0x0842, 0x88cc, 0x05dc, 0x0000]);
                patched(&valid, 12, &t.to_be_bytes())
            }
            _ => {
                let t = self.rng.next() as u16;
                patched(&valid, 12, &t.to_be_bytes())
            }
        }
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let len = self.rng.range(0, 200);
        let mut f = self.rng.bytes(len);
        if f.len() >= ETH_LEN {
            let t = match self.rng.below(3) {
                0 => ETH_P_IP,
                1 => ETH_P_IPV6,
                _ => self.rng.next() as u16,
            };
            f[12..14].copy_from_slice(&t.to_be_bytes());
            // Often a version nibble that matches, to get past the first check.
            if f.len() > ETH_LEN && self.rng.percent(50) {
                f[ETH_LEN] = if t == ETH_P_IPV6 { 0x60 } else { 0x45 } | (f[ETH_LEN] & 0x0f);
            }
        }
        f
    }
}

impl Flowing {
    fn what(self) -> &'static str {
        match self {
            Flowing::New => "new flow",
            Flowing::Established => "established flow",
            Flowing::Reopened => "UDP flow past its idle timeout",
            Flowing::Undecided(_) => "UDP flow at its idle timeout",
        }
    }
}

/// BPF_PROG_TEST_RUN (Linux 6.18) refuses frames shorter than an Ethernet header, and for skb
/// programs with the IPv4 and IPv6 ethertypes shorter than the fixed IP header behind it.
fn refused(prog: Prog, frame: &[u8]) -> bool {
    if prog == Prog::DsrXdp {
        return frame.len() < ETH_LEN;
    }
    match be16(frame, 12) {
        None => true,
        Some(ETH_P_IP) => frame.len() < ETH_LEN + 20,
        Some(ETH_P_IPV6) => frame.len() < ETH_LEN + 40,
        Some(_) => false,
    }
}

fn fix_ipv4_checksum(f: &mut [u8]) {
    let l3 = ETH_LEN;
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    let end = (l3 + ihl.max(20)).min(f.len());
    f[l3 + 10..l3 + 12].fill(0);
    let sum = checksum(&[&f[l3..end]]);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

fn hex(p: &[u8]) -> String {
    let mut s = String::new();
    const SHOWN: usize = 512;
    for (i, line) in p[..p.len().min(SHOWN)].chunks(16).enumerate() {
        let _ = write!(s, "    {:04x}: ", i * 16);
        for b in line {
            let _ = write!(s, "{b:02x} ");
        }
        s.push('\n');
    }
    if p.len() > SHOWN {
        let _ = writeln!(s, "    … {} more bytes", p.len() - SHOWN);
    }
    s
}
