//! The Big Data Manager's decision (paper §V): a cluster asks for N workers of one template, and
//! this keeps N running — desired vs actual in, the actions to take out. Pure: the agent's runtime
//! does the I/O (deploy requests through the allocator, releases, resumes) and reports each
//! outcome back with [`Cluster::placed`], [`Cluster::released`], [`Cluster::resumed`],
//! [`Cluster::forget`].
//!
//! Rules of [`plan`], in order:
//! 0. A worker lost earlier (an orphan, see 1) whose gateway is up again is released there
//!    ([`Action::Release`]) and kept as a stopped worker: that gateway may only have been cut off
//!    (a partition, or this manager's own broker outage) and still run it, and nothing else
//!    would ever stop it.
//! 1. A worker whose host gateway is not up (down, left, dismissed) is lost: [`Action::Forget`]
//!    (running or stopped; a stopped one there cannot be resumed either). It becomes an orphan
//!    and the count drops, so the rules below replace it.
//! 2. Fewer running than asked: stopped workers on gateways that are up are resumed first
//!    ([`Action::Resume`]: the paper's reason to stop rather than destroy), local gateways
//!    before remote clouds, then by name; what is still missing is placed anew ([`Action::Place`],
//!    the allocator chooses where: local first, spread, remote when the instance is full).
//! 3. More running than asked: the surplus is released ([`Action::Release`]: stopped, kept for a
//!    later scale-up): workers on remote clouds first (they cost), then from the gateway holding
//!    the most workers of this cluster (the rest stay spread), then the newest (highest name).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One worker of a cluster as its manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// The VM's name (local) or its id on the remote cloud.
    pub vm: String,
    /// The gateway that runs it, or that holds the remote cloud's credentials.
    pub host: String,
    /// The remote cloud it runs on; `None`: a gateway of the instance.
    pub cloud: Option<String>,
    pub state: WorkerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Running,
    /// Released by a scale-down: kept where it is for the next scale-up.
    Stopped,
}

/// One step towards the asked count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its host is not up: the worker no longer counts (it is replaced by the other rules).
    Forget { vm: String, host: String },
    /// Bring back this stopped worker on its own host.
    Resume { vm: String, host: String },
    /// One new worker, wherever the allocator decides.
    Place,
    /// Stop this running worker (kept for reuse).
    Release {
        vm: String,
        host: String,
        cloud: Option<String>,
    },
}

/// What is known of one cluster's workers and what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub template: String,
    pub replicas: u32,
    pub workers: Vec<Worker>,
    /// Workers lost with their gateway (rule 1), to release once it is up again (rule 0).
    /// At most [`MAX_ORPHANS`]: the oldest is dropped (a gateway that never comes back).
    #[serde(default)]
    pub orphans: Vec<Worker>,
}

/// At most this many orphans per cluster.
pub const MAX_ORPHANS: usize = 64;

impl Cluster {
    pub fn new(name: &str, template: &str, replicas: u32) -> Cluster {
        Cluster {
            name: name.to_owned(),
            template: template.to_owned(),
            replicas,
            workers: Vec::new(),
            orphans: Vec::new(),
        }
    }

