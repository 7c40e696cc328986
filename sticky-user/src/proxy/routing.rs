//! Backend choice for proxy mode: the kernel path's rules on the real client address — a
//! cookie naming a backend in service, else the client's live affinity (the same map the
//! kernel writes), else the same table with the same hash.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
};

use aya::maps::{HashMap, MapData};
use sticky_common::{
    Addr16, client_hash,
    maps::{Affinity, BACKEND_DRAINING, BACKEND_UP, NO_BACKEND},
    table_slot,
};

use super::cookie;
use crate::backends::BackendSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackend {
    pub addr: SocketAddr,
    pub state: u8,
    pub generation: u32,
    /// The opaque cookie value naming this backend.
    pub token: String,
}

/// What the daemon last published, for the proxy tasks.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    pub table: Vec<u32>,
    pub seed: u32,
    pub backends: BTreeMap<u32, RouteBackend>,
    pub affinity_timeout_ns: u64,
}

impl Routing {
    pub fn new(
        table: Vec<u32>,
        set: &BackendSet,
        seed: u32,
        affinity_timeout_ns: u64,
        cookie_key: u64,
    ) -> Self {
        let backends = set
            .iter()
            .map(|(id, s)| {
                (
                    id,
                    RouteBackend {
                        addr: s.addr,
                        state: s.state,
                        generation: s.generation,
                        token: cookie::backend_token(s.addr, cookie_key),
                    },
                )
            })
            .collect();
        Self {
            table,
            seed,
            backends,
            affinity_timeout_ns,
        }
    }
}

pub type SharedRouting = Arc<RwLock<Routing>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Cookie,
    Affinity,
    Table,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub id: u32,
    pub backend: RouteBackend,
    pub reason: Reason,
}

fn in_service(b: &RouteBackend) -> bool {
    b.state == BACKEND_UP || b.state == BACKEND_DRAINING
}

/// The client-affinity map shared with the kernel.
pub struct AffinityMap {
    map: Mutex<HashMap<MapData, Addr16, Affinity>>,
}

impl AffinityMap {
    pub fn new(map: HashMap<MapData, Addr16, Affinity>) -> Self {
        Self {
            map: Mutex::new(map),
        }
    }

    fn get(&self, client: &Addr16) -> Option<Affinity> {
        self.map.lock().ok()?.get(client, 0).ok()
    }

    fn set(&self, client: &Addr16, value: Affinity) {
        if let Ok(mut m) = self.map.lock() {
            let _ = m.insert(client, value, 0);
        }
    }
}

/// Picks a backend for `client`, skipping ids in `exclude` (backends that refused a connect).
///
/// With `per_connection` (cookie mode, where many clients may share one address behind a
/// NAT), a request without a valid cookie is balanced by address *and* source port and leaves
/// the address's affinity alone: the cookie, not the address, keeps such clients sticky.
pub fn choose(
    routing: &Routing,
    affinity: &AffinityMap,
    client: IpAddr,
    cookie_token: Option<&str>,
    per_connection: Option<u16>,
    exclude: &[u32],
    now_ns: u64,
) -> Option<Choice> {
    if let Some(token) = cookie_token
        && let Some((id, b)) = routing.backends.iter().find(|(_, b)| b.token == token)
        && in_service(b)
        && !exclude.contains(id)
    {
        return Some(Choice {
            id: *id,
            backend: b.clone(),
            reason: Reason::Cookie,
        });
    }
    let key = Addr16::from_ip(client);
    if let Some(port) = per_connection {
        let mut spread = key;
        spread.words[0] ^= u32::from(port);
        return from_table(routing, &spread, exclude).map(|(id, backend)| Choice {
            id,
            backend,
            reason: Reason::Table,
        });
    }
    if let Some(a) = affinity.get(&key)
        && now_ns.saturating_sub(a.last_seen_ns) <= routing.affinity_timeout_ns
        && let Some(b) = routing.backends.get(&a.backend_id)
        && b.generation == a.generation
        && in_service(b)
        && !exclude.contains(&a.backend_id)
    {
        let choice = Choice {
            id: a.backend_id,
            backend: b.clone(),
            reason: Reason::Affinity,
        };
        affinity.set(
            &key,
            Affinity {
                last_seen_ns: now_ns,
                ..a
            },
        );
        return Some(choice);
    }
    let (id, b) = from_table(routing, &key, exclude)?;
    affinity.set(
        &key,
        Affinity {
            backend_id: id,
            generation: b.generation,
            last_seen_ns: now_ns,
        },
    );
    Some(Choice {
        id,
        backend: b,
        reason: Reason::Table,
    })
}

/// The table's backend for `key`: its own slot first; past excluded backends, the next slots.
fn from_table(routing: &Routing, key: &Addr16, exclude: &[u32]) -> Option<(u32, RouteBackend)> {
    let size = routing.table.len() as u32;
    if size == 0 {
        return None;
    }
    let start = table_slot(client_hash(key, routing.seed), size);
    let id = (0..size)
        .filter_map(|i| routing.table.get(((start + i) % size) as usize).copied())
        .find(|id| *id != NO_BACKEND && !exclude.contains(id))?;
    let b = routing.backends.get(&id)?;
    (b.state == BACKEND_UP).then(|| (id, b.clone()))
}
