//! Tests that need root: skip without it on a developer's machine, fail without it in CI, so
//! CI can never go green on tests that did not run.

/// What a test that needs root does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// Print why and pass.
    Skip,
    /// Panic: skipping is forbidden here (`CI=true` or `STICKY_REQUIRE_ROOT=1`).
    Fail,
}

/// The decision from whether we are root and the environment (`env("CI")`, …).
pub fn decide(is_root: bool, env: impl Fn(&str) -> Option<String>) -> Decision {
    let required =
        env("CI").as_deref() == Some("true") || env("STICKY_REQUIRE_ROOT").as_deref() == Some("1");
    match (is_root, required) {
        (true, _) => Decision::Run,
        (false, false) => Decision::Skip,
        (false, true) => Decision::Fail,
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `test` runs; `needs` says what root is for. Without root it prints why and returns
/// false, or panics when skipping is forbidden (see [`decide`]).
pub fn root_or_skip_for(test: &str, needs: &str) -> bool {
    match decide(is_root(), |key| std::env::var(key).ok()) {
        Decision::Run => true,
        Decision::Skip => {
            println!("skipped {test}: needs root ({needs})");
            false
        }
        Decision::Fail => panic!(
            "{test} needs root ({needs}) and CI=true or STICKY_REQUIRE_ROOT=1 forbids skipping: \
             run the tests as root"
        ),
    }
}

/// [`root_or_skip_for`] a test that builds network namespaces and loads eBPF.
pub fn root_or_skip(test: &str) -> bool {
    root_or_skip_for(test, "network namespaces, eBPF")
}

/// Raises this process's open-file limit to at least `wanted` (within the hard limit);
/// panics when it cannot.
pub fn raise_fd_limit(wanted: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_cur.max(wanted.min(lim.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= wanted,
        "open-file limit {} below {wanted}",
        lim.rlim_cur
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn root_always_runs() {
        for vars in [&[][..], &[("CI", "true")], &[("STICKY_REQUIRE_ROOT", "1")]] {
            assert_eq!(decide(true, env(vars)), Decision::Run, "{vars:?}");
        }
    }

    #[test]
    fn without_root_skips_unless_required() {
        assert_eq!(decide(false, env(&[])), Decision::Skip);
        assert_eq!(decide(false, env(&[("CI", "true")])), Decision::Fail);
        assert_eq!(
            decide(false, env(&[("STICKY_REQUIRE_ROOT", "1")])),
            Decision::Fail
        );
        // Only the exact values require root.
        for vars in [
            &[("CI", "false")][..],
            &[("CI", "")],
            &[("STICKY_REQUIRE_ROOT", "0")],
        ] {
            assert_eq!(decide(false, env(vars)), Decision::Skip, "{vars:?}");
        }
    }
}
