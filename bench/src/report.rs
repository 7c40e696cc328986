//! The report: `latest.md` (machine, method, table of median (min–max) and ratio to the routed
//! path, eBPF cost, where sticky stands against its targets, notes), `latest.png` and the raw
//! samples as `latest.json`. Files are written whole or not at all (temp file, then rename).

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;

use sticky_common::maps::{PROG_DSR_XDP, PROG_INGRESS};

use crate::{
    chart,
    cmd::TempDir,
    measure::{CONCURRENCY, RATE_CONNECTIONS, RATE_SHARE, WRK_CONNECTIONS},
    metrics::{Metric, Results},
    peers::Case,
    run::{QUIET, quiet_wait},
    testrun::{Cost, Timed},
    topology::{CLIENT_NET, LOAD_CPU, SERVER_CPU},
};

/// The sticky kernel path should reach this share of the routed path.
const TARGET: f64 = 0.97;
/// Proxy mode should reach this multiple of HAProxy's keep-alive and new-connection rates.
const PROXY_VS_HAPROXY: f64 = 1.5;
/// Proxy mode with splicing should reach this share of the direct path's bulk rate.
const SPLICE_VS_DIRECT: f64 = 0.8;
/// DSR on XDP should cost at most this many ns per packet in BPF_PROG_TEST_RUN.
const DSR_XDP_NS: f64 = 150.0;
/// DSR should reach this multiple of the routed path's new-connection rate.
const DSR_NEW_CONN: f64 = 1.0;
/// eBPF ns per packet of the kernel path under real traffic, at most (#17).
const EBPF_NS: f64 = 350.0;
/// An established packet in BPF_PROG_TEST_RUN, at most this multiple of a pass (#17).
const ESTABLISHED_VS_PASS: f64 = 1.4;
/// Below this share of the fixed rate, a path's latency is its queue's.
const OVERLOAD: f64 = 0.95;

/// The scale curve's chart, beside `latest.png`.
const SCALE_PNG: &str = "scale.png";

/// Writes the three files into `dir` and returns the markdown.
pub fn write(dir: &Path, results: &Results) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let md = format!("# sticky benchmark\n\n{}", markdown(results, "latest.png"));
    // The encoder picks the format from the extension: draw in a private folder, then copy.
    let scratch = TempDir::new("chart")?;
    let drawn = scratch.path.join("latest.png");
    chart::draw(
        results,
        &drawn,
        "sticky and the alternatives, relative to the routed path (1.0)",
    )?;
    if !results.scale.is_empty() {
        // The scale chart is a figure among others: its failure is said, not fatal.
        let drawn = scratch.path.join(SCALE_PNG);
        let tmp = dir.join("scale.png.tmp");
        let written = chart::draw_scale(&results.scale, &drawn).and_then(|()| {
            std::fs::copy(&drawn, &tmp).with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join(SCALE_PNG))
                .with_context(|| format!("write {}", dir.join(SCALE_PNG).display()))
        });
        if let Err(e) = written {
            eprintln!("bench: the scale chart: {e:#}");
        }
    }
    let png = dir.join("latest.png");
    let tmp = dir.join("latest.png.tmp");
    std::fs::copy(&drawn, &tmp).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &png).with_context(|| format!("write {}", png.display()))?;
    write_atomic(&dir.join("latest.md"), &md)?;
    write_atomic(
        &dir.join("latest.json"),
        &serde_json::to_string_pretty(results)?,
    )?;
    Ok(md)
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn cell(results: &Results, case: Case, metric: Metric) -> String {
    let Some(s) = results.summary(case, metric) else {
        return "–".into();
    };
    let mut text = metric.format(s.median);
    if s.n > 1 {
        let _ = write!(text, " ({}–{})", metric.format(s.min), metric.format(s.max));
    }
    let base = results.base_of(case, metric);
    if case != base
        && let Some(r) = results.ratio(case, metric)
    {
        let _ = write!(text, " **{r:.2}×**");
    }
    if base != Case::Routed {
        text.push_str(" §");
    }
    if matches!(metric, Metric::P50 | Metric::P99 | Metric::CpuPerRequest)
        && overloaded(results, case).is_some()
    {
        text.push_str(" ‡");
    }
    text
}

/// The share of the fixed rate a path reached, when it fell short.
fn overloaded(results: &Results, case: Case) -> Option<f64> {
    let reached = results.summary(case, Metric::RateReached)?.median;
    (reached < OVERLOAD).then_some(reached)
}

