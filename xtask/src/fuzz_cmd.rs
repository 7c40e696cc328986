//! `cargo xtask fuzz`: a repeatable campaign over every cargo-fuzz target in `fuzz/`, one
//! after the other (the targets' bodies are the fuzz crate's library, `fuzz/src/lib.rs`).
//!
//! Each target starts from its committed seeds (`fuzz/corpus/<target>`) and every crash
//! found so far (`fuzz/regressions/<target>`); what libFuzzer discovers goes to
//! `fuzz/target/campaign/<target>/`, so campaigns build on each other without touching the
//! committed corpus.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{setup, sh};

/// Seconds per target for `cargo xtask fuzz`.
pub const DEFAULT_SECONDS: u64 = 60;
/// Seconds per target when `cargo xtask test` runs the campaign.
pub const TEST_SECONDS: u64 = 10;

/// Frames for the packet campaign of `cargo xtask fuzz` (`cargo xtask test` runs 300k).
pub const DEFAULT_FRAMES: u64 = 2_000_000;

/// Fuzzes the parsers for `seconds` each, then (unless one `only` target is asked for) sends
/// `frames` random and mutated frames through the real eBPF programs.
pub fn run(seconds: u64, only: Option<&str>, frames: u64) -> Result<()> {
    let start = Instant::now();
    setup::nightly()?;
    ensure_cargo_fuzz()?;
    let dir = sh::workspace_root()?.join("fuzz");
    let all = sh::output(cargo_fuzz(&dir)?.arg("list"))?;
    let all: Vec<&str> = all
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let targets = match only {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t}; the targets are: {}", all.join(", ")),
        None => all,
    };
    let mut build = cargo_fuzz(&dir)?;
    build.arg("build");
    if let Some(t) = only {
        build.arg(t);
    }
    sh::run(&mut build).context("building the fuzz targets failed; see cargo's output above")?;
    let mut crashed = Vec::new();
    for target in targets {
        let outcome = run_target(&dir, target, seconds)?;
        println!("{}", outcome.summary(target));
        if let Some(why) = outcome.failure {
            crashed.push(format!("{target}: {why}"));
        }
    }
    if only.is_none() && frames > 0 {
        packets(frames)?;
    }
    println!("xtask fuzz: {} s", start.elapsed().as_secs());
    if !crashed.is_empty() {
        bail!(
            "fuzzing found {} failing target(s):\n  {}\nreproduce with `cd fuzz && cargo +nightly \
             fuzz run <target> <input>`; fix the parser, then copy the input to \
             fuzz/regressions/<target>/ and add a unit test next to the parser",
            crashed.len(),
            crashed.join("\n  ")
        );
    }
    Ok(())
}

/// The packet campaign: `tests/tests/packet_fuzz.rs` with a random seed (printed, to replay
/// with `STICKY_FUZZ_SEED`) and `frames` frames, through BPF_PROG_TEST_RUN (root only).
fn packets(frames: u64) -> Result<()> {
    if !sh::is_root() {
        println!("note: packet fuzzing skipped: BPF_PROG_TEST_RUN needs root");
        return Ok(());
    }
    let bin = crate::build_cmd::build_sticky(false)?;
    let mut cargo = sh::cargo()?;
    cargo
        .current_dir(sh::workspace_root()?)
        .env("AYA_BUILD_SKIP", "0")
        .env("STICKY_BIN", &bin)
        .env("STICKY_FUZZ_FRAMES", frames.to_string())
        .env("STICKY_FUZZ_SEED", "random")
        .args(["test", "--package", "sticky-tests", "--test", "packet_fuzz"])
        .args(["--", "--test-threads=1", "--nocapture"]);
    sh::run(&mut cargo)
        .context("the packet campaign found a frame breaking an invariant; see above")
}

/// `cargo fuzz` needs nightly (sanitizer flags); the fuzz crate is its own workspace.
fn cargo_fuzz(dir: &Path) -> Result<Command> {
    let mut cmd = sh::cmd("cargo")?;
    cmd.current_dir(dir)
        .args(["+nightly", "fuzz"])
        // The targets need no eBPF object.
        .env("AYA_BUILD_SKIP", "1");
    Ok(cmd)
}

