//! The MSS a backend advertises for a VIP: a client's full-size segment, encapsulated by the
//! balancer, must still fit the underlay. An nftables table of sticky's own clamps the MSS
//! option of SYN-ACKs whose source is a VIP (removing the table undoes it, nothing else is
//! touched): underlay MTU − outer header (20 IPv4, 40 IPv6) − inner IP header − TCP header.

use std::net::IpAddr;

use super::{Error, Finding, Piece, Plan, Result, net, state::State};

/// `inet`: one table for both families.
pub const TABLE: &str = "sticky_dsr";
const TCP_HEADER: u32 = 20;

/// IPv4 or IPv6 header length (outer and inner are the same family).
fn ip_header(v6: bool) -> u32 {
    if v6 { 40 } else { 20 }
}

/// The MSS for a VIP family on an underlay of `mtu` bytes.
pub fn mss_for(mtu: u32, v6: bool) -> Result<u32> {
    let overhead = 2 * ip_header(v6) + TCP_HEADER;
    // IPv6 needs 1280 on every link; IPv4 at least 576.
    let min = if v6 { 1280 } else { 576 };
    if mtu < min {
        return Err(Error::MtuTooSmall {
            mtu,
            family: if v6 { "IPv6" } else { "IPv4" },
            min,
        });
    }
    Ok(mtu - overhead)
}

/// The underlay MTU for a family: `--underlay-mtu`, or the default route device's.
fn underlay_mtu(plan: &Plan, v6: bool) -> Result<u32> {
    match plan.underlay_mtu {
        Some(mtu) => Ok(mtu),
        None => net::mtu(&net::default_route_dev(v6)?),
    }
}

/// One rule per family with VIPs: (family, VIP set, MSS).
fn rules(plan: &Plan, vips: &[IpAddr]) -> Result<Vec<(bool, Vec<IpAddr>, u32)>> {
    let mut out = Vec::new();
    for v6 in plan.families() {
        let family: Vec<IpAddr> = vips.iter().copied().filter(|v| v.is_ipv6() == v6).collect();
        out.push((v6, family, mss_for(underlay_mtu(plan, v6)?, v6)?));
    }
    Ok(out)
}

/// The table's text for `nft -f -`.
pub fn ruleset(rules: &[(bool, Vec<IpAddr>, u32)]) -> String {
    let mut text = format!(
        "table inet {TABLE} {{\n  chain synack {{\n    type filter hook output priority mangle; policy accept;\n"
    );
    for (v6, vips, mss) in rules {
        let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
        let ip = if *v6 { "ip6" } else { "ip" };
        text.push_str(&format!(
            "    {ip} saddr {{ {} }} tcp flags & (syn | ack) == syn | ack tcp option maxseg size > {mss} tcp option maxseg size set {mss}\n",
            list.join(", ")
        ));
    }
    text.push_str("  }\n}\n");
    text
}

fn listing() -> Option<String> {
    net::run("nft", &["list", "table", "inet", TABLE]).ok()
}

pub fn check(plan: &Plan) -> Result<Finding> {
    let Some(text) = listing() else {
        return Ok(Finding {
            piece: Piece::Mss,
            ok: false,
            what: format!("no nftables table inet {TABLE}"),
        });
    };
    let mut missing = Vec::new();
    for (_, vips, mss) in rules(plan, &plan.vips)? {
        for vip in vips {
            // nft prints each rule on one line: the VIP must share a line with its clamp.
            let clamped = text.lines().any(|l| {
                l.contains(&format!("size set {mss}"))
                    && l.split([' ', ',', '{', '}']).any(|w| w == vip.to_string())
            });
            if !clamped {
                missing.push(format!(
                    "no MSS {mss} clamp for {vip} in table inet {TABLE}"
                ));
            }
        }
    }
    Ok(Finding::from_problems(
        Piece::Mss,
        missing,
        format!("SYN-ACKs from every VIP clamped (table inet {TABLE})"),
    ))
}

/// Replaces the table atomically with one covering every VIP setup was ever given here.
pub fn setup(plan: &Plan, state: &mut State, done: &mut Vec<String>) -> Result<()> {
    let existed = listing().is_some();
    let rules = rules(plan, &state.vips)?;
    // Declaring the table first makes the delete valid when it does not exist yet.
    let text = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        ruleset(&rules)
    );
    net::run_with_input("nft", &["-f", "-"], Some(&text))?;
    if !existed {
        state.nft_table = true;
    }
    for (v6, _, mss) in &rules {
        let family = if *v6 { "IPv6" } else { "IPv4" };
        done.push(format!("mss: {family} SYN-ACKs from VIPs clamped to {mss}"));
    }
    Ok(())
}

pub fn undo(state: &State, done: &mut Vec<String>) -> Result<()> {
    if state.nft_table && listing().is_some() {
        net::run("nft", &["delete", "table", "inet", TABLE])?;
        done.push(format!("mss: table inet {TABLE} deleted"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_leaves_room_for_the_outer_header() {
        assert_eq!(mss_for(1500, false).unwrap(), 1440);
        assert_eq!(mss_for(1500, true).unwrap(), 1400);
        assert_eq!(mss_for(9000, false).unwrap(), 8940);
        assert!(mss_for(1000, true).is_err());
    }

    #[test]
    fn the_ruleset_names_each_family_once() {
        let v4: IpAddr = "198.18.0.100".parse().unwrap();
        let v6: IpAddr = "fd00:18::100".parse().unwrap();
        let text = ruleset(&[(false, vec![v4], 1440), (true, vec![v6], 1400)]);
        assert!(text.contains("ip saddr { 198.18.0.100 }"), "{text}");
        assert!(text.contains("ip6 saddr { fd00:18::100 }"), "{text}");
        assert!(text.contains("size set 1440") && text.contains("size set 1400"));
    }
}
