//! Kernel features (tcx, sockmap) and whether pins outlive the process (bpffs).

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use aya::util::KernelVersion;

use super::{Code, Line, Target};

/// tcx is what aya attaches with from 6.6 on; only tcx links can be pinned, and sticky needs
/// pinned links to survive restarts (it refuses to start without).
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

pub fn tcx() -> Vec<Line> {
    // The version aya itself decides by (uname(2)), so doctor and the attach agree.
    let line = match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => {
            Line::ok(Code::Tcx, format!("Linux {v}: tcx links"))
        }
        Ok(v) => Line::fail(
            Code::Tcx,
            format!(
                "Linux {v} has no tcx (6.6+): sticky cannot pin its tc links and will not start"
            ),
            "run on Linux 6.6 or newer",
        ),
        Err(e) => Line::skip(Code::Tcx, format!("kernel version unknown: {e}")),
    };
    vec![line]
}

/// Proxy splicing needs a SockHash and `sk_skb` programs; without, sticky copies in userspace.
pub fn sockmap(t: &Target) -> Vec<Line> {
    if !t.splice {
        return Vec::new();
    }
    use aya::{maps::MapType, programs::ProgramType, sys};
    let map = sys::is_map_supported(MapType::SockHash);
    let prog = sys::is_program_supported(ProgramType::SkSkb);
    vec![match (map, prog) {
        (Ok(true), Ok(true)) => Line::ok(Code::Sockmap, "sockmap and sk_skb programs available"),
        (Ok(_), Ok(_)) => Line::fail(
            Code::Sockmap,
            "no sockmap/sk_skb support: proxy mode copies every byte in userspace",
            "a kernel with CONFIG_BPF_STREAM_PARSER, or --no-splice to say it is meant",
        ),
        (Err(e), _) => Line::skip(Code::Sockmap, format!("cannot probe: {e} (needs root)")),
        (_, Err(e)) => Line::skip(Code::Sockmap, format!("cannot probe: {e} (needs root)")),
    }]
}

/// Pins live as long as the bpffs they are on. A bpffs mounted inside a private mount
/// namespace (`ip netns exec` remounts /sys; containers, systemd `PrivateMounts=`) dies with
/// the last process in it, and the tc links pinned there detach. Checked for `pid` (the
/// running daemon) or this process, against the outermost mount namespace visible here.
pub fn bpffs(pid: Option<u32>) -> Vec<Line> {
    if pid.is_none() && crate::namespaces::mount_plan() == crate::namespaces::MountPlan::JoinParent
    {
        return vec![Line::ok(
            Code::Bpffs,
            "this process has a mount namespace of its own (`ip netns exec`): `sticky run` \
             started the same way joins its parent's, so its pins outlive it",
        )];
    }
    let subject = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    let who = pid.map_or_else(
        || "this process".to_string(),
        |p| format!("the daemon (pid {p})"),
    );
    let Some((host_pid, host_ns)) = host_mount_ns() else {
        return vec![Line::skip(
            Code::Bpffs,
            "cannot read mount namespaces under /proc",
        )];
    };
    let Some(own_ns) = mount_ns(&subject) else {
        return vec![Line::skip(
            Code::Bpffs,
            format!("cannot read the mount namespace of {who}"),
        )];
    };
    if own_ns == host_ns {
        return vec![Line::ok(
            Code::Bpffs,
            format!("{who} shares the host's mount namespace: pins under /sys/fs/bpf outlive it"),
        )];
    }
    let bpffs = |p: &str| {
        let path = PathBuf::from(format!("/proc/{p}/root/sys/fs/bpf"));
        let meta = std::fs::metadata(&path).ok()?;
        crate::namespaces::is_bpffs(&path).then_some(meta.dev())
    };
    if let (Some(a), Some(b)) = (bpffs(&subject), bpffs(&host_pid.to_string()))
        && a == b
    {
        return vec![Line::ok(
            Code::Bpffs,
            format!("{who} has a private mount namespace, but /sys/fs/bpf is the host's bpffs"),
        )];
    }
    vec![Line::fail(
        Code::Bpffs,
        format!(
            "{who} runs in a private mount namespace (a container, systemd PrivateMounts, a \
             shell inside `unshare -m`) whose /sys/fs/bpf is not the host's bpffs: pins die \
             with it, so a restart detaches sticky and resets every connection"
        ),
        "bind-mount the host's /sys/fs/bpf into it (systemd: BindPaths=/sys/fs/bpf), or start \
         sticky from the host's mount namespace with `sticky run --netns NAME …`",
    )]
}

fn mount_ns(pid: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The outermost mount namespace among this process's ancestors whose namespace can be read
/// (PID 1's on a normal host; the nearest readable ancestor's where PID 1 is hidden).
fn host_mount_ns() -> Option<(u32, PathBuf)> {
    let mut pid = std::process::id();
    let mut best = (pid, mount_ns("self")?);
    while let Some(up) = parent(pid).filter(|&p| p != 0) {
        match mount_ns(&up.to_string()) {
            Some(ns) => best = (up, ns),
            None => break,
        }
        pid = up;
    }
    Some(best)
}
