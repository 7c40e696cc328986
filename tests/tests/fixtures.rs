//! Packet fixtures through BPF_PROG_TEST_RUN, Katran-style: the real object and its
//! verifier-loaded programs, input packets from a small builder, and each output checked
//! byte by byte with the IPv4, TCP and UDP checksums recomputed from scratch. The kernel hands
//! `data_out` back as CHECKSUM_NONE, so a missed checksum fix shows here and nowhere else
//! (offloads hide it on live interfaces). Every fixture also checks that exactly the counter
//! of its outcome went up (pass, parse error, unhandled, NAT, drop), as `packets::classify`
//! and the expectation say.
//!
//! Needs root (skips otherwise) and the real eBPF object (a missing object is a build defect).
//! `--test-threads=1 --nocapture` shows the per-packet costs.
#![expect(
    clippy::unwrap_used,
    reason = "tests: a failed map access is a test failure"
)]

mod common;

use std::{net::SocketAddr, time::Duration};

use aya::{
    maps::{Array, HashMap, MapData, RingBuf},
    programs::ProgramError,
};
use common::{datapath::*, packets::*};
use sticky::addr::VipAddr;
use sticky::{
    backends::BackendSet,
    config::Config,
    datapath::{Datapath, Pins},
    trace::{Decision, TraceError, Tracer},
};
use sticky_common::{
    Addr16,
    choice::slot_of,
    maps::{
        self as names, Affinity, Backend, COUNTER_DROP_NAT_ERROR, COUNTER_DROP_NO_BACKEND,
        COUNTER_NAT, COUNTER_PARSE_ERROR, COUNTER_PASS, COUNTER_UNHANDLED, FLOW_FORWARD,
        FLOW_REVERSE, Flow, FlowKey, PROTO_TCP, Settings, Vip, VipKey,
    },
    sync::{AFFINITY_EVENTS, AffinityEvent},
    trace::{TRACE, TRACE_EVENTS, TraceTarget},
};

// ---------------------------------------------------------------------------------------------
// Fixture table
// ---------------------------------------------------------------------------------------------

/// The configuration and backends a fixture runs against. Fixtures of one setup share one
/// loaded datapath and run in table order, so later fixtures see the flows earlier ones made.
/// Every setup has a TCP VIP and a UDP VIP (`udp:`), on another port but for `V4SamePort`:
/// UDP to the TCP VIP's port is not ours, nor TCP to the UDP VIP's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// VIPs 192.0.2.10:80 and udp:192.0.2.10:53, backends 10.{1,2,3}.0.2:8080.
    V4,
    /// VIPs [fd00::100]:80 and udp:[fd00::100]:53, backends [fd00:{1,2,3}::2]:8080.
    V6,
    /// The V4 VIPs with their backends all removed again (`reconcile(&[])` + `apply`).
    V4NoBackends,
    /// A local backend: the V4 VIPs served by 192.0.2.10:8080 (only the port changes).
    V4Local,
    /// A local backend: the V6 VIPs served by [fd00::100]:8080.
    V6Local,
    /// VIPs 192.0.2.10:80 and udp:192.0.2.10:80 (one port, both protocols), the V4 backends.
    V4SamePort,
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `data_out` is byte-identical to the input.
    Unchanged,
    /// Source and destination (address and port) are these; checksums are valid; every other
    /// byte is the input's.
    Rewritten { src: SocketAddr, dst: SocketAddr },
    /// BPF_PROG_TEST_RUN refuses the input with EINVAL and never runs the program:
    /// `expect_action` is not consulted. Linux 6.18 wants at least an Ethernet header, and
    /// for the IPv4/IPv6 ethertypes at least the fixed IP header (20/40 bytes) behind it, so
    /// the program's own checks for shorter frames cannot be reached from here.
    Refused,
}

struct Fixture {
    name: String,
    setup: Setup,
    program: Prog,
    input: Vec<u8>,
    expect_action: i32,
    expect: Expect,
    /// The one outcome counter that must go up (see `outcome_counter`); none when refused.
    counter: Option<u32>,
}

/// The outcome counters: a fixture raises exactly one of them by one.
const OUTCOME_COUNTERS: [(u32, &str); 6] = [
    (COUNTER_PASS, "pass"),
    (COUNTER_PARSE_ERROR, "parse_error"),
    (COUNTER_UNHANDLED, "unhandled"),
    (COUNTER_DROP_NO_BACKEND, "drop_no_backend"),
    (COUNTER_DROP_NAT_ERROR, "drop_nat_error"),
    (COUNTER_NAT, "nat"),
];

/// The counter a fixture's outcome raises: a rewrite counts as NAT, a drop for want of a
/// backend as such, and a frame passed on by what `classify` makes of it (malformed: parse
/// error; fragments and headers not walked: unhandled; anything else: pass).
fn outcome_counter(input: &[u8], action: i32, expect: Expect) -> Option<u32> {
    match (expect, action) {
        (Expect::Refused, _) => None,
        (Expect::Rewritten { .. }, _) => Some(COUNTER_NAT),
        (Expect::Unchanged, TC_ACT_SHOT) => Some(COUNTER_DROP_NO_BACKEND),
        (Expect::Unchanged, _) => Some(match classify(input) {
            Shape::Malformed => COUNTER_PARSE_ERROR,
            Shape::Unhandled => COUNTER_UNHANDLED,
            Shape::Transport(_) | Shape::Other => COUNTER_PASS,
        }),
    }
}

impl Setup {
    /// The TCP VIP.
    fn vip(self) -> SocketAddr {
        match self {
            Setup::V4 | Setup::V4NoBackends | Setup::V4Local | Setup::V4SamePort => {
                sa("192.0.2.10:80")
            }
            Setup::V6 | Setup::V6Local => sa("[fd00::100]:80"),
        }
    }

    /// The UDP VIP.
    fn udp_vip(self) -> SocketAddr {
        match self {
            Setup::V4 | Setup::V4NoBackends | Setup::V4Local => sa("192.0.2.10:53"),
            Setup::V6 | Setup::V6Local => sa("[fd00::100]:53"),
            Setup::V4SamePort => sa("192.0.2.10:80"),
        }
    }

    /// The VIP a packet of `pkt`'s protocol reaches (what replies get back as their source).
    fn vip_for(self, pkt: &Pkt) -> SocketAddr {
        match pkt.l4 {
            L4::Udp => self.udp_vip(),
            _ => self.vip(),
        }
    }

    /// Backend lists applied one after the other when the setup is loaded.
    fn stages(self) -> Vec<Vec<SocketAddr>> {
        match self {
            Setup::V4 | Setup::V4SamePort => vec![v4_backends(3)],
            Setup::V6 => vec![v6_backends(3)],
            Setup::V4NoBackends => vec![v4_backends(3), vec![]],
            Setup::V4Local => vec![vec![sa("192.0.2.10:8080")]],
            Setup::V6Local => vec![vec![sa("[fd00::100]:8080")]],
        }
    }

    fn config(self) -> Config {
        let vips = [VipAddr::tcp(self.vip()), udp_vip(self.udp_vip())];
        config_with("fixtures", &vips, &self.stages()[0])
    }

    /// The backend set the datapath holds once loaded: the same reconciles, no kernel.
    fn plan(self) -> BackendSet {
        plan(&self.stages())
    }
}

/// Runs fixtures in order, one datapath per setup, and reports every failure by name.
fn run_fixtures(fixtures: &[Fixture]) {
    let mut lbs: Vec<(Setup, Lb)> = Vec::new();
    let mut failures = Vec::new();
    for f in fixtures {
        let i = match lbs.iter().position(|(s, _)| *s == f.setup) {
            Some(i) => i,
            None => {
                lbs.push((f.setup, Lb::load(f.setup)));
                lbs.len() - 1
            }
        };
        if let Err(why) = lbs[i].1.check(f) {
            failures.push(format!("fixture '{}': {why}", f.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n  {}",
        failures.len(),
        fixtures.len(),
        failures.join("\n  ")
    );
    println!("{} fixtures passed", fixtures.len());
}

// ---------------------------------------------------------------------------------------------
// The loaded datapath
// ---------------------------------------------------------------------------------------------

/// A datapath loaded for a setup (`common::datapath::Lb`), which fixtures run against.
struct Lb {
    setup: Setup,
    lb: common::datapath::Lb,
}

impl std::ops::Deref for Lb {
    type Target = common::datapath::Lb;

    fn deref(&self) -> &Self::Target {
        &self.lb
    }
}

impl std::ops::DerefMut for Lb {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.lb
    }
}

impl Lb {
    fn load(setup: Setup) -> Self {
        Self::with_config(setup, &setup.config(), &setup.stages())
    }

    fn with_config(setup: Setup, config: &Config, stages: &[Vec<SocketAddr>]) -> Self {
        Lb {
            setup,
            lb: common::datapath::Lb::load(config, stages),
        }
    }

    fn outcome_counters(&self) -> [u64; OUTCOME_COUNTERS.len()] {
        let all = self.counters();
        OUTCOME_COUNTERS.map(|(i, _)| all.values[i as usize])
    }

    fn check(&mut self, f: &Fixture) -> Result<(), String> {
        let before = self.outcome_counters();
        self.check_output(f)?;
        let after = self.outcome_counters();
        for (k, (id, name)) in OUTCOME_COUNTERS.iter().enumerate() {
            let want = before[k] + u64::from(f.counter == Some(*id));
            if after[k] != want {
                return Err(format!(
                    "counter {name} went from {} to {}, want {want} (the outcome's counter: {})",
                    before[k],
                    after[k],
                    f.counter.map_or("none", |c| OUTCOME_COUNTERS
                        .iter()
                        .find(|(i, _)| *i == c)
                        .map_or("?", |(_, n)| n))
                ));
            }
        }
        Ok(())
    }

    fn check_output(&mut self, f: &Fixture) -> Result<(), String> {
        let run = self.run(f.program, &f.input);
        let (action, out) = match (run, f.expect) {
            (Err(ProgramError::SyscallError(e)), Expect::Refused)
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                return Ok(());
            }
            (Ok((action, _)), Expect::Refused) => {
                return Err(format!(
                    "the kernel ran it (action {action}) instead of refusing it with EINVAL"
                ));
            }
            (Err(e), _) => return Err(format!("BPF_PROG_TEST_RUN on {}: {e:?}", f.program.name())),
            (Ok(ran), _) => ran,
        };
        if action != f.expect_action {
            return Err(format!(
                "action {} ({}), want {} ({})",
                action,
                action_name(action),
                f.expect_action,
                action_name(f.expect_action)
            ));
        }
        match f.expect {
            Expect::Unchanged => unchanged(&f.input, &out),
            Expect::Rewritten { src, dst } => rewritten(&f.input, &out, src, dst),
            Expect::Refused => unreachable!("handled above"),
        }
    }

    /// Panics naming the fixture: for the step-by-step tests.
    fn expect(&mut self, f: &Fixture) {
        if let Err(why) = self.check(f) {
            panic!("fixture '{}': {why}", f.name);
        }
    }

    /// A single `Table::dnat` fixture, run now.
    fn dnat(&mut self, name: &str, pkt: Pkt, backend: SocketAddr) {
        let mut t = Table::new(self.setup);
        t.dnat(name, pkt, backend);
        self.expect(&t.fixtures[0]);
    }

    /// A single `Table::snat` fixture, run now.
    fn snat(&mut self, name: &str, pkt: Pkt) {
        let mut t = Table::new(self.setup);
        t.snat(name, pkt);
        self.expect(&t.fixtures[0]);
    }

    /// A client's handshake: its SYN and its ACK go to `backend`, which makes the flow
    /// established and the client affine.
    /// A UDP client's first two datagrams to `vip`: the flow opens, then is confirmed.
    fn exchange(&mut self, client: SocketAddr, vip: SocketAddr, backend: SocketAddr) {
        let first = Pkt::datagram(client, vip).payload(b"first");
        self.dnat(&format!("first datagram of {client}"), first, backend);
        let second = Pkt::datagram(client, vip).payload(b"second");
        self.dnat(&format!("second datagram of {client}"), second, backend);
    }

    fn connect(&mut self, client: SocketAddr, vip: SocketAddr, backend: SocketAddr) {
        self.dnat(&format!("SYN of {client}"), Pkt::syn(client, vip), backend);
        self.dnat(
            &format!("handshake ACK of {client}"),
            Pkt::tcp(client, vip, ACK),
            backend,
        );
    }

    fn flow_map(&mut self, name: &str) -> HashMap<&mut MapData, FlowKey, Flow> {
        HashMap::try_from(self.dp.map_mut(name).unwrap()).unwrap()
    }

    fn affinity(&self, client: SocketAddr) -> Option<Affinity> {
        self.dp.affinity_of(&Addr16::from_ip(client.ip())).unwrap()
    }
}

fn flow_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    proto_key(PROTO_TCP, src, dst)
}

