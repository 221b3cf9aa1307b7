//! The VM registry and the idle policy: which domains are ours, in which state, since when stopped.
//!
//! Pure: the manager observes libvirt (names, marks, states) and the state directory, then asks
//! these functions what to adopt, what to forget, what to clean and what to destroy. Time comes in
//! as an argument. libvirt itself holds the truth (our mark is in each domain's metadata), so a
//! restart of the daemon or of libvirtd loses nothing: reconcile rebuilds the registry.

use std::collections::{BTreeMap, BTreeSet};

use betaas_proto::{VmInfo, VmState};
use betaas_templates::Arch;

use crate::domxml::Mark;

/// A domain this daemon created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub mark: Mark,
    pub state: VmState,
    /// When it was stopped on request (Unix s): the idle clock. `None` while it runs, and when it
    /// died without being stopped (the supervisor restarts it: [`crate::lifecycle`]).
    pub stopped_s: Option<u64>,
    /// Restarts after dying, and whether the restart budget is spent (set by the manager).
    pub restarts: u32,
    pub failed: bool,
}

impl Vm {
    pub fn is_stopped(&self) -> bool {
        matches!(
            self.state,
            VmState::Saved | VmState::ShutOff | VmState::Crashed
        )
    }

    pub fn info(&self) -> VmInfo {
        VmInfo {
            name: self.name.clone(),
            template: self.mark.template.clone(),
            kind: self.mark.kind,
            state: self.state,
            created_s: self.mark.created_s,
            stopped_s: self.stopped_s,
            restarts: self.restarts,
            failed: self.failed,
        }
    }
}

/// One domain as libvirt lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    /// Our mark if its metadata has one (any owner).
    pub mark: Option<Mark>,
    pub state: VmState,
}

/// What reconcile found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Ours, with their idle clocks.
    pub vms: BTreeMap<String, Vm>,
    /// Domains we must never touch (no mark, or another owner's).
    pub foreign: BTreeSet<String>,
    /// Previously ours, now gone from libvirt (undefined behind our back): forget them, clean their files.
    pub vanished: Vec<String>,
    /// State directories with no domain (a create interrupted between overlay and define): remove.
    pub orphan_dirs: Vec<String>,
    /// Our capability-probe guests still running (the daemon died mid-probe): destroy (they are
    /// transient, so that removes them). Never adopted as VMs.
    pub stale_probes: Vec<String>,
}

/// The template name in a probe guest's mark: template names cannot start with `-`.
pub const PROBE_TEMPLATE: &str = "--probe";

/// Rebuilds the registry from what libvirt shows. `prior` is what we knew (empty at start),
/// `stopped_files` the idle clocks persisted next to each VM's overlay, `dirs` the names of the
/// per-VM state directories.
pub fn reconcile(
    owner: &str,
    prior: &BTreeMap<String, Vm>,
    observed: &[Observed],
    stopped_files: &BTreeMap<String, u64>,
    dirs: &[String],
) -> Reconciled {
    let mut out = Reconciled::default();
    for o in observed {
        match &o.mark {
            Some(m) if m.owner == owner && m.template == PROBE_TEMPLATE => {
                out.stale_probes.push(o.name.clone());
            }
            Some(m) if m.owner == owner => {
                let stopped_s = match o.state {
                    VmState::Running | VmState::Paused | VmState::Other => None,
                    // Stopped: keep the clock we had, else the persisted one. Neither: it was
                    // running and died (or the host rebooted under it): no idle clock, the
                    // supervisor restarts it.
                    _ => prior
                        .get(&o.name)
                        .and_then(|v| v.stopped_s)
                        .or_else(|| stopped_files.get(&o.name).copied()),
                };
                let (restarts, failed) = prior
                    .get(&o.name)
                    .map_or((0, false), |v| (v.restarts, v.failed));
                out.vms.insert(
                    o.name.clone(),
                    Vm {
                        name: o.name.clone(),
                        mark: m.clone(),
                        state: o.state,
                        stopped_s,
                        restarts,
                        failed,
                    },
                );
            }
            _ => {
                out.foreign.insert(o.name.clone());
            }
        }
    }
    out.vanished = prior
        .keys()
        .filter(|n| !out.vms.contains_key(*n) && !out.foreign.contains(*n))
        .cloned()
        .collect();
    out.orphan_dirs = dirs
        .iter()
        .filter(|d| !out.vms.contains_key(*d) && !out.vanished.contains(d))
        .filter(|d| !out.foreign.contains(*d) && !out.stale_probes.contains(d))
        .cloned()
        .collect();
    out
}

