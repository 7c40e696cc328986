//! The cases and their middleboxes: nothing (direct veth, routed), nftables `jhash` DNAT,
//! HAProxy `balance source`, nginx stream `hash $remote_addr consistent`, sticky's kernel path
//! (NAT, and direct server return on tc and on XDP, in the one-arm topology) and sticky's proxy
//! mode (splicing or copying), and, as peers of proxy mode, HAProxy and
//! nginx as HTTP proxies hashing X-Forwarded-For per request. Each
//! runs in the balancer namespace, pinned to the server CPU, from configuration generated in a
//! private folder, and is stopped by PID (or its table deleted) on drop.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sticky_tests::{Netns, StickyProcess, dsr, plan};

use crate::{
    cmd::{self, Proc, TempDir},
    topology::{Bench, CLIENT_NET, DIRECT_NET, Net, SERVER_CPU},
};

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
const NFT_TABLE: &str = "sticky_bench";
/// The kernel path's VIP port in the proxy cases: one no service uses, so the tc program
/// leaves the proxy's connections alone (sticky refuses a proxy address that is a VIP).
const PROXY_CASE_KERNEL_PORT: u16 = 9;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Case {
    Direct,
    Routed,
    Nftables,
    Haproxy,
    Nginx,
    Sticky,
    StickyDsrTc,
    StickyDsrXdp,
    StickyProxy,
    StickyProxyCopy,
    HaproxyHttp,
    NginxHttp,
}

impl Case {
    pub const ALL: [Self; 12] = [
        Self::Direct,
        Self::Routed,
        Self::Nftables,
        Self::Haproxy,
        Self::Nginx,
        Self::Sticky,
        Self::StickyDsrTc,
        Self::StickyDsrXdp,
        Self::StickyProxy,
        Self::StickyProxyCopy,
        Self::HaproxyHttp,
        Self::NginxHttp,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct veth",
            Self::Routed => "routed, no LB",
            Self::Nftables => "nftables jhash",
            Self::Haproxy => "HAProxy source",
            Self::Nginx => "nginx hash",
            Self::Sticky => "sticky kernel",
            Self::StickyDsrTc => "sticky dsr (tc)",
            Self::StickyDsrXdp => "sticky dsr (xdp)",
            Self::StickyProxy => "sticky proxy, splice",
            Self::StickyProxyCopy => "sticky proxy, --no-splice",
            Self::HaproxyHttp => "HAProxy http",
            Self::NginxHttp => "nginx http",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Direct => "client and backend 0 on one veth pair: no hop at all",
            Self::Routed => {
                "client → balancer namespace (plain IP forwarding) → backend: the L4 hop's limit"
            }
            Self::Nftables => "`dnat to jhash ip saddr mod N map {…}` with conntrack",
            Self::Haproxy => "HAProxy 2.6, TCP mode, `balance source`, one thread",
            Self::Nginx => {
                "nginx 1.22 stream, `hash $remote_addr consistent`, one worker, `proxy_half_close on`"
            }
            Self::Sticky => "`sticky run` (tc eBPF DNAT, Maglev, flow and affinity tables)",
            Self::StickyDsrTc => {
                "`sticky run --forward dsr --xdp off` on a one-arm balancer (client → router → \
                 balancer, which encapsulates IPIP to the backend with tc; backends set up by \
                 `sticky backend-setup`, answering through the router, never the balancer)"
            }
            Self::StickyDsrXdp => {
                "`sticky run --forward dsr --xdp native`: the same, encapsulating in XDP \
                 (XDP_REDIRECT on veth)"
            }
            Self::StickyProxy => {
                "`sticky run --proxy --trusted-proxies <clients> --ignore-missing-header`: \
                 picks the backend by the X-Forwarded-For the clients send; splices upgraded \
                 (101) connections in the kernel (sockmap), copies the rest"
            }
            Self::StickyProxyCopy => {
                "`sticky run --proxy --no-splice`: the same, copying every connection in \
                 userspace"
            }
            Self::HaproxyHttp => {
                "HAProxy 2.6, HTTP mode, `balance hdr(X-Forwarded-For)`, `http-reuse safe`, \
                 one thread"
            }
            Self::NginxHttp => {
                "nginx 1.22 http, `hash $http_x_forwarded_for consistent`, upstream \
                 `keepalive 32`, one worker"
            }
        }
    }

    /// Whether the backend sees the client's own address (not the middlebox's).
    pub fn transparent(self) -> bool {
        !matches!(
            self,
            Self::Haproxy
                | Self::Nginx
                | Self::StickyProxy
                | Self::StickyProxyCopy
                | Self::HaproxyHttp
                | Self::NginxHttp
        )
    }

    /// Direct server return: runs in the one-arm topology (`Bench::dsr`).
    pub fn dsr(self) -> bool {
        matches!(self, Self::StickyDsrTc | Self::StickyDsrXdp)
    }

    /// sticky's kernel path, whose eBPF run-time statistics the report shows.
    pub fn sticky_kernel(self) -> bool {
        matches!(self, Self::Sticky | Self::StickyDsrTc | Self::StickyDsrXdp)
    }

    /// HTTP proxies routing each request by its X-Forwarded-For: their clients send one, the
    /// source address they connect from.
    pub fn forwards_for(self) -> bool {
        matches!(
            self,
            Self::StickyProxy | Self::StickyProxyCopy | Self::HaproxyHttp | Self::NginxHttp
        )
    }

    /// The services measured: proxy mode needs an HTTP request head first, so it gets no raw
    /// echo or iperf3 runs, only HTTP and the upgrade port.
    pub fn services(self) -> &'static [Service] {
        match self {
            Self::StickyProxy | Self::StickyProxyCopy => &[Service::Http, Service::Upgrade],
            // DSR keeps the port: the backends serve on the VIP's, the upgrade port included,
            // but only requests, new connections and bulk are what DSR is about.
            Self::StickyDsrTc | Self::StickyDsrXdp => &[Service::Http, Service::Bulk],
            Self::HaproxyHttp | Self::NginxHttp => &[Service::Http],
            _ => &Service::ALL,
        }
    }
}

