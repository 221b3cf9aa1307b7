//! The agent's one MQTT connection: availability with a last will, reconnect with backoff.

use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};

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
    /// The agent's health (uptime, journal depth, dropped, reconnects, per-thing errors).
    pub fn health(&self) -> String {
        format!("{}/health", self.base)
    }
    /// Where command outcomes go: `{"id","ok","state"|"error"}`.
    pub fn thing_result(&self, thing: &str) -> String {
        format!("{}/things/{thing}/result", self.base)
    }
    /// All of this gateway's actuator command topics.
    pub fn set_filter(&self) -> String {
        format!("{}/things/+/set", self.base)
    }
    pub fn base(&self) -> &str {
        &self.base
    }
    pub fn thing_availability(&self, thing: &str) -> String {
        format!("{}/things/{thing}/availability", self.base)
    }
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Largest packet taken from or sent to the broker; a larger incoming one resets the connection
/// (rumqttc), so the instance broker's configuration bounds messages well below it.
pub const MAX_PACKET: usize = 256 * 1024;

/// Requests queued towards the broker before publishers wait: bounds memory while disconnected.
const REQUEST_QUEUE: usize = 256;

/// Reads the TLS files named in the config: errors name the file.
fn tls_transport(tls: &crate::config::Tls) -> Result<Transport, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let ca = read(&tls.ca)?;
    let client_auth = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            crate::config::private_file(key)?;
            Some((read(cert)?, read(key)?))
        }
        _ => None,
    };
    Ok(Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

pub fn connect(config: &Config, topics: &Topics) -> Result<(AsyncClient, EventLoop), String> {
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
    if let Some(tls) = &config.mqtt.tls {
        opts.set_transport(tls_transport(tls)?);
    }
    // A broker with a user per gateway (the instance's broker); the config checks they go together.
    if let (Some(user), Some(file)) = (&config.mqtt.username, &config.mqtt.password_file) {
        opts.set_credentials(user.clone(), crate::config::read_password_file(file)?);
    }
    // Incoming payloads above this are refused by rumqttc (and the connection reset); MQTT things'
    // payloads are capped lower, at things::payload::MAX_PAYLOAD, with a clear error.
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    Ok(AsyncClient::new(opts, REQUEST_QUEUE))
}

pub fn broker(eventloop: &EventLoop) -> String {
    let (host, port) = eventloop.mqtt_options.broker_address();
    format!("{host}:{port}")
}

/// Reconnect delays: 1 s doubling to 30 s, each with jitter so a fleet of gateways does not
/// reconnect in lockstep after a broker restart.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }

    pub fn next(&mut self) -> Duration {
        let d = jitter(self.next);
        self.next = (self.next * 2).min(Duration::from_secs(30));
        d
    }
}

/// 75..125 % of `d`. The clock's sub-second nanos are random enough to spread a fleet.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::default();
        let base = [1, 2, 4, 8, 16, 30, 30];
        for s in base {
            let d = b.next().as_secs_f64();
            assert!(d >= s as f64 * 0.75 && d <= s as f64 * 1.25, "{d} for {s}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(1250));
    }
}
