//! Writing the mapped ranges, and reading them back.
//!
//! A block device is opened `O_EXCL` (the kernel refuses if anything has it mounted or claimed)
//! and written with `O_DIRECT`: an I/O error surfaces on the write of the range that caused it,
//! not later at `fsync` with no place attached, and the page cache is not filled with a card's
//! worth of data. Read-back also uses `O_DIRECT`, so it reads the card, not the cache. A plain file
//! is written through the page cache (tmpfs has no `O_DIRECT`) and `fsync`ed.
//!
//! The image's bytes of each range are hashed as they are written and compared with the bmap's
//! checksum (an image changed after its bmap was made is caught, as bmaptool does); read-back
//! compares the target's bytes with that checksum and names every range that differs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::bmap::{Map, Range};
use crate::disk::{self, Partition};
use crate::target::{Kind, Target};
use crate::{human, Error};

/// I/O size, and the alignment `O_DIRECT` needs (4 KiB covers 512 and 4096-byte sectors).
const CHUNK: usize = 4 << 20;
const ALIGN: usize = 4096;

/// A heap buffer whose start is `ALIGN`-aligned, for `O_DIRECT` (safe code: a larger `Vec`,
/// used from its first aligned byte).
struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let v = vec![0u8; len + ALIGN];
        let start = (ALIGN - v.as_ptr() as usize % ALIGN) % ALIGN;
        AlignedBuf { v, start }
    }
    fn get(&mut self, n: usize) -> &mut [u8] {
        &mut self.v[self.start..self.start + n]
    }
}

fn aligned(offset: u64, n: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && n.is_multiple_of(ALIGN)
}

/// The target, open for writing.
pub struct Output {
    pub path: PathBuf,
    /// Through the page cache: files, and the unaligned tail of an image on a device.
    buffered: File,
    /// `O_DIRECT | O_EXCL`, for devices.
    direct: Option<File>,
}

/// Opens (creating or growing a plain file) for writing an image of `image_size` bytes. A file
/// created here gets mode 0600 when `private` (it will hold private keys), else 0644; an
/// existing file that will hold private keys loses its group and other permissions.
pub fn open_output(target: &Target, image_size: u64, private: bool) -> Result<Output, Error> {
    let path = &target.path;
    match &target.kind {
        Kind::File { .. } => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(if private { 0o600 } else { 0o644 })
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            if private {
                tighten(path, &f)?;
            }
            let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
            if len < image_size {
                f.set_len(image_size).map_err(|e| Error::io(path, e))?;
            }
            Ok(Output {
                path: path.clone(),
                buffered: f,
                direct: None,
            })
        }
        Kind::Device(_) => {
            let direct = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::EXCL).bits() as i32)
                .open(path)
                .map_err(|e| busy(path, e))?;
            let buffered = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            Ok(Output {
                path: path.clone(),
                buffered,
                direct: Some(direct),
            })
        }
    }
}

/// A private key is going into this file: no access for group and others.
pub fn tighten(path: &Path, f: &File) -> Result<(), Error> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = f.metadata().map_err(|e| Error::io(path, e))?.mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))
            .map_err(|e| Error::io(path, e))?;
        eprintln!(
            "note: {} will hold private keys: mode {:o} -> {:o}",
            path.display(),
            mode & 0o777,
            mode & 0o700
        );
    }
    Ok(())
}

fn busy(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
        Error::Refused {
            target: path.to_owned(),
            reason: "the kernel reports it busy (mounted, or claimed by another program)".into(),
        }
    } else {
        Error::io(path, e)
    }
}

/// How a range is named in errors: number, byte span, size and the partition it lies in.
pub fn describe(r: &Range, total: usize, parts: &[Partition]) -> String {
    format!(
        "{} of {total} (bytes {}-{}, {}, {})",
        r.number,
        r.offset,
        r.end() - 1,
        human(r.len),
        disk::place(parts, r.offset)
    )
}

