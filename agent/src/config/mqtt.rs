//! `[mqtt]`: the broker (or the nodes of a clustered one), the session, TLS and the password.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ids::{Seconds, TopicLevel};
use super::{key_line, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// One broker: `host` with `port` (1883). Either this or `hosts`.
    #[serde(rename = "host", default)]
    host_key: Option<String>,
    #[serde(rename = "port", default)]
    port_key: Option<u16>,
    /// Several nodes of one (clustered) broker, `"host:port"` each, tried in order: the agent
    /// connects to the first that answers and moves to the next when its node fails.
    #[serde(rename = "hosts", default)]
    hosts_key: Option<Vec<Node>>,
    /// The first node (the only one with `host`/`port`); filled in by [`Config::parse`].
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub port: u16,
    /// Every node, in the order tried; never empty after [`Config::parse`].
    #[serde(skip)]
    pub nodes: Vec<Node>,
    /// A node that has not completed TCP, TLS and CONNECT/CONNACK in this long is skipped.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: Seconds,
    /// The first level of every topic.
    #[serde(default = "default_prefix")]
    pub prefix: TopicLevel,
    /// Defaults to `betaas-<gateway_id>`.
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: Seconds,
    /// `[mqtt.tls]`: TLS to the broker (rustls). Absent: plain TCP.
    pub tls: Option<Tls>,
    /// The broker user (an instance's broker has one per gateway); goes with `password_file`.
    pub username: Option<String>,
    /// The password on one line (a trailing newline is ignored); refused when group or others
    /// may read it (see [`read_password_file`]).
    pub password_file: Option<PathBuf>,
}

/// One broker node, `host:port` (`[v6addr]:port`; the port defaults to 1883).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl TryFrom<String> for Node {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        let bad = |why: &str| format!("{v:?}: {why}; expected \"host:port\", e.g. \"node-a:1883\"");
        let (host, port) = if let Some(rest) = v.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                ),
            }
        } else {
            match v.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(bad("an IPv6 address goes in [ ]")),
                Some((h, p)) => (h, Some(p)),
                None => (v.as_str(), None),
            }
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(bad("no host name"));
        }
        let port = match port {
            None => default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n @ 1..) => n,
                _ => return Err(bad("the port must be 1..=65535")),
            },
        };
        Ok(Node {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// PEM files, normally under `/etc/betaas/credentials/`. A private key readable by group or others
/// is refused at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for brokers that require them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}
fn default_connect_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}
fn default_prefix() -> TopicLevel {
    TopicLevel("betaas".into())
}
fn default_keep_alive() -> Seconds {
    Seconds(Duration::from_secs(30))
}

impl Mqtt {
    /// `host`/`port` (one broker) or `hosts` (its nodes), never both.
    pub(super) fn resolve_nodes(&self, path: &Path, text: &str) -> Result<Vec<Node>, ConfigError> {
        let err = |key: &str, message: &str| ConfigError {
            file: path.to_owned(),
            line: key_line(text, "mqtt", 0, key),
            field: format!("mqtt.{key}"),
            message: message.to_owned(),
        };
        match (&self.host_key, &self.hosts_key) {
            (Some(_), Some(_)) => Err(err(
                "hosts",
                "give `host` (with `port`: one broker) or `hosts` (\"host:port\" of each node), not both",
            )),
            (None, Some(_)) if self.port_key.is_some() => Err(err(
                "port",
                "`port` goes with `host`; with `hosts` give each node as \"host:port\"",
            )),
            (None, Some(h)) if h.is_empty() => Err(err("hosts", "the list is empty: name at least one node")),
            (None, Some(h)) if h.len() > 64 => Err(err("hosts", "at most 64 nodes")),
            (None, Some(h)) => Ok(h.clone()),
            (Some(host), None) if host.trim().is_empty() => Err(err("host", "an empty host name")),
            (Some(host), None) => Ok(vec![Node {
                host: host.clone(),
                port: self.port_key.unwrap_or_else(default_port),
            }]),
            (None, None) => Err(ConfigError {
                file: path.to_owned(),
                line: text.lines().position(|l| l.trim() == "[mqtt]").map_or(0, |i| i + 1),
                field: "mqtt".into(),
                message: "missing field `host` (one broker) or `hosts` (the nodes of a clustered broker)".into(),
            }),
        }
    }
}
