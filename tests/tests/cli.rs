//! Bad command lines and config files: one clear line on stderr, non-zero exit, nothing
//! loaded or attached. And a clean stop detaches everything.

mod common;

use std::process::{Command, Output};

use common::sticky_bin;
use sticky_tests::{Netns, StickyProcess, root_or_skip, unique_name};

/// sticky programs currently loaded in the kernel.
fn loaded_sticky_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("sticky_")))
        .count()
}

fn sticky(ns: &Netns, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg(sticky_bin())
        .args(args)
        .output()
        .expect("run sticky")
}

fn assert_refused(ns: &Netns, args: &[&str], expect: &str) {
    let before = loaded_sticky_programs();
    let out = sticky(ns, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(expect),
        "{args:?}: expected '{expect}' in: {stderr}"
    );
    assert_eq!(
        loaded_sticky_programs(),
        before,
        "{args:?} left programs loaded"
    );
}

/// `sticky ARGS…` as owned strings.
fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `sticky run` on lo with a VIP and a backend, then `extra`.
fn run_lo(extra: &[&str]) -> Vec<String> {
    let base = [
        "run",
        "--iface",
        "lo",
        "--vip",
        "127.0.0.1:80",
        "--backend",
        "127.0.0.2:80",
    ];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

#[test]
fn bad_command_lines_are_refused_clearly() {
    if !root_or_skip("bad_command_lines_are_refused_clearly") {
        return;
    }
    let ns = Netns::create(&unique_name("cli")).expect("netns");
    let ok_vip = "127.0.0.1:80";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            args(&[
                "run",
                "--iface",
                "nosuch0",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
            ]),
            "unknown interface 'nosuch0'",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "127.0.0.1",
                "--backend",
                "127.0.0.1:81",
            ]),
            "has no port",
        ),
        (
            args(&["run", "--iface", "lo", "--vip", ok_vip]),
            "no backends",
        ),
        (
            run_lo(&["--xdp", "native"]),
            "xdp only applies with --forward dsr",
        ),
        (
            run_lo(&["--forward", "dsr", "--dsr-source", "nope"]),
            "dsr-source 'nope' is not an IP address",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.2:81",
                "--forward",
                "dsr",
            ]),
            "give it a VIP's port (80)",
        ),
        (
            // No global IPv4 address on lo for the outer source: refused before attaching.
            run_lo(&["--forward", "dsr", "--xdp", "off"]),
            "no IPv4 address on lo for the outer source; give --dsr-source ADDR",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--max-new-flows",
                "10",
            ]),
            "max-new-flows",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--proxy",
                "127.0.0.1:8080",
                "--max-connections",
                "0",
            ]),
            "max-connections 0 must be from 1 to 1000000",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--max-connections",
                "5",
            ]),
            "without --proxy",
        ),
        (
            args(&["run", "--iface", "lo", "--backend", "127.0.0.1:81"]),
            "no VIP",
        ),
        (
            args(&["run", "--vip", ok_vip, "--backend", "127.0.0.1:81"]),
            "no interface",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--backend",
                "127.0.0.1:81@2",
            ]),
            "duplicate backend 127.0.0.1:81",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81@0",
            ]),
            "weight must be a whole number",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81@many",
            ]),
            "weight must be a whole number",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81@-3",
            ]),
            "weight must be a whole number",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "[::1]:81",
            ]),
            "mix IPv4 and IPv6",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--table-size",
                "65536",
            ]),
            "must be a prime",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                ok_vip,
                "--backend",
                "127.0.0.1:81",
                "--affinity-timeout",
                "forever",
            ]),
            "invalid duration",
        ),
        (
            args(&["run", "--config", "/nonexistent/sticky.toml"]),
            "cannot read config file",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "sctp:127.0.0.1:80",
                "--backend",
                "127.0.0.1:81",
            ]),
            "the protocol must be tcp: or udp:",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "udp:127.0.0.1:53",
                "--backend",
                "127.0.0.1:5353",
                "--udp-timeout",
                "1s",
            ]),
            "udp-timeout 1s: at least 5s",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "udp:127.0.0.1:53",
                "--backend",
                "127.0.0.1:5353",
                "--udp-timeout",
                "often",
            ]),
            "udp-timeout: invalid duration",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "udp:127.0.0.1:53",
                "--vip",
                "udp:127.0.0.1:53",
                "--backend",
                "127.0.0.1:5353",
            ]),
            "duplicate VIP udp:127.0.0.1:53",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "udp:127.0.0.1:80",
                "--backend",
                "127.0.0.1:81",
                "--proxy",
                "127.0.0.1:8080",
            ]),
            "proxy mode forwards TCP connections",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "udp:127.0.0.1:443",
                "--backend",
                "127.0.0.2:443",
                "--forward",
                "dsr",
            ]),
            "with only UDP VIPs and no --health-check",
        ),
        (
            args(&[
                "run",
                "--iface",
                "lo",
                "--vip",
                "127.0.0.1:80",
                "--vip",
                "127.0.0.1:81",
                "--backend",
                "127.0.0.2:80",
                "--replies-any-node",
            ]),
            "serve VIPs 127.0.0.1:80 and 127.0.0.1:81 of one protocol",
        ),
        (
            run_lo(&["--forward", "dsr", "--replies-any-node"]),
            "replies-any-node: a DSR node never sees replies",
        ),
        (
            run_lo(&["--announce-table", "254"]),
            "announce-table 254: give a table of sticky's own",
        ),
        (
            run_lo(&["--withdraw-grace", "5s"]),
            "withdraw-grace applies with --announce-table",
        ),
        (
            run_lo(&[
                "--replies-any-node",
                "--announce-table",
                "100",
                "--announce-return",
                "0.0.0.0/0,10.1.2.3/8",
            ]),
            "announce-return '10.1.2.3/8' must be a network ADDR/LEN with no host bits set",
        ),
        (
            run_lo(&["--announce-table", "100", "--announce-return", "0.0.0.0/0"]),
            "announce-return: replies come through a node only in NAT mode with --replies-any-node",
        ),
        (
            run_lo(&["--replies-any-node", "--announce-return", "0.0.0.0/0"]),
            "announce-return: replies come through a node only in NAT mode with --replies-any-node",
        ),
        (
            run_lo(&[
                "--replies-any-node",
                "--announce-table",
                "100",
                "--announce-return",
                "127.0.0.1/32",
            ]),
            "announce-return 127.0.0.1/32: a VIP's own host route",
        ),
    ];
    for (args, expect) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(&ns, &args, expect);
    }
    peer_settings_are_refused_clearly(&ns);
}

