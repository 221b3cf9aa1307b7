//! The adaptation layer (paper §II): physical things become readings.

pub mod tmp105;
// Wired into the config in the things integration.
#[allow(dead_code)]
pub mod bme280;
#[allow(dead_code)]
pub mod bh1750;
#[allow(dead_code)]
pub mod mcp3008;
#[allow(dead_code)]
pub mod gpio;
// Pure parsers for MQTT things and actuator commands; wired into the MQTT loop in the integration.
#[allow(dead_code)]
pub mod payload;

use std::path::Path;

use linux_embedded_hal::I2cdev;
use serde::Serialize;

use crate::config::{Driver, Thing};

/// One measurement of one thing, as published on `<prefix>/<gateway>/things/<thing>/state`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub thing: String,
    pub value: f64,
    pub unit: &'static str,
    /// Unix time in milliseconds from the gateway's clock (it may be wrong right after boot;
    /// `seq` orders readings regardless).
    pub ts: u64,
    /// Per thing, +1 for every reading.
    pub seq: u64,
}

/// An opened sensor. Reads block (ioctl on /dev/i2c-N): call them off the async runtime.
pub enum Sensor {
    Tmp105(tmp105::Tmp105<I2cdev>),
}

impl Sensor {
    /// Opens the bus and initialises the device.
    pub fn open(thing: &Thing) -> Result<Sensor, String> {
        match thing.driver {
            Driver::Tmp105 => {
                let bus = open_i2c(&thing.bus)?;
                let mut s = tmp105::Tmp105::new(bus, thing.address.0);
                s.init()
                    .map_err(|e| format!("init at 0x{:02x}: {e}", thing.address.0))?;
                Ok(Sensor::Tmp105(s))
            }
        }
    }

    pub fn read(&mut self) -> Result<f64, String> {
        match self {
            Sensor::Tmp105(s) => s.read_celsius().map(f64::from).map_err(|e| e.to_string()),
        }
    }
}

fn open_i2c(path: &Path) -> Result<I2cdev, String> {
    I2cdev::new(path).map_err(|e| format!("{}: {e}", path.display()))
}
