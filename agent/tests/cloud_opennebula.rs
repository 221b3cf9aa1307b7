//! The OpenNebula client against a loopback XML-RPC fixture implementing the documented calls
//! (`one.template.instantiate`, `one.vm.action`, `one.vm.info`, `one.user.info`,
//! `one.vmpool.info`, `one.system.version`) and answer shape `[success, result|message, code]`
//! with OpenNebula's error codes. Each test asserts the exact calls received and the client's
//! behaviour.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod cloud_support;

use std::time::Duration;

use betaas_agent::cloud::opennebula::OpenNebula;
use betaas_agent::cloud::policy::{plan, CloudView, Plan, Registry, RemoteState};
use betaas_agent::cloud::store::Store;
use betaas_agent::cloud::{
    deploy, release, sweep, Cloud, CloudError, Credentials, DeployError, Secret, VmSpec, VmStatus,
};
use betaas_core::allocator::Provider;
use cloud_support::{capture_logs, fast_timeouts, random_hex, refused_addr, Fixture, Resp};

use cloud_support::opennebula::*;

fn creds(password: &str) -> Credentials {
    Credentials::Password {
        username: "oneuser".into(),
        password: Secret::new(password),
        user_domain: "Default".into(),
        project: None,
        project_domain: "Default".into(),
    }
}

fn client(fx: &Fixture, password: &str) -> OpenNebula {
    OpenNebula::new(
        "one",
        &format!("{}/RPC2", fx.url()),
        &creds(password),
        fast_timeouts(),
    )
    .unwrap()
}

fn spec() -> VmSpec {
    VmSpec {
        name: format!("betaas-gw-1-{}", random_hex(8)),
        template: "storage-node".into(),
        image: TEMPLATE_ID.into(),
        vcpus: fastrand::u32(1..=4),
        mem_mb: 256 * u64::from(fastrand::u32(1..=8)),
        disk_gb: 5,
    }
}

fn view(limit: u32) -> CloudView {
    CloudView {
        name: "one".into(),
        provider: Provider::Opennebula,
        owner: "gw-1".into(),
        vm_limit: limit,
        cost_per_vm: 0.0,
        cost_limit: None,
        reachable: true,
        quota_room: None,
    }
}

fn call(method: &str, session: &str, params: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<methodCall><methodName>{method}</methodName><params>\
         <param><value><string>{session}</string></value></param>{params}</params></methodCall>"
    )
}

fn int(i: &str) -> String {
    format!("<param><value><int>{i}</int></value></param>")
}

fn string(s: &str) -> String {
    format!("<param><value><string>{s}</string></value></param>")
}

fn boolean(b: bool) -> String {
    format!(
        "<param><value><boolean>{}</boolean></value></param>",
        u8::from(b)
    )
}

