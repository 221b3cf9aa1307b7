//! Capability detection by booting: libvirt advertises `kvm` wherever /dev/kvm exists, even where
//! KVM guests hang (nested hypervisors) — so each kind is tried with the probe template's guest,
//! and only a guest that prints its booted marker counts.

use std::path::Path;
use std::time::{Duration, Instant};

use betaas_proto::{Capability, ProbeResult, VirtKind};
use virt::connect::Connect;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::domxml;
use crate::libvirt::Libvirt;
use crate::manager::{domain_spec, VmdError};
use crate::overlay;

/// Probes every configured kind in order (all of them, so the allocator sees the whole picture).
pub fn run(
    cfg: &Config,
    hv: &mut Libvirt,
    catalog: &mut Catalog,
    now_s: u64,
) -> Result<Capability, VmdError> {
    if let Some(kind) = cfg.probe.assume {
        return Ok(Capability {
            best: Some(kind),
            probes: vec![ProbeResult {
                kind,
                ok: true,
                detail: "assumed by the configuration (probe.assume), not probed".into(),
                millis: 0,
            }],
            arch: cfg.arch.as_str().to_owned(),
            probed_s: now_s,
        });
    }
    let mut probes = Vec::new();
    for &kind in &cfg.probe.kinds {
        let t0 = Instant::now();
        let (ok, detail) = match probe_one(cfg, hv, catalog, kind, now_s) {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        let millis = t0.elapsed().as_millis() as u64;
        tracing::info!(%kind, ok, %detail, millis, "probe");
        probes.push(ProbeResult {
            kind,
            ok,
            detail,
            millis,
        });
    }
    Ok(Capability {
        best: probes.iter().find(|p| p.ok).map(|p| p.kind),
        probes,
        arch: cfg.arch.as_str().to_owned(),
        probed_s: now_s,
    })
}

fn probe_one(
    cfg: &Config,
    hv: &mut Libvirt,
    catalog: &mut Catalog,
    kind: VirtKind,
    now_s: u64,
) -> Result<String, String> {
    if kind == VirtKind::Lxc {
        // Containers live on their own libvirt driver: no driver, no containers, whatever the
        // template says.
        let mut lxc = Libvirt::new(&cfg.lxc_uri, Duration::from_secs(1));
        lxc.with("open the lxc driver", |c: &Connect| c.hostname())
            .map_err(|e| format!("lxc driver: {e}"))?;
    }
    let t = catalog
        .find(&cfg.probe.template, cfg.arch, cfg.verify_checksums)
        .map_err(|e| format!("probe template: {e}"))?;
    if !t.kinds.iter().any(|k| k.as_str() == kind.as_str()) {
        return Err(format!(
            "probe template {} does not run under {kind}",
            t.name
        ));
    }
    let name = format!("{}-probe-{kind}-{}", cfg.name_prefix, std::process::id());
    let dir = cfg.state_dir.join(format!(".{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = (|| {
        let mut spec = domain_spec(&t, kind, &name, &dir, cfg, now_s).map_err(|e| e.to_string())?;
        // Marked as ours but as a probe: a restarted daemon destroys it instead of adopting it.
        spec.mark.template = crate::registry::PROBE_TEMPLATE.to_owned();
        if let Some(disk) = &spec.disk {
            overlay::create(&t.path_of(&t.image.file), t.image.format, disk)
                .map_err(|e| e.to_string())?;
        }
        if let (Some(l), crate::domxml::BootSpec::Container { rootfs, .. }) = (&t.lxc, &spec.boot) {
            overlay::unpack_rootfs(&t.path_of(&l.rootfs), rootfs).map_err(|e| e.to_string())?;
        }
        let xml = domxml::domain_xml(&spec).map_err(|e| e.to_string())?;
        let start_only = cfg.probe.start_only.contains(&kind);
        let t0 = Instant::now();
        match kind {
            VirtKind::Lxc => {
                // Containers live on their own libvirt driver: opening it is part of the probe.
                let mut lxc = Libvirt::new(&cfg.lxc_uri, Duration::from_secs(1));
                boot_and_watch(
                    &mut lxc,
                    &xml,
                    &name,
                    &spec.serial_log,
                    &t.booted_marker,
                    cfg,
                    start_only,
                )
            }
            _ => boot_and_watch(
                hv,
                &xml,
                &name,
                &spec.serial_log,
                &t.booted_marker,
                cfg,
                start_only,
            ),
        }
        .map(|()| {
            if start_only {
                format!(
                    "started, alive after {} ms (probe.start_only: boot not awaited)",
                    t0.elapsed().as_millis()
                )
            } else {
                format!("marker after {} ms", t0.elapsed().as_millis())
            }
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// How long a guest probed by starting only must stay alive.
const START_ONLY_ALIVE_S: u64 = 5;

/// Starts a transient domain (gone from libvirt once destroyed, even if we die before that) and
/// waits for `marker` in its console log.
fn boot_and_watch(
    hv: &mut Libvirt,
    xml: &str,
    name: &str,
    log: &Path,
    marker: &str,
    cfg: &Config,
    start_only: bool,
) -> Result<(), String> {
    hv.with("start probe guest", |c: &Connect| {
        c.lookup_domain_by_name(name).map(|d| d.destroy()).ok();
        c.create_domain_xml(xml, 0).map(drop)
    })
    .map_err(|e| e.to_string())?;
    if hv.uri() == cfg.lxc_uri {
        // A container's console is a PTY: copy it to the log the marker is looked for in.
        crate::console::Followers::default().follow(&cfg.lxc_uri, name, log);
    }
    // Started only: alive this long counts (a guest that dies at once, or a QEMU that cannot run
    // the machine, still fails).
    let wait = if start_only {
        Duration::from_secs(cfg.probe.timeout_s.min(START_ONLY_ALIVE_S))
    } else {
        Duration::from_secs(cfg.probe.timeout_s)
    };
    let deadline = Instant::now() + wait;
    let mut seen = false;
    let mut alive = true;
    while Instant::now() < deadline {
        if std::fs::read(log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(marker)) {
            seen = true;
            break;
        }
        // A guest that died (emulation failure under a broken KVM) will never print it.
        alive = hv
            .with("poll probe guest", |c: &Connect| {
                c.lookup_domain_by_name(name)?.is_active()
            })
            .unwrap_or(false);
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = hv.with("destroy probe guest", |c: &Connect| {
        c.lookup_domain_by_name(name)?.destroy()
    });
    match (seen, alive) {
        (true, _) => Ok(()),
        (false, true) if start_only => Ok(()),
        (false, false) => Err("the guest stopped before printing its booted marker".into()),
        (false, true) => Err(format!(
            "no booted marker within {} s (a hung guest)",
            cfg.probe.timeout_s
        )),
    }
}
