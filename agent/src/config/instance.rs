//! `[instance]`: the local cloud this gateway belongs to, its templates and timings.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::ids::*;
use super::key_line;

/// `[instance]`: the local cloud this gateway belongs to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance's name: a topic level shared by its members.
    pub name: TopicLevel,
    /// `instance.pub`, `gateway.key` (0600), `credential`, provisioned at flash time
    /// (`betaas-agent instance admit`).
    #[serde(default = "default_instance_keys")]
    pub keys: PathBuf,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A member silent this long is down.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long the asking gateway waits for an asked one to start the VM and answer; then the
    /// next gateway is asked. It covers a cold container or VM start on an SD card (its fsyncs
    /// take seconds when the card is busy), not only a network round trip.
    #[serde(default = "default_deploy_timeout_ms")]
    pub deploy_timeout_ms: u64,
    /// How long another gateway may take to deploy on a remote cloud it holds credentials for
    /// (the cloud's own deploy timeout plus margin).
    #[serde(default = "default_remote_timeout_ms")]
    pub remote_timeout_ms: u64,
    /// The largest application archive (WAR) a request may name, in MiB: fetched by this gateway.
    #[serde(default = "default_war_max_mb")]
    pub war_max_mb: u64,
    /// How long a deployed application may take to answer at its URL before the result says
    /// `"ready": false` (a JVM in an emulated VM takes minutes).
    #[serde(default = "default_app_ready_secs")]
    pub app_ready_secs: u64,
    #[serde(default = "default_dismiss_threshold")]
    pub dismiss_threshold: f64,
    #[serde(default = "default_dismiss_after")]
    pub dismiss_after_secs: u64,
    #[serde(default = "default_readmit_after")]
    pub readmit_after_secs: u64,
    /// What this gateway offers for VMs.
    pub capacity: VmCapacity,
    /// The `betaas-vmd` socket: an accepted deployment starts a real VM there. Absent: the
    /// deployment is a reservation only (a gateway without virtualization, or tests of placement).
    pub vmd_socket: Option<PathBuf>,
    /// `kvm`, `qemu` (emulated), `lxc` or `none`.
    pub virt: betaas_core::allocator::Virt,
    #[serde(default)]
    pub powerful: bool,
    /// The registered templates the allocator knows.
    #[serde(default)]
    pub templates: Vec<TemplateConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCapacity {
    pub cpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub name: String,
    pub vcpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
    pub role: betaas_core::allocator::Role,
}

impl TemplateConfig {
    pub fn to_core(&self) -> betaas_core::allocator::Template {
        betaas_core::allocator::Template {
            name: self.name.clone(),
            vcpus: self.vcpus,
            mem_mb: self.mem_mb,
            disk_gb: self.disk_gb,
            role: self.role,
        }
    }
}

