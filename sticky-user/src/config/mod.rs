//! `sticky run` configuration: flags, or the same names in a TOML file (flags win), checked
//! as a whole before anything touches the kernel.

mod forward;
mod layer;
mod merge;
mod prefix;
mod route_prefix;

use std::{collections::HashSet, net::SocketAddr, time::Duration};

pub use forward::{ForwardError, ForwardMode, Forwarding, XdpMode};
pub use layer::Layer;
pub use merge::Merge;
pub(crate) use merge::merge_fields;
pub use prefix::{AffinityPrefix, PrefixError};
pub use route_prefix::{RoutePrefix, RoutePrefixError};
pub use sticky_common::defaults::{
    DEFAULT_MAX_CLIENTS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_NEW_FLOWS, DEFAULT_TABLE_SIZE,
    MAX_TABLE_SIZE, MAX_VIPS, MIN_MAP_ENTRIES,
};
use sticky_common::maps::MAX_BACKENDS;

use crate::{
    addr::{AddrError, BackendSpec, VipAddr, parse_endpoint},
    discovery::{Source, SourceError},
    duration,
    health::{HealthConfig, HealthError},
    logging::LogFormat,
    peers::{PeersConfig, PeersError},
    proxy::config::{ProxyConfig, ProxyConfigError},
};

pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_UDP_TIMEOUT: Duration =
    Duration::from_nanos(sticky_common::defaults::DEFAULT_UDP_TIMEOUT_NS);
/// How long a stopping daemon keeps forwarding after withdrawing its announcement: BGP
/// withdrawals reach routers within a second or two.
pub const DEFAULT_WITHDRAW_GRACE: Duration = Duration::from_secs(3);
/// Shortest UDP idle timeout: a flow's time is refreshed once a second, so shorter ones would
/// end flows whose clients send just under a second apart.
pub const MIN_UDP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SEED: u32 = 0;
pub const DEFAULT_INSTANCE: &str = "default";

/// Help text for a flag whose default is a constant, so the value is written once.
pub fn with_default(help: &str, default: impl std::fmt::Display) -> String {
    format!("{help} [default: {default}]")
}