#[tokio::test]
async fn full_lifecycle_instantiate_poweroff_resume_and_idle_terminate() {
    let (logs, _guard) = capture_logs();
    let (fx, m, password) = fixture().await;
    let session = format!("oneuser:{password}");
    let one = client(&fx, &password);
    let t = fast_timeouts();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let sp = spec();

    let cap = one.capacity().await.unwrap();
    assert_eq!(
        (cap.max_instances, cap.used_instances, cap.max_cores),
        (Some(3), 0, None)
    );
    assert_eq!(
        cap.max_ram_mb,
        Some(8192),
        "MEMORY -1: the default quota applies"
    );
    let p = plan(&reg, &[view(2)], &sp.template, &["gw-1"]);
    let d = deploy(&one, &p, &mut reg, &store, &sp, 1_000, &t)
        .await
        .unwrap();
    let id = d.id.clone();
    assert_eq!(id, m.lock().unwrap().next_id.to_string());
    let reqs = fx.take();
    for r in &reqs {
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.header("content-type")),
            ("POST", "/RPC2", Some("text/xml"))
        );
    }
    let bodies: Vec<&str> = reqs.iter().map(|r| r.body.as_str()).collect();
    let info = call(
        "one.vm.info",
        &session,
        &format!("{}{}", int(&id), boolean(false)),
    );
    assert_eq!(
        bodies,
        [
            call(
                "one.user.info",
                &session,
                &format!("{}{}", int("-1"), boolean(false))
            ),
            call("one.system.version", &session, ""),
            call(
                "one.template.instantiate",
                &session,
                &format!(
                    "{}{}{}{}{}",
                    int(TEMPLATE_ID),
                    string(&sp.name),
                    boolean(false),
                    string(&format!(
                        "VCPU = &quot;{0}&quot;\nCPU = &quot;{0}&quot;\nMEMORY = &quot;{1}&quot;",
                        sp.vcpus, sp.mem_mb
                    )),
                    boolean(false)
                )
            ),
            info.clone(),
            info.clone(),
        ]
    );
    assert_eq!(
        (reg.vms[0].state, reg.vms[0].id.as_deref()),
        (RemoteState::Running, Some(id.as_str()))
    );
    assert_eq!(store.load().unwrap(), reg);

    release(&one, &mut reg, &store, &id, 2_000, &t)
        .await
        .unwrap();
    let reqs = fx.take();
    assert_eq!(
        reqs[0].body,
        call(
            "one.vm.action",
            &session,
            &format!("{}{}", string("poweroff"), int(&id))
        )
    );
    assert!(reqs[1..].iter().all(|r| r.body == info));
    assert_eq!(m.lock().unwrap().vms[&id.parse::<u64>().unwrap()].state, 8);

    let p = plan(&reg, &[view(2)], &sp.template, &["gw-1"]);
    assert_eq!(
        p,
        Plan::Resume {
            cloud: "one".into(),
            id: id.clone()
        }
    );
    let d2 = deploy(&one, &p, &mut reg, &store, &spec(), 2_100, &t)
        .await
        .unwrap();
    assert!(d2.resumed && d2.id == id);
    let reqs = fx.take();
    assert_eq!(
        reqs[1].body,
        call(
            "one.vm.action",
            &session,
            &format!("{}{}", string("resume"), int(&id))
        )
    );
    assert!(!reqs
        .iter()
        .any(|r| r.body.contains("one.template.instantiate")));
    assert_eq!(m.lock().unwrap().vms.len(), 1);

    release(&one, &mut reg, &store, &id, 3_000, &t)
        .await
        .unwrap();
    fx.take();
    assert!(sweep(&one, &mut reg, &store, 120, 3_119)
        .await
        .unwrap()
        .is_empty());
    assert!(fx.take().is_empty());
    assert_eq!(
        sweep(&one, &mut reg, &store, 120, 3_120).await.unwrap(),
        [id.as_str()]
    );
    let reqs = fx.take();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body,
        call(
            "one.vm.action",
            &session,
            &format!("{}{}", string("terminate-hard"), int(&id))
        )
    );
    assert!(m.lock().unwrap().vms.is_empty() && reg.vms.is_empty());
    assert!(store.load().unwrap().vms.is_empty());
    let text = logs.text();
    assert!(text.contains("remote VM active"), "{text}");
    assert!(!text.contains(&password), "password in logs:\n{text}");
    assert!(!format!("{one:?}").contains(&password));
}

