//! The rise/fall tracker that turns probe results into up/down transitions the way
//! HAProxy does.

/// A change of a backend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Turns probe results into transitions with HAProxy's rise/fall rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Tracker {
    /// Starts healthy, as HAProxy does, so enabling checks never empties the table at once.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise,
            fall,
            healthy: true,
            streak: 0,
        }
    }

    /// Records one probe result; returns the transition it completes, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Passive evidence that the backend is dead (it refused connections): down at once,
    /// without waiting for `fall` probes; probes bring it back after `rise`.
    pub fn fail_now(&mut self) -> Option<Transition> {
        if !self.healthy {
            return None;
        }
        self.healthy = false;
        self.streak = 0;
        Some(Transition::Down)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_take_a_backend_down_at_once_and_probes_bring_it_back() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.fail_now(), Some(Transition::Down));
        assert_eq!(t.fail_now(), None, "already down");
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
    }

    #[test]
    fn tracker_goes_down_after_fall_consecutive_failures() {
        let mut t = Tracker::new(2, 3);
        let results = [true, false, false, true, false, false, false];
        let got: Vec<_> = results.iter().map(|&ok| t.record(ok)).collect();
        assert_eq!(got[..6], [None; 6]);
        assert_eq!(got[6], Some(Transition::Down));
        assert!(!t.healthy());

        // Rise = 2, and a failure in between starts the count again.
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
        assert!(t.healthy());
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn tracker_starts_healthy_and_reports_each_transition_once() {
        let mut t = Tracker::new(1, 1);
        assert!(t.healthy());
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(Transition::Up));
    }
}
