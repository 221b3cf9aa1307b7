//! Test helpers: a small card image made the way `image/build.sh` makes the real one (sfdisk,
//! mkfs.vfat + mcopy, mke2fs -d, dd into place, a raw "SPL" at 8 KiB, `betaas-flash bmap create`),
//! loop devices and device-mapper tables that are removed even when a test fails, and the
//! independent readers (mtools, fsck) the tests check with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MIB: u64 = 1 << 20;
pub const IMG_MB: u64 = 64;
pub const BOOT_AT_MB: u64 = 1;
pub const BOOT_MB: u64 = 16;
pub const ROOT_MB: u64 = 24;

pub fn flash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_betaas-flash"))
}

/// Runs, and panics with its stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fastrand::fill(&mut v);
    v
}

/// A card image: MBR, a random "SPL" at 8 KiB, p1 FAT with a kernel-sized random file and an
/// extlinux.conf, p2 ext4 with random files, and its bmap.
pub struct Card {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub spl: Vec<u8>,
    /// Files on the FAT before provisioning: (path, bytes).
    pub fat_files: Vec<(String, Vec<u8>)>,
}

impl Card {
    pub fn new() -> Card {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let img = d.join("sdcard.img");
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{IMG_MB}M"))
            .arg(&img));
        let table = format!(
            "label: dos\nstart={BOOT_AT_MB}MiB, size={BOOT_MB}MiB, type=c, bootable\nsize={ROOT_MB}MiB, type=83\n"
        );
        let mut sf = Command::new("sfdisk")
            .arg("-q")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk");
        use std::io::Write;
        sf.stdin
            .take()
            .expect("stdin")
            .write_all(table.as_bytes())
            .expect("table");
        assert!(sf.wait().expect("sfdisk").success());

        let boot = d.join("boot.vfat");
        run(Command::new("mkfs.vfat")
            .args(["-n", "BOOT", "-C"])
            .arg(&boot)
            .arg((BOOT_MB * 1024).to_string()));
        let src = d.join("bootfiles");
        std::fs::create_dir_all(src.join("extlinux")).expect("mkdir");
        let kernel = random_bytes(700 * 1024 + fastrand::usize(..4096));
        let ext = format!(
            "default betaas\nlabel betaas\n  kernel /zImage\n  append root=/dev/mmcblk0p2 {}\n",
            fastrand::u32(..)
        )
        .into_bytes();
        std::fs::write(src.join("zImage"), &kernel).expect("zImage");
        std::fs::write(src.join("extlinux/extlinux.conf"), &ext).expect("ext");
        run(Command::new("mcopy")
            .arg("-s")
            .arg("-i")
            .arg(&boot)
            .arg(src.join("zImage"))
            .arg(src.join("extlinux"))
            .arg("::/"));

        let rootdir = d.join("rootfs");
        std::fs::create_dir_all(rootdir.join("usr/bin")).expect("mkdir");
        std::fs::write(rootdir.join("usr/bin/agent"), random_bytes(900 * 1024)).expect("agent");
        std::fs::write(rootdir.join("hostname"), b"gw\n").expect("hostname");
        let rootfs = d.join("rootfs.ext4");
        run(Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "rootfs",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&rootdir)
            .arg(&rootfs)
            .arg(format!("{ROOT_MB}M")));

        let put = |file: &Path, mb: u64| {
            run(Command::new("dd")
                .arg(format!("if={}", file.display()))
                .arg(format!("of={}", img.display()))
                .args(["bs=1M", "conv=notrunc,fsync", "status=none"])
                .arg(format!("seek={mb}")));
        };
        put(&boot, BOOT_AT_MB);
        put(&rootfs, BOOT_AT_MB + BOOT_MB);
        let spl = random_bytes(40 * 1024);
        let spl_file = d.join("spl.bin");
        std::fs::write(&spl_file, &spl).expect("spl");
        run(Command::new("dd")
            .arg(format!("if={}", spl_file.display()))
            .arg(format!("of={}", img.display()))
            .args(["bs=1", "seek=8192", "conv=notrunc", "status=none"]));

        run(flash()
            .args(["bmap", "create", "--image"])
            .arg(&img)
            .arg("--from")
            .arg(format!("{}@{BOOT_AT_MB}MiB", boot.display()))
            .arg("--from")
            .arg(format!("{}@{}MiB", rootfs.display(), BOOT_AT_MB + BOOT_MB)));
        Card {
            img,
            spl,
            fat_files: vec![
                ("zImage".into(), kernel),
                ("extlinux/extlinux.conf".into(), ext),
            ],
            dir,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.img).expect("image")
    }

    pub fn bmap(&self) -> PathBuf {
        PathBuf::from(format!("{}.bmap", self.img.display()))
    }

    /// (offset, len) of each mapped range, from the bmap.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let xml = std::fs::read_to_string(self.bmap()).expect("bmap");
        xml.lines()
            .filter(|l| l.contains("<Range"))
            .map(|l| {
                let r = l
                    .split('>')
                    .nth(1)
                    .and_then(|s| s.split('<').next())
                    .expect("range");
                let (a, b) = r.trim().split_once('-').unwrap_or((r.trim(), r.trim()));
                let (a, b): (u64, u64) = (a.parse().expect("a"), b.parse().expect("b"));
                (a * 4096, (b - a + 1) * 4096)
            })
            .collect()
    }
}