/// The image's partitions, for naming ranges (empty if it has no MBR).
pub fn image_partitions(image: &Path) -> Vec<Partition> {
    File::open(image)
        .ok()
        .and_then(|mut f| disk::partitions(&mut f).ok())
        .unwrap_or_default()
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    /// sha256 of each range's image bytes, in map order.
    pub sums: Vec<[u8; 32]>,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Writes every range of `map` from `image` to `out`, then flushes it to the medium.
pub fn write(image: &Path, map: &Map, out: &Output, bar: &ProgressBar) -> Result<Written, Error> {
    let start = Instant::now();
    let img = File::open(image).map_err(|e| Error::io(image, e))?;
    let parts = image_partitions(image);
    let mut buf = AlignedBuf::new(CHUNK);
    let mut sums = Vec::with_capacity(map.ranges.len());
    bar.set_length(map.mapped_bytes());
    for r in &map.ranges {
        let mut h = Sha256::new();
        let mut at = r.offset;
        while at < r.end() {
            let n = (r.end() - at).min(CHUNK as u64) as usize;
            let b = buf.get(n);
            img.read_exact_at(b, at).map_err(|e| Error::io(image, e))?;
            h.update(&*b);
            let dest = match &out.direct {
                Some(d) if aligned(at, n) => d,
                _ => &out.buffered,
            };
            dest.write_all_at(b, at).map_err(|e| Error::Write {
                target: out.path.clone(),
                range: format!("{} at byte {at}", describe(r, map.ranges.len(), &parts)),
                source: e,
            })?;
            at += n as u64;
            bar.inc(n as u64);
        }
        let sum: [u8; 32] = h.finalize().into();
        if let Some(want) = r.sha256 {
            if want != sum {
                return Err(Error::Bmap(
                    image.to_owned(),
                    format!(
                        "range {}: the image's bytes do not match the bmap's checksum (was the image changed after its bmap was made?)",
                        describe(r, map.ranges.len(), &parts)
                    ),
                ));
            }
        }
        sums.push(sum);
    }
    // Flush: the direct handle's device cache and the buffered handle's pages.
    for f in out.direct.iter().chain(std::iter::once(&out.buffered)) {
        f.sync_all().map_err(|e| Error::Write {
            target: out.path.clone(),
            range: "(flushing to the medium)".into(),
            source: e,
        })?;
    }
    Ok(Written {
        sums,
        bytes: map.mapped_bytes(),
        elapsed: start.elapsed(),
    })
}

/// Reads back every range of `map` from `target` and compares it with `expected` (the sums a
/// write computed), else the bmap's checksums, else the image's bytes. Bytes inside `skip` (the
/// boot partition of a provisioned card) are not compared. Names every range that differs.
pub fn verify(
    image: &Path,
    map: &Map,
    expected: Option<&[[u8; 32]]>,
    target: &Path,
    skip: Option<(u64, u64)>,
    bar: &ProgressBar,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let device = std::fs::metadata(target)
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        .unwrap_or(false);
    let buffered = File::open(target).map_err(|e| Error::io(target, e))?;
    let direct = if device {
        Some(
            OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(target)
                .map_err(|e| Error::io(target, e))?,
        )
    } else {
        None
    };
    if device {
        // The unaligned tail (if any) is read through the cache: drop what it holds.
        let _ = rustix::fs::fadvise(&buffered, 0, None, rustix::fs::Advice::DontNeed);
    }
    let parts = image_partitions(image);
    let img = File::open(image).map_err(|e| Error::io(image, e))?;
    let mut buf = AlignedBuf::new(CHUNK);
    let hash = |f: &File, direct: Option<&File>, from: u64, to: u64, buf: &mut AlignedBuf| {
        let mut h = Sha256::new();
        let mut at = from;
        while at < to {
            let n = (to - at).min(CHUNK as u64) as usize;
            let src = match direct {
                Some(d) if aligned(at, n) => d,
                _ => f,
            };
            let b = buf.get(n);
            src.read_exact_at(b, at)?;
            h.update(&*b);
            at += n as u64;
        }
        Ok::<[u8; 32], std::io::Error>(h.finalize().into())
    };
    bar.set_length(map.mapped_bytes());
    let mut differ = Vec::new();
    for (i, r) in map.ranges.iter().enumerate() {
        let pieces = match skip {
            Some((s, e)) if r.offset < e && s < r.end() => {
                let mut v = Vec::new();
                if r.offset < s {
                    v.push((r.offset, s));
                }
                if e < r.end() {
                    v.push((e, r.end()));
                }
                v
            }
            _ => vec![(r.offset, r.end())],
        };
        let whole = pieces == [(r.offset, r.end())];
        for (from, to) in pieces {
            let got = hash(&buffered, direct.as_ref(), from, to, &mut buf)
                .map_err(|e| Error::io(target, e))?;
            let want = match (whole, expected, r.sha256) {
                (true, Some(sums), _) => sums[i],
                (true, None, Some(s)) => s,
                _ => hash(&img, None, from, to, &mut buf).map_err(|e| Error::io(image, e))?,
            };
            if got != want {
                differ.push(format!("range {}", describe(r, map.ranges.len(), &parts)));
                break;
            }
        }
        bar.inc(r.len);
    }
    if differ.is_empty() {
        Ok(start.elapsed())
    } else {
        Err(Error::Verify {
            target: target.to_owned(),
            ranges: differ,
        })
    }
}

/// sha256 of the first `len` bytes of `path` (what a card holds over the image's span).
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io(path, e))?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(crate::bmap::hex(&h.finalize().into()))
}
