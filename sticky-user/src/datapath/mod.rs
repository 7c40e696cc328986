//! The loaded eBPF object: attaching the tc programs and writing the maps. The object stays
//! inside [`Datapath`]; callers get typed handles on its maps and programs.

mod batch;
mod maps;
mod node_addr;
mod pins;

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use sticky_common::{
    Addr16,
    maps::{
        self as names, Affinity, BackendStats, FLOW_FORWARD, Flow, FlowKey, Settings, Vip, VipKey,
    },
};

pub use self::{
    maps::{Counters, MapMemory, MapReader},
    pins::Pins,
};
use crate::{
    addr::VipAddr,
    backends::BackendSet,
    config::{Config, Forwarding, XdpMode},
    object,
    proxy::splice::Splicer,
    table,
};

pub struct Datapath {
    ebpf: Ebpf,
    settings: Settings,
    pins: Option<Pins>,
    /// Whether the maps were adopted from a previous daemon's pins.
    adopted: bool,
    reader: Arc<MapReader>,
    /// The kernel programs' error log (aya-log), until the daemon takes it to read it.
    log: Option<KernelLog>,
    forward: Forwarding,
    /// Per interface, where the DSR program runs: "xdp native", "xdp generic" or "tc".
    hooks: Vec<(String, &'static str)>,
    /// `--replies-any-node`: the VIPs backends' replies are rewritten to without flow state.
    reply_vips: Option<Vec<VipAddr>>,
}

/// aya-log's reader of the programs' log records, which it hands to `log` (and so `tracing`).
pub type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

impl Datapath {
    /// Loads the object sized for `config` and loads (not attaches) its programs.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        Self::load_with(config, None)
    }

