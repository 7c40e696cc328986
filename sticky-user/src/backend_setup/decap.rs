//! The decapsulation: sticky's `sticky_decap` tc program on each underlay interface's ingress
//! strips the outer IPIP/IP6IP6 header (see sticky-ebpf's decap.rs). It is a netlink (legacy
//! tc) filter, not a tcx link: the filter holds the program, so it stays after this process
//! exits without a bpffs pin (pins die with `ip netns exec`'s private /sys).
//!
//! Why not an `ipip`/`ip6tnl` device: kernels built without `CONFIG_NET_IPIP` and
//! `CONFIG_IPV6_TUNNEL` (this project's own test machines among them) have none, and a tc
//! program needs only `cls_bpf`, present wherever sticky runs at all.

use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TcAttachType, tc},
};
use sticky_common::maps::PROG_DECAP;

use super::{Error, Finding, Piece, Result, net, state::State};

/// Whether `dev`'s ingress has our filter.
fn attached(dev: &str) -> Result<bool> {
    match net::run("tc", &["filter", "show", "dev", dev, "ingress"]) {
        Ok(text) => Ok(text.contains(PROG_DECAP)),
        // No clsact qdisc: no filter either.
        Err(Error::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn has_clsact(dev: &str) -> Result<bool> {
    Ok(net::run("tc", &["qdisc", "show", "dev", dev])?.contains("clsact"))
}

pub fn check(ifaces: &[String]) -> Result<Finding> {
    let mut missing = Vec::new();
    for dev in ifaces {
        if !attached(dev)? {
            missing.push(format!("no decapsulation ({PROG_DECAP}) on {dev}"));
        }
    }
    Ok(Finding::from_problems(
        Piece::Decap,
        missing,
        format!("IPIP/IP6IP6 decapsulated on {}", ifaces.join(", ")),
    ))
}

pub fn setup(ifaces: &[String], state: &mut State, done: &mut Vec<String>) -> Result<()> {
    let todo: Vec<&String> = ifaces
        .iter()
        .filter(|d| !attached(d).unwrap_or(false))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let bpf = |e: &dyn std::fmt::Display| Error::Bpf(e.to_string());
    let object = crate::object::bytes().map_err(|e| bpf(&e))?;
    let mut ebpf = EbpfLoader::new().load(object).map_err(|e| bpf(&e))?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(PROG_DECAP)
        .ok_or_else(|| Error::Bpf(format!("no program {PROG_DECAP} in the object")))?
        .try_into()
        .map_err(|e| bpf(&e))?;
    program.load().map_err(|e| bpf(&e))?;
    for dev in todo {
        if !has_clsact(dev)? {
            tc::qdisc_add_clsact(dev).map_err(|e| Error::Bpf(format!("clsact on {dev}: {e}")))?;
            state.clsact.push(dev.clone());
        }
        let id = program
            .attach_with_options(
                dev,
                TcAttachType::Ingress,
                tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
            )
            .map_err(|e| Error::Bpf(format!("attach on {dev} ingress: {e}")))?;
        // The filter outlives us: dropping the link would detach it.
        std::mem::forget(program.take_link(id).map_err(|e| bpf(&e))?);
        state.decap.push(dev.clone());
        done.push(format!("decap: {PROG_DECAP} on {dev} ingress"));
    }
    Ok(())
}

pub fn undo(state: &State, done: &mut Vec<String>) -> Result<()> {
    for dev in &state.decap {
        if attached(dev)? {
            tc::qdisc_detach_program(dev, TcAttachType::Ingress, PROG_DECAP)
                .map_err(|e| Error::Bpf(format!("detach from {dev}: {e}")))?;
            done.push(format!("decap: {PROG_DECAP} removed from {dev}"));
        }
    }
    for dev in &state.clsact {
        if has_clsact(dev).unwrap_or(false) {
            net::run("tc", &["qdisc", "del", "dev", dev, "clsact"])?;
        }
    }
    Ok(())
}
