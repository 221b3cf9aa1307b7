//! Actuators: commands on `<prefix>/<gateway>/things/<id>/set` are validated, applied once per
//! command id, and answered on `…/<id>/result`; the resulting state is published (retained) on
//! `…/<id>/state`. Device I/O runs off the async runtime.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::clock::unix_millis;
use crate::config::Thing;
use crate::things::command::{self, CommandValue, Dedup};
use crate::things::device;
use crate::things::spec::{Actuator, NumberRange, Run};
use crate::things::status::ThingStatus;

/// Commands queued per actuator; more are answered as rejected by the router.
pub const QUEUE: usize = 16;

/// An opened actuator and its driver's accepted range.
struct Device {
    dev: Box<dyn Actuator>,
    range: Option<NumberRange>,
    unit: &'static str,
}

impl Device {
    fn open(thing: &Thing) -> Result<Device, String> {
        let info = thing.driver.info();
        let Run::Actuate(open) = info.run else {
            return Err(format!("driver {} is not an actuator", info.name));
        };
        Ok(Device {
            dev: open(&device::opening(thing)?)?,
            range: info.range,
            unit: info.unit(),
        })
    }

    /// The device's current state as published.
    fn state(&mut self) -> Result<Value, String> {
        self.dev.state()
    }

    /// A number outside the driver's range is refused before the device sees it.
    fn apply(&mut self, value: &CommandValue) -> Result<Value, String> {
        if let (Some(r), CommandValue::Number(c)) = (self.range, value) {
            if !r.contains(*c) {
                return Err(format!(
                    "{c} {u} is outside {}..={} {u}",
                    r.min,
                    r.max,
                    u = self.unit
                ));
            }
        }
        self.dev.apply(value)
    }
}

/// Serves one actuator until its command channel closes.
pub async fn serve(
    status: Arc<ThingStatus>,
    things: Arc<Vec<Thing>>,
    i: usize,
    mut commands: mpsc::Receiver<Vec<u8>>,
) {
    let id = things[i].id.to_string();
    let retry = things[i].interval_ms.0;
    let mut device: Option<Device> = None;
    let mut dedup = Dedup::default();
    let mut announced = false;
    loop {
        // Open (or reopen after a failure) and announce the state; then wait for a command, or
        // retry the device after its interval.
        if device.is_none() || !announced {
            let things2 = things.clone();
            let mut d = device.take();
            let opened = tokio::task::spawn_blocking(move || {
                let mut dev = match d.take() {
                    Some(dev) => dev,
                    None => Device::open(&things2[i])?,
                };
                let state = dev.state()?;
                Ok::<_, String>((dev, state))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match opened {
                Ok((dev, state)) => {
                    device = Some(dev);
                    announced = true;
                    status.publish_state(&id, &state, None);
                    status.outcome(std::slice::from_ref(&id), &Ok(()), retry);
                }
                Err(e) => status.outcome(std::slice::from_ref(&id), &Err(e), retry),
            }
        }
        let payload = if device.is_some() {
            match commands.recv().await {
                Some(p) => p,
                None => return,
            }
        } else {
            tokio::select! {
                p = commands.recv() => match p { Some(p) => p, None => return },
                _ = tokio::time::sleep(retry) => continue,
            }
        };
        let things2 = things.clone();
        let mut d = device.take();
        let mut memo = std::mem::take(&mut dedup);
        let (outcome, applied, d, memo) = tokio::task::spawn_blocking(move || {
            let (outcome, applied) =
                command::process(&mut memo, &payload, |value| match d.as_mut() {
                    Some(dev) => dev.apply(value),
                    None => Err(format!(
                        "device unavailable ({})",
                        things2[i]
                            .device
                            .as_deref()
                            .map_or(String::new(), |p| p.display().to_string())
                    )),
                });
            (outcome, applied, d, memo)
        })
        .await
        .unwrap_or_else(|e| {
            (
                command::Outcome::rejected(None, e),
                false,
                None,
                Dedup::default(),
            )
        });
        device = d;
        dedup = memo;
        if outcome.ok {
            if applied {
                info!(thing = %id, command = ?outcome.id, state = ?outcome.state, "applied");
                if let Some(state) = &outcome.state {
                    status.publish_state(&id, state, outcome.id.as_deref());
                }
            }
        } else {
            warn!(thing = %id, command = ?outcome.id, "rejected: {}", outcome.error.as_deref().unwrap_or(""));
            status.count_error(&id);
            // A device error (not a bad command) closes the device: reopen before the next one.
            if applied {
                device = None;
                announced = false;
            }
        }
        status.publish_result(&id, &outcome.to_json());
    }
}

/// `<prefix>/<gw>/things/<id>/set` → `<id>`, if the topic is a set topic of this gateway.
pub fn set_target<'a>(base: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(base)?
        .strip_prefix("/things/")?
        .strip_suffix("/set")
        .filter(|id| !id.contains('/'))
}

pub fn state_payload(thing: &str, state: &Value, command: Option<&str>) -> String {
    json!({"thing": thing, "value": state, "ts": unix_millis(), "command": command}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_topics_are_recognised_only_for_this_gateway() {
        assert_eq!(
            set_target("betaas/gw", "betaas/gw/things/relay1/set"),
            Some("relay1")
        );
        assert_eq!(
            set_target("betaas/gw", "betaas/gw2/things/relay1/set"),
            None
        );
        assert_eq!(set_target("betaas/gw", "betaas/gw/things/a/b/set"), None);
        assert_eq!(
            set_target("betaas/gw", "betaas/gw/things/relay1/state"),
            None
        );
    }
}
