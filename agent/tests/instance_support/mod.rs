//! Helpers of the tests that run real agents as an instance on one real mosquitto: admission,
//! configs, spawning, reading health and VM results off the bus.
#![allow(dead_code)] // each test file uses a part

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use betaas_core::allocator::{Gateway, InstanceView, Res, Role, Template, Virt};
use betaas_e2e::{KillOnDrop, Mosquitto, Subscriber};
use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_betaas-agent");

/// One instance at a time: a dozen agents at once on two cores would miss heartbeats for want of
/// CPU, which is not what these tests are about.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn cli(args: &[&str]) {
    let out = Command::new(AGENT).args(args).output().expect("agent");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Gw {
    pub id: String,
    pub cap: Res,
    pub dir: PathBuf,
}

pub fn templates() -> Vec<Template> {
    vec![
        Template {
            name: "app".into(),
            vcpus: 1,
            mem_mb: 256,
            disk_gb: 1,
            role: Role::AppLight,
        },
        Template {
            name: "big".into(),
            vcpus: 2,
            mem_mb: 1024,
            disk_gb: 4,
            role: Role::Compute,
        },
    ]
}

pub fn config(gw: &Gw, port: u16, instance_keys: &Path) -> String {
    let mut t = String::new();
    for tpl in templates() {
        t += &format!(
            "[[instance.templates]]\nname = \"{}\"\nvcpus = {}\nmem_mb = {}\ndisk_gb = {}\nrole = \"{}\"\n",
            tpl.name,
            tpl.vcpus,
            tpl.mem_mb,
            tpl.disk_gb,
            serde_json::to_value(tpl.role).expect("role").as_str().expect("role name").to_owned()
        );
    }
    format!(
        "gateway_id = \"{id}\"\ndata_dir = \"{d}/data\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         [health]\ninterval_secs = 1\n\
         [instance]\nname = \"lab\"\nkeys = \"{k}\"\nheartbeat_ms = 300\ntimeout_ms = 3000\ndeploy_timeout_ms = 15000\n\
         virt = \"kvm\"\npowerful = true\ncapacity = {{ cpus = {c}, mem_mb = {m}, disk_gb = {g} }}\n{t}",
        id = gw.id,
        d = gw.dir.display(),
        k = instance_keys.display(),
        c = gw.cap.cpus,
        m = gw.cap.mem_mb,
        g = gw.cap.disk_gb,
    )
}

/// Makes gateway `id`'s key and credential under `dir/keys`, admitted by the instance key in
/// `instance` (as `betaas-agent instance admit` does at flash time).
pub fn admit(instance: &Path, id: &str, dir: &Path) {
    let key = instance.join("instance.key");
    let out = dir.join("keys");
    let (key, out) = (key.to_str().expect("utf8"), out.to_str().expect("utf8"));
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        key,
        "--gateway",
        id,
        "--out",
        out,
    ]);
}

/// A scratch directory with a fresh instance key pair in `<root>/instance` (as `betaas-agent
/// instance keygen` makes it).
pub fn new_instance() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = root.path().join("instance");
    cli(&["instance", "keygen", "--out", keys.to_str().expect("utf8")]);
    (root, keys)
}

/// Gateway `id` admitted into the instance whose keys are in `instance`, its files under `root/<id>`.
pub fn member(instance: &Path, root: &Path, id: &str, cap: Res) -> Gw {
    let dir = root.join(id);
    admit(instance, id, &dir);
    Gw {
        id: id.into(),
        cap,
        dir,
    }
}

/// Runs `cmd` (the agent, possibly wrapped) on `gw`'s agent.toml, its log in `gw`'s directory.
pub fn spawn(mut cmd: Command, gw: &Gw) -> KillOnDrop {
    let log = std::fs::File::create(gw.dir.join("agent.log")).map_or(Stdio::null(), Stdio::from);
    KillOnDrop(
        cmd.arg("--config")
            .arg(gw.dir.join("agent.toml"))
            .stderr(log)
            .spawn()
            .expect("agent"),
    )
}

