//! The TaaS resources manager's choice (paper §III, Figure 2): run a requested VM on a gateway of
//! the instance (`Local`), on a remote cloud (`Remote`) or not at all (`Cancel`).
//!
//! [`decide`] is the whole algorithm; it is pure and deterministic (ties are broken by gateway id,
//! never by hash order), and every rule that fired is explained in [`Decision::rules`].
//! The baselines the simulator compares against share its filters (trust, battery,
//! virtualization, capacity) and its remote fallback, and differ only in the local choice.

use std::cmp::Reverse;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of CPUs, memory and disk. CPUs are whole vCPUs: no overcommit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Res {
    pub cpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
}

impl Res {
    pub const fn new(cpus: u32, mem_mb: u64, disk_gb: u64) -> Res {
        Res {
            cpus,
            mem_mb,
            disk_gb,
        }
    }
    pub fn fits_in(&self, free: &Res) -> bool {
        self.cpus <= free.cpus && self.mem_mb <= free.mem_mb && self.disk_gb <= free.disk_gb
    }
    pub fn saturating_sub(&self, o: &Res) -> Res {
        Res::new(
            self.cpus.saturating_sub(o.cpus),
            self.mem_mb.saturating_sub(o.mem_mb),
            self.disk_gb.saturating_sub(o.disk_gb),
        )
    }
    pub fn plus(&self, o: &Res) -> Res {
        Res::new(
            self.cpus.saturating_add(o.cpus),
            self.mem_mb.saturating_add(o.mem_mb),
            self.disk_gb.saturating_add(o.disk_gb),
        )
    }
    pub fn min(&self, o: &Res) -> Res {
        Res::new(
            self.cpus.min(o.cpus),
            self.mem_mb.min(o.mem_mb),
            self.disk_gb.min(o.disk_gb),
        )
    }
}

impl fmt::Display for Res {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vCPU/{} MB/{} GB",
            self.cpus, self.mem_mb, self.disk_gb
        )
    }
}

/// What a VM is for (paper §II.B). Storage nodes and light apps have priority and stay local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    #[serde(rename = "storage")]
    Storage,
    #[serde(rename = "compute")]
    Compute,
    #[serde(rename = "app-light")]
    AppLight,
    #[serde(rename = "app-heavy")]
    AppHeavy,
    #[serde(rename = "gateway")]
    Gateway,
}

