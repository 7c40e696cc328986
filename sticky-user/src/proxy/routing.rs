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
    Addr16, BackendState, View,
    choice::{self, affinity_holds, by_affinity, client_key, in_slot, slot_of},
    maps::{Affinity, NO_BACKEND, Settings},
};

use super::cookie;
#[cfg(test)]
use crate::decision::settings;
use crate::{
    backends::BackendSet,
    decision::{Published, no_affinity},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackend {
    pub addr: SocketAddr,
    pub state: BackendState,
    pub generation: u32,
    /// The opaque cookie value naming this backend.
    pub token: String,
}

/// What the daemon last published, for the proxy tasks.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    pub table: Vec<u32>,
    pub set: BackendSet,
    /// The kernel program's settings: seed, affinity timeout, client key prefixes.
    pub settings: Settings,
    /// Cookie values by backend id.
    tokens: BTreeMap<u32, String>,
}

impl Routing {
    pub fn new(table: Vec<u32>, set: &BackendSet, settings: Settings, cookie_key: u64) -> Self {
        let tokens = set
            .iter()
            .map(|(id, s)| (id, cookie::backend_token(s.addr, cookie_key)))
            .collect();
        Self {
            table,
            set: set.clone(),
            settings,
            tokens,
        }
    }

    /// The decision's view of this state, with client affinity from `affinity`.
    fn view<A: Fn(&Addr16) -> Option<Affinity>>(&self, affinity: A) -> Published<'_, A> {
        Published::new(&self.set, &self.table, self.settings, affinity)
    }

    fn choice(&self, id: u32, reason: Reason) -> Option<Choice> {
        let b = self.set.get(id)?;
        Some(Choice {
            id,
            backend: RouteBackend {
                addr: b.addr,
                state: b.state,
                generation: b.generation,
                token: self.tokens.get(&id)?.clone(),
            },
            reason,
        })
    }
}

pub type SharedRouting = Arc<RwLock<Routing>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// An engine.io session id named the backend that made it.
    Sid,
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

/// Where the proxy reads and records client affinity: the map shared with the kernel.
pub trait AffinityStore {
    fn get(&self, client: &Addr16) -> Option<Affinity>;
    fn set(&self, client: &Addr16, value: Affinity);
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
}

impl AffinityStore for AffinityMap {
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
/// `sid` is the backend an engine.io session id belongs to, as an affinity of the session: it
/// wins while it holds, as a client's own affinity would, and leaves address affinity alone.
///
/// With `per_connection` (cookie mode, where many clients may share one address behind a
/// NAT), a request without a valid cookie is balanced by address *and* source port and leaves
/// the address's affinity alone: the cookie, not the address, keeps such clients sticky.
#[expect(
    clippy::too_many_arguments,
    reason = "each is one input of the decision"
)]
pub fn choose(
    routing: &Routing,
    affinity: &(impl AffinityStore + ?Sized),
    client: IpAddr,
    sid: Option<Affinity>,
    cookie_token: Option<&str>,
    per_connection: Option<u16>,
    exclude: &[u32],
    now_ns: u64,
) -> Option<Choice> {
    if let Some(held) = sid
        && affinity_holds(
            &held,
            &routing.set.entry(held.backend_id),
            now_ns,
            routing.settings.affinity_timeout_ns,
        )
        && !exclude.contains(&held.backend_id)
    {
        return routing.choice(held.backend_id, Reason::Sid);
    }
    // A cookie is an affinity the client carries: honoured while its backend honours one.
    if let Some(token) = cookie_token
        && let Some((&id, _)) = routing.tokens.iter().find(|(_, t)| *t == token)
        && routing.set.entry(id).honours_affinity()
        && !exclude.contains(&id)
    {
        return routing.choice(id, Reason::Cookie);
    }
    let key = client_key(&Addr16::from_ip(client), &routing.settings);
    if let Some(port) = per_connection {
        let mut spread = key;
        spread.words[0] ^= u32::from(port);
        let picked = from_table(&routing.view(no_affinity), &spread, exclude)?;
        return routing.choice(picked.id, Reason::Table);
    }
    let prior = affinity.get(&key);
    let view = routing.view(|_: &Addr16| prior);
    let picked = match by_affinity(&view, &key, view.settings(), now_ns) {
        Some(held) if !exclude.contains(&held.id) => held,
        _ => from_table(&view, &key, exclude)?,
    };
    let kept = Affinity {
        backend_id: picked.id,
        generation: picked.backend.generation,
        last_seen_ns: now_ns,
    };
    if !prior.is_some_and(|p| recent(&p, &kept, routing.settings.affinity_timeout_ns)) {
        affinity.set(&key, kept);
    }
    let reason = match picked.reason {
        choice::Reason::Affinity => Reason::Affinity,
        choice::Reason::Table => Reason::Table,
    };
    routing.choice(picked.id, reason)
}

/// Affinity is rewritten at most this often per client (and at most every 1/64 of the
/// timeout): a map update is a system call, and a client behind a keep-alive connection sends
/// thousands of requests a second.
const REFRESH_NS: u64 = 1_000_000_000;

