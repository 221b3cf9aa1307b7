//! `/etc/betaas/vmd.toml`: typed, with errors that name the file, the line and the field.

use std::path::{Path, PathBuf};

use betaas_proto::VirtKind;
use betaas_templates::Arch;
use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the agent connects.
    pub socket: PathBuf,
    /// The user (name or uid) allowed to connect besides root and the daemon's own: the agent's.
    /// The socket file is made theirs.
    pub socket_user: Option<String>,
    /// The socket file's mode (0600: its owner only).
    pub socket_mode: u32,
    /// Connections served at once; one more is answered `Busy` and closed.
    pub max_connections: usize,
    /// A connection that sends nothing, or leaves a frame incomplete, for this long is closed.
    pub read_timeout_ms: u64,
    /// libvirt for VMs (kvm and qemu kinds).
    pub uri: String,
    /// libvirt for containers (lxc kind).
    pub lxc_uri: String,
    /// Our mark's owner: every daemon sharing one libvirtd needs its own.
    pub owner: String,
    /// Domain names are `<name_prefix>-<template>-<n>`.
    pub name_prefix: String,
    /// One directory per VM: its overlay, serial log and idle clock.
    pub state_dir: PathBuf,
    /// Directories holding built templates (`<dir>/<name>-<arch>/template.toml`).
    pub templates: Vec<PathBuf>,
    /// Guest architecture of the templates used; defaults to the host's.
    pub arch: Arch,
    /// A stopped VM is destroyed (undefined, files removed) after this long.
    pub idle_destroy_s: u64,
    /// How often the idle policy runs.
    pub reap_interval_s: u64,
    /// How long an ACPI shutdown (the stop fallback) may take before a hard power-off.
    pub shutdown_timeout_s: u64,
    /// What stop does: a managed save (fast resume; needs disk for the guest's memory), or an
    /// ACPI shutdown (for gateways whose storage cannot hold memory images). A failed save
    /// always falls back to the shutdown.
    pub stop_mode: StopMode,
    /// How long a call keeps retrying (with backoff) while libvirtd is unreachable.
    pub libvirt_retry_s: u64,
    /// Check the sha256 of each template file once before its first use.
    pub verify_checksums: bool,
    /// The pool of logical-gateway identities (one subdirectory each: agent.toml, instance.pub,
    /// gateway.key, credential): every new VM of a `role = "gateway"` template gets a free one.
    pub logical_dir: PathBuf,
    pub probe: ProbeConfig,
    /// A VM that dies without being stopped is restarted up to this many times, then reported
    /// failed and left stopped.
    pub restart_max: u32,
    /// The wait before the first restart, doubled for each further one up to `restart_backoff_max_ms`.
    pub restart_backoff_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// Running this long after a restart wins the whole budget back.
    pub restart_reset_s: u64,
    /// How often the supervisor looks for VMs that died.
    pub supervise_interval_ms: u64,
    /// This gateway's address (host name or IP) as the other gateways and the clients reach it,
    /// the one key for it: the host in the URL of a VM's service (`Response::AcquiredService`),
    /// and, since containers share the gateway's network, where a clustered role serves: it
    /// reaches each container as `BETAAS_ADDRESS` and fills `{address}` in a template's
    /// `[cluster] url`. Default: the host name. `service_host` is a deprecated alias.
    pub address: String,
    /// What the file says that still works but should change (a deprecated key): logged at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    ManagedSave,
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The template whose guest the probe boots (it must print its booted marker).
    pub template: String,
    /// Tried in this order; the first that boots is the capability.
    pub kinds: Vec<VirtKind>,
    /// How long a probe guest may take to print its marker (KVM that hangs takes all of it).
    pub timeout_s: u64,
    /// Probe when the daemon starts (else on the first Probe request).
    pub at_start: bool,
    /// Skip the probe and report this kind: for libvirt's test driver, which boots nothing.
    pub assume: Option<VirtKind>,
    /// Kinds proven by starting the guest (its QEMU still alive after a few seconds) instead of
    /// by its booted marker: emulation does not hang the way a broken KVM does, and on a slow
    /// gateway (or an emulated one) an emulated guest takes minutes to boot.
    pub start_only: Vec<VirtKind>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: field `{field}`: {message}")]
    Field {
        file: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

pub fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "arm" => Arch::Armhf,
        "aarch64" => Arch::Aarch64,
        _ => Arch::X86_64,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    socket: Option<PathBuf>,
    socket_user: Option<String>,
    socket_mode: Option<u32>,
    max_connections: Option<usize>,
    read_timeout_ms: Option<u64>,
    uri: Option<String>,
    lxc_uri: Option<String>,
    owner: Option<String>,
    name_prefix: Option<String>,
    state_dir: Option<PathBuf>,
    templates: Option<Vec<PathBuf>>,
    arch: Option<String>,
    idle_destroy_s: Option<u64>,
    reap_interval_s: Option<u64>,
    shutdown_timeout_s: Option<u64>,
    stop_mode: Option<String>,
    libvirt_retry_s: Option<u64>,
    verify_checksums: Option<bool>,
    logical_dir: Option<PathBuf>,
    service_host: Option<String>,
    probe: Option<RawProbe>,
    restart_max: Option<u32>,
    restart_backoff_ms: Option<u64>,
    restart_backoff_max_ms: Option<u64>,
    restart_reset_s: Option<u64>,
    supervise_interval_ms: Option<u64>,
    address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    template: Option<String>,
    kinds: Option<Vec<String>>,
    timeout_s: Option<u64>,
    at_start: Option<bool>,
    assume: Option<String>,
    start_only: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: "/run/betaas/vmd.sock".into(),
            socket_user: None,
            socket_mode: 0o600,
            max_connections: 8,
            read_timeout_ms: 30_000,
            uri: "qemu:///system".into(),
            lxc_uri: "lxc:///system".into(),
            owner: "betaas-vmd".into(),
            name_prefix: "betaas".into(),
            state_dir: "/var/lib/betaas/vms".into(),
            templates: vec!["/var/lib/betaas/templates".into()],
            arch: host_arch(),
            idle_destroy_s: 1800,
            reap_interval_s: 10,
            shutdown_timeout_s: 60,
            stop_mode: StopMode::ManagedSave,
            libvirt_retry_s: 15,
            verify_checksums: true,
            logical_dir: "/etc/betaas/logical".into(),
            probe: ProbeConfig {
                template: "tiny".into(),
                kinds: VirtKind::ALL.to_vec(),
                timeout_s: 30,
                at_start: true,
                assume: None,
                start_only: Vec::new(),
            },
            restart_max: 3,
            restart_backoff_ms: 1000,
            restart_backoff_max_ms: 60_000,
            restart_reset_s: 300,
            supervise_interval_ms: 1000,
            address: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into()),
            warnings: Vec::new(),
        }
    }
}

fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        })
        .map_or(0, |i| i + 1)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses `text`; `path` only names the file in errors (and makes relative paths in it
    /// relative to the file's directory, so a test config can say `templates = ["t"]`).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let field = |line: usize, field: &str, message: String| ConfigError::Field {
            file: path.to_owned(),
            line,
            field: field.to_owned(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            let key = e.message().split('`').nth(1).unwrap_or_default().to_owned();
            field(line, &key, e.message().trim().to_owned())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let d = Config::default();
        let arch = match raw.arch {
            None => d.arch,
            Some(a) => [Arch::X86_64, Arch::Armhf, Arch::Aarch64]
                .into_iter()
                .find(|x| x.as_str() == a)
                .ok_or_else(|| {
                    field(
                        line_of(text, "arch"),
                        "arch",
                        format!("{a:?}: accepted are x86_64, armhf, aarch64"),
                    )
                })?,
        };
        let mut probe = d.probe.clone();
        if let Some(p) = raw.probe {
            if let Some(t) = p.template {
                probe.template = t;
            }
            let kinds = |ks: Vec<String>, key: &str| {
                ks.iter()
                    .map(|k| {
                        VirtKind::parse(k).ok_or_else(|| {
                            field(
                                line_of(text, key),
                                &format!("probe.{key}"),
                                format!("{k:?}: accepted are kvm, qemu, lxc"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            if let Some(ks) = p.kinds {
                probe.kinds = kinds(ks, "kinds")?;
            }
            if let Some(ks) = p.start_only {
                probe.start_only = kinds(ks, "start_only")?;
            }
            if let Some(t) = p.timeout_s {
                probe.timeout_s = t;
            }
            if let Some(a) = p.at_start {
                probe.at_start = a;
            }
            if let Some(k) = p.assume {
                probe.assume = Some(VirtKind::parse(&k).ok_or_else(|| {
                    field(
                        line_of(text, "assume"),
                        "probe.assume",
                        format!("{k:?}: accepted are kvm, qemu, lxc"),
                    )
                })?);
            }
        }
        let owner = raw.owner.unwrap_or(d.owner);
        let name_prefix = raw.name_prefix.unwrap_or(d.name_prefix);
        for (key, v) in [("owner", &owner), ("name_prefix", &name_prefix)] {
            let ok = !v.is_empty()
                && v.len() <= 40
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(field(
                    line_of(text, key),
                    key,
                    format!("{v:?}: use 1 to 40 letters, digits, `-` or `_`"),
                ));
            }
        }
        let stop_mode = match raw.stop_mode.as_deref() {
            None | Some("managed-save") => StopMode::ManagedSave,
            Some("shutdown") => StopMode::Shutdown,
            Some(other) => {
                return Err(field(
                    line_of(text, "stop_mode"),
                    "stop_mode",
                    format!("{other:?}: accepted are \"managed-save\", \"shutdown\""),
                ))
            }
        };
        let reap_interval_s = raw.reap_interval_s.unwrap_or(d.reap_interval_s);
        if reap_interval_s == 0 {
            return Err(field(
                line_of(text, "reap_interval_s"),
                "reap_interval_s",
                "0: give at least 1 second".into(),
            ));
        }
        let supervise_interval_ms = raw.supervise_interval_ms.unwrap_or(d.supervise_interval_ms);
        if !(50..=3_600_000).contains(&supervise_interval_ms) {
            return Err(field(
                line_of(text, "supervise_interval_ms"),
                "supervise_interval_ms",
                format!("{supervise_interval_ms}: accepted are 50..=3600000"),
            ));
        }
        let restart_backoff_ms = raw.restart_backoff_ms.unwrap_or(d.restart_backoff_ms);
        let restart_backoff_max_ms = raw
            .restart_backoff_max_ms
            .unwrap_or(d.restart_backoff_max_ms);
        if restart_backoff_max_ms < restart_backoff_ms {
            return Err(field(
                line_of(text, "restart_backoff_max_ms"),
                "restart_backoff_max_ms",
                format!(
                    "{restart_backoff_max_ms}: below restart_backoff_ms ({restart_backoff_ms})"
                ),
            ));
        }
        let socket_mode = raw.socket_mode.unwrap_or(d.socket_mode);
        if socket_mode & !0o777 != 0 || socket_mode & 0o600 != 0o600 {
            return Err(field(
                line_of(text, "socket_mode"),
                "socket_mode",
                format!(
                    "{socket_mode:#o}: permission bits (at most 0o777) with read and write for the owner"
                ),
            ));
        }
        let max_connections = raw.max_connections.unwrap_or(d.max_connections);
        if !(1..=1024).contains(&max_connections) {
            return Err(field(
                line_of(text, "max_connections"),
                "max_connections",
                format!("{max_connections}: accepted are 1..=1024"),
            ));
        }
        let read_timeout_ms = raw.read_timeout_ms.unwrap_or(d.read_timeout_ms);
        let mut warnings = Vec::new();
        let address = match (raw.address, raw.service_host) {
            (Some(a), Some(s)) if a != s => {
                return Err(field(
                    line_of(text, "service_host"),
                    "service_host",
                    format!(
                        "{s:?} differs from address {a:?}: service_host is a deprecated alias of \
                         address (the gateway's address); keep address only"
                    ),
                ))
            }
            (Some(a), Some(_)) => {
                warnings.push(format!(
                    "{}:{}: service_host is a deprecated alias of address (same value here): remove it",
                    path.display(),
                    line_of(text, "service_host")
                ));
                a
            }
            (None, Some(s)) => {
                warnings.push(format!(
                    "{}:{}: service_host is deprecated: rename it to address (the gateway's \
                     address, for service URLs and cluster roles alike)",
                    path.display(),
                    line_of(text, "service_host")
                ));
                s
            }
            (a, None) => a.unwrap_or(d.address),
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(field(
                line_of(text, "address"),
                "address",
                format!("{address:?}: a host name or IP address"),
            ));
        }
        if !(100..=3_600_000).contains(&read_timeout_ms) {
            return Err(field(
                line_of(text, "read_timeout_ms"),
                "read_timeout_ms",
                format!("{read_timeout_ms}: accepted are 100..=3600000"),
            ));
        }
        Ok(Config {
            socket: raw.socket.map(abs).unwrap_or(d.socket),
            socket_user: raw.socket_user,
            socket_mode,
            max_connections,
            read_timeout_ms,
            uri: raw.uri.unwrap_or(d.uri),
            lxc_uri: raw.lxc_uri.unwrap_or(d.lxc_uri),
            owner,
            name_prefix,
            state_dir: raw.state_dir.map(abs).unwrap_or(d.state_dir),
            templates: raw
                .templates
                .map(|v| v.into_iter().map(abs).collect())
                .unwrap_or(d.templates),
            arch,
            idle_destroy_s: raw.idle_destroy_s.unwrap_or(d.idle_destroy_s),
            reap_interval_s,
            shutdown_timeout_s: raw.shutdown_timeout_s.unwrap_or(d.shutdown_timeout_s),
            stop_mode,
            libvirt_retry_s: raw.libvirt_retry_s.unwrap_or(d.libvirt_retry_s),
            verify_checksums: raw.verify_checksums.unwrap_or(d.verify_checksums),
            logical_dir: raw.logical_dir.map(abs).unwrap_or(d.logical_dir),
            probe,
            restart_max: raw.restart_max.unwrap_or(d.restart_max),
            restart_backoff_ms,
            restart_backoff_max_ms,
            restart_reset_s: raw.restart_reset_s.unwrap_or(d.restart_reset_s),
            supervise_interval_ms,
            address,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse(Path::new("/etc/betaas/vmd.toml"), "").expect("ok");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let c = Config::parse(
            Path::new("/tmp/x/vmd.toml"),
            "templates = [\"t\", \"/abs\"]\nstate_dir = \"vms\"\nlogical_dir = \"logical\"\n[probe]\nkinds = [\"qemu\"]\n",
        )
        .expect("ok");
        assert_eq!(
            c.templates,
            [PathBuf::from("/tmp/x/t"), PathBuf::from("/abs")]
        );
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x/vms"));
        assert_eq!(c.logical_dir, PathBuf::from("/tmp/x/logical"));
        assert_eq!(c.probe.kinds, [VirtKind::Qemu]);
    }

    #[test]
    fn probe_start_only_kinds_are_parsed_and_checked() {
        // The gateway image's own file parses, with TCG proven by starting only.
        let image = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../image/rootfs/etc/betaas/vmd.toml"
        ))
        .expect("image vmd.toml");
        let c = Config::parse(Path::new("/etc/betaas/vmd.toml"), &image).expect("image config");
        assert_eq!(c.probe.start_only, [VirtKind::Qemu]);
        assert_eq!(
            c.probe.kinds,
            [VirtKind::Kvm, VirtKind::Lxc, VirtKind::Qemu]
        );
        assert_eq!(c.socket, PathBuf::from("/run/betaas/vmd.sock"));
        assert_eq!(c.socket_mode, 0o600);
        let e = Config::parse(
            Path::new("/e/vmd.toml"),
            "[probe]\nstart_only = [\"tcg\"]\n",
        )
        .expect_err("bad kind");
        assert!(
            e.to_string()
                .starts_with("/e/vmd.toml:2: field `probe.start_only`: \"tcg\""),
            "{e}"
        );
    }

    #[test]
    fn address_is_the_one_key_and_service_host_a_deprecated_alias() {
        let p = Path::new("/e/vmd.toml");
        let c = Config::parse(p, "address = \"10.0.0.7\"\n").expect("ok");
        assert_eq!((c.address.as_str(), c.warnings.len()), ("10.0.0.7", 0));
        let c =
            Config::parse(p, "uri = \"qemu:///system\"\nservice_host = \"gw7.lan\"\n").expect("ok");
        assert_eq!(c.address, "gw7.lan");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0]
                .starts_with("/e/vmd.toml:2: service_host is deprecated: rename it to address"),
            "{:?}",
            c.warnings
        );
        let c =
            Config::parse(p, "address = \"gw7\"\nservice_host = \"gw7\"\n").expect("same value");
        assert_eq!((c.address.as_str(), c.warnings.len()), ("gw7", 1));
        let e = Config::parse(p, "address = \"10.0.0.7\"\nservice_host = \"gw7\"\n")
            .expect_err("both, differing");
        assert!(
            e.to_string()
                .starts_with("/e/vmd.toml:2: field `service_host`: \"gw7\" differs from address"),
            "{e}"
        );
        let e = Config::parse(p, "service_host = \"a b\"\n").expect_err("not a host");
        assert!(e.to_string().contains("field `address`"), "{e}");
    }

    #[test]
    fn errors_name_file_line_field_and_accepted_values() {
        let e = Config::parse(Path::new("/e/vmd.toml"), "uri = \"x\"\narch = \"mips\"\n")
            .expect_err("bad arch");
        assert_eq!(
            e.to_string(),
            "/e/vmd.toml:2: field `arch`: \"mips\": accepted are x86_64, armhf, aarch64"
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "\n[probe]\nkinds = [\"xen\"]\n")
            .expect_err("bad kind");
        assert!(
            e.to_string()
                .starts_with("/e/vmd.toml:3: field `probe.kinds`"),
            "{e}"
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "\n\nsockett = \"/x\"\n")
            .expect_err("unknown field");
        assert!(
            e.to_string().starts_with("/e/vmd.toml:3: field `sockett`"),
            "{e}"
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "\nstop_mode = \"hibernate\"\n")
            .expect_err("stop mode");
        assert_eq!(
            e.to_string(),
            "/e/vmd.toml:2: field `stop_mode`: \"hibernate\": accepted are \"managed-save\", \"shutdown\""
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "owner = \"a b\"\n").expect_err("owner");
        assert!(e.to_string().contains("field `owner`"), "{e}");
        let e = Config::parse(
            Path::new("/e/vmd.toml"),
            "restart_backoff_ms = 500\nrestart_backoff_max_ms = 100\n",
        )
        .expect_err("backoff");
        assert_eq!(
            e.to_string(),
            "/e/vmd.toml:2: field `restart_backoff_max_ms`: 100: below restart_backoff_ms (500)"
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "supervise_interval_ms = 0\n")
            .expect_err("interval");
        assert!(e.to_string().contains("50..=3600000"), "{e}");
        let e =
            Config::parse(Path::new("/e/vmd.toml"), "socket_mode = 0o4777\n").expect_err("mode");
        assert!(
            e.to_string()
                .starts_with("/e/vmd.toml:1: field `socket_mode`: 0o4777"),
            "{e}"
        );
        let e = Config::parse(Path::new("/e/vmd.toml"), "socket_mode = 0o066\n").expect_err("mode");
        assert!(e.to_string().contains("for the owner"), "{e}");
        let e =
            Config::parse(Path::new("/e/vmd.toml"), "\nmax_connections = 0\n").expect_err("max");
        assert!(
            e.to_string()
                .starts_with("/e/vmd.toml:2: field `max_connections`"),
            "{e}"
        );
        let e =
            Config::parse(Path::new("/e/vmd.toml"), "read_timeout_ms = 5\n").expect_err("timeout");
        assert!(e.to_string().contains("100..=3600000"), "{e}");
    }
}
