//! `[mqtt] hosts`: the agent on the nodes of one broker, black box, against real mosquitto brokers
//! on loopback ports (independent brokers stand in for a cluster's nodes: the test listens on
//! every one of them).
//!
//! - the agent's node is killed: it connects to the next within a bounded time (printed), health
//!   names the new node and counts the failover, and every reading arrives, in seq order. The
//!   agent reaches each node through a relay that is cut first (every connection closed, new ones
//!   refused), then the broker behind it is killed: a broker killed while it holds a reading it
//!   has acknowledged but not yet passed to the test's subscriber would lose it for a reason
//!   that is not the agent's (a cluster has routed it to other nodes by then);
//! - a node that accepts TCP but never answers CONNECT is left after `connect_timeout_secs`, and
//!   the failed attempt is logged.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_e2e::{free_port, Mosquitto, Subscriber};

mod instance_support;
mod sf_support;
use sf_support::*;

const THING: &str = "t"; // a sysfs sensor read every 50 ms

/// The gateway's config with `hosts` in place of `host`/`port`.
fn config(gw: &Gateway, nodes: &[u16], extra_mqtt: &str) -> PathBuf {
    gw.set_value(THING, 20.0);
    let cfg = gw.config(nodes[0], "", &gw.sysfs_thing(THING, 50));
    let hosts: Vec<String> = nodes.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = std::fs::read_to_string(&cfg).expect("agent.toml").replace(
        &format!("host = \"127.0.0.1\"\nport = {}\n", nodes[0]),
        &format!("hosts = [{}]\n{extra_mqtt}", hosts.join(", ")),
    );
    assert!(text.contains("hosts = ["), "{text}");
    std::fs::write(&cfg, text).expect("agent.toml");
    cfg
}

/// A TCP relay in front of a broker node, cut once.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    /// A hung node: bytes are swallowed both ways, connections are neither answered nor closed.
    frozen: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let r = Relay {
            port: listener.local_addr().expect("addr").port(),
            open: Arc::new(AtomicBool::new(true)),
            frozen: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (open, frozen, conns) = (r.open.clone(), r.frozen.clone(), r.conns.clone());
        std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut a, mut b) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    let frozen = frozen.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if frozen.load(Ordering::SeqCst) {
                                continue;
                            }
                            if b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        if !frozen.load(Ordering::SeqCst) {
                            let _ = b.shutdown(Shutdown::Both);
                        }
                    });
                }
                let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                c.push(client);
                c.push(server);
            }
            // Dropping the listener refuses new connections.
        });
        r
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
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
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Subscribers on several nodes, read together.
struct Nodes {
    subs: Vec<Option<Subscriber>>,
}