/// A server port on the backends, reached on its own VIP port through the middleboxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Http,
    Echo,
    Bulk,
    /// HTTP upgrade, then echo or sink (`crate::upgrade`).
    Upgrade,
}

impl Service {
    pub const ALL: [Self; 4] = [Self::Http, Self::Echo, Self::Bulk, Self::Upgrade];

    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Echo => "echo",
            Self::Bulk => "bulk",
            Self::Upgrade => "upgrade",
        }
    }

    pub const fn backend_port(self) -> u16 {
        match self {
            Self::Http => plan::BACKEND_PORT,
            Self::Echo => 8081,
            Self::Bulk => 5201,
            Self::Upgrade => 8090,
        }
    }

    pub const fn vip_port(self) -> u16 {
        match self {
            Self::Http => plan::VIP_PORT,
            Self::Echo => 7,
            Self::Bulk => 5201,
            Self::Upgrade => 8090,
        }
    }
}

/// Where a case's clients connect for a service, and from which source addresses.
pub struct Route {
    pub targets: Vec<SocketAddr>,
    pub sources: Net,
}

pub fn route(case: Case, service: Service, backends: usize) -> Route {
    let port = service.backend_port();
    match case {
        Case::Direct => Route {
            targets: vec![Bench::direct(port)],
            sources: DIRECT_NET,
        },
        // The client picks the backend itself, by source address, as a balancer would.
        Case::Routed => Route {
            targets: (0..backends).map(|k| Bench::backend(k, port)).collect(),
            sources: CLIENT_NET,
        },
        // DSR keeps the destination port: the VIP on the backends' port.
        Case::StickyDsrTc | Case::StickyDsrXdp => Route {
            targets: vec![SocketAddr::new(dsr::vip(false), port)],
            sources: CLIENT_NET,
        },
        _ => Route {
            targets: vec![Bench::vip(service.vip_port())],
            sources: CLIENT_NET,
        },
    }
}

