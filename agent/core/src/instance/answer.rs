//! When a member answers a join request with its announce. Pure: the clock and the jitter are
//! arguments.
//!
//! A member that (re)joins publishes a signed `Join`; every member that is up answers with its
//! announce, so the newcomer learns them within a moment even on a broker that does not deliver
//! retained announces to a wildcard subscriber. Each answer is delayed by a random jitter (the
//! members do not all publish in the same millisecond) and answers are rate-limited: at most one
//! per `min_gap_ms`, however many joins arrive (several members restarting together, or one
//! member sending joins in a loop). A join that arrives while an answer is pending is served by
//! that answer: the announce goes to everyone. A join that arrives within `min_gap_ms` of the
//! last answer gets one more answer when the gap is over, never none: its sender may have
//! subscribed after the last one went out.

/// The answer schedule of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    min_gap_ms: u64,
    /// When the last announce went out (an answer or any other).
    last_ms: Option<u64>,
    /// When the pending answer is due.
    due_ms: Option<u64>,
}

/// What a join request changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    /// An answer is now due at this time (wake up then and call [`Answers::due`]).
    At(u64),
    /// An answer was already pending, due at this time; it serves this join too.
    Pending(u64),
}

impl Answers {
    pub fn new(min_gap_ms: u64) -> Answers {
        Answers {
            min_gap_ms,
            last_ms: None,
            due_ms: None,
        }
    }

    /// A join request (or a newcomer's first announce) accepted at `now_ms`; `jitter_ms` drawn
    /// by the caller.
    pub fn requested(&mut self, now_ms: u64, jitter_ms: u64) -> Scheduled {
        if let Some(due) = self.due_ms {
            return Scheduled::Pending(due);
        }
        let earliest = self
            .last_ms
            .map_or(0, |l| l.saturating_add(self.min_gap_ms));
        let due = now_ms.saturating_add(jitter_ms).max(earliest);
        self.due_ms = Some(due);
        Scheduled::At(due)
    }

    /// Whether the pending answer is due at `now_ms`; if so it counts as sent.
    pub fn due(&mut self, now_ms: u64) -> bool {
        match self.due_ms {
            Some(d) if d <= now_ms => {
                self.due_ms = None;
                self.last_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }

    /// This member announced for another reason at `now_ms` (connect, a change, the periodic
    /// announce): a pending answer is served by it.
    pub fn announced(&mut self, now_ms: u64) {
        self.due_ms = None;
        self.last_ms = Some(now_ms);
    }

    /// When the pending answer is due, if any.
    pub fn pending(&self) -> Option<u64> {
        self.due_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_is_answered_after_its_jitter() {
        let mut a = Answers::new(1000);
        assert_eq!(a.requested(5000, 120), Scheduled::At(5120));
        assert!(!a.due(5119));
        assert!(a.due(5120));
        assert!(!a.due(5121), "answered once");
        assert_eq!(a.pending(), None);
    }

    #[test]
    fn joins_while_an_answer_is_pending_share_it() {
        let mut a = Answers::new(1000);
        assert_eq!(a.requested(0, 200), Scheduled::At(200));
        for t in [10, 50, 199] {
            assert_eq!(a.requested(t, 0), Scheduled::Pending(200));
        }
        assert!(a.due(200));
    }

    #[test]
    fn answers_are_at_most_one_per_gap_and_a_late_join_is_still_answered() {
        let mut a = Answers::new(1000);
        a.requested(0, 0);
        assert!(a.due(0));
        // A join 300 ms after the answer: its sender may have missed it, so one more, after
        // the gap.
        assert_eq!(a.requested(300, 50), Scheduled::At(1000));
        assert!(!a.due(999));
        assert!(a.due(1000));
        // A flood of joins, one every 10 ms for 10 s: one answer per second at most.
        let mut sent = 0;
        for t in (1000..11_000).step_by(10) {
            a.requested(t, 7);
            if a.due(t) {
                sent += 1;
            }
        }
        assert!(sent <= 10, "{sent} answers in 10 s");
        assert!(sent >= 9, "{sent} answers in 10 s: joins must not starve");
    }

    #[test]
    fn another_announce_serves_a_pending_answer_and_counts_for_the_gap() {
        let mut a = Answers::new(1000);
        a.requested(0, 300);
        a.announced(100);
        assert_eq!(a.pending(), None);
        assert!(!a.due(300));
        assert_eq!(a.requested(200, 0), Scheduled::At(1100));
    }

    #[test]
    fn jitter_beyond_the_gap_is_kept() {
        let mut a = Answers::new(100);
        assert_eq!(a.requested(0, 250), Scheduled::At(250));
        assert!(a.due(250));
        assert_eq!(a.requested(260, 250), Scheduled::At(510));
    }
}
