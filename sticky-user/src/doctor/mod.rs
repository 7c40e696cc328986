//! `sticky doctor`: the host conditions that make a balancer "not forward", each checked in
//! the current network namespace (the daemon's), each failure named with a fix and a stable
//! exit code.

pub mod forwarding;
pub mod hooks;
pub mod host;
pub mod kernel;
pub mod netfilter;
pub mod paths;

use std::net::SocketAddr;

use serde::Serialize;

/// One kind of problem. The exit code is stable; a lower code is a more severe problem, and
/// with several findings `sticky doctor` exits with the lowest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// No tcx (Linux < 6.6): sticky cannot pin its tc links and refuses to start.
    Tcx = 10,
    /// `net.ipv4.ip_forward=0` with remote IPv4 backends.
    IpForward = 11,
    /// IPv6 forwarding off with remote IPv6 backends.
    Ipv6Forward = 12,
    /// Strict reverse-path filtering on a client-facing interface that is not the way back
    /// to clients.
    RpFilter = 13,
    /// A backend's replies to clients do not come back through this node (or it does not
    /// answer at all).
    RouteBack = 14,
    /// An XDP program, or a tcx program that is not sticky's, runs ahead of sticky.
    ProgramAhead = 15,
    /// An nftables/iptables NAT rule rewrites traffic to a VIP.
    NatRule = 16,
    /// A backend-facing interface has a smaller MTU than the client-facing one (or an IPv6
    /// interface is under 1280).
    Mtu = 17,
    /// Pins do not outlive the process: a restart drops every connection.
    Bpffs = 18,
    /// Proxy mode asks for kernel splicing but the kernel has no sockmap.
    Sockmap = 19,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::Tcx,
        Code::IpForward,
        Code::Ipv6Forward,
        Code::RpFilter,
        Code::RouteBack,
        Code::ProgramAhead,
        Code::NatRule,
        Code::Mtu,
        Code::Bpffs,
        Code::Sockmap,
    ];

    pub fn exit(self) -> u8 {
        self as u8
    }

    /// The check's name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Code::Tcx => "tcx",
            Code::IpForward => "ip-forward",
            Code::Ipv6Forward => "ipv6-forward",
            Code::RpFilter => "rp-filter",
            Code::RouteBack => "route-back",
            Code::ProgramAhead => "program-ahead",
            Code::NatRule => "nat-rule",
            Code::Mtu => "mtu",
            Code::Bpffs => "bpffs",
            Code::Sockmap => "sockmap",
        }
    }
}

/// A problem: what is wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub what: String,
    pub fix: String,
}

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    Fail(Finding),
    /// The check could not run here (missing tool or privilege): says why.
    Skip(String),
}

/// One output line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub check: Code,
    pub outcome: Outcome,
}

impl Line {
    pub fn ok(check: Code, detail: impl Into<String>) -> Self {
        Self {
            check,
            outcome: Outcome::Ok(detail.into()),
        }
    }

    pub fn skip(check: Code, why: impl Into<String>) -> Self {
        Self {
            check,
            outcome: Outcome::Skip(why.into()),
        }
    }

    pub fn fail(check: Code, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            outcome: Outcome::Fail(Finding {
                code: check,
                what: what.into(),
                fix: fix.into(),
            }),
        }
    }
}

/// What is checked: the settings `sticky run` would use, or those of a running instance.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub ifaces: Vec<String>,
    pub vips: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    /// Proxy mode with kernel splicing (needs sockmap).
    pub splice: bool,
    /// Set when checking a running daemon: how long it says its pins live.
    pub pins: Option<String>,
}

impl Target {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            ifaces: config.ifaces.clone(),
            vips: config.vips.iter().map(|v| v.addr).collect(),
            backends: config.backends.iter().map(|b| b.addr).collect(),
            splice: config.proxy.as_ref().is_some_and(|p| p.splice),
            pins: None,
        }
    }

    pub fn from_status(status: &crate::status::Status) -> Self {
        Self {
            ifaces: status.ifaces.clone(),
            vips: status.vips.iter().map(|v| v.addr).collect(),
            backends: status.backends.iter().map(|b| b.addr).collect(),
            splice: false,
            pins: Some(status.pins.clone()),
        }
    }

    pub fn v6(&self) -> bool {
        self.vips.first().is_some_and(SocketAddr::is_ipv6)
    }
}

