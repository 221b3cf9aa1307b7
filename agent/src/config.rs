//! The agent's TOML configuration (`/etc/betaas/agent.toml`).
//!
//! Every error names the file, the line and the field (`things[1].address`), so a user editing the
//! config on a gateway over a serial console knows exactly what to fix.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod api;
mod files;
pub use files::{private_file, read_password_file};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's id: the second level of every topic. Letters, digits, `-` and `_`.
    pub gateway_id: TopicLevel,
    /// Persistent data (journal, resource history). Must survive reboots.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
    pub mqtt: Mqtt,
    #[serde(default, rename = "things")]
    pub things: Vec<Thing>,
    /// The resource monitor; the section and each key are optional.
    #[serde(default)]
    pub resources: Resources,
    /// The store-and-forward journal under `data_dir/journal`.
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// `[instance]`: membership of a local cloud (absent: this gateway works alone).
    pub instance: Option<InstanceConfig>,
    /// `[[clouds]]`: remote clouds this gateway holds credentials for, tried in order.
    #[serde(default)]
    pub clouds: Vec<crate::cloud::config::CloudConfig>,
    /// `[api]`: the local REST API and web UI (absent: off).
    pub api: Option<api::ApiConfig>,
}

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
enum InstanceKey {
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
    fn problem(&self) -> Option<(InstanceKey, String)> {
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
    fn place(self, text: &str) -> (usize, String) {
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
    3000
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

/// `[journal]`: bounds and the fsync policy. Defaults in `journal::Limits::default()`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    pub segment_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age_secs: Option<u64>,
    /// `interval` (default: sync every `fsync_records` readings or `fsync_interval_ms`), `always`
    /// (every reading: no loss on power cut, most SD wear) or `never` (kernel writeback, ~30 s).
    #[serde(default)]
    pub fsync: FsyncMode,
    pub fsync_records: Option<u32>,
    pub fsync_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    #[default]
    Interval,
    Always,
    Never,
}

/// `[health]`: the agent's own health on `<prefix>/<gateway>/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_interval")]
    pub interval_secs: Seconds,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: default_health_interval(),
        }
    }
}

fn default_health_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
}

/// `[resources]`: sampling and the Holt forecast of free resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_sample_interval")]
    pub sample_interval_secs: Seconds,
    /// Samples kept (and persisted under `data_dir/resources/`); the oldest are dropped.
    #[serde(default = "default_history_len")]
    pub history_len: Count,
    /// Samples between two writes of the history: bounds SD card wear (and what a power cut loses).
    #[serde(default = "default_persist_every")]
    pub persist_every: Count,
    /// Holt level smoothing, 0..=1.
    #[serde(default = "default_alpha")]
    pub alpha: Smoothing,
    /// Holt trend smoothing, 0..=1.
    #[serde(default = "default_beta")]
    pub beta: Smoothing,
    /// Refit α and β to the history (least one-step squared error) at every save; `alpha` and
    /// `beta` are then only the starting values.
    #[serde(default)]
    pub fit: bool,
    /// Where the samplers read (another layout, or a fake tree in tests).
    #[serde(default = "default_proc_dir")]
    pub proc_dir: PathBuf,
    #[serde(default = "default_power_supply_dir")]
    pub power_supply_dir: PathBuf,
}

fn default_proc_dir() -> PathBuf {
    PathBuf::from("/proc")
}
fn default_power_supply_dir() -> PathBuf {
    PathBuf::from("/sys/class/power_supply")
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            sample_interval_secs: default_sample_interval(),
            history_len: default_history_len(),
            persist_every: default_persist_every(),
            alpha: default_alpha(),
            beta: default_beta(),
            fit: false,
            proc_dir: default_proc_dir(),
            power_supply_dir: default_power_supply_dir(),
        }
    }
}

/// A smoothing factor in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Smoothing(pub f64);

impl TryFrom<f64> for Smoothing {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(Smoothing(v))
        } else {
            Err(format!("{v} is out of range 0..=1"))
        }
    }
}

/// A count of samples, 1..=100000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Count(pub u32);

