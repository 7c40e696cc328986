//! Affinity shared between nodes behind ECMP (`--peers`): each node sends the affinities its
//! kernel records to its peers over UDP, authenticated with a shared key, and writes theirs
//! into its own affinity map, so a client's new connections reach the same backend whichever
//! node they hit. Best effort and off the packet path: a node whose peers are unreachable
//! works alone as before. `wire` is the datagram and its checks, `sync` the daemon's task.

pub mod sync;
pub mod wire;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};

use self::wire::{Key, MIN_KEY_BYTES, Reject};
use crate::addr::{AddrError, parse_endpoint};

/// The exchange as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersConfig {
    /// Where this node receives, and the source of what it sends.
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub key: Key,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error(
        "peers without a key: give --peer-key-file PATH (a secret shared by every node, at \
         least {MIN_KEY_BYTES} bytes, mode 0600; e.g. `openssl rand -hex 32 > PATH`)"
    )]
    NoKey,
    #[error("--peers needs --peer-listen ADDR:PORT (where this node receives from its peers)")]
    NoListen,
    #[error("{0} without --peers: give the other nodes' ADDR:PORT with --peers")]
    NoPeers(&'static str),
    #[error("peers {0}")]
    Peer(AddrError),
    #[error("peer-listen {0}")]
    Listen(AddrError),
    #[error("peer {peer} and peer-listen {listen} are of different IP families")]
    MixedFamilies {
        peer: SocketAddr,
        listen: SocketAddr,
    },
    #[error("peer {0} is this node's own --peer-listen")]
    Itself(SocketAddr),
    #[error("peer-key-file {}: cannot read it: {source}", path.display())]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "peer-key-file {} is readable by every user (mode {mode:o}): `chmod 600` it",
        path.display()
    )]
    KeyWorldReadable { path: PathBuf, mode: u32 },
    #[error(
        "peer-key-file {} is empty: write a secret of at least {MIN_KEY_BYTES} bytes into it \
         (e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    KeyEmpty { path: PathBuf },
    #[error(
        "peer-key-file {} holds {len} bytes: at least {MIN_KEY_BYTES} are needed (e.g. \
         `openssl rand -hex 32`)",
        path.display()
    )]
    KeyTooShort { path: PathBuf, len: usize },
}

/// Checks the exchange's settings as a whole and reads the key; `None` when it is off.
pub fn validate(
    peers: &[String],
    listen: Option<&str>,
    key_file: Option<&str>,
) -> Result<Option<PeersConfig>, PeersError> {
    let peers: Vec<&str> = peers
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if peers.is_empty() {
        return match (listen, key_file) {
            (None, None) => Ok(None),
            (Some(_), _) => Err(PeersError::NoPeers("peer-listen")),
            (None, Some(_)) => Err(PeersError::NoPeers("peer-key-file")),
        };
    }
    let listen = parse_endpoint(listen.ok_or(PeersError::NoListen)?).map_err(PeersError::Listen)?;
    let peers = peers
        .into_iter()
        .map(|p| parse_endpoint(p).map_err(PeersError::Peer))
        .collect::<Result<Vec<_>, _>>()?;
    for &peer in &peers {
        if peer.is_ipv4() != listen.is_ipv4() {
            return Err(PeersError::MixedFamilies { peer, listen });
        }
        if peer == listen {
            return Err(PeersError::Itself(peer));
        }
    }
    let key_file = PathBuf::from(key_file.ok_or(PeersError::NoKey)?);
    let key = read_key(&key_file)?;
    Ok(Some(PeersConfig {
        listen,
        peers,
        key,
        key_file,
    }))
}

