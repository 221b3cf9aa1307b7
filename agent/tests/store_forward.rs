//! Store-and-forward, black box: the real `betaas-agent` binary against a real mosquitto.
//!
//! Each test names one failure (broker outage, kill -9, torn journal tail, full journal, bad input)
//! and asserts the exact recovery, by the `seq` every published reading carries. Random values and
//! timings come from one seed per test, printed first (`SEED=<n>` replays it).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use betaas_e2e::{free_port, Mosquitto};
use serde_json::Value;

mod instance_support;
mod sf_support;
use sf_support::*;

/// The broker goes away for seconds while the agent keeps reading; every reading taken meanwhile
/// arrives after the broker returns, in order, duplicates only as the same seq.
#[test]
fn broker_outage_loses_nothing() {
    let mut rng = rng("broker_outage_loses_nothing");
    let gw = Gateway::new(&mut rng);
    let port = free_port();
    let bdir = tempfile::tempdir().expect("broker dir");
    let mut broker = Mosquitto::start_persistent(port, bdir.path());
    let client = format!("{}-sub", gw.id);
    let mut sub = broker.subscribe_session(&gw.filter(), &client);
    // Two things at 100 Hz: an outage of seconds yields more readings than the MQTT client could
    // hold in memory (its 256-request queue plus its inflight window), so only the journal saves them.
    let ids = ["t", "u"];
    for t in ids {
        gw.set_value(t, 20.0);
    }
    let _wiggle = Wiggler::start(&gw, &ids, rng.u64(..));
    let things = gw.sysfs_thing("t", 10) + &gw.sysfs_thing("u", 10);
    let cfg = gw.config(port, "", &things);
    let mut agent = Agent::start(&cfg);
    let mut seen = Seen::default();
    seen.until(
        &gw.id,
        &mut sub,
        "readings before the outage",
        Duration::from_secs(10),
        |s| s.readings.len() >= 20,
    );
    seen.during(&gw.id, &mut sub, Duration::from_millis(rng.u64(0..500)));

    // The outage: the broker stops (saving its queues), the agent keeps reading into its journal.
    let down_ms = now_ms();
    broker.stop();
    // What the subscriber received (and acknowledged) before the broker went is only in its pipe.
    seen.during(&gw.id, &mut sub, Duration::from_millis(300));
    drop(sub);
    let outage = Duration::from_millis(rng.u64(3000..5000));
    eprintln!("outage of {outage:?}");
    std::thread::sleep(outage);
    agent.assert_running();

    let up_ms = now_ms();
    let mut broker = Mosquitto::start_persistent(port, bdir.path());
    let mut sub = broker.subscribe_session(&gw.filter(), &client);
    seen.until(
        &gw.id,
        &mut sub,
        "the backlog and a reconnect",
        Duration::from_secs(30),
        |s| {
            s.readings.iter().any(|r| r.ts > up_ms + 500)
                && s.health.iter().any(|h| health_u64(h, "/reconnects") >= 1)
        },
    );
    seen.during(&gw.id, &mut sub, Duration::from_millis(200));
    agent.assert_running();
    for t in ids {
        let last = seen.max_seq(t).expect("readings");
        seen.assert_complete(t, 0, last);
    }
    let during = seen
        .readings
        .iter()
        .filter(|r| r.ts > down_ms && r.ts < up_ms)
        .map(|r| (r.thing.clone(), r.seq))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    eprintln!("{during} readings taken during the outage arrived");
    assert!(
        during > 400,
        "only {during} readings from the outage: not enough to tell a journal from a memory queue"
    );
    agent.stop();
    broker.stop();
}

/// SIGKILL at random moments, at least 20 times; then one clean run drains the journal. With
/// `fsync = "always"` every journaled reading survives and seqs continue exactly: no gap, no reuse.
#[test]
fn kill_dash_nine_loop() {
    kill_loop("kill_dash_nine_loop", false);
}

