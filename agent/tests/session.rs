//! The MQTT session on a bad day, black box: a gateway with `[instance]`, an MQTT thing, a fast
//! local sensor and an actuator, at the default heartbeat, against real mosquitto brokers.
//!
//! - the broker gone for minutes (default 5, `OUTAGE_SECS` to change) and back without
//!   persistence: the thing is read again, commands answered, `online` and discovery retained
//!   again, the instance re-formed, and no reading lost or reordered;
//! - the same across a broker restart with persistence;
//! - Home Assistant's birth message brings discovery and availability back;
//! - a partition in a network namespace, longer than the keep-alive.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_e2e::{free_port, Mosquitto, Subscriber};
use serde_json::{json, Value};

mod instance_support;
mod sf_support;
use sf_support::*;

/// A TCP relay between an agent and its broker that the test cuts (every connection closed, new
/// ones refused, as when the broker's host is gone) and heals.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    target: u16,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let r = Relay {
            port: free_port(),
            open: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            target,
        };
        r.heal();
        r
    }

    fn heal(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, target) = (self.open.clone(), self.conns.clone(), self.target);
        std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue; // the broker is down: the client sees its connection closed
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut a, mut b) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
                let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                c.push(client);
                c.push(server);
            }
            // Dropping the listener refuses new connections.
        });
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(100)); // the accept loop notices and closes
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The gateway under test, `sa`, and its peer `sb`, members of instance `lab`.
struct Lab {
    gw: Gateway,
    peer: Gateway,
    _root: tempfile::TempDir,
    /// The MQTT thing's source topic.
    src: String,
}

const THING: &str = "t"; // the fast local sensor (sysfs, 50 ms)
const MQTT_THING: &str = "m";
const ACTUATOR: &str = "relay";

impl Lab {
    fn new(rng: &mut fastrand::Rng) -> Lab {
        let (root, keys) = instance_support::new_instance();
        let gw = Gateway::new(rng);
        let peer = Gateway::new(rng);
        for g in [&gw, &peer] {
            instance_support::admit(&keys, &g.id, g.dir.path());
        }
        Lab {
            src: format!("sensors/{:08x}/m", rng.u32(..)),
            gw,
            peer,
            _root: root,
        }
    }

    /// `[instance]` at the default heartbeat, as a gateway in the field runs it.
    fn instance(g: &Gateway) -> String {
        format!(
            "[instance]\nname = \"lab\"\nkeys = \"{}\"\nvirt = \"qemu\"\n\
             capacity = {{ cpus = 2, mem_mb = 1024, disk_gb = 8 }}\n\
             [[instance.templates]]\nname = \"app\"\nvcpus = 1\nmem_mb = 256\ndisk_gb = 1\nrole = \"app-light\"\n",
            g.path("keys").display()
        )
    }

    /// Starts `sa` on `port` (a relay, or the broker) and `sb` on `peer_port`.
    fn start(&self, port: u16, peer_port: u16) -> (Agent, Agent) {
        self.start_with(("127.0.0.1", port), peer_port, Command::new(AGENT))
    }

    /// `sa` reaches its broker at `at`, run by `cmd` (the agent binary, possibly wrapped).
    fn start_with(&self, at: (&str, u16), peer_port: u16, cmd: Command) -> (Agent, Agent) {
        self.gw.set_value(THING, 20.0);
        let things = self.gw.sysfs_thing(THING, 50)
            + &format!(
                "[[things]]\nid = \"{MQTT_THING}\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"{}\"\n\
                 field = \"/v\"\nunit = \"C\"\n\n\
                 [[things]]\nid = \"{ACTUATOR}\"\nkind = \"actuator\"\nbus = \"gpio\"\ndriver = \"gpio-out\"\n\
                 device = \"{}\"\nline = 3\ninterval_ms = 2000\n\n",
                self.src,
                self.gw.path("no-gpiochip").display()
            )
            + &Lab::instance(&self.gw);
        let cfg = self.gw.config(at.1, "", &things);
        let text = std::fs::read_to_string(&cfg).expect("agent.toml");
        let text = text.replace("host = \"127.0.0.1\"", &format!("host = \"{}\"", at.0));
        std::fs::write(&cfg, text).expect("agent.toml");
        let peer_cfg = self.peer.config(peer_port, "", &Lab::instance(&self.peer));
        (Agent::start_cmd(cmd, &cfg), Agent::start(&peer_cfg))
    }
}

