//! The real eBPF object loaded for BPF_PROG_TEST_RUN: a datapath with a VIP and a backend set,
//! its programs run one frame at a time, and what userspace predicts it does.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData},
    programs::{ProgramError, TestRun, TestRunOptions, TestRunResult},
};
use sticky::{
    addr::{BackendSpec, Transport, VipAddr},
    backends::BackendSet,
    config::{Config, Layer},
    datapath::{Counters, Datapath},
    table,
};
use sticky_common::{
    Addr16,
    maps::{self as names, Flow, FlowKey},
};

/// A packet sticky rewrote: the hook's chain ends, the stack routes it.
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
/// Not sticky's: on to the next program of the hook (`TC_ACT_UNSPEC` on legacy tc).
pub const TCX_NEXT: i32 = -1;

pub const SEED: u32 = 0x5eed_0001;
/// Prime and small: every `apply` writes the whole idle half of the table.
pub const TABLE_SIZE: u32 = 1021;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prog {
    Ingress,
    Egress,
    /// DSR on tc, run with `dsr_net::IF` as the receiving device.
    Dsr,
    /// DSR on XDP, likewise.
    DsrXdp,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::Ingress => names::PROG_INGRESS,
            Prog::Egress => names::PROG_EGRESS,
            Prog::Dsr => names::PROG_DSR,
            Prog::DsrXdp => names::PROG_DSR_XDP,
        }
    }

    pub fn is_dsr(self) -> bool {
        matches!(self, Prog::Dsr | Prog::DsrXdp)
    }
}

pub fn action_name(action: i32) -> &'static str {
    match action {
        TC_ACT_OK => "TC_ACT_OK",
        TC_ACT_SHOT => "TC_ACT_SHOT",
        TCX_NEXT => "TCX_NEXT",
        _ => "other",
    }
}

/// Whether to run BPF_PROG_TEST_RUN tests: root is needed (skips, saying so, otherwise; fails
/// under `CI=true` / `STICKY_REQUIRE_ROOT=1`), and a binary without its eBPF object is a build
/// defect, not a skip.
pub fn bpf_or_skip() -> bool {
    // libtest names each test's thread after the test.
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if !sticky_tests::root::root_or_skip_for(&test, "BPF_PROG_TEST_RUN") {
        return false;
    }
    if let Err(e) = sticky::object::bytes() {
        panic!("{e:#}");
    }
    true
}

/// A configuration for the TCP VIP `vip` whose first backends are `backends`, with the seed,
/// table size and timeouts the predictions here assume.
pub fn config(instance: &str, vip: SocketAddr, backends: &[SocketAddr]) -> Config {
    config_with(instance, &[VipAddr::tcp(vip)], backends)
}

/// [`config`] for any VIPs, TCP and UDP (`udp_vip`).
pub fn config_with(instance: &str, vips: &[VipAddr], backends: &[SocketAddr]) -> Config {
    // Through `Layer::validate` so settings added later get their defaults; then the values
    // the tests depend on, set directly.
    let layer = Layer {
        iface: vec!["lo".into()],
        vip: vips.iter().map(ToString::to_string).collect(),
        backend: backends.iter().map(ToString::to_string).collect(),
        ..Layer::default()
    };
    let config = layer
        .validate()
        .unwrap_or_else(|e| panic!("test config for {vips:?}: {e}"));
    Config {
        seed: SEED,
        table_size: TABLE_SIZE,
        affinity_timeout: Duration::from_secs(30 * 60),
        max_flows: 65_536,
        max_clients: 65_536,
        instance: instance.into(),
        ..config
    }
}

/// A UDP VIP (`udp:ADDR:PORT`).
pub fn udp_vip(addr: SocketAddr) -> VipAddr {
    VipAddr {
        transport: Transport::Udp,
        addr,
    }
}

pub fn v4_backends(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(|i| sa(&format!("10.{i}.0.2:8080"))).collect()
}

pub fn v6_backends(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| sa(&format!("[fd00:{i}::2]:8080")))
        .collect()
}

pub fn specs(addrs: &[SocketAddr]) -> Vec<BackendSpec> {
    addrs
        .iter()
        .map(|&addr| BackendSpec { addr, weight: 1 })
        .collect()
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad socket address {s}: {e}"))
}

/// The backend a new client goes to by the table: the same build the datapath uses
/// (`sticky::table`) and the decision it runs (`sticky_common::choice`).
pub fn table_choice(set: &BackendSet, client: IpAddr) -> Option<SocketAddr> {
    let slots = table::build(&set.members(), TABLE_SIZE, SEED);
    let view = sticky::decision::Published::new(
        set,
        &slots,
        sticky::decision::settings(SEED, 0),
        sticky::decision::no_affinity,
    );
    let id = sticky_common::choice::by_table(&view, &Addr16::from_ip(client), view.settings())?.id;
    set.get(id).map(|s| s.addr)
}

