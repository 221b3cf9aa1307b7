//! The fixture's model of an OpenStack cloud (Keystone v3 + Nova v2.1), shared by the client
//! tests and the agent-level tests: the documented request and response shapes, kept in memory.
#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)] // a fixture that unwraps fails the test with the value

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{random_hex, Fixture, Req, Resp};

pub const COMPUTE: &str = "/compute/v2.1";

pub struct Server {
    pub name: String,
    pub status: String,
    /// Status the next show reports (one poll later).
    pub pending: Option<String>,
}

/// The fixture's model of Keystone + Nova.
pub struct Model {
    pub base: String,
    pub user: String,
    pub password: String,
    pub app_id: String,
    pub app_secret: String,
    pub tokens: Vec<String>,
    /// Each issued token's `expires_at`, Unix seconds (same order as `tokens`).
    pub expires: Vec<u64>,
    pub valid: HashSet<String>,
    pub ttl_secs: u64,
    pub no_compute: bool,
    pub servers: BTreeMap<String, Server>,
    pub next_id: u32,
    pub max_instances: usize,
    /// One-shot answers for `"METHOD /path"` prefixes, consumed in order.
    pub inject: VecDeque<(String, Resp)>,
    /// Every compute request hangs (the cloud went away) — set after the next create.
    pub hang_after_create: bool,
    pub hang: bool,
    /// New servers end in ERROR instead of ACTIVE.
    pub fail_build: bool,
    pub flavors: serde_json::Value,
}

impl Model {
    pub fn new() -> Model {
        Model {
            base: String::new(),
            user: "betaas".into(),
            password: format!("pw-{}", random_hex(24)),
            app_id: format!("app-{}", random_hex(8)),
            app_secret: format!("appsecret-{}", random_hex(24)),
            tokens: Vec::new(),
            expires: Vec::new(),
            valid: HashSet::new(),
            ttl_secs: 3600,
            no_compute: false,
            servers: BTreeMap::new(),
            next_id: 0,
            max_instances: 5,
            inject: VecDeque::new(),
            hang_after_create: false,
            hang: false,
            fail_build: false,
            flavors: json!([
                {"id": "f-large", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80},
                {"id": "f-tiny", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1},
                {"id": "f-small", "name": "m1.small", "vcpus": 1, "ram": 2048, "disk": 20},
                {"id": "f-medium", "name": "m1.medium", "vcpus": 2, "ram": 4096, "disk": 40},
            ]),
        }
    }
}

pub fn iso(unix: u64) -> String {
    // Civil from days (H. Hinnant).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn nova_error(status: u16, kind: &str, message: &str) -> Resp {
    Resp::json(
        status,
        json!({ kind: {"code": status, "message": message} }),
    )
}

