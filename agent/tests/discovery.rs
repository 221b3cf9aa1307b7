//! Home Assistant discovery as a broker sees it: retained configs for every thing, and removal of
//! the configs of things dropped from the configuration.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use betaas_e2e::{spawn_agent, KillOnDrop, Mosquitto};
use serde_json::Value;

fn run(dir: &Path, gw: &str, port: u16, things: &str) -> KillOnDrop {
    let toml = format!(
        "gateway_id = \"{gw}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n{things}",
        d = dir.display()
    );
    spawn_agent(env!("CARGO_BIN_EXE_betaas-agent"), dir, &toml)
}

fn sysfs(id: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[[things]]\nid = \"{id}\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"{}/v\"\nunit = \"°C\"\n{extra}\n",
        dir.display()
    )
}

#[test]
fn configs_are_retained_and_removed_things_are_cleared() {
    betaas_e2e::seeded();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("v"), "21").expect("v");
    let broker = Mosquitto::start();
    let gw = format!("disc-{}", fastrand::u32(..));
    let bme = "[[things]]\nid = \"env\"\nbus = \"i2c\"\ndriver = \"bme280\"\ndevice = \"/dev/null-i2c\"\naddress = 0x76\n";
    let first = format!(
        "{}{}{bme}",
        sysfs("old", d, "device_class = \"temperature\""),
        sysfs("kept", d, "")
    );
    let agent = run(d, &gw, broker.port, &first);

    let topic = |c: &str, t: &str| format!("homeassistant/{c}/{gw}_{t}/config");
    let mut sub = broker.subscribe("homeassistant/#");
    let mut configs = std::collections::BTreeMap::new();
    sub.wait_for("five discovery configs", Duration::from_secs(10), |t, p| {
        if t.contains(&gw) {
            configs.insert(t.to_owned(), p.to_owned());
        }
        (configs.len() == 5).then_some(())
    });
    let old: Value = serde_json::from_str(&configs[&topic("sensor", "old")]).expect("json");
    assert_eq!(old["state_topic"], format!("betaas/{gw}/things/old/state"));
    assert_eq!(old["device_class"], "temperature");
    assert_eq!(old["unit_of_measurement"], "°C");
    let hum: Value =
        serde_json::from_str(&configs[&topic("sensor", "env_humidity")]).expect("json");
    assert_eq!(
        (
            hum["device_class"].as_str(),
            hum["unit_of_measurement"].as_str()
        ),
        (Some("humidity"), Some("%"))
    );
    drop(agent);
    drop(sub);

    // "old" leaves the configuration: its retained config is cleared, "kept" stays.
    let mut sub = broker.subscribe("homeassistant/#");
    let _agent = run(
        d,
        &gw,
        broker.port,
        &format!("{}{bme}", sysfs("kept", d, "")),
    );
    sub.wait_for("the removal of old", Duration::from_secs(10), |t, p| {
        (t == topic("sensor", "old") && p.is_empty()).then_some(())
    });
    drop(sub);
    // A newcomer sees no config for "old" any more, and still one for "kept".
    let mut late = broker.subscribe("homeassistant/sensor/+/config");
    let mut seen = std::collections::BTreeSet::new();
    while let Some((t, _)) = late.next(Duration::from_secs(2)) {
        seen.insert(t);
    }
    assert!(seen.contains(&topic("sensor", "kept")), "{seen:?}");
    assert!(!seen.contains(&topic("sensor", "old")), "{seen:?}");
}

#[test]
fn unknown_device_class_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let toml = format!(
        "gateway_id = \"g\"\n[mqtt]\nhost = \"h\"\n{}",
        sysfs("t", d, "device_class = \"warmth\"")
    );
    std::fs::write(d.join("agent.toml"), toml).expect("agent.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .arg("--config")
        .arg(d.join("agent.toml"))
        .arg("check-config")
        .output()
        .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("things[0].device_class") && err.contains("warmth"),
        "{err}"
    );
}
