//! TI TMP105 / LM75-family digital temperature sensor (TMP75, TMP175, LM75B share the register map).
//!
//! Datasheet (TI SBOS310): pointer register selects 0x00 temperature (read-only, 12 bits left-justified
//! in two bytes, two's complement, 0.0625 °C per LSB) and 0x01 configuration (R1:R0 at bits 6:5 set the
//! resolution; 0b11 = 12 bits). The part powers up in 9-bit mode, so `init` must run after every
//! power-up or bus fault.

use embedded_hal::i2c::I2c;
use linux_embedded_hal::I2cdev;
use serde_json::{json, Value};

use super::command::CommandValue;
use super::spec::{
    init_error, open_i2c, Actuator, Bus, Component, DriverSpec, NumberRange, Opening, Quantity,
    Run, Sensor,
};

/// The temperature (`driver = "tmp105"`).
pub const SPEC: DriverSpec = DriverSpec {
    name: "tmp105",
    bus: Bus::I2c,
    requires: &["device", "address"],
    keys: &[],
    quantities: &[Quantity::own("°C", Some("temperature"))],
    component: Component::Sensor,
    range: None,
    run: Run::Poll(open),
};

/// The T_HIGH alert limit as an actuator (`driver = "tmp105-limit"`), written and read back.
pub const LIMIT: DriverSpec = DriverSpec {
    name: "tmp105-limit",
    bus: Bus::I2c,
    requires: &["device", "address"],
    keys: &[],
    quantities: &[Quantity::own("°C", Some("temperature"))],
    component: Component::Number,
    range: Some(LIMIT_RANGE),
    run: Run::Actuate(open_limit),
};

/// The limit registers hold -128..127.9375 °C in 1/16 °C steps; the part is specified for
/// -55..125 °C.
pub const LIMIT_RANGE: NumberRange = NumberRange {
    min: -55.0,
    max: 125.0,
    step: 0.0625,
};

const REG_TEMPERATURE: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
/// T_HIGH: the alert (over-temperature) limit, same 12-bit left-justified format as the temperature.
const REG_T_HIGH: u8 = 0x03;
/// R1 = R0 = 1: 12-bit conversion; continuous mode, comparator, no one-shot.
const CONFIG_12BIT: u8 = 0b0110_0000;

pub struct Tmp105<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Tmp105<I2C> {
    pub fn new(i2c: I2C, address: u8) -> Self {
        Tmp105 { i2c, address }
    }

    /// Selects 12-bit resolution.
    pub fn init(&mut self) -> Result<(), I2C::Error> {
        self.i2c.write(self.address, &[REG_CONFIG, CONFIG_12BIT])
    }

    /// Reads the temperature in °C.
    pub fn read_celsius(&mut self) -> Result<f32, I2C::Error> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[REG_TEMPERATURE], &mut buf)?;
        Ok(raw_to_celsius(buf))
    }
}

impl<I2C: I2c> Tmp105<I2C> {
    /// Writes the T_HIGH alert limit (rounded to 1/16 °C) and reads it back: the value the device
    /// actually holds is the actuator's state.
    pub fn set_high_limit(&mut self, celsius: f64) -> Result<f64, I2C::Error> {
        let [hi, lo] = celsius_to_raw(celsius);
        self.i2c.write(self.address, &[REG_T_HIGH, hi, lo])?;
        self.high_limit()
    }

    pub fn high_limit(&mut self) -> Result<f64, I2C::Error> {
        let mut buf = [0u8; 2];
        self.i2c.write_read(self.address, &[REG_T_HIGH], &mut buf)?;
        Ok(raw_to_celsius(buf).into())
    }
}

/// °C → register bytes, clamped to the part's -128..127.9375 °C.
pub fn celsius_to_raw(celsius: f64) -> [u8; 2] {
    let steps = (celsius * 16.0).round().clamp(-2048.0, 2047.0) as i16;
    (steps << 4).to_be_bytes()
}

/// Two register bytes → °C. The 12 significant bits are left-justified: an arithmetic shift keeps
/// the sign.
pub fn raw_to_celsius(bytes: [u8; 2]) -> f32 {
    f32::from(i16::from_be_bytes(bytes) >> 4) * 0.0625
}

