//! The backend decision, kernel against userspace: random backend sets (states, weights,
//! generations, ids whose generation moved on), Maglev tables built from them, affinity
//! entries (fresh, near the timeout, expired, of another generation, naming unknown ids),
//! timeouts, seeds, client key prefixes (`--affinity-prefix`; clients drawn in clusters that
//! share a prefix, entries under the masked key and under the bare address) and live table
//! halves are written into the real object's maps; then each
//! client's SYN goes through `sticky_ingress` (BPF_PROG_TEST_RUN) and the backend it is
//! DNATed to (or its drop: nothing in service) must be what `sticky lookup`'s view
//! (`sticky::decision::Published`, reading the client's affinity back from the map) answers.
//!
//! Affinity ages keep at least a second away from the timeout, so the kernel's clock and ours
//! (both `CLOCK_MONOTONIC`) cannot disagree on which side a client is.
//!
//! `STICKY_DECISION_SEED` (decimal, 0x-hex, or `random`) and `STICKY_DECISION_CASES` (client
//! decisions, default 20 000) override the defaults. Needs root (skips otherwise) and the
//! real eBPF object.

mod common;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Instant,
};

use aya::maps::{Array, HashMap, MapData};
use common::{datapath::*, packets::*};
use sticky::{
    addr::BackendSpec,
    backends::BackendSet,
    clock::monotonic_ns,
    decision::{Published, Why},
    table,
};
use sticky_common::{
    Addr16, BackendState, client_key,
    maps::{
        self as names, Affinity, Backend, MAX_BACKENDS, NO_BACKEND, PROTO_TCP, Settings, Vip,
        VipKey,
    },
};
use sticky_tests::SplitMix64;

const DEFAULT_SEED: u64 = 0xdec1_5104_0000_0011;
const DEFAULT_CASES: u64 = 20_000;
const SEC: u64 = 1_000_000_000;
/// Backend ids a world may use; every world rewrites this many entries, clearing the last.
const IDS: u32 = 16;
/// Table sizes (prime, at most the loaded `TABLE_SIZE`).
const SIZES: [u32; 9] = [7, 11, 13, 31, 61, 101, 251, 509, TABLE_SIZE];

#[test]
fn kernel_and_userspace_choose_alike() {
    if !bpf_or_skip() {
        return;
    }
    let seed = env_seed("STICKY_DECISION_SEED", DEFAULT_SEED);
    let cases = env_count("STICKY_DECISION_CASES", DEFAULT_CASES);
    println!(
        "decision: seed {seed:#x} (STICKY_DECISION_SEED), {cases} cases (STICKY_DECISION_CASES)"
    );
    let start = Instant::now();
    let vip4 = sa("192.0.2.10:80");
    let vip6 = sa("[fd00::100]:80");
    let config = config("decision", vip4, &[sa("10.0.0.1:80")]);
    let mut lb = Lb::load(&config, &[]);
    add_vip(&mut lb, vip6);
    let mut rng = Rng(SplitMix64(seed));
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut done = 0u64;
    let mut previous: Vec<Addr16> = Vec::new();
    let mut world_index = 0u64;
    while done < cases {
        let v6 = rng.below(2) == 1;
        let world = World::random(&mut rng, v6);
        let count = (cases - done).min(20 + rng.below(60));
        let clients = world.clients(&mut rng, count);
        let written = world.write(&mut rng, &mut lb, &previous, &clients);
        let vip = if v6 { vip6 } else { vip4 };
        for (client, port) in &clients {
            let src = SocketAddr::new(client.to_ip(), *port);
            let (action, out) = lb
                .run(Prog::Ingress, &Pkt::syn(src, vip).build())
                .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
            let kernel = match action {
                TC_ACT_SHOT => None,
                TC_ACT_OK => Some(
                    Layout::parse(&out)
                        .unwrap_or_else(|| panic!("unparsable output for {src}"))
                        .dst,
                ),
                other => panic!("action {other} for {src}"),
            };
            // What `sticky lookup` does: the entry under the client's key read from the map,
            // then the view.
            let key = client_key(client, &world.settings);
            let affinity = lb
                .dp
                .affinity_of(&key)
                .unwrap_or_else(|e| panic!("read affinity: {e:#}"));
            let view = Published::new(&world.set, &world.table, world.settings, |c: &Addr16| {
                affinity.filter(|_| *c == key)
            });
            let (id, why) = view.explain(client, monotonic_ns());
            let user = id.map(|id| world.set.get(id).expect("a chosen id is configured").addr);
            if kernel != user {
                panic!(
                    "seed {seed:#x}, world {world_index}, client {src}: kernel {kernel:?}, \
                     userspace {user:?} ({why:?})\naffinity {affinity:?}\n{}",
                    world.describe()
                );
            }
            *tally.entry(format!("{:?}", why.reason())).or_default() += 1;
            if let Why::Affinity { .. } = why
                && affinity.is_some_and(|a| a.backend_id != id.unwrap_or(NO_BACKEND))
            {
                panic!("affinity reason for another backend than the entry's");
            }
        }
        done += clients.len() as u64;
        previous = written;
        world_index += 1;
    }
    let elapsed = start.elapsed();
    println!(
        "decision: {done} cases in {world_index} worlds agree ({tally:?}) in {:.2} s",
        elapsed.as_secs_f64()
    );
    if done >= 1000 {
        for reason in ["Affinity", "Table", "Nothing"] {
            assert!(
                tally.get(reason).is_some_and(|&n| n > 0),
                "no case decided by {reason}: the generator is degenerate ({tally:?})"
            );
        }
    }
}

