//! `sticky doctor`: a clean topology passes; each fixture creates exactly one fault in its own
//! namespaces, and doctor reports exactly that finding, with its exit code and its fix.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    os::fd::{FromRawFd as _, OwnedFd},
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::sticky_bin;
use sticky_tests::{Netns, StickyProcess, Topology, root_or_skip};

/// `sticky doctor ARGS` in `ns` through `nsenter --net` (the mount namespace stays the host's).
fn doctor(ns: &Netns, args: &[String]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(sticky_bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run sticky doctor")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The codes of the FAIL lines.
fn failed(out: &Output) -> BTreeSet<u8> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .filter_map(|l| l.split_once('[')?.1.split_once(']')?.0.parse().ok())
        .collect()
}

/// Exactly one kind of finding, `code`, is reported, doctor exits with it, and names `fix`.
fn assert_only(out: &Output, code: u8, fix: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(i32::from(code)), "{all}");
    assert_eq!(failed(out), BTreeSet::from([code]), "{all}");
    assert!(
        all.contains(&format!("fix: {fix}")),
        "no fix '{fix}' in:\n{all}"
    );
}

fn assert_clean(out: &Output) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("no problems found"), "{all}");
}

fn topology(tag: &str) -> Topology {
    Topology::build(tag, 2, 1).expect("topology")
}

#[test]
fn a_clean_topology_passes_ipv4_and_ipv6() {
    if !root_or_skip("a_clean_topology_passes_ipv4_and_ipv6") {
        return;
    }
    let topo = topology("doc-ok");
    let _servers = topo.start_backends().expect("backends");
    for v6 in [false, true] {
        let out = doctor(&topo.lb, &topo.sticky_args(v6));
        assert_clean(&out);
        let all = text(&out);
        assert!(all.contains("through this node (connected)"), "{all}");
        assert!(all.contains("pins outlive the process"), "{all}");
    }
    // Proxy mode splices through sockmap: checked, and present on this kernel.
    let mut proxy = topo.sticky_args(false);
    proxy.extend(["--proxy".to_string(), "198.18.0.1:8081".to_string()]);
    let out = doctor(&topo.lb, &proxy);
    assert_clean(&out);
    assert!(
        text(&out).contains("sockmap and sk_skb programs available"),
        "{}",
        text(&out)
    );
    // The same settings from a config file.
    let file = std::env::temp_dir().join(format!("{}.toml", topo.lb.name));
    let (vip, b0, b1) = (
        topo.vip(false),
        topo.sticky_args(false)[5].clone(),
        topo.sticky_args(false)[7].clone(),
    );
    std::fs::write(
        &file,
        format!("iface = [\"cli0\"]\nvip = [\"{vip}\"]\nbackend = [\"{b0}\", \"{b1}\"]\n"),
    )
    .expect("write config");
    let out = doctor(&topo.lb, &["--config".into(), file.display().to_string()]);
    let _ = std::fs::remove_file(&file);
    assert_clean(&out);
}

/// Doctor's output on a fresh topology after `fault` made one thing wrong.
fn with_fault(tag: &str, v6: bool, fault: impl FnOnce(&Topology) -> anyhow::Result<()>) -> Output {
    let topo = topology(tag);
    fault(&topo).expect("create the fault");
    doctor(&topo.lb, &topo.sticky_args(v6))
}

/// A kernel without sockmap, as sticky's probe sees it: a seccomp filter makes every
/// `bpf(BPF_MAP_CREATE, …)` fail with EINVAL, the answer of a kernel that lacks the map type.
#[test]
fn a_kernel_without_sockmap() {
    if !root_or_skip("a_kernel_without_sockmap") {
        return;
    }
    let topo = topology("doc-skmap");
    let mut proxy = topo.sticky_args(false);
    proxy.extend(["--proxy".to_string(), "198.18.0.1:8081".to_string()]);
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", topo.lb.path()))
        .arg(sticky_bin())
        .arg("doctor")
        .args(&proxy);
    // SAFETY: between fork and exec only async-signal-safe calls (two prctl).
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(refuse_bpf_map_create);
    }
    let out = cmd.output().expect("run sticky doctor without sockmap");
    assert_only(
        &out,
        19,
        "a kernel with CONFIG_BPF_STREAM_PARSER, or --no-splice",
    );
}

