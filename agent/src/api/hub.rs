//! What the API shows live: the recent readings of each thing (a bounded ring, [`Ring`]), the
//! actuators' last states, and the events streamed on `GET /api/v1/events` (readings, actuator
//! states and command results, instance member changes, VM results).
//!
//! The agent calls the hooks ([`reading`], [`state`], [`result`], [`member`], [`vm_result`])
//! whether or not the API runs: without [`init`] they return at once. They never block on a
//! client: a slow event stream lags and is told so, the readings themselves are in the journal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

/// One reading as kept for the API (the journal keeps the same, durably, until published).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub value: f64,
    pub unit: String,
    pub ts: u64,
    pub seq: u64,
}

/// The last `cap` readings of one thing, oldest first. Pure.
#[derive(Debug, Clone)]
pub struct Ring {
    cap: usize,
    items: VecDeque<Reading>,
}

impl Ring {
    pub fn new(cap: usize) -> Ring {
        Ring {
            cap: cap.max(1),
            items: VecDeque::new(),
        }
    }

    pub fn push(&mut self, r: Reading) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(r);
    }

    pub fn last(&self) -> Option<&Reading> {
        self.items.back()
    }

    /// The newest `limit` readings with `ts > since` (all when `since` is `None`), oldest first.
    pub fn query(&self, since: Option<u64>, limit: usize) -> Vec<Reading> {
        let newer: Vec<&Reading> = self
            .items
            .iter()
            .filter(|r| since.is_none_or(|s| r.ts > s))
            .collect();
        let skip = newer.len().saturating_sub(limit);
        newer.into_iter().skip(skip).cloned().collect()
    }
}

/// One server-sent event: its name and its JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: String,
}

impl Event {
    /// The event in the `text/event-stream` format (data is one line of JSON).
    pub fn sse(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.name, self.data)
    }
}

/// Events buffered per stream before a slow client lags (it is told how many it missed).
const EVENTS: usize = 256;

struct Hub {
    cap: usize,
    tx: broadcast::Sender<Arc<Event>>,
    readings: Mutex<BTreeMap<String, Ring>>,
    states: Mutex<BTreeMap<String, Value>>,
    /// Commands from the API waiting for their result, by command id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
}

static HUB: OnceLock<Hub> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts keeping `readings` readings per thing. Once; later calls change nothing.
pub fn init(readings: usize) {
    let (tx, _) = broadcast::channel(EVENTS);
    let _ = HUB.set(Hub {
        cap: readings,
        tx,
        readings: Mutex::new(BTreeMap::new()),
        states: Mutex::new(BTreeMap::new()),
        waiting: Mutex::new(HashMap::new()),
    });
}

fn send(h: &Hub, name: &'static str, data: Value) {
    // No receiver: nobody is streaming; not an error.
    let _ = h.tx.send(Arc::new(Event {
        name,
        data: data.to_string(),
    }));
}

/// A reading, once journaled.
pub fn reading(thing: &str, value: f64, unit: &str, ts: u64, seq: u64) {
    let Some(h) = HUB.get() else { return };
    let r = Reading {
        value,
        unit: unit.to_owned(),
        ts,
        seq,
    };
    lock(&h.readings)
        .entry(thing.to_owned())
        .or_insert_with(|| Ring::new(h.cap))
        .push(r);
    send(
        h,
        "reading",
        json!({"thing": thing, "value": value, "unit": unit, "ts": ts, "seq": seq}),
    );
}

/// An actuator's state, as retained on its state topic.
pub fn state(thing: &str, value: &Value, command: Option<&str>, ts: u64) {
    let Some(h) = HUB.get() else { return };
    let v = json!({"thing": thing, "value": value, "ts": ts, "command": command});
    lock(&h.states).insert(thing.to_owned(), v.clone());
    send(h, "state", v);
}

/// A command's outcome (`{"id","ok","state"|"error"}`), from MQTT or the API.
pub fn result(thing: &str, outcome_json: &str) {
    let Some(h) = HUB.get() else { return };
    let outcome: Value = serde_json::from_str(outcome_json).unwrap_or(Value::Null);
    if let Some(id) = outcome["id"].as_str() {
        if let Some(tx) = lock(&h.waiting).remove(id) {
            let _ = tx.send(outcome.clone());
        }
    }
    send(h, "result", json!({"thing": thing, "outcome": outcome}));
}

/// An instance member joined, came back, left, went down or was dismissed.
pub fn member(gateway: &str, change: &str) {
    let Some(h) = HUB.get() else { return };
    send(h, "member", json!({"gateway": gateway, "change": change}));
}

/// A VM request's result (the `vm/result` object).
pub fn vm_result(payload: &Value) {
    let Some(h) = HUB.get() else { return };
    send(h, "vm", payload.clone());
}

pub fn subscribe() -> Option<broadcast::Receiver<Arc<Event>>> {
    HUB.get().map(|h| h.tx.subscribe())
}

/// The recent readings of `thing` (see [`Ring::query`]); `None` when none was kept.
pub fn recent(thing: &str, since: Option<u64>, limit: usize) -> Option<Vec<Reading>> {
    let h = HUB.get()?;
    lock(&h.readings).get(thing).map(|r| r.query(since, limit))
}

pub fn last(thing: &str) -> Option<Reading> {
    let h = HUB.get()?;
    lock(&h.readings).get(thing).and_then(|r| r.last().cloned())
}

pub fn last_state(thing: &str) -> Option<Value> {
    let h = HUB.get()?;
    lock(&h.states).get(thing).cloned()
}

/// Registers a command id before its command is queued: the receiver gets its outcome.
pub fn expect_result(id: &str) -> Option<oneshot::Receiver<Value>> {
    let h = HUB.get()?;
    let (tx, rx) = oneshot::channel();
    let mut w = lock(&h.waiting);
    // Waiters whose client gave up are dropped here, so the map stays small.
    w.retain(|_, tx| !tx.is_closed());
    w.insert(id.to_owned(), tx);
    Some(rx)
}

/// Forgets a command id whose outcome will not come (the command was not queued).
pub fn forget(id: &str) {
    if let Some(h) = HUB.get() {
        lock(&h.waiting).remove(id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(ts: u64, seq: u64) -> Reading {
        Reading {
            value: seq as f64,
            unit: "C".into(),
            ts,
            seq,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_answers_since_and_limit() {
        let mut ring = Ring::new(3);
        assert!(ring.query(None, 10).is_empty());
        for i in 1..=5 {
            ring.push(r(i * 10, i));
        }
        let seqs = |v: Vec<Reading>| v.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(ring.query(None, 10)), [3, 4, 5]);
        assert_eq!(seqs(ring.query(None, 2)), [4, 5], "limit keeps the newest");
        assert_eq!(seqs(ring.query(Some(30), 10)), [4, 5], "since is exclusive");
        assert_eq!(seqs(ring.query(Some(50), 10)), Vec::<u64>::new());
        assert_eq!(seqs(ring.query(Some(0), 0)), Vec::<u64>::new());
        assert_eq!(ring.last().unwrap().seq, 5);
    }

    #[test]
    fn a_ring_of_zero_keeps_one() {
        let mut ring = Ring::new(0);
        ring.push(r(1, 1));
        ring.push(r(2, 2));
        assert_eq!(ring.query(None, 9), vec![r(2, 2)]);
    }

    #[test]
    fn an_event_is_one_sse_frame() {
        let e = Event {
            name: "reading",
            data: json!({"a": "x\ny"}).to_string(),
        };
        assert_eq!(e.sse(), "event: reading\ndata: {\"a\":\"x\\ny\"}\n\n");
    }
}
