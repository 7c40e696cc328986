//! `sticky check-config FILE` (as `nginx -t`, `haproxy -c`): the checks `sticky run --config`
//! makes before it touches the kernel, and nothing else: no root, no bpffs, no maps, no files.
//!
//! Interfaces that do not exist here are a warning, not an error: a file is often prepared on
//! another host (a build box, CI) than the one that runs it, and `sticky run` still refuses an
//! unknown interface where it runs.

use std::path::{Path, PathBuf};

use crate::config::{Config, Layer};

#[derive(clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML file `sticky run --config FILE` would read.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// What is wrong, where: printed as `FILE:LINE: FIELD: MESSAGE` (parts not known are left out).
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let file = args.file.display();
    match check(&args.file) {
        Ok((config, warnings)) => {
            for w in warnings {
                eprintln!("{file}: warning: {w}");
            }
            println!("{file}: ok: {}", summary(&config));
            Ok(())
        }
        Err(f) => {
            let line = f.line.map(|l| format!(":{l}")).unwrap_or_default();
            let field = f.field.map(|k| format!(" {k}:")).unwrap_or_default();
            // One line per finding, even for parse errors that come on several.
            let message = f.message.lines().collect::<Vec<_>>().join("; ");
            eprintln!("{file}{line}:{field} {message}");
            std::process::exit(1)
        }
    }
}

fn summary(c: &Config) -> String {
    let vips: Vec<String> = c.vips.iter().map(ToString::to_string).collect();
    let mut s = format!(
        "vip {} on {} -> {} backends (instance {}, table {} slots",
        vips.join(","),
        c.ifaces.join(","),
        c.backends.len(),
        c.instance,
        c.table_size
    );
    if !c.dns.is_empty() {
        let sources: Vec<String> = c.dns.iter().map(ToString::to_string).collect();
        s.push_str(&format!(", more from {}", sources.join(", ")));
    }
    if let Some(p) = &c.proxy {
        s.push_str(&format!(", proxy on {}", p.listen));
    }
    if let Some(m) = c.metrics {
        s.push_str(&format!(", metrics on {m}"));
    }
    s.push(')');
    s
}

/// The configuration the file describes on its own and the warnings about this host, or the
/// first thing wrong with it.
pub fn check(path: &Path) -> Result<(Config, Vec<String>), Finding> {
    let text = std::fs::read_to_string(path).map_err(|e| Finding {
        line: None,
        field: None,
        message: format!("cannot read: {e}"),
    })?;
    let entries = entries(&text);
    let layer = Layer::from_file(path).map_err(|e| syntax_finding(&e.to_string(), &entries))?;
    let config = layer
        .validate()
        .map_err(|e| semantic_finding(&e.to_string(), &entries))?;
    let warnings = match config.check_host() {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{e} (`sticky run` here would refuse it)")],
    };
    Ok((config, warnings))
}

/// Parse errors already say `line N: …`: keep the line, name the key written on it.
fn syntax_finding(message: &str, entries: &[Entry]) -> Finding {
    let found = message.match_indices("line ").find_map(|(at, _)| {
        let rest = &message[at + 5..];
        let (n, msg) = rest.split_once(": ")?;
        Some((n.parse::<usize>().ok()?, msg))
    });
    match found {
        Some((line, msg)) => Finding {
            line: Some(line),
            field: entries
                .iter()
                .find(|e| e.line == line)
                .map(|e| e.key.clone()),
            message: msg.to_string(),
        },
        None => Finding {
            line: None,
            field: None,
            message: message.to_string(),
        },
    }
}

/// Validation errors name a value or a key but no line: find the line that holds it.
fn semantic_finding(message: &str, entries: &[Entry]) -> Finding {
    let (line, field) = match locate(message, entries) {
        Some(e) => (Some(e.line), Some(e.key.clone())),
        // A key missing from the file has no line; the message names its flag.
        None => (None, flag_named(message)),
    };
    Finding {
        line,
        field,
        message: message.to_string(),
    }
}

