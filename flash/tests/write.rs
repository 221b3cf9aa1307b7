//! `betaas-flash write`, `verify` and `provision` on real targets: plain files, loop devices
//! (CI runs as root), a loop device whose backing store runs out of space mid-write (this
//! kernel has no device-mapper, so that is the failing device), checked from the outside with
//! mtools, fsck.fat, e2fsck and bmaptool.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::*;

fn provision_dir(dir: &std::path::Path) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let p = dir.join("provision");
    std::fs::create_dir_all(p.join("instance")).expect("mkdir");
    let conf = format!(
        "listener 1883\nallow_anonymous true\n# {}\n",
        fastrand::u64(..)
    )
    .into_bytes();
    let key = random_bytes(32);
    std::fs::write(p.join("mosquitto.conf"), &conf).expect("conf");
    std::fs::write(p.join("instance/gateway.key"), &key).expect("key");
    std::fs::set_permissions(
        p.join("instance/gateway.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    (
        p,
        vec![
            ("betaas/mosquitto.conf".into(), conf),
            ("betaas/instance/gateway.key".into(), key),
        ],
    )
}

/// What every successful write must show, read with tools other than betaas-flash: the bytes
/// before p1 (MBR, SPL) and all of p2 equal the image's, the provisioned files are there, the
/// FAT's other files are untouched, and both filesystems are consistent.
fn check_card(card: &Card, disk: &std::path::Path, provisioned: &[(String, Vec<u8>)]) {
    let img = card.bytes();
    let got = std::fs::read(disk).expect("read target");
    let p1 = (BOOT_AT_MB * MIB) as usize;
    assert!(got[..512] == img[..512], "partition table differs");
    assert!(
        got[8192..8192 + card.spl.len()] == card.spl[..],
        "SPL differs"
    );
    let p2_end = ((BOOT_AT_MB + BOOT_MB + ROOT_MB) * MIB) as usize;
    for (o, l) in card.ranges() {
        let (o, l) = (o as usize, l as usize);
        // Every mapped range outside p1 (which provisioning changes): MBR, SPL, p2.
        if o + l <= p1 || (o >= p1 + (BOOT_MB * MIB) as usize && o + l <= p2_end) {
            assert!(
                got[o..o + l] == img[o..o + l],
                "mapped range at {o} differs"
            );
        }
    }
    for (path, bytes) in &card.fat_files {
        assert!(
            &mtype(disk, BOOT_AT_MB * MIB, path) == bytes,
            "{path} changed"
        );
    }
    for (path, bytes) in provisioned {
        assert!(
            &mtype(disk, BOOT_AT_MB * MIB, path) == bytes,
            "{path} not provisioned"
        );
    }
    fsck_partitions(disk, card.dir.path());
}