impl Nodes {
    /// Reads every live subscriber for `d`; `node` tells which one a message came from.
    fn during(&mut self, gw: &str, seen: &mut Seen, d: Duration, mut on: impl FnMut(usize, &str)) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let mut quiet = true;
            for (i, sub) in self.subs.iter_mut().enumerate() {
                let Some(sub) = sub else { continue };
                while let Some((t, p)) = sub.next(Duration::from_millis(2)) {
                    quiet = false;
                    seen.take(gw, &t, &p);
                    on(i, &t);
                }
            }
            if quiet {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Reads until a reading arrives through node `i`; the time it took.
    fn until_reading_on(
        &mut self,
        gw: &str,
        seen: &mut Seen,
        i: usize,
        timeout: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        let state = format!("betaas/{gw}/things/{THING}/state");
        let mut got = false;
        while !got {
            assert!(
                t0.elapsed() < timeout,
                "no reading through node {i} within {timeout:?}"
            );
            self.during(gw, seen, Duration::from_millis(20), |n, t| {
                got |= n == i && t == state;
            });
        }
        t0.elapsed()
    }
}

/// Three nodes; the agent's node is killed twice: it moves on each time, within a few seconds,
/// and no reading is lost or reordered.
#[test]
fn the_agents_node_killed_it_moves_to_another_and_loses_no_reading() {
    let mut rng = rng("the_agents_node_killed_it_moves_to_another_and_loses_no_reading");
    let gw = Gateway::new(&mut rng);
    let mut brokers: Vec<Option<Mosquitto>> = (0..3).map(|_| Some(Mosquitto::start())).collect();
    let relays: Vec<Relay> = brokers
        .iter()
        .flatten()
        .map(|b| Relay::start(b.port))
        .collect();
    let ports: Vec<u16> = relays.iter().map(|r| r.port).collect();
    let mut nodes = Nodes {
        subs: brokers
            .iter()
            .flatten()
            .map(|b| Some(b.subscribe(&gw.filter())))
            .collect(),
    };
    let _wiggle = Wiggler::start(&gw, &[THING], rng.u64(..));
    let mut agent = Agent::start(&config(&gw, &ports, ""));
    let mut seen = Seen::default();
    let first = nodes.until_reading_on(&gw.id, &mut seen, 0, Duration::from_secs(20));
    eprintln!("readings through node 0 after {:.2} s", first.as_secs_f64());

    let mut failover_times = Vec::new();
    for (killed, next) in [(0usize, 1usize), (1, 2)] {
        // Let some readings through first, so the kill lands mid-stream.
        nodes.during(
            &gw.id,
            &mut seen,
            Duration::from_millis(rng.u64(500..1500)),
            |_, _| {},
        );
        relays[killed].cut();
        let took = nodes.until_reading_on(&gw.id, &mut seen, next, Duration::from_secs(5));
        // What the node acknowledged has reached the test's subscriber by now; then it dies.
        nodes.during(&gw.id, &mut seen, Duration::from_millis(300), |_, _| {});
        brokers[killed] = None; // SIGKILL
        nodes.subs[killed] = None;
        eprintln!(
            "node {killed} killed: readings through node {next} after {:.3} s",
            took.as_secs_f64()
        );
        failover_times.push(took);
    }
    // Health on the last node names it and counts both failovers.
    let node = format!("127.0.0.1:{}", ports[2]);
    let mut health_ok = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !health_ok && Instant::now() < deadline {
        nodes.during(&gw.id, &mut seen, Duration::from_millis(200), |_, _| {});
        health_ok = seen.last_health().is_some_and(|h| {
            h["mqtt"]["node"] == node.as_str() && health_u64(h, "/mqtt/failovers") == 2
        });
    }
    assert!(
        health_ok,
        "health does not name {node} with 2 failovers: {:?}",
        seen.last_health()
    );
    agent.assert_running();
    let log = agent.log();
    assert!(
        log.contains("failed over to another node"),
        "no failover in the log:\n{log}"
    );
    // Every reading from the first one seen to the last, in order, across both kills.
    let from = seen.of(THING).map(|r| r.seq).min().expect("readings");
    let to = seen.max_seq(THING).expect("readings");
    assert!(to - from > 40, "too few readings: {from}..={to}");
    seen.assert_complete(THING, from, to);
    eprintln!(
        "failover times: {:?}; seqs {from}..={to} complete",
        failover_times
            .iter()
            .map(|d| format!("{:.3} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    agent.stop();
}

/// The first node accepts TCP and never answers CONNECT: after `connect_timeout_secs` (2) the
/// agent goes on to the second, and says so in its log.
#[test]
fn a_node_that_never_answers_connect_is_skipped() {
    let mut rng = rng("a_node_that_never_answers_connect_is_skipped");
    let gw = Gateway::new(&mut rng);
    // The kernel completes the TCP handshake for a listener nobody reads from; the accepted
    // connections are kept open (and silent) until the test ends.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let broker = Mosquitto::start_on(free_port());
    let mut nodes = Nodes {
        subs: vec![Some(broker.subscribe(&gw.filter()))],
    };
    let _wiggle = Wiggler::start(&gw, &[THING], rng.u64(..));
    let t0 = Instant::now();
    let mut agent = Agent::start(&config(
        &gw,
        &[silent_port, broker.port],
        "connect_timeout_secs = 2\n",
    ));
    let mut seen = Seen::default();
    nodes.until_reading_on(&gw.id, &mut seen, 0, Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!(
        "silent node skipped: first reading through the second node {:.2} s after start",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_millis(1900),
        "the silent node was not tried first ({took:?})"
    );
    let log = agent.log();
    let silent_node = format!("127.0.0.1:{silent_port}");
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&silent_node)
            && l.contains("cannot connect")),
        "the failed attempt on {silent_node} is not logged:\n{log}"
    );
    agent.assert_running();
    agent.stop();
    drop(held);
}

/// No node answers for minutes (one refuses connections, one accepts TCP and never answers
/// CONNECT): the first failure is logged at once, then a summary with a count about once a
/// minute, never a line per attempt.
#[test]
fn minutes_of_failed_connects_leave_a_trace_at_a_bounded_rate() {
    let mut rng = rng("minutes_of_failed_connects_leave_a_trace_at_a_bounded_rate");
    let gw = Gateway::new(&mut rng);
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let refused = free_port(); // nothing listens there
    let mut agent = Agent::start(&config(
        &gw,
        &[refused, silent_port],
        "connect_timeout_secs = 1\n",
    ));
    let t0 = Instant::now();
    let summary = "mqtt still not connected after";
    while !agent.log().contains(summary) {
        assert!(
            t0.elapsed() < Duration::from_secs(150),
            "no summary line after {:?}:\n{}",
            t0.elapsed(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = agent.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("betaas_agent::session"))
        .collect();
    eprintln!(
        "after {:.0} s without a broker, {} warning lines:\n{}",
        t0.elapsed().as_secs_f64(),
        warns.len(),
        warns.join("\n")
    );
    assert!(
        warns[0].contains("cannot connect") && warns[0].contains(&format!("127.0.0.1:{refused}")),
        "the first failure is not logged first: {warns:?}"
    );
    assert_eq!(warns.len(), 2, "one line per attempt, or none: {warns:?}");
    // "... after N s: M more failed attempts (T in all) ...": several attempts, counted.
    let more: u64 = warns[1]
        .split_once(" s: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", warns[1]));
    assert!(
        more >= 5,
        "{more} attempts counted in a minute: {}",
        warns[1]
    );
    agent.assert_running();
    drop(silent);
}

/// The agent's node hangs with the connection open (bytes swallowed, nothing answered, nothing
/// closed): the unanswered keep-alive ping (5 s) ends the connection and the agent moves to the
/// other node; the readings the hung node swallowed stay in the journal and arrive through the
/// other one.
#[test]
fn a_hung_node_is_left_on_the_keep_alive_and_no_reading_is_lost() {
    let mut rng = rng("a_hung_node_is_left_on_the_keep_alive_and_no_reading_is_lost");
    let gw = Gateway::new(&mut rng);
    let brokers: Vec<Mosquitto> = (0..2).map(|_| Mosquitto::start()).collect();
    let relays: Vec<Relay> = brokers.iter().map(|b| Relay::start(b.port)).collect();
    let ports: Vec<u16> = relays.iter().map(|r| r.port).collect();
    let mut nodes = Nodes {
        subs: brokers
            .iter()
            .map(|b| Some(b.subscribe(&gw.filter())))
            .collect(),
    };
    let _wiggle = Wiggler::start(&gw, &[THING], rng.u64(..));
    let mut agent = Agent::start(&config(&gw, &ports, ""));
    let mut seen = Seen::default();
    nodes.until_reading_on(&gw.id, &mut seen, 0, Duration::from_secs(20));
    nodes.during(
        &gw.id,
        &mut seen,
        Duration::from_millis(rng.u64(500..1500)),
        |_, _| {},
    );
    relays[0].freeze();
    let took = nodes.until_reading_on(&gw.id, &mut seen, 1, Duration::from_secs(20));
    eprintln!(
        "node 0 hung: readings through node 1 after {:.2} s (keep-alive 5 s)",
        took.as_secs_f64()
    );
    nodes.during(&gw.id, &mut seen, Duration::from_secs(2), |_, _| {});
    let from = seen.of(THING).map(|r| r.seq).min().expect("readings");
    let to = seen.max_seq(THING).expect("readings");
    seen.assert_complete(THING, from, to);
    eprintln!("seqs {from}..={to} complete");
    agent.assert_running();
    agent.stop();
}
