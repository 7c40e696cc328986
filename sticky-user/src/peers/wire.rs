//! The affinity exchange's datagram: a header naming the sender's boot and sequence number,
//! affinity records, and an HMAC-SHA256 tag over all of it. Everything is checked before a
//! record is read: the size first (oversized or truncated datagrams are never parsed), then
//! the tag (constant time), then the replay window.
//!
//! ```text
//! 0   magic "STKY"            4
//! 4   version (1)             1
//! 5   kind (1: affinity)      1
//! 6   record count, BE        2
//! 8   sender boot id          8   random per daemon start
//! 16  sequence number, BE     8   strictly increasing per boot
//! 24  records                 40 each:
//!       client key            16  IPv6, or IPv4-mapped
//!       backend address       16  the backend as configured (ids are per node)
//!       backend port, BE      2
//!       reserved (0)          2
//!       age in ms, BE         4   since the client was last seen, when sent
//! ..  HMAC-SHA256 tag         32  over every byte before it
//! ```

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"STKY";
const VERSION: u8 = 1;
const KIND_AFFINITY: u8 = 1;
const HEADER: usize = 24;
const RECORD: usize = 40;
const TAG: usize = 32;
/// Records per datagram: the datagram stays under 1,200 bytes, so it is never fragmented on
/// any path IPv6 allows (minimum MTU 1,280).
pub const MAX_RECORDS: usize = 28;
/// The largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = HEADER + MAX_RECORDS * RECORD + TAG;
/// The smallest: a header and a tag, no records.
pub const MIN_DATAGRAM: usize = HEADER + TAG;
/// The shortest shared secret accepted, in bytes (HMAC-SHA256's block is 64; its output 32).
pub const MIN_KEY_BYTES: usize = 32;
/// How many boots per peer the replay window remembers: an old boot's datagrams stay refused
/// until that many newer boots of the same peer were seen.
const REMEMBERED_BOOTS: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret (`--peer-key-file`). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl Key {
    /// A key of at least [`MIN_KEY_BYTES`] bytes.
    pub fn new(bytes: Vec<u8>) -> Option<Self> {
        (bytes.len() >= MIN_KEY_BYTES).then_some(Self(bytes))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// One affinity: the client's key → its backend, last seen `age_ms` before the datagram left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub client: IpAddr,
    pub backend: SocketAddr,
    pub age_ms: u32,
}

/// A datagram's header fields that the replay window checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub boot_id: u64,
    pub seq: u64,
}

/// Why a datagram was refused. Each is counted under its [`Reject::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    #[error("datagram over {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("datagram shorter than its header and records say")]
    Truncated,
    #[error("not a sticky affinity datagram of a known version")]
    Malformed,
    #[error("authentication tag does not match (wrong key, or altered)")]
    BadMac,
    #[error("sequence number already seen or older (replay)")]
    Replay,
    #[error("from an address that is not a configured peer")]
    UnknownPeer,
    #[error("over the peer's rate")]
    RateLimited,
}

impl Reject {
    pub const ALL: [Reject; 7] = [
        Reject::Oversized,
        Reject::Truncated,
        Reject::Malformed,
        Reject::BadMac,
        Reject::Replay,
        Reject::UnknownPeer,
        Reject::RateLimited,
    ];

    /// The name status and metrics count it under.
    pub const fn name(self) -> &'static str {
        match self {
            Reject::Oversized => "oversized",
            Reject::Truncated => "truncated",
            Reject::Malformed => "malformed",
            Reject::BadMac => "bad_mac",
            Reject::Replay => "replay",
            Reject::UnknownPeer => "unknown_peer",
            Reject::RateLimited => "rate_limited",
        }
    }
}

/// Builds one datagram of at most [`MAX_RECORDS`] records (the rest are the caller's next
/// datagram's).
pub fn encode(key: &Key, header: Header, records: &[Record]) -> Vec<u8> {
    let records = &records[..records.len().min(MAX_RECORDS)];
    let mut out = Vec::with_capacity(HEADER + records.len() * RECORD + TAG);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(KIND_AFFINITY);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&header.boot_id.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    for r in records {
        out.extend_from_slice(&v6_bytes(r.client));
        out.extend_from_slice(&v6_bytes(r.backend.ip()));
        out.extend_from_slice(&r.backend.port().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&r.age_ms.to_be_bytes());
    }
    sign(key, out)
}

