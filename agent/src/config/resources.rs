//! `[resources]`: the resource samplers and the Holt forecast.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ids::{Count, Seconds, Smoothing};

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
    /// Refit α and β to the history (least one-step squared error) at every save; `alpha` and
    /// `beta` are then only the starting values.
    #[serde(default)]
    pub fit: bool,
    /// Where the samplers read (another layout, or a fake tree in tests).
    #[serde(default = "default_proc_dir")]
    pub proc_dir: PathBuf,
    #[serde(default = "default_power_supply_dir")]
    pub power_supply_dir: PathBuf,
}

fn default_proc_dir() -> PathBuf {
    PathBuf::from("/proc")
}
fn default_power_supply_dir() -> PathBuf {
    PathBuf::from("/sys/class/power_supply")
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            sample_interval_secs: default_sample_interval(),
            history_len: default_history_len(),
            persist_every: default_persist_every(),
            alpha: default_alpha(),
            beta: default_beta(),
            fit: false,
            proc_dir: default_proc_dir(),
            power_supply_dir: default_power_supply_dir(),
        }
    }
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