fn ensure_cargo_fuzz() -> Result<()> {
    if let Ok(version) = sh::output(sh::cmd("cargo")?.args(["fuzz", "--version"])) {
        println!("ok: {} already installed", version.trim());
        return Ok(());
    }
    println!("installing: cargo-fuzz (takes about 2 minutes)");
    sh::run(sh::cmd("cargo")?.args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed; check network access")
}

/// What one target's run left in its log.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    runs: Option<u64>,
    seconds: Option<u64>,
    /// `cov: … ft: … corp: …` from libFuzzer's last status line.
    coverage: Option<String>,
    failure: Option<String>,
}

impl Outcome {
    fn summary(&self, target: &str) -> String {
        let runs = self.runs.map_or("?".to_owned(), |r| r.to_string());
        let seconds = self.seconds.map_or("?".to_owned(), |s| s.to_string());
        let state = if self.failure.is_some() { "FAIL" } else { "ok" };
        let coverage = self.coverage.as_deref().unwrap_or("");
        format!("{state}: {target:<16} {runs:>10} runs in {seconds:>3} s  {coverage}")
    }
}

fn run_target(dir: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let campaign = dir.join("target").join("campaign");
    let found: PathBuf = campaign.join(target);
    fs::create_dir_all(&found).with_context(|| format!("create {}", found.display()))?;
    let log_path = campaign.join(format!("{target}.log"));
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = cargo_fuzz(dir)?;
    // libFuzzer adds new inputs to the first directory and reads them all.
    cmd.args(["run", target])
        .arg(&found)
        .arg(dir.join("corpus").join(target));
    let regressions = dir.join("regressions").join(target);
    if regressions.is_dir() {
        cmd.arg(&regressions);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // A parser taking a second on one input is a finding too.
        .arg("-timeout=10")
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", sh::describe(&cmd)))?;
    let text =
        fs::read_to_string(&log_path).with_context(|| format!("read {}", log_path.display()))?;
    let mut outcome = parse_log(&text);
    if !status.success() && outcome.failure.is_none() {
        outcome.failure = Some(format!("exited with {status}"));
    }
    if outcome.failure.is_some() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        println!(
            "--- last lines of {} ---\n{}",
            log_path.display(),
            tail.join("\n")
        );
    }
    Ok(outcome)
}

fn parse_log(text: &str) -> Outcome {
    let mut outcome = Outcome::default();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.runs = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 123 runs in 10 second(s)`
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words.as_slice() {
                outcome.runs = outcome.runs.or(runs.parse().ok());
                outcome.seconds = secs.parse().ok();
            }
        } else if line.starts_with('#') && line.contains("DONE") {
            // `#123	DONE   cov: 456 ft: 789 corp: 12/345b lim: 4096 exec/s: 12 rss: 40Mb`
            let stats = line.split_once("cov:").map(|(_, s)| s);
            let corp = stats.map(|s| s.split(" lim:").next().unwrap_or(s).trim());
            outcome.coverage = corp.map(|s| format!("cov: {s}"));
        } else if let Some((_, artifact)) = line.split_once("Test unit written to ") {
            outcome.failure = Some(format!("crashing input {}", artifact.trim()));
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "INFO: Seed: 42\n\
            #1000\tDONE   cov: 456 ft: 789 corp: 12/345b lim: 4096 exec/s: 100 rss: 40Mb\n\
            Done 1000 runs in 10 second(s)\n\
            stat::number_of_executed_units: 1001\n\
            stat::peak_rss_mb: 40\n";
        assert_eq!(
            parse_log(log),
            Outcome {
                runs: Some(1001),
                seconds: Some(10),
                coverage: Some("cov: 456 ft: 789 corp: 12/345b".into()),
                failure: None,
            }
        );
    }

    #[test]
    fn names_the_crashing_input() {
        let log = "==1== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/w/fuzz/artifacts/cookies/'; Test unit written to \
            /w/fuzz/artifacts/cookies/crash-abc\n";
        assert_eq!(
            parse_log(log).failure.as_deref(),
            Some("crashing input /w/fuzz/artifacts/cookies/crash-abc")
        );
    }
}
