//! Boots the built tiny template (`make templates` builds it) straight from its descriptor under
//! QEMU/TCG, for x86_64 (`-M q35`) and armhf (`-M virt,highmem=off -cpu cortex-a15`): the boot
//! marker appears, the tick counter advances second by second, and an ACPI shutdown
//! (QMP `system_powerdown`) makes the guest power itself off so QEMU exits.
//! Ignored by default: `cargo test -p betaas-templates --test tiny_boot -- --ignored --nocapture`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use betaas_templates::{Arch, Boot, Template};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const TICKS: u64 = 3;
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Kills (and reaps) the QEMU it holds when the test ends, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn built(arch: Arch) -> Template {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../out/templates")
        .join(format!("tiny-{arch}"));
    let t = Template::load(&dir).unwrap_or_else(|e| panic!("{e} (run `make templates`)"));
    for (field, f) in t.files() {
        let out = Command::new("sha256sum")
            .arg(t.path_of(f))
            .output()
            .expect("sha256sum runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let got = text.split_whitespace().next().unwrap_or("");
        assert_eq!(
            got,
            f.sha256.as_hex(),
            "{field} {} changed since the build",
            f.path.display()
        );
    }
    assert!(t.supports(betaas_templates::VirtKind::Qemu, arch));
    t
}

fn qmp(sock: &PathBuf, command: &str) {
    let s = UnixStream::connect(sock).expect("QMP socket");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = s.try_clone().expect("QMP socket clone");
    let mut r = BufReader::new(s);
    let mut read = |what: &str| -> String {
        // Events (`{"event": …}`) may come before the reply: skip them.
        loop {
            let mut line = String::new();
            r.read_line(&mut line)
                .unwrap_or_else(|e| panic!("QMP {what}: {e}"));
            assert!(!line.is_empty(), "QMP {what}: connection closed");
            if !line.contains("\"event\"") {
                return line;
            }
        }
    };
    assert!(read("greeting").contains("\"QMP\""));
    for c in ["{\"execute\":\"qmp_capabilities\"}", command] {
        writeln!(w, "{c}").expect("QMP write");
        let reply = read(c);
        assert!(reply.contains("\"return\""), "QMP {c}: {reply}");
    }
}

fn boot(arch: Arch, qemu: &str, machine: &[&str]) {
    let t = built(arch);
    let Boot::Kernel { kernel, initrd, .. } = &t.boot else {
        panic!("the tiny template boots a kernel");
    };
    let initrd = initrd.as_ref().expect("the tiny template has an initrd");
    let sock = std::env::temp_dir().join(format!("betaas-tiny-{arch}-{}.qmp", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(machine)
        .args(["-accel", "tcg", "-nographic", "-no-reboot"])
        .args(["-m", &t.resources.memory_mb.to_string()])
        .arg("-kernel")
        .arg(t.path_of(kernel))
        .arg("-initrd")
        .arg(t.path_of(initrd))
        .args(["-append", &t.cmdline(arch).expect("kernel boot")])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{qemu}: {e} (make deps installs it)"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut qemu_proc = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let next = |deadline: Instant, what: &str| -> (Instant, String) {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|_| panic!("[{arch}] no {what} within the deadline"))
    };

    let deadline = started + BOOT_TIMEOUT;
    let booted_at = loop {
        let (at, line) = next(deadline, &t.booted_marker);
        if line.contains(&t.booted_marker) {
            assert!(line.contains("power-buttons=1"), "[{arch}] {line}");
            break at;
        }
    };
    let boot_secs = (booted_at - started).as_secs_f64();

    let mut last_uptime = 0.0;
    for want in 0..TICKS {
        let (_, line) = next(booted_at + Duration::from_secs(5 * (want + 1)), "tick");
        let rest = line
            .strip_prefix("BETAAS-TINY-TICK n=")
            .unwrap_or_else(|| panic!("[{arch}] expected a tick, got {line:?}"));
        let (n, up) = rest.split_once(" uptime=").expect("tick format");
        assert_eq!(
            n.parse::<u64>().expect("tick count"),
            want,
            "[{arch}] {line}"
        );
        let up: f64 = up.parse().expect("uptime");
        assert!(up > last_uptime, "[{arch}] uptime went back: {line}");
        last_uptime = up;
    }

    let asked = Instant::now();
    qmp(&sock, "{\"execute\":\"system_powerdown\"}");
    let deadline = asked + POWEROFF_TIMEOUT;
    loop {
        let (_, line) = next(deadline, "BETAAS-TINY-POWEROFF");
        if line.starts_with("BETAAS-TINY-POWEROFF") {
            break;
        }
    }
    let status = loop {
        if let Some(s) = qemu_proc.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "[{arch}] QEMU still running after the guest powered off"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "[{arch}] QEMU exited with {status}");
    let _ = std::fs::remove_file(&sock);
    println!(
        "tiny-{arch}: boot to marker {boot_secs:.2} s, {TICKS} ticks, ACPI shutdown to QEMU exit {:.2} s",
        asked.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "boots QEMU; needs `make templates`"]
fn tiny_x86_64_boots_ticks_and_powers_off() {
    boot(Arch::X86_64, "qemu-system-x86_64", &["-M", "q35"]);
}

#[test]
#[ignore = "boots QEMU; needs `make templates`"]
fn tiny_armhf_boots_ticks_and_powers_off() {
    boot(
        Arch::Armhf,
        "qemu-system-arm",
        &["-M", "virt,highmem=off", "-cpu", "cortex-a15"],
    );
}
