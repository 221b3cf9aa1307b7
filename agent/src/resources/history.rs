//! The bounded sample history and its file under `<data_dir>/resources/`.
//!
//! SD cards wear out and lose power without warning, so the whole history (bounded: at most
//! `history_len` samples) is written only every `persist_every` samples, and each write is a
//! new file made durable before it replaces the old one: write `history.json.tmp`, fsync it,
//! rename over `history.json`, fsync the directory. A power cut leaves the old or the new file,
//! never a torn one; at most `persist_every` samples are lost.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a resource history (line {line}, column {column}): {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// One reading of the gateway's resources; a sampler that failed leaves its field `None`
/// (a gap for the forecast).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub ts_ms: u64,
    /// Busy share of all CPUs since the previous sample, 0..=1.
    pub cpu_load: Option<f64>,
    pub mem_total_mb: Option<u64>,
    pub mem_available_mb: Option<u64>,
    /// The filesystem holding the data directory.
    pub disk_total_mb: Option<u64>,
    pub disk_free_mb: Option<u64>,
    /// 0..=1; `None` without a battery.
    pub battery: Option<f64>,
    pub mains: bool,
}

#[derive(Serialize, Deserialize)]
struct File1 {
    version: u32,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    cap: usize,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(cap: usize) -> History {
        History {
            cap: cap.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Appends a sample, dropping the oldest beyond the bound.
    pub fn push(&mut self, s: Sample) {
        while self.samples.len() >= self.cap {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// One field as a series for the forecast, missing values as NaN gaps.
    pub fn series(&self, field: impl Fn(&Sample) -> Option<f64>) -> Vec<f64> {
        self.samples
            .iter()
            .map(|s| field(s).unwrap_or(f64::NAN))
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let f = File1 {
            version: 1,
            samples: self.samples.iter().cloned().collect(),
        };
        // Serializing plain structs of numbers cannot fail.
        serde_json::to_vec(&f).unwrap_or_default()
    }

    /// Decodes a saved history, keeping the newest `cap` samples (the bound may have shrunk).
    pub fn decode(path: &Path, bytes: &[u8], cap: usize) -> Result<History, HistoryError> {
        let f: File1 = serde_json::from_slice(bytes).map_err(|e| HistoryError::Corrupt {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let mut h = History::new(cap);
        for s in f.samples {
            h.push(s);
        }
        Ok(h)
    }

    /// Loads `path`; a missing file is an empty history (first boot).
    pub fn load(path: &Path, cap: usize) -> Result<History, HistoryError> {
        match std::fs::read(path) {
            Ok(bytes) => History::decode(path, &bytes, cap),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::new(cap)),
            Err(source) => Err(HistoryError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// Replaces `path` with `bytes` so that a power cut at any moment leaves the old or the new
/// content: temp file, fsync, rename, fsync of the directory (so the rename itself is durable).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HistoryError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| HistoryError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn sample(ts_ms: u64, mem: u64) -> Sample {
        Sample {
            ts_ms,
            cpu_load: Some(0.25),
            mem_total_mb: Some(2014),
            mem_available_mb: Some(mem),
            disk_total_mb: Some(7000),
            disk_free_mb: None,
            battery: None,
            mains: true,
        }
    }

    #[test]
    fn bounded_and_survives_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("resources/history.json");
        let seed = u64::from(std::process::id());
        let mut h = History::new(5);
        for i in 0..12 {
            h.push(sample(seed + i, 1000 + i));
        }
        assert_eq!(h.len(), 5);
        write_atomic(&path, &h.encode()).unwrap();
        let back = History::load(&path, 5).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.last().map(|s| s.ts_ms), Some(seed + 11));
        // A smaller bound keeps the newest samples.
        let small = History::load(&path, 2).unwrap();
        assert_eq!(
            small.series(|s| s.mem_available_mb.map(|m| m as f64)),
            vec![1010.0, 1011.0]
        );
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn missing_is_empty_and_corrupt_is_named() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("history.json");
        assert_eq!(History::load(&path, 3).unwrap().len(), 0);
        std::fs::write(&path, b"{\"version\":1,\"samples\":[{\"ts_ms\":").unwrap();
        let e = History::load(&path, 3).unwrap_err().to_string();
        assert!(e.contains("history.json") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_torn_temp_file_never_replaces_the_history() {
        // Power cut after the temp file was half written: the history is the old one.
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("history.json");
        let mut h = History::new(4);
        h.push(sample(1, 700));
        write_atomic(&path, &h.encode()).unwrap();
        std::fs::write(path.with_extension("json.tmp"), b"{\"vers").unwrap();
        assert_eq!(History::load(&path, 4).unwrap(), h);
        // The next write replaces the stale temp file.
        h.push(sample(2, 650));
        write_atomic(&path, &h.encode()).unwrap();
        assert_eq!(History::load(&path, 4).unwrap().len(), 2);
    }

    #[test]
    fn gaps_are_nan() {
        let mut h = History::new(3);
        h.push(sample(1, 10));
        let mut s = sample(2, 0);
        s.mem_available_mb = None;
        h.push(s);
        let series = h.series(|s| s.mem_available_mb.map(|m| m as f64));
        assert_eq!(series[0], 10.0);
        assert!(series[1].is_nan());
    }
}