/// The same with `[instance]`: heartbeats, announces and trust reports share the connection and
/// its packet ids with the readings, and must never acknowledge a reading in its place.
#[test]
fn kill_dash_nine_loop_with_instance_traffic() {
    kill_loop("kill_dash_nine_loop_with_instance_traffic", true);
}

fn kill_loop(test: &str, instance: bool) {
    let mut rng = rng(test);
    let gw = Gateway::new(&mut rng);
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe(&gw.filter());
    gw.set_value("t", 1.0);
    let wiggle = Wiggler::start(&gw, &["t"], rng.u64(..));
    let mut things = gw.sysfs_thing("t", 20);
    let _instance_dir = instance.then(|| {
        // A member of an instance, at a fast heartbeat: bus messages interleave with readings.
        let (root, keys) = instance_support::new_instance();
        instance_support::admit(&keys, &gw.id, gw.dir.path());
        things += &format!(
            "[instance]\nname = \"lab\"\nkeys = \"{}\"\nheartbeat_ms = 100\ntimeout_ms = 1000\n\
             virt = \"qemu\"\ncapacity = {{ cpus = 1, mem_mb = 512, disk_gb = 1 }}\n",
            gw.path("keys").display()
        );
        root
    });
    let cfg = gw.config(broker.port, "", &things);
    let mut seen = Seen::default();
    let kills = 20 + rng.usize(0..5);
    for _ in 0..kills {
        let mut agent = Agent::start(&cfg);
        let life = Duration::from_millis(rng.u64(100..800));
        seen.during(&gw.id, &mut sub, life);
        agent.kill9();
    }
    // The final run reads nothing new (the device is gone), so the journal can drain to 0.
    drop(wiggle);
    std::fs::remove_file(gw.value_file("t")).expect("remove value");
    let mut agent = Agent::start(&cfg);
    let mut health = None;
    seen.until(
        &gw.id,
        &mut sub,
        "an empty journal",
        Duration::from_secs(20),
        |s| {
            health = s
                .last_health()
                .filter(|h| health_u64(h, "/journal/depth") == 0)
                .cloned();
            health.is_some()
        },
    );
    // Anything still in flight arrives within a moment.
    seen.during(&gw.id, &mut sub, Duration::from_millis(300));
    let max = seen.max_seq("t").expect("readings");
    eprintln!(
        "{kills} kills, seqs 0..={max}, {} messages",
        seen.readings.len()
    );
    assert!(max as usize >= kills, "too few readings: max seq {max}");
    seen.assert_complete("t", 0, max);
    assert_eq!(
        seen.health
            .iter()
            .map(|h| h["journal"]["dropped"].as_u64())
            .max(),
        Some(Some(0)),
        "nothing was dropped"
    );
    agent.stop();
}