    pub fn running(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Running)
            .count()
    }

    /// A worker placed (new, or a stopped one the host brought back instead: same name).
    pub fn placed(&mut self, vm: &str, host: &str, cloud: Option<&str>) {
        self.workers.retain(|w| !(w.vm == vm && w.host == host));
        self.workers.push(Worker {
            vm: vm.to_owned(),
            host: host.to_owned(),
            cloud: cloud.map(str::to_owned),
            state: WorkerState::Running,
        });
    }

    /// A resume that worked.
    pub fn resumed(&mut self, vm: &str, host: &str) {
        self.set(vm, host, WorkerState::Running);
    }

    /// A release that worked: the worker (or an orphan, which becomes a worker again) is
    /// stopped and kept for a later scale-up.
    pub fn released(&mut self, vm: &str, host: &str) {
        if let Some(i) = self.orphan_index(vm, host) {
            let mut w = self.orphans.remove(i);
            w.state = WorkerState::Stopped;
            self.workers.push(w);
        } else {
            self.set(vm, host, WorkerState::Stopped);
        }
    }

    /// Its host is down ([`Action::Forget`]): no longer counted, an orphan until that host is
    /// up again.
    pub fn lost(&mut self, vm: &str, host: &str) {
        let Some(i) = self
            .workers
            .iter()
            .position(|w| w.vm == vm && w.host == host)
        else {
            return;
        };
        let w = self.workers.remove(i);
        self.add_orphan(w);
    }

    /// `w` runs where this manager cannot stop it now: released once its host is up (rule 0).
    pub fn add_orphan(&mut self, w: Worker) {
        if self.orphan_index(&w.vm, &w.host).is_none() {
            if self.orphans.len() >= MAX_ORPHANS {
                self.orphans.remove(0);
            }
            self.orphans.push(w);
        }
    }

    /// A master or storage node was placed again at another URL: every worker on a gateway was
    /// made with the old one in its environment (fixed at its start; a stopped one keeps it too,
    /// so it is not resumed). They are taken out of the cluster, for the caller to release the
    /// running ones, and the plan makes new ones with the new environment. Remote workers get
    /// no environment: kept.
    pub fn take_stale(&mut self) -> Vec<Worker> {
        let (stale, keep) = std::mem::take(&mut self.workers)
            .into_iter()
            .partition(|w| w.cloud.is_none());
        self.workers = keep;
        stale
    }

    /// A resume that failed, or an orphan whose release failed (its gateway no longer has it, or
    /// does not answer): no longer counted or tracked.
    pub fn forget(&mut self, vm: &str, host: &str) {
        self.workers.retain(|w| !(w.vm == vm && w.host == host));
        self.orphans.retain(|w| !(w.vm == vm && w.host == host));
    }

    /// Whether `vm` on `host` is an orphan (the runtime treats a failed release of one as
    /// [`Cluster::forget`], not as a failure of the round).
    pub fn is_orphan(&self, vm: &str, host: &str) -> bool {
        self.orphan_index(vm, host).is_some()
    }

    fn orphan_index(&self, vm: &str, host: &str) -> Option<usize> {
        self.orphans
            .iter()
            .position(|w| w.vm == vm && w.host == host)
    }

    fn set(&mut self, vm: &str, host: &str, state: WorkerState) {
        for w in &mut self.workers {
            if w.vm == vm && w.host == host {
                w.state = state;
            }
        }
    }
}

/// The actions that bring `cluster` to its `replicas`, given which gateways are up. Applying
/// them all (and reporting the outcomes) and planning again gives no action.
pub fn plan(cluster: &Cluster, is_up: impl Fn(&str) -> bool) -> Vec<Action> {
    let mut actions = Vec::new();
    for w in cluster.orphans.iter().filter(|w| is_up(&w.host)) {
        actions.push(Action::Release {
            vm: w.vm.clone(),
            host: w.host.clone(),
            cloud: w.cloud.clone(),
        });
    }
    let (alive, lost): (Vec<&Worker>, Vec<&Worker>) =
        cluster.workers.iter().partition(|w| is_up(&w.host));
    for w in lost {
        actions.push(Action::Forget {
            vm: w.vm.clone(),
            host: w.host.clone(),
        });
    }
    let running: Vec<&Worker> = alive
        .iter()
        .copied()
        .filter(|w| w.state == WorkerState::Running)
        .collect();
    let want = cluster.replicas as usize;
    if running.len() < want {
        let mut stopped: Vec<&Worker> = alive
            .iter()
            .copied()
            .filter(|w| w.state == WorkerState::Stopped)
            .collect();
        stopped.sort_by(|a, b| (a.cloud.is_some(), &a.vm).cmp(&(b.cloud.is_some(), &b.vm)));
        let missing = want - running.len();
        for w in stopped.iter().take(missing) {
            actions.push(Action::Resume {
                vm: w.vm.clone(),
                host: w.host.clone(),
            });
        }
        for _ in stopped.len().min(missing)..missing {
            actions.push(Action::Place);
        }
    } else if running.len() > want {
        // Workers per gateway, updated as the surplus is chosen.
        let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
        for w in &running {
            *per_host.entry(w.host.as_str()).or_default() += 1;
        }
        let mut left = running.clone();
        for _ in 0..running.len() - want {
            let pick = left
                .iter()
                .enumerate()
                .max_by(|(_, a), (_, b)| {
                    let key = |w: &Worker| {
                        (
                            w.cloud.is_some(),
                            per_host.get(w.host.as_str()).copied().unwrap_or(0),
                            w.vm.clone(),
                        )
                    };
                    key(a).cmp(&key(b))
                })
                .map(|(i, _)| i);
            let Some(i) = pick else { break };
            let w = left.remove(i);
            if let Some(n) = per_host.get_mut(w.host.as_str()) {
                *n -= 1;
            }
            actions.push(Action::Release {
                vm: w.vm.clone(),
                host: w.host.clone(),
                cloud: w.cloud.clone(),
            });
        }
    }
    actions
}

