//! Microchip MCP3008 8-channel 10-bit ADC over SPI.
//!
//! Why hand-written: `adc-mcp3008` 0.1.1 is built on embedded-hal 0.1 and `mcp3008` 1.0 talks to
//! spidev directly; neither takes an embedded-hal 1.0 `SpiDevice`.
//!
//! Datasheet (Microchip DS21295, section 6.1 "Using the MCP3004/3008 with microcontroller SPI
//! ports", figure 6-1): one conversion is three bytes in one chip-select frame, SPI mode 0,0 or
//! 1,1.
//!
//! | byte | MCU sends                        | MCP3008 answers               |
//! |------|----------------------------------|-------------------------------|
//! | 0    | 0000_0001 (start bit last)       | don't care (hi-Z)             |
//! | 1    | SGL/DIFF D2 D1 D0, then 4 × X    | ???? ? null(0) B9 B8          |
//! | 2    | XXXX_XXXX                        | B7 .. B0                      |
//!
//! Table 5-2: SGL/DIFF = 1 with D2..D0 = the channel selects single-ended CH0..CH7.
//! Equation 4-1: code = 1024 · VIN / VREF, so VIN = code · VREF / 1024.

use std::path::Path;

use embedded_hal::spi::SpiDevice;
use linux_embedded_hal::SpidevDevice;

use super::spec::{Bus, Component, DriverSpec, Key, Opening, Quantity, Run, Sensor};

/// One single-ended input in volts (`driver = "mcp3008"`).
pub const SPEC: DriverSpec = DriverSpec {
    name: "mcp3008",
    bus: Bus::Spi,
    requires: &["device", "channel"],
    keys: &[
        Key {
            name: "channel",
            default: 0.0,
            min: 0.0,
            min_exclusive: false,
            max: (CHANNELS - 1) as f64,
            unit: "",
        },
        // VREF sets the scale; the part runs at 2.7..5.5 V.
        Key {
            name: "vref",
            default: 3.3,
            min: 0.0,
            min_exclusive: true,
            max: 5.5,
            unit: "V",
        },
    ],
    quantities: &[Quantity::own("V", Some("voltage"))],
    component: Component::Sensor,
    range: None,
    run: Run::Poll(open),
};

const START: u8 = 0b0000_0001;
const SINGLE_ENDED: u8 = 0b1000_0000;
/// The device drives a 0 "null bit" right before B9 (section 5.1). A 1 there means nothing
/// drove MISO: no chip, no power, or a broken wire reading the pull-up's 0xFF.
const NULL_BIT: u8 = 0b0000_0100;
pub const CHANNELS: u8 = 8;
const FULL_SCALE: u16 = 1024;

/// Section 1 electrical characteristics: fCLK max 3.6 MHz at VDD = 5 V, 1.35 MHz at 2.7 V.
/// 1 MHz is inside both; the clock must also stay above ~10 kHz or the sample capacitor droops
/// (section 6.2), which no spidev speed setting here gets near.
pub const SPI_HZ: u32 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    #[error("SPI bus error: {0:?}")]
    Bus(E),
    #[error("channel {0} does not exist: the MCP3008 has single-ended channels 0..=7")]
    Channel(u8),
    #[error("null bit read as 1 (answer {0:02x?}): MISO is not driven by an MCP3008")]
    NoDevice([u8; 3]),
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("reference voltage {0} V must be a finite value above 0 (it is VREF, pin 15)")]
pub struct BadVref(pub f32);

/// The three bytes that request a single-ended conversion of `channel`.
pub fn command(channel: u8) -> Result<[u8; 3], u8> {
    if channel >= CHANNELS {
        return Err(channel);
    }
    Ok([START, SINGLE_ENDED | (channel << 4), 0x00])
}

/// The 10-bit code from the three answer bytes, or None if the null bit is not 0.
pub fn decode(answer: [u8; 3]) -> Option<u16> {
    if answer[1] & NULL_BIT != 0 {
        return None;
    }
    Some((u16::from(answer[1] & 0b11) << 8) | u16::from(answer[2]))
}

