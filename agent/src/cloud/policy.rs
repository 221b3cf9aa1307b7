//! The remote-cloud rules of paper §IV, pure: no I/O, no clock (time comes in as Unix seconds).
//!
//! - A VM no longer needed is stopped, not destroyed ([`RemoteState::Stopped`]).
//! - A request for a template with a stopped VM resumes it instead of creating one.
//! - A stopped VM idle longer than the cloud's `idle_destroy_secs` is destroyed.
//! - The VM limit (and the optional cost limit) is never exceeded; every VM the gateway created
//!   counts, stopped or not, since it still holds the cloud's quota.
//! - With several clouds (gateways holding credentials), the first one in order with room is used;
//!   destroying a stopped VM to make room comes only after every cloud with free room.
//! - A VM whose creation did not finish is [`RemoteState::Cleanup`]: always destroyed.

use std::fmt;

use betaas_core::allocator::{Provider, Remote};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteState {
    /// The create request was (about to be) sent; the id may not be known yet.
    Creating,
    Running,
    Stopped,
    /// Half-created, failed or not deletable when it should have been: must be destroyed.
    Cleanup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteVm {
    pub cloud: String,
    /// The name given at creation: unique, so a VM whose create answer was lost can be found.
    pub name: String,
    pub id: Option<String>,
    pub template: String,
    pub state: RemoteState,
    /// Unix seconds of the last change of state (for a stopped VM: since when it is idle).
    pub since: u64,
}

/// Every remote VM this gateway created and has not destroyed yet.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Registry {
    pub vms: Vec<RemoteVm>,
}

/// One configured cloud as the policy sees it right now.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudView {
    pub name: String,
    pub provider: Provider,
    /// The gateway holding the credentials.
    pub owner: String,
    pub vm_limit: u32,
    pub cost_per_vm: f64,
    /// Total cost of this gateway's VMs on the cloud may not exceed it; `None`: no limit.
    pub cost_limit: Option<f64>,
    /// Result of the last reachability check.
    pub reachable: bool,
    /// VMs the cloud's own quota still admits (`None`: not known or unlimited).
    pub quota_room: Option<u32>,
}

/// What to do for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Start this stopped VM of the same template.
    Resume {
        cloud: String,
        id: String,
    },
    /// Create a VM, after destroying `destroy_first` (a stopped VM of another template) to make room.
    Create {
        cloud: String,
        destroy_first: Option<String>,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why {
    OwnerAbsent,
    Unreachable,
    VmLimit(u32),
    CostLimit(f64),
    Quota,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::OwnerAbsent => {
                f.write_str("the gateway holding its credentials is not in the instance")
            }
            Why::Unreachable => f.write_str("unreachable"),
            Why::VmLimit(n) => write!(f, "VM limit {n} reached"),
            Why::CostLimit(c) => write!(f, "cost limit {c} reached"),
            Why::Quota => f.write_str("the cloud's quota is used up"),
        }
    }
}

/// Why no cloud was chosen, per cloud, in configuration order.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal(pub Vec<(String, Why)>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no remote cloud configured");
        }
        let parts: Vec<String> = self.0.iter().map(|(c, w)| format!("{c}: {w}")).collect();
        f.write_str(&parts.join("; "))
    }
}

impl Registry {
    /// VMs on `cloud` that hold its quota (all of them: stopped VMs too).
    pub fn count(&self, cloud: &str) -> u32 {
        let n = self.vms.iter().filter(|v| v.cloud == cloud).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn stopped<'a>(&'a self, cloud: &'a str) -> impl Iterator<Item = &'a RemoteVm> + 'a {
        self.vms
            .iter()
            .filter(move |v| v.cloud == cloud && v.state == RemoteState::Stopped && v.id.is_some())
    }

    pub fn begin_create(&mut self, cloud: &str, template: &str, name: &str, now: u64) {
        self.vms.push(RemoteVm {
            cloud: cloud.into(),
            name: name.into(),
            id: None,
            template: template.into(),
            state: RemoteState::Creating,
            since: now,
        });
    }

    /// The create answer arrived with the VM's id.
    pub fn created(&mut self, cloud: &str, name: &str, id: &str, now: u64) {
        if let Some(v) = self
            .vms
            .iter_mut()
            .find(|v| v.cloud == cloud && v.name == name)
        {
            v.id = Some(id.into());
            v.since = now;
        }
    }

