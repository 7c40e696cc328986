//! Proxy mode: an HTTP/1.1 reverse proxy until a connection upgrades. Each request is routed
//! on its own — its client from X-Forwarded-For / Forwarded / PROXY protocol (only from
//! trusted proxies), its engine.io session, its cookie — with the kernel path's hash, table
//! and affinity, over pooled backend connections; an upgraded connection is spliced by the
//! kernel (sockmap), or copied.

pub mod affinity_cache;
pub mod backend;
pub mod body;
pub mod cidr;
pub mod client_ip;
pub mod coarse_timer;
pub mod config;
pub mod cookie;
pub mod forward;
pub mod framing;
pub mod guard;
pub mod io;
pub mod pool;
pub mod proxy_protocol;
pub mod response_body;
pub mod routing;
pub mod server;
pub mod sid;
pub mod splice;
pub mod upgrade;

#[cfg(test)]
mod tests;
