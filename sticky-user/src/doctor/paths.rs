//! The way to each backend and back: replies routed through this node (probed), and MTUs
//! that do not shrink between the client side and the backend side.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::{Code, Line, Target, host};

/// Covers the SYN retransmission at 1 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// NAT mode keeps the client's address, so a backend answers the *client*: only a route that
/// sends that answer back through this node lets the reply be rewritten. From the node, the
/// one reliable test is to be a client: connect to the backend from an address of the
/// client-facing interface. A SYN-ACK (or RST) for that address can only arrive if the
/// backend routes it here; a backend that answers the node's own backend-side address but not
/// that one sends client replies elsewhere.
pub fn route_back(t: &Target) -> Vec<Line> {
    let probes: Vec<_> = t
        .backends
        .iter()
        .copied()
        .filter(|b| !host::is_local(b.ip()))
        .map(|b| (b, client_side_source(t, b.ip())))
        .collect();
    if probes.is_empty() {
        return vec![Line::ok(Code::RouteBack, "no remote backends")];
    }
    std::thread::scope(|s| {
        let running: Vec<_> = probes
            .into_iter()
            .map(|(b, src)| s.spawn(move || probe_backend(b, src)))
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Line::skip(Code::RouteBack, "probe thread panicked"))
            })
            .collect()
    })
}

/// First as the node itself (does the backend answer at all? it also fills both neighbour
/// caches, so a fresh link does not lose the second probe's SYN), then as a client.
fn probe_backend(b: SocketAddr, src: Option<IpAddr>) -> Line {
    let Some(src) = src else {
        return Line::skip(
            Code::RouteBack,
            format!("{b}: no address of its family on the client-facing interfaces to probe from"),
        );
    };
    match connect(None, b) {
        Probe::Answered(_) => {}
        Probe::Failed(e) => {
            return Line::skip(Code::RouteBack, format!("{b}: cannot probe: {e}"));
        }
        Probe::Silent => {
            return Line::fail(
                Code::RouteBack,
                format!("{b} does not answer this node at all within {PROBE_TIMEOUT:?}"),
                format!(
                    "check that {b} is up and reachable (`ip route get {}`, its firewall)",
                    b.ip()
                ),
            );
        }
    }
    match connect(Some(src), b) {
        Probe::Answered(how) => Line::ok(
            Code::RouteBack,
            format!("{b}: answers client-side address {src} through this node ({how})"),
        ),
        Probe::Failed(e) => Line::skip(
            Code::RouteBack,
            format!("{b}: cannot probe from {src}: {e}"),
        ),
        Probe::Silent => {
            let gateway = host::route_get(b.ip())
                .ok()
                .flatten()
                .and_then(|r| r.prefsrc)
                .map_or("<this node's address facing it>".to_string(), |a| {
                    a.to_string()
                });
            Line::fail(
                Code::RouteBack,
                format!(
                    "{b} answers this node's own address but not client-side address {src}: \
                     its replies to clients take another route and are never rewritten"
                ),
                format!(
                    "make this node the backend's gateway for client traffic: on {} run \
                     `ip route replace default via {gateway}` (or a policy route for the \
                     client networks)",
                    b.ip()
                ),
            )
        }
    }
}

/// A global address of the backend's family on a client-facing interface, preferring one
/// that is not a VIP (the VIP's port may be taken by sticky's own rewrite).
fn client_side_source(t: &Target, backend: IpAddr) -> Option<IpAddr> {
    let mut found: Vec<IpAddr> = t
        .ifaces
        .iter()
        .filter_map(|i| host::link(i).ok())
        .flat_map(|l| l.addr_info)
        .filter(|a| a.scope != "link" && a.scope != "host")
        .map(|a| a.local)
        .filter(|a| a.is_ipv4() == backend.is_ipv4())
        .collect();
    found.sort_by_key(|a| t.vips.iter().any(|v| v.ip() == *a));
    found.first().copied()
}

enum Probe {
    /// Connected, or refused: either way the answer came back.
    Answered(&'static str),
    Silent,
    Failed(String),
}

fn connect(src: Option<IpAddr>, dst: SocketAddr) -> Probe {
    use socket2::{Domain, Socket, Type};
    let sock = match Socket::new(Domain::for_address(dst), Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    if let Some(src) = src
        && let Err(e) = sock.bind(&SocketAddr::new(src, 0).into())
    {
        return Probe::Failed(format!("bind {src}: {e}"));
    }
    match sock.connect_timeout(&dst.into(), PROBE_TIMEOUT) {
        Ok(()) => Probe::Answered("connected"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Probe::Answered("refused: nothing listens on the port, but the reply came back")
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) || e.raw_os_error() == Some(libc::EHOSTUNREACH) =>
        {
            Probe::Silent
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// NAT adds no header, so the budget is the client side's: a smaller MTU towards a backend
/// means full-size client segments must be cut, and the node's "too big" error names the
/// backend, which the client (talking to the VIP) ignores — large transfers stall.
pub fn mtu(t: &Target) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut client_mtu = 0;
    for iface in &t.ifaces {
        match host::link(iface) {
            Ok(l) if t.v6() && l.mtu < 1280 => lines.push(Line::fail(
                Code::Mtu,
                format!("{iface} has MTU {}: IPv6 needs at least 1280", l.mtu),
                format!("ip link set dev {iface} mtu 1500"),
            )),
            Ok(l) => client_mtu = client_mtu.max(l.mtu),
            Err(e) => lines.push(Line::skip(Code::Mtu, format!("{iface}: {e}"))),
        }
    }
    let mut devs: Vec<(String, SocketAddr)> = Vec::new();
    for b in &t.backends {
        match host::route_get(b.ip()) {
            Ok(Some(r)) if !r.is_local() && !devs.iter().any(|(d, _)| *d == r.dev) => {
                devs.push((r.dev, *b));
            }
            Ok(_) => {}
            Err(e) => lines.push(Line::skip(Code::Mtu, format!("route to {b}: {e}"))),
        }
    }
    for (dev, b) in devs {
        match host::link(&dev) {
            Ok(l) if l.mtu < client_mtu => lines.push(Line::fail(
                Code::Mtu,
                format!(
                    "{dev} (towards {b}) has MTU {}, the client side {client_mtu}: full-size \
                     client packets cannot reach the backend and the node's \"too big\" answers \
                     name the backend, which clients ignore (large transfers stall)",
                    l.mtu
                ),
                format!(
                    "ip link set dev {dev} mtu {client_mtu} (or lower the client-facing MTU, or \
                     clamp the TCP MSS to {} on the client side)",
                    l.mtu - if b.is_ipv4() { 40 } else { 60 }
                ),
            )),
            Ok(l) => lines.push(Line::ok(
                Code::Mtu,
                format!(
                    "{dev} (towards {b}) MTU {} ≥ client side {client_mtu} (NAT adds no header)",
                    l.mtu
                ),
            )),
            Err(e) => lines.push(Line::skip(Code::Mtu, format!("{dev}: {e}"))),
        }
    }
    if lines.is_empty() {
        lines.push(Line::ok(Code::Mtu, "no remote backends"));
    }
    lines
}
