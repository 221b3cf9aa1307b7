//! The agent's TOML configuration (`/etc/betaas/agent.toml`).
//!
//! Every error names the file, the line and the field (`things[1].address`), so a user editing the
//! config on a gateway over a serial console knows exactly what to fix.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod api;
mod files;
pub mod ids;
pub mod instance;
pub mod journal;
pub mod mqtt;
pub mod resources;
pub mod thing;

pub use files::{private_file, read_password_file};
pub use ids::{Count, I2cAddress, Millis, Seconds, Smoothing, TopicLevel};
pub use instance::{InstanceConfig, InstanceKey, TemplateConfig, VmCapacity};
pub use journal::{FsyncMode, JournalConfig};
pub use mqtt::{Mqtt, Node, Tls};
pub use resources::Resources;
pub use thing::{Bus, Driver, DriverSpec, Kind, Thing};

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
    /// The store-and-forward journal under `data_dir/journal`.
    #[serde(default)]
    pub journal: JournalConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// `[instance]`: membership of a local cloud (absent: this gateway works alone).
    pub instance: Option<InstanceConfig>,
    /// `[[clouds]]`: remote clouds this gateway holds credentials for, tried in order.
    #[serde(default)]
    pub clouds: Vec<crate::cloud::config::CloudConfig>,
    /// `[api]`: the local REST API and web UI (absent: off).
    pub api: Option<api::ApiConfig>,
}

/// `[health]`: the agent's own health on `<prefix>/<gateway>/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_health_interval")]
    pub interval_secs: Seconds,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: default_health_interval(),
        }
    }
}

fn default_health_interval() -> Seconds {
    Seconds(Duration::from_secs(60))
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

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/betaas")
}
fn default_log_level() -> LogLevel {
    LogLevel::Info
}

/// A config error with its place in the file.
pub type ConfigError = betaas_tomlplace::PlacedError;

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
        let mut config = config;
        config.mqtt.nodes = config.mqtt.resolve_nodes(path, text)?;
        config.mqtt.host = config.mqtt.nodes[0].host.clone();
        config.mqtt.port = config.mqtt.nodes[0].port;
        config.check(path, text)?;
        Ok(config)
    }

    /// Checks that span several fields (serde checks one field at a time).
    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let err = |i: usize, key: &str, message: String| ConfigError {
            file: path.to_owned(),
            line: key_line(text, "things", i, key),
            field: format!("things[{i}].{key}"),
            message,
        };
        if let Some(tls) = &self.mqtt.tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: text
                        .lines()
                        .position(|l| l.trim() == "[mqtt.tls]")
                        .map_or(0, |i| i + 1),
                    field: "mqtt.tls".into(),
                    message: "`cert` and `key` go together: give both or neither".into(),
                });
            }
        }
        let at = |table: &str, key: &str| key_line(text, table, 0, key);
        match (&self.mqtt.username, &self.mqtt.password_file) {
            (Some(_), None) | (None, Some(_)) => {
                let (key, other) = if self.mqtt.username.is_some() {
                    ("username", "password_file")
                } else {
                    ("password_file", "username")
                };
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: at("mqtt", key),
                    field: format!("mqtt.{key}"),
                    message: format!("`username` and `password_file` go together: add `{other}`"),
                });
            }
            (Some(u), Some(_)) if u.is_empty() || u.chars().any(char::is_control) => {
                return Err(ConfigError {
                    file: path.to_owned(),
                    line: at("mqtt", "username"),
                    field: "mqtt.username".into(),
                    message: "must be a non-empty name without control characters".into(),
                });
            }
            _ => {}
        }
        if let Some((key, message)) = self.instance.as_ref().and_then(InstanceConfig::problem) {
            let (line, field) = key.place(text);
            return Err(ConfigError {
                file: path.to_owned(),
                line,
                field,
                message,
            });
        }
        let own = format!("{}/{}/", self.mqtt.prefix, self.gateway_id);
        let mut seen = HashSet::new();
        for (i, thing) in self.things.iter().enumerate() {
            if let Some((key, message)) = thing.problem() {
                return Err(err(i, key, message));
            }
            if thing.topic.as_deref().is_some_and(|t| t.starts_with(&own)) {
                return Err(err(
                    i,
                    "topic",
                    format!("{own}… is this gateway's own tree: it would loop"),
                ));
            }
            for id in thing.published_ids() {
                if !seen.insert(id.clone()) {
                    return Err(err(
                        i,
                        "id",
                        format!("duplicate thing id {id:?}: ids must be unique"),
                    ));
                }
            }
        }
        if let Err((i, e)) =
            crate::discovery::messages(&self.gateway_id, &self.mqtt.prefix, &self.things)
        {
            return Err(err(
                i,
                "device_class",
                format!("Home Assistant discovery: {e}"),
            ));
        }
        if let Some((key, message)) = self.api.as_ref().and_then(api::ApiConfig::problem) {
            return Err(ConfigError {
                file: path.to_owned(),
                line: at("api", key),
                field: format!("api.{key}"),
                message,
            });
        }
        if let Some((i, key, message)) = crate::cloud::config::problem(&self.clouds) {
            return Err(ConfigError {
                file: path.to_owned(),
                line: key_line(text, "clouds", i, key),
                field: format!("clouds[{i}].{key}"),
                message,
            });
        }
        Ok(())
    }
}