/// The first `sticky run` flag `--NAME` the message mentions, as the key `NAME`.
fn flag_named(message: &str) -> Option<String> {
    use clap::CommandFactory as _;
    let cli = super::Cli::command();
    let run = cli.find_subcommand("run")?;
    run.get_arguments()
        .filter_map(|a| a.get_long())
        .filter_map(|name| {
            let flag = format!("--{name}");
            let at = message
                .match_indices(&flag)
                .find(|(at, _)| has_word(&message[*at..], &flag))?;
            Some((at.0, name.to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

fn locate<'a>(message: &str, entries: &'a [Entry]) -> Option<&'a Entry> {
    let exact = |e: &&Entry| e.literals.iter().any(|l| has_word(message, l));
    // `10.0.0.1:80@2` is reported as the address `10.0.0.1:80` when it is a duplicate.
    let address = |e: &&Entry| {
        e.literals
            .iter()
            .filter_map(|l| l.split_once('@').map(|(a, _)| a))
            .any(|a| has_word(message, a))
    };
    let named = |e: &Entry| names_key(message, &e.key) > 0;
    let mut by_value: Vec<&Entry> = entries.iter().filter(exact).collect();
    by_value.extend(entries.iter().filter(address));
    // A value can appear under several keys (a backend and its health override): prefer the
    // key the message names.
    if by_value.iter().any(|e| named(e)) {
        by_value.retain(|e| named(e));
    }
    if message.starts_with("duplicate") {
        // The second occurrence is the one to remove.
        return by_value.into_iter().max_by_key(|e| e.line);
    }
    if let Some(e) = by_value.first() {
        return Some(e);
    }
    // `no backends: give at least one --backend …`: that key's line, if the file has one.
    if let Some(flag) = flag_named(message) {
        return entries.iter().find(|e| e.key == flag);
    }
    // The most specific mention wins, then the longest key, then the first line.
    entries.iter().filter(|e| named(e)).min_by_key(|e| {
        let rank = names_key(message, &e.key);
        (std::cmp::Reverse((rank, e.key.len())), e.line)
    })
}

/// How specifically `message` names `key` as a whole word: 3 as `proxy.listen`, 2 as
/// `listen`, 1 as its table `proxy`, 0 not at all.
fn names_key(message: &str, key: &str) -> u8 {
    let bare = key.rsplit('.').next().unwrap_or(key);
    let table = key.split('.').next().unwrap_or(key);
    let named = |k: &str| has_word(message, k);
    if named(key) {
        3
    } else if named(bare) {
        2
    } else if named(table) {
        1
    } else {
        0
    }
}

/// Whether `word` occurs in `text` and not as part of a longer name or number (`lo` is not in
/// `flows`, `10.0.0.1:80` is not in `10.0.0.1:8080`).
fn has_word(text: &str, word: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    !word.is_empty()
        && text.match_indices(word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(inner) && !after.is_some_and(inner)
        })
}

/// One line of the file: the key it belongs to (dotted with its table) and the values on it.
#[derive(Debug)]
struct Entry {
    line: usize,
    key: String,
    literals: Vec<String>,
}

/// A line-oriented reading of TOML, enough to map a key or value back to its line; the real
/// parse is the `toml` crate's.
fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut table = String::new();
    let mut key = String::new();
    let mut depth = 0i32;
    for (i, raw) in text.lines().enumerate() {
        let (code, literals) = split_strings(raw);
        let trimmed = code.trim();
        if trimmed.is_empty() {
            continue;
        }
        let mut values = literals.clone();
        if depth <= 0 && trimmed.starts_with('[') {
            let name = raw.trim().trim_start_matches('[');
            let name = name.split(']').next().unwrap_or(name).trim();
            table = name.split('.').next().unwrap_or(name).replace('"', "");
            let rest: Vec<&str> = name.splitn(2, '.').collect();
            key = match rest.get(1) {
                Some(sub) => format!("{table}.{}", sub.split('.').next().unwrap_or(sub)),
                None => table.clone(),
            };
            out.push(Entry {
                line: i + 1,
                key: key.clone(),
                literals,
            });
            continue;
        }
        let value = if depth <= 0 {
            let Some((k, v)) = code.split_once('=') else {
                continue;
            };
            let k = k.trim().trim_matches('"');
            key = if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            };
            v
        } else {
            code.as_str()
        };
        depth += value.matches('[').count() as i32 - value.matches(']').count() as i32;
        values.extend(
            value
                .split(|c: char| c.is_whitespace() || "[]{},=".contains(c))
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
        out.push(Entry {
            line: i + 1,
            key: key.clone(),
            literals: values,
        });
    }
    out
}

/// The line with its quoted strings blanked and comments cut, and the strings' contents.
fn split_strings(line: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut strings = Vec::new();
    let mut quote: Option<(char, String)> = None;
    for c in line.chars() {
        match &mut quote {
            Some((q, s)) if c == *q => {
                strings.push(std::mem::take(s));
                quote = None;
                code.push(' ');
            }
            Some((_, s)) => s.push(c),
            None if c == '"' || c == '\'' => quote = Some((c, String::new())),
            None if c == '#' => break,
            None => code.push(c),
        }
    }
    (
        code,
        strings.into_iter().filter(|s| !s.is_empty()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# comment with "10.0.1.1:80"
iface = ["eth0"]
vip = ["10.0.0.1:80"]
backend = [
  "10.0.1.1:80",
  "10.0.1.2:80@2",   # second
]
table-size = 65537
[health]
check = "tcp"
[health.backends."10.0.1.2:80"]
check = "http:/healthz"
"#;

    fn at(message: &str) -> (Option<usize>, Option<String>) {
        let f = semantic_finding(message, &entries(FILE));
        (f.line, f.field)
    }

    #[test]
    fn values_and_keys_map_back_to_their_lines() {
        let line = |n: usize, k: &str| (Some(n), Some(k.to_string()));
        assert_eq!(
            at("backend '10.0.1.2:80@2': weight must be …"),
            line(6, "backend")
        );
        assert_eq!(at("duplicate backend 10.0.1.2:80"), line(6, "backend"));
        assert_eq!(at("vip '10.0.0.1:80' is odd"), line(3, "vip"));
        assert_eq!(
            at("table-size 65537 must be a prime"),
            line(8, "table-size")
        );
        assert_eq!(at("health.check 'x': must be …"), line(10, "health.check"));
        assert_eq!(at("no such thing"), (None, None));
        let missing = semantic_finding(
            "no backends: give at least one --backend ADDR:PORT[@WEIGHT]",
            &entries("iface = [\"eth0\"]\n[health.backends.\"10.0.0.1:80\"]\ncheck = \"tcp\"\n"),
        );
        assert_eq!(
            (missing.line, missing.field.as_deref()),
            (None, Some("backend"))
        );
    }

    #[test]
    fn parse_errors_keep_their_line_and_name_the_key() {
        let f = syntax_finding(
            "config file x.toml: line 8: invalid type: string",
            &entries(FILE),
        );
        assert_eq!(f.line, Some(8));
        assert_eq!(f.field.as_deref(), Some("table-size"));
        assert_eq!(f.message, "invalid type: string");
    }

    #[test]
    fn strings_and_comments() {
        let (code, s) = split_strings(r#"a = ["x#y", 'z'] # "not""#);
        assert_eq!(s, ["x#y", "z"]);
        assert!(!code.contains("not"));
    }
}
