//! The OpenStack client against a loopback fixture implementing the documented shapes of
//! Identity v3 (`POST /v3/auth/tokens`: `X-Subject-Token` header, `token.expires_at`,
//! `token.catalog`) and Compute v2.1 (`/servers`, `/servers/{id}/action` with `os-start`/`os-stop`,
//! `/flavors/detail`, `/limits`, Nova's `{"<kind>": {"message", "code"}}` errors).
//! Each test asserts the exact requests the fixture received and what the client did.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod cloud_support;

use std::time::Duration;

use betaas_agent::cloud::openstack::OpenStack;
use betaas_agent::cloud::policy::{allocator_view, plan, CloudView, Plan, Registry, RemoteState};
use betaas_agent::cloud::store::Store;
use betaas_agent::cloud::{
    deploy, release, sweep, Cloud, CloudError, Credentials, DeployError, Secret, VmSpec, VmStatus,
};
use betaas_core::allocator::{
    decide, CancelReason, Gateway, InstanceView, Outcome, Policy, Provider, Request, Res, Role,
    Template, Virt,
};
use cloud_support::{capture_logs, fast_timeouts, random_hex, refused_addr, Fixture, Req, Resp};
use serde_json::json;

use cloud_support::openstack::*;

fn password_creds(m: &Model) -> Credentials {
    Credentials::Password {
        username: m.user.clone(),
        password: Secret::new(m.password.clone()),
        user_domain: "Default".into(),
        project: Some("iot".into()),
        project_domain: "Default".into(),
    }
}

fn client(fx: &Fixture, creds: Credentials) -> OpenStack {
    OpenStack::new(
        "os",
        &format!("{}/v3", fx.url()),
        creds,
        None,
        None,
        fast_timeouts(),
    )
    .unwrap()
}

fn spec(vcpus: u32, mem_mb: u64) -> VmSpec {
    VmSpec {
        name: format!("betaas-gw-1-{}", random_hex(8)),
        template: "compute-node".into(),
        image: format!("img-{}", random_hex(8)),
        vcpus,
        mem_mb,
        disk_gb: 10,
    }
}

fn view(limit: u32, reachable: bool) -> CloudView {
    CloudView {
        name: "os".into(),
        provider: Provider::Openstack,
        owner: "gw-1".into(),
        vm_limit: limit,
        cost_per_vm: 1.0,
        cost_limit: None,
        reachable,
        quota_room: None,
    }
}

fn compute_requests(reqs: &[Req]) -> Vec<&Req> {
    reqs.iter()
        .filter(|r| r.path.starts_with(COMPUTE))
        .collect()
}

