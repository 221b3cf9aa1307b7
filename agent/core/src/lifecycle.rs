//! The local VM lifecycle as this gateway's reservations see it (paper §II.C), pure: what is
//! reserved here, what a release does, and how the reservations are rebuilt from the VM manager's
//! list when the agent restarts (its VMs kept running: counting from zero would over-commit).
//!
//! A reservation is made before the VM manager is asked (`reserve`, a pending token), becomes the
//! VM's once it runs (`started`), and is given back when the VM is released (stopped on request),
//! when the start fails (`abandon`), or when the VM manager reports the VM failed (its restart
//! budget spent: it no longer runs). A VM that died and is being restarted keeps its reservation.
//! Without a VM manager a reservation is `bare`: counted, never released.

use std::collections::BTreeMap;

use crate::allocator::{Res, Template};

/// A VM as the VM manager lists it, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVm {
    pub name: String,
    pub template: String,
    pub status: VmStatus,
    /// Its own figures (vCPUs, memory, disk) for a template this gateway does not configure.
    pub own: Option<Res>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    Running,
    /// Died without being released; the VM manager restarts it (still its requester's).
    Restarting,
    /// Stopped on request (released) or created and never started: kept for a later request.
    Stopped,
    /// Its restart budget is spent: stopped, reported failed.
    Failed,
}

impl VmStatus {
    /// Does a VM in this state hold its share of the gateway?
    pub fn holds(self) -> bool {
        matches!(self, VmStatus::Running | VmStatus::Restarting)
    }
}

/// What a release of one VM does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseAction {
    /// Stop it through the VM manager, then give its reservation back.
    Stop,
    /// Already stopped (released twice, or failed): nothing to stop; any reservation left goes.
    AlreadyStopped,
    /// No such VM on this gateway's VM manager.
    NotHere,
}

pub fn release_action(vm: Option<&LocalVm>) -> ReleaseAction {
    match vm.map(|v| v.status) {
        None => ReleaseAction::NotHere,
        Some(VmStatus::Running | VmStatus::Restarting) => ReleaseAction::Stop,
        Some(VmStatus::Stopped | VmStatus::Failed) => ReleaseAction::AlreadyStopped,
    }
}

/// The reservations from the VM manager's list: each VM that holds its share, at its template's
/// size (its own figures when the template is not configured here, else nothing: named in
/// `no_size`). What the agent starts from after a restart, and what it re-syncs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub held: BTreeMap<String, Res>,
    pub no_size: Vec<String>,
}

pub fn rebuild(vms: &[LocalVm], templates: &[Template]) -> Rebuilt {
    let mut out = Rebuilt::default();
    for vm in vms.iter().filter(|v| v.status.holds()) {
        let res = templates
            .iter()
            .find(|t| t.name == vm.template)
            .map(Template::res)
            .or(vm.own);
        match res {
            Some(r) => {
                out.held.insert(vm.name.clone(), r);
            }
            None => {
                out.held.insert(vm.name.clone(), Res::default());
                out.no_size.push(vm.name.clone());
            }
        }
    }
    out
}

/// This gateway's reservations. Every change bumps `generation`, so a list fetched from the VM
/// manager while something changed is not applied over the change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    pending: BTreeMap<u64, Res>,
    held: BTreeMap<String, Res>,
    bare: Vec<Res>,
    generation: u64,
}

impl Reservations {
    pub fn used(&self) -> Res {
        self.pending
            .values()
            .chain(self.held.values())
            .chain(self.bare.iter())
            .fold(Res::default(), |a, r| a.plus(r))
    }

