//! `sticky cluster`: run N copies of a Node (or any) app on their own ports and balance one
//! port across them with the kernel path — the job of node's cluster + sticky-session, pm2
//! cluster mode or sticky-cluster, without a master process proxying every socket.
//!
//! Workers join the table once they accept connections; a crashed worker leaves it, restarts
//! with the same index and port (backoff, crash-loop limit) and rejoins, so its clients come
//! back; `sticky cluster reload` restarts them one at a time, each drained first.

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
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::warn;

use crate::control::{self, Change, Request};

/// Crashes within `CRASH_WINDOW` after which a worker is given up.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

struct Worker {
    index: usize,
    port: u16,
    child: Option<Child>,
    in_table: bool,
    crashes: Vec<Instant>,
    restart_at: Option<Instant>,
    given_up: bool,
}

impl Worker {
    fn backend(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port)
    }
}

fn say(line: &str) {
    println!("{line}");
    std::io::stdout().flush().ok();
}

fn spawn_worker(spec: &ClusterSpec, index: usize, port: u16) -> anyhow::Result<Child> {
    let (program, args) = spec
        .command
        .split_first()
        .context("no worker command after --")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env(&spec.port_env, port.to_string())
        .env(&spec.index_env, index.to_string())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches the supervisor, which shuts the
        // workers down in order.
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("start worker {index}: {}", spec.command.join(" ")))
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn signal_child(child: &Child, sig: i32) {
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// SIGTERM, then SIGKILL after `delay`.
fn stop_child(child: &mut Child, delay: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal_child(child, libc::SIGTERM);
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
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
        .map(|index| Worker {
            index,
            port: spec.base_port + index as u16,
            child: None,
            in_table: false,
            crashes: Vec::new(),
            restart_at: None,
            given_up: false,
        })
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

type ReloadRequest = oneshot::Sender<Result<String, String>>;

async fn manage(
    spec: &ClusterSpec,
    workers: &mut [Worker],
    daemon: &mut Child,
) -> anyhow::Result<()> {
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    serve_control(&spec.instance, reload_tx)?;
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
            Some(reply) = reload_rx.recv() => {
                let outcome = rolling_reload(spec, workers).await.map_err(|e| format!("{e:#}"));
                let _ = reply.send(outcome);
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// One supervision step: notice a crash, restart after backoff, join the table on accept.
async fn check_worker(spec: &ClusterSpec, w: &mut Worker) {
    if w.given_up {
        return;
    }
    if let Some(child) = &mut w.child
        && let Ok(Some(status)) = child.try_wait()
    {
        w.child = None;
        let now = Instant::now();
        w.crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        w.crashes.push(now);
        if w.in_table {
            let _ = call(
                &spec.instance,
                Request::Apply {
                    change: Change::Remove { addr: w.backend() },
                },
            )
            .await;
            w.in_table = false;
        }
        if w.crashes.len() >= CRASH_LIMIT {
            w.given_up = true;
            say(&format!(
                "worker {} crashed {} times within {:?} ({status}): crash loop, not restarting",
                w.index, CRASH_LIMIT, CRASH_WINDOW
            ));
            return;
        }
        let backoff =
            (Duration::from_millis(100) * 2u32.pow(w.crashes.len() as u32 - 1)).min(MAX_BACKOFF);
        say(&format!(
            "worker {} exited ({status}); restarting in {backoff:?}",
            w.index
        ));
        w.restart_at = Some(now + backoff);
    }
    if w.child.is_none()
        && let Some(at) = w.restart_at
        && Instant::now() >= at
    {
        w.restart_at = None;
        match spawn_worker(spec, w.index, w.port) {
            Ok(child) => w.child = Some(child),
            Err(e) => warn!("restart worker {}: {e:#}", w.index),
        }
    }
    if w.child.is_some() && !w.in_table && accepts(w.port) {
        match call(
            &spec.instance,
            Request::Apply {
                change: Change::Add {
                    addr: w.backend(),
                    weight: 1,
                },
            },
        )
        .await
        {
            Ok(()) => {
                w.in_table = true;
                say(&format!(
                    "worker {} accepts on {}: in the table",
                    w.index, w.port
                ));
            }
            Err(e) => warn!("add worker {}: {e:#}", w.index),
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

fn serve_control(instance: &str, reloads: mpsc::Sender<ReloadRequest>) -> anyhow::Result<()> {
    let path = control_socket(instance);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reloads = reloads.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err()
                    || line.trim() != "reload"
                {
                    let _ = write.write_all(b"error: unknown request\n").await;
                    return;
                }
                let (tx, rx) = oneshot::channel();
                let answer = match reloads.send(tx).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err("cluster stopped".into())),
                    Err(_) => Err("cluster stopped".into()),
                };
                let text = match answer {
                    Ok(ok) => format!("ok: {ok}\n"),
                    Err(e) => format!("error: {e}\n"),
                };
                let _ = write.write_all(text.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// `sticky cluster reload`: asks the supervisor of `instance` for a rolling restart.
pub async fn reload(instance: &str) -> anyhow::Result<String> {
    let path = control_socket(instance);
    let stream = tokio::net::UnixStream::connect(&path).await.map_err(|_| {
        anyhow::anyhow!("no sticky cluster for instance '{instance}' ({} is missing): start one with `sticky cluster`", path.display())
    })?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"reload\n").await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    match line.trim().strip_prefix("ok: ") {
        Some(ok) => Ok(ok.to_string()),
        None => bail!("{}", line.trim().trim_start_matches("error: ")),
    }
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

    #[test]
    fn worker_backend_is_a_local_port() {
        let w = Worker {
            index: 0,
            port: 3001,
            child: None,
            in_table: false,
            crashes: vec![],
            restart_at: None,
            given_up: false,
        };
        assert_eq!(w.backend().to_string(), "0.0.0.0:3001");
    }
}