/// The report's body, without a title, so the README can show it under its own heading;
/// `chart` is the PNG's path relative to where the markdown goes.
pub fn markdown(results: &Results, chart: &str) -> String {
    let machine = &results.machine;
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| results.samples.contains_key(c))
        .collect();
    let mut md = String::new();
    let between = &results.between_cases_cpu;
    let mean = between.iter().sum::<f64>() / between.len().max(1) as f64;
    let max = between.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "Machine: {}, {} vCPUs, Linux {}, {}. Other processes' CPU use: {:.0}% just before the \
         run, {:.0}% on average (max {:.0}%) when each case started (the bench waits up to \
         {} s for them to drop under {:.0}%); hypervisor steal {:.1}% of CPU time during the \
         run.\n",
        machine.cpu,
        machine.vcpus,
        machine.kernel,
        machine.date,
        results.background_cpu * 100.0,
        mean * 100.0,
        max * 100.0,
        quiet_wait(results.quick).as_secs(),
        QUIET * 100.0,
        results.steal * 100.0
    );
    if results.quick {
        md.push_str(
            "**Quick run (`--quick`): one round of short measurements, a sanity check only — \
             not a result.**\n\n",
        );
    }
    let _ = writeln!(
        md,
        "{} round(s), cases interleaved (order rotated each round), {} s per measurement; each \
         cell is the median (min–max) over the rounds and, in bold, its ratio to the routed \
         path{}. ↑ higher is better, ↓ lower is better. Between cases conntrack is flushed and \
         the middlebox restarted (sticky with fresh maps).\n",
        results.rounds,
        results.seconds_per_metric,
        if results.proxy_rate > 0.0 {
            " (§: to HAProxy http)"
        } else {
            ""
        }
    );
    md.push_str("| metric |");
    for c in &cases {
        let _ = write!(md, " {} |", c.label());
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(cases.len()));
    md.push('\n');
    for m in Metric::ALL {
        let arrow = if m.higher_is_better() { "↑" } else { "↓" };
        let _ = write!(md, "| {} {arrow} |", m.label());
        for &c in &cases {
            let _ = write!(md, " {} |", cell(results, c, m));
        }
        md.push('\n');
    }
    if cases.iter().any(|c| c.sticky_kernel()) {
        md.push_str("| eBPF ns per packet |");
        for &c in &cases {
            let v = ebpf_cell(results, c).unwrap_or_else(|| "–".into());
            let _ = write!(md, " {v} |");
        }
        md.push('\n');
    }
    if results.proxy_rate > 0.0 {
        let _ = writeln!(
            md,
            "\n§ the HTTP proxies (per-request routing) at their own fixed rate, {:.0} \
             requests/s ({}), the others at {:.0}; in bold, the ratio to HAProxy http.",
            results.proxy_rate,
            proxy_rate_origin(results),
            results.fixed_rate
        );
    }
    let short: Vec<String> = cases
        .iter()
        .filter_map(|&c| {
            let reached = overloaded(results, c)?;
            Some(format!(
                "{} {:.0}% of {:.0}",
                c.label(),
                reached * 100.0,
                results.rate_of(c)
            ))
        })
        .collect();
    if !short.is_empty() {
        let _ = writeln!(
            md,
            "\n‡ could not sustain its fixed rate (median share reached of the requests/s \
             asked: {}): its latency is mostly time spent queueing, and grows with the run's \
             length.",
            short.join(", ")
        );
    }
    let _ = writeln!(md, "\n![bench]({chart})\n");
    ebpf_paragraph(&mut md, results);
    dsr_ebpf_paragraph(&mut md, results);
    targets(&mut md, results);
    scale_section(&mut md, results, &chart.replace("latest.png", SCALE_PNG));
    seeds_section(&mut md, results);
    if let Some(hash) = &results.hash {
        let _ = writeln!(md, "### Hash and table\n\n{hash}");
    }
    md.push_str("### Method\n\n");
    method(&mut md, results, &cases);
    if !results.notes.is_empty() {
        md.push_str("\n### Notes from the run\n\n");
        for n in &results.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

fn ebpf_cell(results: &Results, case: Case) -> Option<String> {
    let ns = match case {
        Case::Sticky => results.ebpf_total().per_packet(None)?,
        _ => results.ebpf_dsr.get(&case)?.per_packet(None)?,
    };
    Some(format!("{ns:.0}"))
}

/// The DSR cases' programs under load, and the programs through BPF_PROG_TEST_RUN.
fn dsr_ebpf_paragraph(md: &mut String, results: &Results) {
    for (case, cost) in &results.ebpf_dsr {
        let programs: Vec<String> = cost
            .programs
            .iter()
            .filter_map(|(name, (_, n))| {
                Some(format!(
                    "`{name}` {:.0} ns over {n} runs",
                    cost.per_packet(Some(name))?
                ))
            })
            .collect();
        if !programs.is_empty() {
            let _ = writeln!(
                md,
                "eBPF cost per packet of {} (kernel run-time statistics over its runs): {}.\n",
                case.label(),
                programs.join(", ")
            );
        }
    }
    if results.testrun.is_empty() {
        return;
    }
    md.push_str(
        "The programs through BPF_PROG_TEST_RUN (a 118-byte TCP frame received on a veth; \
         for DSR its backend is a resolved neighbour; single runs, the median of ten blocks' means, \
         less the harness's timer overhead; figures marked × are one repeated run: the pass \
         path, and NAT's established path with its output made an established flow back to \
         the VIP, so every run rewrites):\n\n| program, packet | ns per packet |\n|---|---|\n",
    );
    for c in &results.testrun {
        let _ = writeln!(md, "| {} | {:.0} |", c.what, c.ns);
    }
    md.push('\n');
}

/// How the kernel path's cost grows with live flows (`crate::scale`): a table, the curve
/// and a sentence.
fn scale_section(md: &mut String, results: &Results, png: &str) {
    let points = &results.scale;
    if points.is_empty() {
        return;
    }
    md.push_str(
        "### Cost as work grows\n\n\
         A `sticky run` daemon holding that many live flows, each its own client (so as many \
         affinity entries), maps sized to fit and checked to hold them all; the flows set up \
         by the ingress program itself (a SYN and an ACK per client through \
         BPF_PROG_TEST_RUN, on the daemon's maps). eBPF: an established packet of a distinct \
         held flow, its first more than a second after the fill (so it also refreshes its \
         client's affinity), single runs (the median of ten blocks' means) less the harness's \
         timer overhead. Daemon: CPU over 20 s while `/metrics` is fetched every second (a \
         scrape reuses the last walk's map counts for up to ten walks, 15 s at most), then its \
         RSS; the first scrape's time (a walk of the maps) and the median scrape's; `sticky \
         status`: median of 3.\n\n\
         | live flows | flow entries / clients held | eBPF ns per packet | daemon CPU | daemon \
         RSS MiB | maps MiB (kernel) | scrape with a walk ms | median scrape ms | `sticky \
         status` ms |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let _ = writeln!(md, "{}", p.row());
    }
    if let Some(s) = crate::scale::sentence(points) {
        let _ = writeln!(md, "\n{s}");
    }
    let _ = writeln!(md, "\n![scale]({png})\n");
}

/// `sticky cluster` against the Node balancers (`crate::seeds`), with #17's targets.
fn seeds_section(md: &mut String, results: &Results) {
    let medians = crate::seeds::medians(&results.seeds);
    if medians.is_empty() {
        return;
    }
    md.push_str(
        "### sticky cluster and the Node balancers\n\n\
         The same socket.io app (`bench/cluster/seeds.js`, 3 workers) behind each, alone in a \
         namespace, pinned to the server CPU. Load: `sticky-bench load eio`, 64 sessions in \
         flight, each a handshake, the socket.io connect, 2 echo round trips with \
         acknowledgements and the disconnect over HTTP long-polling, every request a new \
         connection from the session's own address (4096 loopback addresses). CPU: the \
         balancer's whole process tree (master and workers; for `sticky cluster` its daemon \
         and workers) per completed session; softirq time (where sticky's eBPF runs) is \
         counted for none. Medians over the rounds; lost sessions (a \
         request answered 400, `Session ID unknown`) summed.\n\n\
         | balancer | sessions (handshakes)/s | messages/s | CPU ms per session | p99 session ms | lost \
         sessions | errors |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = medians
        .iter()
        .find(|(s, _)| *s == crate::seeds::Seed::StickySession)
        .map(|(_, r)| r.clone());
    for (seed, r) in &medians {
        let vs = |x: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 && *seed != crate::seeds::Seed::StickySession => {
                format!(" **{:.2}×**", x / b)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {:.0}{} | {:.0} | {:.2}{} | {:.0} | {} | {} |",
            seed.label(),
            r.sessions_per_sec,
            vs(
                r.sessions_per_sec,
                base.as_ref().map(|b| b.sessions_per_sec)
            ),
            r.messages_per_sec,
            r.cpu_ms_per_session,
            vs(
                r.cpu_ms_per_session,
                base.as_ref().map(|b| b.cpu_ms_per_session)
            ),
            r.p99_ms,
            r.lost,
            r.errors
        );
    }
    for seed in crate::seeds::Seed::ALL {
        if !medians.iter().any(|(s, _)| *s == seed) {
            let _ = writeln!(
                md,
                "| {} | did not serve (see the notes) | | | | | |",
                seed.label()
            );
        }
    }
    let ours = medians
        .iter()
        .find(|(s, _)| *s == crate::seeds::Seed::StickyCluster)
        .map(|(_, r)| r);
    if let (Some(ours), Some(base)) = (ours, &base) {
        let rate = ours.sessions_per_sec / base.sessions_per_sec.max(f64::MIN_POSITIVE);
        let cpu = ours.cpu_ms_per_session / base.cpu_ms_per_session.max(f64::MIN_POSITIVE);
        let _ = writeln!(
            md,
            "\nAgainst the targets (`sticky cluster` ≥ 2× sticky-session's sessions/s at ≤ 0.5× \
             its CPU per session, 0 sessions lost): sessions/s {rate:.2}× ({}), CPU per \
             session {cpu:.2}× ({}), {} lost ({}).",
            if rate >= 2.0 { "meets" } else { "below" },
            if cpu <= 0.5 { "meets" } else { "above" },
            ours.lost,
            if ours.lost == 0 { "meets" } else { "misses" }
        );
    }
    for (seed, r) in &medians {
        if let Some(e) = &r.first_error {
            let _ = writeln!(md, "\n{}: first error: {e}", seed.label());
        }
    }
    md.push('\n');
}

/// Per program and per service: new flows (HTTP runs) cost more than established ones.
fn ebpf_paragraph(md: &mut String, results: &Results) {
    let total = results.ebpf_total();
    let Some(all) = total.per_packet(None) else {
        return;
    };
    let programs: Vec<String> = total
        .programs
        .keys()
        .filter_map(|name| Some(format!("`{name}` {:.0}", total.per_packet(Some(name))?)))
        .collect();
    let services: Vec<String> = [
        ("http", "HTTP metrics, mostly new connections"),
        ("echo", "echo, one established connection"),
        ("bulk", "bulk, TSO/GRO-sized packets"),
        ("upgrade", "echo and bulk via upgrade"),
    ]
    .iter()
    .filter_map(|(key, what)| {
        let ns = results.ebpf.get(*key)?.per_packet(None)?;
        Some(format!("{what}: {ns:.0}"))
    })
    .collect();
    let runs: u64 = total.programs.values().map(|(_, n)| n).sum();
    let _ = writeln!(
        md,
        "eBPF cost per packet (sticky's tc programs, kernel run-time statistics over {runs} \
         runs): **{all:.0} ns** on average; per program {}; per service {}.\n",
        programs.join(", "),
        services.join("; ")
    );
}

/// A cost against its ceiling.
fn at_most(value: f64, ceiling: f64) -> &'static str {
    if value <= ceiling { "meets" } else { "above" }
}

/// A ratio against a goal; equal at the precision shown counts as meeting it.
fn verdict(r: Option<f64>, goal: f64) -> String {
    match r {
        Some(r) if r >= goal - 0.0005 => format!("{r:.3}× (meets)"),
        Some(r) => format!("{r:.3}× (below)"),
        None => "not measured".into(),
    }
}

fn targets(md: &mut String, results: &Results) {
    kernel_targets(md, results);
    dsr_targets(md, results);
    proxy_targets(md, results);
}

/// Issue #13's targets for direct server return (reported, never asserted).
fn dsr_targets(md: &mut String, results: &Results) {
    let cases: Vec<Case> = [Case::StickyDsrTc, Case::StickyDsrXdp]
        .into_iter()
        .filter(|c| results.samples.contains_key(c))
        .collect();
    if cases.is_empty() && results.testrun.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Where direct server return stands against its targets (XDP ≤ {DSR_XDP_NS:.0} ns per \
         packet in BPF_PROG_TEST_RUN, new-connection req/s ≥ {DSR_NEW_CONN}× routed, the \
         download's replies bypassing the balancer):\n"
    );
    if let Some(c) = results
        .testrun
        .iter()
        .find(|c| c.what == Timed::Established.what(PROG_DSR_XDP))
    {
        let verdict = if c.ns <= DSR_XDP_NS { "meets" } else { "above" };
        let _ = writeln!(
            md,
            "- `sticky_dsr_xdp`, established flow: {:.0} ns ({verdict})",
            c.ns
        );
    }
    for case in cases {
        let conn = verdict(results.ratio(case, Metric::NewConn), DSR_NEW_CONN);
        let tx = results
            .summary(case, Metric::DownloadLbTx)
            .map_or_else(|| "not measured".into(), |s| format!("{:.3}", s.median));
        let routed_tx = results
            .summary(Case::Routed, Metric::DownloadLbTx)
            .map_or_else(|| "not measured".into(), |s| format!("{:.3}", s.median));
        let _ = writeln!(
            md,
            "- {}: new-connection req/s {conn} routed; balancer tx bytes per byte downloaded \
             {tx} (routed: {routed_tx})",
            case.label()
        );
    }
    md.push('\n');
}

fn kernel_targets(md: &mut String, results: &Results) {
    let Some(_) = results.samples.get(&Case::Sticky) else {
        return;
    };
    let _ = writeln!(
        md,
        "Where the sticky kernel path stands against its targets (≥ {TARGET}× routed on req/s, \
         conn/s and Gbit/s, and ≥ nftables NAT):\n"
    );
    for m in [
        Metric::KeepAlive,
        Metric::NewConn,
        Metric::Bulk1,
        Metric::Bulk4,
    ] {
        let routed = results.ratio(Case::Sticky, m);
        let nft = results.vs(Case::Sticky, Case::Nftables, m);
        let _ = writeln!(
            md,
            "- {}: {} routed, {} nftables",
            m.label(),
            verdict(routed, TARGET),
            verdict(nft, 1.0)
        );
    }
    if let Some(ns) = results.ebpf_total().per_packet(None) {
        let _ = writeln!(
            md,
            "- eBPF per packet under the case's traffic: {ns:.0} ns ({} the ≤ {EBPF_NS:.0} ns \
             target)",
            at_most(ns, EBPF_NS)
        );
    }
    if let Some(r) = established_vs_pass(&results.testrun) {
        let _ = writeln!(
            md,
            "- an established packet in BPF_PROG_TEST_RUN against a packet that is not ours, \
             both repeated: {r:.2}× ({} the ≤ {ESTABLISHED_VS_PASS}× target)",
            at_most(r, ESTABLISHED_VS_PASS)
        );
    }
    md.push('\n');
}

/// NAT ingress, established packet (rewritten) over a packet that is not ours, both warm.
fn established_vs_pass(costs: &[Cost]) -> Option<f64> {
    let find = |what: &str| costs.iter().find(|c| c.what == what).map(|c| c.ns);
    let established = find(&Timed::EstablishedRepeated.what(PROG_INGRESS))?;
    let pass = find(&Timed::Pass.what(PROG_INGRESS))?;
    (pass > 0.0).then(|| established / pass)
}

/// Proxy mode against the HTTP-mode peers, each routing every request by X-Forwarded-For:
/// (peer, metric, target ratio).
const HTTP_PEER_TARGETS: [(Case, Metric, f64); 3] = [
    (Case::HaproxyHttp, Metric::KeepAlive, 1.0),
    (Case::NginxHttp, Metric::KeepAlive, 1.2),
    (Case::HaproxyHttp, Metric::NewConn, 1.0),
];

/// Proxy mode against HAProxy and the direct path, and splicing against copying: the data
/// for the splice default.
fn proxy_targets(md: &mut String, results: &Results) {
    let proxies: Vec<Case> = [Case::StickyProxy, Case::StickyProxyCopy]
        .into_iter()
        .filter(|c| results.samples.contains_key(c))
        .collect();
    if proxies.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Where sticky's proxy mode stands against its targets (≥ {PROXY_VS_HAPROXY}× HAProxy \
         on keep-alive and new-connection req/s; with splicing, bulk via upgrade ≥ \
         {SPLICE_VS_DIRECT}× the direct path):\n"
    );
    for &case in &proxies {
        let mut parts = Vec::new();
        for m in [Metric::KeepAlive, Metric::NewConn] {
            parts.push(format!(
                "{} {} HAProxy",
                m.label(),
                verdict(results.vs(case, Case::Haproxy, m), PROXY_VS_HAPROXY)
            ));
        }
        for m in [Metric::UpgradeBulk1, Metric::UpgradeBulk4] {
            let r = results.vs(case, Case::Direct, m);
            parts.push(if case == Case::StickyProxy {
                format!("{} {} direct", m.label(), verdict(r, SPLICE_VS_DIRECT))
            } else {
                format!(
                    "{} {} direct",
                    m.label(),
                    r.map_or_else(|| "not measured".into(), |r| format!("{r:.3}×"))
                )
            });
        }
        let _ = writeln!(md, "- {}: {}", case.label(), parts.join("; "));
        let http: Vec<String> = HTTP_PEER_TARGETS
            .iter()
            .filter(|(peer, m, _)| results.vs(case, *peer, *m).is_some())
            .map(|&(peer, m, target)| {
                format!(
                    "{} {} {}",
                    m.label(),
                    verdict(results.vs(case, peer, m), target),
                    peer.label()
                )
            })
            .collect();
        if !http.is_empty() {
            let _ = writeln!(
                md,
                "- {} against the HTTP proxies (per-request routing): {}",
                case.label(),
                http.join("; ")
            );
        }
    }
    if proxies.len() == 2 {
        let ratios: Vec<String> = [
            Metric::KeepAlive,
            Metric::NewConn,
            Metric::P99,
            Metric::CpuPerRequest,
            Metric::UpgradeEcho,
            Metric::UpgradeBulk1,
            Metric::UpgradeBulk4,
        ]
        .into_iter()
        .filter_map(|m| {
            let r = results.vs(Case::StickyProxy, Case::StickyProxyCopy, m)?;
            let arrow = if m.higher_is_better() { "↑" } else { "↓" };
            Some(format!("{} {arrow} {r:.2}×", m.label()))
        })
        .collect();
        let _ = writeln!(
            md,
            "- splice ÷ --no-splice (medians): {}",
            ratios.join(", ")
        );
    }
    md.push('\n');
}

