//! The one MQTT session: the only owner of the rumqttc client and its event loop. Every part of the
//! agent (publisher, actuators, discovery, instance) holds a [`Session`] handle, never the client.
//!
//! What it guarantees, and why:
//! - Every QoS 1 publish goes through [`Session::queue`], which records its tag (a journal cursor
//!   or none) in the [`Outbox`] in the same critical section: the n-th packet id rumqttc assigns
//!   belongs to the n-th tag, so a PUBACK can only ever acknowledge its own reading.
//! - Nothing is queued into the client while disconnected. rumqttc's request channel is bounded
//!   (and replays whatever it holds on reconnect): minutes of heartbeats queued during an outage
//!   would fill it and make the next subscribe fail. State is regenerated on connect instead:
//!   retained state ([`Session::set_retained`]) is republished, the instance re-announces on
//!   [`Session::connects`], the publisher drains the journal. Transient messages published while
//!   disconnected are dropped (heartbeats, health) or, for results someone waits for, kept in a
//!   small bounded queue ([`Session::publish_event`]).
//! - On every (re)connect the subscriptions are sent and awaited until the broker's SUBACK; no
//!   SUBACK in time, or a refused filter, is retried with backoff. Only then is the session "ready":
//!   retained state republished, queued events flushed, [`Session::connects`] bumped.
//! - Home Assistant's birth message (`homeassistant/status` = `online`) republishes the retained
//!   state: a restarted Home Assistant on a broker without retained wildcard delivery still sees us.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ClientError, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS, StateError,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::journal::Cursor;
use crate::mqtt::{self, Backoff};
use crate::outbox::Outbox;

/// Home Assistant publishes `online` here when it starts (its default birth message).
pub const HA_STATUS: &str = "homeassistant/status";
/// Results waiting for the connection (VM results, command outcomes); older ones are dropped.
const MAX_EVENTS: usize = 64;
/// Retained topics the session republishes; a config with more things than this is refused earlier.
const MAX_RETAINED: usize = 1024;
/// How long a SUBSCRIBE may wait for its SUBACK before it is sent again.
const SUBACK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Session(Arc<Inner>);

struct Inner {
    client: AsyncClient,
    outbox: Mutex<Outbox>,
    /// Topic → payload of the retained state this gateway owns (availability, discovery configs,
    /// actuator states, per-thing availability), republished on every connect.
    retained: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Transient results published while disconnected, sent once subscribed again.
    events: Mutex<VecDeque<(String, Vec<u8>)>>,
    /// Between a CONNACK and the next connection error.
    connected: AtomicBool,
    /// Bumped each time the session is ready (connected and subscribed).
    connects: watch::Sender<u64>,
    /// Notified on every PUBACK and when the session is ready: the journal publisher waits on it.
    progress: Notify,
    reconnects: AtomicU64,
    /// Messages not sent: dropped while disconnected (transient) or the request queue was full.
    not_sent: AtomicU64,
    events_dropped: AtomicU64,
    /// Incoming messages the handler had no room for.
    incoming_dropped: AtomicU64,
    /// Connections reset by a message over the packet size limit.
    oversized: AtomicU64,
    /// The broker node of the current connection (`host:port`), None while disconnected.
    node: Mutex<Option<String>>,
    /// Connections to a node other than the one connected before.
    failovers: AtomicU64,
    /// Connect attempts (and established connections) that failed.
    connect_failures: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock aborts the process (panic = abort): poisoning cannot be seen.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the connection driver hands on.
pub struct Channels {
    /// Messages on the subscribed filters (except Home Assistant's status, handled here).
    pub incoming: mpsc::Sender<(String, Vec<u8>)>,
    /// The journal cursor each PUBACK lets the journal be acknowledged up to.
    pub acks: mpsc::UnboundedSender<Cursor>,
}

impl Session {
    pub fn new(client: AsyncClient) -> Session {
        Session(Arc::new(Inner {
            client,
            outbox: Mutex::new(Outbox::default()),
            retained: Mutex::new(BTreeMap::new()),
            events: Mutex::new(VecDeque::new()),
            connected: AtomicBool::new(false),
            connects: watch::channel(0).0,
            progress: Notify::new(),
            reconnects: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            incoming_dropped: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            node: Mutex::new(None),
            failovers: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        }))
    }

    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Changes each time the session has (re)connected and its subscriptions are acknowledged.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.0.connects.subscribe()
    }

