//! Membership without retained delivery, black box: three agents form an instance on a real
//! mosquitto, each through a proxy that withholds every retained message the broker delivers to
//! it (as RabbitMQ does for a wildcard subscription) and acknowledges it to the broker in the
//! agent's place. A member killed and restarted learns the others from their answers to its
//! signed join request — at the default heartbeat (1 s) their periodic announces come only every
//! 10 s — and refuses nothing valid meanwhile: the heartbeats it hears before the answers are
//! held and taken once the sender's announce arrives.
//!
//! Why a proxy and not mosquitto's `retain_available false`: mosquitto 2.0.11 then disconnects
//! any client that publishes a retained message (the agent's availability, its announce), which is
//! not what a broker without retained wildcard delivery does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_core::allocator::Res;
use betaas_e2e::Mosquitto;
use serde_json::Value;

mod instance_support;
use instance_support::*;

/// One MQTT control packet, whole: fixed header, remaining length, body.
fn read_packet(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut p = vec![0u8; 1];
    s.read_exact(&mut p)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        p.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let start = p.len();
    p.resize(start + len, 0);
    s.read_exact(&mut p[start..])?;
    Ok(p)
}

/// A proxy in front of the broker that drops every retained PUBLISH the broker sends to its
/// client, PUBACKing the QoS 1 ones itself so the broker's inflight window never fills.
struct NoRetainProxy {
    port: u16,
    withheld: Arc<AtomicU64>,
}

impl NoRetainProxy {
    fn start(broker: u16) -> NoRetainProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let withheld = Arc::new(AtomicU64::new(0));
        let w = withheld.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", broker)) else {
                    continue;
                };
                // Writes to the broker are whole packets under one lock: the agent's own and the
                // PUBACKs sent in its place never interleave.
                let to_server = Arc::new(Mutex::new(server.try_clone().expect("clone")));
                let (mut c_in, mut s_in) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let mut c_out = client;
                let up = to_server.clone();
                std::thread::spawn(move || {
                    while let Ok(p) = read_packet(&mut c_in) {
                        let mut s = up.lock().unwrap_or_else(|e| e.into_inner());
                        if s.write_all(&p).is_err() {
                            break;
                        }
                    }
                    let _ = up.lock().map(|s| s.shutdown(Shutdown::Both));
                });
                let w = w.clone();
                std::thread::spawn(move || {
                    while let Ok(p) = read_packet(&mut s_in) {
                        let (kind, retain, qos) = (p[0] >> 4, p[0] & 1, (p[0] >> 1) & 3);
                        if kind == 3 && retain == 1 {
                            w.fetch_add(1, Ordering::SeqCst);
                            if qos > 0 {
                                // Body after the remaining length: topic (u16 length + bytes),
                                // then the packet id.
                                let mut at = 1;
                                while p[at] & 0x80 != 0 {
                                    at += 1;
                                }
                                at += 1;
                                let tlen = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
                                let id = &p[at + 2 + tlen..at + 4 + tlen];
                                let ack = [if qos == 1 { 0x40 } else { 0x50 }, 2, id[0], id[1]];
                                let mut s = to_server.lock().unwrap_or_else(|e| e.into_inner());
                                if s.write_all(&ack).is_err() {
                                    break;
                                }
                            }
                            continue;
                        }
                        if c_out.write_all(&p).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                });
            }
        });
        NoRetainProxy { port, withheld }
    }
}

/// `heartbeat_ms` 1000 (the default; announces every 10 s), `timeout_ms` 4000.
fn at_default_heartbeat(text: String) -> String {
    text.replace("heartbeat_ms = 300", "heartbeat_ms = 1000")
        .replace("timeout_ms = 3000", "timeout_ms = 4000")
}

/// Milliseconds since midnight of an agent log line's timestamp (`2026-…T21:15:53.301379Z`).
fn log_ms(line: &str) -> Option<f64> {
    let t = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    Some(((h * 60.0 + m) * 60.0 + s) * 1000.0)
}