/// Stopped VMs whose idle time has run out, oldest first.
pub fn idle_expired<'a>(
    vms: impl IntoIterator<Item = &'a Vm>,
    now_s: u64,
    idle_s: u64,
) -> Vec<String> {
    let mut v: Vec<&Vm> = vms
        .into_iter()
        .filter(|vm| vm.is_stopped())
        .filter(|vm| {
            vm.stopped_s
                .is_some_and(|s| now_s.saturating_sub(s) >= idle_s)
        })
        .collect();
    v.sort_by_key(|vm| (vm.stopped_s, vm.name.clone()));
    v.into_iter().map(|vm| vm.name.clone()).collect()
}

/// The VM an acquire of `template` should bring back instead of creating one: a saved one first
/// (resume is the fast path), else one shut off; the most recently stopped of those (its pages
/// are most likely still in the host's cache). Only VMs stopped on request: running VMs are never
/// shared, a VM that died is still its requester's (the supervisor restarts it), and a failed one
/// keeps dying.
pub fn pick_resumable<'a>(
    vms: impl IntoIterator<Item = &'a Vm>,
    template: &str,
    arch: Arch,
) -> Option<&'a Vm> {
    vms.into_iter()
        .filter(|vm| vm.mark.template == template && vm.mark.arch == arch)
        .filter(|vm| matches!(vm.state, VmState::Saved | VmState::ShutOff))
        .filter(|vm| vm.stopped_s.is_some() && !vm.failed)
        .max_by_key(|vm| {
            (
                vm.state == VmState::Saved,
                vm.stopped_s.unwrap_or(0),
                std::cmp::Reverse(vm.name.clone()),
            )
        })
}

