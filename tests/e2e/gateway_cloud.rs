//! The gateway hosts the local cloud itself: the qemu-virt image (armhf, booted under QEMU TCG),
//! given only a provisioned `agent.toml` and its instance keys, runs a container for a signed VM
//! request from the host with its own libvirtd (LXC driver) and betaas-vmd, and releases,
//! resumes, restarts and adopts it; then the same with the emulated `tiny-vm` (QEMU TCG inside
//! QEMU TCG). Nothing is faked: the image's libvirtd, vmd, agent and a real mosquitto on the host.
//! What happens inside the gateway is read through its serial console (a root shell on getty).
//!
//!   make image BOARD=qemu-virt && cargo test -p betaas-e2e --test gateway_cloud -- --ignored --nocapture

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use betaas_e2e::app::{build_war, get};
use betaas_e2e::{
    bin, free_port, repo, serve_file, sha256_hex, Mosquitto, Qemu, Subscriber, VmClient,
};
use serde_json::Value;

const BOOTED: &str = "BETAAS-TINY-BOOTED";

fn cli(args: &[&str]) {
    let st = Command::new(bin("betaas-agent"))
        .args(args)
        .status()
        .expect("betaas-agent");
    assert!(st.success(), "betaas-agent {args:?}");
}

/// How long the app (Tomcat on OpenJDK in a container on the emulated gateway) may take to
/// answer its URL after a request.
const APP_READY_SECS: u64 = 900;

fn agent_toml(gw: &str, port: u16) -> String {
    // Room for exactly one running guest (one CPU): a tiny one, or the app (512 MiB); a second one
    // is refused, never over-committed. The app as a container takes its unpacked rootfs (~220 MB)
    // on the data partition, which has 1.4 GB free (the allocator also reads the free space): 1 GB,
    // not the 2 GB of the template's VM disk.
    format!(
        "gateway_id = \"{gw}\"\ndata_dir = \"/var/lib/betaas\"\n\
         [mqtt]\nhost = \"10.0.2.2\"\nport = {port}\nkeep_alive_secs = 5\n[health]\ninterval_secs = 1\n\
         [instance]\nname = \"edge\"\nkeys = \"/boot/betaas/instance\"\nheartbeat_ms = 500\ntimeout_ms = 6000\n\
         deploy_timeout_ms = 600000\nvirt = \"lxc\"\nvmd_socket = \"/run/betaas/vmd.sock\"\n\
         app_ready_secs = {APP_READY_SECS}\n\
         capacity = {{ cpus = 1, mem_mb = 640, disk_gb = 4 }}\n\
         [[instance.templates]]\nname = \"tiny\"\nvcpus = 1\nmem_mb = 128\ndisk_gb = 1\nrole = \"app-light\"\n\
         [[instance.templates]]\nname = \"tiny-vm\"\nvcpus = 1\nmem_mb = 128\ndisk_gb = 1\nrole = \"app-light\"\n\
         [[instance.templates]]\nname = \"app\"\nvcpus = 1\nmem_mb = 512\ndisk_gb = 1\nrole = \"app-light\"\n"
    )
}

/// The image's vmd.toml with `address` set to the gateway's address under QEMU user
/// networking: a deployed application's URL then answers on the gateway (the agent checks it),
/// and the test forwards a host port to it.
fn vmd_toml() -> String {
    let image = std::fs::read_to_string(repo().join("image/rootfs/etc/betaas/vmd.toml"))
        .expect("image/rootfs/etc/betaas/vmd.toml");
    image.replacen(
        "\n[probe]",
        &format!("\naddress = \"{GATEWAY_ADDR}\"\n\n[probe]"),
        1,
    )
}

/// The gateway's own address under QEMU user networking.
const GATEWAY_ADDR: &str = "10.0.2.15";

fn health(sub: &mut Subscriber, gw: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let topic = format!("betaas/{gw}/health");
    sub.wait_for(what, Duration::from_secs(600), |t, p| {
        (t == topic)
            .then(|| serde_json::from_str::<Value>(p).ok())
            .flatten()
            .map(|h| h["instance"].clone())
            .filter(|i| f(i))
    })
}

