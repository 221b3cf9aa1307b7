//! `betaas-agent check-config` opens every file the config names: the instance keys (modes, the
//! credential's signature, key and gateway), the TLS PEM files, the broker password file and the
//! remote clouds' credentials. Each broken file: exit 2, the config's file, line and field, and
//! the file itself named. Real keys from `instance keygen` / `instance admit`, real PEM files from
//! the openssl CLI.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run betaas-agent")
}

fn cli(args: &[&str]) {
    let out = agent(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A gateway's directory with everything its config names, all good.
struct Gateway {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    id: String,
}

impl Gateway {
    fn new() -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let id = format!("gw{}", fastrand::u32(..));
        cli(&["instance", "keygen", "--out", s(&dir.join("inst"))]);
        cli(&[
            "instance",
            "admit",
            "--instance-key",
            s(&dir.join("inst/instance.key")),
            "--gateway",
            &id,
            "--out",
            s(&dir.join("keys")),
        ]);
        // A self-signed certificate serves as the CA and the client certificate.
        let st = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=t",
                "-keyout",
                "client.key",
                "-out",
                "client.pem",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (installed by image/host-deps.sh)");
        assert!(st.success());
        std::fs::copy(dir.join("client.pem"), dir.join("ca.pem")).expect("ca");
        chmod(&dir.join("client.key"), 0o600);
        std::fs::write(
            dir.join("mqtt.password"),
            format!("{}\n", fastrand::u64(..)),
        )
        .expect("password");
        chmod(&dir.join("mqtt.password"), 0o600);
        std::fs::write(
            dir.join("campus.toml"),
            "auth = \"application_credential\"\nid = \"i\"\nsecret = \"s\"\n",
        )
        .expect("credentials");
        chmod(&dir.join("campus.toml"), 0o600);
        let g = Gateway { _tmp: tmp, dir, id };
        g.write_config(&g.config());
        g
    }

    fn config(&self) -> String {
        format!(
            "gateway_id = \"{id}\"\ndata_dir = \"{d}/data\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nusername = \"{id}\"\npassword_file = \"{d}/mqtt.password\"\n\
             [mqtt.tls]\nca = \"{d}/ca.pem\"\ncert = \"{d}/client.pem\"\nkey = \"{d}/client.key\"\n\
             [instance]\nname = \"lab\"\nkeys = \"{d}/keys\"\nheartbeat_ms = 1000\ntimeout_ms = 4000\n\
             virt = \"none\"\ncapacity = {{ cpus = 0, mem_mb = 0, disk_gb = 0 }}\n\
             [[clouds]]\nname = \"campus\"\nprovider = \"openstack\"\nendpoint = \"https://keystone.example:5000/v3\"\n\
             vm_limit = 2\ncredentials = \"{d}/campus.toml\"\n",
            id = self.id,
            d = self.dir.display()
        )
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.dir.join("agent.toml"), text).expect("agent.toml");
    }

    fn check(&self) -> Output {
        agent(&["--config", s(&self.dir.join("agent.toml")), "check-config"])
    }

    /// check-config exits 2 and names, for each (line start, field, file, what) expected, the
    /// config file with the line of the config that starts with `line start`, the field, the
    /// file and what is wrong with it. Returns stderr.
    fn refused(&self, expect: &[(&str, &str, &str, &str)]) -> String {
        let out = self.check();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "stderr: {err}");
        let text = std::fs::read_to_string(self.dir.join("agent.toml")).expect("agent.toml");
        for (start, field, file, what) in expect {
            let line = text
                .lines()
                .position(|l| l.starts_with(start))
                .map(|i| i + 1)
                .expect("the line is in the config");
            let head = format!(
                "{}:{line}: field `{field}`: ",
                self.dir.join("agent.toml").display()
            );
            assert!(
                err.lines().any(|l| l.contains(&head)
                    && l.contains(&self.dir.join(file).display().to_string())
                    && l.contains(what)),
                "expected `{head}` … {file} … {what} in:\n{err}"
            );
        }
        assert_eq!(
            err.lines().count(),
            expect.len(),
            "one line per problem:\n{err}"
        );
        err
    }
}

#[test]
fn a_config_whose_files_are_all_good_passes() {
    let g = Gateway::new();
    let out = g.check();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}

#[test]
fn a_gateway_key_readable_by_others_is_named() {
    let g = Gateway::new();
    chmod(&g.dir.join("keys/gateway.key"), 0o644);
    g.refused(&[(
        "keys =",
        "instance.keys",
        "keys/gateway.key",
        "readable by others (mode 644)",
    )]);
}

