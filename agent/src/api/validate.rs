//! Every input of the API checked before anything acts on it, each error naming its field
//! (HTTP 400 `{"error","field"}`). Pure: no I/O, no clock.

use serde_json::{json, Map, Value};

use crate::cloud::config::CloudConfig;

/// An answer other than 2xx: status, message, the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn bad(field: &str, error: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            error: error.into(),
            field: Some(field.to_owned()),
        }
    }
    pub fn status(status: u16, field: Option<&str>, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            field: field.map(str::to_owned),
        }
    }
    pub fn json(&self) -> Value {
        json!({"error": self.error, "field": self.field})
    }
}

/// A topic level (thing ids, template, VM and cloud names): 1..=64 of `A-Z a-z 0-9 - _`.
pub fn name(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            "must be 1 to 64 characters of A-Z a-z 0-9 - _",
        ))
    }
}

/// `a=1&b=2` → pairs; a key without `=` has an empty value. Values here are numbers and names:
/// no percent-decoding (a `%` is then simply not valid for them).
pub fn query(q: Option<&str>) -> Vec<(&str, &str)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

fn known(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<(), ApiError> {
    match pairs.iter().find(|(k, _)| !allowed.contains(k)) {
        Some((k, _)) => Err(ApiError::bad(
            k,
            format!("unknown query parameter; accepted: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn number(field: &str, v: &str, max: u64) -> Result<u64, ApiError> {
    match v.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(ApiError::bad(
            field,
            format!("must be an integer 0..={max}"),
        )),
    }
}

/// `?since=<ms>&limit=<n>` of `GET things/{id}/readings`: `limit` 1..=`cap`, default `cap`.
pub fn readings_query(q: Option<&str>, cap: usize) -> Result<(Option<u64>, usize), ApiError> {
    let pairs = query(q);
    known(&pairs, &["since", "limit"])?;
    let mut since = None;
    let mut limit = cap;
    for (k, v) in pairs {
        match k {
            "since" => since = Some(number("since", v, u64::MAX)?),
            _ => {
                limit = number("limit", v, cap as u64)? as usize;
                if limit == 0 {
                    return Err(ApiError::bad("limit", format!("must be 1..={cap}")));
                }
            }
        }
    }
    Ok((since, limit))
}

/// `?lines=<n>` of `GET logs`: 1..=`cap`, default 100 (or `cap` if smaller).
pub fn lines_query(q: Option<&str>, cap: usize) -> Result<usize, ApiError> {
    let pairs = query(q);
    known(&pairs, &["lines"])?;
    let mut lines = cap.min(100);
    for (_, v) in pairs {
        lines = number("lines", v, cap as u64)? as usize;
        if lines == 0 {
            return Err(ApiError::bad("lines", format!("must be 1..={cap}")));
        }
    }
    Ok(lines)
}

/// `?target=<cloud>` of `DELETE vms/{vm}`.
pub fn release_query(q: Option<&str>) -> Result<Option<String>, ApiError> {
    let pairs = query(q);
    known(&pairs, &["target"])?;
    match pairs.first() {
        Some((_, v)) => {
            name("target", v)?;
            Ok(Some((*v).to_owned()))
        }
        None => Ok(None),
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("body", "must be a JSON object")),
        Err(e) => Err(ApiError::bad("body", format!("not valid JSON: {e}"))),
    }
}

fn only(m: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<(), ApiError> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(
            &format!("{prefix}{k}"),
            format!("unknown field; accepted: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `POST things/{id}/set` `{"value", "id"?}` → the command payload for the actuator (the MQTT
/// command's form, so the actuator validates it the same way) and its id (`fresh` if none given).
pub fn set_body(body: &[u8], fresh: String) -> Result<(String, Vec<u8>), ApiError> {
    let m = object(body)?;
    only(&m, &["value", "id"], "")?;
    let value = match m.get("value") {
        None => return Err(ApiError::bad("value", "missing")),
        Some(v @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => v.clone(),
        Some(_) => {
            return Err(ApiError::bad(
                "value",
                "must be a number, true/false or a string",
            ))
        }
    };
    let id = match m.get("id") {
        None => fresh,
        Some(Value::String(s)) => {
            name("id", s)?;
            s.clone()
        }
        Some(_) => return Err(ApiError::bad("id", "must be a string")),
    };
    let payload = json!({"id": id, "value": value}).to_string().into_bytes();
    Ok((id, payload))
}

/// `POST vms` `{"template", "war"?, "war_sha256"?, "cluster"?, "replicas"?}`: the request object the
/// signed MQTT request and `betaas-agent vm request` carry (an application's WAR; a cluster node, or
/// N workers kept). The template is one of `templates`; the rest is checked for its form here and
/// acted on by the instance (which fetches the WAR and keeps the cluster).
pub fn vm_body(body: &[u8], templates: &[String]) -> Result<Map<String, Value>, ApiError> {
    let m = object(body)?;
    only(
        &m,
        &["template", "war", "war_sha256", "cluster", "replicas"],
        "",
    )?;
    let t = match m.get("template") {
        None => return Err(ApiError::bad("template", "missing")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad("template", "must be a string")),
    };
    name("template", &t)?;
    if !templates.contains(&t) {
        return Err(ApiError::bad(
            "template",
            format!("unknown template; this gateway's: {}", templates.join(", ")),
        ));
    }
    let text = |k: &str| match m.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(k, "must be a string")),
    };
    if let Some(w) = text("war")? {
        // The same form as a bundle URL: http(s), no spaces or shell-significant characters.
        crate::update::check_url(&w)
            .map_err(|_| ApiError::bad("war", "expected an http:// or https:// URL"))?;
    }
    if let Some(h) = text("war_sha256")? {
        if !m.contains_key("war") {
            return Err(ApiError::bad("war_sha256", "only with \"war\""));
        }
        crate::war::parse_sha256(&h).map_err(|e| ApiError::bad("war_sha256", e))?;
    }
    if let Some(c) = text("cluster")? {
        name("cluster", &c)?;
    }
    if let Some(r) = m.get("replicas") {
        if !m.contains_key("cluster") {
            return Err(ApiError::bad("replicas", "only with \"cluster\""));
        }
        if r.as_u64().is_none_or(|n| n > 64) {
            return Err(ApiError::bad("replicas", "must be a whole number 0..=64"));
        }
    }
    Ok(m)
}

/// `POST update` `{"url"}`: the bundle's http(s) URL, as the signed MQTT request takes it.
pub fn update_body(body: &[u8]) -> Result<String, ApiError> {
    let m = object(body)?;
    only(&m, &["url"], "")?;
    match m.get("url") {
        None => Err(ApiError::bad("url", "missing")),
        Some(Value::String(u)) => crate::update::check_url(u)
            .map(|()| u.clone())
            .map_err(|e| ApiError::bad("url", e)),
        Some(_) => Err(ApiError::bad("url", "must be a string")),
    }
}

/// A cloud written by `PUT clouds/{name}`: its `[[clouds]]` entry and, when given, its
/// credentials file, both as TOML text, checked by the same parsers the agent reads them with.
#[derive(Debug)]
pub struct CloudPut {
    pub config: CloudConfig,
    pub config_toml: String,
    /// `None`: keep the credentials already stored for this cloud.
    pub credentials_toml: Option<String>,
}

const CLOUD_KEYS: &[&str] = &[
    "provider",
    "endpoint",
    "vm_limit",
    "idle_destroy_secs",
    "deploy_timeout_secs",
    "poll_interval_ms",
    "cost_per_vm",
    "cost_limit",
    "interface",
    "region",
    "images",
    "credentials",
];
const CREDENTIAL_KEYS: &[&str] = &[
    "auth",
    "username",
    "password",
    "user_domain",
    "project",
    "project_domain",
    "id",
    "secret",
];

fn to_toml(field: &str, v: &Value) -> Result<toml::Value, ApiError> {
    Ok(match v {
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) => toml::Value::Float(f),
            _ => return Err(ApiError::bad(field, "number out of range")),
        },
        Value::Object(m) => {
            let mut t = toml::Table::new();
            for (k, v) in m {
                t.insert(k.clone(), to_toml(&format!("{field}.{k}"), v)?);
            }
            toml::Value::Table(t)
        }
        Value::Null | Value::Array(_) => {
            return Err(ApiError::bad(field, "wrong type"));
        }
    })
}

/// Checks `PUT clouds/{name}`'s body; `credentials_path` is where its credentials will be
/// written. Error messages name fields, never a secret's value.
pub fn cloud_body(
    name_: &str,
    body: &[u8],
    credentials_path: &std::path::Path,
) -> Result<CloudPut, ApiError> {
    name("name", name_)?;
    let m = object(body)?;
    only(&m, CLOUD_KEYS, "")?;
    for key in ["provider", "endpoint", "vm_limit"] {
        if !m.contains_key(key) {
            return Err(ApiError::bad(key, "missing"));
        }
    }
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String(name_.to_owned()));
    for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "credentials") {
        if k == "images" {
            let Value::Object(imgs) = v else {
                return Err(ApiError::bad(
                    "images",
                    "must be an object: template → image id",
                ));
            };
            for (t, id) in imgs {
                name(&format!("images.{t}"), t)?;
                if !id.is_string() {
                    return Err(ApiError::bad(&format!("images.{t}"), "must be a string"));
                }
            }
        }
        table.insert(k.clone(), to_toml(k, v)?);
    }
    table.insert(
        "credentials".into(),
        toml::Value::String(credentials_path.display().to_string()),
    );
    let config_toml = toml::to_string(&table).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let config: CloudConfig = toml::from_str(&config_toml).map_err(|e| {
        // serde names the key in its message only sometimes: find which key the span is on.
        let field = e
            .span()
            .and_then(|s| config_toml.get(..s.start)?.lines().last())
            .and_then(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
            .filter(|k| CLOUD_KEYS.contains(&k.as_str()))
            .unwrap_or_else(|| "body".into());
        ApiError::bad(&field, e.message().trim())
    })?;
    if let Some((_, key, message)) = crate::cloud::config::problem(std::slice::from_ref(&config)) {
        return Err(ApiError::bad(key, message));
    }
    if config.vm_limit > 10_000 {
        return Err(ApiError::bad("vm_limit", "must be 0..=10000"));
    }
    let credentials_toml = match m.get("credentials") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => {
            only(c, CREDENTIAL_KEYS, "credentials.")?;
            let mut t = toml::Table::new();
            for (k, v) in c {
                let Value::String(s) = v else {
                    return Err(ApiError::bad(
                        &format!("credentials.{k}"),
                        "must be a string",
                    ));
                };
                if s.contains(['\n', '\r']) {
                    return Err(ApiError::bad(&format!("credentials.{k}"), "one line"));
                }
                t.insert(k.clone(), toml::Value::String(s.clone()));
            }
            let text =
                toml::to_string(&t).map_err(|_| ApiError::bad("credentials", "not valid"))?;
            if let Err(e) = crate::cloud::Credentials::parse(credentials_path, &text) {
                // The parser's message names the key and never its value.
                let why = match e {
                    crate::cloud::credentials::CredentialsError::Parse { problem, .. } => problem,
                    other => other.to_string(),
                };
                return Err(ApiError::bad("credentials", why));
            }
            Some(text)
        }
        Some(_) => return Err(ApiError::bad("credentials", "must be an object")),
    };
    Ok(CloudPut {
        config,
        config_toml,
        credentials_toml,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn field(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        r.unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn queries() {
        assert_eq!(readings_query(None, 256).unwrap(), (None, 256));
        assert_eq!(
            readings_query(Some("since=17&limit=3"), 256).unwrap(),
            (Some(17), 3)
        );
        assert_eq!(field(readings_query(Some("limit=0"), 256)), "limit");
        assert_eq!(field(readings_query(Some("limit=257"), 256)), "limit");
        assert_eq!(field(readings_query(Some("since=-1"), 256)), "since");
        assert_eq!(field(readings_query(Some("since=abc"), 256)), "since");
        assert_eq!(field(readings_query(Some("sinse=1"), 256)), "sinse");
        assert_eq!(lines_query(None, 500).unwrap(), 100);
        assert_eq!(lines_query(Some("lines=7"), 500).unwrap(), 7);
        assert_eq!(field(lines_query(Some("lines=501"), 500)), "lines");
        assert_eq!(
            release_query(Some("target=campus")).unwrap().unwrap(),
            "campus"
        );
        assert_eq!(field(release_query(Some("target=a/b"))), "target");
    }

    #[test]
    fn set_bodies() {
        let (id, p) = set_body(br#"{"value": 42.5}"#, "api-1".into()).unwrap();
        assert_eq!(id, "api-1");
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v, json!({"id": "api-1", "value": 42.5}));
        let (id, _) = set_body(br#"{"value": "on", "id": "c7"}"#, "x".into()).unwrap();
        assert_eq!(id, "c7");
        assert_eq!(field(set_body(b"{}", "x".into())), "value");
        assert_eq!(field(set_body(br#"{"value": [1]}"#, "x".into())), "value");
        assert_eq!(
            field(set_body(br#"{"value": 1, "id": 3}"#, "x".into())),
            "id"
        );
        assert_eq!(
            field(set_body(br#"{"value": 1, "id": "a b"}"#, "x".into())),
            "id"
        );
        assert_eq!(field(set_body(br#"{"value": 1, "x": 1}"#, "x".into())), "x");
        assert_eq!(field(set_body(b"[1]", "x".into())), "body");
        assert_eq!(field(set_body(b"\xff\xfe", "x".into())), "body");
    }

    #[test]
    fn vm_bodies() {
        let t = vec!["app".to_owned(), "big".to_owned()];
        assert_eq!(
            vm_body(br#"{"template":"big"}"#, &t).unwrap()["template"],
            "big"
        );
        let w = vm_body(
            br#"{"template":"big","war":"http://h/a.war","war_sha256":"AB"}"#,
            &t,
        );
        assert_eq!(field(w), "war_sha256");
        for (b, f) in [
            (&br#"{"template":"big","war":"ftp://h/a.war"}"#[..], "war"),
            (br#"{"template":"big","war":5}"#, "war"),
            (br#"{"template":"big","war_sha256":"ab"}"#, "war_sha256"),
            (br#"{"template":"big","replicas":2}"#, "replicas"),
            (br#"{"template":"big","cluster":"a b"}"#, "cluster"),
            (
                br#"{"template":"big","cluster":"c","replicas":-1}"#,
                "replicas",
            ),
            (
                br#"{"template":"big","cluster":"c","replicas":65}"#,
                "replicas",
            ),
        ] {
            assert_eq!(field(vm_body(b, &t)), f, "{}", String::from_utf8_lossy(b));
        }
        let ok = vm_body(br#"{"template":"big","cluster":"c","replicas":3}"#, &t).unwrap();
        assert_eq!(ok["replicas"], 3);
        assert_eq!(field(vm_body(br#"{"template":"nope"}"#, &t)), "template");
        assert_eq!(field(vm_body(br#"{"template":5}"#, &t)), "template");
        assert_eq!(field(vm_body(br#"{}"#, &t)), "template");
    }

    fn good() -> Value {
        json!({
            "provider": "openstack",
            "endpoint": "http://127.0.0.1:5000/v3",
            "vm_limit": 2,
            "idle_destroy_secs": 600,
            "images": {"big": "img-big"},
            "credentials": {"auth": "password", "username": "u", "password": "hunter2-secret", "project": "p"},
        })
    }

    fn put(v: &Value) -> Result<CloudPut, ApiError> {
        cloud_body(
            "campus",
            v.to_string().as_bytes(),
            Path::new("/d/campus.credentials.toml"),
        )
    }

    #[test]
    fn a_cloud_body_becomes_the_agents_own_config_and_credentials() {
        let p = put(&good()).unwrap();
        assert_eq!(p.config.name.to_string(), "campus");
        assert_eq!(p.config.vm_limit, 2);
        assert_eq!(p.config.idle_destroy_secs, 600);
        assert_eq!(p.config.images["big"], "img-big");
        assert_eq!(
            p.config.credentials_path(),
            Path::new("/d/campus.credentials.toml")
        );
        assert!(
            !p.config_toml.contains("hunter2"),
            "the secret is only in the credentials"
        );
        let c = p.credentials_toml.unwrap();
        assert!(crate::cloud::Credentials::parse(Path::new("x"), &c).is_ok());
        let mut no_creds = good();
        no_creds.as_object_mut().unwrap().remove("credentials");
        assert!(put(&no_creds).unwrap().credentials_toml.is_none());
    }

    #[test]
    fn each_bad_cloud_field_is_named_and_no_secret_is_quoted() {
        let cases: &[(&str, Value, &str)] = &[
            ("provider", json!("aws"), "provider"),
            ("endpoint", json!("ftp://x"), "endpoint"),
            ("endpoint", json!("http://u:p@x"), "endpoint"),
            ("vm_limit", json!(-1), "vm_limit"),
            ("vm_limit", json!("two"), "vm_limit"),
            ("vm_limit", json!(1_000_000), "vm_limit"),
            ("idle_destroy_secs", json!(0), "idle_destroy_secs"),
            ("poll_interval_ms", json!(0), "poll_interval_ms"),
            ("cost_per_vm", json!(-1.0), "cost_per_vm"),
            ("images", json!({"a b": "x"}), "images.a b"),
            ("images", json!({"big": 3}), "images.big"),
            ("images", json!([1]), "images"),
            ("extra", json!(1), "extra"),
            ("credentials", json!("x"), "credentials"),
            (
                "credentials",
                json!({"auth": "password", "password": "hunter2-secret"}),
                "credentials",
            ),
            (
                "credentials",
                json!({"auth": "magic", "password": "hunter2-secret"}),
                "credentials",
            ),
            (
                "credentials",
                json!({"auth": "password", "username": "u", "password": 5}),
                "credentials.password",
            ),
            (
                "credentials",
                json!({"auth": "password", "username": "u", "password": "p", "x": "1"}),
                "credentials.x",
            ),
        ];
        for (key, v, want) in cases {
            let mut body = good();
            body[*key] = v.clone();
            let e = put(&body).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(*want), "{key} = {v}: {e:?}");
            assert_eq!(e.status, 400);
            assert!(!e.error.contains("hunter2"), "{e:?}");
        }
        for key in ["provider", "endpoint", "vm_limit"] {
            let mut body = good();
            body.as_object_mut().unwrap().remove(key);
            assert_eq!(field(put(&body)), key);
        }
        assert_eq!(field(cloud_body("a/b", b"{}", Path::new("x"))), "name");
    }

    #[test]
    fn names() {
        assert!(name("id", "temp0").is_ok());
        for bad in ["", "a/b", "a b", "+", "#", &"x".repeat(65)] {
            assert!(name("id", bad).is_err(), "{bad:?}");
        }
    }
}