fn udp_key(src: SocketAddr, dst: SocketAddr) -> FlowKey {
    proto_key(PROTO_UDP, src, dst)
}

fn proto_key(proto: u8, src: SocketAddr, dst: SocketAddr) -> FlowKey {
    FlowKey {
        src: Addr16::from_ip(src.ip()),
        dst: Addr16::from_ip(dst.ip()),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto,
        _pad0: 0,
        _pad1: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// The tables (hand-aligned: one fixture a line reads better than rustfmt's one field a line)
// ---------------------------------------------------------------------------------------------

/// Collects the fixtures of one setup; the expectations follow from the packet and the VIP.
struct Table {
    setup: Setup,
    fixtures: Vec<Fixture>,
}

impl Table {
    fn new(setup: Setup) -> Self {
        Table {
            setup,
            fixtures: Vec::new(),
        }
    }

    fn add(
        &mut self,
        name: impl Into<String>,
        program: Prog,
        input: Vec<u8>,
        action: i32,
        expect: Expect,
    ) {
        self.fixtures.push(Fixture {
            name: name.into(),
            setup: self.setup,
            program,
            counter: outcome_counter(&input, action, expect),
            input,
            expect_action: action,
            expect,
        });
    }

    /// Passed untouched on ingress as malformed (counted as a parse error): the model must
    /// say so too, or the fixture is not what its name says.
    fn malformed(&mut self, name: impl Into<String>, input: impl Into<Vec<u8>>) {
        let (name, input) = (name.into(), input.into());
        assert!(
            matches!(classify(&input), Shape::Malformed),
            "fixture '{name}': not malformed by the model: {:?}",
            classify(&input)
        );
        self.pass(name, Prog::Ingress, input);
    }

    /// Passed untouched on ingress as unhandled (fragments, headers not walked).
    fn unhandled(&mut self, name: impl Into<String>, input: impl Into<Vec<u8>>) {
        let (name, input) = (name.into(), input.into());
        assert!(
            matches!(classify(&input), Shape::Unhandled),
            "fixture '{name}': not unhandled by the model: {:?}",
            classify(&input)
        );
        self.pass(name, Prog::Ingress, input);
    }

    /// Passed byte for byte, on to the next program of the hook.
    fn pass(&mut self, name: impl Into<String>, program: Prog, input: impl Into<Vec<u8>>) {
        self.add(name, program, input.into(), TCX_NEXT, Expect::Unchanged);
    }

    /// Dropped on ingress, unmodified.
    fn drop(&mut self, name: impl Into<String>, input: impl Into<Vec<u8>>) {
        self.add(
            name,
            Prog::Ingress,
            input.into(),
            TC_ACT_SHOT,
            Expect::Unchanged,
        );
    }

    /// Refused by the kernel before the program runs (see `Expect::Refused`).
    fn refused(&mut self, name: impl Into<String>, input: Vec<u8>) {
        self.add(name, Prog::Ingress, input, TCX_NEXT, Expect::Refused);
    }

    /// Ingress: the destination becomes `backend`, the source stays.
    fn dnat(&mut self, name: impl Into<String>, pkt: Pkt, backend: SocketAddr) {
        let expect = Expect::Rewritten {
            src: pkt.src,
            dst: backend,
        };
        self.add(name, Prog::Ingress, pkt.build(), TC_ACT_OK, expect);
    }

    /// Egress: the source becomes the VIP of the packet's protocol, the destination stays.
    fn snat(&mut self, name: impl Into<String>, pkt: Pkt) {
        let expect = Expect::Rewritten {
            src: self.setup.vip_for(&pkt),
            dst: pkt.dst,
        };
        self.add(name, Prog::Egress, pkt.build(), TC_ACT_OK, expect);
    }
}

impl From<Pkt> for Vec<u8> {
    fn from(p: Pkt) -> Self {
        p.build()
    }
}

#[rustfmt::skip]
fn v4_fixtures() -> Vec<Fixture> {
    use Prog::{Egress, Ingress};
    let mut t = Table::new(Setup::V4);
    let set = Setup::V4.plan();
    let choice = |c: SocketAddr| table_choice(&set, c.ip()).unwrap();
    let vip = Setup::V4.vip();
    let a = sa("198.51.100.1:40000");
    let a2 = sa("198.51.100.1:40001");
    let ba = choice(a);
    let other_backend = *v4_backends(3).iter().find(|&&b| b != ba).unwrap();

    t.dnat("v4 SYN to the VIP: DNAT to the table's backend", Pkt::syn(a, vip), ba);
    t.dnat("v4 ACK with payload, same flow: same backend", Pkt::tcp(a, vip, ACK | PSH).payload(HTTP_GET), ba);
    t.dnat("v4 second connection from the same client: same backend", Pkt::syn(a2, vip), ba);
    t.snat("v4 SYN-ACK from the backend: source back to the VIP", Pkt::tcp(ba, a, SYN | ACK));
    t.snat("v4 reply with payload on the second connection", Pkt::tcp(ba, a2, ACK | PSH).payload(b"HTTP/1.1 200 OK\r\n\r\n"));
    t.dnat("v4 FIN of an established flow", Pkt::tcp(a, vip, FIN | ACK), ba);
    t.dnat("v4 RST of an established flow", Pkt::tcp(a2, vip, RST), ba);
    t.pass("v4 egress of a flow never seen", Egress, Pkt::tcp(ba, sa("198.51.100.1:49999"), ACK));
    t.pass("v4 egress from another backend to a NATed client port", Egress, Pkt::tcp(other_backend, a, ACK));
    t.pass("v4 client->VIP packet on egress (forward entry, not a reply)", Egress, Pkt::tcp(a, vip, ACK));
    t.pass("v4 backend reply seen on ingress", Ingress, Pkt::tcp(ba, a, ACK));
    t.pass("v4 egress already carrying the VIP as source", Egress, Pkt::tcp(vip, a, ACK));

    // Many clients: every backend gets some, each reply is reverse-NATed.
    let mut seen = Vec::new();
    for i in 2..=24u16 {
        let c = sa(&format!("198.51.100.{i}:{}", 41_000 + i));
        seen.push(choice(c));
        t.dnat(format!("v4 SYN from client {c}"), Pkt::syn(c, vip), choice(c));
        t.snat(format!("v4 reply to client {c}"), Pkt::tcp(choice(c), c, SYN | ACK));
    }
    assert!(v4_backends(3).iter().all(|b| seen.contains(b)), "precondition: clients reach every backend: {seen:?}");

    // Header shapes that move or pad the TCP header.
    for (i, opts) in [(30u16, 8usize), (31, 40)] {
        let c = sa(&format!("198.51.100.{i}:42000"));
        let ihl = 5 + opts / 4;
        t.dnat(format!("v4 SYN with IP options (IHL={ihl})"), Pkt::syn(c, vip).ip_options(opts), choice(c));
        t.dnat(format!("v4 ACK with payload and IP options (IHL={ihl})"), Pkt::tcp(c, vip, ACK).ip_options(opts).payload(HTTP_GET), choice(c));
        t.snat(format!("v4 reply with IP options (IHL={ihl})"), Pkt::tcp(choice(c), c, SYN | ACK).ip_options(opts));
    }
    let c = sa("198.51.100.32:42000");
    t.dnat("v4 SYN with DF set (not a fragment)", Pkt::syn(c, vip).frag(IP_DF), choice(c));
    let c = sa("198.51.100.33:42000");
    t.dnat("v4 ACK padded to the 60-byte Ethernet minimum", Pkt::tcp(c, vip, ACK).pad_to(60), choice(c));
    t.snat("v4 reply padded to the 60-byte Ethernet minimum", Pkt::tcp(choice(c), c, ACK).pad_to(60));
    let c = sa("198.51.100.34:42000");
    t.dnat("v4 odd-length payload", Pkt::tcp(c, vip, ACK | PSH).payload(b"odd"), choice(c));

    // Not ours.
    let c = sa("198.51.100.40:43000");
    t.pass("v4 SYN to the VIP address, other port", Ingress, Pkt::syn(c, sa("192.0.2.10:81")));
    t.pass("v4 SYN to another address, VIP port", Ingress, Pkt::syn(c, sa("192.0.2.11:80")));
    t.pass("v4 SYN from the VIP (VIP as source)", Ingress, Pkt::syn(vip, c));
    t.pass("v4 UDP to VIP:port", Ingress, Pkt::syn(c, vip).udp().payload(b"dns?"));
    t.pass("v4 ICMP echo to the VIP", Ingress, Pkt::syn(c, vip).icmp());
    t.pass("ARP request for the VIP", Ingress, arp_request());
    t.pass("802.1Q-tagged SYN to the VIP", Ingress, vlan_tagged(Pkt::syn(c, vip).build()));
    t.pass("IPv6 SYN on the IPv4 setup", Ingress, Pkt::syn(sa("[fd00:c::1]:43000"), sa("[fd00::100]:80")));
    t.pass("v4 fragment: MF set, offset 0", Ingress, Pkt::syn(c, vip).frag(IP_MF));
    t.pass("v4 fragment: offset 185, MF clear", Ingress, Pkt::tcp(c, vip, ACK).payload(HTTP_GET).frag(185));
    t.pass("v4 fragment: MF set, offset 185", Ingress, Pkt::tcp(c, vip, ACK).payload(HTTP_GET).frag(IP_MF | 185));
    t.pass("v4 fragment with DF and an offset (inconsistent)", Ingress, Pkt::syn(c, vip).frag(IP_DF | 1));

    // Hostile and broken headers, all addressed to the VIP.
    let syn = Pkt::syn(c, vip).build();
    let (l3, tot) = (ETH_LEN, syn.len() - ETH_LEN);
    t.pass("v4 IHL=4", Ingress, patched(&syn, l3, &[0x44]));
    t.pass("v4 IHL=0", Ingress, patched(&syn, l3, &[0x40]));
    t.pass("v4 IHL=15 beyond tot_len", Ingress, patched(&syn, l3, &[0x4f]));
    t.pass("version 5 with the IPv4 ethertype", Ingress, patched(&syn, l3, &[0x55]));
    t.pass("version 6 with the IPv4 ethertype", Ingress, patched(&syn, l3, &[0x65]));
    t.pass("v4 tot_len one past the packet", Ingress, patched(&syn, l3 + 2, &u16::try_from(tot + 1).unwrap().to_be_bytes()));
    t.pass("v4 tot_len 0xffff", Ingress, patched(&syn, l3 + 2, &[0xff, 0xff]));
    t.pass("v4 tot_len 0 on a small packet (not BIG TCP)", Ingress, patched(&syn, l3 + 2, &[0, 0]));
    t.pass("v4 tot_len smaller than IHL", Ingress, patched(&syn, l3 + 2, &[0, 19]));
    t.pass("v4 tot_len too small for a TCP header", Ingress, patched(&syn, l3 + 2, &[0, 30]));
    t.pass("v4 TCP data offset 4", Ingress, Pkt::syn(c, vip).data_offset(4));
    t.pass("v4 TCP data offset 0", Ingress, Pkt::syn(c, vip).data_offset(0));
    // Found by packet_fuzz: the data offset was only checked to be at least 5 words.
    t.pass("v4 TCP data offset 6 on a 20-byte segment", Ingress, Pkt::tcp(c, vip, ACK).data_offset(6));
    t.pass("v4 TCP data offset 15, options past tot_len into padding", Ingress, Pkt::tcp(c, vip, ACK).data_offset(15).pad_to(120));
    t.pass("v4 header only, no TCP bytes", Ingress, patched(&syn[..l3 + 20], l3 + 2, &[0, 20]));
    for seed in 1..=8u64 {
        for len in [34, 54, 74, 134] {
            t.pass(format!("random bytes, IPv4 ethertype, seed {seed}, {len} bytes"), Ingress, garbage(seed, len, ETH_P_IP));
        }
    }
    for seed in 1..=4u64 {
        t.pass(format!("random bytes, IPv4 ethertype, seed {seed}, on egress"), Egress, garbage(seed, 74, ETH_P_IP));
        // A valid IPv4 header to the VIP (tot_len fitted), then noise as TCP.
        let mut g = garbage(seed + 100, 80, ETH_P_IP);
        g[..ETH_LEN + 20].copy_from_slice(&syn[..ETH_LEN + 20]);
        t.pass(format!("valid IPv4 header to the VIP, random TCP, seed {seed}"), Ingress, patched(&g, l3 + 2, &[0, 66]));
    }

    // IPv4-mapped addresses inside IPv6 never appear on the wire; they would share the map
    // keys of IPv4 clients, so the parser treats them as malformed and they pass untouched,
    // creating no flow or affinity entry.
    t.pass("IPv6 SYN to the IPv4-mapped form of the IPv4 VIP", Ingress, Pkt::syn(sa("[::ffff:198.51.100.77]:43000"), sa("[::ffff:192.0.2.10]:80")));
    t.pass("IPv6 SYN from an IPv4-mapped source", Ingress, Pkt::syn(sa("[::ffff:198.51.100.78]:43000"), sa("[2001:db8::1]:80")));
    udp_fixtures(&mut t, &choice, a, a2);
    t.fixtures
}

/// UDP on a setup with remote backends: `a` and `a2` are clients that already have TCP
/// connections (to `choice(a)`), `choice` the table's backend for a client.
#[rustfmt::skip]
fn udp_fixtures(t: &mut Table, choice: &dyn Fn(SocketAddr) -> SocketAddr, a: SocketAddr, a2: SocketAddr) {
    use Prog::{Egress, Ingress};
    let setup = t.setup;
    let (vip, uv) = (setup.vip(), setup.udp_vip());
    let v = if vip.is_ipv6() { "v6" } else { "v4" };
    let ba = choice(a);
    // Client addresses of this block: 198.51.100.100+ / fd00:c::100+.
    let client = |i: u16, port: u16| -> SocketAddr {
        if vip.is_ipv6() { sa(&format!("[fd00:c::{:x}]:{port}", 0x100 + i)) } else { sa(&format!("198.51.100.{}:{port}", 100 + i)) }
    };

    // A client with TCP connections: its datagrams go to the same backend, both ways.
    let ua = SocketAddr::new(a.ip(), 5353);
    t.dnat(format!("{v} UDP to the UDP VIP from a TCP client: its backend"), Pkt::datagram(ua, uv).payload(b"dns?"), ba);
    t.dnat(format!("{v} UDP second datagram, same 5-tuple: same backend"), Pkt::datagram(ua, uv).payload(b"again"), ba);
    t.snat(format!("{v} UDP reply from the backend: source back to the UDP VIP"), Pkt::datagram(ba, ua).payload(b"answer"));
    t.snat(format!("{v} UDP reply with odd-length payload"), Pkt::datagram(ba, ua).payload(b"odd"));
    // Same ports as a TCP connection, other protocol: not that connection's flow.
    t.pass(format!("{v} UDP reply with a TCP flow's ports on egress (no UDP flow)"), Egress, Pkt::datagram(ba, a2).payload(b"x"));
    t.pass(format!("{v} TCP reply with a UDP flow's ports on egress (no TCP flow)"), Egress, Pkt::tcp(ba, ua, ACK));

    // Clients that start with UDP: the table's backend, the same one their TCP gets (one hash).
    let mut seen = Vec::new();
    for i in 0..24u16 {
        let c = client(i, 6000 + i);
        seen.push(choice(c));
        t.dnat(format!("{v} UDP from client {c}"), Pkt::datagram(c, uv).payload(b"hello"), choice(c));
        t.snat(format!("{v} UDP reply to client {c}"), Pkt::datagram(choice(c), c).payload(b"world"));
        if i < 4 {
            t.dnat(format!("{v} TCP SYN of UDP client {c}: the same backend"), Pkt::syn(SocketAddr::new(c.ip(), 7000), vip), choice(c));
        }
    }
    assert!(seen.iter().collect::<std::collections::HashSet<_>>().len() == 3, "precondition: UDP clients reach every backend: {seen:?}");

    // Checksums: none (IPv4) / zero (forbidden in IPv6) stays zero; a sum that comes out zero
    // is written 0xffff.
    let c = client(30, 6100);
    let zero = if vip.is_ipv6() { "UDP checksum 0 (forbidden in IPv6): kept 0" } else { "UDP checksum 0 (none): kept 0" };
    t.dnat(format!("{v} {zero}"), Pkt::datagram(c, uv).payload(b"no checksum").checksum(0), choice(c));
    t.snat(format!("{v} reply with {zero}"), Pkt::datagram(choice(c), c).payload(b"none").checksum(0));
    let c = client(31, 6100);
    let dg = Pkt::datagram(c, uv).payload(b"zero sum").zero_sum_after(c, choice(c));
    let csum = |p: &Pkt| be16(&p.build(), Layout::parse(&p.build()).unwrap().csum_off()).unwrap();
    assert_eq!(csum(&Pkt { dst: choice(c), ..dg.clone() }), 0xffff, "precondition: the DNATed datagram's checksum computes to 0");
    assert_ne!(csum(&dg), 0xffff, "precondition: the input's checksum is another");
    t.dnat(format!("{v} UDP whose checksum comes out 0 after DNAT: written 0xffff"), dg, choice(c));
    let reply = Pkt::datagram(choice(c), c).payload(b"zero sum").zero_sum_after(uv, c);
    assert_eq!(csum(&Pkt { src: uv, ..reply.clone() }), 0xffff, "precondition: the reverse-NATed reply's checksum computes to 0");
    t.snat(format!("{v} UDP reply whose checksum comes out 0 after reverse NAT: written 0xffff"), reply);

    // Header shapes.
    let c = client(32, 6100);
    t.dnat(format!("{v} UDP without payload"), Pkt::datagram(c, uv), choice(c));
    t.dnat(format!("{v} UDP padded to the 60-byte Ethernet minimum"), Pkt::datagram(c, uv).payload(b"pad").pad_to(60), choice(c));
    t.dnat(format!("{v} UDP length 12 of a 20-byte IP payload (the rest is not the datagram's)"), Pkt::datagram(c, uv).payload(b"0123456789ab").udp_len(12), choice(c));
    t.snat(format!("{v} UDP reply padded to the 60-byte Ethernet minimum"), Pkt::datagram(choice(c), c).pad_to(60));
    let c = client(33, 6100);
    if vip.is_ipv6() {
        let hbh_do = |p: Pkt| p.ext(Ext::HopByHop).ext(Ext::DestOpts);
        t.dnat(format!("{v} UDP with hop-by-hop + destination options"), hbh_do(Pkt::datagram(c, uv).payload(b"ext")), choice(c));
        t.snat(format!("{v} UDP reply with hop-by-hop + destination options"), hbh_do(Pkt::datagram(choice(c), c)));
        let four = |p: Pkt| p.ext(Ext::HopByHop).ext(Ext::DestOpts).ext(Ext::DestOpts).ext(Ext::DestOpts);
        t.dnat(format!("{v} UDP behind 4 extension headers"), four(Pkt::datagram(c, uv)), choice(c));
        t.dnat(format!("{v} UDP in jumbogram shape (payload length 0, UDP length set)"), Pkt::datagram(c, uv).ext(Ext::Jumbo).payload(b"jumbo"), choice(c));
        t.unhandled(format!("{v} UDP behind 5 extension headers"), four(Pkt::datagram(c, uv)).ext(Ext::DestOpts));
        t.unhandled(format!("{v} UDP with a fragment header"), Pkt::datagram(c, uv).payload(b"frag").ext(Ext::Fragment));
        t.unhandled(format!("{v} UDP with a routing header"), Pkt::datagram(c, uv).ext(Ext::Routing));
        t.malformed(format!("{v} UDP length 0 in jumbogram shape (under 64 KiB: no jumbogram)"), Pkt::datagram(c, uv).ext(Ext::Jumbo).payload(b"jumbo").udp_len(0));
    } else {
        t.dnat(format!("{v} UDP with IP options (IHL=7)"), Pkt::datagram(c, uv).payload(b"opts").ip_options(8), choice(c));
        t.dnat(format!("{v} UDP with IP options (IHL=15)"), Pkt::datagram(c, uv).ip_options(40), choice(c));
        t.snat(format!("{v} UDP reply with IP options (IHL=15)"), Pkt::datagram(choice(c), c).ip_options(40));
        t.dnat(format!("{v} UDP with DF set (not a fragment)"), Pkt::datagram(c, uv).frag(IP_DF), choice(c));
        t.unhandled(format!("{v} UDP fragment: MF set, offset 0"), Pkt::datagram(c, uv).payload(b"first part").frag(IP_MF));
        t.unhandled(format!("{v} UDP fragment: offset 185, MF clear"), Pkt::datagram(c, uv).payload(b"last part").frag(185));
        t.unhandled(format!("{v} UDP fragment: MF set, offset 185"), Pkt::datagram(c, uv).frag(IP_MF | 185));
    }

    // Not ours.
    let c = client(40, 6200);
    t.pass(format!("{v} UDP to the TCP VIP's port (a TCP-only port)"), Ingress, Pkt::datagram(c, vip).payload(b"x"));
    t.pass(format!("{v} TCP SYN to the UDP VIP's port (a UDP-only port)"), Ingress, Pkt::syn(c, uv));
    t.pass(format!("{v} UDP to the UDP VIP's port on another address"), Ingress, Pkt::datagram(c, SocketAddr::new(if vip.is_ipv6() { "fd00::101".parse().unwrap() } else { "192.0.2.11".parse().unwrap() }, uv.port())));
    t.pass(format!("{v} UDP to the VIP address, another port"), Ingress, Pkt::datagram(c, SocketAddr::new(uv.ip(), 54)));
    t.pass(format!("{v} UDP from the UDP VIP (VIP as source)"), Ingress, Pkt::datagram(uv, c));
    t.pass(format!("{v} UDP reply of no flow on egress"), Egress, Pkt::datagram(ba, c));
    t.pass(format!("{v} client->UDP VIP datagram on egress (forward entry, not a reply)"), Egress, Pkt::datagram(ua, uv));
    t.pass(format!("{v} UDP backend reply seen on ingress"), Ingress, Pkt::datagram(ba, ua));

    // Malformed, all to the UDP VIP: passed untouched, counted as parse errors.
    let dg = Pkt::datagram(c, uv).payload(b"payload!");
    let f = dg.build();
    let l = Layout::parse(&f).unwrap();
    let (l3, l4) = (l.l3, l.l4);
    let ip_len_off = if vip.is_ipv6() { l3 + 4 } else { l3 + 2 };
    let ip_len = be16(&f, ip_len_off).unwrap();
    let cut = ip_len - u16::try_from(f.len() - l4).unwrap() + 4;
    for (what, len) in [("7", 7u16), ("0", 0), ("1", 1), ("one past the IP packet", 17), ("0xffff", 0xffff)] {
        t.malformed(format!("{v} UDP length {what}"), dg.clone().udp_len(len));
    }
    t.malformed(format!("{v} UDP length past the IP packet into Ethernet padding"), Pkt::datagram(c, uv).payload(b"ab").udp_len(20).pad_to(80));
    t.malformed(format!("{v} IP length ends 4 bytes into the UDP header"), patched(&f, ip_len_off, &cut.to_be_bytes()));
    t.malformed(format!("{v} IP length ends 2 bytes into the UDP header"), patched(&f, ip_len_off, &(cut - 2).to_be_bytes()));
    if !vip.is_ipv6() {
        // (An IPv6 payload length of 0 is a jumbogram's, running to the frame's end.)
        t.malformed(format!("{v} IP length ends at the UDP header"), patched(&f, ip_len_off, &(cut - 4).to_be_bytes()));
    }
    t.malformed(format!("{v} IP packet one past the frame (UDP)"), patched(&f, ip_len_off, &(ip_len + 1).to_be_bytes()));
    t.malformed(format!("{v} UDP header cut by the frame"), f[..l4 + 4].to_vec());
    if !vip.is_ipv6() {
        t.malformed(format!("{v} UDP behind IHL=15 beyond tot_len"), patched(&f, l3, &[0x4f]));
    }
    t.pass(format!("{v} UDP reply with UDP length 7 on egress"), Egress, Pkt::datagram(ba, ua).payload(b"reply").udp_len(7));
}

#[rustfmt::skip]
fn v6_fixtures() -> Vec<Fixture> {
    use Prog::{Egress, Ingress};
    let mut t = Table::new(Setup::V6);
    let set = Setup::V6.plan();
    let choice = |c: SocketAddr| table_choice(&set, c.ip()).unwrap();
    let vip = Setup::V6.vip();
    let a = sa("[fd00:c::1]:40000");
    let a2 = sa("[fd00:c::1]:40001");
    let ba = choice(a);

    t.dnat("v6 SYN to the VIP: DNAT to the table's backend", Pkt::syn(a, vip), ba);
    t.dnat("v6 ACK with payload, same flow: same backend", Pkt::tcp(a, vip, ACK | PSH).payload(HTTP_GET), ba);
    t.dnat("v6 second connection from the same client: same backend", Pkt::syn(a2, vip), ba);
    t.snat("v6 SYN-ACK from the backend: source back to the VIP", Pkt::tcp(ba, a, SYN | ACK));
    t.snat("v6 reply with odd-length payload", Pkt::tcp(ba, a2, ACK | PSH).payload(b"200"));
    t.pass("v6 egress of a flow never seen", Egress, Pkt::tcp(ba, sa("[fd00:c::1]:49999"), ACK));
    t.pass("v6 client->VIP packet on egress", Egress, Pkt::tcp(a, vip, ACK));
    t.pass("v6 backend reply seen on ingress", Ingress, Pkt::tcp(ba, a, ACK));

    let mut seen = Vec::new();
    for i in 2..=24u16 {
        let c = sa(&format!("[fd00:c::{i:x}]:{}", 41_000 + i));
        seen.push(choice(c));
        t.dnat(format!("v6 SYN from client {c}"), Pkt::syn(c, vip), choice(c));
        t.snat(format!("v6 reply to client {c}"), Pkt::tcp(choice(c), c, SYN | ACK));
    }
    assert!(v6_backends(3).iter().all(|b| seen.contains(b)), "precondition: clients reach every backend: {seen:?}");

    // Extension headers the parser walks.
    let c = sa("[fd00:c::30]:42000");
    let hbh_do = |p: Pkt| p.ext(Ext::HopByHop).ext(Ext::DestOpts);
    t.dnat("v6 SYN with hop-by-hop + destination options", hbh_do(Pkt::syn(c, vip)), choice(c));
    t.dnat("v6 ACK with payload, hop-by-hop + destination options", hbh_do(Pkt::tcp(c, vip, ACK).payload(HTTP_GET)), choice(c));
    t.snat("v6 reply with hop-by-hop + destination options", hbh_do(Pkt::tcp(choice(c), c, SYN | ACK)));
    let c = sa("[fd00:c::31]:42000");
    t.dnat("v6 SYN with hop-by-hop only", Pkt::syn(c, vip).ext(Ext::HopByHop), choice(c));
    let c = sa("[fd00:c::32]:42000");
    let four = |p: Pkt| p.ext(Ext::HopByHop).ext(Ext::DestOpts).ext(Ext::DestOpts).ext(Ext::DestOpts);
    t.dnat("v6 SYN behind 4 extension headers (the walk's limit)", four(Pkt::syn(c, vip)), choice(c));
    let c = sa("[fd00:c::33]:42000");
    t.dnat("v6 jumbogram shape (payload length 0, jumbo option)", Pkt::tcp(c, vip, ACK).ext(Ext::Jumbo).payload(HTTP_GET), choice(c));
    t.snat("v6 reply in jumbogram shape", Pkt::tcp(choice(c), c, ACK).ext(Ext::Jumbo));

    // Not ours, or not walked.
    let c = sa("[fd00:c::40]:43000");
    t.pass("v6 SYN behind 5 extension headers", Ingress, four(Pkt::syn(c, vip)).ext(Ext::DestOpts));
    t.pass("v6 SYN with a routing header", Ingress, Pkt::syn(c, vip).ext(Ext::Routing));
    t.pass("v6 SYN with a fragment header", Ingress, Pkt::syn(c, vip).ext(Ext::Fragment));
    t.pass("v6 SYN with hop-by-hop then routing", Ingress, Pkt::syn(c, vip).ext(Ext::HopByHop).ext(Ext::Routing));
    t.pass("v6 SYN with destination options then fragment", Ingress, Pkt::syn(c, vip).ext(Ext::DestOpts).ext(Ext::Fragment));
    t.pass("v6 reply with a routing header", Egress, Pkt::tcp(ba, a, ACK).ext(Ext::Routing));
    t.pass("v6 SYN to the VIP address, other port", Ingress, Pkt::syn(c, sa("[fd00::100]:81")));
    t.pass("v6 SYN to another address, VIP port", Ingress, Pkt::syn(c, sa("[fd00::101]:80")));
    t.pass("v6 UDP to VIP:port", Ingress, Pkt::syn(c, vip).udp());
    t.pass("v6 ICMPv6 echo to the VIP", Ingress, Pkt::syn(c, vip).icmp());
    t.pass("v6 no next header", Ingress, patched(&Pkt::syn(c, vip).build(), ETH_LEN + 6, &[NO_NEXT_HEADER]));
    t.pass("v6 hop-by-hop then no next header", Ingress, patched(&Pkt::syn(c, vip).ext(Ext::HopByHop).build(), ETH_LEN + 40, &[NO_NEXT_HEADER]));
    t.pass("IPv4 SYN on the IPv6 setup", Ingress, Pkt::syn(sa("198.51.100.1:43000"), sa("192.0.2.10:80")));

    let syn = Pkt::syn(c, vip).build();
    let hbh = Pkt::syn(c, vip).ext(Ext::HopByHop).build();
    let (l3, payload) = (ETH_LEN, syn.len() - ETH_LEN - 40);
    t.pass("version 4 with the IPv6 ethertype", Ingress, patched(&syn, l3, &[0x40]));
    t.pass("v6 payload length one past the packet", Ingress, patched(&syn, l3 + 4, &u16::try_from(payload + 1).unwrap().to_be_bytes()));
    t.pass("v6 payload length 0xffff", Ingress, patched(&syn, l3 + 4, &[0xff, 0xff]));
    t.pass("v6 hop-by-hop length past the packet", Ingress, patched(&hbh, l3 + 41, &[3]));
    t.pass("v6 hop-by-hop length 255 (TCP beyond the parse limit)", Ingress, patched(&hbh, l3 + 41, &[255]));
    t.pass("v6 TCP data offset 4", Ingress, Pkt::syn(c, vip).data_offset(4));
    // Found by packet_fuzz: the TCP header was read wherever the frame had bytes, not only
    // inside the IPv6 payload, and its data offset was only checked to be at least 5 words.
    t.pass("v6 TCP data offset 6 on a 20-byte segment", Ingress, Pkt::tcp(c, vip, ACK).data_offset(6));
    t.pass("v6 payload length 8: the TCP header lies past it", Ingress, patched(&syn, l3 + 4, &[0, 8]));
    t.pass("v6 payload length ends inside the TCP options", Ingress, patched(&syn, l3 + 4, &u16::try_from(payload - 2).unwrap().to_be_bytes()));
    t.pass("v6 header only, no TCP bytes", Ingress, patched(&syn[..l3 + 40], l3 + 4, &[0, 0]));
    for seed in 1..=8u64 {
        for len in [54, 74, 94, 154] {
            t.pass(format!("random bytes, IPv6 ethertype, seed {seed}, {len} bytes"), Ingress, garbage(seed, len, ETH_P_IPV6));
        }
    }
    udp_fixtures(&mut t, &choice, a, a2);
    t.fixtures
}

#[rustfmt::skip]
fn no_backend_fixtures() -> Vec<Fixture> {
    let mut t = Table::new(Setup::V4NoBackends);
    let vip = Setup::V4NoBackends.vip();
    let c = sa("198.51.100.1:40000");
    t.drop("no backend in service: new flow dropped", Pkt::syn(c, vip));
    t.drop("no backend in service: mid-stream packet of an unknown flow dropped", Pkt::tcp(c, vip, ACK).payload(HTTP_GET));
    t.pass("no backend in service: other traffic passes", Prog::Ingress, Pkt::syn(c, sa("192.0.2.11:80")));
    t.pass("no backend in service: egress passes", Prog::Egress, Pkt::tcp(sa("10.1.0.2:8080"), c, ACK));
    let uv = Setup::V4NoBackends.udp_vip();
    t.drop("no backend in service: UDP datagram to the UDP VIP dropped", Pkt::datagram(c, uv).payload(b"dns?"));
    t.drop("no backend in service: UDP datagram with checksum 0 dropped", Pkt::datagram(c, uv).checksum(0));
    t.pass("no backend in service: UDP to the TCP VIP's port passes", Prog::Ingress, Pkt::datagram(c, vip));
    t.pass("no backend in service: UDP reply passes", Prog::Egress, Pkt::datagram(sa("10.1.0.2:8080"), c));
    t.fixtures
}

/// Backends on the balancer itself: the address stays, only the port is rewritten (and the
/// checksum fixes must cope with an address that does not change).
#[rustfmt::skip]
fn local_backend_fixtures() -> Vec<Fixture> {
    let mut fixtures = Vec::new();
    for (setup, c) in [(Setup::V4Local, sa("198.51.100.90:47000")), (Setup::V6Local, sa("[fd00:c::90]:47000"))] {
        let mut t = Table::new(setup);
        let (vip, local) = (setup.vip(), setup.stages()[0][0]);
        t.dnat(format!("{setup:?}: SYN to the VIP, port rewritten"), Pkt::syn(c, vip), local);
        t.dnat(format!("{setup:?}: ACK with payload"), Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET), local);
        t.snat(format!("{setup:?}: reply gets the VIP port back"), Pkt::tcp(local, c, SYN | ACK));
        t.pass(format!("{setup:?}: reply of an unknown flow"), Prog::Egress, Pkt::tcp(local, SocketAddr::new(c.ip(), 47_001), ACK));
        let (uv, uc) = (setup.udp_vip(), SocketAddr::new(c.ip(), 47_002));
        t.dnat(format!("{setup:?}: UDP to the UDP VIP, port rewritten"), Pkt::datagram(uc, uv).payload(b"query"), local);
        t.dnat(format!("{setup:?}: UDP second datagram"), Pkt::datagram(uc, uv).payload(b"query 2"), local);
        t.snat(format!("{setup:?}: UDP reply gets the UDP VIP's port back"), Pkt::datagram(local, uc).payload(b"answer"));
        let none = SocketAddr::new(c.ip(), 47_003);
        t.dnat(format!("{setup:?}: UDP checksum 0, port rewritten, kept 0"), Pkt::datagram(none, uv).payload(b"none").checksum(0), local);
        t.snat(format!("{setup:?}: UDP reply with checksum 0, kept 0"), Pkt::datagram(local, none).checksum(0));
        let zero = SocketAddr::new(c.ip(), 47_004);
        t.dnat(format!("{setup:?}: UDP whose checksum comes out 0 after the port rewrite"), Pkt::datagram(zero, uv).payload(b"zero sum").zero_sum_after(zero, local), local);
        t.pass(format!("{setup:?}: UDP reply of an unknown flow"), Prog::Egress, Pkt::datagram(local, SocketAddr::new(c.ip(), 47_005)));
        fixtures.extend(t.fixtures);
    }
    fixtures
}

/// One address and port for both protocols: TCP and UDP each reach it, as flows of their own
/// that go to the same backend (one hash per client), and replies of each get the VIP back.
#[rustfmt::skip]
fn same_port_fixtures() -> Vec<Fixture> {
    use Prog::{Egress, Ingress};
    let setup = Setup::V4SamePort;
    let mut t = Table::new(setup);
    let set = setup.plan();
    let choice = |c: SocketAddr| table_choice(&set, c.ip()).unwrap();
    let vip = setup.vip();
    assert_eq!(vip, setup.udp_vip());
    for i in 0..6u16 {
        let c = sa(&format!("198.51.100.{}:40000", 120 + i));
        let b = choice(c);
        t.dnat(format!("one port: TCP SYN of {c}"), Pkt::syn(c, vip), b);
        t.dnat(format!("one port: UDP of {c}, same address and port"), Pkt::datagram(c, vip).payload(b"u"), b);
        t.snat(format!("one port: SYN-ACK to {c}"), Pkt::tcp(b, c, SYN | ACK));
        t.snat(format!("one port: UDP reply to {c}"), Pkt::datagram(b, c).payload(b"r"));
        t.dnat(format!("one port: handshake ACK of {c}"), Pkt::tcp(c, vip, ACK), b);
        t.dnat(format!("one port: second datagram of {c}"), Pkt::datagram(c, vip).payload(b"u2"), b);
    }
    let c = sa("198.51.100.130:40000");
    t.pass("one port: UDP to the VIP address, other port", Ingress, Pkt::datagram(c, sa("192.0.2.10:53")));
    t.pass("one port: ICMP echo to the VIP", Ingress, Pkt::syn(c, vip).icmp());
    t.pass("one port: UDP reply of no flow", Egress, Pkt::datagram(choice(c), c));
    t.fixtures
}

/// The SYN cut at every length from 0 to one short of whole: each must come back untouched,
/// or be refused by the kernel (`Expect::Refused`) when it is too short to run at all.
#[rustfmt::skip]
fn truncation_fixtures() -> Vec<Fixture> {
    let (v4, c4) = (Setup::V4.vip(), sa("198.51.100.50:44000"));
    let (v6, c6) = (Setup::V6.vip(), sa("[fd00:c::50]:44000"));
    let bases = [
        ("v4 SYN", Setup::V4, Pkt::syn(c4, v4)),
        ("v4 SYN with IHL=7", Setup::V4, Pkt::syn(c4, v4).ip_options(8)),
        ("v4 ACK with payload", Setup::V4, Pkt::tcp(c4, v4, ACK).payload(HTTP_GET)),
        ("v6 SYN", Setup::V6, Pkt::syn(c6, v6)),
        ("v6 SYN with hop-by-hop + destination options", Setup::V6, Pkt::syn(c6, v6).ext(Ext::HopByHop).ext(Ext::DestOpts)),
        ("v4 UDP datagram", Setup::V4, Pkt::datagram(c4, Setup::V4.udp_vip()).payload(b"query")),
        ("v4 UDP datagram with IHL=7", Setup::V4, Pkt::datagram(c4, Setup::V4.udp_vip()).ip_options(8)),
        ("v6 UDP datagram", Setup::V6, Pkt::datagram(c6, Setup::V6.udp_vip()).payload(b"query")),
        ("v6 UDP datagram with hop-by-hop", Setup::V6, Pkt::datagram(c6, Setup::V6.udp_vip()).ext(Ext::HopByHop)),
    ];
    let mut fixtures = Vec::new();
    for (what, setup, pkt) in bases {
        let mut t = Table::new(setup);
        let full = pkt.build();
        let fixed_ip_header = if setup == Setup::V6 { 40 } else { 20 };
        for len in 0..full.len() {
            let name = format!("{what} truncated to {len} of {} bytes", full.len());
            if len < ETH_LEN + fixed_ip_header {
                t.refused(name, full[..len].to_vec());
            } else {
                t.pass(name, Prog::Ingress, full[..len].to_vec());
            }
        }
        fixtures.extend(t.fixtures);
    }
    // The kernel's length rule follows the ethertype: other frames run from 14 bytes on.
    let mut t = Table::new(Setup::V4);
    for len in [ETH_LEN, ETH_LEN + 1, ETH_LEN + 20] {
        t.pass(format!("ARP request truncated to {len} bytes"), Prog::Ingress, arp_request()[..len].to_vec());
    }
    fixtures.extend(t.fixtures);
    fixtures
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The output checks themselves, on packets made here: a rewrite that skips a checksum fix,
/// or touches a byte outside the NAT fields, must fail them. Needs no root.
#[test]
fn checks_catch_missed_checksum_fixes() {
    let cases = [
        (
            sa("198.51.100.1:40000"),
            sa("192.0.2.10:80"),
            sa("10.1.0.2:8080"),
        ),
        (
            sa("[fd00:c::1]:40000"),
            sa("[fd00::100]:80"),
            sa("[fd00:1::2]:8080"),
        ),
    ];
    for (client, vip, backend) in cases {
        let input = Pkt::tcp(client, vip, ACK).payload(HTTP_GET).build();
        let good = Pkt::tcp(client, backend, ACK).payload(HTTP_GET).build();
        assert_eq!(
            rewritten(&input, &good, client, backend),
            Ok(()),
            "{client}"
        );
        assert!(
            rewritten(&input, &good, client, vip).is_err(),
            "{client}: wrong destination"
        );
        assert_eq!(unchanged(&input, &input), Ok(()));
        assert!(unchanged(&input, &good).is_err());

        let l = Layout::parse(&input).unwrap();
        let tcp_csum = l.l4 + 16..l.l4 + 18;
        let mut stale_tcp = good.clone();
        stale_tcp[tcp_csum.clone()].copy_from_slice(&input[tcp_csum]);
        let err = rewritten(&input, &stale_tcp, client, backend).unwrap_err();
        assert!(err.contains("TCP checksum"), "{client}: {err}");

        if !l.v6 {
            let ip_csum = l.l3 + 10..l.l3 + 12;
            let mut stale_ip = good.clone();
            stale_ip[ip_csum.clone()].copy_from_slice(&input[ip_csum]);
            let err = rewritten(&input, &stale_ip, client, backend).unwrap_err();
            assert!(err.contains("IPv4 header checksum"), "{client}: {err}");
        }

        // Swapping two 16-bit words keeps every checksum valid: only the byte comparison
        // can see it.
        let mut swapped = good.clone();
        let p = l.l4 + 20;
        swapped[p..p + 4].copy_from_slice(&[good[p + 2], good[p + 3], good[p], good[p + 1]]);
        let err = rewritten(&input, &swapped, client, backend).unwrap_err();
        assert!(err.contains("outside the NAT fields"), "{client}: {err}");

        // UDP: the checksum at l4+6, stale or from scratch the same as TCP's; a zero field
        // (none) stays zero; a zero sum is sent as 0xffff, never 0x0000.
        let input = Pkt::datagram(client, vip).payload(HTTP_GET).build();
        let good = Pkt::datagram(client, backend).payload(HTTP_GET).build();
        assert_eq!(
            rewritten(&input, &good, client, backend),
            Ok(()),
            "{client} UDP"
        );
        let l = Layout::parse(&input).unwrap();
        assert_eq!(
            (l.is_udp(), l.csum_off(), l.end),
            (true, l.l4 + 6, input.len())
        );
        let udp_csum = l.csum_off()..l.csum_off() + 2;
        let mut stale = good.clone();
        stale[udp_csum.clone()].copy_from_slice(&input[udp_csum.clone()]);
        let err = rewritten(&input, &stale, client, backend).unwrap_err();
        assert!(err.contains("UDP checksum"), "{client}: {err}");
        let mut swapped = good.clone();
        let p = l.l4 + 8;
        swapped[p..p + 4].copy_from_slice(&[good[p + 2], good[p + 3], good[p], good[p + 1]]);
        let err = rewritten(&input, &swapped, client, backend).unwrap_err();
        assert!(err.contains("outside the NAT fields"), "{client}: {err}");

        let none_in = Pkt::datagram(client, vip)
            .payload(HTTP_GET)
            .checksum(0)
            .build();
        let none_out = Pkt::datagram(client, backend)
            .payload(HTTP_GET)
            .checksum(0)
            .build();
        assert_eq!(
            rewritten(&none_in, &none_out, client, backend),
            Ok(()),
            "{client}"
        );
        let err = rewritten(&none_in, &good, client, backend).unwrap_err();
        assert!(err.contains("must keep none"), "{client}: {err}");

        let zero = Pkt::datagram(client, vip)
            .payload(b"zero sum")
            .zero_sum_after(client, backend);
        let zero_in = zero.build();
        let zero_out = Pkt {
            dst: backend,
            ..zero.clone()
        }
        .build();
        assert_eq!(be16(&zero_out, l.csum_off()), Some(0xffff));
        assert_eq!(
            rewritten(&zero_in, &zero_out, client, backend),
            Ok(()),
            "{client}"
        );
        let as_none = patched(&zero_out, l.csum_off(), &[0, 0]);
        let err = rewritten(&zero_in, &as_none, client, backend).unwrap_err();
        assert!(err.contains("0xffff (RFC 768)"), "{client}: {err}");
    }
}

/// The model's UDP rules (no root): lengths, the header inside the IP packet, fragments.
#[test]
fn the_model_knows_udp() {
    let (c, vip) = (sa("198.51.100.1:5000"), sa("192.0.2.10:53"));
    let dg = Pkt::datagram(c, vip).payload(b"12345678");
    let shape = |p: Pkt| match classify(&p.build()) {
        Shape::Transport(l) => format!("{} {} bytes", l.l4_name(), l.end - l.l4),
        other => format!("{other:?}"),
    };
    assert_eq!(shape(dg.clone()), "UDP 16 bytes");
    assert_eq!(shape(dg.clone().udp_len(8)), "UDP 8 bytes");
    assert_eq!(shape(dg.clone().udp_len(7)), "Malformed");
    assert_eq!(shape(dg.clone().udp_len(17)), "Malformed");
    assert_eq!(shape(dg.clone().udp_len(0)), "Malformed");
    assert_eq!(shape(dg.clone().frag(IP_MF)), "Unhandled");
    assert_eq!(shape(dg.clone().pad_to(80)), "UDP 16 bytes");
    assert_eq!(shape(dg.clone().udp_len(20).pad_to(80)), "Malformed");
    assert_eq!(shape(Pkt::datagram(c, vip).icmp()), "Other");
    let v6 = Pkt::datagram(sa("[fd00:c::1]:5000"), sa("[fd00::100]:53")).payload(b"1234");
    assert_eq!(shape(v6.clone()), "UDP 12 bytes");
    assert_eq!(shape(v6.clone().ext(Ext::Jumbo)), "UDP 12 bytes");
    assert_eq!(shape(v6.clone().ext(Ext::Jumbo).udp_len(0)), "Malformed");
    assert_eq!(shape(v6.clone().ext(Ext::Fragment)), "Unhandled");
    assert!(
        !Layout::parse(&dg.build()).unwrap().syn(),
        "a datagram is never a SYN"
    );
    let v4_none = Pkt::datagram(c, vip).checksum(0).build();
    assert_eq!(
        Layout::parse(&v4_none).unwrap().verify_checksums(&v4_none),
        Ok(())
    );
    let v6_none = v6.checksum(0).build();
    assert!(
        Layout::parse(&v6_none)
            .unwrap()
            .verify_checksums(&v6_none)
            .is_err()
    );
}

#[test]
fn every_map_and_program_resolves() {
    if !bpf_or_skip() {
        return;
    }
    let mut lb = Lb::load(Setup::V4);
    let missing: Vec<&str> = names::ALL_MAPS
        .iter()
        .copied()
        .filter(|name| lb.dp.map(name).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "maps missing from the loaded object: {missing:?}"
    );
    for prog in [Prog::Ingress, Prog::Egress] {
        assert!(
            lb.dp.classifier(prog.name()).is_ok(),
            "program {} missing",
            prog.name()
        );
    }
}

#[test]
fn ipv4_fixtures() {
    if !bpf_or_skip() {
        return;
    }
    run_fixtures(&v4_fixtures());
}

#[test]
fn ipv6_fixtures() {
    if !bpf_or_skip() {
        return;
    }
    run_fixtures(&v6_fixtures());
}

#[test]
fn vip_without_backends_drops_new_flows() {
    if !bpf_or_skip() {
        return;
    }
    run_fixtures(&no_backend_fixtures());
}

#[test]
fn local_backends_get_port_only_rewrites() {
    if !bpf_or_skip() {
        return;
    }
    run_fixtures(&local_backend_fixtures());
}

#[test]
fn one_port_for_tcp_and_udp() {
    if !bpf_or_skip() {
        return;
    }
    run_fixtures(&same_port_fixtures());
}

#[test]
fn truncated_packets_pass_untouched() {
    if !bpf_or_skip() {
        return;
    }
    let fixtures = truncation_fixtures();
    run_fixtures(&fixtures);
    // They passed as parse errors, not by luck of a lookup miss.
    let mut lb = Lb::load(Setup::V4);
    let before = lb.counter(COUNTER_PARSE_ERROR);
    let v4: Vec<&Fixture> = fixtures
        .iter()
        .filter(|f| matches!(f.expect, Expect::Unchanged))
        .filter(|f| f.input.get(12..14) == Some(&ETH_P_IP.to_be_bytes()[..]))
        .collect();
    for f in &v4 {
        lb.expect(f);
    }
    let counted = lb.counter(COUNTER_PARSE_ERROR) - before;
    assert_eq!(
        counted,
        v4.len() as u64,
        "every truncated IPv4 frame counts as a parse error"
    );
}

/// A client whose table backend changes when `added` join `first`.
fn moved_client(first: &[SocketAddr], added: &[SocketAddr], port: u16) -> SocketAddr {
    let before = plan(&[first.to_vec()]);
    let after = plan(&[first.to_vec(), [first, added].concat()]);
    (1..=250u8)
        .flat_map(|x| (1..=250u8).map(move |y| sa(&format!("198.18.{x}.{y}:{port}"))))
        .find(|c| table_choice(&before, c.ip()) != table_choice(&after, c.ip()))
        .expect("some client moves when backends join")
}

#[test]
fn flows_and_affinity_survive_a_table_change() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let (three, eight) = (v4_backends(3), v4_backends(8));
    let c = moved_client(&three, &eight[3..], 50_000);
    let c2 = SocketAddr::new(c.ip(), 50_001);
    let b = lb.table_choice(c);

    lb.connect(c, vip, b);
    let id = lb.id_of(b);
    let fwd = lb
        .flows()
        .get(&flow_key(c, vip), 0)
        .expect("forward flow entry");
    let want = (FLOW_FORWARD, id, Addr16::from_ip(b.ip()), b.port().to_be());
    assert_eq!(
        (fwd.direction, fwd.backend_id, fwd.nat_addr, fwd.nat_port_be),
        want
    );
    let rev = lb
        .flows()
        .get(&flow_key(b, c), 0)
        .expect("reverse flow entry");
    let want = (
        FLOW_REVERSE,
        id,
        Addr16::from_ip(vip.ip()),
        vip.port().to_be(),
    );
    assert_eq!(
        (rev.direction, rev.backend_id, rev.nat_addr, rev.nat_port_be),
        want
    );
    let affinity: HashMap<&MapData, Addr16, Affinity> =
        HashMap::try_from(lb.dp.map(names::AFFINITY).unwrap()).unwrap();
    let aff = affinity
        .get(&Addr16::from_ip(c.ip()), 0)
        .expect("affinity entry");
    assert_eq!(aff.backend_id, id, "affinity {aff:?}");

    lb.set_backends(&eight);
    assert_ne!(
        lb.table_choice(c),
        b,
        "precondition: the table now sends {c} elsewhere"
    );
    let established = Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET);
    lb.dnat("established flow after 5 backends joined", established, b);
    lb.snat(
        "reply of the established flow after the change",
        Pkt::tcp(b, c, ACK),
    );
    lb.dnat(
        "affine client's new connection after the change",
        Pkt::syn(c2, vip),
        b,
    );
    // A client never seen, whose slot now names one of the 5 new backends, gets it: the flip
    // to the new half of the table took effect.
    let d = (1..=250u8)
        .map(|y| sa(&format!("198.19.0.{y}:50100")))
        .find(|x| !three.contains(&lb.table_choice(*x)))
        .expect("some fresh client maps to a new backend");
    let want = lb.table_choice(d);
    lb.dnat(
        "fresh client after the change follows the new table",
        Pkt::syn(d, vip),
        want,
    );
}

