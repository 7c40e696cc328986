//! Subcommands that talk to a running daemon over its control socket.

use std::net::{IpAddr, SocketAddr};

use anyhow::bail;

use crate::{
    addr::{MAX_WEIGHT, parse_endpoint},
    control::{self, Change, Lookup, LookupReason, Preview, Request},
    duration,
    status::Status,
};

/// Sends `request` and returns the answer's data, or the daemon's error.
pub fn call(instance: &str, request: &Request) -> anyhow::Result<serde_json::Value> {
    let response = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(control::call(instance, request))?;
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the daemon refused".into())
        );
    }
    Ok(response.data)
}

pub fn endpoint(s: &str) -> Result<SocketAddr, String> {
    parse_endpoint(s).map_err(|e| e.to_string())
}

pub fn weight(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|w| (1..=MAX_WEIGHT).contains(w))
        .ok_or_else(|| format!("weight must be a whole number from 1 to {MAX_WEIGHT}"))
}

pub fn deadline(s: &str) -> Result<u64, String> {
    duration::parse(s)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| e.to_string())
}

/// A close rate: `N/s` or `N`, N from 1 to 1000000.
pub fn close_rate(s: &str) -> Result<u32, String> {
    s.strip_suffix("/s")
        .unwrap_or(s)
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .ok_or_else(|| format!("close rate '{s}' must be N/s with N from 1 to 1000000, e.g. 50/s"))
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub change: ChangeArgs,
}

/// A change to the backend set: made by `sticky backend`, previewed by `sticky preview`.
#[derive(clap::Subcommand)]
pub enum ChangeArgs {
    /// Add a backend: it takes its share of new clients; affine clients stay where they are.
    Add {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        /// Relative weight, 1-1000.
        #[arg(long, default_value_t = 1, value_parser = weight)]
        weight: u32,
    },
    /// Remove a backend: its clients move; its established connections continue.
    Remove {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
    },
    /// Set a backend's weight, 1-1000.
    Weight {
        #[arg(value_parser = endpoint, value_name = "ADDR:PORT")]
        addr: SocketAddr,
        #[arg(value_parser = weight)]
        weight: u32,
    },
}

impl From<&ChangeArgs> for Change {
    fn from(c: &ChangeArgs) -> Self {
        match *c {
            ChangeArgs::Add { addr, weight } => Change::Add { addr, weight },
            ChangeArgs::Remove { addr } => Change::Remove { addr },
            ChangeArgs::Weight { addr, weight } => Change::Weight { addr, weight },
        }
    }
}

