//! A slow card: the agent's writes throttled by the kernel (blkio / io cgroup, 1 write per second
//! on the data directory's disk) while it journals a 20 Hz sensor with `fsync = "always"`. An SD
//! card busy with writeback does this for seconds. The health topic keeps its 1 s pace (nothing on
//! the runtime waits for the journal's lock, which a thread holds through each fsync), and once the
//! card is fast again every reading taken meanwhile arrives in order.
//!
//! Needs root and a cgroup controller for block I/O (v1 `blkio` or v2 `io`); fails otherwise.

mod sf_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use betaas_e2e::{free_port, Mosquitto};
use sf_support::{health_u64, rng, Agent, Gateway, Seen, Wiggler};

/// A cgroup whose members may write `iops` times per second to one disk; the agent is moved out
/// again and the group removed on drop.
struct Throttle {
    dir: PathBuf,
    root: PathBuf,
    pid: u32,
}

impl Throttle {
    fn new(disk: &str, iops: u32, pid: u32) -> Throttle {
        let name = format!("betaas-slow-{pid}");
        let (root, file, rule) = if Path::new("/sys/fs/cgroup/blkio").is_dir() {
            let root = PathBuf::from("/sys/fs/cgroup/blkio");
            (
                root,
                "blkio.throttle.write_iops_device",
                format!("{disk} {iops}"),
            )
        } else {
            let root = PathBuf::from("/sys/fs/cgroup");
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                .expect("no blkio (v1) or cgroup v2 hierarchy at /sys/fs/cgroup");
            assert!(
                controllers.contains("io"),
                "cgroup v2 without the io controller: {controllers}"
            );
            std::fs::write(root.join("cgroup.subtree_control"), "+io").expect("enable io");
            (root, "io.max", format!("{disk} wiops={iops}"))
        };
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("make the cgroup");
        std::fs::write(dir.join(file), &rule).unwrap_or_else(|e| panic!("{rule} > {file}: {e}"));
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move the agent in");
        Throttle { dir, root, pid }
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// "MAJ:MIN" of the whole disk `path` is on (throttling rules name disks, not partitions).
fn disk_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).expect("stat").dev();
    let id = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{id}")).expect("/sys/dev/block");
    if sys.join("partition").exists() {
        let parent = sys.parent().expect("the partition's disk");
        std::fs::read_to_string(parent.join("dev"))
            .expect("dev")
            .trim()
            .to_owned()
    } else {
        id
    }
}

/// The longest time between consecutive health messages (by their `ts`), in ms.
fn widest_gap(health: &[serde_json::Value]) -> u64 {
    let ts: Vec<u64> = health.iter().map(|h| health_u64(h, "/ts")).collect();
    ts.windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}

#[test]
fn health_keeps_its_pace_and_nothing_is_lost_on_a_slow_card() {
    let mut rng = rng("health_keeps_its_pace_and_nothing_is_lost_on_a_slow_card");
    let gw = Gateway::new(&mut rng);
    let port = free_port();
    let broker = Mosquitto::start_on(port);
    let mut sub = broker.subscribe(&gw.filter());
    gw.set_value("t", 20.0);
    let _wiggle = Wiggler::start(&gw, &["t"], rng.u64(..));
    let cfg = gw.config(port, "", &gw.sysfs_thing("t", 50));
    let mut agent = Agent::start(&cfg);
    let mut seen = Seen::default();
    seen.until(
        &gw.id,
        &mut sub,
        "readings and health",
        Duration::from_secs(15),
        |s| s.readings.len() >= 20 && s.health.len() >= 2,
    );
    let window = Duration::from_secs(rng.u64(12..=18));

    // Baseline: the same window on the fast disk.
    let (h0, r0) = (seen.health.len(), seen.readings.len());
    seen.during(&gw.id, &mut sub, window);
    let fast_gap = widest_gap(&seen.health[h0..]);
    let fast_readings = seen.readings.len() - r0;

    let disk = disk_of(&gw.path("data"));
    let throttle = Throttle::new(&disk, 1, agent.pid().expect("agent pid"));
    let (h1, r1) = (seen.health.len(), seen.readings.len());
    seen.during(&gw.id, &mut sub, window);
    let slow_gap = widest_gap(&seen.health[h1..]);
    let slow_readings = seen.readings.len() - r1;
    let depth = seen.last_health().map(|h| health_u64(h, "/journal/depth"));
    drop(throttle);
    agent.assert_running();
    println!(
        "{:.0} s windows, disk {disk}: fast: {fast_readings} readings published, health at most \
         {fast_gap} ms apart; 1 write/s: {slow_readings} readings, health at most {slow_gap} ms apart \
         (journal depth {depth:?})",
        window.as_secs_f64()
    );
    // The card really was slow (else this test would prove nothing): fsync-per-reading at one
    // write per second cannot keep a 20 Hz sensor's pace.
    assert!(
        slow_readings * 3 < fast_readings,
        "throttling did not slow the journal: {slow_readings} vs {fast_readings} readings"
    );
    assert!(
        seen.health.len() - h1 >= (window.as_secs() as usize) / 2,
        "health stopped while the card was slow: {} messages in {window:?}",
        seen.health.len() - h1
    );
    assert!(
        slow_gap <= 2500,
        "health waited for the card: {slow_gap} ms between two messages"
    );

    // Fast again: everything journaled meanwhile arrives, in order, nothing skipped.
    let last = seen.max_seq("t").expect("readings");
    seen.until(
        &gw.id,
        &mut sub,
        "the backlog",
        Duration::from_secs(60),
        |s| s.max_seq("t").is_some_and(|m| m > last + 40),
    );
    seen.assert_complete("t", 0, seen.max_seq("t").expect("readings"));
    agent.stop();
}
