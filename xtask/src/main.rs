//! Developer tasks for sticky, run as `cargo xtask <command>`.

mod bench_cmd;
mod bpf_linker;
mod build_cmd;
mod chaos_cmd;
mod fuzz_cmd;
mod package_cmd;
mod run_cmd;
mod setup;
mod sh;
mod test_cmd;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Developer tasks for sticky (the eBPF load balancer).
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing for building and testing (nightly, bpf-linker, bpffs, tools).
    ///
    /// Checks the nightly toolchain, its rust-src, bpf-linker (built against nightly's LLVM),
    /// the bpffs mount and the Debian packages tests use; installs only what is missing,
    /// so running it again is cheap.
    Setup,
    /// Run setup, then build the sticky binary with its real eBPF object.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the sticky binary with the arguments after `--`; with none, the demo
    /// (`sticky-demo`, as root).
    Run {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for sticky, after `--` (e.g. `cargo xtask run -- run --iface eth0`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the whole workspace's tests one at a time.
    Test {
        /// Build and test with the release profile.
        #[arg(long)]
        release: bool,
        /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the fault and flood campaigns at full size (as root; about 5 minutes): a million
    /// spoofed SYNs, 20 `kill -9` cycles, a minute of backend churn, a proxy connection flood
    /// and hostile control requests. `cargo xtask test` runs them short.
    Chaos {
        /// Build and test with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Fuzz every parser that reads network or user input with cargo-fuzz (nightly), one
    /// target after the other, then send random and mutated frames through the real eBPF
    /// programs; fails naming the input if any target crashes or a frame breaks an invariant.
    ///
    /// Installs cargo-fuzz if it is missing. Starts from fuzz/corpus and fuzz/regressions;
    /// new inputs go to fuzz/target/campaign, logs to fuzz/target/campaign/<target>.log.
    Fuzz {
        /// Seconds to fuzz each target.
        #[arg(long, default_value_t = fuzz_cmd::DEFAULT_SECONDS)]
        seconds: u64,
        /// Fuzz only this target (`cargo fuzz list` in fuzz/ names them); skips the packets.
        #[arg(long)]
        target: Option<String>,
        /// Random and mutated frames sent through the real eBPF programs (BPF_PROG_TEST_RUN,
        /// as root) after the parsers.
        #[arg(long, default_value_t = fuzz_cmd::DEFAULT_FRAMES)]
        frames: u64,
    },
    /// Build the Debian package target/release/debian/sticky_VERSION_ARCH.deb: the binary with
    /// its eBPF object, /etc/sticky/sticky.toml (conffile), the sticky@.service unit, man pages
    /// and bash, zsh and fish completions.
    Package {
        /// Package the debug build instead (fast, gzip; what `cargo xtask test` checks).
        #[arg(long)]
        debug: bool,
    },
    /// Install the benchmark's tools, build in release, and benchmark sticky against direct
    /// paths, nftables NAT, HAProxy and nginx (as root; about 25 minutes).
    ///
    /// Writes bench/results/latest.md (table), latest.png (chart) and latest.json (samples).
    Bench {
        /// Sanity check in under 2 minutes: one round of 1-second measurements.
        #[arg(long)]
        quick: bool,
        /// Extra arguments for `sticky-bench run`, after `--` (e.g. `-- --case sticky`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Build { release } => build_cmd::run(release).map(|_| ExitCode::SUCCESS),
        Command::Run { release, args } => run_cmd::run(release, &args),
        Command::Test { release, args } => {
            test_cmd::run(release, &args).map(|()| ExitCode::SUCCESS)
        }
        Command::Chaos { release } => chaos_cmd::run(release).map(|()| ExitCode::SUCCESS),
        Command::Fuzz {
            seconds,
            target,
            frames,
        } => fuzz_cmd::run(seconds, target.as_deref(), frames).map(|()| ExitCode::SUCCESS),
        Command::Package { debug } => package_cmd::run(!debug).map(|_| ExitCode::SUCCESS),
        Command::Bench { quick, args } => bench_cmd::run(quick, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command> {
        Ok(Cli::try_parse_from(["cargo xtask"].iter().chain(args))?.command)
    }

    #[test]
    fn run_passes_everything_after_double_dash_to_sticky() -> Result<()> {
        let Command::Run { release, args } =
            parse(&["run", "--release", "--", "run", "--iface", "x"])?
        else {
            anyhow::bail!("not parsed as run");
        };
        assert!(release);
        assert_eq!(args, ["run", "--iface", "x"]);
        Ok(())
    }

    #[test]
    fn test_keeps_a_second_double_dash_for_the_test_binaries() -> Result<()> {
        let Command::Test { args, .. } = parse(&["test", "--", "filter", "--", "--nocapture"])?
        else {
            anyhow::bail!("not parsed as test");
        };
        assert_eq!(args, ["filter", "--", "--nocapture"]);
        Ok(())
    }

    #[test]
    fn bench_takes_quick_and_passes_the_rest() -> Result<()> {
        let Command::Bench { quick, args } =
            parse(&["bench", "--quick", "--", "--case", "sticky"])?
        else {
            anyhow::bail!("not parsed as bench");
        };
        assert!(quick);
        assert_eq!(args, ["--case", "sticky"]);
        Ok(())
    }

    #[test]
    fn fuzz_defaults_to_every_target() -> Result<()> {
        assert!(matches!(
            parse(&["fuzz"])?,
            Command::Fuzz {
                seconds: fuzz_cmd::DEFAULT_SECONDS,
                target: None,
                frames: fuzz_cmd::DEFAULT_FRAMES,
            }
        ));
        let Command::Fuzz {
            seconds,
            target,
            frames,
        } = parse(&[
            "fuzz",
            "--seconds",
            "5",
            "--target",
            "cookies",
            "--frames",
            "10",
        ])?
        else {
            anyhow::bail!("not parsed as fuzz");
        };
        assert_eq!(
            (seconds, target.as_deref(), frames),
            (5, Some("cookies"), 10)
        );
        Ok(())
    }

    #[test]
    fn chaos_takes_release() -> Result<()> {
        assert!(matches!(
            parse(&["chaos", "--release"])?,
            Command::Chaos { release: true }
        ));
        Ok(())
    }

    #[test]
    fn package_defaults_to_release() -> Result<()> {
        assert!(matches!(
            parse(&["package"])?,
            Command::Package { debug: false }
        ));
        assert!(matches!(
            parse(&["package", "--debug"])?,
            Command::Package { debug: true }
        ));
        Ok(())
    }

    #[test]
    fn run_without_args_is_valid() -> Result<()> {
        assert!(
            matches!(parse(&["run"])?, Command::Run { release: false, ref args } if args.is_empty())
        );
        Ok(())
    }
}
