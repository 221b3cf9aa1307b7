//! How much one gateway trusts another (paper §II: untrusted gateways are avoided and dismissed).
//! Pure: observations and time come in as arguments.
//!
//! The score is `0.7 * direct + 0.3 * reputation` (only direct when nobody reported):
//! - direct starts at [`INITIAL`] and moves with what this gateway observes itself: every
//!   successful deployment or round of heartbeats on time pulls it up by 10 % of the distance to
//!   1; a failed deployment cuts it by 30 %, a refused one by 10 %, a heartbeat timeout by 20 %;
//! - network quality: the share of recent heartbeats that came on time (a moving average, 1 at
//!   first) scales the score by `0.5 + 0.5 * quality`, so a lossy link alone takes a gateway out
//!   of the allocator's choice (below 0.5) without dismissing it;
//! - reputation is the mean of the scores the other members report for it (each member's report
//!   counts once, the latest; reports from members themselves below the dismissal threshold are
//!   ignored, so a dismissed liar cannot drag others down);
//! - a battery below [`LOW_BATTERY`] halves the score: a new VM would drain it.

use std::collections::BTreeMap;

pub const INITIAL: f64 = 0.8;
pub const LOW_BATTERY: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    DeploySucceeded,
    DeployRefused,
    DeployFailed,
    HeartbeatMissed,
    /// A heartbeat within two intervals of the previous message.
    HeartbeatOnTime,
    /// Heard from only after more than two heartbeat intervals: a lossy or slow link.
    HeartbeatLate,
    /// A whole round of heartbeats on time in a row.
    HeartbeatRound,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trust {
    direct: f64,
    /// Moving average of heartbeats on time (1) and late (0).
    link: f64,
    /// Reporter → score it gave.
    reports: BTreeMap<String, f64>,
    /// Since when the score has been below the dismissal threshold.
    low_since_ms: Option<u64>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            direct: INITIAL,
            link: 1.0,
            reports: BTreeMap::new(),
            low_since_ms: None,
        }
    }
}

impl Trust {
    pub fn observe(&mut self, o: Observation) {
        let d = self.direct;
        match o {
            Observation::DeploySucceeded | Observation::HeartbeatRound => {
                self.direct = d + 0.1 * (1.0 - d)
            }
            Observation::DeployRefused => self.direct = d * 0.9,
            Observation::DeployFailed => self.direct = d * 0.7,
            Observation::HeartbeatMissed => self.direct = d * 0.8,
            Observation::HeartbeatOnTime => self.link += 0.1 * (1.0 - self.link),
            Observation::HeartbeatLate => self.link *= 0.9,
        }
        self.direct = self.direct.clamp(0.0, 1.0);
    }

    /// Network quality, 0..=1.
    pub fn link(&self) -> f64 {
        self.link
    }

    /// A reputation report from `reporter`; non-finite or out-of-range scores are ignored.
    pub fn report(&mut self, reporter: &str, score: f64) {
        if (0.0..=1.0).contains(&score) {
            self.reports.insert(reporter.to_owned(), score);
        }
    }

    pub fn direct(&self) -> f64 {
        self.direct
    }

    /// The combined score; `credible(reporter)` says whether a reporter's word counts.
    pub fn score(&self, battery: Option<f64>, credible: impl Fn(&str) -> bool) -> f64 {
        let counted: Vec<f64> = self
            .reports
            .iter()
            .filter(|(r, _)| credible(r))
            .map(|(_, s)| *s)
            .collect();
        let base = if counted.is_empty() {
            self.direct
        } else {
            0.7 * self.direct + 0.3 * counted.iter().sum::<f64>() / counted.len() as f64
        };
        let base = base * (0.5 + 0.5 * self.link);
        match battery {
            Some(b) if b < LOW_BATTERY => base * 0.5,
            _ => base,
        }
    }

    /// Tracks how long `score` has been below `threshold`; true once it has been for `after_ms`.
    pub fn below_for(&mut self, score: f64, threshold: f64, now_ms: u64, after_ms: u64) -> bool {
        if score >= threshold {
            self.low_since_ms = None;
            return false;
        }
        let since = *self.low_since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(since) >= after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lower_and_successes_raise_the_direct_score() {
        let mut t = Trust::default();
        t.observe(Observation::DeployFailed);
        assert!((t.direct() - 0.56).abs() < 1e-9);
        t.observe(Observation::DeployRefused);
        assert!((t.direct() - 0.504).abs() < 1e-9);
        t.observe(Observation::HeartbeatMissed);
        assert!((t.direct() - 0.4032).abs() < 1e-9);
        for _ in 0..100 {
            t.observe(Observation::DeploySucceeded);
        }
        assert!(t.direct() > 0.99 && t.direct() <= 1.0);
    }

    #[test]
    fn reputation_counts_only_credible_reporters_and_battery_halves() {
        let mut t = Trust::default();
        t.report("a", 0.2);
        t.report("b", 0.4);
        t.report("c", f64::NAN);
        let all = t.score(None, |_| true);
        assert!((all - (0.7 * 0.8 + 0.3 * 0.3)).abs() < 1e-9, "{all}");
        let only_b = t.score(None, |r| r == "b");
        assert!((only_b - (0.7 * 0.8 + 0.3 * 0.4)).abs() < 1e-9);
        assert!((t.score(Some(0.1), |_| false) - 0.4).abs() < 1e-9);
        assert!((t.score(Some(0.5), |_| false) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn a_lossy_link_lowers_the_score_to_at_most_half_and_recovers() {
        let mut t = Trust::default();
        for _ in 0..200 {
            t.observe(Observation::HeartbeatLate);
        }
        let s = t.score(None, |_| false);
        assert!((0.4..0.5).contains(&s), "{s}");
        assert!(
            (t.direct() - INITIAL).abs() < 1e-9,
            "quality is not the direct score"
        );
        for _ in 0..60 {
            t.observe(Observation::HeartbeatOnTime);
        }
        assert!(t.score(None, |_| false) > 0.79);
    }

    #[test]
    fn dismissal_needs_a_low_score_for_the_whole_time() {
        let mut t = Trust::default();
        assert!(!t.below_for(0.2, 0.3, 1000, 5000));
        assert!(!t.below_for(0.2, 0.3, 5999, 5000));
        assert!(t.below_for(0.2, 0.3, 6000, 5000));
        // A recovery resets the clock.
        assert!(!t.below_for(0.5, 0.3, 7000, 5000));
        assert!(!t.below_for(0.2, 0.3, 8000, 5000));
        assert!(t.below_for(0.2, 0.3, 13000, 5000));
    }
}