/// Where the HTTP proxies' fixed rate came from.
fn proxy_rate_origin(results: &Results) -> String {
    if results.rate_from_capacity {
        format!(
            "{:.0}% of HAProxy http's keep-alive capacity, measured first",
            RATE_SHARE * 100.0
        )
    } else {
        "given with --rate".into()
    }
}

fn method(md: &mut String, results: &Results, cases: &[Case]) {
    md.push_str("Cases:\n\n");
    for c in cases {
        let _ = writeln!(md, "- **{}**: {}", c.label(), c.describe());
    }
    let rate = if results.rate_from_capacity {
        format!(
            "{:.0} requests/s ({:.0}% of the routed path's keep-alive capacity, measured first)",
            results.fixed_rate,
            RATE_SHARE * 100.0
        )
    } else {
        format!("{:.0} requests/s (given with --rate)", results.fixed_rate)
    };
    let rate = if results.proxy_rate > 0.0 && results.rate_from_capacity {
        format!(
            "{rate}; the HTTP proxies (per-request routing) at {:.0} requests/s ({})",
            results.proxy_rate,
            proxy_rate_origin(results)
        )
    } else {
        rate
    };
    let _ = writeln!(
        md,
        "\nHow each figure is measured (client namespace → balancer namespace → {} backend \
         namespaces, veth offloads at their defaults):\n\n\
         - keep-alive req/s: `wrk -t1 -c{WRK_CONNECTIONS}`, one source address.\n\
         - new-connection req/s: `sticky-bench load connect`, {CONCURRENCY} connections in \
         flight, one request each with `Connection: close`, sources cycling through \
         {CLIENT_NET} ({} addresses).\n\
         - socket.io handshakes/s: `sticky-bench load handshake`, {CONCURRENCY} in flight; a \
         handshake is a connection with the open request, then a second connection from the \
         same source with the session's request; it counts only if both reached the same \
         backend.\n\
         - p50/p99 latency: `sticky-bench load rate`, {rate}, over {RATE_CONNECTIONS} \
         keep-alive connections from as many sources, timed from the scheduled send \
         (queueing is not hidden).\n\
         - CPU µs per request: CPU time of the whole machine (all CPUs, softirqs included, \
         from /proc/stat) during the fixed-rate run, divided by its requests.\n\
         - bulk Gbit/s: `iperf3 -P1` and `-P4`, received rate.\n\
         - download Gbit/s: `iperf3 -R -P1`, backend to client, received rate; balancer tx \
         bytes per byte downloaded: what every interface of the balancer namespace sent during \
         it over the bytes the client received (about 1 when replies pass the balancer).\n\
         - DSR cases: a one-arm topology of their own (client → router → balancer, whose one \
         interface sends each request back to the router encapsulated; backends set up by \
         `sticky backend-setup`, answering the client through the router), the same client \
         /20 and servers; for the XDP case transmit checksum offload (and so TSO) off on the \
         client's interface (what a native XDP program transmits carries no checksum state), \
         for the tc case on, as on the routed path.\n\
         - bulk via upgrade Gbit/s: `sticky-bench load bulk --head`, 1 and 4 streams: each \
         sends `GET /sink` with `Connection: Upgrade`, gets 101 from the backend, then writes \
         256 KiB blocks from its own thread and half-closes; the backend answers the bytes it \
         received (which must equal those sent), rate = bytes over the time to the last \
         answer. Proxy mode needs a request head first, so this is the bulk figure every case \
         has; iperf3 and raw echo are not measured through the proxy (–).\n\
         - echo round trip: 64-byte frames written and read back on one connection, mean; via \
         upgrade: the same after `GET /echo` and its 101.\n\
         - eBPF ns per packet: kernel statistics (`BPF_ENABLE_STATS`, as \
         `kernel.bpf_stats_enabled=1`, on during the sticky cases only) `run_time_ns / run_cnt` \
         of sticky's programs over all its runs (DSR cases: per case); DSR programs also \
         through BPF_PROG_TEST_RUN in a namespace of their own, before the cases.\n\n\
         CPUs: load generators (wrk, iperf3 client, sticky-bench load) pinned to CPU {LOAD_CPU}; \
         backend servers, iperf3 servers, HAProxy, nginx and the sticky daemon (kernel path or \
         proxy) pinned to CPU \
         {SERVER_CPU}; the kernel's packet work runs on the CPU that sends.",
        results.backends,
        CLIENT_NET.len()
    );
}