/// What a cluster's manager keeps of one cluster, across its own restarts (see [`encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Record {
    /// The workers and how many are wanted (`None` until a `replicas` request).
    pub workers: Option<Cluster>,
    /// URL of each single node (master, storage), by template.
    pub urls: BTreeMap<String, String>,
    /// The single nodes: (template, vm, host).
    pub nodes: Vec<(String, String, String)>,
    /// Single nodes placed again because their gateway was down: `(vm, host)`, released there
    /// once it is up again (it may only have been cut off, and would serve as a second master).
    /// At most [`MAX_ORPHANS`].
    #[serde(default)]
    pub lost_nodes: Vec<(String, String)>,
}

impl Record {
    /// A single node replaced elsewhere: kept to be released on `host` when it is back.
    pub fn node_lost(&mut self, vm: &str, host: &str) {
        if self.lost_nodes.len() >= MAX_ORPHANS {
            self.lost_nodes.remove(0);
        }
        self.lost_nodes.push((vm.to_owned(), host.to_owned()));
    }

    /// The lost single nodes whose gateway is up again (to release), by index.
    pub fn nodes_back(&self, is_up: impl Fn(&str) -> bool) -> Vec<usize> {
        (0..self.lost_nodes.len())
            .filter(|&i| is_up(&self.lost_nodes[i].1))
            .collect()
    }
}

/// At most this many clusters per manager (a request for one more is refused).
pub const MAX_CLUSTERS: usize = 32;
/// At most this many workers per cluster.
pub const MAX_REPLICAS: u32 = 64;
/// The persisted records are at most this large (a file over it is not read).
pub const MAX_FILE: usize = 512 * 1024;
const STORE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    clusters: BTreeMap<String, Record>,
}

/// A cluster's name: 1 to 64 letters, digits, `-` or `_`.
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The manager's clusters as a file (JSON, versioned; written atomically by the caller).
pub fn encode(clusters: &BTreeMap<String, Record>) -> Vec<u8> {
    let s = Stored {
        version: STORE_VERSION,
        clusters: clusters.clone(),
    };
    // Our own values (strings, numbers, maps with string keys) always serialize.
    serde_json::to_vec_pretty(&s).unwrap_or_default()
}

/// The clusters of a file [`encode`] wrote; else what is wrong with it (too large, not this
/// format or version, over the bounds, a bad name), so the caller can say so and start empty.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<String, Record>, String> {
    if bytes.len() > MAX_FILE {
        return Err(format!(
            "{} bytes, over the {MAX_FILE} byte limit",
            bytes.len()
        ));
    }
    let s: Stored = serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))?;
    if s.version != STORE_VERSION {
        return Err(format!(
            "version {}, this agent reads {STORE_VERSION}",
            s.version
        ));
    }
    if s.clusters.len() > MAX_CLUSTERS {
        return Err(format!(
            "{} clusters, over {MAX_CLUSTERS}",
            s.clusters.len()
        ));
    }
    for (name, r) in &s.clusters {
        if !name_ok(name) {
            return Err(format!("cluster name {name:?}"));
        }
        if let Some(c) = &r.workers {
            if c.name != *name {
                return Err(format!(
                    "cluster {name:?} holds the workers of {:?}",
                    c.name
                ));
            }
            if c.replicas > MAX_REPLICAS
                || c.workers.len() > 2 * MAX_REPLICAS as usize
                || c.orphans.len() > MAX_ORPHANS
            {
                return Err(format!(
                    "cluster {name:?}: {} replicas, {} workers (at most {MAX_REPLICAS})",
                    c.replicas,
                    c.workers.len()
                ));
            }
        }
        if r.nodes.len() > MAX_REPLICAS as usize
            || r.urls.len() > MAX_REPLICAS as usize
            || r.lost_nodes.len() > MAX_ORPHANS
        {
            return Err(format!("cluster {name:?}: {} nodes", r.nodes.len()));
        }
    }
    Ok(s.clusters)
}

