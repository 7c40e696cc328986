//! `sticky backend-setup`: prepare a backend for direct server return.

use std::net::IpAddr;

use crate::backend_setup::{self, Finding, Piece, Plan};

/// The exit codes, printed by `sticky backend-setup --help` and listed in the README.
pub const EXIT_CODES: &str = "\
Run on each backend (as root, in its network namespace) so that balancers running
`sticky run --forward dsr` can send it client packets inside IPIP (IPv4) or IP6IP6 (IPv6)
and it answers the clients directly from the VIP. Idempotent; --undo removes what it added
and restores the sysctls it changed (state in /run/sticky/backend-setup-net<inode>.json).

Pieces, with --check's exit code when one is missing (with several, all are named and the
exit code is the first's):
  20  decap      sticky_decap (tc ingress) strips IPIP/IP6IP6 on the underlay interfaces
  21  vip        each VIP on lo (/32, /128)
  22  arp        net.ipv4.conf.all.arp_ignore >= 1 and arp_announce >= 2 (IPv4 VIPs)
  23  rp-filter  no strict rp_filter on the underlay interfaces (IPv4 VIPs)
  24  mss        nftables table inet sticky_dsr clamps SYN-ACKs from a VIP to
                 underlay MTU - 2 x IP header - 20 (1440 IPv4, 1400 IPv6 on a 1500 underlay)
Other exit codes: 0 all in place / done; 1 a step failed; 2 bad input (not root, no --vip,
not an address, --check with --undo), nothing changed.";

/// Configure this host as a DSR backend: decapsulation, VIPs on lo, ARP, rp_filter, MSS.
#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct BackendSetupArgs {
    /// A VIP the balancers forward here (IPv4 or IPv6 address, no port); repeat for several.
    #[arg(long, value_name = "ADDR", required_unless_present = "undo")]
    pub vip: Vec<IpAddr>,
    /// Change nothing: report each piece as ok or missing, exit with the first missing code.
    #[arg(long, conflicts_with = "undo")]
    pub check: bool,
    /// Remove what earlier runs added and restore the sysctls they changed.
    #[arg(long)]
    pub undo: bool,
    /// The underlay's MTU [default: the MTU of the default route's device].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(576..=65535))]
    pub underlay_mtu: Option<u32>,
    /// Interface whose ingress decapsulates; repeat for several [default: the devices of the
    /// default routes].
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
}

/// Bad input: exit 2 without changing anything.
fn usage_error(what: &str) -> ! {
    eprintln!("error: {what}");
    std::process::exit(2)
}

pub fn run(args: BackendSetupArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        usage_error(
            "sticky backend-setup changes interfaces, addresses and sysctls: run it as root",
        );
    }
    if args.undo {
        for line in backend_setup::undo()? {
            println!("{line}");
        }
        println!("backend-setup: undone");
        return Ok(());
    }
    let plan = Plan {
        vips: args.vip,
        interfaces: args.interfaces,
        underlay_mtu: args.underlay_mtu,
    };
    if args.check {
        let findings = backend_setup::check(&plan)?;
        print!("{}", render(&findings));
        if let Some(code) = exit_code(&findings) {
            std::process::exit(i32::from(code));
        }
        return Ok(());
    }
    for line in backend_setup::setup(&plan)? {
        println!("{line}");
    }
    println!("backend-setup: ready");
    Ok(())
}

/// One line per piece: `ok   NAME  what` or `MISSING NAME (exit N)  what`.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        if f.ok {
            out.push_str(&format!("ok       {:<10} {}\n", f.piece.name(), f.what));
        } else {
            out.push_str(&format!(
                "MISSING  {:<10} {} (exit {})\n",
                f.piece.name(),
                f.what,
                f.piece.exit_code()
            ));
        }
    }
    out
}

/// The first missing piece's code, in [`Piece::ALL`] order; `None` when all is in place.
pub fn exit_code(findings: &[Finding]) -> Option<u8> {
    Piece::ALL
        .iter()
        .find(|p| findings.iter().any(|f| f.piece == **p && !f.ok))
        .map(|p| p.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(piece: Piece, ok: bool) -> Finding {
        Finding {
            piece,
            ok,
            what: String::new(),
        }
    }

    #[test]
    fn the_first_missing_piece_sets_the_exit_code() {
        let all_ok: Vec<Finding> = Piece::ALL.iter().map(|&p| finding(p, true)).collect();
        assert_eq!(exit_code(&all_ok), None);
        let some = vec![
            finding(Piece::Mss, false),
            finding(Piece::Arp, false),
            finding(Piece::Vip, true),
        ];
        assert_eq!(exit_code(&some), Some(22));
        let text = render(&some);
        assert!(
            text.contains("MISSING  mss") && text.contains("(exit 24)"),
            "{text}"
        );
        assert!(text.contains("MISSING  arp"), "{text}");
    }

    #[test]
    fn codes_are_distinct() {
        let mut codes: Vec<u8> = Piece::ALL.iter().map(|p| p.exit_code()).collect();
        codes.dedup();
        assert_eq!(codes, vec![20, 21, 22, 23, 24]);
    }
}