/// A clean stop, then garbage after the newest segment's last record (a torn write or a damaged
/// tail): the agent cuts it, says which file, keeps every record before it and seqs continue.
#[test]
fn torn_tail_recovered() {
    let mut rng = rng("torn_tail_recovered");
    let gw = Gateway::new(&mut rng);
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe(&gw.filter());
    gw.set_value("t", 5.0);
    let _wiggle = Wiggler::start(&gw, &["t"], rng.u64(..));
    let cfg = gw.config(broker.port, "", &gw.sysfs_thing("t", 50));
    let mut agent = Agent::start(&cfg);
    let mut seen = Seen::default();
    let want = rng.u64(5..30);
    seen.until(
        &gw.id,
        &mut sub,
        "first readings",
        Duration::from_secs(10),
        |s| s.max_seq("t").is_some_and(|m| m >= want),
    );
    agent.stop();
    seen.during(&gw.id, &mut sub, Duration::from_millis(300));
    let last = seen.max_seq("t").expect("readings");

    let jdir = gw.path("data/journal");
    let newest = std::fs::read_dir(&jdir)
        .expect("journal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a segment file");
    let len_before = std::fs::metadata(&newest).expect("segment").len();
    // A frame header promising more bytes than follow (torn), or random bytes (damage).
    let tail: Vec<u8> = if rng.bool() {
        let len = rng.u32(20..200);
        let mut t = len.to_le_bytes().to_vec();
        t.extend((0..4 + rng.usize(0..len as usize)).map(|_| rng.u8(..)));
        t
    } else {
        (0..rng.usize(1..300)).map(|_| rng.u8(..)).collect()
    };
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .expect("open segment");
        f.write_all(&tail).expect("append garbage");
    }
    eprintln!(
        "appended {} bytes to {} ({len_before} bytes)",
        tail.len(),
        newest.display()
    );

    let mut agent = Agent::start(&cfg);
    let want = last + rng.u64(5..20);
    seen.until(
        &gw.id,
        &mut sub,
        "readings after the cut",
        Duration::from_secs(15),
        |s| s.max_seq("t").is_some_and(|m| m >= want),
    );
    agent.assert_running();
    let log = agent.log();
    let name = newest
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .to_string();
    assert!(
        log.lines()
            .any(|l| l.contains(&name) && (l.contains("trunc") || l.contains("cut"))),
        "the log does not name the cut file {name}:\n{log}"
    );
    seen.assert_complete("t", 0, want);
    let after = seen.of("t").find(|r| r.seq > last).cloned();
    assert_eq!(
        after.map(|r| r.seq),
        Some(last + 1),
        "seq continues exactly"
    );
    agent.stop();
    // The cut is at the end of what was there before: the segment kept its records.
    let len_now = std::fs::metadata(&newest).map(|m| m.len()).unwrap_or(0);
    assert!(
        len_now >= len_before || !newest.exists(),
        "{} shrank below its intact length",
        newest.display()
    );
}

/// The broker is down from the start and the journal is as small as it may be: it drops its
/// oldest segments, counts every dropped reading, and the agent keeps running; when the broker
/// comes, what arrives is the newest readings, in order, from just after the drop.
#[test]
fn journal_full_drops_oldest_and_counts() {
    let mut rng = rng("journal_full_drops_oldest_and_counts");
    let gw = Gateway::new(&mut rng);
    let port = free_port();
    // Limits::check: segment_bytes >= 28 + 8 + 4096, max_bytes >= 2 * segment_bytes.
    let seg = 28 + 8 + 4096 + rng.u64(0..512);
    let journal = format!("segment_bytes = {seg}\nmax_bytes = {}\n", 2 * seg);
    let things = gw.sysfs_thing("a", 10) + &gw.sysfs_thing("b", 10);
    gw.set_value("a", 1.0);
    gw.set_value("b", 2.0);
    let wiggle = Wiggler::start(&gw, &["a", "b"], rng.u64(..));
    let cfg = gw.config(port, &journal, &things);
    let mut agent = Agent::start(&cfg);
    // ~28 bytes a record, two things at 100 Hz: two segments are full in about 1.5 s.
    std::thread::sleep(Duration::from_millis(rng.u64(3000..4500)));
    agent.assert_running();
    assert!(
        agent.log().contains("dropping unacknowledged records"),
        "journal did not drop:\n{}",
        agent.log()
    );
    // The devices go away before the broker comes back: no drop can race the drain, so the
    // count must match the arrivals exactly.
    drop(wiggle);
    for t in ["a", "b"] {
        std::fs::remove_file(gw.value_file(t)).expect("remove value");
    }
    std::thread::sleep(Duration::from_millis(100));

    let broker = Mosquitto::start_on(port);
    let mut sub = broker.subscribe(&gw.filter());
    let mut seen = Seen::default();
    seen.until(
        &gw.id,
        &mut sub,
        "the first reading",
        Duration::from_secs(30),
        |s| !s.readings.is_empty(),
    );
    // Health queued while disconnected is stale: take one built after the agent connected.
    let since = now_ms();
    let fresh = |h: &Value| health_u64(h, "/ts") > since;
    seen.until(
        &gw.id,
        &mut sub,
        "readings and fresh health",
        Duration::from_secs(30),
        |s| s.readings.len() > 100 && s.health.iter().any(fresh),
    );
    agent.assert_running();
    let dropped = health_u64(
        seen.health.iter().find(|h| fresh(h)).expect("fresh health"),
        "/journal/dropped",
    );
    assert!(dropped > 0, "health counts no drop");
    let mut oldest = 0;
    for thing in ["a", "b"] {
        let first = seen.of(thing).next().expect("readings").seq;
        let max = seen.max_seq(thing).expect("readings");
        eprintln!("{thing}: first seq {first}, max {max}");
        assert!(first > 0, "{thing}: the oldest readings were not dropped");
        seen.assert_complete(thing, first, max);
        oldest += first;
    }
    // Every reading before the first that arrived was dropped (and counted), none was lost silently.
    assert_eq!(
        dropped, oldest,
        "dropped count vs. seqs missing at the front"
    );
    agent.stop();
}

