//! Bosch BME280 temperature / humidity / pressure sensor over I2C.
//!
//! Datasheet: Bosch Sensortec BST-BME280-DS002. Memory map (section 5.3):
//!
//! | register    | content                                                       |
//! |-------------|---------------------------------------------------------------|
//! | 0x88..0xA1  | calib00..calib25: dig_T1..dig_P9 (LE words), 0xA0 unused, dig_H1 |
//! | 0xD0        | chip id, 0x60 for the BME280 (0x58 is the humidity-less BMP280) |
//! | 0xE0        | reset: writing 0xB6 performs a power-on reset                  |
//! | 0xE1..0xE7  | calib26..calib32: dig_H2..dig_H6 (H4/H5 share 0xE5's nibbles)  |
//! | 0xF2        | ctrl_hum: osrs_h[2:0]; only takes effect after a ctrl_meas write |
//! | 0xF3        | status: measuring (bit 3), im_update (bit 0)                   |
//! | 0xF4        | ctrl_meas: osrs_t[7:5] osrs_p[4:2] mode[1:0]                   |
//! | 0xF5        | config: t_sb[7:5] filter[4:2] spi3w_en[0]                      |
//! | 0xF7..0xFE  | press (20 bit), temp (20 bit), hum (16 bit), MSB first          |
//!
//! Why not a crate: `bme280` 0.5.1 compensates in f32 and silently clamps readings into the
//! operating range (a broken sensor reads -40 °C / 0 %), never detects the "skipped" marker and
//! pulls in a proc-macro dependency. `bme280-rs` 0.4.1 is close, but it reads status.measuring
//! from bit 2 instead of bit 3 (so forced mode returns the previous conversion), waits for
//! im_update in an unbounded loop, and keeps the datasheet's 0..100 % humidity clamp, which
//! turns a bad raw value into a plausible reading. This file follows the datasheet's integer
//! formulas (section 4.2.3 / 8.2) and reports every such case as an error.
//!
//! The sensor runs in forced mode with 1x oversampling and the IIR filter off: the datasheet's
//! "weather monitoring" setting (section 3.5.1) for readings taken every few seconds or minutes.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use linux_embedded_hal::{Delay, I2cdev};

use super::spec::{self, init_error, open_i2c, Bus, Component, DriverSpec, Opening, Run, Sensor};

/// Three readings, uncalibrated (scale/offset/min/max apply to single-value things):
/// `<id>_temperature`, `<id>_humidity`, `<id>_pressure`.
pub const SPEC: DriverSpec = DriverSpec {
    name: "bme280",
    bus: Bus::I2c,
    requires: &["device", "address"],
    keys: &[],
    quantities: &[
        spec::Quantity {
            suffix: Some("temperature"),
            unit: "°C",
            device_class: Some("temperature"),
        },
        spec::Quantity {
            suffix: Some("humidity"),
            unit: "%",
            device_class: Some("humidity"),
        },
        spec::Quantity {
            suffix: Some("pressure"),
            unit: "hPa",
            device_class: Some("pressure"),
        },
    ],
    component: Component::Sensor,
    range: None,
    run: Run::Poll(open),
};

const REG_CALIB_00: u8 = 0x88;
const CALIB_00_LEN: usize = 26;
const REG_CALIB_26: u8 = 0xE1;
const CALIB_26_LEN: usize = 7;
const REG_CHIP_ID: u8 = 0xD0;
pub const CHIP_ID: u8 = 0x60;
const REG_RESET: u8 = 0xE0;
const RESET_WORD: u8 = 0xB6;
const REG_CTRL_HUM: u8 = 0xF2;
const REG_STATUS: u8 = 0xF3;
const STATUS_MEASURING: u8 = 1 << 3;
const STATUS_IM_UPDATE: u8 = 1 << 0;
const REG_CTRL_MEAS: u8 = 0xF4;
const REG_CONFIG: u8 = 0xF5;
const REG_DATA: u8 = 0xF7;
const DATA_LEN: usize = 8;

/// osrs_h = 001: humidity oversampling x1.
const CTRL_HUM_X1: u8 = 0b001;
/// osrs_t = 001, osrs_p = 001, mode = 00 (sleep): written during setup so `config` is accepted
/// (writes to config in normal mode may be ignored, section 5.4.6).
const CTRL_MEAS_X1_SLEEP: u8 = 0b0010_0100;
/// Same oversampling, mode = 01: one forced conversion, then back to sleep (section 3.3.3).
const CTRL_MEAS_X1_FORCED: u8 = 0b0010_0101;
/// t_sb unused in forced mode, filter off, 3-wire SPI off.
const CONFIG_FILTER_OFF: u8 = 0x00;

