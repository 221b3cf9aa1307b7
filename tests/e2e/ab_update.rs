//! A/B firmware updates on the qemu-cubieboard image, through Debian's real U-Boot (boot.scr picks
//! the slot from uboot.env) and Debian's RAUC: a signed bundle installed on the running gateway
//! boots from the other slot and is kept once the agent marked it good; a slot whose agent never
//! becomes healthy is given up and the gateway is back on the old one; bundles that are tampered
//! with or signed by another key are refused and the other slot stays as it was; a power cut
//! during the installation leaves the running slot bootable.
//!
//! The bundle reaches the gateway over HTTP (busybox wget from a server in the test) and is
//! installed with `rauc install` on the console. Each case prints its times.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use betaas_e2e::{bin, repo, serve_file, Mosquitto, Qemu, Subscriber};
use serde_json::Value;

const BOARD: &str = "qemu-cubieboard";
const BOOT: Duration = Duration::from_secs(240);
/// /boot/betaas/boot-deadline for these tests: a slot on trial is rebooted this long after boot.
const DEADLINE_S: u64 = 60;

fn agent_toml(gateway: &str, port: u16, instance: bool) -> String {
    let instance = if instance {
        "\n[instance]\nname = \"edge\"\nkeys = \"/boot/betaas/instance\"\nheartbeat_ms = 500\ntimeout_ms = 6000\nvirt = \"none\"\ncapacity = { cpus = 1, mem_mb = 128, disk_gb = 1 }\n"
    } else {
        ""
    };
    format!(
        r#"gateway_id = "{gateway}"
[mqtt]
host = "10.0.2.2"
port = {port}
keep_alive_secs = 5

[health]
interval_secs = 2

[[things]]
id = "temp0"
driver = "tmp105"
bus = "i2c"
device = "/dev/i2c-0"
address = 0x48
interval_ms = 1000
{instance}"#
    )
}

fn cli(args: &[&str]) {
    let st = Command::new(bin("betaas-agent"))
        .args(args)
        .status()
        .expect("betaas-agent");
    assert!(st.success(), "betaas-agent {args:?}");
}

/// `make bundle`'s script with VERSION, into `out`; `rootfs` replaces the image's root filesystem,
/// `env` adds variables (another signing key).
fn bundle(version: &str, out: &Path, rootfs: Option<&Path>, env: &[(&str, &Path)]) -> PathBuf {
    bundle_for(BOARD, version, out, rootfs, env)
}

/// [`bundle`] made by the script for `board` (its RAUC compatible).
fn bundle_for(
    board: &str,
    version: &str,
    out: &Path,
    rootfs: Option<&Path>,
    env: &[(&str, &Path)],
) -> PathBuf {
    let path = out.join(format!("{version}.raucb"));
    let mut cmd = Command::new("bash");
    cmd.arg("image/bundle.sh")
        .arg(board)
        .current_dir(repo())
        .env("VERSION", version)
        .env("OUTPUT", &path);
    if let Some(r) = rootfs {
        cmd.env("ROOTFS", r);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let st = cmd.status().expect("image/bundle.sh runs");
    assert!(st.success(), "bundle {version} failed");
    path
}

/// A copy of the image's root filesystem whose agent never starts (its service only sleeps).
fn broken_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("broken.ext4");
    std::fs::copy(
        repo().join("out").join(BOARD).join("staging/rootfs.ext4"),
        &rootfs,
    )
    .expect("copy rootfs.ext4");
    let service = dir.join("agent-service");
    std::fs::write(
        &service,
        "#!/bin/sh\n# A broken update: the agent never runs.\nexec sleep 2147483647\n",
    )
    .expect("write");
    let cmds = format!(
        "rm /usr/libexec/betaas/agent-service\nwrite {} /usr/libexec/betaas/agent-service\nsif /usr/libexec/betaas/agent-service mode 0100755\n",
        service.display()
    );
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(&rootfs)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("debugfs");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(cmds.as_bytes())
        .expect("debugfs commands");
    assert!(child.wait().expect("debugfs").success());
    rootfs
}

/// The agent's `system` health, the first one `f` accepts.
fn system(
    sub: &mut Subscriber,
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    sub.wait_for(what, timeout, |t, p| {
        if !t.ends_with("/health") {
            return None;
        }
        let v: Value = serde_json::from_str(p).ok()?;
        f(&v["system"]).then(|| v["system"].clone())
    })
}

