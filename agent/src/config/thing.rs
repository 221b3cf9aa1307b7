//! `[[things]]`: one sensor or actuator, and its driver.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ids::{I2cAddress, Millis, TopicLevel};
use crate::things as drivers;
pub use crate::things::spec::{Bus, DriverSpec, Kind};

/// `[[things]]`: one sensor or actuator. Which keys apply depends on the driver (see [`Driver`]);
/// [`Config::check`](super::Config) names the missing ones.
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

/// A registered driver (`things::DRIVERS`): what it needs, publishes and accepts is its
/// [`DriverSpec`], declared next to its code.
#[derive(Clone, Copy)]
pub struct Driver(&'static DriverSpec);

impl Driver {
    pub fn info(self) -> &'static DriverSpec {
        self.0
    }

    /// The registered driver named `name`.
    pub fn named(name: &str) -> Option<Driver> {
        drivers::find(name).map(Driver)
    }
}

impl PartialEq for Driver {
    fn eq(&self, other: &Driver) -> bool {
        self.0.name == other.0.name
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl<'de> Deserialize<'de> for Driver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Driver, D::Error> {
        let name = String::deserialize(d)?;
        Driver::named(&name).ok_or_else(|| {
            let names: Vec<_> = drivers::DRIVERS
                .iter()
                .map(|d| format!("`{}`", d.name))
                .collect();
            serde::de::Error::custom(format!(
                "unknown driver `{name}`, expected one of {}",
                names.join(", ")
            ))
        })
    }
}

impl Thing {
    /// The unit readings carry: the config's, else the driver's.
    pub fn unit(&self) -> String {
        self.unit
            .clone()
            .unwrap_or_else(|| self.driver.info().unit().to_owned())
    }

    /// The thing ids this thing publishes under: a BME280 is three.
    pub fn published_ids(&self) -> Vec<String> {
        self.driver
            .info()
            .quantities
            .iter()
            .map(|q| match q.suffix {
                Some(suffix) => format!("{}_{suffix}", self.id),
                None => self.id.to_string(),
            })
            .collect()
    }

    /// A driver key's value: the config's, else the driver's default (NaN: not its key).
    pub fn key(&self, name: &str) -> f64 {
        self.set_key(name)
            .or_else(|| self.driver.info().key(name).map(|k| k.default))
            .unwrap_or(f64::NAN)
    }

    /// A driver key as the config sets it.
    fn set_key(&self, name: &str) -> Option<f64> {
        match name {
            "channel" => self.channel.map(f64::from),
            "vref" => self.vref,
            "debounce_ms" => self.debounce_ms.map(|v| v as f64),
            _ => None,
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
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        let info = self.driver.info();
        let accepted = |bus: Bus| {
            drivers::DRIVERS
                .iter()
                .filter(|d| d.bus == bus)
                .map(|d| d.name)
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
        if info.kind() != self.kind {
            return Some((
                "kind",
                format!("driver {} is a {:?}", info.name, info.kind()).to_lowercase(),
            ));
        }
        if let Some(key) = info.requires.iter().find(|k| !self.has(k)) {
            return Some((key, format!("driver {} needs `{key}`", info.name)));
        }
        // A driver key is checked against its driver's range, also where another driver's
        // thing sets it (it is ignored there, but never out of range).
        for name in ["channel", "vref", "debounce_ms"] {
            let Some(v) = self.set_key(name) else {
                continue;
            };
            let key = info
                .key(name)
                .or_else(|| drivers::DRIVERS.iter().find_map(|d| d.key(name)));
            if let Some(key) = key.filter(|k| !k.accepts(v)) {
                return Some((key.name, format!("{} must be in {}", key.name, key.range())));
            }
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

fn default_scale() -> f64 {
    1.0
}
fn default_interval() -> Millis {
    Millis(Duration::from_secs(5))
}
