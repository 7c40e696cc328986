//! sticky's userspace: configuration, the Maglev table, the loaded data path, and the
//! namespace sandbox the demo and the tests share.

pub mod addr;
pub mod backends;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decision;
pub mod demo;
pub mod doctor;
pub mod duration;
pub mod fuzzing;
pub mod hashbench;
pub mod health;
pub mod http;
pub mod metrics;
pub mod namespaces;
pub mod object;
pub mod proxy;
pub mod sandbox;
pub mod status;
pub mod table;
pub mod trace;
