//! The observability pack against the real daemon: every metric the Grafana dashboard and the
//! Prometheus rules use is in a live `/metrics` scrape, promtool accepts the rules, their unit
//! tests, the example config, the dashboard's queries and the scrape, a real Prometheus
//! scrapes the daemon and evaluates the rules; `--log-format json` makes every output line a
//! JSON object with the fixed keys.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{args_with, assign, backend, ok, scrape, sticky_bin, write_config};
use serde_json::Value;
use sticky::logging::FIXED_KEYS;
use sticky_tests::{StickyProcess, Topology, root_or_skip, unique_name};

const METRICS: &str = "127.0.0.1:9464";

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `promtool ARGS` with `stdin`; panics with its output unless it succeeds. promtool comes
/// from Debian's `prometheus` package (`cargo xtask setup` installs it).
fn promtool(args: &[&str], dir: &Path, stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("run promtool: {e}: install Debian's prometheus (`cargo xtask setup`)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write promtool's stdin");
    let out = child.wait_with_output().expect("promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Metric names in PromQL (or any text): identifiers starting with `sticky_`, outside quoted
/// strings.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = promql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            let mut escaped = false;
            for d in chars.by_ref() {
                match d {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    d if d == c => break,
                    _ => {}
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut ident = c.to_string();
            while let Some(&d) = chars.peek() {
                if !(d.is_ascii_alphanumeric() || d == '_' || d == ':') {
                    break;
                }
                ident.push(d);
                chars.next();
            }
            if ident.starts_with("sticky_") {
                names.insert(ident);
            }
        } else if c.is_ascii_digit() {
            // A number such as 1e3 or 0x1f: not the start of a name.
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.')
            {
                chars.next();
            }
        }
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_queries() -> Vec<String> {
    let path = deploy("grafana/sticky.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).expect("dashboard JSON");
    assert!(
        dashboard["schemaVersion"].as_u64() >= Some(36),
        "schemaVersion"
    );
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("panel title");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            queries.push(expr.to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        queries.push(
            variable["definition"]
                .as_str()
                .expect("definition")
                .to_string(),
        );
    }
    queries
}

/// The dashboard's queries as Grafana sends them (variables at their "All" value), as
/// recording rules promtool can check.
fn dashboard_as_rules(queries: &[String]) -> String {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries
        .iter()
        .filter(|q| !q.starts_with("label_values("))
        .enumerate()
    {
        let expr = q
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        let expr = serde_json::to_string(&expr).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {expr}\n"
        ));
    }
    rules
}

/// Names in the dashboard's queries, the alerting rules and the rules' unit tests.
fn names_used() -> BTreeSet<String> {
    let mut used: BTreeSet<String> = dashboard_queries()
        .iter()
        .flat_map(|q| metric_names(q))
        .collect();
    for file in ["prometheus/alerts.yml", "prometheus/alerts_test.yml"] {
        used.extend(metric_names(&read(&deploy(file))));
    }
    used
}

#[test]
fn tokenizer_finds_names_outside_strings() {
    let names = metric_names(
        r#"sum by (result) (rate(sticky_packets_total{result=~"sticky_no\"x"}[5m])) / 1e3
           + sticky_map_entries / on (map) sticky_map_max_entries > 0.9 and up"#,
    );
    let want = [
        "sticky_map_entries",
        "sticky_map_max_entries",
        "sticky_packets_total",
    ];
    assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), want);
}

