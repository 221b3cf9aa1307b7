//! The Big Data Manager on a bad day: two host agents (gw1 manages cluster "p", gw2), each with its
//! own `betaas-vmd` on a real libvirtd, `replicas 2` workers of the tiny template (LXC), one per
//! gateway, over a real mosquitto.
//! 1. The broker is down for several member timeouts, then back on its port: every other gateway
//!    only looked down to the manager, so nothing is replaced and the same two workers run.
//! 2. gw2 is cut off (its agent stopped with SIGSTOP; its container keeps running): its worker is
//!    replaced on gw1. gw2 comes back (SIGCONT): the worker it kept running is released there
//!    (stopped, kept), so two run in all and none runs unmanaged.
//!
//!   cargo build --workspace --bins && cargo test -p betaas-e2e --test cluster_partition -- --ignored --nocapture

use std::process::Command;
use std::time::{Duration, Instant};

use betaas_e2e::bigdata::LxcCleanup;
use betaas_e2e::gateway::HostGw;
use betaas_e2e::libvirtd::Libvirtd;
use betaas_e2e::{repo, Mosquitto, Subscriber, VmClient};
use betaas_proto::VmState;
use serde_json::Value;

const TIMEOUT_MS: u64 = 3000;

/// The tiny workers each gateway's vmd runs: (name, state).
fn tiny(gw: &HostGw) -> Vec<(String, VmState)> {
    betaas_e2e::vmd_list(&gw.socket)
        .into_iter()
        .filter(|v| v.template == "tiny")
        .map(|v| (v.name, v.state))
        .collect()
}

fn running(gws: &[HostGw]) -> Vec<String> {
    let mut names: Vec<String> = gws
        .iter()
        .flat_map(tiny)
        .filter(|(_, s)| *s == VmState::Running)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names
}

fn both_up(broker: &Mosquitto) {
    let mut health: Subscriber = broker.subscribe("betaas/+/health");
    for (g, other) in [("gw1", "gw2"), ("gw2", "gw1")] {
        health.wait_for(
            &format!("{g} sees {other} up, synced"),
            Duration::from_secs(120),
            |t, p| {
                let v: Value = serde_json::from_str(p).ok()?;
                (t == format!("betaas/{g}/health")
                    && v["instance"]["members"][other]["state"] == "up"
                    && v["instance"]["synced"] == true)
                    .then_some(())
            },
        );
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}");
}

