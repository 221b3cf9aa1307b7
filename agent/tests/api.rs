//! The local REST API against a real agent: a real mosquitto, a sysfs sensor the test changes, an
//! MQTT thing the test publishes for, an actuator (its I2C bus absent here: commands are refused
//! by the device, the same way over the API and over MQTT), an instance of one gateway with no
//! room of its own and the OpenStack fixture (`cloud_support::openstack`) as the remote cloud the
//! test configures through `PUT /api/v1/clouds/{name}`.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod api_support;
mod cloud_support;
mod instance_support;
mod sf_support;

use std::sync::Arc;
use std::time::Duration;

use api_support::{mode, ApiGw, Client, Events};
use betaas_core::allocator::Res;
use betaas_e2e::Mosquitto;
use cloud_support::openstack::{fixture, Model, COMPUTE};
use serde_json::{json, Value};

const ENDPOINTS: &[&str] = &[
    "/health",
    "/openapi.json",
    "/things",
    "/things/{id}/readings",
    "/things/{id}/set",
    "/instance",
    "/vms",
    "/vms/{vm}",
    "/clouds",
    "/clouds/{name}",
    "/events",
    "/logs",
    "/update",
];

fn field(a: &api_support::Answer) -> &str {
    a.body["field"].as_str().unwrap_or("")
}