pub fn code_to_volts(code: u16, vref: f32) -> f32 {
    f32::from(code) * vref / f32::from(FULL_SCALE)
}

pub struct Mcp3008<SPI> {
    spi: SPI,
    vref: f32,
}

impl<SPI: SpiDevice> Mcp3008<SPI> {
    /// `vref` is the voltage on VREF (pin 15), often tied to VDD.
    pub fn new(spi: SPI, vref: f32) -> Result<Self, BadVref> {
        if !(vref.is_finite() && vref > 0.0) {
            return Err(BadVref(vref));
        }
        Ok(Mcp3008 { spi, vref })
    }

    /// One conversion of single-ended `channel`: 0..=1023.
    pub fn read_raw(&mut self, channel: u8) -> Result<u16, Error<SPI::Error>> {
        let mut buf = command(channel).map_err(Error::Channel)?;
        // One transfer inside one CS frame: CS going high aborts the conversion (section 6.1).
        self.spi.transfer_in_place(&mut buf).map_err(Error::Bus)?;
        decode(buf).ok_or(Error::NoDevice(buf))
    }

    /// One conversion of `channel` scaled to volts with the configured VREF.
    pub fn read_volts(&mut self, channel: u8) -> Result<f32, Error<SPI::Error>> {
        Ok(code_to_volts(self.read_raw(channel)?, self.vref))
    }
}