/// Waits until `needle` appears in the guest's console log on the gateway (at least `count` times).
fn wait_marker(vm: &mut Qemu, name: &str, needle: &str, count: usize, timeout: Duration) {
    let log = format!("/var/lib/betaas/vms/{name}/serial.log");
    let end = Instant::now() + timeout;
    loop {
        let (out, _) = vm.shell(
            &format!("grep -c '{needle}' {log} 2>/dev/null"),
            Duration::from_secs(60),
        );
        let n: usize = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if n >= count {
            return;
        }
        if Instant::now() >= end {
            let (why, _) = vm.shell(
                "virsh -c lxc:///system list --all; virsh -c qemu:///system list --all; \
                 logread | grep -E 'betaas-vmd|libvirtd' | tail -n 40",
                Duration::from_secs(60),
            );
            eprintln!("--- the gateway's VM manager ---\n{why}");
        }
        assert!(
            Instant::now() < end,
            "{needle} ×{count} not in {log} after {timeout:?} (seen {n})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A signed request for `template` that must be placed on `gw` (a new VM, or `resumed`); returns
/// the VM's name and how long the answer took.
fn placed_here(
    ops: &VmClient,
    gw: &str,
    id: &str,
    template: &str,
    resumed: bool,
) -> (String, Duration) {
    let t0 = Instant::now();
    let r = ops.request(gw, id, template, 600);
    let took = t0.elapsed();
    assert_eq!(
        (
            r["decision"].as_str(),
            r["host"].as_str(),
            r["resumed"].as_bool()
        ),
        (Some("local"), Some(gw), Some(resumed)),
        "{r}"
    );
    (r["vm"].as_str().expect("vm name").to_owned(), took)
}

/// A signed release of `vm` that must succeed; returns how long it took.
fn released(ops: &VmClient, gw: &str, id: &str, vm: &str) -> Duration {
    let t0 = Instant::now();
    let (rel, code) = ops.run("release", gw, id, &["--vm", vm], 600);
    assert_eq!(
        (rel["decision"].as_str(), code),
        (Some("released"), 0),
        "{rel}"
    );
    t0.elapsed()
}

fn used_cpus(i: &Value) -> Option<u64> {
    i["used"]["cpus"].as_u64()
}

fn vm0(i: &Value) -> &Value {
    &i["vm_stats"][0]
}

/// `name`'s entry in `health.instance.vm_stats`.
fn vm_named<'a>(i: &'a Value, name: &str) -> Option<&'a Value> {
    i["vm_stats"].as_array()?.iter().find(|v| v["name"] == name)
}

/// The boot partition's betaas/ (agent.toml, instance keys); returns the instance key.
fn provision(dir: &Path, gw: &str, port: u16) -> PathBuf {
    let keys = dir.join("keys");
    cli(&["instance", "keygen", "--out", keys.to_str().expect("utf8")]);
    let prov = dir.join("provision");
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        keys.join("instance.key").to_str().expect("utf8"),
        "--gateway",
        gw,
        "--out",
        prov.join("instance").to_str().expect("utf8"),
    ]);
    std::fs::write(prov.join("agent.toml"), agent_toml(gw, port)).expect("agent.toml");
    std::fs::write(prov.join("vmd.toml"), vmd_toml()).expect("vmd.toml");
    keys.join("instance.key")
}

/// A gateway of instance "edge" with a random id, its broker, a subscriber to its health, the
/// client "ops", and the provisioned qemu-virt image booted.
struct Edge {
    _root: tempfile::TempDir,
    gw: String,
    _broker: Mosquitto,
    sub: Subscriber,
    ops: VmClient,
    vm: Qemu,
}

fn boot_edge() -> Edge {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let gw = format!("edge-{}", fastrand::u32(..100_000));
    let broker = Mosquitto::start();
    let sub = broker.subscribe(&format!("betaas/{gw}/health"));
    let key = provision(r, &gw, broker.port);
    let ops = VmClient::admit(&key, "edge", "ops", &r.join("ops"), &broker);
    let prov = r.join("provision");
    let vm = Qemu::boot_env(
        "qemu-virt",
        &agent_toml(&gw, broker.port),
        &[("PROVISION", prov.to_str().expect("utf8"))],
    );
    Edge {
        _root: root,
        gw,
        _broker: broker,
        sub,
        ops,
        vm,
    }
}