#[tokio::test]
async fn application_credentials_are_refused_for_opennebula() {
    let e = OpenNebula::new(
        "one",
        "http://127.0.0.1:1/RPC2",
        &Credentials::ApplicationCredential {
            id: "a".into(),
            secret: Secret::new("zzz-secret"),
        },
        fast_timeouts(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("auth = \"password\""), "{e}");
    assert!(!e.to_string().contains("zzz-secret"));
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_and_echoed_secrets_are_scrubbed() {
    let (logs, _guard) = capture_logs();
    let (fx, m, _) = fixture().await;
    let wrong = format!("wrong-{}", random_hex(12));
    let one = client(&fx, &wrong);
    let e = one.capacity().await.unwrap_err();
    assert!(matches!(e, CloudError::Auth { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains(&wrong));
    // A cloud that echoes the session string in an error message.
    m.lock().unwrap().inject.push_back((
        "one.vm.info".into(),
        fail(&format!("bad session oneuser:{wrong} for call"), 0x2000),
    ));
    let e = one.status("3").await.unwrap_err();
    assert!(matches!(e, CloudError::Server { .. }), "{e}");
    assert!(
        e.to_string().contains("bad session oneuser:*** for call"),
        "{e}"
    );
    assert!(!logs.text().contains(&wrong));
}

#[tokio::test]
async fn error_codes_malformed_answers_timeouts_and_refused_connections() {
    let (fx, m, password) = fixture().await;
    let one = client(&fx, &password);
    // NO_EXISTS
    let e = one.status("99999").await.unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    // ACTION: resume a running VM.
    let id = one.create(&spec()).await.unwrap();
    one.status(&id).await.unwrap();
    assert_eq!(one.status(&id).await.unwrap(), VmStatus::Active);
    let e = one.start(&id).await.unwrap_err();
    assert!(
        matches!(e, CloudError::Conflict { ref message, .. } if message.contains("not available for state 3")),
        "{e}"
    );
    // A template that does not exist.
    let mut bad = spec();
    bad.image = "12".into();
    assert!(matches!(
        one.create(&bad).await.unwrap_err(),
        CloudError::NotFound { .. }
    ));
    // HTTP 500, HTML instead of XML-RPC, a truncated answer, an XML-RPC fault.
    m.lock()
        .unwrap()
        .inject
        .push_back(("one.vm.info".into(), Resp::new(500, "oops")));
    assert!(matches!(
        one.status(&id).await.unwrap_err(),
        CloudError::Server { status: 500, .. }
    ));
    m.lock().unwrap().inject.push_back((
        "one.vm.info".into(),
        Resp::new(200, "<html><body>502 Bad Gateway</body></html>"),
    ));
    assert!(matches!(
        one.status(&id).await.unwrap_err(),
        CloudError::Malformed { .. }
    ));
    m.lock().unwrap().inject.push_back((
        "one.vm.info".into(),
        Resp::new(
            200,
            "<methodResponse><params><param><value><array><data><value><boolean>1",
        ),
    ));
    assert!(matches!(
        one.status(&id).await.unwrap_err(),
        CloudError::Malformed { .. }
    ));
    m.lock().unwrap().inject.push_back((
        "one.vm.info".into(),
        ok_xml("<VM><ID>1</ID><STATE>three</STATE></VM>"),
    ));
    assert!(matches!(
        one.status(&id).await.unwrap_err(),
        CloudError::Malformed { .. }
    ));
    let e = one.find_by_name("x").await;
    assert!(e.is_ok(), "{e:?}");
    m.lock().unwrap().inject.push_back(("one.user.info".into(), Resp::new(200, "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>-32602</int></value></member><member><name>faultString</name><value><string>bad params</string></value></member></struct></value></fault></methodResponse>")));
    let e = one.capacity().await.unwrap_err();
    assert!(e.to_string().contains("bad params"), "{e}");
    // Slow answer: the request timeout; slow reachability: the short one.
    m.lock().unwrap().inject.push_back((
        "one.vm.info".into(),
        ok_xml("<VM/>").delayed(Duration::from_secs(5)),
    ));
    let e = one.status(&id).await.unwrap_err();
    assert!(
        matches!(e, CloudError::Timeout { after, .. } if after == fast_timeouts().request),
        "{e}"
    );
    m.lock().unwrap().inject.push_back((
        "one.system.version".into(),
        ok("<value><string>6</string></value>").delayed(Duration::from_secs(5)),
    ));
    let e = one.reachable().await.unwrap_err();
    assert!(
        matches!(e, CloudError::Timeout { after, .. } if after == fast_timeouts().reach),
        "{e}"
    );
    // Nothing listening.
    let down = OpenNebula::new(
        "down",
        &format!("http://{}/RPC2", refused_addr()),
        &creds(&password),
        fast_timeouts(),
    )
    .unwrap();
    let e = down.reachable().await.unwrap_err();
    assert!(
        matches!(e, CloudError::Unreachable { .. }) && e.is_unreachable(),
        "{e}"
    );
}

#[tokio::test]
async fn quota_refusal_leaves_nothing_and_limit_is_kept() {
    let (fx, m, password) = fixture().await;
    m.lock().unwrap().quota_vms = 0;
    let one = client(&fx, &password);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let p = plan(&reg, &[view(5)], "storage-node", &["gw-1"]);
    let e = deploy(&one, &p, &mut reg, &store, &spec(), 1, &fast_timeouts())
        .await
        .unwrap_err();
    assert!(matches!(&e, DeployError::Cloud(c) if c.is_quota()), "{e}");
    assert!(reg.vms.is_empty() && m.lock().unwrap().vms.is_empty());
    // The configured limit binds before the cloud's quota does.
    m.lock().unwrap().quota_vms = 10;
    let p = plan(&reg, &[view(1)], "storage-node", &["gw-1"]);
    deploy(&one, &p, &mut reg, &store, &spec(), 2, &fast_timeouts())
        .await
        .unwrap();
    assert!(matches!(
        plan(&reg, &[view(1)], "other", &["gw-1"]),
        Plan::Refuse(_)
    ));
    assert_eq!(m.lock().unwrap().vms.len(), 1);
}

#[tokio::test]
async fn cloud_gone_mid_deploy_then_back_no_vm_leaked() {
    let (mut fx, m, password) = fixture().await;
    m.lock().unwrap().hang_after_create = true;
    let one = client(&fx, &password);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let p = plan(&reg, &[view(2)], "storage-node", &["gw-1"]);
    let e = deploy(&one, &p, &mut reg, &store, &spec(), 10, &fast_timeouts())
        .await
        .unwrap_err();
    assert!(e.unreachable(), "{e}");
    let id = m
        .lock()
        .unwrap()
        .vms
        .keys()
        .next()
        .expect("created")
        .to_string();
    assert_eq!(store.load().unwrap().vms[0].state, RemoteState::Cleanup);
    // The cloud is down for a while (connections refused): the sweep fails and keeps the record.
    fx.stop();
    assert!(sweep(&one, &mut reg, &store, 60, 20).await.is_err());
    assert_eq!(
        store.load().unwrap().vms[0].id.as_deref(),
        Some(id.as_str())
    );
    // Back: the sweep terminates it.
    m.lock().unwrap().hang = false;
    fx.restart().await;
    assert_eq!(sweep(&one, &mut reg, &store, 60, 30).await.unwrap(), [id]);
    assert!(m.lock().unwrap().vms.is_empty(), "leaked VM");
    assert!(store.load().unwrap().vms.is_empty());
}

#[tokio::test]
async fn lost_instantiate_answer_is_found_by_name_and_terminated() {
    let (fx, m, password) = fixture().await;
    let session = format!("oneuser:{password}");
    let one = client(&fx, &password);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let sp = spec();
    // The VM is created but the answer never arrives in time.
    m.lock().unwrap().vms.insert(
        77,
        Vm {
            name: sp.name.clone(),
            state: 1,
            lcm: 0,
            pending: None,
        },
    );
    m.lock().unwrap().inject.push_back((
        "one.template.instantiate".into(),
        ok("<value><i4>77</i4></value>").delayed(Duration::from_secs(5)),
    ));
    let p = plan(&reg, &[view(2)], &sp.template, &["gw-1"]);
    let e = deploy(&one, &p, &mut reg, &store, &sp, 1, &fast_timeouts())
        .await
        .unwrap_err();
    assert!(e.unreachable(), "{e}");
    assert_eq!(
        (reg.vms[0].state, reg.vms[0].id.clone()),
        (RemoteState::Cleanup, None)
    );
    fx.take();
    assert_eq!(sweep(&one, &mut reg, &store, 60, 2).await.unwrap(), ["77"]);
    let bodies: Vec<String> = fx.take().into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            call(
                "one.vmpool.info",
                &session,
                &format!("{}{}{}{}", int("-3"), int("-1"), int("-1"), int("-1"))
            ),
            call(
                "one.vm.action",
                &session,
                &format!("{}{}", string("terminate-hard"), int("77"))
            ),
        ]
    );
    assert!(m.lock().unwrap().vms.is_empty() && reg.vms.is_empty());
}