pub fn start(gw: &Gw, port: u16, keys: &Path) -> KillOnDrop {
    std::fs::write(gw.dir.join("agent.toml"), config(gw, port, keys)).expect("agent.toml");
    spawn(Command::new(AGENT), gw)
}

/// Like [`start`] on the gateway's own keys, with its config text passed through `edit` first.
pub fn start_edited(gw: &Gw, port: u16, edit: impl FnOnce(String) -> String) -> KillOnDrop {
    let text = edit(config(gw, port, &gw.dir.join("keys")));
    std::fs::write(gw.dir.join("agent.toml"), text).expect("agent.toml");
    spawn(Command::new(AGENT), gw)
}

/// Stops an agent cleanly (SIGTERM: it saves its state) and waits for it; panics unless it
/// exited 0 within 10 s.
pub fn stop_cleanly(mut agent: KillOnDrop) {
    let st = betaas_e2e::terminate(&mut agent.0, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "the agent did not stop cleanly on SIGTERM: {st:?}"
    );
}

/// Sends `signal` (STOP, CONT, ...) to an agent.
pub fn signal(agent: &KillOnDrop, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &agent.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{signal}");
}

/// Messages as published, byte for byte (instance bus messages are binary): mosquitto_sub
/// printing each payload in hex.
pub struct RawSub {
    _child: KillOnDrop,
    rx: std::sync::mpsc::Receiver<(String, Vec<u8>)>,
    /// What came before the subscription was known to be active (retained messages).
    early: std::collections::VecDeque<(String, Vec<u8>)>,
}

impl RawSub {
    /// Subscribed to `filter` (and active: a retained marker has come back) when it returns.
    pub fn start(broker: &Mosquitto, filter: &str) -> RawSub {
        use std::io::BufRead;
        let ready = format!("betaas-e2e/raw-ready/{}", fastrand::u64(..));
        let port = broker.port.to_string();
        let st = Command::new("mosquitto_pub")
            .args([
                "-h",
                &broker.host,
                "-p",
                &port,
                "-t",
                &ready,
                "-r",
                "-q",
                "1",
                "-m",
                "1",
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(st.success(), "mosquitto_pub {ready}");
        let mut child = Command::new("mosquitto_sub")
            .args([
                "-h",
                &broker.host,
                "-p",
                &port,
                "-t",
                filter,
                "-t",
                &ready,
                "-q",
                "1",
                "-F",
                "%t %x",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let (topic, hex) = line.rsplit_once(' ').unwrap_or((&line, ""));
                let bytes = (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                    .collect();
                if tx.send((topic.to_owned(), bytes)).is_err() {
                    break;
                }
            }
        });
        let mut sub = RawSub {
            _child: KillOnDrop(child),
            rx,
            early: Default::default(),
        };
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok((t, _)) if t == ready => return sub,
                Ok(m) => sub.early.push_back(m),
                Err(e) => panic!("raw subscription to {filter} not active: {e}"),
            }
        }
    }

    /// The next message within `timeout`, if any.
    pub fn next(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.early
            .pop_front()
            .or_else(|| self.rx.recv_timeout(timeout).ok())
    }

    /// Every message that arrives within `quiet` of the previous one.
    pub fn drain(&mut self, quiet: Duration) -> Vec<(String, Vec<u8>)> {
        std::iter::from_fn(|| self.next(quiet)).collect()
    }
}

/// The envelope of a signed instance message (not verified).
pub fn envelope_of(bytes: &[u8]) -> betaas_core::instance::msg::Envelope {
    betaas_core::instance::msg::decode(bytes)
        .expect("an instance message")
        .0
}

