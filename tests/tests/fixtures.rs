//! Packet fixtures through BPF_PROG_TEST_RUN, Katran-style: the real object and its
//! verifier-loaded programs, input packets from a small builder, and each output checked
//! byte by byte with the IPv4 and TCP checksums recomputed from scratch. The kernel hands
//! `data_out` back as CHECKSUM_NONE, so a missed checksum fix shows here and nowhere else
//! (offloads hide it on live interfaces).
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
        self as names, Affinity, Backend, COUNTER_NAT, COUNTER_PARSE_ERROR, FLOW_FORWARD,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// VIP 192.0.2.10:80, backends 10.{1,2,3}.0.2:8080.
    V4,
    /// VIP [fd00::100]:80, backends [fd00:{1,2,3}::2]:8080.
    V6,
    /// The V4 VIP with its backends all removed again (`reconcile(&[])` + `apply`).
    V4NoBackends,
    /// A local backend: VIP 192.0.2.10:80 served by 192.0.2.10:8080 (only the port changes).
    V4Local,
    /// A local backend: VIP [fd00::100]:80 served by [fd00::100]:8080.
    V6Local,
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
}

impl Setup {
    fn vip(self) -> SocketAddr {
        match self {
            Setup::V4 | Setup::V4NoBackends | Setup::V4Local => sa("192.0.2.10:80"),
            Setup::V6 | Setup::V6Local => sa("[fd00::100]:80"),
        }
    }

    /// Backend lists applied one after the other when the setup is loaded.
    fn stages(self) -> Vec<Vec<SocketAddr>> {
        match self {
            Setup::V4 => vec![v4_backends(3)],
            Setup::V6 => vec![v6_backends(3)],
            Setup::V4NoBackends => vec![v4_backends(3), vec![]],
            Setup::V4Local => vec![vec![sa("192.0.2.10:8080")]],
            Setup::V6Local => vec![vec![sa("[fd00::100]:8080")]],
        }
    }

    fn config(self) -> Config {
        config("fixtures", self.vip(), &self.stages()[0])
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

    fn check(&mut self, f: &Fixture) -> Result<(), String> {
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
    FlowKey {
        src: Addr16::from_ip(src.ip()),
        dst: Addr16::from_ip(dst.ip()),
        sport_be: src.port().to_be(),
        dport_be: dst.port().to_be(),
        proto: PROTO_TCP,
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
            input,
            expect_action: action,
            expect,
        });
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

    /// Egress: the source becomes the VIP, the destination stays.
    fn snat(&mut self, name: impl Into<String>, pkt: Pkt) {
        let expect = Expect::Rewritten {
            src: self.setup.vip(),
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
    t.fixtures
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
        fixtures.extend(t.fixtures);
    }
    fixtures
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
    }
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

/// Removing a backend keeps its established connections (the requirement: a
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
