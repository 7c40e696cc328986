//! `sticky backend-setup`: what a backend needs for direct server return (DSR). Balancers send
//! it each client → VIP packet inside IPIP (IPv4) or IP6IP6 (IPv6); it must take the inner
//! packet as its own and answer the client straight from the VIP. One module per piece, each
//! with its exit code for `--check`; what setup changed is kept in a [`state::State`] file so
//! `--undo` removes exactly that.

pub mod arp;
pub mod decap;
pub mod mss;
pub mod net;
pub mod state;
pub mod vip;

use std::net::IpAddr;

use state::State;

/// The pieces, in the order setup applies them and `--check` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The decapsulation on the underlay interfaces' ingress.
    Decap,
    /// Each VIP on `lo`.
    Vip,
    /// IPv4: never answer ARP for a VIP, never announce one.
    Arp,
    /// IPv4: no strict reverse-path filter on the interfaces the inner packets arrive on.
    RpFilter,
    /// SYN-ACKs from a VIP advertise an MSS that fits the encapsulation.
    Mss,
}

impl Piece {
    pub const ALL: [Piece; 5] = [
        Piece::Decap,
        Piece::Vip,
        Piece::Arp,
        Piece::RpFilter,
        Piece::Mss,
    ];

    /// `--check`'s exit code when this piece is missing (the first missing one wins).
    pub fn exit_code(self) -> u8 {
        match self {
            Piece::Decap => 20,
            Piece::Vip => 21,
            Piece::Arp => 22,
            Piece::RpFilter => 23,
            Piece::Mss => 24,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Piece::Decap => "decap",
            Piece::Vip => "vip",
            Piece::Arp => "arp",
            Piece::RpFilter => "rp-filter",
            Piece::Mss => "mss",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{program} {args}: {stderr}")]
    Command {
        program: String,
        args: String,
        stderr: String,
    },
    #[error("run {program} (iproute2 and nftables are needed): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected output of {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error(
        "no default route for {family}: cannot tell the underlay; give --iface and \
         --underlay-mtu"
    )]
    NoDefaultRoute { family: &'static str },
    #[error("underlay MTU {mtu} is too small for {family} DSR (need at least {min})")]
    MtuTooSmall {
        mtu: u32,
        family: &'static str,
        min: u32,
    },
    #[error("load the decapsulation program: {0}")]
    Bpf(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to set up on this backend.
#[derive(Clone, Debug)]
pub struct Plan {
    pub vips: Vec<IpAddr>,
    /// Interfaces whose ingress decapsulates; empty: those of the default routes.
    pub interfaces: Vec<String>,
    /// The underlay's MTU; `None`: the MTU of the default route's device (per family).
    pub underlay_mtu: Option<u32>,
}

impl Plan {
    pub fn has_v4(&self) -> bool {
        self.vips.iter().any(IpAddr::is_ipv4)
    }

    /// The interfaces the decapsulation goes on.
    pub fn interfaces(&self) -> Result<Vec<String>> {
        if !self.interfaces.is_empty() {
            return Ok(self.interfaces.clone());
        }
        let mut out = Vec::new();
        for v6 in self.families() {
            let dev = net::default_route_dev(v6)?;
            if !out.contains(&dev) {
                out.push(dev);
            }
        }
        Ok(out)
    }

    /// `false` for IPv4, `true` for IPv6, for each family some VIP is in.
    pub fn families(&self) -> Vec<bool> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            if self.vips.iter().any(|v| v.is_ipv6() == v6) {
                out.push(v6);
            }
        }
        out
    }
}

/// One line of `--check`.
#[derive(Clone, Debug)]
pub struct Finding {
    pub piece: Piece,
    pub ok: bool,
    pub what: String,
}

impl Finding {
    /// Ok with `ok_what` when there are no `problems`, else missing with them all named.
    pub fn from_problems(piece: Piece, problems: Vec<String>, ok_what: String) -> Self {
        Self {
            piece,
            ok: problems.is_empty(),
            what: if problems.is_empty() {
                ok_what
            } else {
                problems.join(", ")
            },
        }
    }
}

/// Whether each piece is in place; changes nothing.
pub fn check(plan: &Plan) -> Result<Vec<Finding>> {
    let ifaces = plan.interfaces()?;
    let mut out = vec![decap::check(&ifaces)?, vip::check(&plan.vips)?];
    if plan.has_v4() {
        out.push(arp::check_arp()?);
        out.push(arp::check_rp_filter(&ifaces)?);
    }
    out.push(mss::check(plan)?);
    Ok(out)
}

/// Puts every piece in place; idempotent. Returns what it did, one line each.
pub fn setup(plan: &Plan) -> Result<Vec<String>> {
    let ifaces = plan.interfaces()?;
    let mut state = State::load()?;
    let mut done = Vec::new();
    // Everything setup adds is recorded as soon as it exists, so a failure halfway still
    // leaves an `--undo` that removes it.
    let result = (|| {
        decap::setup(&ifaces, &mut state, &mut done)?;
        state.save()?;
        vip::setup(&plan.vips, &mut state, &mut done)?;
        state.save()?;
        if plan.has_v4() {
            arp::setup_arp(&mut state, &mut done)?;
            arp::setup_rp_filter(&ifaces, &mut state, &mut done)?;
            state.save()?;
        }
        mss::setup(plan, &mut state, &mut done)?;
        state.save()
    })();
    result.map(|()| done)
}

/// Removes what setup added and restores the sysctls it changed. Returns what it did.
pub fn undo() -> Result<Vec<String>> {
    let state = State::load()?;
    let mut done = Vec::new();
    mss::undo(&state, &mut done)?;
    arp::undo(&state, &mut done)?;
    vip::undo(&state, &mut done)?;
    decap::undo(&state, &mut done)?;
    State::remove()?;
    Ok(done)
}
