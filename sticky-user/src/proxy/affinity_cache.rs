//! Client affinity as the proxy last read or wrote it, kept for a second: reading the kernel's
//! map is a system call (4% of the proxy's CPU under keep-alive load, one per request). Only
//! the kernel path and the proxy write that map, and the kernel rewrites a client's entry only
//! to refresh it or once it no longer holds (expired, its backend out of service or of another
//! generation), which the proxy checks itself on every request against the published state;
//! so a second's staleness changes no decision the proxy makes while the client is active.

use std::{collections::HashMap, sync::Mutex};

use foldhash::fast::RandomState;

use sticky_common::{Addr16, maps::Affinity};

use super::routing::AffinityStore;
use crate::clock::monotonic_ns;

/// How long a read or written entry is used without reading the map again.
pub const KEEP_NS: u64 = 1_000_000_000;
/// Entries kept at most; past this the stale ones go, and all of them if none is.
const MAX_ENTRIES: usize = 16 * 1024;

pub struct Cached<S> {
    inner: S,
    keep_ns: u64,
    /// Per client: its affinity and when it was read or written.
    /// Seeded per process (foldhash): a client cannot aim its address at one bucket.
    recent: Mutex<HashMap<Addr16, (Affinity, u64), RandomState>>,
}

impl<S: AffinityStore> Cached<S> {
    pub fn new(inner: S, keep_ns: u64) -> Self {
        Self {
            inner,
            keep_ns,
            recent: Mutex::new(HashMap::default()),
        }
    }

    fn remember(&self, client: &Addr16, value: Affinity, now: u64) {
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        if recent.len() >= MAX_ENTRIES && !recent.contains_key(client) {
            recent.retain(|_, (_, at)| now.saturating_sub(*at) < self.keep_ns);
            if recent.len() >= MAX_ENTRIES {
                recent.clear();
            }
        }
        recent.insert(*client, (value, now));
    }
}

impl<S: AffinityStore> AffinityStore for Cached<S> {
    fn get(&self, client: &Addr16) -> Option<Affinity> {
        let now = monotonic_ns();
        if let Ok(recent) = self.recent.lock()
            && let Some(&(value, at)) = recent.get(client)
            && now.saturating_sub(at) < self.keep_ns
        {
            return Some(value);
        }
        let value = self.inner.get(client)?;
        self.remember(client, value, now);
        Some(value)
    }

    fn set(&self, client: &Addr16, value: Affinity) {
        self.inner.set(client, value);
        self.remember(client, value, monotonic_ns());
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, net::IpAddr};

    use super::*;

    /// One client's entry, counting the reads that reach it.
    #[derive(Default)]
    struct Map {
        value: Cell<Option<Affinity>>,
        reads: Cell<usize>,
    }

    impl AffinityStore for &Map {
        fn get(&self, _: &Addr16) -> Option<Affinity> {
            self.reads.set(self.reads.get() + 1);
            self.value.get()
        }
        fn set(&self, _: &Addr16, value: Affinity) {
            self.value.set(Some(value));
        }
    }

    fn on(backend_id: u32) -> Affinity {
        Affinity {
            backend_id,
            generation: 1,
            last_seen_ns: 5,
        }
    }

    #[test]
    fn reads_and_writes_are_kept_for_a_while_and_only_then() {
        let client = Addr16::from_ip(IpAddr::from([198, 51, 100, 1]));
        let map = Map::default();
        let cached = Cached::new(&map, u64::MAX);
        assert_eq!(cached.get(&client), None);
        assert_eq!(cached.get(&client), None, "nothing held: asked again");
        assert_eq!(map.reads.get(), 2);
        cached.set(&client, on(1));
        assert_eq!(map.value.get(), Some(on(1)), "written through");
        map.value.set(Some(on(2)));
        assert_eq!(cached.get(&client), Some(on(1)));
        assert_eq!(map.reads.get(), 2);
        // Kept for no time: every read reaches the map.
        let map = Map::default();
        map.value.set(Some(on(3)));
        let uncached = Cached::new(&map, 0);
        assert_eq!(uncached.get(&client), Some(on(3)));
        map.value.set(Some(on(4)));
        assert_eq!(uncached.get(&client), Some(on(4)));
        assert_eq!(map.reads.get(), 2);
    }
}
