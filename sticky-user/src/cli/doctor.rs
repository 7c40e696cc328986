//! `sticky doctor`: what would stop a balancer from forwarding, with the fix for each.

use std::io::Write as _;

use anyhow::Context as _;

use crate::{
    control::{self, Request},
    doctor::{self, Target},
    status::Status,
};

/// The exit codes, printed by `sticky doctor --help` and listed in the README.
pub const EXIT_CODES: &str = "\
Given the same flags or --config as `sticky run`, checks the host before a start; with none,
checks the running --instance (its interfaces, VIPs and backends, read over its control
socket). Run it where sticky runs: in the balancer's network namespace, as root. One line per
check: ok, FAIL with the fix, or skip (could not check here).

Exit codes (with several problems, the lowest code found: the most severe):
  0   no problem found
  1   doctor could not run: bad flags or config, unknown interface, no such instance
  2   command line usage error
  10  tcx            Linux < 6.6: no tcx, sticky cannot pin its tc links
  11  ip-forward     net.ipv4.ip_forward off, remote IPv4 backends
  12  ipv6-forward   IPv6 forwarding off, remote IPv6 backends
  13  rp-filter      strict rp_filter on a client-facing interface that is not the way back
  14  route-back     a backend's replies to clients do not come back through this node
  15  program-ahead  an XDP program, or another tcx program ahead of sticky's
  16  nat-rule       an nftables/iptables NAT rule for the same VIP
  17  mtu            a backend-facing MTU below the client-facing one (IPv6: below 1280)
  18  bpffs          pins do not outlive the process (private mount namespace)
  19  sockmap        proxy splicing asked for, the kernel has no sockmap";

/// Check what would stop a balancer from forwarding, and name the fix.
#[derive(clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct DoctorArgs {
    /// Print the checks as JSON: {"exit": N, "checks": [{check, status, code, what, fix}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: super::run::RunArgs,
}

pub fn run(args: DoctorArgs, instance: Option<String>) -> anyhow::Result<()> {
    let (mut layer, file) = args.run.into_parts();
    let pre_start = file.is_some()
        || !layer.iface.is_empty()
        || !layer.vip.is_empty()
        || !layer.backend.is_empty();
    let target = if pre_start {
        // Checked where the daemon would run: in its --netns, from the flag or the file.
        super::run::enter_configured_netns(&layer, file.as_ref())?;
        layer.instance = instance;
        let config = crate::daemon::resolve(layer, file.as_ref())?;
        Target::from_config(&config)
    } else {
        let name = instance.unwrap_or_else(|| crate::config::DEFAULT_INSTANCE.to_string());
        running(&name)?
    };
    let lines = doctor::check(&target);
    let text = if args.json {
        format!("{}\n", doctor::to_json(&lines))
    } else {
        doctor::render(&lines)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `sticky doctor | head` still exits with the finding's code.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    match doctor::exit_code(&lines) {
        0 => Ok(()),
        code => std::process::exit(i32::from(code)),
    }
}

/// The running daemon's settings and process id, through its control socket.
fn running(instance: &str) -> anyhow::Result<Target> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let response = control::call(instance, &Request::Status).await?;
        if !response.ok {
            anyhow::bail!(
                "instance '{instance}': {}",
                response.error.unwrap_or_default()
            );
        }
        let status: Status =
            serde_json::from_value(response.data).context("malformed status from the daemon")?;
        Ok(Target::from_status(&status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Code;

    #[test]
    fn the_help_lists_every_code_with_its_name() {
        for code in Code::ALL {
            let row = format!("  {}  {}", code.exit(), code.name());
            assert!(EXIT_CODES.contains(&row), "help misses '{row}'");
        }
    }
}