impl TryFrom<i64> for Count {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u32::try_from(v) {
            Ok(n @ 1..=100_000) => Ok(Count(n)),
            _ => Err(format!("{v} is out of range 1..=100000")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// One broker: `host` with `port` (1883). Either this or `hosts`.
    #[serde(rename = "host", default)]
    host_key: Option<String>,
    #[serde(rename = "port", default)]
    port_key: Option<u16>,
    /// Several nodes of one (clustered) broker, `"host:port"` each, tried in order: the agent
    /// connects to the first that answers and moves to the next when its node fails.
    #[serde(rename = "hosts", default)]
    hosts_key: Option<Vec<Node>>,
    /// The first node (the only one with `host`/`port`); filled in by [`Config::parse`].
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub port: u16,
    /// Every node, in the order tried; never empty after [`Config::parse`].
    #[serde(skip)]
    pub nodes: Vec<Node>,
    /// A node that has not completed TCP, TLS and CONNECT/CONNACK in this long is skipped.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: Seconds,
    /// The first level of every topic.
    #[serde(default = "default_prefix")]
    pub prefix: TopicLevel,
    /// Defaults to `betaas-<gateway_id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: Seconds,
    /// `[mqtt.tls]`: TLS to the broker (rustls). Absent: plain TCP.
    pub tls: Option<Tls>,
    /// The broker user (an instance's broker has one per gateway); goes with `password_file`.
    pub username: Option<String>,
    /// The password on one line (a trailing newline is ignored); refused when group or others
    /// may read it (see [`read_password_file`]).
    pub password_file: Option<PathBuf>,
}

/// One broker node, `host:port` (`[v6addr]:port`; the port defaults to 1883).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl TryFrom<String> for Node {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        let bad = |why: &str| format!("{v:?}: {why}; expected \"host:port\", e.g. \"node-a:1883\"");
        let (host, port) = if let Some(rest) = v.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                ),
            }
        } else {
            match v.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(bad("an IPv6 address goes in [ ]")),
                Some((h, p)) => (h, Some(p)),
                None => (v.as_str(), None),
            }
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(bad("no host name"));
        }
        let port = match port {
            None => default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n @ 1..) => n,
                _ => return Err(bad("the port must be 1..=65535")),
            },
        };
        Ok(Node {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// PEM files, normally under `/etc/betaas/credentials/`. A private key readable by group or others
/// is refused at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for brokers that require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[[things]]`: one sensor or actuator. Which keys apply depends on the driver (see [`Driver`]);
/// [`Config::check`] names the missing ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thing {
    pub id: TopicLevel,
    #[serde(default)]
    pub kind: Kind,
    pub bus: Bus,
    pub driver: Driver,
    /// The character device or file: `/dev/i2c-0`, `/dev/spidev0.0`, `/dev/gpiochip0`, a sysfs attribute.
    pub device: Option<PathBuf>,
    /// I2C address.
    pub address: Option<I2cAddress>,
    /// MCP3008 input 0..=7.
    pub channel: Option<u8>,
    /// MCP3008 reference voltage (default 3.3 V).
    pub vref: Option<f64>,
    /// GPIO line offset on `device`.
    pub line: Option<u32>,
    #[serde(default)]
    pub active_low: bool,
    /// GPIO input debounce window.
    pub debounce_ms: Option<u64>,
    /// MQTT things: the topic the device publishes on, and the RFC 6901 pointer to the value in its
    /// JSON payload (`""` when the payload is a bare number).
    pub topic: Option<String>,
    pub field: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_ms: Millis,
    /// Overrides the driver's unit; required for `sysfs` and `json` things.
    pub unit: Option<String>,
    /// Calibration: published value = raw * scale + offset.
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Sanity range after calibration: values outside are errors, not readings.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Home Assistant device class, e.g. `temperature`; defaults from the driver.
    pub device_class: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Sensor,
    Actuator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    I2c,
    Spi,
    Gpio,
    Mqtt,
    /// A number in a file, e.g. `/sys/class/thermal/thermal_zone0/temp` (the SoC's own sensor).
    Sysfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// TI TMP105 and the LM75 register family (TMP75, TMP175, LM75B) in 12-bit mode.
    Tmp105,
    /// Actuator: the TMP105's T_HIGH alert limit register (°C), written and read back.
    Tmp105Limit,
    /// Bosch BME280: publishes `<id>_temperature`, `<id>_humidity`, `<id>_pressure`.
    Bme280,
    /// ROHM BH1750 ambient light (lx).
    Bh1750,
    /// Microchip MCP3008 10-bit ADC over SPI (V).
    Mcp3008,
    /// GPIO input, edge-triggered and debounced (door contact, PIR).
    GpioIn,
    /// Actuator: GPIO output (relay, LED).
    GpioOut,
    /// A number read from a file.
    Sysfs,
    /// A JSON payload from an MQTT device.
    Json,
}

/// What each driver needs: its bus, its kind, the keys it requires, and its unit and device class.
pub struct DriverInfo {
    pub name: &'static str,
    pub bus: Bus,
    pub kind: Kind,
    pub requires: &'static [&'static str],
    pub unit: &'static str,
    pub device_class: Option<&'static str>,
}

impl Driver {
    pub const ALL: [Driver; 9] = [
        Driver::Tmp105,
        Driver::Tmp105Limit,
        Driver::Bme280,
        Driver::Bh1750,
        Driver::Mcp3008,
        Driver::GpioIn,
        Driver::GpioOut,
        Driver::Sysfs,
        Driver::Json,
    ];