/// `body` with its tag appended.
pub fn sign(key: &Key, mut body: Vec<u8>) -> Vec<u8> {
    let mut mac = key.mac();
    mac.update(&body);
    body.extend_from_slice(&mac.finalize().into_bytes());
    body
}

/// Checks a datagram's size, layout and tag; the replay window is the caller's
/// ([`ReplayWindow`]), since it depends on the sender.
pub fn decode(key: &Key, datagram: &[u8]) -> Result<(Header, Vec<Record>), Reject> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(Reject::Oversized);
    }
    if datagram.len() < MIN_DATAGRAM {
        return Err(Reject::Truncated);
    }
    let count = usize::from(u16::from_be_bytes([datagram[6], datagram[7]]));
    if count > MAX_RECORDS {
        return Err(Reject::Malformed);
    }
    if datagram.len() != HEADER + count * RECORD + TAG {
        return Err(Reject::Truncated);
    }
    let (body, tag) = datagram.split_at(datagram.len() - TAG);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Reject::BadMac)?;
    // Authenticated from here on: a bad magic or version is a peer of another version.
    if &body[..4] != MAGIC || body[4] != VERSION || body[5] != KIND_AFFINITY {
        return Err(Reject::Malformed);
    }
    let word = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let header = Header {
        boot_id: word(8),
        seq: word(16),
    };
    let records = body[HEADER..].chunks_exact(RECORD);
    if records.clone().any(|r| r[34..36] != [0, 0]) {
        return Err(Reject::Malformed);
    }
    let records = records
        .map(|r| {
            let addr = |at: usize| ip_of(r[at..at + 16].try_into().expect("16 bytes"));
            Record {
                client: addr(0),
                backend: SocketAddr::new(addr(16), u16::from_be_bytes([r[32], r[33]])),
                age_ms: u32::from_be_bytes([r[36], r[37], r[38], r[39]]),
            }
        })
        .collect();
    Ok((header, records))
}

fn v6_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Per sender: the highest sequence number accepted from each of its last boots. A datagram
/// is accepted once, and only if its number is above every one accepted before from its boot.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    /// Boot id → highest sequence number, with the order boots were first seen in.
    boots: HashMap<u64, (u64, u64)>,
    seen: u64,
}

impl ReplayWindow {
    /// Accepts `h` (and remembers it) unless it repeats or precedes an accepted datagram;
    /// `Ok(true)` when it is the first of its boot (the peer started). Call only for
    /// authenticated datagrams: the window must not learn forged boots.
    pub fn accept(&mut self, h: Header) -> Result<bool, Reject> {
        if let Some((highest, _)) = self.boots.get_mut(&h.boot_id) {
            if h.seq <= *highest {
                return Err(Reject::Replay);
            }
            *highest = h.seq;
            return Ok(false);
        }
        self.seen += 1;
        self.boots.insert(h.boot_id, (h.seq, self.seen));
        if self.boots.len() > REMEMBERED_BOOTS
            && let Some(oldest) = self
                .boots
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(b, _)| *b)
        {
            self.boots.remove(&oldest);
        }
        Ok(true)
    }
}