#[test]
fn affinity_lapses_after_its_timeout() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let (three, eight) = (v4_backends(3), v4_backends(8));
    let config = Config {
        affinity_timeout: Duration::from_millis(200),
        ..Setup::V4.config()
    };
    let mut lb = Lb::with_config(Setup::V4, &config, &[v4_backends(3)]);
    let c = moved_client(&three, &eight[3..], 51_000);
    let b = lb.table_choice(c);
    lb.connect(c, vip, b);
    lb.set_backends(&eight);
    std::thread::sleep(Duration::from_millis(400));
    let c2 = SocketAddr::new(c.ip(), 51_001);
    let want = lb.table_choice(c2);
    lb.dnat(
        "new connection after the affinity timeout follows the table",
        Pkt::syn(c2, vip),
        want,
    );
    lb.dnat(
        "the old connection keeps its backend",
        Pkt::tcp(c, vip, ACK),
        b,
    );
}

/// A returning client's next connection renews its affinity in place (same backend, same
/// generation, a later time); once its backend left and came back under a new generation,
/// the next confirmed connection replaces the stale entry.
#[test]
fn returning_clients_renew_their_affinity() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let three = v4_backends(3);
    let mut lb = Lb::with_config(Setup::V4, &Setup::V4.config(), std::slice::from_ref(&three));
    let c = sa("198.51.100.40:52000");
    let b = lb.table_choice(c);
    lb.connect(c, vip, b);
    let first = lb
        .affinity(c)
        .expect("the handshake made the client affine");
    assert_eq!(first.backend_id, lb.id_of(b));
    // The kernel's coarse clock moves at least once a tick.
    std::thread::sleep(Duration::from_millis(30));
    lb.connect(SocketAddr::new(c.ip(), 52_001), vip, b);
    let renewed = lb.affinity(c).expect("still affine");
    assert_eq!(
        (renewed.backend_id, renewed.generation),
        (first.backend_id, first.generation)
    );
    assert!(
        renewed.last_seen_ns > first.last_seen_ns,
        "a confirmed connection renews the affinity: {first:?} then {renewed:?}"
    );
    // `b` leaves and comes back: same id, next generation; the stale affinity no longer
    // holds, the table decides (`b` again: the same set), and the entry is replaced.
    let others: Vec<SocketAddr> = three.iter().copied().filter(|a| *a != b).collect();
    lb.set_backends(&others);
    lb.set_backends(&three);
    let id = lb.id_of(b);
    let generation = lb.set.get(id).expect("back in the set").generation;
    assert_ne!(
        generation, first.generation,
        "re-added under a new generation"
    );
    assert_eq!(lb.table_choice(c), b);
    lb.connect(SocketAddr::new(c.ip(), 52_002), vip, b);
    let replaced = lb.affinity(c).expect("affine again");
    assert_eq!((replaced.backend_id, replaced.generation), (id, generation));
}

