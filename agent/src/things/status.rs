//! Each published thing's counters and availability, shared by the pollers, the MQTT-thing router
//! and the actuators. An availability change is retained state: republished on every connect.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tracing::{info, warn};

use crate::mqtt::{self, Topics};
use crate::session::Session;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ThingHealth {
    pub readings: u64,
    pub errors: u64,
    pub available: Option<bool>,
}

pub struct ThingStatus {
    pub session: Session,
    pub topics: Topics,
    things: Mutex<BTreeMap<String, ThingHealth>>,
}

impl ThingStatus {
    pub fn new(session: Session, topics: Topics) -> ThingStatus {
        ThingStatus {
            session,
            topics,
            things: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ThingHealth>> {
        self.things.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn count_error(&self, thing: &str) {
        self.lock().entry(thing.to_owned()).or_default().errors += 1;
    }

    /// Records a thing's outcome; publishes its availability and logs when it changes.
    pub fn outcome(&self, ids: &[String], result: &Result<(), String>, retry: Duration) {
        for id in ids {
            let changed = {
                let mut things = self.lock();
                let h = things.entry(id.clone()).or_default();
                match result {
                    Ok(()) => h.readings += 1,
                    Err(_) => h.errors += 1,
                }
                let now = result.is_ok();
                let changed = h.available != Some(now);
                h.available = Some(now);
                changed
            };
            if changed {
                match result {
                    Ok(()) => info!(thing = %id, "available"),
                    Err(msg) => warn!(thing = %id, "unavailable: {msg}; retrying every {retry:?}"),
                }
                let avail = if result.is_ok() {
                    mqtt::ONLINE
                } else {
                    mqtt::OFFLINE
                };
                self.session
                    .set_retained(&self.topics.thing_availability(id), avail);
            }
        }
    }

    /// An actuator's state, retained on its state topic.
    pub fn publish_state(&self, thing: &str, state: &serde_json::Value, command: Option<&str>) {
        let payload = crate::actuators::state_payload(thing, state, command);
        self.session
            .set_retained(&self.topics.thing_state(thing), payload);
        crate::api::hub::state(thing, state, command, crate::clock::unix_millis());
    }

    /// A command's outcome on the thing's result topic (kept for the broker if it is away).
    pub fn publish_result(&self, thing: &str, outcome_json: &str) {
        self.session
            .publish_event(&self.topics.thing_result(thing), outcome_json);
        crate::api::hub::result(thing, outcome_json);
    }

    pub fn snapshot(&self) -> BTreeMap<String, ThingHealth> {
        self.lock().clone()
    }
}
