//! Shared helpers of the betaas-vmd tests: a libvirtd the tests start (and stop) themselves, the
//! daemon binary under test with its own config, fake templates for the test driver, the real
//! tiny template, and serial-log readers.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response};

pub const QEMU_URI: &str = "qemu:///system";
const PIDFILE: &str = "/run/betaas-vmd-tests-libvirtd.pid";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A name no other test (or earlier run) uses: test:///default is shared by a whole process.
pub fn unique(tag: &str) -> String {
    format!(
        "t{}{}{:04x}",
        tag,
        std::process::id() % 10_000,
        fastrand::u16(..)
    )
}

pub fn sha256_hex(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A template directory `<root>/<name>-x86_64/` for the test driver: real qcow2 base (qemu-img
/// needs one to make overlays), placeholder kernel/initrd, checksums computed. `edit` may change
/// the descriptor text (bad-descriptor tests).
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

/// `out/templates/tiny-<arch>`, built by `make templates` (built here if missing).
pub fn tiny_template(arch: &str) -> PathBuf {
    let dir = workspace()
        .join("out/templates")
        .join(format!("tiny-{arch}"));
    if !dir.join("template.toml").is_file() {
        let st = Command::new("bash")
            .arg(workspace().join("templates/tiny/build.sh"))
            .arg(arch)
            .current_dir(workspace())
            .status()
            .expect("templates/tiny/build.sh runs");
        assert!(st.success(), "building the tiny {arch} template failed");
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// libvirtd

struct LibvirtdState {
    users: usize,
    /// Pid of the libvirtd we started; `None` when one was already running (never ours to stop).
    started: Option<u32>,
}

static LIBVIRTD: Mutex<LibvirtdState> = Mutex::new(LibvirtdState {
    users: 0,
    started: None,
});

/// Serializes the tests that boot guests: two cores shared with other engineers' QEMUs.
static SLOW: Mutex<()> = Mutex::new(());

pub fn slow_lock() -> MutexGuard<'static, ()> {
    SLOW.lock().unwrap_or_else(|p| p.into_inner())
}

fn virsh_version_ok(timeout: Duration) -> bool {
    let mut child = match Command::new("virsh")
        .args(["-c", QEMU_URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
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
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// A libvirtd for `qemu:///system`: the running one, or one we start (`libvirtd -d -p PIDFILE`)
/// and stop when the last guard drops.
pub struct Libvirtd;

impl Libvirtd {
    pub fn acquire() -> Libvirtd {
        let mut st = LIBVIRTD.lock().unwrap_or_else(|p| p.into_inner());
        if st.users == 0 {
            let setup = Command::new("bash")
                .arg(workspace().join("tests/libvirt/setup.sh"))
                .status()
                .expect("tests/libvirt/setup.sh runs");
            assert!(setup.success(), "tests/libvirt/setup.sh failed");
            if !virsh_version_ok(Duration::from_secs(3)) {
                st.started = Some(start_libvirtd());
            } else if let Some(pid) = std::fs::read_to_string(PIDFILE)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|p| pid_alive(*p))
                .filter(|p| {
                    // A stale pid file whose pid now belongs to something else is not ours.
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == "libvirtd")
                })
            {
                // Left by an earlier test run that was killed before its guard dropped: our
                // pid file, so ours to stop (and to kill in the failure tests).
                st.started = Some(pid);
            }
        }
        st.users += 1;
        Libvirtd
    }

    /// Did this process start libvirtd (so a test may kill and restart it)?
    pub fn ours() -> bool {
        LIBVIRTD
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .started
            .is_some()
    }

    /// SIGKILL to the libvirtd we started (its guests keep running, as after a crash).
    pub fn kill() {
        let mut st = LIBVIRTD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pid) = st.started.take() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let end = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            // libvirtd -d forks: a dead daemon leaves its socket; the next start replaces it.
        }
    }

    /// Starts it again after [`Libvirtd::kill`].
    pub fn restart() {
        let mut st = LIBVIRTD.lock().unwrap_or_else(|p| p.into_inner());
        if st.started.is_none() {
            st.started = Some(start_libvirtd());
        }
    }
}

fn start_libvirtd() -> u32 {
    let _ = std::fs::remove_file(PIDFILE);
    let t0 = Instant::now();
    let st = Command::new("libvirtd")
        .args(["-d", "-p", PIDFILE])
        .status()
        .expect("libvirtd runs (image/host-deps.sh installs it)");
    assert!(st.success(), "libvirtd -d failed");
    // The first connection waits for the QEMU capability probe (~12 s on these machines).
    let end = Instant::now() + Duration::from_secs(90);
    while !virsh_version_ok(Duration::from_secs(60)) {
        assert!(
            Instant::now() < end,
            "libvirtd did not answer virsh version within 90 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let pid = std::fs::read_to_string(PIDFILE)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("libvirtd wrote its pid file");
    eprintln!(
        "tests: started libvirtd pid {pid}, ready after {:?}",
        t0.elapsed()
    );
    pid
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let mut st = LIBVIRTD.lock().unwrap_or_else(|p| p.into_inner());
        st.users -= 1;
        if st.users == 0 {
            if let Some(pid) = st.started.take() {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                let end = Instant::now() + Duration::from_secs(10);
                while pid_alive(pid) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(50));
                }
                eprintln!("tests: stopped libvirtd pid {pid}");
            }
        }
    }
}

pub fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-c", QEMU_URI])
        .args(args)
        .output()
        .expect("virsh runs");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

// ---------------------------------------------------------------------------------------------
// The daemon under test

/// `betaas-vmd` with a config in `dir`, killed (SIGKILL: like a crash) on drop.
pub struct Vmd {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl Vmd {
    pub fn spawn(dir: &Path, config_toml: &str) -> Vmd {
        let config = dir.join("vmd.toml");
        let socket = dir.join("vmd.sock");
        std::fs::write(&config, config_toml).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("vmd.log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_betaas-vmd"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .stderr(log)
            .spawn()
            .expect("betaas-vmd starts");
        let end = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < end,
                "betaas-vmd did not listen on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Vmd {
            child,
            socket,
            config,
        }
    }

    pub fn client(&self) -> Client<UnixStream> {
        Client::new(UnixStream::connect(&self.socket).expect("connect to betaas-vmd"))
    }

    pub fn call(&self, req: Request) -> Response {
        self.client().call(&req).expect("betaas-vmd replies")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vmd {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Serial logs of the tiny template

/// Waits until `log` (from byte `from`) contains `needle`; the text from `from` on.
pub fn wait_for(log: &Path, from: usize, needle: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        let text = std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b[from.min(b.len())..]).into_owned())
            .unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{needle:?} not in {} within {timeout:?}; it has:\n{}",
            log.display(),
            tail(&text, 2000)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

pub fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

/// Every `BETAAS-TINY-TICK n=<n> uptime=<s>` in `text`, in order.
pub fn ticks(text: &str) -> Vec<(u64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("BETAAS-TINY-TICK n=")? + "BETAAS-TINY-TICK n=".len()..];
            let (n, rest) = rest.split_once(" uptime=")?;
            Some((n.trim().parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

pub fn write_file(p: &Path, s: &str) {
    let mut f = std::fs::File::create(p).expect("create");
    f.write_all(s.as_bytes()).expect("write");
}

/// On drop (also when a test panics), destroys and undefines every domain whose name starts with
/// `prefix`: no guest of a failed test keeps running on the shared cores. Declare it after the
/// [`Libvirtd`] guard so it runs while libvirtd is still up.
pub struct Sweeper(pub String);

impl Drop for Sweeper {
    fn drop(&mut self) {
        let (_, names) = virsh(&["list", "--all", "--name"]);
        for n in names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&self.0))
        {
            let _ = virsh(&["destroy", n]);
            let _ = virsh(&["undefine", "--managed-save", n]);
        }
    }
}
