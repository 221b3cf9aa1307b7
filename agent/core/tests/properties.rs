//! Properties of every policy over random instances (proptest): never overcommit, never an
//! untrusted or unvirtualized gateway, never over a remote's VM limit, storage never remote while
//! local fits, deterministic.

use betaas_core::allocator::*;
use betaas_core::gen::generate;
use betaas_core::sim::{ForecastParams, Sim};
use proptest::prelude::*;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Storage),
        Just(Role::Compute),
        Just(Role::AppLight),
        Just(Role::AppHeavy),
        Just(Role::Gateway)
    ]
}

fn virt() -> impl Strategy<Value = Virt> {
    prop_oneof![
        Just(Virt::Kvm),
        Just(Virt::Qemu),
        Just(Virt::Lxc),
        Just(Virt::None)
    ]
}

fn template() -> impl Strategy<Value = Template> {
    (1u32..4, 64u64..3000, 1u64..20, role()).prop_map(|(vcpus, mem_mb, disk_gb, role)| Template {
        name: format!("t{vcpus}-{mem_mb}-{disk_gb}"),
        vcpus,
        mem_mb,
        disk_gb,
        role,
    })
}

fn gateway(i: usize) -> impl Strategy<Value = Gateway> {
    (
        (1u32..9, 256u64..8192, 4u64..64),
        (0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0),
        (virt(), 0.0f64..=1.0, proptest::option::of(0.0f64..=1.0)),
        (0u32..4, any::<bool>(), proptest::option::of(0.0f64..1.0)),
    )
        .prop_map(
            move |((c, m, d), (uc, um, ud), (virt, trust, battery), (vms, powerful, fc))| {
                let capacity = Res::new(c, m, d);
                let used = Res::new(
                    (f64::from(c) * uc) as u32,
                    (m as f64 * um) as u64,
                    (d as f64 * ud) as u64,
                );
                let free = capacity.saturating_sub(&used);
                Gateway {
                    id: format!("gw{i}"),
                    capacity,
                    used,
                    forecast_free: fc.map(|f| {
                        Res::new(free.cpus, (free.mem_mb as f64 * f) as u64, free.disk_gb)
                    }),
                    virt,
                    trust,
                    battery,
                    vms,
                    powerful,
                }
            },
        )
}

fn instance() -> impl Strategy<Value = (InstanceView, Request, Policy)> {
    let gateways = (1usize..8).prop_flat_map(|n| (0..n).map(gateway).collect::<Vec<_>>());
    // Names from a small set: two entries may name one cloud (two holders of its credentials).
    let remotes = proptest::collection::vec(
        (0u32..4, 0u32..5, any::<bool>(), 0usize..10, 0usize..3),
        0..4,
    );
    let kind = proptest::sample::select(PolicyKind::ALL.to_vec());
    (
        gateways,
        proptest::collection::vec(template(), 1..5),
        remotes,
        kind,
        any::<u64>(),
        0usize..5,
    )
        .prop_map(|(gateways, templates, remotes, kind, seed, pick)| {
            let n = gateways.len();
            let remotes = remotes
                .into_iter()
                .map(|(max_vms, in_use, reachable, owner, name)| Remote {
                    name: format!("r{name}"),
                    provider: Provider::Openstack,
                    max_vms,
                    in_use: in_use.min(max_vms),
                    reachable,
                    // owner index past the gateways: credentials held by a gateway that left.
                    owner: format!("gw{}", if owner < n + 2 { owner } else { 99 }),
                    cost_per_vm: 1.0,
                })
                .collect();
            let template = templates[pick % templates.len()].clone();
            let mut policy = Policy::new(kind);
            policy.seed = seed;
            (
                InstanceView {
                    gateways,
                    templates,
                    remotes,
                },
                Request { id: seed, template },
                policy,
            )
        })
}

/// Written out field by field: the property must not trust `Res::fits_in`, which it checks.
fn fits(want: &Res, free: &Res) -> bool {
    want.cpus <= free.cpus && want.mem_mb <= free.mem_mb && want.disk_gb <= free.disk_gb
}

