//! One test per rule of the allocator (paper §III, Figure 2), each with a control showing the
//! rule is what changed the decision.

use betaas_core::allocator::*;

fn tpl(name: &str, vcpus: u32, mem_mb: u64, role: Role) -> Template {
    Template {
        name: name.into(),
        vcpus,
        mem_mb,
        disk_gb: 1,
        role,
    }
}

fn gw(id: &str, cpus: u32, mem_mb: u64) -> Gateway {
    Gateway {
        id: id.into(),
        capacity: Res::new(cpus, mem_mb, 64),
        used: Res::default(),
        forecast_free: None,
        virt: Virt::Kvm,
        trust: 0.9,
        battery: None,
        vms: 0,
        powerful: false,
    }
}

fn running(mut g: Gateway, vms: u32, cpus: u32, mem_mb: u64) -> Gateway {
    g.vms = vms;
    g.used = Res::new(cpus, mem_mb, vms.into());
    g
}

fn powerful(mut g: Gateway) -> Gateway {
    g.powerful = true;
    g
}

fn remote(name: &str, owner: &str) -> Remote {
    Remote {
        name: name.into(),
        provider: Provider::Openstack,
        max_vms: 4,
        in_use: 0,
        reachable: true,
        owner: owner.into(),
        cost_per_vm: 1.0,
    }
}

fn light() -> Template {
    tpl("light", 1, 256, Role::AppLight)
}
fn big() -> Template {
    tpl("big", 2, 1536, Role::Compute)
}
fn storage() -> Template {
    tpl("storage", 1, 512, Role::Storage)
}

fn view(gateways: Vec<Gateway>, remotes: Vec<Remote>) -> InstanceView {
    InstanceView {
        gateways,
        templates: vec![light(), big(), storage()],
        remotes,
    }
}

fn ask(t: Template, v: &InstanceView) -> Decision {
    decide(&Request { id: 1, template: t }, v, &Policy::default())
}

fn local(d: &Decision) -> &str {
    match &d.outcome {
        Outcome::Local(g) => g,
        other => panic!("expected local, got {other:?}: {}", d.explanation()),
    }
}

#[test]
fn paper_example_a_b() {
    // A and B, a VM on B; B cannot host the biggest template but fits the request → B.
    let a = powerful(gw("A", 4, 4096));
    let b = running(gw("B", 2, 2048), 1, 1, 1024);
    let d = ask(light(), &view(vec![a.clone(), b], vec![]));
    assert_eq!(local(&d), "B", "{}", d.explanation());
    assert!(d.fired(PACK_NO_BIGGEST));
    assert!(d
        .explanation()
        .contains("cannot host the biggest template big"));
    // Control: with no VM on B the roomier, powerful A is chosen.
    let d = ask(light(), &view(vec![a, gw("B", 2, 2048)], vec![]));
    assert_eq!(local(&d), "A");
    assert!(!d.fired(PACK_NO_BIGGEST));
}

#[test]
fn pack_only_on_gateways_already_running_vms() {
    // B is too small for the biggest template but runs nothing: spreading, not packing.
    let a = running(gw("A", 4, 4096), 1, 1, 256);
    let d = ask(light(), &view(vec![a, gw("B", 1, 1024)], vec![]));
    assert_eq!(local(&d), "B");
    assert!(d.fired(SPREAD) && !d.fired(PACK_NO_BIGGEST));
}

#[test]
fn no_vms_running_chooses_most_powerful() {
    let v = view(
        vec![
            gw("A", 4, 4096),
            powerful(gw("C", 4, 4096)),
            gw("B", 8, 8192),
        ],
        vec![],
    );
    let d = ask(light(), &v);
    assert_eq!(local(&d), "C");
    // Control: no one powerful → the one with most room.
    let v = view(
        vec![gw("A", 4, 4096), gw("C", 4, 4096), gw("B", 8, 8192)],
        vec![],
    );
    assert_eq!(local(&ask(light(), &v)), "B");
}