impl Role {
    /// Compute nodes and heavy apps: want a powerful host, may go remote, yield when resources are short.
    pub fn is_heavy(self) -> bool {
        matches!(self, Role::Compute | Role::AppHeavy)
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Storage => "storage node",
            Role::Compute => "compute node",
            Role::AppLight => "light app",
            Role::AppHeavy => "heavy app",
            Role::Gateway => "logical gateway",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Virt {
    Kvm,
    /// Emulated: works, but too slow to count as powerful.
    Qemu,
    Lxc,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub vcpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
    pub role: Role,
}

impl Template {
    pub fn res(&self) -> Res {
        Res::new(self.vcpus, self.mem_mb, self.disk_gb)
    }
    /// "Most expensive" order: memory first (the scarce resource on gateways), then CPUs, disk, name.
    fn cost_key(&self) -> (u64, u32, u64, &str) {
        (self.mem_mb, self.vcpus, self.disk_gb, &self.name)
    }
}

/// One gateway as the instance sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub id: String,
    pub capacity: Res,
    /// Reserved by the VMs running on it.
    pub used: Res,
    /// Holt forecast of the free resources at the decision horizon (the host's own load included);
    /// `None` when there is no history yet. The paper's policy judges free space by it.
    pub forecast_free: Option<Res>,
    pub virt: Virt,
    /// 0..=1: failures, network issues and reputation folded into one score by the instance manager.
    pub trust: f64,
    /// 0..=1, `None` on mains power.
    pub battery: Option<f64>,
    pub vms: u32,
    pub powerful: bool,
}

impl Gateway {
    pub fn free_now(&self) -> Res {
        self.capacity.saturating_sub(&self.used)
    }
    /// What the paper's policy believes is free: the lower of now and the forecast.
    pub fn judged_free(&self) -> Res {
        match &self.forecast_free {
            Some(f) => self.free_now().min(f),
            None => self.free_now(),
        }
    }
    fn is_powerful(&self) -> bool {
        self.powerful && self.virt != Virt::Qemu
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openstack,
    Opennebula,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    pub name: String,
    pub provider: Provider,
    pub max_vms: u32,
    pub in_use: u32,
    pub reachable: bool,
    /// The gateway holding the credentials: the cloud is usable only while it is in the instance.
    pub owner: String,
    /// Cost of one more VM, in whatever unit the policy's limit uses.
    pub cost_per_vm: f64,
}

/// The instance state a decision is taken on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceView {
    pub gateways: Vec<Gateway>,
    /// The registered templates: the most expensive one is what the local choice keeps room for.
    pub templates: Vec<Template>,
    pub remotes: Vec<Remote>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// A number unique to the request: the seed of the `random` baseline.
    pub id: u64,
    pub template: Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    /// The paper's.
    Betaas,
    FirstFit,
    /// Least free memory left.
    BestFit,
    /// Most free resources left (CPU, memory and disk fractions summed).
    WorstFit,
    /// Uniform among the gateways that fit, seeded.
    Random,
    /// OpenStack Nova's filter scheduler with the RAM weigher (spread): most free memory.
    NovaSpread,
    /// Kubernetes' MostAllocated scoring: highest mean CPU and memory allocation after placement.
    K8sMostAllocated,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 7] = [
        PolicyKind::Betaas,
        PolicyKind::FirstFit,
        PolicyKind::BestFit,
        PolicyKind::WorstFit,
        PolicyKind::Random,
        PolicyKind::NovaSpread,
        PolicyKind::K8sMostAllocated,
    ];
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Betaas => "betaas",
            PolicyKind::FirstFit => "first-fit",
            PolicyKind::BestFit => "best-fit",
            PolicyKind::WorstFit => "worst-fit",
            PolicyKind::Random => "random",
            PolicyKind::NovaSpread => "nova-spread",
            PolicyKind::K8sMostAllocated => "k8s-most-allocated",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
                format!("unknown policy {s:?}: use one of {}", names.join(", "))
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Gateways with a lower trust score are never chosen.
    pub min_trust: f64,
    /// Battery-powered gateways below this charge are never chosen: a new VM would drain them.
    pub min_battery: f64,
    /// Compute nodes and heavy apps may not take the last room for the largest registered storage
    /// node, light app or logical gateway: the paper's priority rule, made concrete for decisions
    /// taken one request at a time. `false` turns the rule off.
    pub reserve_for_priority: bool,
    /// Remotes costing more per VM are not used; `None`: no limit.
    pub max_cost_per_vm: Option<f64>,
    /// Seed of the `random` baseline.
    pub seed: u64,
}

