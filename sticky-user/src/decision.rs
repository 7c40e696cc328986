//! Userspace's view of what the daemon published, for the backend decision in
//! `sticky_common::choice`: `sticky lookup`, previews, status counts and proxy mode ask the
//! same question the kernel does, over the same state, through this one [`View`].

use sticky_common::{
    Addr16, Choice, Reason, View,
    choice::{by_affinity, choose, client_key},
    maps::{Affinity, Backend, MAX_BACKENDS, Settings},
};

use crate::{backends::BackendSet, control::LookupReason};

/// The backend set and the live table as published, and where clients' affinity comes from
/// (the pinned map, one entry read ahead, or nothing).
pub struct Published<'a, A> {
    set: &'a BackendSet,
    table: &'a [u32],
    settings: Settings,
    affinity: A,
}

impl<'a, A: Fn(&Addr16) -> Option<Affinity>> Published<'a, A> {
    /// `table` is the live table (its length is the table size), built with `settings`' seed;
    /// `affinity` answers by client key (`client_key`).
    pub fn new(set: &'a BackendSet, table: &'a [u32], settings: Settings, affinity: A) -> Self {
        Self {
            set,
            table,
            settings: Settings {
                table_size: table.len() as u32,
                active_table: 0,
                ..settings
            },
            affinity,
        }
    }

    /// The same state with affinity from `affinity` instead.
    pub fn with_affinity<B: Fn(&Addr16) -> Option<Affinity>>(
        &self,
        affinity: B,
    ) -> Published<'a, B> {
        Published {
            set: self.set,
            table: self.table,
            settings: self.settings,
            affinity,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The backend for `client`'s new connection at `now_ns` (monotonic, the kernel's clock).
    pub fn choose(&self, client: &Addr16, now_ns: u64) -> Option<Choice> {
        choose(self, client, &self.settings, now_ns)
    }

    /// What `sticky lookup` reports for `client` at `now_ns`: the backend id and why.
    pub fn explain(&self, client: &Addr16, now_ns: u64) -> (Option<u32>, Why) {
        match self.choose(client, now_ns) {
            None => (None, Why::Nothing),
            Some(c) => match (c.reason, self.affinity(&self.key(client))) {
                (Reason::Affinity, Some(a)) => (
                    Some(c.id),
                    Why::Affinity {
                        idle_secs: now_ns.saturating_sub(a.last_seen_ns) / 1_000_000_000,
                    },
                ),
                _ => (Some(c.id), Why::Table),
            },
        }
    }

    /// The key `client` is hashed and remembered by.
    pub fn key(&self, client: &Addr16) -> Addr16 {
        client_key(client, &self.settings)
    }

    /// Whether `affinity`, were it the entry under `key`, would hold at `now_ns`: its backend.
    pub fn holding(&self, key: &Addr16, affinity: Affinity, now_ns: u64) -> Option<u32> {
        by_affinity(
            &self.with_affinity(|_| Some(affinity)),
            key,
            &self.settings,
            now_ns,
        )
        .map(|c| c.id)
    }
}

impl<A: Fn(&Addr16) -> Option<Affinity>> View for Published<'_, A> {
    fn backend(&self, id: u32) -> Option<Backend> {
        (id < MAX_BACKENDS).then(|| self.set.entry(id))
    }

    fn table_entry(&self, slot: u32) -> Option<u32> {
        self.table.get(slot as usize).copied()
    }

    fn affinity(&self, client: &Addr16) -> Option<Affinity> {
        (self.affinity)(client)
    }
}

/// Why a client gets its backend, as `sticky lookup` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its affinity holds; idle this long.
    Affinity { idle_secs: u64 },
    /// Its table slot.
    Table,
    /// No backend in service for it.
    Nothing,
}

impl Why {
    /// The `reason` of the lookup answer.
    pub fn reason(self) -> LookupReason {
        match self {
            Self::Affinity { .. } => LookupReason::Affinity,
            Self::Table => LookupReason::Table,
            Self::Nothing => LookupReason::Nothing,
        }
    }

