//! Provisioning: the gateway's own files in `betaas/` on the card's FAT boot partition, written
//! through a FAT implementation (the `fatfs` crate) on the partition's byte range: nothing is
//! mounted, and every other file on the partition is kept.
//!
//! What the gateway reads there (`image/rootfs/etc/init.d/rcS` and `usr/libexec/betaas/`):
//! `betaas/agent.toml` (bind-mounted over `/etc/betaas/agent.toml`), `betaas/mosquitto.conf`
//! (starts the instance's broker), and whatever the config points at under `/boot/betaas/`
//! (instance keys with `keys = "/boot/betaas/instance"`, an MQTT password file...).
//!
//! Private keys: FAT stores no owner or mode. The gateway mounts the boot partition read-only with
//! `umask=077` (the image's `/etc/fstab`), so every file there is root's alone, which is what the
//! agent demands of its keys. On this PC: a `*.key` file readable by group or others is refused
//! (the agent refuses such keys too), and a plain-file target that receives a private key (a
//! `*.key` file, or one with no group/other permissions) is made mode 0600.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fscommon::StreamSlice;

use crate::Error;
use crate::{disk, fatfix};

/// The directory on the boot partition, `/boot/betaas` on the gateway.
pub const DIR: &str = "betaas";
/// The gateway's path of the boot partition's `betaas/`.
pub const ON_GATEWAY: &str = "/boot/betaas";

/// One file to provision: its path under `betaas/` ('/'-separated) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub rel: String,
    pub data: Vec<u8>,
    pub private: bool,
    /// Where it came from (for messages).
    pub from: PathBuf,
}

impl Item {
    pub fn on_card(&self) -> String {
        format!("{DIR}/{}", self.rel)
    }
}

/// Checks an agent config with the agent's own parser: the error names file, line and field.
pub fn check_config(path: &Path, text: &str) -> Result<betaas_agent::config::Config, Error> {
    betaas_agent::config::Config::parse(path, text).map_err(|e| Error::Config(e.to_string()))
}

/// The files to provision: `config` as `agent.toml`, and DIR's files (with their relative paths).
/// Every `agent.toml` is checked first; nothing is written when one is bad.
pub fn collect(config: Option<&Path>, dir: Option<&Path>) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    if let Some(d) = dir {
        walk(d, d, &mut items)?;
    }
    if let Some(c) = config {
        if items.iter().any(|i| i.rel == "agent.toml") {
            return Err(Error::Usage(format!(
                "both --config {} and {}/agent.toml: give one",
                c.display(),
                dir.map(|d| d.display().to_string()).unwrap_or_default()
            )));
        }
        let data = std::fs::read(c).map_err(|e| Error::io(c, e))?;
        items.push(Item {
            rel: "agent.toml".into(),
            data,
            private: false,
            from: c.to_owned(),
        });
    }
    for i in items.iter().filter(|i| i.rel == "agent.toml") {
        let text = std::str::from_utf8(&i.data)
            .map_err(|_| Error::Config(format!("{}: not UTF-8 text", i.from.display())))?;
        let config = check_config(&i.from, text)?;
        for w in missing_files(&config, &items) {
            eprintln!("warning: {w}");
        }
    }
    Ok(items)
}

