//! A/B firmware updates on the gateway (RAUC with its U-Boot backend, image/rauc/): which slot
//! runs, whether it is still on trial, whether the gateway fell back from an update, and marking
//! the running slot good once the agent is healthy.
//!
//! U-Boot's boot script (image/rauc/boot.cmd.in) picks the first slot of `BOOT_ORDER` with boot
//! attempts left and decrements its `BOOT_<slot>_LEFT` before booting; RAUC sets it back to
//! [`ATTEMPTS`] on install and on `rauc status mark-good`. So a running slot whose counter is below
//! [`ATTEMPTS`] is on trial (pending), and a running slot that is not first in `BOOT_ORDER` while
//! the first has used up its attempts means the update was rolled back.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Boot attempts RAUC gives a slot (its default for the U-Boot backend).
pub const ATTEMPTS: u32 = 3;
/// RAUC's clients reach its service on the image's private bus (image/rauc/bus.conf).
pub const RAUC_BUS: &str = "unix:path=/run/rauc/bus";

/// What the firmware says about itself (health's `system`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    /// The booted slot ("A", "B"), from the kernel command line's `rauc.slot=`.
    pub slot: Option<String>,
    /// /etc/betaas-release.
    pub version: Option<String>,
    /// The booted slot has not been marked good yet.
    pub pending: bool,
    /// The preferred slot (first in BOOT_ORDER) is not the one that booted and has no attempts left.
    pub rolled_back: bool,
}