/// Section 3.5: a measurement that was skipped (oversampling 000) or has not run since reset
/// reads as these values.
const SKIPPED_20BIT: u32 = 0x8_0000;
const SKIPPED_16BIT: u32 = 0x8000;

/// Start-up time after power-on or soft reset (section 1, table 1: t_startup 2 ms).
const STARTUP_MS: u32 = 2;
/// Section 9.1: t_measure,max = 1.25 + 2.3·1 + (2.3·1 + 0.575)·2 = 9.3 ms with all x1.
const MEASURE_MAX_MS: u32 = 10;
/// Bounded waits: a status bit stuck at 1 must become an error, not a hung blocking thread.
const POLL_TRIES: u32 = 5;
const POLL_MS: u32 = 2;

/// Operating range (section 1, table 1). Outside it the compensation is not specified, and a
/// value there means bad raw data or calibration rather than weather.
const T_MIN_CENTI: i32 = -4_000;
const T_MAX_CENTI: i32 = 8_500;
const P_MIN_PA: u32 = 30_000;
const P_MAX_PA: u32 = 110_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Temperature,
    Pressure,
    Humidity,
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quantity::Temperature => "temperature",
            Quantity::Pressure => "pressure",
            Quantity::Humidity => "humidity",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    #[error("I2C bus error: {0:?}")]
    Bus(E),
    #[error(
        "chip id register 0xD0 reads 0x{found:02x}, expected 0x60 (BME280; 0x58 would be a BMP280)"
    )]
    WrongChip { found: u8 },
    #[error("calibration copy from NVM still running {0} ms after reset (status.im_update stuck)")]
    NvmBusy(u32),
    #[error("conversion still running {0} ms after start (status.measuring stuck)")]
    ConversionTimeout(u32),
    #[error("{0} reads the 'skipped' marker: no conversion result")]
    Skipped(Quantity),
    #[error("{quantity} {value} {unit} outside the sensor's range {min}..={max} {unit}")]
    OutOfRange {
        quantity: Quantity,
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
    #[error("calibration dig_P1 = 0 makes the pressure formula divide by zero")]
    BadCalibration,
}

/// Trimming parameters (section 4.2.2, table 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calibration {
    pub t1: u16,
    pub t2: i16,
    pub t3: i16,
    pub p1: u16,
    pub p2: i16,
    pub p3: i16,
    pub p4: i16,
    pub p5: i16,
    pub p6: i16,
    pub p7: i16,
    pub p8: i16,
    pub p9: i16,
    pub h1: u8,
    pub h2: i16,
    pub h3: u8,
    pub h4: i16,
    pub h5: i16,
    pub h6: i8,
}