/// Drops the health messages sent before now (the guest just stopped: none can follow from that
/// boot), so the next wait sees only the next boot's.
fn drain(sub: &mut Subscriber) {
    std::thread::sleep(Duration::from_millis(500));
    while sub.next(Duration::from_millis(100)).is_some() {}
}

struct Rig {
    dir: tempfile::TempDir,
    toml: String,
    provision: PathBuf,
    port: u16,
    serve: PathBuf,
    broker: Mosquitto,
    gateway: String,
    /// With an instance: the keys of client "ops" (`instance admit --client`).
    ops: Option<PathBuf>,
}

impl Rig {
    fn new() -> Rig {
        Rig::with(false)
    }

    /// The gateway is a member of instance "edge" (its keys provisioned) and client "ops" may
    /// send it signed requests.
    fn with(instance: bool) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Mosquitto::start();
        let gateway = format!("ab-{}", fastrand::u32(..));
        let toml = agent_toml(&gateway, broker.port, instance);
        let provision = dir.path().join("provision");
        std::fs::create_dir(&provision).expect("mkdir");
        let ops = instance.then(|| {
            let keys = dir.path().join("keys");
            let p = |p: &Path| p.to_str().expect("utf8").to_owned();
            cli(&["instance", "keygen", "--out", &p(&keys)]);
            let key = p(&keys.join("instance.key"));
            cli(&[
                "instance",
                "admit",
                "--instance-key",
                &key,
                "--gateway",
                &gateway,
                "--out",
                &p(&provision.join("instance")),
            ]);
            let ops = dir.path().join("ops");
            cli(&[
                "instance",
                "admit",
                "--instance-key",
                &key,
                "--client",
                "ops",
                "--out",
                &p(&ops),
            ]);
            ops
        });
        std::fs::write(provision.join("boot-deadline"), format!("{DEADLINE_S}\n")).expect("write");
        let serve = dir.path().join("served.raucb");
        let port = serve_file(&serve);
        Rig {
            dir,
            toml,
            provision,
            port,
            serve,
            broker,
            gateway,
            ops,
        }
    }

    /// `betaas-agent update` from client "ops": the signed command; returns its JSON line, exit
    /// code and time.
    fn update_command(&self, bundle: &Path) -> (Value, i32, Duration) {
        std::fs::copy(bundle, &self.serve).expect("copy bundle");
        let t = Instant::now();
        let out = Command::new(bin("betaas-agent"))
            .args([
                "update",
                "--mqtt",
                &format!("127.0.0.1:{}", self.broker.port),
                "--instance",
                "edge",
                "--keys",
            ])
            .arg(self.ops.as_ref().expect("an instance rig"))
            .args([
                "--gateway",
                &self.gateway,
                "--url",
                &format!("http://10.0.2.2:{}/b.raucb", self.port),
                "--timeout",
                "600",
            ])
            .output()
            .expect("betaas-agent update");
        let line = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(line.trim()).unwrap_or(Value::String(line.into_owned()));
        (v, out.status.code().unwrap_or(-1), t.elapsed())
    }

    fn subscribe(&self) -> Subscriber {
        self.broker
            .subscribe(&format!("betaas/{}/health", self.gateway))
    }

    fn boot(&self) -> Qemu {
        Qemu::boot_env(
            BOARD,
            &self.toml,
            &[("PROVISION", self.provision.to_str().expect("utf8"))],
        )
    }

    /// Puts `bundle` where the server serves it, has the gateway download and install it; returns
    /// the install's output and status, and the time it took.
    fn install(&self, vm: &mut Qemu, bundle: &Path) -> (String, i32, Duration) {
        std::fs::copy(bundle, &self.serve).expect("copy bundle");
        let t = Instant::now();
        let (out, rc) = vm.shell(
            &format!(
                "wget -q -O /var/lib/betaas/update.raucb http://10.0.2.2:{}/b.raucb && rauc install /var/lib/betaas/update.raucb > /tmp/install.log 2>&1; rc=$?; tail -3 /tmp/install.log; rm -f /var/lib/betaas/update.raucb; (exit $rc)",
                self.port
            ),
            Duration::from_secs(300),
        );
        (out, rc, t.elapsed())
    }
}