fn open(o: &Opening) -> Result<Box<dyn Sensor>, String> {
    let mut s = Tmp105::new(open_i2c(&o.device)?, o.address);
    s.init().map_err(|e| init_error(o.address, e))?;
    Ok(Box::new(s))
}

impl Sensor for Tmp105<I2cdev> {
    fn read(&mut self) -> Result<Vec<f64>, String> {
        Ok(vec![self.read_celsius().map_err(|e| e.to_string())?.into()])
    }
}

fn open_limit(o: &Opening) -> Result<Box<dyn Actuator>, String> {
    let mut dev = Tmp105::new(open_i2c(&o.device)?, o.address);
    dev.high_limit().map_err(|e| format!("read T_HIGH: {e}"))?;
    Ok(Box::new(Limit(dev)))
}

struct Limit(Tmp105<I2cdev>);

impl Actuator for Limit {
    fn state(&mut self) -> Result<Value, String> {
        self.0
            .high_limit()
            .map(|c| json!(c))
            .map_err(|e| e.to_string())
    }

    fn apply(&mut self, value: &CommandValue) -> Result<Value, String> {
        let CommandValue::Number(c) = value else {
            return Err(format!(
                "expected a temperature in °C, got {}",
                value.to_json()
            ));
        };
        self.0
            .set_high_limit(*c)
            .map(|c| json!(c))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    /// TMP105 datasheet, Table 2 "Temperature Data Format (12-bit)".
    const DATASHEET: [(f32, [u8; 2]); 11] = [
        (128.0 - 0.0625, [0x7F, 0xF0]),
        (100.0, [0x64, 0x00]),
        (80.0, [0x50, 0x00]),
        (75.0, [0x4B, 0x00]),
        (50.0, [0x32, 0x00]),
        (25.0, [0x19, 0x00]),
        (0.0625, [0x00, 0x10]),
        (0.0, [0x00, 0x00]),
        (-0.0625, [0xFF, 0xF0]),
        (-25.0, [0xE7, 0x00]),
        (-55.0, [0xC9, 0x00]),
    ];

    #[test]
    fn datasheet_table_converts() {
        for (celsius, bytes) in DATASHEET {
            assert_eq!(raw_to_celsius(bytes), celsius, "{bytes:02x?}");
        }
    }

    #[test]
    fn limit_encoding_inverts_the_datasheet_table() {
        for (celsius, bytes) in DATASHEET {
            assert_eq!(celsius_to_raw(celsius.into()), bytes, "{celsius}");
        }
        assert_eq!(celsius_to_raw(1000.0), [0x7F, 0xF0]);
        assert_eq!(celsius_to_raw(-1000.0), [0x80, 0x00]);
    }

    #[test]
    fn high_limit_is_written_then_read_back() {
        let expectations = [
            Transaction::write(0x48, vec![0x03, 0x4B, 0x20]),
            Transaction::write_read(0x48, vec![0x03], vec![0x4B, 0x20]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut sensor = Tmp105::new(i2c.clone(), 0x48);
        assert_eq!(sensor.set_high_limit(75.126).unwrap(), 75.125);
        i2c.done();
    }

    #[test]
    fn low_nibble_is_ignored() {
        assert_eq!(raw_to_celsius([0x19, 0x0F]), 25.0);
    }

    #[test]
    fn init_then_read_uses_the_datasheet_transactions() {
        let expectations = [
            Transaction::write(0x48, vec![0x01, 0x60]),
            Transaction::write_read(0x48, vec![0x00], vec![0x19, 0x40]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut sensor = Tmp105::new(i2c.clone(), 0x48);
        sensor.init().unwrap();
        assert_eq!(sensor.read_celsius().unwrap(), 25.25);
        i2c.done();
    }

    #[test]
    fn bus_error_is_returned_not_a_value() {
        let expectations = [
            Transaction::write_read(0x49, vec![0x00], vec![0, 0]).with_error(
                ErrorKind::NoAcknowledge(embedded_hal::i2c::NoAcknowledgeSource::Address),
            ),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut sensor = Tmp105::new(i2c.clone(), 0x49);
        assert!(sensor.read_celsius().is_err());
        i2c.done();
    }
}
