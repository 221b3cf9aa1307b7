//! What a driver declares, once, next to its code: its name, bus, the keys it needs, its own keys
//! with their defaults and ranges, the quantities it publishes (unit, Home Assistant device class),
//! how Home Assistant shows it, the range of values it accepts as an actuator, and how the agent
//! runs it. Config validation, polling, actuators, discovery and the web UI read this and nothing
//! else about a driver.
//!
//! A leaf module: it names nothing of the agent above it (the config imports it, not the reverse).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use betaas_core::things::command::CommandValue;

/// Is the thing read or driven.
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

/// The Home Assistant entity platform a thing appears as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// A numeric reading (temperature, humidity, ...), with `state_class: measurement`.
    Sensor,
    /// A digital input (door contact, PIR): the reading's `value` is truthy or not.
    BinarySensor,
    /// An on/off actuator (relay, LED).
    Switch,
    /// A numeric actuator (set point, alert limit).
    Number,
}

/// A numeric actuator's accepted values (Home Assistant's `min`, `max`, `step`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberRange {
    pub min: f64,
    pub max: f64,
    pub step: f64,
}

impl NumberRange {
    pub fn contains(&self, v: f64) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

/// One published quantity: a thing publishes one reading per quantity of its driver.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    /// Published as `<id>_<suffix>`; `None`: as the thing's own id.
    pub suffix: Option<&'static str>,
    /// The unit readings carry (`""`: none, or the config's `unit`).
    pub unit: &'static str,
    /// The Home Assistant device class.
    pub device_class: Option<&'static str>,
}

impl Quantity {
    /// A quantity published under the thing's own id.
    pub const fn own(unit: &'static str, device_class: Option<&'static str>) -> Quantity {
        Quantity {
            suffix: None,
            unit,
            device_class,
        }
    }
}

/// A driver's own numeric key in `[[things]]`: its default and accepted range.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    /// `min` itself is not accepted (a reference voltage of 0 V).
    pub min_exclusive: bool,
    pub max: f64,
    pub unit: &'static str,
}

impl Key {
    /// Whether `v` is in the key's range.
    pub fn accepts(&self, v: f64) -> bool {
        v.is_finite()
            && if self.min_exclusive {
                v > self.min
            } else {
                v >= self.min
            }
            && v <= self.max
    }

    /// The range as a message names it: `0..=7`, `(0, 5.5] V`.
    pub fn range(&self) -> String {
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", self.unit)
        };
        if self.min_exclusive {
            format!("({}, {}]{unit}", self.min, self.max)
        } else {
            format!("{}..={}{unit}", self.min, self.max)
        }
    }
}

/// What a driver is opened with: the thing's device, address, GPIO line and its keys' values
/// (the config's, else the driver's defaults).
#[derive(Debug, Clone)]
pub struct Opening {
    pub device: PathBuf,
    pub address: u8,
    pub line: u32,
    pub active_low: bool,
    pub keys: Vec<(&'static str, f64)>,
}

impl Opening {
    /// The value of one of the driver's [`Key`]s.
    pub fn key(&self, name: &str) -> f64 {
        self.keys
            .iter()
            .find(|(k, _)| *k == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// A polled device. `read` blocks (I2C, SPI, file reads): the agent calls it off the runtime.
pub trait Sensor: Send {
    /// One raw value per [`Quantity`] of the driver, in its order.
    fn read(&mut self) -> Result<Vec<f64>, String>;
}

/// A driven device. Blocking, like [`Sensor`].
pub trait Actuator: Send {
    /// The device's current state as published.
    fn state(&mut self) -> Result<Value, String>;
    /// Applies a command (already checked against the driver's [`NumberRange`]); the new state.
    fn apply(&mut self, value: &CommandValue) -> Result<Value, String>;
}

pub type OpenSensor = fn(&Opening) -> Result<Box<dyn Sensor>, String>;
pub type OpenActuator = fn(&Opening) -> Result<Box<dyn Actuator>, String>;

/// How the agent runs a thing of this driver.
#[derive(Clone, Copy)]
pub enum Run {
    /// Opened, then read every `interval_ms`.
    Poll(OpenSensor),
    /// Edge-triggered GPIO input (the agent's input watcher).
    Watch,
    /// Fed by messages of an MQTT device.
    Mqtt,
    /// Opened, then driven by commands.
    Actuate(OpenActuator),
}

/// Everything the agent knows about one driver.
pub struct DriverSpec {
    /// The `driver = "..."` name.
    pub name: &'static str,
    pub bus: Bus,
    /// Keys of `[[things]]` the driver needs.
    pub requires: &'static [&'static str],
    /// The driver's own numeric keys (optional in the config, defaulted here).
    pub keys: &'static [Key],
    /// What it publishes: one reading per quantity.
    pub quantities: &'static [Quantity],
    /// How Home Assistant shows each of its entities.
    pub component: Component,
    /// Numeric actuators: the values a command may set.
    pub range: Option<NumberRange>,
    pub run: Run,
}

impl DriverSpec {
    pub fn kind(&self) -> Kind {
        match self.run {
            Run::Actuate(_) => Kind::Actuator,
            Run::Poll(_) | Run::Watch | Run::Mqtt => Kind::Sensor,
        }
    }

    /// The unit of a single-quantity driver (`""` when the config supplies it).
    pub fn unit(&self) -> &'static str {
        match self.quantities {
            [q] => q.unit,
            _ => "",
        }
    }

    /// The device class of a single-quantity driver.
    pub fn device_class(&self) -> Option<&'static str> {
        match self.quantities {
            [q] => q.device_class,
            _ => None,
        }
    }

    pub fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }
}

/// `path: error`, for opening a bus.
pub fn open_i2c(path: &std::path::Path) -> Result<linux_embedded_hal::I2cdev, String> {
    linux_embedded_hal::I2cdev::new(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `init at 0x48: error`, for a device that did not answer its initialisation.
pub fn init_error(address: u8, e: impl std::fmt::Display) -> String {
    format!("init at 0x{address:02x}: {e}")
}
