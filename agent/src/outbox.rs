//! Which broker acknowledgement belongs to which journal record. Pure bookkeeping, no I/O.
//!
//! rumqttc numbers QoS 1 publishes (packet ids) only when its event loop sends them, and reports
//! `Outgoing::Publish(pkid)` then, in the order the requests were queued. So every QoS 1 publish is
//! queued together with a tag (the journal cursor, or `None` for availability, discovery and command
//! results), and the n-th new packet id belongs to the n-th queued tag. After a reconnect rumqttc
//! resends unacknowledged publishes under their old packet ids: those are already mapped and take no
//! new tag. The journal is acknowledged only up to the oldest record still waiting, so a record is
//! never dropped from the journal before the broker has it, whatever order the PUBACKs come in.

use std::collections::{BTreeMap, VecDeque};

use crate::journal::Cursor;

#[derive(Debug, Default)]
pub struct Outbox {
    /// Tags of queued publishes not yet given a packet id, in queue order.
    queued: VecDeque<Option<Cursor>>,
    /// Packet id → tag, for publishes sent and not yet acknowledged.
    inflight: BTreeMap<u16, Option<Cursor>>,
    /// Journal records sent, in journal order, with whether the broker acknowledged them.
    records: VecDeque<(Cursor, bool)>,
}

impl Outbox {
    /// A QoS 1 publish was queued on the client (in the same critical section as the queueing).
    pub fn queued(&mut self, tag: Option<Cursor>) {
        if let Some(c) = tag {
            self.records.push_back((c, false));
        }
        self.queued.push_back(tag);
    }

    /// The event loop sent a publish with this packet id. QoS 0 publishes carry id 0 and no tag.
    pub fn sent(&mut self, pkid: u16) {
        if pkid == 0 || self.inflight.contains_key(&pkid) {
            return; // QoS 0, or a retransmission after reconnect
        }
        if let Some(tag) = self.queued.pop_front() {
            self.inflight.insert(pkid, tag);
        }
    }

    /// The broker acknowledged `pkid`. Returns the cursor the journal may now be acknowledged up to,
    /// when it moved.
    pub fn acked(&mut self, pkid: u16) -> Option<Cursor> {
        let cursor = self.inflight.remove(&pkid)??;
        if let Some(slot) = self.records.iter_mut().find(|(c, _)| *c == cursor) {
            slot.1 = true;
        }
        let mut upto = None;
        while let Some(&(c, true)) = self.records.front() {
            upto = Some(c);
            self.records.pop_front();
        }
        upto
    }

    /// Journal records queued or in flight, not yet acknowledged.
    pub fn records_pending(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(i: u64) -> Cursor {
        Cursor {
            segment: 0,
            offset: 100 + i * 10,
            index: i,
        }
    }

    #[test]
    fn acks_in_order_advance_one_by_one() {
        let mut o = Outbox::default();
        o.queued(Some(cur(1)));
        o.queued(Some(cur(2)));
        o.sent(1);
        o.sent(2);
        assert_eq!(o.acked(1), Some(cur(1)));
        assert_eq!(o.acked(2), Some(cur(2)));
        assert_eq!(o.records_pending(), 0);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_oldest() {
        let mut o = Outbox::default();
        for i in 1..=3 {
            o.queued(Some(cur(i)));
            o.sent(i as u16);
        }
        assert_eq!(o.acked(3), None);
        assert_eq!(o.acked(2), None);
        assert_eq!(o.acked(1), Some(cur(3)));
    }

    #[test]
    fn untagged_publishes_take_their_packet_ids() {
        let mut o = Outbox::default();
        o.queued(None); // availability
        o.queued(Some(cur(1)));
        o.sent(7);
        o.sent(8);
        assert_eq!(o.acked(7), None);
        assert_eq!(o.records_pending(), 1);
        assert_eq!(o.acked(8), Some(cur(1)));
    }

    #[test]
    fn retransmissions_and_qos0_take_no_tag() {
        let mut o = Outbox::default();
        o.queued(Some(cur(1)));
        o.queued(Some(cur(2)));
        o.sent(1);
        o.sent(0); // a QoS 0 health message
        o.sent(1); // resent after reconnect
        o.sent(2);
        assert_eq!(o.acked(2), None);
        assert_eq!(o.acked(1), Some(cur(2)));
    }

    #[test]
    fn unknown_and_duplicate_acks_are_ignored() {
        let mut o = Outbox::default();
        o.queued(Some(cur(1)));
        o.sent(5);
        assert_eq!(o.acked(9), None);
        assert_eq!(o.acked(5), Some(cur(1)));
        assert_eq!(o.acked(5), None);
    }

    #[test]
    fn random_ack_orders_never_ack_past_a_waiting_record() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..200 {
            let n = rng.usize(1..40);
            let mut o = Outbox::default();
            for i in 0..n {
                if rng.bool() {
                    o.queued(None);
                    o.sent((1000 + i) as u16);
                }
                o.queued(Some(cur(i as u64)));
                o.sent((1 + i) as u16);
            }
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut done = vec![false; n];
            let mut last = None;
            for i in order {
                done[i] = true;
                if let Some(c) = o.acked((1 + i) as u16) {
                    let k = c.index as usize;
                    assert!(
                        done[..=k].iter().all(|d| *d),
                        "seed {seed}: acked past a waiting record"
                    );
                    assert!(last < Some(c), "seed {seed}: ack went back");
                    last = Some(c);
                }
            }
            assert_eq!(last, Some(cur(n as u64 - 1)), "seed {seed}");
        }
    }
}
