//! `betaas-vmd` cross-compiled for armhf (`image/vmd-armhf.sh`: dynamically linked against Debian's
//! armhf libvirt, the packages the image would ship) runs under `qemu-arm` with that sysroot's
//! libraries and serves the protocol through the armhf libvirt: libvirt's test driver
//! (`test:///default`, in the daemon's process: nothing boots) defines, starts, stops and resumes a
//! VM of a fake template; the host's client speaks to the ARM daemon over its socket.
//!
//!   bash image/vmd-armhf.sh && cargo test -p betaas-e2e --test vmd_armhf -- --ignored --nocapture

use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use betaas_e2e::libvirtd::fake_template;
use betaas_e2e::{repo, wait_until, KillOnDrop};
use betaas_proto::blocking::Client;
use betaas_proto::{Request, Response, VmState};

#[test]
#[ignore = "needs image/vmd-armhf.sh's build (make test-e2e runs it)"]
fn the_armhf_vmd_serves_the_protocol_through_the_armhf_libvirt() {
    let bin = repo().join("target/vmd-armhf/armv7-unknown-linux-gnueabihf/release/betaas-vmd");
    let sysroot = repo().join("out/sysroot-armhf");
    assert!(
        bin.is_file() && sysroot.is_dir(),
        "{} missing: bash image/vmd-armhf.sh",
        bin.display()
    );
    let qemu = ["qemu-arm-static", "qemu-arm"]
        .into_iter()
        .find(|q| Command::new(q).arg("--version").output().is_ok())
        .expect("qemu-arm-static (qemu-user-static)");
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let tag = format!("arm{}", fastrand::u32(..100_000));
    fake_template(&r.join("templates"), "app", |t| t);
    let socket = r.join("vmd.sock");
    std::fs::write(
        r.join("vmd.toml"),
        format!(
            "socket = \"{}\"\nuri = \"test:///default\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\n\
             state_dir = \"{}\"\ntemplates = [\"{}\"]\narch = \"x86_64\"\nlibvirt_retry_s = 1\n\
             [probe]\nassume = \"qemu\"\n",
            socket.display(),
            r.join("vms").display(),
            r.join("templates").display()
        ),
    )
    .expect("vmd.toml");
    let libdirs = format!(
        "LD_LIBRARY_PATH={}/usr/lib/arm-linux-gnueabihf",
        sysroot.display()
    );
    let t0 = Instant::now();
    let _vmd = KillOnDrop(
        Command::new(qemu)
            .arg("-L")
            .arg(&sysroot)
            .args(["-E", &libdirs])
            .arg(&bin)
            .arg("--config")
            .arg(r.join("vmd.toml"))
            .stderr(Stdio::from(
                std::fs::File::create(r.join("vmd.log")).expect("log"),
            ))
            .spawn()
            .expect("qemu-arm betaas-vmd"),
    );
    let stream = wait_until("the armhf vmd's socket", Duration::from_secs(60), || {
        UnixStream::connect(&socket).ok()
    });
    eprintln!(
        "armhf betaas-vmd under {qemu}: listening after {:?}",
        t0.elapsed()
    );
    let mut c = Client::new(stream);
    let vm = match c.call(&Request::Acquire {
        template: "app".into(),
    }) {
        Ok(Response::Acquired { vm, resumed }) => {
            assert!(!resumed);
            vm
        }
        other => panic!(
            "{other:?}\n{}",
            std::fs::read_to_string(r.join("vmd.log")).unwrap_or_default()
        ),
    };
    assert_eq!(vm.state, VmState::Running, "{vm:?}");
    match c.call(&Request::Stop {
        vm: vm.name.clone(),
    }) {
        // The test driver saves like QEMU: a managed save.
        Ok(Response::Vm(v)) => assert_eq!(v.state, VmState::Saved, "{v:?}"),
        other => panic!("{other:?}"),
    }
    match c.call(&Request::Acquire {
        template: "app".into(),
    }) {
        Ok(Response::Acquired { vm: again, resumed }) => {
            assert_eq!((again.name.as_str(), resumed), (vm.name.as_str(), true))
        }
        other => panic!("{other:?}"),
    }
    match c.call(&Request::List) {
        Ok(Response::Vms(v)) => assert_eq!(v.len(), 1, "{v:?}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.call(&Request::Undefine { vm: vm.name }),
        Ok(Response::Undefined { .. })
    ));
}