    /// Loads with maps pinned under `pins`: the first daemon of an instance creates and pins
    /// them, later ones adopt them (flows and affinity survive restarts and upgrades).
    pub fn load_with(config: &Config, pins: Option<Pins>) -> anyhow::Result<Self> {
        let (dsr_source_v4, dsr_source_v6) = dsr_sources(config)?;
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
            pins.create()?;
            adopted = pins.exist();
            // Before anything is written to the adopted maps: a daemon of the other mode
            // would change what the running programs read.
            refuse_other_mode(pins, config)?;
            if adopted {
                pinned_settings = Some(pins.settings()?);
            }
            for name in names::ALL_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        if let (Some(old), Some(pins)) = (pinned_settings, &pins) {
            // Pinned maps are adopted as they are (sizes included): a size asked for that the
            // pins do not have would be silently ignored, so it is refused instead.
            let pinned = [
                ("table-size", old.table_size, config.table_size),
                (
                    "max-flows",
                    pins.max_entries(names::FLOWS)?,
                    config.max_flows,
                ),
                (
                    "max-new-flows",
                    pins.max_entries(names::NEW_FLOWS)?,
                    config.max_new_flows,
                ),
                (
                    "max-clients",
                    pins.max_entries(names::AFFINITY)?,
                    config.max_clients,
                ),
            ];
            if let Some((key, have, asked)) = pinned.into_iter().find(|(_, h, a)| h != a) {
                bail!(
                    "instance '{}' has pinned maps with {key} {have} (asked: {asked}): stop it \
                     with `sticky stop --instance {}` first (that ends its connections), or \
                     keep {key} {have}",
                    config.instance,
                    config.instance
                );
            }
        }
        let mut ebpf = loader.load(bytes).map_err(explain_load_error)?;
        // Taken before the programs load: they need the log map alive. Without it (an object
        // built without logging) the programs still run; only their error lines are lost.
        let log = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let classifiers: &[&str] = if config.forward.is_dsr() {
            &[names::PROG_DSR]
        } else {
            &[names::PROG_INGRESS, names::PROG_EGRESS]
        };
        for &name in classifiers {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("load program {name} (verifier)"))?;
        }
        if let Forwarding::Dsr { xdp, .. } = &config.forward
            && *xdp != XdpMode::Off
        {
            let prog: &mut Xdp = ebpf
                .program_mut(names::PROG_DSR_XDP)
                .context("program sticky_dsr_xdp missing from the object")?
                .try_into()?;
            prog.load()
                .context("load program sticky_dsr_xdp (verifier)")?;
        }
        let settings = Settings {
            table_size: config.table_size,
            // Adopted maps: keep the live half live, the next table goes to the other.
            active_table: pinned_settings.map_or(0, |s| s.active_table),
            hash_seed: config.seed,
            affinity_prefix_v4: config.affinity_prefix.v4,
            affinity_prefix_v6: config.affinity_prefix.v6,
            xdp_tx_by_redirect: u8::from(xdp_tx_by_redirect(config)),
            sync_events: u8::from(config.peers.is_some()),
            affinity_timeout_ns: u64::try_from(config.affinity_timeout.as_nanos())
                .unwrap_or(u64::MAX),
            dsr_source_v4,
            dsr_source_v6,
            udp_timeout_ns: u64::try_from(config.udp_timeout.as_nanos()).unwrap_or(u64::MAX),
        };
        let reader = Arc::new(MapReader::new(&ebpf)?);
        let mut dp = Self {
            ebpf,
            settings,
            pins,
            adopted,
            reader,
            log,
            forward: config.forward.clone(),
            hooks: Vec::new(),
            reply_vips: config.replies_any_node.then(|| config.vips.clone()),
        };
        dp.write_settings()?;
        dp.set_vips(&config.vips)?;
        Ok(dp)
    }

    /// Attaches the programs of the forwarding mode on `iface` (tcx on kernels ≥ 6.6): NAT,
    /// ingress (DNAT) and egress (reverse NAT); DSR, the encapsulating ingress on tc, and on
    /// XDP as asked. With pins, a link a previous daemon pinned is swapped to the new program
    /// atomically (no packet sees no program); a new link is pinned so it outlives this
    /// process. (Pins of the other mode were refused at load.)
    pub fn attach(&mut self, iface: &str) -> anyhow::Result<()> {
        let dsr = self.forward.is_dsr();
        let programs: &[(&str, TcAttachType)] = if dsr {
            &[(names::PROG_DSR, TcAttachType::Ingress)]
        } else {
            &[
                (names::PROG_EGRESS, TcAttachType::Egress),
                (names::PROG_INGRESS, TcAttachType::Ingress),
            ]
        };
        for &(name, kind) in programs {
            let pin = self.pins.as_ref().map(|p| {
                if dsr {
                    p.dsr_link(iface)
                } else {
                    p.link(iface, kind)
                }
            });
            self.attach_tc(iface, name, kind, pin)?;
        }
        if let Forwarding::Dsr { xdp, .. } = self.forward.clone() {
            let hook = self.attach_xdp(iface, xdp)?;
            self.hooks.push((iface.to_string(), hook));
        }
        Ok(())
    }

    /// Per interface, where the DSR program runs ("xdp native", "xdp generic", "tc").
    pub fn hooks(&self) -> &[(String, &'static str)] {
        &self.hooks
    }

    /// How the node forwards, for status: `nat`, or `dsr (eth0 xdp native)`.
    pub fn forwarding(&self) -> String {
        match self.forward {
            Forwarding::Nat if self.reply_vips.is_some() => "nat (replies through any node)".into(),
            Forwarding::Nat => "nat".into(),
            Forwarding::Dsr { .. } => {
                let hooks: Vec<String> =
                    self.hooks.iter().map(|(i, h)| format!("{i} {h}")).collect();
                format!("dsr ({})", hooks.join(", "))
            }
        }
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &str,
        kind: TcAttachType,
        pin: Option<std::path::PathBuf>,
    ) -> anyhow::Result<()> {
        let prog = self.classifier(name)?;
        match pin {
            Some(pin) if pin.exists() => {
                let link = PinnedLink::from_pin(&pin)
                    .with_context(|| format!("open pinned link {}", pin.display()))?;
                let link = SchedClassifierLink::try_from(FdLink::from(link))
                    .with_context(|| format!("pinned link {} is not a tc link", pin.display()))?;
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
        Ok(())
    }

    /// Attaches the DSR XDP program as `mode` asks; returns where DSR runs on `iface`.
    /// `auto` takes native XDP where the driver has it and leaves tc alone otherwise.
    fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<&'static str> {
        let (flags, label) = match mode {
            XdpMode::Off => return Ok("tc"),
            XdpMode::Auto | XdpMode::Native => (aya::programs::XdpMode::Driver, "xdp native"),
            XdpMode::Generic => (aya::programs::XdpMode::Skb, "xdp generic"),
        };
        let pin = self.pins.as_ref().map(|p| p.xdp_link(iface));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_DSR_XDP)
            .context("program sticky_dsr_xdp missing")?
            .try_into()?;
        if let Some(pin) = &pin
            && pin.exists()
        {
            let link = PinnedLink::from_pin(pin)
                .with_context(|| format!("open pinned link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .with_context(|| format!("pinned link {} is not an XDP link", pin.display()))?;
            prog.attach_to_link(link)
                .with_context(|| format!("swap sticky_dsr_xdp into the pinned link on {iface}"))?;
            return Ok(label);
        }
        let id = match prog.attach(iface, flags) {
            Ok(id) => id,
            Err(e) if mode == XdpMode::Auto => {
                tracing::info!(
                    iface,
                    error = %e,
                    "no native XDP on this interface: DSR runs on tc alone"
                );
                return Ok("tc");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "attach sticky_dsr_xdp to {iface} ({label}); --xdp off runs DSR on tc alone"
                )));
            }
        };
        if let Some(pin) = pin {
            let link = prog.take_link(id)?;
            let link = FdLink::try_from(link)
                .context("XDP link is not an fd link (pinning needs bpf_link, Linux 5.9+)")?;
            link.pin(&pin)
                .with_context(|| format!("pin link {}", pin.display()))?;
        }
        Ok(label)
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

    /// Read-only handles on the maps status reads, usable from any thread.
    pub fn reader(&self) -> Arc<MapReader> {
        Arc::clone(&self.reader)
    }

    /// The kernel programs' log, for the daemon to read (once).
    pub fn take_log(&mut self) -> Option<KernelLog> {
        self.log.take()
    }

    /// An owned second handle on map `name` (a duplicated descriptor): for tests and tools
    /// that need one map apart from the object.
    pub fn map_handle(&self, name: &str) -> anyhow::Result<Map> {
        maps::duplicate(&self.ebpf, name)
    }

    /// An owned handle on the client-affinity map (proxy mode records affinity in it).
    pub fn affinity_map(&self) -> anyhow::Result<HashMap<MapData, Addr16, Affinity>> {
        Ok(HashMap::try_from(maps::duplicate(
            &self.ebpf,
            names::AFFINITY,
        )?)?)
    }

    /// Proxy mode's splicer: takes the per-process splice maps and attaches their verdict.
    pub fn splicer(&mut self) -> anyhow::Result<Splicer> {
        Splicer::new(&mut self.ebpf)
    }

    /// A tc program, for BPF_PROG_TEST_RUN.
    pub fn classifier(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?
            .try_into()?)
    }

    /// The DSR XDP program (loaded unless `--xdp off`), for BPF_PROG_TEST_RUN.
    pub fn xdp_program(&mut self) -> anyhow::Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(names::PROG_DSR_XDP)
            .context("program sticky_dsr_xdp missing")?
            .try_into()?)
    }

    /// A map by name, for tests and tools that set up state the daemon never writes.
    pub fn map(&self, name: &str) -> Option<&Map> {
        self.ebpf.map(name)
    }

    /// A map by name, writable (see [`Datapath::map`]).
    pub fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.ebpf.map_mut(name)
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

    fn set_vips(&mut self, vips: &[VipAddr]) -> anyhow::Result<()> {
        let mut map: HashMap<&mut MapData, VipKey, Vip> =
            HashMap::try_from(self.ebpf.map_mut(names::VIPS).context("vip map missing")?)?;
        for (i, vip) in vips.iter().enumerate() {
            let key = VipKey {
                addr: Addr16::from_ip(vip.addr.ip()),
                port_be: vip.addr.port().to_be(),
                proto: vip.transport.number(),
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
        self.sync_reply_vips(set)?;
        Ok(slots)
    }

    /// `--replies-any-node`: every backend of `set` (in any state: established flows of a
    /// draining or down backend still answer) → the VIP of each protocol; entries of backends
    /// gone from the set are removed; off, the map is emptied. Local backends (the unspecified address) never answer
    /// through the interface and get none.
    fn sync_reply_vips(&mut self, set: &BackendSet) -> anyhow::Result<()> {
        // Off: none, also none a previous daemon left in pinned maps.
        let vips = self.reply_vips.clone().unwrap_or_default();
        let mut want = std::collections::HashMap::new();
        for (id, _) in set.iter() {
            let b = set.entry(id);
            if b.addr.is_unspecified() {
                continue;
            }
            for vip in &vips {
                let proto = vip.transport.number();
                let key = VipKey {
                    addr: b.addr,
                    port_be: b.port_be,
                    proto,
                    _pad0: 0,
                };
                let value = VipKey {
                    addr: Addr16::from_ip(vip.addr.ip()),
                    port_be: vip.addr.port().to_be(),
                    proto,
                    _pad0: 0,
                };
                want.insert(key, value);
            }
        }
        let mut map: HashMap<&mut MapData, VipKey, VipKey> = HashMap::try_from(
            self.ebpf
                .map_mut(names::REPLY_VIPS)
                .context("reply VIP map missing")?,
        )?;
        let stale: Vec<VipKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains_key(k))
            .collect();
        for key in stale {
            map.remove(&key).context("remove a reply VIP")?;
        }
        for (key, value) in want {
            map.insert(key, value, 0).context("write a reply VIP")?;
        }
        Ok(())
    }

    /// Every client-affinity entry (a map walk: for status and previews, not hot paths).
    pub fn affinity_entries(&self) -> anyhow::Result<Vec<(Addr16, Affinity)>> {
        Ok(self.reader.affinity_entries())
    }

    pub fn affinity_of(&self, client: &Addr16) -> anyhow::Result<Option<Affinity>> {
        self.reader.affinity_of(client)
    }

    /// Every established flow-table entry (both directions).
    pub fn flow_entries(&self) -> anyhow::Result<Vec<(FlowKey, Flow)>> {
        Ok(self.reader.flow_entries())
    }

    /// Forgets every flow of backend `id`, established or new: their next packets are
    /// balanced anew (the old connections end with a reset from the new backend). Used when a
    /// drain deadline passes.
    pub fn purge_flows(&mut self, id: u32) -> anyhow::Result<usize> {
        let purged = self.purge(names::FLOWS, id)?;
        self.purge(names::NEW_FLOWS, id)?;
        Ok(purged)
    }

    /// Forgets backend `id`'s flows still in (or confirmed but left in) the new-flow table;
    /// established flows stay. Returns the entries dropped.
    pub fn purge_new_flows(&mut self, id: u32) -> anyhow::Result<usize> {
        self.purge(names::NEW_FLOWS, id)
    }

    /// The forward entries of backend `id`'s established flows.
    pub fn established_flows(&self, id: u32) -> Vec<(FlowKey, Flow)> {
        self.reader
            .flow_entries()
            .into_iter()
            .filter(|(_, f)| f.direction == FLOW_FORWARD && f.backend_id == id)
            .collect()
    }

    /// Ends one flow as a drain deadline does: both directions leave both flow tables.
    pub fn end_flow(&mut self, key: &FlowKey, forward: &Flow) -> anyhow::Result<()> {
        let reply = key.reply_key(forward);
        for name in [names::FLOWS, names::NEW_FLOWS] {
            let mut map = self.flow_map(name)?;
            let _ = map.remove(key);
            let _ = map.remove(&reply);
        }
        Ok(())
    }

    fn flow_map(&mut self, name: &str) -> anyhow::Result<HashMap<&mut MapData, FlowKey, Flow>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map_mut(name)
                .with_context(|| format!("{name} missing"))?,
        )?)
    }

    /// Removes every entry of backend `id` from the flow map `name`; returns how many.
    fn purge(&mut self, name: &str, id: u32) -> anyhow::Result<usize> {
        let mut map = self.flow_map(name)?;
        let doomed: Vec<FlowKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, f)| f.backend_id == id)
            .map(|(k, _)| k)
            .collect();
        for key in &doomed {
            let _ = map.remove(key);
        }
        Ok(doomed.len())
    }

    /// Memory the kernel charges for each of the pinned (per-instance) maps.
    pub fn map_memory(&self) -> anyhow::Result<Vec<MapMemory>> {
        self.reader.map_memory()
    }

    pub fn table_size(&self) -> u32 {
        self.settings.table_size
    }

    pub fn seed(&self) -> u32 {
        self.settings.hash_seed
    }

    /// The settings the kernel program decides with.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        self.reader.counters()
    }

    /// Per-backend packets, bytes and new flows, summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> anyhow::Result<BackendStats> {
        self.reader.backend_stats(id)
    }

    pub fn affinity_timeout(&self) -> Duration {
        Duration::from_nanos(self.settings.affinity_timeout_ns)
    }
}