    /// VMs placed here (being started, running or restarting, or bare reservations).
    pub fn count(&self) -> u32 {
        (self.pending.len() + self.held.len() + self.bare.len()) as u32
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn held(&self) -> &BTreeMap<String, Res> {
        &self.held
    }

    /// Reserves `res` under `token` if it fits in what `capacity` leaves free.
    pub fn reserve(&mut self, token: u64, res: Res, capacity: &Res) -> Result<(), String> {
        let free = capacity.saturating_sub(&self.used());
        if !res.fits_in(&free) {
            return Err(format!("{res} does not fit in the {free} free here"));
        }
        self.pending.insert(token, res);
        self.generation += 1;
        Ok(())
    }

    /// The VM manager runs `vm` for the reservation `token`.
    pub fn started(&mut self, token: u64, vm: &str) {
        if let Some(res) = self.pending.remove(&token) {
            self.held.insert(vm.to_owned(), res);
        }
        self.generation += 1;
    }

    /// Accepted without a VM manager: kept as a bare reservation.
    pub fn keep_bare(&mut self, token: u64) {
        if let Some(res) = self.pending.remove(&token) {
            self.bare.push(res);
        }
        self.generation += 1;
    }

    /// The start failed: the reservation is given back.
    pub fn abandon(&mut self, token: u64) {
        self.pending.remove(&token);
        self.generation += 1;
    }

    /// `vm` was stopped on request: its reservation is given back (what it was, if it held one).
    pub fn release(&mut self, vm: &str) -> Option<Res> {
        self.generation += 1;
        self.held.remove(vm)
    }

    /// Replaces the VMs' reservations with those rebuilt from the VM manager's list, if nothing
    /// changed since `generation` was read (before the list was fetched). Pending and bare
    /// reservations stay. Returns whether it was applied.
    pub fn resync(&mut self, generation: u64, rebuilt: &Rebuilt) -> bool {
        if generation != self.generation {
            return false;
        }
        if self.held != rebuilt.held {
            self.held = rebuilt.held.clone();
            self.generation += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::Role;

    fn tpl(name: &str, vcpus: u32, mem_mb: u64) -> Template {
        Template {
            name: name.into(),
            vcpus,
            mem_mb,
            disk_gb: 1,
            role: Role::AppLight,
        }
    }

    fn vm(name: &str, template: &str, status: VmStatus) -> LocalVm {
        LocalVm {
            name: name.into(),
            template: template.into(),
            status,
            own: None,
        }
    }

    const CAP: Res = Res::new(2, 512, 8);

    #[test]
    fn release_stops_what_holds_and_nothing_else() {
        use VmStatus::*;
        assert_eq!(release_action(None), ReleaseAction::NotHere);
        for (s, a) in [
            (Running, ReleaseAction::Stop),
            (Restarting, ReleaseAction::Stop),
            (Stopped, ReleaseAction::AlreadyStopped),
            (Failed, ReleaseAction::AlreadyStopped),
        ] {
            assert_eq!(release_action(Some(&vm("a", "t", s))), a, "{s:?}");
        }
    }

    #[test]
    fn a_reservation_follows_its_vm_and_a_release_gives_it_back() {
        let mut r = Reservations::default();
        r.reserve(1, Res::new(1, 256, 1), &CAP).expect("fits");
        r.reserve(2, Res::new(1, 256, 1), &CAP).expect("fits");
        assert!(
            r.reserve(3, Res::new(1, 1, 1), &CAP).is_err(),
            "no CPU left"
        );
        r.started(1, "vm-1");
        r.abandon(2);
        assert_eq!((r.used(), r.count()), (Res::new(1, 256, 1), 1));
        assert_eq!(r.release("vm-1"), Some(Res::new(1, 256, 1)));
        assert_eq!((r.used(), r.count()), (Res::default(), 0));
        assert_eq!(r.release("vm-1"), None, "twice: nothing more to give back");
        r.reserve(4, Res::new(2, 512, 8), &CAP)
            .expect("all of it again");
        r.keep_bare(4);
        assert_eq!(r.used(), CAP);
    }

    /// After a restart the agent knows nothing; the VM manager's list gives back exactly what
    /// runs: no capacity offered twice, no VM left without its reservation.
    #[test]
    fn rebuild_counts_what_runs_or_restarts_at_its_template_size() {
        use VmStatus::*;
        let templates = [tpl("app", 1, 256), tpl("db", 2, 512)];
        let mut foreign = vm("x-1", "unknown", Running);
        foreign.own = Some(Res::new(1, 64, 1));
        let vms = [
            vm("app-1", "app", Running),
            vm("app-2", "app", Restarting),
            vm("app-3", "app", Stopped),
            vm("db-1", "db", Failed),
            foreign,
            vm("y-1", "gone", Running),
        ];
        let b = rebuild(&vms, &templates);
        assert_eq!(
            b.held.keys().map(String::as_str).collect::<Vec<_>>(),
            ["app-1", "app-2", "x-1", "y-1"]
        );
        assert_eq!(b.held["app-1"], Res::new(1, 256, 1));
        assert_eq!(b.held["x-1"], Res::new(1, 64, 1));
        assert_eq!(b.no_size, ["y-1"]);
        let mut r = Reservations::default();
        assert!(r.resync(r.generation(), &b));
        assert_eq!(r.used(), Res::new(3, 576, 3));
        assert_eq!(r.count(), 4);
        // The capacity left is what the rebuilt reservations leave: one more 1-CPU VM does not fit
        // in 2 CPUs.
        assert!(r.reserve(9, Res::new(1, 1, 1), &CAP).is_err());
    }

    #[test]
    fn a_list_fetched_while_something_changed_is_not_applied() {
        let mut r = Reservations::default();
        let g = r.generation();
        r.reserve(1, Res::new(1, 1, 1), &CAP).expect("fits");
        r.started(1, "new");
        // The list was fetched before "new" ran: applying it would drop its reservation.
        assert!(!r.resync(g, &Rebuilt::default()));
        assert_eq!(r.count(), 1);
        // Fetched after: applied, and pending reservations survive a resync.
        let g = r.generation();
        r.reserve(2, Res::new(1, 1, 1), &CAP).expect("fits");
        let g2 = r.generation();
        let mut list = Rebuilt::default();
        list.held.insert("new".into(), Res::new(1, 1, 1));
        assert!(!r.resync(g, &list));
        assert!(r.resync(g2, &list));
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn a_failed_vm_gives_its_reservation_back_on_the_next_resync() {
        let templates = [tpl("app", 1, 256)];
        let mut r = Reservations::default();
        r.reserve(1, Res::new(1, 256, 1), &CAP).expect("fits");
        r.started(1, "app-1");
        let failed = rebuild(&[vm("app-1", "app", VmStatus::Failed)], &templates);
        assert!(r.resync(r.generation(), &failed));
        assert_eq!(r.count(), 0);
    }
}