#[test]
fn every_endpoint_against_a_real_agent() {
    betaas_e2e::seeded();
    let _serial = instance_support::serial();
    let rt = Arc::new(tokio::runtime::Runtime::new().unwrap());
    let (fx, model) = rt.block_on(fixture(Model::new()));
    let password = model.lock().unwrap().password.clone();
    let broker = Mosquitto::start();
    let gw = ApiGw::new("gwapi");
    let config = gw.write_config(broker.port);
    let mut agent = sf_support::Agent::start(&config);
    let mut sub = broker.subscribe("betaas/gwapi/#");

    // The token was made at first boot (0600) and printed once on the console.
    betaas_e2e::wait_until("the token file", Duration::from_secs(20), || {
        gw.data().join("api/token").exists().then_some(())
    });
    let token = gw.token();
    assert_eq!(mode(&gw.data().join("api/token")), 0o600);
    let api = Client::new(rt.clone(), gw.port, &token);
    api.wait_up(Duration::from_secs(20));
    assert_eq!(mode(&gw.data().join("api/key.pem")), 0o600);
    assert!(agent.log().contains("API token (shown once"));

    // 401 without a token and with a wrong one; the UI page needs none.
    for t in [None, Some("wrong-token-0123456789")] {
        let a = api.send(reqwest::Method::GET, "/api/v1/health", t, None);
        assert_eq!((a.status, field(&a)), (401, "authorization"), "{a:?}");
    }
    let (encoding, html) = api.ui();
    assert_eq!(encoding, "gzip");
    assert!(html.starts_with("<!doctype html>"), "{html}");
    let nf = api.get("/api/v1/nothing");
    assert_eq!(nf.status, 404);

    // health: the health topic's object, with the certificate's fingerprint the client saw.
    let h = api.get("/api/v1/health");
    assert_eq!(h.status, 200);
    let fp = api.peer_fingerprint();
    assert_eq!(h.body["api"]["fingerprint"], fp.as_str(), "{}", h.text);
    assert!(
        agent.log().contains(&fp),
        "the fingerprint is on the console"
    );
    assert!(h.body["journal"]["depth"].is_u64() && h.body["things"]["temp"].is_object());

    // openapi.json documents every endpoint.
    let doc = api.get("/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    for p in ENDPOINTS {
        assert!(doc.body["paths"][p].is_object(), "openapi.json lacks {p}");
    }

    // things: the sensor, the MQTT thing, the actuator with its control.
    let things = api.get("/api/v1/things");
    let ids: Vec<&str> = things
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["temp", "room", "limit"], "{}", things.text);
    assert_eq!(things.body[2]["kind"], "actuator");
    assert_eq!(things.body[2]["control"]["type"], "number");

    // events: a value set now by the test arrives on the stream, for the sensor and the MQTT thing.
    let mut events = Events::open(&api);
    let v = f64::from(fastrand::i32(-300..900)) / 10.0;
    gw.set_value(v);
    let (_, r) = events.until("the sensor's new value", Duration::from_secs(10), |n, d| {
        n == "reading" && d["thing"] == "temp" && d["value"] == v
    });
    let seq = r["seq"].as_u64().unwrap();
    let ts = r["ts"].as_u64().unwrap();
    let room = f64::from(fastrand::i32(100..300)) / 10.0;
    broker.publish(&gw.device_topic, &json!({"t": room}).to_string());
    events.until("the MQTT thing's value", Duration::from_secs(10), |n, d| {
        n == "reading" && d["thing"] == "room" && d["value"] == room
    });
    // ...and is published over MQTT with the same seq.
    sub.wait_for("the reading on MQTT", Duration::from_secs(10), |t, p| {
        let v: Value = serde_json::from_str(p).ok()?;
        (t == "betaas/gwapi/things/temp/state" && v["seq"] == seq).then_some(())
    });

    // readings?since=&limit=
    let all = api.get("/api/v1/things/temp/readings");
    let list = all.body["readings"].as_array().unwrap();
    assert!(
        list.len() <= 50 && list.iter().any(|r| r["seq"] == seq),
        "{}",
        all.text
    );
    let seqs: Vec<u64> = list.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every reading, in order: {seqs:?}"
    );
    let one = api.get("/api/v1/things/temp/readings?limit=1");
    assert_eq!(one.body["readings"].as_array().unwrap().len(), 1);
    let since = api.get(&format!("/api/v1/things/temp/readings?since={ts}"));
    assert!(since.body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["ts"].as_u64().unwrap() > ts));
    let room_r = api.get("/api/v1/things/room/readings");
    assert_eq!(room_r.body["readings"][0]["value"], room, "{}", room_r.text);
    for (q, f) in [
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("since=x", "since"),
        ("sinse=1", "sinse"),
    ] {
        let a = api.get(&format!("/api/v1/things/temp/readings?{q}"));
        assert_eq!((a.status, field(&a)), (400, f), "{q}: {a:?}");
    }
    let a = api.get("/api/v1/things/nope/readings");
    assert_eq!((a.status, field(&a)), (404, "id"));

    // set: validated and answered like an MQTT command (the actuator's bus is absent here).
    let a = api.post(
        "/api/v1/things/limit/set",
        &json!({"value": 70.5, "id": "api-c1"}),
    );
    assert_eq!((a.status, field(&a)), (400, "value"), "{a:?}");
    assert_eq!(a.body["outcome"]["ok"], false);
    assert_eq!(a.body["outcome"]["id"], "api-c1");
    let api_error = a.body["outcome"]["error"].as_str().unwrap().to_owned();
    assert!(api_error.contains("device unavailable"), "{api_error}");
    events.until("the command's result", Duration::from_secs(5), |n, d| {
        n == "result" && d["outcome"]["id"] == "api-c1"
    });
    broker.publish(
        "betaas/gwapi/things/limit/set",
        r#"{"id":"mqtt-c1","value":70.5}"#,
    );
    let mqtt_error = sub.wait_for(
        "the MQTT command's result",
        Duration::from_secs(10),
        |t, p| {
            let v: Value = serde_json::from_str(p).ok()?;
            (t == "betaas/gwapi/things/limit/result" && v["id"] == "mqtt-c1")
                .then(|| v["error"].as_str().unwrap().to_owned())
        },
    );
    assert_eq!(
        api_error, mqtt_error,
        "the same validation and result as over MQTT"
    );
    let bad: &[(&str, Vec<u8>, u16, &str)] = &[
        ("limit", b"{}".to_vec(), 400, "value"),
        ("limit", br#"{"value": [1]}"#.to_vec(), 400, "value"),
        ("limit", br#"{"value": 1, "id": "a/b"}"#.to_vec(), 400, "id"),
        ("limit", b"not json".to_vec(), 400, "body"),
        ("limit", vec![b' '; 70_000], 413, "body"),
        ("temp", br#"{"value": 1}"#.to_vec(), 400, "id"),
        ("nope", br#"{"value": 1}"#.to_vec(), 404, "id"),
    ];
    for (id, body, status, f) in bad {
        let a = api.send(
            reqwest::Method::POST,
            &format!("/api/v1/things/{id}/set"),
            Some(&token),
            Some(body.clone()),
        );
        assert_eq!((a.status, field(&a)), (*status, *f), "{id}: {a:?}");
    }

    // instance
    let inst = api.get("/api/v1/instance");
    assert_eq!(inst.status, 200);
    assert!(inst.body["members"].is_object(), "{}", inst.text);

    // clouds: none yet; a bad PUT names its field; a good one is written 0600 and used at once.
    assert_eq!(api.get("/api/v1/clouds").body, json!([]));
    let good = json!({
        "provider": "openstack",
        "endpoint": format!("{}/v3", fx.url()),
        "vm_limit": 2,
        "idle_destroy_secs": 600,
        "deploy_timeout_secs": 10,
        "poll_interval_ms": 200,
        "images": {"big": "img-big"},
        "credentials": {"auth": "password", "username": "betaas", "password": password, "project": "iot"},
    });
    for (k, v, f) in [
        ("provider", json!("aws"), "provider"),
        ("vm_limit", json!(-2), "vm_limit"),
        ("endpoint", json!("ftp://x"), "endpoint"),
        (
            "credentials",
            json!({"auth": "password", "password": password}),
            "credentials",
        ),
    ] {
        let mut b = good.clone();
        b[k] = v;
        let a = api.put("/api/v1/clouds/campus", &b);
        assert_eq!((a.status, field(&a)), (400, f), "{k}: {a:?}");
    }
    let a = api.put("/api/v1/clouds/bad%20name", &good);
    assert_eq!((a.status, field(&a)), (400, "name"));
    let a = api.put("/api/v1/clouds/campus", &good);
    assert_eq!(a.status, 200, "{a:?}");
    let stored = gw.data().join("api/clouds");
    assert_eq!(mode(&stored.join("campus.toml")), 0o600);
    assert_eq!(mode(&stored.join("campus.credentials.toml")), 0o600);
    betaas_e2e::wait_until("the cloud reachable", Duration::from_secs(15), || {
        let c = api.get("/api/v1/clouds");
        (c.body[0]["name"] == "campus" && c.body[0]["reachable"] == true).then_some(())
    });

    // vms: a request goes to that cloud (the fixture sees the create), then a release.
    let a = api.post("/api/v1/vms", &json!({"template": "nope"}));
    assert_eq!((a.status, field(&a)), (400, "template"));
    let r = api.post("/api/v1/vms", &json!({"template": "big"}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (&r.body["decision"], &r.body["target"], &r.body["host"]),
        (&json!("remote"), &json!("campus"), &json!("gwapi")),
        "{}",
        r.text
    );
    let vm = r.body["vm"].as_str().unwrap().to_owned();
    let creates: Vec<_> = fx
        .requests()
        .into_iter()
        .filter(|q| q.line() == format!("POST {COMPUTE}/servers"))
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].json()["server"]["imageRef"], "img-big");
    assert_eq!(model.lock().unwrap().servers[&vm].status, "ACTIVE");
    events.until("the VM result", Duration::from_secs(5), |n, d| {
        n == "vm" && d["vm"] == vm.as_str()
    });
    // Member changes on the stream: a second gateway joins, is seen in GET instance, goes down.
    let keys = gw.root.path().join("instance");
    let gw2 = instance_support::member(&keys, gw.root.path(), "gwapi2", Res::new(0, 0, 0));
    let second = instance_support::start_edited(&gw2, broker.port, |t| t);
    events.until("gwapi2 joined", Duration::from_secs(15), |n, d| {
        n == "member" && d["gateway"] == "gwapi2" && d["change"] == "joined"
    });
    let inst = api.get("/api/v1/instance");
    assert_eq!(
        inst.body["members"]["gwapi2"]["state"], "up",
        "{}",
        inst.text
    );
    drop(second); // killed: silent past timeout_ms (3 s)
    events.until("gwapi2 down", Duration::from_secs(15), |n, d| {
        n == "member" && d["gateway"] == "gwapi2" && d["change"] == "down"
    });
    let rel = api.delete(&format!("/api/v1/vms/{vm}?target=campus"));
    assert_eq!(rel.body["decision"], "released", "{}", rel.text);
    let a = api.delete("/api/v1/vms/x?target=a/b");
    assert_eq!((a.status, field(&a)), (400, "target"));
    // A request naming an application: the form is checked here, the WAR fetched by the instance
    // before anything is placed (here from a port nobody listens on: cancelled, nothing created).
    let a = api.post(
        "/api/v1/vms",
        &json!({"template": "big", "war": "ftp://x/a.war"}),
    );
    assert_eq!((a.status, field(&a)), (400, "war"));
    let a = api.post("/api/v1/vms", &json!({"template": "big", "replicas": 2}));
    assert_eq!((a.status, field(&a)), (400, "replicas"));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let creates_before = fx.requests().len();
    let r = api.post(
        "/api/v1/vms",
        &json!({"template": "big", "war": format!("http://127.0.0.1:{closed}/app.war")}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["decision"], "cancel", "{}", r.text);
    assert!(
        r.body["reason"].as_str().unwrap().contains("unreachable"),
        "{}",
        r.text
    );
    assert!(
        !fx.requests()[creates_before..]
            .iter()
            .any(|q| q.line() == format!("POST {COMPUTE}/servers")),
        "nothing created for a WAR that could not be fetched"
    );

    // logs
    let logs = api.get("/api/v1/logs?lines=300");
    let lines = logs.body["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 300);
    assert!(
        logs.text.contains("remote cloud configured"),
        "{}",
        logs.text
    );
    assert!(
        !logs.text.contains(&token),
        "the token is never in the log ring"
    );
    let a = api.get("/api/v1/logs?lines=0");
    assert_eq!((a.status, field(&a)), (400, "lines"));

    // update: a bad body names its field; a bundle that cannot be fetched is refused (422) with
    // wget's reason and nothing is left in the data directory (no RAUC on this host: the download
    // fails first, as it would on the gateway).
    for (body, f) in [
        (json!({}), "url"),
        (json!({"url": "ftp://x/b.raucb"}), "url"),
        (json!({"url": "http://x/a b"}), "url"),
        (json!({"url": 5}), "url"),
        (
            json!({"url": "http://127.0.0.1:1/b.raucb", "now": true}),
            "now",
        ),
    ] {
        let a = api.post("/api/v1/update", &body);
        assert_eq!((a.status, field(&a)), (400, f), "{body}: {a:?}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = api.post(
        "/api/v1/update",
        &json!({"url": format!("http://127.0.0.1:{port}/v2.raucb")}),
    );
    assert_eq!(a.status, 422, "{a:?}");
    assert!(a.text.contains("download: wget"), "{}", a.text);
    assert!(!gw.data().join("update.raucb").exists());
    assert_eq!(api.get("/api/v1/update").status, 405);

    // Garbage from a client changes nothing: the agent runs and every reading is kept.
    for i in 0..40 {
        let junk: Vec<u8> = (0..fastrand::usize(0..2000))
            .map(|_| fastrand::u8(..))
            .collect();
        let path = [
            "/api/v1/things/limit/set",
            "/api/v1/vms",
            "/api/v1/clouds/x",
            "/api/v1/things/temp/set",
        ][i % 4];
        let m = if path.contains("clouds") {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let a = api.send(m, path, Some(&token), Some(junk));
        assert!(a.status == 400 || a.status == 413, "{path}: {a:?}");
    }
    agent.assert_running();
    let after = api.get("/api/v1/things/temp/readings");
    let seqs: Vec<u64> = after.body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Wrong tokens from one address: 429 after the burst; another address is unaffected.
    let other = Client::from(
        rt.clone(),
        gw.port,
        &token,
        Some("127.0.0.2".parse().unwrap()),
    );
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            other
                .send(
                    reqwest::Method::GET,
                    "/api/v1/health",
                    Some("wrong-token-xxxxxxxx"),
                    None,
                )
                .status,
        );
    }
    assert_eq!(&statuses[..6], &[401; 6], "{statuses:?}");
    assert_eq!(statuses[7], 429, "{statuses:?}");
    assert_eq!(
        other.get("/api/v1/health").status,
        429,
        "even the right token waits"
    );
    assert_eq!(
        api.get("/api/v1/health").status,
        200,
        "another address is not limited"
    );

    // No secret in any answer or in the log.
    let seen = api.seen.lock().unwrap().clone() + &events.all;
    assert!(!seen.contains(&password), "a secret in an answer");
    assert!(!agent.log().contains(&password), "a secret in the log");
    let fp_before = fp;
    drop(events);

    // Restart: the cloud, the token and the certificate are kept.
    agent.stop();
    let mut agent = sf_support::Agent::start(&config);
    api.wait_up(Duration::from_secs(20));
    assert_eq!(api.peer_fingerprint(), fp_before);
    assert!(
        !agent.log().contains("shown once"),
        "the token is printed at first boot only"
    );
    betaas_e2e::wait_until(
        "the stored cloud after a restart",
        Duration::from_secs(15),
        || {
            let c = api.get("/api/v1/clouds");
            (c.body[0]["name"] == "campus" && c.body[0]["reachable"] == true).then_some(())
        },
    );
    assert!(!agent.log().contains(&password));
    agent.stop();
}
