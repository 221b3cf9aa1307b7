//! The simulator: replays a scenario's requests and releases through one policy, keeping the
//! instance view up to date the way the instance manager would, and sums up the outcome.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::allocator::{
    decide, Gateway, InstanceView, Outcome, Policy, Remote, Request, Res, Virt,
};
use crate::forecast::Holt;
use crate::scenario::{ScRequest, Scenario};

/// How the simulator forecasts a gateway's own memory use (from `host_mem_used_mb`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForecastParams {
    pub alpha: f64,
    pub beta: f64,
    /// Samples ahead; the highest forecast over 1..=horizon is what the host may need.
    pub horizon: u32,
}

impl Default for ForecastParams {
    fn default() -> Self {
        ForecastParams {
            alpha: 0.5,
            beta: 0.3,
            horizon: 6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub request: usize,
    /// `local`, `remote` or `cancel`.
    pub decision: &'static str,
    /// The gateway or cloud; `null` when cancelled.
    pub target: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub local: usize,
    pub remote: usize,
    pub cancelled: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub local: usize,
    pub remote: usize,
    pub cancelled: usize,
    pub by_template: BTreeMap<String, Counts>,
    /// The first cancelled request.
    pub first_failure: Option<usize>,
    /// Free memory at the end, over the gateways that can virtualize.
    pub free_mem_mb_mean: f64,
    pub free_mem_mb_stddev: f64,
    /// Mean over the run of the share of free memory sitting on gateways too full to host the
    /// most expensive template: 0 = all free room usable for big VMs, 1 = all of it stranded.
    pub fragmentation: f64,
    /// Most VMs running remotely at any one time.
    pub remote_peak: u32,
    /// Local placements that fit now but not in the Holt forecast of the gateway's free resources:
    /// VMs that would be squeezed if the host's own load grows as forecast.
    pub at_risk: usize,
    /// Share of the storage node, light app and logical gateway requests accepted (local or
    /// remote): the roles the paper gives priority to. 1 when there were none.
    pub priority_accepted: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimOutput {
    pub policy: String,
    pub decisions: Vec<DecisionRecord>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy)]
enum Placed {
    Local(usize, Res),
    Remote(usize),
}

/// A simulation in progress; [`Sim::step`] one request at a time to inspect the view in between.
pub struct Sim<'s> {
    scenario: &'s Scenario,
    policy: Policy,
    view: InstanceView,
    /// Per gateway: total memory and the forecast peak of the host's own use.
    host_mem: Vec<(u64, Option<u64>)>,
    placed: Vec<Option<Placed>>,
    decisions: Vec<DecisionRecord>,
    by_template: BTreeMap<String, Counts>,
    frag_sum: f64,
    frag_n: usize,
    remote_peak: u32,
    at_risk: usize,
    /// Priority-role requests: (seen, accepted).
    priority: (usize, usize),
    biggest: Option<Res>,
}

impl<'s> Sim<'s> {
    pub fn new(scenario: &'s Scenario, policy: Policy, fp: ForecastParams) -> Sim<'s> {
        let mut host_mem = Vec::with_capacity(scenario.gateways.len());
        let gateways = scenario
            .gateways
            .iter()
            .map(|g| {
                let last = g
                    .host_mem_used_mb
                    .iter()
                    .rev()
                    .find(|v| v.is_finite())
                    .copied();
                let peak = Holt::new(fp.alpha, fp.beta).ok().and_then(|mut h| {
                    g.host_mem_used_mb.iter().for_each(|&v| h.update(v));
                    (1..=fp.horizon.max(1))
                        .filter_map(|k| h.forecast(k))
                        .reduce(f64::max)
                });
                let clamp = |v: f64| v.clamp(0.0, g.mem_mb as f64).round() as u64;
                // Every policy sees the host's current use as taken; the forecast is extra information.
                let cap_mem = g.mem_mb - last.map_or(0, clamp);
                host_mem.push((g.mem_mb, peak.map(clamp)));
                // VMs already running (checked to fit by Scenario::check). They are never released.
                let running = g
                    .running
                    .iter()
                    .filter_map(|n| scenario.templates.iter().find(|t| &t.name == n));
                let used = running.fold(Res::default(), |u, t| u.plus(&t.res()));
                Gateway {
                    id: g.id.clone(),
                    capacity: Res::new(g.cpus, cap_mem, g.disk_gb),
                    used,
                    forecast_free: None,
                    virt: g.virt,
                    trust: g.trust,
                    battery: g.battery,
                    vms: g.running.len() as u32,
                    powerful: g.powerful,
                }
            })
            .collect();
        let remotes = scenario
            .remote
            .iter()
            .map(|r| Remote {
                name: r.name.clone(),
                provider: r.provider,
                max_vms: r.max_vms,
                in_use: 0,
                reachable: r.reachable,
                owner: r.owner.clone(),
                cost_per_vm: r.cost_per_vm,
            })
            .collect();
        let biggest = scenario
            .templates
            .iter()
            .max_by_key(|t| (t.mem_mb, t.vcpus, t.disk_gb, t.name.clone()))
            .map(|t| t.res());
        let mut sim = Sim {
            scenario,
            policy,
            view: InstanceView {
                gateways,
                templates: scenario.templates.clone(),
                remotes,
            },
            host_mem,
            placed: vec![None; scenario.requests.len()],
            decisions: Vec::new(),
            by_template: BTreeMap::new(),
            frag_sum: 0.0,
            frag_n: 0,
            remote_peak: 0,
            at_risk: 0,
            priority: (0, 0),
            biggest,
        };
        for i in 0..sim.view.gateways.len() {
            sim.refresh_forecast(i);
        }
        sim
    }

    pub fn view(&self) -> &InstanceView {
        &self.view
    }

    fn refresh_forecast(&mut self, i: usize) {
        let g = &mut self.view.gateways[i];
        let (total, peak) = self.host_mem[i];
        g.forecast_free = peak.map(|p| {
            let free = g.free_now();
            Res::new(
                free.cpus,
                total.saturating_sub(p).saturating_sub(g.used.mem_mb),
                free.disk_gb,
            )
        });
    }

    /// Replays request `i` (in order); returns the decision for a VM request, `None` for a release.
    pub fn step(&mut self, i: usize) -> Option<DecisionRecord> {
        let record = match &self.scenario.requests[i] {
            ScRequest::Release { release } => {
                match self.placed[*release].take() {
                    Some(Placed::Local(g, res)) => {
                        let gw = &mut self.view.gateways[g];
                        gw.used = gw.used.saturating_sub(&res);
                        gw.vms = gw.vms.saturating_sub(1);
                        self.refresh_forecast(g);
                    }
                    Some(Placed::Remote(r)) => {
                        let r = &mut self.view.remotes[r];
                        r.in_use = r.in_use.saturating_sub(1);
                    }
                    None => {} // it was cancelled: nothing to give back
                }
                None
            }
            ScRequest::Template { template } => {
                // Checked by Scenario::check; a missing template is a cancelled request, not a panic.
                let t = self
                    .view
                    .templates
                    .iter()
                    .find(|t| &t.name == template)
                    .cloned();
                let counts = self.by_template.entry(template.clone()).or_default();
                let Some(t) = t else {
                    counts.cancelled += 1;
                    return Some(self.record(
                        i,
                        "cancel",
                        None,
                        format!("unknown template {template}"),
                    ));
                };
                let d = decide(
                    &Request {
                        id: i as u64,
                        template: t.clone(),
                    },
                    &self.view,
                    &self.policy,
                );
                let reason = d.explanation();
                if !t.role.is_heavy() {
                    self.priority.0 += 1;
                    if !matches!(d.outcome, Outcome::Cancel(_)) {
                        self.priority.1 += 1;
                    }
                }
                let holder = d.holder;
                match d.outcome {
                    Outcome::Local(id) => {
                        counts.local += 1;
                        if let Some(g) = self.view.gateways.iter().position(|g| g.id == id) {
                            let gw = &mut self.view.gateways[g];
                            if !t.res().fits_in(&gw.judged_free()) {
                                self.at_risk += 1;
                            }
                            gw.used = gw.used.plus(&t.res());
                            gw.vms += 1;
                            self.placed[i] = Some(Placed::Local(g, t.res()));
                            self.refresh_forecast(g);
                        }
                        Some(self.record(i, "local", Some(id), reason))
                    }
                    Outcome::Remote(name) => {
                        counts.remote += 1;
                        // The entry of the holder the allocator chose: a cloud may have several.
                        let chosen = |r: &Remote| {
                            r.name == name && holder.as_deref().is_none_or(|h| r.owner == h)
                        };
                        if let Some(r) = self.view.remotes.iter().position(chosen) {
                            self.view.remotes[r].in_use += 1;
                            self.placed[i] = Some(Placed::Remote(r));
                        }
                        let in_use: u32 = self.view.remotes.iter().map(|r| r.in_use).sum();
                        self.remote_peak = self.remote_peak.max(in_use);
                        Some(self.record(i, "remote", Some(name), reason))
                    }
                    Outcome::Cancel(_) => {
                        counts.cancelled += 1;
                        Some(self.record(i, "cancel", None, reason))
                    }
                }
            }
        };
        self.frag_sum += self.fragmentation();
        self.frag_n += 1;
        record
    }

    fn record(
        &mut self,
        i: usize,
        decision: &'static str,
        target: Option<String>,
        reason: String,
    ) -> DecisionRecord {
        let r = DecisionRecord {
            request: i,
            decision,
            target,
            reason,
        };
        self.decisions.push(r.clone());
        r
    }

    fn virtualizing(&self) -> impl Iterator<Item = &Gateway> {
        self.view.gateways.iter().filter(|g| g.virt != Virt::None)
    }

    /// Share of the free memory on gateways that cannot host the most expensive template.
    pub fn fragmentation(&self) -> f64 {
        let Some(big) = self.biggest else { return 0.0 };
        let (mut total, mut usable) = (0u64, 0u64);
        for g in self.virtualizing() {
            let free = g.free_now();
            total += free.mem_mb;
            if big.fits_in(&free) {
                usable += free.mem_mb;
            }
        }
        if total == 0 {
            0.0
        } else {
            1.0 - usable as f64 / total as f64
        }
    }

    pub fn finish(self) -> SimOutput {
        let free: Vec<f64> = self
            .virtualizing()
            .map(|g| g.free_now().mem_mb as f64)
            .collect();
        let n = free.len().max(1) as f64;
        let mean = free.iter().sum::<f64>() / n;
        let var = free.iter().map(|f| (f - mean) * (f - mean)).sum::<f64>() / n;
        let count = |d: &str| self.decisions.iter().filter(|r| r.decision == d).count();
        SimOutput {
            policy: self.policy.kind.name().to_owned(),
            summary: Summary {
                local: count("local"),
                remote: count("remote"),
                cancelled: count("cancel"),
                by_template: self.by_template.clone(),
                first_failure: self
                    .decisions
                    .iter()
                    .find(|r| r.decision == "cancel")
                    .map(|r| r.request),
                free_mem_mb_mean: mean,
                free_mem_mb_stddev: var.sqrt(),
                fragmentation: if self.frag_n == 0 {
                    0.0
                } else {
                    self.frag_sum / self.frag_n as f64
                },
                remote_peak: self.remote_peak,
                at_risk: self.at_risk,
                priority_accepted: if self.priority.0 == 0 {
                    1.0
                } else {
                    self.priority.1 as f64 / self.priority.0 as f64
                },
            },
            decisions: self.decisions,
        }
    }
}

/// Replays the whole scenario under one policy.
pub fn run(scenario: &Scenario, policy: &Policy, fp: ForecastParams) -> SimOutput {
    let mut sim = Sim::new(scenario, policy.clone(), fp);
    for i in 0..scenario.requests.len() {
        sim.step(i);
    }
    sim.finish()
}

/// One line per policy: the comparison table (`simulate --compare`, `make bench`).
pub fn comparison_table(rows: &[SimOutput]) -> String {
    let mut s = format!(
        "{:<18} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6} {:>10} {:>7} {:>8}\n",
        "policy",
        "local",
        "remote",
        "cancel",
        "accepted",
        "1st-fail",
        "frag",
        "free-MB sd",
        "at-risk",
        "prio-acc"
    );
    for o in rows {
        let m = &o.summary;
        s.push_str(&format!(
            "{:<18} {:>6} {:>6} {:>6} {:>8} {:>8} {:>6.3} {:>10.1} {:>7} {:>7.1}%\n",
            o.policy,
            m.local,
            m.remote,
            m.cancelled,
            m.local + m.remote,
            m.first_failure.map_or("-".to_owned(), |i| i.to_string()),
            m.fragmentation,
            m.free_mem_mb_stddev,
            m.at_risk,
            m.priority_accepted * 100.0
        ));
    }
    s
}
