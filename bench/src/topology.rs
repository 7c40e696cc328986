//! The bench topology: the rig's client, balancer and backend namespaces, plus a /20 of
//! client source addresses, a direct veth from the client to backend 0 and benchmark tuning;
//! and beside it the rig's one-arm DSR topology (`sticky_tests::dsr`, backends set up by the
//! real `sticky backend-setup`) with the same /20 and tuning, for the DSR cases.
//!
//! ```text
//! client ─eth0──cli0─ lb ─be{k}──eth0─ backend{k}      (routed and balanced cases)
//! client ─dir0──────────────────dir0─ backend0         (direct veth)
//! client ─eth0──cli0─ router ─lb0──eth0─ lb            (DSR cases: requests)
//!                     router ─be{k}──eth0─ backend{k}  (requests encapsulated, replies)
//! ```

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use sticky_tests::{DsrTopology, Netns, Topology, plan, veth};

use crate::cmd;

/// A /20 of client source addresses: 4096 addresses, so source hashing spreads.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Net {
    pub fn len(self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    pub fn addr(self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + i % self.len())
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl std::str::FromStr for Net {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (base, prefix) = s.split_once('/').context("expected ADDR/PREFIX")?;
        let base: Ipv4Addr = base.parse().context("address")?;
        let prefix: u8 = prefix.parse().context("prefix length")?;
        anyhow::ensure!((8..=32).contains(&prefix), "prefix length 8-32");
        Ok(Self { base, prefix })
    }
}

/// Sources for the routed and balanced cases: reach the balancer through `cli0`.
pub const CLIENT_NET: Net = Net {
    base: Ipv4Addr::new(198, 18, 16, 0),
    prefix: 20,
};
/// Sources for the direct veth case.
pub const DIRECT_NET: Net = Net {
    base: Ipv4Addr::new(198, 20, 16, 0),
    prefix: 20,
};
const DIRECT_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 1);
const DIRECT_BACKEND: Ipv4Addr = Ipv4Addr::new(198, 20, 0, 2);
/// The client's own address on `eth0` (the rig's topology gives it), next hop for the
/// client /20.
const CLIENT_ETH0: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// CPUs: load generators on one, servers and userspace balancers on the other, so they do not
/// fight unpredictably on this 2-vCPU machine.
pub const LOAD_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

pub struct Bench {
    pub topo: Topology,
    /// The one-arm topology of the DSR cases; `sticky` runs `backend-setup` in its backends.
    pub dsr: DsrTopology,
}

impl Bench {
    pub fn build(backends: usize, sticky: &Path) -> anyhow::Result<Self> {
        // No rig clients: their 250-per-/24 plan is replaced by whole /20s below.
        let topo = Topology::build("bench", backends, 0).context("build namespaces")?;
        let dsr = DsrTopology::build("bdsr", backends, 0, sticky)
            .context("build the DSR namespaces (sticky backend-setup in each backend)")?;
        let bench = Self { topo, dsr };
        bench.wire().context("configure the bench topology")?;
        bench.wire_dsr().context("configure the DSR topology")?;
        Ok(bench)
    }