/// The single nodes (master, storage: `(template, vm, host)`) whose gateway is not up, by index:
/// each is placed again, and the cluster keeps the new one's URL.
pub fn lost_nodes(nodes: &[(String, String, String)], is_up: impl Fn(&str) -> bool) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, (_, _, host))| !is_up(host))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(vm: &str, host: &str, state: WorkerState) -> Worker {
        Worker {
            vm: vm.into(),
            host: host.into(),
            cloud: None,
            state,
        }
    }
    use WorkerState::{Running as R, Stopped as S};

    fn all_up(_: &str) -> bool {
        true
    }

    fn cluster(replicas: u32, workers: Vec<Worker>) -> Cluster {
        Cluster {
            name: "wc".into(),
            template: "bigdata-compute".into(),
            replicas,
            workers,
            orphans: Vec::new(),
        }
    }

    /// Carries out a plan the way the runtime does when every step works: places go to `hosts`
    /// in turn (the allocator's choice, here given), named w<n>.
    fn apply(c: &mut Cluster, actions: &[Action], hosts: &mut impl Iterator<Item = String>) {
        let mut n = c.workers.len() + 100;
        for a in actions {
            match a {
                Action::Forget { vm, host } => c.lost(vm, host),
                Action::Resume { vm, host } => c.resumed(vm, host),
                Action::Place => {
                    n += 1;
                    let h = hosts.next().expect("a host");
                    c.placed(&format!("w{n}"), &h, None);
                }
                Action::Release { vm, host, .. } => c.released(vm, host),
            }
        }
    }

    #[test]
    fn an_empty_cluster_places_every_replica() {
        let c = cluster(3, vec![]);
        assert_eq!(plan(&c, all_up), vec![Action::Place; 3]);
    }

    #[test]
    fn at_the_count_nothing_happens() {
        let c = cluster(
            2,
            vec![w("a", "gw1", R), w("b", "gw2", R), w("c", "gw1", S)],
        );
        assert!(plan(&c, all_up).is_empty());
    }

    #[test]
    fn stopped_workers_are_resumed_before_new_ones_are_made() {
        let c = cluster(
            4,
            vec![w("a", "gw1", R), w("c", "gw2", S), w("b", "gw1", S)],
        );
        assert_eq!(
            plan(&c, all_up),
            vec![
                Action::Resume {
                    vm: "b".into(),
                    host: "gw1".into()
                },
                Action::Resume {
                    vm: "c".into(),
                    host: "gw2".into()
                },
                Action::Place,
            ]
        );
        // Only as many resumes as are missing.
        let c = cluster(
            2,
            vec![w("a", "gw1", R), w("c", "gw2", S), w("b", "gw1", S)],
        );
        assert_eq!(
            plan(&c, all_up),
            vec![Action::Resume {
                vm: "b".into(),
                host: "gw1".into()
            }]
        );
    }

    #[test]
    fn local_stopped_workers_are_resumed_before_remote_ones() {
        let mut remote = w("a", "gw1", S);
        remote.cloud = Some("os".into());
        let c = cluster(1, vec![remote, w("z", "gw2", S)]);
        assert_eq!(
            plan(&c, all_up),
            vec![Action::Resume {
                vm: "z".into(),
                host: "gw2".into()
            }]
        );
    }

    #[test]
    fn a_worker_on_a_gateway_that_went_down_is_replaced() {
        let c = cluster(
            2,
            vec![w("a", "gw1", R), w("b", "gw2", R), w("s", "gw2", S)],
        );
        let up = |g: &str| g != "gw2";
        assert_eq!(
            plan(&c, up),
            vec![
                Action::Forget {
                    vm: "b".into(),
                    host: "gw2".into()
                },
                Action::Forget {
                    vm: "s".into(),
                    host: "gw2".into()
                },
                Action::Place,
            ]
        );
    }

    #[test]
    fn a_stopped_worker_on_a_live_gateway_replaces_a_lost_one() {
        let c = cluster(
            2,
            vec![w("a", "gw1", R), w("b", "gw2", R), w("s", "gw1", S)],
        );
        let up = |g: &str| g != "gw2";
        assert_eq!(
            plan(&c, up),
            vec![
                Action::Forget {
                    vm: "b".into(),
                    host: "gw2".into()
                },
                Action::Resume {
                    vm: "s".into(),
                    host: "gw1".into()
                },
            ]
        );
    }

    #[test]
    fn scale_down_releases_remote_first_then_keeps_the_spread() {
        let mut remote = w("r", "gw3", R);
        remote.cloud = Some("os".into());
        let c = cluster(
            2,
            vec![
                w("a", "gw1", R),
                w("b", "gw1", R),
                w("c", "gw1", R),
                w("d", "gw2", R),
                remote,
            ],
        );
        let got = plan(&c, all_up);
        let released: Vec<&str> = got
            .iter()
            .map(|a| match a {
                Action::Release { vm, .. } => vm.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        // The remote one, then gw1's newest two: one left on each gateway.
        assert_eq!(released, vec!["r", "c", "b"]);
    }

    #[test]
    fn scale_2_3_1_then_up_again_resumes() {
        let mut hosts = ["gw1", "gw2", "gw1", "gw2"].iter().map(|s| s.to_string());
        let mut c = cluster(2, vec![]);
        let p = plan(&c, all_up);
        apply(&mut c, &p, &mut hosts);
        assert_eq!(c.running(), 2);
        c.replicas = 3;
        let p = plan(&c, all_up);
        assert_eq!(p, vec![Action::Place]);
        apply(&mut c, &p, &mut hosts);
        assert_eq!(c.running(), 3);
        c.replicas = 1;
        let p = plan(&c, all_up);
        assert_eq!(p.len(), 2);
        apply(&mut c, &p, &mut hosts);
        assert_eq!(c.running(), 1);
        assert_eq!(c.workers.len(), 3, "released workers are kept, stopped");
        // The one left is alone on its gateway, and the two released are the surplus of gw1.
        c.replicas = 3;
        let p = plan(&c, all_up);
        assert!(
            p.iter().all(|a| matches!(a, Action::Resume { .. })),
            "{p:?}"
        );
        apply(&mut c, &p, &mut hosts);
        assert_eq!(c.running(), 3);
        assert!(plan(&c, all_up).is_empty());
    }

    /// The manager's own broker outage (or a partition) makes every other gateway look down:
    /// their workers are replaced where the manager can reach, and once the gateways are heard
    /// again the workers they kept running are released there (kept stopped), so none runs
    /// unmanaged and the count stays right.
    #[test]
    fn workers_cut_off_and_replaced_are_released_when_their_gateway_is_back() {
        let mut hosts = std::iter::repeat("gw0".to_string());
        let mut c = cluster(
            3,
            vec![w("a", "gw1", R), w("b", "gw2", R), w("c", "gw0", R)],
        );
        let only_me = |g: &str| g == "gw0";
        let p = plan(&c, only_me);
        assert_eq!(
            p.iter()
                .filter(|a| matches!(a, Action::Forget { .. }))
                .count(),
            2
        );
        apply(&mut c, &p, &mut hosts);
        assert_eq!(c.running(), 3);
        assert_eq!(c.orphans.len(), 2);
        // Still cut off: nothing more to do.
        assert!(plan(&c, only_me).is_empty());
        // Back: both orphans released on their own gateways, nothing else.
        let p = plan(&c, all_up);
        let mut released: Vec<(String, String)> = p
            .iter()
            .map(|a| match a {
                Action::Release { vm, host, .. } => (vm.clone(), host.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        released.sort();
        assert_eq!(
            released,
            vec![("a".into(), "gw1".into()), ("b".into(), "gw2".into())]
        );
        apply(&mut c, &p, &mut hosts);
        assert!(c.orphans.is_empty());
        assert_eq!(c.running(), 3);
        assert_eq!(c.workers.len(), 5, "the released ones are kept, stopped");
        assert!(plan(&c, all_up).is_empty());
        // A later scale-up resumes them before making new ones.
        c.replicas = 5;
        assert!(plan(&c, all_up)
            .iter()
            .all(|a| matches!(a, Action::Resume { .. })));
    }

    #[test]
    fn orphans_are_bounded_and_a_failed_release_forgets_one() {
        let mut c = cluster(0, vec![]);
        for i in 0..MAX_ORPHANS + 5 {
            c.workers.push(w(&format!("v{i}"), "gw9", R));
            c.lost(&format!("v{i}"), "gw9");
        }
        assert_eq!(c.orphans.len(), MAX_ORPHANS);
        assert_eq!(c.orphans[0].vm, "v5", "the oldest are dropped");
        assert!(c.is_orphan("v7", "gw9"));
        c.forget("v7", "gw9");
        assert!(!c.is_orphan("v7", "gw9"));
        assert_eq!(c.orphans.len(), MAX_ORPHANS - 1);
    }

    #[test]
    fn a_replaced_single_node_is_released_when_its_gateway_is_back() {
        let mut r = Record::default();
        r.node_lost("m1", "gw2");
        r.node_lost("s1", "gw3");
        assert!(r.nodes_back(|g| g == "gw1").is_empty());
        assert_eq!(r.nodes_back(|g| g != "gw3"), vec![0]);
        for i in 0..MAX_ORPHANS + 3 {
            r.node_lost(&format!("x{i}"), "gw9");
        }
        assert_eq!(r.lost_nodes.len(), MAX_ORPHANS);
        let all = BTreeMap::from([("wc".to_string(), r.clone())]);
        let back = decode(&encode(&all)).expect("decodes");
        assert_eq!(back["wc"], r, "kept across a restart");
    }

    #[test]
    fn workers_made_for_an_old_master_are_replaced_by_new_ones() {
        let mut remote = w("r", "gw1", R);
        remote.cloud = Some("os".into());
        let mut c = cluster(3, vec![w("a", "gw1", R), w("b", "gw2", S), remote.clone()]);
        let stale = c.take_stale();
        assert_eq!(
            stale.len(),
            2,
            "both local ones, running or stopped: {stale:?}"
        );
        assert_eq!(c.workers, vec![remote]);
        // None is resumed: two new ones are made.
        assert_eq!(plan(&c, all_up), vec![Action::Place; 2]);
    }

    /// Any cluster, any replicas, any set of gateways down: after one round of the plan (every
    /// step succeeding) exactly `replicas` run, all on gateways that are up, and no new worker is
    /// made while a stopped one on a live gateway was left stopped.
    #[test]
    fn one_round_reaches_the_count_from_any_state() {
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..2000 {
            let gws = ["gw1", "gw2", "gw3", "gw4"];
            let down: Vec<&str> = gws.iter().copied().filter(|_| rng.u8(..4) == 0).collect();
            let up = |g: &str| !down.contains(&g);
            let n = rng.usize(..8);
            let workers = (0..n)
                .map(|i| {
                    let mut x = w(
                        &format!("v{i}"),
                        gws[rng.usize(..gws.len())],
                        if rng.bool() { R } else { S },
                    );
                    if rng.u8(..5) == 0 {
                        x.cloud = Some("os".into());
                    }
                    x
                })
                .collect();
            let mut c = cluster(rng.u32(..6), workers);
            for i in 0..rng.usize(..3) {
                let host = gws[rng.usize(..gws.len())];
                c.orphans.push(w(&format!("o{i}"), host, R));
            }
            let stopped_alive = c
                .workers
                .iter()
                .filter(|w| w.state == S && up(&w.host))
                .count();
            let p = plan(&c, up);
            let places = p.iter().filter(|a| **a == Action::Place).count();
            let resumes = p
                .iter()
                .filter(|a| matches!(a, Action::Resume { .. }))
                .count();
            assert!(places == 0 || resumes == stopped_alive, "{p:?}");
            let ups: Vec<String> = gws
                .iter()
                .filter(|g| up(g))
                .map(|g| g.to_string())
                .collect();
            let mut hosts = ups.iter().cycle().cloned();
            if ups.is_empty() {
                // Nothing is up: only forgets and places (the allocator would cancel).
                assert!(p
                    .iter()
                    .all(|a| matches!(a, Action::Forget { .. } | Action::Place)));
                continue;
            }
            apply(&mut c, &p, &mut hosts);
            assert_eq!(c.running(), c.replicas as usize, "{c:?}");
            assert!(c.workers.iter().all(|w| up(&w.host)));
            assert!(c.orphans.iter().all(|w| !up(&w.host)), "{c:?}");
            assert!(plan(&c, up).is_empty());
        }
    }

    #[test]
    fn records_round_trip_and_bad_files_are_errors_not_panics() {
        let seed = std::env::var("TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        eprintln!("TEST_SEED={seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..200 {
            let mut all = BTreeMap::new();
            for i in 0..rng.usize(..5) {
                let name = format!("c{i}");
                let mut r = Record::default();
                if rng.bool() {
                    let mut c = Cluster::new(&name, "bigdata-compute", rng.u32(..8));
                    for j in 0..rng.usize(..6) {
                        let mut x = w(&format!("v{j}"), ["gw1", "gw2"][rng.usize(..2)], R);
                        if rng.bool() {
                            x.state = S;
                        }
                        if rng.u8(..4) == 0 {
                            x.cloud = Some("os".into());
                        }
                        c.workers.push(x);
                    }
                    r.workers = Some(c);
                }
                r.urls
                    .insert("bigdata-master".into(), "spark://10.0.0.1:7077".into());
                r.nodes
                    .push(("bigdata-master".into(), "m1".into(), "gw1".into()));
                all.insert(name, r);
            }
            let bytes = encode(&all);
            assert_eq!(decode(&bytes), Ok(all));
            // A torn or flipped file is an error (or, rarely, still valid JSON of the format).
            let mut t = bytes.clone();
            t.truncate(rng.usize(..bytes.len().max(1)));
            if !t.is_empty() {
                let i = rng.usize(..t.len());
                t[i] ^= 1 << rng.u8(..8);
            }
            let _ = decode(&t);
        }
        assert!(decode(b"").is_err());
        assert!(decode(&vec![b' '; MAX_FILE + 1])
            .expect_err("too large")
            .contains("limit"));
        let other = br#"{"version":2,"clusters":{}}"#;
        assert!(decode(other).expect_err("version").contains("version 2"));
        let bad = br#"{"version":1,"clusters":{"a b":{"workers":null,"urls":{},"nodes":[]}}}"#;
        assert!(decode(bad).expect_err("name").contains("\"a b\""));
        let mut many = BTreeMap::new();
        for i in 0..=MAX_CLUSTERS {
            many.insert(format!("c{i}"), Record::default());
        }
        assert!(decode(&encode(&many)).is_err());
    }

    #[test]
    fn single_nodes_on_a_gateway_that_is_down_are_lost() {
        let n = |t: &str, h: &str| (t.to_owned(), format!("{t}-1"), h.to_owned());
        let nodes = vec![n("bigdata-master", "gw1"), n("bigdata-storage", "gw2")];
        assert_eq!(lost_nodes(&nodes, all_up), Vec::<usize>::new());
        assert_eq!(lost_nodes(&nodes, |g| g != "gw2"), vec![1]);
        assert_eq!(lost_nodes(&nodes, |_| false), vec![0, 1]);
    }
}
