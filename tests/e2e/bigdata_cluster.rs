//! A big-data cluster from the `bigdata-*` templates on a real libvirtd (LXC containers sharing
//! the host's network) through `betaas-vmd`: a Spark master, a storage node (vsftpd), two compute
//! workers started with the master's URL in their environment (`AcquireWith`, the template's
//! `[cluster] master_env`); both register; a word count over random words the test wrote into the
//! storage node (four gzip parts read through Hadoop's FTPFileSystem) gives exactly the counts the
//! test computed, run by both workers. Prints the cluster formation and job times.
//!
//!   cargo build -p betaas-vmd && cargo test -p betaas-e2e --test bigdata_cluster -- --ignored --nocapture

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use betaas_e2e::bigdata::{self, LxcCleanup};
use betaas_e2e::libvirtd::Libvirtd;
use betaas_e2e::{bin, wait_until, KillOnDrop};
use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response, VmInfo};

fn acquire(socket: &Path, template: &str, env: &[(&str, &str)]) -> (VmInfo, bool, Option<String>) {
    let mut c = Client::new(UnixStream::connect(socket).expect("vmd socket"));
    let req = Request::AcquireWith {
        template: template.into(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    match c.call(&req).expect("vmd answers") {
        Response::AcquiredAt { vm, resumed, url } => (vm, resumed, url),
        other => panic!("acquire {template}: {other:?}"),
    }
}

#[test]
#[ignore = "real libvirtd with LXC, the bigdata templates (built when missing) and a Spark job: make test-e2e"]
fn a_spark_cluster_forms_and_counts_words_from_the_storage_node() {
    let templates = bigdata::templates();
    let spark = bigdata::spark_home(&templates);
    let _libvirtd = Libvirtd::acquire();
    let tag = format!("bd{}", fastrand::u32(..100_000));
    let _sweep = LxcCleanup(tag.clone());
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let socket = r.join("vmd.sock");
    std::fs::write(
        r.join("vmd.toml"),
        format!(
            "socket = \"{}\"\nuri = \"qemu:///system\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\n\
             state_dir = \"{}\"\ntemplates = [\"{}\"]\narch = \"x86_64\"\naddress = \"127.0.0.1\"\n\
             shutdown_timeout_s = 10\nlibvirt_retry_s = 90\n[probe]\nkinds = [\"lxc\"]\ntimeout_s = 60\n",
            socket.display(),
            r.join("vms").display(),
            templates.display()
        ),
    )
    .expect("vmd.toml");
    let vmd_log = std::fs::File::create(r.join("vmd.log")).expect("vmd.log");
    let _vmd = KillOnDrop(
        Command::new(bin("betaas-vmd"))
            .arg("--config")
            .arg(r.join("vmd.toml"))
            .stderr(Stdio::from(vmd_log))
            .spawn()
            .expect("vmd"),
    );
    wait_until("the vmd socket", Duration::from_secs(90), || {
        UnixStream::connect(&socket).ok()
    });
    let console = |vm: &VmInfo| r.join("vms").join(&vm.name).join("serial.log");

    let t0 = Instant::now();
    let (master, _, url) = acquire(&socket, "bigdata-master", &[]);
    let master_url = url.expect("the master's [cluster] url");
    assert_eq!(master_url, "spark://127.0.0.1:7077");
    let (storage, _, surl) = acquire(&socket, "bigdata-storage", &[]);
    assert_eq!(surl.as_deref(), Some("ftp://127.0.0.1:2121/"));
    bigdata::wait_marker(
        &console(&master),
        "BETAAS-BIGDATA-MASTER-READY",
        Duration::from_secs(180),
    );
    let m = t0.elapsed().as_secs_f64();
    println!("master and storage created, master ready: {m:.1} s");
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (w, resumed, url) = acquire(
            &socket,
            "bigdata-compute",
            &[("BETAAS_URL_BIGDATA_MASTER", &master_url)],
        );
        assert!(!resumed && url.is_none());
        workers.push(w);
    }
    for w in &workers {
        bigdata::wait_marker(
            &console(w),
            &format!("BETAAS-BIGDATA-WORKER-REGISTERED master={master_url}"),
            Duration::from_secs(180),
        );
    }
    bigdata::wait_marker(
        &console(&storage),
        "BETAAS-BIGDATA-STORAGE-READY",
        Duration::from_secs(60),
    );
    let formed = t0.elapsed().as_secs_f64();
    println!("cluster formed (master + storage + 2 workers registered): {formed:.1} s");

    bigdata::check_word_count(&r.join("vms").join(&storage.name), &spark, &master_url, r);
}