impl Calibration {
    /// Decodes the two calibration blocks read from 0x88..0xA1 and 0xE1..0xE7.
    pub fn from_registers(a: &[u8; CALIB_00_LEN], b: &[u8; CALIB_26_LEN]) -> Calibration {
        let u = |i: usize| u16::from_le_bytes([a[i], a[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([a[i], a[i + 1]]);
        Calibration {
            t1: u(0),
            t2: s(2),
            t3: s(4),
            p1: u(6),
            p2: s(8),
            p3: s(10),
            p4: s(12),
            p5: s(14),
            p6: s(16),
            p7: s(18),
            p8: s(20),
            p9: s(22),
            // a[24] is 0xA0, unused.
            h1: a[25],
            h2: i16::from_le_bytes([b[0], b[1]]),
            h3: b[2],
            // dig_H4 = 0xE4[7:0] : 0xE5[3:0] and dig_H5 = 0xE6[7:0] : 0xE5[7:4], both signed
            // 12-bit: the signed high byte carries the sign.
            h4: (i16::from(b[3] as i8) << 4) | i16::from(b[4] & 0x0F),
            h5: (i16::from(b[5] as i8) << 4) | i16::from(b[4] >> 4),
            h6: b[6] as i8,
        }
    }
}

/// The three ADC words from one burst read of 0xF7..0xFE (section 4: burst read keeps them
/// from the same conversion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    pub pressure: u32,
    pub temperature: u32,
    pub humidity: u32,
}

impl Raw {
    pub fn from_registers(d: &[u8; DATA_LEN]) -> Raw {
        let adc20 = |msb: u8, lsb: u8, xlsb: u8| {
            (u32::from(msb) << 12) | (u32::from(lsb) << 4) | (u32::from(xlsb) >> 4)
        };
        Raw {
            pressure: adc20(d[0], d[1], d[2]),
            temperature: adc20(d[3], d[4], d[5]),
            humidity: (u32::from(d[6]) << 8) | u32::from(d[7]),
        }
    }
}

/// A compensated reading in the datasheet's fixed-point units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// 0.01 °C.
    pub centi_celsius: i32,
    /// Pa in Q24.8.
    pub pressure_q24_8: u32,
    /// %RH in Q22.10.
    pub humidity_q22_10: u32,
}

impl Measurement {
    pub fn celsius(&self) -> f64 {
        f64::from(self.centi_celsius) / 100.0
    }
    pub fn pascal(&self) -> f64 {
        f64::from(self.pressure_q24_8) / 256.0
    }
    pub fn hectopascal(&self) -> f64 {
        self.pascal() / 100.0
    }
    pub fn humidity_percent(&self) -> f64 {
        f64::from(self.humidity_q22_10) / 1024.0
    }
}

/// `BME280_compensate_T_int32` (section 4.2.3): returns (t_fine, 0.01 °C). Computed in i64 so
/// garbage raw data cannot overflow (an all-ones temperature word comes within 7 % of i32::MAX
/// with typical trimming); for in-range data the result is bit-identical to the i32 original.
pub fn compensate_temperature(cal: &Calibration, adc_t: u32) -> (i64, i64) {
    let adc_t = i64::from(adc_t);
    let t1 = i64::from(cal.t1);
    let var1 = (((adc_t >> 3) - (t1 << 1)) * i64::from(cal.t2)) >> 11;
    let d = (adc_t >> 4) - t1;
    let var2 = (((d * d) >> 12) * i64::from(cal.t3)) >> 14;
    let t_fine = var1 + var2;
    (t_fine, (t_fine * 5 + 128) >> 8)
}

/// `BME280_compensate_P_int64` (section 4.2.3): Pa in Q24.8, or None where the datasheet
/// returns 0 to avoid dividing by zero. i128 keeps `(1 << 47) · dig_P1` and the `p << 31`
/// term from overflowing on corrupt calibration; results equal the i64 original otherwise.
pub fn compensate_pressure(cal: &Calibration, t_fine: i64, adc_p: u32) -> Option<i128> {
    let mut var1 = i128::from(t_fine) - 128_000;
    let mut var2 = var1 * var1 * i128::from(cal.p6);
    var2 += (var1 * i128::from(cal.p5)) << 17;
    var2 += i128::from(cal.p4) << 35;
    var1 = ((var1 * var1 * i128::from(cal.p3)) >> 8) + ((var1 * i128::from(cal.p2)) << 12);
    var1 = (((1i128 << 47) + var1) * i128::from(cal.p1)) >> 33;
    if var1 == 0 {
        return None;
    }
    let mut p = 1_048_576 - i128::from(adc_p);
    // The datasheet's C divides int64 with truncation toward zero; so does Rust.
    p = (((p << 31) - var2) * 3125) / var1;
    let var1 = (i128::from(cal.p9) * (p >> 13) * (p >> 13)) >> 25;
    let var2 = (i128::from(cal.p8) * p) >> 19;
    Some(((p + var1 + var2) >> 8) + (i128::from(cal.p7) << 4))
}

/// `bme280_compensate_H_int32` (section 4.2.3) without its final clamp to 0..=100 %RH: returns
/// %RH in Q22.10. The clamp would turn corrupt raw data or a condensed sensor into a plausible
/// 0 % or 100 %; the caller rejects out-of-range values instead.
pub fn compensate_humidity(cal: &Calibration, t_fine: i64, adc_h: u32) -> i64 {
    let adc_h = i64::from(adc_h);
    let x = t_fine - 76_800;
    let a = ((adc_h << 14) - (i64::from(cal.h4) << 20) - (i64::from(cal.h5) * x) + 16_384) >> 15;
    let b = (((((x * i64::from(cal.h6)) >> 10) * (((x * i64::from(cal.h3)) >> 11) + 32_768))
        >> 10)
        + 2_097_152)
        * i64::from(cal.h2)
        + 8192;
    let mut v = a * (b >> 14);
    v -= ((((v >> 15) * (v >> 15)) >> 7) * i64::from(cal.h1)) >> 4;
    v >> 12
}

/// Raw words → checked reading. Pure: the whole datasheet arithmetic is testable without a bus.
pub fn compensate<E>(cal: &Calibration, raw: Raw) -> Result<Measurement, Error<E>> {
    if raw.temperature == SKIPPED_20BIT {
        return Err(Error::Skipped(Quantity::Temperature));
    }
    if raw.pressure == SKIPPED_20BIT {
        return Err(Error::Skipped(Quantity::Pressure));
    }
    if raw.humidity == SKIPPED_16BIT {
        return Err(Error::Skipped(Quantity::Humidity));
    }
    let (t_fine, centi) = compensate_temperature(cal, raw.temperature);
    let centi_celsius = in_range(
        centi,
        T_MIN_CENTI,
        T_MAX_CENTI,
        Quantity::Temperature,
        100.0,
        "°C",
    )?;
    // t_fine is bounded by the temperature check above, so the pressure and humidity formulas
    // only ever see the range they were designed for.
    let p = compensate_pressure(cal, t_fine, raw.pressure).ok_or(Error::BadCalibration)?;
    in_range(p >> 8, P_MIN_PA, P_MAX_PA, Quantity::Pressure, 1.0, "Pa")?;
    // In range, so it fits: 1100 hPa · 256 < u32::MAX.
    let pressure_q24_8 = u32::try_from(p).map_err(|_| Error::BadCalibration)?;
    let h = compensate_humidity(cal, t_fine, raw.humidity);
    let humidity_q22_10 = in_range(h, 0u32, 100 * 1024, Quantity::Humidity, 1024.0, "%RH")?;
    Ok(Measurement {
        centi_celsius,
        pressure_q24_8,
        humidity_q22_10,
    })
}

fn in_range<T, V, E>(
    v: V,
    min: T,
    max: T,
    quantity: Quantity,
    scale: f64,
    unit: &'static str,
) -> Result<T, Error<E>>
where
    T: Copy + PartialOrd + Into<f64> + TryFrom<V>,
    V: Copy + Into<i128>,
{
    let wide: i128 = v.into();
    match T::try_from(v) {
        Ok(t) if t >= min && t <= max => Ok(t),
        _ => Err(Error::OutOfRange {
            quantity,
            value: wide as f64 / scale,
            min: min.into() / scale,
            max: max.into() / scale,
            unit,
        }),
    }
}

pub struct Bme280<I2C, D> {
    i2c: I2C,
    delay: D,
    address: u8,
    calibration: Calibration,
}

impl<I2C: I2c, D: DelayNs> Bme280<I2C, D> {
    /// `address` is 0x76 (SDO to GND) or 0x77 (SDO to VDDIO), section 6.2.
    pub fn new(i2c: I2C, delay: D, address: u8) -> Self {
        Bme280 {
            i2c,
            delay,
            address,
            calibration: Calibration::default(),
        }
    }

    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// Checks the chip id, soft-resets, reads the trimming parameters and configures x1
    /// oversampling in sleep mode. Run it after every power-up or bus fault.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let id = self.read_u8(REG_CHIP_ID)?;
        if id != CHIP_ID {
            return Err(Error::WrongChip { found: id });
        }
        self.write_u8(REG_RESET, RESET_WORD)?;
        self.delay.delay_ms(STARTUP_MS);
        // After reset the trimming parameters are copied from NVM into the image registers;
        // im_update is set meanwhile and they must not be read (section 5.4.4).
        self.wait_clear(
            STATUS_IM_UPDATE,
            Error::NvmBusy(STARTUP_MS + POLL_TRIES * POLL_MS),
        )?;
        let mut a = [0u8; CALIB_00_LEN];
        let mut b = [0u8; CALIB_26_LEN];
        self.i2c
            .write_read(self.address, &[REG_CALIB_00], &mut a)
            .map_err(Error::Bus)?;
        self.i2c
            .write_read(self.address, &[REG_CALIB_26], &mut b)
            .map_err(Error::Bus)?;
        self.calibration = Calibration::from_registers(&a, &b);
        // ctrl_hum first: it only takes effect with the following ctrl_meas write (5.4.3).
        self.write_u8(REG_CTRL_HUM, CTRL_HUM_X1)?;
        self.write_u8(REG_CONFIG, CONFIG_FILTER_OFF)?;
        self.write_u8(REG_CTRL_MEAS, CTRL_MEAS_X1_SLEEP)
    }