/// Opens `/dev/spidevB.C` with the MCP3008's bus settings (mode 0, 8-bit words, [`SPI_HZ`]).
pub fn open_spidev(path: &Path) -> std::io::Result<linux_embedded_hal::SpidevDevice> {
    use linux_embedded_hal::spidev::{SpiModeFlags, SpidevOptions};
    let mut dev = linux_embedded_hal::SpidevDevice::open(path)
        .map_err(|e| std::io::Error::new(e.inner().kind(), format!("{}: {e}", path.display())))?;
    dev.configure(
        &SpidevOptions::new()
            .bits_per_word(8)
            .max_speed_hz(SPI_HZ)
            .mode(SpiModeFlags::SPI_MODE_0)
            .build(),
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: configure: {e}", path.display())))?;
    Ok(dev)
}

fn open(o: &Opening) -> Result<Box<dyn Sensor>, String> {
    let spi = open_spidev(&o.device).map_err(|e| format!("{}: {e}", o.device.display()))?;
    let adc = Mcp3008::new(spi, o.key("vref") as f32).map_err(|e| format!("vref {}", e.0))?;
    // The config checked the channel against SPEC's range.
    Ok(Box::new(Input(adc, o.key("channel") as u8)))
}

struct Input(Mcp3008<SpidevDevice>, u8);

impl Sensor for Input {
    fn read(&mut self) -> Result<Vec<f64>, String> {
        Ok(vec![self
            .0
            .read_volts(self.1)
            .map_err(|e| e.to_string())?
            .into()])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use embedded_hal::spi::ErrorKind;
    use embedded_hal_mock::eh1::spi::{Mock, Transaction};

    fn frame(sent: [u8; 3], answer: [u8; 3]) -> [Transaction<u8>; 3] {
        [
            Transaction::transaction_start(),
            Transaction::transfer_in_place(sent.to_vec(), answer.to_vec()),
            Transaction::transaction_end(),
        ]
    }

    #[test]
    fn table_5_2_single_ended_channel_selection() {
        // SGL/DIFF D2 D1 D0 in the high nibble of the second byte: 1000 = CH0 .. 1111 = CH7.
        let expected = [0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0];
        for (ch, second) in expected.into_iter().enumerate() {
            assert_eq!(command(ch as u8), Ok([0x01, second, 0x00]));
        }
        assert_eq!(command(8), Err(8));
        assert_eq!(command(0xFF), Err(0xFF));
    }

    #[test]
    fn figure_6_1_answer_bits() {
        // Bits above the null bit are undriven and ignored; B9 B8 are bits 1..0 of byte 1.
        assert_eq!(decode([0xFF, 0b1111_1011, 0xFF]), Some(1023));
        assert_eq!(decode([0x00, 0b0000_0010, 0x00]), Some(512));
        assert_eq!(decode([0x00, 0b0000_0001, 0x55]), Some(0x155));
        assert_eq!(decode([0x00, 0x00, 0x00]), Some(0));
        // Floating MISO reads all ones: the null bit is 1.
        assert_eq!(decode([0xFF, 0xFF, 0xFF]), None);
    }

    #[test]
    fn equation_4_1_scaling() {
        assert_eq!(code_to_volts(0, 3.3), 0.0);
        assert_eq!(code_to_volts(512, 3.3), 1.65);
        assert_eq!(code_to_volts(1023, 5.0), 5.0 * 1023.0 / 1024.0);
    }

    #[test]
    fn every_channel_reads_its_own_frame_and_scales() {
        // A different code per channel: a driver that ignored the channel or mixed up the
        // answer bytes would not reproduce them.
        let codes: [u16; 8] = [0, 1, 0x0FF, 0x100, 0x2A5, 0x155, 0x3FE, 0x3FF];
        let mut ex = Vec::new();
        for (ch, code) in codes.iter().enumerate() {
            let [hi, lo] = code.to_be_bytes();
            ex.extend(frame(
                [0x01, 0x80 | ((ch as u8) << 4), 0x00],
                [0xFF, 0xF8 | hi, lo],
            ));
        }
        let mut spi = Mock::new(&ex);
        let mut adc = Mcp3008::new(spi.clone(), 3.3).unwrap();
        for (ch, code) in codes.iter().enumerate() {
            let v = adc.read_volts(ch as u8).unwrap();
            assert_eq!(v, f32::from(*code) * 3.3 / 1024.0, "channel {ch}");
        }
        spi.done();
    }

    #[test]
    fn channel_above_7_is_rejected_without_bus_traffic() {
        let mut spi = Mock::new(&[]);
        let mut adc = Mcp3008::new(spi.clone(), 3.3).unwrap();
        let e = adc.read_raw(8).unwrap_err();
        assert!(matches!(e, Error::Channel(8)));
        assert!(e.to_string().contains("0..=7"));
        spi.done();
    }

    #[test]
    fn absent_chip_is_an_error_not_full_scale() {
        let mut spi = Mock::new(&frame([0x01, 0xB0, 0x00], [0xFF, 0xFF, 0xFF]));
        let mut adc = Mcp3008::new(spi.clone(), 3.3).unwrap();
        assert!(matches!(
            adc.read_raw(3),
            Err(Error::NoDevice([0xFF, 0xFF, 0xFF]))
        ));
        spi.done();
    }

    /// embedded-hal-mock 0.11's SPI mock cannot inject errors: a device whose bus always fails.
    struct FailingSpi;
    impl embedded_hal::spi::ErrorType for FailingSpi {
        type Error = ErrorKind;
    }
    impl SpiDevice for FailingSpi {
        fn transaction(
            &mut self,
            _: &mut [embedded_hal::spi::Operation<'_, u8>],
        ) -> Result<(), ErrorKind> {
            Err(ErrorKind::ModeFault)
        }
    }

    #[test]
    fn bus_error_is_returned_not_a_value() {
        let mut adc = Mcp3008::new(FailingSpi, 3.3).unwrap();
        let e = adc.read_volts(0).unwrap_err();
        assert!(matches!(e, Error::Bus(ErrorKind::ModeFault)), "{e}");
    }

    #[test]
    fn vref_must_be_positive_and_finite() {
        for bad in [0.0, -3.3, f32::NAN, f32::INFINITY] {
            assert!(Mcp3008::new(FailingSpi, bad).is_err(), "{bad}");
        }
        assert!(Mcp3008::new(FailingSpi, 1.024).is_ok());
    }
}