    /// Woken on PUBACKs and when the session becomes ready.
    pub fn progress(&self) -> &Notify {
        &self.0.progress
    }

    /// The one path of every publish into the client: the tag is recorded with the queueing.
    fn queue(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        tag: Option<Cursor>,
    ) -> Result<(), ClientError> {
        let mut ob = lock(&self.0.outbox);
        self.0.client.try_publish(topic, qos, retain, payload)?;
        if qos != QoS::AtMostOnce {
            ob.queued(tag);
        }
        Ok(())
    }

    /// A journal record, QoS 1; its PUBACK acknowledges the journal up to `cursor`. `false` when
    /// disconnected or the request queue is full: the record stays in the journal, sent later.
    pub fn publish_record(&self, topic: &str, payload: Vec<u8>, cursor: Cursor) -> bool {
        if !self.connected() {
            return false;
        }
        match self.queue(topic, QoS::AtLeastOnce, false, payload, Some(cursor)) {
            Ok(()) => true,
            Err(e) => {
                debug!("request queue full ({e}); waiting for the broker");
                false
            }
        }
    }

    /// Journal records queued or in flight and not yet acknowledged by the broker.
    pub fn records_pending(&self) -> usize {
        lock(&self.0.outbox).records_pending()
    }

    /// A transient QoS 1 message (heartbeat, instance message): sent now if connected, else
    /// dropped — whatever it says is said again by the next one or regenerated on connect.
    pub fn publish(&self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) -> bool {
        self.send(topic, QoS::AtLeastOnce, retain, payload.into())
    }

    /// A QoS 0 message (health): sent only while connected.
    pub fn publish_qos0(&self, topic: &str, payload: impl Into<Vec<u8>>) -> bool {
        self.send(topic, QoS::AtMostOnce, false, payload.into())
    }

    fn send(&self, topic: &str, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        if !self.connected() {
            self.0.not_sent.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.queue(topic, qos, retain, payload, None) {
            Ok(()) => true,
            Err(e) => {
                self.0.not_sent.fetch_add(1, Ordering::Relaxed);
                warn!(topic, "not sent: {e}");
                false
            }
        }
    }

    /// A result someone waits for (a VM result, a command outcome): sent now, or kept (the last
    /// [`MAX_EVENTS`]) until the session is ready again.
    pub fn publish_event(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        if self.connected()
            && self
                .queue(topic, QoS::AtLeastOnce, false, payload.clone(), None)
                .is_ok()
        {
            return;
        }
        let mut q = lock(&self.0.events);
        if q.len() >= MAX_EVENTS {
            q.pop_front();
            self.0.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back((topic.to_owned(), payload));
    }

    /// Retained state owned by this gateway: published now if connected, and again on every
    /// connect and Home Assistant birth. An empty payload removes a retained message.
    pub fn set_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        {
            let mut r = lock(&self.0.retained);
            if r.len() >= MAX_RETAINED && !r.contains_key(topic) {
                warn!(
                    topic,
                    "over {MAX_RETAINED} retained topics: not kept for republishing"
                );
            } else {
                r.insert(topic.to_owned(), payload.clone());
            }
        }
        self.publish(topic, true, payload);
    }

    fn republish_retained(&self) {
        let all: Vec<(String, Vec<u8>)> = lock(&self.0.retained)
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (topic, payload) in all {
            self.publish(&topic, true, payload);
        }
    }

    fn flush_events(&self) {
        loop {
            let Some((topic, payload)) = lock(&self.0.events).pop_front() else {
                return;
            };
            if !self.publish(&topic, false, payload.clone()) {
                lock(&self.0.events).push_front((topic, payload));
                return;
            }
        }
    }

    /// A clean stop: `offline` (before the broker would fire the will), then DISCONNECT.
    pub async fn close(&self, availability: &str) {
        self.publish(availability, true, mqtt::OFFLINE);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = self.0.client.try_disconnect();
    }

    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "connected": self.connected(),
            "reconnects": self.0.reconnects.load(Ordering::Relaxed),
            "not_sent": self.0.not_sent.load(Ordering::Relaxed),
            "events_queued": lock(&self.0.events).len(),
            "events_dropped": self.0.events_dropped.load(Ordering::Relaxed),
            "incoming_dropped": self.0.incoming_dropped.load(Ordering::Relaxed),
            "oversized": self.0.oversized.load(Ordering::Relaxed),
            "node": *lock(&self.0.node),
            "failovers": self.0.failovers.load(Ordering::Relaxed),
            "connect_failures": self.0.connect_failures.load(Ordering::Relaxed),
        })
    }

    pub fn reconnects(&self) -> u64 {
        self.0.reconnects.load(Ordering::Relaxed)
    }
}