impl Policy {
    pub fn new(kind: PolicyKind) -> Policy {
        Policy {
            kind,
            min_trust: 0.5,
            min_battery: 0.2,
            reserve_for_priority: true,
            max_cost_per_vm: None,
            seed: 1,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(PolicyKind::Betaas)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// No eligible gateway has the resources and no remote cloud is usable.
    NoResources,
    /// Local room is reserved for storage nodes and light apps and no remote cloud is usable.
    ReservedForPriority,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::NoResources => "no gateway has the resources and no remote cloud is usable",
            CancelReason::ReservedForPriority => {
                "the remaining local resources are reserved for storage nodes and light apps and no remote cloud is usable"
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Local(String),
    Remote(String),
    Cancel(CancelReason),
}

/// One rule that fired, with its name (stable, for tests and logs) and the human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub rule: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub rules: Vec<Fired>,
    /// For `Remote`: the gateway holding the credentials that should carry it out (a cloud may have
    /// several holders; the name alone does not say which one has room). `None` otherwise.
    pub holder: Option<String>,
}

impl Decision {
    pub fn fired(&self, rule: &str) -> bool {
        self.rules.iter().any(|f| f.rule == rule)
    }
    /// All explanations, joined.
    pub fn explanation(&self) -> String {
        let v: Vec<&str> = self.rules.iter().map(|f| f.text.as_str()).collect();
        v.join("; ")
    }
}

// Rule names.
pub const EXCLUDED: &str = "excluded";
pub const NO_LOCAL_FIT: &str = "no-local-fit";
pub const SHORTAGE_PRIORITY: &str = "shortage-priority";
pub const NOT_POWERFUL: &str = "not-powerful";
pub const STAYS_LOCAL: &str = "stays-local";
pub const REMOTE_UNUSABLE: &str = "remote-unusable";
pub const REMOTE_CHOSEN: &str = "remote-chosen";
pub const PACK_NO_BIGGEST: &str = "pack-where-biggest-cannot-go";
pub const KEEP_ROOM: &str = "keep-room-for-biggest";
pub const SPREAD: &str = "spread";
pub const BASELINE: &str = "baseline";

/// The decision for one request (paper Figure 2).
///
/// 1. Exclude gateways without virtualization, below the trust threshold, or on a low battery.
/// 2. If no remaining gateway has the resources (judged by the Holt forecast): remote, else cancel.
/// 3. Storage nodes, light apps and logical gateways stay local whenever a gateway fits.
///    Compute nodes and heavy apps may not take the last room for the largest of those: when
///    every placement would, resources are short → remote, else cancel. If no gateway that fits
///    is powerful → remote, or local anyway when no remote is usable.
/// 4. Local choice: a gateway already running VMs that cannot host the most expensive template
///    anyway but fits this request takes it (the roomier gateways stay free); otherwise avoid
///    taking the last room for the most expensive template; then spread: fewest VMs, powerful
///    first, most free memory, id.
///
/// The baselines run step 1 and 2 and their own local choice.
pub fn decide(req: &Request, view: &InstanceView, policy: &Policy) -> Decision {
    let mut rules = Vec::new();
    let want = req.template.res();
    let betaas = policy.kind == PolicyKind::Betaas;
    // Baselines look at the current free resources; the paper's policy at the forecast.
    let free = |g: &Gateway| {
        if betaas {
            g.judged_free()
        } else {
            g.free_now()
        }
    };

    // 1. Eligibility.
    let eligible = eligible_gateways(view, policy, &mut rules);
    let fitting: Vec<&Gateway> = eligible
        .iter()
        .copied()
        .filter(|g| want.fits_in(&free(g)))
        .collect();

    // 2. The instance cannot provide the resources.
    if fitting.is_empty() {
        rules.push(Fired {
            rule: NO_LOCAL_FIT,
            text: format!(
                "no eligible gateway has {want} free for {} ({})",
                req.template.name,
                req.template.role.name()
            ),
        });
        return remote_or(CancelReason::NoResources, view, policy, rules);
    }
    if !betaas {
        let g = baseline_choice(policy, req, &fitting, &want);
        rules.push(Fired {
            rule: BASELINE,
            text: format!("{} chose {}", policy.kind, g.id),
        });
        return Decision {
            outcome: Outcome::Local(g.id.clone()),
            rules,
            holder: None,
        };
    }

    // 3. Role rules.
    let mut candidates = fitting;
    if req.template.role.is_heavy() {
        candidates = match priority_room(req, view, &eligible, candidates, policy) {
            Ok(c) => c,
            Err(text) => {
                rules.push(Fired {
                    rule: SHORTAGE_PRIORITY,
                    text,
                });
                return remote_or(CancelReason::ReservedForPriority, view, policy, rules);
            }
        };
        let powerful: Vec<&Gateway> = candidates
            .iter()
            .copied()
            .filter(|g| g.is_powerful())
            .collect();
        if powerful.is_empty() {
            rules.push(Fired {
                rule: NOT_POWERFUL,
                text: format!(
                    "a {} wants a powerful gateway and none that fits is (KVM or LXC and marked powerful)",
                    req.template.role.name()
                ),
            });
            match usable_cloud(view, policy) {
                Ok(c) => return remote_decision(c, rules),
                Err(why) => rules.push(Fired {
                    rule: REMOTE_UNUSABLE,
                    text: format!("{why}: running it locally instead"),
                }),
            }
        } else {
            candidates = powerful;
        }
    } else {
        rules.push(Fired {
            rule: STAYS_LOCAL,
            text: format!(
                "a {} stays local while a gateway fits",
                req.template.role.name()
            ),
        });
    }

    // 4. Local choice.
    let chosen = local_choice(req, view, &eligible, candidates, &mut rules);
    Decision {
        outcome: Outcome::Local(chosen.id.clone()),
        rules,
        holder: None,
    }
}

fn eligible_gateways<'v>(
    view: &'v InstanceView,
    policy: &Policy,
    rules: &mut Vec<Fired>,
) -> Vec<&'v Gateway> {
    let mut out = Vec::with_capacity(view.gateways.len());
    let mut excluded = Vec::new();
    for g in &view.gateways {
        let why = if g.virt == Virt::None {
            Some("no virtualization".to_owned())
        } else if below(g.trust, policy.min_trust) {
            Some(format!("trust {:.2} < {:.2}", g.trust, policy.min_trust))
        } else {
            g.battery
                .filter(|b| below(*b, policy.min_battery))
                .map(|b| {
                    format!(
                        "battery {:.0}% < {:.0}%: a new VM would drain it",
                        b * 100.0,
                        policy.min_battery * 100.0
                    )
                })
        };
        match why {
            Some(w) => excluded.push((g, w)),
            None => out.push(g),
        }
    }
    if !excluded.is_empty() {
        // Large instances: name a few, count the rest, keep the explanation readable.
        const SHOWN: usize = 5;
        let mut text = format!("excluded {} gateway(s): ", excluded.len());
        let named: Vec<String> = excluded
            .iter()
            .take(SHOWN)
            .map(|(g, w)| format!("{} ({w})", g.id))
            .collect();
        text.push_str(&named.join(", "));
        if excluded.len() > SHOWN {
            text.push_str(&format!(" and {} more", excluded.len() - SHOWN));
        }
        rules.push(Fired {
            rule: EXCLUDED,
            text,
        });
    }
    out
}

