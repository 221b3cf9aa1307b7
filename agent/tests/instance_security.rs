//! The instance bus and the VM request topic against an attacker on the broker, with real agents
//! and a real mosquitto: a signed message replayed after the receiver restarted (a clean stop, and
//! a power cut right after a client request was carried out) is refused; a deploy answer from a
//! gateway that was not asked is ignored; unsigned, foreign and misaddressed VM requests are
//! cancelled with the reason and reserve nothing; `betaas-agent vm request` signs, sends, waits and
//! exits with the documented codes.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod instance_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use betaas_core::allocator::Res;
use betaas_core::instance::membership::envelope;
use betaas_core::instance::msg::{self, Body};
use betaas_e2e::{Mosquitto, Subscriber};
use instance_support::*;
use serde_json::{json, Value};

fn rejected(h: &Value, kind: &str) -> u64 {
    h["instance"]["rejected"][kind].as_u64().unwrap_or(0)
}

/// Nothing reserved on the gateway, as its health says.
fn nothing_reserved(h: &Value) -> bool {
    h["instance"]["vms"] == 0
        && h["instance"]["used"] == json!({"cpus": 0, "mem_mb": 0, "disk_gb": 0})
}

/// One gateway `gw1` of instance `lab` with room for every template, running, and a client.
struct One {
    root: tempfile::TempDir,
    keys: std::path::PathBuf,
    broker: Mosquitto,
    sub: Subscriber,
    gw: Gw,
    ops: std::path::PathBuf,
    agent: Option<betaas_e2e::KillOnDrop>,
}

fn one_gateway() -> One {
    let (root, keys) = new_instance();
    let ops = client(&keys, root.path());
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let gw = member(&keys, root.path(), "gw1", Res::new(8, 8192, 32));
    let agent = Some(start(&gw, broker.port, &gw.dir.join("keys")));
    wait_running(&mut sub);
    One {
        root,
        keys,
        broker,
        sub,
        gw,
        ops,
        agent,
    }
}

/// gw1's instance manager is running (its health names the instance).
fn wait_running(sub: &mut Subscriber) -> Value {
    let h = health_until(
        sub,
        &["gw1"],
        "gw1 running",
        Duration::from_secs(20),
        |_, h| h["instance"]["name"] == "lab",
    );
    h["gw1"].clone()
}

/// Forgets what the subscriber has not read yet (a stopped agent's last health messages).
fn drain(sub: &mut Subscriber) {
    while sub.next(Duration::from_millis(300)).is_some() {}
}

fn random_template() -> &'static str {
    if fastrand::bool() {
        "app"
    } else {
        "big"
    }
}

