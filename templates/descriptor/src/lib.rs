//! VM template descriptors: `templates/<name>/template.toml` (the recipe's source, checksums not yet
//! known) and `out/templates/<name>[-<arch>]/template.toml` (written by the recipe next to the files
//! it built, with their sha256). The format is documented in `templates/README.md`.
//!
//! Pure: [`Template::parse`] and [`check_source`] take the text; only [`Template::load`] touches the
//! filesystem (reads the descriptor, checks that the files it names exist). Every error names the
//! file, the line and the field (`image.sha256`), like the agent's config errors.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The descriptor's file name inside a template directory.
pub const DESCRIPTOR: &str = "template.toml";

/// A validated template whose every file has a checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The directory the descriptor lives in: file paths are relative to it.
    pub dir: PathBuf,
    /// Letters, digits and `-`; also the prefix of the domains made from it.
    pub name: String,
    pub role: Role,
    pub description: String,
    /// What the guest runs (services, roles), for humans and the service layer.
    pub runs: Vec<String>,
    /// What a VM of this template gets at least (the allocator may give more).
    pub resources: Resources,
    /// Virtualization kinds it can run under (non-empty, no duplicates).
    pub kinds: Vec<VirtKind>,
    /// Guest architectures of the image (non-empty, no duplicates).
    pub arch: Vec<Arch>,
    pub image: Image,
    pub boot: Boot,
    /// A line on the serial console containing this text means "booted".
    pub booted_marker: String,
    /// `[console] ready`: a line containing this means the guest's service answers (optional).
    pub ready_marker: Option<String>,
    /// Present exactly when `kinds` contains `lxc`.
    pub lxc: Option<Lxc>,
    /// The guest's network interface, when it needs one (`[network]`); none otherwise.
    pub network: Option<Network>,
    /// `[cluster]`: the template is one role of a clustered service (big data).
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: how a clustered role finds its master. A master or storage node names the URL it
/// serves at (`{address}` is the gateway's address as the cluster reaches it); a worker names the
/// master's template and the environment variable its start gets the master's URL in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub role: ClusterRole,
    /// master, storage: e.g. `spark://{address}:7077`.
    pub url: Option<String>,
    /// worker: the master's template.
    pub master: Option<String>,
    /// worker: the variable that carries the master's URL into the guest (e.g. `SPARK_MASTER`).
    pub master_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    Master,
    Worker,
    Storage,
}

impl Cluster {
    /// The URL with `{address}` replaced.
    pub fn url_at(&self, address: &str) -> Option<String> {
        self.url.as_ref().map(|u| u.replace("{address}", address))
    }
}

/// `[network]`: how the guest is connected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub mode: NetworkMode,
    /// The guest's service ports (TCP). The VM manager gives each a host port: forwarded to the
    /// guest's port under QEMU, listened on by the guest itself in a container (which shares the
    /// host's network). Empty: nothing reaches the guest from outside.
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// QEMU's user-mode networking (libvirt `<interface type='user'>`, a virtio NIC): the guest is
    /// 10.0.2.15/24, the host's loopback is reachable at 10.0.2.2, DNS at 10.0.2.3; nothing to
    /// set up on the host and nothing reaches the guest from outside.
    User,
}

/// vCPUs, memory and disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
}

/// The base disk image every VM gets a copy-on-write overlay of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub file: FileRef,
    pub format: ImageFormat,
    /// The least the image boots with; `Template::resources` is never below it.
    pub min: Resources,
}

/// A file next to the descriptor and its expected sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Relative to [`Template::dir`], never absolute, never `..`.
    pub path: PathBuf,
    pub sha256: Sha256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot (libvirt `<kernel>`, `<initrd>`, `<cmdline>`); the disk is attached as vda.
    Kernel {
        kernel: FileRef,
        initrd: Option<FileRef>,
        /// Without `console=`: see [`Template::cmdline`].
        cmdline: String,
    },
    /// The image boots by itself (bootloader in the disk).
    Disk,
}

