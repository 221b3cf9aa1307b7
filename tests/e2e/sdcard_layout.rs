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
fn cubietruck_sdcard_has_uboot_boot_and_ab_rootfs() {
    let dir = out("cubietruck");
    let img_path = dir.join("sdcard.img");
    let len = std::fs::metadata(&img_path).expect("sdcard.img").len();
    assert!(len.is_power_of_two(), "size {len} is not a power of two");
    // The first MiB (partition table, U-Boot); partitions are copied out one by one (the image
    // is 2 GiB: never read whole).
    let img = {
        use std::io::Read;
        let mut head = vec![0u8; 1 << 20];
        std::fs::File::open(&img_path)
            .and_then(|mut f| f.read_exact(&mut head))
            .expect("read the first MiB");
        head
    };

    // U-Boot with its SPL, raw at 8 KiB, byte for byte the Debian package's Cubietruck build.
    let spl = pkg("u-boot-sunxi/usr/lib/u-boot/Cubietruck/u-boot-sunxi-with-spl.bin");
    assert_eq!(
        &img[8192..8192 + spl.len()],
        &spl[..],
        "U-Boot SPL at 8192 differs"
    );
    assert_eq!(&spl[4..12], b"eGON.BT0", "not an Allwinner boot0 header");

    let parts = partitions(&img_path);
    // p1 boot, p2 slot A, p3 slot B (the same size), p4 data.
    assert_eq!(parts.len(), 4, "{parts:?}");
    assert_eq!(
        parts[1].1, parts[2].1,
        "slots A and B differ in size: {parts:?}"
    );
    assert!(
        parts[0].0 >= 8192 + spl.len() as u64,
        "p1 overlaps U-Boot: {parts:?}"
    );
    assert_eq!(img[446] & 0x80, 0x80, "p1 not marked bootable");

    // Boot partition (FAT): only the A/B boot script; no extlinux.conf (U-Boot would prefer it).
    let fat = format!("{}@@{}", img_path.display(), parts[0].0);
    let kver = kernel_version();
    let scr = run(Command::new("mtype").args(["-i", &fat, "::/boot.scr"]));
    assert_eq!(
        &scr[..4],
        &[0x27, 0x05, 0x19, 0x56],
        "boot.scr is not a U-Boot image"
    );
    let script = String::from_utf8_lossy(&scr[64..]).into_owned();
    for want in [
        "for BOOT_SLOT in \"${BOOT_ORDER}\"",
        "setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1",
        "setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1",
        "saveenv",
        "root=/dev/mmcblk0p${betaas_part}",
        "rauc.slot=${betaas_slot}",
        "/usr/lib/betaas/boot/sun7i-a20-cubietruck.dtb",
        "console=ttyS0,115200",
    ] {
        assert!(script.contains(want), "boot.scr lacks {want:?}:\n{script}");
    }
    let dir_listing =
        String::from_utf8(run(Command::new("mdir").args(["-b", "-i", &fat, "::/"]))).expect("utf8");
    assert!(!dir_listing.contains("extlinux"), "{dir_listing}");

    // Root filesystem (ext4): read with debugfs from a copy of the partition.
    let rootfs = partition(&img_path, 1);
    // Slot B is written with the same system: the same bytes as slot A.
    let slot_bytes = |n: usize| betaas_e2e::range_sha256(&img_path, parts[n].0, parts[n].1);
    assert_eq!(slot_bytes(1), slot_bytes(2), "slot B is not slot A's copy");
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
    // The slot's own kernel, DTB and initramfs, for boot.scr.
    assert!(
        cat("/usr/lib/betaas/boot/zImage")
            == pkg(&format!("linux-image-armmp/boot/vmlinuz-{kver}")),
        "the slot's zImage is not the package's kernel"
    );
    assert!(
        cat("/usr/lib/betaas/boot/sun7i-a20-cubietruck.dtb")
            == pkg(&format!(
                "linux-image-armmp/usr/lib/linux-image-{kver}/sun7i-a20-cubietruck.dtb"
            )),
        "the slot's DTB differs"
    );
    assert!(
        cat("/usr/lib/betaas/boot/initrd.img")
            == std::fs::read(dir.join("initrd.img")).expect("initrd"),
        "the slot's initramfs differs"
    );
    // RAUC: the slots, the U-Boot backend, the keyring the image was built with, the version.
    let rauc = String::from_utf8(cat("/etc/rauc/system.conf")).expect("utf8");
    for want in [
        "compatible=betaas-cubietruck",
        "bootloader=uboot",
        "device=/dev/mmcblk0p2\ntype=ext4\nbootname=A",
        "device=/dev/mmcblk0p3\ntype=ext4\nbootname=B",
    ] {
        assert!(rauc.contains(want), "system.conf lacks {want:?}:\n{rauc}");
    }
    assert!(
        cat("/usr/bin/rauc") == pkg("rauc/usr/bin/rauc"),
        "/usr/bin/rauc is not Debian's"
    );
    assert!(!cat("/etc/rauc/keyring.pem").is_empty(), "no keyring");
    assert_eq!(
        String::from_utf8(cat("/etc/fw_env.config"))
            .expect("utf8")
            .trim(),
        "/boot/uboot.env 0x0000 0x10000"
    );
    assert_eq!(
        cat("/etc/betaas-release"),
        std::fs::read(dir.join("version")).expect("out/cubietruck/version")
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
        fstab.contains("/dev/mmcblk0p4  /var/lib/betaas  ext4"),
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

    // Data partition: ext4, labelled, writable by the agent (its content: the local cloud's test).
    let data = partition(&img_path, 3);
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

/// Partition `n` (0-based) of `img` as e2fsprogs names it (`FILE?offset=N`): read in place,
/// never copied (the image is 2 GiB).
fn partition(img: &Path, n: usize) -> PathBuf {
    let (start, _) = partitions(img)[n];
    PathBuf::from(format!("{}?offset={start}", img.display()))
}

/// (mode, uid, gid, size) of `path` in the ext4 file `fs`, from debugfs's `stat`.
fn stat_in(fs: &Path, path: &str) -> (u32, u32, u32, u64) {
    let text = String::from_utf8(run(Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(fs)))
    .expect("utf8");
    let field = |name: &str| -> String {
        let at = text
            .find(name)
            .unwrap_or_else(|| panic!("{path}: no {name} in debugfs stat:\n{text}"));
        text[at + name.len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    (
        u32::from_str_radix(&field("Mode:"), 8).expect("mode"),
        field("User:").parse().expect("uid"),
        field("Group:").parse().expect("gid"),
        field("Size:").parse().expect("size"),
    )
}

#[test]
#[ignore = "needs `make image BOARD=cubietruck`: run by `make test`"]
fn cubietruck_sdcard_carries_the_local_cloud() {
    let dir = out("cubietruck");
    let img = dir.join("sdcard.img");
    let rootfs = partition(&img, 1);
    let cat = |path: &str| {
        run(Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&rootfs))
    };
    let text = |path: &str| String::from_utf8(cat(path)).expect("utf8");

    // The binaries are Debian's (and the built vmd), root's, executable, not writable by others.
    let vmd = std::fs::read(
        repo().join("target/vmd-armhf/armv7-unknown-linux-gnueabihf/release/betaas-vmd"),
    )
    .expect("the armhf vmd (make vmd-arm)");
    assert!(
        cat("/usr/bin/betaas-vmd") == vmd,
        "/usr/bin/betaas-vmd is not the built one"
    );
    let drv = "usr/lib/arm-linux-gnueabihf/libvirt/connection-driver";
    for (path, from) in [
        (
            "/usr/sbin/libvirtd",
            "libvirt-daemon/usr/sbin/libvirtd".to_owned(),
        ),
        (
            "/usr/lib/libvirt/libvirt_lxc",
            "libvirt-daemon-driver-lxc/usr/lib/libvirt/libvirt_lxc".into(),
        ),
        (
            &format!("/{drv}/libvirt_driver_lxc.so"),
            format!("libvirt-daemon-driver-lxc/{drv}/libvirt_driver_lxc.so"),
        ),
        (
            &format!("/{drv}/libvirt_driver_qemu.so"),
            format!("libvirt-daemon-driver-qemu/{drv}/libvirt_driver_qemu.so"),
        ),
        (
            "/usr/bin/qemu-system-arm",
            "qemu-system-arm/usr/bin/qemu-system-arm".into(),
        ),
        ("/usr/bin/qemu-img", "qemu-utils/usr/bin/qemu-img".into()),
        (
            "/lib/arm-linux-gnueabihf/libvirt.so.0",
            "libvirt0/usr/lib/arm-linux-gnueabihf/libvirt.so.0".into(),
        ),
    ] {
        assert!(cat(path) == pkg(&from), "{path} is not Debian's {from}");
    }
    for path in [
        "/usr/bin/betaas-vmd",
        "/usr/sbin/libvirtd",
        "/usr/bin/qemu-system-arm",
    ] {
        let (mode, uid, gid, _) = stat_in(&rootfs, path);
        assert_eq!((mode & 0o7777, uid, gid), (0o755, 0, 0), "{path}");
    }

    // Started by init, with their configuration.
    let inittab = text("/etc/inittab");
    for svc in ["libvirtd-service", "vmd-service"] {
        assert!(
            inittab.contains(&format!("::respawn:/usr/libexec/betaas/{svc}")),
            "{inittab}"
        );
    }
    let vmd_toml = text("/etc/betaas/vmd.toml");
    for want in [
        "socket = \"/run/betaas/vmd.sock\"",
        "socket_mode = 0o600",
        "templates = [\"/usr/share/betaas/templates\", \"/var/lib/betaas/templates\"]",
        "arch = \"armhf\"",
    ] {
        assert!(
            vmd_toml.contains(want),
            "vmd.toml lacks {want:?}:\n{vmd_toml}"
        );
    }
    let qemu_conf = text("/usr/share/betaas/libvirt/qemu.conf");
    assert!(qemu_conf.contains("user = \"libvirt-qemu\""), "{qemu_conf}");
    assert!(!qemu_conf.contains("security_driver"), "{qemu_conf}");
    assert!(text("/etc/passwd").contains("libvirt-qemu:x:64055:64055:"));
    let rcs = text("/etc/init.d/rcS");
    assert!(rcs.contains("mount -t cgroup2"), "{rcs}");
    let link = String::from_utf8(run(Command::new("debugfs")
        .args(["-R", "stat /etc/libvirt"])
        .arg(&rootfs)))
    .expect("utf8");
    assert!(
        link.contains("/var/lib/betaas/libvirt/etc"),
        "/etc/libvirt is not the data partition's: {link}"
    );
    let agent_toml = text("/etc/betaas/agent.toml");
    // [instance] needs provisioned keys, so the default config carries it commented out, ready.
    assert!(
        agent_toml.contains("\n#vmd_socket = \"/run/betaas/vmd.sock\"\n"),
        "{agent_toml}"
    );

    // The tiny template as a container and as an emulated VM: the built files, readable by the
    // guests' user (libvirt-qemu reads the kernel and base disk), written by nobody.
    let tiny = repo().join("out/templates/tiny-armhf");
    for f in [
        "template.toml",
        "vmlinuz",
        "initrd.img",
        "disk.qcow2",
        "rootfs.tar.gz",
    ] {
        let path = format!("/usr/share/betaas/templates/tiny-armhf/{f}");
        assert!(
            cat(&path) == std::fs::read(tiny.join(f)).expect("built tiny"),
            "{path}"
        );
        let (mode, uid, _, _) = stat_in(&rootfs, &path);
        assert_eq!((mode & 0o7777, uid), (0o644, 0), "{path}");
    }
    let tvm = text("/usr/share/betaas/templates/tiny-vm-armhf/template.toml");
    assert!(
        tvm.contains("name = \"tiny-vm\"") && tvm.contains("kinds = [\"qemu\"]"),
        "{tvm}"
    );
    assert!(!tvm.contains("[lxc]"), "{tvm}");
    let tiny_toml = text("/usr/share/betaas/templates/tiny-armhf/template.toml");
    assert!(
        tiny_toml.contains("[lxc]") && tiny_toml.contains("\"lxc\""),
        "{tiny_toml}"
    );

    // The app template on the data partition (too big for the slots, kept across updates), as a
    // container only: the built rootfs and a descriptor that names no VM kind.
    let data = partition(&img, 3);
    let data_cat = |path: &str| {
        run(Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&data))
    };
    let app = repo().join("out/templates/app-armhf");
    assert!(
        data_cat("/templates/app-armhf/rootfs.tar.gz")
            == std::fs::read(app.join("rootfs.tar.gz")).expect("built app (make templates-app)"),
        "the data partition's app rootfs is not the built one"
    );
    let app_toml = String::from_utf8(data_cat("/templates/app-armhf/template.toml")).expect("utf8");
    assert!(
        app_toml.contains("name = \"app\"") && app_toml.contains("kinds = [\"lxc\"]"),
        "{app_toml}"
    );

    // The manifest prints the image's and its parts' sizes.
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).expect("manifest");
    for want in [
        "betaas-vmd ",
        "libvirt (",
        "qemu-system-arm + qemu-img: ",
        "templates (",
        "data partition templates (",
        "image: 2048 MiB; partitions: ",
    ] {
        assert!(
            manifest.contains(want),
            "manifest lacks {want:?}:\n{manifest}"
        );
    }
    assert!(
        manifest
            .lines()
            .any(|l| l.starts_with("libvirt-daemon-driver-lxc ")),
        "{manifest}"
    );
}
