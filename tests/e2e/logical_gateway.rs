//! Logical gateways (paper §V), all real: a VM running the gateway software joins ANOTHER instance
//! as its own member. Instance A is one host agent whose `betaas-vmd` drives a real libvirtd and
//! QEMU (TCG); instance B is one host agent; both share a real mosquitto on the host. vmd's pool
//! holds ONE identity, gateway "lgw-1" of instance B (made with `betaas-agent instance admit`).
//!
//! A VM request for the `lgw` template on A: A's allocator places it on A, vmd starts the VM with
//! the identity on its seed disk and a user-mode NIC, the guest's own static agent reaches the
//! broker at 10.0.2.2, and agent B reports "lgw-1" as an "up" member; the guest's own health topic
//! arrives too. A second request finds no free identity: vmd refuses, A gives up (cancel) and its
//! log carries vmd's reason naming the pool. Every domain, process and libvirtd this test started
//! is gone afterwards, pass or fail. Prints boot-to-marker and request-to-member-up times.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use betaas_e2e::libvirtd::{DomainsCleanup, Libvirtd};
use betaas_e2e::{bin, repo, vmd_list, wait_until, KillOnDrop, Mosquitto, VmClient};
use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response};
use serde_json::Value;

/// The guest architecture: x86_64 (the fastest under TCG; what `make test-e2e` runs), or armhf with
/// `BETAAS_LGW_ARCH=armhf` (QEMU `-M virt`, the static ARM agent).
fn arch() -> String {
    std::env::var("BETAAS_LGW_ARCH").unwrap_or_else(|_| "x86_64".into())
}