    pub fn info(self) -> DriverInfo {
        use Bus::*;
        use Kind::*;
        let (name, bus, kind, requires, unit, class): (_, _, _, &'static [&'static str], _, _) =
            match self {
                Driver::Tmp105 => (
                    "tmp105",
                    I2c,
                    Sensor,
                    &["device", "address"],
                    "°C",
                    Some("temperature"),
                ),
                Driver::Tmp105Limit => (
                    "tmp105-limit",
                    I2c,
                    Actuator,
                    &["device", "address"],
                    "°C",
                    Some("temperature"),
                ),
                Driver::Bme280 => ("bme280", I2c, Sensor, &["device", "address"], "", None),
                Driver::Bh1750 => (
                    "bh1750",
                    I2c,
                    Sensor,
                    &["device", "address"],
                    "lx",
                    Some("illuminance"),
                ),
                Driver::Mcp3008 => (
                    "mcp3008",
                    Spi,
                    Sensor,
                    &["device", "channel"],
                    "V",
                    Some("voltage"),
                ),
                Driver::GpioIn => ("gpio-in", Gpio, Sensor, &["device", "line"], "", None),
                Driver::GpioOut => ("gpio-out", Gpio, Actuator, &["device", "line"], "", None),
                Driver::Sysfs => ("sysfs", Bus::Sysfs, Sensor, &["device", "unit"], "", None),
                Driver::Json => ("json", Mqtt, Sensor, &["topic", "unit"], "", None),
            };
        DriverInfo {
            name,
            bus,
            kind,
            requires,
            unit,
            device_class: class,
        }
    }
}

impl Thing {
    /// The unit readings carry: the config's, else the driver's.
    pub fn unit(&self) -> String {
        self.unit
            .clone()
            .unwrap_or_else(|| self.driver.info().unit.to_owned())
    }

    /// The thing ids this thing publishes under: a BME280 is three.
    pub fn published_ids(&self) -> Vec<String> {
        match self.driver {
            Driver::Bme280 => ["temperature", "humidity", "pressure"]
                .iter()
                .map(|q| format!("{}_{q}", self.id))
                .collect(),
            _ => vec![self.id.to_string()],
        }
    }

    fn has(&self, key: &str) -> bool {
        match key {
            "device" => self.device.is_some(),
            "address" => self.address.is_some(),
            "channel" => self.channel.is_some(),
            "line" => self.line.is_some(),
            "topic" => self.topic.is_some(),
            "unit" => self.unit.is_some(),
            _ => false,
        }
    }

