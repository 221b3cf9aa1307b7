//! Shared helpers of the betaas-vmd tests: the daemon binary under test with its own config, the
//! real tiny template, and serial-log readers. The libvirtd the tests start (and stop) themselves,
//! the domain sweeper and the fake templates for the test driver are betaas-e2e's, shared with the
//! end-to-end tests.
#![allow(dead_code)] // each test binary uses its own subset
#![allow(unused_imports)] // likewise for the re-exports

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

// `Sweeper` and `QEMU_URI`: the names the tests and benches/lifecycle.rs use.
pub use betaas_e2e::libvirtd::{
    fake_template, virsh, DomainsCleanup as Sweeper, Libvirtd, URI as QEMU_URI,
};
use betaas_e2e::repo;
pub use betaas_e2e::sha256_hex;
use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response};

/// A name no other test (or earlier run) uses: test:///default is shared by a whole process.
pub fn unique(tag: &str) -> String {
    format!(
        "t{}{}{:04x}",
        tag,
        std::process::id() % 10_000,
        fastrand::u16(..)
    )
}

/// `out/templates/tiny-<arch>`, built by `make templates` (built here if missing).
pub fn tiny_template(arch: &str) -> PathBuf {
    let dir = repo().join("out/templates").join(format!("tiny-{arch}"));
    if !dir.join("template.toml").is_file() {
        let st = Command::new("bash")
            .arg(repo().join("templates/tiny/build.sh"))
            .arg(arch)
            .current_dir(repo())
            .status()
            .expect("templates/tiny/build.sh runs");
        assert!(st.success(), "building the tiny {arch} template failed");
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// Guests

/// Serializes the tests that boot guests: two cores shared with other engineers' QEMUs.
static SLOW: Mutex<()> = Mutex::new(());

pub fn slow_lock() -> MutexGuard<'static, ()> {
    SLOW.lock().unwrap_or_else(|p| p.into_inner())
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
