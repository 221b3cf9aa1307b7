//! Fast API tests on libvirt's test driver (`test:///default`: no daemon, nothing boots), with the
//! manager in-process. The driver's state is shared by every connection of this process, so each
//! test has its own owner, name prefix and template names.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_proto::blocking::Client;
use betaas_proto::{encode_request, ErrorKind, Request, Response, VmState, MAX_FRAME, VERSION};
use betaas_vmd::config::Config;
use betaas_vmd::manager::Manager;
use betaas_vmd::server;
use common::*;
use tempfile::TempDir;

struct Setup {
    tmp: TempDir,
    mgr: Manager,
    clock: Arc<AtomicU64>,
    tag: String,
}

fn config_text(tag: &str, extra: &str) -> String {
    format!(
        "uri = \"test:///default\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\nstate_dir = \"vms\"\n\
         templates = [\"templates\"]\narch = \"x86_64\"\nidle_destroy_s = 60\nlibvirt_retry_s = 1\n\
         {extra}\n[probe]\nassume = \"qemu\"\n"
    )
}

fn setup(tag: &str) -> Setup {
    let tag = unique(tag);
    let tmp = TempDir::new().expect("tmp");
    fake_template(&tmp.path().join("templates"), &format!("{tag}a"), |s| s);
    let path = tmp.path().join("vmd.toml");
    let cfg = Config::parse(&path, &config_text(&tag, "")).expect("config");
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let c = clock.clone();
    let mgr = Manager::new(cfg).with_clock(move || c.load(Ordering::SeqCst));
    Setup {
        tmp,
        mgr,
        clock,
        tag,
    }
}