/// A remote cloud the allocator may use, seen across all its holders.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudChoice<'v> {
    /// The holder entry chosen to carry the request out (`owner` is the holder).
    pub remote: &'v Remote,
    /// VMs on the cloud across all its holders.
    pub in_use: u32,
    /// The cloud's limit: the smallest any holder states.
    pub max_vms: u32,
    /// How many entries name this cloud.
    pub holders: usize,
}

/// The remote cloud to use (the chosen holder's entry), or why none is usable. See [`usable_cloud`].
pub fn usable_remote<'v>(view: &'v InstanceView, policy: &Policy) -> Result<&'v Remote, String> {
    usable_cloud(view, policy).map(|c| c.remote)
}

/// The remote cloud to use and the holder to ask, or why none is usable.
///
/// Several gateways may hold credentials for one cloud (entries with the same `name`, different
/// `owner`). The limit is the cloud's, not a holder's: its VMs are counted across all entries
/// with that name (unreachable holders included: their VMs still run there), against the smallest
/// `max_vms` any holder states (holders may be configured differently; the strictest wins so
/// that no holder's limit is exceeded). A cloud is full when that count reaches the limit.
/// Among the holders that can act (reachable, in the instance, within the cost limit): fewest VMs
/// of its own, then owner id. Among clouds: cheapest, then most headroom, then name.
pub fn usable_cloud<'v>(
    view: &'v InstanceView,
    policy: &Policy,
) -> Result<CloudChoice<'v>, String> {
    if view.remotes.is_empty() {
        return Err("no remote cloud is configured".into());
    }
    // Clouds by name (BTreeMap: the order of the entries in the view does not matter).
    let mut clouds: std::collections::BTreeMap<&str, Vec<&Remote>> = Default::default();
    for r in &view.remotes {
        clouds.entry(r.name.as_str()).or_default().push(r);
    }
    let mut why = Vec::new();
    let mut best: Option<CloudChoice<'v>> = None;
    for (name, holders) in clouds {
        let in_use = holders.iter().fold(0u32, |n, r| n.saturating_add(r.in_use));
        let max_vms = holders.iter().map(|r| r.max_vms).min().unwrap_or(0);
        if in_use >= max_vms {
            let across = match holders.len() {
                1 => String::new(),
                n => format!(" across {n} holders"),
            };
            why.push(format!(
                "{name} at its VM limit ({in_use}/{max_vms}{across})"
            ));
            continue;
        }
        let mut holder: Option<&Remote> = None;
        for r in holders.iter().copied() {
            // Name the holder only when there are several: one holder is the cloud.
            let who = if holders.len() > 1 {
                format!(" (holder {})", r.owner)
            } else {
                String::new()
            };
            let problem = if !r.reachable {
                Some(format!("{name} unreachable{who}"))
            } else if policy
                .max_cost_per_vm
                .is_some_and(|m| below(m, r.cost_per_vm))
            {
                Some(format!(
                    "{name} costs {} per VM, over the limit{who}",
                    r.cost_per_vm
                ))
            } else if !view.gateways.iter().any(|g| g.id == r.owner) {
                Some(format!(
                    "{name} its credentials' owner {} is not in the instance",
                    r.owner
                ))
            } else {
                None
            };
            match problem {
                Some(p) => why.push(p),
                None => {
                    if holder.is_none_or(|h| (r.in_use, &r.owner) < (h.in_use, &h.owner)) {
                        holder = Some(r);
                    }
                }
            }
        }
        let Some(remote) = holder else { continue };
        let c = CloudChoice {
            remote,
            in_use,
            max_vms,
            holders: holders.len(),
        };
        let better = best.as_ref().is_none_or(|b| {
            match c.remote.cost_per_vm.total_cmp(&b.remote.cost_per_vm) {
                std::cmp::Ordering::Equal => {
                    (Reverse(c.max_vms - c.in_use), name)
                        < (Reverse(b.max_vms - b.in_use), b.remote.name.as_str())
                }
                o => o.is_lt(),
            }
        });
        if better {
            best = Some(c);
        }
    }
    best.ok_or_else(|| format!("no remote cloud is usable ({})", why.join(", ")))
}

