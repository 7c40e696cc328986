//! The backend decision: which backend a client's new connection goes to, and why. This is
//! the one place the rule lives; the kernel program, `sticky lookup`, `sticky preview`,
//! status and proxy mode all call [`choose`] (or its two halves) over their own view of the
//! same state, so they cannot drift apart.
//!
//! The rule: a client's affinity holds while it is fresh, its backend still honours affinity
//! (up or draining) and the backend id has not been given to another address since (same
//! generation). Otherwise the client gets the Maglev table's slot for its hash, if the backend
//! there is up.
//!
//! Hash and affinity are keyed by the client's *key* ([`client_key`]): its address masked to
//! the configured prefix (`--affinity-prefix`), so clients that change address within a
//! carrier's range stay on one backend.

use crate::{
    Addr16, client_hash,
    maps::{
        Affinity, BACKEND_DOWN, BACKEND_DRAINING, BACKEND_EMPTY, BACKEND_UP, Backend, NO_BACKEND,
        Settings,
    },
    table_slot,
};

/// What a backend id's entry in the `BACKENDS` map means. The map stores it as a `u8`
/// ([`Backend::state`]); everything outside the map speaks this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum BackendState {
    /// Never used, or removed: no new flows, no affinity honoured.
    Empty = BACKEND_EMPTY,
    /// In the table: takes new clients.
    Up = BACKEND_UP,
    /// Out of the table; established flows and affine clients still reach it.
    Draining = BACKEND_DRAINING,
    /// Out of the table and affinity ignored (failed health checks).
    Down = BACKEND_DOWN,
}

impl BackendState {
    /// The state a map value names; anything unknown reads as empty (takes nothing).
    #[inline(always)]
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            BACKEND_UP => Self::Up,
            BACKEND_DRAINING => Self::Draining,
            BACKEND_DOWN => Self::Down,
            _ => Self::Empty,
        }
    }

    /// The value stored in the map.
    #[inline(always)]
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// Whether the table may name this backend: it takes new clients.
    #[inline(always)]
    pub const fn takes_new_clients(self) -> bool {
        matches!(self, Self::Up)
    }

    /// Whether an affine client's new connection may still go here.
    #[inline(always)]
    pub const fn honours_affinity(self) -> bool {
        matches!(self, Self::Up | Self::Draining)
    }

    /// The name status, metrics and the control API use (`removed` for an empty id).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Empty => "removed",
            Self::Up => "up",
            Self::Draining => "draining",
            Self::Down => "down",
        }
    }
}

impl Backend {
    #[inline(always)]
    pub const fn state(&self) -> BackendState {
        BackendState::from_raw(self.state)
    }

    /// Whether an affine client's new connection may still go here.
    #[inline(always)]
    pub const fn honours_affinity(&self) -> bool {
        self.state().honours_affinity()
    }
}

/// Why a client got its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its affinity held.
    Affinity,
    /// The table slot of its hash.
    Table,
}

/// A backend decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub id: u32,
    pub backend: Backend,
    pub reason: Reason,
}

/// Read access to the state the decision needs. The kernel implements it over its maps,
/// userspace over what it published (or over the pinned maps themselves).
pub trait View {
    /// The `BACKENDS` entry of `id`.
    fn backend(&self, id: u32) -> Option<Backend>;
    /// The backend id in slot `slot` of the live table half (`slot < table_size`).
    fn table_entry(&self, slot: u32) -> Option<u32>;
    /// The client's affinity entry, fresh or not.
    fn affinity(&self, client: &Addr16) -> Option<Affinity>;
}

/// The native word of a mask with the first `bits` (0-32) of four network-order bytes set.
#[inline(always)]
const fn word_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else if bits == 0 {
        0
    } else {
        (u32::MAX << (32 - bits)).to_be()
    }
}

