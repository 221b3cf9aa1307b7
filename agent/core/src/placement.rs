//! One VM request's placement loop (the TaaS resources manager's retry): decide over the instance
//! view, try the chosen gateway or cloud, leave it out when it refuses or stays silent, decide
//! again — at most [`MAX_ATTEMPTS`] times. Pure: the runtime asks for the next step, carries it out
//! (its own VM manager, a deploy request on the bus, a remote cloud) and reports back.

use crate::allocator::{Decision, InstanceView, Outcome};

/// Decisions per request: every attempt leaves one gateway or cloud out, so a few are enough.
pub const MAX_ATTEMPTS: u32 = 8;

/// What the runtime does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the VM on this gateway.
    DeployHere,
    /// Ask member `gateway` to start it.
    Ask { gateway: String },
    /// Create it on remote `cloud`, through `holder`'s credentials (this gateway's or a member's).
    Remote { cloud: String, holder: String },
    /// Give up: the reason, every refusal included.
    Cancel(String),
}

/// Where a refusal came from: a gateway is left out of the next decision, a cloud too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Gateway(String),
    Cloud(String),
}

/// The loop's state: attempts made, what is left out and why.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    attempt: u32,
    excluded: Vec<String>,
    failed_clouds: Vec<String>,
    refusals: Vec<String>,
}

impl Placement {
    pub fn new() -> Placement {
        Placement::default()
    }

    /// The attempt under way (1-based once [`Placement::next`] was called).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether another decision may be made.
    pub fn more(&self) -> bool {
        self.attempt < MAX_ATTEMPTS
    }

    /// The view the next decision is made over: without the gateways and clouds that refused, and
    /// without any remote cloud when `gateways_only` (a request with a WAR: any gateway fetches the
    /// application itself, a remote cloud is never handed one).
    pub fn narrow(&self, view: &mut InstanceView, gateways_only: bool) {
        view.gateways.retain(|g| !self.excluded.contains(&g.id));
        view.remotes
            .retain(|r| !self.failed_clouds.contains(&r.name));
        if gateways_only {
            view.remotes.clear();
        }
    }

    /// The step for `decision` (made over [`Placement::narrow`]'s view) on gateway `me`.
    pub fn next(&mut self, decision: &Decision, me: &str) -> Step {
        self.attempt += 1;
        match &decision.outcome {
            Outcome::Cancel(why) => {
                let mut why = format!("{why}; {}", decision.explanation());
                if !self.refusals.is_empty() {
                    why += &format!("; refused: {}", self.refusals.join("; "));
                }
                Step::Cancel(why)
            }
            Outcome::Remote(cloud) => Step::Remote {
                cloud: cloud.clone(),
                // The holder the allocator chose: another may hold the same cloud.
                holder: decision.holder.clone().unwrap_or_default(),
            },
            Outcome::Local(gw) if gw == me => Step::DeployHere,
            Outcome::Local(gw) => Step::Ask {
                gateway: gw.clone(),
            },
        }
    }

    /// `target` refused (or stayed silent) for `why`: left out from now on, named in a cancel.
    pub fn refused(&mut self, target: Target, why: &str) {
        match target {
            Target::Gateway(g) => {
                self.refusals.push(format!("{g}: {why}"));
                self.excluded.push(g);
            }
            Target::Cloud(c) => {
                self.refusals.push(format!("{c}: {why}"));
                self.failed_clouds.push(c);
            }
        }
    }

