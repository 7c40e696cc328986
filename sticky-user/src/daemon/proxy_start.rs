//! Starting proxy mode inside the daemon.

use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context as _;
use tracing::{info, warn};

use super::{cookie_key, say};
use crate::{
    backends::BackendSet,
    config::Config,
    datapath::Datapath,
    proxy::{
        self,
        affinity_cache::{self, Cached},
        config::ProxyConfig,
        routing::{AffinityMap, Routing, SharedRouting},
        server::Proxy,
    },
};

/// Binds the proxy listener and starts serving; splicing when possible, else copying (the
/// reason logged).
pub(super) async fn start_proxy(
    proxy: &ProxyConfig,
    config: &Config,
    dp: &mut Datapath,
    set: &BackendSet,
    table: &[u32],
) -> anyhow::Result<SharedRouting> {
    let affinity = dp.affinity_map()?;
    let routing: SharedRouting = Arc::new(RwLock::new(Routing::new(
        table.to_vec(),
        set,
        dp.settings(),
        cookie_key(config.seed),
    )));
    let splicer = if proxy.splice {
        match dp.splicer() {
            Ok(s) => Some(Arc::new(Mutex::new(s))),
            Err(e) => {
                warn!("proxy: splicing unavailable, copying in userspace: {e:#}");
                None
            }
        }
    } else {
        info!("proxy: --no-splice, copying in userspace");
        None
    };
    let listener = proxy::server::listen(proxy.listen, proxy.max_connections)
        .with_context(|| format!("bind the proxy on {}", proxy.listen))?;
    let workers = proxy::server::worker_count();
    say(&format!(
        "proxy on {} ({}; client from {}; {})",
        proxy.listen,
        if splicer.is_some() {
            "kernel splice"
        } else {
            "userspace copy"
        },
        if proxy.proxy_protocol {
            "PROXY protocol".to_string()
        } else {
            proxy.header_name.clone()
        },
        if workers == 1 {
            "one worker thread of its own".to_string()
        } else {
            format!("{workers} runtime workers")
        }
    ));
    let server = Arc::new(Proxy::new(
        proxy.clone(),
        routing.clone(),
        Cached::new(AffinityMap::new(affinity), affinity_cache::KEEP_NS),
        splicer,
    ));
    if workers == 1 {
        proxy::server::spawn_worker(server, listener.into_std()?)?;
    } else {
        tokio::spawn(proxy::server::serve(server, listener));
    }
    Ok(routing)
}
