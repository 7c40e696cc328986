//! Routing daemons for the several-node tests: BIRD 2 (and any other program) started in a
//! namespace, the router in front of the DSR topology's balancer nodes that learns the VIP
//! from each of them over eBGP (with BFD) and spreads flows by L4 hash (ECMP), and the
//! router's view of the VIP's next hops. Configs come from `deploy/`, addresses filled in;
//! configs, control sockets and logs go in this process's scratch directory.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{DsrTopology, Netns, dsr};

/// How long a route change may take to reach the router's kernel (BGP update + BIRD).
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A daemon started in a namespace; SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    what: String,
}

impl Daemon {
    /// `program ARGS` in `ns`, stdout and stderr into `<what>.log` in the scratch directory.
    pub fn start(ns: &Netns, program: &str, args: &[&str], what: &str) -> Self {
        Self::start_env(ns, program, args, &[], what)
    }

    /// [`Daemon::start`] with environment variables added.
    pub fn start_env(
        ns: &Netns,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        what: &str,
    ) -> Self {
        let log = std::fs::File::create(scratch(&format!("{what}.log"))).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path()))
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} ({program}): {e}"));
        Self {
            child,
            what: what.to_string(),
        }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: our own child's PID.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} needed SIGKILL", self.what);
    }
}

/// A file in this test's scratch directory (one per process and test thread, so tests that
/// run side by side keep their configs and logs apart); [`remove_scratch`] removes it.
pub fn scratch(name: &str) -> PathBuf {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("main").replace("::", "-");
    let dir = std::env::temp_dir().join(format!("sticky-routing-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir.join(name)
}

/// Removes the scratch directory (at the end of a test that passed; a failed one keeps its
/// logs for the reader).
pub fn remove_scratch() {
    let _ = std::fs::remove_dir_all(scratch(""));
}

/// A file of `deploy/`.
pub fn deploy(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// BIRD with `config`, its control socket and log in the scratch directory.
pub fn bird(ns: &Netns, config: &str, name: &str) -> Daemon {
    let conf = scratch(&format!("{name}.conf"));
    std::fs::write(&conf, config).expect("bird config");
    let sock = scratch(&format!("{name}.ctl"));
    let check = Command::new("bird")
        .args(["-p", "-c"])
        .arg(&conf)
        .output()
        .expect("bird -p");
    assert!(
        check.status.success(),
        "{name}: bird rejects the config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (conf, sock) = (conf.display().to_string(), sock.display().to_string());
    Daemon::start(ns, "bird", &["-f", "-c", &conf, "-s", &sock], name)
}

/// The router (`deploy/bird/router.conf`): one eBGP session (with BFD) per node, multipath
/// into the kernel, L4 hashing.
pub fn router_bird(topo: &DsrTopology, nodes: usize) -> Daemon {
    topo.router
        .sysctl("net.ipv4.fib_multipath_hash_policy", "1")
        .expect("L4 multipath hash");
    let template = deploy("bird/router.conf");
    let cut = template
        .find("protocol bgp node1")
        .expect("router.conf has a node1 example");
    let gw0 = dsr::node_addr(0, false).1;
    let mut conf = template[..cut].replace("192.0.2.1", &gw0.to_string());
    // Into its log file (stderr), for a failing run's reader.
    conf.push_str("log stderr all;\n");
    for k in 0..nodes {
        let (node, _) = dsr::node_addr(k, false);
        conf.push_str(&format!(
            "protocol bgp node{k} from sticky_node {{\n\tneighbor {node} as 65001;\n}}\n"
        ));
    }
    bird(&topo.router, &conf, "router")
}

/// `deploy/bird/sticky-node.conf` for node `k` (without BFD if `bfd` is false: the router
/// asks for it, a peer without answers nothing and BIRD keeps the session on the hold timer).
pub fn node_bird_conf(k: usize, bfd: bool) -> String {
    let (node, gw) = dsr::node_addr(k, false);
    let conf = deploy("bird/sticky-node.conf")
        .replace("192.0.2.2", &node.to_string())
        .replace("192.0.2.1", &gw.to_string());
    if bfd {
        conf
    } else {
        conf.replace("bfd on;", "bfd off;")
    }
}

/// BIRD on node `k` with `deploy/bird/sticky-node.conf`.
pub fn node_bird(topo: &DsrTopology, k: usize) -> Daemon {
    bird(topo.node(k), &node_bird_conf(k, true), &format!("node{k}"))
}

/// The router's next hops for the IPv4 VIP (none: no route).
pub fn next_hops(topo: &DsrTopology) -> Vec<IpAddr> {
    hops_in(topo, &format!("{}/32", dsr::vip(false)), "main")
}

/// The router's next hops for `prefix` in routing table `table`, sorted.
pub fn hops_in(topo: &DsrTopology, prefix: &str, table: &str) -> Vec<IpAddr> {
    let text = topo
        .router
        .ip(&["-j", "-4", "route", "show", prefix, "table", table])
        .expect("ip route show");
    let routes: serde_json::Value = serde_json::from_str(&text).expect("ip -j route");
    let mut hops = Vec::new();
    for r in routes.as_array().into_iter().flatten() {
        let one = r["gateway"].as_str().into_iter();
        let many =
            (r["nexthops"].as_array().into_iter().flatten()).filter_map(|h| h["gateway"].as_str());
        hops.extend(
            one.chain(many)
                .map(|g| g.parse::<IpAddr>().expect("gateway")),
        );
    }
    hops.sort();
    hops
}

/// Waits until `hops` gives the addresses of `nodes`; how long it took.
pub fn wait_for(
    topo: &DsrTopology,
    hops: impl Fn(&DsrTopology) -> Vec<IpAddr>,
    nodes: &[usize],
    why: &str,
) -> Duration {
    let mut want: Vec<IpAddr> = nodes.iter().map(|&k| dsr::node_addr(k, false).0).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let have = hops(topo);
        if have == want {
            return start.elapsed();
        }
        if start.elapsed() > CONVERGE {
            let birdc = |what: &[&str]| {
                Command::new("birdc")
                    .arg("-s")
                    .arg(scratch("router.ctl"))
                    .args(what)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let says = format!(
                "{}{}",
                birdc(&["show", "protocols", "all"]),
                birdc(&["show", "bfd", "sessions"])
            );
            panic!(
                "{why}: the router's next hops are {have:?}, want {want:?} (logs in {}); the \
                 router's BIRD says:\n{says}",
                scratch("").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the router's next hops for the VIP are those of `nodes`; how long it took.
pub fn wait_for_hops(topo: &DsrTopology, nodes: &[usize], why: &str) -> Duration {
    wait_for(topo, next_hops, nodes, why)
}
