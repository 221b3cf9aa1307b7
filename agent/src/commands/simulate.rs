//! `betaas-agent simulate`: replays a scenario through the allocator and prints the decisions
//! and their summary, or compares every policy.

use std::path::PathBuf;
use std::process::ExitCode;

use betaas_core::allocator::{Policy, PolicyKind};
use betaas_core::gen::generate;
use betaas_core::scenario::Scenario;
use betaas_core::sim::{comparison_table, run as simulate, ForecastParams, SimOutput};
use clap::Args;

/// Replay a scenario (JSON) through an allocation policy.
///
/// Policies: betaas (the paper's), first-fit, best-fit, worst-fit, random (seeded),
/// nova-spread (RAM weigher), k8s-most-allocated.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SimulateArgs {
    /// The scenario: {"gateways":[…],"templates":[…],"remote":[…],"requests":[…]}.
    #[arg(long, required_unless_present = "generate")]
    pub scenario: Option<PathBuf>,
    /// Instead of a file: a generated scenario with this many gateways (see --requests, --seed).
    #[arg(long, conflicts_with = "scenario")]
    pub generate: Option<usize>,
    /// Requests in a generated scenario (default: 4 per gateway).
    #[arg(long, requires = "generate")]
    pub requests: Option<usize>,
    /// Seed of the generated scenario and of the random policy.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "betaas", value_parser = parse_policy)]
    pub policy: PolicyKind,
    /// Run every policy and print one summary line each.
    #[arg(long)]
    pub compare: bool,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_policy(s: &str) -> Result<PolicyKind, String> {
    s.parse()
}

pub fn run(args: &SimulateArgs) -> ExitCode {
    let scenario = match load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("betaas-agent simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = |kind| Policy {
        seed: args.seed,
        ..Policy::new(kind)
    };
    let fp = ForecastParams::default();
    let kinds: Vec<PolicyKind> = if args.compare {
        PolicyKind::ALL.to_vec()
    } else {
        vec![args.policy]
    };
    let outputs: Vec<SimOutput> = kinds
        .iter()
        .map(|&k| simulate(&scenario, &policy(k), fp))
        .collect();
    let text = match (args.json, args.compare) {
        (true, true) => serde_json::to_string_pretty(&outputs),
        (true, false) => serde_json::to_string_pretty(&outputs[0]),
        (false, true) => Ok(comparison_table(&outputs)),
        (false, false) => Ok(table(&outputs[0])),
    };
    match text {
        Ok(t) => super::print(&t),
        Err(e) => {
            eprintln!("betaas-agent simulate: cannot encode the result: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &SimulateArgs) -> Result<Scenario, String> {
    if let Some(n) = args.generate {
        return Ok(generate(n, args.requests.unwrap_or(n * 4), args.seed));
    }
    let path = args
        .scenario
        .as_ref()
        .ok_or("--scenario or --generate is needed")?;
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    Scenario::parse(&name, &text).map_err(|e| e.to_string())
}

fn table(o: &SimOutput) -> String {
    let mut s = format!("{:>5}  {:<7} {:<20} reason\n", "req", "outcome", "target");
    for d in &o.decisions {
        s.push_str(&format!(
            "{:>5}  {:<7} {:<20} {}\n",
            d.request,
            d.decision,
            d.target.as_deref().unwrap_or("-"),
            d.reason
        ));
    }
    s.push('\n');
    s.push_str(&comparison_table(std::slice::from_ref(o)));
    for (t, c) in &o.summary.by_template {
        s.push_str(&format!(
            "  {t}: {} local, {} remote, {} cancelled\n",
            c.local, c.remote, c.cancelled
        ));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    #[test]
    fn bad_scenario_is_an_error_with_line_and_column() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.json");
        std::fs::write(&p, "{\n  \"gateways\": [\n    {\"id\": 3}\n  ]\n}\n").unwrap();
        let a = SimulateArgs {
            scenario: Some(p.clone()),
            generate: None,
            requests: None,
            seed: 1,
            policy: PolicyKind::Betaas,
            compare: false,
            json: false,
        };
        let e = load(&a).unwrap_err();
        assert!(e.starts_with(&format!("{}:3:", p.display())), "{e}");
        assert!(e.contains("expected a string"), "{e}");
    }

    #[test]
    fn table_lists_every_decision() {
        let s = generate(5, 30, 3);
        let o = simulate(
            &s,
            &Policy::new(PolicyKind::Betaas),
            ForecastParams::default(),
        );
        let t = table(&o);
        // One line per decision, starting with its request number.
        let rows: Vec<usize> = t
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let want: Vec<usize> = o.decisions.iter().map(|d| d.request).collect();
        assert_eq!(rows, want);
        assert!(t.contains("betaas"));
    }
}
