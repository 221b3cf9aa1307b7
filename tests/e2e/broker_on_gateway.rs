//! One gateway of an instance runs the instance's broker (paper §II; issue: "one gateway of the
//! instance may run it — the image can include mosquitto"). The qemu-virt firmware boots with a
//! provisioned `mosquitto.conf` and instance keys on its boot partition: init starts the image's
//! mosquitto, the gateway's own agent joins the instance on it, and an agent on the host joins
//! through the forwarded port. Both see each other up, and a VM request on the gateway (which
//! offers no room) is placed on the host gateway over that broker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use betaas_e2e::{bin, free_port, spawn_agent, Mosquitto, Qemu};
use serde_json::Value;

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

    // The boot partition's betaas/: the guest's agent.toml, mosquitto.conf and instance keys.
    let prov = root.path().join("provision");
    admit(&keys.join("instance.key"), &guest, &prov.join("instance"));
    std::fs::write(
        prov.join("mosquitto.conf"),
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence true\npersistence_location /var/lib/betaas/mosquitto/\n",
    )
    .expect("mosquitto.conf");
    let guest_toml = format!(
        "gateway_id = \"{guest}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nkeep_alive_secs = 5\n[health]\ninterval_secs = 1\n{}",
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
    // The gateway's broker, from the host.
    let broker = Mosquitto::external("127.0.0.1", port);
    betaas_e2e::wait_until("the gateway's broker", Duration::from_secs(120), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|s| {
                // slirp accepts at once; an MQTT CONNECT answered proves the broker is up.
                drop(s);
                Command::new("mosquitto_pub")
                    .args(["-p", &port.to_string(), "-t", "probe", "-m", "x"])
                    .stderr(Stdio::null())
                    .status()
                    .ok()
                    .filter(|st| st.success())
            })
    });
    println!(
        "the gateway's mosquitto answers {:.1} s after boot",
        booted.elapsed().as_secs_f64()
    );
    let mut sub = broker.subscribe("betaas/#");

    let hdir = root.path().join("host");
    admit(&keys.join("instance.key"), &host, &hdir.join("keys"));
    let host_toml = format!(
        "gateway_id = \"{host}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n[health]\ninterval_secs = 1\n{}",
        instance_section(&format!("{}/keys", hdir.display()), (2, 1024, 8)),
        d = hdir.display()
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

    // A request on the gateway (no room of its own) lands on the host gateway.
    broker.publish(
        &format!("betaas/{guest}/vm/request"),
        r#"{"id":"r1","template":"app"}"#,
    );
    let topic = format!("betaas/{guest}/vm/result");
    let r = sub.wait_for(
        "the VM request's result",
        Duration::from_secs(30),
        |t, p| (t == topic).then(|| serde_json::from_str::<Value>(p).expect("json")),
    );
    assert_eq!(
        (r["decision"].as_str(), r["target"].as_str()),
        (Some("local"), Some(host.as_str())),
        "{r}\nconsole:\n{}",
        vm.console()
    );
    assert!(
        vm.console().contains("broker: starting mosquitto"),
        "{}",
        vm.console()
    );
    drop(vm);
}
