//! A real libvirtd for `qemu:///system` without systemd, shared by the end-to-end tests and the
//! betaas-vmd integration tests: the one already running, or one this process starts
//! (`libvirtd -d -p PIDFILE`, after the idempotent `tests/libvirt/setup.sh`) and stops when the
//! last guard drops — never one it did not start. Plus a guard that destroys and undefines every
//! domain whose name starts with a prefix, for tests that boot real guests, and a fake template
//! for libvirt's `test:///` driver.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{repo, sha256_hex};

pub const URI: &str = "qemu:///system";
/// The pid file of the libvirtd a test process started.
const PIDFILE: &str = "/run/betaas-tests-libvirtd.pid";
/// The pid of the test process that started it: a libvirtd left behind by a test run that was
/// killed before its guard dropped is adopted (and stopped) only when that process is gone.
const OWNERFILE: &str = "/run/betaas-tests-libvirtd.owner";

/// `virsh -c qemu:///system ARGS`: success and stdout + stderr.
pub fn virsh(args: &[&str]) -> (bool, String) {
    match Command::new("virsh").args(["-c", URI]).args(args).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), s)
        }
        Err(e) => (false, format!("virsh: {e}")),
    }
}

/// Whether `virsh version` succeeds within `timeout`.
fn answers(timeout: Duration) -> bool {
    let Ok(mut child) = Command::new("virsh")
        .args(["-c", URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn read_pid(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

struct State {
    users: usize,
    /// Pid of the libvirtd we started; `None` when one was already running (never ours to stop).
    started: Option<u32>,
}

static STATE: Mutex<State> = Mutex::new(State {
    users: 0,
    started: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The libvirtd guard. Tests of one process share one daemon: the first guard starts it if none
/// answers, the last one to drop stops it if it was started here.
pub struct Libvirtd {
    _private: (),
}

impl Libvirtd {
    pub fn acquire() -> Libvirtd {
        let mut st = state();
        if st.users == 0 {
            let setup = Command::new("bash")
                .arg(repo().join("tests/libvirt/setup.sh"))
                .stdout(Stdio::null())
                .status()
                .expect("tests/libvirt/setup.sh runs");
            assert!(
                setup.success(),
                "tests/libvirt/setup.sh failed (image/host-deps.sh installs libvirt)"
            );
            if !answers(Duration::from_secs(5)) {
                st.started = Some(start());
            } else if let Some(pid) = left_behind() {
                // Started by an earlier test run that was killed before its guard dropped: ours
                // to stop (and to kill in the failure tests).
                let _ = std::fs::write(OWNERFILE, std::process::id().to_string());
                st.started = Some(pid);
            }
        }
        st.users += 1;
        Libvirtd { _private: () }
    }

    /// Did this process start libvirtd (so a test may kill and restart it)?
    pub fn ours() -> bool {
        state().started.is_some()
    }

    /// SIGKILL to the libvirtd we started (its guests keep running, as after a crash).
    pub fn kill() {
        let mut st = state();
        if let Some(pid) = st.started.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            wait_gone(pid);
            // libvirtd -d forks: a dead daemon leaves its socket; the next start replaces it.
        }
    }

    /// Starts it again after [`Libvirtd::kill`].
    pub fn restart() {
        let mut st = state();
        if st.started.is_none() {
            st.started = Some(start());
        }
    }
}

/// The libvirtd of our pid file, if it runs and the test process that started it is gone.
fn left_behind() -> Option<u32> {
    let pid = read_pid(PIDFILE).filter(|p| pid_alive(*p))?;
    // A stale pid file whose pid now belongs to something else is not ours.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let owner = read_pid(OWNERFILE)?;
    (comm.trim() == "libvirtd" && !pid_alive(owner)).then_some(pid)
}

fn start() -> u32 {
    let t0 = Instant::now();
    let _ = std::fs::remove_file(PIDFILE);
    // A hybrid cgroup host (v1 controllers plus the v2 hierarchy at /sys/fs/cgroup/unified, as
    // these machines have) makes libvirt 9's LXC driver fail every container ("Unable to create
    // directory /sys/fs/cgroup/unified"): libvirtd runs in a mount namespace of its own without
    // that mount. Containers then use the v1 controllers; nothing changes for the rest of the host.
    let hybrid = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.contains(" /sys/fs/cgroup/unified ") && l.contains(" - cgroup2 "))
    });
    let st = if hybrid {
        Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "umount /sys/fs/cgroup/unified && exec libvirtd -d -p {PIDFILE}"
            ))
            .status()
    } else {
        Command::new("libvirtd").args(["-d", "-p", PIDFILE]).status()
    }
    .expect("libvirtd runs (image/host-deps.sh installs it)");
    assert!(st.success(), "libvirtd -d failed");
    let pid: u32 = crate::wait_until("libvirtd's pid file", Duration::from_secs(20), || {
        read_pid(PIDFILE)
    });
    let _ = std::fs::write(OWNERFILE, std::process::id().to_string());
    // The first connection waits for QEMU's capability probe (~12 s on these machines).
    let end = Instant::now() + Duration::from_secs(120);
    while !answers(Duration::from_secs(60)) {
        assert!(
            Instant::now() < end,
            "libvirtd did not answer virsh version within 120 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "tests: started libvirtd pid {pid}, ready after {:.1?}",
        t0.elapsed()
    );
    pid
}

fn wait_gone(pid: u32) {
    let end = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let mut st = state();
        st.users -= 1;
        if st.users == 0 {
            if let Some(pid) = st.started.take() {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                wait_gone(pid);
                eprintln!("tests: stopped libvirtd pid {pid}");
            }
        }
    }
}