/// A case's middlebox, running for one service; stops on drop.
pub enum Middlebox<'a> {
    Nothing,
    /// Held for its drop, which deletes the table.
    Nft {
        _table: NftTable<'a>,
    },
    /// The process, and its configuration folder (removed after it stops).
    Proxy {
        proc: Proc,
        _config: TempDir,
    },
    /// The kernel path, whose eBPF statistics the report shows.
    Sticky(StickyProcess),
    /// Proxy mode (its kernel path idle on an unused port); held for its drop, which stops it.
    StickyProxy {
        _daemon: StickyProcess,
    },
}

impl Middlebox<'_> {
    /// The running sticky daemon's instance, for its eBPF statistics.
    pub fn sticky_instance(&self) -> Option<&str> {
        match self {
            Self::Sticky(d) => Some(&d.instance),
            _ => None,
        }
    }

    /// Fails if a proxy died during a measurement.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Proxy { proc, .. } => proc.check_alive(),
            _ => Ok(()),
        }
    }
}

pub fn start<'a>(
    case: Case,
    service: Service,
    bench: &'a Bench,
    sticky_bin: &Path,
) -> anyhow::Result<Middlebox<'a>> {
    let backends: Vec<SocketAddr> = (0..bench.backends().len())
        .map(|k| Bench::backend(k, service.backend_port()))
        .collect();
    let vip = Bench::vip(service.vip_port());
    let started = match case {
        Case::Direct | Case::Routed => Middlebox::Nothing,
        Case::Nftables => Middlebox::Nft {
            _table: NftTable::create(bench, vip, &backends)?,
        },
        Case::Haproxy | Case::HaproxyHttp => {
            let dir = TempDir::new("haproxy")?;
            let text = if case == Case::Haproxy {
                haproxy_config(vip, &backends)
            } else {
                haproxy_http_config(vip, &backends)
            };
            let cfg = dir.write("haproxy.cfg", &text)?;
            let proc = Proc::spawn(
                "haproxy",
                cmd::in_ns(bench.lb(), Some(SERVER_CPU), "haproxy")
                    .arg("-db")
                    .arg("-f")
                    .arg(&cfg),
            )?;
            Middlebox::Proxy { proc, _config: dir }
        }
        Case::Nginx | Case::NginxHttp => {
            let dir = TempDir::new("nginx")?;
            let text = if case == Case::Nginx {
                anyhow::ensure!(
                    Path::new(NGINX_STREAM_MODULE).exists(),
                    "{NGINX_STREAM_MODULE} is missing: apt-get install libnginx-mod-stream"
                );
                nginx_config(&dir.path, vip, &backends)
            } else {
                nginx_http_config(&dir.path, vip, &backends)
            };
            let cfg = dir.write("nginx.conf", &text)?;
            let proc = Proc::spawn(
                "nginx",
                cmd::in_ns(bench.lb(), Some(SERVER_CPU), "nginx")
                    .arg("-e")
                    .arg(dir.path.join("error.log"))
                    .arg("-p")
                    .arg(&dir.path)
                    .arg("-c")
                    .arg(&cfg),
            )?;
            Middlebox::Proxy { proc, _config: dir }
        }
        Case::Sticky => {
            let args = bench
                .topo
                .sticky_args_on(false, service.vip_port(), service.backend_port());
            Middlebox::Sticky(start_sticky(sticky_bin, bench.lb(), &args)?)
        }
        Case::StickyDsrTc | Case::StickyDsrXdp => {
            let mut args = bench.dsr.sticky_args(false, service.backend_port());
            let xdp = if case == Case::StickyDsrXdp {
                "native"
            } else {
                "off"
            };
            args.extend(["--forward", "dsr", "--xdp", xdp].map(String::from));
            // A native XDP program's transmitted frames carry no checksum state, so for the
            // XDP case the client's packets must leave with their checksums complete (and
            // so without TSO: 1500-byte packets); the tc case keeps the stack's offloads, as
            // the routed path does.
            let tx = if case == Case::StickyDsrXdp {
                "off"
            } else {
                "on"
            };
            cmd::output(
                cmd::in_ns(&bench.dsr.client, None, "ethtool").args(["-K", "eth0", "tx", tx]),
                Duration::from_secs(10),
            )
            .with_context(|| format!("transmit checksum offload {tx} on the DSR client"))?;
            Middlebox::Sticky(start_sticky(sticky_bin, &bench.dsr.lb, &args)?)
        }
        Case::StickyProxy | Case::StickyProxyCopy => {
            let kernel =
                bench
                    .topo
                    .sticky_args_on(false, PROXY_CASE_KERNEL_PORT, service.backend_port());
            let args = proxy_args(kernel, vip, case == Case::StickyProxy);
            let daemon = start_sticky(sticky_bin, bench.lb(), &args)?;
            bench
                .wait_lb_listening(vip.port())
                .with_context(|| format!("{} did not start", case.label()))?;
            Middlebox::StickyProxy { _daemon: daemon }
        }
    };
    let mut started = started;
    if let Middlebox::Proxy { proc, .. } = &mut started
        && let Err(e) = bench.wait_lb_listening(vip.port())
    {
        proc.check_alive()
            .with_context(|| format!("{} did not start", case.label()))?;
        return Err(e.context(format!("{} did not start", case.label())));
    }
    Ok(started)
}