/// The configuration has one family's VIP; the other goes straight into the map.
fn add_vip(lb: &mut Lb, vip: SocketAddr) {
    let mut vips: HashMap<&mut MapData, VipKey, Vip> =
        HashMap::try_from(lb.dp.map_mut(names::VIPS).expect("vip map")).expect("hash");
    let key = VipKey {
        addr: Addr16::from_ip(vip.ip()),
        port_be: vip.port().to_be(),
        proto: PROTO_TCP,
        _pad0: 0,
    };
    vips.insert(key, Vip { index: 1 }, 0).expect("add VIP");
}

/// One random state of the maps.
struct World {
    v6: bool,
    /// Ids in use (some of them empty): `0..n`.
    n: u32,
    set: BackendSet,
    /// The live table (what the daemon holds), and what the idle half holds.
    table: Vec<u32>,
    idle: Vec<u32>,
    settings: Settings,
}

impl World {
    fn random(rng: &mut Rng, v6: bool) -> Self {
        let n = 1 + rng.below(12) as u32;
        let mut entries = Vec::new();
        let mut specs = Vec::new();
        for id in 0..n {
            let ip: IpAddr = if v6 {
                Ipv6Addr::new(
                    0xfd00,
                    id as u16 + 1,
                    0,
                    0,
                    0,
                    0,
                    rng.below(0xffff) as u16,
                    2,
                )
                .into()
            } else {
                Ipv4Addr::new(10, id as u8 + 1, rng.below(256) as u8, 2).into()
            };
            let addr = SocketAddr::new(ip, 1 + rng.below(65_535) as u16);
            let state = match rng.below(12) {
                0..=5 => BackendState::Up,
                6..=7 => BackendState::Draining,
                8..=9 => BackendState::Down,
                _ => BackendState::Empty,
            };
            // Small generations collide across worlds and ids; some are far along.
            let generation = if rng.below(4) == 0 {
                rng.next() as u32
            } else {
                1 + rng.below(4) as u32
            };
            entries.push(Backend {
                addr: Addr16::from_ip(addr.ip()),
                port_be: addr.port().to_be(),
                state: state.raw(),
                _pad0: 0,
                generation,
            });
            if state != BackendState::Empty {
                specs.push(BackendSpec {
                    addr,
                    weight: 1 + rng.below(10) as u32,
                });
            }
        }
        let mut set = BackendSet::default();
        set.adopt(&entries);
        set.reconcile(&specs).expect("same backends, new weights");
        let size = SIZES[rng.below(SIZES.len() as u64) as usize];
        let seed = rng.next() as u32;
        let table = table::build(&set.members(), size, seed);
        // Mid-swap: a backend the live table names has just left service.
        let ids: Vec<SocketAddr> = set.iter().map(|(_, b)| b.addr).collect();
        if !ids.is_empty() && rng.below(5) == 0 {
            let states = [
                BackendState::Draining,
                BackendState::Down,
                BackendState::Empty,
            ];
            let addr = ids[rng.below(ids.len() as u64) as usize];
            set.set_state(addr, states[rng.below(3) as usize]);
        }
        // The idle half: anything but the live table, so reading the wrong half shows.
        let idle = (0..size)
            .map(|_| match rng.below(4) {
                0 => NO_BACKEND,
                _ => rng.below(u64::from(n)) as u32,
            })
            .collect();
        let settings = Settings {
            table_size: size,
            active_table: rng.below(2) as u32,
            hash_seed: seed,
            affinity_prefix_v4: random_prefix(rng, 32),
            affinity_prefix_v6: random_prefix(rng, 128),
            affinity_timeout_ns: 3 * SEC + rng.below(2 * 3600 * SEC),
            ..Settings::default()
        };
        World {
            v6,
            n,
            set,
            table,
            idle,
            settings,
        }
    }