    /// The cancel reason when every attempt was used.
    pub fn exhausted(&self) -> String {
        format!(
            "every chosen gateway or cloud refused or did not answer; refused: {}",
            self.refusals.join("; ")
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::allocator::{
        decide, CancelReason, Gateway, Policy, Provider, Remote, Request, Res, Role, Template, Virt,
    };

    fn gw(id: &str) -> Gateway {
        Gateway {
            id: id.into(),
            capacity: Res::new(4, 2048, 64),
            used: Res::default(),
            forecast_free: None,
            virt: Virt::Kvm,
            trust: 0.9,
            battery: None,
            vms: 0,
            powerful: false,
        }
    }

    fn cloud(name: &str) -> Remote {
        Remote {
            name: name.into(),
            provider: Provider::Openstack,
            max_vms: 4,
            in_use: 0,
            reachable: true,
            owner: "gw0".into(),
            cost_per_vm: 1.0,
        }
    }

    fn decision(outcome: Outcome, holder: Option<&str>) -> Decision {
        Decision {
            outcome,
            rules: Vec::new(),
            holder: holder.map(str::to_owned),
        }
    }

    #[test]
    fn each_outcome_becomes_its_step() {
        let mut p = Placement::new();
        assert_eq!(
            p.next(&decision(Outcome::Local("gw1".into()), None), "gw1"),
            Step::DeployHere
        );
        assert_eq!(
            p.next(&decision(Outcome::Local("gw2".into()), None), "gw1"),
            Step::Ask {
                gateway: "gw2".into()
            }
        );
        assert_eq!(
            p.next(
                &decision(Outcome::Remote("campus".into()), Some("gw3")),
                "gw1"
            ),
            Step::Remote {
                cloud: "campus".into(),
                holder: "gw3".into()
            }
        );
        assert_eq!(p.attempt(), 3);
    }

    #[test]
    fn a_cancel_names_every_refusal() {
        let mut p = Placement::new();
        p.refused(Target::Gateway("gw2".into()), "no answer within 3000 ms");
        p.refused(Target::Cloud("campus".into()), "quota");
        let Step::Cancel(why) = p.next(
            &decision(Outcome::Cancel(CancelReason::NoResources), None),
            "gw1",
        ) else {
            panic!("not a cancel");
        };
        assert!(why.starts_with("no gateway has the resources"), "{why}");
        assert!(
            why.contains("gw2: no answer within 3000 ms; campus: quota"),
            "{why}"
        );
        assert!(
            p.exhausted().contains("gw2: no answer"),
            "{}",
            p.exhausted()
        );
    }

    fn view(gws: &[&str], clouds: &[&str]) -> InstanceView {
        InstanceView {
            gateways: gws.iter().map(|g| gw(g)).collect(),
            templates: Vec::new(),
            remotes: clouds.iter().map(|c| cloud(c)).collect(),
        }
    }

    #[test]
    fn refusers_are_left_out_and_a_war_keeps_the_request_on_gateways() {
        let mut p = Placement::new();
        p.refused(Target::Gateway("gw2".into()), "busy");
        p.refused(Target::Cloud("a".into()), "down");
        let mut v = view(&["gw1", "gw2", "gw3"], &["a", "b"]);
        p.narrow(&mut v, false);
        let ids: Vec<&str> = v.gateways.iter().map(|g| g.id.as_str()).collect();
        let clouds: Vec<&str> = v.remotes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!((ids, clouds), (vec!["gw1", "gw3"], vec!["b"]));
        let mut v = view(&["gw1", "gw2", "gw3"], &["a", "b"]);
        p.narrow(&mut v, true);
        let ids: Vec<&str> = v.gateways.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, vec!["gw1", "gw3"]);
        assert!(v.remotes.is_empty());
    }

    /// The loop as the runtime drives it, against the real allocator: random gateways refuse; the
    /// request ends placed on one that accepts, or cancelled naming each refusal, within the bound.
    #[test]
    fn driven_against_the_allocator_it_ends_within_the_bound() {
        let seed = fastrand::u64(..);
        eprintln!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let template = Template {
            name: "app".into(),
            vcpus: 1,
            mem_mb: 256,
            disk_gb: 1,
            role: Role::AppLight,
        };
        for _ in 0..500 {
            let n = rng.usize(1..=12);
            let ids: Vec<String> = (0..n).map(|i| format!("gw{i}")).collect();
            let refusing: Vec<bool> = (0..n).map(|_| rng.bool()).collect();
            let me = ids[0].clone();
            let mut p = Placement::new();
            let outcome = loop {
                if !p.more() {
                    break None;
                }
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let mut v = view(&refs, &[]);
                v.templates = vec![template.clone()];
                p.narrow(&mut v, false);
                let req = Request {
                    id: 1,
                    template: template.clone(),
                };
                let d = decide(&req, &v, &Policy::default());
                let gw = match p.next(&d, &me) {
                    Step::Cancel(_) => break Some(None),
                    Step::DeployHere => me.clone(),
                    Step::Ask { gateway } => gateway,
                    Step::Remote { .. } => panic!("no clouds in this view"),
                };
                let i = ids.iter().position(|g| *g == gw).unwrap();
                if refusing[i] {
                    p.refused(Target::Gateway(gw), "refused");
                } else {
                    break Some(Some(gw));
                }
            };
            assert!(p.attempt() <= MAX_ATTEMPTS);
            match outcome {
                Some(Some(gw)) => {
                    let i = ids.iter().position(|g| *g == gw).unwrap();
                    assert!(!refusing[i], "placed on a refusing gateway");
                }
                // Equal gateways with room: the allocator cancels only once every one refused.
                Some(None) => {
                    assert!(
                        refusing.iter().all(|r| *r),
                        "cancelled with an accepting gateway left"
                    );
                    assert_eq!(p.attempt() as usize, n + 1);
                }
                // Out of attempts: each one was a refusal.
                None => {
                    assert_eq!(p.attempt(), MAX_ATTEMPTS);
                    assert!(refusing.iter().filter(|r| **r).count() >= MAX_ATTEMPTS as usize);
                }
            }
        }
    }
}
