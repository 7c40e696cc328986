//! The backend set: stable ids, generations, states. Turns a desired list into the
//! `BACKENDS` entries and the table members the data path needs.

use std::net::SocketAddr;

use sticky_common::{
    Addr16, BackendState,
    maps::{Backend, MAX_BACKENDS},
};

use crate::{addr::BackendSpec, table::Member};

/// A backend the set holds under an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
    pub generation: u32,
}

/// Backends by id. An id keeps its backend while it is configured; a removed backend's id
/// may be reused, with its generation bumped so stale affinity is recognised.
#[derive(Clone, Debug, Default)]
pub struct BackendSet {
    entries: Vec<Option<BackendEntry>>,
    /// Highest generation ever used per id, surviving removal.
    generations: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no free backend id: at most {MAX_BACKENDS} backends")]
pub struct Full;

impl BackendSet {
    pub fn id_of(&self, addr: SocketAddr) -> Option<u32> {
        self.entries
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.addr == addr))
            .map(|i| i as u32)
    }

    pub fn get(&self, id: u32) -> Option<&BackendEntry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &BackendEntry)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u32, s)))
    }

    /// Makes the set equal `specs`: new backends get ids (up), removed ones free theirs, weight
    /// changes apply in place. Returns the ids removed, whose map entries must be cleared only
    /// after the new table is live.
    pub fn reconcile(&mut self, specs: &[BackendSpec]) -> Result<Vec<u32>, Full> {
        let removed: Vec<u32> = self
            .iter()
            .filter(|(_, s)| !specs.iter().any(|b| b.addr == s.addr))
            .map(|(id, _)| id)
            .collect();
        for spec in specs {
            match self.id_of(spec.addr) {
                Some(id) => {
                    if let Some(Some(entry)) = self.entries.get_mut(id as usize) {
                        entry.weight = spec.weight;
                    }
                }
                None => {
                    self.add(spec)?;
                }
            }
        }
        for &id in &removed {
            if let Some(entry) = self.entries.get_mut(id as usize) {
                *entry = None;
            }
        }
        Ok(removed)
    }

    fn add(&mut self, spec: &BackendSpec) -> Result<u32, Full> {
        // Ids freed by this same reconcile are still occupied here, so they are not reused
        // before their entries are cleared.
        let id = match self.entries.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.entries.len() < MAX_BACKENDS as usize => {
                self.entries.push(None);
                self.generations.push(0);
                self.entries.len() - 1
            }
            None => return Err(Full),
        };
        let generation = self.generations[id].wrapping_add(1);
        self.generations[id] = generation;
        self.entries[id] = Some(BackendEntry {
            addr: spec.addr,
            weight: spec.weight,
            state: BackendState::Up,
            generation,
        });
        Ok(id as u32)
    }

    /// Takes over the ids and generations a previous daemon published, so affinity and flows
    /// it recorded keep naming the same backends. Weights come from the configuration.
    pub fn adopt(&mut self, entries: &[Backend]) {
        self.entries.clear();
        self.generations.clear();
        for e in entries {
            self.generations.push(e.generation);
            self.entries
                .push((e.state() != BackendState::Empty).then(|| BackendEntry {
                    addr: SocketAddr::new(e.addr.to_ip(), u16::from_be(e.port_be)),
                    weight: 1,
                    state: e.state(),
                    generation: e.generation,
                }));
        }
    }

    /// Sets the kernel state of a backend; false if unknown.
    pub fn set_state(&mut self, addr: SocketAddr, state: BackendState) -> bool {
        match self.entries.iter_mut().flatten().find(|s| s.addr == addr) {
            Some(entry) => {
                entry.state = state;
                true
            }
            None => false,
        }
    }

    /// Replaces each backend's table weight by `f(id, weight)`.
    pub fn map_weights(&mut self, f: impl Fn(u32, u32) -> u32) {
        for (id, entry) in self.entries.iter_mut().enumerate() {
            if let Some(entry) = entry {
                entry.weight = f(id as u32, entry.weight);
            }
        }
    }

    /// The `BACKENDS` map entry for `id` (empty when unused).
    pub fn entry(&self, id: u32) -> Backend {
        match self.get(id) {
            Some(s) => Backend {
                addr: Addr16::from_ip(s.addr.ip()),
                port_be: s.addr.port().to_be(),
                state: s.state.raw(),
                _pad0: 0,
                generation: s.generation,
            },
            None => Backend {
                state: BackendState::Empty.raw(),
                generation: self.generations.get(id as usize).copied().unwrap_or(0),
                ..Backend::default()
            },
        }
    }

    /// How many backends take new clients (without building [`BackendSet::members`]).
    pub fn in_service(&self) -> usize {
        self.iter()
            .filter(|(_, s)| s.state.takes_new_clients())
            .count()
    }

    /// Backends that take new clients, for the table.
    pub fn members(&self) -> Vec<Member> {
        self.iter()
            .filter(|(_, s)| s.state.takes_new_clients())
            .map(|(id, s)| Member {
                id,
                addr: Addr16::from_ip(s.addr.ip()),
                port: s.addr.port(),
                weight: s.weight,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(list: &[&str]) -> Vec<BackendSpec> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ids_are_stable_and_reused_with_a_new_generation() {
        let mut set = BackendSet::default();
        set.reconcile(&specs(&["10.0.0.1:80", "10.0.0.2:80"]))
            .unwrap();
        let b = set.id_of("10.0.0.2:80".parse().unwrap()).unwrap();
        let removed = set.reconcile(&specs(&["10.0.0.2:80"])).unwrap();
        assert_eq!(removed, [0]);
        assert_eq!(set.id_of("10.0.0.2:80".parse().unwrap()), Some(b));
        assert_eq!(set.entry(0).state(), BackendState::Empty);
        set.reconcile(&specs(&["10.0.0.2:80", "10.0.0.3:80@4"]))
            .unwrap();
        assert_eq!(set.id_of("10.0.0.3:80".parse().unwrap()), Some(0));
        assert_eq!(set.entry(0).generation, 2);
        assert_eq!(set.members().iter().map(|m| m.weight).sum::<u32>(), 5);
    }
}
