//! The remote VM registry on disk (`data_dir/cloud/registry.json`): written to a temporary file,
//! fsynced, renamed over the old one and the directory fsynced, so a power cut leaves either the
//! old or the new registry, never a torn one. A VM created on a remote cloud costs money: losing
//! track of it is worse than a write per state change.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::policy::Registry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a registry: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The registry under `data_dir/cloud/`; the directory is created when missing.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = data_dir.join("cloud");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            what: "cannot create",
            source,
        })?;
        Ok(Store {
            path: dir.join("registry.json"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved registry, or an empty one when there is none yet.
    pub fn load(&self) -> Result<Registry, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                what: "cannot read",
                source,
            }),
        }
    }

    pub fn save(&self, reg: &Registry) -> Result<(), StoreError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, what, source }
        };
        let tmp = self.path.with_extension("json.tmp");
        // Serializing plain strings and numbers cannot fail.
        let bytes = serde_json::to_vec_pretty(reg).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(&bytes).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io("cannot rename into place", &self.path))?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must reach the disk too.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("cannot fsync", dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::super::policy::RemoteState;
    use super::*;

    #[test]
    fn round_trip_and_leftover_temp_file_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), Registry::default());
        let mut r = Registry::default();
        r.begin_create("a", "t", "betaas-1", 5);
        r.created("a", "betaas-1", "id", 6);
        r.set_state("a", "id", RemoteState::Stopped, 7);
        s.save(&r).unwrap();
        // A power cut while writing the next version leaves a temp file: the old one is intact.
        std::fs::write(s.path().with_extension("json.tmp"), b"{\"vms\": [").unwrap();
        assert_eq!(s.load().unwrap(), r);
        std::fs::write(s.path(), b"garbage").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("registry.json: not a registry"), "{e}");
    }
}
