//! `sticky cluster`: run N copies of a Node (or any) app on their own ports and balance one
//! port across them with the kernel path — the job of node's cluster + sticky-session, pm2
//! cluster mode or sticky-cluster, without a master process proxying every socket.
//!
//! Workers join the table once they accept connections; a crashed worker leaves it, restarts
//! with the same index and port (backoff, crash-loop limit) and rejoins, so its clients come
//! back; `sticky cluster reload` restarts them one at a time, each drained first.

mod worker;

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::worker::{Worker, accepts, check_worker, signal_child, spawn_worker, stop_child};
use crate::control::{self, Change, Endpoint, Request, Response};

/// Crashes within `CRASH_WINDOW` after which a worker is given up.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub instance: String,
    pub workers: usize,
    pub port: u16,
    pub base_port: u16,
    pub ifaces: Vec<String>,
    pub env: Vec<(String, String)>,
    pub port_env: String,
    pub index_env: String,
    pub hard_shutdown_delay: Duration,
    pub drain_time: Duration,
    /// Extra `sticky run` arguments (proxy mode, health, metrics…).
    pub run_args: Vec<String>,
    pub command: Vec<String>,
}

pub fn control_socket(instance: &str) -> PathBuf {
    PathBuf::from(control::RUN_DIR).join(format!("{instance}.cluster.sock"))
}

fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().ok();
}

/// IPv4 addresses of `iface` (the VIPs remote clients reach).
fn iface_addrs(iface: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", iface])
        .output()
        .context("run ip addr")?;
    if !out.status.success() {
        bail!("unknown interface '{iface}'");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect())
}

async fn call(instance: &str, request: Request) -> anyhow::Result<()> {
    let r = control::call(instance, &request).await?;
    if !r.ok {
        bail!("{}", r.error.unwrap_or_default());
    }
    Ok(())
}

/// Runs the cluster until SIGINT/SIGTERM.
pub async fn run(spec: ClusterSpec) -> anyhow::Result<()> {
    if spec.command.is_empty() {
        bail!("no worker command: write it after --, like `sticky cluster -- node app.js`");
    }
    if spec.workers == 0 || spec.workers > 256 {
        bail!("--workers must be from 1 to 256");
    }
    let last = u32::from(spec.base_port) + spec.workers as u32 - 1;
    if last > 65_535 || (spec.base_port..=last as u16).contains(&spec.port) {
        bail!(
            "worker ports {}..={last} must fit below 65536 and not include --port {}",
            spec.base_port,
            spec.port
        );
    }
    let mut vips = vec![Ipv4Addr::LOCALHOST];
    for iface in &spec.ifaces {
        vips.extend(iface_addrs(iface)?);
    }
    let mut workers: Vec<Worker> = (0..spec.workers)
        .map(|index| Worker::new(index, spec.base_port + index as u16))
        .collect();
    for w in &mut workers {
        w.child = Some(spawn_worker(&spec, w.index, w.port)?);
    }
    let result = supervise(&spec, &vips, &mut workers).await;
    for w in &mut workers {
        if let Some(child) = &mut w.child {
            stop_child(child, spec.hard_shutdown_delay);
        }
    }
    let _ = std::fs::remove_file(control_socket(&spec.instance));
    result
}