/// `sticky-bench report`: renders the report again from saved samples.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Samples written by `sticky-bench run` (its latest.json).
    #[arg(long, value_name = "FILE", default_value = "bench/results/latest.json")]
    from: std::path::PathBuf,
    /// Folder for latest.md, latest.png and latest.json.
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    out: std::path::PathBuf,
}

pub fn rerender(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.from)
        .with_context(|| format!("read {}", args.from.display()))?;
    let results: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a sticky-bench result", args.from.display()))?;
    println!("{}", write(&args.out, &results)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;

    #[test]
    fn table_has_ratios_and_targets() {
        let mut r = Results {
            rounds: 3,
            seconds_per_metric: 5,
            ..Results::default()
        };
        for v in [100.0, 110.0, 90.0] {
            r.add(Case::Routed, Metric::KeepAlive, v * 1000.0);
            r.add(Case::Sticky, Metric::KeepAlive, v * 990.0);
            r.add(Case::Nftables, Metric::KeepAlive, v * 900.0);
        }
        r.fixed_rate = 1000.0;
        for (case, reached) in [
            (Case::Routed, 1.0),
            (Case::Sticky, 0.99),
            (Case::Nftables, 0.5),
        ] {
            r.add(case, Metric::P50, 80.0);
            r.add(case, Metric::RateReached, reached);
        }
        let http = r.ebpf.entry("http".into()).or_default();
        http.add("sticky_ingress", 6000, 100);
        http.add("sticky_egress", 4000, 100);
        r.machine = Machine {
            cpu: "Test CPU".into(),
            vcpus: 2,
            kernel: "6.18".into(),
            date: "2026-01-01 00:00 UTC".into(),
        };
        r.hash = Some("| scheme |".into());
        r.testrun = [(Timed::EstablishedRepeated, 70.0), (Timed::Pass, 40.0)]
            .into_iter()
            .map(|(t, ns)| Cost {
                what: t.what(PROG_INGRESS),
                ns,
            })
            .collect();
        let md = markdown(&r, "latest.png");
        assert!(
            md.contains(
                "- eBPF per packet under the case's traffic: 50 ns (meets the ≤ 350 ns target)"
            ),
            "{md}"
        );
        assert!(
            md.contains("not ours, both repeated: 1.75× (above the ≤ 1.4× target)"),
            "{md}"
        );
        assert!(
            md.contains("| `sticky_ingress`, established flow (rewrite), ×100000 | 70 |"),
            "{md}"
        );
        assert!(md.contains("![bench](latest.png)"), "{md}");
        assert!(md.contains("### Hash and table\n\n| scheme |"), "{md}");
        assert!(
            md.contains("Machine: Test CPU, 2 vCPUs, Linux 6.18"),
            "{md}"
        );
        assert!(md.contains("99.0k (89.1k–108.9k) **0.99×**"), "{md}");
        assert!(md.contains("| – | 50 |"), "{md}");
        assert!(
            md.contains(
                "**50 ns** on average; per program `sticky_egress` 40, `sticky_ingress` 60"
            ),
            "{md}"
        );
        assert!(
            md.contains("- keep-alive req/s: 0.990× (meets) routed, 1.100× (meets) nftables"),
            "{md}"
        );
        assert!(
            md.contains("- bulk Gbit/s, 1 stream: not measured routed"),
            "{md}"
        );
        assert!(md.contains("| 80.0 **1.00×** ‡ | 80.0 **1.00×** |"), "{md}");
        assert!(
            md.contains(
                "(median share reached of the requests/s asked: nftables jhash 50% of 1000)"
            ),
            "{md}"
        );
        assert!(!md.contains('§'), "no HTTP proxy, no rate of theirs: {md}");
    }

    /// The HTTP proxies' latency is measured at a share of HAProxy http's capacity: their
    /// fixed-rate cells are compared with HAProxy http's, and marked.
    #[test]
    fn http_proxies_latency_is_compared_at_their_own_rate() {
        let mut r = Results {
            rounds: 1,
            seconds_per_metric: 1,
            fixed_rate: 50_000.0,
            proxy_rate: 20_000.0,
            rate_from_capacity: true,
            ..Results::default()
        };
        for (case, p99, reached) in [
            (Case::Routed, 100.0, 1.0),
            (Case::Sticky, 120.0, 1.0),
            (Case::HaproxyHttp, 400.0, 1.0),
            (Case::StickyProxy, 300.0, 0.5),
        ] {
            r.add(case, Metric::P99, p99);
            r.add(case, Metric::RateReached, reached);
            r.add(case, Metric::KeepAlive, 1000.0);
        }
        assert_eq!(r.base_of(Case::StickyProxy, Metric::P99), Case::HaproxyHttp);
        assert_eq!(
            r.base_of(Case::StickyProxy, Metric::KeepAlive),
            Case::Routed
        );
        assert_eq!(r.base_of(Case::Sticky, Metric::P99), Case::Routed);
        assert_eq!(r.rate_of(Case::StickyProxy), 20_000.0);
        assert_eq!(r.rate_of(Case::Sticky), 50_000.0);
        let md = markdown(&r, "latest.png");
        assert!(
            md.contains("| 100 | 120 **1.20×** | 300 **0.75×** § ‡ | 400 § |"),
            "{md}"
        );
        assert!(
            md.contains(
                "§ the HTTP proxies (per-request routing) at their own fixed rate, 20000 \
                 requests/s (50% of HAProxy http's keep-alive capacity, measured first), the \
                 others at 50000"
            ),
            "{md}"
        );
        assert!(md.contains("sticky proxy, splice 50% of 20000"), "{md}");
        assert!(
            md.contains("the HTTP proxies (per-request routing) at 20000 requests/s"),
            "{md}"
        );
    }

    #[test]
    fn proxy_cases_have_their_targets_and_gaps() {
        let mut r = Results {
            rounds: 1,
            seconds_per_metric: 1,
            ..Results::default()
        };
        for (case, keep_alive, conn, bulk) in [
            (Case::Direct, 100e3, 17e3, 20.0),
            (Case::Routed, 90e3, 13e3, 18.0),
            (Case::Haproxy, 40e3, 7e3, 6.0),
            (Case::StickyProxy, 64e3, 9e3, 10.0),
            (Case::StickyProxyCopy, 66e3, 11e3, 12.0),
        ] {
            r.add(case, Metric::KeepAlive, keep_alive);
            r.add(case, Metric::NewConn, conn);
            r.add(case, Metric::UpgradeBulk1, bulk);
            r.add(case, Metric::UpgradeEcho, 100.0);
            if case.services().contains(&crate::peers::Service::Bulk) {
                r.add(case, Metric::Bulk1, bulk);
            }
        }
        let md = markdown(&r, "latest.png");
        assert!(
            md.contains(
                "- sticky proxy, splice: keep-alive req/s 1.600× (meets) HAProxy; \
                 new-connection req/s 1.286× (below) HAProxy; bulk via upgrade Gbit/s, 1 stream \
                 0.500× (below) direct; bulk via upgrade Gbit/s, 4 streams not measured direct"
            ),
            "{md}"
        );
        assert!(
            md.contains("bulk via upgrade Gbit/s, 1 stream 0.600× direct"),
            "{md}"
        );
        assert!(
            md.contains("- splice ÷ --no-splice (medians): keep-alive req/s ↑ 0.97×"),
            "{md}"
        );
        // Proxy mode has no iperf3 figure: its cells are empty, the others' are not.
        assert!(
            md.contains(
                "| bulk Gbit/s, 1 stream ↑ | 20.00 **1.11×** | 18.00 | 6.00 **0.33×** | – | – |"
            ),
            "{md}"
        );
        assert!(md.contains("**sticky proxy, --no-splice**: `sticky run --proxy --no-splice`"));
    }
}
