//! Restarts lose nothing however the daemon got into its network namespace. `ip netns exec`
//! gives it a mount namespace of its own with a fresh `/sys`; a bpffs mounted there would die
//! with the daemon, detach the programs and reset every connection (24 of 24 when first
//! found). sticky joins its parent's mount namespace instead; `sticky run --netns NAME` enters
//! the network namespace itself and touches no mounts.

mod common;

use std::path::Path;

use common::{args_with, assign, exchange, ok, open_long_lived, status, sticky_bin};
use sticky_tests::{Launch, StickyProcess, Topology, root_or_skip};

const CLIENTS: usize = 150;
const HELD: usize = 120;

fn start(launch: Launch, topo: &Topology, args: &[String]) -> StickyProcess {
    let mut full = vec!["run".to_string()];
    full.extend_from_slice(args);
    StickyProcess::launch(launch, &sticky_bin(), &topo.lb, &full, "sticky ready")
        .unwrap_or_else(|e| panic!("sticky run ({launch:?}): {e:#}"))
}

fn kill_9_and_restart_lose_nothing(launch: Launch, tag: &str) {
    let topo = Topology::build(tag, 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &[0, 1, 2], &["--instance", &topo.lb.name]);
    let daemon = start(launch, &topo, &args);
    assert!(
        !daemon.log.iter().any(|l| l.contains("pins are private")),
        "{launch:?}: {:?}",
        daemon.log
    );
    assert_eq!(status(&daemon).pins, "persistent", "{launch:?}");
    let pin_dir = format!("/sys/fs/bpf/sticky/{}", daemon.instance);
    assert!(
        Path::new(&pin_dir).join("links").exists(),
        "{launch:?}: no pinned links on this host's bpffs at {pin_dir}"
    );

    let mut held = open_long_lived(&topo, 0..HELD, false);
    let before = assign(&topo, 0..CLIENTS, 1, false);
    let exchange = |held: &mut Vec<_>, when: &str| exchange(held, &format!("{launch:?} {when}"));

    daemon.signal(libc::SIGKILL).expect("kill -9");
    assert!(!daemon.wait_exit().expect("exit").success());
    exchange(&mut held, "after kill -9");
    assert_eq!(
        assign(&topo, 0..CLIENTS, 1, false),
        before,
        "{launch:?}: clients moved with no daemon"
    );

    let daemon = start(launch, &topo, &args);
    assert!(
        daemon.ready_line.contains("adopted"),
        "{launch:?}: {}",
        daemon.ready_line
    );
    exchange(&mut held, "after the restart");
    assert_eq!(
        assign(&topo, 0..CLIENTS, 1, false),
        before,
        "{launch:?}: affinity lost across the restart"
    );
    ok(&daemon.ctl(&sticky_bin(), &["status"]), "status");

    assert!(daemon.stop().expect("stop").success());
    assert!(
        !Path::new(&pin_dir).exists(),
        "{launch:?}: pins left behind"
    );
}

#[test]
fn ip_netns_exec_restart_loses_nothing() {
    if root_or_skip("ip_netns_exec_restart_loses_nothing") {
        kill_9_and_restart_lose_nothing(Launch::IpNetnsExec, "nsx");
    }
}

#[test]
fn netns_flag_restart_loses_nothing() {
    if root_or_skip("netns_flag_restart_loses_nothing") {
        kill_9_and_restart_lose_nothing(Launch::NetnsFlag, "nsf");
    }
}

#[test]
fn unknown_netns_is_a_clear_error_and_changes_nothing() {
    if !root_or_skip("unknown_netns_is_a_clear_error_and_changes_nothing") {
        return;
    }
    let out = std::process::Command::new(sticky_bin())
        .args([
            "run",
            "--netns",
            "no-such-netns-here",
            "--iface",
            "lo",
            "--vip",
            "127.0.0.1:1",
            "--backend",
            "127.0.0.1:2",
            "--instance",
            "no-such-netns-test",
        ])
        .output()
        .expect("run sticky");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network namespace 'no-such-netns-here'") && err.contains("ip netns list"),
        "{err}"
    );
    assert!(!Path::new("/sys/fs/bpf/sticky/no-such-netns-test").exists());
}

/// A private mount namespace that is not `ip netns exec` is the operator's: sticky leaves it,
/// says in one line that a restart will drop connections, and status says so too.
#[test]
fn a_private_mount_namespace_is_left_alone_and_reported() {
    if !root_or_skip("a_private_mount_namespace_is_left_alone_and_reported") {
        return;
    }
    let topo = Topology::build("nsp", 1, 1).expect("topology");
    let args = args_with(&topo, &[0], &["--instance", &topo.lb.name]);
    let daemon = start(Launch::PrivateMounts, &topo, &args);
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.contains("pins are private to this process")),
        "no warning at start: {:?}",
        daemon.log
    );
    assert_eq!(status(&daemon).pins, "process-lifetime");
    let host_pins = format!("/sys/fs/bpf/sticky/{}", daemon.instance);
    assert!(
        !Path::new(&host_pins).exists(),
        "pinned on the host's bpffs from a private mount namespace"
    );
    assert!(daemon.stop().expect("stop").success());
}

/// Pinned maps are adopted with the sizes they were made with: a restart that asks for other
/// sizes is refused with the setting named, and the running data path is left as it was.
#[test]
fn a_restart_with_other_map_sizes_is_refused_and_changes_nothing() {
    if !root_or_skip("a_restart_with_other_map_sizes_is_refused_and_changes_nothing") {
        return;
    }
    let topo = Topology::build("nssz", 2, 20).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &[0, 1], &["--instance", &topo.lb.name]);
    let daemon = start(Launch::Nsenter, &topo, &args);
    let before = assign(&topo, 0..20, 1, false);
    ok(
        &daemon.ctl(&sticky_bin(), &["stop", "--keep"]),
        "stop --keep",
    );
    assert!(daemon.wait_exit().expect("exit").success());

    let mut bigger = vec!["run".to_string()];
    bigger.extend(args.iter().cloned());
    bigger.extend(["--max-flows".to_string(), "524288".to_string()]);
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", topo.lb.path()))
        .arg(sticky_bin())
        .args(&bigger)
        .output()
        .expect("run sticky");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restart with another size started");
    assert!(
        err.contains("pinned maps with max-flows 262144 (asked: 524288)"),
        "{err}"
    );
    assert_eq!(
        assign(&topo, 0..20, 1, false),
        before,
        "the refused restart changed the data path"
    );

    let daemon = start(Launch::Nsenter, &topo, &args);
    assert!(
        daemon.ready_line.contains("adopted"),
        "{}",
        daemon.ready_line
    );
    assert!(daemon.stop().expect("stop").success());
}
