//! The qemu-virt image (virtio disk and network, direct kernel boot) and a power cut: the agent's
//! journal lives on the ext4 data partition, and after QEMU is killed mid-run and the same disk
//! boots again, readings go on with seqs that never reuse one already published.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use betaas_e2e::{Mosquitto, Qemu};
use serde_json::Value;

fn agent_toml(gateway: &str, port: u16) -> String {
    // The MTU of the guest's virtio NIC, read from sysfs: a number the kernel really reports.
    format!(
        "gateway_id = \"{gateway}\"\n[mqtt]\nhost = \"10.0.2.2\"\nport = {port}\nkeep_alive_secs = 5\n\
         [[things]]\nid = \"mtu\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"/sys/class/net/eth0/mtu\"\n\
         unit = \"B\"\ninterval_ms = 200\n"
    )
}

/// Waits for `n` more distinct seqs; every reading is the NIC's MTU and a seq seen twice is the
/// same reading sent twice (at-least-once), never another one.
fn collect(
    sub: &mut betaas_e2e::Subscriber,
    seqs: &mut BTreeMap<u64, Value>,
    n: usize,
    what: &str,
) {
    let before = seqs.len();
    sub.wait_for(what, Duration::from_secs(120), |_, p| {
        let r: Value = serde_json::from_str(p).expect("reading is JSON");
        assert_eq!(r["value"], 1500.0, "{r}");
        let seq = r["seq"].as_u64().expect("seq");
        if let Some(old) = seqs.insert(seq, r.clone()) {
            assert_eq!(old["ts"], r["ts"], "seq {seq} reused for another reading");
        }
        (seqs.len() >= before + n).then_some(())
    });
}

#[test]
#[ignore = "boots the firmware under QEMU: run by `make test` after `make image BOARD=qemu-virt`"]
fn journal_survives_a_power_cut_on_the_data_partition() {
    let gateway = format!("virt-{}", fastrand::u32(..));
    let broker = Mosquitto::start();
    let mut sub = broker.subscribe(&format!("betaas/{gateway}/things/mtu/state"));
    let config = agent_toml(&gateway, broker.port);

    let started = Instant::now();
    let vm = Qemu::boot("qemu-virt", &config);
    let mut seqs: BTreeMap<u64, Value> = BTreeMap::new();
    collect(&mut sub, &mut seqs, 1, "the first reading");
    println!(
        "qemu-virt boot-to-first-reading: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Run a random while, then cut the power. After the reboot, `collect` fails if a seq that was
    // published before the cut comes back with another reading.
    collect(
        &mut sub,
        &mut seqs,
        fastrand::usize(5..30),
        "readings before the power cut",
    );
    let last_before = *seqs.keys().last().expect("readings");
    let vm = vm.reboot(&config);
    let rebooted = Instant::now();
    collect(&mut sub, &mut seqs, 5, "readings after the reboot");
    let first_after = seqs.range(last_before + 1..).next().map(|(s, _)| *s);
    println!(
        "power cut after seq {last_before}; first new seq after reboot {first_after:?} ({:.1} s later)",
        rebooted.elapsed().as_secs_f64()
    );
    drop(vm);
}
