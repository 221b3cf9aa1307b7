//! ROHM BH1750FVI ambient light sensor over I2C, through the `bh1750` crate (embedded-hal 1.0,
//! no dependency besides embedded-hal); this file adds the agent's error type, the start-up wait
//! and the saturation check.
//!
//! Datasheet (ROHM BH1750FVI, "Instruction Set Architecture" and "Measurement sequence example"):
//! the part has no registers, only one-byte opcodes; results are read as two bytes without a
//! pointer write.
//!
//! | opcode      | meaning                                                     |
//! |-------------|-------------------------------------------------------------|
//! | 0000_0001   | power on                                                    |
//! | 0001_0000   | continuously H-resolution mode (1 lx, typ. 120 ms, max 180 ms) |
//! | read 2 B    | big-endian count; lux = count / 1.2 at the default MTreg 69  |
//!
//! Address 0x23 with ADDR low, 0x5C with ADDR high.

use std::time::Duration;

use bh1750::{BH1750Error, Resolution, BH1750};
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use linux_embedded_hal::{Delay, I2cdev};

use super::spec::{
    init_error, open_i2c, Bus, Component, DriverSpec, Opening, Quantity, Run, Sensor,
};

/// Ambient light in lux (`driver = "bh1750"`).
pub const SPEC: DriverSpec = DriverSpec {
    name: "bh1750",
    bus: Bus::I2c,
    requires: &["device", "address"],
    keys: &[],
    quantities: &[Quantity::own("lx", Some("illuminance"))],
    component: Component::Sensor,
    range: None,
    run: Run::Poll(open),
};

/// Max H-resolution measurement time (electrical characteristics table): until then the data
/// register still holds 0, which would be published as darkness.
const FIRST_RESULT_MS: u32 = 180;
/// A full-scale count means "at least 54612 lx": the real value is unknown.
const SATURATED: u16 = 0xFFFF;

#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    #[error("I2C bus error: {0:?}")]
    Bus(E),
    #[error("light sensor saturated (count 0xFFFF, at least 54612 lx)")]
    Saturated,
    #[error("measurement time register out of range")]
    MeasurementTime,
}

impl<E> From<BH1750Error<E>> for Error<E> {
    fn from(e: BH1750Error<E>) -> Self {
        match e {
            BH1750Error::I2C(e) => Error::Bus(e),
            BH1750Error::MeasurementTimeOutOfRange => Error::MeasurementTime,
        }
    }
}

pub struct Bh1750<I2C, D> {
    dev: BH1750<I2C, OneShotOnly>,
    delay: D,
}

impl<I2C: I2c, D: DelayNs> Bh1750<I2C, D> {
    pub fn new(i2c: I2C, delay: D, address: u8) -> Self {
        Bh1750 {
            dev: BH1750::new_custom_address(i2c, OneShotOnly, address),
            delay,
        }
    }

    /// Powers on, starts continuous H-resolution conversions and waits for the first one.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        self.dev.power_on()?;
        self.dev.start_continuous_measurement(Resolution::High)?;
        self.delay.delay_ms(FIRST_RESULT_MS);
        Ok(())
    }

    /// The latest completed conversion, in lux.
    pub fn read_lux(&mut self) -> Result<f32, Error<I2C::Error>> {
        let lux = self.dev.get_current_measurement(Resolution::High)?;
        // The crate has already divided by 1.2; 0xFFFF / 1.2 is the only value at or above
        // 54612.4 it can return at MTreg 69.
        if lux >= f32::from(SATURATED) / 1.2 {
            return Err(Error::Saturated);
        }
        Ok(lux)
    }
}

/// The crate's `DelayNs` parameter is only used by its one-time modes, which the agent does not
/// use; sleeping is still the right behaviour should it ever be called.
pub struct OneShotOnly;

impl DelayNs for OneShotOnly {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(Duration::from_nanos(u64::from(ns)));
    }
}

fn open(o: &Opening) -> Result<Box<dyn Sensor>, String> {
    let mut s = Bh1750::new(open_i2c(&o.device)?, Delay, o.address);
    s.init().map_err(|e| init_error(o.address, e))?;
    Ok(Box::new(s))
}

impl Sensor for Bh1750<I2cdev, Delay> {
    fn read(&mut self) -> Result<Vec<f64>, String> {
        Ok(vec![self.read_lux().map_err(|e| e.to_string())?.into()])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as Delay};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    #[test]
    fn power_on_continuous_h_mode_wait_then_read() {
        let ex = [
            Transaction::write(0x23, vec![0x01]),
            Transaction::write(0x23, vec![0x10]),
            // Datasheet "measurement sequence example": 1000_0011 1001_0000 → 28067 lx.
            Transaction::read(0x23, vec![0b1000_0011, 0b1001_0000]),
            Transaction::read(0x23, vec![0x00, 0x0C]),
            Transaction::read(0x23, vec![0xFF, 0xFE]),
            Transaction::read(0x23, vec![0x00, 0x00]),
        ];
        let mut i2c = Mock::new(&ex);
        let mut delay = CheckedDelay::new(&[Delay::blocking_delay_ms(180)]);
        let mut s = Bh1750::new(i2c.clone(), delay.clone(), 0x23);
        s.init().unwrap();
        assert_eq!(s.read_lux().unwrap().round(), 28067.0);
        assert_eq!(s.read_lux().unwrap(), 10.0);
        // One count below saturation is still a reading; zero is darkness, not an error.
        assert_eq!(s.read_lux().unwrap().round(), 54612.0);
        assert_eq!(s.read_lux().unwrap(), 0.0);
        i2c.done();
        delay.done();
    }

    #[test]
    fn saturated_count_is_an_error() {
        let ex = [Transaction::read(0x5C, vec![0xFF, 0xFF])];
        let mut i2c = Mock::new(&ex);
        let mut s = Bh1750::new(i2c.clone(), NoopDelay, 0x5C);
        assert!(matches!(s.read_lux(), Err(Error::Saturated)));
        i2c.done();
    }

    #[test]
    fn bus_errors_are_returned_not_values() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let ex = [Transaction::write(0x23, vec![0x01]).with_error(nack)];
        let mut i2c = Mock::new(&ex);
        let mut s = Bh1750::new(i2c.clone(), NoopDelay, 0x23);
        assert!(matches!(
            s.init(),
            Err(Error::Bus(ErrorKind::NoAcknowledge(_)))
        ));
        i2c.done();

        let ex = [Transaction::read(0x23, vec![0, 0]).with_error(ErrorKind::ArbitrationLoss)];
        let mut i2c = Mock::new(&ex);
        let mut s = Bh1750::new(i2c.clone(), NoopDelay, 0x23);
        let e = s.read_lux().unwrap_err();
        assert!(matches!(e, Error::Bus(ErrorKind::ArbitrationLoss)));
        assert!(e.to_string().contains("ArbitrationLoss"));
        i2c.done();
    }
}
