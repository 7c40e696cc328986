//! `sticky run`: flags, mapped one to one onto config-file keys.

use std::path::PathBuf;

use crate::config::Layer;

/// Balance VIP traffic on interfaces to backends, in the kernel (tc eBPF).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Client-facing interface to attach to (repeatable).
    #[arg(long = "iface", value_name = "IF")]
    iface: Vec<String>,
    /// Virtual IP and port clients connect to (repeatable; IPv6 as [ADDR]:PORT).
    #[arg(long = "vip", value_name = "ADDR:PORT")]
    vip: Vec<String>,
    /// Backend and optional weight (repeatable; weight 1-1000, default 1).
    #[arg(long = "backend", value_name = "ADDR:PORT[@WEIGHT]")]
    backend: Vec<String>,
    /// TOML file with the same settings (flag names as keys); flags override it, SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Hash seed: nodes with the same seed and backends pick the same backend per client.
    #[arg(long)]
    seed: Option<u32>,
    /// Maglev table slots, a prime [default: 65537].
    #[arg(long)]
    table_size: Option<u32>,
    /// How long a client's new connections keep going to its backend after its last packet
    /// [default: 30m].
    #[arg(long, value_name = "DURATION")]
    affinity_timeout: Option<String>,
    /// Connection-tracking entries (two per connection) [default: 262144].
    #[arg(long)]
    max_flows: Option<u32>,
    /// Entries for connections still in their handshake (two per connection); SYN floods
    /// churn only these, never established flows [default: 131072].
    #[arg(long)]
    max_new_flows: Option<u32>,
    /// Client-affinity entries [default: 131072].
    #[arg(long)]
    max_clients: Option<u32>,
    /// Serve Prometheus metrics on ADDR:PORT (/metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Health check for every backend: none, tcp or http:/PATH [default: none].
    #[arg(long, value_name = "CHECK")]
    health_check: Option<String>,
    /// Time between health probes [default: 2s].
    #[arg(long, value_name = "DURATION")]
    health_interval: Option<String>,
    /// How long one probe may take [default: 1s].
    #[arg(long, value_name = "DURATION")]
    health_timeout: Option<String>,
    /// Consecutive successes that bring a backend back [default: 2].
    #[arg(long)]
    health_rise: Option<u32>,
    /// Consecutive failures that take a backend out [default: 3].
    #[arg(long)]
    health_fall: Option<u32>,
    /// HTTP statuses counted as healthy, like 200-399 [default: 200-399].
    #[arg(long, value_name = "RANGE")]
    health_status: Option<String>,
    /// Proxy mode: listen on ADDR:PORT, take the client from a header or PROXY protocol.
    #[arg(long, value_name = "ADDR:PORT")]
    proxy: Option<String>,
    /// Header naming the client: X-Forwarded-For, Forwarded, X-Real-IP or another list header
    /// [default: X-Forwarded-For].
    #[arg(long, value_name = "NAME")]
    header: Option<String>,
    /// Expect a PROXY protocol v1/v2 header (HAProxy, cloud balancers) instead of a header.
    #[arg(long)]
    proxy_protocol: bool,
    /// Peers whose header or PROXY header is believed, like 10.0.0.0/8,fd00::/8 [default: none].
    #[arg(long, value_name = "CIDR,...")]
    trusted_proxies: Option<String>,
    /// Route a trusted peer's request without the header by the peer address instead of 400.
    #[arg(long)]
    ignore_missing_header: bool,
    /// Cookie stickiness: insert NAME=<backend token> and route by it while valid.
    #[arg(long, value_name = "NAME")]
    cookie: Option<String>,
    /// Copy bytes in userspace instead of splicing them in the kernel (sockmap).
    #[arg(long)]
    no_splice: bool,
    /// Also splice connections that moved this many bytes (0: every connection at once)
    /// [default: only WebSocket upgrades (`101`) are spliced; other connections are copied,
    /// large buffers after their first MiB].
    #[arg(long, value_name = "BYTES")]
    splice_after: Option<u64>,
    /// Time a client has to send its request head [default: 10s].
    #[arg(long, value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Time to connect to a backend [default: 3s].
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// Largest request head; larger gets 431 [default: 16384].
    #[arg(long, value_name = "BYTES")]
    max_head_bytes: Option<usize>,
    /// Client connections the proxy serves at once; past it new ones get 503 and are closed
    /// while the others carry on [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

impl RunArgs {
    pub fn into_layer(self) -> (Layer, Option<PathBuf>) {
        let layer = Layer {
            iface: self.iface,
            vip: self.vip,
            backend: self.backend,
            seed: self.seed,
            table_size: self.table_size,
            affinity_timeout: self.affinity_timeout,
            max_flows: self.max_flows,
            max_new_flows: self.max_new_flows,
            max_clients: self.max_clients,
            instance: None,
            metrics: self.metrics,
            health: crate::health::HealthLayer {
                check: self.health_check,
                interval: self.health_interval,
                timeout: self.health_timeout,
                rise: self.health_rise,
                fall: self.health_fall,
                status: self.health_status,
                backends: Default::default(),
            },
            proxy: crate::proxy::config::ProxyLayer {
                listen: self.proxy,
                header: self.header,
                proxy_protocol: self.proxy_protocol.then_some(true),
                trusted_proxies: self.trusted_proxies,
                ignore_missing_header: self.ignore_missing_header.then_some(true),
                cookie: self.cookie,
                splice: self.no_splice.then_some(false),
                header_timeout: self.header_timeout,
                connect_timeout: self.connect_timeout,
                max_head_bytes: self.max_head_bytes,
                max_connections: self.max_connections,
                splice_after: self.splice_after,
            },
        };
        (layer, self.config)
    }
}

pub fn run(args: RunArgs, instance: Option<String>) -> anyhow::Result<()> {
    let (mut layer, file) = args.into_layer();
    layer.instance = instance;
    // One worker per CPU the process may use (proxy mode scales with them); TOKIO_WORKER_THREADS
    // overrides it.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::daemon::run(layer, file))
}