/// Installs a seccomp filter on this process: `bpf(BPF_MAP_CREATE, …)` fails with EINVAL,
/// everything else runs.
fn refuse_bpf_map_create() -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const SYS_BPF: u32 = 321;
    const BPF_MAP_CREATE: u32 = 0;
    const RET_ERRNO_EINVAL: u32 = 0x0005_0000 | 22;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // seccomp_data: nr at 0, arch at 4, args[0] (low half on little endian) at 16.
    let program = [
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 5, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 3, SYS_BPF),
        op(LD_W_ABS, 0, 0, 16),
        op(JEQ_K, 0, 1, BPF_MAP_CREATE),
        op(RET_K, 0, 0, RET_ERRNO_EINVAL),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls; `prog` outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A kernel without tcx, as sticky sees it: the `UNAME26` personality makes uname(2) report a
/// 2.6 release, and aya (and so doctor) decides by uname.
#[test]
fn a_kernel_without_tcx() {
    if !root_or_skip("a_kernel_without_tcx") {
        return;
    }
    let topo = topology("doc-tcx");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.lb.path()))
        .args(["setarch", "x86_64", "--uname-2.6"])
        .arg(sticky_bin())
        .arg("doctor")
        .args(topo.sticky_args(false))
        .output()
        .expect("run sticky doctor as a 2.6 kernel");
    assert_only(&out, 10, "run on Linux 6.6 or newer");
    assert!(text(&out).contains("Linux 2.6."), "{}", text(&out));
}

#[test]
fn ip_forward_off() {
    if !root_or_skip("ip_forward_off") {
        return;
    }
    let out = with_fault("doc-fwd", false, |t| {
        t.lb.sysctl("net.ipv4.ip_forward", "0")
    });
    assert_only(&out, 11, "sysctl -w net.ipv4.ip_forward=1");
}

#[test]
fn ipv6_forwarding_off_with_an_ipv6_vip() {
    if !root_or_skip("ipv6_forwarding_off_with_an_ipv6_vip") {
        return;
    }
    let topo = topology("doc-fwd6");
    topo.lb
        .sysctl("net.ipv6.conf.all.forwarding", "0")
        .expect("sysctl");
    let out = doctor(&topo.lb, &topo.sticky_args(true));
    assert_only(&out, 12, "sysctl -w net.ipv6.conf.all.forwarding=1");
    // An IPv4 balancer on the same node does not need IPv6 forwarding.
    assert_clean(&doctor(&topo.lb, &topo.sticky_args(false)));
}

#[test]
fn strict_rp_filter_where_the_way_back_is_another_interface() {
    if !root_or_skip("strict_rp_filter_where_the_way_back_is_another_interface") {
        return;
    }
    let topo = topology("doc-rpf");
    topo.lb
        .sysctl("net.ipv4.conf.cli0.rp_filter", "1")
        .expect("sysctl");
    // Strict alone is harmless while the way back to clients is cli0 (no default route).
    assert_clean(&doctor(&topo.lb, &topo.sticky_args(false)));
    topo.lb
        .ip(&["route", "add", "default", "via", "198.19.0.2"])
        .expect("default route");
    let out = doctor(&topo.lb, &topo.sticky_args(false));
    assert_only(
        &out,
        13,
        "loose mode: sysctl -w net.ipv4.conf.cli0.rp_filter=2",
    );
}

#[test]
fn a_backend_whose_replies_go_elsewhere() {
    if !root_or_skip("a_backend_whose_replies_go_elsewhere") {
        return;
    }
    // Backend 1 still reaches the node's address on its own link, but sends everything else
    // (client replies) to a gateway that is not the node.
    let out = with_fault("doc-route", false, |t| {
        t.backends[1]
            .ip(&["-4", "route", "replace", "default", "via", "198.19.1.99"])
            .map(drop)
    });
    assert_only(&out, 14, "make this node the backend's gateway");
    let all = text(&out);
    assert!(
        all.contains("ip route replace default via 198.19.1.1"),
        "{all}"
    );
    assert!(
        all.contains(
            "198.19.1.2:8080 answers this node's own address but not client-side address 198.18.0.1"
        ),
        "{all}"
    );
}

