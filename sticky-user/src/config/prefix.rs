//! `--affinity-prefix V4LEN,V6LEN`: how much of a client's address makes its key for hashing
//! and affinity (`sticky_common::client_key`).

use std::{fmt, str::FromStr};

use sticky_common::defaults::{DEFAULT_AFFINITY_PREFIX_V4, DEFAULT_AFFINITY_PREFIX_V6};

/// Prefix lengths of the client key, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityPrefix {
    pub v4: u8,
    pub v6: u8,
}

impl Default for AffinityPrefix {
    fn default() -> Self {
        Self {
            v4: DEFAULT_AFFINITY_PREFIX_V4,
            v6: DEFAULT_AFFINITY_PREFIX_V6,
        }
    }
}

impl fmt::Display for AffinityPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.v4, self.v6)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "affinity-prefix '{0}' must be V4LEN,V6LEN with V4LEN 1-32 and V6LEN 1-128 (e.g. 24,64; \
     default 32,128)"
)]
pub struct PrefixError(pub String);

impl FromStr for AffinityPrefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PrefixError(s.to_string());
        let (v4, v6) = s.split_once(',').ok_or_else(bad)?;
        let len = |t: &str, max: u8| {
            t.trim()
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(bad)
        };
        Ok(Self {
            v4: len(v4, 32)?,
            v6: len(v6, 128)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_lengths_and_refuses_the_rest() {
        let p: AffinityPrefix = "24,64".parse().unwrap();
        assert_eq!((p.v4, p.v6), (24, 64));
        assert_eq!(p.to_string(), "24,64");
        assert_eq!(AffinityPrefix::default().to_string(), "32,128");
        for bad in ["24", "33,64", "24,129", "0,64", "x,64", "24,64,1", ""] {
            assert!(bad.parse::<AffinityPrefix>().is_err(), "{bad}");
        }
    }
}
