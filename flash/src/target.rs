//! Where the image goes, and whether that is safe: a plain file (created or grown), or a whole
//! block device that holds nothing in use, is removable, not larger than an SD card and not
//! smaller than the image.
//!
//! Linux tells what is in use through files, read here: `/proc/self/mountinfo` (every mount's
//! device number), `/proc/swaps`, and sysfs (`/sys/dev/block/M:m` → the disk, its partitions, its
//! `holders/` such as device-mapper or RAID on top, `slaves/` below a dm device, `removable`,
//! `size`). A mount on a dm device counts against every disk under it. Opening the device
//! `O_EXCL` for writing (see [`crate::copy`]) is the kernel's own last check.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{human, Error};

/// Larger than this is more likely a PC's disk than an SD card: refused unless `--force`.
pub const MAX_CARD: u64 = 128 << 30;

#[derive(Debug, Clone)]
pub enum Kind {
    /// A plain file: created if missing, grown to the image's size if smaller.
    File {
        exists: bool,
    },
    Device(Disk),
}

#[derive(Debug, Clone)]
pub struct Disk {
    /// Kernel name (`sdb`, `mmcblk0`, `loop3`, `dm-1`).
    pub name: String,
    pub size: u64,
    pub removable: bool,
    /// Vendor and model from sysfs, when known.
    pub model: String,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub kind: Kind,
}

impl Target {
    pub fn is_device(&self) -> bool {
        matches!(self.kind, Kind::Device(_))
    }

    /// One line for the confirmation prompt and logs.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::File { exists: true } => format!("file {}", self.path.display()),
            Kind::File { exists: false } => format!("new file {}", self.path.display()),
            Kind::Device(d) => format!(
                "{} ({}{}, {}{})",
                self.path.display(),
                d.name,
                if d.model.is_empty() {
                    String::new()
                } else {
                    format!(" {}", d.model)
                },
                human(d.size),
                if d.removable { ", removable" } else { "" }
            ),
        }
    }
}

/// Where the system's state is read from (the real `/proc` and `/sys`, or a test's copy).
#[derive(Debug, Clone)]
pub struct System {
    pub sysfs: PathBuf,
    pub mountinfo: String,
    pub swaps: String,
}

impl System {
    pub fn live() -> System {
        System {
            sysfs: "/sys".into(),
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            swaps: std::fs::read_to_string("/proc/swaps").unwrap_or_default(),
        }
    }

    fn dev_dir(&self, (major, minor): (u32, u32)) -> Option<PathBuf> {
        std::fs::canonicalize(self.sysfs.join(format!("dev/block/{major}:{minor}"))).ok()
    }