/// The latest health of each gateway, read from the bus until `until` holds for all of `ids`.
pub fn health_until(
    sub: &mut Subscriber,
    ids: &[&str],
    what: &str,
    timeout: Duration,
    until: impl Fn(&str, &Value) -> bool,
) -> BTreeMap<String, Value> {
    let mut latest = BTreeMap::new();
    sub.wait_for(what, timeout, |t, p| {
        let id = t.strip_prefix("betaas/")?.strip_suffix("/health")?;
        let h: Value = serde_json::from_str(p).ok()?;
        latest.insert(id.to_owned(), h);
        ids.iter()
            .all(|id| latest.get(*id).is_some_and(|h| until(id, h)))
            .then_some(())
    });
    latest
}

pub fn member_states(h: &Value) -> BTreeMap<String, String> {
    h["instance"]["members"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v["state"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A client ("ops") admitted to the instance whose keys are in `instance`: its keys directory
/// under `root`, for signed VM requests.
pub fn client(instance: &Path, root: &Path) -> PathBuf {
    let out = root.join("ops");
    let key = instance.join("instance.key");
    cli(&[
        "instance",
        "admit",
        "--instance-key",
        key.to_str().expect("utf8"),
        "--client",
        "ops",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    out
}

/// Publishes `body` (a VM request or release with its `"id"`) signed by the client `ops` to
/// gateway `gw` of the test instance `lab`. Returns the exact bytes published (to replay them).
pub fn send_signed(broker: &Mosquitto, ops: &Path, gw: &str, body: Value) -> Vec<u8> {
    let (_, bytes) =
        betaas_agent::commands::vm::sign(ops, "lab", gw, body).expect("sign the request");
    broker.publish_bytes(&format!("betaas/{gw}/vm/request"), &bytes);
    bytes
}

/// Waits for the result of request `id` on `gw`'s result topic. Generous: an asked gateway makes
/// its replay floors durable (an fsync) before it answers, and that takes seconds when the disk is
/// busy with other writeback (CI's machine builds images beside the tests).
pub fn result_of(sub: &mut Subscriber, gw: &str, id: &str) -> Value {
    let topic = format!("betaas/{gw}/vm/result");
    sub.wait_for(
        &format!("result of {id}"),
        Duration::from_secs(90),
        |t, p| {
            (t == topic)
                .then(|| serde_json::from_str::<Value>(p).expect("json"))
                .filter(|r| r["id"] == id)
        },
    )
}

/// A signed VM request for `template` on `gw`, and its result.
pub fn request(
    broker: &Mosquitto,
    sub: &mut Subscriber,
    ops: &Path,
    gw: &str,
    id: &str,
    template: &str,
) -> Value {
    let body = serde_json::json!({"id": id, "template": template});
    send_signed(broker, ops, gw, body);
    result_of(sub, gw, id)
}

pub fn view(gws: &[&Gw], used: &BTreeMap<&str, Res>) -> InstanceView {
    InstanceView {
        gateways: gws
            .iter()
            .map(|g| Gateway {
                id: g.id.clone(),
                capacity: g.cap,
                used: used.get(g.id.as_str()).copied().unwrap_or_default(),
                forecast_free: None,
                virt: Virt::Kvm,
                trust: 0.8,
                battery: None,
                vms: used.get(g.id.as_str()).map_or(0, |_| 1),
                powerful: true,
            })
            .collect(),
        templates: templates(),
        remotes: vec![],
    }
}

/// A network namespace with a veth pair to the host: a gateway on another "machine" whose link
/// the test can cut. Removed (with its veth) on drop.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        let n = fastrand::u32(1..250);
        let name = format!("betaas-p{}-{n}", std::process::id());
        let (host_if, ns_if) = (format!("vbh{n}"), format!("vbn{n}"));
        let (host_ip, ns_ip) = (format!("10.213.{n}.1"), format!("10.213.{n}.2"));
        let ip = |args: &[&str]| {
            let st = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Cuts (`false`) or restores the link: on the host side, so the namespace sees a dead wire.
    pub fn link(&self, up: bool) {
        let st = Command::new("ip")
            .args(["link", "set", &self.host_if, if up { "up" } else { "down" }])
            .status()
            .expect("ip");
        assert!(st.success());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