/// Reads the shared secret: the file's bytes less one trailing newline.
fn read_key(path: &Path) -> Result<Key, PeersError> {
    let read_err = |source| PeersError::KeyRead {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(PeersError::KeyWorldReadable {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let mut bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    let len = bytes.len();
    if len == 0 {
        return Err(PeersError::KeyEmpty {
            path: path.to_path_buf(),
        });
    }
    Key::new(bytes).ok_or_else(|| PeersError::KeyTooShort {
        path: path.to_path_buf(),
        len,
    })
}

/// The exchange's counters, shared by its task and the status snapshots.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub datagrams_sent: AtomicU64,
    pub records_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub datagrams_accepted: AtomicU64,
    pub records_applied: AtomicU64,
    /// Authentic records not applied: backend unknown here or not honouring affinity, stale,
    /// or a fresher local affinity to another backend.
    pub records_ignored: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
}

impl PeerStats {
    pub fn reject(&self, why: Reject) {
        let i = Reject::ALL.iter().position(|&r| r == why).unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self, config: &PeersConfig) -> PeersStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PeersStatus {
            listen: config.listen,
            peers: config.peers.clone(),
            datagrams_sent: get(&self.datagrams_sent),
            records_sent: get(&self.records_sent),
            send_errors: get(&self.send_errors),
            datagrams_accepted: get(&self.datagrams_accepted),
            records_applied: get(&self.records_applied),
            records_ignored: get(&self.records_ignored),
            rejected: Reject::ALL
                .iter()
                .zip(&self.rejected)
                .map(|(r, c)| (r.name().to_string(), get(c)))
                .collect(),
        }
    }
}

/// The exchange in `sticky status` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersStatus {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub datagrams_sent: u64,
    pub records_sent: u64,
    pub send_errors: u64,
    pub datagrams_accepted: u64,
    pub records_applied: u64,
    pub records_ignored: u64,
    /// Refused datagrams by reason (`oversized`, `truncated`, `malformed`, `bad_mac`,
    /// `replay`, `unknown_peer`, `rate_limited`); a refused datagram changes nothing.
    pub rejected: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn key_file(mode: u32, text: &[u8]) -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("key");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text)
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let p = path.display().to_string();
        (dir, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("sticky-peers-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn peers(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn off_unless_peers_are_given() {
        assert!(validate(&[], None, None).unwrap().is_none());
    }

    #[test]
    fn peers_comma_lists_and_repeats_with_a_good_key() {
        let (_d, k) = key_file(0o600, &[b'k'; 64]);
        let c = validate(
            &peers(&["10.0.0.2:7946,10.0.0.3:7946", "10.0.0.4:7946"]),
            Some("10.0.0.1:7946"),
            Some(&k),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.peers.len(), 3);
        let (_d, k) = key_file(0o640, b"0123456789abcdef0123456789abcdef\n");
        let c = validate(
            &peers(&["[fd00::2]:7946"]),
            Some("[fd00::1]:7946"),
            Some(&k),
        );
        assert!(c.unwrap().is_some());
    }

    #[test]
    fn bad_settings_are_named() {
        let msg = |p: &[&str], l: Option<&str>, k: Option<&str>| {
            validate(&peers(p), l, k).unwrap_err().to_string()
        };
        let (_d, good) = key_file(0o600, &[b'k'; 32]);
        let good = Some(good.as_str());
        let l = Some("10.0.0.1:7946");
        assert!(msg(&["10.0.0.2:7946"], l, None).starts_with("peers without a key"));
        assert!(msg(&["10.0.0.2:7946"], None, good).contains("--peer-listen"));
        assert!(msg(&[], l, None).contains("peer-listen without --peers"));
        assert!(
            msg(&["10.0.0.2"], l, good).contains("has no port"),
            "{}",
            msg(&["10.0.0.2"], l, good)
        );
        assert!(msg(&["nonsense:x"], l, good).starts_with("peers "));
        assert!(msg(&["[fd00::2]:7946"], l, good).contains("different IP families"));
        assert!(msg(&["10.0.0.1:7946"], l, good).contains("own --peer-listen"));
        let (_d, open) = key_file(0o644, &[b'k'; 32]);
        assert!(msg(&["10.0.0.2:7946"], l, Some(&open)).contains("readable by every user"));
        let (_d, empty) = key_file(0o600, b"\n");
        assert!(msg(&["10.0.0.2:7946"], l, Some(&empty)).contains("is empty"));
        let (_d, short) = key_file(0o600, b"secret\n");
        assert!(msg(&["10.0.0.2:7946"], l, Some(&short)).contains("holds 6 bytes"));
        assert!(msg(&["10.0.0.2:7946"], l, Some("/nonexistent/key")).contains("cannot read it"));
    }
}