    pub fn set_state(&mut self, cloud: &str, id: &str, state: RemoteState, now: u64) {
        if let Some(v) = self
            .vms
            .iter_mut()
            .find(|v| v.cloud == cloud && v.id.as_deref() == Some(id))
        {
            v.state = state;
            v.since = now;
        }
    }

    pub fn set_cleanup_by_name(&mut self, cloud: &str, name: &str, now: u64) {
        if let Some(v) = self
            .vms
            .iter_mut()
            .find(|v| v.cloud == cloud && v.name == name)
        {
            v.state = RemoteState::Cleanup;
            v.since = now;
        }
    }

    pub fn forget_by_name(&mut self, cloud: &str, name: &str) {
        self.vms.retain(|v| !(v.cloud == cloud && v.name == name));
    }

    pub fn remove(&mut self, cloud: &str, id: &str) {
        self.vms
            .retain(|v| !(v.cloud == cloud && v.id.as_deref() == Some(id)));
    }

    /// After a restart nobody is waiting for a VM that was being created: it is left over.
    pub fn after_restart(&mut self, now: u64) {
        for v in &mut self.vms {
            if v.state == RemoteState::Creating {
                v.state = RemoteState::Cleanup;
                v.since = now;
            }
        }
    }

    /// VMs on `cloud` to destroy now: everything recorded for cleanup, and stopped VMs idle for
    /// `idle_destroy_secs` or longer. Oldest first.
    pub fn due_for_destruction(
        &self,
        cloud: &str,
        idle_destroy_secs: u64,
        now: u64,
    ) -> Vec<RemoteVm> {
        let mut due: Vec<RemoteVm> = self
            .vms
            .iter()
            .filter(|v| v.cloud == cloud)
            .filter(|v| match v.state {
                RemoteState::Cleanup => true,
                RemoteState::Stopped => now.saturating_sub(v.since) >= idle_destroy_secs,
                RemoteState::Creating | RemoteState::Running => false,
            })
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.since, &a.name).cmp(&(b.since, &b.name)));
        due
    }

    pub fn on_cloud(&self, cloud: &str) -> impl Iterator<Item = &RemoteVm> + '_ {
        let cloud = cloud.to_owned();
        self.vms.iter().filter(move |v| v.cloud == cloud)
    }
}

fn usable(c: &CloudView, members: &[&str]) -> Result<(), Why> {
    if !members.contains(&c.owner.as_str()) {
        Err(Why::OwnerAbsent)
    } else if !c.reachable {
        Err(Why::Unreachable)
    } else {
        Ok(())
    }
}

/// Whether `n` VMs stay within the cloud's limits.
fn within(c: &CloudView, n: u32) -> Result<(), Why> {
    if n > c.vm_limit {
        return Err(Why::VmLimit(c.vm_limit));
    }
    if let Some(limit) = c.cost_limit {
        // A small tolerance: costs like 0.1 do not add up exactly in binary.
        if f64::from(n) * c.cost_per_vm > limit + 1e-9 {
            return Err(Why::CostLimit(limit));
        }
    }
    Ok(())
}

/// Room for one more VM on `c`: `Ok(None)` free room, `Ok(Some(id))` room after destroying that
/// stopped VM (the one idle longest), `Err` why not.
fn room(reg: &Registry, c: &CloudView) -> Result<Option<String>, Why> {
    if c.quota_room == Some(0) {
        // Destroying one of ours frees quota too, but the quota may be held by others' VMs: only
        // replace when our own limit is what binds (below).
        if let Some(v) = reg
            .stopped(&c.name)
            .min_by_key(|v| (v.since, v.name.clone()))
        {
            return Ok(v.id.clone());
        }
        return Err(Why::Quota);
    }
    let n = reg.count(&c.name);
    match within(c, n.saturating_add(1)) {
        Ok(()) => Ok(None),
        Err(why) => {
            let oldest = reg
                .stopped(&c.name)
                .min_by_key(|v| (v.since, v.name.clone()));
            match oldest {
                Some(v) if within(c, n).is_ok() => Ok(v.id.clone()),
                _ => Err(why),
            }
        }
    }
}

