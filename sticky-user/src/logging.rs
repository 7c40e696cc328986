//! What the process writes for people and log collectors: `tracing` events on stderr and the
//! operator lines (`sticky ready …`, reloads, health transitions) on stdout, in one of two
//! formats. `text` is for people. `json` (`--log-format json`) makes every line of both
//! streams one JSON object whose first keys are always `ts` (RFC 3339, UTC), `level`
//! (`error`…`trace`), `target` (the module, or `sticky` for operator lines) and `msg`,
//! followed by the event's own fields.

use std::{
    fmt::{self, Write as _},
    io::Write as _,
    sync::OnceLock,
};

use serde::Deserialize;
use serde_json::Value;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::Writer,
        time::{FormatTime as _, SystemTime},
    },
    registry::LookupSpan,
};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, with the keys ts, level, target and msg first.
    Json,
}

/// Keys every JSON line starts with; an event field of the same name is left out.
pub const FIXED_KEYS: [&str; 4] = ["ts", "level", "target", "msg"];

/// Target of the operator lines and of [`complain`].
const TARGET: &str = "sticky";

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Sets up `tracing` on stderr (`warn`, `info` with `-v`, `debug` with `-vv`; `RUST_LOG`
/// overrides) in `format`, which [`say`] and [`complain`] follow too. Call once, first.
pub fn init(verbose: u8, format: LogFormat) {
    let _ = FORMAT.set(format);
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// A line for operators (and tests) on stdout, flushed: as is, or as a JSON line at `info`
/// whose `msg` is the line. Not filtered by verbosity.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = match format() {
        LogFormat::Text => writeln!(out, "{line}"),
        LogFormat::Json => writeln!(out, "{}", json_line(Level::INFO, TARGET, line, [])),
    };
    let _ = out.flush();
}

/// A line on stderr outside `tracing` (the last word of a failed command, or a warning that
/// must show at any verbosity): `sticky: [error: ]MSG`, or a JSON line at `level`.
pub fn complain(level: Level, msg: &str) {
    match format() {
        LogFormat::Text if level == Level::ERROR => eprintln!("sticky: error: {msg}"),
        LogFormat::Text => eprintln!("sticky: {msg}"),
        LogFormat::Json => eprintln!("{}", json_line(level, TARGET, msg, [])),
    }
}

/// One JSON object: the fixed keys in order, then `fields` (minus any named like a fixed key).
fn json_line<'a>(
    level: Level,
    target: &str,
    msg: &str,
    fields: impl IntoIterator<Item = (&'a str, Value)>,
) -> String {
    let mut ts = String::new();
    // Writing into a String does not fail.
    let _ = SystemTime.format_time(&mut Writer::new(&mut ts));
    let level = level.as_str().to_ascii_lowercase();
    let mut line = String::from("{");
    for (i, (key, value)) in FIXED_KEYS
        .iter()
        .zip([&ts, &level, target, msg])
        .enumerate()
    {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(line, "{sep}{}:{}", Value::from(*key), Value::from(value));
    }
    for (key, value) in fields {
        if !FIXED_KEYS.contains(&key) {
            let _ = write!(line, ",{}:{value}", Value::from(key));
        }
    }
    line.push('}');
    line
}

/// `tracing` events as [`json_line`]s.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let target = fields.log_target.as_deref().unwrap_or(meta.target());
        let line = json_line(*meta.level(), target, &fields.msg, fields.rest);
        writeln!(writer, "{line}")
    }
}

/// An event's message and fields; records bridged from the `log` crate give their target
/// (`log.target`) and drop their other `log.` fields, as the text format does.
#[derive(Default)]
struct Fields {
    msg: String,
    log_target: Option<String>,
    rest: Vec<(&'static str, Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.msg = match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                }
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            name if name.starts_with("log.") => {}
            name => self.rest.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    fn parse(line: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("{line:?} is not a JSON object: {other:?}"),
        }
    }

    #[test]
    fn lines_start_with_the_fixed_keys() {
        let line = json_line(
            Level::WARN,
            "sticky::x",
            "a \"quoted\"\nline",
            [
                ("addr", Value::from("10.0.0.1:80")),
                ("msg", Value::from(1)),
                ("n", 3.into()),
            ],
        );
        let keys: Vec<&str> = line
            .trim_matches(['{', '}'])
            .split(',')
            .filter_map(|kv| kv.split_once(':')?.0.strip_prefix('"')?.strip_suffix('"'))
            .collect();
        assert_eq!(keys[..4], FIXED_KEYS);
        let map = parse(&line);
        assert_eq!(map["level"], "warn");
        assert_eq!(map["target"], "sticky::x");
        assert_eq!(map["msg"], "a \"quoted\"\nline");
        assert_eq!(map["addr"], "10.0.0.1:80");
        assert_eq!(map["n"], 3);
        assert_eq!(map.len(), 6, "{line}");
        let ts = map["ts"].as_str().unwrap();
        assert!(
            ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn tracing_events_become_json_lines() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_max_level(Level::DEBUG)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let err = std::io::Error::other("boom");
            tracing::warn!(%err, peer = "10.0.0.9:1234", tries = 3_u64, ok = false, "metrics {}", "connection");
            tracing::debug!(target: "aya::maps", "plain");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().map(parse).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let warn = &lines[0];
        assert_eq!(warn["level"], "warn");
        assert_eq!(warn["target"], module_path!());
        assert_eq!(warn["msg"], "metrics connection");
        assert_eq!(warn["err"], "boom");
        assert_eq!(warn["peer"], "10.0.0.9:1234");
        assert_eq!(warn["tries"], 3);
        assert_eq!(warn["ok"], false);
        assert_eq!(
            (&lines[1]["target"], &lines[1]["msg"]),
            (&"aya::maps".into(), &"plain".into())
        );
    }

    #[test]
    fn format_names() {
        #[derive(Deserialize)]
        struct Key {
            f: LogFormat,
        }
        let f = |text| toml::from_str::<Key>(text).map(|k| k.f);
        assert_eq!(f("f = \"json\"").unwrap(), LogFormat::Json);
        assert_eq!(f("f = \"text\"").unwrap(), LogFormat::Text);
        assert!(f("f = \"yaml\"").is_err());
    }
}
