//! The daemon's side of backends from DNS ([`crate::discovery`]): each answer updates its
//! source's last good set; the backends of all sets are followed — new ones join (slow start
//! applies), vanished ones drain (no deadline: affine clients and open connections continue),
//! ones that come back are undrained. A failing source keeps its last good set.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use tokio::sync::mpsc;
use tracing::warn;

use super::Daemon;
use crate::{
    addr::BackendSpec,
    config::Config,
    discovery::{self, Answer, Found, Source},
    logging::say,
    status::DnsStatus,
};

pub(super) struct Discovery {
    pub rx: mpsc::Receiver<Answer>,
    /// Kept so the channel stays open without sources.
    _tx: mpsc::Sender<Answer>,
    sources: Vec<SourceState>,
    /// Backends the sources added that are still configured.
    pub members: BTreeSet<SocketAddr>,
    /// Members drained because no source names them any more.
    vanished: BTreeSet<SocketAddr>,
}

struct SourceState {
    source: Source,
    last_good: Option<Vec<Found>>,
    error: Option<String>,
}

impl Discovery {
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        if !config.dns.is_empty() {
            let v4 = config.vips[0].is_ipv4();
            discovery::spawn(&config.dns, config.dns_server, v4, tx.clone())?;
        }
        Ok(Self {
            rx,
            _tx: tx,
            sources: config
                .dns
                .iter()
                .map(|source| SourceState {
                    source: source.clone(),
                    last_good: None,
                    error: None,
                })
                .collect(),
            members: BTreeSet::new(),
            vanished: BTreeSet::new(),
        })
    }

    pub fn status(&self) -> Vec<DnsStatus> {
        self.sources
            .iter()
            .map(|s| DnsStatus {
                source: s.source.to_string(),
                backends: s.last_good.iter().flatten().map(|f| f.addr).collect(),
                error: s.error.clone(),
            })
            .collect()
    }

    /// Every backend some source names now, with its weight.
    fn wanted(&self) -> BTreeMap<SocketAddr, u32> {
        let mut wanted = BTreeMap::new();
        for found in self
            .sources
            .iter()
            .filter_map(|s| s.last_good.as_ref())
            .flatten()
        {
            wanted.entry(found.addr).or_insert(found.weight);
        }
        wanted
    }
}

impl Daemon {
    pub(super) fn on_dns(&mut self, answer: Answer) {
        let Some(state) = self.dns.sources.get_mut(answer.source) else {
            return;
        };
        match answer.result {
            Ok(found) => {
                if state.error.take().is_some() {
                    say(&format!(
                        "{}: resolving again, {} backends",
                        state.source,
                        found.len()
                    ));
                }
                if state.last_good.as_ref() == Some(&found) {
                    return;
                }
                state.last_good = Some(found);
            }
            Err(e) => {
                let kept = state.last_good.as_ref().map_or(0, Vec::len);
                if state.error.is_none() {
                    warn!(
                        "{}: resolver failed, keeping the last good set ({kept} backends): {e}",
                        state.source
                    );
                }
                state.error = Some(e);
                return;
            }
        }
        if let Err(e) = self.follow_dns() {
            warn!("backends from DNS: {e:#}");
        }
    }

    /// Makes the backend set follow what the sources name.
    fn follow_dns(&mut self) -> anyhow::Result<()> {
        let wanted = self.dns.wanted();
        let fixed: BTreeSet<SocketAddr> = self
            .config
            .backends
            .iter()
            .map(|b| b.addr)
            .filter(|a| !self.dns.members.contains(a))
            .collect();
        let mut specs = self.config.backends.clone();
        let mut joined = Vec::new();
        for (&addr, &weight) in &wanted {
            if !fixed.contains(&addr) && self.dns.members.insert(addr) {
                specs.push(BackendSpec { addr, weight });
                joined.push(addr.to_string());
            }
        }
        if !joined.is_empty() {
            self.set_backends(specs)?;
            say(&format!("from DNS: {} joined", joined.join(", ")));
        }
        let members: Vec<SocketAddr> = self.dns.members.iter().copied().collect();
        for addr in members {
            let named = wanted.contains_key(&addr);
            if named && self.dns.vanished.remove(&addr) {
                self.undrain(addr)?;
                say(&format!("from DNS: {addr} is back, in service"));
            } else if !named && self.dns.vanished.insert(addr) {
                self.drain(addr, None, None)?;
                say(&format!("from DNS: {addr} vanished, draining"));
            }
        }
        Ok(())
    }

    /// The backends a reload's `specs` leave out that DNS added: they stay.
    pub(super) fn keep_discovered(&self, specs: &mut Vec<BackendSpec>) {
        for b in &self.config.backends {
            if self.dns.members.contains(&b.addr) && !specs.iter().any(|s| s.addr == b.addr) {
                specs.push(*b);
            }
        }
    }
}
