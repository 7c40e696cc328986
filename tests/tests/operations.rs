//! Running sticky as a service: the systemd notify protocol from a real daemon, the Debian
//! package (contents, conffile, the unit accepted by `systemd-analyze verify`, the packaged
//! binary serving traffic inside the unit's capability and system-call limits),
//! `check-config` on good and bad files without privileges, completions and man pages.

mod common;

use std::{
    collections::BTreeSet,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{fs::PermissionsExt as _, net},
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::sticky_bin;
use sticky_tests::{HttpConn, StickyProcess, Topology, get_once, plan, root_or_skip, unique_name};

const UNIT: &str = include_str!("../../deploy/systemd/sticky@.service");
const EXAMPLE: &str = include_str!("../../deploy/sticky.toml");

/// A scratch directory removed on drop, readable by every user (check-config runs as nobody).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write scratch file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--iface/--vip/--backend` arguments as the same keys in a config file.
fn config_for(topo: &Topology) -> String {
    let args = topo.sticky_args(false);
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for pair in args.chunks(2) {
        let key = pair[0].trim_start_matches("--").to_string();
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(format!("{:?}", pair[1])),
            None => keys.push((key, vec![format!("{:?}", pair[1])])),
        }
    }
    keys.iter()
        .map(|(k, v)| format!("{k} = [{}]\n", v.join(", ")))
        .collect()
}

/// Datagrams from the daemon, one message (`KEY=VALUE` lines) each.
struct NotifySocket(net::UnixDatagram);

impl NotifySocket {
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.0.set_read_timeout(Some(timeout)).expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next message that is not a watchdog ping, counting the pings on the way.
    fn next_state(&self, pings: &mut usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(m) if m == "WATCHDOG=1" => *pings += 1,
                Some(m) => return m,
                None => break,
            }
        }
        panic!("no notification from sticky within 20 s")
    }
}

/// `env NOTIFY_SOCKET=… WATCHDOG_USEC=… sticky run --config FILE` in the balancer namespace:
/// `env` execs sticky, so the daemon keeps the pid the rig signals.
fn start_notified(
    topo: &Topology,
    notify: &str,
    config: &Path,
    extra_env: &[&str],
) -> StickyProcess {
    let mut args = vec![format!("NOTIFY_SOCKET={notify}")];
    args.extend(extra_env.iter().map(ToString::to_string));
    args.push(sticky_bin().display().to_string());
    args.extend([
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ]);
    StickyProcess::start_with(Path::new("env"), &topo.lb, &args, "sticky ready")
        .unwrap_or_else(|e| panic!("start sticky: {e:#}"))
}

