//! Paced drain: past a drain deadline given a close rate, the removed backend's established
//! flows are ended a few at a time — least recently active first — instead of all at once, so
//! its clients reconnect spread over time rather than in the same second. A flow is ended the
//! way a deadline always ended them: its entries leave the flow table, so its next packet is
//! balanced anew and the new backend resets it.

use std::{collections::VecDeque, net::SocketAddr, time::Instant};

use sticky_common::maps::{Flow, FlowKey};

use crate::status::ClosingStatus;

/// How often the daemon ends the flows that came due: small against a second, so the closes
/// of any one second stay near the rate.
pub(super) const PACE: std::time::Duration = std::time::Duration::from_millis(20);

/// One removed backend whose flows are being ended.
pub(super) struct Closing {
    pub addr: SocketAddr,
    /// Flows per second.
    pub rate: u32,
    started: Instant,
    ended: u64,
    /// Forward entries, least recently active first.
    queue: VecDeque<(FlowKey, Flow)>,
}

impl Closing {
    pub fn new(addr: SocketAddr, rate: u32, mut flows: Vec<(FlowKey, Flow)>, now: Instant) -> Self {
        flows.sort_by_key(|(_, f)| f.touched_ns);
        Self {
            addr,
            rate: rate.max(1),
            started: now,
            ended: 0,
            queue: flows.into(),
        }
    }

    /// The flows due by `now`: as many as the rate allows since the start, less those already
    /// ended. They count as ended once returned.
    pub fn due(&mut self, now: Instant) -> Vec<(FlowKey, Flow)> {
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        let allowed = (elapsed * f64::from(self.rate)).floor() as u64;
        let n = allowed
            .saturating_sub(self.ended)
            .min(self.queue.len() as u64);
        self.ended += n;
        self.queue.drain(..n as usize).collect()
    }

    pub fn done(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn ended(&self) -> u64 {
        self.ended
    }

    /// Seconds the whole queue takes at the rate, from the start.
    pub fn total_secs(&self) -> f64 {
        (self.ended + self.queue.len() as u64) as f64 / f64::from(self.rate)
    }

    pub fn status(&self) -> ClosingStatus {
        ClosingStatus {
            addr: self.addr,
            close_rate: self.rate,
            flows_ended: self.ended,
            flows_left: self.queue.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn flow(touched_ns: u64) -> (FlowKey, Flow) {
        let key = FlowKey {
            sport_be: touched_ns as u16,
            ..FlowKey::default()
        };
        let flow = Flow {
            touched_ns,
            ..Flow::default()
        };
        (key, flow)
    }

    #[test]
    fn flows_come_due_at_the_rate_least_recently_active_first() {
        let start = Instant::now();
        let flows: Vec<_> = (0..120).rev().map(flow).collect();
        let mut c = Closing::new("10.0.0.1:80".parse().unwrap(), 50, flows, start);
        assert_eq!(c.total_secs(), 2.4);
        assert!(c.due(start).is_empty());
        let first = c.due(start + Duration::from_millis(100));
        assert_eq!(first.len(), 5);
        assert_eq!(first[0].1.touched_ns, 0, "least recently active first");
        assert_eq!(first[4].1.touched_ns, 4);
        // Late ticks catch up to the rate, never past it.
        assert_eq!(c.due(start + Duration::from_millis(1000)).len(), 45);
        assert_eq!(c.ended(), 50);
        assert_eq!(c.status().flows_left, 70);
        assert_eq!(c.due(start + Duration::from_secs(10)).len(), 70);
        assert!(c.done());
        assert!(c.due(start + Duration::from_secs(11)).is_empty());
    }
}