pub fn handle(m: &mut Model, r: &Req) -> Resp {
    let line = r.line();
    if let Some(i) = m
        .inject
        .iter()
        .position(|(p, _)| line.starts_with(p.as_str()))
    {
        return m
            .inject
            .remove(i)
            .map(|(_, resp)| resp)
            .unwrap_or_else(|| Resp::new(500, ""));
    }
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/v3") => {
            return Resp::json(200, json!({"version": {"id": "v3.14", "status": "stable"}}))
        }
        ("POST", "/v3/auth/tokens") => {
            let b = r.json();
            let id = &b["auth"]["identity"];
            let ok = match id["methods"][0].as_str() {
                Some("password") => {
                    id["password"]["user"]["name"] == m.user.as_str()
                        && id["password"]["user"]["password"] == m.password.as_str()
                }
                Some("application_credential") => {
                    id["application_credential"]["id"] == m.app_id.as_str()
                        && id["application_credential"]["secret"] == m.app_secret.as_str()
                }
                _ => false,
            };
            if !ok {
                return Resp::json(
                    401,
                    json!({"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}),
                );
            }
            let token = format!("gAAAAA{}", random_hex(40));
            m.tokens.push(token.clone());
            m.expires.push(now() + m.ttl_secs);
            m.valid.insert(token.clone());
            let mut catalog = vec![
                json!({"type": "identity", "name": "keystone", "endpoints": [
                {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": format!("{}/v3", m.base)}]}),
            ];
            if !m.no_compute {
                catalog.push(json!({"type": "compute", "name": "nova", "endpoints": [
                    {"interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": "http://192.0.2.1:8774/v2.1"},
                    {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": format!("{}{COMPUTE}", m.base)}]}));
            }
            return Resp::json(
                201,
                json!({"token": {"methods": [id["methods"][0]], "expires_at": iso(m.expires[m.expires.len() - 1]),
                                 "issued_at": iso(now()), "catalog": catalog}}),
            )
            .header("X-Subject-Token", &token);
        }
        _ => {}
    }
    let Some(path) = r.path.strip_prefix(COMPUTE) else {
        return Resp::new(404, "no such path");
    };
    if !r
        .header("X-Auth-Token")
        .is_some_and(|t| m.valid.contains(t))
    {
        return Resp::json(
            401,
            json!({"error": {"code": 401, "message": "Unauthorized"}}),
        );
    }
    if m.hang {
        return Resp::new(503, "").delayed(Duration::from_secs(30));
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["flavors", "detail"]) => Resp::json(200, json!({"flavors": m.flavors})),
        ("GET", ["limits"]) => Resp::json(
            200,
            json!({"limits": {"rate": [], "absolute": {
                "maxTotalInstances": m.max_instances, "totalInstancesUsed": m.servers.len(),
                "maxTotalCores": 20, "totalCoresUsed": 0, "maxTotalRAMSize": 51200, "totalRAMUsed": 0,
                "maxServerMeta": 128, "maxTotalKeypairs": 100}}}),
        ),
        ("POST", ["servers"]) => {
            if m.servers.len() >= m.max_instances {
                return nova_error(
                    403,
                    "forbidden",
                    &format!(
                        "Quota exceeded for instances: Requested 1, but already used {} of {} instances",
                        m.servers.len(),
                        m.max_instances
                    ),
                );
            }
            let b = r.json();
            m.next_id += 1;
            let id = format!("srv-{}-{}", m.next_id, random_hex(6));
            let done = if m.fail_build { "ERROR" } else { "ACTIVE" };
            m.servers.insert(
                id.clone(),
                Server {
                    name: b["server"]["name"].as_str().unwrap_or("").into(),
                    status: "BUILD".into(),
                    pending: Some(done.into()),
                },
            );
            if m.hang_after_create {
                m.hang = true;
            }
            Resp::json(
                202,
                json!({"server": {"id": id, "links": [], "adminPass": "x", "OS-DCF:diskConfig": "MANUAL"}}),
            )
        }
        ("GET", [q]) if q.starts_with("servers?") => {
            let want = path
                .split_once("name=")
                .map(|(_, n)| n.replace("%5E", "").replace("%24", ""))
                .unwrap_or_default();
            let list: Vec<_> = m
                .servers
                .iter()
                .filter(|(_, s)| s.name == want)
                .map(|(id, s)| json!({"id": id, "name": s.name, "links": []}))
                .collect();
            Resp::json(200, json!({ "servers": list }))
        }
        ("GET", ["servers", id]) => match m.servers.get_mut(*id) {
            None => nova_error(404, "itemNotFound", "Instance could not be found."),
            Some(s) => {
                let shown = s.status.clone();
                if let Some(p) = s.pending.take() {
                    s.status = p;
                }
                Resp::json(
                    200,
                    json!({"server": {"id": id, "name": s.name, "status": shown}}),
                )
            }
        },
        ("POST", ["servers", id, "action"]) => {
            let b = r.json();
            let Some(s) = m.servers.get_mut(*id) else {
                return nova_error(404, "itemNotFound", "Instance could not be found.");
            };
            let (from, to) = if b.get("os-stop").is_some_and(|v| v.is_null()) {
                ("ACTIVE", "SHUTOFF")
            } else if b.get("os-start").is_some_and(|v| v.is_null()) {
                ("SHUTOFF", "ACTIVE")
            } else {
                return nova_error(400, "badRequest", "unknown action");
            };
            if s.status != from {
                return nova_error(
                    409,
                    "conflictingRequest",
                    &format!("Cannot in vm_state {}", s.status.to_lowercase()),
                );
            }
            s.pending = Some(to.into());
            Resp::new(202, "")
        }
        ("DELETE", ["servers", id]) => match m.servers.remove(*id) {
            Some(_) => Resp::new(204, ""),
            None => nova_error(404, "itemNotFound", "Instance could not be found."),
        },
        _ => Resp::new(404, "unknown"),
    }
}

pub type Shared = Arc<Mutex<Model>>;

pub async fn fixture(model: Model) -> (Fixture, Shared) {
    let m = Arc::new(Mutex::new(model));
    let h = m.clone();
    let fx = Fixture::start(Arc::new(move |r: &Req| handle(&mut h.lock().unwrap(), r))).await;
    m.lock().unwrap().base = fx.url();
    (fx, m)
}
