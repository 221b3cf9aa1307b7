//! The instance broker configuration the image ships (image/rootfs/etc/betaas/mosquitto/
//! instance.conf) with users and ACL from image/instance-broker.sh, on a real mosquitto: each
//! gateway publishes only on its own subtree and its own instance topics, clients only send VM
//! requests and read results, Home Assistant reads everything and sends commands, anonymous
//! clients and wrong passwords are refused, a payload over 64 KiB is dropped by the broker, and
//! real agents with `username` / `password_file` form their instance through it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use betaas_e2e::{free_port, spawn_agent, wait_until, KillOnDrop};
use serde_json::Value;

const BUS: &str = "betaas/lab/$instance";

/// The repository root (this test lives in agent/).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_owned()
}

/// The generated users and ACL under the shipped config, on a loopback port.
struct Broker {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    port: u16,
    gw1: String,
    gw2: String,
    _child: KillOnDrop,
}

impl Broker {
    fn start() -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        // Random names: nothing here can pass on a leftover file or a fixed string.
        let gw1 = format!("gw1-{}", fastrand::u32(..));
        let gw2 = format!("gw2-{}", fastrand::u32(..));
        let out = Command::new(repo().join("image/instance-broker.sh"))
            .args(["--out", s(&dir.join("gen")), "--instance", "lab"])
            .args(["--gateway", &gw1, "--gateway", &gw2, "--client", "app1"])
            .args(["--homeassistant", "--device", "zb=zigbee2mqtt/#"])
            .output()
            .expect("image/instance-broker.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let shipped =
            std::fs::read_to_string(repo().join("image/rootfs/etc/betaas/mosquitto/instance.conf"))
                .expect("the shipped instance.conf");
        // Only what differs on a test host: port, paths, running as root, logging.
        let mut conf = shipped.clone();
        for (from, to) in [
            ("listener 1883\n", format!("listener {port} 127.0.0.1\n")),
            ("user mosquitto\n", "user root\n".into()),
            (
                "/run/betaas/mosquitto/",
                format!("{}/gen/boot/mosquitto/", dir.display()),
            ),
            (
                "/var/lib/betaas/mosquitto/",
                format!("{}/persist/", dir.display()),
            ),
            ("log_dest syslog\n", "log_dest stderr\n".into()),
        ] {
            assert!(conf.contains(from), "instance.conf has no {from:?}");
            conf = conf.replace(from, &to);
        }
        for line in [
            "allow_anonymous false",
            "message_size_limit 65536",
            "persistence true",
        ] {
            assert!(shipped.lines().any(|l| l == line), "instance.conf: {line}");
        }
        std::fs::create_dir(dir.join("persist")).expect("persist");
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("conf");
        let child = KillOnDrop(
            Command::new("mosquitto")
                .arg("-c")
                .arg(dir.join("mosquitto.conf"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("mosquitto.log")).expect("log"))
                .spawn()
                .expect("mosquitto (installed by image/host-deps.sh)"),
        );
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Broker {
            _tmp: tmp,
            dir,
            port,
            gw1,
            gw2,
            _child: child,
        }
    }

