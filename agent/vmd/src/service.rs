//! A VM's service (templates with `[network] ports`; paper §V, service deployment): the host port
//! where each guest port answers, the application handed to the guest, and the URL.
//!
//! Files in the VM's state directory:
//! - `ports`: one `guest host` line per declared port, chosen once when the VM is created (a VM's
//!   forwards are part of its domain XML, so they never change while it exists);
//! - `share/`: `app.env` (`PORT_<guest>=<port the guest listens on>`) and `webapps/ROOT.war`. A
//!   container gets it as its `/srv/betaas` (a libvirt filesystem mount); it shares the host's
//!   network, so it listens on the host port itself;
//! - `seed.tar`: for a VM, the same files as a tar archive on its read-only seed disk (its initramfs
//!   unpacks it); a VM listens on the guest port and QEMU forwards the host port to it.
//!
//! [`env_text`], [`url`] and the `ports` format are pure; the rest writes files.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use betaas_proto::{PortMap, WarFile};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const PORTS: &str = "ports";
pub const SHARE: &str = "share";
pub const SEED: &str = "seed.tar";
const ENV: &str = "app.env";
const WAR: &str = "webapps/ROOT.war";

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("WAR {path}: sha256 {got}, the request says {want}: not handed to the guest")]
    Sha256 {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("no free TCP port on this host for guest port {0}: {1}")]
    NoPort(u16, std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `guest host` per line.
pub fn format_ports(ports: &[PortMap]) -> String {
    ports
        .iter()
        .map(|p| format!("{} {}\n", p.guest, p.host))
        .collect()
}

/// The `ports` file's lines; anything else on a line makes it skipped.
pub fn parse_ports(text: &str) -> Vec<PortMap> {
    text.lines()
        .filter_map(|l| {
            let (g, h) = l.trim().split_once(' ')?;
            Some(PortMap {
                guest: g.parse().ok()?,
                host: h.trim().parse().ok()?,
            })
        })
        .collect()
}

pub fn read_ports(vm_dir: &Path) -> Vec<PortMap> {
    std::fs::read_to_string(vm_dir.join(PORTS))
        .map(|t| parse_ports(&t))
        .unwrap_or_default()
}

/// A free host port per guest port (bound on all addresses, then released for QEMU or the
/// container to take), recorded in `vm_dir/ports`.
pub fn assign_ports(vm_dir: &Path, guest: &[u16]) -> Result<Vec<PortMap>, ServiceError> {
    // Every listener stays open until all are chosen: the ports are distinct.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for &g in guest {
        let l = TcpListener::bind(("0.0.0.0", 0)).map_err(|e| ServiceError::NoPort(g, e))?;
        let host = l
            .local_addr()
            .map_err(|e| ServiceError::NoPort(g, e))?
            .port();
        held.push(l);
        ports.push(PortMap { guest: g, host });
    }
    let path = vm_dir.join(PORTS);
    std::fs::write(&path, format_ports(&ports)).map_err(io(&path))?;
    Ok(ports)
}

/// `app.env`: the port each guest port listens on (a container: the host port; a VM: its own).
pub fn env_text(ports: &[PortMap], container: bool) -> String {
    ports
        .iter()
        .map(|p| {
            let listen = if container { p.host } else { p.guest };
            format!("PORT_{}={}\n", p.guest, listen)
        })
        .collect()
}

/// `http://<host>:<port>/` for the first port (IPv6 addresses in brackets).
pub fn url(address: &str, ports: &[PortMap]) -> Option<String> {
    let p = ports.first()?;
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    Some(format!("http://{host}:{}/", p.host))
}