/// Destroys and undefines (with its managed save) every domain named `<prefix>…` when dropped
/// (also when a test panics): no guest of a failed test keeps running on the shared cores.
/// Declare it after the [`Libvirtd`] guard so it runs while libvirtd is still up.
pub struct DomainsCleanup(pub String);

impl Drop for DomainsCleanup {
    fn drop(&mut self) {
        let (_, names) = virsh(&["list", "--all", "--name"]);
        for name in names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.starts_with(&self.0))
        {
            let _ = virsh(&["destroy", name]);
            let _ = virsh(&["undefine", name, "--managed-save"]);
            eprintln!("tests: removed domain {name}");
        }
    }
}

/// A template directory `<root>/<name>-x86_64/` for libvirt's test driver: a real qcow2 base
/// (qemu-img needs one to make overlays; kept if it exists), placeholder kernel and initrd
/// (nothing boots), checksums computed. `edit` may change the descriptor text (bad-descriptor
/// tests).
pub fn fake_template(root: &Path, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = root.join(format!("{name}-x86_64"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let disk = dir.join("disk.qcow2");
    if !disk.exists() {
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M")
            .status()
            .expect("qemu-img runs");
        assert!(ok.success());
    }
    std::fs::write(dir.join("vmlinuz"), format!("kernel of {name}")).expect("write");
    std::fs::write(dir.join("initrd.img"), format!("initrd of {name}")).expect("write");
    let text = format!(
        r#"name = "{name}"
role = "app-light"
description = "fake template for libvirt's test driver"

[resources]
vcpus = 1
memory_mb = 64
disk_gb = 1

[virtualization]
kinds = ["kvm", "qemu"]
arch = ["x86_64"]

[image]
name = "{name}"
file = "disk.qcow2"
format = "qcow2"
sha256 = "{}"
min_vcpus = 1
min_memory_mb = 64
min_disk_gb = 1

[boot]
method = "kernel"
kernel = "vmlinuz"
kernel_sha256 = "{}"
initrd = "initrd.img"
initrd_sha256 = "{}"
cmdline = "panic=-1"

[console]
booted = "BOOTED"
"#,
        sha256_hex(&disk),
        sha256_hex(&dir.join("vmlinuz")),
        sha256_hex(&dir.join("initrd.img")),
    );
    std::fs::write(dir.join("template.toml"), edit(text)).expect("write descriptor");
    dir
}
