//! Helpers of the big-data tests: the `bigdata-*` templates (built by `templates/bigdata/build.sh`
//! when missing), LXC domain cleanup, the random word-count input and its expected counts, and a
//! Spark driver on the host (the Spark tree and Java of the template, the host's python3) that
//! submits the word count to a cluster's master.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::repo;

pub const LXC_URI: &str = "lxc:///system";

/// `out/templates` holding `bigdata-{master,compute,storage}-x86_64` (and `tiny-x86_64`, the
/// probe's template), built here if missing (several minutes the first time).
pub fn templates() -> PathBuf {
    let dir = repo().join("out/templates");
    let built = ["master", "compute", "storage"].iter().all(|r| {
        dir.join(format!("bigdata-{r}-x86_64/template.toml"))
            .is_file()
    });
    if !built {
        let st = Command::new("bash")
            .arg(repo().join("templates/bigdata/build.sh"))
            .arg("x86_64")
            .current_dir(repo())
            .status()
            .expect("templates/bigdata/build.sh runs");
        assert!(st.success(), "building the bigdata templates failed");
    }
    assert!(
        dir.join("tiny-x86_64/template.toml").is_file(),
        "out/templates/tiny-x86_64 missing (vmd's probe): make out/templates/tiny-x86_64/template.toml"
    );
    dir
}

/// Destroys and undefines every container whose name starts with the tag (pass or fail).
pub struct LxcCleanup(pub String);

