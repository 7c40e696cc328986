//! Slow start (`--slow-start DURATION`): a backend that joins or comes back up takes its share
//! of new clients gradually. Its table weight steps each second so that its *share* of the
//! table grows linearly from 0 to what it has at full weight; the other backends keep their
//! weights (scaled alike), and clients' affinity decides before the table, so affine clients
//! of other backends never move because of a ramp.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::backends::BackendSet;

/// Every weight is multiplied by this during a ramp, so a share can be set finely; scaling
/// all weights alike leaves the table as it was.
const SCALE: u64 = 1000;

/// How far a ramp that began at `since` is at `now`: 0 at the start, 1 once `window` passed.
pub(super) fn progress(since: Instant, now: Instant, window: Duration) -> f64 {
    if window.is_zero() {
        return 1.0;
    }
    (now.saturating_duration_since(since).as_secs_f64() / window.as_secs_f64()).min(1.0)
}

/// `set` with the table weights that give each ramping backend (id → progress) that fraction
/// of the table share it has at full weight. Several ramps at once are each measured against
/// the backends not ramping.
pub(super) fn ramped(set: &BackendSet, ramps: &BTreeMap<u32, f64>) -> BackendSet {
    let members = set.members();
    let steady: u64 = members
        .iter()
        .filter(|m| !ramps.contains_key(&m.id))
        .map(|m| u64::from(m.weight) * SCALE)
        .sum();
    let mut out = set.clone();
    out.map_weights(|id, weight| {
        let full = u64::from(weight) * SCALE;
        let Some(&progress) = ramps.get(&id) else {
            return full as u32;
        };
        if steady == 0 {
            return full as u32;
        }
        let share = progress * full as f64 / (full + steady) as f64;
        (share * steady as f64 / (1.0 - share))
            .round()
            .min(full as f64) as u32
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{addr::BackendSpec, table};

    fn set(list: &[&str]) -> BackendSet {
        let specs: Vec<BackendSpec> = list.iter().map(|s| s.parse().unwrap()).collect();
        let mut set = BackendSet::default();
        set.reconcile(&specs).unwrap();
        set
    }

    fn share(set: &BackendSet, id: u32) -> f64 {
        let t = table::build(&set.members(), 65_537, 0);
        t.iter().filter(|&&x| x == id).count() as f64 / t.len() as f64
    }

    #[test]
    fn the_share_grows_linearly_to_the_full_one() {
        let s = set(&["10.0.0.1:80", "10.0.0.2:80@2", "10.0.0.3:80"]);
        let full = share(&s, 2);
        for p in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let got = share(&ramped(&s, &[(2, p)].into()), 2);
            assert!(
                (got - p * full).abs() < 0.01,
                "progress {p}: share {got}, want {}",
                p * full
            );
        }
        // Done, or no ramp: the very same table as without slow start.
        let plain = table::build(&s.members(), 65_537, 0);
        assert_eq!(
            table::build(&ramped(&s, &[(2, 1.0)].into()).members(), 65_537, 0),
            plain
        );
        assert_eq!(
            table::build(&ramped(&s, &BTreeMap::new()).members(), 65_537, 0),
            plain
        );
    }

    #[test]
    fn progress_is_linear_and_bounded() {
        let t0 = Instant::now();
        let w = Duration::from_secs(10);
        assert_eq!(progress(t0, t0, w), 0.0);
        assert_eq!(progress(t0, t0 + Duration::from_secs(5), w), 0.5);
        assert_eq!(progress(t0, t0 + Duration::from_secs(50), w), 1.0);
        assert_eq!(progress(t0, t0, Duration::ZERO), 1.0);
    }
}
