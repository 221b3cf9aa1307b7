//! The allocator's Remote decisions carried out for real: two agents and one real mosquitto, an
//! OpenStack fixture (Keystone v3 + Nova, `cloud_support::openstack`) on loopback. gw0 offers no
//! room of its own; gw1 holds the credentials of cloud "campus". A request for a template no gateway
//! can host goes through gw1 to the cloud; a failed create, a full cloud (VM limit) and an
//! unreachable cloud make the requester cancel with the reason and leave no VM behind; a released
//! VM is stopped and resumed by the next request of its template instead of a new one.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod cloud_support;
mod instance_support;

use std::time::Duration;

use betaas_core::allocator::Res;
use betaas_e2e::{Mosquitto, Subscriber};
use cloud_support::openstack::{fixture, nova_error, Model, COMPUTE};
use instance_support::*;
use serde_json::{json, Value};

fn cloud_section(url: &str, limit: u32, creds: &std::path::Path) -> String {
    format!(
        "[[clouds]]\nname = \"campus\"\nprovider = \"openstack\"\nendpoint = \"{url}/v3\"\nvm_limit = {limit}\n\
         deploy_timeout_secs = 10\npoll_interval_ms = 200\ncredentials = \"{}\"\nimages = {{ big = \"img-big\" }}\n",
        creds.display()
    )
}

fn cloud_health(sub: &mut Subscriber, what: &str, until: impl Fn(&Value) -> bool) -> Value {
    let h = health_until(sub, &["gw1"], what, Duration::from_secs(15), |_, h| {
        until(&h["clouds"][0])
    });
    h["gw1"]["clouds"][0].clone()
}

fn release(broker: &Mosquitto, sub: &mut Subscriber, id: &str, vm: &str) -> Value {
    broker.publish(
        "betaas/gw1/vm/request",
        &json!({"id": id, "release": vm, "target": "campus"}).to_string(),
    );
    sub.wait_for(
        &format!("result of {id}"),
        Duration::from_secs(20),
        |t, p| {
            (t == "betaas/gw1/vm/result")
                .then(|| serde_json::from_str::<Value>(p).unwrap())
                .filter(|r| r["id"] == id)
        },
    )
}

#[test]
fn remote_decisions_run_on_the_gateway_holding_the_cloud_and_fall_back_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let limit = fastrand::u32(1..=2);
    println!("vm_limit {limit}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut fx, m) = rt.block_on(fixture(Model::new()));
    let password = m.lock().unwrap().password.clone();

    let (root, keys) = new_instance();
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let gws: Vec<Gw> = [("gw0", Res::new(0, 0, 0)), ("gw1", Res::new(1, 512, 2))]
        .into_iter()
        .map(|(id, cap)| member(&keys, root.path(), id, cap))
        .collect();
    let creds = gws[1].dir.join("campus.toml");
    std::fs::write(
        &creds,
        format!("auth = \"password\"\nusername = \"betaas\"\npassword = \"{password}\"\nproject = \"iot\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut procs = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let mut text = config(gw, broker.port, &gw.dir.join("keys"));
        if i == 1 {
            text += &cloud_section(&fx.url(), limit, &creds);
        }
        std::fs::write(gw.dir.join("agent.toml"), text).unwrap();
        procs.push(spawn(std::process::Command::new(AGENT), gw));
    }
    // gw0 learns gw1's cloud from gw1's resource report once gw1 has checked it.
    health_until(
        &mut sub,
        &["gw0"],
        "gw0 to see campus reachable",
        Duration::from_secs(20),
        |_, h| {
            let c = &h["instance"]["clouds"];
            c[0]["name"] == "campus" && c[0]["holder"] == "gw1" && c[0]["reachable"] == true
        },
    );

    // 1. The create fails (500): the requester leaves the cloud out and cancels; nothing leaked.
    m.lock().unwrap().inject.push_back((
        format!("POST {COMPUTE}/servers"),
        nova_error(500, "computeFault", "no valid host"),
    ));
    let r = request(&broker, &mut sub, "gw0", "r0", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    assert_eq!(r["attempts"], 2, "remote tried once, then cancelled: {r}");
    let creates = |fx: &cloud_support::Fixture| {
        fx.requests()
            .into_iter()
            .filter(|q| q.line() == format!("POST {COMPUTE}/servers"))
            .collect::<Vec<_>>()
    };
    assert_eq!(creates(&fx).len(), 1);
    assert!(m.lock().unwrap().servers.is_empty());
    cloud_health(&mut sub, "no VM recorded after the failure", |c| {
        c["vms"] == json!([])
    });

    // 2. Up to the limit: each request lands on the cloud through gw1, with the template's image
    // and the smallest flavor that fits 2 vCPU / 1024 MB / 4 GB.
    let mut vms = Vec::new();
    for n in 1..=limit {
        let r = request(&broker, &mut sub, "gw0", &format!("r{n}"), "big");
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
    let r = request(&broker, &mut sub, "gw0", "full", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    assert_eq!(creates(&fx).len(), before);

    // 4. Released: stopped (os-stop), not deleted; the next request resumes it (os-start).
    let vm = vms[0].clone();
    let rel = release(&broker, &mut sub, "rel", &vm);
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
    let r = request(&broker, &mut sub, "gw0", "again", "big");
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
    let rel = release(&broker, &mut sub, "rel2", &vm);
    assert_eq!(rel["decision"], "released", "{rel}");
    fx.stop();
    let r = request(&broker, &mut sub, "gw0", "down", "big");
    assert_eq!(r["decision"], "cancel", "{r}");
    cloud_health(&mut sub, "campus unreachable", |c| c["reachable"] == false);
    rt.block_on(fx.restart());
    cloud_health(&mut sub, "campus reachable again", |c| {
        c["reachable"] == true
    });

    // Secrets never reach a log line or a message on the bus.
    let tokens = m.lock().unwrap().tokens.clone();
    let mut seen = String::new();
    for gw in &gws {
        seen += &std::fs::read_to_string(gw.dir.join("agent.log")).unwrap();
    }
    seen += &format!("{r} {c}");
    assert!(!seen.contains(&password), "password leaked");
    for t in tokens {
        assert!(!seen.contains(&t), "token leaked");
    }
    drop(procs);
}
