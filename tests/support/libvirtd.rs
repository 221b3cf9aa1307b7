//! A real libvirtd for `qemu:///system` without systemd: the one already running, or one this
//! process starts (`libvirtd -d -p PIDFILE`, after the idempotent `tests/libvirt/setup.sh`) and
//! stops when the guard drops — never one it did not start. Plus a guard that destroys and
//! undefines every domain whose name starts with a prefix, for tests that boot real guests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo;

pub const URI: &str = "qemu:///system";
const PIDFILE: &str = "/run/betaas-e2e-libvirtd.pid";

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

/// The libvirtd guard: `started` is the pid of the daemon we started, if we did.
pub struct Libvirtd {
    started: Option<u32>,
}

impl Libvirtd {
    pub fn acquire() -> Libvirtd {
        let st = Command::new("bash")
            .arg(repo().join("tests/libvirt/setup.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("tests/libvirt/setup.sh runs");
        assert!(
            st.success(),
            "tests/libvirt/setup.sh failed (image/host-deps.sh installs libvirt)"
        );
        if answers(Duration::from_secs(5)) {
            return Libvirtd { started: None };
        }
        let t0 = Instant::now();
        let _ = std::fs::remove_file(PIDFILE);
        let st = Command::new("libvirtd")
            .args(["-d", "-p", PIDFILE])
            .status()
            .expect("libvirtd runs");
        assert!(st.success(), "libvirtd -d failed");
        let pid: u32 = crate::wait_until("libvirtd's pid file", Duration::from_secs(20), || {
            std::fs::read_to_string(PIDFILE).ok()?.trim().parse().ok()
        });
        let guard = Libvirtd { started: Some(pid) };
        // The first connection waits for QEMU's capability probe (~12 s here).
        let end = Instant::now() + Duration::from_secs(120);
        while !answers(Duration::from_secs(60)) {
            assert!(Instant::now() < end, "libvirtd did not answer within 120 s");
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "e2e: started libvirtd pid {pid}, ready after {:.1?}",
            t0.elapsed()
        );
        guard
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if let Some(pid) = self.started.take() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let end = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("e2e: stopped libvirtd pid {pid}");
        }
    }
}

/// Destroys and undefines (with its managed save) every domain named `<prefix>…` when dropped:
/// a failing test leaves no guest running.
pub struct DomainsCleanup(pub String);

impl Drop for DomainsCleanup {
    fn drop(&mut self) {
        let (_, names) = virsh(&["list", "--all", "--name"]);
        for name in names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&self.0))
        {
            let _ = virsh(&["destroy", name]);
            let _ = virsh(&["undefine", name, "--managed-save"]);
            eprintln!("e2e: removed domain {name}");
        }
    }
}