/// MQTT things fed garbage between good readings: only good ones are journaled and republished,
/// with contiguous seqs; every bad one is counted for the thing; the agent stays up. Bad config
/// files: exit status 2 and an error naming file, line and field.
#[test]
fn bad_input() {
    let mut rng = rng("bad_input");
    let gw = Gateway::new(&mut rng);
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe(&gw.filter());
    let src = format!("dev/{}", gw.id);
    let thing = format!(
        "[[things]]\nid = \"x\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"{src}\"\n\
         field = \"/t\"\nunit = \"C\"\nmax = 100\n"
    );
    let cfg = gw.config(broker.port, "", &thing);
    let good = |rng: &mut fastrand::Rng| f64::from(rng.i32(-300..1000)) / 10.0;
    let bad: Vec<Vec<u8>> = vec![
        b"{\"t\": 21.5".to_vec(),
        b"not json at all".to_vec(),
        b"{\"t\": \"21.5\"}".to_vec(),
        b"{\"t\": null}".to_vec(),
        b"{\"t\": [1, 2]}".to_vec(),
        b"{\"other\": 3}".to_vec(),
        format!("{{\"t\": 1, \"pad\": \"{}\"}}", "x".repeat(100 * 1024)).into_bytes(),
        b"{\"t\": 100.5}".to_vec(),
        b"{\"t\": 1e308}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        Vec::new(),
    ];
    // The first good reading is retained, so it reaches the agent as soon as it subscribes.
    let mut sent = vec![good(&mut rng)];
    pub_mqtt(
        &broker,
        &src,
        format!("{{\"t\": {}}}", sent[0]).as_bytes(),
        true,
    );
    let mut agent = Agent::start(&cfg);
    let mut seen = Seen::default();
    seen.until(
        &gw.id,
        &mut sub,
        "the retained reading",
        Duration::from_secs(10),
        |s| !s.readings.is_empty(),
    );
    // Garbage and good readings shuffled; then a kill -9 and a second round: the journal holds
    // only good readings, so it reopens and seqs go on from where they were.
    let mut bad = bad;
    rng.shuffle(&mut bad);
    let second = bad.split_off(bad.len() / 2);
    for (round, bad) in [bad, second].into_iter().enumerate() {
        if round == 1 {
            agent.kill9();
            agent = Agent::start(&cfg);
            // The retained reading comes again on subscribing: a new reading, a new seq.
            sent.push(sent[0]);
            let n = sent.len() as u64;
            seen.until(
                &gw.id,
                &mut sub,
                "the retained reading again",
                Duration::from_secs(10),
                |s| s.max_seq("x").is_some_and(|m| m + 1 >= n),
            );
        }
        let errors = bad.len() as u64;
        let mut inputs: Vec<Option<Vec<u8>>> = bad.into_iter().map(Some).collect();
        for _ in 0..rng.usize(4..8) {
            inputs.push(None);
        }
        rng.shuffle(&mut inputs);
        for input in inputs {
            match input {
                Some(p) => pub_mqtt(&broker, &src, &p, false),
                None => {
                    let v = good(&mut rng);
                    sent.push(v);
                    let p = format!("{{\"id\": {}, \"t\": {v}, \"u\": \"C\"}}", rng.u32(..));
                    pub_mqtt(&broker, &src, p.as_bytes(), false);
                }
            }
        }
        // Per-thing errors are counted by this run of the agent.
        let since = now_ms();
        seen.until(
            &gw.id,
            &mut sub,
            "the good readings and the error count",
            Duration::from_secs(15),
            |s| {
                s.max_seq("x").is_some_and(|m| m + 1 >= sent.len() as u64)
                    && s.health.iter().any(|h| {
                        health_u64(h, "/ts") > since
                            && h.pointer("/things/x/errors").and_then(Value::as_u64) == Some(errors)
                    })
            },
        );
        seen.during(&gw.id, &mut sub, Duration::from_millis(300));
        agent.assert_running();
    }
    let mut got: BTreeMap<u64, f64> = BTreeMap::new();
    for r in seen.of("x") {
        let v = *got.entry(r.seq).or_insert(r.value);
        assert_eq!(v, r.value, "seq {} reused for another value", r.seq);
    }
    let got: Vec<(u64, f64)> = got.into_iter().collect();
    let want: Vec<(u64, f64)> = sent
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, *v))
        .collect();
    assert_eq!(
        got, want,
        "only the good readings, in order, seqs contiguous"
    );
    assert!(
        agent.log().contains(&src),
        "rejections are logged with the topic"
    );
    agent.stop();

    bad_config_files(&gw, &mut rng);
}