/// What a valid configuration holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub ifaces: Vec<String>,
    pub vips: Vec<VipAddr>,
    pub backends: Vec<BackendSpec>,
    /// Where more backends come from (`--backend-dns`, `--backend-srv`).
    pub dns: Vec<Source>,
    /// The DNS server for them; none: the system's.
    pub dns_server: Option<SocketAddr>,
    pub seed: u32,
    pub table_size: u32,
    pub affinity_timeout: Duration,
    /// A UDP flow's idle timeout (`--udp-timeout`).
    pub udp_timeout: Duration,
    /// Client key prefix lengths for hashing and affinity.
    pub affinity_prefix: AffinityPrefix,
    /// How long a joining or rising backend ramps up its table share (`--slow-start`).
    pub slow_start: Option<Duration>,
    /// NAT or direct server return (`--forward`, `--xdp`, `--dsr-source`).
    pub forward: Forwarding,
    /// NAT: replies of flows another node balanced are rewritten too (`--replies-any-node`).
    pub replies_any_node: bool,
    /// The routing table the VIPs' host routes are announced in (`--announce-table`).
    pub announce_table: Option<u32>,
    /// Wait after withdrawing before detaching (`--withdraw-grace`).
    pub withdraw_grace: Duration,
    /// Networks announced for the backends' replies while attached (`--announce-return`).
    pub announce_return: Vec<RoutePrefix>,
    pub max_flows: u32,
    pub max_new_flows: u32,
    pub max_clients: u32,
    /// The affinity exchange with other nodes (`--peers`), when on.
    pub peers: Option<PeersConfig>,
    pub instance: String,
    pub health: HealthConfig,
    pub metrics: Option<SocketAddr>,
    /// The network namespace the daemon enters itself (`--netns`).
    pub netns: Option<String>,
    /// Chosen before the file is read in full (see `cli::run`); here so a reload can tell.
    pub log_format: LogFormat,
    pub proxy: Option<ProxyConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Toml { path: String, message: String },
    #[error("no interface: give --iface IF (or iface = [\"IF\"] in the config file)")]
    NoIface,
    #[error("unknown interface '{0}': `ip link` lists the interfaces here")]
    UnknownIface(String),
    #[error(
        "no VIP: give --vip ADDR:PORT or udp:ADDR:PORT (or vip = [\"ADDR:PORT\"] in the config \
         file)"
    )]
    NoVip,
    #[error(
        "no backends: give at least one --backend ADDR:PORT[@WEIGHT], --backend-dns NAME:PORT \
         or --backend-srv NAME"
    )]
    NoBackends,
    #[error("vip {0}")]
    Vip(AddrError),
    #[error("backend {0}")]
    Backend(AddrError),
    #[error("{0}")]
    Source(SourceError),
    #[error("dns-server {0}")]
    DnsServer(AddrError),
    #[error("{0} VIPs is more than the {MAX_VIPS} sticky supports")]
    TooManyVips(usize),
    #[error("duplicate VIP {0}")]
    DuplicateVip(VipAddr),
    #[error("duplicate backend {0}")]
    DuplicateBackend(SocketAddr),
    #[error("{0} backends is more than the {MAX_BACKENDS} sticky supports")]
    TooManyBackends(usize),
    #[error(
        "VIPs and backends mix IPv4 and IPv6 ({0}): sticky does not translate between families; \
         run one instance per family"
    )]
    MixedFamilies(SocketAddr),
    #[error(
        "table-size {0} must be a prime from 7 to {MAX_TABLE_SIZE} (default {DEFAULT_TABLE_SIZE})"
    )]
    TableSize(u32),
    #[error("affinity-timeout: {0}")]
    Timeout(duration::DurationError),
    #[error("udp-timeout: {0}")]
    UdpTimeout(duration::DurationError),
    #[error("udp-timeout {0}: at least 5s (a UDP flow's time is kept to the second)")]
    UdpTimeoutTooShort(String),
    #[error(
        "{0}: proxy mode forwards TCP connections; a UDP VIP needs the kernel path (no --proxy)"
    )]
    UdpWithProxy(VipAddr),
    #[error(
        "--forward dsr with only UDP VIPs and no --health-check: a DSR node cannot see backends \
         fail, and the default tcp check needs a TCP port on the backend; give --health-check \
         tcp or http:/PATH for a port the backends serve (per backend: [health.backend]), or \
         none"
    )]
    UdpDsrHealth,
    #[error(
        "replies-any-node: a DSR node never sees replies (backends answer clients directly); \
         it applies with --forward nat"
    )]
    RepliesAnyNodeDsr,
    #[error(
        "replies-any-node: the backends serve VIPs {0} and {1} of one protocol, and a reply does \
         not tell which it answers; run one instance per VIP"
    )]
    RepliesAnyNodeTwoVips(VipAddr, VipAddr),
    #[error(
        "announce-table {0}: give a table of sticky's own, 1-4294967295 except 253-255 (default, \
         main, local) and 0"
    )]
    AnnounceTable(u32),
    #[error("withdraw-grace: {0}")]
    WithdrawGrace(duration::DurationError),
    #[error("withdraw-grace applies with --announce-table")]
    GraceWithoutAnnounce,
    #[error("{0}")]
    AnnounceReturn(RoutePrefixError),
    #[error(
        "announce-return: replies come through a node only in NAT mode with --replies-any-node \
         (and --announce-table to announce them in)"
    )]
    ReturnWithoutAnyNode,
    #[error("announce-return {0}: a VIP's own host route; give the clients' networks")]
    ReturnIsVip(RoutePrefix),
    #[error("slow-start: {0}")]
    SlowStart(duration::DurationError),
    #[error("{0}")]
    Prefix(PrefixError),
    #[error("{0}")]
    Forward(ForwardError),
    #[error("{name} must be at least {min}")]
    TooSmall { name: &'static str, min: u32 },
    #[error("instance name '{0}' must be 1-32 letters, digits, '-' or '_'")]
    Instance(String),
    #[error("{0}")]
    Health(HealthError),
    #[error("metrics {0}")]
    Metrics(AddrError),
    #[error("{0}")]
    Proxy(ProxyConfigError),
    #[error("{0}")]
    Peers(PeersError),
    #[error("peers: proxy mode keeps affinity in userspace; the exchange serves the kernel path")]
    PeersWithProxy,
    #[error(
        "proxy address {0} is also a --vip: the kernel would DNAT its packets before the proxy \
         sees them; give the proxy its own address or port"
    )]
    ProxyOnVip(SocketAddr),
}

