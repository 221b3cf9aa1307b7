//! Which PUBACK acknowledges which reading, deterministically: the session (real rumqttc client and
//! event loop) against a scripted broker that records every PUBLISH and acknowledges them in an
//! order the test chooses. Instance bus messages are interleaved between journal records; the
//! journal may only ever be acknowledged up to a record whose own PUBACK came, whatever the order.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use betaas_agent::journal::Cursor;
use betaas_agent::session::{self, Channels, Session};
use rumqttc::{AsyncClient, MqttOptions};
use tokio::sync::mpsc;

/// The broker side of one connection: answers CONNECT and SUBSCRIBE, records QoS 1 PUBLISHes
/// (packet id, topic) and acknowledges exactly the ones it is told to.
struct Script {
    stream: TcpStream,
}

impl Script {
    fn accept(listener: &TcpListener) -> Script {
        let (stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut s = Script { stream };
        let (kind, _) = s.packet();
        assert_eq!(kind >> 4, 1, "CONNECT first");
        s.stream.write_all(&[0x20, 2, 0, 0]).expect("CONNACK");
        s
    }

    /// One packet: (first byte, body).
    fn packet(&mut self) -> (u8, Vec<u8>) {
        let mut b = [0u8; 1];
        self.stream.read_exact(&mut b).expect("packet type");
        let (mut len, mut mul) = (0usize, 1usize);
        loop {
            let mut d = [0u8; 1];
            self.stream.read_exact(&mut d).expect("length");
            len += usize::from(d[0] & 0x7f) * mul;
            mul *= 128;
            if d[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).expect("body");
        (b[0], body)
    }

    /// Reads until `n` QoS 1 PUBLISHes came; returns their (packet id, topic) in arrival order.
    fn publishes(&mut self, n: usize) -> Vec<(u16, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            let (kind, body) = self.packet();
            match kind >> 4 {
                3 => {
                    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let topic = String::from_utf8_lossy(&body[2..2 + tlen]).into_owned();
                    assert_eq!(kind & 0x06, 0x02, "QoS 1 on {topic}");
                    let pkid = u16::from_be_bytes([body[2 + tlen], body[3 + tlen]]);
                    got.push((pkid, topic));
                }
                8 => {
                    // SUBSCRIBE: grant every filter QoS 1.
                    let filters = count_filters(&body[2..]);
                    let mut ack = vec![0x90, (2 + filters) as u8, body[0], body[1]];
                    ack.extend(std::iter::repeat_n(1u8, filters));
                    self.stream.write_all(&ack).expect("SUBACK");
                }
                12 => self.stream.write_all(&[0xd0, 0]).expect("PINGRESP"),
                other => panic!("unexpected packet type {other}"),
            }
        }
        got
    }

    fn puback(&mut self, pkid: u16) {
        let [hi, lo] = pkid.to_be_bytes();
        self.stream.write_all(&[0x40, 2, hi, lo]).expect("PUBACK");
    }
}

fn count_filters(mut b: &[u8]) -> usize {
    let mut n = 0;
    while b.len() >= 3 {
        let l = usize::from(u16::from_be_bytes([b[0], b[1]]));
        b = &b[2 + l + 1..];
        n += 1;
    }
    n
}

fn cursor(i: u64) -> Cursor {
    Cursor {
        segment: 0,
        offset: 64 + 40 * i,
        index: i,
    }
}

/// What is published, in queue order: a journal record (its index) or a bus message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    Record(u64),
    Bus,
}

/// Queues `items` through the session, then acknowledges the publishes in `ack_order` (indices
/// into `items`), one at a time, and returns after each PUBACK the index of the record the journal
/// has been acknowledged up to (None: not at all yet).
fn run(items: &[Item], ack_order: &[usize]) -> Vec<Option<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel();
    let (incoming_tx, _incoming_rx) = mpsc::channel(8);
    let (to_broker, commands) = std::sync::mpsc::channel::<usize>();
    let queued = items.to_vec();
    let n = items.len();
    let broker = std::thread::spawn(move || {
        let mut s = Script::accept(&listener);
        let got = s.publishes(n);
        for i in commands {
            s.puback(got[i].0);
        }
        got
    });
    let seen = rt.block_on(async move {
        let mut opts = MqttOptions::new("bookkeeping", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, eventloop) = AsyncClient::new(opts.clone(), 64);
        let session = Session::new(client);
        let mut connects = session.connects();
        tokio::spawn(session::drive(
            session.clone(),
            eventloop,
            betaas_agent::mqtt::Nodes::new(vec![opts]),
            Vec::new(),
            Channels {
                incoming: incoming_tx,
                acks: acks_tx,
            },
        ));
        connects.changed().await.expect("connected");
        for item in &queued {
            match item {
                Item::Record(i) => assert!(session.publish_record(
                    "betaas/gw/things/t/state",
                    b"{}".to_vec(),
                    cursor(*i)
                )),
                Item::Bus => {
                    assert!(session.publish("betaas/lab/$instance/gw/msg", false, b"hb".to_vec()))
                }
            }
        }
        let mut seen = Vec::new();
        let mut latest = None;
        for i in ack_order {
            to_broker.send(*i).expect("broker");
            // Ample for one packet over loopback and the event loop's turn.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while let Ok(c) = acks_rx.try_recv() {
                latest = Some(c.index);
            }
            seen.push(latest);
        }
        drop(to_broker);
        seen
    });
    let got = broker.join().expect("broker");
    // The broker saw every publish, in queue order, each under its own packet id.
    let topics: Vec<bool> = got.iter().map(|(_, t)| t.ends_with("/state")).collect();
    let expected: Vec<bool> = items.iter().map(|i| matches!(i, Item::Record(_))).collect();
    assert_eq!(topics, expected, "publishes out of queue order: {got:?}");
    seen
}

#[test]
fn bus_messages_acknowledged_first_never_acknowledge_a_reading() {
    use Item::*;
    let items = [Record(0), Bus, Record(1), Bus, Bus, Record(2)];
    // Every bus message and the later readings first: nothing moves until R0's own PUBACK; then
    // everything up to R2 at once.
    let seen = run(&items, &[1, 3, 4, 5, 2, 0]);
    assert_eq!(seen, [None, None, None, None, None, Some(2)]);
    // A bus message between readings takes no reading's place: R0, then R1 only with its own.
    let seen = run(&items, &[1, 0, 3, 4, 2, 5]);
    assert_eq!(seen, [None, Some(0), Some(0), Some(0), Some(1), Some(2)]);
}

#[test]
fn a_reading_is_acknowledged_only_by_its_own_puback() {
    use Item::*;
    // B R0 B R1: acknowledge R1, then both bus messages; R0 still waits.
    let items = [Bus, Record(0), Bus, Record(1)];
    let order = [3, 0, 2, 1];
    let seen = run(&items, &order);
    assert_eq!(seen[..3], [None, None, None], "{seen:?}");
    assert_eq!(seen[3], Some(1), "{seen:?}");
}
