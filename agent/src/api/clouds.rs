//! Remote clouds configured through the API, kept on the data partition:
//! `data_dir/api/clouds/<name>.toml` (its `[[clouds]]` entry) and `<name>.credentials.toml`
//! (the secrets), both 0600, written temp + fsync + rename. Read at start after `agent.toml`'s
//! `[[clouds]]`: a cloud of the same name configured here replaces that one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::cloud::config::CloudConfig;

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("api").join("clouds")
}

pub fn credentials_path(data_dir: &Path, name: &str) -> PathBuf {
    dir(data_dir).join(format!("{name}.credentials.toml"))
}

fn config_path(data_dir: &Path, name: &str) -> PathBuf {
    dir(data_dir).join(format!("{name}.toml"))
}

/// Writes 0600, atomically (a power cut leaves the old file or the new one).
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(d) = path.parent() {
        let _ = std::fs::File::open(d).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Stores cloud `name`: the credentials first (when given), then the entry that names them.
pub fn save(
    data_dir: &Path,
    name: &str,
    config_toml: &str,
    credentials_toml: Option<&str>,
) -> Result<(), String> {
    if let Some(c) = credentials_toml {
        write_private(&credentials_path(data_dir, name), c)?;
    } else if !credentials_path(data_dir, name).exists() {
        return Err("credentials: missing (none stored yet for this cloud)".into());
    }
    write_private(&config_path(data_dir, name), config_toml)
}

/// The clouds stored by the API (a file that does not parse is skipped with a warning).
pub fn load(data_dir: &Path) -> Vec<CloudConfig> {
    let Ok(rd) = std::fs::read_dir(dir(data_dir)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p.to_string_lossy().ends_with(".credentials.toml")
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let parsed = std::fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<CloudConfig>(&t).map_err(|e| e.message().to_owned()));
        match parsed {
            Ok(c) => out.push(c),
            Err(e) => warn!(file = %p.display(), "cloud configured through the API skipped: {e}"),
        }
    }
    out
}

/// `agent.toml`'s clouds with the API's: same name, the API's wins; new names are appended.
pub fn merge(mut configured: Vec<CloudConfig>, stored: Vec<CloudConfig>) -> Vec<CloudConfig> {
    for c in stored {
        match configured.iter_mut().find(|x| x.name == c.name) {
            Some(slot) => *slot = c,
            None => configured.push(c),
        }
    }
    configured
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cloud(name: &str, limit: u32) -> String {
        format!(
            "name = \"{name}\"\nprovider = \"openstack\"\nendpoint = \"http://x/v3\"\nvm_limit = {limit}\n"
        )
    }

    #[test]
    fn saved_clouds_are_private_and_read_back_over_the_configured_ones() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            save(d.path(), "a", &cloud("a", 1), None).is_err(),
            "no credentials yet"
        );
        save(d.path(), "a", &cloud("a", 3), Some("auth = \"password\"\n")).unwrap();
        save(d.path(), "b", &cloud("b", 2), Some("x")).unwrap();
        save(d.path(), "b", &cloud("b", 4), None).unwrap();
        for f in ["a.toml", "a.credentials.toml", "b.toml"] {
            let m = std::fs::metadata(dir(d.path()).join(f)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{f}");
        }
        let stored = load(d.path());
        assert_eq!(stored.len(), 2);
        let configured: Vec<CloudConfig> = vec![
            toml::from_str(&cloud("a", 1)).unwrap(),
            toml::from_str(&cloud("z", 1)).unwrap(),
        ];
        let all = merge(configured, stored);
        let got: Vec<(String, u32)> = all
            .iter()
            .map(|c| (c.name.to_string(), c.vm_limit))
            .collect();
        assert_eq!(got, [("a".into(), 3), ("z".into(), 1), ("b".into(), 4)]);
    }
}
