//! Typed handles on the loaded maps. [`MapReader`] owns its own descriptors, so status and
//! metrics walk the maps on a blocking thread while the daemon loop keeps the object.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use super::batch;
use anyhow::{Context as _, bail};
use aya::{
    Ebpf, Pod,
    maps::{HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
};
use sticky_common::{
    Addr16,
    maps::{self as names, Affinity, BackendStats, COUNTER_COUNT, Flow, FlowKey, MAX_BACKENDS},
};

/// Global counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT as usize],
}

/// A second handle on map `name` of `ebpf`: a duplicated descriptor of the same kernel map,
/// owned, so it can leave the thread that holds the object.
pub(super) fn duplicate(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let fd = map_data(ebpf, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicate the descriptor of {name}"))?;
    Ok(Map::from_map_data(MapData::from_fd(fd)?)?)
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a MapData> {
    match ebpf
        .map(name)
        .with_context(|| format!("map {name} missing"))?
    {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => Ok(d),
        _ => bail!("map {name} is of a kind sticky does not declare"),
    }
}

/// Every entry of `map`.
fn whole<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    let mut out = Vec::new();
    each(map, |k, v| out.push((*k, *v)));
    out
}

/// Hands every entry of `map` to `f`: in batches, or entry by entry where the kernel has no
/// batch reads. A batch walk that fails half-way ends there (the next walk reads anew).
fn each<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, mut f: impl FnMut(&K, &V)) {
    match batch::for_each(map.map(), &mut f) {
        Ok(_) => {}
        Err((e, 0)) => {
            tracing::debug!("batch read refused ({e}): reading entry by entry");
            for (k, v) in map.iter().filter_map(Result::ok) {
                f(&k, &v);
            }
        }
        Err((e, read)) => {
            tracing::warn!("a map walk stopped after {read} entries ({e}): counts are short");
        }
    }
}

/// Read-only handles on the maps status reads; `Send + Sync`, each walk a map read once.
pub struct MapReader {
    affinity: HashMap<MapData, Addr16, Affinity>,
    flows: HashMap<MapData, FlowKey, Flow>,
    new_flows: HashMap<MapData, FlowKey, Flow>,
    counters: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, BackendStats>,
    /// Every per-instance map, for the memory the kernel charges.
    all: Vec<(&'static str, OwnedFd)>,
}

impl MapReader {
    pub(super) fn new(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let all = names::ALL_MAPS
            .iter()
            .map(|&name| {
                let fd = map_data(ebpf, name)?.fd().as_fd().try_clone_to_owned()?;
                Ok((name, fd))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            affinity: HashMap::try_from(duplicate(ebpf, names::AFFINITY)?)?,
            flows: HashMap::try_from(duplicate(ebpf, names::FLOWS)?)?,
            new_flows: HashMap::try_from(duplicate(ebpf, names::NEW_FLOWS)?)?,
            counters: PerCpuArray::try_from(duplicate(ebpf, names::COUNTERS)?)?,
            stats: PerCpuArray::try_from(duplicate(ebpf, names::BACKEND_STATS)?)?,
            all,
        })
    }

    /// Every client-affinity entry (a map walk: for status and previews, not hot paths).
    pub fn affinity_entries(&self) -> Vec<(Addr16, Affinity)> {
        whole(&self.affinity)
    }

    pub fn affinity_of(&self, client: &Addr16) -> anyhow::Result<Option<Affinity>> {
        match self.affinity.get(client, 0) {
            Ok(a) => Ok(Some(a)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands every client-affinity entry to `f`, keeping none.
    pub fn each_affinity(&self, f: impl FnMut(&Addr16, &Affinity)) {
        each(&self.affinity, f);
    }

    /// Hands every established flow-table entry (both directions) to `f`, keeping none.
    pub fn each_flow(&self, f: impl FnMut(&FlowKey, &Flow)) {
        each(&self.flows, f);
    }

    /// Every established flow-table entry (both directions).
    pub fn flow_entries(&self) -> Vec<(FlowKey, Flow)> {
        whole(&self.flows)
    }

    /// The keys of the new-flow table (flows in their handshake, and confirmed ones not yet
    /// aged out).
    pub fn new_flow_keys(&self) -> Vec<FlowKey> {
        whole(&self.new_flows).into_iter().map(|(k, _)| k).collect()
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let mut out = Counters::default();
        for (i, v) in out.values.iter_mut().enumerate() {
            *v = self.counters.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Per-backend packets, bytes and new flows, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> anyhow::Result<BackendStats> {
        if id >= MAX_BACKENDS {
            bail!("backend id {id} out of range");
        }
        Ok(self
            .stats
            .get(&id, 0)?
            .iter()
            .fold(BackendStats::default(), |a, s| BackendStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                new_flows: a.new_flows + s.new_flows,
                refused: a.refused + s.refused,
            }))
    }

    /// Memory the kernel charges for each of the pinned (per-instance) maps, from their
    /// fdinfo: what `max-flows`, `max-new-flows`, `max-clients` and the table size cost.
    pub fn map_memory(&self) -> anyhow::Result<Vec<MapMemory>> {
        self.all
            .iter()
            .map(|(name, fd)| {
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
                    .with_context(|| format!("read fdinfo of {name}"))?;
                Ok(MapMemory::from_fdinfo(name, &info))
            })
            .collect()
    }
}

/// One map's size and the memory the kernel charges for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapMemory {
    pub name: String,
    pub max_entries: u64,
    /// `memlock` of the map's fdinfo.
    pub bytes: u64,
}

impl MapMemory {
    /// Reads `max_entries:` and `memlock:` from a map's `/proc/PID/fdinfo/FD` text.
    pub fn from_fdinfo(name: &str, info: &str) -> Self {
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            name: name.to_string(),
            max_entries: field("max_entries:"),
            bytes: field("memlock:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_memory_reads_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\n\
                    key_size:\t40\nvalue_size:\t32\nmax_entries:\t262144\nmap_flags:\t0x0\n\
                    map_extra:\t0x0\nmemlock:\t29360128\nmap_id:\t12\nfrozen:\t0\n";
        let m = MapMemory::from_fdinfo("STICKY_FLOWS", info);
        assert_eq!((m.max_entries, m.bytes), (262_144, 29_360_128));
        assert_eq!(MapMemory::from_fdinfo("X", "garbage").bytes, 0);
    }
}