/// `sticky run ARGS` in a balancer namespace, every thread pinned to the server CPU.
fn start_sticky(bin: &Path, lb: &Netns, args: &[String]) -> anyhow::Result<StickyProcess> {
    let daemon =
        StickyProcess::start(bin, lb, args).context("start sticky in the balancer namespace")?;
    cmd::pin_process(daemon.pid(), SERVER_CPU).context("pin the sticky daemon")?;
    Ok(daemon)
}

/// Proxy mode on `listen`, on top of the kernel path's arguments (`--iface`, a `--vip` on
/// another port, the backends): the clients' X-Forwarded-For picks the backend, as it does
/// for the HTTP-mode peers; requests without one (the upgrade service's) go by the peer.
fn proxy_args(kernel: Vec<String>, listen: SocketAddr, splice: bool) -> Vec<String> {
    let mut args = kernel;
    args.extend([
        "--proxy".to_string(),
        listen.to_string(),
        "--trusted-proxies".into(),
        CLIENT_NET.to_string(),
        "--ignore-missing-header".into(),
    ]);
    if !splice {
        args.push("--no-splice".into());
    }
    args
}

/// The nftables DNAT table in the balancer namespace; deleted on drop.
pub struct NftTable<'a> {
    bench: &'a Bench,
}

impl<'a> NftTable<'a> {
    fn create(bench: &'a Bench, vip: SocketAddr, backends: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = TempDir::new("nft")?;
        let file = dir.write("dnat.nft", &nft_rules(vip, backends))?;
        // Delete a stale table of ours first (a crashed run), then load: one transaction.
        let _ = nft(bench, &["delete", "table", "ip", NFT_TABLE]);
        cmd::output(
            cmd::in_ns(bench.lb(), None, "nft").arg("-f").arg(&file),
            Duration::from_secs(10),
        )
        .context("load the nftables DNAT rules (is nftables installed?)")?;
        Ok(Self { bench })
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let _ = nft(self.bench, &["delete", "table", "ip", NFT_TABLE]);
    }
}

fn nft(bench: &Bench, args: &[&str]) -> anyhow::Result<String> {
    cmd::output(
        cmd::in_ns(bench.lb(), None, "nft").args(args),
        Duration::from_secs(10),
    )
}

