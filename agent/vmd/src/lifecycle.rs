//! The dependability rules (paper §II.C) of the VM manager, pure: what a stop does for each kind,
//! and what to do with a VM that died without being stopped — restart it after a backoff, up to a
//! budget, then give up and report it failed. Time (monotonic milliseconds) and every observation
//! come in as arguments; the manager observes libvirt and carries the answers out.
//!
//! The intent is libvirt's state plus the idle clock: a VM whose `stopped_s` is set was stopped on
//! request (or created and never started) and stays down; a VM that is not running and has no
//! `stopped_s` was running and died (its QEMU killed, its container's init gone, the host
//! rebooted): the supervisor brings it back.

use betaas_proto::{VirtKind, VmState};

use crate::config::StopMode;

/// How a stop on request is carried out for a VM of `kind` under the configured `mode`: a
/// container has no managed save (its memory is the host's processes), so it is shut down.
pub fn stop_method(kind: VirtKind, mode: StopMode) -> StopMode {
    match kind {
        VirtKind::Lxc => StopMode::Shutdown,
        VirtKind::Kvm | VirtKind::Qemu => mode,
    }
}

/// The kind a new VM gets, among the kinds the probe saw work and the template supports: KVM when
/// it works, else a container before emulation (a 32-bit ARM gateway has no KVM since Linux 5.7,
/// and a container costs a fraction of a TCG guest), else QEMU TCG.
pub fn choose_kind(working: &[VirtKind], supported: &[VirtKind]) -> Option<VirtKind> {
    [VirtKind::Kvm, VirtKind::Lxc, VirtKind::Qemu]
        .into_iter()
        .find(|k| working.contains(k) && supported.contains(k))
}

/// The restart budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Restarts allowed before the VM is reported failed.
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further one.
    pub backoff_ms: u64,
    /// The longest wait.
    pub backoff_max_ms: u64,
    /// Running this long after a restart wins the whole budget back.
    pub reset_after_ms: u64,
}

impl Budget {
    /// The wait before restart number `n + 1` (after `n` restarts).
    pub fn backoff(&self, n: u32) -> u64 {
        self.backoff_ms
            .saturating_mul(1u64.checked_shl(n).unwrap_or(u64::MAX))
            .min(self.backoff_max_ms)
    }
}

/// What the supervisor remembers of one VM (monotonic milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Track {
    /// Restarts since it last ran for `reset_after_ms` or was started on request.
    pub restarts: u32,
    /// When it was first seen dead this time.
    pub dead_since_ms: Option<u64>,
    /// When it was last seen coming up (a restart, or first seen running).
    pub up_since_ms: Option<u64>,
    /// The budget is spent: left stopped, reported failed, until a start on request.
    pub failed: bool,
}

/// One VM as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Running (or paused, or another live state): nothing to do.
    Up,
    /// Stopped on request (its idle clock runs): stays down.
    Stopped,
    /// Not running and not stopped on request.
    Died,
}

