//! `sticky cluster` against the Node balancers it replaces (the project's seeds), each in
//! front of the same socket.io app with 3 workers (`bench/cluster/seeds.js`, packages locked
//! in `bench/cluster/package-lock.json`): sticky-session, sticky-cluster and
//! @socket.io/sticky, whose master process proxies every socket, and `sticky cluster`, whose
//! workers take their connections from the kernel directly.
//!
//! Each runs alone in a namespace of its own, pinned to the server CPU; the load
//! (`sticky-bench load eio`: socket.io sessions over HTTP long-polling, each request a new
//! connection from the session's own loopback address, 4096 of them) runs on the load CPU.
//! Server CPU per session is the CPU time of the balancer's whole process tree (master,
//! workers; for `sticky cluster` the daemon and its workers) over the run, per session.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sticky_tests::{Netns, StickyProcess, unique_name};

use crate::{
    cmd::{self, Proc},
    cpu,
    load::LoadResult,
    tools::GRACE,
    topology::{LOAD_CPU, SERVER_CPU},
};

const PORT: u16 = 3000;
const WORKERS: &str = "3";
const SOURCES: &str = "127.16.0.0/20";
const CONCURRENCY: &str = "64";
const MESSAGES: &str = "2";
const READY: Duration = Duration::from_secs(15);

/// The balancers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Seed {
    StickyCluster,
    StickySession,
    NpmStickyCluster,
    SocketioSticky,
}

impl Seed {
    pub const ALL: [Self; 4] = [
        Self::StickyCluster,
        Self::StickySession,
        Self::NpmStickyCluster,
        Self::SocketioSticky,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::StickyCluster => "sticky cluster",
            Self::StickySession => "sticky-session 1.1.2",
            Self::NpmStickyCluster => "sticky-cluster 0.3.5",
            Self::SocketioSticky => "@socket.io/sticky 2.0.1",
        }
    }

    /// `seeds.js`'s mode.
    fn mode(self) -> &'static str {
        match self {
            Self::StickyCluster => "sticky",
            Self::StickySession => "sticky-session",
            Self::NpmStickyCluster => "sticky-cluster",
            Self::SocketioSticky => "socketio-sticky",
        }
    }
}

/// One seed's run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedRun {
    pub seed: Seed,
    /// Completed sessions (handshake, connect, messages, disconnect) per second.
    pub sessions_per_sec: f64,
    pub messages_per_sec: f64,
    /// The balancer's process tree's CPU time per completed session, ms.
    pub cpu_ms_per_session: f64,
    /// A whole session's time, ms.
    pub p99_ms: f64,
    /// Sessions a request of which was answered 400 (`Session ID unknown`).
    pub lost: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Every seed, `rounds` times, interleaved (the order rotated each round); a seed that fails
/// to start or serve is noted.
pub fn compare(
    sticky: &Path,
    exe: &Path,
    secs: u64,
    rounds: usize,
    note: &mut dyn FnMut(String),
) -> Vec<SeedRun> {
    let dir = app_dir();
    let mut runs = Vec::new();
    for round in 0..rounds {
        // Interleaved as the cases are: the order rotates each round.
        for k in 0..Seed::ALL.len() {
            let Some(&seed) = Seed::ALL.get((k + round) % Seed::ALL.len()) else {
                continue;
            };
            match one(sticky, exe, &dir, seed, secs) {
                Ok(r) => {
                    println!(
                        "  {:<24} {:>7.0} sessions/s, {:.2} ms CPU per session, p99 {:.0} ms, \
                         {} lost, {} errors",
                        seed.label(),
                        r.sessions_per_sec,
                        r.cpu_ms_per_session,
                        r.p99_ms,
                        r.lost,
                        r.errors
                    );
                    runs.push(r);
                }
                Err(e) => {
                    println!("  {:<24} failed: {e:#}", seed.label());
                    note(format!("{} (round {}): {e:#}", seed.label(), round + 1));
                }
            }
        }
    }
    runs
}

/// `bench/cluster`, where `cargo xtask bench` installs the packages.
fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster")
}

fn one(sticky: &Path, exe: &Path, dir: &Path, seed: Seed, secs: u64) -> anyhow::Result<SeedRun> {
    anyhow::ensure!(
        dir.join("node_modules/socket.io").exists(),
        "{} has no node_modules: `cargo xtask bench` installs them (npm ci)",
        dir.display()
    );
    let ns = Netns::create(&unique_name("bench-seed")).context("seed namespace")?;
    let app = dir.join("seeds.js");
    let app = app.to_string_lossy();
    // Kept alive until the run is measured; dropping stops them.
    let tree = if seed == Seed::StickyCluster {
        let args: Vec<String> = [
            "cluster",
            "--workers",
            WORKERS,
            "--port",
            "3000",
            "--",
            "node",
            &app,
            "sticky",
        ]
        .map(String::from)
        .to_vec();
        let p = StickyProcess::start_with(sticky, &ns, &args, "sticky cluster:")
            .context("start sticky cluster")?;
        Tree(Some(Root::Sticky(p)))
    } else {
        let mut c = cmd::in_ns(&ns, Some(SERVER_CPU), "node");
        c.arg(&*app)
            .arg(seed.mode())
            .env("PORT", PORT.to_string())
            .env("WORKERS", WORKERS)
            .current_dir(dir);
        let mut tree = Tree(Some(Root::Node(Proc::spawn(seed.label(), &mut c)?)));
        if let Some(Root::Node(p)) = &mut tree.0 {
            // seeds.js prints it once a handshake through the master is answered.
            p.wait_line("seeds ready", READY)
                .context("no socket.io handshake answered through it")?;
        }
        tree
    };
    for pid in descendants(tree.pid()) {
        cmd::pin_process(pid, SERVER_CPU)?;
    }
    // Every process of the tree, its workers included, is up: one session must go through.
    let probe = load(&ns, exe, "1", "1")?;
    anyhow::ensure!(
        probe.ops > 0,
        "no session completed through it: {}",
        probe.first_error.unwrap_or_default()
    );
    let before = tree_cpu(tree.pid());
    let r = load(&ns, exe, CONCURRENCY, &secs.to_string())?;
    // Over the processes of the tree at the end (a worker forked meanwhile counts from 0).
    let cpu = tree_cpu(tree.pid())
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or_default()))
        .sum::<Duration>()
        .as_secs_f64();
    let run = SeedRun {
        seed,
        sessions_per_sec: r.rate(),
        messages_per_sec: if r.secs > 0.0 {
            r.messages as f64 / r.secs
        } else {
            0.0
        },
        cpu_ms_per_session: if r.ops > 0 {
            cpu * 1000.0 / r.ops as f64
        } else {
            0.0
        },
        p99_ms: r.latency.map_or(0.0, |l| l.p99_us / 1000.0),
        lost: r.lost,
        errors: r.errors,
        first_error: r.first_error,
    };
    Ok(run)
}

