//! `make bench`: store-and-forward figures, each next to a baseline measured in the same run.
//!
//! 1. Drain rate: N readings already in the journal (written with the journal API, as a broker
//!    outage leaves them) published by the agent at QoS 1 to a local mosquitto, against
//!    `mosquitto_pub -l -q 1` publishing N messages over one connection.
//! 2. SD wear: bytes the agent process wrote (/proc/<pid>/io write_bytes) per reading, 50 things.
//! 3. Memory: the agent's RSS with 50 things configured, next to its RSS with none.
//!
//! Prints figures; never fails on speed.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use betaas_agent::journal::{Body, Journal, Limits, Record};
use betaas_e2e::{spawn_agent, KillOnDrop, Mosquitto};

const N: u64 = 20_000;

fn agent(dir: &Path, port: u16, things: usize) -> KillOnDrop {
    std::fs::write(dir.join("v"), "21500").expect("value file");
    let mut toml = format!(
        "gateway_id = \"bench\"\ndata_dir = \"{d}/data\"\nlog_level = \"warn\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n",
        d = dir.display()
    );
    for i in 0..things {
        toml += &format!(
            "[[things]]\nid = \"t{i}\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"{d}/v\"\nunit = \"C\"\nscale = 0.001\ninterval_ms = 100\n",
            d = dir.display()
        );
    }
    spawn_agent(env!("CARGO_BIN_EXE_betaas-agent"), dir, &toml)
}

fn count(port: u16, filter: &str, n: u64) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            filter,
            "-q",
            "1",
            "-C",
            &n.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub")
}

fn wait(mut c: Child, what: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = c.kill();
    panic!("{what}: not all messages arrived within 120 s");
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // Unlimited queues: a subscriber that falls behind must count every message, not lose some.
    let broker = Mosquitto::start_with(
        betaas_e2e::free_port(),
        "max_queued_messages 0\nmax_inflight_messages 0\n",
    );
    let port = broker.port;

    // Baseline: mosquitto_pub, one connection, QoS 1, N lines -> N messages.
    let sub = count(port, "base/#", N);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let mut publ = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-t", "base/x", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    {
        let mut stdin = publ.stdin.take().expect("stdin");
        for i in 0..N {
            writeln!(
                stdin,
                "{{\"thing\":\"t0\",\"value\":21.5,\"unit\":\"C\",\"ts\":0,\"seq\":{i}}}"
            )
            .expect("write");
        }
    }
    wait(sub, "baseline");
    let base = t.elapsed().as_secs_f64();
    let _ = publ.wait();

    // The agent draining a journal of N readings.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut j, _) =
            Journal::open(dir.path().join("data/journal"), Limits::default()).expect("journal");
        for seq in 0..N {
            let body = Body::Reading {
                value: 21.5,
                unit: "C".into(),
            };
            j.append(&Record {
                thing: "t0".into(),
                seq,
                ts_ms: 0,
                body,
            })
            .expect("append");
        }
        j.close().expect("close");
    }
    let sub = count(port, "betaas/bench/things/+/state", N);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let a = agent(dir.path(), port, 0);
    wait(sub, "agent drain");
    let drained = t.elapsed().as_secs_f64();
    drop(a);

    println!("store-and-forward drain, {N} readings at QoS 1 to a local mosquitto:");
    println!(
        "  mosquitto_pub -l (baseline)   {:>9.0} msg/s",
        N as f64 / base
    );
    println!(
        "  betaas-agent from the journal {:>9.0} msg/s  (ratio {:.2})",
        N as f64 / drained,
        base / drained
    );

    // SD wear and memory: 50 things at 10 readings/s each, for a few seconds.
    let dir = tempfile::tempdir().expect("tempdir");
    let idle = agent(dir.path(), port, 0);
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle = proc_field(idle.0.id(), "status", "VmRSS:");
    drop(idle);
    let dir = tempfile::tempdir().expect("tempdir");
    let busy = agent(dir.path(), port, 50);
    let pid = busy.0.id();
    std::thread::sleep(Duration::from_secs(2));
    let (w0, t0) = (proc_field(pid, "io", "write_bytes:"), Instant::now());
    const READINGS: u64 = 2_500;
    let sub = count(port, "betaas/bench/things/+/state", READINGS);
    wait(sub, "50 things");
    let secs = t0.elapsed().as_secs_f64();
    let written = proc_field(pid, "io", "write_bytes:") - w0;
    let readings = READINGS as f64;
    let rss_busy = proc_field(pid, "status", "VmRSS:");
    println!("50 things at 10 Hz, {READINGS} readings in {secs:.1} s, default fsync policy:");
    println!(
        "  bytes written to disk per reading {:>7.1}  (journal frame alone: ~37 B)",
        written as f64 / readings
    );
    println!(
        "  RSS with 50 things                {:>7} KiB  (with no things: {rss_idle} KiB)",
        rss_busy
    );
}
