//! Simulator scenarios: the JSON a user writes (extra fields are allowed and ignored), parsed and
//! checked into types the simulator can replay without further checks.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::allocator::{Provider, Res, Template, Virt};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub gateways: Vec<ScGateway>,
    pub templates: Vec<Template>,
    #[serde(default)]
    pub remote: Vec<ScRemote>,
    pub requests: Vec<ScRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScGateway {
    pub id: String,
    pub cpus: u32,
    pub mem_mb: u64,
    pub disk_gb: u64,
    pub virt: Virt,
    pub trust: f64,
    #[serde(default)]
    pub battery: Option<f64>,
    #[serde(default)]
    pub powerful: bool,
    /// Optional history of the memory the host itself uses (MB, one per sample interval, oldest
    /// first): the simulator forecasts it with Holt for the paper's policy; every policy sees the
    /// last value as used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_mem_used_mb: Vec<f64>,
    /// Templates of the VMs already running on it when the scenario starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScRemote {
    pub name: String,
    pub provider: Provider,
    pub max_vms: u32,
    pub reachable: bool,
    pub owner: String,
    #[serde(default)]
    pub cost_per_vm: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScRequest {
    Template { template: String },
    Release { release: usize },
}

#[derive(Debug, Error, PartialEq)]
pub enum ScenarioError {
    #[error("{file}:{line}:{column}: {message}")]
    Json {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {at}: {message}")]
    Invalid {
        file: String,
        at: String,
        message: String,
    },
}

impl Scenario {
    /// Parses and checks a scenario; `file` only names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = serde_json::from_str(text).map_err(|e| ScenarioError::Json {
            file: file.to_owned(),
            line: e.line(),
            column: e.column(),
            // serde_json's text ends with " at line L column C": already in the fields.
            message: strip_location(&e.to_string()),
        })?;
        s.check().map_err(|(at, message)| ScenarioError::Invalid {
            file: file.to_owned(),
            at,
            message,
        })?;
        Ok(s)
    }

    /// Cross-field checks serde cannot do. Errors are (where, what).
    pub fn check(&self) -> Result<(), (String, String)> {
        let mut ids = BTreeSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            let at = |f: &str| format!("gateways[{i}].{f}");
            if !ids.insert(g.id.as_str()) {
                return Err((at("id"), format!("duplicate gateway id {:?}", g.id)));
            }
            if !(0.0..=1.0).contains(&g.trust) {
                return Err((at("trust"), format!("{} is out of range 0..=1", g.trust)));
            }
            if let Some(b) = g.battery.filter(|b| !(0.0..=1.0).contains(b)) {
                return Err((
                    at("battery"),
                    format!("{b} is out of range 0..=1 (or null for mains)"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.templates.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err((
                    format!("templates[{i}].name"),
                    format!("duplicate template {:?}", t.name),
                ));
            }
        }
        for (i, g) in self.gateways.iter().enumerate() {
            let mut used = Res::default();
            for (k, name) in g.running.iter().enumerate() {
                let at = format!("gateways[{i}].running[{k}]");
                let t = self.templates.iter().find(|t| &t.name == name);
                let Some(t) = t else {
                    return Err((at, format!("unknown template {name:?}")));
                };
                used = used.plus(&t.res());
                if !used.fits_in(&Res::new(g.cpus, g.mem_mb, g.disk_gb)) {
                    return Err((
                        at,
                        format!("{name:?} does not fit on {}: {used} needed", g.id),
                    ));
                }
            }
        }
        let mut clouds = BTreeSet::new();
        for (i, r) in self.remote.iter().enumerate() {
            if !clouds.insert(r.name.as_str()) {
                return Err((
                    format!("remote[{i}].name"),
                    format!("duplicate remote {:?}", r.name),
                ));
            }
            if !ids.contains(r.owner.as_str()) {
                return Err((
                    format!("remote[{i}].owner"),
                    format!("{:?} is not a gateway of the scenario", r.owner),
                ));
            }
        }
        let mut released = BTreeSet::new();
        for (i, q) in self.requests.iter().enumerate() {
            match q {
                ScRequest::Template { template } if !names.contains(template.as_str()) => {
                    return Err((
                        format!("requests[{i}].template"),
                        format!("unknown template {template:?}"),
                    ));
                }
                ScRequest::Template { .. } => {}
                ScRequest::Release { release } => {
                    let at = format!("requests[{i}].release");
                    if *release >= i {
                        return Err((at, format!("{release} is not an earlier request")));
                    }
                    if !matches!(self.requests[*release], ScRequest::Template { .. }) {
                        return Err((
                            at,
                            format!("request {release} is a release, not a VM request"),
                        ));
                    }
                    if !released.insert(*release) {
                        return Err((at, format!("request {release} is released twice")));
                    }
                }
            }
        }
        Ok(())
    }
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;

    const OK: &str = r#"{
  "gateways": [{"id": "a", "cpus": 2, "mem_mb": 2048, "disk_gb": 16, "virt": "kvm", "trust": 0.9, "battery": null, "powerful": true, "colour": "red"}],
  "templates": [{"name": "s", "vcpus": 1, "mem_mb": 256, "disk_gb": 4, "role": "storage"}],
  "remote": [{"name": "os", "provider": "openstack", "max_vms": 2, "reachable": true, "owner": "a"}],
  "requests": [{"template": "s"}, {"release": 0}]
}"#;

    #[test]
    fn parses_with_extra_fields() {
        let s = Scenario::parse("ok.json", OK).unwrap();
        assert_eq!(s.gateways[0].virt, Virt::Kvm);
        assert_eq!(s.requests[1], ScRequest::Release { release: 0 });
    }

    #[test]
    fn bad_json_has_line_and_column() {
        let e = Scenario::parse("bad.json", &OK.replace("\"kvm\"", "\"xen\"")).unwrap_err();
        match &e {
            ScenarioError::Json {
                line,
                column,
                message,
                ..
            } => {
                assert_eq!(*line, 2);
                assert!(*column > 60, "{e}");
                assert!(message.contains("kvm"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().starts_with("bad.json:2:"), "{e}");
        let e = Scenario::parse("t.json", "{\"gateways\": [").unwrap_err();
        assert!(matches!(e, ScenarioError::Json { line: 1, .. }), "{e}");
    }

    #[test]
    fn invalid_references_are_named() {
        let cases = [
            (
                OK.replace("{\"release\": 0}", "{\"release\": 1}"),
                "requests[1].release",
            ),
            (
                OK.replace("{\"template\": \"s\"}", "{\"template\": \"x\"}"),
                "requests[0].template",
            ),
            (
                OK.replace("\"owner\": \"a\"", "\"owner\": \"b\""),
                "remote[0].owner",
            ),
            (
                OK.replace("\"trust\": 0.9", "\"trust\": 1.9"),
                "gateways[0].trust",
            ),
            (
                OK.replace("\"colour\"", "\"running\": [\"s\", \"s\", \"s\"], \"c\""),
                "gateways[0].running[2]",
            ),
            (
                OK.replace("\"colour\"", "\"running\": [\"x\"], \"c\""),
                "gateways[0].running[0]",
            ),
            (
                OK.replace("\"battery\": null", "\"battery\": 2"),
                "gateways[0].battery",
            ),
            (
                OK.replace("{\"release\": 0}]", "{\"release\": 0}, {\"release\": 0}]"),
                "requests[2].release",
            ),
        ];
        for (text, want) in cases {
            match Scenario::parse("s.json", &text) {
                Err(ScenarioError::Invalid { at, .. }) => assert_eq!(at, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }
}
