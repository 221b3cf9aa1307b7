//! The agent's side of the remote clouds it holds credentials for. Every health interval each
//! cloud gets a reachability check, its quota is read, the stopped VMs idle past their time (and
//! VMs recorded for cleanup) are destroyed; the result feeds the allocator's view of the clouds
//! ([`allocator_view`]) and the health topic. The instance manager carries out the allocator's
//! Remote decisions with [`deploy`] and gives VMs back with [`release`]. Credentials are loaded
//! (and their file checked) once at start.
//!
//! One remote operation at a time holds the registry (deployments are rare and a plan must see
//! the VMs the previous one created, or two could exceed the VM limit); health and the allocator
//! read the copy saved last, so they never wait on a cloud.
//!
//! The list of clouds may change while the agent runs ([`upsert`]: a cloud configured through the
//! local API): each operation takes the cloud it works on out of the list first, so one that is
//! replaced meanwhile finishes on the old definition.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use betaas_core::allocator::{Provider, Remote, Res};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::config::CloudConfig;
use super::opennebula::OpenNebula;
use super::openstack::OpenStack;
use super::policy::{self, CloudView, Registry, RemoteState};
use super::store::Store;
use super::{
    sweep, Capacity, Cloud, CloudError, Credentials, DeployError, Deployed, Timeouts, VmSpec,
    VmStatus,
};

/// Either provider, so the agent can hold a list of clouds.
#[derive(Debug)]
pub enum AnyCloud {
    OpenStack(Box<OpenStack>),
    OpenNebula(OpenNebula),
}

impl AnyCloud {
    pub fn from_config(c: &CloudConfig, t: Timeouts) -> Result<AnyCloud, String> {
        let creds = Credentials::load(&c.credentials_path()).map_err(|e| e.to_string())?;
        let name = c.name.to_string();
        match c.provider {
            Provider::Openstack => OpenStack::new(
                &name,
                &c.endpoint,
                creds,
                c.interface.as_deref(),
                c.region.as_deref(),
                t,
            )
            .map(|c| AnyCloud::OpenStack(Box::new(c))),
            Provider::Opennebula => {
                OpenNebula::new(&name, &c.endpoint, &creds, t).map(AnyCloud::OpenNebula)
            }
        }
        .map_err(|e| e.to_string())
    }
}

macro_rules! delegate {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            AnyCloud::OpenStack($c) => $e,
            AnyCloud::OpenNebula($c) => $e,
        }
    };
}

impl Cloud for AnyCloud {
    fn name(&self) -> &str {
        delegate!(self, c => c.name())
    }
    async fn reachable(&self) -> Result<(), CloudError> {
        delegate!(self, c => c.reachable().await)
    }
    async fn create(&self, spec: &VmSpec) -> Result<String, CloudError> {
        delegate!(self, c => c.create(spec).await)
    }
    async fn start(&self, id: &str) -> Result<(), CloudError> {
        delegate!(self, c => c.start(id).await)
    }
    async fn stop(&self, id: &str) -> Result<(), CloudError> {
        delegate!(self, c => c.stop(id).await)
    }
    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        delegate!(self, c => c.delete(id).await)
    }
    async fn status(&self, id: &str) -> Result<VmStatus, CloudError> {
        delegate!(self, c => c.status(id).await)
    }
    async fn capacity(&self) -> Result<Capacity, CloudError> {
        delegate!(self, c => c.capacity().await)
    }
    async fn find_by_name(&self, name: &str) -> Result<Option<String>, CloudError> {
        delegate!(self, c => c.find_by_name(name).await)
    }
}

/// What the health topic shows of one cloud.
#[derive(Debug, Clone, Default)]
struct Seen {
    reachable: Option<bool>,
    capacity: Option<Capacity>,
    error: Option<String>,
    checked_ms: u64,
}

/// One configured cloud.
struct Entry {
    config: CloudConfig,
    /// `None`: disabled (its credentials could not be loaded; the error is in `seen`).
    cloud: Option<Arc<AnyCloud>>,
    seen: Seen,
}

struct Monitor {
    /// This gateway: the owner of every cloud configured here.
    me: String,
    entries: Mutex<Vec<Entry>>,
    /// Wakes the checking loop: a cloud was added or replaced.
    changed: tokio::sync::Notify,
    /// The working registry, held across a whole remote operation.
    registry: tokio::sync::Mutex<Registry>,
    /// The registry as last saved.
    saved: Mutex<Registry>,
    store: Store,
}

/// The running monitor, handed by [`start`] to those who use the clouds (the instance manager, the
/// API, the health message): no process-wide instance.
#[derive(Clone)]
pub struct Clouds(Arc<Monitor>);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn entry(c: &CloudConfig) -> Entry {
    let mut seen = Seen::default();
    let cloud = match AnyCloud::from_config(c, c.timeouts()) {
        Ok(cloud) => Some(Arc::new(cloud)),
        Err(e) => {
            // The error names the file and what is wrong with it, never its content.
            warn!(cloud = %c.name, "remote cloud disabled: {e}");
            seen.error = Some(e);
            None
        }
    };
    Entry {
        config: c.clone(),
        cloud,
        seen,
    }
}