#[test]
fn a_credential_for_another_gateway_is_refused() {
    let g = Gateway::new();
    // Real keys of the same instance, admitted for another gateway, under this gateway's config.
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        s(&g.dir.join("inst/instance.key")),
        "--gateway",
        "someone-else",
        "--out",
        s(&g.dir.join("other")),
    ]);
    std::fs::remove_dir_all(g.dir.join("keys")).expect("rm keys");
    std::fs::rename(g.dir.join("other"), g.dir.join("keys")).expect("mv");
    g.refused(&[(
        "keys =",
        "instance.keys",
        "keys/credential",
        "for gateway \"someone-else\"",
    )]);
    // A credential of another instance does not verify.
    cli(&["instance", "keygen", "--out", s(&g.dir.join("inst2"))]);
    std::fs::copy(
        g.dir.join("inst2/instance.pub"),
        g.dir.join("keys/instance.pub"),
    )
    .expect("cp");
    let err = g.refused(&[("keys =", "instance.keys", "keys/credential", "")]);
    assert!(!err.contains("someone-else"), "{err}");
}

#[test]
fn a_missing_tls_ca_and_bad_pem_files_are_named() {
    let g = Gateway::new();
    std::fs::remove_file(g.dir.join("ca.pem")).expect("rm");
    g.refused(&[("ca =", "mqtt.tls.ca", "ca.pem", "No such file")]);
    // The certificate and the key swapped: neither holds what it is for.
    std::fs::copy(g.dir.join("client.pem"), g.dir.join("ca.pem")).expect("cp");
    g.write_config(
        &g.config()
            .replace("client.pem\"", "CERT")
            .replace("client.key\"", "client.pem\"")
            .replace("CERT", "client.key\""),
    );
    chmod(&g.dir.join("client.pem"), 0o600);
    g.refused(&[
        (
            "cert =",
            "mqtt.tls.cert",
            "client.key",
            "no PEM certificate",
        ),
        ("key =", "mqtt.tls.key", "client.pem", "no PEM private key"),
    ]);
    g.write_config(&g.config());
    chmod(&g.dir.join("client.key"), 0o640);
    g.refused(&[(
        "key =",
        "mqtt.tls.key",
        "client.key",
        "readable by others (mode 640)",
    )]);
}

#[test]
fn a_zero_heartbeat_is_refused_with_its_line_and_field() {
    let g = Gateway::new();
    g.write_config(
        &g.config()
            .replace("heartbeat_ms = 1000", "heartbeat_ms = 0"),
    );
    for args in [&["check-config"][..], &["run"][..]] {
        let out = agent(&[&["--config", s(&g.dir.join("agent.toml"))][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let line = g
            .config()
            .lines()
            .position(|l| l.starts_with("heartbeat_ms"))
            .map_or(0, |i| i + 1);
        assert!(
            err.contains(&format!(
                "agent.toml:{line}: field `instance.heartbeat_ms`: 0 is out of range 50..=60000"
            )),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_world_readable_password_file_is_named_and_never_printed() {
    let g = Gateway::new();
    chmod(&g.dir.join("mqtt.password"), 0o644);
    let err = g.refused(&[(
        "password_file =",
        "mqtt.password_file",
        "mqtt.password",
        "readable by others (mode 644)",
    )]);
    let pw = std::fs::read_to_string(g.dir.join("mqtt.password")).expect("pw");
    assert!(!err.contains(pw.trim()), "{err}");
    // username without password_file: a config error at the username's line.
    g.write_config(&g.config().replace(
        &format!("password_file = \"{}/mqtt.password\"\n", g.dir.display()),
        "",
    ));
    let out = g.check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(":5: field `mqtt.username`"), "{err}");
}

#[test]
fn every_broken_file_is_reported_at_once() {
    let g = Gateway::new();
    chmod(&g.dir.join("keys/gateway.key"), 0o640);
    chmod(&g.dir.join("mqtt.password"), 0o604);
    chmod(&g.dir.join("campus.toml"), 0o644);
    std::fs::remove_file(g.dir.join("client.pem")).expect("rm");
    g.refused(&[
        (
            "password_file =",
            "mqtt.password_file",
            "mqtt.password",
            "mode 604",
        ),
        ("cert =", "mqtt.tls.cert", "client.pem", "No such file"),
        ("keys =", "instance.keys", "keys/gateway.key", "mode 640"),
        (
            "credentials =",
            "clouds[0].credentials",
            "campus.toml",
            "mode 644",
        ),
    ]);
}