#[test]
fn spread_over_gateways() {
    // Both can still host the biggest template: fewest VMs wins even over more free memory.
    let a = running(gw("A", 8, 8192), 1, 1, 256);
    let d = ask(light(), &view(vec![a.clone(), gw("B", 4, 4096)], vec![]));
    assert_eq!(local(&d), "B");
    let b = running(gw("B", 4, 4096), 2, 2, 512);
    assert_eq!(local(&ask(light(), &view(vec![a, b], vec![]))), "A");
}

#[test]
fn keeps_the_last_room_for_the_biggest_template() {
    // Only A can host "big" (2 vCPU, 1536 MB); placing storage on A (1 vCPU) would end that.
    let a = powerful(gw("A", 2, 2048));
    let b = gw("B", 1, 1024);
    let d = ask(storage(), &view(vec![a.clone(), b], vec![]));
    assert_eq!(local(&d), "B", "{}", d.explanation());
    assert!(d.fired(KEEP_ROOM));
    // Control: a second gateway able to host "big" removes the risk → powerful A.
    let d = ask(storage(), &view(vec![a, gw("B", 2, 2048)], vec![]));
    assert_eq!(local(&d), "A");
    assert!(!d.fired(KEEP_ROOM));
}

#[test]
fn excludes_untrusted_unvirtualized_and_low_battery() {
    let mut low_trust = powerful(gw("T", 8, 8192));
    low_trust.trust = 0.3;
    let mut no_virt = powerful(gw("N", 8, 8192));
    no_virt.virt = Virt::None;
    let mut flat = powerful(gw("L", 8, 8192));
    flat.battery = Some(0.1);
    let mut charged = gw("OK", 2, 2048);
    charged.battery = Some(0.8);
    let d = ask(
        light(),
        &view(vec![low_trust, no_virt, flat, charged], vec![]),
    );
    assert_eq!(local(&d), "OK");
    let text = d.explanation();
    for want in [
        "T (trust 0.30 < 0.50)",
        "N (no virtualization)",
        "L (battery 10% < 20%",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    // Control: lower the thresholds and the big trusted-enough gateway is chosen.
    let p = Policy {
        min_trust: 0.2,
        ..Policy::default()
    };
    let mut t = powerful(gw("T", 8, 8192));
    t.trust = 0.3;
    let d = decide(
        &Request {
            id: 1,
            template: light(),
        },
        &view(vec![t, gw("OK", 2, 2048)], vec![]),
        &p,
    );
    assert_eq!(local(&d), "T");
}

#[test]
fn no_local_fit_goes_remote() {
    let v = view(vec![gw("A", 1, 1024)], vec![remote("os", "A")]);
    let d = ask(big(), &v);
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
    assert!(d.fired(NO_LOCAL_FIT) && d.fired(REMOTE_CHOSEN));
}

#[test]
fn each_cancel_path() {
    let a = gw("A", 1, 1024);
    let mut unreachable = remote("r", "A");
    unreachable.reachable = false;
    let mut full = remote("r", "A");
    full.in_use = 4;
    let orphan = remote("r", "gone");
    let mut costly = remote("r", "A");
    costly.cost_per_vm = 9.0;
    let cases: [(Vec<Remote>, &str); 5] = [
        (vec![], "no remote cloud is configured"),
        (vec![unreachable], "r unreachable"),
        (vec![full], "r at its VM limit (4/4)"),
        (vec![orphan], "owner gone is not in the instance"),
        (vec![costly], "r costs 9 per VM"),
    ];
    for (remotes, why) in cases {
        let p = Policy {
            max_cost_per_vm: Some(2.0),
            ..Policy::default()
        };
        let d = decide(
            &Request {
                id: 1,
                template: big(),
            },
            &view(vec![a.clone()], remotes),
            &p,
        );
        assert_eq!(
            d.outcome,
            Outcome::Cancel(CancelReason::NoResources),
            "{why}"
        );
        assert!(
            d.explanation().contains(why),
            "{why} not in {}",
            d.explanation()
        );
    }
    // Reserved room and no usable remote: a heavy app is cancelled while it would fit.
    let v = view(vec![gw("A", 2, 2048)], vec![]);
    let d = ask(tpl("heavy", 2, 1024, Role::AppHeavy), &v);
    assert_eq!(
        d.outcome,
        Outcome::Cancel(CancelReason::ReservedForPriority)
    );
    assert!(d.fired(SHORTAGE_PRIORITY));
}

#[test]
fn unreachable_remote_with_local_option_goes_local() {
    // A compute node on a non-powerful instance would go remote, but the cloud is unreachable.
    let mut r = remote("os", "A");
    let v = view(vec![gw("A", 8, 8192)], vec![r.clone()]);
    assert_eq!(ask(big(), &v).outcome, Outcome::Remote("os".into()));
    r.reachable = false;
    let d = ask(big(), &view(vec![gw("A", 8, 8192)], vec![r]));
    assert_eq!(local(&d), "A");
    assert!(d.fired(NOT_POWERFUL) && d.fired(REMOTE_UNUSABLE));
}

#[test]
fn heavy_work_wants_powerful_gateways() {
    // A has more room, P is powerful: the compute node goes to P.
    let v = view(
        vec![gw("A", 16, 16384), powerful(gw("P", 4, 4096))],
        vec![remote("os", "A")],
    );
    assert_eq!(local(&ask(big(), &v)), "P");
    // Emulated virtualization is never powerful.
    let mut p = powerful(gw("P", 8, 8192));
    p.virt = Virt::Qemu;
    let d = ask(big(), &view(vec![p], vec![remote("os", "P")]));
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
}

#[test]
fn storage_and_light_apps_stay_local() {
    // Same non-powerful instance that sends compute nodes remote keeps storage local.
    let v = view(vec![gw("A", 8, 8192)], vec![remote("os", "A")]);
    let d = ask(storage(), &v);
    assert_eq!(local(&d), "A");
    assert!(d.fired(STAYS_LOCAL));
    assert_eq!(local(&ask(light(), &v)), "A");
}

#[test]
fn shortage_gives_priority_to_storage_and_light_apps() {
    // 10 vCPU / 10240 MB; 8 vCPU used. A compute node (2 vCPU) would leave 0 < 20 %.
    let p = running(powerful(gw("P", 10, 10240)), 4, 8, 2048);
    let v = view(vec![p.clone()], vec![remote("os", "P")]);
    let d = ask(big(), &v);
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
    assert!(d.fired(SHORTAGE_PRIORITY));
    // The storage node in the same state is placed locally.
    assert_eq!(local(&ask(storage(), &v)), "P");
    // Control: with no storage / light template registered there is nothing to reserve for.
    let mut v2 = view(vec![p], vec![remote("os", "P")]);
    v2.templates = vec![big()];
    assert_eq!(local(&ask(big(), &v2)), "P");
}

#[test]
fn judges_free_resources_by_the_forecast() {
    // A looks roomier now, but its host load is forecast to grow: only 200 MB free.
    let mut a = powerful(gw("A", 4, 4096));
    a.forecast_free = Some(Res::new(4, 200, 64));
    let b = gw("B", 4, 2048);
    let v = view(vec![a, b], vec![]);
    assert_eq!(local(&ask(light(), &v)), "B");
    // First-fit ignores the forecast.
    let d = decide(
        &Request {
            id: 1,
            template: light(),
        },
        &v,
        &Policy::new(PolicyKind::FirstFit),
    );
    assert_eq!(local(&d), "A");
}

#[test]
fn cheapest_usable_remote() {
    let mut cheap = remote("cheap", "A");
    cheap.cost_per_vm = 0.5;
    cheap.reachable = false;
    let mut mid = remote("mid", "A");
    mid.cost_per_vm = 0.7;
    let v = view(vec![gw("A", 1, 512)], vec![remote("dear", "A"), cheap, mid]);
    assert_eq!(ask(big(), &v).outcome, Outcome::Remote("mid".into()));
}

#[test]
fn baselines_choose_by_their_rule() {
    let v = view(
        vec![
            running(gw("A", 4, 4096), 1, 1, 1024), // 3072 MB free
            gw("B", 2, 1024),                      // 1024 MB free, 0 % allocated
            running(gw("C", 8, 8192), 6, 6, 4096), // 4096 MB free, 75 % CPU allocated
        ],
        vec![],
    );
    let pick = |k: PolicyKind, id: u64| {
        let d = decide(
            &Request {
                id,
                template: light(),
            },
            &v,
            &Policy::new(k),
        );
        assert!(d.fired(BASELINE));
        local(&d).to_owned()
    };
    assert_eq!(pick(PolicyKind::FirstFit, 1), "A");
    assert_eq!(pick(PolicyKind::BestFit, 1), "B");
    assert_eq!(pick(PolicyKind::NovaSpread, 1), "C");
    // Free fractions after: A .5+.69+.98, B .5+.75+.98, C .12+.47+.98 → B.
    assert_eq!(pick(PolicyKind::WorstFit, 1), "B");
    // Allocated after (cpu, mem)/2: A (.5+.31)/2, B (.5+.25)/2, C (.875+.53)/2 → C.
    assert_eq!(pick(PolicyKind::K8sMostAllocated, 1), "C");
    // Random: seeded, same id same answer; over many ids every gateway is drawn.
    let drawn: std::collections::BTreeSet<String> =
        (0..64).map(|i| pick(PolicyKind::Random, i)).collect();
    assert_eq!(drawn.len(), 3);
    assert_eq!(pick(PolicyKind::Random, 5), pick(PolicyKind::Random, 5));
}

#[test]
fn policy_names_round_trip() {
    for k in PolicyKind::ALL {
        assert_eq!(k.name().parse::<PolicyKind>(), Ok(k));
    }
    let e = "bestfit"
        .parse::<PolicyKind>()
        .expect_err("bestfit is no policy");
    assert!(
        e.contains("best-fit") && e.contains("k8s-most-allocated"),
        "{e}"
    );
}

#[test]
fn heavy_work_avoids_the_last_room_for_storage() {
    // Storage nodes need 40 GB of disk: only P1 has it, and P1 would have no vCPU left after the
    // compute node. P2 fits the compute node too (it runs a VM, so spread alone prefers P1).
    let mut v = view(
        vec![powerful(gw("P1", 2, 4096)), powerful(gw("P2", 4, 4096))],
        vec![],
    );
    v.gateways[1].vms = 1;
    v.gateways[1].used = Res::new(0, 0, 30);
    v.templates[2].disk_gb = 40;
    let d = ask(big(), &v);
    assert_eq!(local(&d), "P2", "{}", d.explanation());
    // Control: without the priority rule the spread rule prefers P1 (no VMs).
    let p = Policy {
        reserve_for_priority: false,
        ..Policy::default()
    };
    let d = decide(
        &Request {
            id: 1,
            template: big(),
        },
        &v,
        &p,
    );
    assert_eq!(local(&d), "P1");
}

#[test]
fn spread_judges_the_share_left_free() {
    // Same VM count, same CPUs left. X has more megabytes free, Y a larger share of itself free
    // (X 47 % of memory after placement, Y 75 %): spreading evens the load, so Y.
    let x = running(gw("X", 4, 8192), 1, 2, 4096);
    let y = running(gw("Y", 4, 2048), 1, 2, 256);
    let d = ask(light(), &view(vec![x, y], vec![]));
    assert_eq!(local(&d), "Y", "{}", d.explanation());
    assert!(d.fired(SPREAD) && !d.fired(PACK_NO_BIGGEST) && !d.fired(KEEP_ROOM));
}

fn holder(name: &str, owner: &str, in_use: u32, max_vms: u32) -> Remote {
    Remote {
        in_use,
        max_vms,
        ..remote(name, owner)
    }
}

/// A small instance that sends a compute node remote (nothing local fits it).
fn two_holders(remotes: Vec<Remote>) -> Decision {
    ask(
        big(),
        &view(vec![gw("A", 1, 1024), gw("B", 1, 1024)], remotes),
    )
}

#[test]
fn two_holders_the_decision_names_the_one_to_ask() {
    // Random split of the cloud's VMs between A and B, under the limit, in random list order:
    // the holder with fewer VMs of its own is named (ties: owner id), whatever comes first.
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..200 {
        let limit = rng.u32(2..20);
        let a = rng.u32(0..limit);
        let b = rng.u32(0..limit - a);
        let mut remotes = vec![holder("os", "A", a, limit), holder("os", "B", b, limit)];
        if rng.bool() {
            remotes.reverse();
        }
        let d = two_holders(remotes);
        assert_eq!(d.outcome, Outcome::Remote("os".into()), "seed {seed}");
        let want = if b < a { "B" } else { "A" };
        assert_eq!(
            d.holder.as_deref(),
            Some(want),
            "seed {seed}: {a}+{b}/{limit}"
        );
        assert!(
            d.explanation()
                .contains(&format!("os via holder {want} ({} of {limit}", a + b)),
            "{}",
            d.explanation()
        );
    }
}

#[test]
fn two_holders_an_unreachable_one_is_skipped() {
    // A comes first and has fewer VMs, but cannot reach the cloud: B is asked.
    let mut a = holder("os", "A", 0, 4);
    a.reachable = false;
    let d = two_holders(vec![a.clone(), holder("os", "B", 1, 4)]);
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
    assert_eq!(d.holder.as_deref(), Some("B"));
    // Control: reachable again, A (fewer VMs) is asked.
    a.reachable = true;
    let d = two_holders(vec![a, holder("os", "B", 1, 4)]);
    assert_eq!(d.holder.as_deref(), Some("A"));
    // Only unreachable holders: no remote, each named.
    let mut b = holder("os", "B", 0, 4);
    b.reachable = false;
    let mut a = holder("os", "A", 0, 4);
    a.reachable = false;
    let d = two_holders(vec![a, b]);
    assert_eq!(d.outcome, Outcome::Cancel(CancelReason::NoResources));
    assert_eq!(d.holder, None);
    let text = d.explanation();
    assert!(
        text.contains("os unreachable (holder A)") && text.contains("os unreachable (holder B)"),
        "{text}"
    );
}

#[test]
fn two_holders_the_limit_holds_across_both() {
    // Limit 3, 2 VMs made through A and 1 through B: each holder alone is under 3, the cloud is not.
    let d = two_holders(vec![holder("os", "A", 2, 3), holder("os", "B", 1, 3)]);
    assert_eq!(d.outcome, Outcome::Cancel(CancelReason::NoResources));
    assert!(
        d.explanation()
            .contains("os at its VM limit (3/3 across 2 holders)"),
        "{}",
        d.explanation()
    );
    // An unreachable holder's VMs still run on the cloud: they count.
    let mut b = holder("os", "B", 1, 3);
    b.reachable = false;
    let d = two_holders(vec![holder("os", "A", 2, 3), b]);
    assert_eq!(d.outcome, Outcome::Cancel(CancelReason::NoResources));
    // Control: one VM fewer and the cloud has room.
    let d = two_holders(vec![holder("os", "A", 1, 3), holder("os", "B", 1, 3)]);
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
}

#[test]
fn two_holders_the_strictest_limit_is_the_clouds() {
    // A says 5, B says 2: with 2 VMs the cloud is full for both.
    let d = two_holders(vec![holder("os", "A", 1, 5), holder("os", "B", 1, 2)]);
    assert_eq!(d.outcome, Outcome::Cancel(CancelReason::NoResources));
    assert!(d.explanation().contains("(2/2 across 2 holders)"));
    // Control: B says 3.
    let d = two_holders(vec![holder("os", "A", 1, 5), holder("os", "B", 1, 3)]);
    assert_eq!(d.outcome, Outcome::Remote("os".into()));
    assert!(d.explanation().contains("(2 of 3 VMs in use)"));
}

#[test]
fn one_holder_decisions_name_it_and_local_ones_name_none() {
    let d = ask(
        big(),
        &view(vec![gw("A", 1, 1024)], vec![remote("os", "A")]),
    );
    assert_eq!(d.holder.as_deref(), Some("A"));
    assert!(d
        .explanation()
        .contains("remote cloud os (0 of 4 VMs in use)"));
    let d = ask(
        light(),
        &view(vec![gw("A", 1, 1024)], vec![remote("os", "A")]),
    );
    assert_eq!(local(&d), "A");
    assert_eq!(d.holder, None);
}
