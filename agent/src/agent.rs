//! The running agent: one MQTT connection, the journal, and the things feeding it.
//!
//! A reading flows one way: driver → [`Agent::accept`] (journal append, before anything is published)
//! → the publisher task (QoS 1) → PUBACK → [`Outbox`] → journal ack. Nothing but the ack cursor goes
//! back upstream. While the broker is away readings pile up in the journal (bounded by its limits), and
//! the publisher drains it, in order, when the broker returns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

use crate::config::{Config, FsyncMode, JournalConfig, Kind, Thing};
use crate::journal::{Body, Cursor, FsyncPolicy, Journal, Limits, Record};
use crate::mqtt::{self, Topics};
use crate::outbox::Outbox;
use crate::things::{Device, Value};

/// Journal records published and not yet acknowledged. Bounds memory and the request queue.
const MAX_INFLIGHT: usize = 64;
/// Incoming messages (MQTT things) waiting for the handler; more are dropped and counted.
const INCOMING_QUEUE: usize = 256;

pub struct Agent {
    client: AsyncClient,
    topics: Topics,
    outbox: Mutex<Outbox>,
    /// `None` once closed at shutdown.
    journal: Arc<Mutex<Option<Journal>>>,
    /// Wakes the publisher: a record was appended or acknowledged.
    wake: Notify,
    started: Instant,
    reconnects: AtomicU64,
    /// Between a CONNACK and the next connection error. Records are read from the journal into
    /// the client's queue only while connected: queued in memory they would escape the journal's
    /// size bound, and be counted as dropped yet published.
    connected: AtomicBool,
    incoming_dropped: AtomicU64,
    /// Per published thing id: errors and whether it is available.
    things: Mutex<BTreeMap<String, ThingHealth>>,
    /// The local cloud this gateway is a member of, if any.
    instance: Option<Arc<crate::instance::Runtime>>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct ThingHealth {
    readings: u64,
    errors: u64,
    available: Option<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock aborts the process (panic = abort): poisoning cannot be seen.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn journal_limits(c: &JournalConfig) -> Limits {
    let d = Limits::default();
    let fsync = match c.fsync {
        FsyncMode::Always => FsyncPolicy::Always,
        FsyncMode::Never => FsyncPolicy::Never,
        FsyncMode::Interval => match d.fsync {
            FsyncPolicy::Every { records, interval } => FsyncPolicy::Every {
                records: c.fsync_records.unwrap_or(records),
                interval: c.fsync_interval_ms.map_or(interval, Duration::from_millis),
            },
            other => other,
        },
    };
    Limits {
        segment_bytes: c.segment_bytes.unwrap_or(d.segment_bytes),
        max_bytes: c.max_bytes.unwrap_or(d.max_bytes),
        max_age: c.max_age_secs.map_or(d.max_age, Duration::from_secs),
        fsync,
        ..d
    }
}

/// Runs the agent until SIGTERM/SIGINT. Returns the process exit code.
pub async fn run(config: Config) -> std::process::ExitCode {
    let dir = config.data_dir.join("journal");
    let limits = journal_limits(&config.journal);
    let opened = tokio::task::spawn_blocking(move || Journal::open(&dir, limits)).await;
    let journal = match opened {
        Ok(Ok((j, recovery))) => {
            for t in &recovery.truncations {
                warn!(file = %t.file.display(), offset = t.offset, lost_bytes = t.lost_bytes, reason = %t.reason, "journal: cut a torn or corrupt tail");
            }
            j
        }
        Ok(Err(e)) => {
            error!("journal: {e}");
            return std::process::ExitCode::from(2);
        }
        Err(e) => {
            error!("journal: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };

    let topics = Topics::new(&config);
    let (client, eventloop) = match mqtt::connect(&config, &topics) {
        Ok(c) => c,
        Err(e) => {
            error!("mqtt: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    info!(
        gateway = %config.gateway_id,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        things = config.things.len(),
        "starting"
    );
    let instance = match config.instance.clone() {
        Some(cfg) => {
            let gw = config.gateway_id.to_string();
            let prefix = config.mqtt.prefix.to_string();
            match crate::instance::Runtime::new(cfg, &gw, &prefix, &config.data_dir, client.clone())
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    error!("instance: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let agent = Arc::new(Agent {
        client: client.clone(),
        topics,
        outbox: Mutex::new(Outbox::default()),
        journal: Arc::new(Mutex::new(Some(journal))),
        wake: Notify::new(),
        started: Instant::now(),
        reconnects: AtomicU64::new(0),
        connected: AtomicBool::new(false),
        incoming_dropped: AtomicU64::new(0),
        things: Mutex::new(BTreeMap::new()),
        instance,
    });
    let announce = Arc::new(discovery_announcements(&config));
    let things: Arc<Vec<Thing>> = Arc::new(config.things);
    let mut subscriptions: Vec<String> = things.iter().filter_map(|t| t.topic.clone()).collect();
    if things.iter().any(|t| t.kind == Kind::Actuator) {
        subscriptions.push(agent.topics.set_filter());
    }
    if let Some(rt) = &agent.instance {
        subscriptions.extend(rt.subscriptions());
        tokio::spawn(rt.clone().run_timers());
    }

    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    tokio::spawn(drive(
        agent.clone(),
        eventloop,
        subscriptions,
        announce,
        acks_tx,
        incoming_tx,
    ));
    tokio::spawn(publish(agent.clone(), acks_rx));
    tokio::spawn(housekeeping(agent.clone(), config.health.interval_secs.0));
    crate::cloud::monitor::start(
        &config.gateway_id.to_string(),
        &config.clouds,
        &config.data_dir,
        config.health.interval_secs.0,
    );
    tokio::spawn(crate::resources::run(
        config.resources.clone(),
        config.data_dir.clone(),
    ));
    let mut actuators = BTreeMap::new();
    for (i, thing) in things.iter().enumerate() {
        match (thing.kind, thing.driver.info().bus) {
            (Kind::Sensor, crate::config::Bus::Mqtt) => {} // fed by mqtt_things
            (Kind::Sensor, _) if thing.driver == crate::config::Driver::GpioIn => {
                tokio::spawn(watch_input(agent.clone(), things.clone(), i));
            }
            (Kind::Sensor, _) => {
                tokio::spawn(poll(agent.clone(), things.clone(), i));
            }
            (Kind::Actuator, _) => {
                let (tx, rx) = mpsc::channel(crate::actuators::QUEUE);
                actuators.insert(thing.id.to_string(), tx);
                tokio::spawn(crate::actuators::serve(
                    agent.clone(),
                    things.clone(),
                    i,
                    rx,
                ));
            }
        }
    }
    tokio::spawn(route(agent.clone(), things.clone(), actuators, incoming_rx));

    shutdown_signal().await;
    info!("stopping");
    // A clean stop is not a failure: say so before the broker would fire the will.
    agent.publish_untracked(&agent.topics.availability(), true, mqtt::OFFLINE);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = client.try_disconnect();
    let journal = agent.journal.clone();
    let closed =
        tokio::task::spawn_blocking(move || lock(&journal).take().map(Journal::close)).await;
    if let Ok(Some(Err(e))) = closed {
        error!("journal close: {e}");
    }
    std::process::ExitCode::SUCCESS
}

impl Agent {
    /// Publishes a QoS 1 message that is not a journal record (availability, discovery, results).
    /// Lost only if the request queue is full, which the publisher's inflight bound prevents.
    fn publish_untracked(&self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        let mut ob = lock(&self.outbox);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => ob.queued(None),
            Err(e) => warn!(topic, "cannot queue: {e}"),
        }
    }

    /// Accepts values: they are journaled (with their seq) before this returns Ok; from then on they
    /// will be published however the broker, the network or the agent fare.
    async fn accept(self: &Arc<Self>, values: Vec<Value>, ts_ms: u64) -> Result<(), String> {
        let journal = self.journal.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = lock(&journal);
            let j = guard.as_mut().ok_or("journal closed")?;
            for v in values {
                let seq = j.next_seq(&v.thing);
                let rec = Record {
                    seq,
                    ts_ms,
                    body: Body::Reading {
                        value: v.value,
                        unit: v.unit,
                    },
                    thing: v.thing,
                };
                j.append(&rec).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        self.wake.notify_one();
        done
    }

    /// An actuator's state, retained, on its state topic.
    pub fn publish_state(&self, thing: &str, state: &serde_json::Value, command: Option<&str>) {
        let payload = crate::actuators::state_payload(thing, state, command);
        self.publish_untracked(&self.topics.thing_state(thing), true, payload);
    }

    pub fn publish_result(&self, thing: &str, outcome_json: &str) {
        self.publish_untracked(&self.topics.thing_result(thing), false, outcome_json);
    }

    pub fn count_error(&self, thing: &str) {
        lock(&self.things)
            .entry(thing.to_owned())
            .or_default()
            .errors += 1;
    }

    /// Records a thing's outcome; publishes its availability and logs when it changes.
    pub fn outcome(&self, ids: &[String], result: &Result<(), String>, retry: Duration) {
        for id in ids {
            let changed = {
                let mut things = lock(&self.things);
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
                self.publish_untracked(&self.topics.thing_availability(id), true, avail);
            }
        }
    }

    fn health(&self) -> serde_json::Value {
        let stats = lock(&self.journal).as_ref().map(|j| j.stats());
        let things = lock(&self.things).clone();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "ts": unix_millis(),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
            "incoming_dropped": self.incoming_dropped.load(Ordering::Relaxed),
            "journal": stats.map(|s| json!({
                "depth": s.depth, "bytes": s.bytes, "segments": s.segments, "dropped": s.dropped,
                "lost_records": s.lost_records, "fsyncs": s.fsyncs, "bytes_written": s.bytes_written,
            })),
            "things": things,
            "clouds": crate::cloud::monitor::health(),
            "instance": self.instance.as_ref().map(|rt| rt.health()),
        })
    }
}

/// Home Assistant discovery configs for every thing, plus empty retained messages that remove the
/// entities of things configured last time but not now. The list of topics announced is kept in
/// `data_dir/discovery` (rewritten only when it changes: configs change rarely, SD cards wear).
fn discovery_announcements(config: &Config) -> Vec<(String, String)> {
    let mut msgs = match crate::discovery::messages(config) {
        Ok(m) => m,
        Err((i, e)) => {
            error!(thing = i, "discovery: {e}"); // config check rejects this; never here
            Vec::new()
        }
    };
    let path = config.data_dir.join("discovery");
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    let current: Vec<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();
    let text = current.join("\n");
    let removed: Vec<(String, String)> = previous
        .lines()
        .filter(|t| t.starts_with(crate::discovery::DISCOVERY_PREFIX) && !current.contains(t))
        .map(|t| (t.to_owned(), String::new()))
        .collect();
    if previous != text {
        let tmp = path.with_extension("tmp");
        let saved = std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = saved {
            warn!(file = %path.display(), "cannot record discovery topics: {e}");
        }
    }
    for (t, _) in &removed {
        info!(topic = %t, "removing the discovery config of a thing no longer configured");
    }
    msgs.extend(removed);
    msgs
}

/// Drives the MQTT connection: (re)announces availability and subscriptions after every connect, maps
/// packet ids to journal records, hands PUBACKs to the publisher and incoming messages to the handler.
/// Reconnects with exponential backoff and jitter; logs once per change of state.
async fn drive(
    agent: Arc<Agent>,
    mut eventloop: EventLoop,
    subscriptions: Vec<String>,
    announce: Arc<Vec<(String, String)>>,
    acks: mpsc::UnboundedSender<Cursor>,
    incoming: mpsc::Sender<(String, Vec<u8>)>,
) {
    let mut backoff = mqtt::Backoff::default();
    let mut last_error: Option<String> = None;
    let mut connected_once = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(broker = %mqtt::broker(&eventloop), "connected");
                if connected_once {
                    agent.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_once = true;
                last_error = None;
                backoff.reset();
                agent.connected.store(true, Ordering::Relaxed);
                agent.wake.notify_one();
                agent.publish_untracked(&agent.topics.availability(), true, mqtt::ONLINE);
                for (topic, payload) in announce.iter() {
                    agent.publish_untracked(topic, true, payload.as_str());
                }
                for t in &subscriptions {
                    if let Err(e) = agent.client.try_subscribe(t, QoS::AtLeastOnce) {
                        warn!(topic = %t, "cannot subscribe: {e}");
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&agent.outbox).sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(c) = lock(&agent.outbox).acked(ack.pkid) {
                    let _ = acks.send(c);
                }
                agent.wake.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if incoming.try_send((p.topic, p.payload.to_vec())).is_err() {
                    agent.incoming_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                agent.connected.store(false, Ordering::Relaxed);
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    warn!(broker = %mqtt::broker(&eventloop), "mqtt connection: {msg}; retrying");
                    last_error = Some(msg);
                }
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Publishes the journal in order from the last acknowledged record, at most [`MAX_INFLIGHT`] ahead
/// of the broker's acknowledgements, and acknowledges the journal as PUBACKs come in.
async fn publish(agent: Arc<Agent>, mut acks: mpsc::UnboundedReceiver<Cursor>) {
    let mut read_at = lock(&agent.journal)
        .as_ref()
        .map(|j| j.ack_cursor())
        .unwrap_or_default();
    loop {
        let mut upto = None;
        while let Ok(c) = acks.try_recv() {
            upto = Some(c);
        }
        if let Some(c) = upto {
            let journal = agent.journal.clone();
            let r = tokio::task::spawn_blocking(move || lock(&journal).as_mut().map(|j| j.ack(c)))
                .await;
            if let Ok(Some(Err(e))) = r {
                error!("journal ack: {e}");
            }
        }

        let room = MAX_INFLIGHT.saturating_sub(lock(&agent.outbox).records_pending());
        let mut sent = 0;
        if room > 0 && agent.connected.load(Ordering::Relaxed) {
            let journal = agent.journal.clone();
            let batch = tokio::task::spawn_blocking(move || {
                lock(&journal).as_mut().map(|j| j.read_from(read_at, room))
            })
            .await;
            let batch = match batch {
                Ok(Some(Ok(b))) => b,
                Ok(None) => return, // closed: shutting down
                Ok(Some(Err(e))) => {
                    error!("journal read: {e}");
                    Vec::new()
                }
                Err(e) => {
                    error!("journal read task: {e}");
                    Vec::new()
                }
            };
            for (cursor, rec) in batch {
                let Body::Reading { value, unit } = &rec.body else {
                    read_at = cursor; // other kinds are not published as readings
                    continue;
                };
                let payload = json!({"thing": rec.thing, "value": value, "unit": unit, "ts": rec.ts_ms, "seq": rec.seq});
                let topic = agent.topics.thing_state(&rec.thing);
                let mut ob = lock(&agent.outbox);
                match agent
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload.to_string())
                {
                    Ok(()) => ob.queued(Some(cursor)),
                    Err(e) => {
                        debug!("request queue full ({e}); waiting for the broker");
                        break;
                    }
                }
                read_at = cursor;
                sent += 1;
            }
        }
        if sent == 0 {
            tokio::select! {
                _ = agent.wake.notified() => {}
                Some(c) = acks.recv() => {
                    let journal = agent.journal.clone();
                    let _ = tokio::task::spawn_blocking(move || lock(&journal).as_mut().map(|j| j.ack(c))).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Journal housekeeping every second (fsync interval, ack persistence, age bound) and the health topic.
async fn housekeeping(agent: Arc<Agent>, health_every: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_health = Instant::now() - health_every;
    loop {
        tick.tick().await;
        let journal = agent.journal.clone();
        let r = tokio::task::spawn_blocking(move || {
            lock(&journal).as_mut().map(|j| j.tick(unix_millis()))
        })
        .await;
        if let Ok(Some(Err(e))) = r {
            error!("journal: {e}");
        }
        if last_health.elapsed() >= health_every {
            last_health = Instant::now();
            let h = agent.health().to_string();
            // QoS 0: a missed health message is replaced by the next one.
            let _ = agent
                .client
                .try_publish(agent.topics.health(), QoS::AtMostOnce, false, h);
        }
    }
}

/// Polls one device forever. A failing device is closed and reopened (and so re-initialised) on the
/// next tick; its availability follows, and each change is logged once.
async fn poll(agent: Arc<Agent>, things: Arc<Vec<Thing>>, i: usize) {
    let thing = &things[i];
    let ids = thing.published_ids();
    let every = thing.interval_ms.0;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut device: Option<Device> = None;
    loop {
        ticker.tick().await;
        let things2 = things.clone();
        let mut d = device.take();
        // Device I/O blocks in the kernel (up to seconds on a stuck bus): keep it off the runtime.
        let read = tokio::task::spawn_blocking(move || {
            let thing = &things2[i];
            let mut dev = match d.take() {
                Some(dev) => dev,
                None => Device::open(thing)?,
            };
            let values = dev.read(thing)?;
            Ok::<_, String>((dev, values))
        })
        .await
        .unwrap_or_else(|e| Err(format!("driver task failed: {e}")));
        let result = match read {
            Ok((dev, values)) => {
                device = Some(dev);
                agent.accept(values, unix_millis()).await
            }
            Err(msg) => Err(msg),
        };
        agent.outcome(&ids, &result, every);
    }
}

/// A GPIO input: every debounced edge is a reading (1 active, 0 inactive), plus the level at start.
async fn watch_input(agent: Arc<Agent>, things: Arc<Vec<Thing>>, i: usize) {
    use crate::things::gpio::GpioInput;
    let thing = &things[i];
    let ids = vec![thing.id.to_string()];
    let retry = thing.interval_ms.0;
    let (tx, mut rx) = mpsc::channel::<Result<bool, String>>(16);
    let t2 = things.clone();
    std::thread::spawn(move || {
        let thing = &t2[i];
        let debounce = Duration::from_millis(thing.debounce_ms.unwrap_or(20));
        loop {
            let device = thing.device.clone().unwrap_or_default();
            let opened = GpioInput::open(
                &device,
                thing.line.unwrap_or(0),
                thing.active_low,
                debounce,
                "betaas-agent",
            );
            let mut input = match opened {
                Ok(input) => input,
                Err(e) => {
                    if tx.blocking_send(Err(e.to_string())).is_err() {
                        return;
                    }
                    std::thread::sleep(thing.interval_ms.0);
                    continue;
                }
            };
            if tx.blocking_send(Ok(input.active())).is_err() {
                return;
            }
            loop {
                match input.next_change(Duration::from_secs(1)) {
                    Ok(Some(change)) => {
                        if tx.blocking_send(Ok(change.active)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.to_string()));
                        break;
                    }
                }
            }
        }
    });
    while let Some(event) = rx.recv().await {
        let result = match event {
            Ok(active) => {
                let v = Value {
                    thing: thing.id.to_string(),
                    value: f64::from(u8::from(active)),
                    unit: thing.unit(),
                };
                agent.accept(vec![v], unix_millis()).await
            }
            Err(e) => Err(e),
        };
        agent.outcome(&ids, &result, retry);
    }
}

/// Incoming messages: actuator commands go to their actuator's queue; MQTT things' payloads are
/// validated, calibrated and journaled.
async fn route(
    agent: Arc<Agent>,
    things: Arc<Vec<Thing>>,
    actuators: BTreeMap<String, mpsc::Sender<Vec<u8>>>,
    mut incoming: mpsc::Receiver<(String, Vec<u8>)>,
) {
    use crate::things::command::Outcome;
    use crate::things::payload::FieldSpec;
    while let Some((topic, payload)) = incoming.recv().await {
        if let Some(rt) = agent.instance.as_ref().filter(|rt| rt.owns(&topic)) {
            rt.incoming(&topic, payload).await;
            continue;
        }
        if let Some(id) = crate::actuators::set_target(agent.topics.base(), &topic) {
            let outcome = match actuators.get(id) {
                Some(tx) => match tx.try_send(payload) {
                    Ok(()) => continue,
                    Err(_) => Outcome::rejected(None, "busy: too many commands queued; retry"),
                },
                None => Outcome::rejected(None, format!("{id} is not an actuator of this gateway")),
            };
            warn!(
                thing = id,
                "command rejected: {}",
                outcome.error.as_deref().unwrap_or("")
            );
            agent.count_error(id);
            agent.publish_result(id, &outcome.to_json());
            continue;
        }
        for thing in things
            .iter()
            .filter(|t| t.topic.as_deref() == Some(topic.as_str()))
        {
            let spec = FieldSpec {
                pointer: thing.field.clone().unwrap_or_default(),
                scale: thing.scale,
                offset: thing.offset,
                min: thing.min,
                max: thing.max,
            };
            let result = match crate::things::payload::extract(&payload, &spec) {
                Ok(value) => {
                    let v = Value {
                        thing: thing.id.to_string(),
                        value,
                        unit: thing.unit(),
                    };
                    agent.accept(vec![v], unix_millis()).await
                }
                Err(e) => {
                    // A bad payload is the publisher's fault, not a sign the device is gone: count
                    // and log it, leave the thing's availability alone.
                    warn!(thing = %thing.id, topic = %topic, "rejected payload: {e}");
                    agent.count_error(&thing.id.to_string());
                    continue;
                }
            };
            agent.outcome(&[thing.id.to_string()], &result, Duration::ZERO);
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
