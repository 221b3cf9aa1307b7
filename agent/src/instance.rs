//! The instance manager at run time (paper §II): joins the instance on the shared broker, shares
//! this gateway's resources, tracks the other members and their trust, and places VM requests with
//! the allocator over the shared view — on this gateway, or on another that re-checks and answers.
//!
//! Topics, under `<prefix>/<instance>/$instance/<gateway>/`:
//! - `announce` (retained): the signed `Announce` (credential + resource report), on change and
//!   every `announce_secs`; a newcomer learns every member from these at once;
//! - `msg`: heartbeats, deploy requests/answers (addressed), trust reports, and the `Join` sent on
//!   every connect: every member that is up answers it with its announce (jittered, at most one
//!   answer per [`ANSWER_GAP_MS`]), so a member learns the others without retained delivery.
//!
//! VM requests come in on `<prefix>/<gateway>/vm/request` as `{"id":"r1","template":"app"}` and
//! every outcome is published on `<prefix>/<gateway>/vm/result`:
//! `{"id","decision":"local|remote|cancel","target","host","vm","resumed","reason","attempts"}`
//! (`target`: the gateway or cloud; `host`: the gateway that runs the VM or holds the cloud's
//! credentials; `vm`: the VM's name or remote id). `{"id":"r2","release":"<vm>","target":"<cloud>"}`
//! on the gateway holding the cloud stops a remote VM (kept for a later request of its template).
//!
//! What "deploy" does: the chosen gateway re-checks the request against its own live capacity and
//! reserves it (its report changes at once), then has `betaas-vmd` resume or start the VM. A Remote
//! decision is carried out by the gateway holding the cloud's credentials (this one, or another
//! asked on the bus) through [`crate::cloud::monitor::deploy`]; a cloud that fails is left out and
//! the decision taken again, so it falls back to local or cancels.

mod cluster;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use betaas_core::allocator::{self, Policy, Request, Res, Template};
use betaas_core::instance::answer::{Answers, Scheduled};
use betaas_core::instance::floors::{Floors, Urgency};
use betaas_core::instance::membership::{self, Event, Instance};
use betaas_core::instance::msg::{self, Body, Counter, Credential, ResourceReport};
use betaas_core::instance::trust::Observation;
use betaas_core::lifecycle::{self, ReleaseAction, Reservations};
use betaas_core::placement::{Placement, Step, Target};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::clock::mono_millis;
use crate::config::InstanceConfig;
use crate::session::Session;

/// Key material of one gateway, as provisioned at flash time under `[instance] keys`.
pub struct Keys {
    pub instance: VerifyingKey,
    pub gateway: SigningKey,
    pub credential: Credential,
}

pub const INSTANCE_PUB: &str = "instance.pub";
pub const GATEWAY_KEY: &str = "gateway.key";
pub const CREDENTIAL: &str = "credential";

fn read32(path: &Path) -> Result<[u8; 32], String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    b.try_into()
        .map_err(|_| format!("{}: not a 32-byte key", path.display()))
}

/// A private key file: refused if group or others may read it.
pub fn read_secret_key(path: &Path) -> Result<SigningKey, String> {
    crate::config::private_file(path)?;
    Ok(SigningKey::from_bytes(&read32(path)?))
}

/// `dir/credential`, which must be for `key` (read from `key_path`). Its signature is the
/// caller's to check: a gateway's and a client's are in different domains.
pub fn read_credential(
    dir: &Path,
    key: &SigningKey,
    key_path: &Path,
) -> Result<Credential, String> {
    let path = dir.join(CREDENTIAL);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let credential: Credential =
        postcard::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if credential.key != key.verifying_key().to_bytes() {
        return Err(format!(
            "{}: credential is for another key than {}",
            path.display(),
            key_path.display()
        ));
    }
    Ok(credential)
}

impl Keys {
    pub fn load(dir: &Path) -> Result<Keys, String> {
        let key_path = dir.join(GATEWAY_KEY);
        let gateway = read_secret_key(&key_path)?;
        let instance = VerifyingKey::from_bytes(&read32(&dir.join(INSTANCE_PUB))?)
            .map_err(|e| format!("{}: {e}", dir.join(INSTANCE_PUB).display()))?;
        let cred_path = dir.join(CREDENTIAL);
        let credential = read_credential(dir, &gateway, &key_path)?;
        credential
            .verify(&instance)
            .map_err(|e| format!("{}: {e}", cred_path.display()))?;
        Ok(Keys {
            instance,
            gateway,
            credential,
        })
    }
}

/// A random number from the kernel's CSPRNG (request ids).
pub fn random_u64() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if read.is_err() {
        // Never seen on Linux; fall back to something unique, if guessable.
        return crate::clock::unix_millis() ^ crate::clock::mono_millis().rotate_left(32);
    }
    u64::from_le_bytes(b)
}

/// A fresh 32-byte secret from the kernel's CSPRNG.
pub fn random_key() -> std::io::Result<SigningKey> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(SigningKey::from_bytes(&b))
}

/// Where an accepted deployment runs: the VM's name (local, empty without a VM manager) or its
/// id on the remote cloud.
#[derive(Debug, Clone, Default)]
struct Placed {
    vm: String,
    resumed: bool,
    /// Where the VM's service answers (a request with a WAR), and whether it answered in time.
    url: Option<String>,
    ready: bool,
    /// The sha256 of the WAR handed to the guest (given in the request, or computed).
    war_sha256: Option<String>,
}

/// This gateway's own side: capacity for VMs and what is reserved on it.
struct Local {
    capacity: Res,
    res: Reservations,
    /// The reservations were rebuilt from the VM manager's list (always true without one): until
    /// then nothing is reserved here, so VMs still running from before a restart are never
    /// offered twice.
    synced: bool,
}

struct State {
    inst: Instance,
    /// What this gateway can run: the VM manager's probe when there is one, else the config.
    virt: betaas_core::allocator::Virt,
    local: Local,
    counter: Counter,
    /// Requests waiting for an answer: the gateway asked, and where its answer goes. An answer
    /// from any other gateway is ignored.
    waiting: BTreeMap<u64, (String, oneshot::Sender<Result<Placed, String>>)>,
    /// The VM manager's latest list with each VM's figures, for the health topic.
    vm_stats: Vec<(betaas_proto::VmInfo, Option<betaas_proto::VmStats>)>,
    /// When to answer join requests with our announce.
    answers: Answers,
    /// Join requests answered, and joins sent, for the health topic.
    answered: u64,
    joins_sent: u64,
}

