//! The allocator's Remote decisions carried out for real: two agents and one real mosquitto, an
//! OpenStack fixture (Keystone v3 + Nova, `cloud_support::openstack`) on loopback. gw0 offers no
//! room of its own; gw1 holds the credentials of cloud "campus". A request for a template no gateway
//! can host goes through gw1 to the cloud; a failed create, a full cloud (VM limit) and an
//! unreachable cloud make the requester cancel with the reason and leave no VM behind; a released
//! VM is stopped and resumed by the next request of its template instead of a new one. With two
//! holders of one cloud, the one the allocator chose (not the first by name) deploys, and the
//! cloud's VM limit holds across both.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod cloud_support;
mod instance_support;

use std::time::Duration;

use betaas_core::allocator::Res;
use std::path::{Path, PathBuf};

use betaas_e2e::{Mosquitto, Subscriber};
use cloud_support::openstack::{fixture, nova_error, Model, COMPUTE};
use instance_support::*;
use serde_json::{json, Value};

fn cloud_section(
    name: &str,
    provider: &str,
    endpoint: &str,
    limit: u32,
    image: &str,
    creds: &Path,
) -> String {
    format!(
        "[[clouds]]\nname = \"{name}\"\nprovider = \"{provider}\"\nendpoint = \"{endpoint}\"\nvm_limit = {limit}\n\
         deploy_timeout_secs = 10\npoll_interval_ms = 200\ncredentials = \"{}\"\nimages = {{ big = \"{image}\" }}\n",
        creds.display()
    )
}

/// gw0 (no room of its own) and gw1 holding the cloud `[[clouds]]` `section` with credentials
/// `creds_text` (0600), both running, and gw0 seeing the cloud reachable.
struct Lab {
    _root: tempfile::TempDir,
    broker: Mosquitto,
    sub: Subscriber,
    gws: Vec<Gw>,
    ops: PathBuf,
    _procs: Vec<betaas_e2e::KillOnDrop>,
}

fn lab(cloud: &str, section: impl FnOnce(&Path) -> String, creds_text: &str) -> Lab {
    use std::os::unix::fs::PermissionsExt;
    let (root, keys) = new_instance();
    let ops = client(&keys, root.path());
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let gws: Vec<Gw> = [("gw0", Res::new(0, 0, 0)), ("gw1", Res::new(1, 512, 2))]
        .into_iter()
        .map(|(id, cap)| member(&keys, root.path(), id, cap))
        .collect();
    let creds = gws[1].dir.join(format!("{cloud}.toml"));
    std::fs::write(&creds, creds_text).unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut procs = Vec::new();
    let section = section(&creds);
    for (i, gw) in gws.iter().enumerate() {
        let mut text = config(gw, broker.port, &gw.dir.join("keys"));
        if i == 1 {
            text += &section;
        }
        std::fs::write(gw.dir.join("agent.toml"), text).unwrap();
        procs.push(spawn(std::process::Command::new(AGENT), gw));
    }
    // gw0 learns gw1's cloud from gw1's resource report once gw1 has checked it.
    health_until(
        &mut sub,
        &["gw0"],
        &format!("gw0 to see {cloud} reachable"),
        Duration::from_secs(20),
        |_, h| {
            let c = &h["instance"]["clouds"];
            c[0]["name"] == cloud && c[0]["holder"] == "gw1" && c[0]["reachable"] == true
        },
    );
    Lab {
        _root: root,
        broker,
        sub,
        gws,
        ops,
        _procs: procs,
    }
}

/// No password or token (`secrets`) in the agents' logs or in `also`.
fn no_secrets(gws: &[Gw], secrets: &[String], also: &str) {
    let mut seen = also.to_owned();
    for gw in gws {
        seen += &std::fs::read_to_string(gw.dir.join("agent.log")).unwrap();
    }
    for s in secrets {
        assert!(!seen.contains(s.as_str()), "a secret leaked");
    }
}

fn cloud_health(sub: &mut Subscriber, what: &str, until: impl Fn(&Value) -> bool) -> Value {
    let h = health_until(sub, &["gw1"], what, Duration::from_secs(15), |_, h| {
        until(&h["clouds"][0])
    });
    h["gw1"]["clouds"][0].clone()
}

