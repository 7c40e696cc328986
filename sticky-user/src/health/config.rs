//! The `[health]` settings (global, with per-backend overrides) and their validation.

use std::{collections::BTreeMap, net::SocketAddr, ops::RangeInclusive, time::Duration};

use serde::Deserialize;

use crate::{
    addr::{AddrError, parse_endpoint},
    duration::{self, DurationError},
};

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_STATUS: RangeInclusive<u16> = 200..=399;
/// Largest rise or fall: beyond this a backend would take minutes to change state.
pub const MAX_COUNT: u32 = 100;

/// Health settings, each optional: one layer from the command line (`--health-*`), one from
/// the config file's `[health]` table, and per-backend overrides under
/// `[health.backends."ADDR:PORT"]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthLayer {
    /// Health check for every backend: none, tcp or http:/PATH [default: none].
    #[arg(long = "health-check", value_name = "CHECK")]
    pub check: Option<String>,
    #[arg(long = "health-interval", value_name = "DURATION", help = crate::config::with_default(
        "Time between health probes",
        duration::format(DEFAULT_INTERVAL),
    ))]
    pub interval: Option<String>,
    #[arg(long = "health-timeout", value_name = "DURATION", help = crate::config::with_default(
        "How long one probe may take",
        duration::format(DEFAULT_TIMEOUT),
    ))]
    pub timeout: Option<String>,
    #[arg(long = "health-rise", value_name = "HEALTH_RISE", help = crate::config::with_default(
        "Consecutive successes that bring a backend back",
        DEFAULT_RISE,
    ))]
    pub rise: Option<u32>,
    #[arg(long = "health-fall", value_name = "HEALTH_FALL", help = crate::config::with_default(
        "Consecutive failures that take a backend out",
        DEFAULT_FALL,
    ))]
    pub fall: Option<u32>,
    #[arg(long = "health-status", value_name = "RANGE", help = crate::config::with_default(
        "HTTP statuses counted as healthy, like 200-399",
        format!("{}-{}", DEFAULT_STATUS.start(), DEFAULT_STATUS.end()),
    ))]
    pub status: Option<String>,
    /// Overrides keyed by `ADDR:PORT` (config file only); unset fields come from this layer.
    #[arg(skip)]
    #[serde(default)]
    pub backends: BTreeMap<String, HealthLayer>,
}

crate::config::merge_fields!(HealthLayer {
    check,
    interval,
    timeout,
    rise,
    fall,
    status,
    backends,
});

/// How to probe a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect that completes.
    Tcp,
    /// `GET path` answered with a status in `status`.
    Http {
        path: String,
        status: RangeInclusive<u16>,
    },
}

/// A validated check for one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// What valid health settings hold; `None` means the backend is not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthConfig {
    pub global: Option<HealthCheck>,
    pub per_backend: BTreeMap<SocketAddr, Option<HealthCheck>>,
}

impl HealthConfig {
    /// The check for `addr`: its override if it has one, else the global check.
    pub fn for_backend(&self, addr: SocketAddr) -> Option<&HealthCheck> {
        match self.per_backend.get(&addr) {
            Some(own) => own.as_ref(),
            None => self.global.as_ref(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("{field} '{input}': health check must be none, tcp or http:/PATH (like http:/healthz)")]
    Kind { field: String, input: String },
    #[error(
        "{field} '{input}': the HTTP path must start with '/' and be printable ASCII without \
         spaces (like http:/healthz; percent-encode anything else)"
    )]
    Path { field: String, input: String },
    #[error("{field}: {source}")]
    Duration {
        field: String,
        source: DurationError,
    },
    #[error("{field} must be more than 0, like 1s")]
    Zero { field: String },
    #[error(
        "{at}.timeout ({timeout:?}) must be less than {at}.interval ({interval:?}): lower the \
         timeout or raise the interval"
    )]
    TimeoutNotBelowInterval {
        at: String,
        timeout: Duration,
        interval: Duration,
    },
    #[error("{field} = {value}: must be from 1 to {MAX_COUNT}")]
    Count { field: String, value: u32 },
    #[error(
        "{field} '{input}': write a status code or range of codes from 100 to 599, low first, \
         like 200 or 200-399"
    )]
    Status { field: String, input: String },
    #[error("health.backends: {source}")]
    BackendKey { source: AddrError },
    #[error("health.backends has {addr} twice: keep one entry per backend")]
    DuplicateBackend { addr: SocketAddr },
    #[error(
        "health.backends.\"{key}\" has its own backends: put every override directly under \
         [health.backends]"
    )]
    NestedBackends { key: String },
}

