//! The store-and-forward journal: every accepted reading is appended here before it is published and
//! leaves only after the broker acknowledged it (QoS 1 PUBACK).
//!
//! - [`format`] is the pure record format (postcard payload, length + CRC32 frames, segment header).
//! - [`store`] is the file-backed journal: segment files in one directory, an ack cursor persisted with
//!   write-temp + fsync + rename, size and age bounds, torn-tail recovery.
//!
//! The API is synchronous `std::fs`: the agent calls it from a dedicated thread or `spawn_blocking`.
//! Delivery is at least once: after a crash, records acknowledged since the last persisted ack are sent
//! again with their original `(thing, seq)`, which consumers use to drop duplicates.

/// The record format is pure and lives in `betaas-core` (the fuzz crate decodes with it too).
pub use betaas_core::journal as format;
pub mod store;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use format::{Body, Cursor, Quantity, Record};
pub use store::{Journal, Recovery, Stats, Truncation};

/// When appended records are forced to the SD card with `fdatasync`.
///
/// Without a sync a record written by `write(2)` survives a crash of the agent (it is in the page
/// cache) but not a power cut. A sync per record costs at least one 4 KiB page write plus an ext4
/// journal commit per reading: at 50 readings/s that is hundreds of MB a day on a card that wears out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Sync after every append: no reading lost to a power cut, the most SD writes.
    Always,
    /// Sync after `records` unsynced appends or when the oldest unsynced append is `interval` old,
    /// whichever comes first (the interval is checked on append and on [`Journal::tick`]).
    Every { records: u32, interval: Duration },
    /// Leave it to the kernel's writeback (about 30 s on Linux). For tests and benchmarks.
    Never,
}

impl Default for FsyncPolicy {
    /// At most one second, or 64 readings, of unpublished readings can be lost to a power cut; in
    /// exchange SD writes are bounded by about one sync per second whatever the reading rate. Readings
    /// normally reach the broker within milliseconds, so the window only matters while the broker is
    /// unreachable *and* the power fails.
    fn default() -> Self {
        FsyncPolicy::Every {
            records: 64,
            interval: Duration::from_secs(1),
        }
    }
}

/// Bounds and policies of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A segment is sealed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// Total bytes of all segments; the oldest segments are dropped (acknowledged or not) to stay under.
    pub max_bytes: u64,
    /// Sealed segments whose newest record is older than this are dropped.
    pub max_age: Duration,
    pub fsync: FsyncPolicy,
    /// The ack cursor is persisted after this many acks or this long after the first unpersisted ack,
    /// and whenever acknowledged segments are deleted. Bounds SD writes; after a power cut at most this
    /// many records are sent twice.
    pub ack_persist_every: u32,
    pub ack_persist_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 1 MiB: ~25k readings; small enough that dropping one segment loses little.
            segment_bytes: 1 << 20,
            // 64 MiB: ~1.6M readings, about 9 hours of 50 things at 1 Hz while the broker is away.
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
            fsync: FsyncPolicy::default(),
            ack_persist_every: 1000,
            ack_persist_interval: Duration::from_secs(5),
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), JournalError> {
        let min_segment =
            (format::HEADER_LEN + format::FRAME_OVERHEAD + format::MAX_PAYLOAD) as u64;
        if self.segment_bytes < min_segment {
            return Err(JournalError::Limits(format!(
                "segment_bytes {} is below {min_segment} (one header and one largest record)",
                self.segment_bytes
            )));
        }
        // Two segments: the size bound must never force dropping the segment being appended to.
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(JournalError::Limits(format!(
                "max_bytes {} is below twice segment_bytes {}",
                self.max_bytes, self.segment_bytes
            )));
        }
        if let FsyncPolicy::Every { records: 0, .. } = self.fsync {
            return Err(JournalError::Limits(
                "fsync records must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Journal errors name the file (and offset where there is one).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("journal limits: {0}")]
    Limits(String),
    #[error("record for thing {thing:?} cannot be encoded: {source}")]
    Encode {
        thing: String,
        #[source]
        source: format::EncodeError,
    },
    #[error("thing {thing:?}: seq {seq} goes back (the next seq is {next})")]
    SeqRegression { thing: String, seq: u64, next: u64 },
    #[error("ack cursor {cursor} is beyond the end of the journal ({end})")]
    AckBeyondEnd { cursor: Cursor, end: Cursor },
}

impl JournalError {
    fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> JournalError {
        let path = path.into();
        move |source| JournalError::Io { path, op, source }
    }
}