pub struct Runtime {
    cfg: InstanceConfig,
    /// Applications fetched for requests (`data_dir/wars`), until `betaas-vmd` has its copy.
    wars_dir: std::path::PathBuf,
    gateway: String,
    keys: Keys,
    session: Session,
    base: String,
    my_base: String,
    counter_path: std::path::PathBuf,
    /// The last counter accepted from each sender and client, kept across restarts.
    floors_path: std::path::PathBuf,
    /// Where an update bundle is downloaded (the data partition).
    data_dir: std::path::PathBuf,
    floors_io: Mutex<()>,
    state: Mutex<State>,
    templates: Vec<Template>,
    /// A VM stats request is in flight: a wedged daemon gets one waiting request, not a pile.
    sampling: std::sync::atomic::AtomicBool,
    /// VM requests being decided or carried out (each may wait minutes on a remote cloud).
    in_flight: std::sync::atomic::AtomicUsize,
    /// The remote clouds held here, if any.
    clouds: Option<crate::cloud::monitor::Clouds>,
    /// The resource monitor's latest figures (battery, forecast) for the resource reports.
    resources: crate::resources::Handle,
    /// The clusters this gateway manages (requests naming a `"cluster"`), one change at a time;
    /// kept in `clusters_path`.
    clusters: tokio::sync::Mutex<BTreeMap<String, cluster::ClusterRec>>,
    clusters_path: std::path::PathBuf,
    /// Clusters read at start are planned from this moment on (see `cluster`'s module doc).
    clusters_adopt_at: Option<std::time::Instant>,
}

