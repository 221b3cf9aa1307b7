//! Remote clouds (paper §IV): where a VM goes when the instance cannot host it.
//!
//! One trait, [`Cloud`], for both providers ([`openstack`], [`opennebula`]); the rules (stop rather
//! than destroy, resume rather than create, VM and cost limits, idle destruction) are pure code in
//! [`policy`]; [`deploy`] is the thin async shell that carries out a plan and never leaves a
//! half-created VM unaccounted for: it deletes it, or records it in the registry for [`sweep`].
//!
//! Secrets live in [`Secret`], whose `Debug` and `Display` print `***`: credentials cannot reach a
//! log line, an error or the health topic by accident.

pub mod config;
pub mod credentials;
pub mod monitor;
pub mod opennebula;
pub mod openstack;
pub mod policy;
pub mod store;

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{info, warn};

pub use credentials::{Credentials, CredentialsError};
use policy::{Plan, Registry, RemoteState};

/// A password, application-credential secret or token. Prints as `***`; read it with [`Secret::expose`]
/// only where it goes on the wire.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Timeouts for every request; `reach` is the short one of the reachability check that runs
/// before a deployment, so an unreachable cloud costs seconds, not the full request timeout.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    pub reach: Duration,
    /// How long a VM may take to reach ACTIVE/SHUTOFF before the deployment is given up.
    pub poll: Duration,
    pub poll_interval: Duration,
    /// A token is renewed this long before it expires (requests in flight must not outlive it).
    pub token_margin: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            reach: Duration::from_secs(3),
            poll: Duration::from_secs(300),
            poll_interval: Duration::from_secs(3),
            token_margin: Duration::from_secs(60),
        }
    }
}

/// The HTTP client both providers use: rustls with ring, connect and total timeouts on every request.
pub(crate) fn http_client(t: &Timeouts) -> Result<reqwest::Client, CloudError> {
    reqwest::Client::builder()
        .connect_timeout(t.connect)
        .timeout(t.request)
        .build()
        .map_err(|e| CloudError::Client(e.to_string()))
}

/// What a VM should be: the template's resources and the provider's image (OpenStack image id,
/// OpenNebula template id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Name given to the VM on the cloud; unique per deployment so a lost answer can be found again.
    pub name: String,
    pub template: String,
    pub image: String,
    pub vcpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// Being built, started or stopped.
    Busy,
    Active,
    Stopped,
    Error,
    Deleted,
}

/// What the cloud's own quota allows (absolute limits / user quotas); `None`: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    pub max_instances: Option<u32>,
    pub used_instances: u32,
    pub max_cores: Option<u32>,
    pub used_cores: u32,
    pub max_ram_mb: Option<u64>,
    pub used_ram_mb: u64,
}

impl Capacity {
    /// How many more VMs of `spec`'s size the quota admits (`u32::MAX`: no quota).
    pub fn room_for(&self, vcpus: u32, mem_mb: u64) -> u32 {
        let inst = self
            .max_instances
            .map_or(u32::MAX, |m| m.saturating_sub(self.used_instances));
        let cores = match (self.max_cores, vcpus) {
            (Some(m), v) if v > 0 => m.saturating_sub(self.used_cores) / v,
            _ => u32::MAX,
        };
        let ram = match (self.max_ram_mb, mem_mb) {
            (Some(m), v) if v > 0 => {
                u32::try_from(m.saturating_sub(self.used_ram_mb) / v).unwrap_or(u32::MAX)
            }
            _ => u32::MAX,
        };
        inst.min(cores).min(ram)
    }
}

/// Errors name the cloud and the operation; never a credential or a token.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("cloud {cloud}: {what}: unreachable: {detail}")]
    Unreachable {
        cloud: String,
        what: String,
        detail: String,
    },
    #[error("cloud {cloud}: {what}: no answer within {after:?}")]
    Timeout {
        cloud: String,
        what: String,
        after: Duration,
    },
    #[error("cloud {cloud}: {what}: authentication refused (check the credentials file)")]
    Auth { cloud: String, what: String },
    #[error("cloud {cloud}: {what}: forbidden: {message}")]
    Forbidden {
        cloud: String,
        what: String,
        message: String,
    },
    #[error("cloud {cloud}: {what}: not found")]
    NotFound { cloud: String, what: String },
    #[error("cloud {cloud}: {what}: conflict: {message}")]
    Conflict {
        cloud: String,
        what: String,
        message: String,
    },
    #[error("cloud {cloud}: {what}: server error {status}: {message}")]
    Server {
        cloud: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("cloud {cloud}: {what}: malformed answer: {detail}")]
    Malformed {
        cloud: String,
        what: String,
        detail: String,
    },
    #[error("cloud {cloud}: the service catalog has no {interface} compute endpoint{region}")]
    NoComputeEndpoint {
        cloud: String,
        interface: String,
        region: String,
    },
    #[error("cloud {cloud}: no flavor has {vcpus} vCPU, {mem_mb} MB and {disk_gb} GB")]
    NoFlavor {
        cloud: String,
        vcpus: u32,
        mem_mb: u64,
        disk_gb: u64,
    },
    #[error("cloud {cloud}: VM {id} went to ERROR")]
    VmFailed { cloud: String, id: String },
    #[error("cloud {cloud}: VM {id} still {last:?} after {waited:?}")]
    PollTimeout {
        cloud: String,
        id: String,
        last: VmStatus,
        waited: Duration,
    },
    #[error("HTTP client: {0}")]
    Client(String),
}