/// The key `client` is hashed and remembered by: its address masked to the prefix of its
/// family. Every place that hashes a client or reads or writes its affinity goes through this.
#[inline(always)]
pub const fn client_key(client: &Addr16, settings: &Settings) -> Addr16 {
    let [a, b, c, d] = client.words;
    if client.is_v4() {
        let bits = settings.affinity_prefix_v4 as u32;
        return Addr16 {
            words: [a, b, c, d & word_mask(bits)],
        };
    }
    let bits = settings.affinity_prefix_v6 as u32;
    Addr16 {
        words: [
            a & word_mask(bits),
            b & word_mask(bits.saturating_sub(32)),
            c & word_mask(bits.saturating_sub(64)),
            d & word_mask(bits.saturating_sub(96)),
        ],
    }
}

/// Whether `affinity` still sends its client to `backend` at `now_ns`.
#[inline(always)]
pub const fn affinity_holds(
    affinity: &Affinity,
    backend: &Backend,
    now_ns: u64,
    timeout_ns: u64,
) -> bool {
    now_ns.saturating_sub(affinity.last_seen_ns) <= timeout_ns
        && backend.honours_affinity()
        && backend.generation == affinity.generation
}

/// The client's backend by its affinity alone, when that affinity holds. `key` is the
/// client's [`client_key`].
#[inline(always)]
pub fn by_affinity<V: View>(
    view: &V,
    key: &Addr16,
    settings: &Settings,
    now_ns: u64,
) -> Option<Choice> {
    let affinity = view.affinity(key)?;
    let backend = view.backend(affinity.backend_id)?;
    if !affinity_holds(&affinity, &backend, now_ns, settings.affinity_timeout_ns) {
        return None;
    }
    Some(Choice {
        id: affinity.backend_id,
        backend,
        reason: Reason::Affinity,
    })
}

/// The table slot a client key ([`client_key`]) hashes to.
#[inline(always)]
pub const fn slot_of(key: &Addr16, settings: &Settings) -> u32 {
    table_slot(client_hash(key, settings.hash_seed), settings.table_size)
}

/// The backend the table names in `slot`, if it takes new clients. The table only ever names
/// backends that are up; anything else is a table being swapped.
#[inline(always)]
pub fn in_slot<V: View>(view: &V, slot: u32) -> Option<Choice> {
    let id = view.table_entry(slot)?;
    if id == NO_BACKEND {
        return None;
    }
    let backend = view.backend(id)?;
    if !backend.state().takes_new_clients() {
        return None;
    }
    Some(Choice {
        id,
        backend,
        reason: Reason::Table,
    })
}

/// The client's backend by the table alone; `key` is its [`client_key`].
#[inline(always)]
pub fn by_table<V: View>(view: &V, key: &Addr16, settings: &Settings) -> Option<Choice> {
    in_slot(view, slot_of(key, settings))
}