fn env_of(vm: &mut Qemu) -> String {
    vm.shell(
        "fw_printenv BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT",
        Duration::from_secs(30),
    )
    .0
}

fn slot_b_sha(vm: &mut Qemu) -> String {
    let (out, rc) = vm.shell("sha256sum /dev/mmcblk0p3", Duration::from_secs(120));
    assert_eq!(rc, 0, "{out}");
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
#[ignore = "boots qemu-cubieboard several times (minutes): run by `make test-e2e`"]
fn update_boots_the_other_slot_and_is_marked_good() {
    let rig = Rig::with(true);
    let v2 = bundle(
        &format!("v2-{}", fastrand::u32(..)),
        rig.dir.path(),
        None,
        &[],
    );
    let mut sub = rig.subscribe();
    let t = Instant::now();
    let mut vm = rig.boot();
    let s = system(&mut sub, "v1 healthy on slot A", BOOT, |s| {
        s["slot"] == "A" && s["pending"] == false
    });
    println!(
        "factory image: slot A healthy and marked good after {:.1} s: {s}",
        t.elapsed().as_secs_f64()
    );
    bad_bundles_are_refused_and_slot_b_is_untouched(&rig, &mut vm);

    // The signed command: the gateway downloads, installs, answers and reboots by itself.
    let (result, rc, took) = rig.update_command(&v2);
    assert_eq!(rc, 0, "update refused: {result}");
    assert_eq!(result["decision"], "installed", "{result}");
    println!(
        "install (signed `betaas-agent update`, download + write): {:.1} s: {result}",
        took.as_secs_f64()
    );
    let t = Instant::now();
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the gateway did not reboot after the update"
    );
    drain(&mut sub);
    let mut vm = vm.reboot(&rig.toml);
    let version = v2
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("name")
        .to_owned();
    let s = system(&mut sub, "v2 healthy on slot B", BOOT, |s| {
        s["slot"] == "B" && s["version"] == version.as_str() && s["pending"] == false
    });
    println!(
        "reboot to healthy (v2 on B, marked good): {:.1} s: {s}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(s["rolled_back"], false);
    let env = env_of(&mut vm);
    assert!(
        env.contains("BOOT_ORDER=B A") && env.contains("BOOT_B_LEFT=3"),
        "{env}"
    );
}

#[test]
#[ignore = "boots qemu-cubieboard several times (minutes): run by `make test-e2e`"]
fn update_whose_agent_never_gets_healthy_is_rolled_back() {
    let rig = Rig::new();
    let broken = broken_rootfs(rig.dir.path());
    let v2 = bundle("v2-broken", rig.dir.path(), Some(&broken), &[]);
    let mut sub = rig.subscribe();
    let mut vm = rig.boot();
    let s = system(&mut sub, "v1 healthy on slot A", BOOT, |s| {
        s["slot"] == "A" && s["pending"] == false
    });
    let v1 = s["version"].clone();
    let (out, rc, took) = rig.install(&mut vm, &v2);
    assert_eq!(rc, 0, "install failed: {out}");
    println!("install: {:.1} s", took.as_secs_f64());
    let t = Instant::now();
    vm.shell(
        "(sleep 1; reboot) > /dev/null 2>&1 & true",
        Duration::from_secs(10),
    );
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the gateway did not reboot"
    );
    drain(&mut sub);
    // B gets its 3 attempts (each ended by boot-deadline), then U-Boot boots A: each boot ends
    // either with QEMU stopping (the guest rebooted: power on again) or with the health saying
    // the gateway is back on A and rolled back.
    let mut boots = 0;
    let s = loop {
        vm = vm.reboot(&rig.toml);
        boots += 1;
        let end = Instant::now() + BOOT + Duration::from_secs(DEADLINE_S);
        let mut back = None;
        while Instant::now() < end && back.is_none() {
            if let Some((topic, p)) = sub.next(Duration::from_millis(500)) {
                let v: Value = serde_json::from_str(&p).unwrap_or_default();
                let s = &v["system"];
                if topic.ends_with("/health")
                    && s["slot"] == "A"
                    && s["rolled_back"] == true
                    && s["pending"] == false
                {
                    back = Some(s.clone());
                }
            }
            if back.is_none() && vm.wait_exit(Duration::from_millis(10)) {
                break;
            }
        }
        if let Some(s) = back {
            break s;
        }
        assert!(boots < 6, "still rebooting after {boots} boots");
    };
    println!(
        "rollback: back on A running {} after {boots} boots, {:.1} s: {s}",
        v1,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(s["version"], v1);
    let env = env_of(&mut vm);
    assert!(env.contains("BOOT_B_LEFT=0"), "{env}");
    let console = vm.console();
    assert!(
        console.contains("booting slot A"),
        "U-Boot did not choose A last"
    );
}

#[test]
#[ignore = "boots qemu-cubieboard several times (minutes): run by `make test-e2e`"]
fn power_cut_during_install_keeps_slot_a_and_a_later_install_succeeds() {
    let rig = Rig::new();
    let v2 = bundle(
        &format!("v2-{}", fastrand::u32(..)),
        rig.dir.path(),
        None,
        &[],
    );
    std::fs::copy(&v2, &rig.serve).expect("copy");
    let mut sub = rig.subscribe();
    let mut vm = rig.boot();
    system(&mut sub, "v1 healthy on slot A", BOOT, |s| {
        s["slot"] == "A" && s["pending"] == false
    });
    // Download first, then cut the power while RAUC writes slot B.
    let (out, rc) = vm.shell(
        &format!(
            "wget -q -O /var/lib/betaas/update.raucb http://10.0.2.2:{}/b.raucb; sync",
            rig.port
        ),
        Duration::from_secs(120),
    );
    assert_eq!(rc, 0, "{out}");
    vm.shell(
        "(rauc install /var/lib/betaas/update.raucb > /dev/console 2>&1 &)",
        Duration::from_secs(10),
    );
    let cut = Instant::now();
    betaas_e2e::wait_until("RAUC writing slot B", Duration::from_secs(120), || {
        vm.console()
            .contains("Copying image to rootfs.1")
            .then_some(())
            .or_else(|| vm.console().contains("rootfs.1").then_some(()))
    });
    std::thread::sleep(Duration::from_millis(1500));
    vm.kill(); // power cut
    drain(&mut sub);
    let mut vm = vm.reboot(&rig.toml); // power on
    println!(
        "power cut {:.1} s into the installation",
        cut.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    // Health from this boot only (uptime below the time since power-on): not one sent before the cut.
    let s = sub.wait_for("slot A after the power cut", BOOT, |top, p| {
        let v: Value = serde_json::from_str(p)
            .ok()
            .filter(|_| top.ends_with("/health"))?;
        let fresh = v["uptime_s"].as_u64()? <= t.elapsed().as_secs() + 1;
        (fresh && v["system"]["slot"] == "A" && v["system"]["pending"] == false)
            .then(|| v["system"].clone())
    });
    println!(
        "after the power cut: slot A healthy in {:.1} s: {s}",
        t.elapsed().as_secs_f64()
    );
    let env = env_of(&mut vm);
    println!(
        "U-Boot environment after the cut: {}",
        env.replace('\n', " ")
    );
    assert!(
        vm.console().contains("booting slot A"),
        "U-Boot did not boot A after the cut"
    );
    let (out, rc, took) = rig.install(&mut vm, &v2);
    assert_eq!(rc, 0, "the later install failed: {out}");
    println!("later install: {:.1} s", took.as_secs_f64());
    vm.shell(
        "(sleep 1; reboot) > /dev/null 2>&1 & true",
        Duration::from_secs(10),
    );
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the gateway did not reboot"
    );
    drain(&mut sub);
    let _vm = vm.reboot(&rig.toml);
    let version = v2
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("name")
        .to_owned();
    system(&mut sub, "v2 on B", BOOT, |s| {
        s["slot"] == "B" && s["version"] == version.as_str() && s["pending"] == false
    });
}

#[test]
#[ignore = "boots qemu-cubieboard several times (minutes): run by `make test-e2e`"]
fn new_slot_zeroed_after_install_falls_back_to_a() {
    let rig = Rig::new();
    let v2 = bundle(
        &format!("v2-{}", fastrand::u32(..)),
        rig.dir.path(),
        None,
        &[],
    );
    let mut sub = rig.subscribe();
    let mut vm = rig.boot();
    let s = system(&mut sub, "v1 healthy on slot A", BOOT, |s| {
        s["slot"] == "A" && s["pending"] == false
    });
    let v1 = s["version"].clone();
    let (out, rc, _) = rig.install(&mut vm, &v2);
    assert_eq!(rc, 0, "install failed: {out}");
    // The freshly written slot is wiped before it ever boots.
    let (out, _) = vm.shell(
        "dd if=/dev/zero of=/dev/mmcblk0p3 bs=1M 2>/dev/null; sync; head -c 2048 /dev/mmcblk0p3 | tr -d '\\0' | wc -c",
        Duration::from_secs(300),
    );
    assert_eq!(out.trim(), "0", "slot B not zeroed");
    let t = Instant::now();
    vm.shell(
        "(sleep 1; reboot) > /dev/null 2>&1 & true",
        Duration::from_secs(10),
    );
    assert!(
        vm.wait_exit(Duration::from_secs(60)),
        "the gateway did not reboot"
    );
    drain(&mut sub);
    // U-Boot cannot load B's kernel: it gives B no more attempts and resets (QEMU stops), then boots A.
    let mut boots = 0;
    loop {
        vm = vm.reboot(&rig.toml);
        boots += 1;
        let up = betaas_e2e::wait_until("U-Boot's choice", BOOT, || {
            let c = vm.console();
            if c.contains("booting slot A") {
                Some(true)
            } else if c.contains("does not boot; marking it bad") {
                Some(false)
            } else {
                None
            }
        });
        if up {
            break;
        }
        assert!(
            vm.wait_exit(Duration::from_secs(60)),
            "no reset after marking B bad"
        );
        assert!(boots < 3, "still not on A after {boots} boots");
    }
    let s = system(&mut sub, "back on slot A, rolled back", BOOT, |s| {
        s["slot"] == "A" && s["rolled_back"] == true && s["pending"] == false
    });
    println!(
        "zeroed slot B: back on A running {v1} after {boots} boots, {:.1} s: {s}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(s["version"], v1);
    let env = env_of(&mut vm);
    assert!(env.contains("BOOT_B_LEFT=0"), "{env}");
}

/// Tampered, foreign-signed, other-board and truncated bundles are refused on the running gateway
/// (v1 healthy on A) with slot B and the boot order unchanged. Run inside the happy path: one boot
/// fewer in `make test`.
fn bad_bundles_are_refused_and_slot_b_is_untouched(rig: &Rig, vm: &mut Qemu) {
    let good = bundle("v2-tamper", rig.dir.path(), None, &[]);
    // One byte flipped in the middle of the signed image.
    let tampered = rig.dir.path().join("tampered.raucb");
    let mut bytes = std::fs::read(&good).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&tampered, &bytes).expect("write");
    // A bundle signed by a key the image does not trust.
    let keys = rig.dir.path().join("other");
    std::fs::create_dir(&keys).expect("mkdir");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(keys.join("k.pem"))
        .arg("-out")
        .arg(keys.join("c.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let foreign = bundle(
        "v2-foreign",
        rig.dir.path(),
        None,
        &[
            ("RAUC_KEY", &keys.join("k.pem")),
            ("RAUC_CERT", &keys.join("c.pem")),
            ("RAUC_KEYRING", &keys.join("c.pem")),
        ],
    );
    // This image's system, signed with the trusted key, but made for the Cubietruck.
    let own_rootfs = repo().join("out").join(BOARD).join("staging/rootfs.ext4");
    let other_board = bundle_for(
        "cubietruck",
        "v2-other-board",
        rig.dir.path(),
        Some(&own_rootfs),
        &[],
    );
    let truncated = rig.dir.path().join("truncated.raucb");
    std::fs::write(&truncated, &std::fs::read(&good).expect("read")[..mid]).expect("write");

    let before = slot_b_sha(vm);
    let env_before = env_of(vm);
    for (what, b) in [
        ("tampered", &tampered),
        ("foreign key", &foreign),
        ("other board", &other_board),
        ("truncated", &truncated),
    ] {
        let (out, rc, took) = rig.install(vm, b);
        println!(
            "{what}: refused in {:.1} s: {}",
            took.as_secs_f64(),
            out.lines().last().unwrap_or("")
        );
        assert_ne!(rc, 0, "{what} bundle installed: {out}");
        assert_eq!(slot_b_sha(vm), before, "{what}: slot B changed");
        assert_eq!(env_of(vm), env_before, "{what}: boot order changed");
    }
}
