//! The Big Data Manager at run time (paper §V): the I/O around [`betaas_core::cluster::plan`].
//!
//! A request naming a `"cluster"` is kept by the gateway that received it (the cluster's manager):
//! - without `"replicas"` (a master, a storage node): one VM placed by the allocator; its URL (the
//!   template's `[cluster] url` at its gateway's address, from that gateway's VM manager) is kept
//!   under the template's name, and every later node of the cluster gets the cluster's URLs in its
//!   environment (`BETAAS_URL_<TEMPLATE>`; a worker's VM manager also puts its master's in the
//!   descriptor's `master_env`);
//! - with `"replicas": N` (workers): N kept running, placed by the allocator (local first, spread;
//!   on a remote cloud this gateway holds when the instance is full), scaled up (stopped workers
//!   resumed first, local before remote) and down (stopped, kept; remote ones first), and those on
//!   a gateway that goes down replaced, on every change of N and every few heartbeats. A remote
//!   worker gets no cluster environment: it joins the master only if the cloud reaches it.
//!
//! The records (template, replicas, workers, the single nodes and their URLs) are written to
//! `data_dir/instance/clusters.json` after every change (temp file, fsync, rename) and read at
//! start: a manager restarted (even by kill -9) adopts its clusters and keeps re-planning them
//! once the members that are up have been heard from (`timeout_ms` after start), so a worker on a
//! gateway not heard from yet is not taken for lost. A change made between a step and its write
//! (a kill -9 in that window) is not in the file: that VM runs unmanaged.

use std::collections::BTreeMap;
use std::sync::Arc;

use betaas_core::allocator::{self, Outcome, Policy, Request, Template};
use betaas_core::cluster::{self, Action, Cluster};
use betaas_core::instance::membership;
use betaas_core::instance::msg::Body;
use betaas_core::instance::trust::Observation;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{random_u64, Placed, Runtime};

/// What the manager knows of one cluster (kept in `data_dir/instance/clusters.json`).
pub(super) type ClusterRec = cluster::Record;

/// At most this many workers per cluster.
pub const MAX_REPLICAS: u64 = cluster::MAX_REPLICAS as u64;

/// The cluster's URLs for a node's start: `BETAAS_URL_<TEMPLATE>` each.
fn env_of(rec: &ClusterRec) -> Vec<(String, String)> {
    rec.urls
        .iter()
        .map(|(t, u)| (url_var(t), u.clone()))
        .collect()
}

/// `BETAAS_URL_<TEMPLATE>` (betaas-vmd's `url_var`: capitals, other characters `_`).
pub fn url_var(template: &str) -> String {
    let t: String = template
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("BETAAS_URL_{t}")
}