/// One request's place among the [`MAX_REQUESTS`], given back when its task ends (or panics).
struct InFlight(Arc<Runtime>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// At most one announce in answer to join requests per this long, however many arrive.
pub const ANSWER_GAP_MS: u64 = 500;
/// Each answer waits a random 0..this, so the members do not all announce at once.
pub const ANSWER_JITTER_MS: u64 = 200;

/// Beyond its deploy and readiness waits, what another gateway may take to fetch a WAR.
const WAR_FETCH_MARGIN_MS: u64 = 60_000;

/// How often floors moved only by harmless messages are written.
const FLOORS_EVERY: Duration = Duration::from_secs(30);

/// More VM requests than this at once are answered "busy" at once: a flood of requests must not
/// pile up tasks and waits without bound.
pub const MAX_REQUESTS: usize = 16;

impl Runtime {
    pub fn new(
        cfg: InstanceConfig,
        gateway: &str,
        prefix: &str,
        data_dir: &Path,
        session: Session,
        clouds: Option<crate::cloud::monitor::Clouds>,
        resources: crate::resources::Handle,
    ) -> Result<Arc<Runtime>, String> {
        let keys = Keys::load(&cfg.keys)?;
        if keys.credential.gateway != gateway {
            return Err(format!(
                "credential is for gateway {:?}, this is {gateway:?}",
                keys.credential.gateway
            ));
        }
        let counter_path = data_dir.join("instance").join("counter");
        if let Some(dir) = counter_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let reserved = std::fs::read_to_string(&counter_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let floors_path = data_dir.join("instance").join("floors");
        let floors = match std::fs::read(&floors_path) {
            Ok(bytes) => Floors::decode(&bytes).unwrap_or_else(|e| {
                // Starting empty reopens replays of old messages until each sender is heard
                // from again: loud, but better than refusing every member.
                warn!(file = %floors_path.display(), "replay floors unreadable ({e}): starting without them");
                Floors::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Floors::new(),
            Err(e) => {
                warn!(file = %floors_path.display(), "replay floors unreadable ({e}): starting without them");
                Floors::new()
            }
        };
        let settings = membership::Settings {
            heartbeat_interval_ms: cfg.heartbeat_ms,
            heartbeat_timeout_ms: cfg.timeout_ms,
            dismiss_threshold: cfg.dismiss_threshold,
            dismiss_after_ms: cfg.dismiss_after_secs * 1000,
            readmit_after_ms: cfg.readmit_after_secs * 1000,
        };
        let clusters_path = data_dir.join("instance").join("clusters.json");
        let clusters = read_clusters(&clusters_path);
        let clusters_adopt_at = (!clusters.is_empty()).then(|| {
            std::time::Instant::now()
                + Duration::from_millis(cfg.timeout_ms.saturating_add(2 * cfg.heartbeat_ms))
        });
        let templates = cfg.templates.iter().map(|t| t.to_core()).collect();
        let capacity = Res::new(cfg.capacity.cpus, cfg.capacity.mem_mb, cfg.capacity.disk_gb);
        Ok(Arc::new(Runtime {
            wars_dir: data_dir.join("wars"),
            base: format!("{prefix}/{}/$instance", cfg.name),
            my_base: format!("{prefix}/{gateway}"),
            gateway: gateway.to_owned(),
            state: Mutex::new(State {
                inst: {
                    let mut inst = Instance::new(gateway, keys.instance, settings);
                    inst.restore_floors(floors);
                    inst
                },
                virt: cfg.virt,
                local: Local {
                    capacity,
                    res: Reservations::default(),
                    synced: cfg.vmd_socket.is_none(),
                },
                counter: Counter::resume(reserved),
                waiting: BTreeMap::new(),
                vm_stats: Vec::new(),
                answers: Answers::new(ANSWER_GAP_MS),
                answered: 0,
                joins_sent: 0,
            }),
            keys,
            session,
            counter_path,
            floors_path,
            data_dir: data_dir.to_path_buf(),
            floors_io: Mutex::new(()),
            templates,
            cfg,
            sampling: std::sync::atomic::AtomicBool::new(false),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            clouds,
            resources,
            clusters: tokio::sync::Mutex::new(clusters),
            clusters_path,
            clusters_adopt_at,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the replay floors (temp + fsync + rename: a power cut leaves the old or the new
    /// file), one writer at a time: the snapshot is taken in that order, so a write that returns
    /// has everything accepted before it. Blocking; also called at a clean stop.
    pub fn save_floors(&self) {
        let _one_writer = self.floors_io.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self.state().inst.take_floors().encode();
        if let Err(e) = crate::resources::history::write_atomic(&self.floors_path, &bytes) {
            warn!(file = %self.floors_path.display(), "cannot persist the replay floors: {e}");
        }
    }

    /// Before acting on a message whose replay would act again (a deploy request for us, a
    /// client's request): its floor is on disk when this returns. Awaited only by the task that
    /// acts, never by the loop that reads the bus (an fsync may take seconds on a busy card).
    async fn floors_durable(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.save_floors()).await;
    }

    /// The topic filters to subscribe to after every connect.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![
            format!("{}/+/+", self.base),
            format!("{}/vm/request", self.my_base),
        ]
    }

    pub fn owns(&self, topic: &str) -> bool {
        topic.starts_with(&self.base) || topic == format!("{}/vm/request", self.my_base)
    }

    fn report(&self, st: &State) -> ResourceReport {
        let latest = self.resources.latest();
        ResourceReport {
            capacity: st.local.capacity,
            used: st.local.res.used(),
            forecast_free: latest.and_then(|l| crate::resources::forecast_res(&l.forecast)),
            virt: st.virt,
            battery: latest.and_then(|l| l.battery),
            vms: st.local.res.count(),
            powerful: self.cfg.powerful,
            remotes: crate::cloud::monitor::allocator_view(self.clouds.as_ref()),
        }
    }

    /// Signs and sends; the counter bound is persisted before the message leaves.
    fn send(&self, topic: &str, retain: bool, to: Option<&str>, body: Body) {
        let bytes = {
            let mut st = self.state();
            let (n, persist) = st.counter.next();
            if let Some(bound) = persist {
                if let Err(e) = crate::resources::history::write_atomic(
                    &self.counter_path,
                    bound.to_string().as_bytes(),
                ) {
                    warn!(file = %self.counter_path.display(), "cannot persist the message counter: {e}");
                }
            }
            msg::encode(
                &self.keys.gateway,
                membership::envelope(&self.gateway, n, to, body),
            )
        };
        // Dropped while disconnected: heartbeats are periodic and the announce is made afresh
        // (new counter) on every connect.
        self.session.publish(topic, retain, bytes);
    }

    fn announce(&self) {
        let report = {
            let mut st = self.state();
            // Any announce answers the join requests pending.
            st.answers.announced(mono_millis());
            Some(self.report(&st))
        };
        let body = Body::Announce {
            credential: self.keys.credential.clone(),
            report,
        };
        self.send(
            &format!("{}/{}/announce", self.base, self.gateway),
            true,
            None,
            body,
        );
    }

    /// Asks every member that is up to announce itself (sent on every connect): on a broker that
    /// does not deliver retained announces to our wildcard subscription, their answers are how we
    /// learn them. It is an announce of ours too.
    fn join(&self) {
        let report = {
            let mut st = self.state();
            st.joins_sent += 1;
            Some(self.report(&st))
        };
        let body = Body::Join {
            credential: self.keys.credential.clone(),
            report,
        };
        self.send(&self.msg_topic(), false, None, body);
    }

    /// A member joined or asked us to announce: our announce goes out after a jitter, at most one
    /// per [`ANSWER_GAP_MS`] (one answer serves every join that arrived before it).
    fn answer_join(self: &Arc<Self>) {
        let now = mono_millis();
        let jitter = random_u64() % (ANSWER_JITTER_MS + 1);
        let scheduled = self.state().answers.requested(now, jitter);
        let Scheduled::At(due) = scheduled else {
            return; // the pending answer serves this one too
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(due.saturating_sub(now))).await;
            let go = {
                let mut st = me.state();
                let go = st.answers.due(mono_millis().max(due));
                if go {
                    st.answered += 1;
                }
                go
            };
            if go {
                me.announce();
            }
        });
    }

    fn msg_topic(&self) -> String {
        format!("{}/{}/msg", self.base, self.gateway)
    }

    /// Announce, heartbeats, timeouts and trust reports, forever.
    pub async fn run_timers(self: Arc<Self>) {
        // The capability the instance sees comes from a real probe by the VM manager (libvirt's
        // own capabilities would claim KVM where it does not work). A probe boots a guest and a
        // wedged daemon never answers: it runs beside the heartbeats, never before them.
        if let Some(socket) = self.cfg.vmd_socket.clone() {
            let me = self.clone();
            tokio::spawn(async move {
                let vmd = crate::vm::Vmd::new(&socket);
                match tokio::task::spawn_blocking(move || vmd.capability()).await {
                    Ok(Ok(virt)) => {
                        info!(?virt, "virtualization capability from betaas-vmd's probe");
                        me.state().virt = virt;
                        me.announce();
                    }
                    Ok(Err(e)) => warn!("keeping the configured virtualization: {e}"),
                    Err(e) => warn!("keeping the configured virtualization: {e}"),
                }
            });
        }
        // The reservations come from what the VM manager runs (an agent restart leaves its VMs
        // running): nothing is reserved here before that list is read.
        self.clone().sample_vms();
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_ms));
        let mut connects = self.session.connects();
        let mut last_floors = std::time::Instant::now();
        // Since when this gateway hears the instance: members are only known to be down after
        // a whole `timeout_ms` of being connected (during our own outage every one looks down).
        let mut hearing_since = std::time::Instant::now();
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = connects.changed() => {
                    // (Re)connected: the broker may have forgotten our retained announce, and we
                    // may have missed the others' (or the broker delivers none to wildcards).
                    if changed.is_ok() {
                        hearing_since = std::time::Instant::now();
                        self.announce();
                        self.join();
                    }
                    continue;
                }
            }
            if n.is_multiple_of(10) {
                self.announce();
            }
            self.send(&self.msg_topic(), false, None, Body::Heartbeat);
            if n % 5 == 4 {
                let scores = self.state().inst.scores();
                self.send(&self.msg_topic(), false, None, Body::Trust { scores });
            }
            if n % 10 == 5 {
                self.clone().sample_vms();
            }
            let heard = self.session.connected()
                && hearing_since.elapsed() >= Duration::from_millis(self.cfg.timeout_ms);
            if n % 5 == 2 && heard {
                // The Big Data Manager: workers on a gateway that went down are replaced. Not
                // while this gateway is cut off from the broker, or just back: the others only
                // look down then, and their workers would be replaced for nothing.
                let me = self.clone();
                tokio::spawn(async move { me.reconcile_all().await });
            }
            // Heartbeats, trust and announces move the floors all the time: written at most
            // every FLOORS_EVERY (an SD card wears), so after a power cut only the last few
            // seconds of such harmless messages could be replayed.
            if last_floors.elapsed() >= FLOORS_EVERY
                && self.state().inst.floors_dirty() > Urgency::None
            {
                last_floors = std::time::Instant::now();
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.save_floors());
            }
            n += 1;
            let events = self.state().inst.tick(mono_millis());
            for e in events {
                log_event(&e);
            }
        }
    }

    /// Fetches the VM manager's list and per-VM stats off the runtime (a wedged daemon delays
    /// only this) and re-syncs the reservations to it, in a task of its own (one at a time).
    fn sample_vms(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Some(socket) = self.cfg.vmd_socket.clone() else {
            return;
        };
        if self.sampling.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            if let Err(e) = self.sync_vms(&socket).await {
                warn!("VM stats: {e}");
            }
            self.sampling.store(false, Ordering::SeqCst);
        });
    }

    /// Reads the VM manager's list and figures, and re-syncs the reservations to it: VMs still
    /// running from before an agent restart are counted again, a VM whose restart budget is spent
    /// gives its share back. A list fetched while a deployment or release changed the
    /// reservations is not applied.
    async fn sync_vms(self: &Arc<Self>, socket: &Path) -> Result<(), String> {
        let vmd = crate::vm::Vmd::new(socket);
        let generation = self.state().local.res.generation();
        let stats = tokio::task::spawn_blocking(move || vmd.stats())
            .await
            .map_err(|e| e.to_string())??;
        let vms: Vec<_> = stats
            .iter()
            .map(|(v, s)| crate::vm::local_vm(v, s.as_ref()))
            .collect();
        let rebuilt = lifecycle::rebuild(&vms, &self.templates);
        for name in &rebuilt.no_size {
            warn!(vm = %name, "a running VM of a template this gateway does not configure, without figures: counted as nothing");
        }
        let changed = {
            let mut st = self.state();
            st.vm_stats = stats;
            let before = (st.local.res.used(), st.local.res.count());
            let applied = st.local.res.resync(generation, &rebuilt);
            let first = applied && !st.local.synced;
            if first {
                st.local.synced = true;
                info!(
                    vms = st.local.res.count(),
                    used = %st.local.res.used(),
                    "reservations rebuilt from the VM manager's list"
                );
            }
            first || before != (st.local.res.used(), st.local.res.count())
        };
        if changed {
            self.announce();
        }
        Ok(())
    }

    /// One message on an instance topic or a VM request.
    pub async fn incoming(self: &Arc<Self>, topic: &str, payload: Vec<u8>) {
        if topic == format!("{}/vm/request", self.my_base) {
            use std::sync::atomic::Ordering;
            if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let why = format!("busy: {MAX_REQUESTS} VM requests in flight; try again later");
                self.result(&request_id(&payload), "cancel", "", "", None, &why, 0);
                return;
            }
            let slot = InFlight(self.clone());
            tokio::spawn(async move {
                slot.0.clone().request(&payload).await;
                drop(slot);
            });
            return;
        }
        let result = self.state().inst.receive(&payload, mono_millis());
        let events = match result {
            Ok(ev) => ev,
            Err(e) => {
                warn!(topic, "instance message rejected: {e}");
                return;
            }
        };
        for e in events {
            log_event(&e);
            match e {
                // Let the newcomer (or the member back, or the one asking) see us soon.
                Event::Joined(_) | Event::Back(_) | Event::JoinRequest(_) => self.answer_join(),
                Event::DeployRequest {
                    from,
                    request,
                    template,
                    res,
                    cloud,
                    env,
                    cluster,
                    war,
                } => {
                    // Starting a VM takes seconds (minutes on a remote cloud): answer from a task
                    // of its own.
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.floors_durable().await;
                        let done = match (&cloud, &war) {
                            (Some(c), _) => me.deploy_remote(c, &template, res).await,
                            (None, Some((url, sha256))) => {
                                me.deploy_war_for(&from, request, res, &template, url, sha256)
                                    .await
                            }
                            (None, None) => {
                                me.deploy(res, &template, None, cluster.then_some(&env[..]))
                                    .await
                            }
                        };
                        let answer = match done {
                            Ok(p) if cluster => Body::ClusterAnswer {
                                request,
                                accepted: true,
                                reason: if p.resumed {
                                    "resumed".into()
                                } else {
                                    String::new()
                                },
                                vm: p.vm,
                                url: p.url,
                            },
                            Ok(p) => Body::DeployAnswer {
                                request,
                                accepted: true,
                                reason: if p.resumed {
                                    "resumed".into()
                                } else {
                                    String::new()
                                },
                                vm: p.vm,
                            },
                            Err(reason) => Body::DeployAnswer {
                                request,
                                accepted: false,
                                reason,
                                vm: String::new(),
                            },
                        };
                        me.send(&me.msg_topic(), false, Some(&from), answer);
                    });
                }
                Event::ReleaseRequest { from, request, vm } => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.floors_durable().await;
                        let r = me.release_local(&format!("{from}-{request}"), &vm).await;
                        let accepted = r["decision"] == "released";
                        let reason = r["reason"].as_str().unwrap_or("").to_owned();
                        let answer = Body::DeployAnswer {
                            request,
                            accepted,
                            reason,
                            vm,
                        };
                        me.send(&me.msg_topic(), false, Some(&from), answer);
                    });
                }
                Event::DeployAnswer {
                    from,
                    request,
                    accepted,
                    reason,
                    vm,
                    url,
                } => {
                    let waiter = {
                        let mut st = self.state();
                        match st.waiting.get(&request) {
                            Some((asked, _)) if *asked == from => st.waiting.remove(&request),
                            Some((asked, _)) => {
                                warn!(gateway = %from, asked = %asked, "deploy answer from a gateway that was not asked: ignored");
                                *st.inst.rejected.entry("answer-not-asked").or_default() += 1;
                                None
                            }
                            None => None,
                        }
                    };
                    if let Some((_, tx)) = waiter {
                        let answer = if accepted {
                            Ok(Placed {
                                resumed: reason == "resumed",
                                vm,
                                url,
                                ..Placed::default()
                            })
                        } else {
                            Err(reason)
                        };
                        let _ = tx.send(answer);
                    }
                }
                _ => {}
            }
        }
    }

    /// Re-checks a request against this gateway's live capacity, reserves it, and (with a
    /// `vmd_socket`) has `betaas-vmd` resume or start a VM of the template; a VM manager failure
    /// gives the reservation back and refuses, so the requester decides again.
    async fn deploy(
        self: &Arc<Self>,
        res: Res,
        template: &str,
        war: Option<&crate::war::Fetched>,
        env: Option<&[(String, String)]>,
    ) -> Result<Placed, String> {
        // Just started: what still runs here comes first (it may have been running all along).
        let unsynced = self
            .cfg
            .vmd_socket
            .clone()
            .filter(|_| !self.state().local.synced);
        if let Some(socket) = unsynced {
            self.sync_vms(&socket).await?;
        }
        let token = self.reserve(res, template)?;
        let Some(socket) = self.cfg.vmd_socket.clone() else {
            self.state().local.res.keep_bare(token);
            return Ok(Placed::default());
        };
        let vmd = crate::vm::Vmd::new(&socket);
        let t = template.to_owned();
        let war_file = war.map(|w| betaas_proto::WarFile {
            path: w.path.to_string_lossy().into_owned(),
            sha256: w.sha256.clone(),
        });
        let env = env.map(<[_]>::to_vec);
        let started = tokio::task::spawn_blocking(move || match (war_file, env) {
            (Some(w), _) => vmd.acquire_service(&t, Some(w)),
            (None, Some(env)) => vmd.acquire_with(&t, &env),
            (None, None) => vmd.acquire(&t).map(|(vm, resumed)| (vm, resumed, None)),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match started {
            Ok((vm, resumed, url)) => {
                info!(template, vm = %vm.name, state = ?vm.state, resumed, ?url, "VM running");
                self.state().local.res.started(token, &vm.name);
                // The result names a URL that answers: a deployed application is waited for (a
                // cluster node's URL is not HTTP: its readiness is its console marker).
                let ready = match url.as_ref().filter(|_| war.is_some()) {
                    Some(u) => {
                        let wait = Duration::from_secs(self.cfg.app_ready_secs);
                        crate::war::answers(u, wait).await
                    }
                    None => false,
                };
                Ok(Placed {
                    vm: vm.name,
                    resumed,
                    url,
                    ready,
                    war_sha256: war.map(|w| w.sha256.clone()),
                })
            }
            Err(e) => {
                warn!(template, "VM manager failed: {e}");
                self.state().local.res.abandon(token);
                self.announce();
                Err(e)
            }
        }
    }

    /// Another gateway's request with an application (`WarDeploy`): fetched here, within this
    /// gateway's own `war_max_mb`, and deployed only if its sha256 is the one the requester
    /// computed or was given (the archive on the server may have changed since); anything else is
    /// a refusal with the reason, and nothing is started.
    async fn deploy_war_for(
        self: &Arc<Self>,
        from: &str,
        request: u64,
        res: Res,
        template: &str,
        url: &str,
        sha256: &str,
    ) -> Result<Placed, String> {
        if !self.templates.iter().any(|t| t.name == template) {
            return Err(format!("template {template:?} is not configured here"));
        }
        let max = self.cfg.war_max_mb.saturating_mul(1024 * 1024);
        let w = match crate::war::fetch(url, Some(sha256), max, &self.wars_dir).await {
            Ok(w) => w,
            Err(why) => {
                warn!(gateway = %from, request, "WAR for another gateway's request refused: {why}");
                return Err(why);
            }
        };
        info!(gateway = %from, request, url, sha256 = %w.sha256, bytes = w.bytes, "WAR fetched for another gateway's request");
        let r = self.deploy(res, template, Some(&w), None).await;
        // betaas-vmd has its own copy by now (or the deployment failed).
        let _ = std::fs::remove_file(&w.path);
        r
    }

    /// A Remote decision on a cloud this gateway holds the credentials for.
    async fn deploy_remote(
        self: &Arc<Self>,
        cloud: &str,
        template: &str,
        res: Res,
    ) -> Result<Placed, String> {
        // The cloud's VM limit holds across the instance: VMs that other holders of the same
        // cloud run count against it here too.
        let others: u32 = {
            let st = self.state();
            let me = self.report(&st);
            st.inst
                .view(&me, &[], &me.remotes)
                .remotes
                .iter()
                .filter(|r| r.name == cloud && r.owner != self.gateway)
                .map(|r| r.in_use)
                .sum()
        };
        let r =
            crate::cloud::monitor::deploy(self.clouds.as_ref(), cloud, template, res, others).await;
        // The cloud's VM count changed (or it proved unreachable): tell the instance.
        self.announce();
        match r {
            Ok(d) => Ok(Placed {
                vm: d.id,
                resumed: d.resumed,
                ..Placed::default()
            }),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Re-checks a request against this gateway's live capacity and reserves it (under a token).
    fn reserve(&self, res: Res, template: &str) -> Result<u64, String> {
        let token = random_u64();
        let accepted = {
            let mut st = self.state();
            if !st.local.synced {
                Err(
                    "the VM manager's list is not applied yet (this agent just started): what \
                     still runs here is not known"
                        .to_owned(),
                )
            } else {
                let capacity = st.local.capacity;
                st.local.res.reserve(token, res, &capacity).map(|()| token)
            }
        };
        if accepted.is_ok() {
            info!(template, "deployment accepted and reserved");
            self.announce();
        }
        accepted
    }

    /// A VM request: decide over the shared view; a chosen gateway or cloud that refuses or does
    /// not answer is left out and the decision taken again.
    async fn request(self: Arc<Self>, payload: &[u8]) {
        let v = match self.authorize(payload).await {
            Ok(v) => v,
            Err((id, why)) => {
                warn!(request = %id, "VM request refused: {why}");
                self.result(&id, "cancel", "", "", None, &why, 0);
                return;
            }
        };
        self.carry_out(v).await;
    }

    /// A request from the local API (`POST /api/v1/vms`, `DELETE /api/v1/vms/{vm}`): the API's
    /// bearer token stands for the client key, so it is carried out like a signed request, within
    /// the same [`MAX_REQUESTS`], in a task of its own (a client that goes away cancels nothing).
    /// Returns the `vm/result` object, also published on the bus.
    pub async fn local_request(self: &Arc<Self>, v: serde_json::Value) -> serde_json::Value {
        use std::sync::atomic::Ordering;
        let id = v["id"].as_str().unwrap_or("").to_owned();
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let why = format!("busy: {MAX_REQUESTS} VM requests in flight; try again later");
            return self.result(&id, "cancel", "", "", None, &why, 0);
        }
        let slot = InFlight(self.clone());
        let task = tokio::spawn(async move {
            let r = slot.0.clone().carry_out(v).await;
            drop(slot);
            r
        });
        task.await.unwrap_or_else(|e| {
            json!({"id": id, "decision": "error", "reason": format!("request task failed: {e}")})
        })
    }

    /// An authorized request or release object: decided and carried out; the result published.
    async fn carry_out(self: Arc<Self>, v: serde_json::Value) -> serde_json::Value {
        let id = v["id"].as_str().unwrap_or("").to_owned();
        if let Some(url) = v.get("update") {
            return self.update(&id, url.as_str().unwrap_or("")).await;
        }
        if let Some(vm) = v.get("release") {
            return match (vm.as_str(), &v["target"]) {
                (Some(vm), serde_json::Value::Null) => self.release_local(&id, vm).await,
                _ => self.release(&id, vm, &v["target"]).await,
            };
        }
        if !v["cluster"].is_null() {
            return self.cluster_request(&v).await;
        }
        let name = v["template"].as_str().unwrap_or("");
        let Some(template) = self.templates.iter().find(|t| t.name == name).cloned() else {
            let known: Vec<&str> = self.templates.iter().map(|t| t.name.as_str()).collect();
            let why = format!("unknown template {name:?}; registered: {known:?}");
            return self.result(&id, "cancel", "", "", None, &why, 0);
        };
        // An application is fetched before anything is decided: a bad URL, a too large archive or
        // a wrong sha256 ends the request with nothing started.
        let war = match (&v["war"], v["war"].as_str()) {
            (serde_json::Value::Null, _) => None,
            (_, None) => {
                let why = "\"war\" must be the application's http(s) URL (a string)";
                return self.result(&id, "cancel", "", "", None, why, 0);
            }
            (_, Some(url)) => {
                let max = self.cfg.war_max_mb.saturating_mul(1024 * 1024);
                match crate::war::fetch(url, v["war_sha256"].as_str(), max, &self.wars_dir).await {
                    Ok(w) => {
                        info!(request = %id, url, sha256 = %w.sha256, bytes = w.bytes, "WAR fetched");
                        Some(w)
                    }
                    Err(why) => return self.result(&id, "cancel", "", "", None, &why, 0),
                }
            }
        };
        let r = self.place(&id, &template, war.as_ref()).await;
        if let Some(w) = &war {
            // betaas-vmd has its own copy by now (or the request failed).
            let _ = std::fs::remove_file(&w.path);
        }
        r
    }

    /// Decides `template`'s placement and carries it out, leaving out every gateway or cloud that
    /// refuses. With a WAR (fetched here already: its sha256 is known) any gateway may be chosen,
    /// no remote cloud: another gateway gets the URL and the sha256 and fetches it itself.
    async fn place(
        self: &Arc<Self>,
        id: &str,
        template: &Template,
        war: Option<&crate::war::Fetched>,
    ) -> serde_json::Value {
        let id = id.to_owned();
        let template = template.clone();
        // The loop's decisions are betaas_core::placement's; here only the I/O of each step.
        let mut p = Placement::new();
        while p.more() {
            let (decision, request) = {
                let st = self.state();
                // Not guessable: a stranger cannot answer a request it has not seen.
                let request = random_u64();
                let me = self.report(&st);
                let mut view = st.inst.view(&me, &self.templates, &me.remotes);
                // A WAR goes to a gateway (which fetches it), never to a remote cloud.
                p.narrow(&mut view, war.is_some());
                let req = Request {
                    id: request,
                    template: template.clone(),
                };
                (allocator::decide(&req, &view, &Policy::default()), request)
            };
            let reason = decision.explanation();
            let attempt = p.attempt() + 1;
            match p.next(&decision, &self.gateway) {
                Step::Cancel(why) => {
                    return self.result(&id, "cancel", "", "", None, &why, attempt)
                }
                Step::Remote { cloud, holder } => {
                    let placed = if holder == self.gateway {
                        self.deploy_remote(&cloud, &template.name, template.res())
                            .await
                    } else {
                        let wait = self.cfg.remote_timeout_ms;
                        self.ask(&holder, request, &template, Some(&cloud), wait)
                            .await
                            .map_err(|e| e.unwrap_or_else(|| format!("no answer within {wait} ms")))
                    };
                    match placed {
                        Ok(pl) => {
                            return self.result(
                                &id,
                                "remote",
                                &cloud,
                                &holder,
                                Some(&pl),
                                &reason,
                                attempt,
                            )
                        }
                        Err(why) => {
                            warn!(request = %id, cloud = %cloud, holder = %holder, "remote deployment failed: {why}");
                            p.refused(Target::Cloud(cloud), &why);
                        }
                    }
                }
                Step::DeployHere => {
                    let gw = self.gateway.clone();
                    match self.deploy(template.res(), &template.name, war, None).await {
                        Ok(pl) => {
                            return self.result(&id, "local", &gw, &gw, Some(&pl), &reason, attempt)
                        }
                        Err(why) => {
                            warn!(request = %id, "own live state refuses: {why}");
                            p.refused(Target::Gateway(gw), &why);
                        }
                    }
                }
                Step::Ask { gateway: gw } => {
                    let asked = match war {
                        None => {
                            let wait = self.cfg.deploy_timeout_ms;
                            (self.ask(&gw, request, &template, None, wait).await, wait)
                        }
                        Some(w) => self.ask_war(&gw, request, &template, w).await,
                    };
                    let (asked, wait) = asked;
                    match asked {
                        Ok(pl) => {
                            self.state().inst.observe(&gw, Observation::DeploySucceeded);
                            return self.result(
                                &id,
                                "local",
                                &gw,
                                &gw,
                                Some(&pl),
                                &reason,
                                attempt,
                            );
                        }
                        Err(Some(why)) => {
                            warn!(request = %id, gateway = %gw, "refused: {why}");
                            self.state().inst.observe(&gw, Observation::DeployRefused);
                            p.refused(Target::Gateway(gw), &why);
                        }
                        Err(None) => {
                            warn!(request = %id, gateway = %gw, "no answer within {wait} ms");
                            self.state().inst.observe(&gw, Observation::DeployFailed);
                            p.refused(Target::Gateway(gw), &format!("no answer within {wait} ms"));
                        }
                    }
                }
            }
        }
        self.result(&id, "cancel", "", "", None, &p.exhausted(), p.attempt())
    }

    /// A VM request or release is carried out only when signed by a client key the instance
    /// admitted, addressed to this gateway, not a replay, and for this instance. Err: the request's
    /// id (as far as it can be read) and why not.
    async fn authorize(
        self: &Arc<Self>,
        payload: &[u8],
    ) -> Result<serde_json::Value, (String, String)> {
        if payload.trim_ascii_start().starts_with(b"{") {
            let id = request_id(payload);
            let why = "unsigned request: VM requests and releases must be signed by a client key \
                       admitted to the instance (betaas-agent instance admit --client; betaas-agent vm request)";
            return Err((id, why.to_owned()));
        }
        let received = self.state().inst.receive_client(payload);
        let req = match received {
            Ok(req) => req,
            Err(e) => return Err((request_id(payload), format!("refused: {e}"))),
        };
        self.floors_durable().await;
        let v: serde_json::Value = serde_json::from_str(&req.request).unwrap_or_default();
        let id = v["id"].as_str().unwrap_or("").to_owned();
        match v["instance"].as_str() {
            Some(name) if name != self.cfg.name.to_string() => Err((
                id,
                format!("signed for instance {name:?}, this is {}", self.cfg.name),
            )),
            _ => {
                info!(request = %id, client = %req.client, "signed VM request");
                Ok(v)
            }
        }
    }

    /// Asks gateway `gw` to deploy (on itself, or on `cloud` whose credentials it holds) and waits
    /// for its answer: `Err(None)` when none came in time.
    async fn ask(
        &self,
        gw: &str,
        request: u64,
        template: &Template,
        cloud: Option<&str>,
        wait_ms: u64,
    ) -> Result<Placed, Option<String>> {
        let body = Body::DeployRequest {
            request,
            template: template.name.clone(),
            res: template.res(),
            cloud: cloud.map(str::to_owned),
        };
        self.ask_body(gw, request, body, wait_ms).await
    }

    /// Asks gateway `gw` to deploy `template` with the application `war` (its URL and the sha256
    /// computed here): it fetches the archive itself. Waits for the fetch, the start and the
    /// application's readiness; then checks from here that the URL answers. Also returns how long
    /// it waited.
    async fn ask_war(
        &self,
        gw: &str,
        request: u64,
        template: &Template,
        war: &crate::war::Fetched,
    ) -> (Result<Placed, Option<String>>, u64) {
        let body = Body::WarDeploy {
            request,
            template: template.name.clone(),
            res: template.res(),
            war: war.url.clone(),
            sha256: war.sha256.clone(),
        };
        // The other gateway's fetch (bounded by its timeouts) and its wait for the application.
        let wait = self
            .cfg
            .deploy_timeout_ms
            .saturating_add(self.cfg.app_ready_secs.saturating_mul(1000))
            .saturating_add(WAR_FETCH_MARGIN_MS);
        let r = self.ask_body(gw, request, body, wait).await;
        let r = match r {
            Ok(mut p) => {
                p.war_sha256 = Some(war.sha256.clone());
                p.ready = match &p.url {
                    Some(u) => crate::war::answers(u, Duration::from_secs(10)).await,
                    None => false,
                };
                Ok(p)
            }
            Err(e) => Err(e),
        };
        (r, wait)
    }

    /// Sends `body` (a deploy or release request numbered `request`) to gateway `gw` and waits
    /// for its answer: `Err(None)` when none came in time, a refusal when `gw` went down first.
    async fn ask_body(
        &self,
        gw: &str,
        request: u64,
        body: Body,
        wait_ms: u64,
    ) -> Result<Placed, Option<String>> {
        let (tx, mut rx) = oneshot::channel();
        self.state().waiting.insert(request, (gw.to_owned(), tx));
        self.send(&self.msg_topic(), false, Some(gw), body);
        // The wait is long (a VM start on a busy card; minutes for a remote cloud), so a gateway
        // that goes down meanwhile is given up when the instance marks it down, not at the end.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        let mut check = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_ms));
        let answer = loop {
            tokio::select! {
                r = &mut rx => break r.ok(),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = check.tick() => {
                    let up = gw == self.gateway
                        || self
                            .state()
                            .inst
                            .members()
                            .get(gw)
                            .is_some_and(|m| m.state == membership::State::Up);
                    if !up {
                        warn!(gateway = %gw, request, "went down while asked: not waiting for its answer");
                        break Some(Err(format!("{gw} went down while asked (no answer)")));
                    }
                }
            }
        };
        self.state().waiting.remove(&request);
        match answer {
            Some(r) => r.map_err(Some),
            None => Err(None),
        }
    }

    /// `{"id","release":"<vm>","target":"<cloud>"}`: stops a remote VM this gateway created.
    async fn release(
        &self,
        id: &str,
        vm: &serde_json::Value,
        target: &serde_json::Value,
    ) -> serde_json::Value {
        let (Some(vm), Some(cloud)) = (vm.as_str(), target.as_str()) else {
            let why = "a release needs \"release\": the VM id and \"target\": its cloud (strings)";
            return self.result(id, "error", "", "", None, why, 0);
        };
        let placed = Placed {
            vm: vm.to_owned(),
            ..Placed::default()
        };
        match crate::cloud::monitor::release(self.clouds.as_ref(), cloud, vm).await {
            Ok(()) => {
                self.announce();
                let me = self.gateway.clone();
                self.result(
                    id,
                    "released",
                    cloud,
                    &me,
                    Some(&placed),
                    "stopped, kept for reuse",
                    0,
                )
            }
            Err(e) => self.result(id, "error", cloud, "", Some(&placed), &e.to_string(), 0),
        }
    }

    /// `{"id","release":"<vm>"}` (no target): stops a VM this gateway runs through its VM manager
    /// (managed save for a VM, shutdown for a container) and gives its reservation back; the next
    /// request for its template resumes it.
    async fn release_local(self: &Arc<Self>, id: &str, vm: &str) -> serde_json::Value {
        let me = self.gateway.clone();
        let Some(socket) = self.cfg.vmd_socket.clone() else {
            let why = "no VM manager on this gateway (vmd_socket): no local VM to release; \
                       a remote VM needs \"target\": its cloud";
            return self.result(id, "error", &me, "", None, why, 0);
        };
        let vmd = crate::vm::Vmd::new(&socket);
        let name = vm.to_owned();
        let done = tokio::task::spawn_blocking(move || {
            let list = vmd.list()?;
            let found = list.iter().find(|v| v.name == name);
            let action =
                lifecycle::release_action(found.map(|v| crate::vm::local_vm(v, None)).as_ref());
            match action {
                ReleaseAction::Stop => vmd.stop(&name).map(|v| (action, Some(v))),
                _ => Ok((action, found.cloned())),
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let placed = Placed {
            vm: vm.to_owned(),
            ..Placed::default()
        };
        match done {
            Ok((ReleaseAction::NotHere, _)) => {
                let why = format!("no VM {vm:?} on this gateway's VM manager");
                self.result(id, "error", &me, "", Some(&placed), &why, 0)
            }
            Ok((action, info)) => {
                let freed = self.state().local.res.release(vm);
                self.announce();
                let how = match info.map(|i| i.state) {
                    Some(betaas_proto::VmState::Saved) => "stopped with a managed save",
                    _ => "shut down",
                };
                let why = match (action, freed) {
                    (ReleaseAction::Stop, Some(r)) => {
                        format!("{how}, kept for reuse; {r} given back")
                    }
                    (ReleaseAction::Stop, None) => format!("{how}, kept for reuse"),
                    _ => "already stopped".to_owned(),
                };
                info!(request = id, vm, "released: {why}");
                self.result(id, "released", &me, &me, Some(&placed), &why, 0)
            }
            Err(e) => self.result(id, "error", &me, "", Some(&placed), &e, 0),
        }
    }

    #[allow(clippy::too_many_arguments)] // one flat JSON object, field for field
    fn result(
        &self,
        id: &str,
        decision: &str,
        target: &str,
        host: &str,
        placed: Option<&Placed>,
        reason: &str,
        attempts: u32,
    ) -> serde_json::Value {
        let vm = placed.map(|p| p.vm.as_str()).filter(|v| !v.is_empty());
        info!(
            request = id,
            decision, target, vm, "VM request decided: {reason}"
        );
        let payload = json!({
            "id": id,
            "decision": decision,
            "target": target,
            "host": host,
            "vm": vm,
            "resumed": placed.is_some_and(|p| p.resumed),
            "reason": reason,
            "attempts": attempts,
        });
        let mut payload = payload;
        if let Some(p) = placed.filter(|p| p.url.is_some()) {
            payload["url"] = json!(p.url);
            // A deployed application: whether it answered, and the archive it runs.
            if p.war_sha256.is_some() {
                payload["ready"] = json!(p.ready);
                payload["war_sha256"] = json!(p.war_sha256);
            }
        }
        self.session
            .publish_event(&format!("{}/vm/result", self.my_base), payload.to_string());
        crate::api::hub::vm_result(&payload);
        payload
    }

    /// A signed firmware update (`betaas-agent update`): the bundle at `url` is downloaded and
    /// installed into the other A/B slot by RAUC; on success the result says `installed` with the
    /// bundle's version and the gateway reboots into the new slot a few seconds later.
    async fn update(self: &Arc<Self>, id: &str, url: &str) -> serde_json::Value {
        info!(request = id, url, "firmware update requested");
        // The result leaves first: the reboot waits 3 s.
        let done = crate::update::install_and_reboot(
            url.to_owned(),
            self.data_dir.clone(),
            std::time::Duration::from_secs(3),
        )
        .await;
        match done {
            Ok(version) => {
                info!(
                    request = id,
                    version, "update installed; rebooting into the other slot"
                );
                let why = format!("installed {version}; rebooting into the other slot");
                self.result(id, "installed", "", "", None, &why, 1)
            }
            Err(why) => {
                warn!(request = id, "update refused: {why}");
                self.result(id, "error", "", "", None, &why, 1)
            }
        }
    }

    /// For the health topic.
    pub fn health(&self) -> serde_json::Value {
        let st = self.state();
        let members: BTreeMap<&String, serde_json::Value> = st
            .inst
            .members()
            .iter()
            .map(|(id, m)| {
                let state = match m.state {
                    membership::State::Up => "up",
                    membership::State::Down => "down",
                    membership::State::Dismissed { .. } => "dismissed",
                };
                let report = m.report.as_ref();
                let member = json!({
                    "state": state,
                    "trust": st.inst.trust(id),
                    "link": m.trust.link(),
                    "vms": report.map(|r| r.vms),
                    "virt": report.map(|r| r.virt),
                    "battery": report.and_then(|r| r.battery),
                    "forecast_free": report.and_then(|r| r.forecast_free).map(|f| json!({"mem_mb": f.mem_mb, "disk_gb": f.disk_gb})),
                });
                (id, member)
            })
            .collect();
        // The remote clouds the instance offers (this gateway's and the members'), as the
        // allocator sees them.
        let me = self.report(&st);
        let clouds: Vec<serde_json::Value> = st
            .inst
            .view(&me, &[], &me.remotes)
            .remotes
            .iter()
            .map(|r| json!({"name": r.name, "holder": r.owner, "reachable": r.reachable, "in_use": r.in_use, "max_vms": r.max_vms}))
            .collect();
        let used = st.local.res.used();
        json!({
            "name": self.cfg.name.to_string(),
            "members": members,
            "clouds": clouds,
            "rejected": st.inst.rejected,
            "held": st.inst.held(),
            "joins_sent": st.joins_sent,
            "joins_answered": st.answered,
            "used": {"cpus": used.cpus, "mem_mb": used.mem_mb, "disk_gb": used.disk_gb},
            "vms": st.local.res.count(),
            "synced": st.local.synced,
            "vm_stats": st.vm_stats.iter().map(|(v, s)| json!({
                "name": v.name,
                "template": v.template,
                "state": format!("{:?}", v.state).to_lowercase(),
                "released": v.stopped_s.is_some(),
                "restarts": v.restarts,
                "failed": v.failed,
                "held": st.local.res.held().contains_key(&v.name),
                "cpu_time_ns": s.as_ref().map(|s| s.cpu_time_ns),
                "memory_kib": s.as_ref().map(|s| s.memory_kib),
                "disk_allocation_bytes": s.as_ref().map(|s| s.disk_allocation_bytes),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The `"id"` of a VM request, signed or not, read without verifying anything: only to address
/// a refusal to the right request.
/// The cluster records a previous run of this agent wrote. A file that does not read is set
/// aside (`clusters.json.bad`, for a look) with a warning, and the agent starts without them: their
/// VMs keep running, unmanaged, until asked for again.
fn read_clusters(path: &Path) -> BTreeMap<String, cluster::ClusterRec> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            warn!(file = %path.display(), "cluster records unreadable ({e}): starting without them");
            return BTreeMap::new();
        }
    };
    match betaas_core::cluster::decode(&bytes) {
        Ok(c) => {
            if !c.is_empty() {
                info!(file = %path.display(), clusters = ?c.keys().collect::<Vec<_>>(), "cluster records read: adopting them");
            }
            c
        }
        Err(e) => {
            let aside = path.with_extension("json.bad");
            let _ = std::fs::rename(path, &aside);
            warn!(file = %path.display(), moved_to = %aside.display(), "cluster records corrupt ({e}): starting without them");
            BTreeMap::new()
        }
    }
}

fn request_id(payload: &[u8]) -> String {
    let json = match msg::decode(payload) {
        Ok((env, _)) => match env.body {
            Body::ClientRequest { request, .. } => request.into_bytes(),
            _ => return String::new(),
        },
        Err(_) => payload.to_vec(),
    };
    serde_json::from_slice::<serde_json::Value>(&json)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn log_event(e: &Event) {
    let change = match e {
        Event::Joined(g) => Some((g, "joined")),
        Event::Back(g) => Some((g, "up")),
        Event::Left(g) => Some((g, "left")),
        Event::Down(g) => Some((g, "down")),
        Event::Dismissed(g) => Some((g, "dismissed")),
        Event::JoinRequest(_)
        | Event::DeployRequest { .. }
        | Event::DeployAnswer { .. }
        | Event::ReleaseRequest { .. } => None,
    };
    if let Some((g, what)) = change {
        crate::api::hub::member(&g.to_string(), what);
    }
    match e {
        Event::Joined(g) => info!(gateway = %g, "joined the instance"),
        Event::Back(g) => info!(gateway = %g, "back up"),
        Event::Left(g) => info!(gateway = %g, "left the instance"),
        Event::Down(g) => warn!(gateway = %g, "down: no heartbeat; its resources are withdrawn"),
        Event::Dismissed(g) => warn!(gateway = %g, "dismissed: trust stayed below the threshold"),
        Event::JoinRequest(g) => debug!(gateway = %g, "asks the members to announce"),
        Event::DeployRequest { .. } | Event::DeployAnswer { .. } | Event::ReleaseRequest { .. } => {
        }
    }
}

/// The `instance` CLI: makes the instance key pair, and admits gateways (their key + credential).
pub fn keygen(out: &Path) -> Result<(), String> {
    let key = random_key().map_err(|e| format!("/dev/urandom: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_secret(&out.join("instance.key"), &key.to_bytes())?;
    std::fs::write(out.join(INSTANCE_PUB), key.verifying_key().to_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))
}

pub fn admit(instance_key: &Path, gateway: &str, out: &Path) -> Result<(), String> {
    let ik = SigningKey::from_bytes(&read32(instance_key)?);
    let gw = random_key().map_err(|e| format!("/dev/urandom: {e}"))?;
    let cred = Credential::issue(&ik, gateway, &gw.verifying_key());
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_secret(&out.join(GATEWAY_KEY), &gw.to_bytes())?;
    let bytes = postcard::to_allocvec(&cred).map_err(|e| e.to_string())?;
    std::fs::write(out.join(CREDENTIAL), bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join(INSTANCE_PUB), ik.verifying_key().to_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))
}

/// A client's key and credential (applications, an operator's PC): it may send signed VM
/// requests and releases; it is not a member and cannot join.
pub fn admit_client(instance_key: &Path, name: &str, out: &Path) -> Result<(), String> {
    if name.is_empty() || name.contains(['/', '+', '#']) {
        return Err(format!(
            "client name {name:?}: must be non-empty, without / + #"
        ));
    }
    let ik = SigningKey::from_bytes(&read32(instance_key)?);
    let key = random_key().map_err(|e| format!("/dev/urandom: {e}"))?;
    let cred = Credential::issue_client(&ik, name, &key.verifying_key());
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_secret(&out.join(crate::commands::vm::CLIENT_KEY), &key.to_bytes())?;
    let bytes = postcard::to_allocvec(&cred).map_err(|e| e.to_string())?;
    std::fs::write(out.join(CREDENTIAL), bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join(INSTANCE_PUB), ik.verifying_key().to_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_records_are_read_back_and_a_corrupt_file_is_set_aside() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("clusters.json");
        assert!(read_clusters(&path).is_empty(), "no file: no clusters");
        let mut all = BTreeMap::new();
        let rec = cluster::ClusterRec {
            workers: Some(betaas_core::cluster::Cluster::new(
                "wc",
                "bigdata-compute",
                2,
            )),
            ..Default::default()
        };
        all.insert("wc".to_owned(), rec);
        crate::resources::history::write_atomic(&path, &betaas_core::cluster::encode(&all))
            .expect("write");
        assert_eq!(read_clusters(&path), all);
        std::fs::write(&path, b"{\"version\":1,\"clusters\":{\"wc\":").expect("write");
        assert!(read_clusters(&path).is_empty());
        assert!(!path.exists());
        assert!(d.path().join("clusters.json.bad").exists());
    }
}
