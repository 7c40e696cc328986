//! Forwarding sysctls: IPv4 and IPv6 forwarding for remote backends, and strict
//! reverse-path filtering where it drops clients.

use std::net::IpAddr;

use super::{Code, Line, Target, host};

pub fn check(t: &Target) -> Vec<Line> {
    let remote: Vec<IpAddr> = t
        .backends
        .iter()
        .map(|b| b.ip())
        .filter(|ip| !host::is_local(*ip))
        .collect();
    let mut lines = Vec::new();
    if remote.iter().any(IpAddr::is_ipv4) {
        lines.push(forwarding(Code::IpForward, "net.ipv4.ip_forward", "IPv4"));
    }
    if remote.iter().any(IpAddr::is_ipv6) {
        lines.push(forwarding(
            Code::Ipv6Forward,
            "net.ipv6.conf.all.forwarding",
            "IPv6",
        ));
    }
    if remote.is_empty() {
        lines.push(Line::ok(
            Code::IpForward,
            "every backend is a local address: nothing is forwarded",
        ));
    }
    if t.vips.iter().any(|v| v.is_ipv4()) {
        lines.extend(t.ifaces.iter().map(|i| rp_filter(i)));
    }
    lines
}

/// A forwarding sysctl that must be 1 for remote backends of `family` ("IPv4"/"IPv6").
fn forwarding(code: Code, key: &str, family: &str) -> Line {
    match host::sysctl(key).as_deref() {
        Some("1") => Line::ok(code, format!("{key}=1")),
        Some(v) => Line::fail(
            code,
            format!("{key}={v}: the node drops client packets DNATed to remote {family} backends"),
            format!("sysctl -w {key}=1 (and set it in /etc/sysctl.d/ to keep it)"),
        ),
        None => Line::skip(code, format!("cannot read {key} (is {family} disabled?)")),
    }
}

/// Strict mode (1) drops a packet whose source is not routed back out of the interface it
/// came in on. That hits clients exactly when the way back to them is another interface:
/// judged by the default route, the way back to "anyone".
fn rp_filter(iface: &str) -> Line {
    let read =
        |k: &str| host::sysctl(&host::conf_key(k, "rp_filter")).and_then(|v| v.parse::<u8>().ok());
    let (Some(all), Some(own)) = (read("all"), read(iface)) else {
        return Line::skip(Code::RpFilter, format!("cannot read rp_filter for {iface}"));
    };
    // The kernel applies the larger of the two.
    let mode = all.max(own);
    if mode != 1 {
        let what = if mode == 0 { "off" } else { "loose" };
        return Line::ok(
            Code::RpFilter,
            format!("{iface}: rp_filter={mode} ({what})"),
        );
    }
    match default_route_dev() {
        Some(dev) if dev != iface => Line::fail(
            Code::RpFilter,
            format!(
                "strict rp_filter on {iface} while the default route leaves by {dev}: a client \
                 not on a network routed through {iface} (anyone reached through the default \
                 route) has its packets dropped before they reach a backend"
            ),
            format!(
                "loose mode: sysctl -w {}=2 (the larger of `all` and the interface's value \
                 applies), or route the clients' networks through {iface}",
                host::conf_key(iface, "rp_filter")
            ),
        ),
        Some(_) => Line::ok(
            Code::RpFilter,
            format!("{iface}: strict rp_filter, and the way back to clients leaves by {iface}"),
        ),
        None => Line::ok(
            Code::RpFilter,
            format!(
                "{iface}: strict rp_filter, no default route: only clients routed through an \
                 interface are answered at all"
            ),
        ),
    }
}

/// The interface of the IPv4 default route, if there is one.
fn default_route_dev() -> Option<String> {
    #[derive(serde::Deserialize)]
    struct R {
        dev: Option<String>,
    }
    let text = host::run("ip", &["-j", "-4", "route", "show", "default"]).ok()?;
    let routes: Vec<R> = serde_json::from_str(&text).ok()?;
    routes.into_iter().find_map(|r| r.dev)
}
