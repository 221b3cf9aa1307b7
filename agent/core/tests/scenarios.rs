//! The shipped scenarios (`tests/scenarios/*.json`) parse, replay under every policy, and show
//! what each was written to show.

use std::path::PathBuf;

use betaas_core::allocator::{Policy, PolicyKind};
use betaas_core::scenario::Scenario;
use betaas_core::sim::{run, ForecastParams, SimOutput};

fn load(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/scenarios")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Scenario::parse(name, &text).unwrap_or_else(|e| panic!("{e}"))
}

fn sim(s: &Scenario, kind: PolicyKind) -> SimOutput {
    run(s, &Policy::new(kind), ForecastParams::default())
}

fn targets(o: &SimOutput) -> Vec<(&str, Option<&str>)> {
    o.decisions
        .iter()
        .map(|d| (d.decision, d.target.as_deref()))
        .collect()
}

#[test]
fn every_shipped_scenario_runs_under_every_policy() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/scenarios exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let s = load(&path.file_name().expect("name").to_string_lossy());
            for k in PolicyKind::ALL {
                let o = sim(&s, k);
                let m = &o.summary;
                let vm_requests = s
                    .requests
                    .iter()
                    .filter(|r| matches!(r, betaas_core::scenario::ScRequest::Template { .. }))
                    .count();
                assert_eq!(m.local + m.remote + m.cancelled, vm_requests);
                assert_eq!(o.decisions.len(), vm_requests);
                // Deterministic, random included (it is seeded).
                assert_eq!(o, sim(&s, k), "{} {k}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 4, "only {n} scenarios found");
}

#[test]
fn paper_ab() {
    let s = load("paper-ab.json");
    let o = sim(&s, PolicyKind::Betaas);
    assert_eq!(
        targets(&o),
        vec![
            ("local", Some("B")),
            ("local", Some("A")),
            ("local", Some("A"))
        ]
    );
    assert!(o.decisions[0]
        .reason
        .contains("cannot host the biggest template big-compute"));
    // First-fit puts the light app on A: the same sequence still fits, but A is no longer roomy.
    let o = sim(&s, PolicyKind::FirstFit);
    assert_eq!(o.decisions[0].target.as_deref(), Some("A"));
}

#[test]
fn remote_limits() {
    let s = load("remote-limits.json");
    let o = sim(&s, PolicyKind::Betaas);
    let d = targets(&o);
    // Compute nodes on non-powerful Cubietrucks go remote, up to the cloud's limit of 2.
    assert_eq!(d[0], ("remote", Some("openstack-lab")));
    assert_eq!(d[1], ("remote", Some("openstack-lab")));
    assert!(o.decisions[2]
        .reason
        .contains("openstack-lab at its VM limit (2/2)"));
    assert!(o.decisions[2]
        .reason
        .contains("opennebula-down unreachable"));
    // Storage nodes never remote, even once the instance is full (request 8 is cancelled).
    for (i, r) in s.requests.iter().enumerate() {
        if matches!(r, betaas_core::scenario::ScRequest::Template { template } if template == "storage-node")
        {
            let dec = o
                .decisions
                .iter()
                .find(|d| d.request == i)
                .expect("decided");
            assert_ne!(dec.decision, "remote", "request {i}: {}", dec.reason);
        }
    }
    assert_eq!(o.decisions.last().map(|d| d.decision), Some("cancel"));
    assert!(o.summary.remote_peak <= 2);
    // Release of request 0 frees a remote slot: request 7 (a compute node) goes remote again.
    let r7 = o
        .decisions
        .iter()
        .find(|d| d.request == 7)
        .expect("decided");
    assert_eq!(r7.decision, "remote", "{}", r7.reason);
}

#[test]
fn forecast_keeps_vms_off_the_growing_gateway() {
    let s = load("forecast.json");
    let o = sim(&s, PolicyKind::Betaas);
    assert_eq!(o.summary.at_risk, 0, "{:#?}", o.decisions);
    assert_eq!(o.summary.cancelled, 0);
    // The first storage node does not fit busy-1 by the forecast: calm-1.
    assert_eq!(o.decisions[0].target.as_deref(), Some("calm-1"));
    // Without the forecast busy-1 looks fine now and first-fit fills it: two VMs at risk.
    let o = sim(&s, PolicyKind::FirstFit);
    assert_eq!(o.decisions[0].target.as_deref(), Some("busy-1"));
    assert_eq!(o.summary.at_risk, 2, "{:#?}", o.decisions);
}
