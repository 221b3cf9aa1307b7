//! The resource monitor (paper §II.B): samples CPU load, memory, storage and battery at the
//! configured interval into a bounded history kept under `<data_dir>/resources/`, and forecasts
//! the free resources with Holt's method (`betaas_core::forecast`) for the allocator.
//!
//! Samplers are plain functions over file contents (`proc`, `power`); this module is the thin
//! shell that reads the files, keeps time and writes the history.

pub mod history;
pub mod power;
pub mod proc;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use betaas_core::allocator::Res;
use betaas_core::forecast::{fit, Holt};
use tracing::{debug, info, warn};

use crate::config::Resources as ResourcesConfig;
use history::{History, Sample};

/// Where the samplers read from; tests point these at fake trees.
pub struct Sampler {
    pub proc_root: PathBuf,
    pub power_root: PathBuf,
    /// The filesystem whose space is reported (the data partition).
    pub data_dir: PathBuf,
    prev_cpu: Option<proc::CpuTimes>,
}

impl Sampler {
    pub fn system(data_dir: &Path) -> Sampler {
        Sampler::new(
            "/proc".into(),
            "/sys/class/power_supply".into(),
            data_dir.into(),
        )
    }

    pub fn new(proc_root: PathBuf, power_root: PathBuf, data_dir: PathBuf) -> Sampler {
        Sampler {
            proc_root,
            power_root,
            data_dir,
            prev_cpu: None,
        }
    }

    /// Takes one sample. A failing source leaves its field empty (the forecast sees a gap); the
    /// first CPU load needs a previous reading and is empty too.
    pub fn sample(&mut self, ts_ms: u64) -> Sample {
        let read = |name: &str| std::fs::read_to_string(self.proc_root.join(name)).ok();
        let cpu = read("stat").as_deref().and_then(proc::parse_stat);
        let cpu_load = match (self.prev_cpu, cpu) {
            (Some(prev), Some(now)) => proc::cpu_load(prev, now),
            _ => None,
        };
        self.prev_cpu = cpu.or(self.prev_cpu);
        let mem = read("meminfo").as_deref().and_then(proc::parse_meminfo);
        let disk = rustix::fs::statvfs(&self.data_dir).ok().map(|s| {
            let mb = |blocks: u64| blocks.saturating_mul(s.f_frsize) / (1024 * 1024);
            (mb(s.f_blocks), mb(s.f_bavail))
        });
        let power = power::read_power(&self.power_root);
        Sample {
            ts_ms,
            cpu_load,
            mem_total_mb: mem.map(|m| m.total_mb),
            mem_available_mb: mem.map(|m| m.available_mb),
            disk_total_mb: disk.map(|d| d.0),
            disk_free_mb: disk.map(|d| d.1),
            battery: power.battery,
            mains: power.mains,
        }
    }
}

/// Forecast of the gateway's free resources `horizon` samples ahead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeForecast {
    pub mem_available_mb: Option<f64>,
    pub disk_free_mb: Option<f64>,
    pub cpu_idle: Option<f64>,
}

pub fn forecast_free(h: &History, alpha: f64, beta: f64, horizon: u32) -> FreeForecast {
    let f = |series: Vec<f64>| {
        let mut holt = Holt::new(alpha, beta).ok()?;
        series.into_iter().for_each(|y| holt.update(y));
        holt.forecast(horizon).map(|v| v.max(0.0))
    };
    FreeForecast {
        mem_available_mb: f(h.series(|s| s.mem_available_mb.map(|v| v as f64))),
        disk_free_mb: f(h.series(|s| s.disk_free_mb.map(|v| v as f64))),
        cpu_idle: f(h.series(|s| s.cpu_load.map(|l| 1.0 - l))).map(|v| v.min(1.0)),
    }
}

/// What the instance manager shares of this gateway's own state: the latest battery reading and
/// the forecast of free resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latest {
    /// 0..=1 while running on battery; `None` on mains or without one.
    pub battery: Option<f64>,
    pub forecast: FreeForecast,
}

/// The monitor's latest figures and sample, shared by handle with those who read them (the
/// instance manager, the API): [`run`] writes them. No process-wide instance.
#[derive(Debug, Clone, Default)]
pub struct Handle(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    latest: Option<Latest>,
    /// The latest sample itself (the API's status page shows it next to the forecast).
    now: Option<Sample>,
}

impl Handle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The monitor's latest sample (`None` before the first).
    pub fn now(&self) -> Option<Sample> {
        self.lock().now.clone()
    }

    /// The monitor's latest figures (`None` before its first sample).
    pub fn latest(&self) -> Option<Latest> {
        self.lock().latest
    }
}

/// The forecast as the allocator takes it: what the VMs may get of the host's free memory and
/// storage at the horizon (`None` without history). CPU is time-shared, not reserved, so its
/// forecast does not limit (the allocator takes the lower of this and what is free now).
pub fn forecast_res(f: &FreeForecast) -> Option<Res> {
    let (mem, disk) = (f.mem_available_mb?, f.disk_free_mb?);
    Some(Res::new(u32::MAX, mem as u64, disk as u64 / 1024))
}