impl Runtime {
    /// `{"id","cluster","template"[,"replicas"]}`: see the module doc. Returns the result, also
    /// published on `vm/result`.
    pub(super) async fn cluster_request(self: &Arc<Self>, v: &Value) -> Value {
        let id = v["id"].as_str().unwrap_or("").to_owned();
        let name = v["cluster"].as_str().unwrap_or("").to_owned();
        let tname = v["template"].as_str().unwrap_or("");
        if !cluster::name_ok(&name) {
            let why = format!("cluster {name:?}: 1 to 64 letters, digits, - or _");
            return self.result(&id, "cancel", "", "", None, &why, 0);
        }
        let Some(template) = self.templates.iter().find(|t| t.name == tname).cloned() else {
            let known: Vec<&str> = self.templates.iter().map(|t| t.name.as_str()).collect();
            let why = format!("unknown template {tname:?}; registered: {known:?}");
            return self.result(&id, "cancel", "", "", None, &why, 0);
        };
        let replicas = match &v["replicas"] {
            Value::Null => None,
            r => match r.as_u64().filter(|n| *n <= MAX_REPLICAS) {
                Some(n) => Some(n as u32),
                None => {
                    let why = format!("replicas {r}: a whole number 0..={MAX_REPLICAS}");
                    return self.result(&id, "cancel", "", "", None, &why, 0);
                }
            },
        };
        // Clusters adopted at start: not before the members that are up were heard from.
        self.clusters_settled().await;
        let mut clusters = self.clusters.lock().await;
        if !clusters.contains_key(&name) && clusters.len() >= cluster::MAX_CLUSTERS {
            let why = format!(
                "this gateway manages {} clusters already, the most it keeps",
                cluster::MAX_CLUSTERS
            );
            return self.result(&id, "cancel", "", "", None, &why, 0);
        }
        let rec = clusters.entry(name.clone()).or_default();
        let Some(n) = replicas else {
            // One node of the cluster, placed like any VM, with the cluster's URLs.
            let env = env_of(rec);
            let r = match self.place_node(&template, &env).await {
                Ok((gw, p, reason, attempts)) => {
                    if let Some(u) = &p.url {
                        rec.urls.insert(template.name.clone(), u.clone());
                    }
                    rec.nodes
                        .push((template.name.clone(), p.vm.clone(), gw.clone()));
                    info!(cluster = %name, template = %template.name, vm = %p.vm, host = %gw, url = ?p.url, "cluster node placed");
                    self.result(&id, "local", &gw, &gw, Some(&p), &reason, attempts)
                }
                Err(why) => self.result(&id, "cancel", "", "", None, &why, 8),
            };
            if *rec == ClusterRec::default() {
                clusters.remove(&name);
            }
            self.save_clusters(&clusters).await;
            return r;
        };
        match &mut rec.workers {
            Some(c) if c.template != template.name => {
                let why = format!(
                    "cluster {name} scales {} workers, not {}",
                    c.template, template.name
                );
                return self.result(&id, "cancel", "", "", None, &why, 0);
            }
            Some(c) => c.replicas = n,
            None => rec.workers = Some(Cluster::new(&name, &template.name, n)),
        }
        let done = self.reconcile(rec).await;
        let rec = rec.clone();
        self.save_clusters(&clusters).await;
        drop(clusters);
        let c = rec.workers.as_ref().expect("set above");
        let running = c.running() as u32;
        let decision = if running == n { "local" } else { "cancel" };
        let reason = if done.is_empty() {
            format!("{running} of {n} workers running")
        } else {
            format!("{running} of {n} workers running; {}", done.join("; "))
        };
        info!(request = %id, cluster = %name, running, replicas = n, "cluster scaled: {reason}");
        let payload = json!({
            "id": id,
            "decision": decision,
            "cluster": name,
            "template": template.name,
            "replicas": n,
            "running": running,
            "workers": workers_json(c),
            "reason": reason,
        });
        self.session
            .publish_event(&format!("{}/vm/result", self.my_base), payload.to_string());
        payload
    }

    /// One round of the plan for every cluster with workers: a gateway that went down has its
    /// workers replaced. Skipped while a request holds the clusters.
    pub(super) async fn reconcile_all(self: &Arc<Self>) {
        if !self.clusters_settled_now() {
            return;
        }
        let Ok(mut clusters) = self.clusters.try_lock() else {
            return;
        };
        let mut changed = false;
        for (name, rec) in clusters.iter_mut() {
            let before = rec.workers.as_ref().map(|c| c.running());
            let was = rec.clone();
            // A master or storage node first: workers placed after it get its new URL.
            let urls = rec.urls.clone();
            let mut done = self.replace_nodes(name, rec).await;
            if rec.urls != urls {
                done.extend(self.restart_workers(name, rec).await);
            }
            done.extend(self.reconcile(rec).await);
            // Written only when the record changed (a failing round every few heartbeats must
            // not wear the card).
            changed |= *rec != was;
            if !done.is_empty() {
                let after = rec.workers.as_ref().map(|c| c.running());
                info!(cluster = %name, ?before, ?after, "cluster repaired: {}", done.join("; "));
                let payload = json!({
                    "cluster": name,
                    "event": "repaired",
                    "running": after,
                    "workers": rec.workers.as_ref().map(workers_json),
                    "reason": done.join("; "),
                });
                self.session.publish_event(
                    &format!("{}/cluster/{name}", self.my_base),
                    payload.to_string(),
                );
            }
        }
        if changed {
            self.save_clusters(&clusters).await;
        }
    }

