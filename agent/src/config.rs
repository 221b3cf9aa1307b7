//! The agent's TOML configuration (`/etc/betaas/agent.toml`).
//!
//! Every error names the file, the line and the field (`things[1].address`), so a user editing the
//! config on a gateway over a serial console knows exactly what to fix.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's id: the second level of every topic. Letters, digits, `-` and `_`.
    pub gateway_id: TopicLevel,
    /// Persistent data (journal, resource history). Must survive reboots.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_log_level")]
    pub log_level: LogLevel,
    pub mqtt: Mqtt,
    #[serde(default, rename = "things")]
    pub things: Vec<Thing>,
    /// The resource monitor; the section and each key are optional.
    #[serde(default)]
    pub resources: Resources,
}

/// `[resources]`: sampling and the Holt forecast of free resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_sample_interval")]
    pub sample_interval_secs: Seconds,
    /// Samples kept (and persisted under `data_dir/resources/`); the oldest are dropped.
    #[serde(default = "default_history_len")]
    pub history_len: Count,
    /// Samples between two writes of the history: bounds SD card wear (and what a power cut loses).
    #[serde(default = "default_persist_every")]
    pub persist_every: Count,
    /// Holt level smoothing, 0..=1.
    #[serde(default = "default_alpha")]
    pub alpha: Smoothing,
    /// Holt trend smoothing, 0..=1.
    #[serde(default = "default_beta")]
    pub beta: Smoothing,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            sample_interval_secs: default_sample_interval(),
            history_len: default_history_len(),
            persist_every: default_persist_every(),
            alpha: default_alpha(),
            beta: default_beta(),
        }
    }
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// The first level of every topic.
    #[serde(default = "default_prefix")]
    pub prefix: TopicLevel,
    /// Defaults to `betaas-<gateway_id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: Seconds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thing {
    pub id: TopicLevel,
    pub driver: Driver,
    /// The I2C character device, e.g. `/dev/i2c-0`.
    pub bus: PathBuf,
    pub address: I2cAddress,
    #[serde(default = "default_interval")]
    pub interval_ms: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// TI TMP105 and the LM75 register family (TMP75, TMP175, LM75B) in 12-bit mode.
    Tmp105,
}

impl Driver {
    pub fn unit(self) -> &'static str {
        match self {
            Driver::Tmp105 => "°C",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// One MQTT topic level: no `/`, `+`, `#`, not empty, at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicLevel(String);

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

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/betaas")
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}
fn default_port() -> u16 {
    1883
}
fn default_prefix() -> TopicLevel {
    TopicLevel("betaas".into())
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_sample_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
}
fn default_history_len() -> Count {
    Count(1440) // one day at the default interval
}
fn default_persist_every() -> Count {
    Count(10)
}
fn default_alpha() -> Smoothing {
    Smoothing(0.5)
}
fn default_beta() -> Smoothing {
    Smoothing(0.3)
}
fn default_interval() -> Millis {
    Millis(Duration::from_secs(5))
}

/// A config error with its place in the file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not about a place in the file (e.g. it cannot be read).
    pub line: usize,
    /// Dotted path of the field, e.g. `things[1].address`; empty when unknown.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, field) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, String::new()),
            };
            ConfigError {
                file: path.to_owned(),
                line,
                field,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.check(path, text)?;
        Ok(config)
    }

    /// Checks that span several fields (serde checks one field at a time).
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, thing) in self.things.iter().enumerate() {
            if !seen.insert(&thing.id) {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: nth_table_line(text, "things", i),
                    field: format!("things[{i}].id"),
                    message: format!("duplicate thing id {:?}: ids must be unique", thing.id.0),
                });
            }
        }
        Ok(())
    }
}

/// Line (1-based) and dotted field path of byte offset `at`, found by scanning table headers
/// and `key =` lines above it. toml's errors carry the span but not the field name.
fn locate(text: &str, at: usize) -> (usize, String) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    // Headers up to and including the error's line: a missing field points at its table's header.
    let line_end = text[before.len()..]
        .find('\n')
        .map_or(text.len(), |i| before.len() + i);
    for l in text[..line_end].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    let this_line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    let key = match this_line.split_once('=') {
        Some((k, _)) if !this_line.trim_start().starts_with('[') => k.trim().trim_matches('"'),
        _ => "",
    };
    let field = match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    (line, field)
}

