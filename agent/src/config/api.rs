//! `[api]`: the local REST API and web UI (paper §IV's GUI; see `crate::api`). Absent: off.
//!
//! ```toml
//! [api]
//! listen = "0.0.0.0:8443"          # HTTPS always
//! # token_file = "/boot/betaas/api.token"   # default data_dir/api/token, made at first boot (0600)
//! # cert = "/boot/betaas/api.pem"  # with key: a provisioned certificate; default: self-signed,
//! # key = "/boot/betaas/api.key"   #   made at first boot under data_dir/api/
//! # readings = 256                 # recent readings kept per thing
//! # log_lines = 500                # recent log lines kept for GET /api/v1/logs
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    #[serde(default = "default_readings")]
    pub readings: usize,
    #[serde(default = "default_log_lines")]
    pub log_lines: usize,
}

fn default_readings() -> usize {
    256
}

fn default_log_lines() -> usize {
    500
}

impl ApiConfig {
    /// The first rule broken: (key, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.cert.is_some() != self.key.is_some() {
            return Some((
                "cert",
                "`cert` and `key` go together: give both or neither".into(),
            ));
        }
        if !(1..=100_000).contains(&self.readings) {
            return Some((
                "readings",
                format!("{} is out of range 1..=100000", self.readings),
            ));
        }
        if !(1..=100_000).contains(&self.log_lines) {
            return Some((
                "log_lines",
                format!("{} is out of range 1..=100000", self.log_lines),
            ));
        }
        None
    }

    pub fn token_path(&self, data_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("api").join("token"))
    }
}
