//! OpenNebula over its XML-RPC API (the front-end's `/RPC2` endpoint, port 2633 by default).
//!
//! Every call's first parameter is the session string `user:password`; every answer is an array
//! `[success (boolean), result or error message, error code (int), ...]`. Calls used:
//! `one.template.instantiate(session, template id, name, hold, extra template, persistent)`,
//! `one.vm.action(session, action, id)` with `poweroff` / `resume` / `terminate-hard`,
//! `one.vm.info(session, id, decrypt)` (VM XML: `STATE`, `LCM_STATE`),
//! `one.user.info(session, -1, decrypt)` (quotas: `VM_QUOTA/VM/VMS`, `VMS_USED`, `CPU`, `MEMORY`),
//! `one.vmpool.info(session, -3, -1, -1, -1)` (own VMs, to find one by name) and
//! `one.system.version(session)` (reachability).
//!
//! The request is written by hand (a few escaped scalars); the answer is read with quick-xml,
//! the XML documents inside it with quick-xml's serde support.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde::Deserialize;

use super::{
    excerpt, http_client, Capacity, Cloud, CloudError, Credentials, Secret, Timeouts, VmSpec,
    VmStatus,
};

/// An XML-RPC parameter or result.
#[derive(Debug, Clone, PartialEq)]
pub enum XValue {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Array(Vec<XValue>),
    Struct(Vec<(String, XValue)>),
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

fn write_value(out: &mut String, v: &XValue) {
    out.push_str("<value>");
    match v {
        XValue::Bool(b) => out.push_str(&format!("<boolean>{}</boolean>", u8::from(*b))),
        XValue::Int(i) => out.push_str(&format!("<int>{i}</int>")),
        XValue::Double(d) => out.push_str(&format!("<double>{d}</double>")),
        XValue::Str(s) => out.push_str(&format!("<string>{}</string>", escape(s))),
        XValue::Array(a) => {
            out.push_str("<array><data>");
            a.iter().for_each(|v| write_value(out, v));
            out.push_str("</data></array>");
        }
        XValue::Struct(m) => {
            out.push_str("<struct>");
            for (k, v) in m {
                out.push_str(&format!("<member><name>{}</name>", escape(k)));
                write_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// A `methodCall` document.
pub fn method_call(method: &str, params: &[XValue]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\"?>\n<methodCall><methodName>{}</methodName><params>",
        escape(method)
    );
    for p in params {
        out.push_str("<param>");
        write_value(&mut out, p);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// A `methodResponse`: `Ok(value)` or `Err((faultCode, faultString))` for a fault; the outer
/// error is a document that is not XML-RPC.
pub fn parse_response(xml: &str) -> Result<Result<XValue, (i64, String)>, String> {
    let mut r = Reader::from_str(xml);
    r.config_mut().trim_text(true);
    let mut fault = false;
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) if e.name().as_ref() == b"fault" => fault = true,
            Event::Start(e) if e.name().as_ref() == b"value" => break,
            Event::Empty(e) if e.name().as_ref() == b"value" => {
                return Ok(Ok(XValue::Str(String::new())))
            }
            Event::Eof => return Err("no <value> in the answer".into()),
            _ => {}
        }
    }
    let v = parse_value(&mut r)?;
    if !fault {
        return Ok(Ok(v));
    }
    let member = |name: &str| match &v {
        XValue::Struct(m) => m.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        _ => None,
    };
    match (member("faultCode"), member("faultString")) {
        (Some(XValue::Int(c)), Some(XValue::Str(s))) => Ok(Err((c, s))),
        _ => Err("a fault without faultCode/faultString".into()),
    }
}

fn text_until_end(r: &mut Reader<&[u8]>, tag: &[u8]) -> Result<String, String> {
    let mut s = String::new();
    loop {
        match r.read_event().map_err(|e| e.to_string())? {
            Event::Text(t) => s.push_str(&t.unescape().map_err(|e| e.to_string())?),
            Event::CData(c) => s.push_str(&String::from_utf8_lossy(&c)),
            Event::End(e) if e.name().as_ref() == tag => return Ok(s),
            Event::Eof => return Err("unexpected end of the answer".into()),
            other => return Err(format!("unexpected {other:?} in a scalar")),
        }
    }
}

/// After `<value>`: the value and its `</value>`.
fn parse_value(r: &mut Reader<&[u8]>) -> Result<XValue, String> {
    let v = match r.read_event().map_err(|e| e.to_string())? {
        // A value without a type is a string.
        Event::Text(t) => {
            let s = t.unescape().map_err(|e| e.to_string())?.into_owned();
            let _ = text_until_end(r, b"value")?;
            return Ok(XValue::Str(s));
        }
        Event::End(e) if e.name().as_ref() == b"value" => return Ok(XValue::Str(String::new())),
        Event::Empty(e) => match e.name().as_ref() {
            b"string" => XValue::Str(String::new()),
            b"array" => XValue::Array(Vec::new()),
            b"struct" => XValue::Struct(Vec::new()),
            other => return Err(format!("empty <{}>", String::from_utf8_lossy(other))),
        },
        Event::Start(e) => {
            let tag = e.name().as_ref().to_vec();
            match tag.as_slice() {
                b"string" | b"base64" | b"dateTime.iso8601" => {
                    XValue::Str(text_until_end(r, &tag)?)
                }
                b"i4" | b"int" | b"i8" => {
                    let t = text_until_end(r, &tag)?;
                    XValue::Int(
                        t.trim()
                            .parse()
                            .map_err(|_| format!("{t:?} is not an integer"))?,
                    )
                }
                b"boolean" => match text_until_end(r, &tag)?.trim() {
                    "1" => XValue::Bool(true),
                    "0" => XValue::Bool(false),
                    t => return Err(format!("{t:?} is not a boolean")),
                },
                b"double" => {
                    let t = text_until_end(r, &tag)?;
                    XValue::Double(
                        t.trim()
                            .parse()
                            .map_err(|_| format!("{t:?} is not a double"))?,
                    )
                }
                b"array" => {
                    let mut items = Vec::new();
                    loop {
                        match r.read_event().map_err(|e| e.to_string())? {
                            Event::Start(e) if e.name().as_ref() == b"data" => {}
                            Event::Empty(e) if e.name().as_ref() == b"data" => {}
                            Event::Start(e) if e.name().as_ref() == b"value" => {
                                items.push(parse_value(r)?)
                            }
                            Event::Empty(e) if e.name().as_ref() == b"value" => {
                                items.push(XValue::Str(String::new()))
                            }
                            Event::End(e) if e.name().as_ref() == b"data" => {}
                            Event::End(e) if e.name().as_ref() == b"array" => break,
                            other => return Err(format!("unexpected {other:?} in an array")),
                        }
                    }
                    XValue::Array(items)
                }
                b"struct" => {
                    let mut members = Vec::new();
                    let mut name = String::new();
                    loop {
                        match r.read_event().map_err(|e| e.to_string())? {
                            Event::Start(e) if e.name().as_ref() == b"member" => {}
                            Event::End(e) if e.name().as_ref() == b"member" => {}
                            Event::Start(e) if e.name().as_ref() == b"name" => {
                                name = text_until_end(r, b"name")?
                            }
                            Event::Start(e) if e.name().as_ref() == b"value" => {
                                members.push((std::mem::take(&mut name), parse_value(r)?))
                            }
                            Event::End(e) if e.name().as_ref() == b"struct" => break,
                            other => return Err(format!("unexpected {other:?} in a struct")),
                        }
                    }
                    XValue::Struct(members)
                }
                other => return Err(format!("unknown type <{}>", String::from_utf8_lossy(other))),
            }
        }
        other => return Err(format!("unexpected {other:?} in a value")),
    };
    match r.read_event().map_err(|e| e.to_string())? {
        Event::End(e) if e.name().as_ref() == b"value" => Ok(v),
        other => Err(format!("expected </value>, got {other:?}")),
    }
}

/// OpenNebula's VM `STATE` / `LCM_STATE` → ours.
pub fn vm_status(state: u32, lcm: u32) -> VmStatus {
    // LCM failure states: FAILURE (old), BOOT_*_FAILURE, PROLOG_*_FAILURE, EPILOG_*_FAILURE.
    const LCM_FAILURES: &[u32] = &[14, 36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 60];
    match state {
        3 if lcm == 3 => VmStatus::Active,
        3 if LCM_FAILURES.contains(&lcm) => VmStatus::Error,
        8 => VmStatus::Stopped,
        6 => VmStatus::Deleted,
        7 | 11 => VmStatus::Error,
        _ => VmStatus::Busy,
    }
}

#[derive(Debug, Deserialize)]
struct VmXml {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(rename = "NAME", default)]
    name: String,
    #[serde(rename = "STATE")]
    state: u32,
    #[serde(rename = "LCM_STATE", default)]
    lcm: u32,
}

#[derive(Debug, Deserialize, Default)]
struct PoolXml {
    #[serde(rename = "VM", default)]
    vms: Vec<VmXml>,
}

#[derive(Debug, Deserialize, Default)]
struct QuotaWrap {
    #[serde(rename = "VM", default)]
    vm: Option<VmQuota>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
struct VmQuota {
    vms: Option<String>,
    vms_used: Option<String>,
    cpu: Option<String>,
    cpu_used: Option<String>,
    memory: Option<String>,
    memory_used: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct DefaultQuotas {
    #[serde(rename = "VM_QUOTA", default)]
    vm_quota: QuotaWrap,
}

#[derive(Debug, Deserialize)]
struct UserXml {
    #[serde(rename = "VM_QUOTA", default)]
    vm_quota: QuotaWrap,
    #[serde(rename = "DEFAULT_USER_QUOTAS", default)]
    defaults: DefaultQuotas,
}

/// A user's VM quota → capacity. `-1` means "the default quota", `-2` unlimited; no quota at all
/// is unlimited.
fn capacity_from(user: &UserXml) -> Capacity {
    let own = user.vm_quota.vm.clone().unwrap_or_default();
    let def = user.defaults.vm_quota.vm.clone().unwrap_or_default();
    let num = |s: &Option<String>| s.as_deref().and_then(|s| s.trim().parse::<f64>().ok());
    let limit = |own: &Option<String>, def: &Option<String>| match num(own) {
        Some(-1.0) => num(def).filter(|d| *d >= 0.0),
        Some(v) if v >= 0.0 => Some(v),
        _ => None,
    };
    let used = |s: &Option<String>| num(s).filter(|v| *v >= 0.0).unwrap_or(0.0);
    // Quotas are whole VMs and MB; CPU may be fractional: round down what is allowed.
    let u32f = |v: f64| v.floor().clamp(0.0, f64::from(u32::MAX)) as u32;
    let u64f = |v: f64| v.floor().max(0.0) as u64;
    Capacity {
        max_instances: limit(&own.vms, &def.vms).map(u32f),
        used_instances: u32f(used(&own.vms_used)),
        max_cores: limit(&own.cpu, &def.cpu).map(u32f),
        used_cores: u32f(used(&own.cpu_used).ceil()),
        max_ram_mb: limit(&own.memory, &def.memory).map(u64f),
        used_ram_mb: u64f(used(&own.memory_used)),
    }
}

pub struct OpenNebula {
    name: String,
    endpoint: String,
    session: Secret,
    /// To scrub it from error messages the cloud sends back.
    password: Secret,
    http: reqwest::Client,
    t: Timeouts,
}

impl std::fmt::Debug for OpenNebula {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenNebula")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

// OpenNebula's error codes (include/Request.h).
const AUTHENTICATION: i64 = 0x0100;
const AUTHORIZATION: i64 = 0x0200;
const NO_EXISTS: i64 = 0x0400;
const ACTION: i64 = 0x0800;
const LOCKED: i64 = 0x8000;

impl OpenNebula {
    /// `endpoint`: the XML-RPC URL. OpenNebula takes user and password (`auth = "password"`).
    pub fn new(
        name: &str,
        endpoint: &str,
        credentials: &Credentials,
        t: Timeouts,
    ) -> Result<OpenNebula, CloudError> {
        let (session, password) = match credentials {
            Credentials::Password { username, password, .. } => {
                (Secret::new(format!("{username}:{}", password.expose())), password.clone())
            }
            Credentials::ApplicationCredential { .. } => {
                return Err(CloudError::Client(format!(
                    "cloud {name}: OpenNebula needs auth = \"password\" credentials (user and password)"
                )))
            }
        };
        Ok(OpenNebula {
            name: name.into(),
            endpoint: endpoint.into(),
            session,
            password,
            http: http_client(&t)?,
            t,
        })
    }

    fn malformed(&self, what: &str, detail: String) -> CloudError {
        CloudError::Malformed {
            cloud: self.name.clone(),
            what: what.into(),
            detail: excerpt(&detail),
        }
    }

    /// One call; `Ok` is the result of a successful call (the second element of the answer).
    async fn call(
        &self,
        what: &str,
        method: &str,
        params: Vec<XValue>,
        timeout: std::time::Duration,
    ) -> Result<XValue, CloudError> {
        let mut all = vec![XValue::Str(self.session.expose().to_owned())];
        all.extend(params);
        let resp = self
            .http
            .post(&self.endpoint)
            .header("Content-Type", "text/xml")
            .timeout(timeout)
            .body(method_call(method, &all))
            .send()
            .await
            .map_err(|e| CloudError::transport(&self.name, what, e, timeout))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CloudError::transport(&self.name, what, e, timeout))?;
        let scrub = |s: &str| excerpt(&s.replace(self.password.expose(), "***"));
        if !status.is_success() {
            return Err(CloudError::Server {
                cloud: self.name.clone(),
                what: what.into(),
                status: status.as_u16(),
                message: scrub(&text),
            });
        }
        let value = match parse_response(&text).map_err(|e| self.malformed(what, e))? {
            Ok(v) => v,
            Err((code, msg)) => return Err(self.rpc_error(what, code, scrub(&msg))),
        };
        let XValue::Array(items) = value else {
            return Err(self.malformed(what, "the answer is not an array".into()));
        };
        match items.as_slice() {
            [XValue::Bool(true), result, ..] => Ok(result.clone()),
            [XValue::Bool(false), XValue::Str(msg), XValue::Int(code), ..] => {
                Err(self.rpc_error(what, *code, scrub(msg)))
            }
            [XValue::Bool(false), XValue::Str(msg)] => Err(self.rpc_error(what, 0, scrub(msg))),
            _ => Err(self.malformed(what, "not [success, result, code]".into())),
        }
    }

    fn rpc_error(&self, what: &str, code: i64, message: String) -> CloudError {
        let (cloud, what) = (self.name.clone(), what.to_owned());
        match code {
            AUTHENTICATION => CloudError::Auth { cloud, what },
            AUTHORIZATION => CloudError::Forbidden {
                cloud,
                what,
                message,
            },
            NO_EXISTS => CloudError::NotFound { cloud, what },
            ACTION | LOCKED => CloudError::Conflict {
                cloud,
                what,
                message,
            },
            c => CloudError::Server {
                cloud,
                what,
                status: 500,
                message: format!("error 0x{c:04x}: {message}"),
            },
        }
    }

    fn id(&self, what: &str, id: &str) -> Result<i64, CloudError> {
        id.parse()
            .map_err(|_| self.malformed(what, format!("VM id {id:?} is not a number")))
    }

    async fn action(&self, action: &str, id: &str) -> Result<(), CloudError> {
        let what = format!("{action} {id}");
        let n = self.id(&what, id)?;
        self.call(
            &what,
            "one.vm.action",
            vec![XValue::Str(action.into()), XValue::Int(n)],
            self.t.request,
        )
        .await
        .map(drop)
    }

    fn xml<T: serde::de::DeserializeOwned>(&self, what: &str, v: XValue) -> Result<T, CloudError> {
        let XValue::Str(s) = v else {
            return Err(self.malformed(what, "expected an XML document".into()));
        };
        quick_xml::de::from_str(&s).map_err(|e| self.malformed(what, e.to_string()))
    }
}

impl Cloud for OpenNebula {
    fn name(&self) -> &str {
        &self.name
    }

    async fn reachable(&self) -> Result<(), CloudError> {
        self.call(
            "reachability check",
            "one.system.version",
            vec![],
            self.t.reach,
        )
        .await
        .map(drop)
    }

    async fn create(&self, spec: &VmSpec) -> Result<String, CloudError> {
        let what = format!("create {}", spec.name);
        let template: i64 = spec.image.parse().map_err(|_| {
            CloudError::Client(format!(
                "cloud {}: template {:?} is not an OpenNebula template id",
                self.name, spec.image
            ))
        })?;
        // The template's capacity is overridden to fit the request.
        let extra = format!(
            "VCPU = \"{0}\"\nCPU = \"{0}\"\nMEMORY = \"{1}\"",
            spec.vcpus, spec.mem_mb
        );
        let v = self
            .call(
                &what,
                "one.template.instantiate",
                vec![
                    XValue::Int(template),
                    XValue::Str(spec.name.clone()),
                    XValue::Bool(false),
                    XValue::Str(extra),
                    XValue::Bool(false),
                ],
                self.t.request,
            )
            .await?;
        match v {
            XValue::Int(id) => Ok(id.to_string()),
            _ => Err(self.malformed(&what, "the VM id is not an integer".into())),
        }
    }

    async fn start(&self, id: &str) -> Result<(), CloudError> {
        self.action("resume", id).await
    }

    async fn stop(&self, id: &str) -> Result<(), CloudError> {
        self.action("poweroff", id).await
    }

    async fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.action("terminate-hard", id).await
    }

    async fn status(&self, id: &str) -> Result<VmStatus, CloudError> {
        let what = format!("info {id}");
        let n = self.id(&what, id)?;
        let v = self
            .call(
                &what,
                "one.vm.info",
                vec![XValue::Int(n), XValue::Bool(false)],
                self.t.request,
            )
            .await?;
        let vm: VmXml = self.xml(&what, v)?;
        Ok(vm_status(vm.state, vm.lcm))
    }

    async fn capacity(&self) -> Result<Capacity, CloudError> {
        let what = "user quotas";
        let v = self
            .call(
                what,
                "one.user.info",
                vec![XValue::Int(-1), XValue::Bool(false)],
                self.t.request,
            )
            .await?;
        let user: UserXml = self.xml(what, v)?;
        Ok(capacity_from(&user))
    }

    async fn find_by_name(&self, name: &str) -> Result<Option<String>, CloudError> {
        let what = format!("find {name}");
        // -3: the user's own VMs; -1, -1: all ids; -1: any state but DONE.
        let params = vec![
            XValue::Int(-3),
            XValue::Int(-1),
            XValue::Int(-1),
            XValue::Int(-1),
        ];
        let v = self
            .call(&what, "one.vmpool.info", params, self.t.request)
            .await?;
        let pool: PoolXml = self.xml(&what, v)?;
        Ok(pool
            .vms
            .into_iter()
            .find(|v| v.name == name && v.state != 6)
            .map(|v| v.id.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    #[test]
    fn call_document_escapes_and_types() {
        let d = method_call(
            "one.vm.action",
            &[
                XValue::Str("u:p<&>".into()),
                XValue::Str("poweroff".into()),
                XValue::Int(7),
                XValue::Bool(true),
            ],
        );
        assert_eq!(
            d,
            "<?xml version=\"1.0\"?>\n<methodCall><methodName>one.vm.action</methodName><params>\
             <param><value><string>u:p&lt;&amp;&gt;</string></value></param>\
             <param><value><string>poweroff</string></value></param>\
             <param><value><int>7</int></value></param>\
             <param><value><boolean>1</boolean></value></param></params></methodCall>"
        );
    }

    #[test]
    fn responses_parse() {
        let ok = "<?xml version=\"1.0\"?><methodResponse><params><param><value><array><data>\
                  <value><boolean>1</boolean></value><value><i4>42</i4></value><value><i4>0</i4></value>\
                  </data></array></value></param></params></methodResponse>";
        assert_eq!(
            parse_response(ok).unwrap().unwrap(),
            XValue::Array(vec![XValue::Bool(true), XValue::Int(42), XValue::Int(0)])
        );
        let s = "<methodResponse><params><param><value><array><data><value><boolean>1</boolean></value>\
                 <value><string>&lt;VM&gt;&lt;ID&gt;3&lt;/ID&gt;&lt;/VM&gt;</string></value><value>plain</value>\
                 <value><struct><member><name>a</name><value><double>1.5</double></value></member></struct></value>\
                 </data></array></value></param></params></methodResponse>";
        let XValue::Array(a) = parse_response(s).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(a[1], XValue::Str("<VM><ID>3</ID></VM>".into()));
        assert_eq!(a[2], XValue::Str("plain".into()));
        assert_eq!(
            a[3],
            XValue::Struct(vec![("a".into(), XValue::Double(1.5))])
        );
        let fault = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member>\
                     <member><name>faultString</name><value><string>Too many parameters</string></value></member></struct></value></fault></methodResponse>";
        assert_eq!(
            parse_response(fault).unwrap(),
            Err((4, "Too many parameters".into()))
        );
        assert!(parse_response("<html>502 Bad Gateway</html>").is_err());
        assert!(
            parse_response("<methodResponse><params><param><value><int>x</int></value>").is_err()
        );
        assert!(parse_response("<methodResponse><params><param><value><array><data><value><boolean>1</boolean></value>").is_err());
    }

    #[test]
    fn states_and_quotas() {
        assert_eq!(vm_status(3, 3), VmStatus::Active);
        assert_eq!(vm_status(3, 2), VmStatus::Busy);
        assert_eq!(vm_status(3, 36), VmStatus::Error);
        assert_eq!(vm_status(8, 0), VmStatus::Stopped);
        assert_eq!(vm_status(1, 0), VmStatus::Busy);
        assert_eq!(vm_status(6, 0), VmStatus::Deleted);
        let u: UserXml = quick_xml::de::from_str(
            "<USER><ID>2</ID><VM_QUOTA><VM><CPU>4.5</CPU><CPU_USED>1.5</CPU_USED><MEMORY>-1</MEMORY><MEMORY_USED>512</MEMORY_USED>\
             <VMS>3</VMS><VMS_USED>1</VMS_USED></VM></VM_QUOTA>\
             <DEFAULT_USER_QUOTAS><VM_QUOTA><VM><CPU>-2</CPU><MEMORY>4096</MEMORY><VMS>-1</VMS></VM></VM_QUOTA></DEFAULT_USER_QUOTAS></USER>",
        )
        .unwrap();
        let c = capacity_from(&u);
        assert_eq!((c.max_instances, c.used_instances), (Some(3), 1));
        assert_eq!((c.max_cores, c.used_cores), (Some(4), 2));
        assert_eq!((c.max_ram_mb, c.used_ram_mb), (Some(4096), 512));
        let u: UserXml = quick_xml::de::from_str("<USER><ID>2</ID><VM_QUOTA/><DEFAULT_USER_QUOTAS><VM_QUOTA/></DEFAULT_USER_QUOTAS></USER>").unwrap();
        assert_eq!(capacity_from(&u), Capacity::default());
    }
}