/// The plan for a request of `template` given the clouds in configuration order and the gateways
/// currently in the instance.
pub fn plan(reg: &Registry, clouds: &[CloudView], template: &str, members: &[&str]) -> Plan {
    // 1. Resume a stopped VM of the same template (longest idle first: it is the next to be destroyed).
    for c in clouds {
        if usable(c, members).is_err() {
            continue;
        }
        let stopped = reg
            .stopped(&c.name)
            .filter(|v| v.template == template)
            .min_by_key(|v| (v.since, v.name.clone()));
        if let Some(v) = stopped {
            if let Some(id) = &v.id {
                return Plan::Resume {
                    cloud: c.name.clone(),
                    id: id.clone(),
                };
            }
        }
    }
    // 2. The first cloud with free room, then the first where a stopped VM can make room.
    let mut why = Vec::new();
    let mut replace = None;
    for c in clouds {
        match usable(c, members).and_then(|()| room(reg, c)) {
            Ok(None) => {
                return Plan::Create {
                    cloud: c.name.clone(),
                    destroy_first: None,
                }
            }
            Ok(Some(id)) => {
                replace.get_or_insert((c.name.clone(), id));
            }
            Err(w) => why.push((c.name.clone(), w)),
        }
    }
    match replace {
        Some((cloud, id)) => Plan::Create {
            cloud,
            destroy_first: Some(id),
        },
        None => Plan::Refuse(Refusal(why)),
    }
}

