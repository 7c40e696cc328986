//! What the checks read from the host: sysctls, routes and links (through iproute2's JSON
//! output, the same view `ip` gives the user), and the tools that may be missing.

use std::{net::IpAddr, process::Command};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0} is not installed")]
    Missing(&'static str),
    #[error("{program} {args}: {message}")]
    Failed {
        program: &'static str,
        args: String,
        message: String,
    },
    #[error("{program}: unreadable output: {message}")]
    Parse {
        program: &'static str,
        message: String,
    },
}

/// Runs a tool; its stdout, or why not.
pub fn run(program: &'static str, args: &[&str]) -> Result<String, HostError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            HostError::Missing(program)
        } else {
            HostError::Failed {
                program,
                args: args.join(" "),
                message: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        return Err(HostError::Failed {
            program,
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json<T: for<'a> Deserialize<'a>>(program: &'static str, args: &[&str]) -> Result<T, HostError> {
    let text = run(program, args)?;
    serde_json::from_str(&text).map_err(|e| HostError::Parse {
        program,
        message: e.to_string(),
    })
}

/// A sysctl by its dotted name (`net.ipv4.ip_forward`) or, as `sysctl` also takes it, its
/// slashed one (`net/ipv4/conf/eth0.100/rp_filter`), trimmed; `None` when absent.
pub fn sysctl(key: &str) -> Option<String> {
    let path = if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    };
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The name of a per-interface IPv4 sysctl: dotted unless the interface name has a dot
/// (VLANs such as `eth0.100`), where only the slashed form is unambiguous.
pub fn conf_key(iface: &str, name: &str) -> String {
    if iface.contains('.') {
        format!("net/ipv4/conf/{iface}/{name}")
    } else {
        format!("net.ipv4.conf.{iface}.{name}")
    }
}

/// The route the node would use to reach an address (`ip route get`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Route {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub dev: String,
    #[serde(default)]
    pub prefsrc: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// An address of this node: traffic to it is delivered here, never forwarded.
    pub fn is_local(&self) -> bool {
        self.kind.as_deref() == Some("local")
    }
}

/// `Ok(None)` when there is no route (unreachable).
pub fn route_get(addr: IpAddr) -> Result<Option<Route>, HostError> {
    match json::<Vec<Route>>("ip", &["-j", "route", "get", &addr.to_string()]) {
        Ok(mut routes) if !routes.is_empty() => Ok(Some(routes.swap_remove(0))),
        Ok(_) => Ok(None),
        Err(HostError::Failed { message, .. }) if message.contains("unreachable") => Ok(None),
        Err(e) => Err(e),
    }
}

/// An interface as `ip -d link show` reports it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub xdp: Option<Xdp>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Xdp {
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub prog: Option<XdpProg>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct XdpProg {
    #[serde(default)]
    pub id: u32,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AddrInfo {
    pub local: IpAddr,
    #[serde(default)]
    pub scope: String,
}

/// An interface with its addresses and attached XDP program.
pub fn link(iface: &str) -> Result<Link, HostError> {
    let mut links: Vec<Link> = json("ip", &["-j", "-d", "addr", "show", "dev", iface])?;
    links.pop().ok_or_else(|| HostError::Parse {
        program: "ip",
        message: format!("no interface {iface}"),
    })
}

/// Legacy (clsact/netlink) tc filters on one hook, as `tc filter show` lists them: one per
/// priority, however many u32 hash nodes it has.
pub fn tc_filters(iface: &str, hook: &str) -> Result<Vec<String>, HostError> {
    #[derive(Deserialize)]
    struct Filter {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        pref: u32,
    }
    let filters: Vec<Filter> = match json("tc", &["-j", "filter", "show", "dev", iface, hook]) {
        Ok(f) => f,
        // No clsact qdisc: no filters.
        Err(HostError::Failed { message, .. }) if message.contains("qdisc") => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut seen: Vec<String> = Vec::new();
    for f in filters {
        let name = format!("{} prio {}", f.kind, f.pref);
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    Ok(seen)
}

/// Whether `addr` is one of this node's addresses (a local backend: nothing is forwarded).
/// Asks the routing table; without `ip`, whether it can be bound (wrong only under
/// `ip_nonlocal_bind=1`).
pub fn is_local(addr: IpAddr) -> bool {
    match route_get(addr) {
        Ok(Some(route)) => route.is_local(),
        Ok(None) => false,
        Err(_) => std::net::UdpSocket::bind((addr, 0)).is_ok(),
    }
}
