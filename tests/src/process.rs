//! A `sticky` child process inside a namespace, its output read line by line.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// How a daemon gets into its network namespace: the ways operators start one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `nsenter --net=/run/netns/NAME sticky …`: the network namespace only.
    Nsenter,
    /// `ip netns exec NAME sticky …`: a mount namespace of its own too, `/sys` remounted.
    IpNetnsExec,
    /// `sticky run --netns NAME …` from the test's own namespaces.
    NetnsFlag,
    /// `nsenter --net=… unshare --mount` with the host's bpffs unmounted inside: a private
    /// mount namespace that is not `ip netns exec` (a sandbox), where pins die with it.
    PrivateMounts,
}

impl Launch {
    /// The command that runs `bin ARGS` in `ns` this way (`ARGS` starts with the subcommand).
    fn command(self, bin: &Path, ns: &Netns, args: &[String]) -> Command {
        match self {
            Self::Nsenter => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.path())).arg(bin).args(args);
                cmd
            }
            Self::IpNetnsExec => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name]).arg(bin).args(args);
                cmd
            }
            Self::PrivateMounts => {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", ns.path()))
                    .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg("umount -l /sys/fs/bpf && exec \"$0\" \"$@\"")
                    .arg(bin)
                    .args(args);
                cmd
            }
            Self::NetnsFlag => {
                let mut cmd = Command::new(bin);
                let (sub, rest) = args
                    .split_first()
                    .map_or((None, args), |(s, r)| (Some(s), r));
                cmd.args(sub).args(["--netns", &ns.name]).args(rest);
                cmd
            }
        }
    }
}

/// A `sticky run` child process inside a namespace; SIGTERM on drop (SIGKILL if it lingers).
pub struct StickyProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub ready_line: String,
    /// Every output line read so far that no `wait_for` asked for.
    pub log: Vec<String>,
    /// The `--instance` it runs as (the namespace's name unless the arguments give one).
    pub instance: String,
}

impl StickyProcess {
    /// Starts `bin run ARGS` in `ns` and waits for its ready line. Without `--instance` in
    /// `args` it runs as an instance named after the namespace, so runs never collide.
    pub fn start(bin: &Path, ns: &Netns, args: &[String]) -> anyhow::Result<Self> {
        let mut full = vec!["run".to_string()];
        full.extend_from_slice(args);
        Self::start_with(bin, ns, &full, "sticky ready")
    }

    /// Starts `bin ARGS` (any subcommand, e.g. `cluster`) in `ns` and waits for a line
    /// containing `ready`.
    pub fn start_with(
        bin: &Path,
        ns: &Netns,
        args: &[String],
        ready: &str,
    ) -> anyhow::Result<Self> {
        Self::launch(Launch::Nsenter, bin, ns, args, ready)
    }

    /// Starts `bin ARGS` in `ns` the way `launch` says, and waits for a line containing
    /// `ready`.
    pub fn launch(
        launch: Launch,
        bin: &Path,
        ns: &Netns,
        args: &[String],
        ready: &str,
    ) -> anyhow::Result<Self> {
        let mut args = args.to_vec();
        let ours = args
            .iter()
            .position(|a| a == "--")
            .map_or(&args[..], |end| &args[..end]);
        let instance = match ours.iter().position(|a| a == "--instance") {
            Some(i) => args
                .get(i + 1)
                .cloned()
                .context("--instance without a name")?,
            None => {
                // Before any `--`: what follows it belongs to a worker command.
                let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
                args.splice(at..at, ["--instance".to_string(), ns.name.clone()]);
                ns.name.clone()
            }
        };
        let mut child = launch
            .command(bin, ns, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start sticky ({launch:?})"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("sticky stdout")?;
        let stderr = child.stderr.take().context("sticky stderr")?;
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        // Only the readers hold a sender now: a sticky that exits early is seen at once.
        drop(tx);
        let mut process = Self {
            child,
            lines,
            ready_line: String::new(),
            log: Vec::new(),
            instance,
        };
        process.ready_line = process.wait_for(ready, Duration::from_secs(60))?;
        Ok(process)
    }

    /// Waits for an output line containing `needle`; fails with everything it printed.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(line) => {
                    self.log.push(line.clone());
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "sticky exited ({status:?}) before '{needle}': {}",
                        seen.join(" | ")
                    );
                }
            }
        }
        bail!(
            "no '{needle}' from sticky within {timeout:?}: {}",
            seen.join(" | ")
        )
    }

    /// Runs `bin ARGS --instance <ours>` (a control command) and returns its output.
    pub fn ctl(&self, bin: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin)
            .args(args)
            .args(["--instance", &self.instance])
            .output()
            .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", bin.display()))
    }

    /// Forgets the process without stopping it (it was killed or stopped by other means).
    pub fn wait_exit(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.reap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: our own child, still unreaped.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            bail!("kill {}: {}", self.pid(), std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.reap()
    }

    fn reap(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StickyProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal(libc::SIGTERM);
            let _ = self.reap();
        }
    }
}