/// Hex sha256 of a file (`None` when it does not exist).
fn file_sha256(path: &Path) -> Result<Option<String>, ServiceError> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes `vm_dir/share/app.env` and, with a WAR, copies it to `share/webapps/ROOT.war` (temp +
/// rename; the copy's sha256 must be the request's). A VM also gets `seed.tar` of the share.
/// Returns whether the guest's application changed (a different WAR than the one it had).
pub fn prepare(
    vm_dir: &Path,
    ports: &[PortMap],
    container: bool,
    war: Option<&WarFile>,
) -> Result<bool, ServiceError> {
    let share = vm_dir.join(SHARE);
    let webapps = share.join("webapps");
    std::fs::create_dir_all(&webapps).map_err(io(&webapps))?;
    let env = share.join(ENV);
    std::fs::write(&env, env_text(ports, container)).map_err(io(&env))?;
    let dest = share.join(WAR);
    let mut changed = false;
    if let Some(w) = war {
        let want = w.sha256.to_ascii_lowercase();
        if file_sha256(&dest)?.as_deref() != Some(want.as_str()) {
            let src = Path::new(&w.path);
            let tmp = webapps.join(".ROOT.war.tmp");
            std::fs::copy(src, &tmp).map_err(io(src))?;
            let got = file_sha256(&tmp)?.unwrap_or_default();
            if got != want {
                let _ = std::fs::remove_file(&tmp);
                return Err(ServiceError::Sha256 {
                    path: src.to_owned(),
                    got,
                    want,
                });
            }
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
            changed = true;
        }
    }
    if !container {
        write_seed(&vm_dir.join(SEED), &share)?;
    }
    Ok(changed)
}

/// The share as a tar archive (`app.env`, `webapps/ROOT.war` when there is one), written raw.
fn write_seed(path: &Path, share: &Path) -> Result<(), ServiceError> {
    let tmp = path.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut b = tar::Builder::new(f);
    b.mode(tar::HeaderMode::Deterministic);
    for name in [ENV, WAR] {
        let p = share.join(name);
        if p.is_file() {
            b.append_path_with_name(&p, name).map_err(io(&p))?;
        }
    }
    let mut f = b.into_inner().map_err(io(&tmp))?;
    f.flush().map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(guest: u16, host: u16) -> PortMap {
        PortMap { guest, host }
    }

    #[test]
    fn ports_file_round_trips_and_skips_junk() {
        let p = vec![pm(8080, 41234), pm(8443, 41235)];
        assert_eq!(parse_ports(&format_ports(&p)), p);
        assert_eq!(parse_ports("8080 x\n\n9 10\nnope\n"), vec![pm(9, 10)]);
    }

    #[test]
    fn a_container_listens_on_the_host_port_a_vm_on_its_own() {
        let p = [pm(8080, 41234)];
        assert_eq!(env_text(&p, true), "PORT_8080=41234\n");
        assert_eq!(env_text(&p, false), "PORT_8080=8080\n");
    }

    #[test]
    fn url_names_the_first_port_and_brackets_ipv6() {
        assert_eq!(url("gw-1", &[]), None);
        let p = [pm(8080, 41234), pm(1, 2)];
        assert_eq!(url("gw-1", &p).expect("test input"), "http://gw-1:41234/");
        assert_eq!(url("::1", &p).expect("test input"), "http://[::1]:41234/");
    }

    #[test]
    fn assigned_ports_are_distinct_and_recorded() {
        let d = tempfile::tempdir().expect("test input");
        let p = assign_ports(d.path(), &[8080, 8443]).expect("test input");
        assert_ne!(p[0].host, p[1].host);
        assert_eq!(read_ports(d.path()), p);
    }

    #[test]
    fn war_is_copied_only_with_its_sha256_and_the_seed_holds_it() {
        let d = tempfile::tempdir().expect("test input");
        let war = d.path().join("in.war");
        let body = fastrand::u64(..).to_string();
        std::fs::write(&war, &body).expect("test input");
        let sum = hex(&Sha256::digest(body.as_bytes()));
        let vm = d.path().join("vm");
        let ports = [pm(8080, 41234)];
        let bad = WarFile {
            path: war.to_string_lossy().into(),
            sha256: "0".repeat(64),
        };
        let e = prepare(&vm, &ports, false, Some(&bad)).expect_err("fails");
        assert!(matches!(e, ServiceError::Sha256 { .. }), "{e}");
        assert!(!vm.join("share/webapps/ROOT.war").exists());
        let good = WarFile { sha256: sum, ..bad };
        assert!(prepare(&vm, &ports, false, Some(&good)).expect("test input"));
        assert!(
            !prepare(&vm, &ports, false, Some(&good)).expect("test input"),
            "same WAR again: unchanged"
        );
        let mut a = tar::Archive::new(std::fs::File::open(vm.join(SEED)).expect("test input"));
        let mut seen = std::collections::BTreeMap::new();
        for e in a.entries().expect("test input") {
            let mut e = e.expect("test input");
            let mut s = String::new();
            e.read_to_string(&mut s).expect("test input");
            seen.insert(
                e.path().expect("test input").to_string_lossy().into_owned(),
                s,
            );
        }
        assert_eq!(seen["app.env"], "PORT_8080=8080\n");
        assert_eq!(seen["webapps/ROOT.war"], body);
    }
}