#[test]
#[ignore = "two agents, two vmds, a real libvirtd with LXC and the tiny template: make test-e2e"]
fn an_outage_replaces_nothing_and_a_cut_off_gateways_worker_is_released_when_it_is_back() {
    let templates = repo().join("out/templates");
    assert!(
        templates.join("tiny-x86_64/template.toml").is_file(),
        "make out/templates/tiny-x86_64/template.toml"
    );
    let _libvirtd = Libvirtd::acquire();
    let tag = format!("cp{}", fastrand::u32(..100_000));
    let _sweep = LxcCleanup(tag.clone());
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let keys = betaas_e2e::gateway::instance_keys(r);
    let mut broker = Mosquitto::start();
    let port = broker.port;
    let instance = format!(
        "name = \"pt\"\nheartbeat_ms = 300\ntimeout_ms = {TIMEOUT_MS}\ndeploy_timeout_ms = 60000\n\
         capacity = {{ cpus = 2, mem_mb = 1024, disk_gb = 8 }}\n\
         [[instance.templates]]\nname = \"tiny\"\nvcpus = 1\nmem_mb = 128\ndisk_gb = 1\nrole = \"app-light\"\n"
    );
    let gws = [
        HostGw::start(r, "gw1", &tag, &templates, &broker, &keys, &instance),
        HostGw::start(r, "gw2", &tag, &templates, &broker, &keys, &instance),
    ];
    let ops = VmClient::admit(
        &keys.join("instance.key"),
        "pt",
        "ops",
        &r.join("ops"),
        &broker,
    );
    both_up(&broker);
    let replicas = |id: &str, n: &str| -> Value {
        let (v, code) = ops.run(
            "request",
            "gw1",
            id,
            &["--cluster", "p", "--template", "tiny", "--replicas", n],
            300,
        );
        println!("{id}: {v}");
        assert_eq!(code, 0, "{id}: {v}");
        v
    };
    let w = replicas("r2", "2");
    assert_eq!(w["running"], 2, "{w}");
    let on_gw2: Vec<String> = tiny(&gws[1]).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        on_gw2.len(),
        1,
        "one worker per gateway (the allocator spreads): {w}"
    );
    let before = running(&gws);
    assert_eq!(before.len(), 2);

    // 1. The broker is away for 4 member timeouts: the manager is cut off from everyone.
    let t = Instant::now();
    broker.stop();
    std::thread::sleep(Duration::from_millis(4 * TIMEOUT_MS));
    broker = Mosquitto::start_on(port);
    both_up(&broker);
    // Long enough for the re-plans (every 5 heartbeats) that would replace the workers.
    std::thread::sleep(Duration::from_millis(2 * TIMEOUT_MS));
    let log = std::fs::read_to_string(gws[0].dir.join("agent.log")).expect("gw1's log");
    assert!(
        !log.contains("cluster repaired"),
        "the manager's own outage replaced workers:\n{log}"
    );
    assert_eq!(running(&gws), before, "the same two workers run");
    println!(
        "broker away {} s, back: nothing replaced ({:.1} s)",
        4 * TIMEOUT_MS / 1000,
        t.elapsed().as_secs_f64()
    );

    // 2. gw2 cut off: its worker is replaced on gw1, while it keeps running on gw2.
    let mut events = broker.subscribe("betaas/gw1/cluster/p");
    let t = Instant::now();
    let pid = gws[1].agent_pid();
    signal(pid, "-STOP");
    let ev = events.wait_for(
        "gw1 replaces gw2's worker",
        Duration::from_secs(120),
        |_, p| {
            let v: Value = serde_json::from_str(p).ok()?;
            (v["event"] == "repaired" && v["running"] == 2).then_some(v)
        },
    );
    let replaced = t.elapsed().as_secs_f64();
    assert!(ev["reason"].as_str().unwrap_or("").contains("lost"), "{ev}");
    let now = running(&gws);
    assert_eq!(
        now.len(),
        3,
        "two on gw1, gw2's still running there: {now:?}"
    );
    assert!(now.contains(&on_gw2[0]));

    // gw2 back: the worker it kept is released there and kept, stopped.
    let t2 = Instant::now();
    signal(pid, "-CONT");
    let ev = events.wait_for(
        "gw1 releases gw2's orphan",
        Duration::from_secs(120),
        |_, p| {
            let v: Value = serde_json::from_str(p).ok()?;
            let reason = v["reason"].as_str()?.to_owned();
            (v["event"] == "repaired" && reason.contains(&format!("{} on gw2 released", on_gw2[0])))
                .then_some(v)
        },
    );
    let released = t2.elapsed().as_secs_f64();
    assert_eq!(ev["running"], 2, "{ev}");
    let gw2_now = tiny(&gws[1]);
    assert_eq!(gw2_now.len(), 1, "kept on gw2: {gw2_now:?}");
    assert_ne!(gw2_now[0].1, VmState::Running, "released: {gw2_now:?}");
    assert_eq!(running(&gws).len(), 2, "two run in all");
    // The cluster knows it as a stopped worker of its own.
    let w = replicas("r2-again", "2");
    let kept =
        w["workers"].as_array().into_iter().flatten().any(|x| {
            x["vm"] == on_gw2[0].as_str() && x["host"] == "gw2" && x["state"] == "stopped"
        });
    assert!(kept, "{w}");
    println!(
        "gw2 cut off → its worker replaced on gw1 {replaced:.1} s; back → its worker released there {released:.1} s"
    );
}