    /// `count` distinct clients with source ports; many share a prefix with an earlier one.
    fn clients(&self, rng: &mut Rng, count: u64) -> Vec<(Addr16, u16)> {
        let mut out: Vec<(Addr16, u16)> = Vec::new();
        while (out.len() as u64) < count {
            let random = u128::from(rng.next()) << 64 | u128::from(rng.next());
            // A neighbour: an earlier client's prefix, random host bits.
            let base = match out.len() {
                0 => None,
                n if rng.below(2) == 0 => Some(out[rng.below(n as u64) as usize].0.to_ip()),
                _ => None,
            };
            let ip: IpAddr = if self.v6 {
                let keep = prefix_mask_128(self.settings.affinity_prefix_v6);
                let base = base.map_or(random, |b| match b {
                    IpAddr::V6(b) => u128::from(b),
                    IpAddr::V4(_) => random,
                });
                Ipv6Addr::from((base & keep) | (random & !keep)).into()
            } else {
                let keep = prefix_mask_128(self.settings.affinity_prefix_v4) >> 96;
                let random = random as u32 as u128;
                let base = base.map_or(random, |b| match b {
                    IpAddr::V4(b) => u128::from(u32::from(b)),
                    IpAddr::V6(_) => random,
                });
                Ipv4Addr::from(((base & keep) | (random & !keep)) as u32).into()
            };
            let client = Addr16::from_ip(ip);
            if !out.iter().any(|(c, _)| *c == client) {
                out.push((client, 1024 + rng.below(64_000) as u16));
            }
        }
        out
    }