    pub fn idle_secs(self) -> Option<u64> {
        match self {
            Self::Affinity { idle_secs } => Some(idle_secs),
            _ => None,
        }
    }
}

/// Settings with `seed` and `affinity_timeout_ns`, whole addresses as client keys.
pub fn settings(seed: u32, affinity_timeout_ns: u64) -> Settings {
    Settings {
        hash_seed: seed,
        affinity_timeout_ns,
        ..Settings::default()
    }
}

/// No affinity source: the table alone decides.
pub fn no_affinity(_: &Addr16) -> Option<Affinity> {
    None
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use sticky_common::{BackendState, choice::slot_of};

    use super::*;
    use crate::{addr::BackendSpec, table};

    const SEED: u32 = 7;
    const SIZE: u32 = 251;
    const TIMEOUT: u64 = 1_000;

    fn set_of(addrs: &[&str]) -> BackendSet {
        let specs: Vec<BackendSpec> = addrs.iter().map(|s| s.parse().unwrap()).collect();
        let mut set = BackendSet::default();
        set.reconcile(&specs).unwrap();
        set
    }

    fn addr(set: &BackendSet, id: u32) -> SocketAddr {
        set.get(id).unwrap().addr
    }

    fn client(i: u8) -> Addr16 {
        Addr16::from_ip(IpAddr::from([198, 51, 100, i]))
    }

    #[test]
    fn the_table_decides_without_affinity_and_names_only_backends_that_are_up() {
        let set = set_of(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let table = table::build(&set.members(), SIZE, SEED);
        let view = Published::new(&set, &table, settings(SEED, TIMEOUT), no_affinity);
        for i in 0..50 {
            let c = client(i);
            let got = view.choose(&c, 0).unwrap();
            assert_eq!(got.reason, Reason::Table);
            assert_eq!(got.id, table[slot_of(&c, view.settings()) as usize]);
            assert_eq!(got.backend, set.entry(got.id));
        }
        // A table that still names a backend no longer up (mid-swap) gives nothing.
        let mut drained = set.clone();
        for (_, b) in set.iter() {
            drained.set_state(b.addr, BackendState::Draining);
        }
        let view = Published::new(&drained, &table, settings(SEED, TIMEOUT), no_affinity);
        assert_eq!(view.choose(&client(1), 0), None);
        let empty = table::build(&[], SIZE, SEED);
        let view = Published::new(&set, &empty, settings(SEED, TIMEOUT), no_affinity);
        assert_eq!(view.choose(&client(1), 0), None);
    }

    #[test]
    fn affinity_holds_while_fresh_honoured_and_of_the_same_generation() {
        let mut set = set_of(&["10.0.0.1:80", "10.0.0.2:80"]);
        let table = table::build(&set.members(), SIZE, SEED);
        let c = client(9);
        let by_table = Published::new(&set, &table, settings(SEED, TIMEOUT), no_affinity)
            .choose(&c, 0)
            .unwrap()
            .id;
        let other = 1 - by_table;
        let affinity = Affinity {
            backend_id: other,
            generation: set.entry(other).generation,
            last_seen_ns: 500,
        };
        let reason_at = |set: &BackendSet, affinity: Affinity, now: u64| {
            let view = Published::new(set, &table, settings(SEED, TIMEOUT), move |k: &Addr16| {
                (*k == c).then_some(affinity)
            });
            let got = view.choose(&c, now).unwrap();
            (got.id, got.reason)
        };
        assert_eq!(reason_at(&set, affinity, 1_500), (other, Reason::Affinity));
        assert_eq!(reason_at(&set, affinity, 1_501), (by_table, Reason::Table));
        let stale = Affinity {
            generation: affinity.generation + 1,
            ..affinity
        };
        assert_eq!(reason_at(&set, stale, 600), (by_table, Reason::Table));
        set.set_state(addr(&set, other), BackendState::Draining);
        assert_eq!(reason_at(&set, affinity, 600), (other, Reason::Affinity));
        set.set_state(addr(&set, other), BackendState::Down);
        let table_only = reason_at(&set, affinity, 600);
        assert_eq!(table_only.1, Reason::Table);
        // Affinity for another client is not this one's.
        let view = Published::new(&set, &table, settings(SEED, TIMEOUT), |k: &Addr16| {
            (*k == client(10)).then_some(affinity)
        });
        assert_eq!(view.choose(&c, 600).unwrap().reason, Reason::Table);
    }

    #[test]
    fn holding_names_the_backend_of_an_affinity_that_holds() {
        let mut set = set_of(&["10.0.0.1:80", "10.0.0.2:80"]);
        let table = table::build(&set.members(), SIZE, SEED);
        let view = Published::new(&set, &table, settings(SEED, TIMEOUT), no_affinity);
        let affinity = Affinity {
            backend_id: 1,
            generation: set.entry(1).generation,
            last_seen_ns: 0,
        };
        assert_eq!(view.holding(&client(1), affinity, 10), Some(1));
        assert_eq!(view.holding(&client(1), affinity, TIMEOUT + 1), None);
        let unknown = Affinity {
            backend_id: 5,
            ..affinity
        };
        assert_eq!(view.holding(&client(1), unknown, 10), None);
        let beyond = Affinity {
            backend_id: MAX_BACKENDS,
            ..affinity
        };
        assert_eq!(view.holding(&client(1), beyond, 10), None);
        // Removed, then the id given to another address: a new generation.
        set.reconcile(&[BackendSpec {
            addr: addr(&set, 0),
            weight: 1,
        }])
        .unwrap();
        let view = Published::new(&set, &table, settings(SEED, TIMEOUT), no_affinity);
        assert_eq!(view.holding(&client(1), affinity, 10), None);
        set.reconcile(&[
            BackendSpec {
                addr: addr(&set, 0),
                weight: 1,
            },
            "10.0.0.9:80".parse().unwrap(),
        ])
        .unwrap();
        assert_eq!(set.entry(1).generation, affinity.generation + 1);
        let view = Published::new(&set, &table, settings(SEED, TIMEOUT), no_affinity);
        assert_eq!(view.holding(&client(1), affinity, 10), None);
    }

    #[test]
    fn lookup_reasons() {
        const SEC: u64 = 1_000_000_000;
        let mut set = set_of(&["10.0.0.1:80", "10.0.0.2:80"]);
        let table = table::build(&set.members(), SIZE, SEED);
        let c = client(3);
        let plain = Published::new(&set, &table, settings(SEED, 60 * SEC), no_affinity);
        let (Some(by_table), Why::Table) = plain.explain(&c, 0) else {
            panic!("{:?}", plain.explain(&c, 0));
        };
        let other = 1 - by_table;
        let affinity = Affinity {
            backend_id: other,
            generation: set.entry(other).generation,
            last_seen_ns: 10 * SEC,
        };
        let view = plain.with_affinity(|_| Some(affinity));
        assert_eq!(
            view.explain(&c, 52 * SEC + 1),
            (Some(other), Why::Affinity { idle_secs: 42 })
        );
        assert_eq!(view.explain(&c, 71 * SEC), (Some(by_table), Why::Table));
        for (_, b) in set.clone().iter() {
            set.set_state(b.addr, BackendState::Down);
        }
        let down = Published::new(&set, &table, settings(SEED, 60 * SEC), |_: &Addr16| {
            Some(affinity)
        });
        assert_eq!(down.explain(&c, 11 * SEC), (None, Why::Nothing));
        // The wire names `sticky lookup --json` has always printed.
        let wire = |w: Why| serde_json::to_value(w.reason()).unwrap();
        assert_eq!(
            (
                wire(Why::Nothing),
                wire(Why::Table),
                Why::Nothing.idle_secs()
            ),
            ("none".into(), "table".into(), None)
        );
        assert_eq!(wire(Why::Affinity { idle_secs: 3 }), "affinity");
    }
}
