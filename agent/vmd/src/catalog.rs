//! The templates this gateway can run: built descriptors (`<dir>/<name>[-<arch>]/template.toml`,
//! parsed and validated by `betaas-templates`), looked up by name and guest architecture.
//!
//! Directories are scanned on every lookup (a handful of small files), so a template built while
//! the daemon runs is usable at once. File checksums are verified once per file (device and inode: hard links of one file,
//! as the big-data templates share their rootfs, count once), size and mtime.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use betaas_templates::{Arch, DescriptorError, Template, DESCRIPTOR};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("no template {name:?} for {arch} in {searched}{skipped}")]
    NotFound {
        name: String,
        arch: Arch,
        searched: String,
        /// Descriptors that did not load, so a typo in one is not a silent "not found".
        skipped: String,
    },
    #[error("template {name:?}: {source}")]
    Descriptor {
        name: String,
        #[source]
        source: DescriptorError,
    },
    #[error("template {name:?}: {file}: sha256 is {got}, the descriptor says {want}")]
    Checksum {
        name: String,
        file: PathBuf,
        got: String,
        want: String,
    },
    #[error("template {name:?}: reading {file}: {source}")]
    Io {
        name: String,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Default)]
pub struct Catalog {
    dirs: Vec<PathBuf>,
    verified: HashMap<(u64, u64), (u64, Option<SystemTime>, String)>,
}

impl Catalog {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Catalog {
            dirs,
            verified: HashMap::new(),
        }
    }

    /// Every descriptor found, loaded or not.
    pub fn scan(&self) -> Vec<(PathBuf, Result<Template, DescriptorError>)> {
        let mut out = Vec::new();
        for d in &self.dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            let mut subs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            subs.sort();
            for s in subs {
                let desc = s.join(DESCRIPTOR);
                if desc.is_file() {
                    let t = Template::load(&desc);
                    out.push((desc, t));
                }
            }
        }
        out
    }

    /// The template `name` built for `arch`, its files checked.
    pub fn find(&mut self, name: &str, arch: Arch, verify: bool) -> Result<Template, CatalogError> {
        let mut skipped = Vec::new();
        let mut found = None;
        for (path, t) in self.scan() {
            match t {
                Ok(t) if t.name == name && t.arch.contains(&arch) => {
                    found = Some(t);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    // A broken descriptor in the directory of the one asked for is that template's
                    // error, not "not found".
                    let dir_name = path
                        .parent()
                        .and_then(Path::file_name)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if dir_name == name || dir_name == format!("{name}-{arch}") {
                        return Err(CatalogError::Descriptor {
                            name: name.to_owned(),
                            source: e,
                        });
                    }
                    skipped.push(e.to_string());
                }
            }
        }
        let Some(t) = found else {
            return Err(CatalogError::NotFound {
                name: name.to_owned(),
                arch,
                searched: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                skipped: if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" (descriptors that did not load: {})", skipped.join("; "))
                },
            });
        };
        if verify {
            for (_, f) in t.files() {
                let p = t.path_of(f);
                let got = self.sha256(&t.name, &p)?;
                if got != f.sha256.as_hex() {
                    return Err(CatalogError::Checksum {
                        name: t.name.clone(),
                        file: p,
                        got,
                        want: f.sha256.as_hex().to_owned(),
                    });
                }
            }
        }
        Ok(t)
    }

    fn sha256(&mut self, name: &str, p: &Path) -> Result<String, CatalogError> {
        let io = |source| CatalogError::Io {
            name: name.to_owned(),
            file: p.to_owned(),
            source,
        };
        let md = std::fs::metadata(p).map_err(io)?;
        let key = (md.len(), md.modified().ok());
        let file = {
            use std::os::unix::fs::MetadataExt;
            (md.dev(), md.ino())
        };
        if let Some((len, mtime, sum)) = self.verified.get(&file) {
            if (*len, *mtime) == key {
                return Ok(sum.clone());
            }
        }
        let mut f = std::fs::File::open(p).map_err(io)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.verified.insert(file, (key.0, key.1, sum.clone()));
        Ok(sum)
    }
}