    /// The whole disks under device `devt`: its own disk (the parent of a partition), and for a
    /// stacked device (dm, md) the disks under each of its `slaves`.
    pub fn disks_under(&self, devt: (u32, u32)) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_disks(devt, &mut out, 0);
        out
    }

    fn collect_disks(&self, devt: (u32, u32), out: &mut BTreeSet<String>, depth: usize) {
        let Some(dir) = self.dev_dir(devt) else {
            return;
        };
        let disk = if dir.join("partition").exists() {
            dir.parent().and_then(Path::file_name)
        } else {
            dir.file_name()
        };
        if let Some(d) = disk {
            out.insert(d.to_string_lossy().into_owned());
        }
        if depth > 8 {
            return;
        }
        for slave in read_dir_names(&dir.join("slaves")) {
            let dev = std::fs::read_to_string(dir.join("slaves").join(&slave).join("dev"))
                .ok()
                .and_then(|s| parse_devt(s.trim()));
            if let Some(d) = dev {
                self.collect_disks(d, out, depth + 1);
            }
        }
    }

    /// Why the disk `name` is in use, if it is: a mount (the root filesystem named first), swap,
    /// or a device stacked on it.
    pub fn in_use(&self, name: &str) -> Option<String> {
        let mut mounts = parse_mountinfo(&self.mountinfo);
        mounts.sort_by_key(|m| m.point != "/"); // the root filesystem first: the clearest reason
        for m in &mounts {
            let mut devts = vec![m.devt];
            if let Some(d) = block_devt(Path::new(&m.source)) {
                devts.push(d);
            }
            if devts.iter().any(|&d| self.disks_under(d).contains(name)) {
                return Some(if m.point == "/" {
                    format!("it holds the root filesystem / ({})", m.source)
                } else {
                    format!("{} is mounted at {}", m.source, m.point)
                });
            }
        }
        for line in self.swaps.lines().skip(1) {
            let Some(dev) = line.split_whitespace().next() else {
                continue;
            };
            if let Some(d) = block_devt(Path::new(dev)) {
                if self.disks_under(d).contains(name) {
                    return Some(format!("{dev} is in use as swap"));
                }
            }
        }
        let disk = self.sysfs.join("block").join(name);
        let mut holders = read_dir_names(&disk.join("holders"));
        for part in read_dir_names(&disk) {
            if disk.join(&part).join("partition").exists() {
                holders.extend(read_dir_names(&disk.join(&part).join("holders")));
            }
        }
        if !holders.is_empty() {
            return Some(format!(
                "{} is stacked on it (device-mapper, LVM or RAID)",
                holders.join(", ")
            ));
        }
        None
    }

    fn disk_facts(&self, name: &str) -> Disk {
        let dir = self.sysfs.join("block").join(name);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let size = read("size").parse::<u64>().unwrap_or(0) * 512;
        // SD card slots on the mmc bus and USB readers often say removable=0 for the card
        // itself: the bus counts too.
        let bus = std::fs::canonicalize(&dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let removable =
            read("removable") == "1" || name.starts_with("mmcblk") || bus.contains("/usb");
        let model = format!("{} {}", read("device/vendor"), read("device/model"))
            .trim()
            .to_owned();
        Disk {
            name: name.to_owned(),
            size,
            removable,
            model,
        }
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn parse_devt(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn block_devt(path: &Path) -> Option<(u32, u32)> {
    let m = std::fs::metadata(path).ok()?;
    m.file_type()
        .is_block_device()
        .then(|| (rustix::fs::major(m.rdev()), rustix::fs::minor(m.rdev())))
}

#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub devt: (u32, u32),
    pub point: String,
    pub source: String,
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw` → device, mount point, source.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let devt = parse_devt(f.get(2)?)?;
            let point = unescape(f.get(4)?);
            let dash = f.iter().position(|&x| x == "-")?;
            let source = unescape(f.get(dash + 2).copied().unwrap_or(""));
            Some(Mount {
                devt,
                point,
                source,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decides whether `path` may receive an image of `image_size` bytes. `force` lifts only the
/// removable and size-limit checks: a disk in use or too small is always refused.
pub fn inspect(
    path: &Path,
    image: &Path,
    image_size: u64,
    force: bool,
    sys: &System,
) -> Result<Target, Error> {
    let refuse = |reason: String| Error::Refused {
        target: path.to_owned(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.starts_with("/dev") {
                return Err(refuse("no such device (is the card inserted?)".into()));
            }
            return Ok(Target {
                path: path.to_owned(),
                kind: Kind::File { exists: false },
            });
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    if let Ok(im) = std::fs::metadata(image) {
        if im.dev() == meta.dev() && im.ino() == meta.ino() {
            return Err(refuse("it is the image itself".into()));
        }
    }
    if meta.is_file() {
        return Ok(Target {
            path: path.to_owned(),
            kind: Kind::File { exists: true },
        });
    }
    if !meta.file_type().is_block_device() {
        return Err(refuse("neither a plain file nor a block device".into()));
    }
    let devt = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    let dir = sys
        .dev_dir(devt)
        .ok_or_else(|| refuse(format!("device {}:{} is not in sysfs", devt.0, devt.1)))?;
    if dir.join("partition").exists() {
        let disk = dir
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(refuse(format!(
            "it is a partition: give the whole card, /dev/{disk}"
        )));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(why) = sys.in_use(&name) {
        return Err(refuse(why));
    }
    let disk = sys.disk_facts(&name);
    if disk.size == 0 {
        return Err(refuse("it has no medium (size 0)".into()));
    }
    if disk.size < image_size {
        return Err(refuse(format!(
            "it holds {} ({} bytes), the image needs {} ({image_size} bytes)",
            human(disk.size),
            disk.size,
            human(image_size)
        )));
    }
    if !force && !disk.removable {
        return Err(refuse(format!(
            "{name} is not a removable disk (an SD card reader or USB stick is): --force to write it anyway"
        )));
    }
    if !force && disk.size > MAX_CARD {
        return Err(refuse(format!(
            "it holds {}, more than any SD card this is meant for ({}): --force to write it anyway",
            human(disk.size),
            human(MAX_CARD)
        )));
    }
    Ok(Target {
        path: path.to_owned(),
        kind: Kind::Device(disk),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo(
            "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
             40 22 7:3 / /mnt/my\\040card rw - vfat /dev/loop3p1 rw\n\
             garbage\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].devt, (254, 1));
        assert_eq!(m[0].point, "/");
        assert_eq!(m[1].point, "/mnt/my card");
        assert_eq!(m[1].source, "/dev/loop3p1");
    }

    /// A sysfs with disk sda (partitions sda1, sda2), dm-0 on sda2, and sdb (removable).
    fn fake_sysfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let r = t.path();
        let dev = |p: &str, devt: &str| {
            let d = r.join("devices").join(p);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("dev"), format!("{devt}\n")).expect("dev");
            d
        };
        let sda = dev("pci/sda", "8:0");
        std::fs::write(sda.join("size"), "2048\n").expect("size");
        std::fs::write(sda.join("removable"), "0\n").expect("rem");
        for (p, devt) in [("sda1", "8:1"), ("sda2", "8:2")] {
            let d = dev(&format!("pci/sda/{p}"), devt);
            std::fs::write(d.join("partition"), "1").expect("part");
            std::fs::create_dir_all(d.join("holders")).expect("holders");
        }
        let dm = dev("virtual/dm-0", "254:0");
        std::fs::create_dir_all(dm.join("slaves")).expect("slaves");
        symlink(sda.join("sda2"), dm.join("slaves/sda2")).expect("slave link");
        symlink(&dm, sda.join("sda2/holders/dm-0")).expect("holder link");
        let sdb = dev("usb/sdb", "8:16");
        std::fs::write(sdb.join("size"), "4096\n").expect("size");
        std::fs::write(sdb.join("removable"), "1\n").expect("rem");
        std::fs::create_dir_all(r.join("dev/block")).expect("dev/block");
        std::fs::create_dir_all(r.join("block")).expect("block");
        for (devt, p) in [
            ("8:0", "pci/sda"),
            ("8:1", "pci/sda/sda1"),
            ("8:2", "pci/sda/sda2"),
            ("254:0", "virtual/dm-0"),
            ("8:16", "usb/sdb"),
        ] {
            symlink(r.join("devices").join(p), r.join("dev/block").join(devt)).expect("link");
        }
        for (n, p) in [
            ("sda", "pci/sda"),
            ("dm-0", "virtual/dm-0"),
            ("sdb", "usb/sdb"),
        ] {
            symlink(r.join("devices").join(p), r.join("block").join(n)).expect("link");
        }
        t
    }

    #[test]
    fn a_root_on_device_mapper_counts_against_the_disk_under_it() {
        let t = fake_sysfs();
        let sys = System {
            sysfs: t.path().to_owned(),
            mountinfo: "22 1 254:0 / / rw - ext4 /dev/mapper/vg-root rw\n".into(),
            swaps: String::new(),
        };
        assert_eq!(
            sys.disks_under((254, 0)),
            BTreeSet::from(["dm-0".to_owned(), "sda".to_owned()])
        );
        let why = sys.in_use("sda").expect("sda in use");
        assert!(why.contains("root filesystem"), "{why}");
        assert_eq!(sys.in_use("sdb"), None);
        let sdb = sys.disk_facts("sdb");
        assert!(sdb.removable);
        assert_eq!(sdb.size, 4096 * 512);
    }

    #[test]
    fn a_mounted_partition_and_a_holder_are_in_use() {
        let t = fake_sysfs();
        let sys = System {
            sysfs: t.path().to_owned(),
            mountinfo: "40 22 8:1 / /media/boot rw - vfat /dev/sda1 rw\n".into(),
            swaps: String::new(),
        };
        let why = sys.in_use("sda").expect("in use");
        assert!(why.contains("mounted at /media/boot"), "{why}");
        let sys = System {
            mountinfo: String::new(),
            ..sys
        };
        let why = sys.in_use("sda").expect("held");
        assert!(why.contains("dm-0 is stacked on it"), "{why}");
    }
}