/// The affinity exchange's flags and keys (`--peers`): each mistake one line, nothing loaded.
fn peer_settings_are_refused_clearly(ns: &Netns) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(unique_name("peerkeys"));
    std::fs::create_dir_all(&dir).expect("key dir");
    let key = |name: &str, text: &[u8], mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path.display().to_string()
    };
    let good = key("good", &[b'k'; 40], 0o600);
    let open = key("open", &[b'k'; 40], 0o644);
    let empty = key("empty", b"", 0o600);
    let short = key("short", b"secret\n", 0o600);
    let missing = dir.join("missing").display().to_string();
    let config = dir.join("peers.toml");
    std::fs::write(
        &config,
        "iface = [\"lo\"]\nvip = [\"127.0.0.1:80\"]\nbackend = [\"127.0.0.2:80\"]\n\
         peers = [\"127.0.0.3:7946\"]\npeer-listen = \"127.0.0.1:7946\"\n",
    )
    .expect("write config");
    let config = config.display().to_string();
    let peers = [
        "--peers",
        "127.0.0.3:7946",
        "--peer-listen",
        "127.0.0.1:7946",
    ];
    let with_key = |k: &str| -> Vec<String> {
        let mut a = run_lo(&peers);
        a.extend(["--peer-key-file".to_string(), k.to_string()]);
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            run_lo(&peers),
            "peers without a key: give --peer-key-file PATH",
        ),
        (
            vec!["run".into(), "--config".into(), config.clone()],
            "peers without a key",
        ),
        (with_key(&missing), "cannot read it"),
        (with_key(&open), "is readable by every user (mode 644)"),
        (with_key(&empty), "is empty"),
        (with_key(&short), "holds 6 bytes: at least 32 are needed"),
        (
            run_lo(&[
                "--peers",
                "127.0.0.3",
                "--peer-listen",
                "127.0.0.1:7946",
                "--peer-key-file",
                &good,
            ]),
            "peers '127.0.0.3' has no port",
        ),
        (
            run_lo(&[
                "--peers",
                "nowhere:x",
                "--peer-listen",
                "127.0.0.1:7946",
                "--peer-key-file",
                &good,
            ]),
            "peers 'nowhere:x' is not an address",
        ),
        (
            run_lo(&["--peers", "127.0.0.3:7946", "--peer-key-file", &good]),
            "--peers needs --peer-listen",
        ),
        (
            run_lo(&["--peer-listen", "127.0.0.1:7946"]),
            "peer-listen without --peers",
        ),
        (
            run_lo(&[
                "--peers",
                "[::1]:7946",
                "--peer-listen",
                "127.0.0.1:7946",
                "--peer-key-file",
                &good,
            ]),
            "different IP families",
        ),
        (
            // Not an address of this host: refused before anything is loaded.
            run_lo(&[
                "--peers",
                "192.0.2.2:7946",
                "--peer-listen",
                "192.0.2.1:7946",
                "--peer-key-file",
                &good,
            ]),
            "bind the peer socket on 192.0.2.1:7946 (--peer-listen)",
        ),
    ];
    for (args, expect) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_refused(ns, &args, expect);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn more_vips_than_the_map_holds_are_refused_before_loading() {
    if !root_or_skip("more_vips_than_the_map_holds_are_refused_before_loading") {
        return;
    }
    let ns = Netns::create(&unique_name("vips")).expect("netns");
    let mut args = ["run", "--iface", "lo", "--backend", "127.0.0.1:81"]
        .map(String::from)
        .to_vec();
    for port in 1..=65 {
        args.extend(["--vip".to_string(), format!("127.0.0.1:{port}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_refused(&ns, &args, "65 VIPs is more than the 64 sticky supports");
}

#[test]
fn bad_config_file_names_the_line() {
    if !root_or_skip("bad_config_file_names_the_line") {
        return;
    }
    let ns = Netns::create(&unique_name("cfg")).expect("netns");
    let path = std::env::temp_dir().join(unique_name("cfg") + ".toml");
    std::fs::write(
        &path,
        "iface = [\"lo\"]\nvip = [\"127.0.0.1:80\"]\nbakend = [\"127.0.0.1:81\"]\n",
    )
    .expect("write config");
    let p = path.display().to_string();
    let before = loaded_sticky_programs();
    let out = sticky(&ns, &["run", "--config", &p]);
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 3") && stderr.contains("bakend"),
        "{stderr}"
    );
    assert_eq!(loaded_sticky_programs(), before);
}

#[test]
fn without_privileges_it_says_so() {
    if !root_or_skip("without_privileges_it_says_so") {
        return;
    }
    let before = loaded_sticky_programs();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(sticky_bin())
        .args(run_lo(&[]))
        .output()
        .expect("run setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert_eq!(loaded_sticky_programs(), before);
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    if !root_or_skip("sigterm_detaches_and_exits_zero") {
        return;
    }
    let ns = Netns::create(&unique_name("term")).expect("netns");
    let before = loaded_sticky_programs();
    let args: Vec<String> = [
        "--iface",
        "lo",
        "--vip",
        "127.0.0.1:80",
        "--backend",
        "127.0.0.1:81",
    ]
    .map(String::from)
    .to_vec();
    let daemon = StickyProcess::start(&sticky_bin(), &ns, &args).expect("sticky");
    assert_eq!(
        loaded_sticky_programs(),
        before + 2,
        "ingress and egress loaded"
    );
    let status = daemon.stop().expect("stop");
    assert!(status.success(), "{status}");
    // Program release is asynchronous (RCU); give it a moment, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while loaded_sticky_programs() != before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        loaded_sticky_programs(),
        before,
        "programs left loaded after SIGTERM"
    );
}

/// Creates an array map (4-byte keys, `value_size`-byte values, one entry) and pins it at
/// `path`, as an older sticky would have left its settings.
fn pin_array_map(path: &std::path::Path, value_size: u32) {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&2u32.to_ne_bytes()); // BPF_MAP_TYPE_ARRAY
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes());
    attr[8..12].copy_from_slice(&value_size.to_ne_bytes());
    attr[12..16].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: BPF_MAP_CREATE with a zeroed bpf_attr carrying the four fields above.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut pin = [0u8; 128];
    pin[0..8].copy_from_slice(&(cpath.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: BPF_OBJ_PIN of our descriptor at a NUL-terminated path.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), pin.len()) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// Pins left by a sticky with another map layout (here: the 24-byte settings of before DSR)
/// are refused with what to do, and left as they were.
#[test]
fn pins_of_another_layout_are_refused_clearly() {
    if !root_or_skip("pins_of_another_layout_are_refused_clearly") {
        return;
    }
    let ns = Netns::create(&unique_name("clipin")).expect("netns");
    let instance = ns.name.clone();
    let pins = sticky::datapath::Pins::for_instance(&instance);
    struct Cleanup(sticky::datapath::Pins);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove();
        }
    }
    let _cleanup = Cleanup(pins.clone());
    let settings = pins.map(sticky_common::maps::SETTINGS);
    std::fs::create_dir_all(settings.parent().unwrap()).expect("pin folder");
    pin_array_map(&settings, 24);
    assert_refused(
        &ns,
        &[
            "run",
            "--instance",
            &instance,
            "--iface",
            "lo",
            "--vip",
            "127.0.0.1:80",
            "--backend",
            "127.0.0.2:81",
        ],
        "has pinned maps of another sticky version (settings of 24 bytes",
    );
    assert!(settings.exists(), "the old pin was left as it was");
}
