//! The local VM lifecycle from the agent, with the real parts: a real libvirtd booting the tiny
//! x86_64 template under QEMU TCG through `betaas-vmd`, a real mosquitto, the real agent, and an
//! operator's signed requests (`betaas-agent vm request|release` through [`VmClient`]).
//!
//! request → local, the guest boots; release → managed save, reservation given back; request
//! again → the same VM resumed (`"resumed": true`), faster than the cold start (both printed);
//! the agent killed and started again → the same VM adopted, used capacity unchanged, and no
//! room offered twice (a further request is cancelled); the VM's QEMU killed → restarted by
//! the VM manager within its budget, visible in `health.instance.vm_stats`, reservation kept;
//! released again → destroyed by the idle policy after `idle_destroy_s`, gone from the agent's view.
//!
//!   cargo build --workspace --bins && cargo test -p betaas-e2e --test local_lifecycle -- --ignored --nocapture

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use betaas_e2e::libvirtd::{DomainsCleanup, Libvirtd};
use betaas_e2e::{bin, repo, spawn_agent, vmd_list, wait_until, KillOnDrop, Mosquitto, VmClient};
use betaas_proto::VmState;
use serde_json::Value;

const BOOTED: &str = "BETAAS-TINY-BOOTED";
const TICK: &str = "BETAAS-TINY-TICK";

fn tiny_dir() -> PathBuf {
    let dir = repo().join("out/templates");
    assert!(
        dir.join("tiny-x86_64/template.toml").is_file(),
        "out/templates/tiny-x86_64 missing: `make out/templates/tiny-x86_64/template.toml` (make test-e2e does)"
    );
    dir
}

fn agent_config(dir: &Path, port: u16, socket: &Path) -> String {
    // Room for exactly one tiny VM (1 vCPU, 128 MiB): a second one would over-commit.
    format!(
        "gateway_id = \"gw1\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [health]\ninterval_secs = 1\n\
         [instance]\nname = \"life\"\nkeys = \"{d}/keys\"\nheartbeat_ms = 300\ntimeout_ms = 3000\n\
         deploy_timeout_ms = 60000\nvirt = \"qemu\"\nvmd_socket = \"{s}\"\n\
         capacity = {{ cpus = 1, mem_mb = 192, disk_gb = 4 }}\n\
         [[instance.templates]]\nname = \"tiny\"\nvcpus = 1\nmem_mb = 128\ndisk_gb = 1\nrole = \"app-light\"\n",
        d = dir.display(),
        s = socket.display(),
    )
}

fn health(sub: &mut betaas_e2e::Subscriber, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    sub.wait_for(what, Duration::from_secs(60), |t, p| {
        (t == "betaas/gw1/health")
            .then(|| serde_json::from_str::<Value>(p).ok())
            .flatten()
            .map(|h| h["instance"].clone())
            .filter(|i| f(i))
    })
}