pub fn preview(args: PreviewArgs, instance: &str) -> anyhow::Result<()> {
    let request = Request::Preview {
        change: Change::from(&args.change),
    };
    let data = call(instance, &request)?;
    if args.json {
        println!("{data}");
        return Ok(());
    }
    let p: Preview = serde_json::from_value(data)?;
    println!(
        "table slots that would move: {:.2}% ({} of {})",
        100.0 * p.slots_moved as f64 / f64::from(p.table_size.max(1)),
        p.slots_moved,
        p.table_size
    );
    println!(
        "live affine clients that would move: {} of {}",
        p.affine_clients_moved, p.affine_clients
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn status(args: StatusArgs, instance: &str) -> anyhow::Result<()> {
    let data = call(instance, &Request::Status)?;
    if args.json {
        println!("{data}");
        return Ok(());
    }
    let s: Status = serde_json::from_value(data)?;
    print!("{}", render_status(&s));
    Ok(())
}

/// The human status table: share bars are 20 cells for 100%, `|` marks the ideal.
pub fn render_status(s: &Status) -> String {
    let vips: Vec<String> = s.vips.iter().map(ToString::to_string).collect();
    let mut out = format!(
        "instance {} · vip {} on {} · forwarding {} · table {} slots · {} clients with affinity (by prefix {}) · \
         {} flow entries ({} in handshake) · maps {:.1} MiB · pins {}\n",
        s.instance,
        vips.join(","),
        s.ifaces.join(","),
        if s.forwarding.is_empty() {
            "nat"
        } else {
            &s.forwarding
        },
        s.table_size,
        s.affinity_entries,
        s.affinity_prefix,
        s.flow_entries,
        s.new_flow_entries,
        s.map_bytes as f64 / (1024.0 * 1024.0),
        s.pins,
    );
    out.push_str(&format!(
        "{:<24} {:<8} {:<9} {:>6} {:<22} {:>7} {:>8} {:>7} {:>8} {:>10}\n",
        "BACKEND",
        "STATE",
        "HEALTH",
        "WEIGHT",
        "SHARE (| ideal)",
        "SHARE",
        "AFFINE",
        "FLOWS",
        "NEW/s",
        "BYTES"
    ));
    for b in &s.backends {
        let cells = 20usize;
        let filled = (b.table_share * cells as f64).round() as usize;
        let ideal = (b.ideal_share * cells as f64).round() as usize;
        let bar: String = (0..cells)
            .map(|i| match (i < filled, i + 1 == ideal) {
                (_, true) => '|',
                (true, false) => '#',
                (false, false) => '.',
            })
            .collect();
        let state = match (b.drain_deadline_secs, b.drain_close_rate, b.slow_start) {
            (Some(secs), Some(rate), _) => format!("{}({secs}s, then {rate}/s)", b.state.name()),
            (Some(secs), None, _) => format!("{}({secs}s)", b.state.name()),
            (None, _, Some(p)) => format!("{}(slow start {:.0}%)", b.state.name(), p * 100.0),
            _ => b.state.name().to_string(),
        };
        out.push_str(&format!(
            "{:<24} {:<8} {:<9} {:>6} [{bar}] {:>6.1}% {:>8} {:>7} {:>8.1} {:>10}\n",
            b.addr.to_string(),
            state,
            b.health,
            b.weight,
            b.table_share * 100.0,
            b.affine_clients,
            b.active_flows,
            b.new_flows_per_sec,
            b.bytes
        ));
    }
    for d in &s.dns {
        let list: Vec<String> = d.backends.iter().map(ToString::to_string).collect();
        match &d.error {
            None => out.push_str(&format!("{}: {}\n", d.source, list.join(" "))),
            Some(e) => out.push_str(&format!(
                "{}: resolver failing, keeping the last good set ({}): {e}\n",
                d.source,
                list.join(" ")
            )),
        }
    }
    if let Some(a) = &s.announce {
        let state = match (&a.withdrawn_because, a.announced) {
            (_, true) => "announced".to_string(),
            (Some(why), false) => format!("withdrawn ({why})"),
            (None, false) => "withdrawn".to_string(),
        };
        out.push_str(&format!(
            "announce {} in table {}: {state}\n",
            a.prefixes.join(","),
            a.table
        ));
        if !a.return_prefixes.is_empty() {
            out.push_str(&format!(
                "announce return path {}: {}\n",
                a.return_prefixes.join(","),
                if a.return_announced {
                    "announced"
                } else {
                    "withdrawn"
                }
            ));
        }
    }
    if let Some(p) = &s.peers {
        let peers: Vec<String> = p.peers.iter().map(ToString::to_string).collect();
        let rejected: Vec<String> = (p.rejected.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        out.push_str(&format!(
            "peers {} from {}: sent {} records in {} datagrams ({} send errors), accepted {} \
             datagrams, applied {} records, ignored {}, rejected {}\n",
            peers.join(","),
            p.listen,
            p.records_sent,
            p.datagrams_sent,
            p.send_errors,
            p.datagrams_accepted,
            p.records_applied,
            p.records_ignored,
            if rejected.is_empty() {
                "none".to_string()
            } else {
                rejected.join(" ")
            }
        ));
    }
    for c in &s.closing {
        out.push_str(&format!(
            "{:<24} closing: {} flows ended, {} left at {}/s\n",
            c.addr.to_string(),
            c.flows_ended,
            c.flows_left,
            c.close_rate
        ));
    }
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&format!("packets: {}\n", counters.join(" ")));
    out
}

#[derive(clap::Args)]
pub struct LookupArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Client address.
    pub ip: IpAddr,
}

pub fn lookup(args: LookupArgs, instance: &str) -> anyhow::Result<()> {
    let data = call(instance, &Request::Lookup { ip: args.ip })?;
    if args.json {
        println!("{data}");
        return Ok(());
    }
    let l: Lookup = serde_json::from_value(data)?;
    match (l.backend, l.reason) {
        (Some(b), LookupReason::Affinity) => println!(
            "{} -> {b} (affinity, last seen {}s ago)",
            l.client,
            l.idle_secs.unwrap_or(0)
        ),
        (Some(b), _) => println!("{} -> {b} (table)", l.client),
        (None, _) => println!("{} -> no backend in service", l.client),
    }
    Ok(())
}

pub fn reload(instance: &str) -> anyhow::Result<()> {
    call(instance, &Request::Reload)?;
    println!("reloaded");
    Ok(())
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Leave the data path attached and pinned (for an upgrade or restart).
    #[arg(long)]
    pub keep: bool,
}

pub fn stop(args: StopArgs, instance: &str) -> anyhow::Result<()> {
    let data = call(instance, &Request::Stop { keep: args.keep })?;
    println!("{}", data.as_str().unwrap_or("stopping"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_policy_state() {
        let text = render_status(&crate::metrics::sample_status());
        for want in [
            "clients with affinity (by prefix 24,64)",
            "up(slow start 25%)",
            "draining(30s, then 50/s)",
            "10.0.0.9:80              closing: 40 flows ended, 960 left at 20/s",
            "dns tasks.web:3000: resolver failing, keeping the last good set (10.0.0.7:3000): \
             timed out",
            "peers 10.0.0.2:7946 from 10.0.0.1:7946: sent 200 records in 10 datagrams (1 send \
             errors), accepted 9 datagrams, applied 150 records, ignored 3, rejected bad_mac=2 \
             replay=1",
        ] {
            assert!(text.contains(want), "no '{want}' in\n{text}");
        }
    }
}
