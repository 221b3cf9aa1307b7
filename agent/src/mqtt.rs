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

/// The broker's nodes as the event loop connects to them: one set of options per node, the same
/// client id, last will, credentials and TLS settings (the CA checks each node's own name).
pub struct Nodes {
    options: Vec<MqttOptions>,
}

impl Nodes {
    /// Options of each node, in the order tried (what [`connect`] builds from the config).
    pub fn new(options: Vec<MqttOptions>) -> Nodes {
        Nodes { options }
    }
    pub fn len(&self) -> usize {
        self.options.len()
    }
    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }
    /// Points the event loop at node `i`: its next connect goes there.
    pub fn select(&self, eventloop: &mut EventLoop, i: usize) {
        if let Some(o) = self.options.get(i) {
            eventloop.mqtt_options = o.clone();
        }
    }
}

/// The client, its event loop (pointed at the first node) and every node's options.
pub fn connect(
    config: &Config,
    topics: &Topics,
) -> Result<(AsyncClient, EventLoop, Nodes), String> {
    let client_id = config
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("betaas-{}", config.gateway_id));
    let transport = match &config.mqtt.tls {
        Some(tls) => Some(tls_transport(tls)?),
        None => None,
    };
    // A broker with a user per gateway (the instance's broker); the config checks they go together.
    let credentials = match (&config.mqtt.username, &config.mqtt.password_file) {
        (Some(user), Some(file)) => Some((user.clone(), crate::config::read_password_file(file)?)),
        _ => None,
    };
    let options: Vec<MqttOptions> = config
        .mqtt
        .nodes
        .iter()
        .map(|node| {
            let mut opts = MqttOptions::new(client_id.clone(), node.host.clone(), node.port);
            opts.set_keep_alive(config.mqtt.keep_alive_secs.0);
            opts.set_last_will(LastWill::new(
                topics.availability(),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
            if let Some(t) = &transport {
                opts.set_transport(t.clone());
            }
            if let Some((user, password)) = &credentials {
                opts.set_credentials(user.clone(), password.clone());
            }
            // Incoming payloads above this are refused by rumqttc (and the connection reset); MQTT
            // things' payloads are capped lower, at things::payload::MAX_PAYLOAD, with a clear error.
            opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            opts
        })
        .collect();
    let first = options
        .first()
        .cloned()
        .ok_or("no broker node configured")?;
    let (client, mut eventloop) = AsyncClient::new(first, REQUEST_QUEUE);
    // TCP, TLS and CONNECT/CONNACK together: a node that accepts TCP and never answers is left
    // after this long.
    eventloop
        .network_options
        .set_connection_timeout(config.mqtt.connect_timeout_secs.0.as_secs());
    Ok((client, eventloop, Nodes { options }))
}

pub fn broker(eventloop: &EventLoop) -> String {
    let (host, port) = eventloop.mqtt_options.broker_address();
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Which node to connect to next and how long to wait first: the nodes are tried in turn, from
/// the one after the node that failed; a round over all of them without a connection waits the
/// next [`Backoff`] delay. With one node this is the plain reconnect backoff.
pub struct Rotation {
    nodes: usize,
    current: usize,
    /// Failures since the last connection, within the current round.
    tried: usize,
    backoff: Backoff,
}

impl Rotation {
    pub fn new(nodes: usize) -> Rotation {
        Rotation {
            nodes: nodes.max(1),
            current: 0,
            tried: 0,
            backoff: Backoff::default(),
        }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    /// The current node answered (CONNACK).
    pub fn connected(&mut self) {
        self.tried = 0;
        self.backoff.reset();
    }

    /// The current node failed (a connect attempt, or an established connection): the node to
    /// try next, after the returned delay.
    pub fn failed(&mut self) -> (usize, Duration) {
        self.current = (self.current + 1) % self.nodes;
        self.tried += 1;
        if self.tried >= self.nodes {
            self.tried = 0;
            (self.current, self.backoff.next())
        } else {
            (self.current, Duration::ZERO)
        }
    }
}

/// What to log about failed connect attempts: the first of an outage at once, then a summary at
/// most once per [`FailLog::EVERY`] with how many attempts failed, so minutes of failures leave
/// a trace without flooding the log.
#[derive(Default)]
pub struct FailLog {
    /// When the current outage started (the first failure since the last connection).
    since: Option<std::time::Instant>,
    last_line: Option<std::time::Instant>,
    /// Failures not yet reported in a line.
    unreported: u64,
    /// Failures in the current outage.
    total: u64,
}

/// A line to log about connect failures.
#[derive(Debug, PartialEq, Eq)]
pub enum FailLine {
    /// The first failure of an outage.
    First,
    /// `failed` attempts since the last line, `total` over `secs` seconds of outage.
    Summary { failed: u64, total: u64, secs: u64 },
}

impl FailLog {
    pub const EVERY: Duration = Duration::from_secs(60);

    /// One more failed attempt at `now`: the line to log, if any.
    pub fn failed(&mut self, now: std::time::Instant) -> Option<FailLine> {
        self.total += 1;
        let since = *self.since.get_or_insert(now);
        match self.last_line {
            None => {
                self.last_line = Some(now);
                Some(FailLine::First)
            }
            Some(at) if now.duration_since(at) >= Self::EVERY => {
                self.last_line = Some(now);
                let failed = std::mem::take(&mut self.unreported) + 1;
                Some(FailLine::Summary {
                    failed,
                    total: self.total,
                    secs: now.duration_since(since).as_secs(),
                })
            }
            Some(_) => {
                self.unreported += 1;
                None
            }
        }
    }

    /// Connected at `now`: the failed attempts and the length of the outage that ended, if any.
    pub fn connected(&mut self, now: std::time::Instant) -> Option<(u64, Duration)> {
        let ended = self.since.map(|s| (self.total, now.duration_since(s)));
        *self = FailLog::default();
        ended
    }
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

    // Not an iterator: an endless sequence of delays, reset by the caller on success.
    #[allow(clippy::should_implement_trait)]
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
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
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

    #[test]
    fn one_node_waits_the_backoff_after_every_failure() {
        let mut r = Rotation::new(1);
        let (n, d) = r.failed();
        assert_eq!(n, 0);
        assert!(d >= Duration::from_millis(750), "{d:?}");
        let (_, d) = r.failed();
        assert!(d >= Duration::from_millis(1500), "{d:?}");
        r.connected();
        assert!(r.failed().1 <= Duration::from_millis(1250));
    }

    #[test]
    fn nodes_are_tried_in_turn_with_a_backoff_per_round() {
        let mut r = Rotation::new(3);
        assert_eq!(r.current(), 0);
        // Node 0 fails: 1 and 2 at once, then a wait before the next round starts at 0.
        assert_eq!(r.failed(), (1, Duration::ZERO));
        assert_eq!(r.failed(), (2, Duration::ZERO));
        let (n, d) = r.failed();
        assert_eq!(n, 0);
        assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
        assert_eq!(r.failed(), (1, Duration::ZERO));
        assert_eq!(r.failed(), (2, Duration::ZERO));
        let (n, d) = r.failed();
        assert_eq!(n, 0);
        assert!(
            d >= Duration::from_millis(1500),
            "the backoff grows per round: {d:?}"
        );
        // Connected to 0, which later drops: straight on to 1, and the backoff starts over.
        r.connected();
        assert_eq!(r.failed(), (1, Duration::ZERO));
        assert_eq!(r.failed(), (2, Duration::ZERO));
        assert!(r.failed().1 <= Duration::from_millis(1250));
    }

    #[test]
    fn connect_failures_are_logged_first_then_once_a_minute_with_a_count() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut l = FailLog::default();
        assert_eq!(l.failed(at(0)), Some(FailLine::First));
        for s in 1..60 {
            assert_eq!(l.failed(at(s)), None, "at {s} s");
        }
        let summary = |failed, total, secs| {
            Some(FailLine::Summary {
                failed,
                total,
                secs,
            })
        };
        assert_eq!(l.failed(at(60)), summary(60, 61, 60));
        assert_eq!(l.failed(at(100)), None);
        assert_eq!(l.failed(at(125)), summary(2, 63, 125));
        assert_eq!(l.connected(at(130)), Some((63, Duration::from_secs(130))));
        assert_eq!(l.connected(at(131)), None);
        assert_eq!(l.failed(at(200)), Some(FailLine::First), "a new outage");
    }
}