fn nth_table_line(text: &str, name: &str, n: usize) -> usize {
    let header = format!("[[{name}]]");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim().replace(' ', "") == header)
        .nth(n)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway_id = "gw-1"

[mqtt]
host = "10.0.2.2"

[[things]]
id = "t0"
driver = "tmp105"
bus = "/dev/i2c-0"
address = 0x48

[[things]]
id = "t1"
driver = "tmp105"
bus = "/dev/i2c-0"
address = 0x49
interval_ms = 250
"#;

    fn err(text: &str) -> ConfigError {
        Config::parse(Path::new("/etc/betaas/agent.toml"), text).unwrap_err()
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.gateway_id.to_string(), "gw-1");
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.mqtt.prefix.to_string(), "betaas");
        assert_eq!(c.things.len(), 2);
        assert_eq!(c.things[0].address, I2cAddress(0x48));
        assert_eq!(c.things[0].interval_ms.0, Duration::from_secs(5));
        assert_eq!(c.things[1].interval_ms.0, Duration::from_millis(250));
    }

    #[test]
    fn bad_address_names_file_line_and_field() {
        let e = err(&GOOD.replace("0x49", "0x80"));
        assert_eq!(e.line, 17);
        assert_eq!(e.field, "things[1].address");
        let s = e.to_string();
        assert!(
            s.starts_with("/etc/betaas/agent.toml:17: field `things[1].address`"),
            "{s}"
        );
        assert!(s.contains("0x08..=0x77"), "{s}");
    }

    #[test]
    fn unknown_driver_lists_accepted_values() {
        let e = err(&GOOD.replacen("tmp105", "ds18b20", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].driver"));
        assert!(e.message.contains("tmp105"), "{}", e.message);
    }

    #[test]
    fn missing_field_is_named() {
        let e = err("gateway_id = \"g\"\n[mqtt]\nport = 1\n");
        assert_eq!(e.field, "mqtt");
        assert!(e.message.contains("missing field `host`"), "{}", e.message);
    }

    #[test]
    fn wrong_type_and_unknown_key() {
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "host = \"h\"\nport = \"x\""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.port"));
        let e = err(&GOOD.replace("interval_ms = 250", "intervall_ms = 250"));
        assert_eq!(e.field, "things[1].intervall_ms");
        assert!(e.message.contains("interval_ms"), "{}", e.message);
    }

    #[test]
    fn duplicate_ids_and_bad_ids_rejected() {
        let e = err(&GOOD.replace("\"t1\"", "\"t0\""));
        assert_eq!((e.line, e.field.as_str()), (13, "things[1].id"));
        let e = err(&GOOD.replace("\"t1\"", "\"a/b\""));
        assert_eq!(e.field, "things[1].id");
        let e = err(&GOOD.replace("gw-1", "gw+1"));
        assert_eq!((e.line, e.field.as_str()), (2, "gateway_id"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err("gateway_id = \"g\"\n[mqtt\nhost = 1\n");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn resources_section_defaults_and_errors() {
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(c.resources.sample_interval_secs.0, Duration::from_secs(60));
        assert_eq!(
            (c.resources.history_len, c.resources.persist_every),
            (Count(1440), Count(10))
        );
        assert_eq!(
            (c.resources.alpha, c.resources.beta),
            (Smoothing(0.5), Smoothing(0.3))
        );
        let text = format!("{GOOD}\n[resources]\nhistory_len = 60\nalpha = 0.8\n");
        let c = Config::parse(Path::new("a.toml"), &text).unwrap();
        assert_eq!(
            (c.resources.history_len, c.resources.alpha),
            (Count(60), Smoothing(0.8))
        );
        assert_eq!(c.resources.beta, Smoothing(0.3));
        let e = err(&format!("{GOOD}\n[resources]\nalpha = 0.8\nbeta = 1.5\n"));
        assert_eq!((e.line, e.field.as_str()), (22, "resources.beta"));
        assert!(e.message.contains("0..=1"), "{}", e.message);
        let e = err(&format!("{GOOD}\n[resources]\npersist_every = 0\n"));
        assert_eq!(e.field, "resources.persist_every");
        let e = err(&format!("{GOOD}\n[resources]\nsample_interval = 5\n"));
        assert!(e.message.contains("sample_interval_secs"), "{}", e.message);
    }

    #[test]
    fn unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/agent.toml: cannot read"),
            "{e}"
        );
    }
}