use betaas_tomlplace::locate;

/// Line of `key` in the n-th `[[name]]` table, else of its header.
pub(crate) fn key_line(text: &str, name: &str, n: usize, key: &str) -> usize {
    betaas_tomlplace::key_line(text, name, n, key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway_id = "gw-1"

[mqtt]
host = "10.0.2.2"

[[things]]
id = "t0"
driver = "tmp105"
bus = "i2c"
address = 0x48
device = "/dev/i2c-0"

[[things]]
id = "t1"
driver = "tmp105"
bus = "i2c"
address = 0x49
interval_ms = 250
device = "/dev/i2c-0"
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
        assert_eq!(c.things[0].address, Some(I2cAddress(0x48)));
        assert_eq!(c.things[0].interval_ms.0, Duration::from_secs(5));
        assert_eq!(c.things[1].interval_ms.0, Duration::from_millis(250));
    }

    #[test]
    fn bad_address_names_file_line_and_field() {
        let e = err(&GOOD.replace("0x49", "0x80"));
        assert_eq!(e.line, 18);
        assert_eq!(e.field, "things[1].address");
        let s = e.to_string();
        assert!(
            s.starts_with("/etc/betaas/agent.toml:18: field `things[1].address`"),
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
    fn hosts_lists_the_nodes_of_a_clustered_broker() {
        let c = Config::parse(
            Path::new("a.toml"),
            &GOOD.replace(
                "host = \"10.0.2.2\"",
                "hosts = [\"node-a:1884\", \"10.0.0.2\", \"[fd00::3]:8883\"]\nconnect_timeout_secs = 2",
            ),
        )
        .unwrap();
        let nodes: Vec<String> = c.mqtt.nodes.iter().map(ToString::to_string).collect();
        assert_eq!(nodes, ["node-a:1884", "10.0.0.2:1883", "[fd00::3]:8883"]);
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("node-a", 1884));
        assert_eq!(c.mqtt.connect_timeout_secs.0, Duration::from_secs(2));
        // The one-host form is one node, with the default timeout.
        let c = Config::parse(Path::new("a.toml"), GOOD).unwrap();
        assert_eq!(
            c.mqtt.nodes,
            [Node {
                host: "10.0.2.2".into(),
                port: 1883
            }]
        );
        assert_eq!(c.mqtt.connect_timeout_secs.0, Duration::from_secs(5));
    }

    #[test]
    fn host_and_hosts_together_or_bad_nodes_are_named() {
        let e = err(&GOOD.replace(
            "host = \"10.0.2.2\"",
            "host = \"10.0.2.2\"\nhosts = [\"a:1883\"]",
        ));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.hosts"));
        assert!(e.message.contains("not both"), "{}", e.message);
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "hosts = [\"a:1883\"]\nport = 1884"));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.port"));
        let e = err(&GOOD.replace("host = \"10.0.2.2\"", "hosts = []"));
        assert_eq!((e.line, e.field.as_str()), (5, "mqtt.hosts"));
        for bad in ["a:0", "a:x", ":1883", "fd00::1:1883", "[fd00::1"] {
            let e = err(&GOOD.replace(
                "host = \"10.0.2.2\"",
                &format!("hosts = [\"ok:1\", \"{bad}\"]"),
            ));
            assert_eq!(e.line, 5, "{bad}: {e}");
            assert!(e.field.starts_with("mqtt.hosts"), "{bad}: {e}");
            assert!(e.message.contains("host:port"), "{bad}: {}", e.message);
        }
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
        assert_eq!((e.line, e.field.as_str()), (15, "things[1].id"));
        let e = err(&GOOD.replace("\"t1\"", "\"a/b\""));
        assert_eq!(e.field, "things[1].id");
        let e = err(&GOOD.replace("gw-1", "gw+1"));
        assert_eq!((e.line, e.field.as_str()), (2, "gateway_id"));
    }

    #[test]
    fn driver_rules_name_the_field_and_the_accepted_values() {
        let e = err(&GOOD.replacen("bus = \"i2c\"", "bus = \"spi\"", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].driver"));
        assert!(
            e.message.contains("drivers on that bus: mcp3008"),
            "{}",
            e.message
        );
        let e = err(&GOOD.replacen("address = 0x48\n", "", 1));
        assert_eq!((e.line, e.field.as_str()), (7, "things[0].address"));
        assert!(
            e.message.contains("tmp105 needs `address`"),
            "{}",
            e.message
        );
        let e = err(&GOOD.replacen("id = \"t0\"", "id = \"t0\"\nkind = \"actuator\"", 1));
        assert_eq!((e.line, e.field.as_str()), (9, "things[0].kind"));
        let e = err(&GOOD.replacen("tmp105", "tmp105-limit", 1));
        assert_eq!(e.field, "things[0].kind");
        let e = err(&GOOD.replace("interval_ms = 250", "interval_ms = 250\nmin = 5\nmax = 5"));
        assert_eq!((e.line, e.field.as_str()), (21, "things[1].max"));
    }

    #[test]
    fn mqtt_and_multi_value_things() {
        let json = "\n[[things]]\nid = \"zb\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"zigbee2mqtt/room\"\nfield = \"/temperature\"\nunit = \"°C\"\n";
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{json}")).unwrap();
        assert_eq!(c.things[2].topic.as_deref(), Some("zigbee2mqtt/room"));
        let e = err(&format!(
            "{GOOD}{}",
            json.replace("zigbee2mqtt/room", "betaas/gw-1/things/t0/state")
        ));
        assert_eq!((e.line, e.field.as_str()), (26, "things[2].topic"));
        let e = err(&format!(
            "{GOOD}{}",
            json.replace("/temperature", "temperature")
        ));
        assert_eq!(e.field, "things[2].field");
        let e = err(&format!("{GOOD}{}", json.replace("unit = \"°C\"\n", "")));
        assert_eq!(e.field, "things[2].unit");
        let env = "\n[[things]]\nid = \"env\"\nbus = \"i2c\"\ndriver = \"bme280\"\ndevice = \"/dev/i2c-1\"\naddress = 0x76\n";
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{env}")).unwrap();
        assert_eq!(
            c.things[2].published_ids(),
            ["env_temperature", "env_humidity", "env_pressure"]
        );
        let clash = format!("{GOOD}{env}\n[[things]]\nid = \"env_humidity\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"/x\"\nunit = \"%\"\n");
        let e = err(&clash);
        assert_eq!(e.field, "things[3].id");
        let e = err(&format!(
            "{GOOD}{}",
            env.replace("bme280", "mcp3008")
                .replace("i2c\"", "spi\"")
                .replace("address = 0x76", "channel = 8")
        ));
        assert_eq!(e.field, "things[2].channel");
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
        assert!(!c.resources.fit);
        let c = Config::parse(
            Path::new("a.toml"),
            &format!("{GOOD}\n[resources]\nfit = true\n"),
        )
        .unwrap();
        assert!(c.resources.fit);
        let e = err(&format!("{GOOD}\n[resources]\nalpha = 0.8\nbeta = 1.5\n"));
        assert_eq!((e.line, e.field.as_str()), (24, "resources.beta"));
        assert!(e.message.contains("0..=1"), "{}", e.message);
        let e = err(&format!("{GOOD}\n[resources]\npersist_every = 0\n"));
        assert_eq!(e.field, "resources.persist_every");
        let e = err(&format!("{GOOD}\n[resources]\nsample_interval = 5\n"));
        assert!(e.message.contains("sample_interval_secs"), "{}", e.message);
    }

    const INSTANCE: &str = r#"
[instance]
name = "lab"
heartbeat_ms = 1000
timeout_ms = 4000
virt = "qemu"
capacity = { cpus = 2, mem_mb = 1024, disk_gb = 8 }

[[instance.templates]]
name = "app"
vcpus = 1
mem_mb = 256
disk_gb = 1
role = "app-light"

[[instance.templates]]
name = "db"
vcpus = 2
mem_mb = 512
disk_gb = 4
role = "storage"
"#;

    /// GOOD + INSTANCE with `from` replaced by `to` (once) in the instance part: the error's line,
    /// field and message, after checking the message starts with file:line: field.
    fn instance_err(from: &str, to: &str) -> (usize, String, String) {
        assert!(INSTANCE.contains(from), "{from}");
        let e = err(&format!("{GOOD}{}", INSTANCE.replacen(from, to, 1)));
        let head = format!("/etc/betaas/agent.toml:{}: field `{}`: ", e.line, e.field);
        assert!(e.to_string().starts_with(&head), "{e}");
        (e.line, e.field, e.message)
    }

    /// Line (1-based) of the first line starting with `start` in GOOD + INSTANCE.
    fn line_of(start: &str) -> usize {
        format!("{GOOD}{INSTANCE}")
            .lines()
            .position(|l| l.starts_with(start))
            .map_or(0, |i| i + 1)
    }

    #[test]
    fn instance_section_parses_with_defaults() {
        let c = Config::parse(Path::new("a.toml"), &format!("{GOOD}{INSTANCE}")).unwrap();
        let i = c.instance.unwrap();
        assert_eq!(
            (i.heartbeat_ms, i.timeout_ms, i.deploy_timeout_ms),
            (1000, 4000, 60000)
        );
        assert_eq!(i.templates.len(), 2);
        // A gateway that offers no room for VMs at all is a member like any other.
        let none = INSTANCE.replace(
            "cpus = 2, mem_mb = 1024, disk_gb = 8",
            "cpus = 0, mem_mb = 0, disk_gb = 0",
        );
        Config::parse(Path::new("a.toml"), &format!("{GOOD}{none}")).unwrap();
    }

    #[test]
    fn zero_heartbeat_is_a_config_error_not_a_panic() {
        let (line, field, msg) = instance_err("heartbeat_ms = 1000", "heartbeat_ms = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("heartbeat_ms"), "instance.heartbeat_ms")
        );
        assert!(msg.contains("0 is out of range 50..=60000"), "{msg}");
        let (_, field, _) = instance_err("heartbeat_ms = 1000", "heartbeat_ms = 60001");
        assert_eq!(field, "instance.heartbeat_ms");
        // The bounds themselves are accepted.
        let ok = INSTANCE.replace("heartbeat_ms = 1000", "heartbeat_ms = 50");
        Config::parse(Path::new("a.toml"), &format!("{GOOD}{ok}")).unwrap();
    }

    #[test]
    fn timeout_must_cover_two_heartbeats_and_be_bounded() {
        let (line, field, msg) = instance_err("timeout_ms = 4000", "timeout_ms = 1999");
        assert_eq!(
            (line, field.as_str()),
            (line_of("timeout_ms"), "instance.timeout_ms")
        );
        assert!(
            msg.contains("2000..=600000") && msg.contains("heartbeat_ms"),
            "{msg}"
        );
        let (_, field, _) = instance_err("timeout_ms = 4000", "timeout_ms = 600001");
        assert_eq!(field, "instance.timeout_ms");
        // The default timeout (4000) against a slow heartbeat: the key is absent, its table's
        // header is named.
        let (line, field, msg) = instance_err(
            "heartbeat_ms = 1000\ntimeout_ms = 4000\n",
            "heartbeat_ms = 3000\n",
        );
        assert_eq!(
            (line, field.as_str()),
            (line_of("[instance]"), "instance.timeout_ms")
        );
        assert!(msg.contains("4000 is out of range 6000..="), "{msg}");
    }

    #[test]
    fn every_other_duration_has_a_range() {
        for (key, bad, range) in [
            ("deploy_timeout_ms", "0", "100..=600000"),
            ("remote_timeout_ms", "3600001", "1000..=3600000"),
            ("dismiss_after_secs", "0", "1..=86400"),
            ("readmit_after_secs", "0", "1..=604800"),
            ("readmit_after_secs", "604801", "1..=604800"),
            ("war_max_mb", "0", "1..=4096"),
            ("war_max_mb", "4097", "1..=4096"),
            ("app_ready_secs", "0", "1..=3600"),
        ] {
            let (line, field, msg) = instance_err(
                "timeout_ms = 4000\n",
                &format!("timeout_ms = 4000\n{key} = {bad}\n"),
            );
            assert_eq!(
                (line, field.as_str()),
                (
                    line_of("timeout_ms") + 1,
                    format!("instance.{key}").as_str()
                )
            );
            assert!(
                msg.contains(&format!("{bad} is out of range {range}")),
                "{key}: {msg}"
            );
        }
    }

    #[test]
    fn dismiss_threshold_is_a_fraction() {
        for bad in ["-0.1", "1.5", "nan"] {
            let (line, field, msg) = instance_err(
                "timeout_ms = 4000\n",
                &format!("timeout_ms = 4000\ndismiss_threshold = {bad}\n"),
            );
            assert_eq!(
                (line, field.as_str()),
                (line_of("timeout_ms") + 1, "instance.dismiss_threshold")
            );
            assert!(msg.contains("0..=1"), "{msg}");
        }
    }

    #[test]
    fn capacity_is_above_zero_or_all_zero() {
        let (line, field, msg) = instance_err("mem_mb = 1024", "mem_mb = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("capacity"), "instance.capacity.mem_mb")
        );
        assert!(msg.contains("above 0"), "{msg}");
        // As its own table: the key's own line.
        let (line, field, _) = instance_err(
            "capacity = { cpus = 2, mem_mb = 1024, disk_gb = 8 }\n",
            "[instance.capacity]\ncpus = 0\nmem_mb = 1\ndisk_gb = 1\n",
        );
        assert_eq!(
            (line, field.as_str()),
            (line_of("capacity") + 1, "instance.capacity.cpus")
        );
    }

    #[test]
    fn templates_are_unique_named_and_sized() {
        let (line, field, msg) = instance_err("name = \"db\"", "name = \"app\"");
        assert_eq!(
            (line, field.as_str()),
            (line_of("name = \"db\""), "instance.templates[1].name")
        );
        assert!(msg.contains("duplicate template name \"app\""), "{msg}");
        for bad in ["", "a/b", "x+", "#"] {
            let (_, field, msg) = instance_err("name = \"db\"", &format!("name = {bad:?}"));
            assert_eq!(field, "instance.templates[1].name", "{bad:?}");
            assert!(msg.contains("A-Z a-z 0-9 - _"), "{msg}");
        }
        let (line, field, _) = instance_err("vcpus = 2", "vcpus = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("vcpus = 2"), "instance.templates[1].vcpus")
        );
        let (line, field, _) = instance_err("mem_mb = 256", "mem_mb = 0");
        assert_eq!(
            (line, field.as_str()),
            (line_of("mem_mb = 256"), "instance.templates[0].mem_mb")
        );
    }

    #[test]
    fn mqtt_username_and_password_file_go_together() {
        let both = GOOD.replace(
            "host = \"10.0.2.2\"",
            "host = \"10.0.2.2\"\nusername = \"gw-one\"\npassword_file = \"/etc/betaas/mqtt.password\"",
        );
        let c = Config::parse(Path::new("a.toml"), &both).unwrap();
        assert_eq!(c.mqtt.username.as_deref(), Some("gw-one"));
        let e = err(&both.replace("password_file = \"/etc/betaas/mqtt.password\"", ""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.username"));
        assert!(e.message.contains("add `password_file`"), "{}", e.message);
        let e = err(&both.replace("username = \"gw-one\"\n", ""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.password_file"));
        assert!(e.message.contains("add `username`"), "{}", e.message);
        let e = err(&both.replace("\"gw-one\"", "\"\""));
        assert_eq!((e.line, e.field.as_str()), (6, "mqtt.username"));
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