/// Runs every check, in the order of the code table.
pub fn check(target: &Target) -> Vec<Line> {
    let mut lines = kernel::tcx();
    lines.extend(forwarding::check(target));
    lines.extend(paths::route_back(target));
    lines.extend(hooks::check(target));
    lines.extend(netfilter::check(target));
    lines.extend(paths::mtu(target));
    lines.extend(kernel::bpffs(target));
    lines.extend(kernel::sockmap(target));
    lines
}

/// The exit code: 0 when nothing failed, else the lowest (most severe) finding's code.
pub fn exit_code(lines: &[Line]) -> u8 {
    lines
        .iter()
        .filter_map(|l| match &l.outcome {
            Outcome::Fail(f) => Some(f.code.exit()),
            _ => None,
        })
        .min()
        .unwrap_or(0)
}

/// One line per check: `ok`, `FAIL [code]` with the fix below it, or `skip`.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        let name = l.check.name();
        match &l.outcome {
            Outcome::Ok(d) => out.push_str(&format!("ok    {name:<14} {d}\n")),
            Outcome::Skip(d) => out.push_str(&format!("skip  {name:<14} {d}\n")),
            Outcome::Fail(f) => {
                out.push_str(&format!(
                    "FAIL  {name:<14} [{}] {}\n",
                    f.code.exit(),
                    f.what
                ));
                out.push_str(&format!("      {:<14} fix: {}\n", "", f.fix));
            }
        }
    }
    let failed = lines
        .iter()
        .filter(|l| matches!(l.outcome, Outcome::Fail(_)))
        .count();
    match failed {
        0 => out.push_str("no problems found\n"),
        n => out.push_str(&format!(
            "{n} problem(s); exit code {} (the lowest code found: the most severe)\n",
            exit_code(lines)
        )),
    }
    out
}

/// The same as JSON: `{"exit": N, "checks": [{"check", "status", "code", "what", "fix"}]}`.
pub fn to_json(lines: &[Line]) -> serde_json::Value {
    let checks: Vec<_> = lines
        .iter()
        .map(|l| match &l.outcome {
            Outcome::Ok(d) => {
                serde_json::json!({"check": l.check.name(), "status": "ok", "what": d})
            }
            Outcome::Skip(d) => {
                serde_json::json!({"check": l.check.name(), "status": "skip", "what": d})
            }
            Outcome::Fail(f) => serde_json::json!({
                "check": l.check.name(), "status": "fail", "code": f.code.exit(),
                "what": f.what, "fix": f.fix,
            }),
        })
        .collect();
    serde_json::json!({"exit": exit_code(lines), "checks": checks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_ordered_and_clear_of_usage_errors() {
        let codes: Vec<u8> = Code::ALL.iter().map(|c| c.exit()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
        assert!(
            codes.iter().all(|&c| c >= 10),
            "0-2 mean ok / error / usage"
        );
        let names: std::collections::HashSet<_> = Code::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Code::ALL.len());
    }

    #[test]
    fn the_most_severe_finding_sets_the_exit_code() {
        let lines = vec![
            Line::ok(Code::Tcx, "fine"),
            Line::fail(Code::Mtu, "small", "raise it"),
            Line::fail(Code::IpForward, "off", "sysctl -w net.ipv4.ip_forward=1"),
            Line::skip(Code::NatRule, "no nft"),
        ];
        assert_eq!(exit_code(&lines), 11);
        assert_eq!(exit_code(&lines[..1]), 0);
        let text = render(&lines);
        assert!(text.contains("FAIL  ip-forward     [11] off"), "{text}");
        assert!(
            text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
            "{text}"
        );
        assert!(text.contains("exit code 11"), "{text}");
        assert_eq!(to_json(&lines)["checks"][2]["code"], 11);
    }
}
