//! sticky's userspace: configuration, the Maglev table, the loaded data path, the daemon and
//! its control API, proxy mode, health checks, metrics and the command line. The test rig
//! (namespaces, servers, clients, the demo) is the `sticky-tests` crate, the hash benchmark is
//! in `sticky-bench`, the fuzz target bodies in `fuzz/`.

pub mod addr;
pub mod backend_setup;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decision;
pub mod discovery;
pub mod doctor;
pub mod duration;
pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod namespaces;
pub mod object;
pub mod peers;
pub mod proxy;
pub mod status;
pub mod table;
pub mod trace;
