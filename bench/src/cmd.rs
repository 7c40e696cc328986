//! External commands and child processes. Every command has a deadline, every process we start
//! is stopped by its PID on drop, and Ctrl-C ends waits early so the namespaces get removed.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sticky_tests::Netns;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns SIGINT and SIGTERM into a flag that every wait checks, so cleanup runs.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Fails once Ctrl-C (or SIGTERM) arrived.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: stopping and removing the namespaces");
    }
    Ok(())
}

/// Sleeps, waking early on Ctrl-C.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        check_interrupted()?;
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    check_interrupted()
}

/// `nsenter --net=NS [taskset -c CPU] PROGRAM`: `nsenter` and `taskset` exec, so the child's
/// PID is the program's own.
pub fn in_ns(ns: &Netns, cpu: Option<usize>, program: impl AsRef<Path>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path()));
    if let Some(cpu) = cpu {
        cmd.args(["taskset", "-c", &cpu.to_string()]);
    }
    cmd.arg(program.as_ref());
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

fn collect(stream: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stream).read_to_string(&mut text);
        text
    })
}

/// Runs `cmd` to completion and returns its stdout; kills it at `timeout` or on Ctrl-C.
pub fn output(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("start `{line}` (is it installed? `cargo xtask bench` installs it)")
        })?;
    let stdout = collect(child.stdout.take().context("child stdout")?);
    let stderr = collect(child.stderr.take().context("child stderr")?);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for child")? {
            break Some(status);
        }
        if Instant::now() > deadline || check_interrupted().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    check_interrupted()?;
    match status {
        None => bail!("`{line}` did not finish within {timeout:?}; killed it"),
        Some(s) if !s.success() => bail!("`{line}` failed ({s}): {}", err.trim()),
        Some(_) => Ok(out),
    }
}

/// A long-running child we started (server, proxy): SIGTERM by PID on drop, SIGKILL if it
/// lingers. Its output lines are kept for readiness checks and error messages.
pub struct Proc {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let line = describe(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}: `{line}`"))?;
        let (tx, lines) = mpsc::channel();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().context("child stdout")?),
            Box::new(child.stderr.take().context("child stderr")?),
        ];
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for an output line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            check_interrupted()?;
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing '{needle}': {}",
                        self.name,
                        self.seen.join(" | ")
                    );
                }
            }
        }
        bail!(
            "{} printed no '{needle}' within {timeout:?}: {}",
            self.name,
            self.seen.join(" | ")
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails with its output if it exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            self.seen.extend(self.lines.try_iter());
            bail!("{} exited ({status}): {}", self.name, self.seen.join(" | "));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: our own child, not yet reaped, so the PID is still ours.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private folder for generated configuration files, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(sticky_tests::unique_name(tag));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let file = self.path.join(name);
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        Ok(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls until something listens on TCP `port` in `ns` (`ss -ltn`); connecting instead would
/// be taken as a client by iperf3.
pub fn wait_listening(ns: &Netns, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    loop {
        let out = output(
            in_ns(ns, None, "ss").args(["-ltnH", &filter]),
            Duration::from_secs(5),
        )?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on port {port} in {} after {timeout:?}",
                ns.name
            );
        }
        sleep(Duration::from_millis(20))?;
    }
}

/// Every thread of process `pid` on `cpu` (`taskset -a`).
pub fn pin_process(pid: i32, cpu: usize) -> anyhow::Result<()> {
    output(
        Command::new("taskset").args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()]),
        Duration::from_secs(5),
    )
    .map(drop)
    .with_context(|| format!("pin process {pid} to CPU {cpu}"))
}
