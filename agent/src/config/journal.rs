//! `[journal]`: the store-and-forward journal's bounds and fsync policy.

use serde::Deserialize;

/// `[journal]`: bounds and the fsync policy. Defaults in `journal::Limits::default()`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    pub segment_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age_secs: Option<u64>,
    /// `interval` (default: sync every `fsync_records` readings or `fsync_interval_ms`), `always`
    /// (every reading: no loss on power cut, most SD wear) or `never` (kernel writeback, ~30 s).
    #[serde(default)]
    pub fsync: FsyncMode,
    pub fsync_records: Option<u32>,
    pub fsync_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    #[default]
    Interval,
    Always,
    Never,
}
