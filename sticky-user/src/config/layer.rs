//! Every `sticky run` setting, each optional: one layer from the command line, one from the
//! `--config` file, under the same names (flag `--max-flows` is key `max-flows`).

use std::path::Path;

use serde::Deserialize;

use super::{
    ConfigError, DEFAULT_AFFINITY_TIMEOUT, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_NEW_FLOWS, DEFAULT_TABLE_SIZE, DEFAULT_UDP_TIMEOUT, DEFAULT_WITHDRAW_GRACE,
    forward::{ForwardMode, XdpMode},
    merge::merge_fields,
    with_default,
};
use crate::{duration, health::HealthLayer, logging::LogFormat, proxy::config::ProxyLayer};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Layer {
    /// Client-facing interface to attach to (repeatable).
    #[arg(long, value_name = "IF")]
    pub iface: Vec<String>,
    /// Virtual IP and port clients connect to (repeatable; IPv6 as [ADDR]:PORT): TCP, or UDP
    /// written udp:ADDR:PORT (tcp:ADDR:PORT may be written too).
    #[arg(long, value_name = "[udp:]ADDR:PORT")]
    pub vip: Vec<String>,
    /// Backend and optional weight (repeatable; weight 1-1000, default 1).
    #[arg(long, value_name = "ADDR:PORT[@WEIGHT]")]
    pub backend: Vec<String>,
    /// Backends from the A/AAAA records of NAME, each on PORT (repeatable): re-resolved when
    /// the TTL runs out; new addresses join, vanished ones drain.
    #[arg(long, value_name = "NAME:PORT")]
    pub backend_dns: Vec<String>,
    /// Backends from the SRV records of NAME, e.g. _http._tcp.web.service.consul (repeatable).
    #[arg(long, value_name = "NAME")]
    pub backend_srv: Vec<String>,
    /// DNS server for --backend-dns/--backend-srv [default: the system's, /etc/resolv.conf].
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_server: Option<String>,
    /// Hash seed: nodes with the same seed and backends pick the same backend per client.
    #[arg(long)]
    pub seed: Option<u32>,
    #[arg(long, help = with_default("Maglev table slots, a prime", DEFAULT_TABLE_SIZE))]
    pub table_size: Option<u32>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "How long a client's new connections keep going to its backend after its last packet",
        duration::format(DEFAULT_AFFINITY_TIMEOUT),
    ))]
    pub affinity_timeout: Option<String>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "A UDP flow ends after this long without a datagram from its client (at least 5s); \
         its next datagram is balanced afresh, affinity still applying",
        duration::format(DEFAULT_UDP_TIMEOUT),
    ))]
    pub udp_timeout: Option<String>,
    /// Leading bits of a client's address that key its hash and affinity, IPv4 and IPv6: with
    /// 24,64 every client of a /24 (or /64) goes to one backend, as when a mobile client
    /// changes address within its carrier's range [default: 32,128].
    #[arg(long, value_name = "V4LEN,V6LEN")]
    pub affinity_prefix: Option<String>,
    /// A backend that joins or comes back up takes its share of new clients gradually over
    /// this long (its table share grows linearly from 0); affine clients of the others stay
    /// [default: off].
    #[arg(long, value_name = "DURATION")]
    pub slow_start: Option<String>,
    /// How client packets reach backends: nat (replies come back through this node) or dsr
    /// (IPIP/IP6IP6 to the backend, which answers the client directly; backends need
    /// `sticky backend-setup`; health checks default to tcp) [default: nat].
    #[arg(long, value_name = "MODE")]
    pub forward: Option<ForwardMode>,
    /// NAT: rewrite backend replies of flows another node balanced (behind ECMP, or backends
    /// routing through a gateway any node may be), by the backend's address: each backend
    /// then answers one VIP per protocol, so an instance with two VIPs of one protocol is
    /// refused [default: off].
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub replies_any_node: Option<bool>,
    /// Announce the VIPs through the host's routing daemon: their host routes (dev lo) are
    /// kept in routing table ID exactly while this instance is ready (attached, a backend in
    /// service, not drained), for BIRD/FRR/GoBGP to export (deploy/) [default: off].
    #[arg(long, value_name = "ID")]
    pub announce_table: Option<u32>,
    #[arg(long, value_name = "DURATION", help = with_default(
        "On SIGTERM or `sticky stop`, how long to wait after withdrawing the announcement \
         before detaching, for routers to move traffic away",
        duration::format(DEFAULT_WITHDRAW_GRACE),
    ))]
    pub withdraw_grace: Option<String>,
    /// NAT with --replies-any-node: also keep these networks (the clients', usually 0.0.0.0/0
    /// and ::/0; repeatable or a comma list) in the announce table while the programs are
    /// attached, drained or not, for routers to send backends' replies through this node;
    /// withdrawn on stop one grace period after the VIPs, then another before detaching
    /// [default: none].
    #[arg(long, value_name = "PREFIX,...")]
    pub announce_return: Vec<String>,
    /// DSR on XDP: auto (native where the driver has it, else tc), native, generic or off
    /// [default: auto].
    #[arg(long, value_name = "MODE")]
    pub xdp: Option<XdpMode>,
    /// DSR: outer source address, one per family (repeatable) [default: the interface's own
    /// global address].
    #[arg(long, value_name = "ADDR")]
    pub dsr_source: Vec<String>,
    #[arg(long, help = with_default(
        "Connection-tracking entries (two per connection)",
        DEFAULT_MAX_FLOWS,
    ))]
    pub max_flows: Option<u32>,
    #[arg(long, help = with_default(
        "Entries for connections still in their handshake (two per connection); SYN floods \
         churn only these, never established flows",
        DEFAULT_MAX_NEW_FLOWS,
    ))]
    pub max_new_flows: Option<u32>,
    #[arg(long, help = with_default("Client-affinity entries", DEFAULT_MAX_CLIENTS))]
    pub max_clients: Option<u32>,
    /// Other sticky nodes of the same configuration to share client affinity with, over UDP
    /// (repeatable or a comma list): a client's new connections then reach the same backend
    /// whichever node they hit. Needs --peer-listen and --peer-key-file [default: off].
    #[arg(long, value_name = "ADDR:PORT,...")]
    pub peers: Vec<String>,
    /// Where this node receives its peers' affinity datagrams (and sends its own from).
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_listen: Option<String>,
    /// The secret every node shares (at least 32 bytes, not readable by every user): each
    /// datagram carries an HMAC-SHA256 tag made with it.
    #[arg(long, value_name = "PATH")]
    pub peer_key_file: Option<String>,
    /// From the global `--instance` flag or the file's `instance` key.
    #[arg(skip)]
    pub instance: Option<String>,
    /// Serve Prometheus metrics on ADDR:PORT (/metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// Run in this network namespace (a name from `ip netns list`, or a path): entered by the
    /// daemon itself, mounts untouched, so pins outlive it (unlike `ip netns exec`).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Log lines as text, or as JSON objects (keys ts, level, target, msg, then fields), on
    /// stdout and stderr alike [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(flatten)]
    pub health: HealthLayer,
    #[command(flatten)]
    pub proxy: ProxyLayer,
}

merge_fields!(Layer {
    iface,
    vip,
    backend,
    backend_dns,
    backend_srv,
    dns_server,
    seed,
    table_size,
    affinity_timeout,
    udp_timeout,
    affinity_prefix,
    slow_start,
    forward,
    replies_any_node,
    announce_table,
    withdraw_grace,
    announce_return,
    xdp,
    dsr_source,
    max_flows,
    max_new_flows,
    max_clients,
    peers,
    peer_listen,
    peer_key_file,
    instance,
    metrics,
    netns,
    log_format,
    health,
    proxy,
});

impl Layer {
    /// Reads a TOML file; errors name the file, line and field.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Toml {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            // Unknown keys are reported against their whole table: point at the key instead.
            let key_line = msg
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split_once('`'))
                .and_then(|(key, _)| {
                    text.lines()
                        .position(|l| l.trim_start().starts_with(key))
                        .map(|i| i + 1)
                });
            if let Some(line) = key_line {
                return format!("line {line}: {msg}");
            }
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })
    }
}
