//! The agent's side of the `betaas-vmd` socket (paper: the VM Manager): turns an accepted
//! allocation into a running VM. libvirt is a C library, so it lives in the daemon; the agent stays
//! static and speaks the small versioned protocol of `betaas-proto` over a Unix socket.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use betaas_core::allocator::Res;
use betaas_core::lifecycle::{LocalVm, VmStatus};
use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response, VmInfo, VmState, VmStats};

/// Creating and starting a VM under emulation takes seconds; past this the request has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub struct Vmd {
    socket: PathBuf,
}

impl Vmd {
    pub fn new(socket: &Path) -> Vmd {
        Vmd {
            socket: socket.to_owned(),
        }
    }

    fn call(&self, req: &Request) -> Result<Response, String> {
        let s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("betaas-vmd at {}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(CALL_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Client::new(s)
            .call(req)
            .map_err(|e| format!("betaas-vmd: {e}"))
    }

    /// What the daemon's real probe found (a guest actually started): the kind for the allocator.
    pub fn capability(&self) -> Result<betaas_core::allocator::Virt, String> {
        use betaas_core::allocator::Virt;
        match self.call(&Request::Probe { refresh: false })? {
            Response::Capability(c) => Ok(match c.best {
                Some(betaas_proto::VirtKind::Kvm) => Virt::Kvm,
                Some(betaas_proto::VirtKind::Qemu) => Virt::Qemu,
                Some(betaas_proto::VirtKind::Lxc) => Virt::Lxc,
                None => Virt::None,
            }),
            Response::Error(e) => Err(format!("betaas-vmd probe: {:?}: {}", e.kind, e.message)),
            other => Err(format!("betaas-vmd answered {other:?} to probe")),
        }
    }

    /// `acquire` for a template with service ports, with the application to hand to the guest:
    /// the VM, whether it was resumed, and the URL where its service answers.
    pub fn acquire_service(
        &self,
        template: &str,
        war: Option<betaas_proto::WarFile>,
    ) -> Result<(VmInfo, bool, Option<String>), String> {
        match self.call(&Request::AcquireService {
            template: template.to_owned(),
            war,
        })? {
            Response::AcquiredService {
                vm, resumed, url, ..
            } => Ok((vm, resumed, url)),
            Response::Error(e) => Err(format!("betaas-vmd: {:?}: {}", e.kind, e.message)),
            other => Err(format!("betaas-vmd answered {other:?} to acquire-service")),
        }
    }

    /// Resumes a stopped VM of `template`, or creates and starts one; says whether it was
    /// resumed. Blocking: call it off the async runtime.
    pub fn acquire(&self, template: &str) -> Result<(VmInfo, bool), String> {
        match self.call(&Request::Acquire {
            template: template.to_owned(),
        })? {
            Response::Acquired { vm, resumed } => Ok((vm, resumed)),
            Response::Error(e) => Err(format!(
                "betaas-vmd refused {template}: {:?}: {}",
                e.kind, e.message
            )),
            other => Err(format!("betaas-vmd answered {other:?} to acquire")),
        }
    }

    /// `acquire` with an environment for the guest (a cluster's node URLs, `BETAAS_URL_*`);
    /// also returns the URL the guest serves at (a cluster's master or storage node). Blocking.
    pub fn acquire_with(
        &self,
        template: &str,
        env: &[(String, String)],
    ) -> Result<(VmInfo, bool, Option<String>), String> {
        match self.call(&Request::AcquireWith {
            template: template.to_owned(),
            env: env.to_vec(),
        })? {
            Response::AcquiredAt { vm, resumed, url } => Ok((vm, resumed, url)),
            Response::Error(e) => Err(format!(
                "betaas-vmd refused {template}: {:?}: {}",
                e.kind, e.message
            )),
            other => Err(format!("betaas-vmd answered {other:?} to acquire")),
        }
    }

    /// Stops a VM on request (managed save for a VM, shutdown for a container); it is kept for
    /// the next request of its template. Blocking.
    pub fn stop(&self, vm: &str) -> Result<VmInfo, String> {
        match self.call(&Request::Stop { vm: vm.to_owned() })? {
            Response::Vm(v) => Ok(v),
            Response::Error(e) => Err(format!(
                "betaas-vmd could not stop {vm}: {:?}: {}",
                e.kind, e.message
            )),
            other => Err(format!("betaas-vmd answered {other:?} to stop")),
        }
    }

    /// Every VM the daemon manages. Blocking.
    pub fn list(&self) -> Result<Vec<VmInfo>, String> {
        match self.call(&Request::List)? {
            Response::Vms(v) => Ok(v),
            Response::Error(e) => Err(format!("betaas-vmd list: {:?}: {}", e.kind, e.message)),
            other => Err(format!("betaas-vmd answered {other:?} to list")),
        }
    }

    /// Every VM the daemon manages, with its CPU time, memory and disk when it has them: the
    /// per-VM figures the gateway shares in its health, and what its reservations are rebuilt
    /// from. Blocking.
    pub fn stats(&self) -> Result<Vec<(VmInfo, Option<VmStats>)>, String> {
        let vms = self.list()?;
        let mut out = Vec::with_capacity(vms.len());
        for vm in vms {
            let stats = match self.call(&Request::Stats {
                vm: vm.name.clone(),
            })? {
                Response::Stats(s) => Some(s),
                // A VM undefined between the two calls, or without stats: no figures this round.
                Response::Error(_) => None,
                other => return Err(format!("betaas-vmd answered {other:?} to stats")),
            };
            out.push((vm, stats));
        }
        Ok(out)
    }
}

/// A VM as the lifecycle rules see it (`betaas_core::lifecycle`).
pub fn local_vm(vm: &VmInfo, stats: Option<&VmStats>) -> LocalVm {
    let status = if vm.failed {
        VmStatus::Failed
    } else {
        match vm.state {
            VmState::Running | VmState::Paused | VmState::Other => VmStatus::Running,
            _ if vm.stopped_s.is_none() => VmStatus::Restarting,
            _ => VmStatus::Stopped,
        }
    };
    const GIB: u64 = 1 << 30;
    LocalVm {
        name: vm.name.clone(),
        template: vm.template.clone(),
        status,
        own: stats.map(|s| {
            Res::new(
                s.vcpus,
                s.max_memory_kib.div_ceil(1024),
                s.disk_capacity_bytes.div_ceil(GIB),
            )
        }),
    }
}