/// Drain and down as the data path reads them: a backend out of the table, its entry written
/// as `DRAINING` (affinity honoured) and then `DOWN` (affinity ignored), established flows
/// continuing through both.
#[test]
fn draining_and_down_backends() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.60:52000");
    let b = lb.table_choice(c);
    let id = lb.id_of(b);
    let entry = lb.set.entry(id);
    lb.connect(c, vip, b);

    let rest: Vec<SocketAddr> = v4_backends(3).into_iter().filter(|&x| x != b).collect();
    lb.set_backends(&rest);
    let set_state = |lb: &mut Lb, state: sticky_common::BackendState| {
        let mut backends: Array<&mut MapData, Backend> =
            Array::try_from(lb.dp.map_mut(names::BACKENDS).unwrap()).unwrap();
        let state = state.raw();
        backends.set(id, Backend { state, ..entry }, 0).unwrap();
    };
    set_state(&mut lb, sticky_common::BackendState::Draining);
    let c2 = SocketAddr::new(c.ip(), 52_001);
    lb.dnat(
        "affine client's new connection to a draining backend",
        Pkt::syn(c2, vip),
        b,
    );
    let fresh = sa("198.51.100.61:52000");
    let want = lb.table_choice(fresh);
    assert_ne!(want, b, "a backend out of the table is in no slot");
    lb.dnat(
        "fresh client while a backend drains",
        Pkt::syn(fresh, vip),
        want,
    );

    set_state(&mut lb, sticky_common::BackendState::Down);
    let c3 = SocketAddr::new(c.ip(), 52_002);
    let want = lb.table_choice(c3);
    lb.dnat(
        "affine client's new connection when its backend is down",
        Pkt::syn(c3, vip),
        want,
    );
    lb.dnat(
        "established flow to a down backend continues",
        Pkt::tcp(c, vip, ACK),
        b,
    );
}