/// Empties netfilter's connection tracking in every namespace.
pub fn flush_conntrack(bench: &Bench) -> anyhow::Result<()> {
    for ns in bench.namespaces() {
        cmd::output(
            cmd::in_ns(ns, None, "conntrack").arg("-F"),
            Duration::from_secs(10),
        )
        .context("flush conntrack (apt-get install conntrack)")?;
    }
    Ok(())
}

fn nft_rules(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(k, b)| format!("{k} : {} . {}", b.ip(), b.port()))
        .collect();
    format!(
        "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; \
         policy accept;\n    ip daddr {} tcp dport {} dnat ip to jhash ip saddr mod {} map {{ {} }}\n  \
         }}\n}}\n",
        vip.ip(),
        vip.port(),
        backends.len(),
        map.join(", ")
    )
}

fn haproxy_config(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 9000\n    nbthread 1\n\n\
         defaults\n    mode tcp\n    timeout connect 3s\n    timeout client 30s\n    \
         timeout server 30s\n\n\
         listen bench\n    bind {vip}\n    balance source\n"
    );
    for (k, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server be{k} {b}\n"));
    }
    cfg
}

/// HAProxy as an HTTP proxy: every request routed by its X-Forwarded-For, server connections
/// reused across clients where that is safe.
fn haproxy_http_config(vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut cfg = format!(
        "global\n    maxconn 9000\n    nbthread 1\n\n\
         defaults\n    mode http\n    option http-keep-alive\n    timeout connect 3s\n    \
         timeout client 30s\n    timeout server 30s\n\n\
         listen bench\n    bind {vip}\n    balance hdr(X-Forwarded-For)\n    http-reuse safe\n"
    );
    for (k, b) in backends.iter().enumerate() {
        cfg.push_str(&format!("    server be{k} {b}\n"));
    }
    cfg
}