impl CloudError {
    /// The cloud cannot be reached at all (connection refused, DNS, timeout): the allocator treats
    /// it as unreachable rather than full.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CloudError::Unreachable { .. } | CloudError::Timeout { .. }
        )
    }
    /// The cloud's quota refused the VM: the allocator treats it as full.
    pub fn is_quota(&self) -> bool {
        // Nova answers 403 "Quota exceeded ..."; OpenNebula AUTHORIZATION or ALLOCATE "... quota ...".
        match self {
            CloudError::Forbidden { message, .. } | CloudError::Server { message, .. } => {
                message.to_lowercase().contains("quota")
            }
            _ => false,
        }
    }

    /// Maps a transport error; reqwest's message names the URL (never a body, so never a secret).
    pub(crate) fn transport(cloud: &str, what: &str, e: reqwest::Error, t: Duration) -> CloudError {
        if e.is_timeout() {
            CloudError::Timeout {
                cloud: cloud.into(),
                what: what.into(),
                after: t,
            }
        } else if e.is_decode() || e.is_body() {
            CloudError::Malformed {
                cloud: cloud.into(),
                what: what.into(),
                detail: e.to_string(),
            }
        } else {
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail = format!("{detail}: {s}");
                src = s.source();
            }
            CloudError::Unreachable {
                cloud: cloud.into(),
                what: what.into(),
                detail,
            }
        }
    }
}