impl Layer {
    /// Checks everything that does not depend on this host.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if self.iface.is_empty() {
            return Err(ConfigError::NoIface);
        }
        if self.vip.is_empty() {
            return Err(ConfigError::NoVip);
        }
        if self.backend.is_empty() && self.backend_dns.is_empty() && self.backend_srv.is_empty() {
            return Err(ConfigError::NoBackends);
        }
        let dns = (self.backend_dns.iter().map(|s| Source::host(s)))
            .chain(self.backend_srv.iter().map(|s| Source::srv(s)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Source)?;
        let dns_server = match &self.dns_server {
            Some(s) => Some(parse_endpoint(s).map_err(ConfigError::DnsServer)?),
            None => None,
        };
        let mut vips = Vec::new();
        for v in &self.vip {
            let vip: VipAddr = v.parse().map_err(ConfigError::Vip)?;
            if vips.contains(&vip) {
                return Err(ConfigError::DuplicateVip(vip));
            }
            vips.push(vip);
        }
        if vips.len() > MAX_VIPS as usize {
            return Err(ConfigError::TooManyVips(vips.len()));
        }
        let mut backends = Vec::new();
        let mut seen = HashSet::new();
        for b in &self.backend {
            let spec: BackendSpec = b.parse().map_err(ConfigError::Backend)?;
            if !seen.insert(spec.addr) {
                return Err(ConfigError::DuplicateBackend(spec.addr));
            }
            backends.push(spec);
        }
        if backends.len() > MAX_BACKENDS as usize {
            return Err(ConfigError::TooManyBackends(backends.len()));
        }
        let v4 = vips[0].is_ipv4();
        let endpoints = (vips.iter().map(|v| v.addr)).chain(backends.iter().map(|b| b.addr));
        if let Some(odd) = endpoints.into_iter().find(|a| a.is_ipv4() != v4) {
            return Err(ConfigError::MixedFamilies(odd));
        }
        let table_size = self.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !(7..=MAX_TABLE_SIZE).contains(&table_size) || !is_prime(table_size) {
            return Err(ConfigError::TableSize(table_size));
        }
        let affinity_timeout = match &self.affinity_timeout {
            Some(t) => duration::parse(t).map_err(ConfigError::Timeout)?,
            None => DEFAULT_AFFINITY_TIMEOUT,
        };
        let udp_timeout = match &self.udp_timeout {
            Some(t) => duration::parse(t).map_err(ConfigError::UdpTimeout)?,
            None => DEFAULT_UDP_TIMEOUT,
        };
        if udp_timeout < MIN_UDP_TIMEOUT {
            return Err(ConfigError::UdpTimeoutTooShort(
                self.udp_timeout.clone().unwrap_or_default(),
            ));
        }
        let affinity_prefix = match &self.affinity_prefix {
            Some(p) => p.parse().map_err(ConfigError::Prefix)?,
            None => AffinityPrefix::default(),
        };
        let slow_start = match &self.slow_start {
            Some(t) => Some(duration::parse(t).map_err(ConfigError::SlowStart)?),
            None => None,
        };
        let max_flows = self.max_flows.unwrap_or(DEFAULT_MAX_FLOWS);
        let max_new_flows = self.max_new_flows.unwrap_or(DEFAULT_MAX_NEW_FLOWS);
        let max_clients = self.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS);
        let sizes = [
            ("max-flows", max_flows),
            ("max-new-flows", max_new_flows),
            ("max-clients", max_clients),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n < MIN_MAP_ENTRIES) {
            return Err(ConfigError::TooSmall {
                name,
                min: MIN_MAP_ENTRIES,
            });
        }
        let instance = self
            .instance
            .unwrap_or_else(|| DEFAULT_INSTANCE.to_string());
        let instance_ok = (1..=32).contains(&instance.len())
            && instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !instance_ok {
            return Err(ConfigError::Instance(instance));
        }
        let mut health_layer = self.health;
        let only_udp = vips.iter().all(VipAddr::is_udp);
        if self.forward == Some(ForwardMode::Dsr) && health_layer.check.is_none() && only_udp {
            return Err(ConfigError::UdpDsrHealth);
        }
        if self.forward == Some(ForwardMode::Dsr) && health_layer.check.is_none() {
            // Backends answer clients directly: their resets never pass this node, so the
            // passive health of NAT sees nothing. Active checks stand in.
            health_layer.check = Some("tcp".into());
        }
        let health = health_layer.validate().map_err(ConfigError::Health)?;
        let proxy = self.proxy.validate().map_err(ConfigError::Proxy)?;
        if proxy.is_some()
            && let Some(udp) = vips.iter().find(|v| v.is_udp())
        {
            return Err(ConfigError::UdpWithProxy(*udp));
        }
        let backend_addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let vip_addrs: Vec<SocketAddr> = vips.iter().map(|v| v.addr).collect();
        let forward = forward::validate(
            self.forward,
            self.xdp,
            &self.dsr_source,
            &vip_addrs,
            &backend_addrs,
            proxy.is_some(),
        )
        .map_err(ConfigError::Forward)?;
        let replies_any_node = self.replies_any_node.unwrap_or(false);
        if replies_any_node {
            if forward.is_dsr() {
                return Err(ConfigError::RepliesAnyNodeDsr);
            }
            for (i, a) in vips.iter().enumerate() {
                if let Some(b) = vips[..i].iter().find(|b| b.transport == a.transport) {
                    return Err(ConfigError::RepliesAnyNodeTwoVips(*b, *a));
                }
            }
        }
        if let Some(t) = self.announce_table
            && matches!(t, 0 | 253..=255)
        {
            return Err(ConfigError::AnnounceTable(t));
        }
        if self.withdraw_grace.is_some() && self.announce_table.is_none() {
            return Err(ConfigError::GraceWithoutAnnounce);
        }
        let mut announce_return = self
            .announce_return
            .iter()
            .flat_map(|list| list.split(','))
            .map(|p| p.parse().map_err(ConfigError::AnnounceReturn))
            .collect::<Result<Vec<RoutePrefix>, _>>()?;
        // One list whatever the order written: a reload that only reorders changes nothing.
        announce_return.sort();
        announce_return.dedup();
        if let Some(p) = (announce_return.iter())
            .find(|p| vips.iter().any(|v| RoutePrefix::host(v.addr.ip()) == **p))
        {
            return Err(ConfigError::ReturnIsVip(*p));
        }
        let carries_replies = replies_any_node && self.announce_table.is_some();
        if !announce_return.is_empty() && !carries_replies {
            return Err(ConfigError::ReturnWithoutAnyNode);
        }
        let withdraw_grace = match &self.withdraw_grace {
            Some(t) => duration::parse(t).map_err(ConfigError::WithdrawGrace)?,
            None => DEFAULT_WITHDRAW_GRACE,
        };
        if let Some(p) = &proxy
            && vips.contains(&VipAddr::tcp(p.listen))
        {
            return Err(ConfigError::ProxyOnVip(p.listen));
        }
        let metrics = match &self.metrics {
            Some(m) => Some(parse_endpoint(m).map_err(ConfigError::Metrics)?),
            None => None,
        };
        let peers = crate::peers::validate(
            &self.peers,
            self.peer_listen.as_deref(),
            self.peer_key_file.as_deref(),
        )
        .map_err(ConfigError::Peers)?;
        if peers.is_some() && proxy.is_some() {
            return Err(ConfigError::PeersWithProxy);
        }
        Ok(Config {
            peers,
            proxy,
            health,
            metrics,
            ifaces: self.iface,
            vips,
            backends,
            dns,
            dns_server,
            seed: self.seed.unwrap_or(DEFAULT_SEED),
            table_size,
            affinity_timeout,
            udp_timeout,
            affinity_prefix,
            slow_start,
            forward,
            replies_any_node,
            announce_table: self.announce_table,
            withdraw_grace,
            announce_return,
            max_flows,
            max_new_flows,
            max_clients,
            instance,
            netns: self.netns,
            log_format: self.log_format.unwrap_or_default(),
        })
    }
}

