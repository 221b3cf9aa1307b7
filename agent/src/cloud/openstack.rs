//! OpenStack: Keystone v3 tokens and Nova servers.
//!
//! - Identity v3 `POST /v3/auth/tokens` with the `password` (user + project scope) or
//!   `application_credential` method; the token comes in the `X-Subject-Token` header, its
//!   `expires_at` and service catalog in the body. The token is cached until `token_margin` before
//!   it expires and renewed once when Nova answers 401.
//! - The compute endpoint is the catalog's `compute` service, `public` interface (configurable,
//!   optionally per region).
//! - Nova: `POST /servers` (image + the smallest flavor that fits), `POST /servers/{id}/action`
//!   with `{"os-start": null}` / `{"os-stop": null}`, `DELETE /servers/{id}`, `GET /servers/{id}`,
//!   `GET /flavors/detail`, `GET /limits` (absolute limits: the project's quota and usage).

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::debug;

use super::{
    excerpt, http_client, Capacity, Cloud, CloudError, Credentials, Secret, Timeouts, VmSpec,
    VmStatus,
};

pub struct OpenStack {
    name: String,
    /// The Identity v3 URL, ending in `/v3`.
    identity: String,
    credentials: Credentials,
    interface: String,
    region: Option<String>,
    http: reqwest::Client,
    t: Timeouts,
    token: Mutex<Option<Token>>,
}

#[derive(Clone)]
struct Token {
    value: Secret,
    /// Unix seconds.
    expires: u64,
    compute: String,
}

impl std::fmt::Debug for OpenStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStack")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Flavor {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub vcpus: u32,
    /// MB.
    pub ram: u64,
    /// GB.
    pub disk: u64,
}

/// The smallest flavor (memory, then vCPUs, disk, name) that has at least what the template asks.
pub fn choose_flavor(flavors: &[Flavor], vcpus: u32, mem_mb: u64, disk_gb: u64) -> Option<&Flavor> {
    flavors
        .iter()
        .filter(|f| f.vcpus >= vcpus && f.ram >= mem_mb && f.disk >= disk_gb)
        .min_by(|a, b| (a.ram, a.vcpus, a.disk, &a.name).cmp(&(b.ram, b.vcpus, b.disk, &b.name)))
}

/// Nova's server status → ours. Everything not final is busy (BUILD, REBOOT, MIGRATING, ...).
pub fn server_status(s: &str) -> VmStatus {
    match s {
        "ACTIVE" => VmStatus::Active,
        "SHUTOFF" => VmStatus::Stopped,
        "ERROR" => VmStatus::Error,
        "DELETED" | "SOFT_DELETED" => VmStatus::Deleted,
        _ => VmStatus::Busy,
    }
}

