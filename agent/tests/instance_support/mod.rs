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
         [instance]\nname = \"lab\"\nkeys = \"{k}\"\nheartbeat_ms = 300\ntimeout_ms = 3000\ndeploy_timeout_ms = 3000\n\
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
/// gateway `gw` of the test instance `lab`.
pub fn send_signed(broker: &Mosquitto, ops: &Path, gw: &str, body: Value) {
    let (_, bytes) =
        betaas_agent::commands::vm::sign(ops, "lab", gw, body).expect("sign the request");
    broker.publish_bytes(&format!("betaas/{gw}/vm/request"), &bytes);
}

/// Waits for the result of request `id` on `gw`'s result topic.
pub fn result_of(sub: &mut Subscriber, gw: &str, id: &str) -> Value {
    let topic = format!("betaas/{gw}/vm/result");
    sub.wait_for(
        &format!("result of {id}"),
        Duration::from_secs(20),
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
