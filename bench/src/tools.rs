//! The Debian tools the bench drives: wrk for keep-alive throughput, iperf3 for bulk
//! throughput. Clients run pinned to the load CPU in the client namespace, iperf3 servers
//! pinned to the server CPU in the backend namespaces; all with deadlines.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use sticky_tests::Netns;

use crate::{
    cmd::{self, Proc},
    peers::Service,
    topology::{LOAD_CPU, SERVER_CPU},
};

/// Slack on top of a run's own duration before it is killed as hung.
pub const GRACE: Duration = Duration::from_secs(20);

/// What wrk reported.
pub struct Wrk {
    pub requests_per_sec: f64,
    pub errors: u64,
}

/// `wrk -t1 -cCONNS -dSECS [-H HEADER]` against `target`, keep-alive.
pub fn wrk(
    client: &Netns,
    target: SocketAddr,
    conns: usize,
    secs: u64,
    header: Option<&str>,
) -> anyhow::Result<Wrk> {
    let mut c = cmd::in_ns(client, Some(LOAD_CPU), "wrk");
    c.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--timeout",
        "2s",
    ]);
    if let Some(h) = header {
        c.args(["-H", h]);
    }
    c.arg(format!("http://{target}/"));
    let out = cmd::output(&mut c, Duration::from_secs(secs) + GRACE)?;
    parse_wrk(&out)
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let requests_per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()
        .context("wrk's Requests/sec")?;
    let mut errors = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(Wrk {
        requests_per_sec,
        errors,
    })
}

/// One-shot iperf3 servers (`-s -1`) on every backend; whichever one the path reaches serves
/// the test, the others are stopped on drop.
pub fn iperf3_servers(backends: &[Netns]) -> anyhow::Result<Vec<Proc>> {
    let port = Service::Bulk.backend_port().to_string();
    let mut servers = Vec::new();
    for ns in backends {
        servers.push(Proc::spawn(
            "iperf3 server",
            cmd::in_ns(ns, Some(SERVER_CPU), "iperf3").args(["-s", "-1", "-p", &port]),
        )?);
    }
    for ns in backends {
        cmd::wait_listening(ns, Service::Bulk.backend_port(), Duration::from_secs(10))?;
    }
    Ok(servers)
}

/// What iperf3 reported on the receiving side.
pub struct Iperf3 {
    pub gbit_per_sec: f64,
    pub bytes: u64,
}

/// `iperf3 -c` with `streams` parallel streams for `secs`, client to server, or server to
/// client with `reverse` (`-R`).
pub fn iperf3(
    client: &Netns,
    target: SocketAddr,
    streams: usize,
    secs: u64,
    reverse: bool,
) -> anyhow::Result<Iperf3> {
    let mut c = cmd::in_ns(client, Some(LOAD_CPU), "iperf3");
    c.args([
        "-c",
        &target.ip().to_string(),
        "-p",
        &target.port().to_string(),
        "-P",
        &streams.to_string(),
        "-t",
        &secs.to_string(),
        "-J",
    ]);
    if reverse {
        c.arg("-R");
    }
    let out = cmd::output(&mut c, Duration::from_secs(secs) + GRACE)?;
    parse_iperf3(&out)
}

fn parse_iperf3(out: &str) -> anyhow::Result<Iperf3> {
    let json: serde_json::Value = serde_json::from_str(out).context("iperf3 -J output")?;
    if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {e}");
    }
    let received = |field: &str| {
        json.pointer(&format!("/end/sum_received/{field}"))
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 reported no end.sum_received.{field}"))
    };
    Ok(Iperf3 {
        gbit_per_sec: received("bits_per_second")? / 1e9,
        bytes: received("bytes")? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_rates_and_errors() {
        let out = "Running 2s test @ http://198.19.0.2:8080/\n  1 threads and 32 connections\n\
                   61234 requests in 2.00s, 5.2MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n\
                   Non-2xx or 3xx responses: 4\nRequests/sec:  30617.12\nTransfer/sec:      2.6MB\n";
        let w = parse_wrk(out).unwrap();
        assert!((w.requests_per_sec - 30617.12).abs() < 1e-6);
        assert_eq!(w.errors, 10);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn reads_iperf3_json() {
        let out = r#"{"end":{"sum_received":{"bits_per_second":1.5e10,"bytes":1875000000}}}"#;
        let r = parse_iperf3(out).unwrap();
        assert!((r.gbit_per_sec - 15.0).abs() < 1e-9);
        assert_eq!(r.bytes, 1_875_000_000);
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
    }
}