impl Drop for LxcCleanup {
    fn drop(&mut self) {
        let out = Command::new("virsh")
            .args(["-c", LXC_URI, "list", "--all", "--name"])
            .output();
        let Ok(out) = out else { return };
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.starts_with(&self.0))
        {
            let _ = Command::new("virsh")
                .args(["-c", LXC_URI, "destroy", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("virsh")
                .args(["-c", LXC_URI, "undefine", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            eprintln!("tests: removed container {name}");
        }
    }
}

/// Writes `parts` gzip files of random words into `dir` (the storage node's data directory) and
/// returns the expected count of each word.
pub fn write_words(dir: &Path, parts: usize, lines: usize) -> BTreeMap<String, u64> {
    std::fs::create_dir_all(dir).expect("data dir");
    let mut rng = fastrand::Rng::new();
    let vocab: Vec<String> = (0..60)
        .map(|_| {
            let n = rng.usize(3..9);
            (0..n).map(|_| rng.lowercase()).collect()
        })
        .collect();
    let mut want = BTreeMap::new();
    for p in 0..parts {
        let mut text = String::new();
        for _ in 0..lines {
            let n = rng.usize(1..12);
            let words: Vec<&str> = (0..n)
                .map(|_| vocab[rng.usize(..vocab.len())].as_str())
                .collect();
            for w in &words {
                *want.entry((*w).to_owned()).or_insert(0u64) += 1;
            }
            text.push_str(&words.join(if rng.bool() { " " } else { "  " }));
            text.push('\n');
        }
        let path = dir.join(format!("part-{p}.txt"));
        std::fs::write(&path, text).expect("write part");
        let st = Command::new("gzip")
            .arg("-f")
            .arg(&path)
            .status()
            .expect("gzip");
        assert!(st.success());
    }
    want
}

const WORDCOUNT: &str = r#"
import json, sys
from pyspark.sql import SparkSession, functions as F
spark = SparkSession.builder.appName("betaas-wordcount").getOrCreate()
lines = spark.read.text(sys.argv[1])
words = lines.select(F.explode(F.split(F.col("value"), r"\s+")).alias("w")).where(F.col("w") != "")
counts = {r["w"]: r["count"] for r in words.groupBy("w").count().collect()}
sc = spark.sparkContext
hosts = sorted(e.host() for e in sc._jsc.sc().statusTracker().getExecutorInfos())
print("BETAAS-WC " + json.dumps({"counts": counts, "executors": len(hosts) - 1, "partitions": lines.rdd.getNumPartitions()}), flush=True)
spark.stop()
"#;

/// The Spark tree of the templates' rootfs, unpacked once under `out/templates/.bigdata-client`.
pub fn spark_home(templates: &Path) -> PathBuf {
    let rootfs = templates.join("bigdata-master-x86_64/rootfs.tar");
    let dir = templates.join(".bigdata-client");
    let stamp = dir.join("from");
    let id = format!(
        "{:?}",
        std::fs::metadata(&rootfs)
            .and_then(|m| m.modified())
            .expect("rootfs.tar")
    );
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(id.as_str()) {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("client dir");
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&rootfs)
            .arg("-C")
            .arg(&dir)
            .arg("./opt/spark")
            .status()
            .expect("tar");
        assert!(st.success(), "unpacking Spark from {}", rootfs.display());
        std::fs::write(&stamp, &id).expect("stamp");
    }
    dir.join("opt/spark")
}

pub struct JobResult {
    pub counts: BTreeMap<String, u64>,
    pub executors: u64,
    pub partitions: u64,
    pub secs: f64,
}

/// Submits the word count of `input` (a Hadoop URL) to `master` from the host, in client mode
/// (the executors connect back to this driver on the loopback); returns what it counted.
pub fn word_count(spark: &Path, master: &str, input: &str, work: &Path) -> JobResult {
    let job = work.join("wordcount.py");
    std::fs::write(&job, WORDCOUNT).expect("job file");
    let t0 = Instant::now();
    let out = Command::new(spark.join("bin/spark-submit"))
        .env("SPARK_HOME", spark)
        // The pyspark package is unpacked (not zipped as in a Spark release): spark-submit's own
        // PYTHONPATH names python/lib/pyspark.zip, which is not there.
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                spark.join("python").display(),
                spark.join("python/lib/py4j-0.10.9.9-src.zip").display()
            ),
        )
        .env("PYSPARK_PYTHON", "python3")
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .args(["--master", master])
        .args(["--conf", "spark.driver.host=127.0.0.1"])
        .args(["--conf", "spark.executor.memory=512m"])
        .args(["--conf", "spark.driver.memory=512m"])
        .args(["--conf", "spark.ui.enabled=false"])
        // Both executors are at 127.0.0.1 but in different containers: no host-local shuffle reads
        // (also in the template's conf/spark-defaults.conf).
        .args(["--conf", "spark.shuffle.readHostLocalDisk=false"])
        .args([
            "--conf",
            "spark.hadoop.fs.ftp.data.connection.mode=PASSIVE_LOCAL_DATA_CONNECTION_MODE",
        ])
        .arg(&job)
        .arg(input)
        .output()
        .expect("spark-submit runs");
    let secs = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BETAAS-WC "))
        .unwrap_or_else(|| {
            let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "the word count printed no result (exit {:?}); stdout:\n{stdout}\nstderr (last 60 lines):\n{}",
                out.status.code(),
                tail.join("\n")
            )
        });
    let v: serde_json::Value = serde_json::from_str(line).expect("result json");
    let counts = v["counts"]
        .as_object()
        .expect("counts")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    JobResult {
        counts,
        executors: v["executors"].as_u64().unwrap_or(0),
        partitions: v["partitions"].as_u64().unwrap_or(0),
        secs,
    }
}

/// Waits for `needle` in a container's console log; returns the seconds it took.
pub fn wait_marker(log: &Path, needle: &str, timeout: Duration) -> f64 {
    let t0 = Instant::now();
    crate::wait_until(&format!("{needle} in {}", log.display()), timeout, || {
        std::fs::read(log)
            .ok()
            .filter(|b| String::from_utf8_lossy(b).contains(needle))
            .map(|_| ())
    });
    t0.elapsed().as_secs_f64()
}

/// Random words written into the storage node `storage_vm_dir`'s data directory, counted by a
/// Spark job on `master` reading them over FTP: the counts must be the test's, and both workers
/// must have run executors. Prints the job's figures.
pub fn check_word_count(storage_vm_dir: &Path, spark: &Path, master: &str, work: &Path) {
    let want = write_words(&storage_vm_dir.join("rootfs/srv/betaas/data/wc"), 4, 20_000);
    let job = word_count(spark, master, "ftp://anonymous:x@127.0.0.1:2121/wc/", work);
    println!(
        "word count: {:.1} s, {} distinct words, {} words, {} partitions, {} executors",
        job.secs,
        job.counts.len(),
        want.values().sum::<u64>(),
        job.partitions,
        job.executors
    );
    assert_eq!(job.counts, want, "the job's counts differ from the test's");
    assert_eq!(job.executors, 2, "both workers ran executors");
}
