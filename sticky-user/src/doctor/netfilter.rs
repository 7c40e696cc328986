//! NAT rules for the same VIP (kube-proxy, docker port publishing, a hand-made DNAT): two NATs
//! claiming one address. sticky's tc hook rewrites VIP packets arriving on its interfaces
//! before netfilter sees them; the rule takes the rest (local clients, other interfaces), and
//! the two pick backends independently.

use std::net::SocketAddr;

use super::{Code, Line, Target, host};

/// Words that make a rule rewrite or untrack traffic, in nft and iptables-save spelling.
const NAT_WORDS: &[&str] = &[
    "dnat",
    "snat",
    "redirect",
    "masquerade",
    "tproxy",
    "notrack",
];

pub fn check(t: &Target) -> Vec<Line> {
    let mut rules = Vec::new();
    let mut read = Vec::new();
    let mut missing = Vec::new();
    match host::run("nft", &["list", "ruleset"]) {
        Ok(text) => {
            read.push("nftables");
            rules.extend(nft_rules(&text).into_iter().map(|r| format!("nft {r}")));
        }
        Err(host::HostError::Missing(p)) => missing.push(p),
        Err(e) => return vec![Line::skip(Code::NatRule, format!("{e} (needs root)"))],
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        match host::run(tool, &["-t", "nat"]) {
            Ok(text) => {
                read.push(tool);
                rules.extend(
                    text.lines()
                        .filter(|l| l.starts_with("-A "))
                        .map(|l| format!("{tool}: {l}")),
                );
            }
            Err(host::HostError::Missing(p)) => missing.push(p),
            // No nat table loaded (legacy iptables without the module): nothing to find.
            Err(_) => {}
        }
    }
    if read.is_empty() {
        return vec![Line::skip(
            Code::NatRule,
            format!(
                "{} not installed: NAT rules not checked",
                missing.join(", ")
            ),
        )];
    }
    let mut lines = Vec::new();
    for vip in &t.vips {
        let hits: Vec<&String> = rules.iter().filter(|r| concerns(r, vip)).collect();
        lines.push(if hits.is_empty() {
            Line::ok(
                Code::NatRule,
                format!("no NAT rule for {vip} ({})", read.join(", ")),
            )
        } else {
            Line::fail(
                Code::NatRule,
                format!(
                    "NAT rule(s) for VIP {vip}: {}: two NATs claim one VIP (sticky sees packets \
                     on its interfaces first, the rule the rest, and they choose backends \
                     independently)",
                    hits.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                "delete the rule (`nft -a list ruleset` shows handles, then `nft delete rule \
                 FAMILY TABLE CHAIN handle N`; iptables: `iptables -t nat -D …`), or give \
                 sticky another VIP",
            )
        });
    }
    lines
}

/// Every rule line of `nft list ruleset`, prefixed with its table and chain.
fn nft_rules(text: &str) -> Vec<String> {
    let (mut table, mut chain) = (String::new(), String::new());
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches('{').trim().to_string();
        } else if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.trim_end_matches('{').trim().to_string();
        } else if !line.is_empty()
            && line != "}"
            && !line.starts_with("type ")
            && !line.starts_with("policy ")
        {
            out.push(format!("table {table} chain {chain}: {line}"));
        }
    }
    out
}

/// Whether a rule rewrites traffic to `vip`: it names the address (as a whole word), does
/// a NAT action, and names no other destination port.
fn concerns(rule: &str, vip: &SocketAddr) -> bool {
    let lower = rule.to_ascii_lowercase();
    if !NAT_WORDS.iter().any(|w| lower.contains(w)) || !names_addr(&lower, &vip.ip().to_string()) {
        return false;
    }
    let port = vip.port().to_string();
    let mut words = lower.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if (w == "dport" || w == "--dport")
            && let Some(p) = words.peek()
            && p.chars().all(|c| c.is_ascii_digit())
            && **p != port
        {
            return false;
        }
    }
    true
}

fn names_addr(text: &str, addr: &str) -> bool {
    let addr = addr.to_ascii_lowercase();
    let part = |c: char| c.is_ascii_hexdigit() || c == '.' || c == ':';
    text.match_indices(&addr).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + addr.len()..].chars().next();
        !before.is_some_and(part) && !after.is_some_and(part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rules_for_the_vip_and_port_only() {
        let ruleset = "table ip t {\n\tchain pre {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr 198.18.0.100 tcp dport 80 dnat to 198.19.0.2:8080\n\t\tip daddr 198.18.0.100 tcp dport 443 dnat to 198.19.0.2:8443\n\t\tip daddr 198.18.0.10 dnat to 198.19.0.3\n\t}\n}\n";
        let rules = nft_rules(ruleset);
        assert_eq!(rules.len(), 3, "{rules:?}");
        let vip: SocketAddr = "198.18.0.100:80".parse().unwrap();
        let hits: Vec<_> = rules.iter().filter(|r| concerns(r, &vip)).collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].starts_with("table ip t chain pre: ip daddr"));
        let other: SocketAddr = "198.18.0.1:80".parse().unwrap();
        assert!(!rules.iter().any(|r| concerns(r, &other)));
        let ipt = "-A PREROUTING -d 198.18.0.100/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.19.0.2:8080";
        assert!(concerns(ipt, &vip));
        assert!(!concerns("-A INPUT -d 198.18.0.100/32 -j ACCEPT", &vip));
    }
}