const AGENT: &str = env!("CARGO_BIN_EXE_betaas-agent");

fn everything(broker: &Mosquitto) -> Subscriber {
    broker.subscribe_filters(&["betaas/#", "homeassistant/#"], None)
}

/// What must hold once the gateway is back: its MQTT thing read again, a command answered, the
/// instance formed both ways. `sub` sees the broker's traffic.
fn assert_alive(lab: &Lab, broker: &Mosquitto, sub: &mut Subscriber, seen: &mut Seen, what: &str) {
    let (gw, peer) = (&lab.gw.id, &lab.peer.id);
    let t0 = Instant::now();
    let value = f64::from(fastrand::i32(-300..900)) / 10.0;
    let cmd = format!("c{:08x}", fastrand::u32(..));
    let mut read = false;
    let mut answered = false;
    let mut formed = (false, false);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_poke = Instant::now() - Duration::from_secs(10);
    while !(read && answered && formed.0 && formed.1) {
        assert!(
            Instant::now() < deadline,
            "{what}: not back within 90 s: thing read {read}, command answered {answered}, \
             instance formed {formed:?}"
        );
        // Until the gateway is subscribed again these go nowhere: say them again now and then.
        if last_poke.elapsed() > Duration::from_secs(2) {
            last_poke = Instant::now();
            if !read {
                broker.publish(&lab.src, &json!({"v": value}).to_string());
            }
            if !answered {
                broker.publish(
                    &format!("betaas/{gw}/things/{ACTUATOR}/set"),
                    &json!({"id": cmd, "value": true}).to_string(),
                );
            }
        }
        let Some((t, p)) = sub.next(Duration::from_millis(200)) else {
            continue;
        };
        seen.take(gw, &t, &p);
        if t == format!("betaas/{gw}/things/{MQTT_THING}/state") {
            let v: Value = serde_json::from_str(&p).expect("json");
            read |= v["value"].as_f64() == Some(value);
        } else if t == format!("betaas/{gw}/things/{ACTUATOR}/result") {
            let v: Value = serde_json::from_str(&p).expect("json");
            answered |= v["id"] == cmd.as_str();
        } else if let Some(who) = t
            .strip_prefix("betaas/")
            .and_then(|r| r.strip_suffix("/health"))
        {
            let h: Value = serde_json::from_str(&p).expect("json");
            let up = |other: &str| h["instance"]["members"][other]["state"] == "up";
            if who == gw.as_str() {
                formed.0 = up(peer);
            } else if who == peer.as_str() {
                formed.1 = up(gw);
            }
        }
    }
    println!(
        "{what}: thing read, command answered, instance formed {:.1} s after the check began",
        t0.elapsed().as_secs_f64()
    );
}

/// The retained messages a newcomer gets: the gateway's `online` and every thing's discovery config.
fn assert_retained(lab: &Lab, broker: &Mosquitto, what: &str) {
    let gw = &lab.gw.id;
    let sub = everything(broker);
    let retained = sub.early();
    let has =
        |topic: &str, f: &dyn Fn(&str) -> bool| retained.iter().any(|(t, p)| t == topic && f(p));
    assert!(
        has(&format!("betaas/{gw}/availability"), &|p| p == "online"),
        "{what}: `online` not retained: {retained:?}"
    );
    for (component, thing) in [
        ("sensor", THING),
        ("sensor", MQTT_THING),
        ("switch", ACTUATOR),
    ] {
        let topic = format!("homeassistant/{component}/{gw}_{thing}/config");
        assert!(
            has(&topic, &|p| !p.is_empty()),
            "{what}: no retained discovery config on {topic}: {:?}",
            retained.iter().map(|(t, _)| t).collect::<Vec<_>>()
        );
    }
}