/// `2026-11-25T17:00:00.000000Z` (Keystone's `expires_at`) → Unix seconds.
pub fn parse_expires(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let rest = rest
        .strip_prefix('.')
        .map_or(rest, |r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    if !matches!(rest, "Z" | "" | "+00:00")
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || se > 60
    {
        return None;
    }
    // Days from civil (H. Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInner,
}
#[derive(Deserialize)]
struct TokenInner {
    expires_at: String,
    #[serde(default)]
    catalog: Vec<Service>,
}
#[derive(Deserialize)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}
#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

impl OpenStack {
    /// `endpoint` is the Identity URL (`https://keystone:5000/v3`; `/v3` is added when missing).
    pub fn new(
        name: &str,
        endpoint: &str,
        credentials: Credentials,
        interface: Option<&str>,
        region: Option<&str>,
        t: Timeouts,
    ) -> Result<OpenStack, CloudError> {
        let base = endpoint.trim_end_matches('/');
        let identity = if base.ends_with("/v3") {
            base.to_owned()
        } else {
            format!("{base}/v3")
        };
        Ok(OpenStack {
            name: name.into(),
            identity,
            credentials,
            interface: interface.unwrap_or("public").into(),
            region: region.map(str::to_owned),
            http: http_client(&t)?,
            t,
            token: Mutex::new(None),
        })
    }

    fn auth_body(&self) -> Value {
        match &self.credentials {
            Credentials::Password {
                username,
                password,
                user_domain,
                project,
                project_domain,
            } => {
                let mut auth = json!({
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {
                            "name": username,
                            "domain": {"name": user_domain},
                            "password": password.expose(),
                        }}
                    }
                });
                if let Some(p) = project {
                    auth["scope"] =
                        json!({"project": {"name": p, "domain": {"name": project_domain}}});
                }
                json!({ "auth": auth })
            }
            Credentials::ApplicationCredential { id, secret } => json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret.expose()},
            }}}),
        }
    }

    async fn authenticate(&self) -> Result<Token, CloudError> {
        let what = "authentication";
        let url = format!("{}/auth/tokens", self.identity);
        let resp = self
            .http
            .post(&url)
            .json(&self.auth_body())
            .send()
            .await
            .map_err(|e| CloudError::transport(&self.name, what, e, self.t.request))?;
        let status = resp.status();
        let value = resp
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CloudError::transport(&self.name, what, e, self.t.request))?;
        if !status.is_success() {
            return Err(self.status_error(what, status, &bytes));
        }
        let value =
            value.ok_or_else(|| self.malformed(what, "no X-Subject-Token header".into()))?;
        let body: TokenBody =
            serde_json::from_slice(&bytes).map_err(|e| self.malformed(what, e.to_string()))?;
        let expires = parse_expires(&body.token.expires_at).ok_or_else(|| {
            self.malformed(
                what,
                format!(
                    "expires_at {:?} is not a UTC timestamp",
                    excerpt(&body.token.expires_at)
                ),
            )
        })?;
        let compute = body
            .token
            .catalog
            .iter()
            .filter(|s| s.kind == "compute")
            .flat_map(|s| &s.endpoints)
            .find(|e| {
                e.interface == self.interface
                    && self.region.as_ref().is_none_or(|r| {
                        e.region.as_ref() == Some(r) || e.region_id.as_ref() == Some(r)
                    })
            })
            .map(|e| e.url.trim_end_matches('/').to_owned())
            .ok_or_else(|| CloudError::NoComputeEndpoint {
                cloud: self.name.clone(),
                interface: self.interface.clone(),
                region: self
                    .region
                    .as_ref()
                    .map_or(String::new(), |r| format!(" in region {r}")),
            })?;
        debug!(cloud = %self.name, expires, compute = %compute, "keystone token issued");
        Ok(Token {
            value,
            expires,
            compute,
        })
    }

    /// The cached token while it is valid for `token_margin` more, else a new one.
    async fn token(&self) -> Result<Token, CloudError> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref() {
            if unix_now() + self.t.token_margin.as_secs() < t.expires {
                return Ok(t.clone());
            }
        }
        let t = self.authenticate().await?;
        *cached = Some(t.clone());
        Ok(t)
    }

    fn malformed(&self, what: &str, detail: String) -> CloudError {
        CloudError::Malformed {
            cloud: self.name.clone(),
            what: what.into(),
            detail: excerpt(&detail),
        }
    }

    /// Maps an error status; Nova's body is `{"<kind>": {"message": ..., "code": ...}}`.
    fn status_error(&self, what: &str, status: StatusCode, body: &[u8]) -> CloudError {
        let text = String::from_utf8_lossy(body);
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                let o = v.as_object()?;
                o.values()
                    .find_map(|i| i.get("message")?.as_str().map(str::to_owned))
                    .or_else(|| o.get("message")?.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| text.into_owned());
        let (cloud, what) = (self.name.clone(), what.to_owned());
        let message = excerpt(&message);
        match status {
            StatusCode::UNAUTHORIZED => CloudError::Auth { cloud, what },
            StatusCode::FORBIDDEN => CloudError::Forbidden {
                cloud,
                what,
                message,
            },
            StatusCode::NOT_FOUND => CloudError::NotFound { cloud, what },
            StatusCode::CONFLICT => CloudError::Conflict {
                cloud,
                what,
                message,
            },
            s => CloudError::Server {
                cloud,
                what,
                status: s.as_u16(),
                message,
            },
        }
    }

    /// One Nova request with the token; on 401 the token is renewed and the request sent once more.
    async fn nova(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, CloudError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", token.compute))
                .header("X-Auth-Token", token.value.expose())
                .header("Accept", "application/json");
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| CloudError::transport(&self.name, what, e, self.t.request))?;
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| CloudError::transport(&self.name, what, e, self.t.request))?;
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                debug!(cloud = %self.name, "token refused, renewing it");
                *self.token.lock().await = None;
                continue;
            }
            if !status.is_success() {
                return Err(self.status_error(what, status, &bytes));
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.malformed(what, e.to_string()));
        }
        Err(CloudError::Auth {
            cloud: self.name.clone(),
            what: what.into(),
        })
    }

    fn field<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        v: Option<Value>,
        pointer: &str,
    ) -> Result<T, CloudError> {
        let v = v.ok_or_else(|| self.malformed(what, "empty body".into()))?;
        let f = v
            .pointer(pointer)
            .cloned()
            .ok_or_else(|| self.malformed(what, format!("no {pointer}")))?;
        serde_json::from_value(f).map_err(|e| self.malformed(what, format!("{pointer}: {e}")))
    }

    pub async fn flavors(&self) -> Result<Vec<Flavor>, CloudError> {
        let what = "list flavors";
        let v = self
            .nova(what, Method::GET, "/flavors/detail", None)
            .await?;
        self.field(what, v, "/flavors")
    }

    async fn action(&self, id: &str, action: &str) -> Result<(), CloudError> {
        let what = format!("{action} {id}");
        self.nova(
            &what,
            Method::POST,
            &format!("/servers/{}/action", path_segment(id)),
            Some(json!({ action: null })),
        )
        .await
        .map(drop)
    }
}