    /// Places again each single node (master, storage) whose gateway is not up; the cluster keeps
    /// the new URL (workers placed from now on get it; running ones keep the old one until they
    /// are made again). One that cannot be placed is tried again at the next round.
    async fn replace_nodes(self: &Arc<Self>, name: &str, rec: &mut ClusterRec) -> Vec<String> {
        let mut done = Vec::new();
        let (lost, back) = {
            let st = self.state();
            let members = st.inst.members();
            let is_up = |g: &str| {
                g == self.gateway
                    || members
                        .get(g)
                        .is_some_and(|m| m.state == membership::State::Up)
            };
            (
                cluster::lost_nodes(&rec.nodes, is_up),
                rec.nodes_back(is_up),
            )
        };
        // Nodes replaced while their gateway was cut off: released there now that it is back,
        // or given up (its gateway no longer has them). Highest index first: removed as we go.
        for i in back.into_iter().rev() {
            let (vm, host) = rec.lost_nodes.remove(i);
            match self.release_on(&host, &vm, None).await {
                Ok(()) => done.push(format!("{vm} on {host} (replaced earlier) released")),
                Err(why) => {
                    warn!(cluster = %name, vm, host, "a replaced node not released: {why}; forgotten");
                    done.push(format!(
                        "{vm} on {host} (replaced earlier) not released: {why}"
                    ));
                }
            }
        }
        for i in lost {
            let (tname, vm, host) = rec.nodes[i].clone();
            let Some(template) = self.templates.iter().find(|t| t.name == tname).cloned() else {
                continue;
            };
            let own = url_var(&tname);
            let env: Vec<_> = env_of(rec).into_iter().filter(|(k, _)| *k != own).collect();
            match self.place_node(&template, &env).await {
                Ok((gw, p, _, _)) => {
                    warn!(cluster = %name, template = %tname, lost = %vm, host = %host, vm = %p.vm, new_host = %gw, url = ?p.url, "cluster node replaced: its gateway is down");
                    match &p.url {
                        Some(u) => {
                            rec.urls.insert(tname.clone(), u.clone());
                        }
                        None => {
                            rec.urls.remove(&tname);
                        }
                    }
                    done.push(format!(
                        "{tname} {vm} on {host} lost (gateway down): {} placed on {gw}{}",
                        p.vm,
                        p.url
                            .as_deref()
                            .map(|u| format!(" at {u}"))
                            .unwrap_or_default()
                    ));
                    rec.node_lost(&vm, &host);
                    rec.nodes[i] = (tname, p.vm, gw);
                }
                Err(why) => {
                    warn!(cluster = %name, template = %tname, lost = %vm, host = %host, "cluster node lost (gateway down), not placed again yet: {why}");
                }
            }
        }
        done
    }

    /// A node was placed again at a new URL: the workers made with the old one are released
    /// (one that cannot be reached now is released when its gateway is back) and the plan makes
    /// new ones, which get the new URL.
    async fn restart_workers(self: &Arc<Self>, name: &str, rec: &mut ClusterRec) -> Vec<String> {
        let mut done = Vec::new();
        let Some(c) = rec.workers.as_mut() else {
            return done;
        };
        for w in c.take_stale() {
            if w.state != cluster::WorkerState::Running {
                continue;
            }
            match self.release_on(&w.host, &w.vm, None).await {
                Ok(()) => done.push(format!(
                    "{} on {} released (made for the old URL)",
                    w.vm, w.host
                )),
                Err(why) => {
                    warn!(cluster = %name, vm = %w.vm, host = %w.host, "a worker made for the old URL not released: {why}; released when its gateway is back");
                    done.push(format!("{} on {} not released: {why}", w.vm, w.host));
                    c.add_orphan(w);
                }
            }
        }
        done
    }

