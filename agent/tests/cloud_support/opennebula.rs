//! The fixture's model of an OpenNebula front-end (XML-RPC: `one.template.instantiate`,
//! `one.vm.action`, `one.vm.info`, `one.user.info`, `one.vmpool.info`, `one.system.version`), shared
//! by the client tests and the agent-level tests.
#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)] // a fixture that unwraps fails the test with the value

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_xml::events::Event;

use super::{random_hex, Fixture, Req, Resp};

pub const AUTHENTICATION: i64 = 0x0100;
pub const AUTHORIZATION: i64 = 0x0200;
pub const NO_EXISTS: i64 = 0x0400;
pub const ACTION: i64 = 0x0800;
pub const TEMPLATE_ID: &str = "7";

pub struct Vm {
    pub name: String,
    pub state: u32,
    pub lcm: u32,
    /// (STATE, LCM_STATE) the next info reports.
    pub pending: Option<(u32, u32)>,
}

pub struct Model {
    pub session: String,
    pub vms: BTreeMap<u64, Vm>,
    pub next_id: u64,
    pub quota_vms: usize,
    pub inject: VecDeque<(String, Resp)>,
    pub hang_after_create: bool,
    pub hang: bool,
}

/// `(methodName, scalar parameters as text)`.
pub fn parse_call(body: &str) -> (String, Vec<String>) {
    let mut r = quick_xml::Reader::from_str(body);
    let (mut method, mut params, mut cur, mut in_name) =
        (String::new(), Vec::new(), None::<String>, false);
    loop {
        match r.read_event().expect("xml") {
            Event::Start(e) => match e.name().as_ref() {
                b"methodName" => in_name = true,
                b"string" | b"int" | b"i4" | b"boolean" => cur = Some(String::new()),
                _ => {}
            },
            Event::Text(t) => {
                let t = t.unescape().expect("text").into_owned();
                if in_name {
                    method = t;
                } else if let Some(c) = cur.as_mut() {
                    c.push_str(&t);
                }
            }
            Event::End(e) => match e.name().as_ref() {
                b"methodName" => in_name = false,
                b"string" | b"int" | b"i4" | b"boolean" => params.extend(cur.take()),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    (method, params)
}

pub fn answer(inner: &str) -> Resp {
    Resp::new(
        200,
        format!(
            "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><array><data>{inner}</data></array></value></param></params></methodResponse>"
        ),
    )
    .header("Content-Type", "text/xml")
}

pub fn ok(value: &str) -> Resp {
    answer(&format!(
        "<value><boolean>1</boolean></value>{value}<value><i4>0</i4></value>"
    ))
}

pub fn ok_xml(doc: &str) -> Resp {
    ok(&format!(
        "<value><string>{}</string></value>",
        quick_xml::escape::escape(doc)
    ))
}

pub fn fail(msg: &str, code: i64) -> Resp {
    answer(&format!(
        "<value><boolean>0</boolean></value><value><string>{}</string></value><value><i4>{code}</i4></value>",
        quick_xml::escape::escape(msg)
    ))
}

pub fn vm_xml(id: u64, v: &Vm) -> String {
    format!(
        "<VM><ID>{id}</ID><UID>2</UID><GID>1</GID><UNAME>oneuser</UNAME><NAME>{}</NAME><STATE>{}</STATE><LCM_STATE>{}</LCM_STATE>\
         <TEMPLATE><CPU><![CDATA[1]]></CPU><MEMORY><![CDATA[512]]></MEMORY></TEMPLATE><USER_TEMPLATE/></VM>",
        v.name, v.state, v.lcm
    )
}

pub fn handle(m: &mut Model, r: &Req) -> Resp {
    let (method, p) = parse_call(&r.body);
    if let Some(i) = m.inject.iter().position(|(name, _)| *name == method) {
        return m
            .inject
            .remove(i)
            .map(|(_, resp)| resp)
            .unwrap_or_else(|| Resp::new(500, ""));
    }
    if r.method != "POST" || r.path != "/RPC2" {
        return Resp::new(404, "not found");
    }
    if p.first() != Some(&m.session) {
        return fail(
            &format!("[{method}] User couldn't be authenticated, aborting call."),
            AUTHENTICATION,
        );
    }
    if m.hang && method != "one.system.version" {
        return Resp::new(503, "").delayed(Duration::from_secs(30));
    }
    let id = |i: usize| {
        p.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    };
    match method.as_str() {
        "one.system.version" => ok("<value><string>6.10.0</string></value>"),
        "one.template.instantiate" => {
            if p.get(1).map(String::as_str) != Some(TEMPLATE_ID) {
                return fail(&format!("[one.template.instantiate] Error getting template [{}].", p[1]), NO_EXISTS);
            }
            if m.vms.len() >= m.quota_vms {
                return fail(
                    &format!("[one.template.instantiate] User [2] : limit of {} reached for VMS quota in VM.", m.quota_vms),
                    AUTHORIZATION,
                );
            }
            m.next_id += 1;
            let vm = Vm { name: p[2].clone(), state: 1, lcm: 0, pending: Some((3, 3)) };
            m.vms.insert(m.next_id, vm);
            if m.hang_after_create {
                m.hang = true;
            }
            ok(&format!("<value><i4>{}</i4></value>", m.next_id))
        }
        "one.vm.info" => match m.vms.get_mut(&id(1)) {
            None => fail(&format!("[one.vm.info] Error getting virtual machine [{}].", p[1]), NO_EXISTS),
            Some(v) => {
                let doc = vm_xml(id(1), v);
                if let Some((s, l)) = v.pending.take() {
                    (v.state, v.lcm) = (s, l);
                }
                ok_xml(&doc)
            }
        },
        "one.vm.action" => {
            let (action, vid) = (p[1].as_str(), id(2));
            let Some(v) = m.vms.get_mut(&vid) else {
                return fail(&format!("[one.vm.action] Error getting virtual machine [{}].", p[2]), NO_EXISTS);
            };
            let next = match (action, v.state, v.lcm) {
                ("poweroff", 3, 3) => (8, 0),
                ("resume", 8, _) => (3, 3),
                ("terminate-hard", ..) => {
                    m.vms.remove(&vid);
                    return ok(&format!("<value><i4>{vid}</i4></value>"));
                }
                _ => {
                    return fail(
                        &format!("[one.vm.action] Error performing action \"{action}\": This action is not available for state {}", v.state),
                        ACTION,
                    )
                }
            };
            v.pending = Some(next);
            ok(&format!("<value><i4>{vid}</i4></value>"))
        }
        "one.user.info" => ok_xml(&format!(
            "<USER><ID>2</ID><GID>1</GID><NAME>oneuser</NAME><VM_QUOTA><VM><CPU>-2</CPU><CPU_USED>{0}</CPU_USED>\
             <MEMORY>-1</MEMORY><MEMORY_USED>{1}</MEMORY_USED><VMS>{2}</VMS><VMS_USED>{0}</VMS_USED></VM></VM_QUOTA>\
             <DEFAULT_USER_QUOTAS><VM_QUOTA><VM><MEMORY>8192</MEMORY><VMS>-1</VMS></VM></VM_QUOTA></DEFAULT_USER_QUOTAS></USER>",
            m.vms.len(),
            m.vms.len() * 512,
            m.quota_vms
        )),
        "one.vmpool.info" => {
            let vms: String = m.vms.iter().map(|(id, v)| vm_xml(*id, v)).collect();
            ok_xml(&format!("<VM_POOL>{vms}</VM_POOL>"))
        }
        _ => Resp::new(200, "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32601</int></value></member><member><name>faultString</name><value><string>method not found</string></value></member></struct></value></fault></methodResponse>"),
    }
}

pub type Shared = Arc<Mutex<Model>>;

pub async fn fixture() -> (Fixture, Shared, String) {
    let password = format!("onepw-{}", random_hex(20));
    let m = Arc::new(Mutex::new(Model {
        session: format!("oneuser:{password}"),
        vms: BTreeMap::new(),
        next_id: 40 + u64::from(fastrand::u8(..)),
        quota_vms: 3,
        inject: VecDeque::new(),
        hang_after_create: false,
        hang: false,
    }));
    let h = m.clone();
    let fx = Fixture::start(Arc::new(move |r: &Req| handle(&mut h.lock().unwrap(), r))).await;
    (fx, m, password)
}