fn release(broker: &Mosquitto, sub: &mut Subscriber, ops: &Path, id: &str, vm: &str) -> Value {
    release_on(broker, sub, ops, "campus", id, vm)
}

fn release_on(
    broker: &Mosquitto,
    sub: &mut Subscriber,
    ops: &Path,
    cloud: &str,
    id: &str,
    vm: &str,
) -> Value {
    send_signed(
        broker,
        ops,
        "gw1",
        json!({"id": id, "release": vm, "target": cloud}),
    );
    result_of(sub, "gw1", id)
}

/// Every server create the OpenStack fixture received.
fn creates(fx: &cloud_support::Fixture) -> Vec<cloud_support::Req> {
    fx.requests()
        .into_iter()
        .filter(|q| q.line() == format!("POST {COMPUTE}/servers"))
        .collect()
}

#[test]
fn remote_decisions_run_on_the_gateway_holding_the_cloud_and_fall_back_cleanly() {
    betaas_e2e::seeded();
    let _serial = serial();
    let limit = fastrand::u32(1..=2);
    println!("vm_limit {limit}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut fx, m) = rt.block_on(fixture(Model::new()));
    let password = m.lock().unwrap().password.clone();
    let url = fx.url();
    let Lab {
        broker,
        mut sub,
        gws,
        ops,
        _root,
        _procs,
    } = lab(
        "campus",
        |creds| cloud_section("campus", "openstack", &format!("{url}/v3"), limit, "img-big", creds),
        &format!("auth = \"password\"\nusername = \"betaas\"\npassword = \"{password}\"\nproject = \"iot\"\n"),
    );

    // 1. The create fails (500): the requester leaves the cloud out and cancels; nothing leaked.
    m.lock().unwrap().inject.push_back((
        format!("POST {COMPUTE}/servers"),
        nova_error(500, "computeFault", "no valid host"),
    ));
    let r = request(&broker, &mut sub, &ops, "gw0", "r0", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    assert_eq!(r["attempts"], 2, "remote tried once, then cancelled: {r}");
    assert_eq!(creates(&fx).len(), 1);
    assert!(m.lock().unwrap().servers.is_empty());
    cloud_health(&mut sub, "no VM recorded after the failure", |c| {
        c["vms"] == json!([])
    });

    // 2. Up to the limit: each request lands on the cloud through gw1, with the template's image
    // and the smallest flavor that fits 2 vCPU / 1024 MB / 4 GB.
    let mut vms = Vec::new();
    for n in 1..=limit {
        let r = request(&broker, &mut sub, &ops, "gw0", &format!("r{n}"), "big");
        assert_eq!(
            (&r["decision"], &r["target"], &r["host"], &r["resumed"]),
            (
                &json!("remote"),
                &json!("campus"),
                &json!("gw1"),
                &json!(false)
            ),
            "{r}"
        );
        let vm = r["vm"].as_str().unwrap().to_owned();
        assert!(m.lock().unwrap().servers[&vm].status == "ACTIVE");
        let create = creates(&fx).pop().unwrap();
        let body = create.json();
        assert_eq!(body["server"]["imageRef"], "img-big", "{body}");
        assert_eq!(body["server"]["flavorRef"], "f-medium", "{body}");
        assert!(body["server"]["name"]
            .as_str()
            .unwrap()
            .starts_with("betaas-gw1-big-"));
        let token = create.header("X-Auth-Token").unwrap().to_owned();
        assert!(m.lock().unwrap().valid.contains(&token));
        vms.push(vm);
    }
    let c = cloud_health(&mut sub, "the running VMs in gw1's health", |c| {
        c["vms_running"] == limit
    });
    for vm in &vms {
        assert!(
            c["vms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["id"] == vm.as_str() && v["state"] == "running"),
            "{c}"
        );
    }

    // 3. The VM limit is reached: cancel, no create sent.
    let before = creates(&fx).len();
    let r = request(&broker, &mut sub, &ops, "gw0", "full", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    assert_eq!(creates(&fx).len(), before);

    // 4. Released: stopped (os-stop), not deleted; the next request resumes it (os-start).
    let vm = vms[0].clone();
    let rel = release(&broker, &mut sub, &ops, "rel", &vm);
    assert_eq!(rel["decision"], "released", "{rel}");
    let action = format!("POST {COMPUTE}/servers/{vm}/action");
    let actions = |fx: &cloud_support::Fixture| {
        fx.requests()
            .into_iter()
            .filter(|q| q.line() == action)
            .map(|q| q.json())
            .collect::<Vec<_>>()
    };
    assert_eq!(actions(&fx), vec![json!({"os-stop": null})]);
    assert_eq!(m.lock().unwrap().servers[&vm].status, "SHUTOFF");
    let r = request(&broker, &mut sub, &ops, "gw0", "again", "big");
    assert_eq!(
        (&r["decision"], &r["vm"], &r["resumed"]),
        (&json!("remote"), &json!(vm), &json!(true)),
        "{r}"
    );
    assert_eq!(
        actions(&fx),
        vec![json!({"os-stop": null}), json!({"os-start": null})]
    );
    assert_eq!(creates(&fx).len(), before, "resumed, not created");

    // 5. The cloud goes away: the deployment fails at its reachability check, the requester
    // cancels; gw1 shows it unreachable, then reachable again once it is back.
    let rel = release(&broker, &mut sub, &ops, "rel2", &vm);
    assert_eq!(rel["decision"], "released", "{rel}");
    fx.stop();
    let r = request(&broker, &mut sub, &ops, "gw0", "down", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    cloud_health(&mut sub, "campus unreachable", |c| c["reachable"] == false);
    rt.block_on(fx.restart());
    cloud_health(&mut sub, "campus reachable again", |c| {
        c["reachable"] == true
    });

    // Secrets never reach a log line or a message on the bus.
    let mut secrets = m.lock().unwrap().tokens.clone();
    secrets.push(password);
    no_secrets(&gws, &secrets, &format!("{r} {c}"));
}

/// The same flow on OpenNebula: the holder instantiates the template mapped to the request's
/// template over XML-RPC; a release powers it off; the next request resumes it.
#[test]
fn remote_decisions_on_opennebula_instantiate_poweroff_and_resume() {
    use cloud_support::opennebula::{fixture as one_fixture, parse_call, TEMPLATE_ID};
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fx, m, password) = rt.block_on(one_fixture());
    let url = fx.url();
    let Lab {
        broker,
        mut sub,
        gws,
        ops,
        _root,
        _procs,
    } = lab(
        "one",
        |creds| {
            cloud_section(
                "one",
                "opennebula",
                &format!("{url}/RPC2"),
                1,
                TEMPLATE_ID,
                creds,
            )
        },
        &format!("auth = \"password\"\nusername = \"oneuser\"\npassword = \"{password}\"\n"),
    );
    let calls = |method: &str| {
        fx.requests()
            .iter()
            .map(|q| parse_call(&q.body))
            .filter(|(name, _)| name == method)
            .map(|(_, p)| p)
            .collect::<Vec<_>>()
    };
    let r = request(&broker, &mut sub, &ops, "gw0", "n1", "big");
    assert_eq!(
        (&r["decision"], &r["target"], &r["host"], &r["resumed"]),
        (
            &json!("remote"),
            &json!("one"),
            &json!("gw1"),
            &json!(false)
        ),
        "{r}"
    );
    let vm = r["vm"].as_str().unwrap().to_owned();
    let inst = calls("one.template.instantiate");
    assert_eq!(inst.len(), 1);
    assert_eq!(inst[0][1], TEMPLATE_ID);
    assert!(inst[0][2].starts_with("betaas-gw1-big-"), "{:?}", inst[0]);
    assert_eq!(
        m.lock().unwrap().vms[&vm.parse::<u64>().unwrap()].state,
        3,
        "ACTIVE"
    );

    let rel = release_on(&broker, &mut sub, &ops, "one", "nrel", &vm);
    assert_eq!(rel["decision"], "released", "{rel}");
    let r = request(&broker, &mut sub, &ops, "gw0", "n2", "big");
    assert_eq!(
        (&r["decision"], &r["vm"], &r["resumed"]),
        (&json!("remote"), &json!(vm), &json!(true)),
        "{r}"
    );
    let actions: Vec<(String, String)> = calls("one.vm.action")
        .into_iter()
        .map(|p| (p[1].clone(), p[2].clone()))
        .collect();
    assert_eq!(
        actions,
        [
            ("poweroff".to_owned(), vm.clone()),
            ("resume".to_owned(), vm.clone())
        ]
    );
    assert_eq!(
        calls("one.template.instantiate").len(),
        1,
        "resumed, not instantiated"
    );
    no_secrets(&gws, &[password], &r.to_string());
}

/// The OpenStack fixture with one Keystone path per holder: `/<gw>/v3…` is answered by the model
/// with the prefix removed, so the test knows which holder each token was issued to; a holder in
/// `blocked` gets 503 from Keystone (its reachability check fails: the cloud is unreachable for
/// it). Compute requests carry the token, so each create is traced to its holder.
#[derive(Default)]
struct PerHolder {
    /// token -> holder.
    tokens: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    blocked: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl PerHolder {
    fn holder_of(&self, create: &cloud_support::Req) -> Option<String> {
        let token = create.header("X-Auth-Token")?;
        self.tokens.lock().unwrap().get(token).cloned()
    }
}

async fn per_holder_fixture() -> (
    cloud_support::Fixture,
    cloud_support::openstack::Shared,
    std::sync::Arc<PerHolder>,
) {
    use cloud_support::openstack::handle;
    use std::sync::{Arc, Mutex};
    let m = Arc::new(Mutex::new(Model::new()));
    let holders = Arc::new(PerHolder::default());
    let (model, hs) = (m.clone(), holders.clone());
    let fx = cloud_support::Fixture::start(Arc::new(move |r: &cloud_support::Req| {
        let split = r.path.strip_prefix('/').and_then(|p| p.split_once('/'));
        let Some((gw, rest)) = split.filter(|(g, _)| g.starts_with("gw")) else {
            return handle(&mut model.lock().unwrap(), r);
        };
        if hs.blocked.lock().unwrap().contains(gw) {
            return cloud_support::Resp::new(503, "");
        }
        let mut inner = r.clone();
        inner.path = format!("/{rest}");
        let resp = handle(&mut model.lock().unwrap(), &inner);
        if let Some((_, token)) = resp.headers.iter().find(|(k, _)| k == "X-Subject-Token") {
            hs.tokens
                .lock()
                .unwrap()
                .insert(token.clone(), gw.to_owned());
        }
        resp
    }))
    .await;
    m.lock().unwrap().base = fx.url();
    (fx, m, holders)
}

/// `holder`'s entry for cloud campus in the clouds a gateway's health shows.
fn campus_entry<'h>(h: &'h Value, holder: &str) -> Option<&'h Value> {
    h["instance"]["clouds"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "campus" && c["holder"] == holder)
}

/// The campus VMs a gateway's view counts across both holders.
fn campus_in_use(h: &Value) -> Option<u64> {
    ["gw1", "gw2"]
        .iter()
        .map(|g| campus_entry(h, g).and_then(|c| c["in_use"].as_u64()))
        .sum()
}

/// Two gateways hold credentials for one cloud. The requester must ask the holder the allocator
/// chose (here the only one that reaches the cloud; the first by name does not), and the cloud's
/// VM limit (the strictest either states) holds across both: VMs created through either count.
#[test]
fn two_holders_of_one_cloud_the_reachable_one_deploys_and_the_limit_holds_across_both() {
    betaas_e2e::seeded();
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let limit = fastrand::u32(1..=2);
    // One holder states the limit, the other a looser one: the strictest wins.
    let loose = limit + fastrand::u32(0..=2);
    let strict_on_gw1 = fastrand::bool();
    println!(
        "cloud limit {limit} (the other holder states {loose}, strict on gw1: {strict_on_gw1})"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fx, m, holders) = rt.block_on(per_holder_fixture());
    // gw1 cannot reach the cloud at first.
    holders.blocked.lock().unwrap().insert("gw1".into());
    let password = m.lock().unwrap().password.clone();
    let url = fx.url();

    let (root, keys) = new_instance();
    let ops = client(&keys, root.path());
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let mut procs = Vec::new();
    let mut gws = Vec::new();
    for (id, cap) in [
        ("gw0", Res::new(0, 0, 0)),
        ("gw1", Res::new(1, 512, 2)),
        ("gw2", Res::new(1, 512, 2)),
    ] {
        let gw = member(&keys, root.path(), id, cap);
        let mut section = String::new();
        if id != "gw0" {
            let creds = gw.dir.join("campus.toml");
            std::fs::write(
                &creds,
                format!("auth = \"password\"\nusername = \"betaas\"\npassword = \"{password}\"\nproject = \"iot\"\n"),
            )
            .unwrap();
            std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
            let vm_limit = if (id == "gw1") == strict_on_gw1 {
                limit
            } else {
                loose
            };
            section = cloud_section(
                "campus",
                "openstack",
                &format!("{url}/{id}/v3"),
                vm_limit,
                "img-big",
                &creds,
            );
        }
        procs.push(start_edited(&gw, broker.port, |t| t + &section));
        gws.push(gw);
    }
    let t0 = std::time::Instant::now();
    health_until(
        &mut sub,
        &["gw0"],
        "gw0 to see campus held by gw1 (unreachable) and gw2 (reachable)",
        Duration::from_secs(30),
        |_, h| {
            campus_entry(h, "gw1").is_some_and(|c| c["reachable"] == false)
                && campus_entry(h, "gw2").is_some_and(|c| c["reachable"] == true)
        },
    );
    println!(
        "gw0 sees both holders after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 1. gw1 comes first by name but cannot reach the cloud: the deployment goes through gw2.
    let t = std::time::Instant::now();
    let r = request(&broker, &mut sub, &ops, "gw0", "h1", "big");
    println!("remote through gw2 in {} ms: {r}", t.elapsed().as_millis());
    assert_eq!(
        (&r["decision"], &r["target"], &r["host"]),
        (&json!("remote"), &json!("campus"), &json!("gw2")),
        "{r}"
    );
    let made = creates(&fx);
    assert_eq!(made.len(), 1);
    assert_eq!(holders.holder_of(&made[0]).as_deref(), Some("gw2"));
    assert!(made[0].json()["server"]["name"]
        .as_str()
        .unwrap()
        .starts_with("betaas-gw2-big-"));
    assert!(
        !holders.tokens.lock().unwrap().values().any(|g| g == "gw1"),
        "gw1 never got through to the cloud"
    );

    // 2. gw1 reaches the cloud again. Below the limit, the holder with fewer VMs of its own
    // (gw1) takes the next one.
    holders.blocked.lock().unwrap().clear();
    health_until(
        &mut sub,
        &["gw0"],
        "gw0 to see gw1 reach campus and gw2 run one VM there",
        Duration::from_secs(30),
        |_, h| {
            campus_entry(h, "gw1").is_some_and(|c| c["reachable"] == true)
                && campus_entry(h, "gw2").is_some_and(|c| c["in_use"] == 1)
        },
    );
    if limit == 2 {
        let r = request(&broker, &mut sub, &ops, "gw0", "h2", "big");
        assert_eq!(
            (&r["decision"], &r["target"], &r["host"]),
            (&json!("remote"), &json!("campus"), &json!("gw1")),
            "{r}"
        );
        let made = creates(&fx);
        assert_eq!(made.len(), 2);
        assert_eq!(holders.holder_of(&made[1]).as_deref(), Some("gw1"));
    }
    assert_eq!(m.lock().unwrap().servers.len(), limit as usize);

    // 3. The limit is reached across the two holders (each below its own stated limit, or at
    // it): neither the requester nor a holder deciding for itself creates one more.
    let all = ["gw0", "gw1", "gw2"];
    health_until(
        &mut sub,
        &all,
        "every gateway to count the cloud's VMs across both holders",
        Duration::from_secs(30),
        |_, h| campus_in_use(h) == Some(u64::from(limit)),
    );
    let holder = if fastrand::bool() { "gw1" } else { "gw2" };
    for (gw, id) in [("gw0", "over"), (holder, "over-holder")] {
        let r = request(&broker, &mut sub, &ops, gw, id, "big");
        println!("{gw} at the limit: {} ({})", r["decision"], r["reason"]);
        assert_ne!(r["decision"], "remote", "{gw}: {r}");
        assert_eq!(r["decision"], "cancel", "no gateway has room for big: {r}");
        assert!(
            r["reason"].as_str().unwrap().contains("VM limit"),
            "{gw}: {r}"
        );
    }
    assert_eq!(
        creates(&fx).len(),
        limit as usize,
        "no create past the limit"
    );
    assert_eq!(m.lock().unwrap().servers.len(), limit as usize);

    let mut secrets = m.lock().unwrap().tokens.clone();
    secrets.push(password);
    no_secrets(&gws, &secrets, "");
    drop(procs);
}

/// A cluster's workers (paper §V: spread, local first, remote when local is full): asked of gw1,
/// which holds cloud "campus" and has room for one `app` of its own, `replicas` 2 puts one worker
/// on gw1 and creates one on the cloud (counted in the cluster); 2 → 1 stops the remote one
/// first (os-stop, the local one stays); 1 → 2 resumes it (os-start), no second create.
#[test]
fn cluster_workers_go_remote_when_the_instance_is_full_and_are_released_first() {
    betaas_e2e::seeded();
    let _serial = serial();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (fx, m) = rt.block_on(fixture(Model::new()));
    let password = m.lock().unwrap().password.clone();
    let url = fx.url();
    let Lab {
        broker,
        mut sub,
        ops,
        _root,
        _procs,
        ..
    } = lab(
        "campus",
        |creds| {
            format!(
                "[[clouds]]\nname = \"campus\"\nprovider = \"openstack\"\nendpoint = \"{url}/v3\"\nvm_limit = 4\n\
                 deploy_timeout_secs = 10\npoll_interval_ms = 200\ncredentials = \"{}\"\nimages = {{ app = \"img-app\" }}\n",
                creds.display()
            )
        },
        &format!("auth = \"password\"\nusername = \"betaas\"\npassword = \"{password}\"\nproject = \"iot\"\n"),
    );
    let scale = |sub: &mut Subscriber, id: &str, n: u32| {
        send_signed(
            &broker,
            &ops,
            "gw1",
            json!({"id": id, "cluster": "c", "template": "app", "replicas": n}),
        );
        let r = result_of(sub, "gw1", id);
        println!("{id}: {r}");
        assert_eq!(
            (&r["decision"], &r["running"]),
            (&json!("local"), &json!(n)),
            "{r}"
        );
        r
    };
    let remote_of = |r: &Value| -> Vec<(String, String)> {
        r["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["host"] == "gw1" && w["vm"] != "")
            .map(|w| {
                (
                    w["vm"].as_str().unwrap().to_owned(),
                    w["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let r = scale(&mut sub, "s2", 2);
    let remote = remote_of(&r);
    assert_eq!(remote.len(), 1, "one worker on the cloud: {r}");
    let (vm, state) = remote[0].clone();
    assert_eq!(state, "running");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("remote cloud campus"),
        "{r}"
    );
    let made = creates(&fx);
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].json()["server"]["imageRef"], "img-app");
    assert_eq!(m.lock().unwrap().servers[&vm].status, "ACTIVE");

    let action = format!("POST {COMPUTE}/servers/{vm}/action");
    let actions = |fx: &cloud_support::Fixture| {
        fx.requests()
            .into_iter()
            .filter(|q| q.line() == action)
            .map(|q| q.json())
            .collect::<Vec<_>>()
    };
    let r = scale(&mut sub, "s1", 1);
    assert_eq!(
        remote_of(&r),
        vec![(vm.clone(), "stopped".to_owned())],
        "{r}"
    );
    assert_eq!(actions(&fx), vec![json!({"os-stop": null})]);
    assert_eq!(m.lock().unwrap().servers[&vm].status, "SHUTOFF");

    let r = scale(&mut sub, "s2b", 2);
    assert_eq!(
        remote_of(&r),
        vec![(vm.clone(), "running".to_owned())],
        "{r}"
    );
    assert_eq!(
        actions(&fx),
        vec![json!({"os-stop": null}), json!({"os-start": null})]
    );
    assert_eq!(creates(&fx).len(), 1, "resumed, not created");
}