#[test]
fn a_bus_message_replayed_after_the_receiver_restarted_is_refused() {
    betaas_e2e::seeded();
    let _serial = serial();
    let (root, keys) = new_instance();
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    let gws: Vec<Gw> = ["gw1", "gw2"]
        .into_iter()
        .map(|id| member(&keys, root.path(), id, Res::new(2, 1024, 8)))
        .collect();
    // A longer timeout than the other tests: gw2 is frozen below for a few seconds and must not
    // be marked down for it (its trust would drop and hide what this test looks at).
    let slow = |t: String| t.replace("\ntimeout_ms = 3000", "\ntimeout_ms = 9000");
    let mut gw1 = start_edited(&gws[0], broker.port, slow);
    let gw2 = start_edited(&gws[1], broker.port, slow);
    let up = |sub: &mut Subscriber, what: &str| {
        health_until(sub, &["gw1"], what, Duration::from_secs(20), |_, h| {
            member_states(h).get("gw2").is_some_and(|s| s == "up")
        })
    };
    up(&mut sub, "gw1 to see gw2 up");

    // Watch gw2's messages, then freeze gw2 once it has sent at least two bus messages since its
    // last announce; take one of them but the last (the last one again is the same message, not
    // a replay: ignored without a count). gw1 accepted it and then a newer one, and it is newer
    // than gw2's retained announce, which is all a restarted gw1 without floors would know.
    let mut raw = RawSub::start(&broker, "betaas/lab/$instance/gw2/+");
    let mut seen: Vec<(String, msg::Envelope, Vec<u8>)> = Vec::new();
    let mut freezes = 0;
    let (env, captured) = loop {
        std::thread::sleep(Duration::from_millis(fastrand::u64(300..1500)));
        signal(&gw2, "STOP");
        freezes += 1;
        for (topic, bytes) in raw.drain(Duration::from_millis(700)) {
            seen.push((topic, envelope_of(&bytes), bytes));
        }
        let announced = seen
            .iter()
            .filter(|(t, _, _)| t.ends_with("/announce"))
            .map(|(_, e, _)| e.counter)
            .max()
            .unwrap_or(0);
        let after: Vec<_> = seen
            .iter()
            .filter(|(t, e, _)| t.ends_with("/msg") && e.counter > announced)
            .collect();
        if after.len() >= 2 {
            let (_, e, b) = after[fastrand::usize(..after.len() - 1)];
            break (e.clone(), b.clone());
        }
        assert!(freezes < 20, "gw2 never sent two bus messages in a row");
        signal(&gw2, "CONT");
    };
    println!(
        "captured gw2's {} #{} ({} bytes; {} messages watched, gw2 frozen {freezes} time(s))",
        env.body.kind(),
        env.counter,
        captured.len(),
        seen.len()
    );

    // gw1 stops cleanly (it saves its floors) and starts again.
    let t = Instant::now();
    stop_cleanly(gw1);
    println!("gw1 stopped on SIGTERM in {} ms", t.elapsed().as_millis());
    drain(&mut sub);
    assert!(gws[0].dir.join("data/instance/floors").is_file());
    let restarted = Instant::now();
    gw1 = start_edited(&gws[0], broker.port, slow);
    // Back on the bus: it knows gw2 again from gw2's retained announce.
    up(
        &mut sub,
        "restarted gw1 to learn gw2 from its retained announce",
    );
    let mut announce = RawSub::start(&broker, "betaas/lab/$instance/gw2/announce");
    let (_, retained) = announce
        .next(Duration::from_secs(5))
        .expect("gw2's retained announce");
    let retained = envelope_of(&retained).counter;
    // Without persisted floors, gw1 would now only know the retained announce's counter, and the
    // captured message (newer) would pass.
    assert!(
        retained < env.counter,
        "the captured message must be newer than the retained announce ({retained})"
    );

    broker.publish_bytes("betaas/lab/$instance/gw2/msg", &captured);
    let h = health_until(
        &mut sub,
        &["gw1"],
        "the replay refused",
        Duration::from_secs(10),
        |_, h| rejected(h, "replay") >= 1,
    );
    println!(
        "replay refused {:.1} s after gw1's restart",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(rejected(&h["gw1"], "replay"), 1, "{}", h["gw1"]);

    // gw2 goes on: its next messages (above the floor) are taken, it stays up and trusted, and
    // nothing else was refused.
    signal(&gw2, "CONT");
    let after = Instant::now();
    let h = health_until(
        &mut sub,
        &["gw1"],
        "gw2 up and heard from after it resumed",
        Duration::from_secs(15),
        |_, h| {
            after.elapsed() > Duration::from_secs(3)
                && member_states(h).get("gw2").is_some_and(|s| s == "up")
        },
    );
    // Trust: no penalty (direct trust still the initial 0.8), only the link factor for the
    // heartbeats held up while gw2 was frozen.
    let g1 = &h["gw1"];
    let m = &g1["instance"]["members"]["gw2"];
    let (trust, link) = (m["trust"].as_f64().unwrap(), m["link"].as_f64().unwrap());
    println!("gw2 as gw1 sees it after the replay: trust {trust:.3}, link {link:.3}");
    assert!(trust >= 0.8 * (0.5 + 0.5 * link) - 1e-9, "{g1}");
    assert_eq!(rejected(g1, "replay"), 1, "{g1}");
    drop((gw1, gw2));
}

#[test]
fn a_client_request_replayed_after_a_power_cut_is_refused() {
    betaas_e2e::seeded();
    let _serial = serial();
    let One {
        root: _root,
        broker,
        mut sub,
        gw,
        ops,
        agent,
        ..
    } = one_gateway();
    let id = format!("r-{}", fastrand::u64(..));
    let template = random_template();
    let bytes = send_signed(
        &broker,
        &ops,
        "gw1",
        json!({"id": id, "template": template}),
    );
    let r = result_of(&mut sub, "gw1", &id);
    assert_eq!(
        (&r["decision"], &r["target"]),
        (&json!("local"), &json!("gw1")),
        "{r}"
    );
    health_until(
        &mut sub,
        &["gw1"],
        "the reservation",
        Duration::from_secs(5),
        |_, h| h["instance"]["vms"] == 1,
    );

    // Power cut (SIGKILL): the client's floor was written before the request was acted on.
    drop(agent);
    let t = Instant::now();
    drain(&mut sub);
    let _agent = start(&gw, broker.port, &gw.dir.join("keys"));
    let h = wait_running(&mut sub);
    assert!(nothing_reserved(&h), "{h}");
    println!(
        "gw1 back after kill -9 in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The same bytes again: refused as a replay, nothing reserved.
    broker.publish_bytes("betaas/gw1/vm/request", &bytes);
    let r = result_of(&mut sub, "gw1", &id);
    assert_eq!(r["decision"], "cancel", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("replay"), "{r}");
    let h = health_until(
        &mut sub,
        &["gw1"],
        "the replay counted",
        Duration::from_secs(5),
        |_, h| rejected(h, "replay") == 1,
    );
    assert!(nothing_reserved(&h["gw1"]), "{}", h["gw1"]);

    // A fresh request from the same client is carried out: the gateway was able to.
    let fresh = format!("r-{}", fastrand::u64(..));
    let r = request(&broker, &mut sub, &ops, "gw1", &fresh, template);
    assert_eq!(r["decision"], "local", "{r}");
}

#[test]
fn a_deploy_answer_from_a_gateway_that_was_not_asked_is_ignored() {
    betaas_e2e::seeded();
    let _serial = serial();
    let (root, keys) = new_instance();
    let ops = client(&keys, root.path());
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe("betaas/#");
    // gw2's VM manager never answers: gw2 reserves and then stays silent, so gw1 waits for its
    // answer for the whole deploy timeout.
    let hung = root.path().join("hung-vmd.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    // gw1 and gw3 offer nothing: a request on gw1 can only go to gw2.
    let mut procs = Vec::new();
    let mut gws = Vec::new();
    for (id, cap) in [
        ("gw1", Res::new(0, 0, 0)),
        ("gw2", Res::new(4, 4096, 64)),
        ("gw3", Res::new(0, 0, 0)),
    ] {
        let gw = member(&keys, root.path(), id, cap);
        let vmd =
            (id == "gw2").then(|| format!("[instance]\nvmd_socket = \"{}\"\n", hung.display()));
        procs.push(start_edited(&gw, broker.port, |t| match vmd {
            Some(v) => t.replace("[instance]\n", &v),
            None => t,
        }));
        gws.push(gw);
    }
    health_until(
        &mut sub,
        &["gw1"],
        "gw1 to see gw2 and gw3 up and reported",
        Duration::from_secs(20),
        |_, h| {
            let s = member_states(h);
            ["gw2", "gw3"]
                .iter()
                .all(|g| s.get(*g).is_some_and(|v| v == "up"))
                && !h["instance"]["members"]["gw2"]["virt"].is_null()
        },
    );
    // The attacker holds gw3's key (a member that went bad, or its stolen key files).
    let gw3_key: [u8; 32] = std::fs::read(gws[2].dir.join("keys/gateway.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let gw3_key = ed25519_dalek::SigningKey::from_bytes(&gw3_key);

    // gw3's retained announce and every bus message: gw3's counter so far.
    let mut raw = RawSub::start(&broker, "betaas/lab/$instance/+/+");
    let id = format!("r-{}", fastrand::u64(..));
    send_signed(&broker, &ops, "gw1", json!({"id": id, "template": "app"}));
    let mut gw3_counter = 0;
    let end = Instant::now() + Duration::from_secs(10);
    let (request, seen_at) = loop {
        let (topic, bytes) = raw
            .next(end.saturating_duration_since(Instant::now()))
            .expect("gw1's deploy request to gw2");
        let env = envelope_of(&bytes);
        if env.from == "gw3" {
            gw3_counter = gw3_counter.max(env.counter);
        }
        if let (true, Body::DeployRequest { request, .. }) =
            (topic.ends_with("/gw1/msg"), &env.body)
        {
            assert_eq!(env.to.as_deref(), Some("gw2"), "{env:?}");
            break (*request, Instant::now());
        }
    };
    // Not a counter: a stranger cannot answer a request it has not seen (2^-32 to fail by chance).
    assert!(request > u64::from(u32::MAX), "request id {request}");
    let vm = format!("evil-{}", fastrand::u32(..));
    let forged = msg::encode(
        &gw3_key,
        envelope(
            "gw3",
            gw3_counter + 1_000_000,
            Some("gw1"),
            Body::DeployAnswer {
                request,
                accepted: true,
                reason: String::new(),
                vm: vm.clone(),
            },
        ),
    );
    broker.publish_bytes("betaas/lab/$instance/gw3/msg", &forged);
    println!(
        "forged gw3's answer to request {request:#x} {} ms after gw1 asked gw2",
        seen_at.elapsed().as_millis()
    );

    let r = result_of(&mut sub, "gw1", &id);
    println!("result {r}");
    assert_ne!(r["vm"], json!(vm), "the forged answer was taken: {r}");
    assert_eq!(
        r["decision"], "cancel",
        "gw2 never answered, nobody else has room: {r}"
    );
    assert!(
        r["reason"].as_str().unwrap().contains("gw2: no answer"),
        "{r}"
    );
    health_until(
        &mut sub,
        &["gw1"],
        "the forged answer counted",
        Duration::from_secs(5),
        |_, h| rejected(h, "answer-not-asked") >= 1,
    );
    drop(procs);
}

#[test]
fn unsigned_foreign_and_misaddressed_vm_requests_are_cancelled_and_reserve_nothing() {
    betaas_e2e::seeded();
    let _serial = serial();
    let One {
        root,
        broker,
        mut sub,
        ops,
        agent: _agent,
        ..
    } = one_gateway();
    // A client of another instance, admitted by that instance's key.
    let (other_root, other_keys) = new_instance();
    let foreign = client(&other_keys, other_root.path());
    let template = random_template();
    let n = fastrand::u64(..);
    let cases: Vec<(&str, String, &str)> = vec![
        ("unsigned", format!("u-{n}"), "unsigned"),
        ("foreign client", format!("f-{n}"), "refused"),
        ("signed for gw2", format!("m-{n}"), "refused"),
        (
            "signed for instance other",
            format!("o-{n}"),
            "signed for instance",
        ),
    ];
    for (what, id, expect) in &cases {
        let body = json!({"id": id, "template": template});
        match *what {
            "unsigned" => broker.publish("betaas/gw1/vm/request", &body.to_string()),
            "foreign client" => {
                send_signed(&broker, &foreign, "gw1", body);
            }
            "signed for gw2" => {
                let (_, bytes) =
                    betaas_agent::commands::vm::sign(&ops, "lab", "gw2", body).unwrap();
                broker.publish_bytes("betaas/gw1/vm/request", &bytes);
            }
            _ => {
                let (_, bytes) =
                    betaas_agent::commands::vm::sign(&ops, "other", "gw1", body).unwrap();
                broker.publish_bytes("betaas/gw1/vm/request", &bytes);
            }
        }
        let r = result_of(&mut sub, "gw1", id);
        println!("{what}: {}", r["reason"]);
        assert_eq!(r["decision"], "cancel", "{what}: {r}");
        assert!(
            r["reason"].as_str().unwrap().contains(expect),
            "{what}: {r}"
        );
    }
    let h = health_until(
        &mut sub,
        &["gw1"],
        "the refusals counted",
        Duration::from_secs(5),
        |_, h| rejected(h, "bad-credential") >= 1 && rejected(h, "not-for-me") >= 1,
    );
    assert!(nothing_reserved(&h["gw1"]), "{}", h["gw1"]);

    // The same template from our own client is carried out.
    let r = request(&broker, &mut sub, &ops, "gw1", &format!("ok-{n}"), template);
    assert_eq!(r["decision"], "local", "{r}");
    health_until(
        &mut sub,
        &["gw1"],
        "one reservation",
        Duration::from_secs(5),
        |_, h| h["instance"]["vms"] == 1,
    );
    drop(root);
}

/// Runs `betaas-agent vm request` to completion: exit code, stdout lines, stderr, duration.
fn vm_request(
    broker: &Mosquitto,
    keys: &Path,
    gateway: &str,
    template: &str,
    timeout: u64,
) -> (i32, Vec<String>, String, Duration) {
    let t = Instant::now();
    let out = Command::new(AGENT)
        .args([
            "vm",
            "request",
            "--mqtt",
            &format!("127.0.0.1:{}", broker.port),
        ])
        .args(["--instance", "lab", "--keys"])
        .arg(keys)
        .args(["--gateway", gateway, "--template", template])
        .args(["--timeout", &timeout.to_string()])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

fn one_json(lines: &[String]) -> Value {
    assert_eq!(lines.len(), 1, "one JSON line: {lines:?}");
    serde_json::from_str(&lines[0]).unwrap()
}

#[test]
fn the_vm_request_cli_signs_sends_waits_and_exits_with_the_outcome() {
    betaas_e2e::seeded();
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let One {
        root,
        keys: _keys,
        broker,
        mut sub,
        ops,
        agent: _agent,
        ..
    } = one_gateway();
    let template = random_template();

    // Carried out: exit 0, the result object as published.
    let (code, out, err, took) = vm_request(&broker, &ops, "gw1", template, 20);
    assert_eq!(code, 0, "{out:?} {err}");
    let r = one_json(&out);
    println!("vm request {template}: {} ms, {r}", took.as_millis());
    assert_eq!(
        (&r["decision"], &r["target"]),
        (&json!("local"), &json!("gw1")),
        "{r}"
    );
    assert!(r["id"].as_str().unwrap().starts_with("ops-"), "{r}");

    // An unknown template: cancel, exit 1.
    let unknown = format!("nosuch{}", fastrand::u32(..));
    let (code, out, err, _) = vm_request(&broker, &ops, "gw1", &unknown, 20);
    assert_eq!(code, 1, "{out:?} {err}");
    let r = one_json(&out);
    assert_eq!(r["decision"], "cancel", "{r}");
    assert!(r["reason"].as_str().unwrap().contains(&unknown), "{r}");

    // A client key readable by others: a key error, exit 2, nothing sent.
    let loose = root.path().join("ops-loose");
    std::fs::create_dir_all(&loose).unwrap();
    for f in ["client.key", "credential", "instance.pub"] {
        std::fs::copy(ops.join(f), loose.join(f)).unwrap();
    }
    std::fs::set_permissions(
        loose.join("client.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, out, err, _) = vm_request(&broker, &loose, "gw1", template, 20);
    assert_eq!(code, 2, "{out:?} {err}");
    assert!(out.is_empty(), "{out:?}");
    assert!(err.contains("readable by others"), "{err}");

    // Nobody answers: exit 1 after the timeout, with a cancel that says why.
    let (code, out, err, took) = vm_request(&broker, &ops, "gw9", template, 2);
    println!("no such gateway: gave up after {} ms", took.as_millis());
    assert_eq!(code, 1, "{out:?} {err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    let r = one_json(&out);
    assert_eq!(r["decision"], "cancel", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("gw9"), "{r}");

    // Only the first was reserved.
    health_until(
        &mut sub,
        &["gw1"],
        "one reservation",
        Duration::from_secs(5),
        |_, h| h["instance"]["vms"] == 1,
    );
}
