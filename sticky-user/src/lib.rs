//! sticky's userspace: configuration, the Maglev table, the loaded data path, and the
//! namespace sandbox the demo and the tests share.

pub mod addr;
pub mod backends;
pub mod config;
pub mod datapath;
pub mod demo;
pub mod duration;
pub mod object;
pub mod run;
pub mod sandbox;
pub mod table;