    /// Starts one forced conversion, waits for it, burst-reads and compensates it.
    pub fn read(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        self.write_u8(REG_CTRL_MEAS, CTRL_MEAS_X1_FORCED)?;
        self.delay.delay_ms(MEASURE_MAX_MS);
        self.wait_clear(
            STATUS_MEASURING,
            Error::ConversionTimeout(MEASURE_MAX_MS + POLL_TRIES * POLL_MS),
        )?;
        let mut d = [0u8; DATA_LEN];
        self.i2c
            .write_read(self.address, &[REG_DATA], &mut d)
            .map_err(Error::Bus)?;
        compensate(&self.calibration, Raw::from_registers(&d))
    }

    fn wait_clear(&mut self, bit: u8, timeout: Error<I2C::Error>) -> Result<(), Error<I2C::Error>> {
        for _ in 0..POLL_TRIES {
            if self.read_u8(REG_STATUS)? & bit == 0 {
                return Ok(());
            }
            self.delay.delay_ms(POLL_MS);
        }
        Err(timeout)
    }

    fn read_u8(&mut self, reg: u8) -> Result<u8, Error<I2C::Error>> {
        let mut buf = [0u8; 1];
        self.i2c
            .write_read(self.address, &[reg], &mut buf)
            .map_err(Error::Bus)?;
        Ok(buf[0])
    }