    /// Cross-field rules for one thing: (field, message) of the first broken one.
    fn problem(&self) -> Option<(&'static str, String)> {
        let info = self.driver.info();
        let accepted = |bus: Bus| {
            Driver::ALL
                .iter()
                .filter(|d| d.info().bus == bus)
                .map(|d| d.info().name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if info.bus != self.bus {
            return Some((
                "driver",
                format!(
                    "driver {} is not on bus {:?}; drivers on that bus: {}",
                    info.name,
                    self.bus,
                    accepted(self.bus)
                )
                .to_lowercase(),
            ));
        }
        if info.kind != self.kind {
            return Some((
                "kind",
                format!("driver {} is a {:?}", info.name, info.kind).to_lowercase(),
            ));
        }
        if let Some(key) = info.requires.iter().find(|k| !self.has(k)) {
            return Some((key, format!("driver {} needs `{key}`", info.name)));
        }
        if self.channel.is_some_and(|c| c > 7) {
            return Some(("channel", "MCP3008 channels are 0..=7".into()));
        }
        if self
            .vref
            .is_some_and(|v| !(v.is_finite() && v > 0.0 && v <= 5.5))
        {
            return Some(("vref", "vref must be in (0, 5.5] V".into()));
        }
        if !(self.scale.is_finite() && self.scale != 0.0) {
            return Some(("scale", "scale must be a finite, non-zero number".into()));
        }
        if !self.offset.is_finite() {
            return Some(("offset", "offset must be finite".into()));
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo >= hi {
                return Some(("max", format!("max {hi} must be above min {lo}")));
            }
        }
        if let Some(f) = &self.field {
            if !(f.is_empty() || f.starts_with('/')) {
                return Some((
                    "field",
                    format!("{f:?} is not a JSON pointer: use \"\" or \"/name/0/...\""),
                ));
            }
        }
        if let Some(t) = &self.topic {
            if t.is_empty() || t.contains(['+', '#']) {
                return Some((
                    "topic",
                    format!("{t:?}: a device topic is one topic, no wildcards"),
                ));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// One MQTT topic level: no `/`, `+`, `#`, not empty, at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicLevel(String);

impl TryFrom<String> for TopicLevel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(TopicLevel(s))
        } else {
            Err(format!(
                "{s:?} is not a valid id: use 1 to 64 of the characters A-Z a-z 0-9 - _"
            ))
        }
    }
}

impl fmt::Display for TopicLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 7-bit I2C address outside the reserved ranges (0x08..=0x77).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct I2cAddress(pub u8);

impl TryFrom<i64> for I2cAddress {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u8::try_from(v) {
            Ok(a @ 0x08..=0x77) => Ok(I2cAddress(a)),
            _ => Err(format!(
                "{v} (0x{v:x}) is not a 7-bit I2C address in 0x08..=0x77"
            )),
        }
    }
}

/// A positive number of milliseconds, at most one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Millis(pub Duration);

impl TryFrom<i64> for Millis {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u64::try_from(v) {
            Ok(ms @ 10..=86_400_000) => Ok(Millis(Duration::from_millis(ms))),
            _ => Err(format!("{v} ms is out of range 10..=86400000")),
        }
    }
}

/// A positive number of seconds, at most one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct Seconds(pub Duration);

impl TryFrom<i64> for Seconds {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u64::try_from(v) {
            Ok(s @ 1..=3600) => Ok(Seconds(Duration::from_secs(s))),
            _ => Err(format!("{v} s is out of range 1..=3600")),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/betaas")
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_port() -> u16 {
    1883
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}
fn default_prefix() -> TopicLevel {
    TopicLevel("betaas".into())
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_sample_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_history_len() -> Count {
    Count(1440) // one day at the default interval
}
fn default_persist_every() -> Count {
    Count(10)
}
fn default_alpha() -> Smoothing {
    Smoothing(0.5)
}
fn default_beta() -> Smoothing {
    Smoothing(0.3)
}
fn default_scale() -> f64 {
    1.0
}
fn default_interval() -> Millis {
    Millis(Duration::from_secs(5))
}

impl Mqtt {
    /// `host`/`port` (one broker) or `hosts` (its nodes), never both.
    fn resolve_nodes(&self, path: &Path, text: &str) -> Result<Vec<Node>, ConfigError> {
        let err = |key: &str, message: &str| ConfigError {
            file: path.to_owned(),
            line: key_line(text, "mqtt", 0, key),
            field: format!("mqtt.{key}"),
            message: message.to_owned(),
        };
        match (&self.host_key, &self.hosts_key) {
            (Some(_), Some(_)) => Err(err(
                "hosts",
                "give `host` (with `port`: one broker) or `hosts` (\"host:port\" of each node), not both",
            )),
            (None, Some(_)) if self.port_key.is_some() => Err(err(
                "port",
                "`port` goes with `host`; with `hosts` give each node as \"host:port\"",
            )),
            (None, Some(h)) if h.is_empty() => Err(err("hosts", "the list is empty: name at least one node")),
            (None, Some(h)) if h.len() > 64 => Err(err("hosts", "at most 64 nodes")),
            (None, Some(h)) => Ok(h.clone()),
            (Some(host), None) if host.trim().is_empty() => Err(err("host", "an empty host name")),
            (Some(host), None) => Ok(vec![Node {
                host: host.clone(),
                port: self.port_key.unwrap_or_else(default_port),
            }]),
            (None, None) => Err(ConfigError {
                file: path.to_owned(),
                line: text.lines().position(|l| l.trim() == "[mqtt]").map_or(0, |i| i + 1),
                field: "mqtt".into(),
                message: "missing field `host` (one broker) or `hosts` (the nodes of a clustered broker)".into(),
            }),
        }
    }
}

/// A config error with its place in the file.
pub type ConfigError = betaas_tomlplace::PlacedError;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, field) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, String::new()),
            };
            ConfigError {
                file: path.to_owned(),
                line,
                field,
                message: e.message().trim().to_owned(),
            }
        })?;
        let mut config = config;
        config.mqtt.nodes = config.mqtt.resolve_nodes(path, text)?;
        config.mqtt.host = config.mqtt.nodes[0].host.clone();
        config.mqtt.port = config.mqtt.nodes[0].port;
        config.check(path, text)?;
        Ok(config)
    }

    /// Checks that span several fields (serde checks one field at a time).
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let err = |i: usize, key: &str, message: String| ConfigError {
            file: path.to_owned(),
            line: key_line(text, "things", i, key),
            field: format!("things[{i}].{key}"),
            message,
        };
        if let Some(tls) = &self.mqtt.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: text
                        .lines()
                        .position(|l| l.trim() == "[mqtt.tls]")
                        .map_or(0, |i| i + 1),
                    field: "mqtt.tls".into(),
                    message: "`cert` and `key` go together: give both or neither".into(),
                });
            }
        }
        let at = |table: &str, key: &str| key_line(text, table, 0, key);
        match (&self.mqtt.username, &self.mqtt.password_file) {
            (Some(_), None) | (None, Some(_)) => {
                let (key, other) = if self.mqtt.username.is_some() {
                    ("username", "password_file")
                } else {
                    ("password_file", "username")
                };
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: at("mqtt", key),
                    field: format!("mqtt.{key}"),
                    message: format!("`username` and `password_file` go together: add `{other}`"),
                });
            }
            (Some(u), Some(_)) if u.is_empty() || u.chars().any(char::is_control) => {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: at("mqtt", "username"),
                    field: "mqtt.username".into(),
                    message: "must be a non-empty name without control characters".into(),
                });
            }
            _ => {}
        }
        if let Some((key, message)) = self.instance.as_ref().and_then(InstanceConfig::problem) {
            let (line, field) = key.place(text);
            return Err(ConfigError {
                file: path.to_owned(),
                line,
                field,
                message,
            });
        }
        let own = format!("{}/{}/", self.mqtt.prefix, self.gateway_id);
        let mut seen = HashSet::new();
        for (i, thing) in self.things.iter().enumerate() {
            if let Some((key, message)) = thing.problem() {
                return Err(err(i, key, message));
            }
            if thing.topic.as_deref().is_some_and(|t| t.starts_with(&own)) {
                return Err(err(
                    i,
                    "topic",
                    format!("{own}… is this gateway's own tree: it would loop"),
                ));
            }
            for id in thing.published_ids() {
                if !seen.insert(id.clone()) {
                    return Err(err(
                        i,
                        "id",
                        format!("duplicate thing id {id:?}: ids must be unique"),
                    ));
                }
            }
        }
        if let Err((i, e)) = crate::discovery::messages(self) {
            return Err(err(
                i,
                "device_class",
                format!("Home Assistant discovery: {e}"),
            ));
        }
        if let Some((key, message)) = self.api.as_ref().and_then(api::ApiConfig::problem) {
            return Err(ConfigError {
                file: path.to_owned(),
                line: at("api", key),
                field: format!("api.{key}"),
                message,
            });
        }
        if let Some((i, key, message)) = crate::cloud::config::problem(&self.clouds) {
            return Err(ConfigError {
                file: path.to_owned(),
                line: key_line(text, "clouds", i, key),
                field: format!("clouds[{i}].{key}"),
                message,
            });
        }
        Ok(())
    }
}