/// nginx as an HTTP proxy: X-Forwarded-For hashed per request, an upstream keep-alive pool.
fn nginx_http_config(dir: &Path, vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\n\
         worker_rlimit_nofile 19000;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
         events {{\n    worker_connections 9000;\n    multi_accept on;\n}}\n\
         http {{\n    access_log off;\n    keepalive_requests 100000000;\n    \
         keepalive_timeout 300s;\n    client_body_temp_path {d}/body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
         upstream backends {{\n        hash $http_x_forwarded_for consistent;\n{servers}        \
         keepalive 32;\n    }}\n    \
         server {{\n        listen {vip};\n        location / {{\n            \
         proxy_pass http://backends;\n            proxy_http_version 1.1;\n            \
         proxy_set_header Connection \"\";\n        }}\n    }}\n}}\n"
    )
}

fn nginx_config(dir: &Path, vip: SocketAddr, backends: &[SocketAddr]) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    format!(
        "load_module {NGINX_STREAM_MODULE};\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\n\
         worker_rlimit_nofile 19000;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log error;\n\
         events {{\n    worker_connections 9000;\n    multi_accept on;\n}}\n\
         stream {{\n    upstream backends {{\n        hash $remote_addr consistent;\n{servers}    }}\n    \
         server {{\n        listen {vip};\n        proxy_pass backends;\n        \
         proxy_half_close on;\n    }}\n}}\n",
        dir = dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<SocketAddr> {
        vec![
            "198.19.0.2:8080".parse().unwrap(),
            "198.19.1.2:8080".parse().unwrap(),
        ]
    }

    #[test]
    fn nft_rules_map_every_backend() {
        let rules = nft_rules("198.18.0.100:80".parse().unwrap(), &backends());
        assert!(rules.contains(
            "ip daddr 198.18.0.100 tcp dport 80 dnat ip to jhash ip saddr mod 2 map \
             { 0 : 198.19.0.2 . 8080, 1 : 198.19.1.2 . 8080 }"
        ));
    }

    #[test]
    fn proxies_hash_the_source() {
        let vip = "198.18.0.100:80".parse().unwrap();
        let h = haproxy_config(vip, &backends());
        assert!(h.contains("balance source") && h.contains("server be1 198.19.1.2:8080"));
        let n = nginx_config(Path::new("/tmp/x"), vip, &backends());
        assert!(n.contains("hash $remote_addr consistent;"));
        // The bulk sink answers its count after the client's FIN.
        assert!(n.contains("proxy_half_close on;"));
        assert!(n.contains("listen 198.18.0.100:80;") && n.contains("server 198.19.0.2:8080;"));
    }

    #[test]
    fn http_peers_hash_x_forwarded_for_per_request() {
        let vip = "198.18.0.100:80".parse().unwrap();
        let h = haproxy_http_config(vip, &backends());
        assert!(h.contains("mode http") && h.contains("balance hdr(X-Forwarded-For)"));
        assert!(h.contains("http-reuse safe") && h.contains("server be0 198.19.0.2:8080"));
        let n = nginx_http_config(Path::new("/tmp/x"), vip, &backends());
        assert!(n.contains("hash $http_x_forwarded_for consistent;"));
        assert!(n.contains("keepalive 32;") && n.contains("proxy_set_header Connection \"\";"));
        assert!(!n.contains("load_module"));
        // The fixed-rate run keeps its connections open for good, as wrk does.
        assert!(n.contains("keepalive_requests 100000000;"));
        for case in [Case::HaproxyHttp, Case::NginxHttp, Case::StickyProxy] {
            assert!(case.forwards_for() && !case.transparent());
        }
        assert!(!Case::Haproxy.forwards_for());
        assert_eq!(Case::NginxHttp.services(), &[Service::Http]);
    }

    #[test]
    fn proxy_mode_listens_beside_an_idle_vip() {
        let kernel = vec![
            "--iface".to_string(),
            "cli0".into(),
            "--vip".into(),
            Bench::vip(PROXY_CASE_KERNEL_PORT).to_string(),
            "--backend".into(),
            "198.19.0.2:8080".into(),
        ];
        let listen = Bench::vip(Service::Http.vip_port());
        let splice = proxy_args(kernel.clone(), listen, true);
        assert_eq!(
            splice[kernel.len()..kernel.len() + 2],
            ["--proxy".to_string(), "198.18.0.100:80".into()]
        );
        assert!(splice.contains(&CLIENT_NET.to_string()));
        let copy = proxy_args(kernel, listen, false);
        assert_eq!(copy.last().map(String::as_str), Some("--no-splice"));
        // sticky refuses a proxy address that is also a VIP.
        for service in Service::ALL {
            assert_ne!(service.vip_port(), PROXY_CASE_KERNEL_PORT);
        }
    }

    #[test]
    fn proxy_cases_are_http_only_and_not_transparent() {
        for case in [Case::StickyProxy, Case::StickyProxyCopy] {
            assert!(!case.transparent());
            assert!(!case.services().contains(&Service::Echo));
            assert!(case.services().contains(&Service::Upgrade));
        }
        assert!(Case::Sticky.transparent());
        assert_eq!(Case::Routed.services(), &Service::ALL);
        for case in [Case::StickyDsrTc, Case::StickyDsrXdp] {
            assert!(case.transparent() && case.dsr() && case.sticky_kernel());
            assert_eq!(case.services(), &[Service::Http, Service::Bulk]);
        }
    }

    #[test]
    fn routes_send_balanced_cases_to_the_vip() {
        let r = route(Case::Sticky, Service::Echo, 2);
        assert_eq!(r.targets, vec![Bench::vip(7)]);
        assert_eq!(route(Case::Routed, Service::Http, 2).targets.len(), 2);
        assert_eq!(
            route(Case::Direct, Service::Bulk, 2).targets,
            vec![Bench::direct(5201)]
        );
        // DSR: the VIP on the backends' own port.
        assert_eq!(
            route(Case::StickyDsrXdp, Service::Http, 2).targets,
            vec![SocketAddr::new(
                dsr::vip(false),
                Service::Http.backend_port()
            )]
        );
    }
}
