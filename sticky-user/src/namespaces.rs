//! Where a daemon runs: entering a network namespace by name (`--netns`), and making sure its
//! pins land on a bpffs that outlives the process.
//!
//! `ip netns exec NAME cmd` gives `cmd` a mount namespace of its own with a fresh `/sys`: a
//! bpffs mounted at `/sys/fs/bpf` in there, with every pinned map and tcx link, dies with the
//! process, the programs detach, and a restart loses every connection. The mount namespace was
//! made for this process alone when our parent lives in another one; then we join the parent's
//! (the host's, for a shell that ran `ip netns exec`) before any thread starts, and keep the
//! network namespace we were given. Containers and systemd units share their mount namespace
//! with their other processes, so there the local bpffs is kept as it is.

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

/// What [`persistent_pins`] does about this process's mount namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountPlan {
    /// Shared with the parent (the host, a container), or with a bpffs from outside already
    /// mounted (a systemd unit): kept as it is.
    Keep,
    /// Made for this process alone (`ip netns exec`): the parent's is joined.
    JoinParent,
    /// Made for this process alone, and the parent's cannot be opened.
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

/// The plan for this process, without acting on it (`sticky doctor` reports it).
pub fn mount_plan() -> MountPlan {
    // A bpffs already here came from outside this mount namespace (a systemd unit's, a
    // container's bind mount): pins on it outlive us. `ip netns exec` leaves none: its /sys is
    // a fresh sysfs.
    if is_bpffs(Path::new("/sys/fs/bpf")) {
        return MountPlan::Keep;
    }
    // SAFETY: no arguments.
    let parent = unsafe { libc::getppid() };
    match (mount_ns("self"), mount_ns(&parent.to_string())) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            if File::open(format!("/proc/{parent}/ns/mnt")).is_ok() {
                MountPlan::JoinParent
            } else {
                MountPlan::Private
            }
        }
        // Shared, or nothing to compare without /proc: trust the local bpffs.
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
    // A mount namespace of our own (`ip netns exec`): join the parent's. Joining moves the
    // working directory to that namespace's root: come back to the same path, so relative
    // paths (`--config sticky.toml`) keep working.
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
namespace of its own, as `ip netns exec` makes, and the parent's could not be joined): a \
restart will drop every connection; run it as `sticky run --netns NAME …` or through \
`nsenter --net=/run/netns/NAME` instead";

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
