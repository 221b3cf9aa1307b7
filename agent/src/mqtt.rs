//! The agent's one MQTT connection: availability with a last will, reconnect with backoff.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tracing::{info, warn};

use crate::config::Config;

/// Topic names under `<prefix>/<gateway>/`.
#[derive(Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(config: &Config) -> Topics {
        Topics {
            base: format!("{}/{}", config.mqtt.prefix, config.gateway_id),
        }
    }
    /// The gateway's own availability: `online` while connected, `offline` by will or on shutdown.
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }
    pub fn thing_state(&self, thing: &str) -> String {
        format!("{}/things/{thing}/state", self.base)
    }
    pub fn thing_availability(&self, thing: &str) -> String {
        format!("{}/things/{thing}/availability", self.base)
    }
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Requests queued towards the broker before publishers wait: bounds memory while disconnected.
const REQUEST_QUEUE: usize = 64;

pub fn connect(config: &Config, topics: &Topics) -> (AsyncClient, EventLoop) {
    let client_id = config
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("betaas-{}", config.gateway_id));
    let mut opts = MqttOptions::new(client_id, config.mqtt.host.clone(), config.mqtt.port);
    opts.set_keep_alive(config.mqtt.keep_alive_secs.0);
    opts.set_last_will(LastWill::new(
        topics.availability(),
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    AsyncClient::new(opts, REQUEST_QUEUE)
}

/// Drives the connection forever. Announces `online` after every (re)connect; logs once per change
/// between connected and each distinct failure; backs off 1 s doubling to 30 s, with jitter so a
/// fleet of gateways does not reconnect in lockstep after a broker restart.
pub async fn drive(mut eventloop: EventLoop, client: AsyncClient, topics: Topics) {
    let mut backoff = Duration::from_secs(1);
    let mut last_error: Option<String> = None;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %broker(&eventloop), "connected");
                last_error = None;
                backoff = Duration::from_secs(1);
                // try_publish: the event loop itself drains this queue, so waiting here could deadlock.
                if let Err(e) =
                    client.try_publish(topics.availability(), QoS::AtLeastOnce, true, ONLINE)
                {
                    warn!("cannot queue availability: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!(broker = %broker(&eventloop), "mqtt connection: {msg}; retrying");
                    last_error = Some(msg);
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

fn broker(eventloop: &EventLoop) -> String {
    let (host, port) = eventloop.mqtt_options.broker_address();
    format!("{host}:{port}")
}

/// 75..125 % of `d`. The clock's sub-second nanos are random enough to spread a fleet.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
}