fn err_kind(r: Response) -> (ErrorKind, String) {
    match r {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn vm(r: Response) -> betaas_proto::VmInfo {
    match r {
        Response::Vm(v) | Response::Acquired { vm: v, .. } => v,
        other => panic!("expected a VM, got {other:?}"),
    }
}

fn backing_of(overlay: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(overlay)
        .output()
        .expect("qemu-img info");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lifecycle_states_overlay_and_cleanup() {
    let mut s = setup("life");
    let t = format!("{}a", s.tag);
    let base = s
        .tmp
        .path()
        .join(format!("templates/{t}-x86_64/disk.qcow2"));
    let base_sum = sha256_hex(&base);

    let v = vm(s.mgr.handle(Request::Create {
        template: t.clone(),
    }));
    assert_eq!(v.state, VmState::ShutOff);
    assert_eq!(v.name, format!("{}-{t}-1", s.tag));
    assert_eq!(v.template, t);
    let dir = s.tmp.path().join("vms").join(&v.name);
    let overlay = dir.join("disk.qcow2");
    let info = backing_of(&overlay);
    assert!(info.contains("\"backing-filename\""), "{info}");
    assert!(info.contains(base.file_name().and_then(|n| n.to_str()).unwrap_or("?")));

    assert_eq!(
        vm(s.mgr.handle(Request::Start { vm: v.name.clone() })).state,
        VmState::Running
    );
    assert_eq!(
        vm(s.mgr.handle(Request::Stop { vm: v.name.clone() })).state,
        VmState::Saved
    );
    // Resume needs the save; after it the save is consumed.
    assert_eq!(
        vm(s.mgr.handle(Request::Resume { vm: v.name.clone() })).state,
        VmState::Running
    );
    let d = vm(s.mgr.handle(Request::Destroy { vm: v.name.clone() }));
    assert_eq!(d.state, VmState::ShutOff);
    assert_eq!(d.stopped_s, Some(1_000_000));
    let (k, m) = err_kind(s.mgr.handle(Request::Resume { vm: v.name.clone() }));
    assert_eq!(k, ErrorKind::InvalidState, "{m}");

    match s.mgr.handle(Request::Stats { vm: v.name.clone() }) {
        Response::Stats(st) => {
            assert_eq!(st.vcpus, 1);
            assert_eq!(st.max_memory_kib, 64 * 1024);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.mgr.handle(Request::Undefine { vm: v.name.clone() }),
        Response::Undefined { .. }
    ));
    assert!(!dir.exists(), "undefine removes the VM's directory");
    assert_eq!(
        sha256_hex(&base),
        base_sum,
        "the base image is never written"
    );
    let (k, _) = err_kind(s.mgr.handle(Request::Start { vm: v.name.clone() }));
    assert_eq!(k, ErrorKind::NoSuchVm);
}

#[test]
fn acquire_resumes_a_stopped_vm_of_the_same_template() {
    let mut s = setup("acq");
    let t = format!("{}a", s.tag);
    let first = vm(s.mgr.handle(Request::Acquire {
        template: t.clone(),
    }));
    assert_eq!(first.state, VmState::Running);
    s.mgr.handle(Request::Stop {
        vm: first.name.clone(),
    });
    let again = vm(s.mgr.handle(Request::Acquire {
        template: t.clone(),
    }));
    assert_eq!(
        again.name, first.name,
        "the stopped VM comes back, no new one"
    );
    assert_eq!(again.state, VmState::Running);
    // While it runs, the next acquire needs a second VM.
    let second = vm(s.mgr.handle(Request::Acquire {
        template: t.clone(),
    }));
    assert_ne!(second.name, first.name);
    match s.mgr.handle(Request::List) {
        Response::Vms(v) => assert_eq!(v.len(), 2),
        other => panic!("{other:?}"),
    }
    for v in [first.name, second.name] {
        s.mgr.handle(Request::Undefine { vm: v });
    }
}

#[test]
fn idle_policy_destroys_exactly_after_the_idle_time() {
    let mut s = setup("idle");
    let t = format!("{}a", s.tag);
    let a = vm(s.mgr.handle(Request::Acquire {
        template: t.clone(),
    }));
    let b = vm(s.mgr.handle(Request::Acquire {
        template: t.clone(),
    }));
    s.mgr.handle(Request::Stop { vm: a.name.clone() });
    s.clock.fetch_add(59, Ordering::SeqCst);
    assert!(s.mgr.reap().expect("reap").is_empty(), "59 s < 60 s idle");
    s.clock.fetch_add(1, Ordering::SeqCst);
    assert_eq!(s.mgr.reap().expect("reap"), std::slice::from_ref(&a.name));
    assert!(!s.tmp.path().join("vms").join(&a.name).exists());
    let (k, _) = err_kind(s.mgr.handle(Request::Resume { vm: a.name.clone() }));
    assert_eq!(k, ErrorKind::NoSuchVm);
    // The running one never idles out, however long.
    s.clock.fetch_add(1_000_000, Ordering::SeqCst);
    assert!(s.mgr.reap().expect("reap").is_empty());
    s.mgr.handle(Request::Undefine { vm: b.name });
}

#[test]
fn foreign_domains_are_never_touched() {
    let mut s = setup("for");
    let conn = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    // One without any mark, named like the VM the daemon would make next; one with another
    // daemon's mark.
    let t = format!("{}a", s.tag);
    let squatter = format!("{}-{t}-1", s.tag);
    let plain = format!(
        "<domain type='test'><name>{squatter}</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os></domain>"
    );
    let d1 = conn.define_domain_xml(&plain).expect("define foreign");
    d1.create().expect("start foreign");
    let other = format!("{}-other", s.tag);
    let marked = format!(
        "<domain type='test'><name>{other}</name><memory unit='MiB'>64</memory>\
         <metadata><b:vm xmlns:b='urn:betaas:vmd:1'><b:owner>someone-else</b:owner>\
         <b:template>{t}</b:template><b:arch>x86_64</b:arch><b:kind>qemu</b:kind>\
         <b:created>1</b:created></b:vm></metadata><os><type>hvm</type></os></domain>"
    );
    let d2 = conn
        .define_domain_xml(&marked)
        .expect("define other owner's");

    for name in [&squatter, &other] {
        for req in [
            Request::Start { vm: name.clone() },
            Request::Stop { vm: name.clone() },
            Request::Resume { vm: name.clone() },
            Request::Destroy { vm: name.clone() },
            Request::Undefine { vm: name.clone() },
            Request::Stats { vm: name.clone() },
        ] {
            let (k, m) = err_kind(s.mgr.handle(req.clone()));
            assert_eq!(k, ErrorKind::Foreign, "{req:?}: {m}");
        }
    }
    // Idle policy and list ignore them; a new VM takes the next free name.
    s.clock.fetch_add(10_000_000, Ordering::SeqCst);
    assert!(s.mgr.reap().expect("reap").is_empty());
    let v = vm(s.mgr.handle(Request::Create { template: t }));
    assert_eq!(v.name, format!("{}-{}a-2", s.tag, s.tag));
    match s.mgr.handle(Request::List) {
        Response::Vms(list) => {
            assert_eq!(list.iter().map(|v| &v.name).collect::<Vec<_>>(), [&v.name])
        }
        other => panic!("{other:?}"),
    }
    assert!(
        d1.is_active().expect("state"),
        "foreign domain still running"
    );
    assert!(
        conn.lookup_domain_by_name(&other).is_ok(),
        "other owner's still defined"
    );
    s.mgr.handle(Request::Undefine { vm: v.name });
    d1.destroy().ok();
    d1.undefine().ok();
    d2.undefine().ok();
}

#[test]
fn a_restarted_manager_adopts_its_vms_with_their_idle_clocks() {
    // The test driver frees its state with its last connection; libvirtd would keep it. This
    // connection plays libvirtd while the "daemon" restarts.
    let _libvirtd = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    let s = setup("adopt");
    let t = format!("{}a", s.tag);
    let cfg_path = s.tmp.path().join("vmd.toml");
    let clock = s.clock.clone();
    let mut m1 = s.mgr;
    let running = vm(m1.handle(Request::Acquire {
        template: t.clone(),
    }));
    let saved = vm(m1.handle(Request::Acquire {
        template: t.clone(),
    }));
    let stopped_at = vm(m1.handle(Request::Stop {
        vm: saved.name.clone(),
    }))
    .stopped_s;
    drop(m1); // the daemon dies; libvirt keeps the domains and our marks

    clock.fetch_add(30, Ordering::SeqCst);
    let c = clock.clone();
    let cfg = Config::parse(&cfg_path, &config_text(&s.tag, "")).expect("config");
    let mut m2 = Manager::new(cfg).with_clock(move || c.load(Ordering::SeqCst));
    let list = match m2.handle(Request::List) {
        Response::Vms(v) => v,
        other => panic!("{other:?}"),
    };
    let by = |n: &str| list.iter().find(|v| v.name == n).cloned().expect("adopted");
    assert_eq!(by(&running.name).state, VmState::Running);
    assert_eq!(by(&saved.name).state, VmState::Saved);
    assert_eq!(
        by(&saved.name).stopped_s,
        stopped_at,
        "idle clock survives the restart"
    );
    // It expires on the original schedule: 30 s already passed, 30 more to go.
    clock.fetch_add(29, Ordering::SeqCst);
    assert!(m2.reap().expect("reap").is_empty());
    clock.fetch_add(1, Ordering::SeqCst);
    assert_eq!(m2.reap().expect("reap"), [saved.name]);
    // A manager with another owner on the same libvirt sees none of it.
    let other = Config::parse(&cfg_path, &config_text(&unique("x"), "")).expect("config");
    let mut m3 = Manager::new(other);
    assert_eq!(m3.handle(Request::List), Response::Vms(vec![]));
    m2.handle(Request::Undefine { vm: running.name });
}

#[test]
fn bad_descriptors_are_rejected_with_file_and_field() {
    let mut s = setup("bad");
    let root = s.tmp.path().join("templates");
    let tag = s.tag.clone();
    type Edit = Box<dyn FnOnce(String) -> String>;
    let cases: Vec<(String, Edit, &str)> = vec![
        (
            format!("{tag}role"),
            Box::new(|t: String| t.replace("role = \"app-light\"", "role = \"web-scale\"")),
            "role",
        ),
        (
            format!("{tag}small"),
            Box::new(|t: String| t.replacen("\nmemory_mb = 64\n", "\nmemory_mb = 32\n", 1)),
            "resources.memory_mb",
        ),
        (
            format!("{tag}noimg"),
            Box::new(|t: String| t.replace("file = \"disk.qcow2\"", "file = \"missing.qcow2\"")),
            "image.file",
        ),
    ];
    for (name, edit, field) in cases {
        fake_template(&root, &name, edit);
        let (k, m) = err_kind(s.mgr.handle(Request::Create {
            template: name.clone(),
        }));
        assert_eq!(k, ErrorKind::BadTemplate, "{name}: {m}");
        assert!(
            m.contains("template.toml:") && m.contains(field),
            "{name}: {m}"
        );
    }
    // A base image changed after its checksum was recorded.
    let name = format!("{tag}sum");
    let dir = fake_template(&root, &name, |t| t);
    std::fs::write(dir.join("vmlinuz"), "tampered").expect("write");
    let (k, m) = err_kind(s.mgr.handle(Request::Create { template: name }));
    assert_eq!(k, ErrorKind::BadTemplate);
    assert!(m.contains("vmlinuz") && m.contains("sha256"), "{m}");
    let (k, m) = err_kind(s.mgr.handle(Request::Create {
        template: format!("{tag}none"),
    }));
    assert_eq!(k, ErrorKind::NoSuchTemplate, "{m}");
    // Nothing was defined or left on disk by the failures.
    assert_eq!(s.mgr.handle(Request::List), Response::Vms(vec![]));
    let left = std::fs::read_dir(s.tmp.path().join("vms")).map_or(0, |d| d.count());
    assert_eq!(left, 0);
}

#[test]
fn a_template_for_kinds_the_gateway_lacks_is_refused() {
    let mut s = setup("cap");
    let name = format!("{}kvm", s.tag);
    fake_template(&s.tmp.path().join("templates"), &name, |t| {
        t.replace("kinds = [\"kvm\", \"qemu\"]", "kinds = [\"kvm\"]")
    });
    let (k, m) = err_kind(s.mgr.handle(Request::Create { template: name }));
    assert_eq!(k, ErrorKind::NoCapability, "{m}");
    assert!(m.contains("kvm") && m.contains("qemu"), "{m}");
}

#[test]
fn unreachable_libvirt_is_a_clear_error_after_bounded_retries() {
    let tmp = TempDir::new().expect("tmp");
    let sock = tmp.path().join("no-libvirtd.sock");
    let text = format!(
        "uri = \"qemu+unix:///system?socket={}\"\nstate_dir = \"vms\"\nlibvirt_retry_s = 2\n\
         [probe]\nassume = \"qemu\"\n",
        sock.display()
    );
    let cfg = Config::parse(&tmp.path().join("vmd.toml"), &text).expect("config");
    let mut m = Manager::new(cfg);
    let t0 = Instant::now();
    let (k, msg) = err_kind(m.handle(Request::List));
    let took = t0.elapsed();
    assert_eq!(k, ErrorKind::HypervisorUnavailable, "{msg}");
    assert!(msg.contains("no-libvirtd.sock"), "names the URI: {msg}");
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

/// The socket path end to end with the real server loop: good requests, and broken ones that
/// get an error reply instead of a hang or a crash.
#[test]
fn socket_answers_requests_and_rejects_bad_frames() {
    let s = setup("sock");
    let sock = s.tmp.path().join("vmd.sock");
    let listener = server::bind(&sock, 0o600, None).expect("bind");
    let shared = Arc::new(Mutex::new(s.mgr));
    std::thread::spawn(move || server::serve(listener, shared, limits(8, 30_000, None)));
    let t = format!("{}a", s.tag);

    let mut c = Client::new(UnixStream::connect(&sock).expect("connect"));
    let v = vm(c.call(&Request::Acquire { template: t }).expect("reply"));
    assert_eq!(v.state, VmState::Running);
    match c.call(&Request::Probe { refresh: false }).expect("reply") {
        Response::Capability(cap) => assert_eq!(cap.best, Some(betaas_proto::VirtKind::Qemu)),
        other => panic!("{other:?}"),
    }

    // Unknown message (variant 99) under id 77: an error reply with that id, connection stays up.
    c.send_raw(&[4, 0, 0, 0, VERSION, 77, 99, 0]).expect("send");
    let (id, r) = c.read_reply().expect("reply");
    assert_eq!((id, err_kind(r).0), (77, ErrorKind::UnknownMessage));
    // Another protocol version.
    let mut f = encode_request(78, &Request::List).expect("encode");
    f[4] = VERSION + 1;
    c.send_raw(&f).expect("send");
    let (id, r) = c.read_reply().expect("reply");
    assert_eq!((id, err_kind(r).0), (78, ErrorKind::UnsupportedVersion));
    // Still usable after both.
    assert!(matches!(c.call(&Request::List).expect("reply"), Response::Vms(v) if v.len() == 1));

    // A length over the limit: one BadFrame reply, then the daemon hangs up.
    let mut c2 = Client::new(UnixStream::connect(&sock).expect("connect"));
    c2.send_raw(&((MAX_FRAME as u32 + 1).to_le_bytes()))
        .expect("send");
    let (_, r) = c2.read_reply().expect("reply");
    assert_eq!(err_kind(r).0, ErrorKind::BadFrame);
    assert!(matches!(
        c2.read_reply(),
        Err(betaas_proto::blocking::CallError::Closed)
    ));

    let (_, r) = (0, c.call(&Request::Undefine { vm: v.name }).expect("reply"));
    assert!(matches!(r, Response::Undefined { .. }));
}

#[test]
fn the_daemon_refuses_a_bad_config_with_file_line_and_field() {
    let tmp = TempDir::new().expect("tmp");
    let cfg = tmp.path().join("vmd.toml");
    std::fs::write(&cfg, "uri = \"test:///default\"\narch = \"sparc\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_betaas-vmd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: field `arch`", cfg.display())) && err.contains("x86_64"),
        "{err}"
    );
    assert!(
        !tmp.path().join("s.sock").exists(),
        "no socket for a daemon that did not start"
    );
}

/// One logical-gateway identity as an administrator provisions it (key 0600).
fn provision_identity(pool: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let d = pool.join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(
        d.join("agent.toml"),
        format!("gateway_id = \"{name}\"\n[mqtt]\nhost = \"10.0.2.2\"\n[instance]\nname = \"b\"\nkeys = \"/etc/betaas/instance\"\n"),
    )
    .expect("agent.toml");
    std::fs::write(d.join("instance.pub"), "PUB").expect("pub");
    std::fs::write(d.join("credential"), "CRED").expect("cred");
    std::fs::write(d.join("gateway.key"), "SECRET-KEY-MATERIAL").expect("key");
    std::fs::set_permissions(
        d.join("gateway.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    d
}

fn domain_xml_of(name: &str) -> String {
    let c = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    c.lookup_domain_by_name(name)
        .expect("domain")
        .xml_desc(0)
        .expect("xml")
}

#[test]
fn logical_gateways_each_get_their_own_identity_kept_across_stop_and_restart() {
    use std::os::unix::fs::PermissionsExt;
    let _libvirtd = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    let s = setup("lgw");
    let lgw = format!("{}g", s.tag);
    let plain = format!("{}a", s.tag);
    fake_template(&s.tmp.path().join("templates"), &lgw, |t| {
        format!(
            "{}\n[network]\nmode = \"user\"\n",
            t.replace("role = \"app-light\"", "role = \"gateway\"")
        )
    });
    let pool = s.tmp.path().join("logical");
    let cfg_path = s.tmp.path().join("vmd.toml");
    let extra = format!("logical_dir = \"{}\"", pool.display());
    let mut m = Manager::new(Config::parse(&cfg_path, &config_text(&s.tag, &extra)).expect("cfg"));
    let acquire = |m: &mut Manager, t: &str| m.handle(Request::Acquire { template: t.into() });

    // No pool at all: the error names the directory.
    let (kind, msg) = err_kind(acquire(&mut m, &lgw));
    assert_eq!(kind, ErrorKind::NoIdentity, "{msg}");
    assert!(
        msg.contains(&pool.display().to_string()) && msg.contains("does not exist"),
        "{msg}"
    );

    let id_dir = provision_identity(&pool, "lgw-1");
    let g1 = vm(acquire(&mut m, &lgw));
    assert_eq!(g1.state, VmState::Running);
    let vm_dir = s.tmp.path().join("vms").join(&g1.name);
    assert_eq!(
        std::fs::read_to_string(vm_dir.join("identity")).expect("identity"),
        "lgw-1\n"
    );
    let seed = vm_dir.join("seed.tar");
    assert_eq!(
        std::fs::metadata(&seed).expect("seed").permissions().mode() & 0o777,
        0o600
    );
    let xml = domain_xml_of(&g1.name);
    for want in [
        seed.display().to_string(),
        "dev='vdb'".into(),
        "<readonly/>".into(),
        "<interface type='user'>".into(),
        "<model type='virtio'/>".into(),
    ] {
        assert!(xml.contains(&want), "missing {want} in\n{xml}");
    }
    // Other roles get neither.
    let a = vm(acquire(&mut m, &plain));
    let xml = domain_xml_of(&a.name);
    assert!(!xml.contains("vdb") && !xml.contains("<interface"), "{xml}");
    assert!(!s
        .tmp
        .path()
        .join("vms")
        .join(&a.name)
        .join("seed.tar")
        .exists());

    // The only identity is held: a second logical gateway is refused, naming the pool and holder.
    let (kind, msg) = err_kind(acquire(&mut m, &lgw));
    assert_eq!(kind, ErrorKind::NoIdentity, "{msg}");
    assert!(
        msg.contains(&pool.display().to_string())
            && msg.contains(&format!("lgw-1 by VM {}", g1.name)),
        "{msg}"
    );
    let before: Vec<_> = match m.handle(Request::List) {
        Response::Vms(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        before.len(),
        2,
        "the refused acquire left nothing behind: {before:?}"
    );

    // Stopped and acquired again: the same VM, the same identity.
    vm(m.handle(Request::Stop {
        vm: g1.name.clone(),
    }));
    let again = vm(acquire(&mut m, &lgw));
    assert_eq!(again.name, g1.name);
    assert_eq!(
        m.identities().get(&g1.name).map(String::as_str),
        Some("lgw-1")
    );

    // The daemon restarts: the new one knows who holds it.
    drop(m);
    let mut m = Manager::new(Config::parse(&cfg_path, &config_text(&s.tag, &extra)).expect("cfg"));
    m.handle(Request::List);
    assert_eq!(
        m.identities().get(&g1.name).map(String::as_str),
        Some("lgw-1")
    );
    assert_eq!(err_kind(acquire(&mut m, &lgw)).0, ErrorKind::NoIdentity);

    // Undefined: freed, and the next logical gateway gets it.
    m.handle(Request::Undefine {
        vm: g1.name.clone(),
    });
    assert!(m.identities().is_empty());
    // ...unless its key is readable by others: named, never shown.
    let key = id_dir.join("gateway.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (kind, msg) = err_kind(acquire(&mut m, &lgw));
    assert_eq!(kind, ErrorKind::NoIdentity, "{msg}");
    assert!(
        msg.contains(&key.display().to_string()) && msg.contains("0644"),
        "{msg}"
    );
    assert!(!msg.contains("SECRET"), "{msg}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let g2 = vm(acquire(&mut m, &lgw));
    assert_eq!(
        m.identities().get(&g2.name).map(String::as_str),
        Some("lgw-1")
    );
    for v in [g2.name, a.name] {
        m.handle(Request::Undefine { vm: v });
    }
}

/// The dependability manager: a VM destroyed behind the daemon's back (as when its QEMU is
/// killed) is restarted after each backoff, exactly `restart_max` times, then reported failed,
/// left stopped with its idle clock running, and never handed to the next acquire; a start on
/// request gives it its budget back; a VM released while down stays down.
#[test]
fn a_vm_that_dies_is_restarted_within_its_budget_then_reported_failed() {
    let conn = virt::connect::Connect::open(Some("test:///default")).expect("test driver");
    let tag = unique("sup");
    let tmp = TempDir::new().expect("tmp");
    let t = format!("{tag}a");
    fake_template(&tmp.path().join("templates"), &t, |s| s);
    let cfg = Config::parse(
        &tmp.path().join("vmd.toml"),
        &config_text(
            &tag,
            "restart_max = 2\nrestart_backoff_ms = 1000\nrestart_backoff_max_ms = 1500\nrestart_reset_s = 60",
        ),
    )
    .expect("config");
    let mono = Arc::new(AtomicU64::new(0));
    let m = mono.clone();
    let mut mgr = Manager::new(cfg).with_mono_clock(move || m.load(Ordering::SeqCst));
    let at = |ms: u64| mono.store(ms, Ordering::SeqCst);
    let (v, resumed) = match mgr.handle(Request::Acquire {
        template: t.clone(),
    }) {
        Response::Acquired { vm, resumed } => (vm, resumed),
        other => panic!("{other:?}"),
    };
    assert!(!resumed, "nothing to resume yet");
    let kill = || {
        conn.lookup_domain_by_name(&v.name)
            .expect("domain")
            .destroy()
            .expect("destroy behind the daemon's back")
    };
    let active = || {
        conn.lookup_domain_by_name(&v.name)
            .expect("domain")
            .is_active()
            .expect("state")
    };
    let info = |mgr: &mut Manager| match mgr.handle(Request::List) {
        Response::Vms(l) => l.into_iter().find(|x| x.name == v.name).expect("listed"),
        other => panic!("{other:?}"),
    };
    let actions = |mgr: &mut Manager| {
        mgr.supervise()
            .expect("supervise")
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>()
    };
    use betaas_vmd::lifecycle::Action;
    at(1000);
    assert!(actions(&mut mgr).is_empty(), "running: nothing to do");
    // Death 1 at 2000: restarted at 3000 (backoff 1000), not a millisecond before.
    kill();
    at(2000);
    assert!(matches!(
        actions(&mut mgr)[..],
        [Action::Wait { until_ms: 3000 }]
    ));
    assert_eq!(
        info(&mut mgr).stopped_s,
        None,
        "died, not stopped on request"
    );
    at(2999);
    assert!(matches!(actions(&mut mgr)[..], [Action::Wait { .. }]));
    at(3000);
    assert_eq!(actions(&mut mgr), [Action::Restart]);
    assert!(active());
    assert_eq!(info(&mut mgr).restarts, 1);
    // Death 2 at 4000: backoff 1500 (capped), restarted at 5500.
    kill();
    at(4000);
    actions(&mut mgr);
    at(5500);
    assert_eq!(actions(&mut mgr), [Action::Restart]);
    assert!(active());
    // Death 3: the budget (2) is spent.
    kill();
    at(6000);
    assert_eq!(actions(&mut mgr), [Action::GiveUp]);
    let failed = info(&mut mgr);
    assert!(failed.failed && !active(), "{failed:?}");
    assert!(
        failed.stopped_s.is_some(),
        "its idle clock runs: {failed:?}"
    );
    at(600_000);
    assert!(actions(&mut mgr).is_empty(), "failed: left alone");
    // The failed flag survives a daemon restart (a file next to the overlay).
    let cfg2 = Config::parse(&tmp.path().join("vmd.toml"), &config_text(&tag, "")).expect("cfg");
    let mut mgr2 = Manager::new(cfg2);
    assert!(info(&mut mgr2).failed);
    drop(mgr2);
    // The next acquire does not hand the failed VM out: a new one is made.
    let other = match mgr.handle(Request::Acquire {
        template: t.clone(),
    }) {
        Response::Acquired { vm, resumed } => {
            assert!(!resumed);
            vm
        }
        r => panic!("{r:?}"),
    };
    assert_ne!(other.name, v.name);
    // A start on request: wanted again, whole budget back.
    let restarted = vm(mgr.handle(Request::Start { vm: v.name.clone() }));
    assert_eq!((restarted.restarts, restarted.failed), (0, false));
    // Released while down: stays down.
    kill();
    at(700_000);
    actions(&mut mgr);
    let released = vm(mgr.handle(Request::Stop { vm: v.name.clone() }));
    assert!(released.stopped_s.is_some(), "{released:?}");
    at(800_000);
    assert!(actions(&mut mgr).is_empty());
    assert!(!active());
    // A stopped VM is what the next acquire resumes.
    match mgr.handle(Request::Acquire {
        template: t.clone(),
    }) {
        Response::Acquired { vm, resumed } => {
            assert_eq!((vm.name, resumed), (v.name.clone(), true))
        }
        r => panic!("{r:?}"),
    }
    mgr.handle(Request::Undefine { vm: v.name.clone() });
    mgr.handle(Request::Undefine { vm: other.name });
}

fn limits(max: usize, timeout_ms: u64, user_uid: Option<u32>) -> server::Limits {
    server::Limits {
        access: betaas_vmd::access::Access {
            own_uid: own_euid(),
            user_uid,
        },
        max_connections: max,
        read_timeout: Duration::from_millis(timeout_ms),
    }
}

fn own_euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // The owner of a file this process just made is its effective uid.
    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().metadata().expect("metadata").uid()
}

const NOBODY: u32 = 65534;

/// Runs [`helper_connect_as_another_user`] in a copy of this test binary as uid/gid `NOBODY`
/// (std's `CommandExt::uid`: no unsafe), connecting to `sock`; returns what it printed.
fn connect_as_nobody(sock: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_connect_as_another_user",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BETAAS_VMD_TEST_CONNECT", sock)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the helper");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.split_once("HELPER: ").map(|(_, said)| said))
        .unwrap_or_else(|| panic!("helper printed nothing: {text}"))
        .to_owned()
}

#[test]
#[ignore = "helper of the_socket_admits_only_root_the_daemon_and_its_user, run as another user"]
fn helper_connect_as_another_user() {
    let Some(sock) = std::env::var_os("BETAAS_VMD_TEST_CONNECT") else {
        return;
    };
    let said = match UnixStream::connect(&sock) {
        Err(e) => format!("connect: {:?}", e.kind()),
        Ok(s) => match Client::new(s).read_reply_after(&Request::List) {
            Ok((_, Response::Vms(v))) => format!("vms {}", v.len()),
            Ok((_, Response::Error(e))) => format!("error {:?}", e.kind),
            Ok((_, other)) => format!("other {other:?}"),
            Err(e) => format!("call: {e}"),
        },
    };
    println!("HELPER: {said}");
}

trait CallRaw {
    fn read_reply_after(
        self,
        req: &Request,
    ) -> Result<(u32, Response), betaas_proto::blocking::CallError>;
}

impl CallRaw for Client<UnixStream> {
    /// Sends `req` and reads one reply whatever its id (a refusal comes under id 0, maybe before
    /// the request could be written: the daemon closes refused connections at once).
    fn read_reply_after(
        mut self,
        req: &Request,
    ) -> Result<(u32, Response), betaas_proto::blocking::CallError> {
        let _ = self.send_raw(&encode_request(1, req).expect("encode"));
        self.read_reply()
    }
}

/// SO_PEERCRED: with the socket file open to everyone, another user's connection is answered
/// `NotAllowed` and closed; with the default 0600 it cannot even connect; the configured
/// `socket_user` owns the file and is served.
#[test]
fn the_socket_admits_only_root_the_daemon_and_its_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = setup("peer");
    // The temp dir is 0700: let the other user reach the sockets in it.
    std::fs::set_permissions(s.tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let shared = Arc::new(Mutex::new(s.mgr));
    let serve = |name: &str, mode: u32, user: Option<u32>| {
        let sock = s.tmp.path().join(name);
        let listener = server::bind(&sock, mode, user.map(|u| (u, u))).expect("bind");
        let m = shared.clone();
        std::thread::spawn(move || server::serve(listener, m, limits(8, 5_000, user)));
        sock
    };
    let open = serve("open.sock", 0o666, None);
    let closed = serve("closed.sock", 0o600, None);
    let theirs = serve("theirs.sock", 0o600, Some(NOBODY));

    assert_eq!(connect_as_nobody(&open), "error NotAllowed");
    assert_eq!(connect_as_nobody(&closed), "connect: PermissionDenied");
    assert_eq!(connect_as_nobody(&theirs), "vms 0");
    let meta = std::fs::metadata(&theirs).expect("socket file");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));
    assert_eq!(
        std::fs::metadata(&closed).expect("socket").mode() & 0o777,
        0o600
    );
    // Root (this test) is always served.
    let mut c = Client::new(UnixStream::connect(&open).expect("connect"));
    assert!(matches!(c.call(&Request::List), Ok(Response::Vms(_))));
}

/// At most `max_connections` at once (one more: `Busy`, closed); a silent connection, and one
/// trickling a frame a byte at a time, are closed after the read timeout; then there is room again.
#[test]
fn connections_are_bounded_and_silent_or_trickling_ones_closed() {
    use std::io::{Read, Write};
    let s = setup("bound");
    let sock = s.tmp.path().join("vmd.sock");
    let listener = server::bind(&sock, 0o600, None).expect("bind");
    let shared = Arc::new(Mutex::new(s.mgr));
    std::thread::spawn(move || server::serve(listener, shared, limits(2, 600, None)));

    let t0 = Instant::now();
    let mut a = Client::new(UnixStream::connect(&sock).expect("connect"));
    assert!(matches!(a.call(&Request::List), Ok(Response::Vms(_))));
    let mut b = UnixStream::connect(&sock).expect("connect");
    std::thread::sleep(Duration::from_millis(50));
    let third = Client::new(UnixStream::connect(&sock).expect("connect"));
    match third.read_reply_after(&Request::List) {
        Ok((0, Response::Error(e))) => assert_eq!(e.kind, ErrorKind::Busy, "{e}"),
        other => panic!("expected Busy, got {other:?}"),
    }
    // b trickles a List frame one byte every 200 ms: the frame never completes in time.
    let frame = encode_request(5, &Request::List).expect("encode");
    let mut closed_after = None;
    for byte in frame.iter().take(frame.len() - 1) {
        if b.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    b.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    if let Ok(0) = b.read(&mut buf) {
        closed_after = Some(t0.elapsed());
    }
    // Closed at the 600 ms deadline counted from the first byte waited for: a timeout restarted
    // by every byte would close it only ~600 ms after the last one (~1.6 s).
    let closed_after = closed_after.expect("trickling connection not closed");
    assert!(
        closed_after < Duration::from_millis(1100),
        "closed after {closed_after:?}"
    );
    // a was silent since its List: closed too.
    assert!(matches!(
        a.read_reply(),
        Err(betaas_proto::blocking::CallError::Closed)
            | Err(betaas_proto::blocking::CallError::Io(_))
    ));
    // Room again.
    let mut c = Client::new(UnixStream::connect(&sock).expect("connect"));
    assert!(matches!(c.call(&Request::List), Ok(Response::Vms(_))));
}