/// How the template runs as a Linux container (libvirt's lxc driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lxc {
    /// A tarball of the root filesystem, unpacked once per container.
    pub rootfs: FileRef,
    /// The container's init, an absolute path inside the rootfs.
    pub init: String,
    /// `shared = true`: the rootfs is unpacked once per gateway and each container's root is a
    /// tree of hard links to it (seconds and no space, instead of a copy of a large rootfs). Only
    /// for guests that never modify an existing file in place (they create new files).
    pub shared: bool,
}

/// The paper's template roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Storage,
    Compute,
    AppLight,
    AppHeavy,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtKind {
    /// Hardware virtualization (libvirt domain type `kvm`).
    Kvm,
    /// Emulation, TCG (libvirt domain type `qemu`).
    Qemu,
    /// Linux containers (libvirt's lxc driver): needs [`Template::lxc`].
    Lxc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    /// 32-bit ARMv7 hard-float (Cubietruck, QEMU `-M virt -cpu cortex-a15`).
    #[serde(rename = "armhf")]
    Armhf,
    #[serde(rename = "aarch64")]
    Aarch64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

/// A sha256 as 64 lowercase hexadecimal digits (uppercase input is accepted and lowered).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Sha256(String);

impl Sha256 {
    pub fn as_hex(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256 {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!(
                "a sha256 is 64 hexadecimal digits (as `sha256sum` prints), got {} characters",
                s.chars().count()
            ));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "a sha256 is 64 hexadecimal digits, {c:?} is not one"
            ));
        }
        Ok(Sha256(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Arch {
    /// The serial console device the guest kernel writes to under QEMU/libvirt.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Armhf | Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The name used in descriptors (and in `out/templates/<name>-<arch>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Armhf => "armhf",
            Arch::Aarch64 => "aarch64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Storage => "storage",
            Role::Compute => "compute",
            Role::AppLight => "app-light",
            Role::AppHeavy => "app-heavy",
            Role::Gateway => "gateway",
        }
    }
}

impl VirtKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtKind::Kvm => "kvm",
            VirtKind::Qemu => "qemu",
            VirtKind::Lxc => "lxc",
        }
    }
}

/// A descriptor error with its place in the file.
pub type DescriptorError = betaas_tomlplace::PlacedError;

impl Template {
    /// Parses and validates a built template's descriptor: every file needs its sha256.
    /// `path` names the descriptor in errors; its directory becomes [`Template::dir`].
    pub fn parse(path: &Path, text: &str) -> Result<Template, DescriptorError> {
        Template::build(path, text, Sums::Required)
    }

