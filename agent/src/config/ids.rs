//! Validated values of the config: ids and topic levels, addresses, durations, factors, counts.
//! A leaf: it names nothing of the agent, so every module may use it without a cycle.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

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

/// One MQTT topic level: no `/`, `+`, `#`, not empty, at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicLevel(pub(super) String);

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
