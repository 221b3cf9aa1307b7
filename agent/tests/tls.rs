//! MQTT over TLS with a client certificate, against a real mosquitto that requires one. The
//! certificates are made for each run with the openssl CLI.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use betaas_e2e::{wait_until, KillOnDrop, Mosquitto};

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (installed by image/host-deps.sh)");
    assert!(st.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=betaas-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, cn) in [("server", "127.0.0.1"), ("client", "betaas-gw")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn config(dir: &Path, gw: &str, port: u16) -> String {
    format!(
        "gateway_id = \"{gw}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [mqtt.tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/client.pem\"\nkey = \"{d}/client.key\"\n\
         [[things]]\nid = \"t\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"{d}/value\"\nunit = \"C\"\ninterval_ms = 100\n",
        d = dir.display()
    )
}

/// mosquitto with a plain listener for the test's own subscriber and a TLS one (client
/// certificate required) for the agent: (broker, TLS port, plain port).
fn tls_broker(d: &Path) -> (KillOnDrop, u16, u16) {
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let (tls_port, sub_port) = (free(), free());
    let conf = d.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\nuser root\nlistener {sub_port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\n",
            d = d.display()
        ),
    )
    .expect("mosquitto.conf");
    let broker = KillOnDrop(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    wait_until("mosquitto", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    (broker, tls_port, sub_port)
}

#[test]
fn readings_arrive_over_tls_with_a_client_certificate() {
    betaas_e2e::seeded();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_pki(d);
    set_mode(&d.join("client.key"), 0o600);
    let value = fastrand::i32(-20_000..60_000);
    std::fs::write(d.join("value"), value.to_string()).expect("value");
    let (_broker, tls_port, sub_port) = tls_broker(d);
    let mut sub = Mosquitto::external("127.0.0.1", sub_port).subscribe("betaas/#");

    let gw = format!("tls-{}", fastrand::u32(..));
    std::fs::write(d.join("agent.toml"), config(d, &gw, tls_port)).expect("agent.toml");
    let _agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
            .arg("--config")
            .arg(d.join("agent.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let state = format!("betaas/{gw}/things/t/state");
    let got: f64 = sub.wait_for("a reading over TLS", Duration::from_secs(20), |t, p| {
        (t == state).then(|| {
            serde_json::from_str::<serde_json::Value>(p).expect("json")["value"]
                .as_f64()
                .expect("value")
        })
    });
    assert_eq!(got, f64::from(value));
}

/// `hosts` over TLS: each node's certificate is checked against that node's own name. The first
/// node, `localhost`, presents a certificate for 127.0.0.1 only: refused, and the agent goes on
/// to the second, `127.0.0.1`, the same broker, where the name matches.
#[test]
fn tls_checks_each_nodes_own_name_and_fails_over_on_a_mismatch() {
    betaas_e2e::seeded();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_pki(d);
    set_mode(&d.join("client.key"), 0o600);
    let value = fastrand::i32(-20_000..60_000);
    std::fs::write(d.join("value"), value.to_string()).expect("value");
    let (_broker, tls_port, sub_port) = tls_broker(d);
    let mut sub = Mosquitto::external("127.0.0.1", sub_port).subscribe("betaas/#");

    let gw = format!("tls-{}", fastrand::u32(..));
    let text = config(d, &gw, tls_port).replace(
        &format!("host = \"127.0.0.1\"\nport = {tls_port}\n"),
        &format!("hosts = [\"localhost:{tls_port}\", \"127.0.0.1:{tls_port}\"]\n"),
    );
    let text = text.replace("[[things]]", "[health]\ninterval_secs = 1\n[[things]]");
    assert!(text.contains("hosts = ["));
    std::fs::write(d.join("agent.toml"), text).expect("agent.toml");
    let log = std::fs::File::create(d.join("agent.log")).expect("log");
    let _agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
            .arg("--config")
            .arg(d.join("agent.toml"))
            .stderr(log)
            .spawn()
            .expect("agent"),
    );
    let state = format!("betaas/{gw}/things/t/state");
    let health = format!("betaas/{gw}/health");
    let node = format!("127.0.0.1:{tls_port}");
    let mut got = None;
    sub.wait_for(
        "a reading and health over TLS via the second node",
        Duration::from_secs(30),
        |t, p| {
            let v: serde_json::Value = serde_json::from_str(p).ok()?;
            if t == state {
                got = v["value"].as_f64();
            }
            (t == health && v["mqtt"]["node"] == node.as_str() && got.is_some()).then_some(())
        },
    );
    assert_eq!(got, Some(f64::from(value)));
    let log = std::fs::read_to_string(d.join("agent.log")).expect("agent.log");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(&format!("localhost:{tls_port}"))),
        "the refused node is not in the log:\n{log}"
    );
}

#[test]
fn world_readable_key_and_missing_ca_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_pki(d);
    std::fs::write(d.join("agent.toml"), config(d, "tls-bad", 1)).expect("agent.toml");
    set_mode(&d.join("client.key"), 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .arg("--config")
        .arg(d.join("agent.toml"))
        .output()
        .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client.key: readable by others"), "{err}");

    set_mode(&d.join("client.key"), 0o600);
    std::fs::remove_file(d.join("ca.pem")).expect("rm");
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .arg("--config")
        .arg(d.join("agent.toml"))
        .output()
        .expect("agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca.pem: No such file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
