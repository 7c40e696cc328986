//! The direct-server-return topology, the "one-arm" layout Katran uses:
//!
//! ```text
//! client:eth0 ── router:cli0      router:lb0 ── lb:eth0 (the balancer: one interface)
//!                router:be{k} ── backend{k}:eth0
//! ```
//!
//! The router routes the VIP to the balancer, which sends each packet back out the same
//! interface, encapsulated towards its backend; backends answer the client straight through
//! the router. Every link has MTU 1500 (the underlay). Backends are configured only by
//! `sticky backend-setup --vip …` and serve, on the VIP, HTTP (answering with their name) on
//! [`VIP_PORT`], an upgrade-then-echo / bulk server on [`ECHO_PORT`]; IPv4 and IPv6.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    netns::{Netns, unique_name, veth},
    plan,
    servers::{EchoBackend, HttpBackend},
};

/// The HTTP port of the VIP and of the backends (DSR keeps the port).
pub const VIP_PORT: u16 = 80;
/// The upgrade-then-echo / `/plain` bulk server of every backend.
pub const ECHO_PORT: u16 = 9000;
/// The underlay MTU of every link.
pub const MTU: u32 = 1500;

/// The VIP: outside the client subnet, so clients reach it through the router.
pub fn vip(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x19, 0xff, 0, 0, 0, 0, 0x100))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 19, 255, 100))
    }
}

/// The balancer's address on its one interface, and the router's facing it.
pub fn balancer(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 20, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 20, 0, 1)),
        )
    }
}

/// Balancer node `k`'s address on its link to the router, and the router's (node 0:
/// [`balancer`]).
pub fn node_addr(k: usize, v6: bool) -> (IpAddr, IpAddr) {
    if k == 0 {
        return balancer(v6);
    }
    let k = k as u8;
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x20, 0, k.into(), 0, 0, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x20, 0, k.into(), 0, 0, 0, 1)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(198, 20, k, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 20, k, 1)),
        )
    }
}

/// The balancer's interface.
pub const BALANCER_IF: &str = "eth0";

/// Byte counters of an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bytes {
    pub rx: u64,
    pub tx: u64,
}

/// Client, router, balancer and backend namespaces; backends configured by `backend-setup`.
pub struct DsrTopology {
    /// Dropped after `Drop::drop` undid each backend's setup; namespaces go last.
    pub backends: Vec<Netns>,
    pub lb: Netns,
    /// More balancer nodes ([`DsrTopology::build_nodes`]): node `k` is `nodes[k - 1]`.
    pub nodes: Vec<Netns>,
    pub router: Netns,
    pub client: Netns,
    pub clients: usize,
    bin: PathBuf,
    /// Whether `backend-setup` ran (and must be undone) in each backend.
    set_up: Vec<bool>,
}

impl DsrTopology {
    /// Builds the namespaces and links, then runs `bin backend-setup` in every backend.
    pub fn build(tag: &str, backends: usize, clients: usize, bin: &Path) -> anyhow::Result<Self> {
        Self::build_with(tag, 1, true, backends, clients, bin)
    }

    /// `nodes` balancers (`lb` and [`DsrTopology::nodes`]), node `k` on its own link to the
    /// router ([`node_addr`]); the router has no route to the VIP: the nodes announce it.
    pub fn build_nodes(
        tag: &str,
        nodes: usize,
        backends: usize,
        clients: usize,
        bin: &Path,
    ) -> anyhow::Result<Self> {
        Self::build_with(tag, nodes, false, backends, clients, bin)
    }

    fn build_with(
        tag: &str,
        nodes: usize,
        vip_route: bool,
        backends: usize,
        clients: usize,
        bin: &Path,
    ) -> anyhow::Result<Self> {
        let client = Netns::create(&unique_name(&format!("{tag}-c")))?;
        let router = Netns::create(&unique_name(&format!("{tag}-r")))?;
        let lb = Netns::create(&unique_name(&format!("{tag}-lb")))?;
        let mut more = Vec::new();
        for k in 1..nodes.max(1) {
            more.push(Netns::create(&unique_name(&format!("{tag}-n{k}")))?);
        }
        let mut bes = Vec::new();
        for k in 0..backends {
            bes.push(Netns::create(&unique_name(&format!("{tag}-b{k}")))?);
        }
        let mut topo = Self {
            set_up: vec![false; bes.len()],
            backends: bes,
            lb,
            nodes: more,
            router,
            client,
            clients,
            bin: bin.to_path_buf(),
        };
        topo.wire(vip_route)?;
        for k in 0..backends {
            topo.backend_setup(k, &[])?;
        }
        Ok(topo)
    }