/// The booted slot named on a kernel command line (`rauc.slot=A`).
pub fn booted_slot(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rauc.slot="))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// `fw_printenv` output (`NAME=value` lines) as a map.
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The pure core: the system state from the booted slot, U-Boot's environment and the version.
pub fn system(
    slot: Option<String>,
    env: &BTreeMap<String, String>,
    version: Option<String>,
) -> System {
    let (pending, rolled_back) = match &slot {
        Some(s) => {
            let left = env
                .get(&format!("BOOT_{s}_LEFT"))
                .and_then(|v| v.trim().parse::<u32>().ok());
            let first = env
                .get("BOOT_ORDER")
                .and_then(|o| o.split_whitespace().next().map(str::to_owned));
            // The preferred slot is another one and it has no attempts left: U-Boot gave it up.
            // (Right after an install the new slot is first with all its attempts: not rolled back.)
            let gave_up = first.filter(|f| f != s).is_some_and(|f| {
                env.get(&format!("BOOT_{f}_LEFT"))
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    == Some(0)
            });
            (left.is_some_and(|l| l < ATTEMPTS), gave_up)
        }
        None => (false, false),
    };
    System {
        slot,
        version,
        pending,
        rolled_back,
    }
}

impl System {
    pub fn to_json(&self) -> Value {
        json!({
            "slot": self.slot,
            "version": self.version,
            "pending": self.pending,
            "rolled_back": self.rolled_back,
        })
    }
}

/// Reads the running system's state (I/O: /proc/cmdline, /etc/betaas-release, `fw_printenv`).
/// Off the image (no `rauc.slot=` on the command line) nothing is run.
pub fn read() -> System {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = booted_slot(&cmdline);
    let version = std::fs::read_to_string("/etc/betaas-release")
        .ok()
        .map(|v| v.trim().to_owned());
    let env = if slot.is_some() {
        std::process::Command::new("fw_printenv")
            .args(["BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT"])
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| parse_env(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    system(slot, &env, version)
}

/// `rauc status mark-good` through RAUC's service: the running slot keeps booting.
pub fn mark_good() -> Result<(), String> {
    let out = std::process::Command::new("rauc")
        .args(["status", "mark-good"])
        .env("DBUS_STARTER_BUS_TYPE", "session")
        .env("DBUS_SESSION_BUS_ADDRESS", RAUC_BUS)
        .output()
        .map_err(|e| format!("rauc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rauc status mark-good: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// RAUC's status file (system.conf `data-directory`): what each slot was last installed with.
pub const STATUS: &str = "/var/lib/betaas/rauc/central.raucs";

/// The bundle version RAUC recorded for slot `rootfs.<index>` in its status file.
pub fn installed_version(status: &str, index: u32) -> Option<String> {
    let header = format!("[slot.rootfs.{index}]");
    let mut inside = false;
    for line in status.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == header;
        } else if inside {
            if let Some(v) = line.strip_prefix("bundle.version=") {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// Where a bundle is downloaded to, in the data directory (the root filesystem is read-only).
pub const BUNDLE: &str = "update.raucb";

/// A bundle URL the gateway accepts: http or https, no spaces or shell-significant characters.
pub fn check_url(url: &str) -> Result<(), String> {
    let ok_scheme = url.starts_with("http://") || url.starts_with("https://");
    let ok_chars = url
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c));
    if ok_scheme && ok_chars && url.len() <= 2048 {
        Ok(())
    } else {
        Err(format!(
            "update url {url:?}: expected an http:// or https:// URL"
        ))
    }
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<String, String> {
    let out = cmd
        .env("DBUS_STARTER_BUS_TYPE", "session")
        .env("DBUS_SESSION_BUS_ADDRESS", RAUC_BUS)
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        Err(format!("{what}: {last}"))
    }
}

/// The largest bundle accepted: a compressed slot (160 MiB on the VM-capable image) and headroom.
pub const MAX_BUNDLE: u64 = 256 << 20;
/// Free space a download must leave on the data partition (the journal lives there too).
pub const DATA_RESERVE: u64 = 64 << 20;

/// How many bundle bytes may be downloaded with `free` bytes free on the data partition.
pub fn download_cap(free: u64) -> u64 {
    MAX_BUNDLE.min(free.saturating_sub(DATA_RESERVE))
}

/// One installation at a time: the MQTT request and the API share [`BUNDLE`].
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Downloads the bundle at `url` (busybox wget) to [`BUNDLE`], at most [`download_cap`] bytes, has
/// RAUC check it (signature against the image's keyring, compatible) and install it into the other
/// slot. Returns the bundle's version. The download is removed in every case. Blocking: run it off
/// the runtime.
pub fn install_from(url: &str, data_dir: &std::path::Path) -> Result<String, String> {
    check_url(url)?;
    let _one = INSTALLING
        .try_lock()
        .map_err(|_| "an update is already being installed".to_owned())?;
    let bundle = data_dir.join(BUNDLE);
    let _ = std::fs::remove_file(&bundle);
    let r = (|| {
        download(url, &bundle)?;
        // RAUC's service checks the signature and the compatible before it writes anything.
        run(
            std::process::Command::new("rauc")
                .arg("install")
                .arg(&bundle),
            "rauc install",
        )?;
        let status = std::fs::read_to_string(STATUS).unwrap_or_default();
        let slot = booted_slot(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
        let other = if slot.as_deref() == Some("B") { 0 } else { 1 };
        Ok(installed_version(&status, other).unwrap_or_default())
    })();
    let _ = std::fs::remove_file(&bundle);
    r
}

/// wget to stdout, copied into [`BUNDLE`] up to the cap: a URL that serves endlessly must not fill
/// the data partition the journal writes to (busybox wget has no size limit of its own).
fn download(url: &str, bundle: &std::path::Path) -> Result<(), String> {
    let dir = bundle.parent().unwrap_or(std::path::Path::new("/"));
    let free = rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail * s.f_frsize)
        .map_err(|e| format!("download: {}: {e}", dir.display()))?;
    fetch(url, bundle, download_cap(free))
}

fn fetch(url: &str, bundle: &std::path::Path, cap: u64) -> Result<(), String> {
    let mut child = std::process::Command::new("wget")
        .args(["-q", "-O", "-", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("download: wget: {e}"))?;
    let to = |e: std::io::Error| format!("download: {}: {e}", bundle.display());
    let mut out = std::fs::File::create(bundle).map_err(to)?;
    let stdout = child.stdout.take().expect("piped");
    let copied = std::io::copy(&mut std::io::Read::take(stdout, cap + 1), &mut out);
    if !matches!(copied, Ok(n) if n <= cap) {
        let _ = child.kill();
    }
    let st = child
        .wait_with_output()
        .map_err(|e| format!("download: wget: {e}"))?;
    match copied {
        Ok(n) if n > cap => Err(format!(
            "download: the bundle is larger than {cap} bytes (at most {MAX_BUNDLE}, keeping {DATA_RESERVE} free on the data partition)"
        )),
        Err(e) => Err(to(e)),
        Ok(_) if !st.status.success() => Err(format!(
            "download: wget: {}",
            String::from_utf8_lossy(&st.stderr).trim()
        )),
        Ok(_) => out.sync_all().map_err(to),
    }
}

/// [`install_from`] off the runtime and, once installed, a reboot into the new slot `delay` later
/// (so the answer leaves first). The MQTT request and `POST /api/v1/update` both end here.
pub async fn install_and_reboot(
    url: String,
    data_dir: std::path::PathBuf,
    delay: std::time::Duration,
) -> Result<String, String> {
    let done = tokio::task::spawn_blocking(move || install_from(&url, &data_dir))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))?;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = std::process::Command::new("reboot").status();
    });
    Ok(done)
}

/// Whether the agent is healthy enough to keep this slot: connected to its broker, and its
/// `configured` things polled (each publishes at least one id, available or not) with at least one
/// reading among them.
pub fn healthy(connected: bool, configured: usize, things: &[(u64, Option<bool>)]) -> bool {
    connected
        && things.len() >= configured
        && things.iter().all(|(_, available)| available.is_some())
        && (things.is_empty() || things.iter().any(|(readings, _)| *readings > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_leave_room_on_the_data_partition() {
        assert_eq!(download_cap(u64::MAX), MAX_BUNDLE);
        assert_eq!(download_cap(DATA_RESERVE + 10), 10);
        assert_eq!(download_cap(DATA_RESERVE / 2), 0);
    }

    /// A server on 127.0.0.1 answering one GET with `len` bytes.
    fn serve(len: usize) -> String {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/b.raucb", l.local_addr().expect("addr"));
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let _ = c.write_all(&vec![7u8; len]);
        });
        url
    }

    #[test]
    fn a_download_stops_at_the_cap() {
        if std::process::Command::new("wget")
            .arg("--help")
            .output()
            .is_err()
        {
            panic!("wget is needed (image/host-deps.sh installs it)");
        }
        let dir = std::env::temp_dir().join(format!("betaas-dl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let b = dir.join(BUNDLE);
        let cap = 1000 + fastrand::u64(..5000);
        let small = fastrand::u64(1..=cap) as usize;
        fetch(&serve(small), &b, cap).expect("a bundle under the cap");
        assert_eq!(std::fs::metadata(&b).expect("bundle").len(), small as u64);
        let big = (cap + 1 + fastrand::u64(..100_000)) as usize;
        let e = fetch(&serve(big), &b, cap).expect_err("refused");
        assert!(e.contains("larger than"), "{e}");
        assert!(std::fs::metadata(&b).expect("bundle").len() <= cap + 1);
        let e = fetch("http://127.0.0.1:1/none", &b, cap).expect_err("refused");
        assert!(e.starts_with("download: wget"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    fn env(order: &str, a: u32, b: u32) -> BTreeMap<String, String> {
        parse_env(&format!(
            "BOOT_ORDER={order}\nBOOT_A_LEFT={a}\nBOOT_B_LEFT={b}\n"
        ))
    }

    #[test]
    fn slot_from_the_command_line() {
        assert_eq!(
            booted_slot("console=ttyS0 root=/dev/mmcblk0p3 ro rauc.slot=B quiet"),
            Some("B".into())
        );
        assert_eq!(booted_slot("console=ttyS0 root=/dev/vda2"), None);
        assert_eq!(booted_slot("rauc.slot="), None);
    }

    #[test]
    fn fresh_install_is_pending_then_good() {
        // Just booted into B after an install: U-Boot took one of its 3 attempts.
        let s = system(Some("B".into()), &env("B A", 3, 2), Some("v2".into()));
        assert!(s.pending && !s.rolled_back, "{s:?}");
        // mark-good gave it its attempts back.
        let s = system(Some("B".into()), &env("B A", 3, 3), Some("v2".into()));
        assert!(!s.pending && !s.rolled_back, "{s:?}");
    }

    #[test]
    fn installed_but_not_rebooted_is_not_rolled_back() {
        // RAUC installed B and put it first; A still runs until the reboot.
        let s = system(Some("A".into()), &env("B A", 3, 3), Some("v1".into()));
        assert!(!s.rolled_back && !s.pending, "{s:?}");
    }

    #[test]
    fn fallback_is_rolled_back() {
        // B used up its attempts; U-Boot booted A, which was good before (its counter 3 -> 2).
        let s = system(Some("A".into()), &env("B A", 2, 0), Some("v1".into()));
        assert!(s.rolled_back, "{s:?}");
        assert!(s.pending, "A's attempt was counted: {s:?}");
        // After the agent marks A good again it stays rolled back until the order changes.
        let s = system(Some("A".into()), &env("B A", 3, 0), Some("v1".into()));
        assert!(s.rolled_back && !s.pending, "{s:?}");
    }

    #[test]
    fn off_the_image_nothing_is_pending() {
        let s = system(None, &BTreeMap::new(), None);
        assert_eq!(
            s.to_json(),
            json!({"slot": null, "version": null, "pending": false, "rolled_back": false})
        );
    }

    #[test]
    fn version_from_raucs_status() {
        let status = "[slot.rootfs.0]\nbundle.version=v1\n\n[slot.rootfs.1]\nbundle.compatible=betaas-x\nbundle.version=v2\ninstalled.count=1\n";
        assert_eq!(installed_version(status, 1).as_deref(), Some("v2"));
        assert_eq!(installed_version(status, 0).as_deref(), Some("v1"));
        assert_eq!(installed_version("", 1), None);
    }

    #[test]
    fn bundle_urls() {
        assert!(check_url("http://10.0.2.2:8080/betaas-qemu-cubieboard-v2.raucb").is_ok());
        assert!(check_url("https://updates.example/b.raucb?x=1").is_ok());
        for bad in [
            "ftp://h/b",
            "/var/lib/b.raucb",
            "http://h/b c",
            "http://h/`reboot`",
            "http://h/\"x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_needs_the_broker_and_the_things() {
        assert!(!healthy(false, 1, &[(5, Some(true))]));
        assert!(
            !healthy(true, 2, &[(5, Some(true)), (0, None)]),
            "one thing never polled"
        );
        assert!(
            !healthy(true, 2, &[(5, Some(true))]),
            "one thing not seen yet"
        );
        assert!(
            healthy(true, 2, &[(5, Some(true)), (0, Some(false))]),
            "an absent sensor is read"
        );
        assert!(!healthy(true, 1, &[(0, Some(false))]), "no reading at all");
        assert!(healthy(true, 0, &[]));
    }
}
