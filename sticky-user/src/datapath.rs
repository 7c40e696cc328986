//! The loaded eBPF object: attaching the tc programs and writing the maps.

use std::time::Duration;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
};
use sticky_common::{
    Addr16,
    maps::{
        self as names, BackendStats, COUNTER_COUNT, MAX_BACKENDS, PROTO_TCP, Settings, Vip, VipKey,
    },
};

use crate::{backends::BackendSet, config::Config, object, table};

pub struct Datapath {
    ebpf: Ebpf,
    settings: Settings,
}

/// Global counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT as usize],
}

impl Datapath {
    /// Loads the object sized for `config` and loads (not attaches) its programs.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        let bytes = object::bytes()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::TABLE, 2 * config.table_size)
            .map_max_entries(names::FLOWS, config.max_flows)
            .map_max_entries(names::AFFINITY, config.max_clients)
            .load(bytes)
            .map_err(explain_load_error)?;
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
            active_table: 0,
            hash_seed: config.seed,
            _pad0: 0,
            affinity_timeout_ns: u64::try_from(config.affinity_timeout.as_nanos())
                .unwrap_or(u64::MAX),
        };
        let mut dp = Self { ebpf, settings };
        dp.write_settings()?;
        dp.set_vips(&config.vips)?;
        Ok(dp)
    }

    /// Attaches ingress (DNAT) and egress (reverse NAT) on `iface` (tcx on kernels ≥ 6.6).
    pub fn attach(&mut self, iface: &str) -> anyhow::Result<()> {
        for (name, kind) in [
            (names::PROG_EGRESS, TcAttachType::Egress),
            (names::PROG_INGRESS, TcAttachType::Ingress),
        ] {
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            prog.attach(iface, kind)
                .with_context(|| format!("attach {name} to tc {kind:?} on {iface}"))?;
        }
        Ok(())
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
    pub fn apply(&mut self, set: &BackendSet, removed: &[u32]) -> anyhow::Result<()> {
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
        Ok(())
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
            }))
    }

    pub fn affinity_timeout(&self) -> Duration {
        Duration::from_nanos(self.settings.affinity_timeout_ns)
    }
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