/// The fast sensor's backlog once the broker is back: every seq from the first, first arrivals in
/// order. Returns how many readings were taken while it was away (`away`: wall-clock ms).
fn assert_backlog(
    lab: &Lab,
    sub: &mut Subscriber,
    seen: &mut Seen,
    away: (u64, u64),
    what: &str,
) -> usize {
    seen.until(
        &lab.gw.id,
        sub,
        &format!("readings after {what}"),
        Duration::from_secs(60),
        |s| s.of(THING).any(|r| r.ts > away.1 + 2000),
    );
    seen.during(&lab.gw.id, sub, Duration::from_millis(500));
    let last = seen.max_seq(THING).expect("readings");
    seen.assert_complete(THING, 0, last);
    let during = seen
        .of(THING)
        .filter(|r| r.ts > away.0 && r.ts < away.1)
        .count();
    println!("{during} readings from {what} arrived; seqs 0..={last} complete");
    during
}

fn outage_secs() -> u64 {
    std::env::var("OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

// In a module of their own: `make test-unit` runs these (minutes of waiting) beside the other
// binaries and skips `outages::` in the workspace run.
mod outages {
    use super::*;

    /// Minutes without a broker (no persistence: it comes back knowing nothing), then back on the
    /// same port. Nothing the gateway does depends on the broker remembering it.
    #[test]
    fn minutes_without_a_broker_then_everything_is_back() {
        let mut rng = rng("minutes_without_a_broker_then_everything_is_back");
        let lab = Lab::new(&mut rng);
        let bport = free_port();
        let mut broker = Mosquitto::start_on(bport);
        let relay = Relay::start(bport);
        let mut sub = everything(&broker);
        let _wiggle = Wiggler::start(&lab.gw, &[THING], rng.u64(..));
        let (mut agent, mut peer) = lab.start(relay.port, bport);
        let mut seen = Seen::default();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "at start");
        assert_retained(&lab, &broker, "at start");

        // The outage: the gateway's link first (what the broker acknowledged reaches `sub`), then
        // the broker itself, with everything it held.
        relay.cut();
        seen.during(&lab.gw.id, &mut sub, Duration::from_millis(500));
        drop(sub);
        broker.stop();
        let down_ms = now_ms();
        let secs = outage_secs();
        println!("broker down for {secs} s");
        std::thread::sleep(Duration::from_secs(secs));
        agent.assert_running();
        peer.assert_running();

        let up_ms = now_ms();
        let broker = Mosquitto::start_on(bport);
        let mut sub = everything(&broker);
        relay.heal();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "after the outage");
        assert_retained(&lab, &broker, "after the outage");
        let during = assert_backlog(&lab, &mut sub, &mut seen, (down_ms, up_ms), "the outage");
        assert!(
            during as u64 > secs * 10,
            "only {during} readings from the outage"
        );
        let log = agent.log();
        assert!(
            !log.contains("cannot subscribe now"),
            "the subscription had to wait:\n{log}"
        );
        agent.stop();
        peer.stop();
    }

    /// A broker restart with persistence (it keeps retained messages and sessions): the same checks.
    #[test]
    fn a_broker_restart_with_persistence() {
        let mut rng = rng("a_broker_restart_with_persistence");
        let lab = Lab::new(&mut rng);
        let bport = free_port();
        let bdir = tempfile::tempdir().expect("broker dir");
        let mut broker = Mosquitto::start_persistent(bport, bdir.path());
        // A persistent session: the broker keeps what arrives for it while it is away.
        let client = format!("{}-sub", lab.gw.id);
        let filters = ["betaas/#", "homeassistant/#"];
        let mut sub = broker.subscribe_filters(&filters, Some(&client));
        let _wiggle = Wiggler::start(&lab.gw, &[THING], rng.u64(..));
        let (mut agent, mut peer) = lab.start(bport, bport);
        let mut seen = Seen::default();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "at start");
        broker.stop();
        seen.during(&lab.gw.id, &mut sub, Duration::from_millis(300));
        drop(sub);
        let down_ms = now_ms();
        std::thread::sleep(Duration::from_secs(rng.u64(10..30)));
        let up_ms = now_ms();
        let broker = Mosquitto::start_persistent(bport, bdir.path());
        let mut sub = broker.subscribe_filters(&filters, Some(&client));
        assert_alive(&lab, &broker, &mut sub, &mut seen, "after the restart");
        assert_retained(&lab, &broker, "after the restart");
        assert_backlog(&lab, &mut sub, &mut seen, (down_ms, up_ms), "the restart");
        agent.assert_running();
        agent.stop();
        peer.stop();
    }

    /// Home Assistant restarts on a broker that lost the retained discovery (or never delivers it to
    /// wildcards): its birth message alone brings the gateway's entities and availability back.
    #[test]
    fn home_assistant_birth_message_republishes_discovery() {
        let mut rng = rng("home_assistant_birth_message_republishes_discovery");
        let lab = Lab::new(&mut rng);
        let broker = Mosquitto::start();
        let mut sub = everything(&broker);
        let (mut agent, mut peer) = lab.start(broker.port, broker.port);
        let mut seen = Seen::default();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "at start");
        let gw = &lab.gw.id;
        let topics: Vec<String> = [
            ("sensor", THING),
            ("sensor", MQTT_THING),
            ("switch", ACTUATOR),
        ]
        .iter()
        .map(|(c, t)| format!("homeassistant/{c}/{gw}_{t}/config"))
        .chain([format!("betaas/{gw}/availability")])
        .collect();
        // The broker forgets them (empty retained payloads remove retained messages).
        for t in &topics {
            pub_mqtt(&broker, t, b"", true);
        }
        let empty = everything(&broker);
        assert!(
            !empty
                .early()
                .iter()
                .any(|(t, p)| topics.contains(t) && !p.is_empty()),
            "the broker still holds them"
        );
        let birth = Instant::now();
        broker.publish("homeassistant/status", "online");
        let mut back = std::collections::BTreeSet::new();
        sub.wait_for("discovery republished", Duration::from_secs(10), |t, p| {
            if topics.iter().any(|x| x == t) && !p.is_empty() {
                back.insert(t.to_owned());
            }
            (back.len() == topics.len()).then_some(())
        });
        println!(
            "birth message: {} retained topics back in {:.2} s",
            back.len(),
            birth.elapsed().as_secs_f64()
        );
        assert_retained(&lab, &broker, "after the birth message");
        agent.stop();
        peer.stop();
    }

    /// The gateway in its own network namespace; its link to the broker's host is cut for longer than
    /// the keep-alive and heals: the session comes back whole, readings from the partition included.
    #[test]
    fn a_partition_longer_than_the_keep_alive() {
        let _serial = instance_support::serial();
        let mut rng = rng("a_partition_longer_than_the_keep_alive");
        let lab = Lab::new(&mut rng);
        let ns = instance_support::NetNs::new();
        let port = free_port();
        let broker = Mosquitto::start_with(port, &format!("listener {port} {}\n", ns.host_ip));
        let mut sub = everything(&broker);
        let _wiggle = Wiggler::start(&lab.gw, &[THING], rng.u64(..));
        // The gateway in the namespace reaches the broker at the host's end of the veth.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, AGENT]);
        let (mut agent, mut peer) = lab.start_with((&ns.host_ip, port), port, cmd);
        let mut seen = Seen::default();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "at start");
        ns.link(false);
        let cut_ms = now_ms();
        let secs = rng.u64(20..40);
        println!("partition of {secs} s (keep-alive 5 s)");
        seen.during(&lab.gw.id, &mut sub, Duration::from_secs(secs));
        ns.link(true);
        let healed_ms = now_ms();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "after the partition");
        let during = assert_backlog(
            &lab,
            &mut sub,
            &mut seen,
            (cut_ms, healed_ms),
            "the partition",
        );
        assert!(
            during as u64 > secs * 10,
            "only {during} readings from the partition"
        );
        agent.stop();
        peer.stop();
    }

    /// libfaketime (Debian's libfaketime) moves a running process's wall clock, nothing else's: the
    /// offset is read from a file on every call, the monotonic clock is left alone.
    const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

    /// The wall clock of a running member jumps 3 years ahead (NTP finally reached, on a board with no
    /// RTC), then back to an hour behind the real time: nobody goes down, no trust is lost, because
    /// membership runs on the monotonic clock. The readings' `ts` follow the wall clock, as they should.
    #[test]
    fn a_clock_jump_of_years_costs_no_member_and_no_trust() {
        let mut rng = rng("a_clock_jump_of_years_costs_no_member_and_no_trust");
        assert!(
            Path::new(FAKETIME).exists(),
            "{FAKETIME} missing (image/host-deps.sh installs libfaketime)"
        );
        let lab = Lab::new(&mut rng);
        let broker = Mosquitto::start();
        let mut sub = everything(&broker);
        let offset = lab.gw.path("faketime");
        std::fs::write(&offset, "+0\n").expect("faketime file");
        let mut cmd = Command::new(AGENT);
        cmd.env("LD_PRELOAD", FAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        let (mut agent, mut peer) = lab.start_with(("127.0.0.1", broker.port), broker.port, cmd);
        let mut seen = Seen::default();
        assert_alive(&lab, &broker, &mut sub, &mut seen, "at start");
        let (gw, other) = (lab.gw.id.clone(), lab.peer.id.clone());
        // Trust as each sees the other, before the jumps.
        let trust = |h: &Value, of: &str| h["instance"]["members"][of]["trust"].as_f64();
        let mut before = (None, None);
        sub.wait_for("both healths", Duration::from_secs(10), |t, p| {
            let h: Value = serde_json::from_str(p).ok()?;
            if t == format!("betaas/{gw}/health") {
                before.0 = trust(&h, &other);
            } else if t == format!("betaas/{other}/health") {
                before.1 = trust(&h, &gw);
            }
            (before.0.is_some() && before.1.is_some()).then_some(())
        });
        let three_years = 3 * 365 * 24 * 3600 * 1000u64;
        for (label, offset_text, wall_offset_ms) in [
            ("+3 years", "+1095d", three_years as i64),
            ("-1 hour", "-1h", -3_600_000i64),
        ] {
            std::fs::write(&offset, format!("{offset_text}\n")).expect("faketime file");
            // Watch both members for four heartbeat timeouts (the default timeout is 4 s).
            let end = Instant::now() + Duration::from_secs(16);
            let mut jumped = false;
            let mut checks = 0;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                let Some((t, p)) = sub.next(left) else {
                    continue;
                };
                let Ok(h) = serde_json::from_str::<Value>(&p) else {
                    continue;
                };
                if t == format!("betaas/{gw}/health") {
                    let skew = h["ts"].as_u64().unwrap_or(0) as i64 - now_ms() as i64;
                    // The jump took effect (else this test proves nothing) ...
                    if (skew - wall_offset_ms).abs() < 60_000 {
                        jumped = true;
                    }
                    if jumped {
                        // ... and the member it sees stays up, its trust not lowered.
                        assert_eq!(
                            h["instance"]["members"][&other]["state"], "up",
                            "{label}: {h}"
                        );
                        let now = trust(&h, &other).expect("trust");
                        assert!(
                            now >= before.0.unwrap_or(0.0) - 1e-9,
                            "{label}: trust fell to {now}"
                        );
                        checks += 1;
                    }
                } else if t == format!("betaas/{other}/health") && jumped {
                    assert_eq!(h["instance"]["members"][&gw]["state"], "up", "{label}: {h}");
                    let now = trust(&h, &gw).expect("trust");
                    assert!(
                        now >= before.1.unwrap_or(0.0) - 1e-9,
                        "{label}: trust fell to {now}"
                    );
                }
            }
            assert!(
                jumped,
                "{label}: the agent's wall clock never moved (libfaketime not in effect)"
            );
            println!(
                "{label}: {checks} health reports after the jump, every member up, trust kept"
            );
        }
        agent.stop();
        peer.stop();
    }
}
