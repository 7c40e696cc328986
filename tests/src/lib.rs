//! The test rig, kept out of the `sticky` binary: network namespaces, the standard topology
//! and its address plan, backend servers, HTTP clients and `sticky` child processes, all torn
//! down on drop in reverse order of creation (also when a test panics). The integration tests
//! in tests/tests/, the demo (`sticky-demo`, run by `cargo xtask run`) and the benchmark use it.

pub mod clients;
pub mod dsr;
pub mod netns;
pub mod plan;
pub mod process;
pub mod rng;
pub mod root;
pub mod routing;
pub mod servers;
pub mod topology;

pub use clients::{Answer, HttpConn, fetch_metrics, get_once};
pub use dsr::DsrTopology;
pub use netns::{Netns, sh, unique_name, veth};
pub use process::{Launch, StickyProcess};
pub use rng::SplitMix64;
pub use root::{raise_fd_limit, root_or_skip};
pub use servers::{EchoBackend, HoldBackend, HttpBackend};
pub use topology::Topology;