/// Starts watching the clouds configured on gateway `me` (nothing when there are none, unless
/// `changeable`: clouds may then be added later with [`upsert`]): the handle to them. Inside the
/// tokio runtime.
pub fn start(
    me: &str,
    clouds: &[CloudConfig],
    data_dir: &Path,
    every: Duration,
    changeable: bool,
) -> Option<Clouds> {
    if clouds.is_empty() && !changeable {
        return None;
    }
    let entries: Vec<Entry> = clouds.iter().map(entry).collect();
    let store = match Store::open(data_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!("remote clouds disabled: {e}");
            return None;
        }
    };
    let mut registry = store.load().unwrap_or_else(|e| {
        warn!("{e}: starting with an empty remote VM registry");
        Registry::default()
    });
    registry.after_restart(unix_secs());
    let m = Arc::new(Monitor {
        me: me.to_owned(),
        entries: Mutex::new(entries),
        changed: tokio::sync::Notify::new(),
        saved: Mutex::new(registry.clone()),
        registry: tokio::sync::Mutex::new(registry),
        store,
    });
    let handle = Clouds(m.clone());
    tokio::spawn(async move {
        loop {
            let names: Vec<String> = lock(&m.entries)
                .iter()
                .map(|e| e.config.name.to_string())
                .collect();
            for name in names {
                check(&m, &name).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = m.changed.notified() => {}
            }
        }
    });
    Some(handle)
}

/// Adds cloud `c`, or replaces the cloud of its name (its credentials loaded again); it is checked
/// at once. Err: the monitor does not run.
pub fn upsert(clouds: Option<&Clouds>, c: &CloudConfig) -> Result<(), String> {
    let m = &clouds
        .ok_or("remote clouds are not managed on this gateway")?
        .0;
    let e = entry(c);
    {
        let mut entries = lock(&m.entries);
        match entries.iter_mut().find(|x| x.config.name == c.name) {
            Some(slot) => *slot = e,
            None => entries.push(e),
        }
    }
    info!(cloud = %c.name, provider = ?c.provider, "remote cloud configured");
    m.changed.notify_one();
    Ok(())
}

/// Cloud `name`'s config, live client and idle time, taken out of the list.
fn get(m: &Monitor, name: &str) -> Option<(CloudConfig, Option<Arc<AnyCloud>>)> {
    lock(&m.entries)
        .iter()
        .find(|e| e.config.name.to_string() == name)
        .map(|e| (e.config.clone(), e.cloud.clone()))
}

fn set_seen(m: &Monitor, name: &str, f: impl FnOnce(&mut Seen)) {
    if let Some(e) = lock(&m.entries)
        .iter_mut()
        .find(|e| e.config.name.to_string() == name)
    {
        f(&mut e.seen);
    }
}

async fn check(m: &Monitor, name: &str) {
    let Some((config, Some(cloud))) = get(m, name) else {
        return;
    };
    let reach = cloud.reachable().await;
    let mut s = Seen {
        reachable: Some(reach.is_ok()),
        checked_ms: unix_secs() * 1000,
        ..Seen::default()
    };
    match reach {
        Err(e) => s.error = Some(e.to_string()),
        Ok(()) => {
            match cloud.capacity().await {
                Ok(c) => s.capacity = Some(c),
                Err(e) => s.error = Some(e.to_string()),
            }
            let mut reg = m.registry.lock().await;
            let idle = config.idle_destroy_secs;
            match sweep(cloud.as_ref(), &mut reg, &m.store, idle, unix_secs()).await {
                Ok(gone) if !gone.is_empty() => {
                    info!(cloud = %cloud.name(), destroyed = gone.len(), "idle remote VMs destroyed")
                }
                Ok(_) => {}
                Err(e) => warn!(cloud = %cloud.name(), "cleanup: {e}"),
            }
            *lock(&m.saved) = reg.clone();
        }
    }
    set_seen(m, name, |slot| *slot = s);
}

/// The policy's picture of a cloud now.
fn cloud_view(m: &Monitor, e: &Entry, res: Option<Res>) -> CloudView {
    let c = &e.config;
    let s = &e.seen;
    CloudView {
        name: c.name.to_string(),
        provider: c.provider,
        owner: m.me.clone(),
        vm_limit: c.vm_limit,
        cost_per_vm: c.cost_per_vm,
        cost_limit: c.cost_limit,
        reachable: e.cloud.is_some() && s.reachable == Some(true),
        quota_room: s.capacity.map(|q| match res {
            Some(r) => q.room_for(r.cpus, r.mem_mb),
            None => q
                .max_instances
                .map_or(u32::MAX, |n| n.saturating_sub(q.used_instances)),
        }),
    }
}

/// The clouds held here as the allocator sees them (empty when none is configured); a cloud
/// without room shows as full, an unreachable or disabled one as unreachable.
pub fn allocator_view(clouds: Option<&Clouds>) -> Vec<Remote> {
    let Some(Clouds(m)) = clouds else {
        return Vec::new();
    };
    let views: Vec<CloudView> = lock(&m.entries)
        .iter()
        .map(|e| cloud_view(m, e, None))
        .collect();
    policy::allocator_view(&lock(&m.saved), &views)
}

