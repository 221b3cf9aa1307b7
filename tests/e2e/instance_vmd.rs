//! The whole placement path with the real parts: a VM request on one gateway, the allocator over
//! the instance's shared view, a signed deploy request to another gateway, which re-checks, has its
//! `betaas-vmd` create and start the VM through libvirt, and answers. libvirt here is its `test:///`
//! driver inside the daemon (domains are defined and "run" without booting anything); the lifecycle
//! under real QEMU is `agent/vmd/tests/lifecycle_qemu.rs`. Then the VM manager dies: the next
//! deployment is refused, the reservation given back, and the request cancelled with the reason.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use betaas_e2e::libvirtd::fake_template;
use betaas_e2e::{bin, spawn_agent, vmd_list as vms, wait_until, KillOnDrop, Mosquitto};
use betaas_proto::VmState;
use serde_json::Value;

fn agent_config(
    id: &str,
    dir: &Path,
    port: u16,
    cap: (u32, u64, u64),
    vmd: Option<&Path>,
) -> String {
    format!(
        "gateway_id = \"{id}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n[health]\ninterval_secs = 1\n\
         [instance]\nname = \"vmlab\"\nkeys = \"{d}/keys\"\nheartbeat_ms = 300\ntimeout_ms = 3000\ndeploy_timeout_ms = 20000\n\
         virt = \"{virt}\"\ncapacity = {{ cpus = {}, mem_mb = {}, disk_gb = {} }}\n{}\
         [[instance.templates]]\nname = \"app\"\nvcpus = 1\nmem_mb = 64\ndisk_gb = 1\nrole = \"app-light\"\n",
        cap.0,
        cap.1,
        cap.2,
        vmd.map_or(String::new(), |s| format!("vmd_socket = \"{}\"\n", s.display())),
        d = dir.display(),
        // With a VM manager the capability comes from its probe, whatever the config says: "none"
        // here would keep gw2 out of every placement if the probe were not used.
        virt = if vmd.is_some() { "none" } else { "qemu" },
    )
}

#[test]
#[ignore = "runs betaas-agent and betaas-vmd binaries: `make test` builds them first"]
fn a_request_on_one_gateway_runs_a_vm_on_another_through_its_vm_manager() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let tag = format!("e2e{}", fastrand::u32(..));
    fake_template(&r.join("templates"), "app", |t| t);
    let socket = r.join("vmd.sock");
    std::fs::write(
        r.join("vmd.toml"),
        format!(
            "socket = \"{}\"\nuri = \"test:///default\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\nstate_dir = \"{}\"\n\
             templates = [\"{}\"]\narch = \"x86_64\"\nidle_destroy_s = 600\nlibvirt_retry_s = 1\n[probe]\nassume = \"qemu\"\n",
            socket.display(),
            r.join("vms").display(),
            r.join("templates").display()
        ),
    )
    .expect("vmd.toml");
    let mut vmd = Some(KillOnDrop(
        Command::new(bin("betaas-vmd"))
            .arg("--config")
            .arg(r.join("vmd.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("vmd"),
    ));
    wait_until("the vmd socket", Duration::from_secs(20), || {
        UnixStream::connect(&socket).ok()
    });

    let agent = bin("betaas-agent");
    let keys = r.join("instance");
    let run = |args: &[&str]| {
        assert!(
            Command::new(&agent)
                .args(args)
                .status()
                .expect("agent")
                .success(),
            "{args:?}"
        )
    };
    run(&["instance", "keygen", "--out", keys.to_str().expect("utf8")]);
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let mut agents = Vec::new();
    for (id, cap, vmd_socket) in [
        ("gw1", (0, 0, 0), None),
        ("gw2", (2, 512, 8), Some(socket.as_path())),
    ] {
        let dir = r.join(id);
        run(&[
            "instance",
            "admit",
            "--instance-key",
            keys.join("instance.key").to_str().expect("utf8"),
            "--gateway",
            id,
            "--out",
            dir.join("keys").to_str().expect("utf8"),
        ]);
        agents.push(spawn_agent(
            &agent,
            &dir,
            &agent_config(id, &dir, broker.port, cap, vmd_socket),
        ));
    }
    sub.wait_for(
        "gw1 to see gw2 up with its probed capability",
        Duration::from_secs(20),
        |t, p| {
            (t == "betaas/gw1/health")
                .then(|| serde_json::from_str::<Value>(p).ok())
                .flatten()
                .filter(|h| {
                    // Up, and offering what its VM manager's probe found.
                    let m = &h["instance"]["members"]["gw2"];
                    m["state"] == "up" && m["virt"] == "qemu"
                })
        },
    );

    let ops = betaas_e2e::VmClient::admit(
        &keys.join("instance.key"),
        "vmlab",
        "ops",
        &r.join("ops"),
        &broker,
    );
    let r1 = ops.request("gw1", "r1", "app", 60);
    assert_eq!(
        (r1["decision"].as_str(), r1["target"].as_str()),
        (Some("local"), Some("gw2")),
        "{r1}"
    );
    let running = vms(&socket);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(
        (running[0].template.as_str(), running[0].state),
        ("app", VmState::Running),
        "{running:?}"
    );

    // gw2 shares the VM manager's figures for it in its health.
    sub.wait_for("gw2's VM stats", Duration::from_secs(15), |t, p| {
        (t == "betaas/gw2/health")
            .then(|| serde_json::from_str::<Value>(p).ok())
            .flatten()
            .filter(|h| {
                let s = &h["instance"]["vm_stats"];
                s.as_array().is_some_and(|a| a.len() == 1)
                    && s[0]["name"] == running[0].name.as_str()
                    && s[0]["state"] == "running"
            })
    });

    // The VM manager dies: gw2 cannot start the next VM, refuses, gives the reservation back, and
    // gw1 has nowhere else to go.
    drop(vmd.take());
    let r2 = ops.request("gw1", "r2", "app", 60);
    assert_eq!(r2["decision"], "cancel", "{r2}");
    sub.wait_for(
        "gw2's reservation given back",
        Duration::from_secs(10),
        |t, p| {
            (t == "betaas/gw2/health")
                .then(|| serde_json::from_str::<Value>(p).ok())
                .flatten()
                .filter(|h| h["instance"]["vms"] == 1)
        },
    );
}