    /// A random affinity entry relative to `now`, at least a second from the timeout.
    fn random_affinity(&self, rng: &mut Rng, now: u64) -> Option<Affinity> {
        let timeout = self.settings.affinity_timeout_ns;
        let backend_id = match rng.below(20) {
            0 => IDS + rng.below(8) as u32,
            1 => MAX_BACKENDS + rng.below(8) as u32,
            // Ids past this world's, written empty (some the last world's).
            2..=4 => self.n + rng.below(u64::from(IDS - self.n)) as u32,
            _ => rng.below(u64::from(self.n)) as u32,
        };
        let current = self.set.entry(backend_id.min(MAX_BACKENDS - 1)).generation;
        let generation = match rng.below(6) {
            0 => current.wrapping_add(1 + rng.below(2) as u32),
            1 => current.wrapping_sub(1),
            _ => current,
        };
        let last_seen_ns = match rng.below(6) {
            // Refreshed by a packet after our clock read: not idle at all.
            0 => now + rng.below(SEC),
            1 => now.checked_sub(rng.below(timeout - 2 * SEC))?,
            2 => now.checked_sub(timeout - SEC - rng.below(SEC))?,
            3 => now.checked_sub(timeout + SEC + rng.below(SEC))?,
            _ => now.checked_sub(timeout + SEC + rng.below(3600 * SEC))?,
        };
        Some(Affinity {
            backend_id,
            generation,
            last_seen_ns,
        })
    }

    /// Writes this world over the last one (whose affinity entries, `previous`, go); most
    /// clients get an affinity entry, under their key or (ignored unless the prefix is the
    /// whole address) under their bare address. Returns the keys written.
    fn write(
        &self,
        rng: &mut Rng,
        lb: &mut Lb,
        previous: &[Addr16],
        clients: &[(Addr16, u16)],
    ) -> Vec<Addr16> {
        let ebpf = &mut lb.dp;
        {
            let mut backends: Array<&mut MapData, Backend> =
                Array::try_from(ebpf.map_mut(names::BACKENDS).expect("backends")).expect("array");
            for id in 0..IDS {
                backends
                    .set(id, self.set.entry(id), 0)
                    .expect("write backend");
            }
        }
        {
            let mut table: Array<&mut MapData, u32> =
                Array::try_from(ebpf.map_mut(names::TABLE).expect("table")).expect("array");
            let size = self.settings.table_size;
            let live = self.settings.active_table * size;
            let idle = (1 - self.settings.active_table) * size;
            for (i, (&l, &d)) in self.table.iter().zip(&self.idle).enumerate() {
                table.set(live + i as u32, l, 0).expect("write table");
                table.set(idle + i as u32, d, 0).expect("write table");
            }
        }
        {
            let mut settings: Array<&mut MapData, Settings> =
                Array::try_from(ebpf.map_mut(names::SETTINGS).expect("settings")).expect("array");
            settings.set(0, self.settings, 0).expect("write settings");
        }
        let mut affinity: HashMap<&mut MapData, Addr16, Affinity> =
            HashMap::try_from(ebpf.map_mut(names::AFFINITY).expect("affinity")).expect("hash");
        for c in previous {
            let _ = affinity.remove(c);
        }
        let now = monotonic_ns();
        let mut written = Vec::new();
        for (c, _) in clients {
            let key = match rng.below(5) {
                0 => *c,
                _ => client_key(c, &self.settings),
            };
            if rng.below(10) < 8
                && let Some(a) = self.random_affinity(rng, now)
            {
                affinity.insert(key, a, 0).expect("write affinity");
                written.push(key);
            }
        }
        written
    }

    fn describe(&self) -> String {
        let backends: Vec<String> = (0..IDS)
            .map(|id| {
                let e = self.set.entry(id);
                format!(
                    "  {id}: {:?} gen {} {:?}",
                    e.state(),
                    e.generation,
                    self.set.get(id).map(|b| (b.addr, b.weight))
                )
            })
            .collect();
        format!(
            "settings {:?}\nbackends:\n{}",
            self.settings,
            backends.join("\n")
        )
    }
}

/// The rig's SplitMix64, with the two draws the generator needs.
struct Rng(SplitMix64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A prefix length up to `max`: the whole address half the time, else any, mostly long ones.
fn random_prefix(rng: &mut Rng, max: u8) -> u8 {
    match rng.below(4) {
        0 | 1 => max,
        2 => 1 + rng.below(u64::from(max)) as u8,
        _ => max - rng.below(u64::from(max) / 4) as u8,
    }
}

/// The first `len` bits of a 128-bit address set.
fn prefix_mask_128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}
