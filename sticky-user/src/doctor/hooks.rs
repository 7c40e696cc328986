//! Other programs on sticky's interfaces. XDP runs before tc and sees VIP traffic first; a
//! tcx program ahead of sticky's that returns "pass" for VIP traffic ends the chain before
//! sticky sees it (sticky attaches last). Legacy tc filters run after every tcx program.

use aya::programs::{SchedClassifier, TcAttachType};

use super::{Code, Line, Target, host, kernel};

/// Names of sticky's own tc programs (every instance's).
const STICKY_PREFIX: &str = "sticky_";

pub fn check(t: &Target) -> Vec<Line> {
    let mut lines = Vec::new();
    for iface in &t.ifaces {
        lines.push(xdp(iface));
        for (hook, kind) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            lines.push(tcx(iface, hook, kind));
            if let Some(line) = legacy(iface, hook) {
                lines.push(line);
            }
        }
    }
    lines
}

fn xdp(iface: &str) -> Line {
    match host::link(iface) {
        Ok(l) => match l.xdp.and_then(|x| x.prog) {
            // sticky's own DSR program (`--forward dsr`): the first to see VIP traffic.
            Some(p) if p.name.starts_with(STICKY_PREFIX) => Line::ok(
                Code::ProgramAhead,
                format!("{iface}: XDP runs sticky's {} (id {})", p.name, p.id),
            ),
            Some(p) => Line::fail(
                Code::ProgramAhead,
                format!(
                    "XDP program {} (id {}) on {iface} runs before sticky's tc hook: VIP traffic \
                     it drops, redirects or rewrites never reaches sticky",
                    if p.name.is_empty() { "?" } else { &p.name },
                    p.id
                ),
                format!(
                    "if it is not meant to handle VIP traffic, detach it (`ip link set dev \
                     {iface} xdp off`, or through the tool that attached it)"
                ),
            ),
            None => Line::ok(Code::ProgramAhead, format!("{iface}: no XDP program")),
        },
        Err(e) => Line::skip(Code::ProgramAhead, format!("{iface}: {e}")),
    }
}

fn tcx(iface: &str, hook: &str, kind: TcAttachType) -> Line {
    let programs = match SchedClassifier::query_tcx(iface, kind) {
        Ok((_, p)) => p,
        Err(e) => {
            return Line::skip(
                Code::ProgramAhead,
                format!("{iface} tcx {hook}: cannot list programs ({e}; needs root)"),
            );
        }
    };
    let names: Vec<(String, u32)> = programs
        .iter()
        .map(|p| (p.name_as_str().unwrap_or("?").to_string(), p.id()))
        .collect();
    // sticky attaches last; before its first program, or anywhere if it is not attached yet.
    let first_sticky = names
        .iter()
        .position(|(n, _)| n.starts_with(STICKY_PREFIX))
        .unwrap_or(names.len());
    let ahead: Vec<String> = names[..first_sticky]
        .iter()
        .map(|(n, id)| format!("{n} (id {id})"))
        .collect();
    if ahead.is_empty() {
        let what = if first_sticky < names.len() {
            "sticky's program runs first"
        } else {
            "no other program"
        };
        return Line::ok(Code::ProgramAhead, format!("{iface} tcx {hook}: {what}"));
    }
    Line::fail(
        Code::ProgramAhead,
        format!(
            "{iface} tcx {hook} runs {} before sticky: if it returns pass (TC_ACT_OK) for VIP \
             traffic{}, sticky never sees that traffic",
            ahead.join(", "),
            if hook == "egress" { " or replies" } else { "" }
        ),
        "make it return TCX_NEXT (TC_ACT_UNSPEC) for packets that are not its own, or detach it",
    )
}

/// Legacy filters only matter ahead of sticky when sticky itself falls back to legacy tc
/// (no tcx); with tcx they run after it and no longer see the traffic sticky rewrote.
fn legacy(iface: &str, hook: &str) -> Option<Line> {
    let filters = match host::tc_filters(iface, hook) {
        Ok(f) if f.is_empty() => return None,
        Ok(f) => f,
        Err(e) => {
            return Some(Line::skip(
                Code::ProgramAhead,
                format!("{iface} tc {hook}: {e}"),
            ));
        }
    };
    let list = filters.join(", ");
    Some(if kernel::has_tcx() {
        Line::ok(
            Code::ProgramAhead,
            format!(
                "{iface} tc {hook}: legacy filters ({list}) run after sticky's tcx programs \
                 (they do not see VIP packets sticky rewrites)"
            ),
        )
    } else {
        Line::fail(
            Code::ProgramAhead,
            format!(
                "{iface} tc {hook}: legacy filters ({list}) share the hook sticky attaches to \
                 without tcx; one that returns ok or drop for VIP traffic runs before sticky"
            ),
            format!(
                "remove them if they do not need VIP traffic: tc filter del dev {iface} {hook}"
            ),
        )
    })
}
