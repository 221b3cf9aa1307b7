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

# A second sensor on the same bus.
[[things]]
id = "temp1"
driver = "tmp105"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x49
interval_ms = 1000

# An actuator: temp0's over-temperature alert limit (T_HIGH), written and read back over I2C.
[[things]]
id = "limit0"
kind = "actuator"
driver = "tmp105-limit"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x48

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
    let extra = ["-device", "tmp105,bus=i2c,address=0x49,id=sens1"];
    let mut vm = Qemu::boot_with(
        "qemu-cubieboard",
        &agent_toml(&gateway, broker.port),
        &extra,
    );

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

    // Both sensors power up at 0 °C; each round moves both to new random points at once.
    let mut sensors = [("sens0", "temp0", 0.0, 0u64), ("sens1", "temp1", 0.0, 0u64)];
    for round in 1..=2 {
        let mut expect = Vec::new();
        for (dev, _, current, _) in &sensors {
            let (millideg, expected) = set_point(&mut rng, *current);
            vm.qmp()
                .execute(
                    "qom-set",
                    serde_json::json!({"path": format!("/machine/peripheral/{dev}"), "property": "temperature", "value": millideg}),
                )
                .expect("qom-set temperature");
            expect.push(expected);
        }
        let set_at = Instant::now();
        let mut seen = [false, false];
        // Every reading until the new value shows must be the old one: no made-up values; seqs rise.
        sub.wait_for(&format!("{expect:?} °C"), FOLLOW_TIMEOUT, |t, p| {
            let k = sensors
                .iter()
                .position(|s| t == format!("betaas/{gateway}/things/{}/state", s.1))?;
            let r: Value = serde_json::from_str(p).expect("reading is JSON");
            let seq = r["seq"].as_u64().expect("seq");
            let (_, thing, current, last_seq) = &mut sensors[k];
            assert!(
                seq > *last_seq || (round == 1 && *last_seq == 0),
                "{thing}: seq went from {last_seq} to {seq}"
            );
            *last_seq = seq;
            let v = r["value"].as_f64().expect("value");
            assert!(
                v == *current || v == expect[k],
                "{thing} published {v}, sensor was {current} then {}",
                expect[k]
            );
            if v == expect[k] && !seen[k] {
                seen[k] = true;
                println!(
                    "round {round}: {thing} = {v} °C published {:.1} s after qom-set (seq {seq})",
                    set_at.elapsed().as_secs_f64()
                );
            }
            (seen == [true, true]).then_some(())
        });
        for (k, s) in sensors.iter_mut().enumerate() {
            s.2 = expect[k];
        }
    }

    // An actuator command over MQTT: T_HIGH written over I2C in the guest and read back.
    let limit = loop {
        let steps = rng.i64(40 * 16..=110 * 16);
        if steps % 8 != 0 {
            break steps as f64 / 16.0;
        }
    };
    let set = format!("betaas/{gateway}/things/limit0/set");
    let result = format!("betaas/{gateway}/things/limit0/result");
    let limit_state = format!("betaas/{gateway}/things/limit0/state");
    let id = format!("c{}", rng.u32(..));
    broker.publish(&set, &format!(r#"{{"id":"{id}","value":{limit}}}"#));
    let r: Value = sub.wait_for("the command result", Duration::from_secs(15), |t, p| {
        (t == result).then(|| serde_json::from_str(p).expect("result is JSON"))
    });
    assert_eq!(
        r,
        serde_json::json!({"id": id, "ok": true, "state": limit}),
        "{r}"
    );
    let mut state_sub = broker.subscribe(&limit_state);
    let st: Value = state_sub.wait_for("retained limit state", Duration::from_secs(5), |t, p| {
        (t == limit_state).then(|| serde_json::from_str(p).expect("state is JSON"))
    });
    assert_eq!(
        (st["value"].as_f64(), st["command"].as_str()),
        (Some(limit), Some(id.as_str())),
        "{st}"
    );
    // Out of range and not a number: rejected with the reason, the register keeps its value.
    broker.publish(&set, r#"{"id":"bad-1","value":300}"#);
    broker.publish(&set, r#"{"id":"bad-2","value":"hot"}"#);
    for bad in ["bad-1", "bad-2"] {
        let r: Value = sub.wait_for(bad, Duration::from_secs(15), |t, p| {
            (t == result)
                .then(|| serde_json::from_str::<Value>(p).expect("json"))
                .filter(|r| r["id"] == bad)
        });
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    // The same id again: the stored outcome, not a second write.
    broker.publish(&set, &format!(r#"{{"id":"{id}","value":{}}}"#, limit + 1.0));
    let again: Value = sub.wait_for("the repeated command", Duration::from_secs(15), |t, p| {
        (t == result)
            .then(|| serde_json::from_str::<Value>(p).expect("json"))
            .filter(|r| r["id"] == id.as_str())
    });
    assert_eq!(
        again["state"].as_f64(),
        Some(limit),
        "a repeated id was applied again: {again}"
    );
    println!(
        "actuator: T_HIGH set to {limit} °C and read back; bad and repeated commands answered"
    );

    // Retained state a newcomer sees at once: the gateway and its devices online, the missing one offline.
    let mut late = broker.subscribe(&format!("betaas/{gateway}/+"));
    let avail = format!("betaas/{gateway}/availability");
    late.wait_for("retained online", Duration::from_secs(5), |t, p| {
        (t == avail && p == "online").then_some(())
    });
    let mut things = broker.subscribe(&format!("betaas/{gateway}/things/+/availability"));
    let mut seen = std::collections::BTreeMap::new();
    things.wait_for(
        "every thing's availability",
        Duration::from_secs(5),
        |t, p| {
            seen.insert(t.to_owned(), p.to_owned());
            (seen.len() == 4).then_some(())
        },
    );
    for (thing, want) in [
        ("temp0", "online"),
        ("temp1", "online"),
        ("limit0", "online"),
        ("ghost", "offline"),
    ] {
        assert_eq!(
            seen[&format!("betaas/{gateway}/things/{thing}/availability")],
            want,
            "{thing}"
        );
    }

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