/// The backend for `client`'s new connection at `now_ns`: its affinity while it holds, else
/// the table. `None`: nothing in service for it.
#[inline(always)]
pub fn choose<V: View>(
    view: &V,
    client: &Addr16,
    settings: &Settings,
    now_ns: u64,
) -> Option<Choice> {
    let key = client_key(client, settings);
    match by_affinity(view, &key, settings, now_ns) {
        Some(choice) => Some(choice),
        None => by_table(view, &key, settings),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeMap, string::ToString, vec, vec::Vec};

    use super::*;

    struct Fake {
        backends: Vec<Backend>,
        table: Vec<u32>,
        affinity: BTreeMap<[u32; 4], Affinity>,
    }

    impl View for Fake {
        fn backend(&self, id: u32) -> Option<Backend> {
            self.backends.get(id as usize).copied()
        }
        fn table_entry(&self, slot: u32) -> Option<u32> {
            self.table.get(slot as usize).copied()
        }
        fn affinity(&self, client: &Addr16) -> Option<Affinity> {
            self.affinity.get(&client.words).copied()
        }
    }

    fn backend(state: BackendState, generation: u32) -> Backend {
        Backend {
            state: state.raw(),
            generation,
            ..Backend::default()
        }
    }

    fn settings() -> Settings {
        Settings {
            table_size: 7,
            affinity_timeout_ns: 100,
            ..Settings::default()
        }
    }

    fn fake(states: [BackendState; 2]) -> Fake {
        Fake {
            backends: vec![backend(states[0], 1), backend(states[1], 1)],
            table: vec![1; 7],
            affinity: BTreeMap::new(),
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            BackendState::Empty,
            BackendState::Up,
            BackendState::Draining,
            BackendState::Down,
        ] {
            assert_eq!(BackendState::from_raw(s.raw()), s);
        }
        assert_eq!(BackendState::from_raw(200), BackendState::Empty);
    }

    #[test]
    fn affinity_holds_while_fresh_honoured_and_same_generation() {
        let client = Addr16::from_v4_word(7);
        let mut f = fake([BackendState::Draining, BackendState::Up]);
        f.affinity.insert(
            client.words,
            Affinity {
                backend_id: 0,
                generation: 1,
                last_seen_ns: 50,
            },
        );
        let s = settings();
        let got = choose(&f, &client, &s, 150).unwrap();
        assert_eq!((got.id, got.reason), (0, Reason::Affinity));
        // Stale by time, by state, by generation: the table decides.
        assert_eq!(choose(&f, &client, &s, 151).unwrap().reason, Reason::Table);
        f.backends[0] = backend(BackendState::Down, 1);
        assert_eq!(choose(&f, &client, &s, 60).unwrap().reason, Reason::Table);
        f.backends[0] = backend(BackendState::Up, 2);
        assert_eq!(choose(&f, &client, &s, 60).unwrap().reason, Reason::Table);
    }

    #[test]
    fn client_keys_keep_the_prefix() {
        let s = |v4, v6| Settings {
            affinity_prefix_v4: v4,
            affinity_prefix_v6: v6,
            ..Settings::default()
        };
        let ip = |t: &str| Addr16::from_ip(t.parse().unwrap());
        let key = |t: &str, v4, v6| client_key(&ip(t), &s(v4, v6)).to_ip().to_string();
        assert_eq!(key("198.51.100.77", 32, 128), "198.51.100.77");
        assert_eq!(key("198.51.100.77", 24, 128), "198.51.100.0");
        assert_eq!(key("198.51.100.77", 20, 128), "198.51.96.0");
        assert_eq!(key("198.51.100.77", 0, 128), "0.0.0.0");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 24, 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 56), "2001:db8:1::");
        assert_eq!(
            key("2001:db8:1:2:3:4:5678:9", 32, 100),
            "2001:db8:1:2:3:4:5000:0"
        );
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 0), "::");
        // Defaults: every address is its own key.
        let a = ip("2001:db8::ff");
        assert_eq!(client_key(&a, &Settings::default()), a);
    }

    #[test]
    fn clients_of_one_prefix_share_affinity_and_slot() {
        let mut f = fake([BackendState::Up, BackendState::Up]);
        let s = Settings {
            affinity_prefix_v4: 24,
            ..settings()
        };
        let a = Addr16::from_ip("10.1.2.3".parse().unwrap());
        let b = Addr16::from_ip("10.1.2.200".parse().unwrap());
        f.affinity.insert(
            client_key(&a, &s).words,
            Affinity {
                backend_id: 0,
                generation: 1,
                last_seen_ns: 50,
            },
        );
        let got = choose(&f, &b, &s, 60).unwrap();
        assert_eq!((got.id, got.reason), (0, Reason::Affinity));
        assert_eq!(
            slot_of(&client_key(&a, &s), &s),
            slot_of(&client_key(&b, &s), &s)
        );
    }

    #[test]
    fn table_names_only_backends_that_are_up() {
        let client = Addr16::from_v4_word(9);
        let s = settings();
        let f = fake([BackendState::Up, BackendState::Draining]);
        assert_eq!(choose(&f, &client, &s, 0), None);
        let f = fake([BackendState::Up, BackendState::Up]);
        assert_eq!(choose(&f, &client, &s, 0).unwrap().id, 1);
        let mut f = fake([BackendState::Up, BackendState::Up]);
        f.table = vec![NO_BACKEND; 7];
        assert_eq!(choose(&f, &client, &s, 0), None);
    }
}