#[test]
fn a_restarted_member_learns_the_others_without_retained_delivery() {
    let _one = serial();
    let broker = Mosquitto::start();
    let (root, keys) = new_instance();
    let ids = ["ja", "jb", "jc"];
    let gws: Vec<Gw> = ids
        .iter()
        .map(|id| member(&keys, root.path(), id, Res::new(2, 1024, 8)))
        .collect();
    let proxies: Vec<NoRetainProxy> = ids
        .iter()
        .map(|_| NoRetainProxy::start(broker.port))
        .collect();
    let mut sub = broker.subscribe("betaas/+/health");
    let mut agents: Vec<KillOnDropOpt> = gws
        .iter()
        .zip(&proxies)
        .map(|(g, p)| Some(start_edited(g, p.port, at_default_heartbeat)))
        .collect();
    let others_up = |id: &str, h: &Value| {
        let s = member_states(h);
        ids.iter()
            .filter(|o| **o != id)
            .all(|o| s.get(*o).map(String::as_str) == Some("up"))
    };
    health_until(
        &mut sub,
        &ids,
        "the instance to form",
        Duration::from_secs(20),
        others_up,
    );

    // jb killed and restarted at once: to ja and jc it never went down (timeout 4 s); the broker
    // holds everyone's retained announce, which jb's proxy withholds.
    let before = proxies[1].withheld.load(Ordering::SeqCst);
    agents[1] = None; // SIGKILL
    let log = gws[1].dir.join("agent.log");
    let t0 = Instant::now();
    agents[1] = Some(start_edited(&gws[1], proxies[1].port, at_default_heartbeat));
    let jb = ["jb"];
    health_until(
        &mut sub,
        &jb,
        "jb to see ja and jc up",
        Duration::from_secs(8),
        others_up,
    );
    let seen_after = t0.elapsed();
    assert!(
        proxies[1].withheld.load(Ordering::SeqCst) > before,
        "the proxy withheld no retained announce from the restarted member"
    );
    // From its log: when it started, and when it learned each member.
    let text = std::fs::read_to_string(&log).expect("agent.log");
    let started = text
        .lines()
        .rev()
        .filter(|l| l.contains("starting"))
        .find_map(log_ms)
        .expect("a starting line");
    let subscribed = text
        .lines()
        .filter(|l| l.contains("subscribed"))
        .filter_map(log_ms)
        .find(|t| *t >= started)
        .expect("a subscribed line");
    let learned: Vec<f64> = ["ja", "jc"]
        .iter()
        .map(|o| {
            text.lines()
                .filter(|l| {
                    l.contains("joined the instance") && l.contains(&format!("gateway={o}"))
                })
                .filter_map(log_ms)
                .find(|t| *t >= started)
                .unwrap_or_else(|| panic!("jb never logged {o} joining:\n{text}"))
        })
        .collect();
    let rejoin = learned.iter().cloned().fold(0.0, f64::max) - subscribed;
    eprintln!(
        "restarted member: subscribed {:.0} ms after start, knew ja and jc {:.0} ms after \
         subscribing (health showed it {:.2} s after the restart); {} retained messages withheld",
        subscribed - started,
        rejoin,
        seen_after.as_secs_f64(),
        proxies[1].withheld.load(Ordering::SeqCst)
    );
    assert!(
        rejoin < 2000.0,
        "jb learned the members {rejoin:.0} ms after subscribing: not from join answers"
    );

    // Past the hold timeout (4 s): nobody refused anything, and jb asked once (one connect).
    std::thread::sleep(Duration::from_secs(5));
    let all = health_until(
        &mut sub,
        &ids,
        "health of all three",
        Duration::from_secs(5),
        |_, _| true,
    );
    for (id, h) in &all {
        let rejected = &h["instance"]["rejected"];
        assert!(
            rejected.as_object().is_some_and(|r| r.is_empty()),
            "{id} refused messages: {rejected}"
        );
        assert!(others_up(id, h), "{id}: {:?}", member_states(h));
        assert_eq!(h["instance"]["held"], 0, "{id}");
    }
    assert_eq!(all["jb"]["instance"]["joins_sent"], 1);
    let answered: u64 = ["ja", "jc"]
        .iter()
        .map(|id| all[*id]["instance"]["joins_answered"].as_u64().unwrap_or(0))
        .sum();
    assert!(answered >= 2, "ja and jc answered {answered} joins");
    drop(agents);
}

type KillOnDropOpt = Option<betaas_e2e::KillOnDrop>;