/// Offset just past the `n`th occurrence of `needle` in the serial log, waiting for it.
fn wait_log(log: &Path, from: usize, needle: &str, timeout: Duration) -> usize {
    wait_until(&format!("{needle} in {}", log.display()), timeout, || {
        let text = std::fs::read(log).ok()?;
        let text = String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned();
        text.find(needle).map(|i| from + i + needle.len())
    })
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

fn used_cpus(i: &Value) -> Option<u64> {
    i["used"]["cpus"].as_u64()
}

#[test]
#[ignore = "real libvirtd + QEMU TCG + agent + vmd binaries: make test-e2e"]
fn release_resume_restart_agent_and_kill_qemu_through_the_agent() {
    let _libvirtd = Libvirtd::acquire();
    let tag = format!("ll{}", fastrand::u32(..100_000));
    let _sweep = DomainsCleanup(tag.clone());
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let socket = r.join("vmd.sock");
    std::fs::write(
        r.join("vmd.toml"),
        format!(
            "socket = \"{}\"\nuri = \"qemu:///system\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\n\
             state_dir = \"{}\"\ntemplates = [\"{}\"]\narch = \"x86_64\"\nidle_destroy_s = 15\nreap_interval_s = 1\n\
             libvirt_retry_s = 30\nshutdown_timeout_s = 20\nrestart_max = 3\nrestart_backoff_ms = 500\n\
             supervise_interval_ms = 250\n[probe]\nkinds = [\"qemu\"]\ntimeout_s = 90\n",
            socket.display(),
            r.join("vms").display(),
            tiny_dir().display()
        ),
    )
    .expect("vmd.toml");
    let vmd_log = std::fs::File::create(r.join("vmd.log")).expect("vmd.log");
    let _vmd = KillOnDrop(
        Command::new(bin("betaas-vmd"))
            .arg("--config")
            .arg(r.join("vmd.toml"))
            .stderr(Stdio::from(vmd_log))
            .spawn()
            .expect("vmd"),
    );
    wait_until("the vmd socket", Duration::from_secs(30), || {
        UnixStream::connect(&socket).ok()
    });

    let agent = bin("betaas-agent");
    let keys = r.join("instance");
    let run = |args: &[&str]| {
        let st = Command::new(&agent).args(args).status().expect("agent");
        assert!(st.success(), "{args:?}");
    };
    run(&["instance", "keygen", "--out", keys.to_str().expect("utf8")]);
    let gw = r.join("gw1");
    run(&[
        "instance",
        "admit",
        "--instance-key",
        keys.join("instance.key").to_str().expect("utf8"),
        "--gateway",
        "gw1",
        "--out",
        gw.join("keys").to_str().expect("utf8"),
    ]);
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/gw1/health");
    let toml = agent_config(&gw, broker.port, &socket);
    let mut gw1 = Some(spawn_agent(&agent, &gw, &toml));
    let ops = VmClient::admit(
        &keys.join("instance.key"),
        "life",
        "ops",
        &r.join("ops"),
        &broker,
    );
    // The VM manager probed (a real guest booted) and its list was read: empty, nothing used.
    health(&mut sub, "gw1's reservations synced, nothing used", |i| {
        i["synced"] == true
            && used_cpus(i) == Some(0)
            && i["vm_stats"].as_array().is_some_and(|a| a.is_empty())
    });

    // 1. Cold: a request placed here, a new VM created and booted.
    let t0 = Instant::now();
    let r1 = ops.request("gw1", "r1", "tiny", 120);
    let r1_reply = t0.elapsed();
    assert_eq!(
        (
            r1["decision"].as_str(),
            r1["host"].as_str(),
            r1["resumed"].as_bool()
        ),
        (Some("local"), Some("gw1"), Some(false)),
        "{r1}"
    );
    let name = r1["vm"].as_str().expect("vm name").to_owned();
    let log = r.join("vms").join(&name).join("serial.log");
    wait_log(&log, 0, BOOTED, Duration::from_secs(120));
    let cold = t0.elapsed();
    wait_log(&log, 0, TICK, Duration::from_secs(30));
    let i = health(&mut sub, "the VM running and its share used", |i| {
        used_cpus(i) == Some(1)
            && i["vm_stats"][0]["name"] == name.as_str()
            && i["vm_stats"][0]["state"] == "running"
    });
    eprintln!("after the first request: {}", i["vm_stats"]);

    // 2. Release: managed save, the reservation given back.
    let (rel, code) = ops.run("release", "gw1", "rel1", &["--vm", &name], 120);
    assert_eq!(
        (rel["decision"].as_str(), code),
        (Some("released"), 0),
        "{rel}"
    );
    let listed = vmd_list(&socket);
    assert_eq!(
        (listed.len(), listed[0].state),
        (1, VmState::Saved),
        "{listed:?}"
    );
    health(&mut sub, "the reservation given back", |i| {
        used_cpus(i) == Some(0) && i["vms"] == 0
    });

    // 3. The next request for the template resumes it, and faster than the cold start.
    let from = log_len(&log);
    let t1 = Instant::now();
    let r2 = ops.request("gw1", "r2", "tiny", 120);
    let r2_reply = t1.elapsed();
    assert_eq!(
        (
            r2["decision"].as_str(),
            r2["vm"].as_str(),
            r2["resumed"].as_bool()
        ),
        (Some("local"), Some(name.as_str()), Some(true)),
        "{r2}"
    );
    wait_log(&log, from, TICK, Duration::from_secs(30));
    let resume = t1.elapsed();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text[from..].contains(BOOTED), "resumed, not booted again");
    eprintln!(
        "FIGURES local lifecycle (tiny x86_64, QEMU TCG): request→result cold {:.2} s, resumed {:.2} s; \
         request→guest running (boot marker / next tick) cold {:.2} s, resumed {:.2} s",
        r1_reply.as_secs_f64(),
        r2_reply.as_secs_f64(),
        cold.as_secs_f64(),
        resume.as_secs_f64()
    );
    // The result comes when QEMU runs (both well under a second or two); what resuming saves
    // is the guest's boot.
    assert!(
        resume < cold,
        "resume ({resume:?}) is not faster than the cold start ({cold:?})"
    );
    let before = health(&mut sub, "the share used again", |i| {
        used_cpus(i) == Some(1) && i["vms"] == 1
    });

    // 4. The agent killed and started again: the same VM adopted, the same share used, and the
    // room it takes is not offered again.
    drop(gw1.take());
    gw1 = Some(spawn_agent(&agent, &gw, &toml));
    let after = health(
        &mut sub,
        "the restarted agent's rebuilt reservations",
        |i| {
            i["synced"] == true
                && i["vm_stats"][0]["name"] == name.as_str()
                && i["vm_stats"][0]["held"] == true
        },
    );
    assert_eq!(after["used"], before["used"], "{after}");
    assert_eq!(after["vms"], 1, "{after}");
    let listed = vmd_list(&socket);
    assert_eq!(
        (listed.len(), listed[0].name.as_str(), listed[0].state),
        (1, name.as_str(), VmState::Running),
        "{listed:?}"
    );
    let r3 = ops.request("gw1", "r3", "tiny", 60);
    assert_eq!(r3["decision"], "cancel", "no room for a second VM: {r3}");
    assert_eq!(vmd_list(&socket).len(), 1, "nothing created");

    // 5. The VM's QEMU killed (it dies without being released): the VM manager restarts it.
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .expect("QEMU's pid file")
        .trim()
        .to_owned();
    let from = log_len(&log);
    let t2 = Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill")
        .success());
    wait_log(&log, from, BOOTED, Duration::from_secs(120));
    eprintln!(
        "QEMU killed → guest booted again after {:.2} s",
        t2.elapsed().as_secs_f64()
    );
    let i = health(&mut sub, "the restart in vm_stats", |i| {
        i["vm_stats"][0]["restarts"] == 1
            && i["vm_stats"][0]["state"] == "running"
            && i["vm_stats"][0]["failed"] == false
    });
    assert_eq!(used_cpus(&i), Some(1), "restarting keeps its share: {i}");
    let listed = vmd_list(&socket);
    assert_eq!((listed[0].restarts, listed[0].state), (1, VmState::Running));

    // 6. Released for good: stopped, and destroyed by the idle policy after idle_destroy_s (15 s);
    // the agent's view follows.
    let (rel, code) = ops.run("release", "gw1", "rel2", &["--vm", &name], 120);
    assert_eq!(
        (rel["decision"].as_str(), code),
        (Some("released"), 0),
        "{rel}"
    );
    let t3 = Instant::now();
    health(&mut sub, "the idle VM destroyed, nothing used", |i| {
        used_cpus(i) == Some(0) && i["vm_stats"].as_array().is_some_and(|a| a.is_empty())
    });
    let idle = t3.elapsed();
    eprintln!(
        "released → destroyed by the idle policy after {:.1} s",
        idle.as_secs_f64()
    );
    assert!(
        idle >= Duration::from_secs(13),
        "destroyed before its idle time: {idle:?}"
    );
    assert!(vmd_list(&socket).is_empty());
    assert!(!r.join("vms").join(&name).exists(), "its files removed");
    drop(gw1);
}
