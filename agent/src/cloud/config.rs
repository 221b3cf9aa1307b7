//! `[[clouds]]` in the agent's config: the remote clouds this gateway holds credentials for, in
//! the order they are tried. The credentials themselves are in a separate file (see
//! [`super::credentials`]); only its path is here, so the config may be world-readable.
//!
//! ```toml
//! [[clouds]]
//! name = "campus"
//! provider = "openstack"              # or "opennebula"
//! endpoint = "https://keystone.example:5000/v3"   # OpenNebula: "http://one.example:2633/RPC2"
//! vm_limit = 4
//! cost_per_vm = 0.05                  # optional, default 0
//! cost_limit = 0.15                   # optional: total for this gateway's VMs on it
//! idle_destroy_secs = 3600            # a stopped VM idle this long is destroyed
//! deploy_timeout_secs = 300           # a VM not ACTIVE after this long is given up (and deleted)
//! poll_interval_ms = 3000             # how often its status is asked meanwhile
//! credentials = "/etc/betaas/credentials/campus.toml"   # default: /etc/betaas/credentials/<name>.toml
//! images = { compute-node = "7f1b...", storage-node = "a3c4..." }   # template → image / template id
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use betaas_core::allocator::Provider;
use serde::Deserialize;

use crate::config::ids::TopicLevel;

pub const CREDENTIALS_DIR: &str = "/etc/betaas/credentials";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    pub name: TopicLevel,
    pub provider: Provider,
    /// OpenStack: the Identity v3 URL; OpenNebula: the XML-RPC URL.
    pub endpoint: String,
    pub vm_limit: u32,
    #[serde(default)]
    pub cost_per_vm: f64,
    pub cost_limit: Option<f64>,
    #[serde(default = "default_idle_destroy")]
    pub idle_destroy_secs: u64,
    #[serde(default = "default_deploy_timeout")]
    pub deploy_timeout_secs: u64,
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    /// Default `/etc/betaas/credentials/<name>.toml`.
    pub credentials: Option<PathBuf>,
    /// OpenStack: catalog interface (default `public`) and region of the compute endpoint.
    pub interface: Option<String>,
    pub region: Option<String>,
    /// Template name → OpenStack image id / OpenNebula template id.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

fn default_idle_destroy() -> u64 {
    3600
}

fn default_deploy_timeout() -> u64 {
    300
}

fn default_poll_interval() -> u64 {
    3000
}

impl CloudConfig {
    /// The default timeouts with this cloud's deployment bounds.
    pub fn timeouts(&self) -> super::Timeouts {
        super::Timeouts {
            poll: std::time::Duration::from_secs(self.deploy_timeout_secs),
            poll_interval: std::time::Duration::from_millis(self.poll_interval_ms),
            ..super::Timeouts::default()
        }
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.credentials
            .clone()
            .unwrap_or_else(|| PathBuf::from(CREDENTIALS_DIR).join(format!("{}.toml", self.name)))
    }
}

/// The first rule a `[[clouds]]` entry breaks: (index, key, message).
pub fn problem(clouds: &[CloudConfig]) -> Option<(usize, &'static str, String)> {
    let mut names = std::collections::HashSet::new();
    for (i, c) in clouds.iter().enumerate() {
        if !names.insert(c.name.to_string()) {
            return Some((
                i,
                "name",
                format!("duplicate cloud name {:?}", c.name.to_string()),
            ));
        }
        let e = c.endpoint.as_str();
        let rest = e
            .strip_prefix("https://")
            .or_else(|| e.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Some((
                i,
                "endpoint",
                format!("{e:?} is not an http:// or https:// URL"),
            ));
        }
        if e.contains('@') {
            // user:password@host would put a secret in the config and in error messages.
            return Some((
                i,
                "endpoint",
                "no credentials in the URL: they go in the credentials file".into(),
            ));
        }
        if !(c.cost_per_vm.is_finite() && c.cost_per_vm >= 0.0) {
            return Some((i, "cost_per_vm", "must be a finite number >= 0".into()));
        }
        if c.cost_limit.is_some_and(|l| !(l.is_finite() && l >= 0.0)) {
            return Some((i, "cost_limit", "must be a finite number >= 0".into()));
        }
        if c.poll_interval_ms == 0 || c.poll_interval_ms > c.deploy_timeout_secs * 1000 {
            return Some((
                i,
                "poll_interval_ms",
                "must be at least 1 and within deploy_timeout_secs".into(),
            ));
        }
        if c.idle_destroy_secs == 0 {
            return Some((
                i,
                "idle_destroy_secs",
                "must be at least 1 (stopped VMs are kept this long)".into(),
            ));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = "gateway_id = \"gw-1\"\n[mqtt]\nhost = \"h\"\n";
    const CLOUD: &str = "\n[[clouds]]\nname = \"campus\"\nprovider = \"openstack\"\nendpoint = \"https://keystone:5000/v3\"\nvm_limit = 2\n";

    fn parse(extra: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(
            Path::new("/etc/betaas/agent.toml"),
            &format!("{BASE}{extra}"),
        )
    }

    #[test]
    fn clouds_parse_with_defaults() {
        let c = parse(&format!("{CLOUD}images = {{ compute-node = \"img-1\" }}\n")).unwrap();
        assert_eq!(c.clouds.len(), 1);
        let cl = &c.clouds[0];
        assert_eq!(cl.idle_destroy_secs, 3600);
        assert_eq!(cl.timeouts().poll, std::time::Duration::from_secs(300));
        assert_eq!(
            cl.timeouts().poll_interval,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(cl.cost_limit, None);
        assert_eq!(
            cl.credentials_path(),
            Path::new("/etc/betaas/credentials/campus.toml")
        );
        assert_eq!(cl.images["compute-node"], "img-1");
        assert!(parse("").unwrap().clouds.is_empty());
    }

    #[test]
    fn cloud_errors_name_file_line_and_field() {
        let e = parse(&CLOUD.replace("openstack", "aws")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (7, "clouds[0].provider"));
        assert!(e.message.contains("opennebula"), "{}", e.message);
        let e = parse(&CLOUD.replace("https://keystone:5000/v3", "keystone:5000")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (8, "clouds[0].endpoint"));
        let e = parse(&CLOUD.replace("https://", "https://u:pw@")).unwrap_err();
        assert!(e.message.contains("credentials file"), "{e}");
        assert!(!e.to_string().contains("u:pw"), "{e}");
        let e = parse(&format!("{CLOUD}{CLOUD}")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (12, "clouds[1].name"));
        let e = parse(&format!("{CLOUD}cost_limit = -1.0\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (10, "clouds[0].cost_limit"));
        let e = parse(&CLOUD.replace("vm_limit = 2\n", "")).unwrap_err();
        assert!(e.message.contains("vm_limit"), "{e}");
        let e = parse(&format!("{CLOUD}poll_interval_ms = 0\n")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (10, "clouds[0].poll_interval_ms")
        );
        let e = parse(&format!("{CLOUD}password = \"x\"\n")).unwrap_err();
        assert_eq!(e.field, "clouds[0].password");
    }
}
