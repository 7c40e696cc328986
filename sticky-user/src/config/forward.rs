//! `--forward nat|dsr`, `--xdp`, `--dsr-source`: how the node hands client packets to backends.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// How client packets reach their backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// Destination NAT: replies come back through this node (backends route through it).
    #[default]
    Nat,
    /// Direct server return: packets go to the backend IPIP/IP6IP6-encapsulated, the backend
    /// (`sticky backend-setup`) answers the client itself.
    Dsr,
}

/// Where the DSR program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native XDP where the driver has it, else tc alone.
    #[default]
    Auto,
    /// Native (driver) XDP, or refuse to start.
    Native,
    /// Generic (skb) XDP: for trying out; slower than tc.
    Generic,
    /// tc only.
    Off,
}

/// What a valid forwarding configuration holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    #[default]
    Nat,
    Dsr {
        xdp: XdpMode,
        /// Outer source addresses (at most one per family); none: the interface's own.
        sources: Vec<IpAddr>,
    },
}

impl Forwarding {
    pub fn is_dsr(&self) -> bool {
        matches!(self, Forwarding::Dsr { .. })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("{0} only applies with --forward dsr")]
    DsrOnly(&'static str),
    #[error("dsr-source '{0}' is not an IP address")]
    BadSource(String),
    #[error("dsr-source {0} is unspecified or multicast: give this node's own address")]
    UnusableSource(IpAddr),
    #[error("dsr-source: two IPv{0} addresses; give at most one per family")]
    TwoSources(u8),
    #[error(
        "backend {0}: in DSR the backend receives the client's packet unchanged, addressed to \
         the VIP; give it a VIP's port ({1})"
    )]
    BackendPort(SocketAddr, String),
    #[error(
        "backend {0}: in DSR a backend is another host (a local port needs NAT: --forward nat)"
    )]
    LocalBackend(SocketAddr),
    #[error("--forward dsr with --proxy: the proxy forwards requests itself; pick one")]
    WithProxy,
}

/// Checks the forwarding keys against each other and against the VIPs and backends.
pub fn validate(
    mode: Option<ForwardMode>,
    xdp: Option<XdpMode>,
    sources: &[String],
    vips: &[SocketAddr],
    backends: &[SocketAddr],
    proxy: bool,
) -> Result<Forwarding, ForwardError> {
    if mode.unwrap_or_default() == ForwardMode::Nat {
        if xdp.is_some() {
            return Err(ForwardError::DsrOnly("xdp"));
        }
        if !sources.is_empty() {
            return Err(ForwardError::DsrOnly("dsr-source"));
        }
        return Ok(Forwarding::Nat);
    }
    if proxy {
        return Err(ForwardError::WithProxy);
    }
    let mut parsed: Vec<IpAddr> = Vec::new();
    for s in sources {
        let ip: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| ForwardError::BadSource(s.clone()))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(ForwardError::UnusableSource(ip));
        }
        if parsed.iter().any(|p| p.is_ipv4() == ip.is_ipv4()) {
            return Err(ForwardError::TwoSources(if ip.is_ipv4() { 4 } else { 6 }));
        }
        parsed.push(ip);
    }
    let ports: Vec<u16> = vips.iter().map(SocketAddr::port).collect();
    for b in backends {
        if b.ip().is_unspecified() {
            return Err(ForwardError::LocalBackend(*b));
        }
        if !ports.contains(&b.port()) {
            let list = ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ForwardError::BackendPort(*b, list));
        }
    }
    Ok(Forwarding::Dsr {
        xdp: xdp.unwrap_or_default(),
        sources: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nat_is_the_default_and_refuses_dsr_keys() {
        assert_eq!(
            validate(None, None, &[], &[], &[], false),
            Ok(Forwarding::Nat)
        );
        assert_eq!(
            validate(None, Some(XdpMode::Native), &[], &[], &[], false),
            Err(ForwardError::DsrOnly("xdp"))
        );
        assert_eq!(
            validate(
                Some(ForwardMode::Nat),
                None,
                &["10.0.0.1".into()],
                &[],
                &[],
                false
            ),
            Err(ForwardError::DsrOnly("dsr-source"))
        );
    }

    #[test]
    fn dsr_checks_sources_ports_and_backends() {
        let vips = [addr("10.9.0.1:80")];
        let ok = validate(
            Some(ForwardMode::Dsr),
            None,
            &["10.0.0.1".into(), "fd00::1".into()],
            &vips,
            &[addr("10.1.0.2:80")],
            false,
        );
        assert_eq!(
            ok,
            Ok(Forwarding::Dsr {
                xdp: XdpMode::Auto,
                sources: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            })
        );
        let dsr = |sources: &[&str], backends: &[SocketAddr], proxy| {
            let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
            validate(
                Some(ForwardMode::Dsr),
                None,
                &sources,
                &vips,
                backends,
                proxy,
            )
        };
        assert_eq!(
            dsr(&["nope"], &[], false),
            Err(ForwardError::BadSource("nope".into()))
        );
        assert_eq!(
            dsr(&["0.0.0.0"], &[], false),
            Err(ForwardError::UnusableSource("0.0.0.0".parse().unwrap()))
        );
        assert_eq!(
            dsr(&["10.0.0.1", "10.0.0.2"], &[], false),
            Err(ForwardError::TwoSources(4))
        );
        assert_eq!(
            dsr(&[], &[addr("10.1.0.2:8080")], false),
            Err(ForwardError::BackendPort(
                addr("10.1.0.2:8080"),
                "80".into()
            ))
        );
        assert_eq!(
            dsr(&[], &[addr("0.0.0.0:80")], false),
            Err(ForwardError::LocalBackend(addr("0.0.0.0:80")))
        );
        assert_eq!(dsr(&[], &[], true), Err(ForwardError::WithProxy));
    }
}
