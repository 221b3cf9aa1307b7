//! The VM manager: requests in, libvirt calls out. The decisions (names, adoption, idle expiry,
//! which VM an acquire resumes, the domain XML) are the pure functions of `registry` and `domxml`;
//! this module observes libvirt, applies them and keeps files in step.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use betaas_proto::{
    Capability, ErrorKind, ErrorReply, Request, Response, VirtKind, VmInfo, VmState, VmStats,
};
use betaas_templates::{Boot, Role, Template};
use thiserror::Error;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, StopMode};
use crate::domxml::{self, BootSpec, DomainSpec, Mark, XmlError, NS};
use crate::identity::{self, Identity, IdentityError};
use crate::libvirt::{self, HvError, Libvirt};
use crate::lifecycle::{self, Action, Budget, Track};
use crate::overlay::{self, OverlayError};
use crate::probe;
use crate::registry::{self, Observed, Vm};
use crate::service::{self, ServiceError};

const DISK: &str = "disk.qcow2";
const SERIAL: &str = "serial.log";
const STOPPED: &str = "stopped";
/// Present while the VM's restart budget is spent (kept across daemon restarts).
const FAILED: &str = "failed";

#[derive(Debug, Error)]
pub enum VmdError {
    #[error("no VM named {0:?} (of this daemon)")]
    NoSuchVm(String),
    #[error("domain {0:?} was not created by this daemon: not touched")]
    Foreign(String),
    #[error(transparent)]
    Template(#[from] CatalogError),
    #[error("template {template:?} runs under {needs}; this gateway can run {have}")]
    NoCapability {
        template: String,
        needs: String,
        have: String,
    },
    #[error("VM {vm:?} is {state:?}: cannot {op}")]
    InvalidState {
        vm: String,
        state: VmState,
        op: &'static str,
    },
    #[error(transparent)]
    Hv(#[from] HvError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("template {0:?} declares no service ports ([network] ports): it takes no WAR")]
    NotAService(String),
    #[error("environment for the guest: {0}")]
    BadEnv(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl VmdError {
    pub fn reply(&self) -> ErrorReply {
        let kind = match self {
            VmdError::NoSuchVm(_) => ErrorKind::NoSuchVm,
            VmdError::Foreign(_) => ErrorKind::Foreign,
            VmdError::Template(CatalogError::NotFound { .. }) => ErrorKind::NoSuchTemplate,
            VmdError::Template(_) => ErrorKind::BadTemplate,
            VmdError::NoCapability { .. } => ErrorKind::NoCapability,
            VmdError::InvalidState { .. } => ErrorKind::InvalidState,
            VmdError::Hv(HvError::Unavailable { .. }) => ErrorKind::HypervisorUnavailable,
            VmdError::Hv(_) | VmdError::Overlay(_) => ErrorKind::Hypervisor,
            VmdError::Xml(_) => ErrorKind::Internal,
            VmdError::Io { .. } => ErrorKind::Io,
            VmdError::Identity(IdentityError::Io { .. }) => ErrorKind::Io,
            VmdError::Identity(_) => ErrorKind::NoIdentity,
            VmdError::Service(ServiceError::Sha256 { .. }) => ErrorKind::InvalidState,
            VmdError::Service(_) => ErrorKind::Io,
            VmdError::NotAService(_) => ErrorKind::BadTemplate,
            VmdError::BadEnv(_) => ErrorKind::InvalidState,
        };
        ErrorReply::new(kind, self.to_string())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VmdError + '_ {
    move |source| VmdError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A VM's environment as given at create (`KEY=value` lines), next to its overlay.
const ENV: &str = "env";

fn env_file(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// The variable a cluster's node URLs travel in: `BETAAS_URL_<TEMPLATE>`, the template's name in
/// capitals with every other character `_` (`BETAAS_URL_BIGDATA_MASTER`).
pub fn url_var(template: &str) -> String {
    let t: String = template
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("BETAAS_URL_{t}")
}

/// A worker's environment: the URL of its `[cluster] master` (given as that template's
/// `BETAAS_URL_*`) also in the descriptor's `master_env`; refused when the master's is missing.
fn cluster_env(t: &Template, env: &[(String, String)]) -> Result<Vec<(String, String)>, VmdError> {
    let mut out = env.to_vec();
    if let Some(c) = &t.cluster {
        if let (Some(master), Some(var)) = (&c.master, &c.master_env) {
            let key = url_var(master);
            let Some((_, url)) = env.iter().find(|(k, _)| *k == key) else {
                return Err(VmdError::BadEnv(format!(
                    "template {} is a worker of {master}: it needs {key} (the master's URL)",
                    t.name
                )));
            };
            out.retain(|(k, _)| k != var);
            out.push((var.clone(), url.clone()));
        }
    }
    Ok(out)
}

/// Names like shell variables, values on one line, at most 32 of them.
fn check_env(env: &[(String, String)]) -> Result<(), VmdError> {
    let bad = VmdError::BadEnv;
    if env.len() > 32 {
        return Err(bad(format!("{} variables (at most 32)", env.len())));
    }
    for (k, v) in env {
        let name_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let ours = k.starts_with("BETAAS_") && !k.starts_with("BETAAS_URL_");
        if !name_ok || ours || v.contains(['\n', '\0']) || v.len() > 1024 {
            return Err(bad(format!(
                "{k:?}: a name of letters, digits and _ (not BETAAS_* but BETAAS_URL_*), a value of one line"
            )));
        }
    }
    Ok(())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds on the monotonic clock since the first call (the supervisor's backoffs).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub struct Manager {
    cfg: Config,
    hv: Libvirt,
    /// Containers live on libvirt's LXC driver, a connection of their own.
    lxc: Libvirt,
    /// The LXC driver did not answer: not asked again before this (a host without it).
    lxc_down_until: Option<Instant>,
    /// Threads copying each running container's console into its serial log.
    consoles: crate::console::Followers,
    catalog: Catalog,
    vms: BTreeMap<String, Vm>,
    foreign: BTreeSet<String>,
    capability: Option<Capability>,
    /// Unix seconds; replaceable so the idle policy can be tested without waiting.
    clock: Box<dyn Fn() -> u64 + Send>,
    /// The supervisor's memory of each VM (restarts, backoff).
    tracks: BTreeMap<String, Track>,
    /// Monotonic milliseconds for the restart backoff; replaceable for tests.
    mono: Box<dyn Fn() -> u64 + Send>,
}

/// libvirt's view of one domain in our terms.
fn observe(d: &Domain) -> Result<Observed, virt::error::Error> {
    let name = d.name()?;
    let (state, _) = d.state()?;
    let saved = d.has_managed_save(0).unwrap_or(false);
    let state = match state {
        Enum::Known(DomainState::Running) | Enum::Known(DomainState::Blocked) => VmState::Running,
        Enum::Known(DomainState::Paused) => VmState::Paused,
        Enum::Known(DomainState::Shutoff) if saved => VmState::Saved,
        Enum::Known(DomainState::Shutoff) => VmState::ShutOff,
        Enum::Known(DomainState::Crashed) => VmState::Crashed,
        _ => VmState::Other,
    };
    let mark = match d.metadata(libvirt::METADATA_ELEMENT, Some(NS), 0) {
        Ok(x) => domxml::parse_mark(&x).ok().flatten(),
        Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomainMetadata) => None,
        Err(e) if libvirt::is_connection_error(&e) => return Err(e),
        Err(_) => None,
    };
    Ok(Observed { name, mark, state })
}

impl Manager {
    pub fn new(cfg: Config) -> Self {
        let hv = Libvirt::new(&cfg.uri, Duration::from_secs(cfg.libvirt_retry_s));
        let catalog = Catalog::new(cfg.templates.clone());
        let lxc = Libvirt::new(
            &cfg.lxc_uri,
            Duration::from_secs(cfg.libvirt_retry_s.min(2)),
        );
        Manager {
            cfg,
            hv,
            lxc,
            lxc_down_until: None,
            consoles: Default::default(),
            catalog,
            vms: BTreeMap::new(),
            foreign: BTreeSet::new(),
            capability: None,
            clock: Box::new(unix_now),
            tracks: BTreeMap::new(),
            mono: Box::new(mono_ms),
        }
    }

    pub fn with_mono_clock(mut self, mono: impl Fn() -> u64 + Send + 'static) -> Self {
        self.mono = Box::new(mono);
        self
    }

    fn budget(&self) -> Budget {
        Budget {
            max_restarts: self.cfg.restart_max,
            backoff_ms: self.cfg.restart_backoff_ms,
            backoff_max_ms: self.cfg.restart_backoff_max_ms,
            reset_after_ms: self.cfg.restart_reset_s.saturating_mul(1000),
        }
    }

    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join(name)
    }

    pub fn serial_log(&self, name: &str) -> PathBuf {
        self.dir(name).join(SERIAL)
    }

    pub fn capability(&self) -> Option<&Capability> {
        self.capability.as_ref()
    }

    /// Answers one request; every failure becomes an error reply.
    pub fn handle(&mut self, req: Request) -> Response {
        let r = match req {
            Request::Probe { refresh } => self.probe(refresh).map(Response::Capability),
            Request::Create { template } => self.create(&template).map(Response::Vm),
            Request::Acquire { template } => self
                .acquire(&template)
                .map(|(vm, resumed)| Response::Acquired { vm, resumed }),
            Request::AcquireWith { template, env } => self
                .acquire_with(&template, &env)
                .map(|(vm, resumed, url)| Response::AcquiredAt { vm, resumed, url }),
            Request::Start { vm } => self.start(&vm).map(Response::Vm),
            Request::Stop { vm } => self.stop(&vm).map(Response::Vm),
            Request::Resume { vm } => self.resume(&vm).map(Response::Vm),
            Request::Destroy { vm } => self.destroy(&vm).map(Response::Vm),
            Request::Undefine { vm } => self.undefine(&vm).map(|()| Response::Undefined { vm }),
            Request::List => self.list().map(Response::Vms),
            Request::Stats { vm } => self.stats(&vm).map(Response::Stats),
            Request::AcquireService { template, war } => {
                self.acquire_service(&template, war.as_ref())
            }
        };
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "request failed");
            Response::Error(e.reply())
        })
    }

    /// Rebuilds the registry from libvirt (adoption after a restart, VMs that stopped on their
    /// own, domains undefined behind our back) and removes files nothing owns any more.
    /// The connection a domain of `kind` lives on.
    fn hv_of(&mut self, kind: VirtKind) -> &mut Libvirt {
        if kind == VirtKind::Lxc {
            &mut self.lxc
        } else {
            &mut self.hv
        }
    }

    fn kind_of(&self, name: &str) -> VirtKind {
        self.vms.get(name).map_or(VirtKind::Qemu, |v| v.mark.kind)
    }

    /// Whether containers may exist: the probe found the LXC driver working, or we have one.
    /// Before the probe they are not listed (containers left running are adopted once it found
    /// the driver; meanwhile their files are kept): a host without the driver never waits on it.
    fn lxc_wanted(&self) -> bool {
        let probed_ok = self
            .capability
            .as_ref()
            .is_some_and(|c| c.probes.iter().any(|p| p.kind == VirtKind::Lxc && p.ok));
        // A container's directory holds its unpacked root: one left by an earlier run (vmd
        // restarted with containers running) is adopted at once, before the probe.
        let on_disk = || {
            std::fs::read_dir(&self.cfg.state_dir)
                .is_ok_and(|rd| rd.flatten().any(|e| e.path().join("rootfs").is_dir()))
        };
        probed_ok
            || self.cfg.probe.assume == Some(VirtKind::Lxc)
            || self.vms.values().any(|v| v.mark.kind == VirtKind::Lxc)
            || on_disk()
    }

    /// The containers, or None when the LXC driver is not wanted or did not answer.
    fn list_lxc(&mut self) -> Option<Vec<Observed>> {
        if !self.lxc_wanted() || self.lxc_down_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        match self.lxc.with("list containers", |c: &Connect| {
            c.list_all_domains(0)?.iter().map(observe).collect()
        }) {
            Ok(v) => {
                self.lxc_down_until = None;
                Some(v)
            }
            Err(e) => {
                if self.lxc_down_until.is_none() {
                    tracing::warn!(error = %e, "the LXC driver does not answer: containers not listed");
                }
                self.lxc_down_until = Some(Instant::now() + Duration::from_secs(30));
                None
            }
        }
    }

    pub fn refresh(&mut self) -> Result<(), VmdError> {
        let mut observed: Vec<Observed> = self.hv.with("list domains", |c: &Connect| {
            c.list_all_domains(0)?.iter().map(observe).collect()
        })?;
        let containers = self.list_lxc();
        let lxc_listed = containers.is_some();
        observed.extend(containers.unwrap_or_default());
        let mut stopped_files = BTreeMap::new();
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.cfg.state_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !e.path().is_dir() || name.starts_with('.') {
                    continue;
                }
                if let Some(s) = std::fs::read_to_string(e.path().join(STOPPED))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    stopped_files.insert(name.clone(), s);
                }
                dirs.push(name);
            }
        }
        let r = registry::reconcile(&self.cfg.owner, &self.vms, &observed, &stopped_files, &dirs);
        for name in &r.stale_probes {
            tracing::info!(vm = %name, "destroying a probe guest left by an earlier run");
            let _ = self.domain_op(name, "destroy stale probe guest", |d| d.destroy());
        }
        // Containers unlisted (the LXC driver did not answer) are not gone: keep them and their files.
        let unlisted = |m: &Manager, name: &str| {
            !lxc_listed && (m.kind_of(name) == VirtKind::Lxc || m.dir(name).join("rootfs").is_dir())
        };
        for name in r.vanished.iter().chain(&r.orphan_dirs) {
            if unlisted(self, name) {
                continue;
            }
            tracing::info!(vm = %name, "removing files of a VM libvirt no longer has");
            let _ = std::fs::remove_dir_all(self.dir(name));
        }
        let mut vms = r.vms;
        if !lxc_listed {
            for (name, vm) in &self.vms {
                if vm.mark.kind == VirtKind::Lxc && !vms.contains_key(name) {
                    vms.insert(name.clone(), vm.clone());
                }
            }
        }
        for (name, vm) in &vms {
            if vm.mark.kind == VirtKind::Lxc && vm.state == VmState::Running {
                self.consoles
                    .follow(&self.cfg.lxc_uri, name, &self.dir(name).join(SERIAL));
            }
        }
        for (name, vm) in vms.iter_mut() {
            if !self.vms.contains_key(name) {
                tracing::info!(vm = %name, state = ?vm.state, template = %vm.mark.template, "adopted");
            }
            self.annotate(vm);
        }
        self.tracks.retain(|n, _| vms.contains_key(n));
        self.vms = vms;
        self.foreign = r.foreign;
        Ok(())
    }