/// Files the config names under `/boot/betaas/` that are not being provisioned (they may already
/// be on the card, so this only warns).
pub fn missing_files(config: &betaas_agent::config::Config, items: &[Item]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(inst) = &config.instance {
        if let Ok(rel) = inst.keys.strip_prefix(ON_GATEWAY) {
            for f in [
                betaas_agent::instance::GATEWAY_KEY,
                betaas_agent::instance::CREDENTIAL,
                betaas_agent::instance::INSTANCE_PUB,
            ] {
                let want = rel.join(f).to_string_lossy().into_owned();
                if !items.iter().any(|i| i.rel == want) {
                    out.push(format!(
                        "the config's [instance] keys = {:?} needs {f}, which is not being provisioned",
                        inst.keys.display().to_string()
                    ));
                }
            }
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, items: &mut Vec<Item>) -> Result<(), Error> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if meta.is_dir() {
            walk(root, &p, items)?;
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .map_err(|_| Error::Usage(format!("{}: outside {}", p.display(), root.display())))?
            .to_string_lossy()
            .into_owned();
        if let Some(c) = rel
            .chars()
            .find(|c| "\\:*?\"<>|".contains(*c) || c.is_control())
        {
            return Err(Error::Usage(format!(
                "{}: {c:?} cannot be in a FAT file name",
                p.display()
            )));
        }
        let mode = meta.mode() & 0o777;
        let is_key = rel.ends_with(".key");
        if is_key && mode & 0o077 != 0 {
            return Err(Error::Provision {
                target: p.clone(),
                message: format!(
                    "a private key readable by group or others (mode {mode:o}): chmod 600 it first"
                ),
            });
        }
        let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        items.push(Item {
            rel,
            data,
            private: is_key || mode & 0o077 == 0,
            from: p,
        });
    }
    Ok(())
}

fn fail(target: &Path, message: impl std::fmt::Display) -> Error {
    Error::Provision {
        target: target.to_owned(),
        message: message.to_string(),
    }
}

/// Opens the card (a device exclusively: the kernel refuses if a partition is mounted).
fn open_card(target: &Path, write: bool) -> Result<File, Error> {
    let device = std::fs::metadata(target)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .map_err(|e| Error::io(target, e))?;
    let mut o = OpenOptions::new();
    o.read(true).write(write);
    if device {
        o.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
    }
    let f = o.open(target).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
            Error::Refused {
                target: target.to_owned(),
                reason: "the kernel reports it busy (is its boot partition mounted?)".into(),
            }
        } else {
            Error::io(target, e)
        }
    })?;
    if device {
        // Read the card, not what the cache kept from before.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(f)
}

/// The boot partition's FAT, on its byte range of the card. No buffering layer: every write goes
/// straight to the file, so no write can be lost in a buffer whose flush error is only logged.
fn fat(target: &Path, f: File) -> Result<fatfs::FileSystem<StreamSlice<File>>, Error> {
    let mut f = f;
    let p1 = disk::boot_partition(&mut f).map_err(|m| fail(target, m))?;
    let slice =
        StreamSlice::new(f, p1.offset, p1.offset + p1.len).map_err(|e| Error::io(target, e))?;
    fatfs::FileSystem::new(slice, fatfs::FsOptions::new())
        .map_err(|e| fail(target, format!("partition 1 is not a readable FAT: {e}")))
}

/// Writes `items` into `betaas/` on the card's boot partition, flushes, reads each back through
/// a fresh FAT and compares. Returns their paths on the card.
pub fn provision(target: &Path, items: &[Item]) -> Result<Vec<String>, Error> {
    if items.iter().any(|i| i.private) {
        if let Ok(f) = File::open(target) {
            if f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                crate::copy::tighten(target, &f)?;
            }
        }
    }
    let mut f = open_card(target, true)?;
    let sync = f.try_clone().map_err(|e| Error::io(target, e))?;
    let base = disk::boot_partition(&mut f)
        .map_err(|m| fail(target, m))?
        .offset;
    {
        let fs = fat(target, f)?;
        let root = fs.root_dir();
        for item in items {
            let path = item.on_card();
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            let mut dir = root.clone();
            for part in parent.split('/').filter(|p| !p.is_empty()) {
                dir = match dir.open_dir(part) {
                    Ok(d) => d,
                    Err(_) => {
                        let io = |e: std::io::Error| fail(target, format!("{path}: {e}"));
                        let before = fatfix::snapshot(&sync, base).map_err(io)?;
                        let d = dir.create_dir(part).map_err(io)?;
                        fatfix::fix_new_dir(&sync, base, &before).map_err(io)?;
                        d
                    }
                };
            }
            let mut file = dir
                .create_file(name)
                .map_err(|e| fail(target, format!("{path}: {e}")))?;
            file.write_all(&item.data)
                .and_then(|()| file.truncate())
                .and_then(|()| file.flush())
                .map_err(|e| fail(target, format!("{path}: {e}")))?;
        }
        drop(root);
        fs.unmount().map_err(|e| fail(target, e))?;
    }
    sync.sync_all().map_err(|e| Error::io(target, e))?;
    drop(sync);
    // Read back through a new FAT instance.
    let fs = fat(target, open_card(target, false)?)?;
    let root = fs.root_dir();
    for item in items {
        let path = item.on_card();
        let mut got = Vec::new();
        root.open_file(&path)
            .and_then(|mut f| f.read_to_end(&mut got))
            .map_err(|e| fail(target, format!("reading back {path}: {e}")))?;
        if got != item.data {
            return Err(fail(
                target,
                format!("{path} reads back different from {}", item.from.display()),
            ));
        }
    }
    Ok(items.iter().map(Item::on_card).collect())
}