impl Config {
    /// Checks what depends on this host: the interfaces exist.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        for iface in &self.ifaces {
            let Ok(name) = std::ffi::CString::new(iface.as_str()) else {
                return Err(ConfigError::UnknownIface(iface.clone()));
            };
            // SAFETY: a valid NUL-terminated string.
            if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
                return Err(ConfigError::UnknownIface(iface.clone()));
            }
        }
        Ok(())
    }

    /// The settings (by key) that differ in `new` but only take effect on a restart: maps are
    /// sized, programs attached and endpoints bound at start. Reload applies the rest.
    pub fn restart_only(&self, new: &Config) -> Vec<&'static str> {
        // Taken apart in full so a new setting does not compile until it is sorted here.
        let Config {
            ifaces,
            vips,
            backends: _,
            dns,
            dns_server,
            seed,
            table_size,
            affinity_timeout,
            udp_timeout,
            affinity_prefix,
            slow_start: _,
            forward,
            replies_any_node,
            announce_table,
            withdraw_grace: _,
            announce_return,
            max_flows,
            max_new_flows,
            max_clients,
            peers,
            instance,
            health: _,
            metrics,
            netns,
            log_format,
            proxy,
        } = self;
        [
            ("iface", *ifaces != new.ifaces),
            ("vip", *vips != new.vips),
            ("backend-dns/backend-srv", *dns != new.dns),
            ("dns-server", *dns_server != new.dns_server),
            ("seed", *seed != new.seed),
            ("table-size", *table_size != new.table_size),
            (
                "affinity-timeout",
                *affinity_timeout != new.affinity_timeout,
            ),
            ("udp-timeout", *udp_timeout != new.udp_timeout),
            // Affinity entries are kept under the old keys: a new prefix starts afresh.
            ("affinity-prefix", *affinity_prefix != new.affinity_prefix),
            // Which programs are attached is decided at start.
            ("forward/xdp/dsr-source", *forward != new.forward),
            (
                "replies-any-node",
                *replies_any_node != new.replies_any_node,
            ),
            ("announce-table", *announce_table != new.announce_table),
            ("announce-return", *announce_return != new.announce_return),
            ("max-flows", *max_flows != new.max_flows),
            ("max-new-flows", *max_new_flows != new.max_new_flows),
            ("max-clients", *max_clients != new.max_clients),
            // The socket is bound and the key read at start.
            ("peers/peer-listen/peer-key-file", *peers != new.peers),
            ("instance", *instance != new.instance),
            ("metrics", *metrics != new.metrics),
            ("netns", *netns != new.netns),
            ("log-format", *log_format != new.log_format),
            // The proxy's listener, sources and limits are set up once at start: a reload
            // that changes them is refused rather than silently ignored.
            ("proxy", *proxy != new.proxy),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(iface: &[&str], vip: &[&str], backend: &[&str]) -> Layer {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect();
        Layer {
            iface: v(iface),
            vip: v(vip),
            backend: v(backend),
            ..Layer::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let c = layer(
            &["eth0"],
            &["10.0.0.1:80"],
            &["10.0.1.1:8080@2", "10.0.1.2:8080"],
        )
        .validate()
        .unwrap();
        assert_eq!(c.table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(c.affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
        assert_eq!(c.backends[0].weight, 2);
        assert_eq!(c.instance, "default");
    }

    #[test]
    fn udp_vips_from_a_file() {
        let text = "iface = [\"e\"]\nvip = [\"udp:10.0.0.1:443\", \"tcp:10.0.0.1:443\", \
                    \"10.0.0.1:80\"]\nbackend = [\"10.0.1.1:443\"]\nudp-timeout = \"30s\"\n";
        let c = Layer::from_toml(text).unwrap().validate().unwrap();
        let shown: Vec<String> = c.vips.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["udp:10.0.0.1:443", "10.0.0.1:443", "10.0.0.1:80"]);
        assert_eq!(c.udp_timeout, Duration::from_secs(30));
        let c = layer(&["e"], &["udp:10.0.0.1:53"], &["10.0.1.1:53"])
            .validate()
            .unwrap();
        assert_eq!(c.udp_timeout, DEFAULT_UDP_TIMEOUT);
        // One VIP per protocol: replies tell their VIP by the backend alone.
        let mut l = layer(
            &["e"],
            &["udp:10.0.0.1:443", "10.0.0.1:443"],
            &["10.0.1.1:443"],
        );
        l.replies_any_node = Some(true);
        assert!(l.validate().unwrap().replies_any_node);
        // A UDP-only DSR instance with a check given is fine.
        let mut l = layer(&["e"], &["udp:10.0.0.1:53"], &["10.0.1.1:53"]);
        l.forward = Some(ForwardMode::Dsr);
        l.health.check = Some("none".into());
        assert!(l.validate().is_ok());
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let msg = |l: Layer| l.validate().unwrap_err().to_string();
        assert!(msg(layer(&[], &["10.0.0.1:80"], &["10.0.1.1:80"])).contains("no interface"));
        assert!(msg(layer(&["e"], &[], &["10.0.1.1:80"])).contains("no VIP"));
        assert!(msg(layer(&["e"], &["10.0.0.1:80"], &[])).contains("no backends"));
        assert!(msg(layer(&["e"], &["10.0.0.1"], &["10.0.1.1:80"])).contains("has no port"));
        assert!(
            msg(layer(
                &["e"],
                &["10.0.0.1:80"],
                &["10.0.1.1:80", "10.0.1.1:80@3"]
            ))
            .contains("duplicate backend 10.0.1.1:80")
        );
        assert!(msg(layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80@0"])).contains("weight"));
        assert!(msg(layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80@x"])).contains("weight"));
        assert!(msg(layer(&["e"], &["10.0.0.1:80"], &["[fd00::1]:80"])).contains("mix IPv4"));
        let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"]);
        l.table_size = Some(65_536);
        assert!(msg(l).contains("prime"));
        let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"]);
        l.affinity_timeout = Some("soon".into());
        assert!(msg(l).contains("invalid duration"));
        let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"]);
        l.instance = Some("../etc".into());
        assert!(msg(l).contains("instance name"));
        let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"]);
        l.affinity_prefix = Some("24".into());
        assert!(msg(l).contains("V4LEN,V6LEN"));
    }

    #[test]
    fn map_sizes_below_the_minimum_are_named() {
        for (name, set) in [
            (
                "max-flows",
                (|l: &mut Layer| l.max_flows = Some(63)) as fn(&mut Layer),
            ),
            ("max-new-flows", |l| l.max_new_flows = Some(63)),
            ("max-clients", |l| l.max_clients = Some(63)),
        ] {
            let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"]);
            set(&mut l);
            let err = l.validate().unwrap_err().to_string();
            assert_eq!(err, format!("{name} must be at least 64"));
        }
    }

    #[test]
    fn more_vips_than_the_map_holds_are_refused() {
        let vips: Vec<String> = (1..=MAX_VIPS + 1)
            .map(|p| format!("10.0.0.1:{p}"))
            .collect();
        let vips: Vec<&str> = vips.iter().map(String::as_str).collect();
        let err = layer(&["e"], &vips, &["10.0.1.1:80"])
            .validate()
            .unwrap_err();
        assert!(matches!(err, ConfigError::TooManyVips(65)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "65 VIPs is more than the 64 sticky supports"
        );
        let most = &vips[..MAX_VIPS as usize];
        assert!(layer(&["e"], most, &["10.0.1.1:80"]).validate().is_ok());
    }

    #[test]
    fn restart_only_names_the_changed_settings_that_need_a_restart() {
        let running = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.1:80"])
            .validate()
            .unwrap();
        assert!(running.restart_only(&running.clone()).is_empty());
        let mut l = layer(&["e"], &["10.0.0.1:80"], &["10.0.1.2:80@3"]);
        l.health.check = Some("tcp".into());
        let reloadable = l.clone().validate().unwrap();
        assert!(running.restart_only(&reloadable).is_empty());
        l.seed = Some(7);
        l.affinity_prefix = Some("24,64".into());
        l.max_flows = Some(1024);
        l.vip = vec!["10.0.0.2:80".into()];
        l.log_format = Some(LogFormat::Json);
        let fixed = l.validate().unwrap();
        assert_eq!(
            running.restart_only(&fixed),
            ["vip", "seed", "affinity-prefix", "max-flows", "log-format"]
        );
    }

    #[test]
    fn toml_errors_name_line_and_field() {
        let err =
            Layer::from_toml("iface = [\"eth0\"]\nbackends = [\"10.0.0.1:80\"]\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("backends"), "{err}");
        let err = Layer::from_toml("iface = [\"eth0\"]\ntable-size = \"big\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = Layer::from_toml(
            "iface = [\"eth0\"]\nvip = [\"10.0.0.1:80\"]\nbackend = [\"10.0.1.1:80\"]\nseed = 7\n",
        )
        .unwrap();
        let flags = layer(&[], &[], &["10.0.1.2:80"]);
        let c = flags.over(file).validate().unwrap();
        assert_eq!(c.ifaces, ["eth0"]);
        assert_eq!(c.seed, 7);
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].addr.to_string(), "10.0.1.2:80");
    }

    #[test]
    fn unknown_interface_is_reported() {
        let c = layer(&["no-such-if0"], &["10.0.0.1:80"], &["10.0.1.1:80"])
            .validate()
            .unwrap();
        assert!(matches!(c.check_host(), Err(ConfigError::UnknownIface(_))));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(7) && is_prime(1_000_003));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(9));
    }
}
