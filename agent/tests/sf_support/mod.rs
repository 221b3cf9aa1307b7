//! Helpers of the black-box store-and-forward tests: the agent process, a test gateway's files,
//! a sensor that keeps changing, and what a subscriber saw (readings by seq, health).
#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_e2e::{terminate, Mosquitto, Subscriber};
use serde_json::Value;

pub fn rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

/// The agent process; SIGKILLed on drop if still running. Its stderr is kept for assertions.
pub struct Agent {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Agent {
    pub fn start(config: &Path) -> Agent {
        Agent::start_cmd(Command::new(env!("CARGO_BIN_EXE_betaas-agent")), config)
    }

    /// `cmd`: the agent binary, possibly wrapped (`ip netns exec NS betaas-agent`).
    pub fn start_cmd(mut cmd: Command, config: &Path) -> Agent {
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start betaas-agent");
        let err = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = l2.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        Agent {
            child: Some(child),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        let status = child.try_wait().expect("try_wait");
        assert!(
            status.is_none(),
            "agent exited ({status:?}); log:\n{}",
            self.log()
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; asserts a clean exit (status 0) within 10 s.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        let status = terminate(&mut c, Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "clean stop failed ({status:?}); log:\n{}",
            self.log()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// A test's gateway: its id, its data and config files.
pub struct Gateway {
    pub id: String,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub fn new(rng: &mut fastrand::Rng) -> Gateway {
        Gateway {
            id: format!("sf-{:08x}", rng.u32(..)),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn filter(&self) -> String {
        format!("betaas/{}/#", self.id)
    }

    /// Writes `agent.toml` with the given `[journal]` extras and `[[things]]` tables.
    pub fn config(&self, port: u16, journal: &str, things: &str) -> PathBuf {
        let text = format!(
            "gateway_id = \"{}\"\ndata_dir = \"{}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             keep_alive_secs = 5\n\n[health]\ninterval_secs = 1\n\n[journal]\nfsync = \"always\"\n\
             {journal}\n{things}",
            self.id,
            self.path("data").display(),
        );
        let p = self.path("agent.toml");
        std::fs::write(&p, text).expect("write agent.toml");
        p
    }

    /// A sysfs thing reading `<dir>/<id>.value` every `interval_ms`.
    pub fn sysfs_thing(&self, id: &str, interval_ms: u64) -> String {
        format!(
            "[[things]]\nid = \"{id}\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"{}\"\n\
             unit = \"C\"\ninterval_ms = {interval_ms}\n\n",
            self.value_file(id).display()
        )
    }

    pub fn value_file(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}.value"))
    }

    /// Writes a value atomically (temp + rename), so the agent never reads half a number.
    pub fn set_value(&self, id: &str, v: f64) {
        let tmp = self.path(&format!("{id}.value.tmp"));
        std::fs::write(&tmp, format!("{v}\n")).expect("write value");
        std::fs::rename(&tmp, self.value_file(id)).expect("rename value");
    }
}

/// Changes the things' values at random every few ms until dropped, so readings differ.
pub struct Wiggler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wiggler {
    pub fn start(gw: &Gateway, ids: &[&str], seed: u64) -> Wiggler {
        let dir = gw.dir.path().to_owned();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rng = fastrand::Rng::with_seed(seed);
            while !s2.load(Ordering::Relaxed) {
                for id in &ids {
                    let v = f64::from(rng.i32(-400..1000)) / 10.0;
                    let tmp = dir.join(format!("{id}.tmp"));
                    let _ = std::fs::write(&tmp, format!("{v}\n"));
                    let _ = std::fs::rename(&tmp, dir.join(format!("{id}.value")));
                }
                std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
            }
        });
        Wiggler {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Wiggler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One published reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub thing: String,
    pub seq: u64,
    pub value: f64,
    pub ts: u64,
}

/// Everything a subscriber saw, in arrival order.
#[derive(Default)]
pub struct Seen {
    pub readings: Vec<Reading>,
    pub health: Vec<Value>,
}

impl Seen {
    pub fn take(&mut self, gw: &str, topic: &str, payload: &str) {
        let base = format!("betaas/{gw}/");
        let Some(rest) = topic.strip_prefix(&base) else {
            return;
        };
        if rest == "health" {
            self.health
                .push(serde_json::from_str(payload).expect("health is JSON"));
        } else if let Some(thing) = rest
            .strip_prefix("things/")
            .and_then(|r| r.strip_suffix("/state"))
        {
            let v: Value = serde_json::from_str(payload).expect("state is JSON");
            assert_eq!(v["thing"], thing, "{payload}");
            assert_eq!(v["unit"], "C", "{payload}");
            self.readings.push(Reading {
                thing: thing.to_owned(),
                seq: v["seq"].as_u64().expect("seq"),
                value: v["value"].as_f64().expect("value"),
                ts: v["ts"].as_u64().expect("ts"),
            });
        }
    }

    /// Reads `sub` until `done(self)` holds, or panics after `timeout`.
    pub fn until(
        &mut self,
        gw: &str,
        sub: &mut Subscriber,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Seen) -> bool,
    ) {
        let end = Instant::now() + timeout;
        while !done(self) {
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out after {timeout:?} waiting for {what}"
            );
            if let Some((t, p)) = sub.next(left.min(Duration::from_millis(200))) {
                self.take(gw, &t, &p);
            }
        }
    }

    /// Reads `sub` for `d`.
    pub fn during(&mut self, gw: &str, sub: &mut Subscriber, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            if let Some((t, p)) = sub.next(left) {
                self.take(gw, &t, &p);
            }
        }
    }

    pub fn max_seq(&self, thing: &str) -> Option<u64> {
        self.of(thing).map(|r| r.seq).max()
    }

    pub fn of<'a>(&'a self, thing: &'a str) -> impl Iterator<Item = &'a Reading> + 'a {
        self.readings.iter().filter(move |r| r.thing == thing)
    }

    pub fn last_health(&self) -> Option<&Value> {
        self.health.last()
    }

    /// For `thing`: every seq in `from..=to` arrived; the first arrivals are in seq order; a seq
    /// that arrived twice carries the same reading both times (a duplicate, not a reused seq).
    pub fn assert_complete(&self, thing: &str, from: u64, to: u64) {
        let mut first: BTreeMap<u64, &Reading> = BTreeMap::new();
        let mut order = Vec::new();
        for r in self.of(thing) {
            match first.get(&r.seq) {
                Some(f) => assert_eq!(*f, r, "seq {} reused for a different reading", r.seq),
                None => {
                    first.insert(r.seq, r);
                    order.push(r.seq);
                }
            }
        }
        let missing: Vec<u64> = (from..=to).filter(|s| !first.contains_key(s)).collect();
        assert!(
            missing.is_empty(),
            "{thing}: {} of seqs {from}..={to} never arrived: {missing:?}",
            missing.len()
        );
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{thing}: first arrivals out of order: {order:?}"
        );
        let ts: Vec<u64> = first.values().map(|r| r.ts).collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "{thing}: timestamps go back along seqs"
        );
    }
}

pub fn health_u64(h: &Value, pointer: &str) -> u64 {
    h.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("health has no {pointer}: {h}"))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

pub fn pub_mqtt(broker: &Mosquitto, topic: &str, payload: &[u8], retain: bool) {
    let f = tempfile::NamedTempFile::new().expect("payload file");
    std::fs::write(f.path(), payload).expect("write payload");
    let port = broker.port.to_string();
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        &broker.host,
        "-p",
        &port,
        "-t",
        topic,
        "-q",
        "1",
        "-f",
    ])
    .arg(f.path());
    if retain {
        cmd.arg("-r");
    }
    assert!(cmd.status().expect("mosquitto_pub").success());
}
