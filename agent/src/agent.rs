//! The running agent: one MQTT connection, the journal, and the things feeding it.
//!
//! A reading flows one way: driver → [`Agent::accept`] (journal append, before anything is published)
//! → the publisher task (QoS 1) → PUBACK → [`Outbox`] → journal ack. Nothing but the ack cursor goes
//! back upstream. While the broker is away readings pile up in the journal (bounded by its limits), and
//! the publisher drains it, in order, when the broker returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tracing::{error, info, warn};

use crate::clock::unix_millis;
use crate::config::{Config, FsyncMode, JournalConfig, Kind, Thing};
use crate::journal::{Body, Cursor, FsyncPolicy, Journal, Limits, Record};
use crate::mqtt::{self, Topics};
use crate::session::{self, Session};
use crate::things::device::{Device, Value};
use crate::things::spec::Run;
use crate::things::status::ThingStatus;

/// Journal records published and not yet acknowledged. Bounds memory and the request queue.
const MAX_INFLIGHT: usize = 64;
/// Incoming messages (MQTT things) waiting for the handler; more are dropped and counted.
const INCOMING_QUEUE: usize = 256;

pub struct Agent {
    /// The MQTT session. Records are read from the journal into it only while connected: queued
    /// in memory they would escape the journal's size bound.
    session: Session,
    topics: Topics,
    /// `None` once closed at shutdown. Used only off the runtime ([`Agent::on_journal`]): its
    /// lock is held through fsyncs, which take seconds on a card (or disk) busy with other writes.
    journal: Arc<Mutex<Option<Journal>>>,
    /// The journal's stats after its last operation, for health: the runtime thread never waits for
    /// the journal's lock (it once froze all four agents of a test for 25 s: heartbeats, session
    /// and all, while another process's writeback made their fsyncs slow).
    journal_stats: Arc<Mutex<Option<crate::journal::Stats>>>,
    /// Wakes the publisher: a record was appended.
    wake: Notify,
    started: Instant,
    /// Per published thing id: errors and whether it is available.
    status: Arc<ThingStatus>,
    /// The local cloud this gateway is a member of, if any.
    instance: Option<Arc<crate::instance::Runtime>>,
    /// The firmware's slot, version and update state (health's `system`), refreshed by housekeeping.
    system: Mutex<crate::update::System>,
    /// How many things are configured: all must have been polled before the slot is marked good.
    things_configured: usize,
    /// The remote clouds held here, if any (their health).
    clouds: Option<crate::cloud::monitor::Clouds>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock aborts the process (panic = abort): poisoning cannot be seen.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    let (client, eventloop, nodes) = match mqtt::connect(&config, &topics) {
        Ok(c) => c,
        Err(e) => {
            error!("mqtt: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let session = Session::new(client);
    info!(
        gateway = %config.gateway_id,
        broker = %config.mqtt.nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        things = config.things.len(),
        "starting"
    );
    // Clouds configured through the API (data partition) over agent.toml's of the same name.
    let cloud_configs = match &config.api {
        Some(_) => crate::api::clouds::merge(
            config.clouds.clone(),
            crate::api::clouds::load(&config.data_dir),
        ),
        None => config.clouds.clone(),
    };
    // Handed to the instance manager and the API: nothing of theirs is process-wide.
    let clouds = crate::cloud::monitor::start(
        &config.gateway_id.to_string(),
        &cloud_configs,
        &config.data_dir,
        config.health.interval_secs.0,
        config.api.is_some(),
    );
    let resources = crate::resources::Handle::default();
    let instance = match config.instance.clone() {
        Some(cfg) => {
            let gw = config.gateway_id.to_string();
            let prefix = config.mqtt.prefix.to_string();
            match crate::instance::Runtime::new(
                cfg,
                &gw,
                &prefix,
                &config.data_dir,
                session.clone(),
                clouds.clone(),
                resources.clone(),
            ) {
                Ok(rt) => Some(rt),
                Err(e) => {
                    error!("instance: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    if let Some(api) = &config.api {
        crate::api::hub::init(api.readings);
    }
    let agent = Arc::new(Agent {
        session: session.clone(),
        status: Arc::new(ThingStatus::new(session.clone(), topics.clone())),
        topics,
        journal_stats: Arc::new(Mutex::new(Some(journal.stats()))),
        journal: Arc::new(Mutex::new(Some(journal))),
        wake: Notify::new(),
        started: Instant::now(),
        instance,
        system: Mutex::new(crate::update::read()),
        things_configured: config.things.len(),
        clouds: clouds.clone(),
    });
    // Retained state, (re)published by the session on every connect and Home Assistant birth.
    session.set_retained(&agent.topics.availability(), mqtt::ONLINE);
    for (topic, payload) in discovery_announcements(&config) {
        session.set_retained(&topic, payload);
    }
    let things: Arc<Vec<Thing>> = Arc::new(config.things);
    let mut subscriptions: Vec<String> = things.iter().filter_map(|t| t.topic.clone()).collect();
    if things.iter().any(|t| t.kind == Kind::Actuator) {
        subscriptions.push(agent.topics.set_filter());
    }
    subscriptions.push(session::HA_STATUS.to_owned());
    if let Some(rt) = &agent.instance {
        subscriptions.extend(rt.subscriptions());
        tokio::spawn(rt.clone().run_timers());
    }

    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    tokio::spawn(session::drive(
        session.clone(),
        eventloop,
        nodes,
        subscriptions,
        session::Channels {
            incoming: incoming_tx,
            acks: acks_tx,
        },
    ));
    tokio::spawn(publish(agent.clone(), acks_rx));
    tokio::spawn(housekeeping(agent.clone(), config.health.interval_secs.0));
    tokio::spawn(crate::resources::run(
        config.resources.clone(),
        config.data_dir.clone(),
        resources.clone(),
    ));
    let mut actuators = BTreeMap::new();
    for (i, thing) in things.iter().enumerate() {
        match thing.driver.info().run {
            Run::Mqtt => {} // fed by mqtt_things
            Run::Watch => {
                tokio::spawn(watch_input(agent.clone(), things.clone(), i));
            }
            Run::Poll(_) => {
                tokio::spawn(poll(agent.clone(), things.clone(), i));
            }
            Run::Actuate(_) => {
                let (tx, rx) = mpsc::channel(crate::actuators::QUEUE);
                actuators.insert(thing.id.to_string(), tx);
                tokio::spawn(crate::actuators::serve(
                    agent.status.clone(),
                    things.clone(),
                    i,
                    rx,
                ));
            }
        }
    }
    if let Some(api) = config.api.clone() {
        let a = agent.clone();
        crate::api::start(
            api,
            crate::api::Context {
                gateway: config.gateway_id.to_string(),
                data_dir: config.data_dir.clone(),
                health: Box::new(move || a.health()),
                things: things.clone(),
                status: agent.status.clone(),
                actuators: actuators.clone(),
                instance: agent.instance.clone(),
                clouds: clouds.clone(),
                resources: resources.clone(),
                templates: config
                    .instance
                    .as_ref()
                    .map(|i| i.templates.iter().map(|t| t.name.to_string()).collect())
                    .unwrap_or_default(),
            },
        );
    }
    tokio::spawn(route(agent.clone(), things.clone(), actuators, incoming_rx));

    shutdown_signal().await;
    info!("stopping");
    // A clean stop is not a failure: say so before the broker would fire the will.
    session.close(&agent.topics.availability()).await;
    if let Some(rt) = &agent.instance {
        rt.save_floors();
    }
    let journal = agent.journal.clone();
    let closed =
        tokio::task::spawn_blocking(move || lock(&journal).take().map(Journal::close)).await;
    if let Ok(Some(Err(e))) = closed {
        error!("journal close: {e}");
    }
    std::process::ExitCode::SUCCESS
}

impl Agent {
    /// Accepts values: they are journaled (with their seq) before this returns Ok; from then on they
    /// will be published however the broker, the network or the agent fare.
    async fn accept(self: &Arc<Self>, values: Vec<Value>, ts_ms: u64) -> Result<(), String> {
        let done = self
            .on_journal(move |j| {
                let mut kept = Vec::with_capacity(values.len());
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
                    kept.push(rec);
                }
                Ok::<_, String>(kept)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.ok_or_else(|| "journal closed".to_owned())?);
        self.wake.notify_one();
        // Journaled: now the API may show them.
        for rec in done.as_deref().unwrap_or_default() {
            if let Body::Reading { value, unit } = &rec.body {
                crate::api::hub::reading(&rec.thing, *value, unit, rec.ts_ms, rec.seq);
            }
        }
        done.map(|_| ())
    }

    /// Runs `f` on the journal off the runtime (it may fsync) and refreshes the stats health reads.
    /// `Ok(None)`: the journal is closed (shutting down).
    async fn on_journal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> T + Send + 'static,
    ) -> Result<Option<T>, tokio::task::JoinError> {
        let journal = self.journal.clone();
        let stats = self.journal_stats.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = lock(&journal);
            let j = guard.as_mut()?;
            let r = f(j);
            *lock(&stats) = Some(j.stats());
            Some(r)
        })
        .await
    }

    fn health(&self) -> serde_json::Value {
        let stats = *lock(&self.journal_stats);
        let things = self.status.snapshot();
        let mqtt = self.session.health();
        json!({
            "uptime_s": self.started.elapsed().as_secs(),
            "ts": unix_millis(),
            "reconnects": mqtt["reconnects"],
            "incoming_dropped": mqtt["incoming_dropped"],
            "mqtt": mqtt,
            "journal": stats.map(|s| json!({
                "depth": s.depth, "bytes": s.bytes, "segments": s.segments, "dropped": s.dropped,
                "lost_records": s.lost_records, "fsyncs": s.fsyncs, "bytes_written": s.bytes_written,
            })),
            "things": things,
            "clouds": crate::cloud::monitor::health(self.clouds.as_ref()),
            "instance": self.instance.as_ref().map(|rt| rt.health()),
            "api": crate::api::health(),
            "system": lock(&self.system).to_json(),
        })
    }
}

/// Home Assistant discovery configs for every thing, plus empty retained messages that remove the
/// entities of things configured last time but not now. The list of topics announced is kept in
/// `data_dir/discovery` (rewritten only when it changes: configs change rarely, SD cards wear).
fn discovery_announcements(config: &Config) -> Vec<(String, String)> {
    let mut msgs =
        match crate::discovery::messages(&config.gateway_id, &config.mqtt.prefix, &config.things) {
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

/// Publishes the journal in order from the last acknowledged record, at most [`MAX_INFLIGHT`] ahead
/// of the broker's acknowledgements, and acknowledges the journal as PUBACKs come in.
async fn publish(agent: Arc<Agent>, mut acks: mpsc::UnboundedReceiver<Cursor>) {
    let mut read_at = match agent.on_journal(|j| j.ack_cursor()).await {
        Ok(Some(c)) => c,
        _ => return, // closed: shutting down
    };
    loop {
        let mut upto = None;
        while let Ok(c) = acks.try_recv() {
            upto = Some(c);
        }
        if let Some(c) = upto {
            let r = agent.on_journal(move |j| j.ack(c)).await;
            if let Ok(Some(Err(e))) = r {
                error!("journal ack: {e}");
            }
        }

        let room = MAX_INFLIGHT.saturating_sub(agent.session.records_pending());
        let mut sent = 0;
        if room > 0 && agent.session.connected() {
            let batch = agent.on_journal(move |j| j.read_from(read_at, room)).await;
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
                if !agent
                    .session
                    .publish_record(&topic, payload.to_string().into_bytes(), cursor)
                {
                    break; // disconnected or the queue is full: read again from here later
                }
                read_at = cursor;
                sent += 1;
            }
        }
        if sent == 0 {
            tokio::select! {
                _ = agent.wake.notified() => {}
                _ = agent.session.progress().notified() => {}
                Some(c) = acks.recv() => {
                    if let Ok(Some(Err(e))) = agent.on_journal(move |j| j.ack(c)).await {
                        error!("journal ack: {e}");
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Journal housekeeping every second (fsync interval, ack persistence, age bound), marking an A/B
/// slot good, and the health topic.
async fn housekeeping(agent: Arc<Agent>, health_every: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_health = Instant::now() - health_every;
    let mut last_mark = Instant::now() - Duration::from_secs(5);
    // The journal's own tick in its own task: on a slow card it waits for fsyncs, health does not.
    let a = agent.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match a.on_journal(|j| j.tick()).await {
                Ok(Some(Err(e))) => error!("journal: {e}"),
                Ok(None) => return, // closed: shutting down
                _ => {}
            }
        }
    });
    loop {
        tick.tick().await;
        // A/B updates: a slot on trial is marked good once the agent is connected and has read its
        // things; otherwise U-Boot's attempt counter (and boot-deadline) take the gateway back.
        let pending = lock(&agent.system).pending;
        if pending && last_mark.elapsed() >= Duration::from_secs(5) {
            let things: Vec<(u64, Option<bool>)> = agent
                .status
                .snapshot()
                .values()
                .map(|t| (t.readings, t.available))
                .collect();
            if crate::update::healthy(agent.session.connected(), agent.things_configured, &things) {
                last_mark = Instant::now();
                let marked = tokio::task::spawn_blocking(|| {
                    let r = crate::update::mark_good();
                    (r, crate::update::read())
                })
                .await;
                if let Ok((r, system)) = marked {
                    match r {
                        Ok(()) => {
                            info!(slot = ?system.slot, version = ?system.version, "healthy: slot marked good")
                        }
                        Err(e) => warn!("cannot mark the slot good yet: {e}"),
                    }
                    *lock(&agent.system) = system;
                }
            }
        }
        if last_health.elapsed() >= health_every {
            last_health = Instant::now();
            if let Ok(system) = tokio::task::spawn_blocking(crate::update::read).await {
                *lock(&agent.system) = system;
            }
            let h = agent.health().to_string();
            // QoS 0: a missed health message is replaced by the next one.
            agent.session.publish_qos0(&agent.topics.health(), h);
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
        agent.status.outcome(&ids, &result, every);
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
        // The driver's key: the config's window, else its default.
        let debounce = Duration::from_millis(thing.key("debounce_ms") as u64);
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
        agent.status.outcome(&ids, &result, retry);
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
            agent.status.count_error(id);
            agent.status.publish_result(id, &outcome.to_json());
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
                    agent.status.count_error(&thing.id.to_string());
                    continue;
                }
            };
            agent
                .status
                .outcome(&[thing.id.to_string()], &result, Duration::ZERO);
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
