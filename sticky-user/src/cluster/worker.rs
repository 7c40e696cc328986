//! One worker process: starting it, stopping it, and its supervision step (crash, backoff,
//! restart, joining the table once it accepts).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracing::warn;

use super::{CRASH_LIMIT, CRASH_WINDOW, ClusterSpec, call, say};
use crate::control::{Change, Request};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) port: u16,
    pub(super) child: Option<Child>,
    pub(super) in_table: bool,
    crashes: Vec<Instant>,
    restart_at: Option<Instant>,
    pub(super) given_up: bool,
}

impl Worker {
    pub(super) fn new(index: usize, port: u16) -> Self {
        Self {
            index,
            port,
            child: None,
            in_table: false,
            crashes: Vec::new(),
            restart_at: None,
            given_up: false,
        }
    }

    pub(super) fn backend(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.port)
    }
}

pub(super) fn spawn_worker(spec: &ClusterSpec, index: usize, port: u16) -> anyhow::Result<Child> {
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

pub(super) fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub(super) fn signal_child(child: &Child, sig: i32) {
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// SIGTERM, then SIGKILL after `delay`.
pub(super) fn stop_child(child: &mut Child, delay: Duration) {
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

/// One supervision step: notice a crash, restart after backoff, join the table on accept.
pub(super) async fn check_worker(spec: &ClusterSpec, w: &mut Worker) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_backend_is_a_local_port() {
        let w = Worker::new(0, 3001);
        assert_eq!(w.backend().to_string(), "0.0.0.0:3001");
    }
}
