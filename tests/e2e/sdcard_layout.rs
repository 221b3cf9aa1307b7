//! The Cubietruck SD card image, checked from the outside with standard tools (sfdisk, mtools,
//! debugfs), against the Debian packages it was built from.

use std::path::{Path, PathBuf};
use std::process::Command;

use betaas_e2e::repo;

fn out(board: &str) -> PathBuf {
    let dir = repo().join("out").join(board);
    assert!(
        dir.join("sdcard.img").exists(),
        "{}/sdcard.img missing: run `make image BOARD={board}` (make test does)",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// (start, size) in bytes of each partition, from sfdisk's own reading of the table.
fn partitions(img: &Path) -> Vec<(u64, u64)> {
    let json = run(Command::new("sfdisk").arg("--json").arg(img));
    let v: serde_json::Value = serde_json::from_slice(&json).expect("sfdisk json");
    assert_eq!(v["partitiontable"]["label"], "dos");
    v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().expect("start") * 512,
                p["size"].as_u64().expect("size") * 512,
            )
        })
        .collect()
}

fn pkg(path: &str) -> Vec<u8> {
    let p = repo().join("dl/pkgs").join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn kernel_version() -> String {
    let dir = repo().join("dl/pkgs/linux-image-armmp/usr/lib/modules");
    let entry = std::fs::read_dir(&dir)
        .expect("modules dir")
        .next()
        .expect("one kernel")
        .expect("entry");
    entry.file_name().to_string_lossy().into_owned()
}

#[test]
#[ignore = "needs `make image BOARD=cubietruck`: run by `make test`"]
fn cubietruck_sdcard_has_uboot_boot_and_rootfs() {
    let dir = out("cubietruck");
    let img_path = dir.join("sdcard.img");
    let img = std::fs::read(&img_path).expect("read sdcard.img");
    assert!(
        img.len().is_power_of_two(),
        "size {} is not a power of two",
        img.len()
    );

    // U-Boot with its SPL, raw at 8 KiB, byte for byte the Debian package's Cubietruck build.
    let spl = pkg("u-boot-sunxi/usr/lib/u-boot/Cubietruck/u-boot-sunxi-with-spl.bin");
    assert_eq!(
        &img[8192..8192 + spl.len()],
        &spl[..],
        "U-Boot SPL at 8192 differs"
    );
    assert_eq!(&spl[4..12], b"eGON.BT0", "not an Allwinner boot0 header");

    let parts = partitions(&img_path);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(
        parts[0].0 >= 8192 + spl.len() as u64,
        "p1 overlaps U-Boot: {parts:?}"
    );
    assert_eq!(img[446] & 0x80, 0x80, "p1 not marked bootable");

    // Boot partition (FAT): kernel, the A20 Cubietruck DTB, initramfs, extlinux.conf naming them.
    let fat = format!("{}@@{}", img_path.display(), parts[0].0);
    let kver = kernel_version();
    let zimage = run(Command::new("mtype").args(["-i", &fat, "::/zImage"]));
    assert!(
        zimage == pkg(&format!("linux-image-armmp/boot/vmlinuz-{kver}")),
        "zImage is not the package's kernel"
    );
    let dtb = run(Command::new("mtype").args(["-i", &fat, "::/sun7i-a20-cubietruck.dtb"]));
    assert!(
        dtb == pkg(&format!(
            "linux-image-armmp/usr/lib/linux-image-{kver}/sun7i-a20-cubietruck.dtb"
        )),
        "DTB differs"
    );
    let ext = String::from_utf8(run(Command::new("mtype").args([
        "-i",
        &fat,
        "::/extlinux/extlinux.conf",
    ])))
    .expect("utf8");
    for want in [
        "kernel /zImage",
        "fdt /sun7i-a20-cubietruck.dtb",
        "initrd /initrd.img",
        "console=ttyS0,115200",
        "root=/dev/mmcblk0p2",
    ] {
        assert!(ext.contains(want), "extlinux.conf lacks {want:?}:\n{ext}");
    }

    // Root filesystem (ext4): read with debugfs from a copy of the partition.
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs.ext4");
    let (start, size) = parts[1];
    std::fs::write(&rootfs, &img[start as usize..(start + size) as usize]).expect("copy p2");
    let cat = |path: &str| {
        run(Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&rootfs))
    };
    let agent =
        std::fs::read(repo().join("target/armv7-unknown-linux-gnueabihf/release/betaas-agent"))
            .expect("the ARM agent (make agent-arm)");
    assert!(
        cat("/usr/bin/betaas-agent") == agent,
        "/usr/bin/betaas-agent is not the built agent"
    );
    let toml = String::from_utf8(cat("/etc/betaas/agent.toml")).expect("utf8");
    assert_eq!(
        toml,
        std::fs::read_to_string(repo().join("boards/cubietruck/agent.toml")).expect("board config")
    );
    let inittab = String::from_utf8(cat("/etc/inittab")).expect("utf8");
    assert!(
        inittab.contains("::respawn:/usr/libexec/betaas/agent-service"),
        "{inittab}"
    );
    let service = String::from_utf8(cat("/usr/libexec/betaas/agent-service")).expect("utf8");
    assert!(
        service.contains("/usr/bin/betaas-agent --config /etc/betaas/agent.toml"),
        "{service}"
    );
    assert!(String::from_utf8(cat("/etc/hosts"))
        .expect("utf8")
        .contains("localhost"));
    let fstab = String::from_utf8(cat("/etc/fstab")).expect("utf8");
    assert!(
        fstab.contains("/dev/mmcblk0p3  /var/lib/betaas  ext4"),
        "{fstab}"
    );
    let resolv = run(Command::new("debugfs")
        .args(["-R", "stat /etc/resolv.conf"])
        .arg(&rootfs));
    assert!(
        String::from_utf8_lossy(&resolv).contains("/run/resolv.conf"),
        "resolv.conf is not the /run link"
    );
    // mosquitto (for a gateway that runs the instance's broker): Debian's binary and libssl as
    // packaged, the loader where the binary's PT_INTERP points, the service in inittab.
    assert!(
        cat("/usr/sbin/mosquitto") == pkg("mosquitto/usr/sbin/mosquitto"),
        "/usr/sbin/mosquitto is not Debian's"
    );
    assert!(
        cat("/lib/arm-linux-gnueabihf/libssl.so.3")
            == pkg("libssl3t64/usr/lib/arm-linux-gnueabihf/libssl.so.3"),
        "libssl.so.3 is not Debian's"
    );
    let interp = run(Command::new("debugfs")
        .args(["-R", "stat /lib/ld-linux-armhf.so.3"])
        .arg(&rootfs));
    assert!(
        String::from_utf8_lossy(&interp).contains("arm-linux-gnueabihf/ld-linux-armhf.so.3"),
        "the loader link is missing"
    );
    assert!(
        inittab.contains("::respawn:/usr/libexec/betaas/broker-service"),
        "{inittab}"
    );
    // The Cubietruck's Ethernet (GMAC) driver is installed for modprobe.
    let dep = String::from_utf8(cat(&format!("/lib/modules/{kver}/modules.dep"))).expect("utf8");
    assert!(
        dep.contains("dwmac-sunxi.ko"),
        "dwmac-sunxi missing from modules.dep"
    );

    // Data partition: ext4, labelled, empty and writable by the agent.
    let (start, size) = parts[2];
    let data = tmp.path().join("data.ext4");
    std::fs::write(&data, &img[start as usize..(start + size) as usize]).expect("copy p3");
    let stats =
        String::from_utf8(run(Command::new("dumpe2fs").arg("-h").arg(&data))).expect("utf8");
    assert!(stats.contains("Filesystem volume name:   data"), "{stats}");
}

#[test]
#[ignore = "needs `make image BOARD=cubietruck`: run by `make test`"]
fn manifest_records_package_versions_and_hashes() {
    let dir = out("cubietruck");
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).expect("manifest.txt");
    for name in ["linux-image-", "u-boot-sunxi ", "busybox-static "] {
        let line = manifest
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{manifest}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let deb = repo().join("dl/debs").join(fields[3]);
        let out = run(Command::new("sha256sum").arg(&deb));
        assert!(
            String::from_utf8_lossy(&out).starts_with(fields[2]),
            "{line}: hash differs from {}",
            deb.display()
        );
    }
}
