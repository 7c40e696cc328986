//! Kernel features (tcx, sockmap) and whether pins outlive the process (bpffs).

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

/// Pins live as long as the bpffs they are on. Before a start, the rule `sticky run` itself
/// follows (`namespaces::mount_plan`); for a running daemon, what it reports in its status.
pub fn bpffs(t: &Target) -> Vec<Line> {
    use crate::namespaces::{MountPlan, PinScope, mount_plan};
    let fail = |what: String| {
        Line::fail(
            Code::Bpffs,
            what,
            "bind-mount the host's /sys/fs/bpf into it (systemd: BindPaths=/sys/fs/bpf), or \
             start sticky from the host's mount namespace with `sticky run --netns NAME …`",
        )
    };
    let line = match &t.pins {
        Some(pins) if pins == PinScope::Persistent.name() => Line::ok(
            Code::Bpffs,
            "the daemon reports its pins persistent: they outlive it",
        ),
        Some(pins) if pins == PinScope::ProcessLifetime.name() => fail(
            "the daemon's pins are private to it (a mount namespace of its own without the \
             host's bpffs): a restart detaches sticky and resets every connection"
                .to_string(),
        ),
        Some(_) => Line::skip(
            Code::Bpffs,
            "the daemon does not say how long its pins live (an older sticky)",
        ),
        None => match mount_plan() {
            MountPlan::Keep => Line::ok(
                Code::Bpffs,
                "/sys/fs/bpf is a bpffs from outside, or the mount namespace is the parent's: \
                 pins outlive the process",
            ),
            MountPlan::JoinParent => Line::ok(
                Code::Bpffs,
                "this process has the mount namespace `ip netns exec` makes: `sticky run` \
                 started the same way joins its parent's, so its pins outlive it",
            ),
            MountPlan::Private => fail(
                "this process runs in a private mount namespace (`unshare -m`, a sandbox) with \
                 no bpffs from outside: pins there die with it, so a restart detaches sticky \
                 and resets every connection"
                    .to_string(),
            ),
        },
    };
    vec![line]
}
