//! IPv4 sysctls. The kernel uses the larger of `all` and the device's value for `arp_ignore`,
//! `arp_announce` and `rp_filter`, so `all` alone settles ARP on every device:
//! `arp_ignore=1` (answer only for addresses of the asking interface: never for a VIP on
//! `lo`), `arp_announce=2` (never use a VIP as the source of our own requests). For
//! `rp_filter`, strict (1) would drop inner packets whose client is routed out another way
//! than the one they came in: the decapsulating interfaces get loose (2), which wins over
//! any `all` value.

use super::{
    Finding, Piece, Result,
    state::{State, read_sysctl, write_sysctl},
};

const ARP_IGNORE: (&str, u32) = ("net/ipv4/conf/all/arp_ignore", 1);
const ARP_ANNOUNCE: (&str, u32) = ("net/ipv4/conf/all/arp_announce", 2);

fn value(key: &str) -> Result<u32> {
    let raw = read_sysctl(key)?;
    raw.parse().map_err(|_| super::Error::Parse {
        what: key.into(),
        detail: raw,
    })
}

fn rp_key(dev: &str) -> String {
    format!("net/ipv4/conf/{dev}/rp_filter")
}

/// `max(all, dev)`: the value the kernel applies on `dev`.
fn effective_rp_filter(dev: &str) -> Result<u32> {
    Ok(value("net/ipv4/conf/all/rp_filter")?.max(value(&rp_key(dev))?))
}

pub fn check_arp() -> Result<Finding> {
    let mut low = Vec::new();
    for (key, want) in [ARP_IGNORE, ARP_ANNOUNCE] {
        let have = value(key)?;
        if have < want {
            low.push(format!("{key} = {have} (needs {want})"));
        }
    }
    Ok(Finding::from_problems(
        Piece::Arp,
        low,
        "arp_ignore and arp_announce keep VIPs out of ARP".into(),
    ))
}

pub fn check_rp_filter(ifaces: &[String]) -> Result<Finding> {
    let mut strict = Vec::new();
    for dev in ifaces {
        if effective_rp_filter(dev)? == 1 {
            strict.push(format!("strict rp_filter on {dev}"));
        }
    }
    Ok(Finding::from_problems(
        Piece::RpFilter,
        strict,
        "no strict rp_filter on the decapsulating interfaces".into(),
    ))
}

fn set(key: &str, want: u32, state: &mut State, done: &mut Vec<String>) -> Result<()> {
    let have = read_sysctl(key)?;
    state.remember_sysctl(key, &have);
    write_sysctl(key, &want.to_string())?;
    done.push(format!("sysctl: {key} {have} -> {want}"));
    Ok(())
}

pub fn setup_arp(state: &mut State, done: &mut Vec<String>) -> Result<()> {
    for (key, want) in [ARP_IGNORE, ARP_ANNOUNCE] {
        if value(key)? < want {
            set(key, want, state, done)?;
        }
    }
    Ok(())
}

pub fn setup_rp_filter(ifaces: &[String], state: &mut State, done: &mut Vec<String>) -> Result<()> {
    for dev in ifaces {
        if effective_rp_filter(dev)? == 1 {
            set(&rp_key(dev), 2, state, done)?;
        }
    }
    Ok(())
}

/// Every sysctl setup changed, back to its value before the first setup. A device gone since
/// has nothing left to restore.
pub fn undo(state: &State, done: &mut Vec<String>) -> Result<()> {
    for (key, previous) in state.sysctls.iter().rev() {
        if !std::path::Path::new(&format!("/proc/sys/{key}")).exists() {
            continue;
        }
        write_sysctl(key, previous)?;
        done.push(format!("sysctl: {key} back to {previous}"));
    }
    Ok(())
}
