//! A qemu-cubieboard SD card written and provisioned by `betaas-flash` (bmap, verified, its
//! agent.toml put on the FAT boot partition without mounting it) boots under QEMU, and its agent
//! publishes under the provisioned gateway_id to the broker the provisioned config names.

use std::process::Command;
use std::time::{Duration, Instant};

use betaas_e2e::{bin, repo, Mosquitto, Qemu};

#[test]
#[ignore = "boots the flashed card under QEMU: run by `make test` after `make image BOARD=qemu-cubieboard`"]
fn a_flashed_card_boots_and_publishes_under_the_provisioned_gateway_id() {
    let image = repo().join("out/qemu-cubieboard/sdcard.img");
    assert!(
        image.exists(),
        "{} missing: run `make image BOARD=qemu-cubieboard`",
        image.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = format!("flashed-{}", fastrand::u32(..));
    let broker = Mosquitto::start();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"{gateway}\"\n[mqtt]\nhost = \"10.0.2.2\"\nport = {}\nkeep_alive_secs = 5\n\n\
             [[things]]\nid = \"temp0\"\ndriver = \"tmp105\"\nbus = \"i2c\"\ndevice = \"/dev/i2c-0\"\n\
             address = 0x48\ninterval_ms = 1000\n",
            broker.port
        ),
    )
    .expect("config");
    let card = dir.path().join("card.img");
    let started = Instant::now();
    let out = Command::new(bin("betaas-flash"))
        .args(["write", "--image"])
        .arg(&image)
        .arg("--target")
        .arg(&card)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("betaas-flash");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "betaas-flash write failed: {log}");
    assert!(log.contains("verified: all"), "{log}");
    println!(
        "flashed in {:.1} s:\n{log}",
        started.elapsed().as_secs_f64()
    );

    let mut sub = broker.subscribe(&format!("betaas/{gateway}/#"));
    let state = format!("betaas/{gateway}/things/temp0/state");
    // run-qemu.sh boots the card as it is: no copy of the image, no provisioning of its own.
    let card_s = card.to_string_lossy().into_owned();
    let vm = Qemu::boot_env(
        "qemu-cubieboard",
        "",
        &[
            ("AGENT_TOML", ""),
            ("IMAGE_COPY", &card_s),
            ("KEEP_IMAGE", "1"),
        ],
    );
    let reading: serde_json::Value = sub.wait_for(
        "a reading from the flashed card",
        Duration::from_secs(180),
        |t, p| (t == state).then(|| serde_json::from_str(p).expect("JSON reading")),
    );
    println!(
        "first reading {:.1} s after flashing began: {reading}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(reading["thing"], "temp0");
    assert!(
        vm.console()
            .contains("using provisioned /boot/betaas/agent.toml"),
        "the provisioned config was not the one used"
    );
}
