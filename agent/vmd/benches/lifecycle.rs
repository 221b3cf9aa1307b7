//! Cold start vs resume from a managed save, the paper's reason to stop rather than destroy:
//! the tiny x86_64 template under QEMU TCG through betaas-vmd and a real libvirtd, same run,
//! same VM. Prints figures; never fails on speed.
//!   cargo bench -p betaas-vmd --bench lifecycle        (ROUNDS=5 by default)
//!
//! cold   = Start request sent (domain defined, shut off, no save) → boot marker in the serial log
//! resume = Resume request sent (domain saved) → reply (QEMU has loaded the state and runs)
//! resume+tick = → the guest's next tick line (proves it runs; up to 1 s of tick period on top)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use betaas_proto::{Request, Response};
use common::*;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ok(r: Response) -> Response {
    if let Response::Error(e) = &r {
        panic!("betaas-vmd: {e}");
    }
    r
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let _libvirtd = Libvirtd::acquire();
    let tag = unique("b");
    let _sweep = Sweeper(tag.clone());
    let tmp = tempfile::TempDir::new().expect("tmp");
    let templates = tiny_template("x86_64")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let d = Vmd::spawn(
        tmp.path(),
        &format!(
            "uri = \"{QEMU_URI}\"\nowner = \"{tag}\"\nname_prefix = \"{tag}\"\nstate_dir = \"vms\"\n\
             templates = [\"{templates}\"]\narch = \"x86_64\"\nidle_destroy_s = 3600\n\
             [probe]\nassume = \"qemu\"\n"
        ),
    );
    let name = match ok(d.call(Request::Create {
        template: "tiny".into(),
    })) {
        Response::Vm(v) => v.name,
        other => panic!("{other:?}"),
    };
    let log = tmp.path().join("vms").join(&name).join("serial.log");
    println!(
        "betaas-vmd lifecycle: tiny x86_64, QEMU TCG, 128 MiB, 1 vCPU, {rounds} rounds, VM {name}"
    );
    println!("round  cold→marker  save  resume→reply  resume→tick   (ms)");
    let (mut cold, mut save, mut resume, mut tick) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        // Cold: from shut off (no managed save) to the boot marker.
        let from = log_len(&log);
        let t = Instant::now();
        ok(d.call(Request::Start { vm: name.clone() }));
        wait_for(&log, from, "BETAAS-TINY-BOOTED", Duration::from_secs(120));
        let c = t.elapsed();
        wait_for(&log, from, "BETAAS-TINY-TICK", Duration::from_secs(30));

        let t = Instant::now();
        ok(d.call(Request::Stop { vm: name.clone() }));
        let s = t.elapsed();

        let from = log_len(&log);
        let t = Instant::now();
        ok(d.call(Request::Resume { vm: name.clone() }));
        let r = t.elapsed();
        wait_for(&log, from, "BETAAS-TINY-TICK", Duration::from_secs(30));
        let rt = t.elapsed();
        println!(
            "{round:>5}  {:>11.0}  {:>4.0}  {:>12.0}  {:>11.0}",
            ms(c),
            ms(s),
            ms(r),
            ms(rt)
        );
        cold.push(ms(c));
        save.push(ms(s));
        resume.push(ms(r));
        tick.push(ms(rt));
        // Back to shut off without a save for the next cold start.
        ok(d.call(Request::Destroy { vm: name.clone() }));
    }
    let (c, s, r, rt) = (median(cold), median(save), median(resume), median(tick));
    println!("median {c:>11.0}  {s:>4.0}  {r:>12.0}  {rt:>11.0}");
    println!(
        "cold start / resume from managed save = {:.1}x (to reply), {:.1}x (to the guest's next tick)",
        c / r,
        c / rt
    );
    ok(d.call(Request::Undefine { vm: name }));
}