impl HealthLayer {
    /// Checks every value, set or inherited, even where the check kind would not use it, so a
    /// typo never hides behind `check = "none"`.
    pub fn validate(&self) -> Result<HealthConfig, HealthError> {
        let global = self.resolve("health")?;
        let inherited = HealthLayer {
            backends: BTreeMap::new(),
            ..self.clone()
        };
        let mut per_backend = BTreeMap::new();
        for (key, layer) in &self.backends {
            let addr = parse_endpoint(key).map_err(|source| HealthError::BackendKey { source })?;
            if !layer.backends.is_empty() {
                return Err(HealthError::NestedBackends { key: key.clone() });
            }
            let check = layer
                .clone()
                .over(inherited.clone())
                .resolve(&format!("health.backends.\"{key}\""))?;
            // Different spellings of one address ("[::1]:80", "[0::1]:80") would silently shadow.
            if per_backend.insert(addr, check).is_some() {
                return Err(HealthError::DuplicateBackend { addr });
            }
        }
        Ok(HealthConfig {
            global,
            per_backend,
        })
    }

    /// This layer alone, with defaults; `at` prefixes field names in errors.
    fn resolve(&self, at: &str) -> Result<Option<HealthCheck>, HealthError> {
        let field = |name: &str| format!("{at}.{name}");
        let duration = |name: &str, value: &Option<String>, default: Duration| match value {
            Some(v) => duration::parse(v).map_err(|source| HealthError::Duration {
                field: field(name),
                source,
            }),
            None => Ok(default),
        };
        let count = |name: &str, value: Option<u32>, default: u32| match value.unwrap_or(default) {
            v @ 1..=MAX_COUNT => Ok(v),
            v => Err(HealthError::Count {
                field: field(name),
                value: v,
            }),
        };

        let interval = duration("interval", &self.interval, DEFAULT_INTERVAL)?;
        let timeout = duration("timeout", &self.timeout, DEFAULT_TIMEOUT)?;
        if timeout.is_zero() {
            return Err(HealthError::Zero {
                field: field("timeout"),
            });
        }
        // A probe outliving its interval would overlap the next one.
        if timeout >= interval {
            return Err(HealthError::TimeoutNotBelowInterval {
                at: at.to_string(),
                timeout,
                interval,
            });
        }
        let rise = count("rise", self.rise, DEFAULT_RISE)?;
        let fall = count("fall", self.fall, DEFAULT_FALL)?;
        let status = match &self.status {
            Some(s) => parse_status(s).ok_or_else(|| HealthError::Status {
                field: field("status"),
                input: s.clone(),
            })?,
            None => DEFAULT_STATUS,
        };
        let check = self.check.as_deref().unwrap_or("none");
        let kind = match check.trim() {
            "none" => return Ok(None),
            "tcp" => CheckKind::Tcp,
            other => match other.strip_prefix("http:") {
                // The path goes into the request line verbatim: spaces or CR/LF would corrupt it.
                Some(path)
                    if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    CheckKind::Http {
                        path: path.to_string(),
                        status,
                    }
                }
                Some(_) => {
                    return Err(HealthError::Path {
                        field: field("check"),
                        input: check.to_string(),
                    });
                }
                None => {
                    return Err(HealthError::Kind {
                        field: field("check"),
                        input: check.to_string(),
                    });
                }
            },
        };
        Ok(Some(HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
        }))
    }
}