#[test]
#[ignore = "boots the qemu-virt image (libvirt, vmd, containers, nested QEMU): make test-e2e"]
fn the_gateway_runs_releases_resumes_restarts_and_adopts_its_own_containers_and_vms() {
    let booted = Instant::now();
    // The broker and the tempdir are bound: dropped, they would stop and vanish at once.
    let Edge {
        _root: root,
        gw,
        _broker,
        mut sub,
        ops,
        mut vm,
    } = boot_edge();
    // vmd probed (a container and an emulated guest really started on the gateway) and the agent
    // read its list: nothing running, nothing used.
    let i = health(&mut sub, &gw, "the gateway's VM manager ready", |i| {
        i["synced"] == true && used_cpus(i) == Some(0)
    });
    let ready = booted.elapsed();
    eprintln!(
        "FIGURES qemu-virt boot → vmd probed and the agent synced: {:.1} s",
        ready.as_secs_f64()
    );
    eprintln!("instance at ready: {i}");
    let (probe, _) = vm.shell(
        "logread | grep -E 'betaas-vmd.*(probe|capability)' | tail -n 5",
        Duration::from_secs(30),
    );
    eprintln!("vmd's probe on the gateway:\n{probe}");
    let (rss, _) = vm.shell(
        "for p in $(pidof betaas-vmd libvirtd); do echo $(cat /proc/$p/comm) $(grep VmRSS /proc/$p/status); done; \
         grep -E 'MemTotal|MemAvailable' /proc/meminfo; df -k /var/lib/betaas | tail -n 1",
        Duration::from_secs(30),
    );
    eprintln!("FIGURES on the gateway at rest (no guest):\n{rss}");

    // 1. A request from the host: placed on this gateway, started as a container.
    let t0 = Instant::now();
    let (name, r1_reply) = placed_here(&ops, &gw, "r1", "tiny", false);
    wait_marker(&mut vm, &name, BOOTED, 1, Duration::from_secs(120));
    let cold = t0.elapsed();
    let i = health(
        &mut sub,
        &gw,
        "the container running, its share used",
        |i| {
            used_cpus(i) == Some(1)
                && vm0(i)["name"] == name.as_str()
                && vm0(i)["state"] == "running"
        },
    );
    eprintln!("after the first request: {}", i["vm_stats"]);
    let (virsh, _) = vm.shell("virsh -c lxc:///system list --all", Duration::from_secs(60));
    assert!(virsh.contains(&name), "{name} is an LXC domain: {virsh}");

    // 2. Released: the container stopped, the reservation given back.
    released(&ops, &gw, "rel1", &name);
    health(&mut sub, &gw, "the reservation given back", |i| {
        used_cpus(i) == Some(0) && i["vms"] == 0
    });

    // 3. Requested again: the same container started again (resumed), faster than the first time.
    let t1 = Instant::now();
    let (again, r2_reply) = placed_here(&ops, &gw, "r2", "tiny", true);
    assert_eq!(again, name, "the same container");
    wait_marker(&mut vm, &name, BOOTED, 2, Duration::from_secs(120));
    let resumed = t1.elapsed();
    eprintln!(
        "FIGURES container on the gateway: request→result cold {:.2} s, resumed {:.2} s; \
         request→boot marker seen cold {:.2} s, resumed {:.2} s",
        r1_reply.as_secs_f64(),
        r2_reply.as_secs_f64(),
        cold.as_secs_f64(),
        resumed.as_secs_f64()
    );
    let before = health(&mut sub, &gw, "the share used again", |i| {
        used_cpus(i) == Some(1) && i["vms"] == 1 && vm0(i)["state"] == "running"
    });

    // 4. The container's init killed from inside the gateway: vmd restarts it within its budget.
    let (out, rc) = vm.shell(
        // The container's init is libvirt_lxc's child (busybox here has no pgrep -P).
        "lp=$(pidof libvirt_lxc); n=0; for p in /proc/[0-9]*; do \
         if [ \"$(cut -d' ' -f4 $p/stat 2>/dev/null)\" = \"$lp\" ]; then kill -9 ${p#/proc/} && n=$((n+1)); fi; \
         done; [ $n -ge 1 ]",
        Duration::from_secs(30),
    );
    assert_eq!(rc, 0, "kill the container's init: {out}");
    let t2 = Instant::now();
    wait_marker(&mut vm, &name, BOOTED, 3, Duration::from_secs(120));
    let i = health(&mut sub, &gw, "the restart in vm_stats", |i| {
        vm0(i)["restarts"] == 1 && vm0(i)["state"] == "running" && vm0(i)["failed"] == false
    });
    eprintln!(
        "container init killed → running again after {:.1} s",
        t2.elapsed().as_secs_f64()
    );
    assert_eq!(used_cpus(&i), Some(1), "a restart keeps its share: {i}");

    // 5. The agent restarted (init respawns it): the same container adopted, the same share used,
    // and the room it takes not offered again.
    let (_, rc) = vm.shell("killall betaas-agent", Duration::from_secs(30));
    assert_eq!(rc, 0);
    let after = health(
        &mut sub,
        &gw,
        "the restarted agent's rebuilt reservations",
        |i| i["synced"] == true && vm0(i)["name"] == name.as_str() && vm0(i)["held"] == true,
    );
    assert_eq!(after["used"], before["used"], "{after}");
    let r3 = ops.request(&gw, "r3", "tiny-vm", 120);
    assert_eq!(r3["decision"], "cancel", "no room for a second guest: {r3}");

    // 6. Released for good; then the emulated VM (QEMU TCG on the gateway, itself emulated here):
    // placed, started, saved on release and resumed on the next request. Its boot inside two
    // layers of emulation takes many minutes: `nested_tcg_vm_boots_on_the_gateway` waits for it.
    let rel_took = released(&ops, &gw, "rel2", &name);
    let (tail, _) = vm.shell(
        &format!("tail -n 3 /var/lib/betaas/vms/{name}/serial.log"),
        Duration::from_secs(30),
    );
    eprintln!(
        "container released (shutdown) in {:.1} s; its console ends:\n{tail}",
        rel_took.as_secs_f64()
    );
    let (vm_name, tcg_start) = placed_here(&ops, &gw, "r4", "tiny-vm", false);
    let (virsh, _) = vm.shell(
        "virsh -c qemu:///system list --all",
        Duration::from_secs(120),
    );
    assert!(
        virsh
            .lines()
            .any(|l| l.contains(&vm_name) && l.contains("running")),
        "{vm_name} is a running QEMU domain: {virsh}"
    );
    health(&mut sub, &gw, "the emulated VM running", |i| {
        vm_named(i, &vm_name).is_some_and(|v| v["state"] == "running")
    });
    let tcg_save = released(&ops, &gw, "rel3", &vm_name);
    let (again, tcg_resume) = placed_here(&ops, &gw, "r5", "tiny-vm", true);
    assert_eq!(again, vm_name, "the same VM");
    eprintln!(
        "FIGURES emulated VM on the (emulated) gateway: request→result (QEMU started) {:.1} s, \
         release (managed save) {:.1} s, request→resumed result {:.1} s",
        tcg_start.as_secs_f64(),
        tcg_save.as_secs_f64(),
        tcg_resume.as_secs_f64()
    );

    // 7. The app template (OpenJDK + Tomcat, a container from the data partition) runs a WAR the
    // test built and serves: its URL answers the token from the host (a port forwarded to the
    // gateway); released → stopped, no answer; requested again → resumed, the token again.
    released(&ops, &gw, "rel4", &vm_name);
    app_steps(&ops, &gw, &mut vm, root.path());
}

