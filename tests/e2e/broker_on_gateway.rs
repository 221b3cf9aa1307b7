//! One gateway of an instance runs the instance's broker (paper §II; issue: "one gateway of the
//! instance may run it — the image can include mosquitto"). The qemu-virt firmware boots with the
//! instance's users and ACL (image/instance-broker.sh), its own MQTT password and instance keys on
//! its boot partition: init starts the image's mosquitto with the shipped instance config
//! (/etc/betaas/mosquitto/instance.conf: no anonymous clients, a user per gateway, 64 KiB limit),
//! the gateway's own agent joins the instance on it as its user, and an agent on the host joins
//! through the forwarded port as its own. Both see each other up, and a VM request from a client
//! user on the gateway (which offers no room) is placed on the host gateway over that broker.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use betaas_e2e::{bin, free_port, repo, spawn_agent, Qemu};
use serde_json::Value;

/// The generated password of `user`.
fn password(gen: &Path, user: &str) -> String {
    std::fs::read_to_string(gen.join("passwords").join(user))
        .expect("password")
        .trim_end()
        .to_owned()
}

/// mosquitto_sub as `user` on `filter`, every message as (topic, payload); killed on drop.
struct Sub(Child, Receiver<(String, String)>);

impl Sub {
    fn start(port: u16, gen: &Path, user: &str, filter: &str) -> Sub {
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-p",
                &port.to_string(),
                "-u",
                user,
                "-P",
                &password(gen, user),
            ])
            .args(["-t", filter, "-v", "-q", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                let (t, p) = line.split_once(' ').unwrap_or((&line, ""));
                if tx.send((t.to_owned(), p.to_owned())).is_err() {
                    break;
                }
            }
        });
        Sub(child, rx)
    }

    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&str, &str) -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let (t, p) = self
                .1
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{e} waiting for {what}"));
            if let Some(v) = f(&t, &p) {
                return v;
            }
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(args: &[&str]) {
    let out = Command::new(bin("betaas-agent"))
        .args(args)
        .output()
        .expect("agent");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn admit(instance_key: &Path, id: &str, out: &Path) {
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        instance_key.to_str().expect("utf8"),
        "--gateway",
        id,
        "--out",
        out.to_str().expect("utf8"),
    ]);
}

fn instance_section(keys: &str, cap: (u32, u64, u64)) -> String {
    format!(
        "[instance]\nname = \"lab\"\nkeys = \"{keys}\"\nheartbeat_ms = 500\ntimeout_ms = 6000\ndeploy_timeout_ms = 5000\n\
         virt = \"kvm\"\ncapacity = {{ cpus = {}, mem_mb = {}, disk_gb = {} }}\n\
         [[instance.templates]]\nname = \"app\"\nvcpus = 1\nmem_mb = 256\ndisk_gb = 1\nrole = \"app-light\"\n",
        cap.0, cap.1, cap.2
    )
}

fn members_up(h: &Value, other: &str) -> bool {
    h["instance"]["members"][other]["state"] == "up"
}