async fn supervise(
    spec: &ClusterSpec,
    vips: &[Ipv4Addr],
    workers: &mut [Worker],
) -> anyhow::Result<()> {
    // The daemon starts with the first worker that accepts (a table needs a backend).
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(w) = workers.iter().position(|w| accepts(w.port)) {
            break w;
        }
        for w in workers.iter_mut() {
            if let Some(Ok(Some(status))) = w.child.as_mut().map(Child::try_wait) {
                bail!(
                    "worker {} exited before accepting connections ({status})",
                    w.index
                );
            }
        }
        if Instant::now() > deadline {
            bail!("no worker accepted connections on its port within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exe = std::env::current_exe().context("locate sticky")?;
    let mut args: Vec<String> = vec!["run".into(), "--iface".into(), "lo".into()];
    for iface in &spec.ifaces {
        args.extend(["--iface".into(), iface.clone()]);
    }
    for vip in vips {
        args.extend([
            "--vip".into(),
            SocketAddr::new(IpAddr::V4(*vip), spec.port).to_string(),
        ]);
    }
    args.extend(["--backend".into(), workers[first].backend().to_string()]);
    args.extend(["--instance".into(), spec.instance.clone()]);
    args.extend(spec.run_args.iter().cloned());
    let mut daemon = Command::new(&exe)
        .args(&args)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("start sticky run")?;
    let started = Instant::now();
    while tokio::net::UnixStream::connect(control::socket_path(&spec.instance))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = daemon.try_wait() {
            bail!("sticky run exited ({status})");
        }
        if started.elapsed() > Duration::from_secs(30) {
            stop_child(&mut daemon, Duration::from_secs(5));
            bail!("sticky run did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    workers[first].in_table = true;
    let result = manage(spec, workers, &mut daemon).await;
    // Stop taking new clients, then let the workers go, then the data path.
    for w in workers.iter().filter(|w| w.in_table) {
        let _ = call(
            &spec.instance,
            Request::Drain {
                addr: w.backend(),
                deadline_ms: None,
                close_rate: None,
            },
        )
        .await;
    }
    for w in workers.iter_mut() {
        if let Some(child) = &w.child {
            signal_child(child, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + spec.hard_shutdown_delay;
    for w in workers.iter_mut() {
        if let Some(child) = &mut w.child {
            let left = deadline.saturating_duration_since(Instant::now());
            stop_child(child, left);
        }
    }
    let _ = call(&spec.instance, Request::Stop { keep: false }).await;
    stop_child(&mut daemon, Duration::from_secs(10));
    say("cluster stopped");
    result
}

async fn manage(
    spec: &ClusterSpec,
    workers: &mut [Worker],
    daemon: &mut Child,
) -> anyhow::Result<()> {
    let (requests_tx, mut requests) = mpsc::channel(4);
    let _server = control::serve(&control_socket(&spec.instance), requests_tx)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    say(&format!(
        "sticky cluster: {} workers on ports {}..{} behind port {} (instance {})",
        spec.workers,
        spec.base_port,
        spec.base_port as usize + spec.workers - 1,
        spec.port,
        spec.instance
    ));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Ok(Some(status)) = daemon.try_wait() {
                    bail!("sticky run exited ({status})");
                }
                for w in workers.iter_mut() {
                    check_worker(spec, w).await;
                }
            }
            Some((request, reply)) = requests.recv() => {
                let response = match request {
                    Request::Reload => match rolling_reload(spec, workers).await {
                        Ok(done) => Response::ok(done),
                        Err(e) => Response::err(format!("{e:#}")),
                    },
                    _ => Response::err(
                        "a cluster supervisor answers only reload; send other requests to its \
                         daemon (sticky … --instance)",
                    ),
                };
                let _ = reply.send(response);
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// Restarts the workers one at a time: drain (new clients go elsewhere, handshakes in
/// progress finish), remove (its clients' new connections follow the table), stop, start,
/// rejoin once it accepts.
async fn rolling_reload(spec: &ClusterSpec, workers: &mut [Worker]) -> anyhow::Result<String> {
    let mut restarted = 0;
    for w in workers.iter_mut().filter(|w| !w.given_up) {
        if w.in_table {
            call(
                &spec.instance,
                Request::Drain {
                    addr: w.backend(),
                    deadline_ms: None,
                    close_rate: None,
                },
            )
            .await?;
            tokio::time::sleep(spec.drain_time).await;
            call(
                &spec.instance,
                Request::Apply {
                    change: Change::Remove { addr: w.backend() },
                },
            )
            .await?;
            w.in_table = false;
        }
        if let Some(mut child) = w.child.take() {
            let delay = spec.hard_shutdown_delay;
            tokio::task::spawn_blocking(move || stop_child(&mut child, delay)).await?;
        }
        w.child = Some(spawn_worker(spec, w.index, w.port)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !accepts(w.port) {
            if Instant::now() > deadline {
                bail!("worker {} did not accept within 60 s after reload", w.index);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        call(
            &spec.instance,
            Request::Apply {
                change: Change::Add {
                    addr: w.backend(),
                    weight: 1,
                },
            },
        )
        .await?;
        w.in_table = true;
        restarted += 1;
        say(&format!("reload: worker {} restarted", w.index));
    }
    Ok(format!("reloaded {restarted} workers"))
}

/// `sticky cluster reload`: asks the supervisor of `instance` for a rolling restart.
pub async fn reload(instance: &str) -> anyhow::Result<String> {
    let path = control_socket(instance);
    let supervisor = Endpoint {
        absent: format!(
            "no sticky cluster for instance '{instance}' ({} is missing): start one with \
             `sticky cluster`",
            path.display()
        ),
        path,
        who: "the cluster supervisor",
        // One worker after another, each drained and restarted: as long as that takes.
        answer_within: None,
    };
    let answer = supervisor.call(&Request::Reload).await?;
    if !answer.ok {
        bail!("{}", answer.error.unwrap_or_default());
    }
    Ok(answer.data.as_str().unwrap_or("reloaded").to_string())
}

/// Parses `KEY=VALUE` for `--env`.
pub fn env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        assert_eq!(env_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(env_pair("=x").is_err() && env_pair("noequals").is_err());
    }
}
