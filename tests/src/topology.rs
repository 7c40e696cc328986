//! The standard topology the demo, the tests and the benchmark build on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::{
    netns::{Netns, unique_name, veth},
    plan,
    servers::HttpBackend,
};

/// A client namespace, a balancer namespace and backend namespaces, IPv4 and IPv6:
/// `client:eth0 ── lb:cli0`, `lb:be{k} ── backend{k}:eth0`. The balancer forwards; the
/// backends route everything through it, so replies pass the balancer's `cli0` egress.
pub struct Topology {
    /// Dropped last: namespaces go after everything running in them.
    pub backends: Vec<Netns>,
    pub lb: Netns,
    pub client: Netns,
    pub clients: usize,
}

impl Topology {
    pub fn build(tag: &str, backends: usize, clients: usize) -> anyhow::Result<Self> {
        let client = Netns::create(&unique_name(&format!("{tag}-c")))?;
        let lb = Netns::create(&unique_name(&format!("{tag}-lb")))?;
        let mut bes = Vec::new();
        for k in 0..backends {
            bes.push(Netns::create(&unique_name(&format!("{tag}-b{k}")))?);
        }
        let topo = Self {
            backends: bes,
            lb,
            client,
            clients,
        };
        topo.wire()?;
        Ok(topo)
    }

    fn wire(&self) -> anyhow::Result<()> {
        use plan::*;
        veth(&self.client, "eth0", &self.lb, "cli0")?;
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            self.lb.sysctl(key, "1")?;
        }
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/16", lb_client_side(false)),
            "dev",
            "cli0",
        ])?;
        self.lb
            .ip(&["addr", "add", &format!("{}/32", vip(false)), "dev", "cli0"])?;
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/64", lb_client_side(true)),
            "dev",
            "cli0",
            "nodad",
        ])?;
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{}/128", vip(true)),
            "dev",
            "cli0",
            "nodad",
        ])?;
        self.client.ip_batch(&client_side_batch(self.clients))?;
        for (k, ns) in self.backends.iter().enumerate() {
            let dev = format!("be{k}");
            veth(&self.lb, &dev, ns, "eth0")?;
            for v6 in [false, true] {
                let (addr, gw) = backend(k, v6);
                let (len, nodad) = if v6 { (64, "nodad") } else { (24, "") };
                let mut args = vec!["addr".to_string(), "add".into(), format!("{gw}/{len}")];
                args.extend(["dev".into(), dev.clone()]);
                let mut be_args = vec!["addr".to_string(), "add".into(), format!("{addr}/{len}")];
                be_args.extend(["dev".into(), "eth0".into()]);
                if v6 {
                    args.push(nodad.into());
                    be_args.push(nodad.into());
                }
                self.lb
                    .ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
                ns.ip(&be_args.iter().map(String::as_str).collect::<Vec<_>>())?;
                let family = if v6 { "-6" } else { "-4" };
                ns.ip(&[family, "route", "add", "default", "via", &gw.to_string()])?;
            }
        }
        Ok(())
    }

    /// `--vip` and `--backend` arguments for remote backends listening on `BACKEND_PORT`.
    pub fn sticky_args(&self, v6: bool) -> Vec<String> {
        self.sticky_args_on(v6, plan::VIP_PORT, plan::BACKEND_PORT)
    }

    /// `--vip` and `--backend` arguments for a VIP port and the port the backends listen on.
    pub fn sticky_args_on(&self, v6: bool, vip_port: u16, backend_port: u16) -> Vec<String> {
        let mut args = vec![
            "--iface".to_string(),
            "cli0".into(),
            "--vip".into(),
            SocketAddr::new(plan::vip(v6), vip_port).to_string(),
        ];
        for k in 0..self.backends.len() {
            args.push("--backend".into());
            args.push(SocketAddr::new(plan::backend(k, v6).0, backend_port).to_string());
        }
        args
    }

    /// Starts an HTTP backend in every backend namespace (both families), ids `be0`, `be1`…
    pub fn start_backends(&self) -> anyhow::Result<Vec<HttpBackend>> {
        let mut servers = Vec::new();
        for (k, ns) in self.backends.iter().enumerate() {
            let bind = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), plan::BACKEND_PORT);
            servers.push(HttpBackend::start(ns, bind, &format!("be{k}"))?);
        }
        Ok(servers)
    }

    pub fn vip(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(plan::vip(v6), plan::VIP_PORT)
    }
}

/// `ip -batch` lines for the client namespace's `eth0`: its own address, `clients` source
/// addresses (both families) and default routes through the gateway `plan::lb_client_side`.
pub fn client_side_batch(clients: usize) -> String {
    let mut batch = String::new();
    batch.push_str("addr add 198.18.0.2/16 dev eth0\naddr add fd00:18::2/64 dev eth0 nodad\n");
    for i in 0..clients {
        batch.push_str(&format!(
            "addr add {}/16 dev eth0\n",
            plan::client(i, false)
        ));
        batch.push_str(&format!(
            "addr add {}/64 dev eth0 nodad\n",
            plan::client(i, true)
        ));
    }
    for v6 in [false, true] {
        batch.push_str(&format!(
            "route add default via {}\n",
            plan::lb_client_side(v6)
        ));
    }
    batch
}
