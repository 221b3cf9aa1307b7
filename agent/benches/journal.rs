//! Journal throughput and SD-card wear per fsync policy, next to baselines measured in the same run.
//! Prints figures; never fails on time.
//!
//!   CARGO_TARGET_DIR=... cargo bench -p betaas-agent --bench journal [-- <readings>]
//!
//! "disk B/reading" is the kernel's `write_bytes` from /proc/self/io: bytes of page cache this process
//! dirtied, i.e. what will be written to the card (a sync cleans a page; the next append dirties all
//! 4 KiB of it again). It does not include the ext4 journal's own commit blocks.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use betaas_agent::journal::{format, Body, FsyncPolicy, Journal, Limits, Record};

fn disk_write_bytes() -> u64 {
    fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// Readings as the agent makes them: 50 things round-robin, one value each.
fn readings(n: usize) -> Vec<Record> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n)
        .map(|i| Record {
            thing: format!("thing-{:02}", i % 50),
            seq: (i / 50) as u64,
            ts_ms: 1_764_000_000_000 + i as u64 * 20,
            body: Body::Reading {
                value: 15.0 + rng.f64() * 10.0,
                unit: "°C".into(),
            },
        })
        .collect()
}

struct Row {
    name: String,
    n: usize,
    secs: f64,
    written: u64,
    disk: u64,
    fsyncs: u64,
}

fn print(r: &Row) {
    println!(
        "{:<34} {:>7} {:>12.0} {:>14.1} {:>14.1} {:>12.3}",
        r.name,
        r.n,
        r.n as f64 / r.secs,
        r.written as f64 / r.n as f64,
        r.disk as f64 / r.n as f64,
        r.fsyncs as f64 / r.n as f64,
    );
}

/// Baseline: the same frame bytes, one write(2) per reading, optionally fdatasync each.
fn raw(dir: &Path, recs: &[Record], sync_each: bool) -> Row {
    let frames: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            format::encode_record(r, &mut b).expect("encode");
            b
        })
        .collect();
    let path = dir.join(if sync_each { "raw-sync" } else { "raw" });
    let mut f = File::create(&path).expect("create");
    let d0 = disk_write_bytes();
    let t = Instant::now();
    let mut written = 0;
    for b in &frames {
        f.write_all(b).expect("write");
        written += b.len() as u64;
        if sync_each {
            f.sync_data().expect("sync");
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Row {
        name: format!(
            "baseline raw write{}",
            if sync_each { " + fdatasync" } else { "" }
        ),
        n: frames.len(),
        secs,
        written,
        disk: disk_write_bytes() - d0,
        fsyncs: if sync_each { frames.len() as u64 } else { 0 },
    }
}

/// Appends through the journal; with `publish`, also reads back and acks each batch as the publisher will.
fn journal(dir: &Path, name: &str, recs: &[Record], fsync: FsyncPolicy, publish: bool) -> Row {
    let limits = Limits {
        fsync,
        ..Limits::default()
    };
    let (mut j, _) = Journal::open(dir, limits).expect("open");
    let d0 = disk_write_bytes();
    let w0 = j.stats();
    let t = Instant::now();
    let mut pos = j.ack_cursor();
    for (i, r) in recs.iter().enumerate() {
        j.append(r).expect("append");
        if publish && i % 10 == 9 {
            for (c, _) in j.read_from(pos, 10).expect("read") {
                j.ack(c).expect("ack");
                pos = c;
            }
        }
    }
    j.sync().expect("sync");
    let secs = t.elapsed().as_secs_f64();
    let st = j.stats();
    let row = Row {
        name: name.to_string(),
        n: recs.len(),
        secs,
        written: st.bytes_written - w0.bytes_written,
        disk: disk_write_bytes() - d0,
        fsyncs: st.fsyncs - w0.fsyncs,
    };
    j.close().expect("close");
    row
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number sets the reading count.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50_000);
    // fdatasync per reading is slow: measure it on fewer readings.
    let n_sync = (n / 20).max(200);
    let recs = readings(n);
    let frame = {
        let mut b = Vec::new();
        format::encode_record(&recs[0], &mut b).expect("encode")
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    println!(
        "journal bench: {n} readings of 50 things ({frame} B/frame) in {}; fdatasync-per-reading rows use {n_sync}",
        tmp.path().display(),
    );
    println!(
        "{:<34} {:>7} {:>12} {:>14} {:>14} {:>12}",
        "", "n", "appends/s", "write() B/rd", "disk B/rd", "fsync/rd"
    );
    let every = |records, ms| FsyncPolicy::Every {
        records,
        interval: Duration::from_millis(ms),
    };
    let run = |name: &str, recs: &[Record], p: FsyncPolicy, publish: bool| {
        let d = tmp.path().join(name.replace(' ', "_"));
        let r = journal(&d, name, recs, p, publish);
        fs::remove_dir_all(&d).expect("cleanup");
        r
    };
    let rows = vec![
        raw(tmp.path(), &recs, false),
        run("journal never", &recs, FsyncPolicy::Never, false),
        run(
            "journal every 64/1s (default)",
            &recs,
            every(64, 1000),
            false,
        ),
        run("journal default + read + ack", &recs, every(64, 1000), true),
        raw(tmp.path(), &recs[..n_sync], true),
        run(
            "journal always",
            &recs[..n_sync],
            FsyncPolicy::Always,
            false,
        ),
    ];
    for r in &rows {
        print(r);
    }
}