    /// The client /20 in the DSR topology as in the other; offloads at their defaults except
    /// transmit checksumming on the client's `eth0`, which each DSR case sets
    /// (`peers::start`): off for XDP, whose transmitted frames carry no checksum state, on
    /// for tc.
    fn wire_dsr(&self) -> anyhow::Result<()> {
        let d = &self.dsr;
        d.client.ip(&[
            "route",
            "add",
            "local",
            &CLIENT_NET.to_string(),
            "dev",
            "lo",
        ])?;
        d.router.ip(&[
            "route",
            "add",
            &CLIENT_NET.to_string(),
            "via",
            &CLIENT_ETH0.to_string(),
            "dev",
            "cli0",
        ])?;
        let mut links: Vec<(&Netns, String)> = vec![
            (&d.router, "cli0".into()),
            (&d.router, "lb0".into()),
            (&d.lb, sticky_tests::dsr::BALANCER_IF.into()),
        ];
        for (k, ns) in d.backends.iter().enumerate() {
            links.push((&d.router, format!("be{k}")));
            links.push((ns, "eth0".into()));
        }
        for (ns, dev) in links {
            ns.exec("ethtool", &["-K", &dev, "tx", "on"])
                .with_context(|| format!("turn offloads back on for {dev}"))?;
        }
        let mut all: Vec<&Netns> = vec![&d.client, &d.router, &d.lb];
        all.extend(d.backends.iter());
        tune(&all)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let t = &self.topo;
        let first = t.backends.first().context("need at least one backend")?;
        veth(&t.client, "dir0", first, "dir0")?;
        t.client
            .ip(&["addr", "add", &format!("{DIRECT_CLIENT}/24"), "dev", "dir0"])?;
        first.ip(&[
            "addr",
            "add",
            &format!("{DIRECT_BACKEND}/24"),
            "dev",
            "dir0",
        ])?;
        first.ip(&[
            "route",
            "add",
            &DIRECT_NET.to_string(),
            "via",
            &DIRECT_CLIENT.to_string(),
        ])?;
        // AnyIP: a local route makes every address of the /20 bindable without 4096 `addr add`s.
        // The balancer reaches them through one next hop, so its neighbour table holds one
        // entry, not 4096 (which would overflow gc_thresh3).
        for net in [CLIENT_NET, DIRECT_NET] {
            t.client
                .ip(&["route", "add", "local", &net.to_string(), "dev", "lo"])?;
        }
        t.lb.ip(&[
            "route",
            "add",
            &CLIENT_NET.to_string(),
            "via",
            &CLIENT_ETH0.to_string(),
            "dev",
            "cli0",
        ])?;
        // The rig turns transmit checksum offload off to catch checksum bugs; a benchmark
        // wants the defaults (TSO needs it).
        let mut links: Vec<(&Netns, String)> = vec![
            (&t.client, "eth0".into()),
            (&t.client, "dir0".into()),
            (&t.lb, "cli0".into()),
            (first, "dir0".into()),
        ];
        for (k, ns) in t.backends.iter().enumerate() {
            links.push((&t.lb, format!("be{k}")));
            links.push((ns, "eth0".into()));
        }
        for (ns, dev) in links {
            ns.exec("ethtool", &["-K", &dev, "tx", "on"])
                .with_context(|| format!("turn offloads back on for {dev}"))?;
        }
        let mut all: Vec<&Netns> = vec![&t.client, &t.lb];
        all.extend(t.backends.iter());
        tune(&all)
    }

    pub fn lb(&self) -> &Netns {
        &self.topo.lb
    }

    pub fn client(&self) -> &Netns {
        &self.topo.client
    }

    pub fn backends(&self) -> &[Netns] {
        &self.topo.backends
    }

    /// The client namespace of the DSR topology (`dsr`) or of the other.
    pub fn client_of(&self, dsr: bool) -> &Netns {
        if dsr { &self.dsr.client } else { self.client() }
    }

    /// The balancer namespace of the DSR topology (`dsr`) or of the other.
    pub fn lb_of(&self, dsr: bool) -> &Netns {
        if dsr { &self.dsr.lb } else { self.lb() }
    }

    /// The backend namespaces of the DSR topology (`dsr`) or of the other.
    pub fn backends_of(&self, dsr: bool) -> &[Netns] {
        if dsr {
            &self.dsr.backends
        } else {
            self.backends()
        }
    }

    /// Every namespace, for flushing conntrack.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.topo.client, &self.topo.lb];
        all.extend(self.topo.backends.iter());
        all.extend([&self.dsr.client, &self.dsr.router, &self.dsr.lb]);
        all.extend(self.dsr.backends.iter());
        all
    }

    /// Backend `k` at `port`, through the balancer namespace (routed).
    pub fn backend(k: usize, port: u16) -> SocketAddr {
        SocketAddr::new(plan::backend(k, false).0, port)
    }

    /// Backend 0 at `port` over the direct veth.
    pub fn direct(port: u16) -> SocketAddr {
        SocketAddr::new(DIRECT_BACKEND.into(), port)
    }

    pub fn vip(port: u16) -> SocketAddr {
        SocketAddr::new(plan::vip(false), port)
    }

    /// Waits until something listens on `port` in the balancer namespace.
    pub fn wait_lb_listening(&self, port: u16) -> anyhow::Result<()> {
        cmd::wait_listening(self.lb(), port, Duration::from_secs(10))
    }
}

/// Room for the load: deep accept queues, every local port.
fn tune(namespaces: &[&Netns]) -> anyhow::Result<()> {
    for ns in namespaces {
        for (key, value) in [
            ("net.core.somaxconn", "65535"),
            ("net.ipv4.tcp_max_syn_backlog", "65535"),
            ("net.ipv4.ip_local_port_range", "1024 65000"),
        ] {
            ns.sysctl(key, value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_cover_a_slash_20() {
        assert_eq!(CLIENT_NET.len(), 4096);
        assert_eq!(CLIENT_NET.addr(0), Ipv4Addr::new(198, 18, 16, 0));
        assert_eq!(CLIENT_NET.addr(4095), Ipv4Addr::new(198, 18, 31, 255));
        assert_eq!(CLIENT_NET.addr(4096), CLIENT_NET.addr(0));
        let parsed: Net = "198.20.16.0/20".parse().unwrap();
        assert_eq!(parsed.to_string(), DIRECT_NET.to_string());
        assert!("198.20.16.0".parse::<Net>().is_err());
    }
}