    /// Reads `path` (a descriptor, or a directory holding `template.toml`), validates it and checks
    /// that every file it names exists. Checksums are not recomputed: see [`Template::files`].
    pub fn load(path: &Path) -> Result<Template, DescriptorError> {
        let path = if path.is_dir() {
            path.join(DESCRIPTOR)
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&path).map_err(|e| DescriptorError {
            file: path.clone(),
            line: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let t = Template::parse(&path, &text)?;
        for (field, f) in t.files() {
            let full = t.dir.join(&f.path);
            if !full.is_file() {
                let (table, key) = field.split_once('.').unwrap_or(("", field));
                return Err(DescriptorError {
                    file: path.clone(),
                    line: key_line(&text, table, key),
                    field: field.to_owned(),
                    message: format!(
                        "{} does not exist (build the template first)",
                        full.display()
                    ),
                });
            }
        }
        Ok(t)
    }

    /// Every file the template needs with the field naming it (`image.file`, `boot.kernel`,
    /// `boot.initrd`, `lxc.rootfs`): verify them with sha256 before use. A container-only
    /// template (`kinds = ["lxc"]`) needs no VM files: a gateway can ship just the rootfs.
    pub fn files(&self) -> Vec<(&'static str, &FileRef)> {
        let mut v = Vec::new();
        if self.kinds.iter().any(|k| *k != VirtKind::Lxc) {
            v.push(("image.file", &self.image.file));
            if let Boot::Kernel { kernel, initrd, .. } = &self.boot {
                v.push(("boot.kernel", kernel));
                if let Some(i) = initrd {
                    v.push(("boot.initrd", i));
                }
            }
        }
        if let Some(l) = &self.lxc {
            v.push(("lxc.rootfs", &l.rootfs));
        }
        v
    }

    /// Absolute (or `dir`-relative) path of one of the template's files.
    pub fn path_of(&self, f: &FileRef) -> PathBuf {
        self.dir.join(&f.path)
    }

    pub fn supports(&self, kind: VirtKind, arch: Arch) -> bool {
        self.kinds.contains(&kind) && self.arch.contains(&arch)
    }

    /// The kernel command line for `arch` with its serial console appended (`console=ttyS0` on
    /// x86_64, `console=ttyAMA0` on ARM); `None` for disk boot.
    pub fn cmdline(&self, arch: Arch) -> Option<String> {
        match &self.boot {
            Boot::Kernel { cmdline, .. } => {
                let console = format!("console={}", arch.serial_console());
                Some(if cmdline.is_empty() {
                    console
                } else {
                    format!("{cmdline} {console}")
                })
            }
            Boot::Disk => None,
        }
    }

    fn build(path: &Path, text: &str, sums: Sums) -> Result<Template, DescriptorError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let (line, field) = match e.span() {
                Some(span) => locate(text, span.start),
                None => (0, String::new()),
            };
            DescriptorError {
                file: path.to_owned(),
                line,
                field,
                message: e.message().trim().to_owned(),
            }
        })?;
        let err = |table: &str, key: &str, message: String| DescriptorError {
            file: path.to_owned(),
            line: key_line(text, table, key),
            field: if table.is_empty() {
                key.to_owned()
            } else if key.is_empty() {
                table.to_owned()
            } else {
                format!("{table}.{key}")
            },
            message,
        };
        let sum = |s: Option<Sha256>, table: &str, key: &str, of: &str| match (s, sums) {
            (Some(s), _) => Ok(s),
            (None, Sums::Optional) => Ok(Sha256("0".repeat(64))),
            (None, Sums::Required) => Err(err(
                table,
                key,
                format!("missing: the sha256 of {of} (written by the template's build.sh)"),
            )),
        };

