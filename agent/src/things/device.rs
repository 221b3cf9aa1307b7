//! Polled things: a driver's [`Sensor`] opened from a thing's config, its raw values turned into
//! readings (one per published quantity, single values calibrated and range-checked).

use super::spec::{Opening, Run, Sensor};
use crate::config::Thing;

/// One value read from a device: the published thing id, the value (calibrated), its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub thing: String,
    pub value: f64,
    pub unit: String,
}

/// What a thing's driver is opened with.
pub fn opening(thing: &Thing) -> Result<Opening, String> {
    let info = thing.driver.info();
    Ok(Opening {
        device: thing.device.clone().ok_or("no device")?,
        address: thing.address.map_or(0, |a| a.0),
        line: thing.line.unwrap_or(0),
        active_low: thing.active_low,
        keys: info
            .keys
            .iter()
            .map(|k| (k.name, thing.key(k.name)))
            .collect(),
    })
}

/// An opened, polled device. Reads block (ioctl on /dev/i2c-N, spidev, file reads): call them off the
/// async runtime. Event-driven (gpio-in), MQTT things and actuators are handled elsewhere.
pub struct Device(Box<dyn Sensor>);

impl Device {
    /// Opens the bus and initialises the device (again after every failure: it may have lost power).
    pub fn open(thing: &Thing) -> Result<Device, String> {
        let info = thing.driver.info();
        match info.run {
            Run::Poll(open) => Ok(Device(open(&opening(thing)?)?)),
            Run::Watch | Run::Mqtt | Run::Actuate(_) => {
                Err(format!("driver {} is not polled", info.name))
            }
        }
    }

    /// Reads the device: one value per published thing id, calibrated and range-checked.
    pub fn read(&mut self, thing: &Thing) -> Result<Vec<Value>, String> {
        let raw = self.0.read()?;
        let quantities = thing.driver.info().quantities;
        if raw.len() != quantities.len() {
            return Err(format!(
                "driver {} read {} values for {} quantities",
                thing.driver.info().name,
                raw.len(),
                quantities.len()
            ));
        }
        if let [raw] = raw[..] {
            return Ok(vec![Value {
                thing: thing.id.to_string(),
                value: calibrate(thing, raw)?,
                unit: thing.unit(),
            }]);
        }
        // Several quantities, uncalibrated: scale/offset/min/max apply to single-value things.
        Ok(thing
            .published_ids()
            .into_iter()
            .zip(quantities)
            .zip(raw)
            .map(|((id, q), value)| Value {
                thing: id,
                value,
                unit: q.unit.into(),
            })
            .collect())
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