    /// Balancer node `k` (0: `lb`).
    pub fn node(&self, k: usize) -> &Netns {
        if k == 0 { &self.lb } else { &self.nodes[k - 1] }
    }

    fn wire(&self, vip_route: bool) -> anyhow::Result<()> {
        let r = &self.router;
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            r.sysctl(key, "1")?;
        }
        // Client side: the standard plan's client addresses, the router as their gateway.
        veth(&self.client, "eth0", r, "cli0")?;
        for v6 in [false, true] {
            add_addr(
                r,
                "cli0",
                plan::lb_client_side(v6),
                if v6 { 64 } else { 16 },
            )?;
        }
        self.client
            .ip_batch(&crate::topology::client_side_batch(self.clients))?;
        // The balancer: one interface, default route back to the router, which routes the VIP
        // to it. Forwarding on, as on any router (bpf_fib_lookup needs it).
        for k in 0..=self.nodes.len() {
            let node = self.node(k);
            let dev = format!("lb{k}");
            veth(node, BALANCER_IF, r, &dev)?;
            // A veth delivers what a native XDP program transmits (XDP_TX/XDP_REDIRECT) only
            // when its peer runs NAPI, which GRO turns on.
            r.exec("ethtool", &["-K", &dev, "gro", "on"])?;
            for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
                node.sysctl(key, "1")?;
            }
            for v6 in [false, true] {
                let (addr, gw) = node_addr(k, v6);
                link_net(r, &dev, gw, node, BALANCER_IF, addr)?;
                if vip_route {
                    r.ip(&[
                        family(v6),
                        "route",
                        "add",
                        &vip(v6).to_string(),
                        "via",
                        &addr.to_string(),
                    ])?;
                }
            }
        }
        // Backends, each on a /24 (/64) of its own with the router as gateway.
        for (k, ns) in self.backends.iter().enumerate() {
            let dev = format!("be{k}");
            veth(r, &dev, ns, "eth0")?;
            for v6 in [false, true] {
                let (addr, gw) = plan::backend(k, v6);
                link_net(r, &dev, gw, ns, "eth0", addr)?;
            }
        }
        for ns in [&self.client, &self.router, &self.lb]
            .into_iter()
            .chain(&self.nodes)
            .chain(&self.backends)
        {
            for dev in links(ns)? {
                ns.ip(&["link", "set", &dev, "mtu", &MTU.to_string()])?;
            }
        }
        Ok(())
    }

    /// `sticky backend-setup --vip <v4> --vip <v6> EXTRA…` in backend `k`; its output.
    pub fn backend_setup(&mut self, k: usize, extra: &[&str]) -> anyhow::Result<String> {
        let out = self.backend_setup_raw(k, extra)?;
        if !out.status.success() {
            bail!(
                "backend-setup in backend {k}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.set_up[k] = true;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sticky backend-setup ARGS…` in backend `k` (`--vip`s added unless `--undo` is there
    /// or `raw`), whatever its exit status.
    pub fn backend_setup_raw(
        &self,
        k: usize,
        extra: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        let mut args: Vec<String> = vec!["backend-setup".into()];
        if !extra.contains(&"--undo") {
            for v6 in [false, true] {
                args.extend(["--vip".into(), vip(v6).to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.sticky_in(&self.backends[k], &args)
    }

    /// Runs `bin ARGS` in `ns` (`nsenter --net`), whatever its exit status.
    pub fn sticky_in(&self, ns: &Netns, args: &[String]) -> anyhow::Result<std::process::Output> {
        Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(&self.bin)
            .args(args)
            .output()
            .with_context(|| format!("run {} {args:?}", self.bin.display()))
    }

    /// Starts on every backend, on both VIPs' ports: HTTP on [`VIP_PORT`] answering
    /// `be{k} <client>`, echo/bulk on [`ECHO_PORT`].
    pub fn start_servers(&self) -> anyhow::Result<(Vec<HttpBackend>, Vec<EchoBackend>)> {
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let mut http = Vec::new();
        let mut echo = Vec::new();
        for (k, ns) in self.backends.iter().enumerate() {
            http.push(HttpBackend::start(
                ns,
                SocketAddr::new(any, VIP_PORT),
                &format!("be{k}"),
            )?);
            echo.push(EchoBackend::start(ns, SocketAddr::new(any, ECHO_PORT))?);
        }
        Ok((http, echo))
    }

    /// `VIP:port` of a family.
    pub fn vip(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(vip(v6), port)
    }

    /// `--iface eth0 --vip VIP:PORT --backend B:PORT…` for `sticky run` on the balancer
    /// (the backend port equals the VIP port in DSR); the caller adds `--forward dsr --xdp …`.
    pub fn sticky_args(&self, v6: bool, port: u16) -> Vec<String> {
        let mut args = vec![
            "--iface".to_string(),
            BALANCER_IF.into(),
            "--vip".into(),
            self.vip(v6, port).to_string(),
        ];
        for k in 0..self.backends.len() {
            args.push("--backend".into());
            args.push(SocketAddr::new(plan::backend(k, v6).0, port).to_string());
        }
        args
    }

    /// The balancer interface's byte counters.
    pub fn balancer_bytes(&self) -> anyhow::Result<Bytes> {
        counters(&self.lb, BALANCER_IF)
    }
}

impl Drop for DsrTopology {
    fn drop(&mut self) {
        // The setup's state file lives in the host's /run: undo, so none outlives its
        // namespace (a later namespace could reuse the inode it is keyed by).
        for (k, done) in self.set_up.clone().into_iter().enumerate() {
            if done {
                let _ = self.backend_setup_raw(k, &["--undo"]);
            }
        }
    }
}

/// `addr/len` on `dev` (IPv6 without duplicate address detection).
fn add_addr(ns: &Netns, dev: &str, addr: IpAddr, len: u8) -> anyhow::Result<()> {
    let prefix = format!("{addr}/{len}");
    let mut args = vec!["addr", "add", prefix.as_str(), "dev", dev];
    if addr.is_ipv6() {
        args.push("nodad");
    }
    ns.ip(&args).map(drop)
}

/// A /24 (/64) between a gateway and a host, and the host's default route through it.
fn link_net(
    gw_ns: &Netns,
    gw_dev: &str,
    gw: IpAddr,
    host_ns: &Netns,
    host_dev: &str,
    host: IpAddr,
) -> anyhow::Result<()> {
    let len = if host.is_ipv6() { 64 } else { 24 };
    add_addr(gw_ns, gw_dev, gw, len)?;
    add_addr(host_ns, host_dev, host, len)?;
    host_ns
        .ip(&[
            family(host.is_ipv6()),
            "route",
            "add",
            "default",
            "via",
            &gw.to_string(),
        ])
        .map(drop)
}

fn family(v6: bool) -> &'static str {
    if v6 { "-6" } else { "-4" }
}

/// Every interface of `ns` but `lo`.
fn links(ns: &Netns) -> anyhow::Result<Vec<String>> {
    let text = ns.ip(&["-j", "link", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&text).context("ip -j link")?;
    Ok(links
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str())
                .filter(|n| *n != "lo")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// `dev`'s rx/tx byte counters in `ns`.
pub fn counters(ns: &Netns, dev: &str) -> anyhow::Result<Bytes> {
    let text = ns.ip(&["-j", "-s", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&text).context("ip -j -s link")?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str| {
        stats[dir]["bytes"]
            .as_u64()
            .with_context(|| format!("no {dir} bytes for {dev}: {text}"))
    };
    Ok(Bytes {
        rx: get("rx")?,
        tx: get("tx")?,
    })
}
