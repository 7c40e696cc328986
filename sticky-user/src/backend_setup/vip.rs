//! Each VIP on `lo` (/32, /128): the inner packet's destination is then local, and replies
//! leave from it.

use std::net::IpAddr;

use super::{Finding, Piece, Result, net, state::State};

fn on_lo() -> Result<Vec<IpAddr>> {
    let links = net::ip_json(&["addr", "show", "dev", "lo"])?;
    Ok(links[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["local"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default())
}

pub fn check(vips: &[IpAddr]) -> Result<Finding> {
    let have = on_lo()?;
    let missing: Vec<String> = vips
        .iter()
        .filter(|v| !have.contains(v))
        .map(|v| format!("{v} not on lo"))
        .collect();
    Ok(Finding::from_problems(
        Piece::Vip,
        missing,
        "every VIP on lo".into(),
    ))
}

fn prefix(vip: &IpAddr) -> String {
    match vip {
        IpAddr::V4(_) => format!("{vip}/32"),
        IpAddr::V6(_) => format!("{vip}/128"),
    }
}

pub fn setup(vips: &[IpAddr], state: &mut State, done: &mut Vec<String>) -> Result<()> {
    let have = on_lo()?;
    for vip in vips {
        if !state.vips.contains(vip) {
            state.vips.push(*vip);
        }
        if have.contains(vip) {
            continue;
        }
        net::run("ip", &["addr", "add", &prefix(vip), "dev", "lo"])?;
        state.vips_added.push(*vip);
        done.push(format!("vip: {vip} on lo"));
    }
    Ok(())
}

pub fn undo(state: &State, done: &mut Vec<String>) -> Result<()> {
    let have = on_lo()?;
    for vip in state.vips_added.iter().filter(|v| have.contains(v)) {
        net::run("ip", &["addr", "del", &prefix(vip), "dev", "lo"])?;
        done.push(format!("vip: {vip} removed from lo"));
    }
    Ok(())
}