/// Error text from a cloud, cut short: it goes into logs and health messages.
pub(crate) fn excerpt(s: &str) -> String {
    const MAX: usize = 200;
    let s = s.trim();
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Both providers. Futures are `Send` so the agent can run them on any tokio task.
pub trait Cloud: Send + Sync {
    fn name(&self) -> &str;
    /// A cheap authenticated-or-not request with the short `reach` timeout.
    fn reachable(&self) -> impl Future<Output = Result<(), CloudError>> + Send;
    /// Starts creating the VM; returns its id on the cloud (the VM may still be building).
    fn create(&self, spec: &VmSpec) -> impl Future<Output = Result<String, CloudError>> + Send;
    fn start(&self, id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;
    fn status(&self, id: &str) -> impl Future<Output = Result<VmStatus, CloudError>> + Send;
    fn capacity(&self) -> impl Future<Output = Result<Capacity, CloudError>> + Send;
    /// The id of a VM by its name: finds a VM whose create answer was lost.
    fn find_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, CloudError>> + Send;
}

/// Polls until the VM reaches `want` (or ERROR, or the deadline): a bounded wait.
pub async fn wait_for<C: Cloud>(
    cloud: &C,
    id: &str,
    want: VmStatus,
    t: &Timeouts,
) -> Result<(), CloudError> {
    let start = Instant::now();
    loop {
        let s = cloud.status(id).await?;
        if s == want {
            return Ok(());
        }
        if s == VmStatus::Deleted {
            // Gone under us (deleted by someone else): no use waiting for it.
            return Err(CloudError::NotFound {
                cloud: cloud.name().into(),
                what: format!("VM {id}"),
            });
        }
        if s == VmStatus::Error {
            return Err(CloudError::VmFailed {
                cloud: cloud.name().into(),
                id: id.into(),
            });
        }
        if start.elapsed() + t.poll_interval > t.poll {
            return Err(CloudError::PollTimeout {
                cloud: cloud.name().into(),
                id: id.into(),
                last: s,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(t.poll_interval).await;
    }
}

/// A VM running on a remote cloud for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub cloud: String,
    pub id: String,
    pub resumed: bool,
}

/// Why a remote deployment did not happen: the allocator falls back (local or cancel).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no remote cloud can take it: {0}")]
    Refused(policy::Refusal),
    #[error("{0}")]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Store(#[from] store::StoreError),
}

impl DeployError {
    /// The cloud did not answer: mark it unreachable in the allocator's view. Otherwise (an error
    /// answer, quota) mark it full. Either way `decide` then goes local or cancels.
    pub fn unreachable(&self) -> bool {
        matches!(self, DeployError::Cloud(e) if e.is_unreachable())
    }
}

/// Carries out the policy's plan for `spec` on `cloud` (the one [`policy::plan`] chose):
/// reachability check, then resume a stopped VM of the same template or create one and wait for
/// ACTIVE. The registry is saved before every call that may create something and after its answer,
/// so a power cut leaves at worst an entry that [`sweep`] cleans up.
pub async fn deploy<C: Cloud>(
    cloud: &C,
    plan: &Plan,
    registry: &mut Registry,
    store: &store::Store,
    spec: &VmSpec,
    now: u64,
    t: &Timeouts,
) -> Result<Deployed, DeployError> {
    let name = cloud.name().to_owned();
    match plan {
        Plan::Refuse(r) => return Err(DeployError::Refused(r.clone())),
        Plan::Resume { cloud: c, .. } | Plan::Create { cloud: c, .. } if *c != name => {
            return Err(DeployError::Cloud(CloudError::Client(format!(
                "plan is for cloud {c}, not {name}"
            ))))
        }
        _ => {}
    }
    cloud.reachable().await?;
    match plan {
        Plan::Resume { id, .. } => {
            info!(cloud = %name, vm = %id, template = %spec.template, "resuming a stopped remote VM");
            let r = async {
                cloud.start(id).await?;
                wait_for(cloud, id, VmStatus::Active, t).await
            }
            .await;
            match r {
                Ok(()) => {
                    registry.set_state(&name, id, RemoteState::Running, now);
                    store.save(registry)?;
                    Ok(Deployed {
                        cloud: name,
                        id: id.clone(),
                        resumed: true,
                    })
                }
                Err(e) => {
                    // Still stopped (or broken): stays in the registry, the idle rule destroys it.
                    warn!(cloud = %name, vm = %id, "resume failed: {e}");
                    Err(e.into())
                }
            }
        }
        Plan::Create { destroy_first, .. } => {
            if let Some(old) = destroy_first {
                info!(cloud = %name, vm = %old, "destroying a stopped VM of another template to make room");
                destroy(cloud, registry, store, old, now).await?;
            }
            registry.begin_create(&name, &spec.template, &spec.name, now);
            store.save(registry)?;
            let id = match cloud.create(spec).await {
                Ok(id) => id,
                Err(e) => {
                    if e.is_unreachable() {
                        // The request may have arrived: keep the name so sweep can look it up.
                        registry.set_cleanup_by_name(&name, &spec.name, now);
                    } else {
                        registry.forget_by_name(&name, &spec.name);
                    }
                    store.save(registry)?;
                    return Err(e.into());
                }
            };
            registry.created(&name, &spec.name, &id, now);
            store.save(registry)?;
            match wait_for(cloud, &id, VmStatus::Active, t).await {
                Ok(()) => {
                    registry.set_state(&name, &id, RemoteState::Running, now);
                    store.save(registry)?;
                    info!(cloud = %name, vm = %id, template = %spec.template, "remote VM active");
                    Ok(Deployed {
                        cloud: name,
                        id,
                        resumed: false,
                    })
                }
                Err(e) => {
                    warn!(cloud = %name, vm = %id, "deployment failed, removing the VM: {e}");
                    registry.set_state(&name, &id, RemoteState::Cleanup, now);
                    store.save(registry)?;
                    if let Err(d) = destroy(cloud, registry, store, &id, now).await {
                        warn!(cloud = %name, vm = %id, "cannot delete it now, recorded for cleanup: {d}");
                    }
                    Err(e.into())
                }
            }
        }
        Plan::Refuse(_) => unreachable!("handled above"),
    }
}

/// Stops a VM that is no longer needed: the policy prefers stopping to destroying.
pub async fn release<C: Cloud>(
    cloud: &C,
    registry: &mut Registry,
    store: &store::Store,
    id: &str,
    now: u64,
    t: &Timeouts,
) -> Result<(), DeployError> {
    cloud.stop(id).await?;
    wait_for(cloud, id, VmStatus::Stopped, t).await?;
    registry.set_state(cloud.name(), id, RemoteState::Stopped, now);
    store.save(registry)?;
    Ok(())
}

async fn destroy<C: Cloud>(
    cloud: &C,
    registry: &mut Registry,
    store: &store::Store,
    id: &str,
    now: u64,
) -> Result<(), DeployError> {
    match cloud.delete(id).await {
        Ok(()) | Err(CloudError::NotFound { .. }) => {
            registry.remove(cloud.name(), id);
            store.save(registry)?;
            Ok(())
        }
        Err(e) => {
            registry.set_state(cloud.name(), id, RemoteState::Cleanup, now);
            store.save(registry)?;
            Err(e.into())
        }
    }
}

/// Destroys what the policy says must go on this cloud: stopped VMs idle past their time and VMs
/// recorded for cleanup (found by name when their id never came back). Returns the ids removed.
pub async fn sweep<C: Cloud>(
    cloud: &C,
    registry: &mut Registry,
    store: &store::Store,
    idle_destroy_secs: u64,
    now: u64,
) -> Result<Vec<String>, DeployError> {
    let mut removed = Vec::new();
    for entry in registry.due_for_destruction(cloud.name(), idle_destroy_secs, now) {
        let id = match entry.id {
            Some(id) => id,
            None => match cloud.find_by_name(&entry.name).await? {
                Some(id) => {
                    registry.created(cloud.name(), &entry.name, &id, now);
                    id
                }
                None => {
                    // The create never arrived: nothing to clean.
                    registry.forget_by_name(cloud.name(), &entry.name);
                    store.save(registry)?;
                    continue;
                }
            },
        };
        info!(cloud = %cloud.name(), vm = %id, "destroying a remote VM (idle or left over)");
        destroy(cloud, registry, store, &id, now).await?;
        removed.push(id);
    }
    Ok(removed)
}