fn eligible(g: &Gateway, p: &Policy) -> bool {
    g.virt != Virt::None
        && g.trust >= p.min_trust
        && !matches!(g.battery, Some(b) if b < p.min_battery)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn local_choice_is_eligible_and_fits((view, req, policy) in instance()) {
        let d = decide(&req, &view, &policy);
        if let Outcome::Local(id) = &d.outcome {
            let g = view.gateways.iter().find(|g| &g.id == id).expect("chosen gateway exists");
            prop_assert!(eligible(g, &policy), "{id} not eligible: {}", d.explanation());
            // Never overcommit (and the paper's policy also respects the forecast).
            prop_assert!(fits(&req.template.res(), &g.free_now()), "{id} overcommitted");
            if policy.kind == PolicyKind::Betaas {
                prop_assert!(fits(&req.template.res(), &g.judged_free()));
            }
        }
    }

    #[test]
    fn remote_choice_is_within_limits((view, req, policy) in instance()) {
        let d = decide(&req, &view, &policy);
        if let Outcome::Remote(name) = &d.outcome {
            let holder = d.holder.as_deref().expect("a remote decision names its holder");
            // The generator may list one cloud twice for one holder (reachable and not): one of
            // that holder's entries must be reachable.
            let entries: Vec<_> = view
                .remotes
                .iter()
                .filter(|r| &r.name == name && r.owner == holder)
                .collect();
            prop_assert!(!entries.is_empty(), "the chosen holder holds that cloud");
            prop_assert!(entries.iter().any(|r| r.reachable), "{holder} cannot reach {name}");
            prop_assert!(view.gateways.iter().any(|g| g.id == holder));
            // The limit is the cloud's: all its holders' VMs count, against the strictest limit.
            let same = view.remotes.iter().filter(|r| &r.name == name);
            let in_use: u32 = same.clone().map(|r| r.in_use).sum();
            let limit = same.map(|r| r.max_vms).min().unwrap_or(0);
            prop_assert!(in_use < limit, "{name} over its limit: {in_use}/{limit}");
        } else {
            prop_assert!(d.holder.is_none());
        }
    }

    #[test]
    fn storage_never_remote_while_local_fits((view, mut req, policy) in instance()) {
        req.template.role = Role::Storage;
        let fits = view.gateways.iter().any(|g| {
            let free = if policy.kind == PolicyKind::Betaas { g.judged_free() } else { g.free_now() };
            eligible(g, &policy) && fits(&req.template.res(), &free)
        });
        let d = decide(&req, &view, &policy);
        prop_assert_eq!(fits, matches!(d.outcome, Outcome::Local(_)), "{}", d.explanation());
    }

    #[test]
    fn deterministic((view, req, policy) in instance()) {
        let d = decide(&req, &view, &policy);
        prop_assert_eq!(&d, &decide(&req, &view.clone(), &policy));
        // The paper's policy breaks ties by id, so the order gateways are listed in does not matter.
        if policy.kind == PolicyKind::Betaas {
            let mut rev = view.clone();
            rev.gateways.reverse();
            prop_assert_eq!(d.outcome, decide(&req, &rev, &policy).outcome);
        }
    }

    #[test]
    fn simulation_never_overcommits(gws in 1usize..40, reqs in 1usize..300, seed in any::<u64>(),
                                    kind in proptest::sample::select(PolicyKind::ALL.to_vec())) {
        let scenario = generate(gws, reqs, seed);
        let policy = Policy::new(kind);
        let mut sim = Sim::new(&scenario, policy.clone(), ForecastParams::default());
        for i in 0..scenario.requests.len() {
            sim.step(i);
            for g in &sim.view().gateways {
                prop_assert!(fits(&g.used, &g.capacity), "step {i}: {} overcommitted", g.id);
                if !eligible(g, &policy) {
                    prop_assert_eq!(g.vms, 0, "step {}: VM on ineligible {}", i, &g.id);
                }
            }
            for r in &sim.view().remotes {
                prop_assert!(r.in_use <= r.max_vms, "step {i}: {} over limit", r.name);
            }
        }
    }
}