/// Whether `held` already says what `now` would, seen recently enough to leave it: it then
/// expires at most `REFRESH_NS` (or 1/64 of the timeout) before the client's last request.
fn recent(held: &Affinity, now: &Affinity, timeout_ns: u64) -> bool {
    held.backend_id == now.backend_id
        && held.generation == now.generation
        && now.last_seen_ns.saturating_sub(held.last_seen_ns) < REFRESH_NS.min(timeout_ns / 64)
}

/// The table's backend for `key`: its own slot first; past excluded backends, the next slots.
fn from_table<A: Fn(&Addr16) -> Option<Affinity>>(
    view: &Published<'_, A>,
    key: &Addr16,
    exclude: &[u32],
) -> Option<choice::Choice> {
    let size = view.settings().table_size;
    if size == 0 {
        return None;
    }
    let start = slot_of(key, view.settings());
    let slot = (0..size).map(|i| (start + i) % size).find(|&slot| {
        view.table_entry(slot)
            .is_some_and(|id| id != NO_BACKEND && !exclude.contains(&id))
    })?;
    in_slot(view, slot)
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap as StdMap};

    use super::*;
    use crate::{addr::BackendSpec, table};

    const SEED: u32 = 11;
    const TIMEOUT: u64 = 1_000;
    const KEY: u64 = 5;

    #[derive(Default)]
    struct Store(RefCell<StdMap<Addr16, Affinity>>);

    impl AffinityStore for Store {
        fn get(&self, client: &Addr16) -> Option<Affinity> {
            self.0.borrow().get(client).copied()
        }
        fn set(&self, client: &Addr16, value: Affinity) {
            self.0.borrow_mut().insert(*client, value);
        }
    }

    fn routing(states: &[BackendState]) -> Routing {
        let specs: Vec<BackendSpec> = (0..states.len())
            .map(|i| format!("10.0.0.{}:80", i + 1).parse().unwrap())
            .collect();
        let mut set = BackendSet::default();
        set.reconcile(&specs).unwrap();
        for (spec, &state) in specs.iter().zip(states) {
            set.set_state(spec.addr, state);
        }
        let table = table::build(&set.members(), 101, SEED);
        Routing::new(table, &set, settings(SEED, TIMEOUT), KEY)
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, i])
    }

    fn pick(
        r: &Routing,
        store: &Store,
        c: IpAddr,
        cookie: Option<&str>,
        exclude: &[u32],
        now: u64,
    ) -> Option<(u32, Reason)> {
        choose(r, store, c, None, cookie, None, exclude, now).map(|c| (c.id, c.reason))
    }

    #[test]
    fn without_cookie_or_exclusions_the_proxy_decides_as_the_kernel_does() {
        use BackendState::*;
        let r = routing(&[Up, Draining, Up, Down, Up]);
        let store = Store::default();
        for i in 0..40 {
            let key = Addr16::from_ip(client(i));
            // Some clients affine to each backend, some stale.
            let id = u32::from(i) % 5;
            store.set(
                &key,
                Affinity {
                    backend_id: id,
                    generation: r.set.entry(id).generation + u32::from(i % 7 == 0),
                    last_seen_ns: if i % 3 == 0 { 0 } else { 900 },
                },
            );
            let want = r
                .view(|c: &Addr16| store.get(c))
                .choose(&key, 1_500)
                .map(|c| {
                    let reason = match c.reason {
                        choice::Reason::Affinity => Reason::Affinity,
                        choice::Reason::Table => Reason::Table,
                    };
                    (c.id, reason)
                });
            assert_eq!(pick(&r, &store, client(i), None, &[], 1_500), want, "{i}");
        }
    }

    #[test]
    fn clients_of_one_prefix_share_affinity() {
        use BackendState::*;
        let mut r = routing(&[Up, Up, Up]);
        r.settings.affinity_prefix_v4 = 24;
        let store = Store::default();
        let first = pick(&r, &store, client(1), None, &[], 10).unwrap();
        assert_eq!(first.1, Reason::Table);
        let key = client_key(&Addr16::from_ip(client(1)), &r.settings);
        assert_eq!(store.0.borrow().keys().copied().collect::<Vec<_>>(), [key]);
        // Another address of the /24 follows the first one's affinity, even to a backend the
        // table would not name for it.
        store.set(
            &key,
            Affinity {
                backend_id: (first.0 + 1) % 3,
                generation: r.set.entry((first.0 + 1) % 3).generation,
                last_seen_ns: 10,
            },
        );
        for i in [2, 77, 254] {
            let got = pick(&r, &store, client(i), None, &[], 20).unwrap();
            assert_eq!(got, ((first.0 + 1) % 3, Reason::Affinity), "{i}");
        }
        assert_eq!(store.0.borrow().len(), 1);
    }

    #[test]
    fn a_cookie_names_a_backend_while_it_honours_affinity() {
        use BackendState::*;
        let r = routing(&[Up, Draining, Down]);
        let store = Store::default();
        let token = |id: u32| r.tokens[&id].clone();
        let c = client(1);
        assert_eq!(
            pick(&r, &store, c, Some(&token(1)), &[], 0),
            Some((1, Reason::Cookie))
        );
        assert!(
            store.0.borrow().is_empty(),
            "a cookie leaves affinity alone"
        );
        let by_table = pick(&r, &store, c, None, &[], 0).unwrap();
        assert_eq!(by_table, (0, Reason::Table), "only backend 0 is up");
        // A down backend's cookie is ignored: the client's affinity, made just now, decides.
        assert_eq!(
            pick(&r, &store, c, Some(&token(2)), &[], 0),
            Some((0, Reason::Affinity))
        );
        assert_eq!(
            pick(&r, &store, c, Some(&token(1)), &[1], 0).unwrap().1,
            Reason::Affinity
        );
        assert_eq!(pick(&r, &store, c, Some("bogus"), &[], 0).unwrap().0, 0);
    }

    #[test]
    fn affinity_is_refreshed_and_an_excluded_backend_skipped() {
        use BackendState::*;
        let r = routing(&[Up, Up, Up]);
        let store = Store::default();
        let c = client(7);
        let key = Addr16::from_ip(c);
        let (first, reason) = pick(&r, &store, c, None, &[], 100).unwrap();
        assert_eq!(reason, Reason::Table);
        assert_eq!(store.get(&key).unwrap().last_seen_ns, 100);
        assert_eq!(
            pick(&r, &store, c, None, &[], 1_100),
            Some((first, Reason::Affinity))
        );
        assert_eq!(store.get(&key).unwrap().last_seen_ns, 1_100);
        // The affine backend refused: the next table slot's backend, and the client follows.
        let (next, reason) = pick(&r, &store, c, None, &[first], 1_200).unwrap();
        assert_ne!(next, first);
        assert_eq!(reason, Reason::Table);
        assert_eq!(store.get(&key).unwrap().backend_id, next);
        assert_eq!(pick(&r, &store, c, None, &[0, 1, 2], 1_300), None);
    }

    #[test]
    fn affinity_seen_just_now_is_not_rewritten() {
        use BackendState::*;
        let r = routing(&[Up, Up, Up]);
        let store = Store::default();
        let c = client(8);
        let key = Addr16::from_ip(c);
        let (first, _) = pick(&r, &store, c, None, &[], 100).unwrap();
        // Within 1/64 of the timeout: the same backend, the map left as it was.
        let soon = 100 + TIMEOUT / 64 - 1;
        assert_eq!(
            pick(&r, &store, c, None, &[], soon),
            Some((first, Reason::Affinity))
        );
        assert_eq!(store.get(&key).unwrap().last_seen_ns, 100);
        let later = 100 + TIMEOUT / 64;
        pick(&r, &store, c, None, &[], later).unwrap();
        assert_eq!(store.get(&key).unwrap().last_seen_ns, later);
        // Another backend (the affine one refused) is written at once, however soon.
        let (next, _) = pick(&r, &store, c, None, &[first], later + 1).unwrap();
        assert_eq!(store.get(&key).unwrap().backend_id, next);
        assert_eq!(store.get(&key).unwrap().last_seen_ns, later + 1);
    }

    #[test]
    fn a_sid_names_its_backend_while_that_holds() {
        use BackendState::*;
        let r = routing(&[Up, Up, Down]);
        let store = Store::default();
        let c = client(9);
        let session = |id: u32, at: u64| Affinity {
            backend_id: id,
            generation: r.set.entry(id).generation,
            last_seen_ns: at,
        };
        let by_sid = |s: Affinity, now: u64, exclude: &[u32]| {
            choose(&r, &store, c, Some(s), None, None, exclude, now).map(|c| (c.id, c.reason))
        };
        let own = pick(&r, &store, c, None, &[], 0).unwrap().0;
        let other = 1 - own;
        store.0.borrow_mut().clear();
        assert_eq!(
            by_sid(session(other, 0), 10, &[]),
            Some((other, Reason::Sid))
        );
        assert!(
            store.0.borrow().is_empty(),
            "a sid leaves address affinity alone"
        );
        // Stale, down, excluded or of another generation: the normal choice.
        assert_eq!(by_sid(session(other, 0), TIMEOUT + 1, &[]).unwrap().0, own);
        assert_eq!(by_sid(session(2, 0), 10, &[]).unwrap().1, Reason::Affinity);
        assert_eq!(by_sid(session(other, 0), 10, &[other]).unwrap().0, own);
        let mut old = session(other, 0);
        old.generation += 1;
        assert_eq!(by_sid(old, 10, &[]).unwrap().0, own);
    }

    #[test]
    fn per_connection_spreads_by_port_and_leaves_affinity_alone() {
        use BackendState::*;
        let r = routing(&[Up, Up, Up, Up]);
        let store = Store::default();
        let ids: std::collections::BTreeSet<u32> = (40_000..40_064)
            .map(|port| {
                let got = choose(&r, &store, client(3), None, None, Some(port), &[], 0).unwrap();
                assert_eq!(got.reason, Reason::Table);
                got.id
            })
            .collect();
        assert!(ids.len() > 1, "one address, many connections: {ids:?}");
        assert!(store.0.borrow().is_empty());
    }
}