/// A backend set after these reconciles: what a datapath holds once they were applied.
pub fn plan(stages: &[Vec<SocketAddr>]) -> BackendSet {
    let mut set = BackendSet::default();
    for s in stages {
        set.reconcile(&specs(s))
            .unwrap_or_else(|e| panic!("reconcile {s:?}: {e}"));
    }
    set
}

/// A loaded (not attached) datapath and the backend set it was given.
pub struct Lb {
    pub dp: Datapath,
    pub set: BackendSet,
}

impl Lb {
    /// Loads for `config` and applies each backend list in turn.
    pub fn load(config: &Config, stages: &[Vec<SocketAddr>]) -> Self {
        let dp = Datapath::load(config)
            .unwrap_or_else(|e| panic!("load the datapath for {:?}: {e:#}", config.vips));
        let mut lb = Lb {
            dp,
            set: BackendSet::default(),
        };
        for stage in stages {
            lb.set_backends(stage);
        }
        lb
    }

    pub fn set_backends(&mut self, addrs: &[SocketAddr]) {
        let removed = self
            .set
            .reconcile(&specs(addrs))
            .unwrap_or_else(|e| panic!("reconcile {addrs:?}: {e}"));
        self.dp
            .apply(&self.set, &removed)
            .unwrap_or_else(|e| panic!("apply {addrs:?}: {e:#}"));
    }

    /// Sets a backend's state and publishes it, as the daemon does.
    pub fn set_state(&mut self, backend: SocketAddr, state: sticky_common::BackendState) {
        assert!(
            self.set.set_state(backend, state),
            "{backend} is not in the backend set"
        );
        self.dp
            .apply(&self.set, &[])
            .unwrap_or_else(|e| panic!("apply state {state:?} of {backend}: {e:#}"));
    }

    pub fn table_choice(&self, client: SocketAddr) -> SocketAddr {
        table_choice(&self.set, client.ip())
            .unwrap_or_else(|| panic!("no backend in the table for {client}"))
    }

    pub fn id_of(&self, backend: SocketAddr) -> u32 {
        self.set
            .id_of(backend)
            .unwrap_or_else(|| panic!("{backend} is not in the backend set"))
    }

    pub fn test_run(
        &mut self,
        program: Prog,
        opts: TestRunOptions<'_>,
    ) -> Result<TestRunResult, ProgramError> {
        let prog = self
            .dp
            .classifier(program.name())
            .unwrap_or_else(|e| panic!("program {}: {e:#}", program.name()));
        prog.test_run(opts)
    }

    /// One run: the action and the output bytes.
    pub fn run(&mut self, program: Prog, input: &[u8]) -> Result<(i32, Vec<u8>), ProgramError> {
        match program {
            Prog::Dsr => return super::dsr_net::run_tc(&mut self.dp, input),
            Prog::DsrXdp => return super::dsr_net::run_xdp(&mut self.dp, input),
            Prog::Ingress | Prog::Egress => {}
        }
        // Room to spare: an output larger than the buffer is ENOSPC, not a short copy.
        let mut out = vec![0u8; input.len() + 256];
        let res = self.test_run(
            program,
            TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ..Default::default()
            },
        )?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value as i32, out))
    }

    /// Average run time over `repeat` runs of the same skb (rewrites accumulate).
    pub fn bench(&mut self, program: Prog, input: &[u8], repeat: u32) -> (i32, Duration) {
        let res = self
            .test_run(
                program,
                TestRunOptions {
                    data_in: Some(input),
                    repeat,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN ×{repeat}: {e:?}"));
        (res.return_value as i32, res.duration)
    }

    pub fn flows(&mut self) -> HashMap<&mut MapData, FlowKey, Flow> {
        let map = self
            .dp
            .map_mut(names::FLOWS)
            .expect("flow map in the object");
        HashMap::try_from(map).expect("flow map is a hash map")
    }

    pub fn counters(&self) -> Counters {
        self.dp
            .counters()
            .unwrap_or_else(|e| panic!("read counters: {e:#}"))
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.counters().values[index as usize]
    }
}

/// A random test's seed from `var`: decimal, 0x-hex, or `random`; `default` when unset.
pub fn env_seed(var: &str, default: u64) -> u64 {
    match std::env::var(var).ok().as_deref() {
        None | Some("") => default,
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        Some(s) => s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|e| panic!("{var}={s}: {e}")),
    }
}

/// A count from `var`, `default` when unset.
pub fn env_count(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().map_or(default, |s| {
        s.parse().unwrap_or_else(|e| panic!("{var}={s}: {e}"))
    })
}