/// Step 7 of the test above: request (WAR) → token, release → silent, request → resumed, token.
fn app_steps(ops: &VmClient, gw: &str, vm: &mut Qemu, dir: &Path) {
    let token = format!("betaas-token-{:016x}", fastrand::u64(..));
    let war = build_war(
        dir,
        &token,
        &repo().join("out/templates/app-armhf/rootfs.tar.gz"),
    );
    let sha = sha256_hex(&war);
    let war_url = format!("http://10.0.2.2:{}/app.war", serve_file(&war));
    let request = |id: &str| {
        let t0 = Instant::now();
        let (v, code) = ops.run(
            "request",
            gw,
            id,
            &["--template", "app", "--war", &war_url, "--war-sha256", &sha],
            APP_READY_SECS + 120,
        );
        assert_eq!(code, 0, "{v}");
        (v, t0.elapsed())
    };
    let (v, cold) = request("a1");
    assert_eq!(
        (
            v["decision"].as_str(),
            v["resumed"].as_bool(),
            v["ready"].as_bool()
        ),
        (Some("local"), Some(false), Some(true)),
        "{v}"
    );
    let url = v["url"].as_str().expect("url").to_owned();
    let name = v["vm"].as_str().expect("vm").to_owned();
    // The container listens on the gateway's port the URL names: forwarded from a host port.
    let port = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .expect("a port in the url");
    assert_eq!(url, format!("http://{GATEWAY_ADDR}:{port}/"), "{v}");
    let host_port = free_port();
    let fwd = vm
        .qmp()
        .execute(
            "human-monitor-command",
            serde_json::json!({
                "command-line": format!("hostfwd_add net0 tcp:127.0.0.1:{host_port}-:{port}")
            }),
        )
        .expect("hostfwd_add");
    assert_eq!(fwd, "", "hostfwd_add: {fwd}");
    let here = format!("http://127.0.0.1:{host_port}/");
    assert_eq!(
        get(&here).as_deref(),
        Some(token.as_str()),
        "{url} via {here}"
    );

    released(ops, gw, "arel1", &name);
    assert_eq!(get(&here), None, "released, yet {url} answers");

    let (v2, warm) = request("a2");
    assert_eq!(
        (
            v2["decision"].as_str(),
            v2["resumed"].as_bool(),
            v2["ready"].as_bool(),
            v2["vm"].as_str(),
            v2["url"].as_str()
        ),
        (
            Some("local"),
            Some(true),
            Some(true),
            Some(name.as_str()),
            Some(url.as_str())
        ),
        "{v2}"
    );
    assert_eq!(get(&here).as_deref(), Some(token.as_str()), "{url} resumed");
    let (startup, _) = vm.shell(
        &format!(
            "grep -E 'Server initialization in|Server startup in|has finished in' /var/lib/betaas/vms/{name}/serial.log"
        ),
        Duration::from_secs(60),
    );
    eprintln!("Tomcat on the gateway (cold, then resumed):\n{startup}");
    eprintln!(
        "FIGURES app (Tomcat + WAR) container on the emulated gateway: request → token answering \
         {:.1} s cold, {:.1} s resumed (WAR {} bytes)",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        std::fs::metadata(&war).map_or(0, |m| m.len())
    );
    released(ops, gw, "arel2", &name);
}

/// The emulated `tiny-vm` boots to its marker on the emulated gateway: QEMU TCG inside QEMU TCG.
/// Seen: many minutes on a 2-core host, beyond what `make test` can spend; `make test-e2e` skips
/// it (`--skip nested_tcg`), run it by hand:
///   cargo test -p betaas-e2e --test gateway_cloud nested_tcg -- --ignored --nocapture
#[test]
#[ignore = "nested emulation, many minutes: run by hand (make test-e2e skips it)"]
fn nested_tcg_vm_boots_on_the_gateway() {
    // The broker and the tempdir are bound: dropped, they would stop and vanish at once.
    let Edge {
        _root,
        gw,
        _broker,
        mut sub,
        ops,
        mut vm,
    } = boot_edge();
    health(&mut sub, &gw, "the gateway's VM manager ready", |i| {
        i["synced"] == true
    });
    let t0 = Instant::now();
    let (name, _) = placed_here(&ops, &gw, "r1", "tiny-vm", false);
    wait_marker(&mut vm, &name, BOOTED, 1, Duration::from_secs(3600));
    eprintln!(
        "FIGURES nested TCG: request → tiny-vm's boot marker on the emulated gateway {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}