/// A token bucket: `rate` datagrams a second on average, bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: std::time::Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + secs * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn key(b: u8) -> Key {
        Key::new(vec![b; 32]).unwrap()
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                client: if i % 2 == 0 {
                    IpAddr::from([198, 51, 100, i as u8])
                } else {
                    IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16])
                },
                backend: SocketAddr::from(([10, 0, 0, 1 + i as u8], 8080)),
                age_ms: 1000 * i as u32,
            })
            .collect()
    }

    const H: Header = Header {
        boot_id: 0x1234_5678_9abc_def0,
        seq: 7,
    };

    #[test]
    fn round_trips() {
        for n in [0, 1, 5, MAX_RECORDS] {
            let d = encode(&key(1), H, &records(n));
            assert!(d.len() <= MAX_DATAGRAM);
            assert_eq!(decode(&key(1), &d), Ok((H, records(n))));
        }
        // More than fit: the first MAX_RECORDS go.
        let d = encode(&key(1), H, &records(MAX_RECORDS + 3));
        assert_eq!(decode(&key(1), &d).unwrap().1, records(MAX_RECORDS));
        assert_eq!(MAX_DATAGRAM, 1176);
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused() {
        assert!(Key::new(vec![1; 31]).is_none());
        assert!(Key::new(Vec::new()).is_none());
        assert_eq!(format!("{:?}", key(9)), "Key(32 bytes)");
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let d = encode(&key(1), H, &records(3));
        assert_eq!(decode(&key(2), &d), Err(Reject::BadMac));
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let d = encode(&key(1), H, &records(2));
        for bit in 0..d.len() * 8 {
            let mut m = d.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            let got = decode(&key(1), &m);
            // Flips of the count change the expected length; every other flip breaks the tag.
            let want = match bit / 8 {
                6 | 7 if usize::from(u16::from_be_bytes([m[6], m[7]])) > MAX_RECORDS => {
                    Reject::Malformed
                }
                6 | 7 => Reject::Truncated,
                _ => Reject::BadMac,
            };
            assert_eq!(got, Err(want), "bit {bit}");
        }
    }

    #[test]
    fn truncated_and_oversized_datagrams_are_refused_unparsed() {
        let d = encode(&key(1), H, &records(3));
        for len in 0..d.len() {
            let got = decode(&key(1), &d[..len]);
            assert_eq!(got, Err(Reject::Truncated), "length {len}");
        }
        let mut long = d.clone();
        long.push(0);
        assert_eq!(decode(&key(1), &long), Err(Reject::Truncated));
        assert_eq!(
            decode(&key(1), &vec![0; MAX_DATAGRAM + 1]),
            Err(Reject::Oversized)
        );
        // A count above the limit in a datagram of legal size.
        let mut many = encode(&key(1), H, &records(1));
        many[6..8].copy_from_slice(&(MAX_RECORDS as u16 + 1).to_be_bytes());
        assert_eq!(decode(&key(1), &many), Err(Reject::Malformed));
    }

    #[test]
    fn authenticated_garbage_is_malformed() {
        let resign = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut d = encode(&key(1), H, &records(1));
            d.truncate(d.len() - TAG);
            edit(&mut d);
            decode(&key(1), &sign(&key(1), d))
        };
        assert!(resign(&|_| ()).is_ok());
        assert_eq!(resign(&|d| d[4] = 2), Err(Reject::Malformed), "version");
        assert_eq!(resign(&|d| d[0] = b'X'), Err(Reject::Malformed), "magic");
        assert_eq!(resign(&|d| d[5] = 9), Err(Reject::Malformed), "kind");
        assert_eq!(
            resign(&|d| d[HEADER + 35] = 1),
            Err(Reject::Malformed),
            "reserved"
        );
    }

    #[test]
    fn replays_and_old_sequence_numbers_are_refused() {
        let mut w = ReplayWindow::default();
        let at = |boot_id, seq| Header { boot_id, seq };
        assert_eq!(w.accept(at(1, 5)), Ok(true));
        assert_eq!(w.accept(at(1, 5)), Err(Reject::Replay));
        assert_eq!(w.accept(at(1, 4)), Err(Reject::Replay));
        assert_eq!(w.accept(at(1, 6)), Ok(false));
        // The peer restarted: a new boot starts its own numbers; the old boot stays closed.
        assert_eq!(w.accept(at(2, 1)), Ok(true));
        assert_eq!(w.accept(at(1, 6)), Err(Reject::Replay));
        assert_eq!(w.accept(at(1, 7)), Ok(false));
        // Only so many boots are remembered: the oldest is forgotten first.
        for boot in 3..3 + REMEMBERED_BOOTS as u64 {
            assert_eq!(w.accept(at(boot, 1)), Ok(true));
        }
        assert_eq!(w.boots.len(), REMEMBERED_BOOTS);
        assert!(!w.boots.contains_key(&1));
    }

    #[test]
    fn the_bucket_holds_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 5);
        let later = t0 + Duration::from_secs(1);
        let refill = (0..100).filter(|_| b.take(later)).count();
        assert_eq!(refill, 5, "capped at the burst");
        let mut b = TokenBucket::new(10.0, 1.0, t0);
        let spread = (1..=100)
            .filter(|i| b.take(t0 + Duration::from_millis(10 * i)))
            .count();
        assert_eq!(spread, 10, "10 a second over one second");
    }
}