#[test]
#[ignore = "boots the firmware under QEMU: run by `make test` after `make image BOARD=qemu-virt`"]
fn a_gateway_runs_the_instance_broker_and_the_others_join_through_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = root.path().join("instance");
    cli(&["instance", "keygen", "--out", keys.to_str().expect("utf8")]);
    let guest = format!("virt-{}", fastrand::u32(..));
    let host = format!("host-{}", fastrand::u32(..));

    // The instance's users and ACL: both gateways, a client, Home Assistant (reads everything).
    let gen = root.path().join("broker");
    let st = Command::new(repo().join("image/instance-broker.sh"))
        .args(["--out", gen.to_str().expect("utf8"), "--instance", "lab"])
        .args([
            "--gateway",
            &guest,
            "--gateway",
            &host,
            "--client",
            "operator",
        ])
        .arg("--homeassistant")
        .status()
        .expect("image/instance-broker.sh");
    assert!(st.success());

    // The boot partition's betaas/: the guest's agent.toml, its MQTT password, instance keys, and
    // mosquitto/{passwd,acl} (no mosquitto.conf: the image's instance config is used).
    let prov = root.path().join("provision");
    admit(&keys.join("instance.key"), &guest, &prov.join("instance"));
    std::fs::create_dir_all(prov.join("mosquitto")).expect("mkdir");
    for f in ["passwd", "acl"] {
        std::fs::copy(
            gen.join("boot/mosquitto").join(f),
            prov.join("mosquitto").join(f),
        )
        .expect("copy");
    }
    std::fs::copy(
        gen.join("passwords").join(&guest),
        prov.join("mqtt.password"),
    )
    .expect("copy");
    let guest_toml = format!(
        "gateway_id = \"{guest}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nkeep_alive_secs = 5\n\
         username = \"{guest}\"\npassword_file = \"/boot/betaas/mqtt.password\"\n[health]\ninterval_secs = 1\n{}",
        instance_section("/boot/betaas/instance", (0, 0, 0))
    );
    std::fs::write(prov.join("agent.toml"), &guest_toml).expect("agent.toml");

    let port = free_port();
    let booted = Instant::now();
    let vm = Qemu::boot_env(
        "qemu-virt",
        &guest_toml,
        &[
            ("PROVISION", prov.to_str().expect("utf8")),
            ("HOSTFWD", &format!("tcp:127.0.0.1:{port}-:1883")),
        ],
    );
    // The gateway's broker, from the host: slirp accepts at once; an MQTT CONNECT answered (as
    // the operator: anonymous clients are refused) proves the broker is up.
    let operator_pw = password(&gen, "operator");
    betaas_e2e::wait_until("the gateway's broker", Duration::from_secs(120), || {
        Command::new("mosquitto_pub")
            .args([
                "-p",
                &port.to_string(),
                "-u",
                "operator",
                "-P",
                &operator_pw,
            ])
            .args(["-t", "betaas/probe/vm/request", "-m", "x"])
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|st| st.success())
    });
    let anonymous = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-t", "betaas/probe", "-m", "x"])
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub");
    assert!(
        !anonymous.success(),
        "the gateway's broker let an anonymous client in"
    );
    println!(
        "the gateway's mosquitto answers {:.1} s after boot",
        booted.elapsed().as_secs_f64()
    );
    let mut sub = Sub::start(port, &gen, "homeassistant", "betaas/#");

    let hdir = root.path().join("host");
    admit(&keys.join("instance.key"), &host, &hdir.join("keys"));
    let host_toml = format!(
        "gateway_id = \"{host}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         username = \"{host}\"\npassword_file = \"{pw}\"\n[health]\ninterval_secs = 1\n{}",
        instance_section(&format!("{}/keys", hdir.display()), (2, 1024, 8)),
        d = hdir.display(),
        pw = gen.join("passwords").join(&host).display()
    );
    let _host_agent = spawn_agent(bin("betaas-agent"), &hdir, &host_toml);

    let joined = Instant::now();
    let (mut guest_up, mut host_up) = (false, false);
    sub.wait_for(
        "both gateways to see each other up",
        Duration::from_secs(90),
        |t, p| {
            let h: Value = serde_json::from_str(p).ok()?;
            if t == format!("betaas/{guest}/health") {
                guest_up = members_up(&h, &host);
            } else if t == format!("betaas/{host}/health") {
                host_up = members_up(&h, &guest);
            }
            (guest_up && host_up).then_some(())
        },
    );
    println!(
        "instance formed on the gateway's broker {:.1} s after the host agent started",
        joined.elapsed().as_secs_f64()
    );

    // A signed request from a client (its own key and MQTT user) on the gateway, which has no
    // room of its own, lands on the host gateway.
    let client = root.path().join("operator");
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        keys.join("instance.key").to_str().expect("utf8"),
        "--client",
        "operator",
        "--out",
        client.to_str().expect("utf8"),
    ]);
    let out = Command::new(bin("betaas-agent"))
        .args(["vm", "request", "--mqtt", &format!("127.0.0.1:{port}")])
        .args([
            "--instance",
            "lab",
            "--gateway",
            &guest,
            "--template",
            "app",
        ])
        .args(["--keys", client.to_str().expect("utf8"), "--timeout", "30"])
        .args(["--mqtt-user", "operator", "--mqtt-password-file"])
        .arg(gen.join("passwords/operator"))
        .output()
        .expect("betaas-agent vm request");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let topic = format!("betaas/{guest}/vm/result");
    let seen = sub.wait_for(
        "the result on vm/result",
        Duration::from_secs(10),
        |t, p| (t == topic).then(|| serde_json::from_str::<Value>(p).expect("json")),
    );
    assert_eq!(seen, r, "the CLI prints the gateway's result");
    assert!(out.status.success(), "{r}");
    assert_eq!(
        (r["decision"].as_str(), r["target"].as_str()),
        (Some("local"), Some(host.as_str())),
        "{r}\nconsole:\n{}",
        vm.console()
    );
    assert!(
        vm.console()
            .contains("broker: starting mosquitto with /etc/betaas/mosquitto/instance.conf"),
        "{}",
        vm.console()
    );
    drop(vm);
}