#[test]
fn write_to_a_file_maps_verifies_and_provisions() {
    let card = Card::new();
    let d = card.dir.path();
    let gw = format!("gw-{}", fastrand::u32(..));
    let config = d.join("agent.toml");
    std::fs::write(&config, agent_toml(&gw, "10.0.2.2", 1883)).expect("config");
    let (prov, mut files) = provision_dir(d);
    let target = d.join("card.img");
    let o = run(flash()
        .args(["write", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target)
        .arg("--config")
        .arg(&config)
        .arg("--provision")
        .arg(&prov));
    let err = stderr(&o);
    assert!(err.contains("verified: all"), "{err}");
    files.push((
        "betaas/agent.toml".into(),
        std::fs::read(&config).expect("config"),
    ));
    check_card(&card, &target, &files);
    let meta = std::fs::metadata(&target).expect("target");
    assert_eq!(meta.len(), IMG_MB * MIB, "file grown to the image's size");
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "a card file holding a private key is 0600"
    );
    // Only the mapped blocks were written: the rest of the file is a hole.
    let mapped: u64 = card.ranges().iter().map(|r| r.1).sum();
    assert!(
        meta.blocks() * 512 < mapped + 4 * MIB,
        "{} bytes allocated for {mapped} mapped",
        meta.blocks() * 512
    );
    assert!(
        mapped < IMG_MB * MIB / 2,
        "the bmap maps {mapped} bytes: not sparse"
    );

    // `verify` on the provisioned card: p1 differs by design, the rest does not.
    let o = flash()
        .args(["verify", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target)
        .output()
        .expect("verify");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("p1"), "{}", stderr(&o));
    run(flash()
        .args(["verify", "--except-boot", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target));
}

#[test]
fn write_to_a_loop_device_over_an_old_cards_content() {
    let card = Card::new();
    let d = card.dir.path();
    let (lo, backing) = Loop::with_garbage(d, IMG_MB + 8);
    let gw = format!("gw-{}", fastrand::u32(..));
    let config = d.join("agent.toml");
    std::fs::write(&config, agent_toml(&gw, "192.168.7.1", 1884)).expect("config");
    // A loop device is not removable: refused without --force.
    let o = flash()
        .args(["write", "--yes", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a removable disk"),
        "{}",
        stderr(&o)
    );
    // Not a terminal and no --yes: refused.
    let o = flash()
        .args(["write", "--force", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("pass --yes"), "{}", stderr(&o));

    let o = run(flash()
        .args(["write", "--force", "--yes", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .arg("--config")
        .arg(&config));
    assert!(stderr(&o).contains("verified: all"), "{}", stderr(&o));
    // Read the card through the backing file: the unmapped blocks still hold the old 0xa5
    // bytes, and the filesystems are consistent all the same.
    let got = std::fs::read(&backing).expect("backing");
    assert_eq!(
        got[((BOOT_AT_MB + BOOT_MB + ROOT_MB) * MIB) as usize + 17],
        0xa5,
        "tail untouched"
    );
    let files = vec![(
        "betaas/agent.toml".to_owned(),
        std::fs::read(&config).expect("config"),
    )];
    check_card(&card, &backing, &files);
    drop(lo);
}

#[test]
fn a_loop_device_with_a_mounted_partition_is_refused() {
    let card = Card::new();
    let d = card.dir.path();
    let disk = d.join("mounted.img");
    std::fs::copy(&card.img, &disk).expect("copy");
    let lo = Loop::attach(&disk, true);
    // p2, the ext4 root filesystem (this kernel has no vfat).
    let part = format!("{}p2", lo.dev.display());
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    common::run(Command::new("mount").args(["-o", "ro", &part]).arg(&mnt));
    let _m = Mount(mnt.clone());
    let before = sha256(&std::fs::read(&disk).expect("read"));
    let o = flash()
        .args(["write", "--force", "--yes", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{part} is mounted at {}", mnt.display())),
        "{err}"
    );
    // provision refuses too (the kernel holds the device).
    let o = flash()
        .args(["provision", "--target"])
        .arg(&lo.dev)
        .arg("--provision")
        .arg(d.join("mnt"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        before,
        sha256(&std::fs::read(&disk).expect("read")),
        "nothing written"
    );
}

#[test]
fn a_target_smaller_than_the_image_is_refused() {
    let card = Card::new();
    let (lo, _) = Loop::with_garbage(card.dir.path(), IMG_MB / 2);
    let o = flash()
        .args(["write", "--force", "--yes", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("32.0 MiB") && err.contains("the image needs 64.0 MiB"),
        "{err}"
    );
}

#[test]
fn a_bad_config_is_refused_before_anything_is_written() {
    let card = Card::new();
    let d = card.dir.path();
    let target = d.join("old-card.img");
    let old = random_bytes((IMG_MB * MIB) as usize);
    std::fs::write(&target, &old).expect("old");
    let config = d.join("bad.toml");
    // A driver on the wrong bus, on line 12.
    let bad = agent_toml("gw-1", "10.0.2.2", 1883).replace("bus = \"i2c\"", "bus = \"spi\"");
    std::fs::write(&config, &bad).expect("config");
    let o = flash()
        .args(["write", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:", config.display())) && err.contains("field `things[0]."),
        "{err}"
    );
    assert!(
        std::fs::read(&target).expect("target") == old,
        "the target changed"
    );
    // The same for `provision`.
    let o = flash()
        .args(["provision", "--target"])
        .arg(&target)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        std::fs::read(&target).expect("target") == old,
        "the target changed"
    );
}

#[test]
fn a_corrupted_byte_after_writing_makes_verify_name_its_range() {
    let card = Card::new();
    let d = card.dir.path();
    let target = d.join("card.img");
    run(flash()
        .args(["write", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target));
    run(flash()
        .args(["verify", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target));
    // One byte, somewhere random in a random mapped range.
    let ranges = card.ranges();
    let n = fastrand::usize(..ranges.len());
    let (o, l) = ranges[n];
    let at = o + fastrand::u64(..l);
    let mut data = std::fs::read(&target).expect("read");
    data[at as usize] ^= 1 << fastrand::u32(..8);
    std::fs::write(&target, &data).expect("corrupt");
    let out = flash()
        .args(["verify", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target)
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let want = format!(
        "range {} of {} (bytes {}-{}",
        n + 1,
        ranges.len(),
        o,
        o + l - 1
    );
    assert!(
        err.contains(&want),
        "byte {at} flipped; expected {want:?} in: {err}"
    );
    assert_eq!(err.matches("range ").count(), 1, "only that range: {err}");
}

#[test]
fn a_device_failing_mid_write_names_the_range() {
    // The card's store holds half of what the bmap maps: the write of the range that crosses
    // that point fails.
    let card = Card::new();
    let d = card.dir.path();
    let ranges = card.ranges();
    let mapped: u64 = ranges.iter().map(|r| r.1).sum();
    let limit = mapped / 2 / 4096 * 4096;
    let store = d.join("store");
    std::fs::create_dir_all(&store).expect("mkdir");
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={limit}"), "tmpfs"])
        .arg(&store));
    let _m = Mount(store.clone());
    let backing = store.join("card.bin");
    run(Command::new("truncate")
        .arg("-s")
        .arg(format!("{IMG_MB}M"))
        .arg(&backing));
    let lo = Loop::attach(&backing, false);
    let o = flash()
        .args(["write", "--force", "--yes", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&lo.dev)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("writing range "), "{err}");
    // The range named is one that ends past the 12 MiB of store (counting what came before).
    let num: usize = err
        .split("writing range ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no range number in {err}"));
    let upto: u64 = ranges[..num].iter().map(|r| r.1).sum();
    let before: u64 = ranges[..num - 1].iter().map(|r| r.1).sum();
    assert!(
        before <= limit && upto >= limit - 64 * 1024,
        "range {num} spans written bytes {before}..{upto}, the store holds {limit}: {err}"
    );
    let (ro, rl) = ranges[num - 1];
    assert!(
        err.contains(&format!("(bytes {ro}-{}", ro + rl - 1)),
        "{err}"
    );
    drop(lo);
}

#[test]
fn the_bmap_is_bmaptools_format_both_ways() {
    let card = Card::new();
    let d = card.dir.path();
    // bmaptool reads ours (it checks the file checksum and every range's).
    let copy = d.join("bmaptool.img");
    run(Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(card.bmap())
        .arg(&card.img)
        .arg(&copy));
    let img = card.bytes();
    let got = std::fs::read(&copy).expect("copy");
    for (o, l) in card.ranges() {
        assert!(got[o as usize..(o + l) as usize] == img[o as usize..(o + l) as usize]);
    }
    // We read bmaptool's (made from a sparse copy of the image).
    let sparse = d.join("sparse.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&card.img)
        .arg(&sparse));
    let theirs = d.join("theirs.bmap");
    run(Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&theirs)
        .arg(&sparse));
    let target = d.join("t.img");
    run(flash()
        .args(["write", "--image"])
        .arg(&sparse)
        .arg("--bmap")
        .arg(&theirs)
        .arg("--target")
        .arg(&target));
    assert!(
        std::fs::read(&target).expect("target") == img,
        "zero blocks are holes: same bytes"
    );
    // A damaged bmap is refused before writing.
    let text = std::fs::read_to_string(card.bmap()).expect("bmap");
    let bad = d.join("bad.bmap");
    std::fs::write(
        &bad,
        text.replacen("<Range chksum=\"", "<Range chksum=\"0", 1)
            .replacen("\"> ", "\">", 1),
    )
    .expect("bad");
    let t2 = d.join("t2.img");
    let o = flash()
        .args(["write", "--image"])
        .arg(&card.img)
        .arg("--bmap")
        .arg(&bad)
        .arg("--target")
        .arg(&t2)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("damaged or was edited"),
        "{}",
        stderr(&o)
    );
    assert!(!t2.exists());
}

#[test]
fn a_full_copy_without_bmap_equals_the_image() {
    let card = Card::new();
    let target = card.dir.path().join("full.img");
    run(flash()
        .args(["write", "--no-bmap", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target));
    assert!(std::fs::read(&target).expect("target") == card.bytes());
}

#[test]
fn provisioning_again_replaces_files_and_keeps_the_rest() {
    let card = Card::new();
    let d = card.dir.path();
    let target = d.join("card.img");
    run(flash()
        .args(["write", "--image"])
        .arg(&card.img)
        .arg("--target")
        .arg(&target));
    let (prov, files) = provision_dir(d);
    let long = d.join("long.toml");
    let mut text = agent_toml("gw-long", "10.0.2.2", 1883);
    text.push_str(&format!("# {}\n", "x".repeat(9000)));
    std::fs::write(&long, &text).expect("long");
    run(flash()
        .args(["provision", "--target"])
        .arg(&target)
        .arg("--config")
        .arg(&long)
        .arg("--provision")
        .arg(&prov));
    let short = d.join("short.toml");
    std::fs::write(&short, agent_toml("gw-short", "10.0.2.2", 1883)).expect("short");
    run(flash()
        .args(["provision", "--target"])
        .arg(&target)
        .arg("--config")
        .arg(&short));
    let mut want = files;
    want.push((
        "betaas/agent.toml".into(),
        std::fs::read(&short).expect("short"),
    ));
    check_card(&card, &target, &want);

    // A key readable by others is refused.
    std::fs::set_permissions(
        prov.join("instance/gateway.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let o = flash()
        .args(["provision", "--target"])
        .arg(&target)
        .arg("--provision")
        .arg(&prov)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
}
