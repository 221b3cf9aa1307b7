//! Figures, not a pass/fail test: the board image (256 MiB) written to the same kind of target —
//! a loop device over a file (`--direct-io=on`, so writes reach the file like a card's) — three
//! ways in one run: betaas-flash with the bmap, betaas-flash without it (every byte), and the
//! `dd bs=4M conv=fsync` the README used to give; then the read-back verify of each
//! betaas-flash write. Needs root (losetup) and `make image BOARD=qemu-cubieboard` (or
//! BENCH_IMAGE=FILE with FILE.bmap beside it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use betaas_flash::bmap::Map;
use betaas_flash::copy;
use betaas_flash::human;
use betaas_flash::target::{Disk, Kind, Target};
use indicatif::ProgressBar;

fn rate(b: u64, t: Duration) -> String {
    format!("{}/s", human((b as f64 / t.as_secs_f64().max(1e-9)) as u64))
}

struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn device(backing: &Path) -> Option<Loop> {
    let o = Command::new("losetup")
        .args(["-f", "--show", "--direct-io=on"])
        .arg(backing)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| Loop(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())))
}

fn main() {
    let image = std::env::var_os("BENCH_IMAGE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/qemu-cubieboard/sdcard.img"),
        PathBuf::from,
    );
    let bmap = PathBuf::from(format!("{}.bmap", image.display()));
    if !image.exists() || !bmap.exists() {
        println!(
            "flash bench: skipped: {} (and its .bmap) missing: run `make image BOARD=qemu-cubieboard`",
            image.display()
        );
        return;
    }
    let size = std::fs::metadata(&image).expect("image").len();
    let mapped = Map::load(&bmap, size).expect("bmap");
    let full = Map::full(size);
    let dir = tempfile::tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .expect("tempdir");
    let backing = dir.path().join("card.bin");
    std::fs::write(&backing, vec![0xa5u8; size as usize]).expect("backing");
    let Some(lo) = device(&backing) else {
        println!("flash bench: skipped: losetup failed (needs root)");
        return;
    };
    let target = Target {
        path: lo.0.clone(),
        kind: Kind::Device(Disk {
            name: "loop".into(),
            size,
            removable: false,
            model: String::new(),
        }),
    };
    println!(
        "flash bench: {} ({}), bmap maps {} in {} ranges; target {} (loop, direct I/O, fsync'd)",
        image.display(),
        human(size),
        human(mapped.mapped_bytes()),
        mapped.ranges.len(),
        lo.0.display()
    );
    println!(
        "  {:<34} {:>11} {:>8} {:>12}",
        "", "written", "time", "rate"
    );
    let hidden = ProgressBar::hidden;
    let mut rows = Vec::new();
    for (name, map) in [
        ("betaas-flash write (bmap)", &mapped),
        ("betaas-flash write --no-bmap", &full),
    ] {
        let out = copy::open_output(&target, size, false).expect("open");
        let w = copy::write(&image, map, &out, &hidden()).expect("write");
        drop(out);
        println!(
            "  {:<34} {:>11} {:>7.2}s {:>12}",
            name,
            human(w.bytes),
            w.elapsed.as_secs_f64(),
            rate(w.bytes, w.elapsed)
        );
        let t = copy::verify(&image, map, Some(&w.sums), &lo.0, None, &hidden()).expect("verify");
        rows.push((name, map.mapped_bytes(), t));
    }
    let start = Instant::now();
    let ok = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", lo.0.display()))
        .args(["bs=4M", "conv=fsync", "status=none"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let t = start.elapsed();
    println!(
        "  {:<34} {:>11} {:>7.2}s {:>12}{}",
        "dd bs=4M conv=fsync (baseline)",
        human(size),
        t.as_secs_f64(),
        rate(size, t),
        if ok { "" } else { "  (dd failed)" }
    );
    for (name, bytes, t) in rows {
        println!(
            "  {:<34} {:>11} {:>7.2}s {:>12}  (read back + sha256)",
            format!("verify after {}", name.trim_start_matches("betaas-flash ")),
            human(bytes),
            t.as_secs_f64(),
            rate(bytes, t)
        );
    }
    drop(lo);
}
