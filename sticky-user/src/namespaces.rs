//! Where a daemon runs: entering a network namespace by name (`--netns`), and making sure its
//! pins land on a bpffs that outlives the process.
//!
//! `ip netns exec NAME cmd` gives `cmd` a mount namespace of its own with a fresh `/sys`: a
//! bpffs mounted at `/sys/fs/bpf` in there, with every pinned map and tcx link, dies with the
//! process, the programs detach, and a restart loses every connection. When /sys is exactly
//! what `ip netns exec` mounts (a sysfs named after the network namespace we are in) and our
//! parent lives in another mount namespace, we join the parent's (the host's, for the shell
//! that ran `ip netns exec`) before any thread starts, and keep the network namespace. Any
//! other private mount namespace (`unshare -m`, a sandbox) is the operator's choice and is left
//! alone; a bpffs already there (a systemd unit's, a container's bind mount) is used as it is.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

/// How long the instance's pins live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PinScope {
    /// On a bpffs that outlives this process: restarts adopt flows and links.
    #[default]
    Persistent,
    /// On a bpffs private to this process: a restart drops every connection.
    ProcessLifetime,
}

impl PinScope {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Persistent => "persistent",
            Self::ProcessLifetime => "process-lifetime",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "network namespace '{name}': cannot open {path}: {source} (`ip netns list` shows the \
         names; a path to a namespace file works too)"
    )]
    Open {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `/run/netns/NAME` for a name, the path itself for anything with a `/`.
pub fn netns_path(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    }
}

/// Moves this process into network namespace `name` without touching mounts. Call before any
/// thread starts: a thread keeps the namespace it was created in.
pub fn enter_netns(name: &str) -> Result<(), NamespaceError> {
    let path = netns_path(name);
    let file = File::open(&path).map_err(|source| NamespaceError::Open {
        name: name.to_string(),
        path: path.clone(),
        source,
    })?;
    // SAFETY: a valid namespace fd, held open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NamespaceError::Enter {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The mount namespace of process `pid` (`self` for ours), as the kernel names it.
fn mount_ns(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.display().to_string())
}

/// What [`persistent_pins`] does about this process's mount namespace: the one rule for how
/// long pins live, which `sticky run` acts on, `sticky status` reports and `sticky doctor`
/// checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountPlan {
    /// A bpffs is already at /sys/fs/bpf (the host's, a systemd unit's, a container's bind
    /// mount), or the mount namespace is the parent's (the host's, a container's): kept.
    Keep,
    /// `ip netns exec`: a mount namespace made for this process with the namespace's own
    /// sysfs at /sys. The parent's mount namespace is joined; the network namespace stays.
    JoinParent,
    /// A mount namespace of this process's own with no bpffs, which is not `ip netns exec`
    /// (`unshare -m`, a sandbox) or whose parent's cannot be joined: left alone, and the pins
    /// die with it.
    Private,
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Whether /sys is the sysfs `ip netns exec NAME` mounts: its source is NAME, and
/// /run/netns/NAME is this process's network namespace.
fn sysfs_of_ip_netns_exec() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // `ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS…] - FSTYPE SOURCE SUPER`; the last /sys wins.
    let source = mountinfo.lines().rev().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        let point = head.split_whitespace().nth(4)?;
        let mut t = tail.split_whitespace();
        (point == "/sys" && t.next()? == "sysfs").then(|| t.next().map(str::to_string))?
    });
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    source.is_some_and(|name| {
        !name.contains('/') && same(&netns_path(&name), Path::new("/proc/self/ns/net"))
    })
}

/// The plan for this process, without acting on it (`sticky doctor` reports it).
pub fn mount_plan() -> MountPlan {
    if is_bpffs(Path::new("/sys/fs/bpf")) {
        return MountPlan::Keep;
    }
    // SAFETY: no arguments.
    let parent = unsafe { libc::getppid() };
    match (mount_ns("self"), mount_ns(&parent.to_string())) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            if sysfs_of_ip_netns_exec() && File::open(format!("/proc/{parent}/ns/mnt")).is_ok() {
                MountPlan::JoinParent
            } else {
                MountPlan::Private
            }
        }
        // Shared with the parent, or nothing to compare without /proc.
        _ => MountPlan::Keep,
    }
}

/// Makes the pins of this process outlive it where that can be arranged, and says whether they
/// will. Call before any thread starts (joining a mount namespace needs a single thread).
pub fn persistent_pins() -> PinScope {
    match mount_plan() {
        MountPlan::Keep => return PinScope::Persistent,
        MountPlan::Private => return PinScope::ProcessLifetime,
        MountPlan::JoinParent => {}
    }
    // SAFETY: no arguments.
    let parent = unsafe { libc::getppid() };
    // Joining moves the working directory to that namespace's root: come back to the same
    // path, so relative paths (`--config sticky.toml`) keep working.
    let cwd = std::env::current_dir().ok();
    let joined = File::open(format!("/proc/{parent}/ns/mnt")).is_ok_and(|ns| {
        // SAFETY: a valid namespace fd; the process has one thread here.
        unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) == 0 }
    });
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    if joined {
        PinScope::Persistent
    } else {
        PinScope::ProcessLifetime
    }
}

/// The one line `sticky run` prints when its pins die with it.
pub const PROCESS_LIFETIME_WARNING: &str = "warning: pins are private to this process (a mount \
namespace of its own without the host's bpffs): a restart will drop every connection; run it \
from the host's mount namespace (`sticky run --netns NAME …`) or bind-mount the host's \
/sys/fs/bpf into it";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(netns_path("lb"), Path::new("/run/netns/lb"));
        assert_eq!(netns_path("/proc/42/ns/net"), Path::new("/proc/42/ns/net"));
    }

    #[test]
    fn unknown_namespace_is_a_clear_error() {
        let err = enter_netns("no-such-netns-sticky-test")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/run/netns/no-such-netns-sticky-test"),
            "{err}"
        );
        assert!(err.contains("ip netns list"), "{err}");
    }
}