/// Seen from libvirt's state and the idle clock.
pub fn seen(state: VmState, stopped_s: Option<u64>) -> Seen {
    match state {
        VmState::Running | VmState::Paused | VmState::Other => Seen::Up,
        VmState::Saved | VmState::ShutOff | VmState::Crashed if stopped_s.is_some() => {
            Seen::Stopped
        }
        VmState::Saved | VmState::ShutOff | VmState::Crashed => Seen::Died,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Dead, waiting for its backoff to pass (until this time).
    Wait {
        until_ms: u64,
    },
    /// Start it again now (counted in the new track's `restarts`).
    Restart,
    /// The budget is spent: mark it failed and start its idle clock.
    GiveUp,
}

/// One supervision step for one VM: the action and the track to keep.
pub fn decide(seen: Seen, track: &Track, now_ms: u64, budget: &Budget) -> (Action, Track) {
    let mut t = track.clone();
    match seen {
        Seen::Stopped => {
            t.dead_since_ms = None;
            t.up_since_ms = None;
            (Action::Nothing, t)
        }
        Seen::Up => {
            t.dead_since_ms = None;
            let up = *t.up_since_ms.get_or_insert(now_ms);
            if t.restarts > 0 && now_ms.saturating_sub(up) >= budget.reset_after_ms {
                t.restarts = 0;
            }
            (Action::Nothing, t)
        }
        Seen::Died if t.failed => (Action::Nothing, t),
        Seen::Died => {
            t.up_since_ms = None;
            let since = *t.dead_since_ms.get_or_insert(now_ms);
            if t.restarts >= budget.max_restarts {
                t.failed = true;
                t.dead_since_ms = None;
                return (Action::GiveUp, t);
            }
            let until_ms = since.saturating_add(budget.backoff(t.restarts));
            if now_ms < until_ms {
                return (Action::Wait { until_ms }, t);
            }
            t.restarts += 1;
            t.dead_since_ms = None;
            t.up_since_ms = Some(now_ms);
            (Action::Restart, t)
        }
    }
}

/// A start, resume or acquire on request: the VM is wanted again with its whole budget.
pub fn started_on_request() -> Track {
    Track::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Budget = Budget {
        max_restarts: 3,
        backoff_ms: 1000,
        backoff_max_ms: 3000,
        reset_after_ms: 60_000,
    };

    #[test]
    fn containers_are_shut_down_vms_follow_the_mode() {
        assert_eq!(
            stop_method(VirtKind::Lxc, StopMode::ManagedSave),
            StopMode::Shutdown
        );
        for k in [VirtKind::Kvm, VirtKind::Qemu] {
            for m in [StopMode::ManagedSave, StopMode::Shutdown] {
                assert_eq!(stop_method(k, m), m);
            }
        }
    }

    #[test]
    fn kvm_then_a_container_then_emulation() {
        use VirtKind::*;
        let all = [Kvm, Qemu, Lxc];
        assert_eq!(choose_kind(&all, &all), Some(Kvm));
        // A Cubietruck on a maintained kernel: QEMU and LXC work.
        assert_eq!(choose_kind(&[Qemu, Lxc], &all), Some(Lxc));
        assert_eq!(choose_kind(&[Qemu, Lxc], &[Kvm, Qemu]), Some(Qemu));
        assert_eq!(choose_kind(&[Qemu], &[Lxc]), None);
        assert_eq!(choose_kind(&[], &all), None);
    }

    #[test]
    fn intent_comes_from_the_idle_clock() {
        for s in [VmState::Running, VmState::Paused, VmState::Other] {
            assert_eq!(seen(s, None), Seen::Up);
            assert_eq!(seen(s, Some(5)), Seen::Up);
        }
        for s in [VmState::Saved, VmState::ShutOff, VmState::Crashed] {
            assert_eq!(seen(s, Some(5)), Seen::Stopped);
            assert_eq!(seen(s, None), Seen::Died);
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_without_overflow() {
        assert_eq!(
            (0..5).map(|n| B.backoff(n)).collect::<Vec<_>>(),
            [1000, 2000, 3000, 3000, 3000]
        );
        assert_eq!(B.backoff(200), 3000);
        let huge = Budget {
            backoff_max_ms: u64::MAX,
            ..B
        };
        assert_eq!(huge.backoff(70), u64::MAX);
    }

    /// Dies at once after every restart: restarted exactly `max_restarts` times, each after its
    /// backoff to the millisecond, then given up.
    #[test]
    fn a_vm_that_keeps_dying_is_restarted_with_backoff_then_failed() {
        let mut t = Track::default();
        let mut now = 10_000;
        let mut restarts_at = Vec::new();
        loop {
            let (a, next) = decide(Seen::Died, &t, now, &B);
            t = next;
            match a {
                Action::Wait { until_ms } => {
                    // One millisecond early is still too early.
                    let (early, _) = decide(Seen::Died, &t, until_ms - 1, &B);
                    assert_eq!(early, Action::Wait { until_ms });
                    now = until_ms;
                }
                Action::Restart => {
                    restarts_at.push(now);
                    now += 50; // it dies again 50 ms later
                }
                Action::GiveUp => break,
                Action::Nothing => panic!("a dead VM within its budget is never left alone"),
            }
        }
        // Dead at 10000 → restart at 11000; dead at 11050 → 13050; dead at 13100 → 16100.
        assert_eq!(restarts_at, [11_000, 13_050, 16_100]);
        assert!(t.failed);
        assert_eq!(t.restarts, 3);
        // Failed: left alone for good, whatever time passes.
        assert_eq!(decide(Seen::Died, &t, u64::MAX, &B).0, Action::Nothing);
    }

    #[test]
    fn running_for_the_reset_time_wins_the_budget_back() {
        let t = Track {
            restarts: 2,
            up_since_ms: Some(1000),
            ..Track::default()
        };
        let (_, kept) = decide(Seen::Up, &t, 60_999, &B);
        assert_eq!(kept.restarts, 2);
        let (a, reset) = decide(Seen::Up, &t, 61_000, &B);
        assert_eq!((a, reset.restarts), (Action::Nothing, 0));
        // First seen running (adopted): its clock starts now.
        let (_, first) = decide(Seen::Up, &Track::default(), 7, &B);
        assert_eq!(first.up_since_ms, Some(7));
    }

    #[test]
    fn a_vm_stopped_on_request_is_never_restarted() {
        let dying = Track {
            restarts: 1,
            dead_since_ms: Some(5),
            ..Track::default()
        };
        let (a, t) = decide(Seen::Stopped, &dying, 1_000_000, &B);
        assert_eq!(a, Action::Nothing);
        assert_eq!(t.dead_since_ms, None);
    }

    #[test]
    fn a_zero_budget_fails_at_the_first_death() {
        let none = Budget {
            max_restarts: 0,
            ..B
        };
        let (a, t) = decide(Seen::Died, &Track::default(), 1, &none);
        assert_eq!(a, Action::GiveUp);
        assert!(t.failed);
    }

    #[test]
    fn a_start_on_request_gives_the_whole_budget_back() {
        let t = started_on_request();
        assert_eq!((t.restarts, t.failed), (0, false));
    }
}
