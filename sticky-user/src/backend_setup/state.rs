//! What `backend-setup` added, so `--undo` removes that and nothing else. One file per network
//! namespace under /run/sticky/, named by the namespace's inode: namespaces made by `ip netns
//! add` share the host's /run.

use std::{net::IpAddr, os::unix::fs::MetadataExt as _, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Result};

const DIR: &str = "/run/sticky";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Interfaces where setup attached the decapsulation.
    #[serde(default)]
    pub decap: Vec<String>,
    /// Interfaces where setup added the clsact qdisc (removed by undo).
    #[serde(default)]
    pub clsact: Vec<String>,
    /// VIPs setup put on `lo` (those already there are not recorded).
    #[serde(default)]
    pub vips_added: Vec<IpAddr>,
    /// Every VIP setup was given: the MSS clamp covers them all.
    #[serde(default)]
    pub vips: Vec<IpAddr>,
    /// Sysctls setup changed (path under /proc/sys) and their value before the first change.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Whether setup created the nftables table.
    #[serde(default)]
    pub nft_table: bool,
}

impl State {
    /// This namespace's file.
    pub fn path() -> Result<PathBuf> {
        let ns = "/proc/self/ns/net";
        let meta = std::fs::metadata(ns).map_err(|source| Error::File {
            path: ns.into(),
            source,
        })?;
        Ok(PathBuf::from(DIR).join(format!("backend-setup-net{}.json", meta.ino())))
    }

    /// The saved state, or an empty one.
    pub fn load() -> Result<Self> {
        let path = Self::path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Parse {
                what: path.display().to_string(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::File {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = Self::path()?;
        let file_err = |source| Error::File {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(DIR).map_err(file_err)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Parse {
            what: "state".into(),
            detail: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(file_err)
    }

    pub fn remove() -> Result<()> {
        let path = Self::path()?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::File {
                path: path.display().to_string(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Records a sysctl's value before setup changes it; a later run keeps the first value.
    pub fn remember_sysctl(&mut self, key: &str, previous: &str) {
        if !self.sysctls.iter().any(|(k, _)| k == key) {
            self.sysctls.push((key.into(), previous.into()));
        }
    }
}

/// A sysctl's current value (`key` as a path under /proc/sys, e.g. `net/ipv4/conf/all/…`).
pub fn read_sysctl(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| Error::File { path, source })
}

pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| Error::File { path, source })
}