/// `200` or `200-399`, codes within 100..=599, low end first.
fn parse_status(input: &str) -> Option<RangeInclusive<u16>> {
    let (lo, hi) = input.split_once('-').unwrap_or((input, input));
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let (lo, hi) = (code(lo)?, code(hi)?);
    (lo <= hi).then_some(lo..=hi)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn layer(check: &str) -> HealthLayer {
        HealthLayer {
            check: Some(check.to_string()),
            ..HealthLayer::default()
        }
    }

    fn err(l: HealthLayer) -> HealthError {
        l.validate().unwrap_err()
    }

    #[test]
    fn defaults_leave_checks_off() {
        let c = HealthLayer::default().validate().unwrap();
        assert_eq!(c, HealthConfig::default());
        assert_eq!(c.for_backend("10.0.0.1:80".parse().unwrap()), None);
    }

    #[test]
    fn defaults_fill_in() {
        let c = layer("http:/healthz").validate().unwrap();
        assert_eq!(
            c.global,
            Some(HealthCheck {
                kind: CheckKind::Http {
                    path: "/healthz".to_string(),
                    status: 200..=399,
                },
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 2,
                fall: 3,
            })
        );
        let single = HealthLayer {
            status: Some("204".to_string()),
            ..layer("http:/")
        };
        let Some(CheckKind::Http { status, .. }) =
            single.validate().unwrap().global.map(|c| c.kind)
        else {
            panic!("expected an HTTP check");
        };
        assert_eq!(status, 204..=204);
    }

    #[test]
    fn bad_values_name_the_field() {
        let msg = |l: HealthLayer| err(l).to_string();
        assert!(msg(layer("udp")).contains("must be none, tcp or http:/PATH"));
        assert!(msg(layer("http")).contains("must be none, tcp or http:/PATH"));
        assert!(matches!(
            err(layer("http:healthz")),
            HealthError::Path { .. }
        ));
        assert!(matches!(err(layer("http:/a b")), HealthError::Path { .. }));
        assert!(matches!(
            err(layer("http:/a\r\nX: y")),
            HealthError::Path { .. }
        ));

        let interval = HealthLayer {
            interval: Some("2 seconds".to_string()),
            ..layer("tcp")
        };
        assert!(msg(interval).starts_with("health.interval: invalid duration"));
        let timeout = HealthLayer {
            timeout: Some("1.5s".to_string()),
            ..layer("tcp")
        };
        assert!(msg(timeout).starts_with("health.timeout: "));
        let zero = HealthLayer {
            timeout: Some("0s".to_string()),
            ..layer("tcp")
        };
        assert!(matches!(err(zero), HealthError::Zero { .. }));
        // The default timeout (1s) is not below this interval.
        let short = HealthLayer {
            interval: Some("1s".to_string()),
            ..layer("tcp")
        };
        assert_eq!(
            err(short),
            HealthError::TimeoutNotBelowInterval {
                at: "health".to_string(),
                timeout: Duration::from_secs(1),
                interval: Duration::from_secs(1),
            }
        );

        for (rise, fall) in [(0, 3), (101, 3), (2, 0), (2, 101)] {
            let l = HealthLayer {
                rise: Some(rise),
                fall: Some(fall),
                ..layer("tcp")
            };
            assert!(matches!(err(l), HealthError::Count { .. }), "{rise} {fall}");
        }
        for bad in ["600-100", "abc", "99", "600", "200-600", "300-200", "", "-"] {
            let l = HealthLayer {
                status: Some(bad.to_string()),
                ..layer("http:/")
            };
            assert!(matches!(err(l), HealthError::Status { .. }), "{bad}");
        }
    }

    #[test]
    fn unused_values_are_still_checked() {
        let l = HealthLayer {
            status: Some("abc".to_string()),
            ..layer("none")
        };
        assert!(matches!(err(l), HealthError::Status { .. }));
    }

    #[test]
    fn overrides_inherit_from_global() {
        let mut global = HealthLayer {
            interval: Some("5s".to_string()),
            fall: Some(5),
            ..layer("http:/healthz")
        };
        global.backends.insert(
            "10.0.0.2:80".to_string(),
            HealthLayer {
                rise: Some(4),
                ..layer("tcp")
            },
        );
        global
            .backends
            .insert("10.0.0.3:80".to_string(), layer("none"));
        let c = global.validate().unwrap();

        let two = c.for_backend("10.0.0.2:80".parse().unwrap()).unwrap();
        assert_eq!(two.kind, CheckKind::Tcp);
        assert_eq!(
            (two.interval, two.rise, two.fall),
            (Duration::from_secs(5), 4, 5)
        );
        assert_eq!(c.for_backend("10.0.0.3:80".parse().unwrap()), None);
        let other = c.for_backend("10.0.0.4:80".parse().unwrap()).unwrap();
        assert_eq!(other, c.global.as_ref().unwrap());
    }

    #[test]
    fn override_can_enable_checks_when_global_is_off() {
        let mut l = HealthLayer::default();
        l.backends.insert("[::1]:80".to_string(), layer("tcp"));
        let c = l.validate().unwrap();
        assert_eq!(c.global, None);
        assert!(c.for_backend("[::1]:80".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_overrides_are_rejected() {
        let with = |key: &str, over: HealthLayer| {
            let mut l = layer("tcp");
            l.backends.insert(key.to_string(), over);
            err(l)
        };
        assert!(matches!(
            with("10.0.0.2", layer("tcp")),
            HealthError::BackendKey {
                source: AddrError::MissingPort { .. }
            }
        ));
        assert!(matches!(
            with("backend-a:80", layer("tcp")),
            HealthError::BackendKey { .. }
        ));
        let mut nested = layer("tcp");
        nested
            .backends
            .insert("10.0.0.3:80".to_string(), layer("tcp"));
        assert!(matches!(
            with("10.0.0.2:80", nested),
            HealthError::NestedBackends { .. }
        ));
        let bad_rise = HealthLayer {
            rise: Some(0),
            ..HealthLayer::default()
        };
        assert_eq!(
            with("10.0.0.2:80", bad_rise).to_string(),
            "health.backends.\"10.0.0.2:80\".rise = 0: must be from 1 to 100"
        );

        let mut twice = layer("tcp");
        twice.backends.insert("[::1]:80".to_string(), layer("tcp"));
        twice
            .backends
            .insert("[0::1]:80".to_string(), layer("none"));
        assert!(matches!(err(twice), HealthError::DuplicateBackend { .. }));
    }

    #[test]
    fn over_prefers_self_and_merges_backends() {
        let mut base = HealthLayer {
            interval: Some("5s".to_string()),
            ..layer("tcp")
        };
        base.backends
            .insert("10.0.0.1:80".to_string(), layer("tcp"));
        base.backends
            .insert("10.0.0.2:80".to_string(), layer("tcp"));
        let mut top = layer("http:/");
        top.backends
            .insert("10.0.0.2:80".to_string(), layer("none"));
        let merged = top.over(base);
        assert_eq!(merged.check.as_deref(), Some("http:/"));
        assert_eq!(merged.interval.as_deref(), Some("5s"));
        assert_eq!(merged.backends.len(), 2);
        assert_eq!(merged.backends["10.0.0.2:80"], layer("none"));
    }

    #[test]
    fn toml_round_trip() {
        let text = r#"
            check = "http:/healthz"
            interval = "5s"
            timeout = "500ms"
            rise = 3
            fall = 2
            status = "200"

            [backends."10.0.0.2:80"]
            check = "tcp"

            [backends."10.0.0.3:80"]
            check = "none"
        "#;
        let l: HealthLayer = toml::from_str(text).unwrap();
        assert_eq!(l.rise, Some(3));
        assert_eq!(l.backends["10.0.0.2:80"], layer("tcp"));
        let c = l.validate().unwrap();
        let g = c.global.as_ref().unwrap();
        assert_eq!(g.timeout, Duration::from_millis(500));
        assert_eq!(
            g.kind,
            CheckKind::Http {
                path: "/healthz".to_string(),
                status: 200..=200,
            }
        );
        let two = c.for_backend("10.0.0.2:80".parse().unwrap()).unwrap();
        assert_eq!((two.kind.clone(), two.fall), (CheckKind::Tcp, 2));
        assert_eq!(c.for_backend("10.0.0.3:80".parse().unwrap()), None);

        assert!(toml::from_str::<HealthLayer>("intervall = \"1s\"").is_err());
        assert!(toml::from_str::<HealthLayer>("[backends.\"10.0.0.2:80\"]\nbogus = 1").is_err());
    }
}