/// Where the subscriptions of the current connection stand.
enum Subs {
    /// Not connected, or connected and every filter acknowledged.
    Done,
    /// Send (again) at `at` the filters not yet acknowledged.
    Due { at: Instant, filters: Vec<String> },
    /// Sent; waiting for the SUBACK with this packet id (None until rumqttc reports it).
    Sent {
        pkid: Option<u16>,
        filters: Vec<String>,
        deadline: Instant,
    },
}

/// Drives the connection forever: connects to the broker's nodes in turn (the next one when the
/// current one fails or does not complete CONNECT in time, a backoff per round over all of them),
/// subscribes and waits for SUBACKs, maps packet ids to journal records and hands PUBACKs and
/// incoming messages on.
pub async fn drive(
    session: Session,
    mut eventloop: EventLoop,
    nodes: mqtt::Nodes,
    filters: Vec<String>,
    out: Channels,
) {
    let mut rotation = mqtt::Rotation::new(nodes.len());
    let mut fail_log = mqtt::FailLog::default();
    let mut sub_backoff = Backoff::default();
    let mut last_node: Option<String> = None;
    let mut connected_once = false;
    let mut subs = Subs::Done;
    let s = &session.0;
    loop {
        let timer = match &subs {
            Subs::Done => None,
            Subs::Due { at, .. } => Some(*at),
            Subs::Sent { deadline, .. } => Some(*deadline),
        };
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = sleep_until(timer) => {
                subs = match std::mem::replace(&mut subs, Subs::Done) {
                    Subs::Due { filters, .. } => subscribe(&session, filters, &mut sub_backoff),
                    Subs::Sent { filters, .. } => {
                        warn!(filters = filters.len(), "no SUBACK within {SUBACK_TIMEOUT:?}; subscribing again");
                        subscribe(&session, filters, &mut sub_backoff)
                    }
                    Subs::Done => Subs::Done,
                };
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let node = mqtt::broker(&eventloop);
                match fail_log.connected(std::time::Instant::now()) {
                    Some((failed, outage)) => info!(
                        broker = %node,
                        "connected after {failed} failed attempts over {:.1} s",
                        outage.as_secs_f64()
                    ),
                    None => info!(broker = %node, "connected"),
                }
                if connected_once {
                    s.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if last_node.as_ref().is_some_and(|n| *n != node) {
                    s.failovers.fetch_add(1, Ordering::Relaxed);
                    info!(broker = %node, from = ?last_node, "failed over to another node");
                }
                *lock(&s.node) = Some(node.clone());
                last_node = Some(node);
                connected_once = true;
                rotation.connected();
                sub_backoff.reset();
                s.connected.store(true, Ordering::Relaxed);
                s.progress.notify_one();
                subs = subscribe(&session, filters.clone(), &mut sub_backoff);
            }
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                if let Subs::Sent { pkid: p @ None, .. } = &mut subs {
                    *p = Some(pkid);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let Subs::Sent {
                    pkid: Some(pkid),
                    filters: sent,
                    ..
                } = &subs
                else {
                    continue; // an answer to a subscribe of an earlier connection
                };
                if ack.pkid != *pkid {
                    continue;
                }
                let refused: Vec<String> = sent
                    .iter()
                    .zip(&ack.return_codes)
                    .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                    .map(|(f, _)| f.clone())
                    .collect();
                if refused.is_empty() {
                    info!(filters = filters.len(), "subscribed");
                    sub_backoff.reset();
                    subs = Subs::Done;
                    ready(&session);
                } else {
                    let at = Instant::now() + sub_backoff.next();
                    warn!(
                        ?refused,
                        "the broker refused these subscriptions (ACL?); retrying"
                    );
                    if refused.len() < sent.len() {
                        ready(&session); // what was granted works meanwhile
                    }
                    subs = Subs::Due {
                        at,
                        filters: refused,
                    };
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&s.outbox).sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(c) = lock(&s.outbox).acked(ack.pkid) {
                    let _ = out.acks.send(c);
                }
                s.progress.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == HA_STATUS {
                    if p.payload.as_ref() == b"online" {
                        info!("Home Assistant is online: republishing discovery and states");
                        session.republish_retained();
                    }
                    continue;
                }
                if out
                    .incoming
                    .try_send((p.topic, p.payload.to_vec()))
                    .is_err()
                {
                    s.incoming_dropped.fetch_add(1, Ordering::Relaxed);
                    debug!("incoming queue full: a message was dropped");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let was_connected = s.connected.swap(false, Ordering::Relaxed);
                *lock(&s.node) = None;
                s.connect_failures.fetch_add(1, Ordering::Relaxed);
                subs = Subs::Done;
                if let ConnectionError::MqttState(StateError::Deserialization(
                    rumqttc::Error::PayloadSizeLimitExceeded(n),
                )) = &e
                {
                    // MQTT 3.1.1 gives a client no way to decline one message: the broker must
                    // bound them (message_size_limit in the instance broker's configuration).
                    s.oversized.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        bytes = n,
                        "the broker sent a message over {} bytes on a subscribed topic; the \
                         connection was reset. Bound message sizes on the broker \
                         (message_size_limit) and restrict who may publish (ACLs)",
                        mqtt::MAX_PACKET
                    );
                }
                let failed = mqtt::broker(&eventloop);
                let (next, wait) = rotation.failed();
                nodes.select(&mut eventloop, next);
                let then = mqtt::broker(&eventloop);
                let what = if was_connected {
                    "connection lost"
                } else {
                    "cannot connect"
                };
                match fail_log.failed(std::time::Instant::now()) {
                    Some(mqtt::FailLine::First) => warn!(
                        broker = %failed,
                        "mqtt {what}: {e}; next: {then} in {:.1} s",
                        wait.as_secs_f64()
                    ),
                    Some(mqtt::FailLine::Summary {
                        failed: n,
                        total,
                        secs,
                    }) => warn!(
                        broker = %failed,
                        "mqtt still not connected after {secs} s: {n} more failed attempts \
                         ({total} in all), the last: {e}; next: {then}"
                    ),
                    None => debug!(broker = %failed, "mqtt {what}: {e}; next: {then}"),
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn subscribe(session: &Session, filters: Vec<String>, backoff: &mut Backoff) -> Subs {
    if filters.is_empty() {
        ready(session);
        return Subs::Done;
    }
    let many = filters
        .iter()
        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
    match session.0.client.try_subscribe_many(many) {
        Ok(()) => Subs::Sent {
            pkid: None,
            filters,
            deadline: Instant::now() + SUBACK_TIMEOUT,
        },
        Err(e) => {
            let d = backoff.next();
            warn!("cannot subscribe now ({e}); again in {d:?}");
            Subs::Due {
                at: Instant::now() + d,
                filters,
            }
        }
    }
}

/// Connected and subscribed: bring the broker's view of this gateway back.
fn ready(session: &Session) {
    session.republish_retained();
    session.flush_events();
    session.0.connects.send_modify(|n| *n += 1);
    session.0.progress.notify_one();
}
