//! Proxy mode: learn the real client from X-Forwarded-For / Forwarded / PROXY protocol (only
//! from trusted proxies), pick the backend with the kernel path's hash, table and affinity,
//! then let the kernel splice the bytes (sockmap), or copy them.

pub mod cidr;
pub mod client_ip;
pub mod config;
pub mod cookie;
pub mod proxy_protocol;
pub mod routing;
pub mod server;
pub mod splice;