/// Where in `[instance]` a rule is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceKey {
    /// A key of `[instance]` itself.
    Key(&'static str),
    /// A key of `capacity` (inline `capacity = {…}` or an `[instance.capacity]` table).
    Capacity(&'static str),
    /// A key of the n-th `[[instance.templates]]`.
    Template(usize, &'static str),
}

/// Accepted ranges of `[instance]`: (key, lowest, highest).
const INSTANCE_RANGES: [(&str, u64, u64); 7] = [
    ("heartbeat_ms", 50, 60_000),
    ("war_max_mb", 1, 4096),
    ("app_ready_secs", 1, 3600),
    ("deploy_timeout_ms", 100, 600_000),
    ("remote_timeout_ms", 1_000, 3_600_000),
    ("dismiss_after_secs", 1, 86_400),
    ("readmit_after_secs", 1, 604_800),
];
/// A member silent this long is down: at least two heartbeats (one lost heartbeat must not take
/// a member down), at most ten minutes.
const TIMEOUT_MAX_MS: u64 = 600_000;

impl InstanceConfig {
    /// The first rule `[instance]` breaks. A zero heartbeat would panic in the timer and put the
    /// agent in a crash loop under init; the other bounds keep timers and trust meaningful.
    pub(super) fn problem(&self) -> Option<(InstanceKey, String)> {
        use InstanceKey::*;
        for (key, lo, hi) in INSTANCE_RANGES {
            let v = match key {
                "heartbeat_ms" => self.heartbeat_ms,
                "deploy_timeout_ms" => self.deploy_timeout_ms,
                "remote_timeout_ms" => self.remote_timeout_ms,
                "war_max_mb" => self.war_max_mb,
                "app_ready_secs" => self.app_ready_secs,
                "dismiss_after_secs" => self.dismiss_after_secs,
                _ => self.readmit_after_secs,
            };
            if !(lo..=hi).contains(&v) {
                return Some((Key(key), format!("{v} is out of range {lo}..={hi}")));
            }
        }
        let min_timeout = 2 * self.heartbeat_ms;
        if !(min_timeout..=TIMEOUT_MAX_MS).contains(&self.timeout_ms) {
            return Some((
                Key("timeout_ms"),
                format!(
                    "{} is out of range {min_timeout}..={TIMEOUT_MAX_MS} (at least 2 x heartbeat_ms = {})",
                    self.timeout_ms, self.heartbeat_ms
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.dismiss_threshold) {
            return Some((
                Key("dismiss_threshold"),
                format!("{} is out of range 0..=1", self.dismiss_threshold),
            ));
        }
        // All zero: the gateway takes part in placement but offers no room for VMs. Some zero:
        // it could host nothing while claiming the rest.
        let c = self.capacity;
        let zero = [
            ("cpus", c.cpus == 0),
            ("mem_mb", c.mem_mb == 0),
            ("disk_gb", c.disk_gb == 0),
        ];
        if zero.iter().any(|z| z.1) && !zero.iter().all(|z| z.1) {
            let (key, _) = zero.iter().find(|z| z.1).copied().unwrap_or(("cpus", true));
            return Some((
                Capacity(key),
                "must be above 0 (or cpus, mem_mb and disk_gb all 0: this gateway offers no room for VMs)"
                    .into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, t) in self.templates.iter().enumerate() {
            if let Err(e) = TopicLevel::try_from(t.name.clone()) {
                return Some((Template(i, "name"), e));
            }
            if !names.insert(t.name.as_str()) {
                return Some((
                    Template(i, "name"),
                    format!("duplicate template name {:?}: names must be unique", t.name),
                ));
            }
            if t.vcpus == 0 {
                return Some((Template(i, "vcpus"), "must be above 0".into()));
            }
            if t.mem_mb == 0 {
                return Some((Template(i, "mem_mb"), "must be above 0".into()));
            }
        }
        None
    }
}

impl InstanceKey {
    /// The line (of the key, else of its table's header) and the dotted field.
    pub(super) fn place(self, text: &str) -> (usize, String) {
        match self {
            InstanceKey::Key(k) => (key_line(text, "instance", 0, k), format!("instance.{k}")),
            InstanceKey::Capacity(k) => {
                let table = key_line(text, "instance.capacity", 0, k);
                let line = if table > 0 {
                    table
                } else {
                    key_line(text, "instance", 0, "capacity")
                };
                (line, format!("instance.capacity.{k}"))
            }
            InstanceKey::Template(i, k) => (
                key_line(text, "instance.templates", i, k),
                format!("instance.templates[{i}].{k}"),
            ),
        }
    }
}

fn default_instance_keys() -> PathBuf {
    PathBuf::from("/etc/betaas/instance")
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    4000
}
fn default_deploy_timeout_ms() -> u64 {
    60_000
}
fn default_remote_timeout_ms() -> u64 {
    330_000
}
fn default_war_max_mb() -> u64 {
    64
}
fn default_app_ready_secs() -> u64 {
    180
}
fn default_dismiss_threshold() -> f64 {
    0.3
}
fn default_dismiss_after() -> u64 {
    30
}
fn default_readmit_after() -> u64 {
    300
}
