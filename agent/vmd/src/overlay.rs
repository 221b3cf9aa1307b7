//! Each VM's copy-on-write disk: a qcow2 overlay whose backing file is the template's base image.
//! The base is never written (QEMU opens backing files read-only), so one base serves every VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use betaas_templates::ImageFormat;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OverlayError {
    #[error("qemu-img/tar for {overlay}: {source}")]
    Spawn {
        overlay: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making {overlay} from {base} failed: {stderr}")]
    Failed {
        overlay: PathBuf,
        base: PathBuf,
        stderr: String,
    },
}

/// `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY`. The backing path is absolute so the
/// overlay does not depend on the daemon's working directory.
pub fn create(base: &Path, format: ImageFormat, overlay: &Path) -> Result<(), OverlayError> {
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
    let fmt = match format {
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::Raw => "raw",
    };
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", fmt])
        .arg(overlay)
        .output()
        .map_err(|source| OverlayError::Spawn {
            overlay: overlay.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(OverlayError::Failed {
            overlay: overlay.to_owned(),
            base,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A container's root: the template's rootfs tarball unpacked into the VM's own directory (the
/// template's copy is never the container's root, like a base image is never a VM's disk).
pub fn unpack_rootfs(tarball: &Path, into: &Path) -> Result<(), OverlayError> {
    let spawn = |source| OverlayError::Spawn {
        overlay: into.to_owned(),
        source,
    };
    std::fs::create_dir_all(into).map_err(spawn)?;
    // GNU tar finds the compression itself; busybox tar (the gateway's) needs to be told.
    let mut magic = [0u8; 2];
    let gzip = std::fs::File::open(tarball)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    let out = Command::new("tar")
        .arg(if gzip { "-xzpf" } else { "-xpf" })
        .arg(tarball)
        .arg("-C")
        .arg(into)
        .output()
        .map_err(spawn)?;
    if !out.status.success() {
        return Err(OverlayError::Failed {
            overlay: into.to_owned(),
            base: tarball.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// A container root of hard links to `cache`, the tarball unpacked once (by its sha256: a new
/// build gets a new copy; an unpack cut short is never used, it is renamed into place whole).
pub fn link_rootfs(tarball: &Path, cache: &Path, into: &Path) -> Result<(), OverlayError> {
    let spawn = |source| OverlayError::Spawn {
        overlay: into.to_owned(),
        source,
    };
    if !cache.is_dir() {
        let tmp = cache.with_extension("unpacking");
        let _ = std::fs::remove_dir_all(&tmp);
        unpack_rootfs(tarball, &tmp)?;
        std::fs::rename(&tmp, cache).map_err(spawn)?;
    }
    if let Some(parent) = into.parent() {
        std::fs::create_dir_all(parent).map_err(spawn)?;
    }
    let out = Command::new("cp")
        .arg("-al")
        .arg(cache)
        .arg(into)
        .output()
        .map_err(spawn)?;
    if !out.status.success() {
        return Err(OverlayError::Failed {
            overlay: into.to_owned(),
            base: cache.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Bytes the overlay occupies on the host (what the VM has written), for stats when libvirt
/// cannot say (the test driver, a shut-off domain).
pub fn allocated_bytes(overlay: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(overlay).map_or(0, |m| m.blocks() * 512)
}
