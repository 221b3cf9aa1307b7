//! The agent's side of the configured remote clouds while no request flow uses them yet: every
//! health interval each cloud gets a reachability check, its quota is read, the stopped VMs idle
//! past their time (and VMs recorded for cleanup) are destroyed, and the result is kept for the
//! health topic. Credentials are loaded (and their file checked) once at start.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use betaas_core::allocator::Provider;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::config::CloudConfig;
use super::opennebula::OpenNebula;
use super::openstack::OpenStack;
use super::policy::{Registry, RemoteState};
use super::store::Store;
use super::{sweep, Capacity, Cloud, CloudError, Credentials, Timeouts, VmSpec, VmStatus};

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

struct Monitor {
    configs: Vec<CloudConfig>,
    seen: Mutex<Vec<Seen>>,
    registry: Mutex<Registry>,
}

static MONITOR: OnceLock<Arc<Monitor>> = OnceLock::new();

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts watching the configured clouds (nothing when there are none). Call once, inside the
/// tokio runtime.
pub fn start(clouds: &[CloudConfig], data_dir: &Path, every: Duration) {
    if clouds.is_empty() || MONITOR.get().is_some() {
        return;
    }
    let t = Timeouts::default();
    let mut seen = vec![Seen::default(); clouds.len()];
    let mut live = Vec::new();
    for (i, c) in clouds.iter().enumerate() {
        match AnyCloud::from_config(c, t) {
            Ok(cloud) => live.push((i, cloud)),
            Err(e) => {
                // The error names the file and what is wrong with it, never its content.
                warn!(cloud = %c.name, "remote cloud disabled: {e}");
                seen[i].error = Some(e);
            }
        }
    }
    let store = match Store::open(data_dir) {
        Ok(s) => s,
        Err(e) => {
            warn!("remote clouds disabled: {e}");
            return;
        }
    };
    let mut registry = store.load().unwrap_or_else(|e| {
        warn!("{e}: starting with an empty remote VM registry");
        Registry::default()
    });
    registry.after_restart(unix_secs());
    let m = Arc::new(Monitor {
        configs: clouds.to_vec(),
        seen: Mutex::new(seen),
        registry: Mutex::new(registry),
    });
    if MONITOR.set(m.clone()).is_err() {
        return;
    }
    tokio::spawn(async move {
        loop {
            for (i, cloud) in &live {
                check(&m, *i, cloud, &store).await;
            }
            tokio::time::sleep(every).await;
        }
    });
}

async fn check(m: &Monitor, i: usize, cloud: &AnyCloud, store: &Store) {
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
            // The registry is copied out and back: the sweep awaits, the lock must not.
            let mut reg = lock(&m.registry).clone();
            let idle = m.configs[i].idle_destroy_secs;
            match sweep(cloud, &mut reg, store, idle, unix_secs()).await {
                Ok(gone) if !gone.is_empty() => {
                    info!(cloud = %cloud.name(), destroyed = gone.len(), "idle remote VMs destroyed")
                }
                Ok(_) => {}
                Err(e) => warn!(cloud = %cloud.name(), "cleanup: {e}"),
            }
            *lock(&m.registry) = reg;
        }
    }
    if let Some(slot) = lock(&m.seen).get_mut(i) {
        *slot = s;
    }
}

/// The `clouds` member of the health message; `None` when no cloud is configured.
pub fn health() -> Option<Value> {
    let m = MONITOR.get()?;
    let seen = lock(&m.seen).clone();
    let reg = lock(&m.registry).clone();
    let list: Vec<Value> = m
        .configs
        .iter()
        .zip(seen)
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