/// The clouds as the allocator (`betaas_core::allocator::decide`) sees them: a cloud without room
/// (limits, quota) shows as full, so `decide` falls back to local or cancels.
pub fn allocator_view(reg: &Registry, clouds: &[CloudView]) -> Vec<Remote> {
    clouds
        .iter()
        .map(|c| {
            let busy = reg
                .on_cloud(&c.name)
                .filter(|v| v.state != RemoteState::Stopped)
                .count();
            let busy = u32::try_from(busy).unwrap_or(u32::MAX);
            let in_use = match room(reg, c) {
                Ok(_) => busy.min(c.vm_limit.saturating_sub(1)),
                Err(_) => c.vm_limit.max(busy),
            };
            Remote {
                name: c.name.clone(),
                provider: c.provider,
                max_vms: c.vm_limit,
                in_use,
                reachable: c.reachable,
                owner: c.owner.clone(),
                cost_per_vm: c.cost_per_vm,
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn cloud(name: &str, limit: u32) -> CloudView {
        CloudView {
            name: name.into(),
            provider: Provider::Openstack,
            owner: "gw-1".into(),
            vm_limit: limit,
            cost_per_vm: 1.0,
            cost_limit: None,
            reachable: true,
            quota_room: None,
        }
    }

    fn vm(cloud: &str, id: &str, template: &str, state: RemoteState, since: u64) -> RemoteVm {
        RemoteVm {
            cloud: cloud.into(),
            name: format!("n-{id}"),
            id: Some(id.into()),
            template: template.into(),
            state,
            since,
        }
    }

    const M: &[&str] = &["gw-1", "gw-2"];

    fn create(c: &str) -> Plan {
        Plan::Create {
            cloud: c.into(),
            destroy_first: None,
        }
    }

    #[test]
    fn empty_registry_creates_on_first_cloud() {
        let r = Registry::default();
        assert_eq!(
            plan(&r, &[cloud("a", 2), cloud("b", 2)], "t", M),
            create("a")
        );
    }

    #[test]
    fn no_cloud_configured_is_refused() {
        assert_eq!(
            plan(&Registry::default(), &[], "t", M),
            Plan::Refuse(Refusal(vec![]))
        );
        assert_eq!(Refusal(vec![]).to_string(), "no remote cloud configured");
    }

    #[test]
    fn stopped_vm_of_same_template_is_resumed_not_created() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "x", "other", RemoteState::Stopped, 5));
        r.vms.push(vm("b", "y", "t", RemoteState::Stopped, 9));
        r.vms.push(vm("b", "z", "t", RemoteState::Stopped, 7));
        r.vms.push(vm("a", "w", "t", RemoteState::Running, 1));
        let p = plan(&r, &[cloud("a", 5), cloud("b", 5)], "t", M);
        // Longest idle stopped VM of the template, on the first usable cloud that has one.
        assert_eq!(
            p,
            Plan::Resume {
                cloud: "b".into(),
                id: "z".into()
            }
        );
    }

    #[test]
    fn stopped_vm_on_unusable_cloud_is_not_resumed() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "x", "t", RemoteState::Stopped, 5));
        let mut a = cloud("a", 5);
        a.reachable = false;
        assert_eq!(plan(&r, &[a.clone(), cloud("b", 5)], "t", M), create("b"));
        a.reachable = true;
        a.owner = "gone".into();
        assert_eq!(plan(&r, &[a, cloud("b", 5)], "t", M), create("b"));
    }

    #[test]
    fn vm_limit_is_never_exceeded_and_next_cloud_is_used() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "1", "t", RemoteState::Running, 0));
        r.vms.push(vm("a", "2", "u", RemoteState::Creating, 0));
        assert_eq!(
            plan(&r, &[cloud("a", 2), cloud("b", 1)], "t", M),
            create("b")
        );
        r.vms.push(vm("b", "3", "t", RemoteState::Cleanup, 0));
        let p = plan(&r, &[cloud("a", 2), cloud("b", 1)], "t", M);
        assert_eq!(
            p,
            Plan::Refuse(Refusal(vec![
                ("a".into(), Why::VmLimit(2)),
                ("b".into(), Why::VmLimit(1))
            ]))
        );
        // Zero limit: never used.
        assert!(matches!(
            plan(&Registry::default(), &[cloud("a", 0)], "t", M),
            Plan::Refuse(_)
        ));
    }

    #[test]
    fn cost_limit_is_never_exceeded() {
        let mut a = cloud("a", 10);
        a.cost_per_vm = 0.1;
        a.cost_limit = Some(0.3);
        let mut r = Registry::default();
        for i in 0..2 {
            r.vms
                .push(vm("a", &i.to_string(), "t", RemoteState::Running, 0));
        }
        // 3 × 0.1 = 0.30000000000000004 must still count as within 0.3.
        assert_eq!(plan(&r, &[a.clone()], "u", M), create("a"));
        r.vms.push(vm("a", "2", "t", RemoteState::Running, 0));
        assert_eq!(
            plan(&r, &[a], "u", M),
            Plan::Refuse(Refusal(vec![("a".into(), Why::CostLimit(0.3))]))
        );
    }

    #[test]
    fn full_cloud_replaces_its_longest_idle_stopped_vm_only_when_no_cloud_has_free_room() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "1", "u", RemoteState::Stopped, 50));
        r.vms.push(vm("a", "2", "v", RemoteState::Stopped, 40));
        r.vms.push(vm("b", "3", "t", RemoteState::Running, 0));
        let clouds = [cloud("a", 2), cloud("b", 2)];
        // b has free room: stop-over-destroy means no stopped VM is sacrificed.
        assert_eq!(plan(&r, &clouds, "t", M), create("b"));
        let clouds = [cloud("a", 2), cloud("b", 1)];
        assert_eq!(
            plan(&r, &clouds, "t", M),
            Plan::Create {
                cloud: "a".into(),
                destroy_first: Some("2".into())
            }
        );
    }

    #[test]
    fn quota_of_the_cloud_counts() {
        let mut a = cloud("a", 10);
        a.quota_room = Some(0);
        assert_eq!(
            plan(&Registry::default(), &[a.clone(), cloud("b", 1)], "t", M),
            create("b")
        );
        let mut r = Registry::default();
        r.vms.push(vm("a", "1", "u", RemoteState::Stopped, 3));
        assert_eq!(
            plan(&r, &[a], "t", M),
            Plan::Create {
                cloud: "a".into(),
                destroy_first: Some("1".into())
            }
        );
    }

    #[test]
    fn owner_must_be_in_the_instance() {
        let mut a = cloud("a", 1);
        a.owner = "gw-9".into();
        let p = plan(&Registry::default(), &[a], "t", M);
        assert_eq!(
            p,
            Plan::Refuse(Refusal(vec![("a".into(), Why::OwnerAbsent)]))
        );
        assert!(p_text(&p).contains("not in the instance"));
    }

    fn p_text(p: &Plan) -> String {
        match p {
            Plan::Refuse(r) => r.to_string(),
            _ => String::new(),
        }
    }

    #[test]
    fn idle_stopped_vms_are_destroyed_after_their_time_and_cleanup_always() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "s", "t", RemoteState::Stopped, 100));
        r.vms.push(vm("a", "r", "t", RemoteState::Running, 0));
        r.vms.push(vm("a", "c", "t", RemoteState::Cleanup, 150));
        r.vms.push(vm("b", "o", "t", RemoteState::Stopped, 0));
        let ids = |v: Vec<RemoteVm>| v.into_iter().filter_map(|v| v.id).collect::<Vec<_>>();
        assert_eq!(ids(r.due_for_destruction("a", 60, 159)), ["c"]);
        assert_eq!(ids(r.due_for_destruction("a", 60, 160)), ["s", "c"]);
        assert_eq!(ids(r.due_for_destruction("b", 60, 60)), ["o"]);
        // A clock that went backwards never destroys.
        assert_eq!(ids(r.due_for_destruction("b", 60, 0)), Vec::<String>::new());
    }

    #[test]
    fn lifecycle_bookkeeping() {
        let mut r = Registry::default();
        r.begin_create("a", "t", "betaas-1", 10);
        assert_eq!(r.count("a"), 1);
        assert_eq!(r.vms[0].state, RemoteState::Creating);
        r.created("a", "betaas-1", "id-1", 11);
        r.set_state("a", "id-1", RemoteState::Running, 12);
        r.set_state("a", "id-1", RemoteState::Stopped, 20);
        assert_eq!(r.vms[0].since, 20);
        assert_eq!(
            plan(&r, &[cloud("a", 1)], "t", M),
            Plan::Resume {
                cloud: "a".into(),
                id: "id-1".into()
            }
        );
        r.remove("a", "id-1");
        assert_eq!(r.count("a"), 0);
        // Power cut during create: the entry becomes cleanup, found by name later.
        r.begin_create("a", "t", "betaas-2", 30);
        r.after_restart(40);
        assert_eq!(r.due_for_destruction("a", 1000, 40)[0].name, "betaas-2");
        r.forget_by_name("a", "betaas-2");
        assert!(r.vms.is_empty());
        r.begin_create("a", "t", "betaas-3", 50);
        r.set_cleanup_by_name("a", "betaas-3", 51);
        assert_eq!(r.vms[0].state, RemoteState::Cleanup);
    }

    #[test]
    fn allocator_sees_full_or_unreachable_clouds() {
        let mut r = Registry::default();
        r.vms.push(vm("a", "1", "t", RemoteState::Running, 0));
        let mut b = cloud("b", 3);
        b.reachable = false;
        let v = allocator_view(&r, &[cloud("a", 1), b, cloud("c", 2)]);
        assert_eq!((v[0].in_use, v[0].max_vms), (1, 1));
        assert!(!v[1].reachable);
        assert_eq!((v[2].in_use, v[2].max_vms), (0, 2));
        // A full cloud whose stopped VM can be replaced still shows room.
        r.vms[0].state = RemoteState::Stopped;
        let v = allocator_view(&r, &[cloud("a", 1)]);
        assert!(v[0].in_use < v[0].max_vms);
    }

    /// Every small registry × limit combination: a plan never takes a cloud past its limit.
    #[test]
    fn exhaustive_limit_property() {
        let states = [
            RemoteState::Creating,
            RemoteState::Running,
            RemoteState::Stopped,
            RemoteState::Cleanup,
        ];
        for limit in 0..4u32 {
            for n in 0..5usize {
                for mask in 0..states.len().pow(n as u32) {
                    let mut r = Registry::default();
                    let mut m = mask;
                    for i in 0..n {
                        let s = states[m % states.len()];
                        m /= states.len();
                        r.vms.push(vm(
                            "a",
                            &i.to_string(),
                            if i % 2 == 0 { "t" } else { "u" },
                            s,
                            i as u64,
                        ));
                    }
                    let c = [cloud("a", limit)];
                    let after = match plan(&r, &c, "t", M) {
                        Plan::Create {
                            destroy_first: None,
                            ..
                        } => r.count("a") + 1,
                        Plan::Create {
                            destroy_first: Some(id),
                            ..
                        } => {
                            let v = r.vms.iter().find(|v| v.id.as_deref() == Some(&id)).unwrap();
                            assert_eq!(v.state, RemoteState::Stopped);
                            r.count("a")
                        }
                        Plan::Resume { id, .. } => {
                            let v = r.vms.iter().find(|v| v.id.as_deref() == Some(&id)).unwrap();
                            assert_eq!((v.state, v.template.as_str()), (RemoteState::Stopped, "t"));
                            r.count("a")
                        }
                        Plan::Refuse(_) => {
                            assert!(r.count("a") >= limit || limit == 0);
                            continue;
                        }
                    };
                    assert!(
                        after <= limit.max(r.count("a")),
                        "limit {limit} n {n} mask {mask}"
                    );
                    let create = matches!(
                        plan(&r, &c, "t", M),
                        Plan::Create {
                            destroy_first: None,
                            ..
                        }
                    );
                    if create {
                        assert!(r.count("a") < limit);
                    }
                    // The allocator's view agrees with the plan on whether there is room.
                    let v = &allocator_view(&r, &c)[0];
                    assert_eq!(
                        v.in_use < v.max_vms,
                        !matches!(plan(&r, &c, "x", M), Plan::Refuse(_))
                    );
                }
            }
        }
    }
}