    /// The supervisor's figures on a VM: its restarts, and whether it failed (also from the
    /// file, after a daemon restart).
    fn annotate(&mut self, vm: &mut Vm) {
        let failed_file = self.dir(&vm.name).join(FAILED).exists();
        let t = self.tracks.entry(vm.name.clone()).or_insert_with(|| Track {
            failed: failed_file,
            ..Track::default()
        });
        vm.restarts = t.restarts;
        vm.failed = t.failed;
    }

    /// Ours and current, or why not.
    fn ours(&mut self, name: &str) -> Result<Vm, VmdError> {
        let kind = self.kind_of(name);
        let o = self.hv_of(kind).with("look up domain", |c: &Connect| {
            match c.lookup_domain_by_name(name) {
                Ok(d) => observe(&d).map(Some),
                Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomain) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let Some(o) = o else {
            if self.vms.remove(name).is_some() {
                let _ = std::fs::remove_dir_all(self.dir(name));
            }
            return Err(VmdError::NoSuchVm(name.to_owned()));
        };
        match o.mark {
            Some(m) if m.owner == self.cfg.owner => {
                let stopped_s = match o.state {
                    VmState::Running | VmState::Paused | VmState::Other => None,
                    // No record of a stop on request: it died (see `lifecycle`).
                    _ => self
                        .vms
                        .get(name)
                        .and_then(|v| v.stopped_s)
                        .or_else(|| self.read_stopped(name)),
                };
                let mut vm = Vm {
                    name: o.name,
                    mark: m,
                    state: o.state,
                    stopped_s,
                    restarts: 0,
                    failed: false,
                };
                self.annotate(&mut vm);
                self.vms.insert(name.to_owned(), vm.clone());
                Ok(vm)
            }
            _ => Err(VmdError::Foreign(name.to_owned())),
        }
    }

    fn read_stopped(&self, name: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir(name).join(STOPPED))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    fn write_stopped(&self, name: &str, at: u64) {
        // Best effort: without the file, adoption restarts the idle clock (never destroys early).
        let _ = std::fs::write(self.dir(name).join(STOPPED), format!("{at}\n"));
    }

    fn set_state(&mut self, name: &str, state: VmState) -> VmInfo {
        let now = self.now();
        let stopped = matches!(state, VmState::Saved | VmState::ShutOff | VmState::Crashed);
        if stopped {
            self.write_stopped(name, now);
        } else {
            let _ = std::fs::remove_file(self.dir(name).join(STOPPED));
        }
        match self.vms.get_mut(name) {
            Some(vm) => {
                vm.state = state;
                vm.stopped_s = stopped.then_some(now);
                vm.info()
            }
            None => VmInfo {
                name: name.to_owned(),
                template: String::new(),
                kind: VirtKind::Qemu,
                state,
                created_s: 0,
                stopped_s: None,
                restarts: 0,
                failed: false,
            },
        }
    }

    pub fn probe(&mut self, refresh: bool) -> Result<Capability, VmdError> {
        if let (Some(c), false) = (&self.capability, refresh) {
            // Nothing worked (libvirtd still starting at boot, say): probe again, at most once a minute.
            if c.best.is_some() || self.now().saturating_sub(c.probed_s) < 60 {
                return Ok(c.clone());
            }
        }
        let now = self.now();
        let cap = probe::run(&self.cfg, &mut self.hv, &mut self.catalog, now)?;
        tracing::info!(best = ?cap.best, "capability probed");
        self.capability = Some(cap.clone());
        Ok(cap)
    }

    /// The kind a new VM of `t` gets: the first that the probe saw work and the template supports.
    fn kind_for(&mut self, t: &Template) -> Result<VirtKind, VmdError> {
        let cap = self.probe(false)?;
        let working: Vec<VirtKind> = cap.probes.iter().filter(|p| p.ok).map(|p| p.kind).collect();
        let supports: Vec<VirtKind> = t
            .kinds
            .iter()
            .filter_map(|k| VirtKind::parse(k.as_str()))
            .collect();
        lifecycle::choose_kind(&working, &supports).ok_or_else(|| VmdError::NoCapability {
            template: t.name.clone(),
            needs: t
                .kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            have: if working.is_empty() {
                "nothing (the probe booted no guest)".into()
            } else {
                working
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join("/")
            },
        })
    }

    pub fn create(&mut self, template: &str) -> Result<VmInfo, VmdError> {
        self.create_with(template, &[])
    }

    /// `create` with an environment for a container's init (recorded in the VM's file `env`).
    pub fn create_with(
        &mut self,
        template: &str,
        env: &[(String, String)],
    ) -> Result<VmInfo, VmdError> {
        let t = self
            .catalog
            .find(template, self.cfg.arch, self.cfg.verify_checksums)?;
        let kind = self.kind_for(&t)?;
        self.refresh()?;
        let mut taken: BTreeSet<String> = self.vms.keys().cloned().collect();
        taken.extend(self.foreign.iter().cloned());
        // Leftover directories count as taken too: never reuse a name whose files are still there.
        if let Ok(rd) = std::fs::read_dir(&self.cfg.state_dir) {
            taken.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
        let name = registry::next_name(&self.cfg.name_prefix, &t.name, &taken);
        // A logical gateway (paper §V) joins another instance as its own member: it needs an
        // identity of its own, chosen before anything is made.
        let ident = match t.role {
            Role::Gateway if kind == VirtKind::Lxc => {
                return Err(VmdError::NoCapability {
                    template: t.name.clone(),
                    needs: "a VM (kvm/qemu): a logical gateway's identity comes on a seed disk"
                        .into(),
                    have: "lxc".into(),
                })
            }
            Role::Gateway => Some(self.free_identity()?),
            _ => None,
        };
        let dir = self.dir(&name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let ports = t
            .network
            .as_ref()
            .map(|n| n.ports.clone())
            .unwrap_or_default();
        let r = match &ident {
            _ if !ports.is_empty() && ident.is_none() => service::assign_ports(&dir, &ports)
                .map(drop)
                .map_err(VmdError::from),
            Some(id) => identity::record(&dir, &id.name)
                .and_then(|()| identity::write_seed(&dir.join(identity::SEED), id))
                .map_err(VmdError::from),
            None => Ok(()),
        }
        .and_then(|()| {
            if env.is_empty() {
                return Ok(());
            }
            let path = dir.join(ENV);
            std::fs::write(&path, env_file(env)).map_err(io_err(&path))
        })
        .and_then(|()| self.define(&t, kind, &name, &dir, env));
        if r.is_err() {
            // Nothing half-made stays behind: the overlay goes with the failed define.
            let _ = std::fs::remove_dir_all(&dir);
        }
        let vm = r?;
        tracing::info!(vm = %name, template = %t.name, kind = %kind, "created");
        if let Some(id) = &ident {
            tracing::info!(vm = %name, identity = %id.name, gateway = %id.gateway_id, "logical gateway identity given");
        }
        self.write_stopped(&name, vm.stopped_s.unwrap_or(0));
        let info = vm.info();
        self.vms.insert(name, vm);
        Ok(info)
    }

    /// Which VM holds which logical-gateway identity (the `identity` file in each VM's directory).
    pub fn identities(&self) -> BTreeMap<String, String> {
        self.vms
            .keys()
            .filter_map(|vm| identity::held_by(&self.dir(vm)).map(|id| (vm.clone(), id)))
            .collect()
    }

    /// The first identity of the pool no VM of ours holds, read and checked.
    fn free_identity(&self) -> Result<Identity, IdentityError> {
        let dir = &self.cfg.logical_dir;
        let pool = identity::pool(dir)?;
        let held = self.identities();
        match identity::pick(&pool, &held) {
            Some(name) => identity::load(dir, name),
            None => Err(IdentityError::Exhausted {
                dir: dir.clone(),
                detail: identity::exhausted_detail(&pool, &held),
            }),
        }
    }

    fn define(
        &mut self,
        t: &Template,
        kind: VirtKind,
        name: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> Result<Vm, VmdError> {
        let mut spec = domain_spec(t, kind, name, dir, &self.cfg, self.now())?;
        if t.network.as_ref().is_some_and(|n| !n.ports.is_empty()) {
            // A service (chosen in create): a container mounts its share, a VM gets the
            // forwards and the share as a seed disk.
            if kind == VirtKind::Lxc {
                spec.share = Some(dir.join(service::SHARE));
            } else {
                spec.forwards = service::read_ports(dir);
                spec.seed = Some(dir.join(service::SEED));
            }
        }
        if kind == VirtKind::Lxc {
            // Containers share the gateway's network: what they serve is at its address.
            spec.env = vec![
                ("BETAAS_VM".into(), name.to_owned()),
                ("BETAAS_ADDRESS".into(), self.cfg.address.clone()),
                ("BETAAS_VCPUS".into(), t.resources.vcpus.to_string()),
                ("BETAAS_MEMORY_MB".into(), t.resources.memory_mb.to_string()),
            ];
            spec.env.extend(env.iter().cloned());
        }
        if let Some(disk) = &spec.disk {
            overlay::create(&t.path_of(&t.image.file), t.image.format, disk)?;
        }
        if let (Some(l), BootSpec::Container { rootfs, .. }) = (&t.lxc, &spec.boot) {
            // A container's "overlay" is its own unpacked copy of the template's rootfs, or a
            // tree of hard links to the one unpacked copy (`[lxc] shared`).
            if l.shared {
                let cache = self
                    .cfg
                    .state_dir
                    .join(".rootfs")
                    .join(l.rootfs.sha256.to_string());
                overlay::link_rootfs(&t.path_of(&l.rootfs), &cache, rootfs)?;
            } else {
                overlay::unpack_rootfs(&t.path_of(&l.rootfs), rootfs)?;
            }
        }
        let xml = domxml::domain_xml(&spec)?;
        self.hv_of(kind).with("define domain", |c: &Connect| {
            c.define_domain_xml(&xml).map(drop)
        })?;
        Ok(Vm {
            name: name.to_owned(),
            mark: spec.mark,
            state: VmState::ShutOff,
            stopped_s: Some(self.now()),
            restarts: 0,
            failed: false,
        })
    }

    fn domain_op(
        &mut self,
        name: &str,
        what: &str,
        mut op: impl FnMut(&Domain) -> Result<(), virt::error::Error>,
    ) -> Result<(), VmdError> {
        let kind = self.kind_of(name);
        self.hv_of(kind).with(what, |c: &Connect| {
            let d = c.lookup_domain_by_name(name)?;
            op(&d)
        })?;
        Ok(())
    }

    /// A start on request: the VM is wanted running again, with its whole restart budget.
    pub fn start(&mut self, name: &str) -> Result<VmInfo, VmdError> {
        let vm = self.ours(name)?;
        if vm.failed || vm.restarts > 0 {
            let _ = std::fs::remove_file(self.dir(name).join(FAILED));
        }
        self.tracks
            .insert(name.to_owned(), lifecycle::started_on_request());
        if let Some(v) = self.vms.get_mut(name) {
            (v.restarts, v.failed) = (0, false);
        }
        self.boot(name, vm)
    }

    fn boot(&mut self, name: &str, vm: Vm) -> Result<VmInfo, VmdError> {
        let r = match vm.state {
            VmState::Running => return Ok(vm.info()),
            VmState::Paused => self.domain_op(name, "resume paused domain", |d| d.resume()),
            _ => self.domain_op(name, "start domain", |d| d.create()),
        };
        if let Err(e) = r {
            // A call retried across a libvirtd restart may have gone through the first time
            // ("already running" on the retry): the domain's state decides.
            if matches!(e, VmdError::Hv(HvError::Unavailable { .. }))
                || self.ours(name)?.state != VmState::Running
            {
                return Err(e);
            }
        }
        tracing::info!(vm = %name, from = ?vm.state, "started");
        if vm.mark.kind == VirtKind::Lxc {
            self.consoles
                .follow(&self.cfg.lxc_uri, name, &self.serial_log(name));
        }
        Ok(self.set_state(name, VmState::Running))
    }

    pub fn resume(&mut self, name: &str) -> Result<VmInfo, VmdError> {
        let vm = self.ours(name)?;
        match vm.state {
            VmState::Saved => self.start(name),
            VmState::Running => Ok(vm.info()),
            state => Err(VmdError::InvalidState {
                vm: name.to_owned(),
                state,
                op: "resume (no managed save: use start)",
            }),
        }
    }

    pub fn stop(&mut self, name: &str) -> Result<VmInfo, VmdError> {
        let vm = self.ours(name)?;
        if vm.state != VmState::Running && vm.state != VmState::Paused {
            if vm.stopped_s.is_none() {
                // It had died and was to be restarted: now it is stopped on request.
                tracing::info!(vm = %name, state = ?vm.state, "stopped (was down, not restarted)");
                return Ok(self.set_state(name, vm.state));
            }
            return Ok(vm.info());
        }
        if lifecycle::stop_method(vm.mark.kind, self.cfg.stop_mode) == StopMode::Shutdown {
            self.shutdown(name)?;
            tracing::info!(vm = %name, "stopped (ACPI shutdown)");
            return Ok(self.set_state(name, VmState::ShutOff));
        }
        match self.domain_op(name, "managed save", |d| d.managed_save(0)) {
            Ok(()) => {
                tracing::info!(vm = %name, "stopped (managed save)");
                Ok(self.set_state(name, VmState::Saved))
            }
            Err(VmdError::Hv(e @ HvError::Unavailable { .. })) => Err(VmdError::Hv(e)),
            Err(e) => {
                // The save may have completed anyway (libvirtd restarted during it and the retry
                // found the domain already saved): look before falling back.
                let now = self.ours(name)?;
                if now.is_stopped() {
                    tracing::info!(vm = %name, state = ?now.state, error = %e, "stop: already stopped after a failed save call");
                    return Ok(self.set_state(name, now.state));
                }
                // No managed save (a container, a guest with a device that cannot migrate, no disk
                // space for the image): power the guest off cleanly instead.
                tracing::warn!(vm = %name, error = %e, "managed save failed, ACPI shutdown instead");
                self.shutdown(name)?;
                Ok(self.set_state(name, VmState::ShutOff))
            }
        }
    }

    /// ACPI power button, then wait; a hard power-off if the guest ignores it.
    fn shutdown(&mut self, name: &str) -> Result<(), VmdError> {
        let kind = self.kind_of(name);
        let flag = match kind {
            VirtKind::Lxc => libvirt::SHUTDOWN_SIGNAL,
            _ => libvirt::SHUTDOWN_ACPI_POWER_BTN,
        };
        self.domain_op(name, "shutdown", |d| {
            d.shutdown_flags(flag).or_else(|_| d.shutdown())
        })?;
        let deadline = Instant::now() + Duration::from_secs(self.cfg.shutdown_timeout_s);
        while Instant::now() < deadline {
            let active = self.hv_of(kind).with("poll domain", |c: &Connect| {
                c.lookup_domain_by_name(name)?.is_active()
            })?;
            if !active {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tracing::warn!(vm = %name, "guest ignored ACPI shutdown, powering off");
        self.domain_op(name, "destroy after shutdown timeout", |d| d.destroy())
    }

    pub fn destroy(&mut self, name: &str) -> Result<VmInfo, VmdError> {
        let vm = self.ours(name)?;
        if matches!(
            vm.state,
            VmState::Running | VmState::Paused | VmState::Other
        ) {
            self.domain_op(name, "destroy domain", |d| d.destroy())?;
            tracing::info!(vm = %name, "destroyed");
            let state = if self.ours(name)?.state == VmState::Saved {
                VmState::Saved
            } else {
                VmState::ShutOff
            };
            return Ok(self.set_state(name, state));
        }
        Ok(vm.info())
    }

    pub fn undefine(&mut self, name: &str) -> Result<(), VmdError> {
        let vm = self.ours(name)?;
        if matches!(
            vm.state,
            VmState::Running | VmState::Paused | VmState::Other
        ) {
            self.domain_op(name, "destroy before undefine", |d| d.destroy())?;
        }
        if let Err(e) = self.domain_op(name, "undefine domain", |d| {
            d.undefine_flags(libvirt::UNDEFINE_MANAGED_SAVE)
        }) {
            // Gone anyway (a retry after the first call went through) is what was asked.
            let gone = matches!(&e, VmdError::Hv(h) if h.is_no_domain());
            if !gone {
                return Err(e);
            }
        }
        self.vms.remove(name);
        let dir = self.dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        tracing::info!(vm = %name, "undefined, files removed");
        Ok(())
    }

    pub fn list(&mut self) -> Result<Vec<VmInfo>, VmdError> {
        self.refresh()?;
        Ok(self.vms.values().map(Vm::info).collect())
    }

    pub fn stats(&mut self, name: &str) -> Result<VmStats, VmdError> {
        let vm = self.ours(name)?;
        let overlay = self.dir(name).join(DISK);
        let kind = self.kind_of(name);
        let (info, block) = self.hv_of(kind).with("domain stats", |c: &Connect| {
            let d = c.lookup_domain_by_name(name)?;
            let info = d.info()?;
            // Block info needs a running QEMU for some formats; the file answers otherwise.
            let block = d.block_info("vda", 0).ok();
            Ok((info, block))
        })?;
        let file_alloc = overlay::allocated_bytes(&overlay);
        let (cap, alloc) = match block {
            Some(b) if b.capacity > 0 && b.allocation <= b.capacity.max(file_alloc) * 2 => {
                (b.capacity, b.allocation)
            }
            _ => (0, file_alloc),
        };
        Ok(VmStats {
            name: name.to_owned(),
            state: vm.state,
            cpu_time_ns: info.cpu_time,
            vcpus: info.nr_virt_cpu,
            memory_kib: info.memory,
            max_memory_kib: info.max_mem,
            disk_capacity_bytes: cap,
            disk_allocation_bytes: alloc,
        })
    }

    /// The allocator's request: bring back a stopped VM of `template` if there is one, else make
    /// one. Also says whether it was brought back.
    pub fn acquire(&mut self, template: &str) -> Result<(VmInfo, bool), VmdError> {
        self.acquire_with(template, &[])
            .map(|(vm, resumed, _)| (vm, resumed))
    }

    /// `acquire` with an environment for the guest: only a stopped VM made with the same
    /// environment is reused (a worker of another master is not). Also returns the URL the
    /// guest serves at, for a template with a `[cluster] url`.
    pub fn acquire_with(
        &mut self,
        template: &str,
        env: &[(String, String)],
    ) -> Result<(VmInfo, bool, Option<String>), VmdError> {
        check_env(env)?;
        let t = self
            .catalog
            .find(template, self.cfg.arch, self.cfg.verify_checksums)?;
        let env = cluster_env(&t, env)?;
        let env = env.as_slice();
        self.refresh()?;
        let want = env_file(env);
        let same_env: Vec<&registry::Vm> = self
            .vms
            .values()
            .filter(|v| {
                std::fs::read_to_string(self.dir(&v.name).join(ENV)).unwrap_or_default() == want
            })
            .collect();
        let pick =
            registry::pick_resumable(same_env, template, self.cfg.arch).map(|v| v.name.clone());
        let (name, resumed) = match pick {
            Some(n) => {
                tracing::info!(vm = %n, %template, "acquire: reusing a stopped VM");
                (n, true)
            }
            None => (self.create_with(template, env)?.name, false),
        };
        let vm = self.start(&name)?;
        let url = t.cluster.as_ref().and_then(|c| c.url_at(&self.cfg.address));
        Ok((vm, resumed, url))
    }

    /// `Acquire` for a template with service ports, handing `war` to the guest: a stopped VM of
    /// the template is brought back (with the new WAR if one is given) before a new one is made.
    /// A VM resumed from its managed save would keep the application it booted with, so with a
    /// different WAR its save is dropped and it boots afresh. A VM made for this request and not
    /// started (a bad WAR, a failed start) is undefined: nothing is left behind.
    pub fn acquire_service(
        &mut self,
        template: &str,
        war: Option<&betaas_proto::WarFile>,
    ) -> Result<Response, VmdError> {
        let t = self
            .catalog
            .find(template, self.cfg.arch, self.cfg.verify_checksums)?;
        if t.network.as_ref().is_none_or(|n| n.ports.is_empty()) {
            return Err(VmdError::NotAService(template.to_owned()));
        }
        self.refresh()?;
        let pick = registry::pick_resumable(self.vms.values(), template, self.cfg.arch)
            .map(|v| v.name.clone());
        let (name, resumed) = match pick {
            Some(n) => (n, true),
            None => (self.create(template)?.name, false),
        };
        let r = self.start_service(&name, war);
        if r.is_err() && !resumed {
            let _ = self.undefine(&name);
        }
        let vm = r?;
        let ports = service::read_ports(&self.dir(&name));
        tracing::info!(vm = %name, template, resumed, ?ports, "service acquired");
        Ok(Response::AcquiredService {
            vm,
            resumed,
            url: service::url(&self.cfg.address, &ports),
            ports,
            ready_marker: t.ready_marker.clone(),
        })
    }

    fn start_service(
        &mut self,
        name: &str,
        war: Option<&betaas_proto::WarFile>,
    ) -> Result<VmInfo, VmdError> {
        let vm = self.ours(name)?;
        let container = vm.mark.kind == VirtKind::Lxc;
        let dir = self.dir(name);
        let changed = service::prepare(&dir, &service::read_ports(&dir), container, war)?;
        if changed && vm.state == VmState::Saved {
            tracing::info!(vm = %name, "new WAR: managed save dropped, the VM boots afresh");
            self.domain_op(name, "drop managed save", |d| d.managed_save_remove(0))?;
            self.set_state(name, VmState::ShutOff);
        }
        self.start(name)
    }

    /// The dependability manager's round: a VM that died without being stopped is started again
    /// after its backoff, up to the restart budget; then it is reported failed and left stopped
    /// (its idle clock starts). Returns what was done or is waited for, by VM.
    pub fn supervise(&mut self) -> Result<Vec<(String, Action)>, VmdError> {
        self.refresh()?;
        let now = (self.mono)();
        let budget = self.budget();
        let mut done = Vec::new();
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            let Some(vm) = self.vms.get(&name).cloned() else {
                continue;
            };
            let seen = lifecycle::seen(vm.state, vm.stopped_s);
            let track = self.tracks.get(&name).cloned().unwrap_or_default();
            let (action, next) = lifecycle::decide(seen, &track, now, &budget);
            self.tracks.insert(name.clone(), next.clone());
            if let Some(v) = self.vms.get_mut(&name) {
                (v.restarts, v.failed) = (next.restarts, next.failed);
            }
            match action {
                Action::Nothing => continue,
                Action::Wait { .. } => {}
                Action::Restart => {
                    tracing::warn!(vm = %name, state = ?vm.state, restart = next.restarts, of = budget.max_restarts, "died without being stopped: restarting");
                    if let Err(e) = self.boot(&name, vm) {
                        tracing::warn!(vm = %name, error = %e, "restart failed");
                    }
                }
                Action::GiveUp => {
                    tracing::error!(vm = %name, restarts = next.restarts, "kept dying: restart budget spent, left stopped and reported failed");
                    let _ = std::fs::write(self.dir(&name).join(FAILED), b"");
                    self.set_state(&name, vm.state);
                }
            }
            done.push((name, action));
        }
        Ok(done)
    }

    /// The idle policy: VMs stopped for `idle_destroy_s` are undefined and their files removed.
    pub fn reap(&mut self) -> Result<Vec<String>, VmdError> {
        self.refresh()?;
        let due = registry::idle_expired(self.vms.values(), self.now(), self.cfg.idle_destroy_s);
        let mut done = Vec::new();
        for name in due {
            match self.undefine(&name) {
                Ok(()) => {
                    tracing::info!(vm = %name, "idle too long: destroyed");
                    done.push(name);
                }
                Err(e) => tracing::warn!(vm = %name, error = %e, "idle destroy failed"),
            }
        }
        Ok(done)
    }

    pub fn reconnects(&self) -> u64 {
        self.hv.reconnects
    }
}

/// The domain description of VM `name` of template `t` under `kind` (pure but for path joins).
pub fn domain_spec(
    t: &Template,
    kind: VirtKind,
    name: &str,
    dir: &Path,
    cfg: &Config,
    now_s: u64,
) -> Result<DomainSpec, VmdError> {
    let boot = match (&t.boot, kind, &t.lxc) {
        (_, VirtKind::Lxc, Some(l)) => BootSpec::Container {
            rootfs: dir.join("rootfs"),
            init: l.init.clone(),
        },
        (_, VirtKind::Lxc, None) => {
            return Err(VmdError::NoCapability {
                template: t.name.clone(),
                needs: "an [lxc] rootfs".into(),
                have: "lxc".into(),
            })
        }
        (Boot::Kernel { kernel, initrd, .. }, _, _) => BootSpec::Kernel {
            kernel: t.path_of(kernel),
            initrd: initrd.as_ref().map(|i| t.path_of(i)),
            cmdline: t.cmdline(cfg.arch).unwrap_or_default(),
        },
        (Boot::Disk, _, _) => BootSpec::Disk,
    };
    let disk = (kind != VirtKind::Lxc).then(|| dir.join(DISK));
    Ok(DomainSpec {
        name: name.to_owned(),
        mark: Mark {
            owner: cfg.owner.clone(),
            template: t.name.clone(),
            arch: cfg.arch,
            kind,
            created_s: now_s,
        },
        vcpus: t.resources.vcpus,
        memory_mib: t.resources.memory_mb,
        boot,
        disk,
        serial_log: dir.join(SERIAL),
        seed: (t.role == Role::Gateway && kind != VirtKind::Lxc).then(|| dir.join(identity::SEED)),
        user_net: t.network.is_some() && kind != VirtKind::Lxc,
        forwards: Vec::new(),
        share: None,
        env: Vec::new(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cluster_env_tests {
    use super::*;

    fn worker() -> Template {
        let text = r#"name = "bigdata-compute"
role = "compute"
[resources]
vcpus = 1
memory_mb = 1024
disk_gb = 2
[virtualization]
kinds = ["lxc"]
arch = ["x86_64"]
[image]
name = "bigdata"
file = "disk.qcow2"
format = "qcow2"
min_vcpus = 1
min_memory_mb = 512
min_disk_gb = 1
[boot]
method = "disk"
[console]
booted = "REGISTERED"
[lxc]
rootfs = "rootfs.tar"
init = "/usr/libexec/betaas/bigdata-worker"
[cluster]
role = "worker"
master = "bigdata-master"
master_env = "SPARK_MASTER"
"#;
        betaas_templates::check_source(Path::new("t/template.toml"), text).unwrap();
        // parse() wants checksums; the source form is enough here.
        let text = text
            .replace(
                "format = \"qcow2\"",
                &format!("sha256 = \"{}\"\nformat = \"qcow2\"", "a".repeat(64)),
            )
            .replace(
                "init = ",
                &format!("rootfs_sha256 = \"{}\"\ninit = ", "b".repeat(64)),
            );
        Template::parse(Path::new("t/template.toml"), &text).unwrap()
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn a_worker_gets_its_masters_url_under_master_env() {
        let env = vec![
            kv("BETAAS_URL_BIGDATA_MASTER", "spark://10.0.0.5:7077"),
            kv("BETAAS_URL_BIGDATA_STORAGE", "ftp://10.0.0.6:2121/"),
        ];
        check_env(&env).unwrap();
        let out = cluster_env(&worker(), &env).unwrap();
        assert!(out.contains(&kv("SPARK_MASTER", "spark://10.0.0.5:7077")));
        assert!(out.contains(&kv("BETAAS_URL_BIGDATA_STORAGE", "ftp://10.0.0.6:2121/")));
        assert_eq!(url_var("bigdata-master"), "BETAAS_URL_BIGDATA_MASTER");
    }

    #[test]
    fn a_worker_without_its_masters_url_is_refused() {
        let e = cluster_env(&worker(), &[kv("BETAAS_URL_OTHER", "x")]).unwrap_err();
        assert!(e.to_string().contains("BETAAS_URL_BIGDATA_MASTER"), "{e}");
    }

    #[test]
    fn bad_variables_are_refused() {
        for (k, v) in [
            ("BETAAS_ADDRESS", "1.2.3.4"),
            ("1X", "v"),
            ("A-B", "v"),
            ("X", "two\nlines"),
        ] {
            assert!(check_env(&[kv(k, v)]).is_err(), "{k}={v:?}");
        }
        assert!(check_env(&[kv("SPARK_CONF", "a=b c")]).is_ok());
        assert_eq!(env_file(&[kv("A", "1"), kv("B", "2")]), "A=1\nB=2\n");
    }
}