/// Ids come from the cloud: keep them from changing the path.
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Nova's absolute limits → capacity (-1: unlimited).
fn capacity_from(abs: &Value) -> Capacity {
    let get = |k: &str| abs.get(k).and_then(Value::as_i64);
    let max = |k: &str| get(k).and_then(|v| u64::try_from(v).ok());
    let used = |k: &str| get(k).and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    let u32c = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Capacity {
        max_instances: max("maxTotalInstances").map(u32c),
        used_instances: u32c(used("totalInstancesUsed")),
        max_cores: max("maxTotalCores").map(u32c),
        used_cores: u32c(used("totalCoresUsed")),
        max_ram_mb: max("maxTotalRAMSize"),
        used_ram_mb: used("totalRAMUsed"),
    }
}

impl Cloud for OpenStack {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reachable(&self) -> Result<(), CloudError> {
        let what = "reachability check";
        let resp = self
            .http
            .get(&self.identity)
            .timeout(self.t.reach)
            .send()
            .await
            .map_err(|e| CloudError::transport(&self.name, what, e, self.t.reach))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(CloudError::Server {
                cloud: self.name.clone(),
                what: what.into(),
                status: status.as_u16(),
                message: String::new(),
            });
        }
        Ok(())
    }

    async fn create(&self, spec: &VmSpec) -> Result<String, CloudError> {
        let flavors = self.flavors().await?;
        let flavor =
            choose_flavor(&flavors, spec.vcpus, spec.mem_mb, spec.disk_gb).ok_or_else(|| {
                CloudError::NoFlavor {
                    cloud: self.name.clone(),
                    vcpus: spec.vcpus,
                    mem_mb: spec.mem_mb,
                    disk_gb: spec.disk_gb,
                }
            })?;
        let what = format!("create {}", spec.name);
        let body =
            json!({"server": {"name": spec.name, "imageRef": spec.image, "flavorRef": flavor.id}});
        let v = self
            .nova(&what, Method::POST, "/servers", Some(body))
            .await?;
        self.field(&what, v, "/server/id")
    }

    async fn start(&self, id: &str) -> Result<(), CloudError> {
        self.action(id, "os-start").await
    }

    async fn stop(&self, id: &str) -> Result<(), CloudError> {
        self.action(id, "os-stop").await
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.nova(
            &format!("delete {id}"),
            Method::DELETE,
            &format!("/servers/{}", path_segment(id)),
            None,
        )
        .await
        .map(drop)
    }

    async fn status(&self, id: &str) -> Result<VmStatus, CloudError> {
        let what = format!("show {id}");
        let v = self
            .nova(
                &what,
                Method::GET,
                &format!("/servers/{}", path_segment(id)),
                None,
            )
            .await?;
        let s: String = self.field(&what, v, "/server/status")?;
        Ok(server_status(&s))
    }

    async fn capacity(&self) -> Result<Capacity, CloudError> {
        let what = "limits";
        let v = self.nova(what, Method::GET, "/limits", None).await?;
        let abs: Value = self.field(what, v, "/limits/absolute")?;
        Ok(capacity_from(&abs))
    }

    async fn find_by_name(&self, name: &str) -> Result<Option<String>, CloudError> {
        let what = format!("find {name}");
        // Nova's name filter is a regular expression: anchor it; our names are [a-z0-9-].
        let path = format!("/servers?name=%5E{}%24", path_segment(name));
        let v = self.nova(&what, Method::GET, &path, None).await?;
        #[derive(Deserialize)]
        struct S {
            id: String,
            name: String,
        }
        let list: Vec<S> = self.field(&what, v, "/servers")?;
        Ok(list.into_iter().find(|s| s.name == name).map(|s| s.id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    fn f(id: &str, vcpus: u32, ram: u64, disk: u64) -> Flavor {
        Flavor {
            id: id.into(),
            name: id.into(),
            vcpus,
            ram,
            disk,
        }
    }

    #[test]
    fn smallest_fitting_flavor() {
        let fl = [
            f("big", 8, 16384, 160),
            f("small", 1, 2048, 20),
            f("tiny", 1, 512, 1),
            f("med", 2, 4096, 40),
        ];
        assert_eq!(
            choose_flavor(&fl, 1, 1024, 10).map(|f| f.id.as_str()),
            Some("small")
        );
        assert_eq!(
            choose_flavor(&fl, 2, 1024, 10).map(|f| f.id.as_str()),
            Some("med")
        );
        assert_eq!(
            choose_flavor(&fl, 1, 512, 1).map(|f| f.id.as_str()),
            Some("tiny")
        );
        assert_eq!(
            choose_flavor(&fl, 1, 512, 50).map(|f| f.id.as_str()),
            Some("big")
        );
        assert_eq!(choose_flavor(&fl, 16, 512, 1), None);
    }

    #[test]
    fn expires_at_parses() {
        assert_eq!(parse_expires("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_expires("2015-11-09T01:42:57.527363Z"),
            Some(1_447_033_377)
        );
        assert_eq!(
            parse_expires("2000-03-01T00:00:00.000000Z"),
            Some(951_868_800)
        );
        assert_eq!(
            parse_expires("2026-11-25T17:00:00+00:00"),
            Some(1_795_626_000)
        );
        assert_eq!(parse_expires("2026-11-25T17:00:00+02:00"), None);
        assert_eq!(parse_expires("tomorrow"), None);
        assert_eq!(parse_expires("2026-13-25T17:00:00Z"), None);
    }

    #[test]
    fn statuses_and_limits() {
        assert_eq!(server_status("BUILD"), VmStatus::Busy);
        assert_eq!(server_status("SHUTOFF"), VmStatus::Stopped);
        let c = capacity_from(
            &json!({"maxTotalInstances": 10, "totalInstancesUsed": 4, "maxTotalCores": -1, "totalCoresUsed": 8, "maxTotalRAMSize": 8192, "totalRAMUsed": 6144}),
        );
        assert_eq!(c.max_instances, Some(10));
        assert_eq!(c.max_cores, None);
        assert_eq!(c.room_for(1, 1024), 2);
        assert_eq!(path_segment("a/../b"), "a%2F..%2Fb");
    }
}