#[test]
fn notify_protocol_ready_reload_watchdog_stopping_in_order() {
    if !root_or_skip("notify_protocol_ready_reload_watchdog_stopping_in_order") {
        return;
    }
    let topo = Topology::build("ops", 2, 1).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let scratch = Scratch::new("ops-notify");
    let config = scratch.write("lb.toml", &config_for(&topo));
    let sock_path = scratch.0.join("notify.sock");
    let sock = NotifySocket(net::UnixDatagram::bind(&sock_path).expect("bind notify socket"));
    // 400 ms: the daemon must ping every 200 ms from its loop.
    let daemon = start_notified(
        &topo,
        &sock_path.display().to_string(),
        &config,
        &["WATCHDOG_USEC=400000"],
    );
    let mut pings = 0;
    let mut states = Vec::new();

    let status = sock.next_state(&mut pings);
    assert!(status.starts_with("STATUS=sticky ready: vip"), "{status}");
    let ready = sock.next_state(&mut pings);
    let ready_at = Instant::now();
    states.push(ready);
    // Traffic is served by the time READY=1 arrives.
    let answer = topo
        .client
        .run(|| get_once(plan::client(0, false), topo.vip(false)))
        .expect("client namespace")
        .expect("request through the VIP after READY=1");
    assert!(answer.backend.starts_with("be"), "{answer:?}");

    // Pings keep coming while nothing happens (one at once, then one per 200 ms): at least
    // three, however loaded the machine, and never a flood.
    while pings < 3 {
        let m = sock.recv(Duration::from_secs(3)).expect("watchdog ping");
        assert_eq!(m, "WATCHDOG=1", "only pings while nothing happens");
        pings += 1;
    }
    let expected = ready_at.elapsed().as_secs_f64() / 0.2;
    assert!(
        (pings as f64) <= expected + 3.0,
        "{pings} pings in {:?} at a 400 ms watchdog",
        ready_at.elapsed()
    );

    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    let reloading = sock.next_state(&mut pings);
    let usec: u64 = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("not RELOADING=1 with MONOTONIC_USEC: {reloading:?}"));
    let now = sticky::clock::monotonic_ns() / 1_000;
    assert!(
        usec <= now && now - usec < 5_000_000,
        "MONOTONIC_USEC {usec} is not CLOCK_MONOTONIC ({now})"
    );
    states.push("RELOADING=1".into());
    states.push(sock.next_state(&mut pings));
    // `sticky reload` goes through the same door.
    let out = daemon.ctl(&sticky_bin(), &["reload"]);
    assert!(out.status.success(), "sticky reload: {out:?}");
    states.push(
        sock.next_state(&mut pings)
            .lines()
            .next()
            .unwrap_or("")
            .into(),
    );
    states.push(sock.next_state(&mut pings));

    let before_stop = pings;
    let status = daemon.stop().expect("stop");
    assert!(status.success(), "sticky exited with {status}");
    states.push(sock.next_state(&mut pings));
    assert_eq!(
        states
            .iter()
            .map(|s| s.lines().next().unwrap_or(""))
            .collect::<Vec<_>>(),
        [
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
    assert!(pings >= before_stop);
}

#[test]
fn notify_reaches_an_abstract_socket() {
    if !root_or_skip("notify_reaches_an_abstract_socket") {
        return;
    }
    let topo = Topology::build("opsa", 1, 1).expect("topology");
    let scratch = Scratch::new("ops-abstract");
    let config = scratch.write("lb.toml", &config_for(&topo));
    let name = unique_name("sticky-notify");
    // Abstract names belong to a network namespace: bind where the daemon runs.
    let sock = topo
        .lb
        .run(|| {
            let addr = net::SocketAddr::from_abstract_name(name.as_bytes())?;
            net::UnixDatagram::bind_addr(&addr)
        })
        .expect("balancer namespace")
        .expect("bind abstract notify socket");
    let sock = NotifySocket(sock);
    let daemon = start_notified(&topo, &format!("@{name}"), &config, &[]);
    let mut pings = 0;
    assert!(
        sock.next_state(&mut pings)
            .starts_with("STATUS=sticky ready")
    );
    assert_eq!(sock.next_state(&mut pings), "READY=1");
    // At once: READY=1 promises that SIGTERM is handled (detach, STOPPING=1).
    let status = daemon.stop().expect("stop");
    assert!(status.success(), "sticky exited with {status}");
    assert_eq!(sock.next_state(&mut pings), "STOPPING=1");
    assert_eq!(pings, 0, "no WATCHDOG_USEC, no pings");
}

/// The `.deb` `cargo xtask test` built (STICKY_DEB), or None with the reason printed; in CI
/// (`CI=true`) a missing package fails the test instead.
fn deb_or_skip(test: &str) -> Option<PathBuf> {
    let deb = std::env::var_os("STICKY_DEB").map(PathBuf::from);
    if deb.is_none() {
        let why = "STICKY_DEB is not set (`cargo xtask test` builds the package)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why}"
        );
        println!("skipped {test}: {why}");
    }
    deb
}

