//! The `forecast` and `simulate` subcommands, run as a user would: the real binary, no config
//! file anywhere (they must not need one).

use std::io::Write;
use std::process::{Command, Output, Stdio};

const NO_CONFIG: &str = "/nonexistent/betaas/agent.toml";

fn agent(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_betaas-agent"))
        .arg("--config")
        .arg(NO_CONFIG)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("betaas-agent starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("betaas-agent exits")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn scenario(name: &str) -> String {
    format!("{}/../tests/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn forecast_a_random_line_without_config() {
    // A random line: Holt with any α, β forecasts it exactly.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.subsec_nanos());
    let (a, b) = (i64::from(nanos % 1000), i64::from(nanos % 17) - 8);
    let series: String = (0..20).map(|t| format!("{}\n", a + b * t)).collect();
    let out = agent(
        &[
            "forecast",
            "--alpha",
            "0.3",
            "--beta",
            "0.6",
            "--horizon",
            "3",
            "-",
        ],
        &series,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want: String = (20..23).map(|t| format!("{}\n", a + b * t)).collect();
    assert_eq!(text(&out.stdout), want);
}

#[test]
fn forecast_help_states_the_initialisation() {
    let out = agent(&["forecast", "--help"], "");
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("level = first value, trend = second value minus first value"),
        "{help}"
    );
}

#[test]
fn simulate_json_has_the_documented_shape() {
    let out = agent(
        &[
            "simulate",
            "--scenario",
            &scenario("paper-ab.json"),
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let d = &v["decisions"][0];
    assert_eq!(
        (d["request"].as_u64(), d["decision"].as_str()),
        (Some(0), Some("local"))
    );
    assert_eq!(d["target"].as_str(), Some("B"));
    assert!(d["reason"]
        .as_str()
        .is_some_and(|r| r.contains("biggest template")));
    let s = &v["summary"];
    for key in [
        "local",
        "remote",
        "cancelled",
        "by_template",
        "first_failure",
        "free_mem_mb_mean",
        "free_mem_mb_stddev",
    ] {
        assert!(s.get(key).is_some(), "summary.{key} missing: {s}");
    }
}

#[test]
fn simulate_compare_lists_every_policy() {
    let out = agent(
        &[
            "simulate",
            "--scenario",
            &scenario("remote-limits.json"),
            "--compare",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    for p in [
        "betaas",
        "first-fit",
        "best-fit",
        "worst-fit",
        "random",
        "nova-spread",
        "k8s-most-allocated",
    ] {
        assert!(t.lines().any(|l| l.starts_with(p)), "{p} missing:\n{t}");
    }
}

#[test]
fn bad_scenario_and_bad_policy_exit_2_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("betaas-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"gateways\": [\n    {\"id\": \"a\", \"virt\": \"xen\"}\n  ]\n}\n",
    )
    .expect("write");
    let out = agent(
        &["simulate", "--scenario", bad.to_str().expect("utf-8")],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("bad.json:3:"), "{e}");
    assert!(e.contains("unknown variant `xen`"), "{e}");
    let out = agent(
        &[
            "simulate",
            "--scenario",
            &scenario("paper-ab.json"),
            "--policy",
            "fifo",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("k8s-most-allocated"));
    let _ = std::fs::remove_dir_all(&dir);
}
