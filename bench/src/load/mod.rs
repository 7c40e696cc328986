//! `sticky-bench load`: the load generator for what wrk cannot do — thousands of source
//! addresses so source hashing spreads, socket.io-style handshakes, fixed-rate latency and
//! small-frame echo, bulk streams; echo and bulk optionally after an HTTP upgrade head, for
//! paths that need a request first (sticky's proxy mode). Runs inside the client namespace (started through `nsenter`) and prints
//! one JSON line.

mod bulk;
mod closed;
mod echo;
mod eio;
mod http;
mod poll;
mod rate;

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::topology::Net;

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    #[command(subcommand)]
    mode: Mode,
}

/// Where to connect, from where, for how long: shared by every mode.
#[derive(clap::Args, Debug)]
struct Common {
    /// Server to connect to (repeatable); source i uses target i mod N, as a hash would.
    #[arg(long = "target", value_name = "ADDR:PORT", required = true)]
    targets: Vec<SocketAddr>,
    /// Source addresses to bind, as ADDR/PREFIX (they must be local: the bench routes a /20 to
    /// the client namespace's lo).
    #[arg(long, value_name = "NET", default_value = "198.18.16.0/20")]
    sources: Net,
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Send `X-Forwarded-For: <source address>` with every HTTP request (for HTTP proxies
    /// that route by it).
    #[arg(long)]
    xff: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// A new connection per request (`Connection: close`), closed loop.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Connections in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// socket.io-style handshakes: a connection with the open request, then a second
    /// connection from the same source with the session's request; counts sessions whose two
    /// connections reached different backends.
    Handshake {
        #[command(flatten)]
        common: Common,
        /// Sessions in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// socket.io sessions over engine.io long-polling (handshake, connect, MESSAGES echo
    /// round trips with acknowledgements, disconnect), every request a new connection from
    /// the session's source address; closed loop. Counts sessions answered `400` as lost.
    Eio {
        #[command(flatten)]
        common: Common,
        /// Sessions in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Message round trips per session.
        #[arg(long, default_value_t = 2)]
        messages: u32,
    },
    /// Keep-alive requests at a fixed rate: latency percentiles and CPU per request.
    Rate {
        #[command(flatten)]
        common: Common,
        /// Requests per second, in total.
        #[arg(long)]
        rate: f64,
        /// Keep-alive connections, each from its own source address.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Round trips of a small frame on one connection.
    Echo {
        #[command(flatten)]
        common: Common,
        /// Frame size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Upgrade first (`GET /echo`, 101): for the backends' upgrade port.
        #[arg(long)]
        head: bool,
    },
    /// Bulk streams, one blocking thread each, 256 KiB writes: Gbit/s the sink received.
    Bulk {
        #[command(flatten)]
        common: Common,
        /// Parallel streams, from sources 0..N.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Upgrade first (`GET /sink`, 101): for the backends' upgrade port; without it the
        /// target must be a plain sink.
        #[arg(long)]
        head: bool,
    },
}

impl Mode {
    fn common(&self) -> &Common {
        match self {
            Self::Connect { common, .. }
            | Self::Handshake { common, .. }
            | Self::Eio { common, .. }
            | Self::Rate { common, .. }
            | Self::Echo { common, .. }
            | Self::Bulk { common, .. } => common,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Percentiles {
    /// From samples in nanoseconds (sorted in place); `None` without samples.
    pub fn of(ns: &mut [u64]) -> Option<Self> {
        if ns.is_empty() {
            return None;
        }
        ns.sort_unstable();
        let at = |q: f64| {
            let i = ((ns.len() - 1) as f64 * q).round() as usize;
            ns.get(i).copied().unwrap_or_default() as f64 / 1e3
        };
        let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64 / 1e3;
        Some(Self {
            mean_us: mean,
            p50_us: at(0.50),
            p99_us: at(0.99),
        })
    }
}

/// What one load run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadResult {
    /// Completed requests, sessions or round trips.
    pub ops: u64,
    pub secs: f64,
    pub errors: u64,
    /// Handshakes whose two connections reached different backends.
    pub split: u64,
    /// CPU time the whole machine spent (all CPUs, not idle) over the window.
    pub cpu_secs: f64,
    pub latency: Option<Percentiles>,
    pub first_error: Option<String>,
    /// Bytes the sinks counted (bulk).
    pub bytes: u64,
    /// Message round trips (socket.io sessions).
    #[serde(default)]
    pub messages: u64,
    /// Sessions a request of which was answered `400`: the worker did not know them.
    #[serde(default)]
    pub lost: u64,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn gbit_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.bytes as f64 * 8.0 / self.secs / 1e9
        } else {
            0.0
        }
    }
}

pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    let Common {
        targets,
        sources,
        duration,
        xff,
    } = args.mode.common();
    anyhow::ensure!(
        *duration > 0.0 && *duration <= 600.0,
        "--duration must be in (0, 600] seconds"
    );
    let duration = Duration::from_secs_f64(*duration);
    let result = match args.mode {
        Mode::Connect { concurrency, .. } => {
            closed::Closed::run(targets, *sources, concurrency, duration, false, *xff)?
        }
        Mode::Handshake { concurrency, .. } => {
            closed::Closed::run(targets, *sources, concurrency, duration, true, *xff)?
        }
        Mode::Eio {
            concurrency,
            messages,
            ..
        } => {
            let dst = *targets
                .first()
                .ok_or_else(|| anyhow::anyhow!("no target"))?;
            eio::run(dst, *sources, concurrency, messages, duration)?
        }
        Mode::Rate {
            rate, connections, ..
        } => rate::run(targets, *sources, connections, rate, duration, *xff)?,
        Mode::Echo { size, head, .. } => {
            let dst = *targets
                .first()
                .ok_or_else(|| anyhow::anyhow!("no target"))?;
            echo::run(sources.addr(0), dst, size, head, duration)?
        }
        Mode::Bulk { streams, head, .. } => bulk::run(targets, *sources, streams, head, duration)?,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut ns: Vec<u64> = (1..=1000).rev().map(|v| v * 1000).collect();
        let p = Percentiles::of(&mut ns).unwrap();
        assert_eq!(p.p50_us, 501.0);
        assert_eq!(p.p99_us, 990.0);
        assert!((p.mean_us - 500.5).abs() < 1e-9);
        assert!(Percentiles::of(&mut []).is_none());
    }
}