/// Removing a backend keeps its established connections (the issue's requirement: a
/// removal must not break live sessions): the flow entry carries the backend's address, so the
/// flow keeps its NAT even after the id is freed and given to another backend. Only new flows
/// (and affinity) stop reaching it.
#[test]
fn removed_backend_keeps_established_flows() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.70:53000");
    let b = lb.table_choice(c);
    lb.connect(c, vip, b);
    let rest: Vec<SocketAddr> = v4_backends(3).into_iter().filter(|&x| x != b).collect();
    lb.set_backends(&rest);

    let ack = Pkt::tcp(c, vip, ACK).payload(HTTP_GET).build();
    let check = |lb: &mut Lb, when: &str| {
        let (action, out) = lb
            .run(Prog::Ingress, &ack)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
        let dst = Layout::parse(&out).map(|l| l.dst);
        assert_eq!(action, TC_ACT_OK, "fixture 'established flow {when}'");
        assert_eq!(
            dst,
            Some(b),
            "fixture 'established flow {when}': moved off its backend"
        );
    };
    check(&mut lb, "after its backend was removed");
    // The freed id goes to a new backend: the flow still goes where it went.
    lb.set_backends(&[rest.clone(), vec![sa("10.9.0.2:8080")]].concat());
    check(&mut lb, "after its backend's id was reused");
    // A new connection of the same client no longer reaches the removed backend.
    let c2 = sa("198.51.100.70:53001");
    let (action, out) = lb
        .run(Prog::Ingress, &Pkt::syn(c2, vip).build())
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    assert_eq!(action, TC_ACT_OK);
    let dst = Layout::parse(&out).map(|l| l.dst);
    assert!(
        dst.is_some_and(|d| d != b),
        "new connection went to the removed backend"
    );
    // A new connection reusing the old one's ports (its SYN) is balanced afresh, not sent to
    // the removed backend by the stale flow entry.
    let (action, out) = lb
        .run(Prog::Ingress, &Pkt::syn(c, vip).build())
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    assert_eq!(action, TC_ACT_OK);
    let dst = Layout::parse(&out).map(|l| l.dst);
    assert!(
        dst.is_some_and(|d| d != b),
        "a SYN reusing the ports followed the stale flow"
    );
}