fn remote_decision(c: CloudChoice<'_>, mut rules: Vec<Fired>) -> Decision {
    let r = c.remote;
    let via = if c.holders > 1 {
        format!(" via holder {}", r.owner)
    } else {
        String::new()
    };
    rules.push(Fired {
        rule: REMOTE_CHOSEN,
        text: format!(
            "remote cloud {}{via} ({} of {} VMs in use)",
            r.name, c.in_use, c.max_vms
        ),
    });
    Decision {
        outcome: Outcome::Remote(r.name.clone()),
        rules,
        holder: Some(r.owner.clone()),
    }
}

fn remote_or(
    reason: CancelReason,
    view: &InstanceView,
    policy: &Policy,
    mut rules: Vec<Fired>,
) -> Decision {
    match usable_cloud(view, policy) {
        Ok(c) => remote_decision(c, rules),
        Err(why) => {
            rules.push(Fired {
                rule: REMOTE_UNUSABLE,
                text: format!("{why}: cancelled"),
            });
            Decision {
                outcome: Outcome::Cancel(reason),
                rules,
                holder: None,
            }
        }
    }
}

/// For a compute node or heavy app: the fitting gateways on which it leaves some eligible gateway
/// able to host the largest registered storage node / light app / logical gateway (that room
/// belongs to the priority roles), or why there is none: resources are short.
fn priority_room<'v>(
    req: &Request,
    view: &InstanceView,
    eligible: &[&Gateway],
    fitting: Vec<&'v Gateway>,
    policy: &Policy,
) -> Result<Vec<&'v Gateway>, String> {
    let protected = view
        .templates
        .iter()
        .filter(|t| !t.role.is_heavy())
        .max_by(|a, b| a.cost_key().cmp(&b.cost_key()));
    let Some(protected) = protected.filter(|_| policy.reserve_for_priority) else {
        return Ok(fitting);
    };
    let keep = protected.res();
    let want = req.template.res();
    let hosts: Vec<&Gateway> = eligible
        .iter()
        .copied()
        .filter(|g| keep.fits_in(&g.judged_free()))
        .collect();
    if hosts.is_empty() {
        return Ok(fitting); // no room for it already: nothing left to protect
    }
    // The room survives a placement if another gateway keeps it, or the chosen one still has it.
    let survives = |target: &Gateway| {
        hosts
            .iter()
            .any(|h| h.id != target.id || keep.fits_in(&h.judged_free().saturating_sub(&want)))
    };
    let ok: Vec<&Gateway> = fitting.into_iter().filter(|g| survives(g)).collect();
    if ok.is_empty() {
        return Err(format!(
            "resources are short: placing {} anywhere would leave no gateway able to host {} ({}); that room is kept for storage nodes and light apps",
            req.template.name,
            protected.name,
            protected.role.name()
        ));
    }
    Ok(ok)
}

