//! The backend decision: which backend a client's new connection goes to, and why. This is
//! the one place the rule lives; the kernel program, `sticky lookup`, `sticky preview`,
//! status and proxy mode all call [`choose`] (or its two halves) over their own view of the
//! same state, so they cannot drift apart.
//!
//! The rule: a client's affinity holds while it is fresh, its backend still honours affinity
//! (up or draining) and the backend id has not been given to another address since (same
//! generation). Otherwise the client gets the Maglev table's slot for its hash, if the backend
//! there is up.

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

/// The client's backend by its affinity alone, when that affinity holds.
#[inline(always)]
pub fn by_affinity<V: View>(
    view: &V,
    client: &Addr16,
    settings: &Settings,
    now_ns: u64,
) -> Option<Choice> {
    let affinity = view.affinity(client)?;
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

/// The table slot `key` hashes to.
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

/// The client's backend by the table alone.
#[inline(always)]
pub fn by_table<V: View>(view: &V, client: &Addr16, settings: &Settings) -> Option<Choice> {
    in_slot(view, slot_of(client, settings))
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
    match by_affinity(view, client, settings, now_ns) {
        Some(choice) => Some(choice),
        None => by_table(view, client, settings),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeMap, vec, vec::Vec};

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