/// A flow waits among the new ones until its client answers: the SYN alone leaves no
/// established entry and no affinity, the handshake's ACK moves it over and makes the client
/// affine; the backend's SYN-ACK finds it on the way.
#[test]
fn handshake_ack_confirms_a_new_flow() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.90:54000");
    let b = lb.table_choice(c);
    lb.dnat("SYN", Pkt::syn(c, vip), b);
    assert!(
        lb.flows().get(&flow_key(c, vip), 0).is_err(),
        "established after a SYN"
    );
    assert!(lb.affinity(c).is_none(), "affine after a SYN");
    let pending = lb
        .flow_map(names::NEW_FLOWS)
        .get(&flow_key(c, vip), 0)
        .expect("the SYN's flow among the new ones");
    assert_eq!(pending.backend_id, lb.id_of(b));
    lb.snat("SYN-ACK of a new flow", Pkt::tcp(b, c, SYN | ACK));
    lb.dnat("handshake ACK", Pkt::tcp(c, vip, ACK), b);
    let fwd = lb
        .flows()
        .get(&flow_key(c, vip), 0)
        .expect("established after the ACK");
    assert_eq!((fwd.direction, fwd.backend_id), (FLOW_FORWARD, lb.id_of(b)));
    let rev = lb
        .flows()
        .get(&flow_key(b, c), 0)
        .expect("reply direction established after the ACK");
    assert_eq!(rev.direction, FLOW_REVERSE);
    assert_eq!(lb.affinity(c).map(|a| a.backend_id), Some(lb.id_of(b)));
}

/// A UDP flow opens like a SYN and is confirmed by its client's next datagram: the first
/// datagram leaves both directions among the new flows (keyed with protocol 17, not 6) and no
/// affinity; the backend's reply finds its flow there; the second datagram moves both to the
/// established flows and makes the client affine.
#[test]
fn second_udp_datagram_confirms_the_flow() {
    if !bpf_or_skip() {
        return;
    }
    let uv = Setup::V4.udp_vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.150:5000");
    let b = lb.table_choice(c);
    let id = lb.id_of(b);
    lb.dnat("first datagram", Pkt::datagram(c, uv).payload(b"1"), b);
    assert!(
        lb.flows().get(&udp_key(c, uv), 0).is_err(),
        "established after one datagram"
    );
    assert!(lb.affinity(c).is_none(), "affine after one datagram");
    let new = lb.flow_map(names::NEW_FLOWS);
    let pending = new
        .get(&udp_key(c, uv), 0)
        .expect("the datagram's flow among the new ones");
    assert_eq!((pending.direction, pending.backend_id), (FLOW_FORWARD, id));
    let rev = new
        .get(&udp_key(b, c), 0)
        .expect("its reply direction among the new ones");
    assert_eq!(
        (rev.direction, rev.nat_addr, rev.nat_port_be),
        (FLOW_REVERSE, Addr16::from_ip(uv.ip()), uv.port().to_be())
    );
    assert!(
        new.get(&flow_key(c, uv), 0).is_err(),
        "the UDP flow keyed as TCP"
    );
    lb.snat(
        "reply to the first datagram",
        Pkt::datagram(b, c).payload(b"r1"),
    );
    lb.dnat("second datagram", Pkt::datagram(c, uv).payload(b"2"), b);
    let fwd = lb
        .flows()
        .get(&udp_key(c, uv), 0)
        .expect("established after the second datagram");
    assert_eq!(
        (fwd.direction, fwd.backend_id, fwd.nat_addr, fwd.nat_port_be),
        (FLOW_FORWARD, id, Addr16::from_ip(b.ip()), b.port().to_be())
    );
    let rev = lb
        .flows()
        .get(&udp_key(b, c), 0)
        .expect("reply direction established after the second datagram");
    assert_eq!(rev.direction, FLOW_REVERSE);
    assert_eq!(lb.affinity(c).map(|a| a.backend_id), Some(id));
    lb.snat("reply of the established flow", Pkt::datagram(b, c));
    // Each protocol's flow is its own: a TCP SYN from the same address and port to the TCP
    // VIP opens a TCP flow and leaves the UDP one as it is.
    lb.dnat("TCP SYN, same client port", Pkt::syn(c, Setup::V4.vip()), b);
    assert!(lb.flows().get(&udp_key(c, uv), 0).is_ok());
}

