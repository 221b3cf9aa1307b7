//! `betaas-flash`: writes a gateway image to an SD card (or a file), verifies it, and provisions
//! the gateway's files on the card's FAT boot partition, for one gateway or a batch.
//!
//! One module per step: [`bmap`] (what to write), [`target`] (where, and whether it is safe),
//! [`copy`] (writing and reading back), [`disk`] (the partition table), [`provision`] (the boot
//! partition's `betaas/` files), [`batch`] (a CSV of gateways). `main.rs` is the command line.

use std::path::{Path, PathBuf};

pub mod batch;
pub mod bmap;
pub mod copy;
pub mod disk;
pub mod fatfix;
pub mod provision;
pub mod target;

/// Everything that stops a command, saying what and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The target is not safe to write (and `--force` does not apply, or was not given).
    #[error("refusing {}: {reason}", target.display())]
    Refused { target: PathBuf, reason: String },
    #[error("{path}: {message}", path = .0.display(), message = .1)]
    Bmap(PathBuf, String),
    /// Writing one range failed: which range, where, and the OS error.
    #[error("writing range {range} to {}: {source}", target.display())]
    Write {
        target: PathBuf,
        range: String,
        #[source]
        source: std::io::Error,
    },
    /// Read back differs from the image in these ranges.
    #[error("verify failed: {} differs from the image in {}", target.display(), .ranges.join("; "))]
    Verify {
        target: PathBuf,
        ranges: Vec<String>,
    },
    /// An agent config the agent would refuse (file:line: field `x`: what is wrong).
    #[error("bad agent config, nothing written: {0}")]
    Config(String),
    #[error("provisioning {}: {message}", target.display())]
    Provision { target: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// 1536 → "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human(100), "100 B");
        assert_eq!(super::human(1536), "1.5 KiB");
        assert_eq!(super::human(256 << 20), "256.0 MiB");
    }
}