fn local_choice<'v>(
    req: &Request,
    view: &InstanceView,
    eligible: &[&'v Gateway],
    mut candidates: Vec<&'v Gateway>,
    rules: &mut Vec<Fired>,
) -> &'v Gateway {
    let want = req.template.res();
    let after = |g: &Gateway| g.judged_free().saturating_sub(&want);
    let biggest = view
        .templates
        .iter()
        .max_by(|a, b| a.cost_key().cmp(&b.cost_key()));
    if let Some(big) = biggest {
        let big_res = big.res();
        // The paper's example: B already runs a VM and cannot host the biggest template anyway,
        // but fits this request → B, and the roomier gateway stays free for big VMs.
        let packable = candidates
            .iter()
            .copied()
            .filter(|g| g.vms > 0 && !big_res.fits_in(&g.judged_free()))
            .min_by_key(|g| (after(g).mem_mb, after(g).cpus, g.id.as_str()));
        if let Some(g) = packable {
            rules.push(Fired {
                rule: PACK_NO_BIGGEST,
                text: format!(
                    "{} runs {} VM(s) and cannot host the biggest template {} anyway but fits {}: placed there to keep roomier gateways free",
                    g.id, g.vms, big.name, req.template.name
                ),
            });
            return g;
        }
        // Do not take the last room for the biggest template if another choice keeps it.
        let hosts_big: Vec<&Gateway> = eligible
            .iter()
            .copied()
            .filter(|g| big_res.fits_in(&g.judged_free()))
            .collect();
        if let [only] = hosts_big[..] {
            if !big_res.fits_in(&after(only)) && candidates.len() > 1 {
                candidates.retain(|g| g.id != only.id);
                rules.push(Fired {
                    rule: KEEP_ROOM,
                    text: format!(
                        "{} is the last gateway able to host the biggest template {}: kept free",
                        only.id, big.name
                    ),
                });
            }
        }
    }
    // Spread: fewest VMs, then powerful, then the most free resources left (all three kinds, so a
    // gateway is not chosen for its memory when its CPUs are gone); with no VMs running this picks
    // the most powerful gateway.
    let share = |g: &Gateway| free_share(&after(g), &g.capacity);
    let g = candidates
        .iter()
        .copied()
        .min_by(|a, b| {
            (a.vms, !a.is_powerful())
                .cmp(&(b.vms, !b.is_powerful()))
                .then(share(b).total_cmp(&share(a)))
                .then(b.capacity.cpus.cmp(&a.capacity.cpus))
                .then(a.id.cmp(&b.id))
        })
        .expect("candidates is never empty: the caller checked that a gateway fits");
    rules.push(Fired {
        rule: SPREAD,
        text: format!(
            "spread: {} runs {} VM(s){}, {:.0}% of its CPU/memory/disk would stay free",
            g.id,
            g.vms,
            if g.is_powerful() { ", powerful" } else { "" },
            share(g) / 3.0 * 100.0
        ),
    });
    g
}

fn baseline_choice<'v>(
    policy: &Policy,
    req: &Request,
    fitting: &[&'v Gateway],
    want: &Res,
) -> &'v Gateway {
    let after = |g: &Gateway| g.free_now().saturating_sub(want);
    let frac = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    let by_float_max = |score: &dyn Fn(&Gateway) -> f64| -> &'v Gateway {
        let mut best = fitting[0];
        for &g in &fitting[1..] {
            match score(g).total_cmp(&score(best)) {
                std::cmp::Ordering::Greater => best = g,
                std::cmp::Ordering::Equal if g.id < best.id => best = g,
                _ => {}
            }
        }
        best
    };
    match policy.kind {
        PolicyKind::FirstFit | PolicyKind::Betaas => fitting[0],
        PolicyKind::BestFit => fitting
            .iter()
            .copied()
            .min_by_key(|g| (after(g).mem_mb, g.id.as_str()))
            .unwrap_or(fitting[0]),
        PolicyKind::NovaSpread => fitting
            .iter()
            .copied()
            .min_by_key(|g| (Reverse(after(g).mem_mb), g.id.as_str()))
            .unwrap_or(fitting[0]),
        PolicyKind::WorstFit => by_float_max(&|g| free_share(&after(g), &g.capacity)),
        PolicyKind::K8sMostAllocated => by_float_max(&|g| {
            let c = &g.capacity;
            let u = g.used.plus(want);
            (frac(f64::from(u.cpus), f64::from(c.cpus)) + frac(u.mem_mb as f64, c.mem_mb as f64))
                / 2.0
        }),
        PolicyKind::Random => {
            let i = splitmix64(policy.seed ^ req.id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                % fitting.len() as u64;
            fitting[i as usize]
        }
    }
}

/// The share of a gateway's resources free in `free`: CPU, memory and disk fractions summed (0..=3).
fn free_share(free: &Res, capacity: &Res) -> f64 {
    let frac = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
    frac(f64::from(free.cpus), f64::from(capacity.cpus))
        + frac(free.mem_mb as f64, capacity.mem_mb as f64)
        + frac(free.disk_gb as f64, capacity.disk_gb as f64)
}

/// `x < min`, with NaN counting as below: a score that is not a number never passes a threshold.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn below(x: f64, min: f64) -> bool {
    !(x >= min)
}

/// SplitMix64: a tiny, well-mixed, seedable generator (no dependency, same numbers everywhere).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