/// A UDP flow idle for longer than `udp_timeout` is balanced afresh: while fresh, an
/// established flow keeps its backend even once that backend is removed; after the timeout the
/// next datagram removes both established entries and reopens the flow among the new ones to
/// the table's backend, and the datagram after confirms that. An unconfirmed flow past the
/// timeout is reopened (its time renewed), not confirmed. TCP flows have no idle timeout.
#[test]
fn idle_udp_flows_are_balanced_afresh() {
    if !bpf_or_skip() {
        return;
    }
    // Long enough that the steps before the wait surely take less on a busy machine.
    const TIMEOUT: Duration = Duration::from_secs(1);
    let (vip, uv) = (Setup::V4.vip(), Setup::V4.udp_vip());
    let config = Config {
        udp_timeout: TIMEOUT,
        ..Setup::V4.config()
    };
    let mut lb = Lb::with_config(Setup::V4, &config, &Setup::V4.stages());
    let settings: Array<&MapData, Settings> =
        Array::try_from(lb.dp.map(names::SETTINGS).unwrap()).unwrap();
    assert_eq!(
        settings.get(&0, 0).unwrap().udp_timeout_ns,
        TIMEOUT.as_nanos() as u64,
        "the datapath's UDP timeout"
    );
    let c = sa("198.51.100.160:5000");
    let b = lb.table_choice(c);
    let tcp = SocketAddr::new(c.ip(), 5001);
    lb.exchange(c, uv, b);
    lb.connect(tcp, vip, b);
    let established = lb.flows().get(&udp_key(c, uv), 0).expect("established");
    // An unconfirmed flow of another client, on a backend that stays.
    let rest: Vec<SocketAddr> = v4_backends(3).into_iter().filter(|&x| x != b).collect();
    let c2 = (1..=250u8)
        .map(|y| sa(&format!("198.51.101.{y}:5000")))
        .find(|x| rest.contains(&lb.table_choice(*x)))
        .expect("a client on another backend");
    let b2 = lb.table_choice(c2);
    lb.dnat(
        "unconfirmed flow's first datagram",
        Pkt::datagram(c2, uv),
        b2,
    );
    let opened = lb
        .flow_map(names::NEW_FLOWS)
        .get(&udp_key(c2, uv), 0)
        .unwrap();

    lb.set_backends(&rest);
    let want = lb.table_choice(c);
    assert_ne!(
        want, b,
        "precondition: the table no longer names the backend"
    );
    lb.dnat(
        "datagram within the timeout: its backend, although removed",
        Pkt::datagram(c, uv).payload(b"fresh"),
        b,
    );
    std::thread::sleep(TIMEOUT + Duration::from_millis(300));

    lb.dnat(
        "datagram after the idle timeout: balanced afresh",
        Pkt::datagram(c, uv).payload(b"idle"),
        want,
    );
    assert!(
        lb.flows().get(&udp_key(c, uv), 0).is_err(),
        "the idle flow's established entry stays"
    );
    assert!(
        lb.flows().get(&udp_key(b, c), 0).is_err(),
        "the idle flow's established reply entry stays"
    );
    let reopened = lb
        .flow_map(names::NEW_FLOWS)
        .get(&udp_key(c, uv), 0)
        .expect("reopened among the new flows");
    assert_eq!(reopened.backend_id, lb.id_of(want));
    assert!(reopened.touched_ns > established.touched_ns);
    lb.dnat(
        "the next datagram confirms the reopened flow",
        Pkt::datagram(c, uv).payload(b"again"),
        want,
    );
    let fwd = lb
        .flows()
        .get(&udp_key(c, uv), 0)
        .expect("established again");
    assert_eq!(
        (fwd.backend_id, fwd.nat_addr),
        (lb.id_of(want), Addr16::from_ip(want.ip()))
    );
    lb.snat("reply of the new backend", Pkt::datagram(want, c));
    assert_eq!(lb.affinity(c).map(|a| a.backend_id), Some(lb.id_of(want)));

    lb.dnat(
        "unconfirmed flow past the timeout: reopened",
        Pkt::datagram(c2, uv),
        b2,
    );
    assert!(
        lb.flows().get(&udp_key(c2, uv), 0).is_err(),
        "an expired new flow was confirmed"
    );
    let renewed = lb
        .flow_map(names::NEW_FLOWS)
        .get(&udp_key(c2, uv), 0)
        .unwrap();
    assert!(
        renewed.touched_ns > opened.touched_ns,
        "the expired new flow was not reopened"
    );

    lb.dnat(
        "TCP connection of the same client past the UDP timeout: its backend",
        Pkt::tcp(tcp, vip, ACK | PSH).payload(HTTP_GET),
        b,
    );
}

/// A backend resetting a connection in its handshake (nothing listening) is counted as a
/// refusal, which health checking acts on at once; resets of established connections are not.
#[test]
fn resets_during_the_handshake_count_as_refusals() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.91:54100");
    let b = lb.table_choice(c);
    let id = lb.id_of(b);
    let refused = |lb: &Lb| lb.dp.backend_stats(id).unwrap().refused;
    lb.dnat("SYN", Pkt::syn(c, vip), b);
    lb.snat("RST answering the SYN", Pkt::tcp(b, c, RST | ACK));
    assert_eq!(refused(&lb), 1, "refusal not counted");

    let c2 = sa("198.51.100.91:54101");
    lb.connect(c2, vip, b);
    lb.snat(
        "RST of an established connection",
        Pkt::tcp(b, c2, RST | ACK),
    );
    lb.snat("ACK of an established connection", Pkt::tcp(b, c2, ACK));
    assert_eq!(
        refused(&lb),
        1,
        "a reset of an established flow counted as a refusal"
    );
}

/// SYNs from many spoofed sources that never answer fill only the new-flow table: with every
/// table far smaller than the flood, the established flows and the affinities stay, and the
/// established connections keep their backend even after the table changes under them.
#[test]
fn syn_flood_cannot_evict_established_flows() {
    if !bpf_or_skip() {
        return;
    }
    const ESTABLISHED: u16 = 20;
    const FLOOD: u32 = 20_000;
    let vip = Setup::V4.vip();
    let (three, eight) = (v4_backends(3), v4_backends(8));
    let config = Config {
        max_flows: 256,
        max_new_flows: 256,
        max_clients: 256,
        ..Setup::V4.config()
    };
    let mut lb = Lb::with_config(Setup::V4, &config, std::slice::from_ref(&three));
    let clients: Vec<SocketAddr> = (0..ESTABLISHED)
        .map(|i| sa(&format!("198.51.100.{}:{}", 100 + i, 40_000 + i)))
        .collect();
    let mut backend_of = Vec::new();
    for &c in &clients {
        let b = lb.table_choice(c);
        lb.connect(c, vip, b);
        backend_of.push(b);
    }
    for i in 0..FLOOD {
        let [_, x, y, z] = i.to_be_bytes();
        let src = SocketAddr::new(
            std::net::IpAddr::from([10, x | 0x80, y, z]),
            1024 + (i % 60_000) as u16,
        );
        let (action, _) = lb
            .run(Prog::Ingress, &Pkt::syn(src, vip).build())
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
        assert_eq!(action, TC_ACT_OK, "spoofed SYN {i}");
    }
    lb.set_backends(&eight);
    for (&c, &b) in clients.iter().zip(&backend_of) {
        assert!(
            lb.flows().get(&flow_key(c, vip), 0).is_ok(),
            "{c}'s established flow was evicted by the flood"
        );
        assert_eq!(
            lb.affinity(c).map(|a| a.backend_id),
            Some(lb.id_of(b)),
            "{c}'s affinity was evicted by the flood"
        );
        lb.dnat(
            &format!("established flow of {c} after the flood and a table change"),
            Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET),
            b,
        );
    }
    let affine = lb.dp.affinity_entries().unwrap().len();
    assert_eq!(affine, clients.len(), "spoofed sources became affine");
}

/// Status and metrics read the flow, new-flow and affinity tables whole, a few thousand
/// entries per system call (`BPF_MAP_LOOKUP_BATCH`): with several batches' worth of entries
/// they return exactly what the maps hold, as a key-by-key walk reads it.
#[test]
fn whole_table_reads_return_every_entry() {
    if !bpf_or_skip() {
        return;
    }
    const CLIENTS: u32 = 10_000;
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let clients: Vec<SocketAddr> = (0..CLIENTS)
        .map(|i| {
            let [_, x, y, z] = i.to_be_bytes();
            SocketAddr::new(std::net::IpAddr::from([10, x | 0x40, y, z]), 40_000)
        })
        .collect();
    for &c in &clients {
        let b = lb.table_choice(c);
        lb.connect(c, vip, b);
    }
    let batched: Vec<(FlowKey, Flow)> = lb.dp.flow_entries().unwrap();
    let walked: Vec<(FlowKey, Flow)> = lb.flows().iter().map(Result::unwrap).collect();
    // Both directions of every connection.
    assert_eq!(
        batched.len(),
        2 * CLIENTS as usize,
        "flow entries read in batches"
    );
    assert_eq!(
        walked.len(),
        batched.len(),
        "flow entries walked key by key"
    );
    let walked: std::collections::HashMap<FlowKey, Flow> = walked.into_iter().collect();
    for (k, f) in &batched {
        let w = walked
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} read in a batch only"));
        assert_eq!(w, f, "{k:?}: the batched read differs from the map");
    }
    let affinity = lb.dp.affinity_entries().unwrap();
    assert_eq!(
        affinity.len(),
        clients.len(),
        "affinity entries read in batches"
    );
    let affinity: std::collections::HashMap<Addr16, Affinity> = affinity.into_iter().collect();
    for &c in &clients {
        let a = affinity
            .get(&Addr16::from_ip(c.ip()))
            .unwrap_or_else(|| panic!("{c}'s affinity missing from the batched read"));
        assert_eq!(a.backend_id, lb.id_of(lb.table_choice(c)), "{c}");
    }
}

/// Per-packet cost, printed (never asserted: the numbers are noisy). With `repeat` the kernel
/// re-runs the same skb, so rewrites accumulate: the established paths are measured on a
/// ping-pong pair of flow entries that maps each rewrite back, so every run takes the rewrite
/// path (checked with the NAT counter).
#[test]
fn per_packet_cost() {
    if !bpf_or_skip() {
        return;
    }
    const REPEAT: u32 = 100_000;
    let mut rows = Vec::new();
    let bench = |lb: &mut Lb, program: Prog, input: Vec<u8>, rewrites: bool| {
        let nat_before = lb.counter(COUNTER_NAT);
        let (action, d) = lb.bench(program, &input, REPEAT);
        assert_eq!(action, if rewrites { TC_ACT_OK } else { TCX_NEXT });
        let nat = lb.counter(COUNTER_NAT) - nat_before;
        assert_eq!(
            nat,
            if rewrites { u64::from(REPEAT) } else { 0 },
            "rewrites while timed"
        );
        d
    };
    // `key`'s flow NATs to `to`: the entry that maps a ping-pong rewrite back.
    let ping_pong = |lb: &mut Lb, key: FlowKey, to: SocketAddr, direction: u8, id: u32| {
        let flow = Flow {
            nat_addr: Addr16::from_ip(to.ip()),
            nat_port_be: to.port().to_be(),
            direction,
            _pad0: 0,
            backend_id: id,
            // Far in the future: never due for an affinity refresh.
            touched_ns: u64::MAX,
        };
        lb.flows().insert(key, flow, 0).unwrap();
    };
    let payload = [0u8; 64];

    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let c = sa("198.51.100.80:45000");
    let b = lb.table_choice(c);
    let id = lb.id_of(b);
    lb.connect(c, vip, b);

    let other = Pkt::tcp(c, sa("192.0.2.99:80"), ACK)
        .payload(&payload)
        .build();
    let d = bench(&mut lb, Prog::Ingress, other, false);
    rows.push(("v4 ingress, not a VIP (pass)", d));

    // Egress: backend -> client becomes VIP -> client, which the extra entry maps back.
    ping_pong(&mut lb, flow_key(vip, c), b, FLOW_REVERSE, id);
    let reply = Pkt::tcp(b, c, ACK).payload(&payload).build();
    rows.push((
        "v4 egress, established reply (rewrite)",
        bench(&mut lb, Prog::Egress, reply, true),
    ));

    // Ingress: client -> VIP becomes client -> backend; backend:port becomes a VIP too, and
    // its flow maps back to the VIP.
    {
        let mut vips: HashMap<&mut MapData, VipKey, Vip> =
            HashMap::try_from(lb.dp.map_mut(names::VIPS).unwrap()).unwrap();
        let key = VipKey {
            addr: Addr16::from_ip(b.ip()),
            port_be: b.port().to_be(),
            proto: PROTO_TCP,
            _pad0: 0,
        };
        vips.insert(key, Vip { index: 1 }, 0).unwrap();
    }
    ping_pong(&mut lb, flow_key(c, b), vip, FLOW_FORWARD, id);
    ping_pong(&mut lb, flow_key(c, vip), b, FLOW_FORWARD, id);
    let request = Pkt::tcp(c, vip, ACK).payload(&payload).build();
    rows.push((
        "v4 ingress, established flow (rewrite)",
        bench(&mut lb, Prog::Ingress, request, true),
    ));

    // The same for UDP: the client's flow to the UDP VIP, established by two datagrams, and
    // the same ping-pong entries keyed as UDP (never idle: touched far in the future).
    let uv = Setup::V4.udp_vip();
    lb.exchange(c, uv, b);
    {
        let mut vips: HashMap<&mut MapData, VipKey, Vip> =
            HashMap::try_from(lb.dp.map_mut(names::VIPS).unwrap()).unwrap();
        let key = VipKey {
            addr: Addr16::from_ip(b.ip()),
            port_be: b.port().to_be(),
            proto: PROTO_UDP,
            _pad0: 0,
        };
        vips.insert(key, Vip { index: 2 }, 0).unwrap();
    }
    ping_pong(&mut lb, udp_key(uv, c), b, FLOW_REVERSE, id);
    let reply = Pkt::datagram(b, c).payload(&payload).build();
    rows.push((
        "v4 egress, UDP reply of an established flow (rewrite)",
        bench(&mut lb, Prog::Egress, reply, true),
    ));
    ping_pong(&mut lb, udp_key(c, b), uv, FLOW_FORWARD, id);
    ping_pong(&mut lb, udp_key(c, uv), b, FLOW_FORWARD, id);
    let datagram = Pkt::datagram(c, uv).payload(&payload).build();
    rows.push((
        "v4 ingress, UDP datagram of an established flow (rewrite)",
        bench(&mut lb, Prog::Ingress, datagram, true),
    ));

    // New flows cannot repeat: single runs over distinct clients, averaged. A single run
    // carries more harness overhead than a repeated one, so the same loop over a packet that
    // is not ours gives the baseline to compare with.
    let single_runs = |lb: &mut Lb, dst: SocketAddr, flags: u8| {
        let n = 2000u32;
        let mut total = Duration::ZERO;
        let want = if dst == vip { TC_ACT_OK } else { TCX_NEXT };
        for i in 0..n {
            let client = sa(&format!("198.18.{}.{}:46000", i / 250, 1 + i % 250));
            let (action, d) = lb.bench(Prog::Ingress, &Pkt::tcp(client, dst, flags).build(), 1);
            assert_eq!(action, want);
            total += d;
        }
        total / n
    };
    rows.push((
        "v4 ingress, not a VIP, single runs (baseline)",
        single_runs(&mut lb, sa("192.0.2.99:80"), SYN),
    ));
    rows.push((
        "v4 ingress, SYN, single runs (2 new-flow inserts)",
        single_runs(&mut lb, vip, SYN),
    ));
    rows.push((
        "v4 ingress, handshake ACK, single runs (2 flow + 1 affinity inserts)",
        single_runs(&mut lb, vip, ACK),
    ));

    let vip = Setup::V6.vip();
    let mut lb = Lb::load(Setup::V6);
    let c = sa("[fd00:c::80]:45000");
    let b = lb.table_choice(c);
    let id = lb.id_of(b);
    lb.dnat("v6 SYN", Pkt::syn(c, vip), b);
    ping_pong(&mut lb, flow_key(vip, c), b, FLOW_REVERSE, id);
    let reply = Pkt::tcp(b, c, ACK).payload(&payload).build();
    rows.push((
        "v6 egress, established reply (rewrite)",
        bench(&mut lb, Prog::Egress, reply, true),
    ));

    println!("per-packet cost (BPF_PROG_TEST_RUN, harness included):");
    for (what, d) in rows {
        println!("  {what:<66} {:>6} ns", d.as_nanos());
    }
}