        for (key, r) in [("vcpus", 1), ("memory_mb", 16), ("disk_gb", 1)] {
            let v = match key {
                "vcpus" => u64::from(raw.resources.vcpus),
                "memory_mb" => raw.resources.memory_mb,
                _ => raw.resources.disk_gb,
            };
            if v < r {
                return Err(err(
                    "resources",
                    key,
                    format!("{v} is below the least possible, {r}"),
                ));
            }
        }
        let min = Resources {
            vcpus: raw.image.min_vcpus,
            memory_mb: raw.image.min_memory_mb,
            disk_gb: raw.image.min_disk_gb,
        };
        for (key, have, need) in [
            (
                "vcpus",
                u64::from(raw.resources.vcpus),
                u64::from(min.vcpus),
            ),
            ("memory_mb", raw.resources.memory_mb, min.memory_mb),
            ("disk_gb", raw.resources.disk_gb, min.disk_gb),
        ] {
            if have < need {
                return Err(err(
                    "resources",
                    key,
                    format!("{have} is below the image's minimum: [image] min_{key} = {need}"),
                ));
            }
        }
        let v = &raw.virtualization;
        if v.kinds.is_empty() {
            return Err(err(
                "virtualization",
                "kinds",
                "empty: give one or more of kvm, qemu, lxc".into(),
            ));
        }
        if let Some(k) = duplicate(&v.kinds) {
            return Err(err(
                "virtualization",
                "kinds",
                format!("{} is listed twice", k.as_str()),
            ));
        }
        if v.arch.is_empty() {
            return Err(err(
                "virtualization",
                "arch",
                "empty: give one or more of x86_64, armhf, aarch64".into(),
            ));
        }
        if let Some(a) = duplicate(&v.arch) {
            return Err(err(
                "virtualization",
                "arch",
                format!("{a} is listed twice"),
            ));
        }
        let image = Image {
            name: raw.image.name.0,
            file: FileRef {
                path: raw.image.file.0,
                sha256: sum(raw.image.sha256, "image", "sha256", "the image file")?,
            },
            format: raw.image.format,
            min,
        };
        let wants_lxc = v.kinds.contains(&VirtKind::Lxc);
        let lxc = match (raw.lxc, wants_lxc) {
            (Some(l), true) => {
                if !l.init.starts_with('/') {
                    return Err(err(
                        "lxc",
                        "init",
                        format!("{:?} is not an absolute path", l.init),
                    ));
                }
                Some(Lxc {
                    rootfs: FileRef {
                        path: l.rootfs.0,
                        sha256: sum(
                            l.rootfs_sha256,
                            "lxc",
                            "rootfs_sha256",
                            "the rootfs tarball",
                        )?,
                    },
                    init: l.init,
                    shared: l.shared,
                })
            }
            (None, true) => {
                return Err(err(
                    "virtualization",
                    "kinds",
                    "lxc needs an [lxc] table (rootfs tarball and init)".into(),
                ))
            }
            (Some(_), false) => {
                return Err(err(
                    "lxc",
                    "",
                    "[lxc] without lxc in virtualization.kinds".into(),
                ))
            }
            (None, false) => None,
        };
        let b = raw.boot;
        let boot = match b.method {
            BootMethod::Kernel => {
                let Some(kernel) = b.kernel else {
                    return Err(err(
                        "boot",
                        "kernel",
                        "missing: method = \"kernel\" needs a kernel file".into(),
                    ));
                };
                let kernel = FileRef {
                    path: kernel.0,
                    sha256: sum(b.kernel_sha256, "boot", "kernel_sha256", "the kernel")?,
                };
                let initrd = match b.initrd {
                    Some(i) => Some(FileRef {
                        path: i.0,
                        sha256: sum(b.initrd_sha256, "boot", "initrd_sha256", "the initrd")?,
                    }),
                    None if b.initrd_sha256.is_some() => {
                        return Err(err(
                            "boot",
                            "initrd_sha256",
                            "given without `initrd`".into(),
                        ))
                    }
                    None => None,
                };
                let cmdline = b.cmdline.unwrap_or_default();
                if cmdline
                    .split_whitespace()
                    .any(|w| w.starts_with("console="))
                {
                    return Err(err(
                        "boot",
                        "cmdline",
                        "no console= here: the VM manager appends the architecture's serial console".into(),
                    ));
                }
                Boot::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                }
            }
            BootMethod::Disk => {
                for (key, set) in [
                    ("kernel", b.kernel.is_some()),
                    ("initrd", b.initrd.is_some()),
                    ("cmdline", b.cmdline.is_some()),
                    ("kernel_sha256", b.kernel_sha256.is_some()),
                    ("initrd_sha256", b.initrd_sha256.is_some()),
                ] {
                    if set {
                        return Err(err("boot", key, "only for method = \"kernel\"".into()));
                    }
                }
                Boot::Disk
            }
        };
        // A container with service ports shares the host's network; without ports a [network]
        // would only mean QEMU's user-mode network, which a container cannot have.
        if raw.network.as_ref().is_some_and(|n| n.ports.is_empty()) && wants_lxc {
            return Err(err(
                "network",
                "mode",
                "user-mode networking is QEMU's: not with lxc in virtualization.kinds \
                 (unless the template declares service ports)"
                    .into(),
            ));
        }
        if let Some(n) = &raw.network {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(p) = n.ports.iter().find(|p| **p == 0 || !seen.insert(**p)) {
                return Err(err(
                    "network",
                    "ports",
                    format!("{p}: ports are 1..=65535, each once"),
                ));
            }
        }
        if raw
            .console
            .ready
            .as_ref()
            .is_some_and(|r| r.trim().is_empty())
        {
            return Err(err(
                "console",
                "ready",
                "empty: give the text of the line that means the service answers, or leave it out"
                    .into(),
            ));
        }
        if let Some(c) = &raw.cluster {
            type Keys<'a> = &'a [(&'a str, bool)];
            let (need, forbid): (Keys, Keys) = match c.role {
                ClusterRole::Worker => (
                    &[
                        ("master", c.master.is_some()),
                        ("master_env", c.master_env.is_some()),
                    ],
                    &[("url", c.url.is_some())],
                ),
                _ => (
                    &[("url", c.url.is_some())],
                    &[
                        ("master", c.master.is_some()),
                        ("master_env", c.master_env.is_some()),
                    ],
                ),
            };
            for (key, set) in need {
                if !set {
                    return Err(err("cluster", key, "required for this role".into()));
                }
            }
            for (key, set) in forbid {
                if *set {
                    return Err(err("cluster", key, "not for this role".into()));
                }
            }
            let env_ok = |v: &str| {
                !v.is_empty()
                    && !v.starts_with(|ch: char| ch.is_ascii_digit())
                    && v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            };
            if let Some(v) = &c.master_env {
                if !env_ok(v) {
                    return Err(err(
                        "cluster",
                        "master_env",
                        format!("{v:?}: an environment variable name (letters, digits, _)"),
                    ));
                }
            }
            if !wants_lxc && c.master_env.is_some() {
                return Err(err(
                    "cluster",
                    "master_env",
                    "the environment reaches containers only: needs lxc in virtualization.kinds"
                        .into(),
                ));
            }
        }
        if raw.console.booted.trim().is_empty() {
            return Err(err(
                "console",
                "booted",
                "empty: give the text of the line that means booted".into(),
            ));
        }
        Ok(Template {
            dir: path.parent().map(Path::to_owned).unwrap_or_default(),
            name: raw.name.0,
            role: raw.role,
            description: raw.description,
            runs: raw.runs,
            resources: raw.resources,
            kinds: raw.virtualization.kinds,
            arch: raw.virtualization.arch,
            image,
            boot,
            booted_marker: raw.console.booted,
            ready_marker: raw.console.ready,
            lxc,
            network: raw.network,
            cluster: raw.cluster,
        })
    }
}

