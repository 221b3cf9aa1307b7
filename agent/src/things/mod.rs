//! The adaptation layer (paper §II): physical things become readings.

pub mod bh1750;
pub mod bme280;
pub mod gpio;
pub mod mcp3008;
pub mod status;
pub mod tmp105;

// The pure parsers of outside input live in `betaas-core` (the fuzz crate uses them from there).
pub use betaas_core::things::{command, payload};

use std::path::{Path, PathBuf};

use linux_embedded_hal::{Delay, I2cdev, SpidevDevice};

use crate::config::{Driver, Thing};

/// One value read from a device: the published thing id, the value (calibrated), its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub thing: String,
    pub value: f64,
    pub unit: String,
}

/// An opened, polled device. Reads block (ioctl on /dev/i2c-N, spidev, file reads): call them off the
/// async runtime. Event-driven (gpio-in), MQTT things and actuators are handled elsewhere.
pub enum Device {
    Tmp105(tmp105::Tmp105<I2cdev>),
    Bme280(Box<bme280::Bme280<I2cdev, Delay>>),
    Bh1750(bh1750::Bh1750<I2cdev, Delay>),
    Mcp3008(mcp3008::Mcp3008<SpidevDevice>, u8),
    Sysfs(PathBuf),
}

impl Device {
    /// Opens the bus and initialises the device (again after every failure: it may have lost power).
    pub fn open(thing: &Thing) -> Result<Device, String> {
        let device = thing.device.as_deref().ok_or("no device")?;
        let address = thing.address.map_or(0, |a| a.0);
        let at = |e: &dyn std::fmt::Display| format!("init at 0x{address:02x}: {e}");
        match thing.driver {
            Driver::Tmp105 => {
                let mut s = tmp105::Tmp105::new(open_i2c(device)?, address);
                s.init().map_err(|e| at(&e))?;
                Ok(Device::Tmp105(s))
            }
            Driver::Bme280 => {
                let mut s = bme280::Bme280::new(open_i2c(device)?, Delay, address);
                s.init().map_err(|e| at(&e))?;
                Ok(Device::Bme280(Box::new(s)))
            }
            Driver::Bh1750 => {
                let mut s = bh1750::Bh1750::new(open_i2c(device)?, Delay, address);
                s.init().map_err(|e| at(&e))?;
                Ok(Device::Bh1750(s))
            }
            Driver::Mcp3008 => {
                let spi = mcp3008::open_spidev(device)
                    .map_err(|e| format!("{}: {e}", device.display()))?;
                let vref = thing.vref.unwrap_or(3.3) as f32;
                let adc = mcp3008::Mcp3008::new(spi, vref).map_err(|e| format!("vref {}", e.0))?;
                Ok(Device::Mcp3008(adc, thing.channel.unwrap_or(0)))
            }
            Driver::Sysfs => Ok(Device::Sysfs(device.to_owned())),
            Driver::Tmp105Limit | Driver::GpioIn | Driver::GpioOut | Driver::Json => {
                Err(format!("driver {} is not polled", thing.driver.info().name))
            }
        }
    }

    /// Reads the device: one value per published thing id, calibrated and range-checked.
    pub fn read(&mut self, thing: &Thing) -> Result<Vec<Value>, String> {
        let one = |raw: f64| -> Result<Vec<Value>, String> {
            Ok(vec![Value {
                thing: thing.id.to_string(),
                value: calibrate(thing, raw)?,
                unit: thing.unit(),
            }])
        };
        match self {
            Device::Tmp105(s) => one(s.read_celsius().map_err(|e| e.to_string())?.into()),
            Device::Bh1750(s) => one(s.read_lux().map_err(|e| e.to_string())?.into()),
            Device::Mcp3008(adc, ch) => one(adc.read_volts(*ch).map_err(|e| e.to_string())?.into()),
            Device::Sysfs(path) => {
                let text = std::fs::read_to_string(&*path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let raw: f64 = text.trim().parse().map_err(|_| {
                    format!("{}: {:?} is not a number", path.display(), text.trim())
                })?;
                one(raw)
            }
            // Three quantities, uncalibrated: scale/offset/min/max apply to single-value things.
            Device::Bme280(s) => {
                let m = s.read().map_err(|e| e.to_string())?;
                Ok([
                    ("temperature", m.celsius(), "°C"),
                    ("humidity", m.humidity_percent(), "%"),
                    ("pressure", m.hectopascal(), "hPa"),
                ]
                .into_iter()
                .map(|(q, value, unit)| Value {
                    thing: format!("{}_{q}", thing.id),
                    value,
                    unit: unit.into(),
                })
                .collect())
            }
        }
    }
}

/// raw * scale + offset, then the thing's sanity range. Pure.
pub fn calibrate(thing: &Thing, raw: f64) -> Result<f64, String> {
    let v = raw * thing.scale + thing.offset;
    if !v.is_finite() {
        return Err(format!(
            "value {raw} is not a finite number after calibration"
        ));
    }
    if thing.min.is_some_and(|lo| v < lo) || thing.max.is_some_and(|hi| v > hi) {
        return Err(format!(
            "value {v} outside the sanity range {}..={}",
            thing.min.map_or("-inf".into(), |x| x.to_string()),
            thing.max.map_or("inf".into(), |x| x.to_string())
        ));
    }
    Ok(v)
}

fn open_i2c(path: &Path) -> Result<I2cdev, String> {
    I2cdev::new(path).map_err(|e| format!("{}: {e}", path.display()))
}
