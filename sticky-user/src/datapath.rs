//! The loaded eBPF object: attaching the tc programs and writing the maps.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use sticky_common::{
    Addr16,
    maps::{
        self as names, Affinity, BackendStats, COUNTER_COUNT, Flow, FlowKey, MAX_BACKENDS,
        PROTO_TCP, Settings, Vip, VipKey,
    },
};

use crate::{backends::BackendSet, config::Config, object, table};

pub struct Datapath {
    ebpf: Ebpf,
    settings: Settings,
    pins: Option<Pins>,
    /// Whether the maps were adopted from a previous daemon's pins.
    adopted: bool,
}

/// Where an instance pins its maps and tc links: `/sys/fs/bpf/sticky/<instance>/`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub const ROOT: &str = "/sys/fs/bpf/sticky";

    pub fn for_instance(instance: &str) -> Self {
        Self {
            dir: Path::new(Self::ROOT).join(instance),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn link(&self, iface: &str, kind: TcAttachType) -> PathBuf {
        let dir = if kind == TcAttachType::Ingress {
            "ingress"
        } else {
            "egress"
        };
        self.dir.join("links").join(format!("{iface}-{dir}"))
    }

    /// Whether a previous daemon left pinned state here.
    pub fn exist(&self) -> bool {
        self.map(names::SETTINGS).exists()
    }

    /// Detaches every pinned link and removes every pin of the instance.
    pub fn remove(&self) -> anyhow::Result<()> {
        let links = self.dir.join("links");
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                let path = entry.path();
                match PinnedLink::from_pin(&path) {
                    Ok(link) => drop(
                        link.unpin()
                            .with_context(|| format!("unpin {}", path.display()))?,
                    ),
                    Err(_) => std::fs::remove_file(&path)
                        .with_context(|| format!("remove {}", path.display()))?,
                }
            }
        }
        let maps = self.dir.join("maps");
        if let Ok(entries) = std::fs::read_dir(&maps) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("remove {}", entry.path().display()))?;
            }
        }
        for dir in [links, maps, self.dir.clone()] {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// Global counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT as usize],
}

