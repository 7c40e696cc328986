//! engine.io / socket.io session ids: which backend owns a `sid`, learnt from the handshake
//! response (or any request carrying the sid that its backend answered), so a session's
//! later requests reach it whatever address they come from.
//!
//! The backend picks the sid, so sticky cannot make it a token it could verify on any node:
//! the table is per node. It is bounded: two generations of at most half the entries each,
//! the older dropped when the newer fills or is older than the affinity timeout, so an entry
//! lives while it is used and at most about twice the timeout after.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, RandomState},
    sync::Mutex,
};

use sticky_common::maps::Affinity;

/// Entries kept at most (the whole table).
pub const MAX_ENTRIES: usize = 1 << 20;
const SHARDS: usize = 16;
/// Longer values are not sids engine.io makes (20 characters): not recorded.
const MAX_SID: usize = 64;

pub struct SidTable {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_generation: usize,
    timeout_ns: u64,
}

#[derive(Default)]
struct Shard {
    current: HashMap<u64, Affinity>,
    previous: HashMap<u64, Affinity>,
    started_ns: u64,
}

impl SidTable {
    pub fn new(max_entries: usize, timeout_ns: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_generation: (max_entries / SHARDS / 2).max(1),
            timeout_ns,
        }
    }

    fn shard(&self, sid: &str) -> Option<(u64, &Mutex<Shard>)> {
        if sid.is_empty() || sid.len() > MAX_SID {
            return None;
        }
        // A keyed hash: nobody can aim a made-up sid at another session's entry.
        let key = self.hasher.hash_one(sid);
        Some((key, &self.shards[(key as usize) % SHARDS]))
    }

    /// The backend that owns `sid`, as the affinity it makes (the caller checks it holds).
    pub fn get(&self, sid: &str) -> Option<Affinity> {
        let (key, shard) = self.shard(sid)?;
        let shard = shard.lock().ok()?;
        shard
            .current
            .get(&key)
            .or_else(|| shard.previous.get(&key))
            .copied()
    }

    /// Records (or refreshes) that `sid` belongs to backend `backend_id` of `generation`.
    pub fn put(&self, sid: &str, backend_id: u32, generation: u32, now_ns: u64) {
        let Some((key, shard)) = self.shard(sid) else {
            return;
        };
        let Ok(mut shard) = shard.lock() else {
            return;
        };
        if shard.current.len() >= self.per_generation
            || now_ns.saturating_sub(shard.started_ns) > self.timeout_ns
        {
            shard.previous = std::mem::take(&mut shard.current);
            shard.started_ns = now_ns;
        }
        shard.previous.remove(&key);
        shard.current.insert(
            key,
            Affinity {
                backend_id,
                generation,
                last_seen_ns: now_ns,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

/// What an engine.io request's query says.
#[derive(Debug, PartialEq, Eq)]
pub struct EngineIo<'a> {
    /// The session it belongs to; `None` for a handshake.
    pub sid: Option<&'a str>,
    pub websocket: bool,
}

/// The engine.io parameters of a request target, `None` if it is not engine.io's (no `EIO`).
pub fn from_target(target: &str) -> Option<EngineIo<'_>> {
    let query = target.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    let (mut eio, mut sid, mut websocket) = (false, None, false);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => eio = true,
            "sid" if !v.is_empty() => sid = Some(v),
            "transport" => websocket = v == "websocket",
            _ => {}
        }
    }
    eio.then_some(EngineIo { sid, websocket })
}

/// The sid in a polling handshake's response body: engine.io v4 `0{"sid":…}`, or v3's
/// `<length>:0{"sid":…}`.
pub fn from_handshake(body: &[u8]) -> Option<String> {
    let body = match body.iter().position(|&b| b == b':') {
        Some(at) if at > 0 && body[..at].iter().all(u8::is_ascii_digit) => &body[at + 1..],
        _ => body,
    };
    let json = body.strip_prefix(b"0")?;
    #[derive(serde::Deserialize)]
    struct Open {
        sid: String,
    }
    let open = serde_json::Deserializer::from_slice(json)
        .into_iter::<Open>()
        .next()?
        .ok()?;
    Some(open.sid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_queries() {
        let q = |t| from_target(t);
        assert_eq!(
            q("/socket.io/?EIO=4&transport=polling&t=x"),
            Some(EngineIo {
                sid: None,
                websocket: false
            })
        );
        assert_eq!(
            q("/socket.io/?EIO=4&transport=websocket&sid=abc-_1"),
            Some(EngineIo {
                sid: Some("abc-_1"),
                websocket: true
            })
        );
        assert_eq!(q("/socket.io/?transport=polling&sid=abc"), None);
        assert_eq!(q("/socket.io/"), None);
        assert_eq!(q("/x?EIO=3&sid=&t=1").unwrap().sid, None);
    }

    #[test]
    fn handshake_bodies_v4_and_v3() {
        let v4 = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(from_handshake(v4).as_deref(), Some("lv_VI97HAXpY6yYWAAAC"));
        let v3 = br#"97:0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":5000}2:40"#;
        assert_eq!(from_handshake(v3).as_deref(), Some("abc"));
        assert_eq!(from_handshake(b"0{\"nosid\":1}"), None);
        assert_eq!(from_handshake(b"4hello"), None);
        assert_eq!(from_handshake(b""), None);
        assert_eq!(from_handshake(b"12:"), None);
    }

    #[test]
    fn bounded_and_refreshed() {
        let t = SidTable::new(64, 1_000);
        t.put("a", 1, 0, 0);
        assert_eq!(t.get("a").unwrap().backend_id, 1);
        assert!(t.get("b").is_none());
        for i in 0..10_000 {
            t.put(&format!("s{i}"), 2, 0, 10);
        }
        assert!(t.len() <= 64 + SHARDS, "{}", t.len());
        // Kept while used: refreshed entries survive many rotations.
        let t = SidTable::new(1 << 10, 100);
        for now in 0..50 {
            t.put("live", 3, 0, now * 10);
        }
        assert_eq!(t.get("live").unwrap().last_seen_ns, 490);
        t.put(&"x".repeat(MAX_SID + 1), 1, 0, 0);
        assert!(t.get(&"x".repeat(MAX_SID + 1)).is_none());
    }
}