#[test]
fn a_backend_side_mtu_below_the_client_side() {
    if !root_or_skip("a_backend_side_mtu_below_the_client_side") {
        return;
    }
    let out = with_fault("doc-mtu", false, |t| {
        t.lb.ip(&["link", "set", "be0", "mtu", "1280"]).map(drop)
    });
    assert_only(&out, 17, "ip link set dev be0 mtu 1500");
}

#[test]
fn an_ipv6_client_side_under_1280() {
    if !root_or_skip("an_ipv6_client_side_under_1280") {
        return;
    }
    let out = with_fault("doc-mtu6", true, |t| {
        t.lb.ip(&["link", "set", "cli0", "mtu", "1200"]).map(drop)
    });
    assert_only(&out, 17, "ip link set dev cli0 mtu 1500");
    assert!(
        text(&out).contains("IPv6 needs at least 1280"),
        "{}",
        text(&out)
    );
}

#[test]
fn several_faults_exit_with_the_most_severe() {
    if !root_or_skip("several_faults_exit_with_the_most_severe") {
        return;
    }
    let topo = topology("doc-many");
    topo.lb
        .ip(&["link", "set", "be0", "mtu", "1280"])
        .expect("mtu");
    topo.lb.sysctl("net.ipv4.ip_forward", "0").expect("sysctl");
    let out = doctor(&topo.lb, &topo.sticky_args(false));
    assert_eq!(failed(&out), BTreeSet::from([11, 17]), "{}", text(&out));
    assert_eq!(out.status.code(), Some(11), "{}", text(&out));
    let json = doctor(
        &topo.lb,
        &[&["--json".to_string()], &topo.sticky_args(false)[..]].concat(),
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(value["exit"], 11, "{value}");
    assert_eq!(json.status.code(), Some(11));
}

/// A trivial program (`return ret`) attached through a BPF link; detached on drop.
struct RawLink {
    _prog: OwnedFd,
    _link: OwnedFd,
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const PROG_SCHED_CLS: u32 = 3;
const PROG_XDP: u32 = 6;
const ATTACH_XDP: u32 = 37;
const ATTACH_TCX_INGRESS: u32 = 46;
const BPF_F_BEFORE: u32 = 8;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: a zeroed, large enough bpf_attr whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = ret; exit` as `prog_type` named `name` and links it to `iface` in `ns`.
fn attach_raw(
    ns: &Netns,
    iface: &str,
    (prog_type, attach_type): (u32, u32),
    ret: i32,
    name: &str,
    flags: u32,
) -> RawLink {
    use std::os::fd::AsRawFd as _;
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&ret.to_le_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_le_bytes());
    attr[4..8].copy_from_slice(&2u32.to_le_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    attr[68..72].copy_from_slice(&attach_type.to_le_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr).expect("load fixture program");
    let iface = iface.to_string();
    let link = ns
        .run(move || {
            let c = std::ffi::CString::new(iface).unwrap();
            // SAFETY: a valid NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_le_bytes());
            attr[4..8].copy_from_slice(&ifindex.to_le_bytes());
            attr[8..12].copy_from_slice(&attach_type.to_le_bytes());
            attr[12..16].copy_from_slice(&flags.to_le_bytes());
            bpf(BPF_LINK_CREATE, &mut attr).map(|l| (prog, l))
        })
        .expect("enter namespace")
        .expect("link fixture program");
    RawLink {
        _prog: link.0,
        _link: link.1,
    }
}

/// A program of `kind` returning `ret` on cli0 is reported as ahead of sticky, by name.
fn assert_program_ahead(tag: &str, kind: (u32, u32), ret: i32, name: &str, fix: &str) {
    let topo = topology(tag);
    let _link = attach_raw(&topo.lb, "cli0", kind, ret, name, 0);
    let out = doctor(&topo.lb, &topo.sticky_args(false));
    assert_only(&out, 15, fix);
    assert!(text(&out).contains(name), "{}", text(&out));
}

#[test]
fn another_tcx_program_ahead() {
    if !root_or_skip("another_tcx_program_ahead") {
        return;
    }
    // Returns TC_ACT_OK: every packet ends the chain there.
    let kind = (PROG_SCHED_CLS, ATTACH_TCX_INGRESS);
    assert_program_ahead(
        "doc-tcx",
        kind,
        0,
        "fixture_ahead",
        "make it return TCX_NEXT",
    );
}

#[test]
fn an_xdp_program_on_the_interface() {
    if !root_or_skip("an_xdp_program_on_the_interface") {
        return;
    }
    // XDP_PASS.
    let fix = "if it is not meant to handle VIP traffic, detach it (`ip link set dev cli0 xdp off`";
    assert_program_ahead("doc-xdp", (PROG_XDP, ATTACH_XDP), 2, "fixture_xdp", fix);
}

#[test]
fn legacy_tc_filters_run_after_sticky_and_are_only_noted() {
    if !root_or_skip("legacy_tc_filters_run_after_sticky_and_are_only_noted") {
        return;
    }
    let topo = topology("doc-tc");
    topo.lb.mirror_filter("cli0", "be0").expect("filter");
    let out = doctor(&topo.lb, &topo.sticky_args(false));
    assert_clean(&out);
    assert!(
        text(&out).contains(
            "cli0 tc ingress: legacy filters (u32 prio 1) run after sticky's tcx programs"
        ),
        "{}",
        text(&out)
    );
}

#[test]
fn a_nat_rule_for_the_vip() {
    if !root_or_skip("a_nat_rule_for_the_vip") {
        return;
    }
    let topo = topology("doc-nat");
    // nft joins its arguments into one command.
    let nft = |cmd: &str| {
        topo.lb
            .exec("nft", &[cmd])
            .expect("nft (cargo xtask setup installs nftables)")
    };
    nft("add table ip fixture");
    nft("add chain ip fixture pre { type nat hook prerouting priority -100; }");
    nft("add rule ip fixture pre ip daddr 198.18.0.100 tcp dport 80 dnat to 198.19.0.2:8080");
    // A rule for another port of the same address is not this VIP's.
    nft("add rule ip fixture pre ip daddr 198.18.0.100 tcp dport 443 dnat to 198.19.0.2:8443");
    let out = doctor(&topo.lb, &topo.sticky_args(false));
    assert_only(&out, 16, "delete the rule");
    let all = text(&out);
    assert!(
        all.contains("table ip fixture chain pre: ip daddr 198.18.0.100 tcp dport 80 dnat"),
        "{all}"
    );
    assert!(!all.contains("dport 443"), "{all}");
}

#[test]
fn ip_netns_exec_is_fine_and_a_private_bpffs_is_found() {
    if !root_or_skip("ip_netns_exec_is_fine_and_a_private_bpffs_is_found") {
        return;
    }
    let topo = topology("doc-bpffs");
    // `ip netns exec` gives the process a mount namespace of its own; `sticky run` started that
    // way joins its parent's, so doctor started the same way says the pins will outlive it.
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.lb.name])
        .arg(sticky_bin())
        .arg("doctor")
        .args(topo.sticky_args(false))
        .output()
        .expect("run sticky doctor under ip netns exec");
    assert!(failed(&out).is_empty(), "{}", text(&out));
    assert!(text(&out).contains("joins its parent's"), "{}", text(&out));

    // The case: the daemon itself started with `ip netns exec`, doctor run from the
    // host against it: its pins are on the host's bpffs.
    let instance = topo.lb.name.clone();
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &topo.lb.name])
        .arg(sticky_bin())
        .arg("run")
        .args(topo.sticky_args(false))
        .args(["--instance", &instance])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sticky run under ip netns exec");
    let stdout = daemon.stdout.take().expect("stdout");
    // Reads until the ready line (then keeps the pipe open, so the daemon never gets EPIPE).
    let (tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let _ = tx.send(lines.any(|l| l.contains("sticky ready")));
        lines.for_each(drop);
    });
    let started = ready.recv_timeout(Duration::from_secs(60)).unwrap_or(false);
    let out = doctor(&topo.lb, &["--instance".to_string(), instance]);
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert!(started, "sticky run under ip netns exec did not get ready");
    assert!(failed(&out).is_empty(), "{}", text(&out));
    assert!(
        text(&out).contains("reports its pins persistent"),
        "{}",
        text(&out)
    );

    // A private mount namespace that is not `ip netns exec` (`unshare -m`, a sandbox) with no
    // bpffs from outside: pins there die with the process.
    let out = Command::new("nsenter")
        .arg(format!("--net={}", topo.lb.path()))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount -l /sys/fs/bpf && exec \"$0\" \"$@\"")
        .arg(sticky_bin())
        .arg("doctor")
        .args(topo.sticky_args(false))
        .output()
        .expect("run sticky doctor in a private mount namespace");
    assert_only(&out, 18, "bind-mount the host's /sys/fs/bpf into it");
}

#[test]
fn a_running_instance_is_checked_through_its_control_socket() {
    if !root_or_skip("a_running_instance_is_checked_through_its_control_socket") {
        return;
    }
    let bin = sticky_bin();
    let topo = topology("doc-live");
    let _servers = topo.start_backends().expect("backends");
    let daemon =
        StickyProcess::start(&bin, &topo.lb, &topo.sticky_args(false)).expect("sticky run");
    let instance = vec!["--instance".to_string(), daemon.instance.clone()];
    let out = doctor(&topo.lb, &instance);
    assert_clean(&out);
    let all = text(&out);
    assert!(
        all.contains("cli0 tcx ingress: sticky's program runs first"),
        "{all}"
    );
    assert!(
        all.contains("the daemon reports its pins persistent"),
        "{all}"
    );
    // A program attached after sticky's is not ahead of it; one attached before is.
    let _after = attach_raw(
        &topo.lb,
        "cli0",
        (PROG_SCHED_CLS, ATTACH_TCX_INGRESS),
        -1,
        "fixture_after",
        0,
    );
    assert_clean(&doctor(&topo.lb, &instance));
    let _before = attach_raw(
        &topo.lb,
        "cli0",
        (PROG_SCHED_CLS, ATTACH_TCX_INGRESS),
        0,
        "fixture_before",
        BPF_F_BEFORE,
    );
    let out = doctor(&topo.lb, &instance);
    assert_only(&out, 15, "make it return TCX_NEXT");
    assert!(text(&out).contains("fixture_before"), "{}", text(&out));
    assert!(!text(&out).contains("fixture_after"), "{}", text(&out));
    // With forwarding off too, the more severe finding sets the exit code.
    topo.lb.sysctl("net.ipv4.ip_forward", "0").expect("sysctl");
    let out = doctor(&topo.lb, &instance);
    assert_eq!(failed(&out), BTreeSet::from([11, 15]), "{}", text(&out));
    assert_eq!(out.status.code(), Some(11));
}

#[test]
fn bad_input_is_an_error_not_a_finding() {
    if !root_or_skip("bad_input_is_an_error_not_a_finding") {
        return;
    }
    let ns = Netns::create(&sticky_tests::unique_name("doc-bad")).expect("netns");
    let args = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let out = doctor(
        &ns,
        &args(&[
            "--iface",
            "nope0",
            "--vip",
            "198.18.0.100:80",
            "--backend",
            "198.19.0.2:80",
        ]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("unknown interface 'nope0'"),
        "{}",
        text(&out)
    );
    let out = doctor(&ns, &args(&["--instance", &ns.name]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no sticky daemon for instance"),
        "{}",
        text(&out)
    );
    let out = doctor(&ns, &args(&["--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