/// A valid agent config for gateway `gw` and broker `host:port`.
pub fn agent_toml(gw: &str, host: &str, port: u16) -> String {
    format!(
        "gateway_id = \"{gw}\"\n\n[mqtt]\nhost = \"{host}\"\nport = {port}\n\n[[things]]\nid = \"temp0\"\ndriver = \"tmp105\"\nbus = \"i2c\"\ndevice = \"/dev/i2c-0\"\naddress = 0x48\ninterval_ms = 1000\n"
    )
}

/// A file from the FAT partition at `offset` of `image`, read by mtools (not by betaas-flash).
pub fn mtype(image: &Path, offset: u64, path: &str) -> Vec<u8> {
    run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::/{path}")))
    .stdout
}

/// `fsck.fat -n` and `e2fsck -fn` on copies of p1 and p2 of `disk`: both filesystems consistent.
pub fn fsck_partitions(disk: &Path, scratch: &Path) {
    let data = std::fs::read(disk).expect("read disk");
    let p1 = &data[(BOOT_AT_MB * MIB) as usize..((BOOT_AT_MB + BOOT_MB) * MIB) as usize];
    let p2 = &data[((BOOT_AT_MB + BOOT_MB) * MIB) as usize
        ..((BOOT_AT_MB + BOOT_MB + ROOT_MB) * MIB) as usize];
    let f1 = scratch.join("p1.vfat");
    let f2 = scratch.join("p2.ext4");
    std::fs::write(&f1, p1).expect("p1");
    std::fs::write(&f2, p2).expect("p2");
    run(Command::new("fsck.fat").arg("-n").arg(&f1));
    run(Command::new("e2fsck").arg("-fn").arg(&f2));
    let _ = std::fs::remove_file(f1);
    let _ = std::fs::remove_file(f2);
}

/// A loop device over a file, detached on drop (also when the test panics).
pub struct Loop {
    pub dev: PathBuf,
    nodes: Vec<PathBuf>,
}

impl Loop {
    pub fn attach(file: &Path, partscan: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if partscan {
            cmd.arg("-P");
        }
        let o = run(cmd.arg(file));
        let dev = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        let mut l = Loop {
            dev,
            nodes: Vec::new(),
        };
        if partscan {
            l.partition_nodes();
        }
        l
    }

    /// This kernel may have no MBR parser (then `partx -a` adds the partitions from user space)
    /// and without udev nobody makes /dev/loopNpK: make them from sysfs (removed on drop).
    fn partition_nodes(&mut self) {
        let _ = Command::new("partx").arg("-a").arg(&self.dev).output();
        let name = self
            .dev
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let sys = PathBuf::from("/sys/block").join(&name);
        for e in std::fs::read_dir(&sys)
            .expect("sysfs")
            .filter_map(Result::ok)
        {
            let part = e.file_name().to_string_lossy().into_owned();
            if !part.starts_with(&format!("{name}p")) {
                continue;
            }
            let node = PathBuf::from("/dev").join(&part);
            if node.exists() {
                continue;
            }
            let devt = std::fs::read_to_string(e.path().join("dev")).expect("dev");
            let (ma, mi) = devt.trim().split_once(':').expect("M:m");
            run(Command::new("mknod").arg(&node).args(["b", ma, mi]));
            self.nodes.push(node);
        }
    }

    /// A loop device over a new file of `mb` MiB filled with 0xa5 (a used card's old content).
    pub fn with_garbage(dir: &Path, mb: u64) -> (Loop, PathBuf) {
        let f = dir.join(format!("card-{}.bin", fastrand::u32(..)));
        std::fs::write(&f, vec![0xa5u8; (mb * MIB) as usize]).expect("backing file");
        (Loop::attach(&f, false), f)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = std::fs::remove_file(n);
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, unmounted on drop (declare it after the loop device it is on).
pub struct Mount(pub PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A device-mapper device, removed on drop (declare it after the loop device under it).
pub struct Dm {
    pub name: String,
}

impl Dm {
    pub fn create(table: &str) -> Dm {
        let name = format!("betaas-flash-test-{}", fastrand::u32(..));
        run(Command::new("dmsetup").args(["create", &name, "--table", table]));
        Dm { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/dev/mapper").join(&self.name)
    }
}

impl Drop for Dm {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup")
            .args(["remove", &self.name])
            .status();
    }
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(data)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