    /// The generated password file of `user`.
    fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join("gen/passwords").join(user)
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.password_file(user))
            .expect("password")
            .trim_end()
            .to_owned()
    }

    fn auth(&self, user: Option<&str>) -> Vec<String> {
        let mut a = vec!["-p".into(), self.port.to_string()];
        if let Some(u) = user {
            a.extend(["-u".into(), u.into(), "-P".into(), self.password(u)]);
        }
        a
    }

    /// mosquitto_pub at QoS 1 (it waits for the PUBACK) as `user` (None: anonymous); whether the
    /// broker let the client in and took the message. A message the ACL refuses is taken and
    /// dropped: only subscribers tell.
    fn publish_as(&self, user: Option<&str>, topic: &str, payload: &[u8], retain: bool) -> bool {
        let mut child = Command::new("mosquitto_pub")
            .args(self.auth(user))
            .args(["-q", "1", "-t", topic, "-s"])
            .args(retain.then_some("-r"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_pub");
        // A client the broker refuses may be gone before its stdin is read: its status tells.
        let _ = child.stdin.take().expect("stdin").write_all(payload);
        child.wait().expect("mosquitto_pub").success()
    }

    fn publish(&self, user: &str, topic: &str, payload: &str) {
        assert!(
            self.publish_as(Some(user), topic, payload.as_bytes(), false),
            "{user} could not publish on {topic}"
        );
    }

    /// A subscriber as `user` on `filters`, subscribed (SUBACK seen) when this returns.
    fn subscribe(&self, user: &str, filters: &[&str]) -> Sub {
        // stdbuf: -d's lines go through stdio, which would hold them back in a pipe.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(self.auth(Some(user)))
            .args(filters.iter().flat_map(|f| ["-t", f]))
            .args(["-q", "1", "-v", "-d"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                // -d: "Client … received SUBACK", "Subscribed (mid: 1): 1", … ; -v: "topic payload".
                let msg = if line.starts_with("Client ") || line.starts_with("Subscribed (") {
                    Line::Debug(line)
                } else {
                    let (t, p) = line.split_once(' ').unwrap_or((&line, ""));
                    Line::Message(t.to_owned(), p.to_owned())
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let mut sub = Sub {
            _child: KillOnDrop(child),
            rx,
            got: Vec::new(),
        };
        sub.until(
            "the SUBACK",
            |l| matches!(l, Line::Debug(d) if d.starts_with("Subscribed (")),
        );
        sub
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

enum Line {
    Debug(String),
    Message(String, String),
}

struct Sub {
    _child: KillOnDrop,
    rx: Receiver<Line>,
    /// Every message received so far: (topic, payload).
    got: Vec<(String, String)>,
}

impl Sub {
    fn until(&mut self, what: &str, mut f: impl FnMut(&Line) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{e} waiting for {what}; got {:?}", self.got));
            if let Line::Message(t, p) = &line {
                self.got.push((t.clone(), p.clone()));
            }
            if f(&line) {
                return;
            }
        }
    }

    /// Waits for `payload` on `topic`.
    fn expect(&mut self, topic: &str, payload: &str) {
        self.until(
            &format!("{payload} on {topic}"),
            |l| matches!(l, Line::Message(t, p) if t == topic && p == payload),
        );
    }

    fn saw(&self, payload: &str) -> bool {
        self.got.iter().any(|(_, p)| p == payload)
    }
}

fn token(what: &str) -> String {
    format!("{what}-{}", fastrand::u64(..))
}

#[test]
fn a_gateway_publishes_only_on_its_own_subtree_and_instance_topics() {
    let b = Broker::start();
    let (gw1, gw2) = (b.gw1.as_str(), b.gw2.as_str());
    let mut ha = b.subscribe("homeassistant", &["betaas/#", "homeassistant/#"]);
    let mut peer = b.subscribe(gw2, &[&format!("{BUS}/+/+"), &format!("betaas/{gw1}/#")]);

    // Refused: another gateway's subtree and its instance topics (taken, never delivered).
    let forged = [
        (
            format!("betaas/{gw2}/things/t/state"),
            token("forged-state"),
        ),
        (format!("betaas/{gw2}/vm/result"), token("forged-result")),
        (format!("{BUS}/{gw2}/announce"), token("forged-announce")),
        (format!("{BUS}/{gw2}/msg"), token("forged-msg")),
        (format!("betaas/lab/{gw1}/x"), token("outside")),
    ];
    for (topic, payload) in &forged {
        b.publish(gw1, topic, payload);
    }
    // Allowed, after them: its own subtree, its instance topics, its discovery configs.
    let own = [
        (format!("betaas/{gw1}/health"), token("health")),
        (format!("betaas/{gw1}/things/t/state"), token("state")),
        (format!("{BUS}/{gw1}/msg"), token("msg")),
        (
            format!("homeassistant/sensor/{gw1}_t/config"),
            token("disc"),
        ),
        (format!("{BUS}/{gw1}/announce"), token("announce")),
    ];
    for (topic, payload) in &own {
        b.publish(gw1, topic, payload);
    }
    for (topic, payload) in &own {
        ha.expect(topic, payload);
    }
    peer.expect(&own[4].0, &own[4].1);
    for (topic, payload) in &forged {
        assert!(
            !ha.saw(payload) && !peer.saw(payload),
            "{gw1} published on {topic}"
        );
    }
    // gw2 reads the instance bus, not gw1's subtree.
    assert!(peer.saw(&own[2].1), "{:?}", peer.got);
    assert!(
        !peer.saw(&own[0].1) && !peer.saw(&own[1].1),
        "{:?}",
        peer.got
    );
}

#[test]
fn anonymous_clients_and_wrong_passwords_are_refused() {
    let b = Broker::start();
    let mut ha = b.subscribe("homeassistant", &["betaas/#"]);
    let topic = format!("betaas/{}/availability", b.gw1);
    let anon = token("anonymous");
    assert!(!b.publish_as(None, &topic, anon.as_bytes(), false));
    let wrong = token("wrong");
    let st = Command::new("mosquitto_pub")
        .args(["-p", &b.port.to_string(), "-u", &b.gw1, "-P", "not-it"])
        .args(["-q", "1", "-t", &topic, "-m", &wrong])
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub");
    assert!(!st.success());
    // A user's password is not another's.
    let swapped = token("swapped");
    let st = Command::new("mosquitto_pub")
        .args([
            "-p",
            &b.port.to_string(),
            "-u",
            &b.gw1,
            "-P",
            &b.password(&b.gw2),
        ])
        .args(["-q", "1", "-t", &topic, "-m", &swapped])
        .stderr(Stdio::null())
        .status()
        .expect("mosquitto_pub");
    assert!(!st.success());
    let ok = token("online");
    b.publish(&b.gw1, &topic, &ok);
    ha.expect(&topic, &ok);
    assert!(!ha.saw(&anon) && !ha.saw(&wrong) && !ha.saw(&swapped));
    let log = std::fs::read_to_string(b.dir.join("mosquitto.log")).expect("log");
    assert!(log.contains("not authorised"), "{log}");
}

#[test]
fn a_payload_over_64_kib_is_dropped_by_the_broker() {
    betaas_e2e::seeded();
    let b = Broker::start();
    let topic = format!("{BUS}/{}/announce", b.gw1);
    let mut peer = b.subscribe(&b.gw2, &[&format!("{BUS}/+/+")]);
    // Exactly the limit passes (and is retained); one mebibyte is taken and dropped.
    let at_limit: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(65_536)
        .collect();
    assert!(b.publish_as(Some(&b.gw1), &topic, at_limit.as_bytes(), true));
    peer.expect(&topic, &at_limit);
    let big = vec![b'x'; 1 << 20];
    assert!(b.publish_as(Some(&b.gw1), &topic, &big, true));
    let after = token("after");
    b.publish(&b.gw1, &format!("{BUS}/{}/msg", b.gw1), &after);
    peer.expect(&format!("{BUS}/{}/msg", b.gw1), &after);
    assert!(
        peer.got.iter().all(|(_, p)| p.len() <= 65_536),
        "the 1 MiB message was delivered"
    );
    // A newcomer gets the last accepted retained announce, not the dropped one.
    let mut newcomer = b.subscribe(&b.gw2, &[&topic]);
    newcomer.expect(&topic, &at_limit);
    let mut sub = b.subscribe("homeassistant", &["homeassistant/status"]);
    b.publish("homeassistant", "homeassistant/status", "online");
    sub.expect("homeassistant/status", "online");
    assert_eq!(newcomer.got.len(), 1, "only the retained announce");
    let log = std::fs::read_to_string(b.dir.join("mosquitto.log")).expect("log");
    assert!(!log.contains("disconnected, not authorised"), "{log}");
}

#[test]
fn a_client_sends_vm_requests_and_reads_results_only() {
    let b = Broker::start();
    let gw1 = b.gw1.as_str();
    let mut gw = b.subscribe(gw1, &[&format!("betaas/{gw1}/#")]);
    let mut app = b.subscribe("app1", &["betaas/#"]);
    let forged = [
        (format!("betaas/{gw1}/things/x/state"), token("state")),
        (format!("betaas/{gw1}/things/x/set"), token("set")),
        (format!("betaas/{gw1}/availability"), token("avail")),
        (format!("{BUS}/{gw1}/msg"), token("bus")),
    ];
    for (topic, payload) in &forged {
        b.publish("app1", topic, payload);
    }
    let request = token("request");
    b.publish("app1", &format!("betaas/{gw1}/vm/request"), &request);
    gw.expect(&format!("betaas/{gw1}/vm/request"), &request);
    for (topic, payload) in &forged {
        assert!(!gw.saw(payload), "app1 published on {topic}");
    }
    let health = token("health");
    b.publish(gw1, &format!("betaas/{gw1}/health"), &health);
    let result = token("result");
    b.publish(gw1, &format!("betaas/{gw1}/vm/result"), &result);
    app.expect(&format!("betaas/{gw1}/vm/result"), &result);
    assert!(!app.saw(&health), "a client reads only vm/result");
}

#[test]
fn home_assistant_commands_things_and_devices_feed_gateways() {
    let b = Broker::start();
    let gw1 = b.gw1.as_str();
    let mut gw = b.subscribe(
        gw1,
        &[
            &format!("betaas/{gw1}/things/+/set"),
            "homeassistant/status",
            "zigbee2mqtt/#",
        ],
    );
    let forged = token("forged-availability");
    b.publish(
        "homeassistant",
        &format!("betaas/{gw1}/things/r/state"),
        &forged,
    );
    let set = token("set");
    b.publish("homeassistant", &format!("betaas/{gw1}/things/r/set"), &set);
    gw.expect(&format!("betaas/{gw1}/things/r/set"), &set);
    b.publish("homeassistant", "homeassistant/status", "online");
    gw.expect("homeassistant/status", "online");
    let reading = token("reading");
    b.publish("zb", "zigbee2mqtt/room", &reading);
    gw.expect("zigbee2mqtt/room", &reading);
    // A device writes only its own tree.
    let forged_set = token("device-set");
    b.publish("zb", &format!("betaas/{gw1}/things/r/set"), &forged_set);
    let last = token("last");
    b.publish(
        "homeassistant",
        &format!("betaas/{gw1}/things/r/set"),
        &last,
    );
    gw.expect(&format!("betaas/{gw1}/things/r/set"), &last);
    assert!(!gw.saw(&forged_set) && !gw.saw(&forged));
}

fn cli(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .args(args)
        .output()
        .expect("betaas-agent");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agents_with_their_own_users_form_the_instance_and_read_their_devices() {
    betaas_e2e::seeded();
    let b = Broker::start();
    let root = tempfile::tempdir().expect("tempdir");
    let inst = root.path().join("inst");
    cli(&["instance", "keygen", "--out", s(&inst)]);
    let mut ha = b.subscribe("homeassistant", &["betaas/#", "homeassistant/#"]);
    let mut agents = Vec::new();
    for gw in [&b.gw1, &b.gw2] {
        let d = root.path().join(gw);
        cli(&[
            "instance",
            "admit",
            "--instance-key",
            s(&inst.join("instance.key")),
            "--gateway",
            gw,
            "--out",
            s(&d.join("keys")),
        ]);
        // gw1 offers no room: a request on it is placed on gw2 over the bus.
        let (cpus, mem, disk) = if *gw == b.gw1 {
            (0, 0, 0)
        } else {
            (2, 1024, 8)
        };
        let toml = format!(
            "gateway_id = \"{gw}\"\ndata_dir = \"{d}/data\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{gw}\"\npassword_file = \"{pw}\"\n\
             [health]\ninterval_secs = 1\n\
             [instance]\nname = \"lab\"\nkeys = \"{d}/keys\"\nheartbeat_ms = 300\ntimeout_ms = 3000\n\
             virt = \"kvm\"\ncapacity = {{ cpus = {cpus}, mem_mb = {mem}, disk_gb = {disk} }}\n\
             [[instance.templates]]\nname = \"app\"\nvcpus = 1\nmem_mb = 256\ndisk_gb = 1\nrole = \"app-light\"\n\
             [[things]]\nid = \"room\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"zigbee2mqtt/room\"\n\
             field = \"/temperature\"\nunit = \"°C\"\n",
            d = d.display(),
            port = b.port,
            pw = b.password_file(gw).display(),
        );
        std::fs::create_dir_all(&d).expect("dir");
        agents.push(spawn_agent(env!("CARGO_BIN_EXE_betaas-agent"), &d, &toml));
    }
    let (gw1, gw2) = (b.gw1.clone(), b.gw2.clone());
    let (mut up1, mut up2) = (false, false);
    let mut online = std::collections::HashSet::new();
    ha.until("both gateways online and each seeing the other up", |l| {
        let Line::Message(t, p) = l else { return false };
        if t.ends_with("/availability") && p == "online" {
            online.insert(t.clone());
        }
        let h: Value = serde_json::from_str(p).unwrap_or_default();
        if *t == format!("betaas/{gw1}/health") {
            up1 = h["instance"]["members"][&gw2]["state"] == "up";
        } else if *t == format!("betaas/{gw2}/health") {
            up2 = h["instance"]["members"][&gw1]["state"] == "up";
        }
        up1 && up2 && online.len() == 2
    });
    // Discovery configs were accepted; a device's reading reaches both gateways' things.
    assert!(
        ha.got
            .iter()
            .any(|(t, _)| *t == format!("homeassistant/sensor/{gw1}_room/config")),
        "{:?}",
        ha.got.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    let value = fastrand::u32(100..900) as f64 / 10.0;
    b.publish(
        "zb",
        "zigbee2mqtt/room",
        &format!("{{\"temperature\":{value}}}"),
    );
    // Both gateways' readings, in whichever order they come.
    let mut read = std::collections::HashSet::new();
    ha.until("the reading on both gateways' state topics", |l| {
        if let Line::Message(t, p) = l {
            for gw in [&gw1, &gw2] {
                if *t == format!("betaas/{gw}/things/room/state")
                    && serde_json::from_str::<Value>(p).is_ok_and(|v| v["value"] == value)
                {
                    read.insert(gw.clone());
                }
            }
        }
        read.len() == 2
    });

    // A client's signed VM request on gw1 (no room) is placed on gw2; the result comes back to
    // the client through the ACL (`betaas-agent vm request`, the client's key and MQTT user).
    let client = root.path().join("app1");
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        s(&inst.join("instance.key")),
        "--client",
        "app1",
        "--out",
        s(&client),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .args(["vm", "request", "--mqtt", &format!("127.0.0.1:{}", b.port)])
        .args(["--instance", "lab", "--gateway", &gw1, "--template", "app"])
        .args([
            "--keys",
            s(&client),
            "--timeout",
            "20",
            "--mqtt-user",
            "app1",
        ])
        .arg("--mqtt-password-file")
        .arg(b.password_file("app1"))
        .output()
        .expect("betaas-agent vm request");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        (r["decision"].as_str(), r["target"].as_str()),
        (Some("local"), Some(gw2.as_str())),
        "{r}"
    );
    assert!(out.status.success(), "{r}");

    // A member's credentials misused: a 1 MiB retained message on its own announce topic. The
    // broker drops it, so it never reaches (and never resets) anyone's client: gw2 restarted
    // still joins at once, nobody's connection was reset by an oversized message.
    let junk = vec![0x5a; 1024 * 1024];
    b.publish_as(
        Some(&gw1),
        &format!("betaas/lab/$instance/{gw1}/announce"),
        &junk,
        true,
    );
    agents.truncate(1); // gw2's agent stops
    let d = root.path().join(&gw2);
    let toml = std::fs::read_to_string(d.join("agent.toml")).expect("gw2's agent.toml");
    agents.push(spawn_agent(env!("CARGO_BIN_EXE_betaas-agent"), &d, &toml));
    let restarted = std::time::Instant::now();
    let (mut ok1, mut ok2) = (false, false);
    ha.until("both up again after the oversized retained message", |l| {
        let Line::Message(t, p) = l else { return false };
        let h: Value = serde_json::from_str(p).unwrap_or_default();
        let fine = |other: &str| {
            h["instance"]["members"][other]["state"] == "up" && h["mqtt"]["oversized"] == 0
        };
        if *t == format!("betaas/{gw1}/health") {
            ok1 = fine(&gw2);
        } else if *t == format!("betaas/{gw2}/health") {
            ok2 = fine(&gw1) && h["uptime_s"].as_u64().is_some_and(|u| u < 60);
        }
        ok1 && ok2
    });
    println!(
        "1 MiB retained on an announce topic: dropped by the broker; gw2 restarted and saw gw1 up {:.1} s later",
        restarted.elapsed().as_secs_f64()
    );
    drop(agents);
}