use betaas_tomlplace::locate;

/// Line of `key` in the n-th `[[name]]` table, else of its header.
fn key_line(text: &str, name: &str, n: usize, key: &str) -> usize {
    betaas_tomlplace::key_line(text, name, n, key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway_id = "gw-1"

[mqtt]
host = "10.0.2.2"

[[things]]
id = "t0"
driver = "tmp105"
bus = "i2c"
address = 0x48
device = "/dev/i2c-0"

[[things]]
id = "t1"
driver = "tmp105"
bus = "i2c"
address = 0x49
interval_ms = 250
device = "/dev/i2c-0"
"#;

    fn err(text: &str) -> ConfigError {
        Config::parse(Path::new("/etc/betaas/agent.toml"), text).unwrap_err()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.gateway_id.to_string(), "gw-1");
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.prefix.to_string(), "betaas");
        assert_eq!(c.things.len(), 2);
        assert_eq!(c.things[0].address, Some(I2cAddress(0x48)));
        assert_eq!(c.things[0].interval_ms.0, Duration::from_secs(5));
        assert_eq!(c.things[1].interval_ms.0, Duration::from_millis(250));
    }

    #[test]
    fn bad_address_names_file_line_and_field() {
        let e = err(&GOOD.replace("0x49", "0x80"));
        assert_eq!(e.line, 18);
        assert_eq!(e.field, "things[1].address");
        let s = e.to_string();
        assert!(
            s.starts_with("/etc/betaas/agent.toml:18: field `things[1].address`"),
            "{s}"
        );
        assert!(s.contains("0x08..=0x77"), "{s}");
    }

    #[test]
    fn unknown_driver_lists_accepted_values() {
        let e = err(&GOOD.replacen("tmp105", "ds18b20", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].driver"));
        assert!(e.message.contains("tmp105"), "{}", e.message);
    }

    #[test]
    fn missing_field_is_named() {
        let e = err("gateway_id = \"g\"\n[mqtt]\nport = 1\n");
        assert_eq!(e.field, "mqtt");
        assert!(e.message.contains("missing field `host`"), "{}", e.message);
    }

    #[test]
    fn hosts_lists_the_nodes_of_a_clustered_broker() {
        let c = Config::parse(
            Path::new("a.toml"),
            &GOOD.replace(
                "host = \"10.0.2.2\"",
                "hosts = [\"node-a:1884\", \"10.0.0.2\", \"[fd00::3]:8883\"]\nconnect_timeout_secs = 2",
            ),
        )
        .unwrap();
        let nodes: Vec<String> = c.mqtt.nodes.iter().map(ToString::to_string).collect();
        assert_eq!(nodes, ["node-a:1884", "10.0.0.2:1883", "[fd00::3]:8883"]);
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("node-a", 1884));
        assert_eq!(c.mqtt.connect_timeout_secs.0, Duration::from_secs(2));
        // The one-host form is one node, with the default timeout.
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(
            c.mqtt.nodes,
            [Node {
                host: "10.0.2.2".into(),
                port: 1883
            }]
        );
        assert_eq!(c.mqtt.connect_timeout_secs.0, Duration::from_secs(5));
    }

    #[test]
    fn host_and_hosts_together_or_bad_nodes_are_named() {
        let e = err(&GOOD.replace(
            "host = \"10.0.2.2\"",
            "host = \"10.0.2.2\"\nhosts = [\"a:1883\"]",
        ));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.hosts"));
        assert!(e.message.contains("not both"), "{}", e.message);
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "hosts = [\"a:1883\"]\nport = 1884"));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.port"));
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "hosts = []"));
        assert_eq!((e.line, e.field.as_str()), (5, "mqtt.hosts"));
        for bad in ["a:0", "a:x", ":1883", "fd00::1:1883", "[fd00::1"] {
            let e = err(&GOOD.replace(
                "host = \"10.0.2.2\"",
                &format!("hosts = [\"ok:1\", \"{bad}\"]"),
            ));
            assert_eq!(e.line, 5, "{bad}: {e}");
            assert!(e.field.starts_with("mqtt.hosts"), "{bad}: {e}");
            assert!(e.message.contains("host:port"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn wrong_type_and_unknown_key() {
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "host = \"h\"\nport = \"x\""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.port"));
        let e = err(&GOOD.replace("interval_ms = 250", "intervall_ms = 250"));
        assert_eq!(e.field, "things[1].intervall_ms");
        assert!(e.message.contains("interval_ms"), "{}", e.message);
    }

    #[test]
    fn duplicate_ids_and_bad_ids_rejected() {
        let e = err(&GOOD.replace("\"t1\"", "\"t0\""));
        assert_eq!((e.line, e.field.as_str()), (15, "things[1].id"));
        let e = err(&GOOD.replace("\"t1\"", "\"a/b\""));
        assert_eq!(e.field, "things[1].id");
        let e = err(&GOOD.replace("gw-1", "gw+1"));
        assert_eq!((e.line, e.field.as_str()), (2, "gateway_id"));
    }

    #[test]
    fn driver_rules_name_the_field_and_the_accepted_values() {
        let e = err(&GOOD.replacen("bus = \"i2c\"", "bus = \"spi\"", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].driver"));
        assert!(
            e.message.contains("drivers on that bus: mcp3008"),
            "{}",
            e.message
        );
        let e = err(&GOOD.replacen("address = 0x48\n", "", 1));
        assert_eq!((e.line, e.field.as_str()), (7, "things[0].address"));
        assert!(
            e.message.contains("tmp105 needs `address`"),
            "{}",
            e.message
        );
        let e = err(&GOOD.replacen("id = \"t0\"", "id = \"t0\"\nkind = \"actuator\"", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].kind"));
        let e = err(&GOOD.replacen("tmp105", "tmp105-limit", 1));
        assert_eq!(e.field, "things[0].kind");
        let e = err(&GOOD.replace("interval_ms = 250", "interval_ms = 250\nmin = 5\nmax = 5"));
        assert_eq!((e.line, e.field.as_str()), (21, "things[1].max"));
    }

    #[test]
    fn mqtt_and_multi_value_things() {
        let json = "\n[[things]]\nid = \"zb\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"zigbee2mqtt/room\"\nfield = \"/temperature\"\nunit = \"°C\"\n";
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{json}")).unwrap();
        assert_eq!(c.things[2].topic.as_deref(), Some("zigbee2mqtt/room"));
        let e = err(&format!(
            "{GOOD}{}",
            json.replace("zigbee2mqtt/room", "betaas/gw-1/things/t0/state")
        ));
        assert_eq!((e.line, e.field.as_str()), (26, "things[2].topic"));
        let e = err(&format!(
            "{GOOD}{}",
            json.replace("/temperature", "temperature")
        ));
        assert_eq!(e.field, "things[2].field");
        let e = err(&format!("{GOOD}{}", json.replace("unit = \"°C\"\n", "")));
        assert_eq!(e.field, "things[2].unit");
        let env = "\n[[things]]\nid = \"env\"\nbus = \"i2c\"\ndriver = \"bme280\"\ndevice = \"/dev/i2c-1\"\naddress = 0x76\n";
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{env}")).unwrap();
        assert_eq!(
            c.things[2].published_ids(),
            ["env_temperature", "env_humidity", "env_pressure"]
        );
        let clash = format!("{GOOD}{env}\n[[things]]\nid = \"env_humidity\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"/x\"\nunit = \"%\"\n");
        let e = err(&clash);
        assert_eq!(e.field, "things[3].id");
        let e = err(&format!(
            "{GOOD}{}",
            env.replace("bme280", "mcp3008")
                .replace("i2c\"", "spi\"")
                .replace("address = 0x76", "channel = 8")
        ));
        assert_eq!(e.field, "things[2].channel");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err("gateway_id = \"g\"\n[mqtt\nhost = 1\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn resources_section_defaults_and_errors() {
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.resources.sample_interval_secs.0, Duration::from_secs(60));
        assert_eq!(
            (c.resources.history_len, c.resources.persist_every),
            (Count(1440), Count(10))
        );
        assert_eq!(
            (c.resources.alpha, c.resources.beta),
            (Smoothing(0.5), Smoothing(0.3))
        );
        let text = format!("{GOOD}\n[resources]\nhistory_len = 60\nalpha = 0.8\n");
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(
            (c.resources.history_len, c.resources.alpha),
            (Count(60), Smoothing(0.8))
        );
        assert_eq!(c.resources.beta, Smoothing(0.3));
        assert!(!c.resources.fit);
        let c = Config::parse(
            Path::new("a.toml"),
            &format!("{GOOD}\n[resources]\nfit = true\n"),
        )
        .unwrap();
        assert!(c.resources.fit);
        let e = err(&format!("{GOOD}\n[resources]\nalpha = 0.8\nbeta = 1.5\n"));
        assert_eq!((e.line, e.field.as_str()), (24, "resources.beta"));
        assert!(e.message.contains("0..=1"), "{}", e.message);
        let e = err(&format!("{GOOD}\n[resources]\npersist_every = 0\n"));
        assert_eq!(e.field, "resources.persist_every");
        let e = err(&format!("{GOOD}\n[resources]\nsample_interval = 5\n"));
        assert!(e.message.contains("sample_interval_secs"), "{}", e.message);
    }

    const INSTANCE: &str = r#"
[instance]
name = "lab"
heartbeat_ms = 1000
timeout_ms = 4000
virt = "qemu"
capacity = { cpus = 2, mem_mb = 1024, disk_gb = 8 }

[[instance.templates]]
name = "app"
vcpus = 1
mem_mb = 256
disk_gb = 1
role = "app-light"

[[instance.templates]]
name = "db"
vcpus = 2
mem_mb = 512
disk_gb = 4
role = "storage"
"#;

    /// GOOD + INSTANCE with `from` replaced by `to` (once) in the instance part: the error's line,
    /// field and message, after checking the message starts with file:line: field.
    fn instance_err(from: &str, to: &str) -> (usize, String, String) {
        assert!(INSTANCE.contains(from), "{from}");
        let e = err(&format!("{GOOD}{}", INSTANCE.replacen(from, to, 1)));
        let head = format!("/etc/betaas/agent.toml:{}: field `{}`: ", e.line, e.field);
        assert!(e.to_string().starts_with(&head), "{e}");
        (e.line, e.field, e.message)
    }

    /// Line (1-based) of the first line starting with `start` in GOOD + INSTANCE.
    fn line_of(start: &str) -> usize {
        format!("{GOOD}{INSTANCE}")
            .lines()
            .position(|l| l.starts_with(start))
            .map_or(0, |i| i + 1)
    }

    #[test]
    fn instance_section_parses_with_defaults() {
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{INSTANCE}")).unwrap();
        let i = c.instance.unwrap();
        assert_eq!(
            (i.heartbeat_ms, i.timeout_ms, i.deploy_timeout_ms),
            (1000, 4000, 3000)
        );
        assert_eq!(i.templates.len(), 2);
        // A gateway that offers no room for VMs at all is a member like any other.
        let none = INSTANCE.replace(
            "cpus = 2, mem_mb = 1024, disk_gb = 8",
            "cpus = 0, mem_mb = 0, disk_gb = 0",
        );
        Config::parse(Path::new("a.toml"), &format!("{GOOD}{none}")).unwrap();
    }

    #[test]
    fn zero_heartbeat_is_a_config_error_not_a_panic() {
        let (line, field, msg) = instance_err("heartbeat_ms = 1000", "heartbeat_ms = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("heartbeat_ms"), "instance.heartbeat_ms")
        );
        assert!(msg.contains("0 is out of range 50..=60000"), "{msg}");
        let (_, field, _) = instance_err("heartbeat_ms = 1000", "heartbeat_ms = 60001");
        assert_eq!(field, "instance.heartbeat_ms");
        // The bounds themselves are accepted.
        let ok = INSTANCE.replace("heartbeat_ms = 1000", "heartbeat_ms = 50");
        Config::parse(Path::new("a.toml"), &format!("{GOOD}{ok}")).unwrap();
    }

    #[test]
    fn timeout_must_cover_two_heartbeats_and_be_bounded() {
        let (line, field, msg) = instance_err("timeout_ms = 4000", "timeout_ms = 1999");
        assert_eq!(
            (line, field.as_str()),
            (line_of("timeout_ms"), "instance.timeout_ms")
        );
        assert!(
            msg.contains("2000..=600000") && msg.contains("heartbeat_ms"),
            "{msg}"
        );
        let (_, field, _) = instance_err("timeout_ms = 4000", "timeout_ms = 600001");
        assert_eq!(field, "instance.timeout_ms");
        // The default timeout (4000) against a slow heartbeat: the key is absent, its table's
        // header is named.
        let (line, field, msg) = instance_err(
            "heartbeat_ms = 1000\ntimeout_ms = 4000\n",
            "heartbeat_ms = 3000\n",
        );
        assert_eq!(
            (line, field.as_str()),
            (line_of("[instance]"), "instance.timeout_ms")
        );
        assert!(msg.contains("4000 is out of range 6000..="), "{msg}");
    }

    #[test]
    fn every_other_duration_has_a_range() {
        for (key, bad, range) in [
            ("deploy_timeout_ms", "0", "100..=600000"),
            ("remote_timeout_ms", "3600001", "1000..=3600000"),
            ("dismiss_after_secs", "0", "1..=86400"),
            ("readmit_after_secs", "0", "1..=604800"),
            ("readmit_after_secs", "604801", "1..=604800"),
            ("war_max_mb", "0", "1..=4096"),
            ("war_max_mb", "4097", "1..=4096"),
            ("app_ready_secs", "0", "1..=3600"),
        ] {
            let (line, field, msg) = instance_err(
                "timeout_ms = 4000\n",
                &format!("timeout_ms = 4000\n{key} = {bad}\n"),
            );
            assert_eq!(
                (line, field.as_str()),
                (
                    line_of("timeout_ms") + 1,
                    format!("instance.{key}").as_str()
                )
            );
            assert!(
                msg.contains(&format!("{bad} is out of range {range}")),
                "{key}: {msg}"
            );
        }
    }

    #[test]
    fn dismiss_threshold_is_a_fraction() {
        for bad in ["-0.1", "1.5", "nan"] {
            let (line, field, msg) = instance_err(
                "timeout_ms = 4000\n",
                &format!("timeout_ms = 4000\ndismiss_threshold = {bad}\n"),
            );
            assert_eq!(
                (line, field.as_str()),
                (line_of("timeout_ms") + 1, "instance.dismiss_threshold")
            );
            assert!(msg.contains("0..=1"), "{msg}");
        }
    }

    #[test]
    fn capacity_is_above_zero_or_all_zero() {
        let (line, field, msg) = instance_err("mem_mb = 1024", "mem_mb = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("capacity"), "instance.capacity.mem_mb")
        );
        assert!(msg.contains("above 0"), "{msg}");
        // As its own table: the key's own line.
        let (line, field, _) = instance_err(
            "capacity = { cpus = 2, mem_mb = 1024, disk_gb = 8 }\n",
            "[instance.capacity]\ncpus = 0\nmem_mb = 1\ndisk_gb = 1\n",
        );
        assert_eq!(
            (line, field.as_str()),
            (line_of("capacity") + 1, "instance.capacity.cpus")
        );
    }

    #[test]
    fn templates_are_unique_named_and_sized() {
        let (line, field, msg) = instance_err("name = \"db\"", "name = \"app\"");
        assert_eq!(
            (line, field.as_str()),
            (line_of("name = \"db\""), "instance.templates[1].name")
        );
        assert!(msg.contains("duplicate template name \"app\""), "{msg}");
        for bad in ["", "a/b", "x+", "#"] {
            let (_, field, msg) = instance_err("name = \"db\"", &format!("name = {bad:?}"));
            assert_eq!(field, "instance.templates[1].name", "{bad:?}");
            assert!(msg.contains("A-Z a-z 0-9 - _"), "{msg}");
        }
        let (line, field, _) = instance_err("vcpus = 2", "vcpus = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("vcpus = 2"), "instance.templates[1].vcpus")
        );
        let (line, field, _) = instance_err("mem_mb = 256", "mem_mb = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("mem_mb = 256"), "instance.templates[0].mem_mb")
        );
    }

    #[test]
    fn mqtt_username_and_password_file_go_together() {
        let both = GOOD.replace(
            "host = \"10.0.2.2\"",
            "host = \"10.0.2.2\"\nusername = \"gw-one\"\npassword_file = \"/etc/betaas/mqtt.password\"",
        );
        let c = Config::parse(Path::new("a.toml"), &both).unwrap();
        assert_eq!(c.mqtt.username.as_deref(), Some("gw-one"));
        let e = err(&both.replace("password_file = \"/etc/betaas/mqtt.password\"", ""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.username"));
        assert!(e.message.contains("add `password_file`"), "{}", e.message);
        let e = err(&both.replace("username = \"gw-one\"\n", ""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.password_file"));
        assert!(e.message.contains("add `username`"), "{}", e.message);
        let e = err(&both.replace("\"gw-one\"", "\"\""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.username"));
    }

    #[test]
    fn unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/agent.toml: cannot read"),
            "{e}"
        );
    }
}