#[allow(clippy::type_complexity)]
fn find(
    clouds: Option<&Clouds>,
    cloud: &str,
) -> Result<(Arc<Monitor>, CloudConfig, Arc<AnyCloud>), DeployError> {
    let not_here = || {
        DeployError::Cloud(CloudError::Client(format!(
            "cloud {cloud} is not configured (or disabled) on this gateway"
        )))
    };
    let m = &clouds.ok_or_else(not_here)?.0;
    match get(m, cloud) {
        Some((config, Some(c))) => Ok((m.clone(), config, c)),
        _ => Err(not_here()),
    }
}

/// Carries out the allocator's Remote decision for `template` on `cloud`: resumes a stopped VM of
/// the template or creates one (see [`super::deploy`]). An error tells the allocator to decide
/// again without this cloud; an unreachable cloud is shown so until its next check.
/// `others`: VMs other holders of the same cloud run; the cloud's VM limit counts them too.
pub async fn deploy(
    clouds: Option<&Clouds>,
    cloud: &str,
    template: &str,
    res: Res,
    others: u32,
) -> Result<Deployed, DeployError> {
    let (m, conf, c) = find(clouds, cloud)?;
    let image = conf.images.get(template).cloned().ok_or_else(|| {
        DeployError::Cloud(CloudError::Client(format!(
            "cloud {cloud}: no image configured for template {template} (images = {{ {template} = \"...\" }})"
        )))
    })?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let spec = VmSpec {
        // Unique per deployment: a VM whose create answer was lost is found by it.
        name: format!("betaas-{}-{template}-{now_ms}", m.me),
        template: template.to_owned(),
        image,
        vcpus: res.cpus,
        mem_mb: res.mem_mb,
        disk_gb: res.disk_gb,
    };
    let mut reg = m.registry.lock().await;
    let mut view = {
        let entries = lock(&m.entries);
        match entries.iter().find(|e| e.config.name == conf.name) {
            Some(e) => cloud_view(&m, e, Some(res)),
            None => {
                return Err(DeployError::Cloud(CloudError::Client(format!(
                    "cloud {cloud} was removed"
                ))))
            }
        }
    };
    view.vm_limit = view.vm_limit.saturating_sub(others);
    let plan = policy::plan(&reg, &[view], template, &[m.me.as_str()]);
    let result = super::deploy(
        c.as_ref(),
        &plan,
        &mut reg,
        &m.store,
        &spec,
        unix_secs(),
        &conf.timeouts(),
    )
    .await;
    *lock(&m.saved) = reg.clone();
    if let Err(e) = &result {
        if e.unreachable() {
            set_seen(&m, cloud, |s| {
                s.reachable = Some(false);
                s.error = Some(e.to_string());
            });
        }
    }
    result
}

/// Stops a remote VM that is no longer needed (kept stopped for a later request of its template
/// until its idle time is up).
pub async fn release(clouds: Option<&Clouds>, cloud: &str, id: &str) -> Result<(), DeployError> {
    let (m, conf, c) = find(clouds, cloud)?;
    let mut reg = m.registry.lock().await;
    if !reg.on_cloud(cloud).any(|v| v.id.as_deref() == Some(id)) {
        return Err(DeployError::Cloud(CloudError::NotFound {
            cloud: cloud.into(),
            what: format!("VM {id} (not one this gateway created)"),
        }));
    }
    let r = super::release(
        c.as_ref(),
        &mut reg,
        &m.store,
        id,
        unix_secs(),
        &conf.timeouts(),
    )
    .await;
    *lock(&m.saved) = reg.clone();
    r
}

/// The `clouds` member of the health message; `None` when no cloud is configured.
pub fn health(clouds: Option<&Clouds>) -> Option<Value> {
    let m = &clouds?.0;
    let reg = lock(&m.saved).clone();
    let entries: Vec<(CloudConfig, Seen)> = lock(&m.entries)
        .iter()
        .map(|e| (e.config.clone(), e.seen.clone()))
        .collect();
    if entries.is_empty() {
        return None;
    }
    let list: Vec<Value> = entries
        .into_iter()
        .map(|(c, s)| {
            let name = c.name.to_string();
            let count = |st: RemoteState| reg.on_cloud(&name).filter(|v| v.state == st).count();
            let vms: Vec<Value> = reg
                .on_cloud(&name)
                .map(|v| json!({"id": v.id, "template": v.template, "state": v.state}))
                .collect();
            json!({
                "name": name,
                "provider": c.provider,
                "reachable": s.reachable,
                "checked_ts": s.checked_ms,
                "vm_limit": c.vm_limit,
                "vms_running": count(RemoteState::Running),
                "vms_stopped": count(RemoteState::Stopped),
                "vms_cleanup": count(RemoteState::Cleanup) + count(RemoteState::Creating),
                "quota_free": s.capacity.map(|q| q.max_instances.map(|m| m.saturating_sub(q.used_instances))),
                "vms": vms,
                "error": s.error,
            })
        })
        .collect();
    Some(Value::Array(list))
}