/// Needs no daemon: promtool checks the rules, runs their unit tests and parses every
/// dashboard query.
#[test]
fn rules_and_dashboard_queries_are_valid() {
    let dir = deploy("prometheus");
    let out = promtool(&["check", "rules", "alerts.yml"], &dir, "");
    assert!(out.contains("SUCCESS"), "{out}");
    promtool(&["test", "rules", "alerts_test.yml"], &dir, "");
    promtool(&["check", "config", "prometheus.yml"], &dir, "");
    let rules = dashboard_as_rules(&dashboard_queries());
    let file = std::env::temp_dir().join(unique_name("dashboard") + ".yml");
    std::fs::write(&file, &rules).expect("write rules");
    let checked = promtool(&["check", "rules", &file.display().to_string()], &dir, "");
    let _ = std::fs::remove_file(&file);
    assert!(checked.contains("SUCCESS"), "{checked}\n{rules}");
    let used = names_used();
    for family in [
        "sticky_backend_new_flows_total",
        "sticky_map_entries",
        "sticky_packets_total",
    ] {
        assert!(used.contains(family), "{family} not found in {used:?}");
    }
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    if !root_or_skip("dashboard_and_alerts_use_only_exported_metrics") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("obsmetrics", 3, 20).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let args = args_with(&topo, &[0, 1, 2], &["--metrics", METRICS]);
    let _daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let _ = assign(&topo, 0..20, 2, false);
    std::thread::sleep(Duration::from_millis(1200)); // rates and snapshots refresh every second

    let response = scrape(&topo, METRICS);
    let (head, body) = response.split_once("\r\n\r\n").expect("response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l == "Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let exported: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let used = names_used();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nscrape:\n{body}"
    );
    // Traffic shows: 20 clients, 2 connections each.
    let new_flows: u64 = body
        .lines()
        .filter(|l| l.starts_with("sticky_backend_new_flows_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(new_flows, 40, "{body}");
    assert!(
        body.contains(r#"sticky_map_entries{map="flows"}"#),
        "{body}"
    );
    // promtool lints names, types and help; it prints nothing when all is well.
    let lint = promtool(&["check", "metrics"], &deploy("prometheus"), body);
    assert!(lint.trim().is_empty(), "promtool check metrics:\n{lint}");

    // A real Prometheus scrapes it and evaluates every alert rule without an error.
    let prometheus = Prometheus::start(&topo);
    let deadline = Instant::now() + Duration::from_secs(30);
    let backends = loop {
        let answer = prometheus.get(&topo, "/api/v1/query?query=count(sticky_backend_up)");
        let value = answer
            .as_ref()
            .and_then(|a| a["data"]["result"][0]["value"][1].as_str());
        if let Some(n) = value {
            break n.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no sticky_backend_up: {answer:?}; targets: {:?}",
            prometheus.get(&topo, "/api/v1/targets")
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(backends, "3");
    loop {
        let rules = prometheus.get(&topo, "/api/v1/rules").expect("rules");
        let health: Vec<&Value> = rules["data"]["groups"][0]["rules"]
            .as_array()
            .map(|r| r.iter().map(|r| &r["health"]).collect())
            .unwrap_or_default();
        assert!(!health.iter().any(|h| *h == "err"), "a rule fails: {rules}");
        if health.len() == 5 && health.iter().all(|h| *h == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated: {rules}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A Prometheus (Debian's) in the lb namespace, scraping [`METRICS`] every second with the
/// alert rules loaded; killed, by its PID, and its data removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    const LISTEN: &str = "127.0.0.1:9090";

    fn start(topo: &Topology) -> Self {
        let dir = std::env::temp_dir().join(unique_name("prometheus"));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        std::fs::copy(deploy("prometheus/alerts.yml"), dir.join("alerts.yml")).expect("copy rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: sticky\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let log = std::fs::File::create(dir.join("log")).expect("prometheus log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", topo.lb.path()))
            .arg("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={}", Self::LISTEN))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start prometheus: {e}: install Debian's prometheus"));
        Self { child, dir }
    }

    /// `GET path` on its API from inside the namespace: the JSON answer, or None until it
    /// listens.
    fn get(&self, topo: &Topology, path: &str) -> Option<Value> {
        let path = path.replace('(', "%28").replace(')', "%29");
        let raw = topo
            .lb
            .run(|| {
                let mut s = TcpStream::connect(Self::LISTEN).ok()?;
                let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
                s.write_all(request.as_bytes()).ok()?;
                let mut raw = String::new();
                s.read_to_string(&mut raw).ok()?;
                Some(raw)
            })
            .expect("lb namespace")?;
        serde_json::from_str(raw.split_once("\r\n\r\n")?.1).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every line is a JSON object whose first keys are the fixed ones, all strings.
fn assert_json_line(line: &str) -> serde_json::Map<String, Value> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        panic!("not a JSON object: {line:?}");
    };
    for key in FIXED_KEYS {
        assert!(
            map.get(key).is_some_and(Value::is_string),
            "no string {key} in {line}"
        );
    }
    assert!(line.starts_with(r#"{"ts":""#), "{line}");
    map
}

/// Needs no root: a command line refused before anything loads says why in one JSON line.
#[test]
fn json_error_line() {
    let out = Command::new(sticky_bin())
        .args(["run", "--log-format", "json", "--vip", "192.0.2.1:80"])
        .output()
        .expect("run sticky");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = assert_json_line(lines[0]);
    assert_eq!(
        (&line["level"], &line["target"]),
        (&"error".into(), &"sticky".into())
    );
    assert!(
        line["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("no interface")),
        "{stderr}"
    );
}

#[test]
fn json_log_lines_all_parse() {
    if !root_or_skip("json_log_lines_all_parse") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("obslog", 3, 10).expect("topology");
    let mut servers = topo.start_backends().expect("backends");
    let config = std::env::temp_dir().join(unique_name("obslog") + ".toml");
    let write = |backends: &[usize], extra: &str| {
        write_config(
            &config,
            &format!("log-format = \"json\"\n{extra}"),
            backends,
        );
    };
    // The format comes from the file's key, read before logging starts.
    write(&[0, 1, 2], "");
    let health = [
        "--health-check",
        "tcp",
        "--health-interval",
        "300ms",
        "--health-timeout",
        "200ms",
        "--health-fall",
        "2",
        "--health-rise",
        "2",
        "-vv",
        "--config",
    ];
    let mut args = args_with(&topo, &[], &health);
    args.push(config.display().to_string());
    let mut daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let mut lines = vec![daemon.ready_line.clone()];
    let _ = assign(&topo, 0..10, 1, false);
    let wait = Duration::from_secs(10);

    // A health transition, a drain that runs out, a refused and an applied reload, a stop.
    drop(servers.remove(2));
    lines.push(daemon.wait_for("is down", wait).expect("health transition"));
    ok(
        &daemon.ctl(&bin, &["backend", "drain", &backend(1), "--deadline", "1s"]),
        "drain",
    );
    lines.push(
        daemon
            .wait_for("drain deadline", wait)
            .expect("drain deadline"),
    );
    write(&[0, 1, 2], "bogus = 1\n");
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    lines.push(
        daemon
            .wait_for("reload refused", wait)
            .expect("refused reload"),
    );
    write(&[0, 2], "");
    daemon.signal(libc::SIGHUP).expect("SIGHUP");
    lines.push(daemon.wait_for("sticky reloaded", wait).expect("reload"));
    daemon.signal(libc::SIGTERM).expect("SIGTERM");
    lines.push(daemon.wait_for("sticky stopped", wait).expect("stop"));
    // Whatever else it wrote, up to the end of both streams.
    let end = daemon
        .wait_for("\u{0}never printed", wait)
        .expect_err("streams end");
    assert!(end.to_string().contains("exited"), "{end:#}");
    lines.append(&mut daemon.log);
    let _ = std::fs::remove_file(&config);

    let parsed: Vec<_> = lines.iter().map(|l| assert_json_line(l)).collect();
    let has = |level: &str, msg: &str| {
        parsed
            .iter()
            .any(|m| m["level"] == level && m["msg"].as_str().is_some_and(|s| s.contains(msg)))
    };
    for (level, msg) in [
        ("info", "sticky ready: vip"),
        ("info", "is down, out of the table"),
        ("info", "drain deadline of"),
        ("warn", "reload refused"),
        ("info", "sticky reloaded: 2 backends"),
        ("info", "sticky stopped"),
        // A tracing event that -vv lets through (the drain's).
        ("info", "draining"),
    ] {
        assert!(
            has(level, msg),
            "no {level} line with {msg:?} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        parsed.iter().any(|m| m["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("sticky::"))),
        "no line from a sticky module"
    );
}