/// Refuses pins made with the other forwarding mode on one of `config`'s interfaces.
fn refuse_other_mode(pins: &Pins, config: &Config) -> anyhow::Result<()> {
    let dsr = config.forward.is_dsr();
    for iface in &config.ifaces {
        let others = if dsr {
            [
                pins.link(iface, TcAttachType::Ingress),
                pins.link(iface, TcAttachType::Egress),
            ]
        } else {
            [pins.dsr_link(iface), pins.xdp_link(iface)]
        };
        if others.iter().any(|p| p.exists()) {
            let theirs = if dsr { "nat" } else { "dsr" };
            bail!(
                "{iface} has pinned links of instance '{}' made with --forward {theirs}: stop \
                 it with `sticky stop --instance {}` first (that ends its connections)",
                config.instance,
                config.instance
            );
        }
    }
    Ok(())
}

/// Whether XDP must redirect rather than XDP_TX: on veth (see `Settings`).
fn xdp_tx_by_redirect(config: &Config) -> bool {
    config.forward.is_dsr()
        && config
            .ifaces
            .iter()
            .any(|i| node_addr::driver(i).is_ok_and(|d| d == "veth"))
}

/// DSR's outer sources: configured, else the first interface's global address of each
/// family; NAT needs none.
fn dsr_sources(config: &Config) -> anyhow::Result<(Addr16, Addr16)> {
    let Forwarding::Dsr { sources, .. } = &config.forward else {
        return Ok((Addr16::default(), Addr16::default()));
    };
    let mut out = [Addr16::default(), Addr16::default()];
    for (slot, v4) in [(0, true), (1, false)] {
        let configured = sources.iter().find(|a| a.is_ipv4() == v4).copied();
        let found = match configured {
            Some(a) => Some(a),
            None => config
                .ifaces
                .iter()
                .find_map(|i| node_addr::global_addr(i, v4).ok().flatten()),
        };
        let needed = config.vips.iter().any(|v| v.is_ipv4() == v4);
        match found {
            Some(a) => out[slot] = Addr16::from_ip(a),
            None if needed => bail!(
                "--forward dsr: no IPv{} address on {} for the outer source; give --dsr-source \
                 ADDR",
                if v4 { 4 } else { 6 },
                config.ifaces.join(", ")
            ),
            None => {}
        }
    }
    let [v4, v6] = out;
    Ok((v4, v6))
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