/// `out/templates/<name>-<arch>`, built by `make test-e2e` (`templates/<name>/build.sh <arch>`).
fn built_template(name: &str) {
    let t = repo()
        .join("out/templates")
        .join(format!("{name}-{}/template.toml", arch()));
    assert!(
        t.is_file(),
        "{} missing: run `bash templates/{name}/build.sh {}` (make test-e2e does for x86_64)",
        t.display(),
        arch()
    );
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> KillOnDrop {
    let f = std::fs::File::create(log).expect("log file");
    let f2 = f.try_clone().expect("log file");
    KillOnDrop(
        cmd.stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .expect("spawn"),
    )
}

fn health(topic: &str, want: &str, payload: &str) -> Option<Value> {
    (topic == want)
        .then(|| serde_json::from_str::<Value>(payload).ok())
        .flatten()
}

#[test]
#[ignore = "boots a real QEMU guest under a real libvirtd: `make test-e2e`"]
fn a_logical_gateway_vm_joins_another_instance_as_its_own_member() {
    built_template("tiny");
    built_template("lgw");
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let tag = format!("lgw{:06x}", fastrand::u32(..0xff_ffff));
    let agent = bin("betaas-agent");

    // Declared first: dropped last (after the domains and the processes below).
    let _libvirtd = Libvirtd::acquire();
    let _domains = DomainsCleanup(tag.clone());
    let broker = Mosquitto::start();
    let port = broker.port;
    let mut sub = broker.subscribe("betaas/#");

    let run = |args: &[&str]| {
        let st = Command::new(&agent).args(args).status().expect("agent");
        assert!(st.success(), "betaas-agent {args:?}");
    };
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    for inst in ["inst-a", "inst-b"] {
        run(&["instance", "keygen", "--out", &p(&r.join(inst))]);
    }
    let admit = |inst: &str, gw: &str, out: &Path| {
        run(&[
            "instance",
            "admit",
            "--instance-key",
            &p(&r.join(inst).join("instance.key")),
            "--gateway",
            gw,
            "--out",
            &p(out),
        ])
    };

    // The pool: one identity of instance B, as an administrator provisions it.
    let pool = r.join("logical");
    let ident = pool.join("lgw-1");
    admit("inst-b", "lgw-1", &ident);
    std::fs::write(
        ident.join("agent.toml"),
        format!(
            "gateway_id = \"lgw-1\"\ndata_dir = \"/var/lib/betaas\"\n[mqtt]\nhost = \"10.0.2.2\"\nport = {port}\n\
             [health]\ninterval_secs = 1\n[instance]\nname = \"inst-b\"\nkeys = \"/etc/betaas/instance\"\n\
             heartbeat_ms = 500\ntimeout_ms = 6000\nvirt = \"none\"\ncapacity = {{ cpus = 0, mem_mb = 0, disk_gb = 0 }}\n"
        ),
    )
    .expect("identity agent.toml");

    // betaas-vmd on the real libvirtd; its probe boots the tiny template under TCG.
    let socket = r.join("vmd.sock");
    std::fs::write(
        r.join("vmd.toml"),
        format!(
            "socket = \"{}\"\nuri = \"qemu:///system\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\nstate_dir = \"{}\"\n\
             templates = [\"{}\"]\narch = \"{arch}\"\nlogical_dir = \"{}\"\nidle_destroy_s = 600\n\
             [probe]\nkinds = [\"qemu\"]\ntimeout_s = 90\n",
            socket.display(),
            r.join("vms").display(),
            repo().join("out/templates").display(),
            pool.display(),
            arch = arch(),
        ),
    )
    .expect("vmd.toml");
    let _vmd = spawn_logged(
        Command::new(bin("betaas-vmd"))
            .arg("--config")
            .arg(r.join("vmd.toml"))
            .env("RUST_LOG", "info"),
        &r.join("vmd.log"),
    );
    wait_until("the vmd socket", Duration::from_secs(180), || {
        UnixStream::connect(&socket).ok()
    });
    let probe = Client::new(UnixStream::connect(&socket).expect("vmd"))
        .call(&Request::Probe { refresh: false })
        .expect("probe");
    match &probe {
        Response::Capability(c) => {
            assert!(c.best.is_some(), "vmd's probe booted nothing: {c:?}")
        }
        other => panic!("probe answered {other:?}"),
    }

    // Host agents: A (with the VM manager and the lgw template) and B.
    let agent_toml = |id: &str, inst: &str, extra: &str| {
        let dir = r.join(id);
        admit(inst, id, &dir.join("keys"));
        let text = format!(
            "gateway_id = \"{id}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [health]\ninterval_secs = 1\n[instance]\nname = \"{inst}\"\nkeys = \"{d}/keys\"\n\
             heartbeat_ms = 500\ntimeout_ms = 6000\ndeploy_timeout_ms = 20000\n{extra}",
            d = dir.display()
        );
        std::fs::write(dir.join("agent.toml"), text).expect("agent.toml");
        dir.join("agent.toml")
    };
    let a_cfg = agent_toml(
        "gwa",
        "inst-a",
        &format!(
            "vmd_socket = \"{}\"\nvirt = \"none\"\ncapacity = {{ cpus = 4, mem_mb = 2048, disk_gb = 16 }}\n\
             [[instance.templates]]\nname = \"lgw\"\nvcpus = 1\nmem_mb = 192\ndisk_gb = 1\nrole = \"gateway\"\n",
            socket.display()
        ),
    );
    let b_cfg = agent_toml(
        "gwb",
        "inst-b",
        "virt = \"none\"\ncapacity = { cpus = 0, mem_mb = 0, disk_gb = 0 }\n",
    );
    let _a = spawn_logged(
        Command::new(&agent).arg("--config").arg(&a_cfg),
        &r.join("gwa.log"),
    );
    let _b = spawn_logged(
        Command::new(&agent).arg("--config").arg(&b_cfg),
        &r.join("gwb.log"),
    );
    // A has asked vmd for its capability at start: a few health rounds later it is known.
    for _ in 0..3 {
        sub.wait_for("gwa's health", Duration::from_secs(30), |t, p| {
            health(t, "betaas/gwa/health", p)
        });
    }
    sub.wait_for("gwb's health", Duration::from_secs(30), |t, p| {
        health(t, "betaas/gwb/health", p)
    });

    // An operator of instance A asks gwa, signed with its client key.
    let ops = VmClient::admit(
        &r.join("inst-a").join("instance.key"),
        "inst-a",
        "ops",
        &r.join("ops"),
        &broker,
    );
    let t0 = Instant::now();
    let r1 = ops.request("gwa", "r1", "lgw", 180);
    let t_result = t0.elapsed();
    assert_eq!(
        (r1["decision"].as_str(), r1["target"].as_str()),
        (Some("local"), Some("gwa")),
        "{r1}"
    );
    let vms = vmd_list(&socket);
    assert_eq!(vms.len(), 1, "{vms:?}");
    let vm = &vms[0];
    assert_eq!(vm.template, "lgw", "{vms:?}");
    let vm_dir = r.join("vms").join(&vm.name);
    assert_eq!(
        std::fs::read_to_string(vm_dir.join("identity")).expect("identity file"),
        "lgw-1\n"
    );

    // The guest boots, unpacks its seed and says so on its console.
    let serial = vm_dir.join("serial.log");
    let marker = wait_until(
        "the guest's BETAAS-LGW-BOOTED line",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&serial)
                .ok()?
                .lines()
                .find(|l| l.contains("BETAAS-LGW-BOOTED"))
                .map(str::to_owned)
        },
    );
    let t_marker = t0.elapsed();
    assert!(
        marker.contains("gateway=lgw-1") && marker.contains("net=10.0.2.15"),
        "{marker}\n--- serial.log\n{}\n--- domain\n{}",
        std::fs::read_to_string(&serial).unwrap_or_default(),
        betaas_e2e::libvirtd::virsh(&["dumpxml", &vm.name]).1
    );

    // Instance B sees it as its own member; its own health arrives from inside the VM.
    let dump = |what: &str| {
        format!(
            "{what}\n--- serial.log\n{}\n--- gwb.log (tail)\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default(),
            tail(&r.join("gwb.log"), 20)
        )
    };
    let up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sub.wait_for(
            "gwb to report lgw-1 up",
            Duration::from_secs(120),
            |t, p| {
                health(t, "betaas/gwb/health", p)
                    .filter(|h| h["instance"]["members"]["lgw-1"]["state"] == "up")
            },
        )
    }));
    if up.is_err() {
        panic!("{}", dump("lgw-1 never came up in instance B"));
    }
    let t_up = t0.elapsed();
    let own = sub.wait_for(
        "the guest agent's health",
        Duration::from_secs(60),
        |t, p| health(t, "betaas/lgw-1/health", p),
    );
    assert_eq!(own["instance"]["name"], "inst-b", "{own}");
    println!(
        "logical gateway ({}): request -> vmd started it {:.1?}; -> BETAAS-LGW-BOOTED {:.1?}; -> lgw-1 up in instance B {:.1?}",
        arch(), t_result, t_marker, t_up
    );

    // A second logical gateway: the only identity is held, vmd refuses, A cancels.
    let r2 = ops.request("gwa", "r2", "lgw", 180);
    assert_eq!(r2["decision"], "cancel", "{r2}");
    // vmd's reason reaches the requester's result, naming the pool and who holds it.
    let refusal = r2["reason"].as_str().unwrap_or("");
    assert!(
        refusal.contains("NoIdentity")
            && refusal.contains(&pool.display().to_string())
            && refusal.contains("lgw-1 by VM"),
        "{r2}\ngwa's log:\n{}",
        tail(&r.join("gwa.log"), 30)
    );
    println!("second request: {r2}");
    // Nothing half-made: still one VM, still holding lgw-1.
    let vms = vmd_list(&socket);
    assert_eq!(vms.len(), 1, "{vms:?}");
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
