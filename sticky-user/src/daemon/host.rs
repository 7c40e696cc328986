//! What the host must provide: one daemon per instance, bpffs, privileges.

use std::os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _};

use anyhow::{Context as _, bail};
use tracing::warn;

use crate::{control, proxy::config::ProxyConfig};

/// One daemon per instance: an exclusive `flock` on `/run/sticky/<instance>.lock`.
pub(super) struct InstanceLock {
    _file: std::fs::File,
}

impl InstanceLock {
    pub(super) fn acquire(instance: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(control::RUN_DIR)
            .with_context(|| format!("create {}", control::RUN_DIR))?;
        std::fs::set_permissions(control::RUN_DIR, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("chmod {}", control::RUN_DIR))?;
        let path = control::lock_path(instance);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        // SAFETY: a valid fd; the lock lives as long as the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "instance '{instance}' is already running (control socket {}): stop it with \
                 `sticky stop --instance {instance}` or choose another --instance",
                control::socket_path(instance).display()
            );
        }
        Ok(Self { _file: file })
    }
}

/// Pins need bpffs at /sys/fs/bpf; mount it when absent (we are root by now).
pub(super) fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, point, kind) = (f.next(), f.next(), f.next());
        point == Some("/sys/fs/bpf") && kind == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, kind) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({}): run \
             `mount -t bpf bpf /sys/fs/bpf`",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Fails early with one clear line instead of a verifier or netlink error.
pub(super) fn require_privileges() -> anyhow::Result<()> {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_BPF: u64 = 39;
    if eff & (1 << CAP_NET_ADMIN) != 0 && eff & (1 << CAP_BPF) != 0 {
        return Ok(());
    }
    bail!("sticky run needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN")
}

/// Raises the open-file limit so the proxy's connection limit (two sockets per connection) is
/// what bounds it, not `ulimit -n`; warns when the hard limit is too low.
pub(super) fn raise_fd_limit(proxy: Option<&ProxyConfig>) {
    let Some(proxy) = proxy else {
        return;
    };
    let wanted = (2 * proxy.max_connections as u64).saturating_add(1024);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= wanted {
        return;
    }
    let new = libc::rlimit {
        rlim_cur: wanted.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: a valid rlimit value.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0;
    if !raised || new.rlim_cur < wanted {
        warn!(
            "proxy: --max-connections {} needs {wanted} open files, the limit is {}: raise \
             `ulimit -n` or lower --max-connections",
            proxy.max_connections,
            if raised { new.rlim_cur } else { lim.rlim_cur }
        );
    }
}