/// `<prefix>-<template>-<n>` with the smallest n no domain uses (foreign ones included).
pub fn next_name(prefix: &str, template: &str, taken: &BTreeSet<String>) -> String {
    (1u64..)
        .map(|n| format!("{prefix}-{template}-{n}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| format!("{prefix}-{template}-x"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use betaas_proto::VirtKind;

    fn mark(owner: &str, template: &str) -> Mark {
        Mark {
            owner: owner.into(),
            template: template.into(),
            arch: Arch::X86_64,
            kind: VirtKind::Qemu,
            created_s: 10,
        }
    }

    fn obs(name: &str, owner: Option<&str>, state: VmState) -> Observed {
        Observed {
            name: name.into(),
            mark: owner.map(|o| mark(o, "tiny")),
            state,
        }
    }

    fn vm(name: &str, template: &str, state: VmState, stopped_s: Option<u64>) -> Vm {
        Vm {
            name: name.into(),
            mark: mark("me", template),
            state,
            stopped_s,
            restarts: 0,
            failed: false,
        }
    }

    #[test]
    fn adopts_only_our_owner_and_keeps_foreign_apart() {
        let observed = [
            obs("a", Some("me"), VmState::Running),
            obs("b", Some("other-daemon"), VmState::Saved),
            obs("c", None, VmState::ShutOff),
        ];
        let r = reconcile("me", &BTreeMap::new(), &observed, &BTreeMap::new(), &[]);
        assert_eq!(r.vms.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r.vms["a"].stopped_s, None);
        assert_eq!(
            r.foreign,
            ["b", "c"].into_iter().map(String::from).collect()
        );
    }

    #[test]
    fn idle_clock_prefers_prior_then_persisted_and_a_vm_without_one_died() {
        let mut prior = BTreeMap::new();
        prior.insert("a".to_string(), vm("a", "tiny", VmState::Saved, Some(50)));
        let files: BTreeMap<String, u64> = [("a".to_string(), 40), ("b".to_string(), 60)]
            .into_iter()
            .collect();
        let observed = [
            obs("a", Some("me"), VmState::Saved),
            obs("b", Some("me"), VmState::Saved),
            obs("c", Some("me"), VmState::ShutOff),
        ];
        let r = reconcile("me", &prior, &observed, &files, &[]);
        assert_eq!(r.vms["a"].stopped_s, Some(50));
        assert_eq!(r.vms["b"].stopped_s, Some(60));
        // Found stopped with no record of a stop on request: it died (restarted, never idle-destroyed).
        assert_eq!(r.vms["c"].stopped_s, None);
        assert!(idle_expired(r.vms.values(), u64::MAX, 0)
            .iter()
            .all(|n| n != "c"));
    }

    #[test]
    fn vanished_domains_and_orphan_dirs_are_reported_foreign_names_never() {
        let mut prior = BTreeMap::new();
        prior.insert(
            "gone".to_string(),
            vm("gone", "tiny", VmState::Running, None),
        );
        prior.insert(
            "kept".to_string(),
            vm("kept", "tiny", VmState::Running, None),
        );
        let observed = [
            obs("kept", Some("me"), VmState::Running),
            obs("alien", None, VmState::Running),
        ];
        let dirs: Vec<String> = ["kept", "gone", "half-created", "alien"]
            .into_iter()
            .map(String::from)
            .collect();
        let r = reconcile("me", &prior, &observed, &BTreeMap::new(), &dirs);
        assert_eq!(r.vanished, ["gone"]);
        // "gone" is cleaned as vanished, "alien" belongs to a foreign domain of that name.
        assert_eq!(r.orphan_dirs, ["half-created"]);
    }

    #[test]
    fn leftover_probe_guests_are_destroyed_not_adopted() {
        let mut probe = obs("gw-probe-qemu-7", Some("me"), VmState::Running);
        if let Some(m) = probe.mark.as_mut() {
            m.template = PROBE_TEMPLATE.into();
        }
        let mut others = probe.clone();
        others.name = "x-probe-qemu-9".into();
        if let Some(m) = others.mark.as_mut() {
            m.owner = "other".into();
        }
        let r = reconcile(
            "me",
            &BTreeMap::new(),
            &[probe, others],
            &BTreeMap::new(),
            &[],
        );
        assert!(r.vms.is_empty());
        assert_eq!(r.stale_probes, ["gw-probe-qemu-7"]);
        assert!(
            r.foreign.contains("x-probe-qemu-9"),
            "another daemon's probe is its business"
        );
    }

    #[test]
    fn idle_expiry_is_exact_at_the_boundary_and_skips_running() {
        let vms = [
            vm("a", "t", VmState::Saved, Some(100)),
            vm("b", "t", VmState::ShutOff, Some(90)),
            vm("c", "t", VmState::Running, None),
            vm("d", "t", VmState::Saved, Some(101)),
        ];
        assert_eq!(idle_expired(&vms, 159, 60), ["b"]);
        assert_eq!(idle_expired(&vms, 160, 60), ["b", "a"]);
        assert_eq!(idle_expired(&vms, 10_000, 60), ["b", "a", "d"]);
        // Clock going backwards (NTP step) never expires anything.
        assert!(idle_expired(&vms, 0, 60).is_empty());
    }

    #[test]
    fn acquire_prefers_saved_then_most_recent_and_never_running() {
        let vms = [
            vm("a", "tiny", VmState::ShutOff, Some(500)),
            vm("b", "tiny", VmState::Saved, Some(100)),
            vm("c", "tiny", VmState::Saved, Some(200)),
            vm("d", "tiny", VmState::Running, None),
            vm("e", "app", VmState::Saved, Some(900)),
        ];
        assert_eq!(
            pick_resumable(&vms, "tiny", Arch::X86_64).map(|v| v.name.as_str()),
            Some("c")
        );
        assert_eq!(
            pick_resumable(&vms[..1], "tiny", Arch::X86_64).map(|v| v.name.as_str()),
            Some("a")
        );
        assert!(pick_resumable(&vms[3..4], "tiny", Arch::X86_64).is_none());
        assert!(pick_resumable(&vms, "tiny", Arch::Armhf).is_none());
    }

    #[test]
    fn acquire_never_takes_a_vm_that_died_or_failed() {
        let mut failed = vm("f", "tiny", VmState::Saved, Some(900));
        failed.failed = true;
        let vms = [
            // Died (no stop on request): its requester's, being restarted.
            vm("d", "tiny", VmState::ShutOff, None),
            vm("c", "tiny", VmState::Crashed, None),
            failed,
        ];
        assert!(pick_resumable(&vms, "tiny", Arch::X86_64).is_none());
        let ok = vm("s", "tiny", VmState::ShutOff, Some(1));
        let mut all = vms.to_vec();
        all.push(ok);
        assert_eq!(
            pick_resumable(&all, "tiny", Arch::X86_64).map(|v| v.name.as_str()),
            Some("s")
        );
    }

    #[test]
    fn names_skip_every_taken_one() {
        let taken: BTreeSet<String> = ["gw-tiny-1", "gw-tiny-2", "gw-tiny-4"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(next_name("gw", "tiny", &taken), "gw-tiny-3");
        assert_eq!(next_name("gw", "app", &taken), "gw-app-1");
    }
}