#[test]
fn packaged_binary_runs_the_demo() {
    if !root_or_skip("packaged_binary_runs_the_demo") {
        return;
    }
    let Some(deb) = deb_or_skip("packaged_binary_runs_the_demo") else {
        return;
    };
    let scratch = Scratch::new("deb-demo");
    let root = unpack(&deb, &scratch);
    let out = run(Command::new(env!("CARGO_BIN_EXE_sticky-demo"))
        .env("STICKY_BIN", root.join("usr/bin/sticky")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo with the packaged binary: {out:?}"
    );
    assert!(
        text.contains("250 clients: 250 stayed on one backend, 0 were split"),
        "{text}"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e} (`cargo xtask setup` installs the tools)"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package unpacked into a scratch root.
fn unpack(deb: &Path, scratch: &Scratch) -> PathBuf {
    let root = scratch.0.join("root");
    stdout_of(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    root
}

#[test]
fn package_holds_binary_conffile_unit_man_pages_and_completions() {
    let Some(deb) = deb_or_skip("package_holds_binary_conffile_unit_man_pages_and_completions")
    else {
        return;
    };
    let contents = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: BTreeSet<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/bin/sticky",
        "./etc/sticky/sticky.toml",
        "./lib/systemd/system/sticky@.service",
        "./usr/share/man/man1/sticky.1.gz",
        "./usr/share/man/man1/sticky-run.1.gz",
        "./usr/share/man/man1/sticky-check-config.1.gz",
        "./usr/share/man/man1/sticky-backend-add.1.gz",
        "./usr/share/bash-completion/completions/sticky",
        "./usr/share/zsh/vendor-completions/_sticky",
        "./usr/share/fish/vendor_completions.d/sticky.fish",
        "./usr/share/doc/sticky/copyright",
    ] {
        assert!(
            files.contains(want),
            "{want} missing from the package:\n{contents}"
        );
    }
    let info = stdout_of(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(info.contains(" conffiles"), "{info}");
    assert!(info.contains("Package: sticky"), "{info}");
    assert!(info.contains("Depends: libc6"), "{info}");
    let conffiles = stdout_of(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/sticky/sticky.toml");

    let scratch = Scratch::new("ops-deb");
    let root = unpack(&deb, &scratch);
    let packaged = |p: &str| std::fs::read_to_string(root.join(p)).expect("packaged file");
    assert_eq!(packaged("etc/sticky/sticky.toml"), EXAMPLE);
    assert_eq!(packaged("lib/systemd/system/sticky@.service"), UNIT);
    let version = stdout_of(Command::new(root.join("usr/bin/sticky")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("sticky {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs `systemd-analyze verify` on the unit as packaged, with the package's binary at
/// /usr/bin/sticky (an overlay in a private mount namespace, so the host is not touched) and
/// its man pages on MANPATH; verify exits 0 even on warnings, so any output fails too.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !root_or_skip("systemd_analyze_verify_accepts_the_unit") {
        return;
    }
    let Some(deb) = deb_or_skip("systemd_analyze_verify_accepts_the_unit") else {
        return;
    };
    let scratch = Scratch::new("ops-verify");
    let root = unpack(&deb, &scratch);
    let script = format!(
        "mount -t overlay overlay -o lowerdir={root}/usr/bin:/usr/bin /usr/bin && \
         MANPATH={root}/usr/share/man systemd-analyze verify \
         {root}/lib/systemd/system/sticky@.service",
        root = root.display()
    );
    let out = run(Command::new("unshare").args(["--mount", "sh", "-c", &script]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

/// `KEY=a b c` of the unit's `[Service]` section, split on spaces.
fn unit_list(key: &str) -> Vec<String> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The system calls a `SystemCallFilter=` list allows, groups expanded by systemd-analyze.
fn allowed_syscalls(filter: &[String]) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut groups: Vec<String> = Vec::new();
    for item in filter {
        if item.starts_with('@') {
            groups.push(item.clone());
        } else {
            allowed.insert(item.clone());
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(group) = groups.pop() {
        if !seen.insert(group.clone()) {
            continue;
        }
        let listing = stdout_of(Command::new("systemd-analyze").args(["syscall-filter", &group]));
        for line in listing.lines().skip(1).map(str::trim) {
            match line.chars().next() {
                Some('@') => groups.push(line.to_string()),
                Some('#') | None => {}
                _ => {
                    allowed.insert(line.to_string());
                }
            }
        }
    }
    allowed
}

/// A command line of the unit (`ExecStart`, `ExecReload`, …) for the packaged binary, an
/// instance and its config file.
fn unit_command(key: &str, root: &Path, instance: &str, config: &Path) -> Vec<String> {
    let line = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .find(|l| l.starts_with("/usr/bin/sticky "))
        .unwrap_or_else(|| panic!("no {key}=/usr/bin/sticky … in the unit"));
    line.split_whitespace()
        .map(|w| match w {
            "/usr/bin/sticky" => root.join("usr/bin/sticky").display().to_string(),
            "/etc/sticky/%i.toml" => config.display().to_string(),
            _ => w.replace("%i", instance),
        })
        .collect()
}

/// `command` (the packaged binary and its arguments) as the unit runs it — only the unit's
/// capabilities, no new privileges — under strace writing to `trace`.
fn start_as_unit(topo: &Topology, trace: &Path, command: Vec<String>) -> StickyProcess {
    let caps: Vec<String> = unit_list("CapabilityBoundingSet")
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(caps.len() >= 2, "no CapabilityBoundingSet in the unit");
    let mut args = vec![
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--no-new-privs".into(),
        "strace".into(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        trace.display().to_string(),
    ];
    args.extend(command);
    StickyProcess::start_with(Path::new("setpriv"), &topo.lb, &args, "sticky ready")
        .unwrap_or_else(|e| panic!("packaged sticky under the unit's capabilities: {e:#}"))
}

/// Stops through the control socket (a signal would reach strace, not sticky).
fn stop_via_control(daemon: StickyProcess, bin: &Path) {
    let out = daemon.ctl(bin, &["stop"]);
    assert!(out.status.success(), "sticky stop: {out:?}");
    let status = daemon.wait_exit().expect("exit");
    assert!(status.success(), "sticky exited with {status}");
}

/// The packaged binary, run as the unit runs it (its `ExecStart` command line, capabilities
/// and no new privileges), serves a request in kernel mode and one in proxy mode (with health
/// checks and metrics on a port below 1024), passes the unit's `ExecReload` check, stops
/// cleanly, and
/// makes no system call the unit's `SystemCallFilter=` would refuse nor opens a socket of a
/// family `RestrictAddressFamilies=` would.
#[test]
fn packaged_binary_serves_within_the_units_capabilities_and_system_calls() {
    let test = "packaged_binary_serves_within_the_units_capabilities_and_system_calls";
    if !root_or_skip(test) {
        return;
    }
    let Some(deb) = deb_or_skip(test) else {
        return;
    };
    let scratch = Scratch::new("ops-unit");
    let root = unpack(&deb, &scratch);
    let bin = root.join("usr/bin/sticky");
    let topo = Topology::build("opsu", 2, 1).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let client = plan::client(0, false);

    let config = scratch.write("lb.toml", &config_for(&topo));
    let instance = unique_name("opsu");
    let exec_start = unit_command("ExecStart", &root, &instance, &config);
    let check = unit_command("ExecReload", &root, &instance, &config);
    let out = run(Command::new(&check[0]).args(&check[1..]));
    assert!(out.status.success(), "ExecReload {check:?}: {out:?}");

    let kernel_trace = scratch.0.join("trace-kernel");
    let daemon = start_as_unit(&topo, &kernel_trace, exec_start.clone());
    let answer = topo
        .client
        .run(|| get_once(client, topo.vip(false)))
        .expect("client namespace")
        .expect("a request through the packaged binary");
    assert!(answer.backend.starts_with("be"), "{answer:?}");
    stop_via_control(daemon, &bin);

    let proxy_trace = scratch.0.join("trace-proxy");
    let proxy = std::net::SocketAddr::new(topo.vip(false).ip(), 81);
    // Flags over the same file, as an operator's drop-in would add them.
    let mut args = exec_start;
    args.extend(
        [
            "--proxy",
            &proxy.to_string(),
            "--trusted-proxies",
            "198.18.0.2/32",
            "--health-check",
            "tcp",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "100ms",
            "--metrics",
            "127.0.0.1:99",
        ]
        .map(String::from),
    );
    let daemon = start_as_unit(&topo, &proxy_trace, args);
    let peer = "198.18.0.2".parse().expect("address");
    let answer = topo
        .client
        .run(|| {
            HttpConn::open(peer, proxy, Duration::from_secs(3))?
                .get_with(&format!("X-Forwarded-For: {client}\r\n"), true)
        })
        .expect("client namespace")
        .expect("a request through the packaged binary's proxy");
    assert!(answer.backend.starts_with("be"), "{answer:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop_via_control(daemon, &bin);

    let allowed = allowed_syscalls(&unit_list("SystemCallFilter"));
    let families = unit_list("RestrictAddressFamilies");
    let mut refused = BTreeSet::new();
    let mut used = BTreeSet::new();
    for trace in [kernel_trace, proxy_trace] {
        let trace = std::fs::read_to_string(&trace).expect("strace output");
        for line in trace.lines() {
            // `PID name(args) = result`; resumed calls were counted when they started.
            let Some(call) = line.split_whitespace().nth(1) else {
                continue;
            };
            let Some((name, rest)) = call.split_once('(') else {
                continue;
            };
            used.insert(name.to_string());
            if !allowed.contains(name) {
                refused.insert(line.to_string());
            }
            if name == "socket" {
                let family = rest.split(',').next().unwrap_or("");
                assert!(
                    families.iter().any(|f| f == family),
                    "socket family {family} is not in RestrictAddressFamilies: {line}"
                );
            }
        }
    }
    for needed in ["bpf", "bind", "connect"] {
        assert!(
            used.contains(needed),
            "the trace saw no {needed}(): {used:?}"
        );
    }
    assert!(
        refused.is_empty(),
        "system calls outside the unit's SystemCallFilter: {refused:#?}"
    );
}

/// Runs a maintainer script of the package with `systemctl` and `sticky` replaced by stubs
/// that log their arguments, on a systemd-looking host (a private `/run` with
/// `/run/systemd/system`); returns the log and the script's output.
fn maintainer_script(script: &str, args: &[&str]) -> (Vec<String>, Output) {
    let scratch = Scratch::new("ops-maint");
    let log = scratch.0.join("log");
    let stubs = scratch.0.join("bin");
    std::fs::create_dir_all(&stubs).expect("stub dir");
    let stub = |name: &str, body: &str| {
        let path = stubs.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $*\" >> {}\n{body}", log.display()),
        )
        .expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    stub(
        "systemctl",
        "case \"$1\" in\n\
         list-units) printf 'sticky@web.service loaded active running sticky (web)\\n\
         sticky@api.service loaded active running sticky (api)\\n' ;;\n\
         show) echo 0 ;;\n\
         esac\n",
    );
    // The api instance's old daemon does not answer: it must be left alone.
    stub("sticky", "[ \"$4\" = api ] && exit 1\nexit 0\n");
    let path = format!(
        "{}:{}",
        stubs.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/debian")
        .join(script);
    let mut shell =
        String::from("mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec sh");
    for a in std::iter::once(script_path.display().to_string()).chain(args.iter().map(|a| {
        if a.is_empty() {
            "''".to_string()
        } else {
            a.to_string()
        }
    })) {
        shell.push(' ');
        shell.push_str(&a);
    }
    let out = run(Command::new("unshare")
        .args(["--mount", "sh", "-c", &shell])
        .env("PATH", path));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    (log.lines().map(str::to_string).collect(), out)
}

/// The upgrade path: postinst hands each running instance to the new binary with `stop
/// --keep` and a start once the old process is gone, skips one whose daemon does not answer,
/// and does nothing of the kind on a first install; prerm stops instances only on removal.
#[test]
fn maintainer_scripts_hand_instances_over_on_upgrade() {
    if !root_or_skip("maintainer_scripts_hand_instances_over_on_upgrade") {
        return;
    }
    let (log, out) = maintainer_script("postinst", &["configure", "0.0.9"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        log,
        [
            "systemctl daemon-reload",
            "systemctl list-units --type=service --state=active --plain --no-legend \
             sticky@*.service",
            "sticky stop --keep --instance web",
            "systemctl show -p MainPID --value sticky@web.service",
            "systemctl start sticky@web.service",
            "sticky stop --keep --instance api",
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sticky@api.service keeps running the old binary"),
        "{stderr}"
    );
    let (log, out) = maintainer_script("postinst", &["configure", ""]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(log, ["systemctl daemon-reload"], "first install");
    let (log, _) = maintainer_script("prerm", &["upgrade", "0.2.0"]);
    assert!(log.is_empty(), "an upgrade stops nothing: {log:?}");
    let (log, _) = maintainer_script("prerm", &["remove"]);
    assert_eq!(log, ["systemctl stop sticky@*.service"]);
}

/// `sticky ARGS`, as the unprivileged user `nobody` when we are root (proof that it needs no
/// privilege and can create nothing a root process could), else as ourselves.
fn sticky_unprivileged(args: &[&str]) -> Output {
    // SAFETY: no arguments.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sticky_bin());
        c
    } else {
        Command::new(sticky_bin())
    };
    run(cmd.args(args))
}

#[test]
fn check_config_accepts_good_files() {
    let scratch = Scratch::new("ops-good");
    let example = scratch.write("sticky.toml", EXAMPLE);
    // Every commented-out key of the example, switched on, must be valid too.
    let uncommented: String = EXAMPLE
        .lines()
        .filter_map(|l| match l.strip_prefix("# ") {
            Some(code) if code.starts_with('[') || code.contains(" = ") => {
                (!code.starts_with("instance")).then_some(code)
            }
            Some(_) => None,
            None => Some(l),
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("[proxy]") && uncommented.contains("metrics ="));
    let every_key = scratch.write("every-key.toml", &uncommented);
    let minimal = scratch.write(
        "minimal.toml",
        "iface = [\"lo\"]\nvip = [\"[fd00::1]:443\"]\nbackend = [\"[fd00::2]:8443\"]\n",
    );
    for file in [&example, &every_key, &minimal] {
        let out = sticky_unprivileged(&["check-config", &file.display().to_string()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {out:?}", file.display());
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stdout.starts_with(&format!("{}: ok: vip ", file.display())),
            "{stdout}"
        );
    }
}

#[test]
fn check_config_names_file_line_and_field_of_every_bad_file() {
    let head = "iface = [\"lo\"]\nvip = [\"10.0.0.1:80\"]\n";
    // (name, text, line, field, words in the message)
    let cases: &[(&str, String, usize, &str, &str)] = &[
        (
            "syntax",
            "iface = [\"lo\"\nvip = []\n".into(),
            1,
            "iface",
            "invalid array",
        ),
        (
            "unknown-key",
            format!("{head}backends = [\"10.0.1.1:80\"]\n"),
            3,
            "backends",
            "unknown field",
        ),
        (
            "wrong-type",
            format!("{head}backend = [\"10.0.1.1:80\"]\nseed = \"seven\"\n"),
            4,
            "seed",
            "invalid type",
        ),
        (
            "vip-without-port",
            "iface = [\"lo\"]\nvip = [\"10.0.0.1\"]\nbackend = [\"10.0.1.1:80\"]\n".into(),
            2,
            "vip",
            "has no port",
        ),
        (
            "zero-weight",
            format!("{head}backend = [\n  \"10.0.1.1:80\",\n  \"10.0.1.2:80@0\",\n]\n"),
            5,
            "backend",
            "weight",
        ),
        (
            "weight-not-a-number",
            format!("{head}backend = [\"10.0.1.1:80@heavy\"]\n"),
            3,
            "backend",
            "weight",
        ),
        (
            "duplicate-backend",
            format!("{head}backend = [\n  \"10.0.1.1:80\",\n  \"10.0.1.1:80@2\",\n]\n"),
            5,
            "backend",
            "duplicate backend 10.0.1.1:80",
        ),
        (
            "mixed-families",
            format!("{head}backend = [\"[fd00::2]:80\"]\n"),
            3,
            "backend",
            "mix IPv4 and IPv6",
        ),
        (
            "table-not-prime",
            format!("{head}backend = [\"10.0.1.1:80\"]\ntable-size = 65536\n"),
            4,
            "table-size",
            "prime",
        ),
        (
            "bad-duration",
            format!("{head}backend = [\"10.0.1.1:80\"]\naffinity-timeout = \"soon\"\n"),
            4,
            "affinity-timeout",
            "invalid duration",
        ),
        (
            "tiny-map",
            format!("{head}backend = [\"10.0.1.1:80\"]\nmax-flows = 10\n"),
            4,
            "max-flows",
            "at least 64",
        ),
        (
            "bad-instance",
            format!("{head}backend = [\"10.0.1.1:80\"]\ninstance = \"../etc\"\n"),
            4,
            "instance",
            "instance name",
        ),
        (
            "bad-health-check",
            format!("{head}backend = [\"10.0.1.1:80\"]\n[health]\ncheck = \"udp\"\n"),
            5,
            "health.check",
            "health check must be",
        ),
        (
            "bad-metrics",
            format!("{head}backend = [\"10.0.1.1:80\"]\nmetrics = \"localhost\"\n"),
            4,
            "metrics",
            "metrics",
        ),
        (
            "proxy-on-vip",
            format!("{head}backend = [\"10.0.1.1:80\"]\n[proxy]\nlisten = \"10.0.0.1:80\"\n"),
            5,
            "proxy.listen",
            "also a --vip",
        ),
    ];
    let scratch = Scratch::new("ops-bad");
    for (name, text, line, field, words) in cases {
        let file = scratch.write(&format!("{name}.toml"), text);
        let out = sticky_unprivileged(&["check-config", &file.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{name}: not one line: {stderr}");
        let prefix = format!("{}:{line}: {field}: ", file.display());
        assert!(
            stderr.starts_with(&prefix),
            "{name}: want {prefix}…, got {stderr}"
        );
        assert!(stderr.contains(words), "{name}: want '{words}' in {stderr}");
    }
    // A missing key has no line, only its name.
    let file = scratch.write("no-backend.toml", head);
    let out = sticky_unprivileged(&["check-config", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}: backend: no backends", file.display())),
        "{stderr}"
    );
    // So does a file that is not there.
    let out = sticky_unprivileged(&["check-config", "/nonexistent/sticky.toml"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn check_config_warns_about_interfaces_missing_here() {
    let scratch = Scratch::new("ops-iface");
    let file = scratch.write(
        "elsewhere.toml",
        "iface = [\"no-such-if0\"]\nvip = [\"10.0.0.1:80\"]\nbackend = [\"10.0.1.1:80\"]\n",
    );
    let out = sticky_unprivileged(&["check-config", &file.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: unknown interface 'no-such-if0'"),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sticky_unprivileged(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        for word in ["run", "backend", "check-config", "vip"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = sticky_unprivileged(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(page.contains(".TH sticky 1"), "not roff: {page}");
    assert!(
        page.contains("check\\-config") && page.contains("backend"),
        "{page}"
    );
    let scratch = Scratch::new("ops-man");
    let dir = scratch.0.join("man1");
    let out = Command::new(sticky_bin())
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .expect("sticky man --dir");
    assert!(out.status.success(), "{out:?}");
    let run_page = std::fs::read_to_string(dir.join("sticky-run.1")).expect("sticky-run.1");
    assert!(run_page.contains(".TH sticky-run 1") && run_page.contains("\\-\\-vip"));
}