    fn write_u8(&mut self, reg: u8, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[reg, value])
            .map_err(Error::Bus)
    }
}

fn open(o: &Opening) -> Result<Box<dyn Sensor>, String> {
    let mut s = Bme280::new(open_i2c(&o.device)?, Delay, o.address);
    s.init().map_err(|e| init_error(o.address, e))?;
    Ok(Box::new(s))
}

impl Sensor for Bme280<I2cdev, Delay> {
    /// In [`SPEC`]'s order: temperature, humidity, pressure.
    fn read(&mut self) -> Result<Vec<f64>, String> {
        let m = Bme280::read(self).map_err(|e| e.to_string())?;
        Ok(vec![m.celsius(), m.humidity_percent(), m.hectopascal()])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    type E = ErrorKind;

    /// The worked example of the Bosch BMP280 datasheet (BST-BMP280-DS001, section 3.12): the
    /// BME280 uses the same temperature and pressure trimming registers and formulas.
    const BMP280_EXAMPLE: Calibration = Calibration {
        t1: 27504,
        t2: 26435,
        t3: -1000,
        p1: 36477,
        p2: -10685,
        p3: 3024,
        p4: 2855,
        p5: 140,
        p6: -7,
        p7: 15500,
        p8: -14600,
        p9: 6000,
        h1: 0,
        h2: 0,
        h3: 0,
        h4: 0,
        h5: 0,
        h6: 0,
    };

    #[test]
    fn datasheet_worked_example_temperature_and_pressure() {
        // adc_T = 519888 → t_fine = 128422, T = 25.08 °C.
        let (t_fine, centi) = compensate_temperature(&BMP280_EXAMPLE, 519_888);
        assert_eq!((t_fine, centi), (128_422, 2508));
        // adc_P = 415148 → 100653.27 Pa in the example (drawn from the floating-point
        // formula); the 64-bit integer formula gives 25767233 / 256 = 100653.25 Pa.
        let p = compensate_pressure(&BMP280_EXAMPLE, t_fine, 415_148);
        assert_eq!(p, Some(25_767_233));
        assert!((25_767_233.0 / 256.0 - 100_653.27f64).abs() < 0.05);
    }

    /// Calibration registers and one burst read of a real BME280 (as published with the
    /// bme280-rs crate's tests): 0x88..0xA1, then 0xE1..0xE7.
    const REAL_CALIB_00: [u8; 26] = [
        0xb1, 0x6f, 0x2e, 0x6a, 0x32, 0x00, 0xe2, 0x8f, 0x0a, 0xd7, 0xd0, 0x0b, 0x75, 0x1f, 0xc5,
        0xff, 0xf9, 0xff, 0xac, 0x26, 0x0a, 0xd8, 0xbd, 0x10, 0x00, 0x4b,
    ];
    const REAL_CALIB_26: [u8; 7] = [0x77, 0x01, 0x00, 0x12, 0x20, 0x03, 0x1e];
    /// adc_P = 0x4f570, adc_T = 0x84510, adc_H = 0x5eb4, laid out as section 5.4.7-5.4.9.
    const REAL_DATA: [u8; 8] = [0x4f, 0x57, 0x00, 0x84, 0x51, 0x00, 0x5e, 0xb4];

    fn real() -> Calibration {
        Calibration::from_registers(&REAL_CALIB_00, &REAL_CALIB_26)
    }

    #[test]
    fn calibration_registers_decode_per_table_16() {
        let c = real();
        assert_eq!((c.t1, c.t2, c.t3), (0x6fb1, 0x6a2e, 0x32));
        assert_eq!((c.p1, c.p2, c.p3, c.p4), (0x8fe2, -10486, 0x0bd0, 0x1f75));
        assert_eq!(
            (c.p5, c.p6, c.p7, c.p8, c.p9),
            (-59, -7, 0x26ac, -10230, 0x10bd)
        );
        // dig_H4 = 0x12 << 4 | 0x0 (low nibble of 0xE5), dig_H5 = 0x03 << 4 | 0x2 (high nibble).
        assert_eq!(
            (c.h1, c.h2, c.h3, c.h4, c.h5, c.h6),
            (0x4b, 0x0177, 0, 0x120, 0x32, 0x1e)
        );
    }

    #[test]
    fn negative_h4_h5_keep_their_sign() {
        // 0xE4 = 0xF0, 0xE5 = 0x5A, 0xE6 = 0xFF → H4 = 0xF00 | 0xA = -246, H5 = -16 + 5 = -11.
        let c = Calibration::from_registers(&[0; 26], &[0, 0, 0, 0xF0, 0x5A, 0xFF, 0x80]);
        assert_eq!((c.h4, c.h5, c.h6), (-246, -11, -128));
    }

    #[test]
    fn raw_words_are_assembled_msb_first_xlsb_high_nibble() {
        let r = Raw::from_registers(&REAL_DATA);
        assert_eq!(
            (r.pressure, r.temperature, r.humidity),
            (0x4f570, 0x84510, 0x5eb4)
        );
        // xlsb's low nibble is not data (section 5.4.7).
        let r = Raw::from_registers(&[0, 0, 0x0F, 0, 0, 0x1F, 0, 0]);
        assert_eq!((r.pressure, r.temperature), (0, 1));
    }

    /// Section 8.1's double-precision formulas: an independent check of the integer port.
    fn float_reference(c: &Calibration, r: Raw) -> (f64, f64, f64) {
        let (t1, t2, t3) = (f64::from(c.t1), f64::from(c.t2), f64::from(c.t3));
        let adc_t = f64::from(r.temperature);
        let v1 = (adc_t / 16384.0 - t1 / 1024.0) * t2;
        let v2 = (adc_t / 131072.0 - t1 / 8192.0).powi(2) * t3;
        let t_fine = (v1 + v2).trunc();
        let t = (v1 + v2) / 5120.0;
        let mut v1 = t_fine / 2.0 - 64000.0;
        let mut v2 = v1 * v1 * f64::from(c.p6) / 32768.0;
        v2 += v1 * f64::from(c.p5) * 2.0;
        v2 = v2 / 4.0 + f64::from(c.p4) * 65536.0;
        v1 = (f64::from(c.p3) * v1 * v1 / 524288.0 + f64::from(c.p2) * v1) / 524288.0;
        v1 = (1.0 + v1 / 32768.0) * f64::from(c.p1);
        let mut p = 1048576.0 - f64::from(r.pressure);
        p = (p - v2 / 4096.0) * 6250.0 / v1;
        let v1 = f64::from(c.p9) * p * p / 2147483648.0;
        let v2 = p * f64::from(c.p8) / 32768.0;
        p += (v1 + v2 + f64::from(c.p7)) / 16.0;
        let x = t_fine - 76800.0;
        let mut h = (f64::from(r.humidity)
            - (f64::from(c.h4) * 64.0 + f64::from(c.h5) / 16384.0 * x))
            * (f64::from(c.h2) / 65536.0
                * (1.0
                    + f64::from(c.h6) / 67108864.0 * x * (1.0 + f64::from(c.h3) / 67108864.0 * x)));
        h *= 1.0 - f64::from(c.h1) * h / 524288.0;
        (t, p, h)
    }

    #[test]
    fn real_sensor_sample_compensates_and_matches_the_float_formulas() {
        let raw = Raw::from_registers(&REAL_DATA);
        let m = compensate::<E>(&real(), raw).unwrap();
        // t_fine = 0x22391; 27.38 °C, 0x018b663f / 256 Pa, 0x8399 / 1024 %RH.
        assert_eq!(m.centi_celsius, 2738);
        assert_eq!(m.pressure_q24_8, 0x018b_663f);
        assert_eq!(m.humidity_q22_10, 0x8399);
        let (t, p, h) = float_reference(&real(), raw);
        assert!((m.celsius() - t).abs() < 0.01, "{} vs {t}", m.celsius());
        assert!((m.pascal() - p).abs() < 0.5, "{} vs {p}", m.pascal());
        assert!(
            (m.humidity_percent() - h).abs() < 0.01,
            "{} vs {h}",
            m.humidity_percent()
        );
        assert!((m.hectopascal() - 1012.22).abs() < 0.01);
    }

    #[test]
    fn integer_port_tracks_the_float_formulas_across_the_range() {
        // Sweep raw values over the sensor's span: every in-range result must agree with the
        // datasheet's floating-point version; everything else must be a typed error.
        let c = real();
        let mut checked = 0;
        for t in (0x6_0000..0xA_0000).step_by(0x3_1F7) {
            for p in (0x2_0000..0x7_0000).step_by(0x7_3A1) {
                for h in (0x2000..0xA000).step_by(0xB03) {
                    let raw = Raw {
                        pressure: p,
                        temperature: t,
                        humidity: h,
                    };
                    match compensate::<E>(&c, raw) {
                        Ok(m) => {
                            let (ft, fp, fh) = float_reference(&c, raw);
                            assert!((m.celsius() - ft).abs() < 0.01, "{raw:?}");
                            assert!((m.pascal() - fp).abs() < 1.0, "{raw:?}");
                            assert!((m.humidity_percent() - fh).abs() < 0.02, "{raw:?}");
                            checked += 1;
                        }
                        Err(Error::OutOfRange { .. }) => {}
                        Err(e) => panic!("{raw:?}: {e}"),
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} in-range samples");
    }

    #[test]
    fn skipped_markers_are_errors() {
        let mut d = REAL_DATA;
        d[3..6].copy_from_slice(&[0x80, 0x00, 0x00]);
        assert!(matches!(
            compensate::<E>(&real(), Raw::from_registers(&d)),
            Err(Error::Skipped(Quantity::Temperature))
        ));
        let mut d = REAL_DATA;
        d[0..3].copy_from_slice(&[0x80, 0x00, 0x00]);
        assert!(matches!(
            compensate::<E>(&real(), Raw::from_registers(&d)),
            Err(Error::Skipped(Quantity::Pressure))
        ));
        let mut d = REAL_DATA;
        d[6..8].copy_from_slice(&[0x80, 0x00]);
        assert!(matches!(
            compensate::<E>(&real(), Raw::from_registers(&d)),
            Err(Error::Skipped(Quantity::Humidity))
        ));
    }

    #[test]
    fn humidity_above_100_percent_is_an_error_not_a_clamped_reading() {
        let mut raw = Raw::from_registers(&REAL_DATA);
        raw.humidity = 0xFFFF;
        match compensate::<E>(&real(), raw) {
            Err(Error::OutOfRange {
                quantity: Quantity::Humidity,
                value,
                max,
                ..
            }) => assert!(value > 100.0 && max == 100.0, "{value}"),
            other => panic!("{other:?}"),
        }
        raw.humidity = 0;
        assert!(matches!(
            compensate::<E>(&real(), raw),
            Err(Error::OutOfRange {
                quantity: Quantity::Humidity,
                ..
            })
        ));
    }

    #[test]
    fn temperature_and_pressure_outside_the_operating_range_are_errors() {
        let mut raw = Raw::from_registers(&REAL_DATA);
        raw.temperature = 0xF_FFFF; // all-ones: a floating bus, not weather
        let e = compensate::<E>(&real(), raw).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange { quantity: Quantity::Temperature, value, .. } if value > 85.0),
            "{e}"
        );
        let mut raw = Raw::from_registers(&REAL_DATA);
        raw.pressure = 0x0_0001; // far above 1100 hPa
        let e = compensate::<E>(&real(), raw).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange { quantity: Quantity::Pressure, value, .. } if value > 110_000.0),
            "{e}"
        );
    }