/// Each broken config: `check-config` and a plain run both exit 2 naming file, line and field.
fn bad_config_files(gw: &Gateway, rng: &mut fastrand::Rng) {
    let head = format!(
        "gateway_id = \"{}\"\ndata_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\n",
        gw.id,
        gw.path("bad-data").display()
    );
    let sysfs = "[[things]]\nid = \"t\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"/x\"\nunit = \"C\"\n";
    // (config text, the bad line's text, the field named)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{head}{sysfs}interval_ms = {}\n", rng.u32(0..10)),
            "interval_ms =",
            "interval_ms",
        ),
        (
            format!("{head}[[things]]\nid = \"t\"\nbus = \"i2c\"\ndriver = \"tmp999\"\n"),
            "driver = \"tmp999\"",
            "driver",
        ),
        (
            head.replace("[mqtt]\n", "[mqtt]\nport = \"one\"\n"),
            "port = \"one\"",
            "port",
        ),
        (
            format!("{head}{sysfs}{}", sysfs.replace("/x", "/y")),
            "id = \"t\"",
            "id",
        ),
    ];
    for (i, (text, bad_line, field)) in cases.into_iter().enumerate() {
        let path = gw.path(&format!("bad{i}.toml"));
        std::fs::write(&path, &text).expect("write config");
        for args in [&["check-config"][..], &["run"][..], &[][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
                .arg("--config")
                .arg(&path)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run betaas-agent");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} on:\n{text}\nstderr: {err}"
            );
            let lines: Vec<usize> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.starts_with(bad_line))
                .map(|(n, _)| n + 1)
                .collect();
            let named = format!("{}:", path.display());
            assert!(
                err.contains(&named)
                    && lines.iter().any(|n| err.contains(&format!(":{n}")))
                    && err.contains(field),
                "{args:?}: expected file, line {lines:?} and field `{field}` in: {err}\nconfig:\n{text}"
            );
        }
    }
}
