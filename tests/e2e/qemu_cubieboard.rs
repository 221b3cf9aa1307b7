//! The tracer bullet, end to end: the qemu-cubieboard SD image boots through Debian's U-Boot and
//! kernel under QEMU, the static agent reads QEMU's emulated TMP105 over the Allwinner I2C
//! controller, and the readings arrive on a real mosquitto on the host.

use std::time::{Duration, Instant};

use betaas_e2e::{Mosquitto, Qemu};
use serde_json::Value;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The agent polls every second; a new set point must show within a few polls.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);

fn agent_toml(gateway: &str, port: u16) -> String {
    format!(
        r#"gateway_id = "{gateway}"
[mqtt]
host = "10.0.2.2"
port = {port}
keep_alive_secs = 5

[[things]]
id = "temp0"
driver = "tmp105"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x48
interval_ms = 1000

# No device answers at 0x4a: this thing must be reported unavailable while temp0 keeps working.
[[things]]
id = "ghost"
driver = "tmp105"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x4a
interval_ms = 1000
"#
    )
}

/// A random set point the 12-bit TMP105 represents exactly, in millidegrees for QMP, and its
/// expected reading. QEMU stores m°C * 2048 / 128000 truncated, so the set point is an even number
/// of 1/16 °C steps (a whole number of m°C); it is not a multiple of 0.5 °C, so a sensor left in its
/// 9-bit power-up mode cannot report it.
fn set_point(rng: &mut fastrand::Rng, not: f64) -> (i64, f64) {
    loop {
        let steps = rng.i64(-40 * 16..=125 * 16); // 1/16 °C steps
        let celsius = steps as f64 / 16.0;
        if steps % 2 == 0 && steps % 8 != 0 && (celsius - not).abs() > 1.0 {
            return (steps / 2 * 125, celsius); // 1/16 °C = 62.5 m°C
        }
    }
}

#[test]
#[ignore = "boots the firmware under QEMU: run by `make test` after `make image BOARD=qemu-cubieboard`"]
fn readings_follow_the_emulated_sensor() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let gateway = format!("e2e-{}", rng.u32(..));
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe(&format!("betaas/{gateway}/#"));
    let state = format!("betaas/{gateway}/things/temp0/state");

    let started = Instant::now();
    let mut vm = Qemu::boot("qemu-cubieboard", &agent_toml(&gateway, broker.port));

    let first: Value = sub.wait_for("the first reading", BOOT_TIMEOUT, |t, p| {
        (t == state).then(|| serde_json::from_str(p).expect("reading is JSON"))
    });
    println!(
        "boot-to-first-reading: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(first["thing"], "temp0");
    assert_eq!(first["unit"], "°C");
    assert!(first["ts"].as_u64().is_some(), "{first}");
    let mut last_seq = first["seq"].as_u64().expect("seq");
    // QEMU's tmp105 powers up at 0 °C.
    let mut current = first["value"].as_f64().expect("value");

    for round in 1..=2 {
        let (millideg, expected) = set_point(&mut rng, current);
        vm.qmp()
            .execute(
                "qom-set",
                serde_json::json!({"path": "/machine/peripheral/sens0", "property": "temperature", "value": millideg}),
            )
            .expect("qom-set temperature");
        let set_at = Instant::now();
        // Every reading until the new value shows must be the old one: no made-up values.
        let reading = sub.wait_for(&format!("{expected} °C"), FOLLOW_TIMEOUT, |t, p| {
            if t != state {
                return None;
            }
            let r: Value = serde_json::from_str(p).expect("reading is JSON");
            let seq = r["seq"].as_u64().expect("seq");
            assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
            last_seq = seq;
            let v = r["value"].as_f64().expect("value");
            assert!(
                v == current || v == expected,
                "published {v}, sensor was {current} then {expected}"
            );
            (v == expected).then_some(r)
        });
        println!(
            "set point {round}: {expected} °C published {:.1} s after qom-set (seq {})",
            set_at.elapsed().as_secs_f64(),
            reading["seq"]
        );
        current = expected;
    }

    // Retained state a newcomer sees at once: the gateway online, temp0 online, the missing sensor offline.
    let mut late = broker.subscribe(&format!("betaas/{gateway}/+"));
    let avail = format!("betaas/{gateway}/availability");
    late.wait_for("retained online", Duration::from_secs(5), |t, p| {
        (t == avail && p == "online").then_some(())
    });
    let mut things = broker.subscribe(&format!("betaas/{gateway}/things/+/availability"));
    let mut seen = std::collections::BTreeMap::new();
    things.wait_for(
        "both things' availability",
        Duration::from_secs(5),
        |t, p| {
            seen.insert(t.to_owned(), p.to_owned());
            (seen.len() == 2).then_some(())
        },
    );
    assert_eq!(
        seen[&format!("betaas/{gateway}/things/temp0/availability")],
        "online"
    );
    assert_eq!(
        seen[&format!("betaas/{gateway}/things/ghost/availability")],
        "offline"
    );

    // A hung gateway (CPU stopped, TCP left open): the broker publishes the last will once the
    // keep-alive (5 s, x1.5 by MQTT's rule) lapses.
    vm.qmp()
        .execute("stop", serde_json::json!({}))
        .expect("stop the VM");
    let hung = Instant::now();
    late.wait_for("last will", Duration::from_secs(30), |t, p| {
        (t == avail && p == "offline").then_some(())
    });
    let after = hung.elapsed().as_secs_f64();
    println!("last will 'offline' {after:.1} s after the gateway hung");
    assert!(
        after > 4.0,
        "will fired before the keep-alive could lapse: not the will"
    );
    vm.kill();
}