#[tokio::test]
async fn full_lifecycle_create_stop_resume_and_idle_destroy() {
    betaas_e2e::seeded();
    let (logs, _guard) = capture_logs();
    let (fx, m) = fixture(Model::new()).await;
    let (password, creds) = {
        let m = m.lock().unwrap();
        (m.password.clone(), password_creds(&m))
    };
    let os = client(&fx, creds);
    let t = fast_timeouts();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    // Random size: the flavor chosen must be the smallest that fits it.
    let (vcpus, mem, disk, flavor) = [
        (1, 400, 1, "f-tiny"),
        (1, 400, 2, "f-small"),
        (1, 1500, 10, "f-small"),
        (2, 1024, 10, "f-medium"),
        (3, 4096, 10, "f-large"),
        (1, 512, 50, "f-large"),
    ][fastrand::usize(0..6)];
    let mut sp = spec(vcpus, mem);
    sp.disk_gb = disk;

    let cap = os.capacity().await.unwrap();
    assert_eq!((cap.max_instances, cap.used_instances), (Some(5), 0));
    let p = plan(&reg, &[view(2, true)], &sp.template, &["gw-1"]);
    assert_eq!(
        p,
        Plan::Create {
            cloud: "os".into(),
            destroy_first: None
        }
    );
    let d = deploy(&os, &p, &mut reg, &store, &sp, 1_000, &t)
        .await
        .unwrap();
    assert!(!d.resumed);

    let reqs = fx.take();
    let lines: Vec<String> = reqs.iter().map(Req::line).collect();
    let show = format!("GET {COMPUTE}/servers/{}", d.id);
    assert_eq!(
        lines,
        [
            "POST /v3/auth/tokens".to_string(),
            format!("GET {COMPUTE}/limits"),
            "GET /v3".into(),
            format!("GET {COMPUTE}/flavors/detail"),
            format!("POST {COMPUTE}/servers"),
            show.clone(),
            show.clone(),
        ]
    );
    assert_eq!(
        reqs[0].json(),
        json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "betaas", "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": "iot", "domain": {"name": "Default"}}}}})
    );
    let token = m.lock().unwrap().tokens[0].clone();
    for r in compute_requests(&reqs) {
        assert_eq!(
            r.header("X-Auth-Token"),
            Some(token.as_str()),
            "{}",
            r.line()
        );
    }
    assert_eq!(
        reqs[2].header("X-Auth-Token"),
        None,
        "the reachability check sends no token"
    );
    assert_eq!(
        reqs[4].json(),
        json!({"server": {"name": sp.name, "imageRef": sp.image, "flavorRef": flavor}})
    );
    assert_eq!(reg.vms.len(), 1);
    assert_eq!(
        (reg.vms[0].state, reg.vms[0].id.as_deref()),
        (RemoteState::Running, Some(d.id.as_str()))
    );
    assert_eq!(store.load().unwrap(), reg);

    // Not needed any more: stopped, not destroyed.
    release(&os, &mut reg, &store, &d.id, 2_000, &t)
        .await
        .unwrap();
    let reqs = fx.take();
    assert_eq!(
        reqs[0].line(),
        format!("POST {COMPUTE}/servers/{}/action", d.id)
    );
    assert_eq!(reqs[0].body, r#"{"os-stop":null}"#);
    assert!(reqs[1..].iter().all(|r| r.line() == show));
    assert_eq!(m.lock().unwrap().servers[&d.id].status, "SHUTOFF");
    assert_eq!(reg.vms[0].state, RemoteState::Stopped);

    // The same template again: resumed, nothing created.
    let p = plan(&reg, &[view(2, true)], &sp.template, &["gw-1"]);
    assert_eq!(
        p,
        Plan::Resume {
            cloud: "os".into(),
            id: d.id.clone()
        }
    );
    let d2 = deploy(&os, &p, &mut reg, &store, &spec(vcpus, mem), 2_500, &t)
        .await
        .unwrap();
    assert_eq!((d2.id.as_str(), d2.resumed), (d.id.as_str(), true));
    let reqs = fx.take();
    assert_eq!(reqs[0].line(), "GET /v3");
    assert_eq!(
        reqs[1].line(),
        format!("POST {COMPUTE}/servers/{}/action", d.id)
    );
    assert_eq!(reqs[1].body, r#"{"os-start":null}"#);
    assert!(!reqs
        .iter()
        .any(|r| r.line() == format!("POST {COMPUTE}/servers")));
    assert_eq!(m.lock().unwrap().servers.len(), 1);

    // Stopped again at 3000; idle_destroy_secs = 600: kept at 3599, destroyed at 3600.
    release(&os, &mut reg, &store, &d.id, 3_000, &t)
        .await
        .unwrap();
    fx.take();
    assert!(sweep(&os, &mut reg, &store, 600, 3_599)
        .await
        .unwrap()
        .is_empty());
    assert!(fx.take().is_empty());
    assert_eq!(
        sweep(&os, &mut reg, &store, 600, 3_600).await.unwrap(),
        [d.id.as_str()]
    );
    let reqs = fx.take();
    assert_eq!(
        reqs.iter().map(Req::line).collect::<Vec<_>>(),
        [format!("DELETE {COMPUTE}/servers/{}", d.id)]
    );
    assert!(m.lock().unwrap().servers.is_empty());
    assert!(reg.vms.is_empty());
    assert_eq!(store.load().unwrap(), Registry::default());
    // One token for the whole lifecycle.
    assert_eq!(m.lock().unwrap().tokens.len(), 1);
    let text = logs.text();
    assert!(text.contains("remote VM active"), "{text}");
    assert!(
        !text.contains(&password) && !text.contains(&token),
        "secret in logs:\n{text}"
    );
    assert!(!format!("{os:?}").contains(&password));
}

#[tokio::test]
async fn application_credential_body_and_token_header() {
    let (fx, m) = fixture(Model::new()).await;
    let (id, secret) = {
        let m = m.lock().unwrap();
        (m.app_id.clone(), m.app_secret.clone())
    };
    let os = client(
        &fx,
        Credentials::ApplicationCredential {
            id: id.clone(),
            secret: Secret::new(secret.clone()),
        },
    );
    os.capacity().await.unwrap();
    let reqs = fx.take();
    assert_eq!(
        reqs[0].json(),
        json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": id, "secret": secret}}}})
    );
    assert_eq!(
        reqs[1].header("X-Auth-Token"),
        Some(m.lock().unwrap().tokens[0].as_str())
    );
}

#[tokio::test]
async fn token_is_renewed_when_it_expires() {
    let mut model = Model::new();
    model.ttl_secs = 2;
    let (fx, m) = fixture(model).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    os.capacity().await.unwrap();
    os.capacity().await.unwrap();
    assert_eq!(m.lock().unwrap().tokens.len(), 1, "cached while valid");
    // Wait for the event itself: the clock reaching the issued token's expiry (less the client's
    // margin), not a guess at how long that takes.
    let expires = m.lock().unwrap().expires[0];
    let margin = fast_timeouts().token_margin.as_secs();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cloud_support::openstack::now() + margin < expires {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    os.capacity().await.unwrap();
    let tokens = m.lock().unwrap().tokens.clone();
    assert_eq!(tokens.len(), 2);
    let reqs = fx.take();
    assert_eq!(
        reqs.iter().filter(|r| r.path == "/v3/auth/tokens").count(),
        2
    );
    assert_eq!(
        reqs.last().unwrap().header("X-Auth-Token"),
        Some(tokens[1].as_str())
    );
}

#[tokio::test]
async fn revoked_token_is_renewed_once_on_401_then_auth_error() {
    let (fx, m) = fixture(Model::new()).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    os.capacity().await.unwrap();
    m.lock().unwrap().valid.clear(); // revoked on the server side
    os.capacity().await.unwrap();
    let lines: Vec<String> = fx.take().iter().map(Req::line).collect();
    let limits = format!("GET {COMPUTE}/limits");
    assert_eq!(
        lines,
        [
            "POST /v3/auth/tokens".to_string(),
            limits.clone(),
            limits.clone(),
            "POST /v3/auth/tokens".into(),
            limits.clone()
        ]
    );
    // Nova refusing every token: one renewal, then a clear error, not a loop.
    m.lock().unwrap().inject.extend([
        (
            limits.clone(),
            Resp::json(401, json!({"error": {"code": 401}})),
        ),
        (
            limits.clone(),
            Resp::json(401, json!({"error": {"code": 401}})),
        ),
    ]);
    let e = os.capacity().await.unwrap_err();
    assert!(matches!(e, CloudError::Auth { .. }), "{e}");
    assert_eq!(fx.take().iter().filter(|r| r.line() == limits).count(), 2);
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let (logs, _guard) = capture_logs();
    let (fx, m) = fixture(Model::new()).await;
    let mut creds = password_creds(&m.lock().unwrap());
    let wrong = format!("wrong-{}", random_hex(16));
    if let Credentials::Password { password, .. } = &mut creds {
        *password = Secret::new(wrong.clone());
    }
    let os = client(&fx, creds);
    let e = os.capacity().await.unwrap_err();
    assert!(matches!(e, CloudError::Auth { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "cloud os: authentication: authentication refused (check the credentials file)"
    );
    assert!(!format!("{e:?}").contains(&wrong));
    assert!(!logs.text().contains(&wrong));
}

#[tokio::test]
async fn catalog_without_compute_endpoint() {
    let mut model = Model::new();
    model.no_compute = true;
    let (fx, m) = fixture(model).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    let e = os.capacity().await.unwrap_err();
    assert!(matches!(e, CloudError::NoComputeEndpoint { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "cloud os: the service catalog has no public compute endpoint"
    );
    // A region that is not in the catalog is named.
    let os = OpenStack::new(
        "os",
        &fx.url(),
        password_creds(&m.lock().unwrap()),
        Some("public"),
        Some("RegionTwo"),
        fast_timeouts(),
    )
    .unwrap();
    m.lock().unwrap().no_compute = false;
    let e = os.status("x").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "cloud os: the service catalog has no public compute endpoint in region RegionTwo"
    );
}

#[tokio::test]
async fn error_statuses_map_to_kinds() {
    let (fx, m) = fixture(Model::new()).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    // 404
    let e = os.status("srv-gone").await.unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    assert_eq!(e.to_string(), "cloud os: show srv-gone: not found");
    // 409: starting a running server.
    let id = os.create(&spec(1, 512)).await.unwrap();
    os.status(&id).await.unwrap();
    assert_eq!(os.status(&id).await.unwrap(), VmStatus::Active);
    let e = os.start(&id).await.unwrap_err();
    assert!(
        matches!(e, CloudError::Conflict { ref message, .. } if message == "Cannot in vm_state active"),
        "{e}"
    );
    // 500 with a non-JSON body.
    m.lock().unwrap().inject.push_back((
        format!("GET {COMPUTE}/servers/{id}"),
        Resp::new(500, "<html>Internal Server Error</html>"),
    ));
    let e = os.status(&id).await.unwrap_err();
    assert!(
        matches!(e, CloudError::Server { status: 500, ref message, .. } if message.contains("Internal Server Error")),
        "{e}"
    );
    // Malformed JSON on success, and a success body without the field.
    m.lock().unwrap().inject.push_back((
        format!("GET {COMPUTE}/servers/{id}"),
        Resp::new(200, "{\"server\": {\"status\": "),
    ));
    let e = os.status(&id).await.unwrap_err();
    assert!(matches!(e, CloudError::Malformed { .. }), "{e}");
    m.lock().unwrap().inject.push_back((
        format!("GET {COMPUTE}/servers/{id}"),
        Resp::json(200, json!({"server": {}})),
    ));
    let e = os.status(&id).await.unwrap_err();
    assert!(e.to_string().contains("no /server/status"), "{e}");
    // Malformed token answer (no X-Subject-Token).
    let (fx2, m2) = fixture(Model::new()).await;
    m2.lock().unwrap().inject.push_back((
        "POST /v3/auth/tokens".into(),
        Resp::json(201, json!({"token": {}})),
    ));
    let creds2 = password_creds(&m2.lock().unwrap());
    let e = client(&fx2, creds2).capacity().await.unwrap_err();
    assert!(e.to_string().contains("no X-Subject-Token header"), "{e}");
}

#[tokio::test]
async fn quota_exceeded_403_falls_back_and_leaves_nothing() {
    let mut model = Model::new();
    model.max_instances = 0;
    let (fx, m) = fixture(model).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let p = plan(&reg, &[view(3, true)], "compute-node", &["gw-1"]);
    let e = deploy(
        &os,
        &p,
        &mut reg,
        &store,
        &spec(1, 512),
        10,
        &fast_timeouts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(&e, DeployError::Cloud(c) if c.is_quota()), "{e}");
    assert!(!e.unreachable());
    assert!(
        e.to_string().contains("Quota exceeded for instances"),
        "{e}"
    );
    assert!(reg.vms.is_empty() && store.load().unwrap().vms.is_empty());
    assert!(m.lock().unwrap().servers.is_empty());
    // The capacity read from the limits tells the policy there is no room before trying.
    let cap = os.capacity().await.unwrap();
    let mut v = view(3, true);
    v.quota_room = Some(cap.room_for(1, 512));
    assert!(matches!(
        plan(&reg, &[v], "compute-node", &["gw-1"]),
        Plan::Refuse(_)
    ));
}

#[tokio::test]
async fn slow_answers_time_out_and_refused_connections_are_unreachable() {
    let (fx, m) = fixture(Model::new()).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    os.capacity().await.unwrap();
    m.lock().unwrap().inject.push_back((
        format!("GET {COMPUTE}/limits"),
        Resp::json(200, json!({})).delayed(Duration::from_secs(5)),
    ));
    let t0 = std::time::Instant::now();
    let e = os.capacity().await.unwrap_err();
    assert!(
        matches!(e, CloudError::Timeout { after, .. } if after == fast_timeouts().request),
        "{e}"
    );
    assert!(e.is_unreachable());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The reachability check has its own, shorter timeout.
    m.lock().unwrap().inject.push_back((
        "GET /v3".into(),
        Resp::json(200, json!({})).delayed(Duration::from_secs(5)),
    ));
    let t0 = std::time::Instant::now();
    let e = os.reachable().await.unwrap_err();
    assert!(
        matches!(e, CloudError::Timeout { after, .. } if after == fast_timeouts().reach),
        "{e}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        t0.elapsed()
    );

    let creds = password_creds(&m.lock().unwrap());
    let os = OpenStack::new(
        "down",
        &format!("http://{}/v3", refused_addr()),
        creds,
        None,
        None,
        fast_timeouts(),
    )
    .unwrap();
    let e = os.reachable().await.unwrap_err();
    assert!(matches!(e, CloudError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("cloud down: reachability check: unreachable: "),
        "{e}"
    );
}

/// The allocator's Remote decision cannot be carried out: full or unreachable clouds show so in its
/// view and `decide` goes local (a gateway fits) or cancels (none does).
#[tokio::test]
async fn vm_limit_or_unreachable_cloud_makes_the_allocator_go_local_or_cancel() {
    let (fx, m) = fixture(Model::new()).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    let template = Template {
        name: "compute-node".into(),
        vcpus: 2,
        mem_mb: 1024,
        disk_gb: 10,
        role: Role::Compute,
    };
    let gw = |free_mem: u64| Gateway {
        id: "gw-1".into(),
        capacity: Res::new(4, 2048, 100),
        used: Res::new(0, 2048 - free_mem, 0),
        forecast_free: None,
        virt: Virt::Kvm,
        trust: 1.0,
        battery: None,
        vms: 0,
        powerful: false, // a compute node on a non-powerful gateway prefers the remote cloud
    };
    let req = Request {
        id: 1,
        template: template.clone(),
    };
    let decide_with = |reg: &Registry, v: CloudView, free: u64| {
        let view = InstanceView {
            gateways: vec![gw(free)],
            templates: vec![template.clone()],
            remotes: allocator_view(reg, &[v]),
        };
        decide(&req, &view, &Policy::default()).outcome
    };
    let mut reg = Registry::default();
    assert_eq!(
        decide_with(&reg, view(1, true), 2048),
        Outcome::Remote("os".into())
    );
    // Limit reached by a running VM.
    reg.begin_create("os", "compute-node", "n1", 0);
    reg.created("os", "n1", "srv-x", 0);
    reg.set_state("os", "srv-x", RemoteState::Running, 0);
    assert!(matches!(
        plan(&reg, &[view(1, true)], "compute-node", &["gw-1"]),
        Plan::Refuse(_)
    ));
    assert_eq!(
        decide_with(&reg, view(1, true), 2048),
        Outcome::Local("gw-1".into())
    );
    assert_eq!(
        decide_with(&reg, view(1, true), 512),
        Outcome::Cancel(CancelReason::NoResources)
    );
    // Unreachable: the check fails, the view says so.
    let mut fx = fx;
    fx.stop();
    let reachable = os.reachable().await.is_ok();
    assert!(!reachable);
    let reg = Registry::default();
    assert_eq!(
        decide_with(&reg, view(1, reachable), 2048),
        Outcome::Local("gw-1".into())
    );
    assert_eq!(
        decide_with(&reg, view(1, reachable), 512),
        Outcome::Cancel(CancelReason::NoResources)
    );
}

/// A deployment on `model` (one VM of 1 vCPU / 512 MB, limit 2) that is expected to fail, at `now`.
struct Failed {
    fx: Fixture,
    m: Shared,
    os: OpenStack,
    dir: tempfile::TempDir,
    store: Store,
    reg: Registry,
    e: DeployError,
}

async fn failed_deploy(model: Model, now: u64) -> Failed {
    let (fx, m) = fixture(model).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    let sp = spec(1, 512);
    let p = plan(&reg, &[view(2, true)], &sp.template, &["gw-1"]);
    let e = deploy(&os, &p, &mut reg, &store, &sp, now, &fast_timeouts())
        .await
        .unwrap_err();
    Failed {
        fx,
        m,
        os,
        dir,
        store,
        reg,
        e,
    }
}

/// The cloud stops answering right after accepting the create: the deployment fails, the VM is
/// recorded for cleanup (on disk), and the next sweep once the cloud is back deletes it.
#[tokio::test]
async fn unreachable_mid_deploy_leaks_no_vm() {
    let mut model = Model::new();
    model.hang_after_create = true;
    let Failed {
        fx,
        m,
        os,
        dir,
        store,
        reg,
        e,
    } = failed_deploy(model, 100).await;
    assert!(e.unreachable(), "{e}");
    let id = m
        .lock()
        .unwrap()
        .servers
        .keys()
        .next()
        .cloned()
        .expect("the fixture created it");
    // Recorded for cleanup, and that survives a restart of the agent.
    let mut reloaded = Store::open(dir.path()).unwrap().load().unwrap();
    assert_eq!(reloaded.vms.len(), 1);
    assert_eq!(
        (reloaded.vms[0].state, reloaded.vms[0].id.as_deref()),
        (RemoteState::Cleanup, Some(id.as_str()))
    );
    assert_eq!(reloaded, reg);
    // The delete was tried (and timed out).
    assert!(fx
        .lines()
        .contains(&format!("DELETE {COMPUTE}/servers/{id}")));
    m.lock().unwrap().hang = false;
    reloaded.after_restart(200);
    assert_eq!(
        sweep(&os, &mut reloaded, &store, 3600, 200).await.unwrap(),
        [id]
    );
    assert!(m.lock().unwrap().servers.is_empty(), "leaked VM");
    assert!(store.load().unwrap().vms.is_empty());
}

/// A VM that goes to ERROR is deleted at once; a create whose answer was lost is found by name.
#[tokio::test]
async fn failed_build_is_deleted_and_lost_create_found_by_name() {
    let mut model = Model::new();
    model.fail_build = true;
    let Failed {
        fx,
        m,
        os,
        dir: _dir,
        store,
        mut reg,
        e,
    } = failed_deploy(model, 5).await;
    assert!(
        matches!(e, DeployError::Cloud(CloudError::VmFailed { .. })),
        "{e}"
    );
    assert!(fx
        .lines()
        .iter()
        .any(|l| l.starts_with(&format!("DELETE {COMPUTE}/servers/"))));
    assert!(m.lock().unwrap().servers.is_empty() && reg.vms.is_empty());

    // The create's answer is lost (timeout) but the server exists.
    m.lock().unwrap().fail_build = false;
    m.lock().unwrap().inject.push_back((
        format!("POST {COMPUTE}/servers"),
        Resp::new(503, "").delayed(Duration::from_secs(5)),
    ));
    // The injected answer replaces the model's handling: create the server by hand, as Nova would have.
    let sp = spec(1, 512);
    m.lock().unwrap().servers.insert(
        "srv-lost".into(),
        Server {
            name: sp.name.clone(),
            status: "BUILD".into(),
            pending: None,
        },
    );
    let p = plan(&reg, &[view(2, true)], &sp.template, &["gw-1"]);
    let e = deploy(&os, &p, &mut reg, &store, &sp, 6, &fast_timeouts())
        .await
        .unwrap_err();
    assert!(e.unreachable(), "{e}");
    assert_eq!(
        (reg.vms[0].state, reg.vms[0].id.clone()),
        (RemoteState::Cleanup, None)
    );
    assert_eq!(
        sweep(&os, &mut reg, &store, 3600, 7).await.unwrap(),
        ["srv-lost"]
    );
    let lines = fx.lines();
    assert!(
        lines.contains(&format!("GET {COMPUTE}/servers?name=%5E{}%24", sp.name)),
        "{lines:?}"
    );
    assert!(m.lock().unwrap().servers.is_empty() && reg.vms.is_empty());
}

/// The agent's monitor, from a `[[clouds]]` config: credentials loaded from a 0600 file, the
/// cloud checked, a stopped VM idle past its time destroyed, reachability and VM counts in the
/// health member.
#[tokio::test]
async fn configured_cloud_appears_in_health_and_idle_vm_is_destroyed() {
    use std::os::unix::fs::PermissionsExt;
    let (logs, _guard) = capture_logs();
    let (fx, m) = fixture(Model::new()).await;
    let password = m.lock().unwrap().password.clone();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("campus.toml");
    std::fs::write(
        &creds,
        format!("auth = \"password\"\nusername = \"betaas\"\npassword = \"{password}\"\nproject = \"iot\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "gateway_id = \"gw-1\"\ndata_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\n\n[[clouds]]\nname = \"campus\"\nprovider = \"openstack\"\nendpoint = \"{}/v3\"\nvm_limit = 3\nidle_destroy_secs = 60\ncredentials = \"{}\"\n",
        dir.path().display(),
        fx.url(),
        creds.display()
    );
    let config =
        betaas_agent::config::Config::parse(std::path::Path::new("agent.toml"), &text).unwrap();
    // A VM stopped long ago, left by a previous run.
    m.lock().unwrap().servers.insert(
        "srv-old".into(),
        Server {
            name: "old".into(),
            status: "SHUTOFF".into(),
            pending: None,
        },
    );
    let store = Store::open(dir.path()).unwrap();
    let mut reg = Registry::default();
    reg.begin_create("campus", "compute-node", "old", 0);
    reg.created("campus", "old", "srv-old", 0);
    reg.set_state("campus", "srv-old", RemoteState::Stopped, 0);
    store.save(&reg).unwrap();

    let clouds = betaas_agent::cloud::monitor::start(
        "gw-1",
        &config.clouds,
        &config.data_dir,
        Duration::from_millis(100),
        false,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let health = loop {
        let h =
            betaas_agent::cloud::monitor::health(clouds.as_ref()).expect("a cloud is configured");
        if h[0]["reachable"] == json!(true) && h[0]["vms_stopped"] == json!(0) {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health never showed the check: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health[0]["name"], "campus");
    assert_eq!(health[0]["provider"], "openstack");
    assert_eq!(health[0]["vm_limit"], 3);
    assert_eq!(health[0]["vms"], json!([]));
    assert_eq!(health[0]["error"], json!(null));
    assert!(
        m.lock().unwrap().servers.is_empty(),
        "the idle stopped VM was not destroyed"
    );
    assert!(fx
        .lines()
        .contains(&format!("DELETE {COMPUTE}/servers/srv-old")));
    let token = m.lock().unwrap().tokens[0].clone();
    let all = format!("{health} {}", logs.text());
    assert!(
        !all.contains(&password) && !all.contains(&token),
        "secret leaked:\n{all}"
    );
    // A credentials file others can read is refused; the cloud shows the error, not the secret.
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = betaas_agent::cloud::monitor::AnyCloud::from_config(&config.clouds[0], fast_timeouts())
        .unwrap_err();
    assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
    assert!(!e.contains(&password));
}

/// Polling is bounded: a VM stuck in BUILD ends in PollTimeout, one deleted under the poll in
/// NotFound at once, one in ERROR in VmFailed.
#[tokio::test]
async fn polling_is_bounded() {
    use betaas_agent::cloud::wait_for;
    let (fx, m) = fixture(Model::new()).await;
    let os = client(&fx, password_creds(&m.lock().unwrap()));
    let mut t = fast_timeouts();
    t.poll = Duration::from_millis(300);
    for (id, status) in [("stuck", "BUILD"), ("gone", "DELETED"), ("broken", "ERROR")] {
        m.lock().unwrap().servers.insert(
            id.into(),
            Server {
                name: id.into(),
                status: status.into(),
                pending: None,
            },
        );
    }
    let t0 = std::time::Instant::now();
    let e = wait_for(&os, "stuck", VmStatus::Active, &t)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            CloudError::PollTimeout {
                last: VmStatus::Busy,
                ..
            }
        ),
        "{e}"
    );
    // Far below the 30 s the fixture would have kept it waiting; loose for a loaded machine.
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let polls = fx
        .lines()
        .iter()
        .filter(|l| l.ends_with("/servers/stuck"))
        .count();
    assert!(
        (2..=16).contains(&polls),
        "{polls} polls in 300 ms at 20 ms"
    );
    let e = wait_for(&os, "gone", VmStatus::Active, &t)
        .await
        .unwrap_err();
    assert!(matches!(e, CloudError::NotFound { .. }), "{e}");
    let e = wait_for(&os, "broken", VmStatus::Active, &t)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "cloud os: VM broken went to ERROR");
}