    #[test]
    fn zero_dig_p1_is_a_calibration_error_not_a_zero_pressure() {
        let mut c = real();
        c.p1 = 0;
        assert!(matches!(
            compensate::<E>(&c, Raw::from_registers(&REAL_DATA)),
            Err(Error::BadCalibration)
        ));
    }

    fn init_transactions(addr: u8) -> Vec<Transaction> {
        vec![
            Transaction::write_read(addr, vec![0xD0], vec![0x60]),
            Transaction::write(addr, vec![0xE0, 0xB6]),
            // im_update still set once, then clear.
            Transaction::write_read(addr, vec![0xF3], vec![0x01]),
            Transaction::write_read(addr, vec![0xF3], vec![0x00]),
            Transaction::write_read(addr, vec![0x88], REAL_CALIB_00.to_vec()),
            Transaction::write_read(addr, vec![0xE1], REAL_CALIB_26.to_vec()),
            Transaction::write(addr, vec![0xF2, 0x01]),
            Transaction::write(addr, vec![0xF5, 0x00]),
            Transaction::write(addr, vec![0xF4, 0x24]),
        ]
    }

    #[test]
    fn init_then_forced_read_uses_the_datasheet_transactions() {
        let mut ex = init_transactions(0x77);
        ex.extend([
            Transaction::write(0x77, vec![0xF4, 0x25]),
            // measuring (bit 3) still set once; im_update (bit 0) is ignored here.
            Transaction::write_read(0x77, vec![0xF3], vec![0x09]),
            Transaction::write_read(0x77, vec![0xF3], vec![0x01]),
            Transaction::write_read(0x77, vec![0xF7], REAL_DATA.to_vec()),
        ]);
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x77);
        s.init().unwrap();
        assert_eq!(s.calibration(), &real());
        let m = s.read().unwrap();
        assert_eq!(m.centi_celsius, 2738);
        assert_eq!(m.humidity_q22_10, 0x8399);
        i2c.done();
    }

    #[test]
    fn wrong_chip_id_stops_before_reset() {
        // A BMP280 (0x58) answers at the same addresses but has no humidity.
        let ex = [Transaction::write_read(0x76, vec![0xD0], vec![0x58])];
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x76);
        let e = s.init().unwrap_err();
        assert!(matches!(e, Error::WrongChip { found: 0x58 }), "{e}");
        assert!(e.to_string().contains("0x58"));
        i2c.done();
    }

    #[test]
    fn stuck_status_bits_time_out() {
        let mut ex = vec![
            Transaction::write_read(0x76, vec![0xD0], vec![0x60]),
            Transaction::write(0x76, vec![0xE0, 0xB6]),
        ];
        ex.extend((0..POLL_TRIES).map(|_| Transaction::write_read(0x76, vec![0xF3], vec![0x01])));
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x76);
        assert!(matches!(s.init(), Err(Error::NvmBusy(_))));
        i2c.done();

        let mut ex = vec![Transaction::write(0x76, vec![0xF4, 0x25])];
        ex.extend((0..POLL_TRIES).map(|_| Transaction::write_read(0x76, vec![0xF3], vec![0x08])));
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x76);
        assert!(matches!(s.read(), Err(Error::ConversionTimeout(_))));
        i2c.done();
    }

    #[test]
    fn bus_errors_are_returned_not_values() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let ex = [Transaction::write_read(0x76, vec![0xD0], vec![0]).with_error(nack)];
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x76);
        assert!(matches!(
            s.init(),
            Err(Error::Bus(ErrorKind::NoAcknowledge(_)))
        ));
        i2c.done();

        let ex = [
            Transaction::write(0x76, vec![0xF4, 0x25]),
            Transaction::write_read(0x76, vec![0xF3], vec![0x00]),
            Transaction::write_read(0x76, vec![0xF7], vec![0; 8]).with_error(ErrorKind::Bus),
        ];
        let mut i2c = Mock::new(&ex);
        let mut s = Bme280::new(i2c.clone(), NoopDelay, 0x76);
        assert!(matches!(s.read(), Err(Error::Bus(ErrorKind::Bus))));
        i2c.done();
    }
}