// ---------------------------------------------------------------------------------------------
// sticky trace
// ---------------------------------------------------------------------------------------------

type Traced = (&'static str, Option<&'static str>, Option<SocketAddr>);

/// The decisions the programs reported since the last call: (event, reason, backend).
fn traced(tracer: &mut Tracer) -> Vec<Traced> {
    std::iter::from_fn(|| tracer.next_event())
        .map(|e| {
            let d = Decision::of(&e);
            (d.event, d.reason, d.backend)
        })
        .collect()
}

/// A traced client's new flow (by the table, with its slot), handshake, established packets,
/// replies, a new flow by affinity and a drop for want of a backend each show up once with
/// the right reason; another client's packets show up nowhere. The instance is pinned, and the
/// tracer opens the pins as `sticky trace` does: one trace at a time, the client's address
/// family checked, and the trace cleared when the tracer goes.
#[test]
fn trace_reports_one_clients_decisions() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let (three, eight) = (v4_backends(3), v4_backends(8));
    let instance = sticky_tests::unique_name("trace-fx");
    let pins = Pins::for_instance(&instance);
    let config = config(&instance, vip, &three);
    let dp = Datapath::load_with(&config, Some(pins.clone()))
        .unwrap_or_else(|e| panic!("load with pins: {e:#}"));
    let mut lb = Lb {
        setup: Setup::V4,
        lb: common::datapath::Lb {
            dp,
            set: BackendSet::default(),
        },
    };
    lb.set_backends(&three);
    let c = moved_client(&three, &eight[3..], 53_000);
    let mut tracer = Tracer::open(&pins, &instance, c.ip()).unwrap();
    let other = sa("198.51.100.95:53000");

    let b = lb.table_choice(c);
    let settings = Settings {
        table_size: TABLE_SIZE,
        hash_seed: SEED,
        ..Settings::default()
    };
    let slot = slot_of(&Addr16::from_ip(c.ip()), &settings);
    lb.dnat("traced SYN", Pkt::syn(c, vip), b);
    let new = tracer.next_event().expect("an event for the SYN");
    let d = Decision::of(&new);
    assert_eq!(
        (d.event, d.reason, d.backend, d.slot, d.syn),
        ("new-flow", Some("table"), Some(b), Some(slot), true)
    );
    assert_eq!(
        d.describe(),
        format!("{c} -> {vip} new flow -> {b} (table slot {slot})")
    );
    assert_eq!(traced(&mut tracer), []);
    lb.dnat(
        "SYN of another client",
        Pkt::syn(other, vip),
        lb.table_choice(other),
    );
    lb.snat("SYN-ACK", Pkt::tcp(b, c, SYN | ACK));
    lb.dnat("handshake ACK", Pkt::tcp(c, vip, ACK), b);
    lb.dnat("request", Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET), b);
    lb.snat("reply", Pkt::tcp(b, c, ACK | PSH).payload(HTTP_GET));
    lb.connect(other, vip, lb.table_choice(other));
    assert_eq!(
        traced(&mut tracer),
        [
            ("reply", None, Some(b)),
            ("confirmed", None, Some(b)),
            ("established", None, Some(b)),
            ("reply", None, Some(b)),
        ]
    );

    // The table now sends the client elsewhere; its affinity keeps it on `b`.
    lb.set_backends(&eight);
    assert_ne!(lb.table_choice(c), b);
    let c2 = SocketAddr::new(c.ip(), 53_001);
    lb.dnat("traced SYN by affinity", Pkt::syn(c2, vip), b);
    lb.set_backends(&[]);
    let c3 = SocketAddr::new(c.ip(), 53_002);
    lb.expect(&Fixture {
        name: "traced SYN with nothing in service".into(),
        setup: Setup::V4,
        program: Prog::Ingress,
        input: Pkt::syn(c3, vip).build(),
        expect_action: TC_ACT_SHOT,
        expect: Expect::Unchanged,
        counter: Some(COUNTER_DROP_NO_BACKEND),
    });
    assert_eq!(
        traced(&mut tracer),
        [
            ("new-flow", Some("affinity"), Some(b)),
            ("dropped", Some("no-backend"), None),
        ]
    );
    lb.set_backends(&three);

    match Tracer::open(&pins, &instance, other.ip()) {
        Err(TraceError::Busy { client, .. }) => assert_eq!(client, c.ip()),
        Err(e) => panic!("second trace: {e}"),
        Ok(_) => panic!("a second trace started while one runs"),
    }
    match Tracer::open(&pins, &instance, "fd00::1".parse().unwrap()) {
        Err(TraceError::WrongFamily { .. }) => {}
        Err(e) => panic!("IPv6 client of an IPv4 instance: {e}"),
        Ok(_) => panic!("traced an IPv6 client of an IPv4-only instance"),
    }
    drop(tracer);
    let target: Array<MapData, TraceTarget> = Array::try_from(
        aya::maps::Map::from_map_data(MapData::from_pin(pins.map(TRACE)).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(target.get(&0, 0).unwrap().enabled, 0, "trace left enabled");
    drop(target);
    let mut again = Tracer::open(&pins, &instance, other.ip()).expect("a trace after the first");
    for client in [c, other] {
        let syn = Pkt::syn(SocketAddr::new(client.ip(), 53_003), vip).build();
        let (action, _) = lb.run(Prog::Ingress, &syn).unwrap();
        assert_eq!(action, TC_ACT_OK, "SYN of {client}");
    }
    let events: Vec<&str> = traced(&mut again).iter().map(|t| t.0).collect();
    assert_eq!(
        events,
        ["new-flow"],
        "only the newly traced client shows up"
    );
    drop(again);

    std::fs::remove_file(pins.map(TRACE)).unwrap();
    assert!(matches!(
        Tracer::open(&pins, &instance, c.ip()),
        Err(TraceError::Unsupported { .. })
    ));
    let missing = Pins::for_instance("no-such-instance-here");
    assert!(matches!(
        Tracer::open(&missing, "no-such-instance-here", c.ip()),
        Err(TraceError::NoInstance { .. })
    ));
    pins.remove().unwrap();
}

/// IPv6 clients are traced the same way, here through the maps of an unpinned datapath; the
/// traced reply of a local backend names the backend port on the VIP's address.
#[test]
fn trace_reports_ipv6_clients() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V6Local.vip();
    let backend = sa("[fd00::100]:8080");
    let mut lb = Lb::load(Setup::V6Local);
    let take = |lb: &mut Lb, name: &str| {
        lb.dp
            .map_handle(name)
            .unwrap_or_else(|e| panic!("{name} in the object: {e:#}"))
    };
    let target = Array::try_from(take(&mut lb, TRACE)).unwrap();
    let events = aya::maps::RingBuf::try_from(take(&mut lb, TRACE_EVENTS)).unwrap();
    let c = sa("[fd00:c::7]:54000");
    let mut tracer = Tracer::start(target, events, c.ip()).unwrap();
    lb.dnat("v6 SYN", Pkt::syn(c, vip), backend);
    lb.snat("v6 SYN-ACK", Pkt::tcp(backend, c, SYN | ACK));
    lb.dnat("v6 ACK", Pkt::tcp(c, vip, ACK), backend);
    lb.dnat(
        "other v6 client",
        Pkt::syn(sa("[fd00:c::8]:54000"), vip),
        backend,
    );
    assert_eq!(
        traced(&mut tracer),
        [
            ("new-flow", Some("table"), Some(backend)),
            ("reply", None, Some(backend)),
            ("confirmed", None, Some(backend)),
        ]
    );
    let line = {
        lb.dnat(
            "v6 request",
            Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET),
            backend,
        );
        Decision::of(&tracer.next_event().expect("an established event")).describe()
    };
    assert_eq!(line, format!("{c} -> {vip} established -> {backend}"));
}

/// The affinity exchange's kernel half: a confirmed flow reports its client's affinity (the
/// backend by address, for peers whose ids differ) only while `sync_events` is set; a SYN
/// alone (a spoofed source) reports nothing.
#[test]
fn confirmed_flows_report_their_affinity_only_while_sync_is_on() {
    if !bpf_or_skip() {
        return;
    }
    let vip = Setup::V4.vip();
    let mut lb = Lb::load(Setup::V4);
    let mut events = RingBuf::try_from(lb.dp.map_handle(AFFINITY_EVENTS).unwrap()).unwrap();
    let mut next = move || {
        events.next().map(|item| {
            assert!(item.len() >= size_of::<AffinityEvent>());
            // SAFETY: the record holds an `AffinityEvent` written by the program.
            unsafe { item.as_ptr().cast::<AffinityEvent>().read_unaligned() }
        })
    };
    let set_sync = |lb: &mut Lb, on: bool| {
        let mut map: Array<&mut MapData, Settings> =
            Array::try_from(lb.dp.map_mut(names::SETTINGS).unwrap()).unwrap();
        let mut s = map.get(&0, 0).unwrap();
        s.sync_events = u8::from(on);
        map.set(0, s, 0).unwrap();
    };

    let off = sa("198.51.100.70:54000");
    lb.connect(off, vip, lb.table_choice(off));
    assert!(lb.affinity(off).is_some());
    assert_eq!(next(), None, "sync off: nothing reported");

    set_sync(&mut lb, true);
    let c = sa("198.51.100.71:54000");
    let b = lb.table_choice(c);
    lb.dnat("SYN", Pkt::syn(c, vip), b);
    assert_eq!(next(), None, "a SYN alone makes no affinity");
    lb.dnat("handshake ACK", Pkt::tcp(c, vip, ACK), b);
    let e = next().expect("an event for the confirmed flow");
    assert_eq!(e.client, Addr16::from_ip(c.ip()));
    assert_eq!(
        SocketAddr::new(e.backend.to_ip(), u16::from_be(e.backend_port_be)),
        b
    );
    assert_eq!(e.backend_id, lb.id_of(b));
    assert_eq!(next(), None, "one event per confirmed flow");
    lb.dnat("request", Pkt::tcp(c, vip, ACK | PSH).payload(HTTP_GET), b);
    assert_eq!(next(), None, "established packets report nothing");

    set_sync(&mut lb, false);
    let c2 = SocketAddr::new(c.ip(), 54_001);
    lb.connect(c2, vip, b);
    assert_eq!(next(), None, "sync off again: nothing reported");
}
