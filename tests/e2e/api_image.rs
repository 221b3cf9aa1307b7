//! The local API on the firmware image: qemu-cubieboard boots with a token provisioned on its boot
//! partition (`betaas/api.token`, as `betaas-flash provision --provision DIR` puts it), the host
//! reaches the gateway's HTTPS port through QEMU's port forwarding, reads the TMP105 value that
//! QMP set, and writes the TMP105's T_HIGH limit through the actuator endpoint (read back over I2C
//! in the guest). curl is the client (the e2e crate carries no HTTP stack).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use betaas_e2e::{free_port, Mosquitto, Qemu};
use serde_json::Value;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn agent_toml(gateway: &str, port: u16) -> String {
    format!(
        r#"gateway_id = "{gateway}"
[mqtt]
host = "10.0.2.2"
port = {port}

[[things]]
id = "temp0"
driver = "tmp105"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x48
interval_ms = 1000

[[things]]
id = "limit0"
kind = "actuator"
driver = "tmp105-limit"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x48

[api]
listen = "0.0.0.0:8443"
token_file = "/boot/betaas/api.token"
"#
    )
}

/// `curl -k` to the forwarded port: (HTTP status, JSON body).
fn call(
    port: u16,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, Value)> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sk",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ])
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/api/v1/{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((
        code.trim().parse().ok()?,
        serde_json::from_str(body).unwrap_or(Value::Null),
    ))
}

#[test]
#[ignore = "boots the firmware under QEMU: run by `make test` after `make image BOARD=qemu-cubieboard`"]
fn the_api_on_the_image_reads_the_emulated_sensor() {
    let mut rng = fastrand::Rng::new();
    let gateway = format!("api-{}", rng.u32(..));
    let broker = Mosquitto::start();
    let port = free_port();
    let token: String = (0..40).map(|_| rng.alphanumeric()).collect();
    let prov = tempfile::tempdir().expect("tempdir");
    let token_file = prov.path().join("api.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let fwd = format!("tcp:127.0.0.1:{port}-:8443");
    let started = Instant::now();
    let mut vm = Qemu::boot_env(
        "qemu-cubieboard",
        &agent_toml(&gateway, broker.port),
        &[
            ("PROVISION", prov.path().to_str().expect("utf8")),
            ("HOSTFWD", fwd.as_str()),
        ],
    );

    // The API answers through the forwarded port, with the provisioned token only.
    let health = betaas_e2e::wait_until("the API on the gateway", BOOT_TIMEOUT, || {
        call(port, &token, "GET", "health", None).filter(|(s, _)| *s == 200)
    })
    .1;
    println!("boot to API: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(health["gateway"], gateway.as_str(), "{health}");
    let fp = health["api"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    assert_eq!(fp.len(), 95, "{fp}");
    assert!(
        vm.console().contains(&fp),
        "the certificate's fingerprint is on the console"
    );
    let (status, e) = call(port, "wrong-token-0000000000", "GET", "health", None).expect("curl");
    assert_eq!((status, e["field"].as_str()), (401, Some("authorization")));
    assert!(
        !vm.console().contains(&token),
        "a provisioned token is never printed"
    );

    // The TMP105 set over QMP: read back through the API.
    let steps = loop {
        let s = rng.i64(-40 * 16..=125 * 16);
        if s % 2 == 0 && s % 8 != 0 {
            break s;
        }
    };
    let celsius = steps as f64 / 16.0;
    vm.qmp()
        .execute(
            "qom-set",
            serde_json::json!({"path": "/machine/peripheral/sens0", "property": "temperature", "value": steps / 2 * 125}),
        )
        .expect("qom-set temperature");
    let set_at = Instant::now();
    let r = betaas_e2e::wait_until("the QMP value in the API", Duration::from_secs(30), || {
        let (_, v) = call(port, &token, "GET", "things/temp0/readings?limit=1", None)?;
        let r = v["readings"][0].clone();
        (r["value"].as_f64() == Some(celsius)).then_some(r)
    });
    println!(
        "temp0 = {celsius} °C in the API {:.1} s after qom-set (seq {})",
        set_at.elapsed().as_secs_f64(),
        r["seq"]
    );

    // The actuator: T_HIGH written over I2C in the guest and read back.
    let limit = loop {
        let s = rng.i64(40 * 16..=110 * 16);
        if s % 8 != 0 {
            break s as f64 / 16.0;
        }
    };
    let (status, out) = call(
        port,
        &token,
        "POST",
        "things/limit0/set",
        Some(&format!(r#"{{"value":{limit}}}"#)),
    )
    .expect("curl");
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (out["ok"].as_bool(), out["state"].as_f64()),
        (Some(true), Some(limit)),
        "{out}"
    );
    let (status, out) = call(
        port,
        &token,
        "POST",
        "things/limit0/set",
        Some(r#"{"value":300}"#),
    )
    .expect("curl");
    assert_eq!(
        (status, out["field"].as_str()),
        (400, Some("value")),
        "{out}"
    );
    println!("limit0: T_HIGH = {limit} °C through the API; 300 °C refused");
    vm.kill();
}