    /// Writes the records (temp + fsync + rename, off the runtime); a failure is logged, the
    /// clusters stay managed in memory.
    async fn save_clusters(&self, clusters: &BTreeMap<String, ClusterRec>) {
        let bytes = cluster::encode(clusters);
        let path = self.clusters_path.clone();
        let r = tokio::task::spawn_blocking(move || {
            crate::resources::history::write_atomic(&path, &bytes).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = r {
            warn!(file = %self.clusters_path.display(), "cannot persist the cluster records: {e}");
        }
    }

    /// Whether adopted clusters may be planned: no clusters were read at start, or the members
    /// that are up have had `timeout_ms` to be heard from (else their workers look lost).
    fn clusters_settled_now(&self) -> bool {
        self.clusters_adopt_at
            .is_none_or(|t| std::time::Instant::now() >= t)
    }

    async fn clusters_settled(&self) {
        if let Some(t) = self.clusters_adopt_at {
            tokio::time::sleep_until(t.into()).await;
        }
    }

    /// Plans and carries out until the plan is empty or a step fails (at most 3 rounds). Returns
    /// what was done, one line each.
    async fn reconcile(self: &Arc<Self>, rec: &mut ClusterRec) -> Vec<String> {
        let mut done = Vec::new();
        let env = env_of(rec);
        let Some(c) = rec.workers.as_mut() else {
            return done;
        };
        let Some(template) = self
            .templates
            .iter()
            .find(|t| t.name == c.template)
            .cloned()
        else {
            return done;
        };
        for _ in 0..3 {
            let actions = {
                let st = self.state();
                let me = self.gateway.clone();
                let members = st.inst.members();
                cluster::plan(c, |g| {
                    g == me
                        || members
                            .get(g)
                            .is_some_and(|m| m.state == membership::State::Up)
                })
            };
            if actions.is_empty() {
                break;
            }
            let mut failed = false;
            for a in actions {
                match a {
                    Action::Forget { vm, host } => {
                        warn!(cluster = %c.name, vm, host, "worker lost: its gateway is down (released there if it comes back)");
                        done.push(format!("{vm} on {host} lost (gateway down)"));
                        c.lost(&vm, &host);
                    }
                    Action::Resume { vm, host } => {
                        let cloud = c
                            .workers
                            .iter()
                            .find(|w| w.vm == vm && w.host == host)
                            .and_then(|w| w.cloud.clone());
                        let r = match &cloud {
                            // Ours (see place_node): the cloud resumes a stopped VM of the template.
                            Some(cl) => {
                                self.deploy_remote(cl, &template.name, template.res()).await
                            }
                            None => self.deploy_on(&host, &template, &env).await,
                        };
                        match r {
                            Ok(p) => {
                                if p.vm != vm {
                                    c.forget(&vm, &host);
                                }
                                c.placed(&p.vm, &host, cloud.as_deref());
                                done.push(format!(
                                    "{} on {host} {}",
                                    p.vm,
                                    if p.resumed { "resumed" } else { "started" }
                                ));
                            }
                            Err(why) => {
                                warn!(cluster = %c.name, vm, host, "resume refused: {why}");
                                c.forget(&vm, &host);
                                done.push(format!("{vm} on {host} not resumed: {why}"));
                            }
                        }
                    }
                    Action::Place => match self.place_worker(&template, &env).await {
                        Ok((gw, p, cloud)) => {
                            c.placed(&p.vm, &gw, cloud.as_deref());
                            let at = match &cloud {
                                Some(cl) => format!("on the remote cloud {cl} (held by {gw})"),
                                None => format!("on {gw}"),
                            };
                            done.push(format!(
                                "{} {at} {}",
                                p.vm,
                                if p.resumed { "resumed" } else { "placed" }
                            ));
                        }
                        Err(why) => {
                            done.push(format!("a worker not placed: {why}"));
                            failed = true;
                            break;
                        }
                    },
                    Action::Release { vm, host, cloud } => {
                        match self.release_on(&host, &vm, cloud.as_deref()).await {
                            Ok(()) => {
                                c.released(&vm, &host);
                                done.push(format!("{vm} on {host} released"));
                            }
                            Err(why) if c.is_orphan(&vm, &host) => {
                                // Its gateway no longer has it (restarted), or does not answer:
                                // not retried forever.
                                warn!(cluster = %c.name, vm, host, "a lost worker not released: {why}; forgotten");
                                done.push(format!(
                                    "{vm} on {host} (lost earlier) not released: {why}"
                                ));
                                c.forget(&vm, &host);
                            }
                            Err(why) => {
                                done.push(format!("{vm} on {host} not released: {why}"));
                                failed = true;
                                break;
                            }
                        }
                    }
                }
            }
            if failed {
                break;
            }
        }
        done
    }

    /// A single node of a cluster (master, storage): on a gateway of the instance only (a remote
    /// cloud's VM gets no cluster environment, and the workers must reach it).
    async fn place_node(
        self: &Arc<Self>,
        template: &Template,
        env: &[(String, String)],
    ) -> Result<(String, Placed, String, u32), String> {
        self.place_in(template, env, false)
            .await
            .map(|(gw, p, reason, attempts, _)| (gw, p, reason, attempts))
    }

    /// A worker: where the allocator says, local first (spread), and on a remote cloud that this
    /// gateway holds when the instance is full. Returns the gateway (the holder, for a remote
    /// one), the VM and the cloud.
    async fn place_worker(
        self: &Arc<Self>,
        template: &Template,
        env: &[(String, String)],
    ) -> Result<(String, Placed, Option<String>), String> {
        self.place_in(template, env, true)
            .await
            .map(|(gw, p, _, _, cloud)| (gw, p, cloud))
    }

    /// One VM of a cluster, where the allocator says. With `remote_ok`, the remote clouds whose
    /// credentials this gateway (the manager) holds are in the view too: it releases and
    /// resumes what it made there itself. Such a VM gets no cluster environment from here (the
    /// cloud's image is what it runs): it joins a master only if the cloud can reach the
    /// master's address. Returns the gateway, the VM, the allocator's explanation, the attempts
    /// and the cloud (None: a gateway).
    async fn place_in(
        self: &Arc<Self>,
        template: &Template,
        env: &[(String, String)],
        remote_ok: bool,
    ) -> Result<(String, Placed, String, u32, Option<String>), String> {
        let mut excluded: Vec<String> = Vec::new();
        let mut failed_clouds: Vec<String> = Vec::new();
        let mut refusals: Vec<String> = Vec::new();
        for attempt in 1..=8u32 {
            let decision = {
                let st = self.state();
                let me = self.report(&st);
                let mut view = st.inst.view(&me, &self.templates, &me.remotes);
                if remote_ok {
                    view.remotes
                        .retain(|r| r.owner == self.gateway && !failed_clouds.contains(&r.name));
                } else {
                    view.remotes.clear();
                }
                view.gateways.retain(|g| !excluded.contains(&g.id));
                let req = Request {
                    id: random_u64(),
                    template: template.clone(),
                };
                allocator::decide(&req, &view, &Policy::default())
            };
            let reason = decision.explanation();
            let gw = match decision.outcome {
                Outcome::Local(gw) => gw,
                Outcome::Cancel(why) => {
                    let mut why = format!("{why}; {reason}");
                    if !refusals.is_empty() {
                        why += &format!("; refused: {}", refusals.join("; "));
                    }
                    return Err(why);
                }
                Outcome::Remote(cloud) if remote_ok => {
                    let r = self
                        .deploy_remote(&cloud, &template.name, template.res())
                        .await;
                    match r {
                        Ok(p) => return Ok((self.gateway.clone(), p, reason, attempt, Some(cloud))),
                        Err(why) => {
                            warn!(template = %template.name, cloud = %cloud, "cluster worker not made on the remote cloud: {why}");
                            refusals.push(format!("{cloud}: {why}"));
                            failed_clouds.push(cloud);
                            continue;
                        }
                    }
                }
                Outcome::Remote(cloud) => {
                    return Err(format!("the allocator chose the remote cloud {cloud}; a cluster's master and storage stay in the instance ({reason})"))
                }
            };
            match self.deploy_on(&gw, template, env).await {
                Ok(p) => return Ok((gw, p, reason, attempt, None)),
                Err(why) => {
                    warn!(template = %template.name, gateway = %gw, "cluster node refused: {why}");
                    refusals.push(format!("{gw}: {why}"));
                    excluded.push(gw);
                }
            }
        }
        Err(format!(
            "every chosen gateway refused: {}",
            refusals.join("; ")
        ))
    }

    /// Runs (or resumes) a VM of `template` with `env` on gateway `gw` (this one, or another
    /// asked with a `ClusterDeploy`).
    async fn deploy_on(
        self: &Arc<Self>,
        gw: &str,
        template: &Template,
        env: &[(String, String)],
    ) -> Result<Placed, String> {
        if gw == self.gateway {
            return self
                .deploy(template.res(), &template.name, None, Some(env))
                .await;
        }
        let request = random_u64();
        let body = Body::ClusterDeploy {
            request,
            template: template.name.clone(),
            res: template.res(),
            env: env.to_vec(),
        };
        let wait = self.cfg.deploy_timeout_ms;
        match self.ask_body(gw, request, body, wait).await {
            Ok(p) => {
                self.state().inst.observe(gw, Observation::DeploySucceeded);
                Ok(p)
            }
            Err(Some(why)) => {
                self.state().inst.observe(gw, Observation::DeployRefused);
                Err(why)
            }
            Err(None) => {
                self.state().inst.observe(gw, Observation::DeployFailed);
                Err(format!("no answer within {wait} ms"))
            }
        }
    }

    /// Stops VM `vm` on gateway `host`, or on remote cloud `cloud` (held here), kept for reuse.
    async fn release_on(
        self: &Arc<Self>,
        host: &str,
        vm: &str,
        cloud: Option<&str>,
    ) -> Result<(), String> {
        if let Some(cl) = cloud {
            let r = crate::cloud::monitor::release(self.clouds.as_ref(), cl, vm).await;
            // The cloud's VM count changed: tell the instance.
            self.announce();
            return r.map_err(|e| e.to_string());
        }
        if host == self.gateway {
            let r = self
                .release_local(&format!("scale-{}", random_u64()), vm)
                .await;
            return match r["decision"].as_str() {
                Some("released") => Ok(()),
                _ => Err(r["reason"].as_str().unwrap_or("").to_owned()),
            };
        }
        let request = random_u64();
        let body = Body::ReleaseRequest {
            request,
            vm: vm.to_owned(),
        };
        let wait = self.cfg.deploy_timeout_ms;
        self.ask_body(host, request, body, wait)
            .await
            .map(drop)
            .map_err(|e| e.unwrap_or_else(|| format!("no answer within {wait} ms")))
    }
}

fn workers_json(c: &Cluster) -> Value {
    c.workers
        .iter()
        .map(|w| {
            json!({
                "vm": w.vm,
                "host": w.host,
                "cloud": w.cloud,
                "state": match w.state {
                    cluster::WorkerState::Running => "running",
                    cluster::WorkerState::Stopped => "stopped",
                },
            })
        })
        .collect()
}
