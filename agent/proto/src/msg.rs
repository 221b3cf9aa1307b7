//! The messages: one request enum, one response enum, and the value types they carry.
//!
//! Postcard encodes enum variants by their index, so variants are only ever appended, never
//! reordered or removed, within one [`crate::VERSION`]. An incompatible change bumps the version.

use serde::{Deserialize, Serialize};

/// What the agent asks the VM manager. VMs are named by the name the daemon gave them at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The gateway's virtualization capability (the result of the daemon's real probe). `refresh`
    /// runs the probe again instead of returning the cached result (it boots a guest: seconds).
    Probe { refresh: bool },
    /// Define a new VM from a template (domain + copy-on-write overlay of the base image). Not started.
    Create { template: String },
    /// The allocator's "run one of these": resume a stopped VM of this template if there is one,
    /// else create and start a new one. The paper's reason to stop rather than destroy.
    Acquire { template: String },
    /// Cold start of a defined VM (from its managed save if it has one).
    Start { vm: String },
    /// Stop: managed save (the VM's memory to disk), ACPI shutdown as the fallback.
    Stop { vm: String },
    /// Start from the managed save; refused if there is none.
    Resume { vm: String },
    /// Hard power-off; the definition and overlay stay.
    Destroy { vm: String },
    /// Power off if needed, remove the managed save, the definition, the overlay and the serial log.
    Undefine { vm: String },
    /// Every VM this daemon manages (never foreign domains).
    List,
    /// CPU time, memory and disk of one VM, for the resources monitor.
    Stats { vm: String },
    /// `Acquire` for a template with service ports (`[network] ports`), with the application to
    /// run: a WAR file the agent fetched and checked, handed to the guest (a container's shared
    /// directory, a VM's seed disk) as its ROOT.war. Answered `AcquiredService`.
    AcquireService {
        template: String,
        war: Option<WarFile>,
    },
    /// `Acquire` with an environment for the guest (a container's init gets it; a clustered
    /// worker its master's URL). A stopped VM is reused only if it was made with the same
    /// environment. Answered `AcquiredAt`.
    AcquireWith {
        template: String,
        env: Vec<(String, String)>,
    },
}

/// An application archive on the gateway's disk, for the VM manager to hand to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarFile {
    /// Absolute path, readable by the daemon.
    pub path: String,
    /// Hex sha256 the copy handed to the guest must have.
    pub sha256: String,
}

/// A guest's service port and the host port where it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub guest: u16,
    pub host: u16,
}

/// What the daemon answers; exactly one response per request, with the request's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Capability(Capability),
    /// The VM after the operation (create, acquire, start, stop, resume, destroy).
    Vm(VmInfo),
    /// Undefine succeeded: nothing of the VM is left.
    Undefined {
        vm: String,
    },
    Vms(Vec<VmInfo>),
    Stats(VmStats),
    Error(ErrorReply),
    /// The answer to `Acquire`: the VM, running, and whether it was a stopped one brought back
    /// (`true`) or a new one created and started.
    Acquired {
        vm: VmInfo,
        resumed: bool,
    },
    /// The answer to `AcquireService`: as `Acquired`, plus where the service answers: each
    /// declared port's host port, `url` for the first (`http://<address>:<port>/`) and the
    /// template's readiness marker (its console prints it once the service answers).
    AcquiredService {
        vm: VmInfo,
        resumed: bool,
        ports: Vec<PortMap>,
        url: Option<String>,
        ready_marker: Option<String>,
    },
    /// The answer to `AcquireWith`: as `Acquired`, plus the URL the guest serves at when its
    /// template is a clustered master or storage node (`[cluster] url` at this gateway's address).
    AcquiredAt {
        vm: VmInfo,
        resumed: bool,
        url: Option<String>,
    },
}

/// How a guest runs. The allocator treats `Kvm` > `Qemu` (emulation, slow) and `Lxc` (containers,
/// light, no own kernel) as different capacities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum VirtKind {
    Kvm,
    Qemu,
    Lxc,
}

impl VirtKind {
    pub const ALL: [VirtKind; 3] = [VirtKind::Kvm, VirtKind::Qemu, VirtKind::Lxc];

    pub fn as_str(self) -> &'static str {
        match self {
            VirtKind::Kvm => "kvm",
            VirtKind::Qemu => "qemu",
            VirtKind::Lxc => "lxc",
        }
    }

    pub fn parse(s: &str) -> Option<VirtKind> {
        VirtKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for VirtKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VM's state as the daemon sees it (libvirt's state plus "has a managed save").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Defined, never started or powered off without a managed save.
    ShutOff,
    Running,
    Paused,
    /// Stopped with its memory saved: resume is fast.
    Saved,
    Crashed,
    /// libvirt reported something else (blocked, pmsuspended, ...).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub template: String,
    pub kind: VirtKind,
    pub state: VmState,
    /// Unix seconds when the daemon created it.
    pub created_s: u64,
    /// Unix seconds when it was last stopped on request (the idle clock). `None` while it runs,
    /// and for a VM that died without being stopped: the daemon restarts that one.
    pub stopped_s: Option<u64>,
    /// Times the daemon restarted it after it died without being stopped (since it last ran for
    /// the reset time, or was started on request).
    pub restarts: u32,
    /// It kept dying: the restart budget is spent and it is left stopped (its idle clock runs).
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    pub state: VmState,
    /// Guest CPU time consumed, all vCPUs (ns).
    pub cpu_time_ns: u64,
    pub vcpus: u32,
    /// Memory currently given to the guest and its maximum (KiB).
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    /// The overlay: virtual size, bytes allocated on the host.
    pub disk_capacity_bytes: u64,
    pub disk_allocation_bytes: u64,
}

/// One probe attempt: did a tiny guest of this kind actually start?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub kind: VirtKind,
    pub ok: bool,
    /// Why not (the hypervisor's words), or what was seen.
    pub detail: String,
    pub millis: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// The kind new VMs will use (the first that worked in KVM, QEMU, LXC order); `None`: cannot virtualize.
    pub best: Option<VirtKind>,
    pub probes: Vec<ProbeResult>,
    /// Host architecture as libvirt names it (`x86_64`, `armv7l`).
    pub arch: String,
    /// Unix seconds of the probe.
    pub probed_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

/// What went wrong, coarse enough for the agent to act on (retry, choose another gateway, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame could not be read (length, truncation); the connection is closed after this reply.
    BadFrame,
    /// The frame's version byte is not [`crate::VERSION`].
    UnsupportedVersion,
    /// The payload is not a request this version knows.
    UnknownMessage,
    NoSuchVm,
    NoSuchTemplate,
    /// The template descriptor or its image is unusable (named in the message).
    BadTemplate,
    /// A domain exists by that name but this daemon did not create it: never touched.
    Foreign,
    /// The operation does not apply in the VM's state (e.g. resume without a managed save).
    InvalidState,
    /// libvirtd is not reachable (after retries): try again later.
    HypervisorUnavailable,
    /// libvirt refused or failed the operation.
    Hypervisor,
    /// The template needs a virtualization kind this gateway does not have.
    NoCapability,
    Io,
    Internal,
    /// A logical gateway needs an identity from the pool (`logical_dir`) and none is free or usable
    /// (the message names the directory or the file).
    NoIdentity,
    /// The peer's user may not use the daemon (`SO_PEERCRED`); the connection is closed.
    NotAllowed,
    /// The daemon serves its maximum of connections; the connection is closed: retry later.
    Busy,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorReply {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}
