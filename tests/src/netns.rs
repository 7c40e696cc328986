//! Named network namespaces and the veth pairs between them; each is deleted on drop.

use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

/// Runs a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("run {program} (is it installed? `cargo xtask setup` installs it)")
    })?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A name no other run on this host uses: tag, pid and a per-process counter.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "stk-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// `ip -n NS -batch -`: hundreds of addresses in one process.
    pub fn ip_batch(&self, batch: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run ip -batch")?;
        child
            .stdin
            .take()
            .context("ip stdin")?
            .write_all(batch.as_bytes())
            .context("feed ip -batch")?;
        let out = child.wait_with_output().context("wait for ip -batch")?;
        if !out.status.success() {
            bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A third-party legacy tc filter on `iface` ingress that mirrors every IPv4 packet to
    /// `to` (this kernel has cls_u32 and act_mirred built in, not matchall or gact): its
    /// action's statistics count what reached it (`tc -s filter show`).
    pub fn mirror_filter(&self, iface: &str, to: &str) -> anyhow::Result<()> {
        self.exec("tc", &["qdisc", "add", "dev", iface, "clsact"])?;
        self.exec(
            "tc",
            &[
                "filter", "add", "dev", iface, "ingress", "protocol", "ip", "prio", "1", "u32",
                "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", to,
            ],
        )?;
        Ok(())
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread that entered this namespace: sockets it creates live here.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// Spawns a detached thread inside this namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<JoinHandle<R>> {
        let path = self.path();
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let entered = enter(&path);
            let ok = entered.is_ok();
            let _ = tx.send(entered);
            if !ok {
                // The caller sees the error; this thread must not run `f` in the wrong place.
                loop {
                    std::thread::park();
                }
            }
            f()
        });
        rx.recv().context("namespace thread vanished")??;
        Ok(handle)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

fn enter(path: &str) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects `a_if` in `a` to `b_if` in `b`, both up, transmit checksum offload off on both
/// ends so that a wrong checksum is dropped by the receiver instead of being hidden.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ])?;
    for (ns, dev) in [(a, a_if), (b, b_if)] {
        ns.exec("ethtool", &["-K", dev, "tx", "off"])
            .with_context(|| format!("turn checksum offload off on {dev} (needs ethtool)"))?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    Ok(())
}