fn load(ns: &Netns, exe: &Path, concurrency: &str, secs: &str) -> anyhow::Result<LoadResult> {
    let mut c = cmd::in_ns(ns, Some(LOAD_CPU), exe);
    c.args([
        "load",
        "eio",
        "--target",
        &format!("127.0.0.1:{PORT}"),
        "--sources",
        SOURCES,
        "--concurrency",
        concurrency,
        "--messages",
        MESSAGES,
        "--duration",
        secs,
    ]);
    let timeout = Duration::from_secs(secs.parse().unwrap_or(1)) + GRACE;
    let out = cmd::output(&mut c, timeout)?;
    let line = out.lines().last().context("load printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("load output {line:?}"))
}

/// `pid` and every process below it.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, cpu::process(p)?.ppid)))
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU time of every process of `root`'s tree, by PID.
fn tree_cpu(root: i32) -> std::collections::BTreeMap<i32, Duration> {
    descendants(root)
        .into_iter()
        .filter_map(|p| Some((p, cpu::process(p)?.cpu)))
        .collect()
}

/// The process a balancer runs from: our child.
enum Root {
    Sticky(StickyProcess),
    Node(Proc),
}

/// A balancer's processes: the root we started and whatever it forked. On drop (whatever
/// path the run took) the descendants are listed, the root stopped, and every listed process
/// still running (the same one: its start time unchanged) killed.
struct Tree(Option<Root>);

impl Tree {
    fn pid(&self) -> i32 {
        match &self.0 {
            Some(Root::Sticky(p)) => p.pid(),
            Some(Root::Node(p)) => p.pid(),
            None => 0,
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let root = self.pid();
        if root <= 1 {
            return;
        }
        let listed: Vec<(i32, u64)> = descendants(root)
            .into_iter()
            .filter(|&p| p != root)
            .filter_map(|p| Some((p, cpu::process(p)?.start_time)))
            .collect();
        match self.0.take() {
            Some(Root::Sticky(p)) => drop(p),
            Some(Root::Node(mut p)) => p.stop(),
            None => {}
        }
        for (pid, at) in listed {
            if cpu::process(pid).map(|p| p.start_time) == Some(at) {
                // SAFETY: a descendant of our own child, checked to be the same process.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Medians per seed, in `Seed::ALL` order.
pub fn medians(runs: &[SeedRun]) -> Vec<(Seed, SeedRun)> {
    Seed::ALL
        .into_iter()
        .filter_map(|seed| {
            let of: Vec<&SeedRun> = runs.iter().filter(|r| r.seed == seed).collect();
            of.first()?;
            let med = |f: fn(&SeedRun) -> f64| {
                let mut v: Vec<f64> = of.iter().map(|r| f(r)).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(0.0)
            };
            Some((
                seed,
                SeedRun {
                    seed,
                    sessions_per_sec: med(|r| r.sessions_per_sec),
                    messages_per_sec: med(|r| r.messages_per_sec),
                    cpu_ms_per_session: med(|r| r.cpu_ms_per_session),
                    p99_ms: med(|r| r.p99_ms),
                    lost: of.iter().map(|r| r.lost).sum(),
                    errors: of.iter().map(|r| r.errors).sum(),
                    first_error: of.iter().find_map(|r| r.first_error.clone()),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: Seed, rate: f64, lost: u64) -> SeedRun {
        SeedRun {
            seed,
            sessions_per_sec: rate,
            messages_per_sec: rate * 2.0,
            cpu_ms_per_session: 1.0,
            p99_ms: 10.0,
            lost,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn medians_per_seed_and_lost_sessions_add_up() {
        let runs = [
            run(Seed::StickyCluster, 100.0, 0),
            run(Seed::StickySession, 50.0, 1),
            run(Seed::StickyCluster, 300.0, 0),
            run(Seed::StickySession, 40.0, 2),
            run(Seed::StickyCluster, 200.0, 0),
        ];
        let m = medians(&runs);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].0, m[0].1.sessions_per_sec),
            (Seed::StickyCluster, 200.0)
        );
        assert_eq!((m[1].1.sessions_per_sec, m[1].1.lost), (50.0, 3));
    }
}