impl Datapath {
    /// Loads the object sized for `config` and loads (not attaches) its programs.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        Self::load_with(config, None)
    }

    /// Loads with maps pinned under `pins`: the first daemon of an instance creates and pins
    /// them, later ones adopt them (flows and affinity survive restarts and upgrades).
    pub fn load_with(config: &Config, pins: Option<Pins>) -> anyhow::Result<Self> {
        let bytes = object::bytes()?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(names::TABLE, 2 * config.table_size)
            .map_max_entries(names::FLOWS, config.max_flows)
            .map_max_entries(names::NEW_FLOWS, config.max_new_flows)
            .map_max_entries(names::AFFINITY, config.max_clients);
        let mut adopted = false;
        let mut pinned_settings = None;
        if let Some(pins) = &pins {
            std::fs::create_dir_all(pins.dir.join("maps"))
                .and_then(|()| std::fs::create_dir_all(pins.dir.join("links")))
                .with_context(|| {
                    format!(
                        "create pin folder {} (is bpffs mounted?)",
                        pins.dir.display()
                    )
                })?;
            adopted = pins.exist();
            if adopted {
                pinned_settings = Some(read_pinned_settings(&pins.map(names::SETTINGS))?);
            }
            for name in names::ALL_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        if let Some(old) = pinned_settings
            && old.table_size != config.table_size
        {
            bail!(
                "instance '{}' has pinned maps with table-size {} (asked: {}): stop it with \
                 `sticky stop --instance {}` first",
                config.instance,
                old.table_size,
                config.table_size,
                config.instance
            );
        }
        let mut ebpf = loader.load(bytes).map_err(explain_load_error)?;
        for name in [names::PROG_INGRESS, names::PROG_EGRESS] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("load program {name} (verifier)"))?;
        }
        let settings = Settings {
            table_size: config.table_size,
            // Adopted maps: keep the live half live, the next table goes to the other.
            active_table: pinned_settings.map_or(0, |s| s.active_table),
            hash_seed: config.seed,
            _pad0: 0,
            affinity_timeout_ns: u64::try_from(config.affinity_timeout.as_nanos())
                .unwrap_or(u64::MAX),
        };
        let mut dp = Self {
            ebpf,
            settings,
            pins,
            adopted,
        };
        dp.write_settings()?;
        dp.set_vips(&config.vips)?;
        Ok(dp)
    }

    /// Attaches ingress (DNAT) and egress (reverse NAT) on `iface` (tcx on kernels ≥ 6.6).
    /// With pins, a link a previous daemon pinned is swapped to the new program atomically
    /// (no packet sees no program); a new link is pinned so it outlives this process.
    pub fn attach(&mut self, iface: &str) -> anyhow::Result<()> {
        for (name, kind) in [
            (names::PROG_EGRESS, TcAttachType::Egress),
            (names::PROG_INGRESS, TcAttachType::Ingress),
        ] {
            let pin = self.pins.as_ref().map(|p| p.link(iface, kind));
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            match pin {
                Some(pin) if pin.exists() => {
                    let link = PinnedLink::from_pin(&pin)
                        .with_context(|| format!("open pinned link {}", pin.display()))?;
                    let link =
                        SchedClassifierLink::try_from(FdLink::from(link)).with_context(|| {
                            format!("pinned link {} is not a tc link", pin.display())
                        })?;
                    prog.attach_to_link(link)
                        .with_context(|| format!("swap {name} into the pinned link on {iface}"))?;
                }
                Some(pin) => {
                    let id = prog
                        .attach(iface, kind)
                        .with_context(|| format!("attach {name} to tc {kind:?} on {iface}"))?;
                    let link = prog.take_link(id)?;
                    let link = FdLink::try_from(link)
                        .context("tc link is not an fd link (tcx needs Linux 6.6+ for pinning)")?;
                    link.pin(&pin)
                        .with_context(|| format!("pin link {}", pin.display()))?;
                }
                None => {
                    prog.attach(iface, kind)
                        .with_context(|| format!("attach {name} to tc {kind:?} on {iface}"))?;
                }
            }
        }
        Ok(())
    }

    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }

    /// Every `BACKENDS` entry: what a previous daemon published, for adopting its ids.
    pub fn read_backends(&self) -> anyhow::Result<Vec<sticky_common::maps::Backend>> {
        let map: Array<&MapData, sticky_common::maps::Backend> = Array::try_from(
            self.ebpf
                .map(names::BACKENDS)
                .context("backend map missing")?,
        )?;
        map.iter().map(|r| r.map_err(Into::into)).collect()
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn write_settings(&mut self) -> anyhow::Result<()> {
        let mut map: Array<&mut MapData, Settings> = Array::try_from(
            self.ebpf
                .map_mut(names::SETTINGS)
                .context("settings map missing")?,
        )?;
        map.set(0, self.settings, 0).context("write settings")?;
        Ok(())
    }

    fn set_vips(&mut self, vips: &[std::net::SocketAddr]) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, VipKey, Vip> =
            HashMap::try_from(self.ebpf.map_mut(names::VIPS).context("vip map missing")?)?;
        for (i, vip) in vips.iter().enumerate() {
            let key = VipKey {
                addr: Addr16::from_ip(vip.ip()),
                port_be: vip.port().to_be(),
                proto: PROTO_TCP,
                _pad0: 0,
            };
            map.insert(key, Vip { index: i as u32 }, 0)
                .with_context(|| format!("add VIP {vip}"))?;
        }
        Ok(())
    }

    /// Publishes `set`: backend entries first, then the new table into the idle half, then one
    /// settings write flips lookups to it, then removed backends are cleared. A lookup never
    /// sees a half-written table or a table naming a cleared backend.
    pub fn apply(&mut self, set: &BackendSet, removed: &[u32]) -> anyhow::Result<Vec<u32>> {
        {
            let mut backends: Array<&mut MapData, sticky_common::maps::Backend> = Array::try_from(
                self.ebpf
                    .map_mut(names::BACKENDS)
                    .context("backend map missing")?,
            )?;
            for (id, _) in set.iter() {
                backends
                    .set(id, set.entry(id), 0)
                    .context("write backend")?;
            }
        }
        let size = self.settings.table_size;
        let slots = table::build(&set.members(), size, self.settings.hash_seed);
        let idle = 1 - self.settings.active_table.min(1);
        {
            let mut map: Array<&mut MapData, u32> = Array::try_from(
                self.ebpf
                    .map_mut(names::TABLE)
                    .context("table map missing")?,
            )?;
            let base = idle * size;
            for (i, id) in slots.iter().enumerate() {
                map.set(base + i as u32, id, 0)
                    .context("write table slot")?;
            }
        }
        self.settings.active_table = idle;
        self.write_settings()?;
        let mut backends: Array<&mut MapData, sticky_common::maps::Backend> = Array::try_from(
            self.ebpf
                .map_mut(names::BACKENDS)
                .context("backend map missing")?,
        )?;
        for &id in removed {
            backends
                .set(id, set.entry(id), 0)
                .context("clear backend")?;
        }
        Ok(slots)
    }

    /// Every client-affinity entry (a map walk: for status and previews, not hot paths).
    pub fn affinity_entries(&self) -> anyhow::Result<Vec<(Addr16, Affinity)>> {
        let map: HashMap<&MapData, Addr16, Affinity> = HashMap::try_from(
            self.ebpf
                .map(names::AFFINITY)
                .context("affinity map missing")?,
        )?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    pub fn affinity_of(&self, client: &Addr16) -> anyhow::Result<Option<Affinity>> {
        let map: HashMap<&MapData, Addr16, Affinity> = HashMap::try_from(
            self.ebpf
                .map(names::AFFINITY)
                .context("affinity map missing")?,
        )?;
        match map.get(client, 0) {
            Ok(a) => Ok(Some(a)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every established flow-table entry (both directions).
    pub fn flow_entries(&self) -> anyhow::Result<Vec<(FlowKey, Flow)>> {
        self.entries_of(names::FLOWS)
    }

    /// The keys of the new-flow table (flows in their handshake, and confirmed ones not yet
    /// aged out): a key walk, half the syscalls of reading the values too.
    pub fn new_flow_keys(&self) -> anyhow::Result<Vec<FlowKey>> {
        let map: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(
            self.ebpf
                .map(names::NEW_FLOWS)
                .context("new-flow map missing")?,
        )?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    fn entries_of(&self, name: &str) -> anyhow::Result<Vec<(FlowKey, Flow)>> {
        let map: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(
            self.ebpf
                .map(name)
                .with_context(|| format!("{name} missing"))?,
        )?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Forgets every flow of backend `id`, established or new: their next packets are
    /// balanced anew (the old connections end with a reset from the new backend). Used when a
    /// drain deadline passes.
    pub fn purge_flows(&mut self, id: u32) -> anyhow::Result<usize> {
        let mut purged = 0;
        for name in [names::FLOWS, names::NEW_FLOWS] {
            let doomed: Vec<FlowKey> = self
                .entries_of(name)?
                .into_iter()
                .filter(|(_, f)| f.backend_id == id)
                .map(|(k, _)| k)
                .collect();
            let mut map: HashMap<&mut MapData, FlowKey, Flow> = HashMap::try_from(
                self.ebpf
                    .map_mut(name)
                    .with_context(|| format!("{name} missing"))?,
            )?;
            for key in &doomed {
                let _ = map.remove(key);
            }
            if name == names::FLOWS {
                purged = doomed.len();
            }
        }
        Ok(purged)
    }

    /// Memory the kernel charges for each of the pinned (per-instance) maps, from their
    /// fdinfo: what `max-flows`, `max-new-flows`, `max-clients` and the table size cost.
    pub fn map_memory(&self) -> anyhow::Result<Vec<MapMemory>> {
        names::ALL_MAPS
            .iter()
            .map(|&name| {
                let map = self
                    .ebpf
                    .map(name)
                    .with_context(|| format!("{name} missing"))?;
                let fd = map_fd(map);
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                    .with_context(|| format!("read fdinfo of {name}"))?;
                Ok(MapMemory::from_fdinfo(name, &info))
            })
            .collect()
    }

    pub fn table_size(&self) -> u32 {
        self.settings.table_size
    }

    pub fn seed(&self) -> u32 {
        self.settings.hash_seed
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).context("counters missing")?)?;
        let mut out = Counters::default();
        for (i, v) in out.values.iter_mut().enumerate() {
            *v = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Per-backend packets, bytes and new flows, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> anyhow::Result<BackendStats> {
        if id >= MAX_BACKENDS {
            bail!("backend id {id} out of range");
        }
        let map: PerCpuArray<&MapData, BackendStats> = PerCpuArray::try_from(
            self.ebpf
                .map(names::BACKEND_STATS)
                .context("backend stats missing")?,
        )?;
        Ok(map
            .get(&id, 0)?
            .iter()
            .fold(BackendStats::default(), |a, s| BackendStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                new_flows: a.new_flows + s.new_flows,
                refused: a.refused + s.refused,
            }))
    }

    pub fn affinity_timeout(&self) -> Duration {
        Duration::from_nanos(self.settings.affinity_timeout_ns)
    }
}

fn read_pinned_settings(path: &Path) -> anyhow::Result<Settings> {
    let data =
        MapData::from_pin(path).with_context(|| format!("open pinned {}", path.display()))?;
    let map = aya::maps::Map::Array(data);
    let array: Array<MapData, Settings> = Array::try_from(map)?;
    Ok(array.get(&0, 0)?)
}

fn explain_load_error(e: aya::EbpfError) -> anyhow::Error {
    let text = e.to_string();
    let denied = text.contains("Operation not permitted") || text.contains("EPERM");
    if denied {
        anyhow::anyhow!(
            "loading the eBPF object was refused ({text}): sticky needs root, or CAP_BPF and \
             CAP_NET_ADMIN"
        )
    } else {
        anyhow::Error::new(e).context("load the eBPF object")
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

fn map_fd(map: &aya::maps::Map) -> std::os::fd::RawFd {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let data: &MapData = match map {
        aya::maps::Map::Array(d)
        | aya::maps::Map::HashMap(d)
        | aya::maps::Map::LruHashMap(d)
        | aya::maps::Map::PerCpuArray(d)
        | aya::maps::Map::RingBuf(d) => d,
        _ => return -1,
    };
    data.fd().as_fd().as_raw_fd()
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