/// The monitor task: runs until the agent stops. Samples not yet written when it stops (fewer
/// than `persist_every`) are lost: that bound is the price of sparing the SD card.
pub async fn run(cfg: ResourcesConfig, data_dir: PathBuf, handle: Handle) {
    let path = data_dir.join("resources").join("history.json");
    let cap = cfg.history_len.0 as usize;
    let mut history = match History::load(&path, cap) {
        Ok(h) => h,
        Err(e) => {
            warn!("resource history unreadable, starting afresh: {e}");
            History::new(cap)
        }
    };
    info!(samples = history.len(), path = %path.display(), "resource monitor");
    let mut sampler = Sampler::new(
        cfg.proc_dir.clone(),
        cfg.power_supply_dir.clone(),
        data_dir.clone(),
    );
    let mut ticker = tokio::time::interval(cfg.sample_interval_secs.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsaved = 0u32;
    let (mut alpha, mut beta) = (cfg.alpha.0, cfg.beta.0);
    loop {
        ticker.tick().await;
        history.push(sampler.sample(crate::clock::unix_millis()));
        let f = forecast_free(&history, alpha, beta, 1);
        debug!(sample = ?history.last(), forecast = ?f, "resources (forecast: one interval ahead)");
        let battery = history.last().and_then(|s| s.battery.filter(|_| !s.mains));
        {
            let mut shared = handle.lock();
            shared.now = history.last().cloned();
            shared.latest = Some(Latest {
                battery,
                forecast: f,
            });
        }
        unsaved += 1;
        if unsaved >= cfg.persist_every.0 {
            unsaved = 0;
            let (bytes, path) = (history.encode(), path.clone());
            // Memory is what VMs are short of on gateways: fit the smoothing to its series.
            let series = cfg
                .fit
                .then(|| history.series(|s| s.mem_available_mb.map(|v| v as f64)));
            // fsync on an SD card, and the fit's grid search, can take long: off the runtime thread.
            let done = tokio::task::spawn_blocking(move || {
                let fitted = series.and_then(|s| fit(&s).ok());
                (history::write_atomic(&path, &bytes), fitted)
            })
            .await;
            match done {
                Ok((saved, fitted)) => {
                    if let Err(e) = saved {
                        warn!("cannot save the resource history: {e}");
                    }
                    if let Some(f) = fitted {
                        (alpha, beta) = (f.alpha, f.beta);
                        info!(
                            alpha,
                            beta, "forecast smoothing refitted to the memory history"
                        );
                    }
                }
                Err(e) => warn!("resource history writer failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    #[test]
    fn samples_a_fake_system() {
        let t = tempfile::tempdir().unwrap();
        let procdir = t.path().join("proc");
        std::fs::create_dir_all(&procdir).unwrap();
        let avail = 100 + u64::from(std::process::id() % 1000);
        std::fs::write(procdir.join("stat"), "cpu  100 0 0 100 0 0 0 0 0 0\n").unwrap();
        std::fs::write(
            procdir.join("meminfo"),
            format!("MemTotal: 2097152 kB\nMemAvailable: {} kB\n", avail * 1024),
        )
        .unwrap();
        let mut s = Sampler::new(procdir.clone(), t.path().join("none"), t.path().into());
        let first = s.sample(1);
        assert_eq!(first.cpu_load, None, "no previous reading yet");
        assert_eq!(first.mem_available_mb, Some(avail));
        assert!(first.disk_total_mb.is_some_and(|d| d > 0));
        assert_eq!(first.battery, None);
        std::fs::write(procdir.join("stat"), "cpu  175 0 0 125 0 0 0 0 0 0\n").unwrap();
        assert_eq!(s.sample(2).cpu_load, Some(0.75));
        // A sampler that fails leaves a gap, not a zero.
        std::fs::remove_file(procdir.join("meminfo")).unwrap();
        assert_eq!(s.sample(3).mem_available_mb, None);
    }

    #[test]
    fn forecast_follows_a_trend_across_gaps() {
        let mut h = History::new(10);
        for (i, m) in [Some(1000), Some(900), None, Some(700)]
            .into_iter()
            .enumerate()
        {
            h.push(Sample {
                ts_ms: i as u64,
                cpu_load: Some(0.5),
                mem_total_mb: Some(2000),
                mem_available_mb: m,
                disk_total_mb: None,
                disk_free_mb: None,
                battery: None,
                mains: true,
            });
        }
        let f = forecast_free(&h, 0.5, 0.5, 2);
        assert_eq!(f.mem_available_mb, Some(500.0));
        assert_eq!(f.cpu_idle, Some(0.5));
        assert_eq!(f.disk_free_mb, None);
    }
}