/// Validates a recipe's source descriptor (`templates/<name>/template.toml`): everything
/// [`Template::parse`] checks except that checksums may be absent (the recipe adds them to the
/// copy it writes next to what it built).
pub fn check_source(path: &Path, text: &str) -> Result<(), DescriptorError> {
    Template::build(path, text, Sums::Optional).map(|_| ())
}

#[derive(Clone, Copy)]
enum Sums {
    Required,
    Optional,
}

fn duplicate<T: PartialEq + Copy>(v: &[T]) -> Option<T> {
    v.iter()
        .enumerate()
        .find(|(i, x)| v[..*i].contains(x))
        .map(|(_, x)| *x)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Name,
    role: Role,
    #[serde(default)]
    description: String,
    #[serde(default)]
    runs: Vec<String>,
    resources: Resources,
    virtualization: RawVirt,
    image: RawImage,
    boot: RawBoot,
    console: RawConsole,
    lxc: Option<RawLxc>,
    network: Option<Network>,
    cluster: Option<Cluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirt {
    kinds: Vec<VirtKind>,
    arch: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Name,
    file: RelPath,
    format: ImageFormat,
    sha256: Option<Sha256>,
    min_vcpus: u32,
    min_memory_mb: u64,
    min_disk_gb: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum BootMethod {
    Kernel,
    Disk,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    method: BootMethod,
    kernel: Option<RelPath>,
    kernel_sha256: Option<Sha256>,
    initrd: Option<RelPath>,
    initrd_sha256: Option<Sha256>,
    cmdline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    booted: String,
    ready: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLxc {
    rootfs: RelPath,
    rootfs_sha256: Option<Sha256>,
    init: String,
    #[serde(default)]
    shared: bool,
}

/// Letters, digits and `-`, 1..=63 characters, starting with a letter or digit.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Name(String);

impl TryFrom<String> for Name {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=63).contains(&s.len())
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if ok {
            Ok(Name(s))
        } else {
            Err(format!(
                "{s:?}: use 1 to 63 letters, digits, `-`, `_` or `.`, not starting with `-`"
            ))
        }
    }
}

/// A path relative to the descriptor's directory that stays inside it.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct RelPath(PathBuf);

impl TryFrom<String> for RelPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let p = PathBuf::from(&s);
        if s.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!(
                "{s:?}: give a path relative to the descriptor's directory, without `..`"
            ));
        }
        Ok(RelPath(p))
    }
}

use betaas_tomlplace::locate;

/// Line of `key = …` in `[table]` (top level when empty), else of the header, else 0.
fn key_line(text: &str, table: &str, key: &str) -> usize {
    betaas_tomlplace::key_line(text, table, 0, key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests;
