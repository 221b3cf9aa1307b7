//! Logical-gateway identities (paper §V: a VM running the gateway software joins another instance
//! as its own member). The pool is a directory (config `logical_dir`) with one subdirectory per
//! identity, as an administrator provisions it:
//!
//! ```text
//! <logical_dir>/<identity>/agent.toml     the guest agent's config ([instance] keys = "/etc/betaas/instance")
//! <logical_dir>/<identity>/instance.pub   from `betaas-agent instance admit` for the other instance
//! <logical_dir>/<identity>/gateway.key    (mode 0600 or stricter: a key readable by others is refused)
//! <logical_dir>/<identity>/credential
//! ```
//!
//! Each new VM of a `role = "gateway"` template gets one identity no other VM of this daemon holds;
//! the VM's state directory remembers it (file `identity`), so a daemon restart, a stop and a resume
//! keep it, and undefining the VM (its directory goes) frees it. The identity reaches the guest as a
//! seed disk: a tar archive (`agent.toml`, `instance/{instance.pub,gateway.key,credential}`, the key
//! 0600) written raw to `<state_dir>/<vm>/seed.tar` (0600) and attached read-only as `vdb`.
//!
//! Pure: [`pick`] (which identity) and [`seed_entries`] (what the archive holds). I/O: [`pool`],
//! [`load`], [`write_seed`], [`held_by`], [`record`]. Errors name the file, never a secret's content.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The per-VM file naming the identity the VM holds.
pub const HELD: &str = "identity";
/// The per-VM seed disk.
pub const SEED: &str = "seed.tar";
/// Where the guest agent finds its instance keys (the seed's `instance/`, unpacked in /etc/betaas).
pub const GUEST_KEYS: &str = "/etc/betaas/instance";

const CONFIG: &str = "agent.toml";
/// The files of an identity besides `agent.toml`, and whether each is secret (mode 0600 required).
const KEY_FILES: [(&str, bool); 3] = [
    ("instance.pub", false),
    ("gateway.key", true),
    ("credential", false),
];
/// Larger than any real key, credential or config: a sign of a wrong file.
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no logical-gateway identity pool: {dir} {why} (config `logical_dir`; one subdirectory per identity)")]
    NoPool { dir: PathBuf, why: String },
    #[error("no free logical-gateway identity in {dir}: {detail}")]
    Exhausted { dir: PathBuf, detail: String },
    #[error("logical-gateway identity {file}: {what}")]
    Bad { file: PathBuf, what: String },
    #[error("{file}: {what}")]
    Io { file: PathBuf, what: String },
}

/// One identity, read and checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subdirectory's name.
    pub name: String,
    /// `gateway_id` from its agent.toml.
    pub gateway_id: String,
    /// `(name in the identity dir, content, secret)`.
    files: Vec<(String, Vec<u8>, bool)>,
}

impl std::fmt::Debug for Identity {
    // Never prints the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("gateway_id", &self.gateway_id)
            .field("files", &self.files.len())
            .finish()
    }
}

/// The first identity of `pool` (sorted by name) that no VM in `held` (VM → identity) holds.
pub fn pick<'a>(pool: &'a [String], held: &BTreeMap<String, String>) -> Option<&'a str> {
    let mut sorted: Vec<&String> = pool.iter().collect();
    sorted.sort();
    sorted
        .into_iter()
        .find(|id| !held.values().any(|h| h == *id))
        .map(String::as_str)
}

/// Why there is no free identity, for the error: how many, and who holds them.
pub fn exhausted_detail(pool: &[String], held: &BTreeMap<String, String>) -> String {
    if pool.is_empty() {
        return "the directory holds no identity (provision one: `betaas-agent instance admit` for the other instance, its files and an agent.toml in a subdirectory)".into();
    }
    let holders: Vec<String> = held
        .iter()
        .filter(|(_, id)| pool.contains(id))
        .map(|(vm, id)| format!("{id} by VM {vm}"))
        .collect();
    format!(
        "all {} held ({})",
        pool.len(),
        if holders.is_empty() {
            "none recorded".into()
        } else {
            holders.join(", ")
        }
    )
}

/// What the seed archive holds: `(path in the archive, mode, content)`, directories with no content.
pub fn seed_entries(id: &Identity) -> Vec<(String, u32, Option<&[u8]>)> {
    let mut v = Vec::with_capacity(id.files.len() + 1);
    for (name, content, secret) in &id.files {
        if name == CONFIG {
            v.push((CONFIG.to_owned(), 0o644, Some(content.as_slice())));
            v.push(("instance/".to_owned(), 0o755, None));
        } else {
            let mode = if *secret { 0o600 } else { 0o644 };
            v.push((format!("instance/{name}"), mode, Some(content.as_slice())));
        }
    }
    v
}

/// The identities in `dir`: its subdirectories' names (hidden ones skipped), sorted.
pub fn pool(dir: &Path) -> Result<Vec<String>, IdentityError> {
    let rd = std::fs::read_dir(dir).map_err(|e| IdentityError::NoPool {
        dir: dir.to_owned(),
        why: match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".into(),
            _ => format!("cannot be read: {e}"),
        },
    })?;
    let mut v: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    Ok(v)
}

fn read_checked(file: &Path, secret: bool) -> Result<Vec<u8>, IdentityError> {
    let bad = |what: String| IdentityError::Bad {
        file: file.to_owned(),
        what,
    };
    let meta = std::fs::metadata(file).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => "missing".into(),
            _ => format!("cannot be read: {e}"),
        })
    })?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("empty".into()));
    }
    if meta.len() > MAX_FILE {
        return Err(bad(format!(
            "{} bytes: larger than any identity file ({MAX_FILE} at most)",
            meta.len()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {mode:04o}: a secret key readable by group or others is refused (chmod 600)"
        )));
    }
    std::fs::read(file).map_err(|e| bad(format!("cannot be read: {e}")))
}

/// Checks the guest's agent.toml: `gateway_id` and `[instance] keys` where the seed puts them.
/// Errors carry the line and the parser's message, never the file's text.
fn check_config(file: &Path, text: &[u8]) -> Result<String, IdentityError> {
    let bad = |what: String| IdentityError::Bad {
        file: file.to_owned(),
        what,
    };
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text".into()))?;
    let v: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].matches('\n').count() + 1
        });
        bad(format!("line {line}: {}", e.message().trim()))
    })?;
    let gw = v
        .get("gateway_id")
        .and_then(|g| g.as_str())
        .ok_or_else(|| bad("no `gateway_id = \"…\"`".into()))?;
    let keys = v
        .get("instance")
        .and_then(|i| i.get("keys"))
        .and_then(|k| k.as_str());
    if keys != Some(GUEST_KEYS) {
        return Err(bad(format!(
            "`[instance] keys` must be \"{GUEST_KEYS}\" (where the guest unpacks the seed's keys), got {}",
            keys.map_or("nothing".into(), |k| format!("{k:?}"))
        )));
    }
    Ok(gw.to_owned())
}

/// Reads and checks identity `name` of the pool in `dir`.
pub fn load(dir: &Path, name: &str) -> Result<Identity, IdentityError> {
    let base = dir.join(name);
    let cfg_file = base.join(CONFIG);
    let cfg = read_checked(&cfg_file, false)?;
    let gateway_id = check_config(&cfg_file, &cfg)?;
    let mut files = vec![(CONFIG.to_owned(), cfg, false)];
    for (f, secret) in KEY_FILES {
        files.push((f.to_owned(), read_checked(&base.join(f), secret)?, secret));
    }
    Ok(Identity {
        name: name.to_owned(),
        gateway_id,
        files,
    })
}

/// Writes the seed archive to `path`, created with mode 0600 (never readable by others, even for
/// a moment), synced.
pub fn write_seed(path: &Path, id: &Identity) -> Result<(), IdentityError> {
    let io = |e: std::io::Error| IdentityError::Io {
        file: path.to_owned(),
        what: e.to_string(),
    };
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, content) in seed_entries(id) {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match content {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &name, std::io::empty()).map_err(io)?;
            }
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, &name, c).map_err(io)?;
            }
        }
    }
    let bytes = b.into_inner().map_err(io)?;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// The identity VM state directory `vm_dir` records, if any.
pub fn held_by(vm_dir: &Path) -> Option<String> {
    std::fs::read_to_string(vm_dir.join(HELD))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Records that the VM of `vm_dir` holds `identity`.
pub fn record(vm_dir: &Path, identity: &str) -> Result<(), IdentityError> {
    let file = vm_dir.join(HELD);
    std::fs::write(&file, format!("{identity}\n")).map_err(|e| IdentityError::Io {
        file,
        what: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn held(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(v, i)| ((*v).to_owned(), (*i).to_owned()))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pick_takes_the_first_free_identity_by_name() {
        let pool = names(&["lgw-2", "lgw-1", "lgw-3"]);
        assert_eq!(pick(&pool, &held(&[])), Some("lgw-1"));
        assert_eq!(pick(&pool, &held(&[("vm-a", "lgw-1")])), Some("lgw-2"));
        assert_eq!(
            pick(&pool, &held(&[("vm-a", "lgw-1"), ("vm-b", "lgw-3")])),
            Some("lgw-2")
        );
        // Held by VMs whatever their names; an identity no longer in the pool frees nothing.
        assert_eq!(
            pick(
                &pool,
                &held(&[("x", "lgw-1"), ("y", "lgw-2"), ("z", "lgw-3"), ("w", "old")])
            ),
            None
        );
        assert_eq!(pick(&[], &held(&[])), None);
    }

    #[test]
    fn pick_is_exhaustively_consistent_for_small_pools() {
        // Every subset of a 4-identity pool held: the pick is free, the smallest free, or none
        // exactly when all are held.
        let pool = names(&["a", "b", "c", "d"]);
        for mask in 0u8..16 {
            let h: BTreeMap<String, String> = (0..4)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| (format!("vm{i}"), pool[i].clone()))
                .collect();
            let free: Vec<&String> = pool
                .iter()
                .filter(|p| !h.values().any(|v| v == *p))
                .collect();
            assert_eq!(
                pick(&pool, &h),
                free.first().map(|s| s.as_str()),
                "{mask:04b}"
            );
        }
    }

    #[test]
    fn exhaustion_names_the_holders() {
        let pool = names(&["lgw-1"]);
        let d = exhausted_detail(&pool, &held(&[("betaas-lgw-1", "lgw-1")]));
        assert_eq!(d, "all 1 held (lgw-1 by VM betaas-lgw-1)");
        assert!(exhausted_detail(&[], &held(&[])).contains("holds no identity"));
    }

    fn provision(dir: &Path, name: &str, config: &str) -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("agent.toml"), config).unwrap();
        std::fs::write(d.join("instance.pub"), b"PUBLIC").unwrap();
        std::fs::write(d.join("credential"), b"CREDENTIAL").unwrap();
        let key = d.join("gateway.key");
        std::fs::write(&key, b"TOP-SECRET-KEY-BYTES").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        d
    }

    const GOOD: &str =
        "gateway_id = \"lgw-1\"\n[mqtt]\nhost = \"10.0.2.2\"\n[instance]\nname = \"b\"\nkeys = \"/etc/betaas/instance\"\n";

    #[test]
    fn pool_lists_subdirectories_sorted_and_names_a_missing_dir() {
        let t = tempfile::tempdir().unwrap();
        provision(t.path(), "lgw-2", GOOD);
        provision(t.path(), "lgw-1", GOOD);
        std::fs::create_dir(t.path().join(".hidden")).unwrap();
        std::fs::write(t.path().join("README"), "not an identity").unwrap();
        assert_eq!(pool(t.path()).unwrap(), names(&["lgw-1", "lgw-2"]));
        let missing = t.path().join("nope");
        let e = pool(&missing).unwrap_err();
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn load_checks_every_file_and_names_it_without_its_content() {
        let t = tempfile::tempdir().unwrap();
        let d = provision(t.path(), "lgw-1", GOOD);
        let id = load(t.path(), "lgw-1").unwrap();
        assert_eq!(
            (id.name.as_str(), id.gateway_id.as_str()),
            ("lgw-1", "lgw-1")
        );
        assert!(!format!("{id:?}").contains("SECRET"));

        let key = d.join("gateway.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(t.path(), "lgw-1").unwrap_err().to_string();
        assert!(
            e.contains(&key.display().to_string()) && e.contains("0640"),
            "{e}"
        );
        assert!(!e.contains("SECRET"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        load(t.path(), "lgw-1").unwrap();

        std::fs::remove_file(d.join("credential")).unwrap();
        let e = load(t.path(), "lgw-1").unwrap_err();
        assert_eq!(
            e,
            IdentityError::Bad {
                file: d.join("credential"),
                what: "missing".into()
            }
        );
        std::fs::write(d.join("credential"), b"").unwrap();
        assert!(load(t.path(), "lgw-1")
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn a_bad_agent_toml_is_named_with_its_line_never_its_text() {
        let t = tempfile::tempdir().unwrap();
        let d = provision(
            t.path(),
            "x",
            "gateway_id = \"lgw-1\"\npassword = SECRET-IN-CONFIG\n",
        );
        let e = load(t.path(), "x").unwrap_err().to_string();
        assert!(
            e.contains(&d.join("agent.toml").display().to_string()),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        provision(
            t.path(),
            "y",
            "[instance]\nkeys = \"/etc/betaas/instance\"\n",
        );
        assert!(load(t.path(), "y")
            .unwrap_err()
            .to_string()
            .contains("gateway_id"));
        provision(
            t.path(),
            "z",
            "gateway_id = \"g\"\n[instance]\nkeys = \"/keys\"\n",
        );
        let e = load(t.path(), "z").unwrap_err().to_string();
        assert!(
            e.contains("/etc/betaas/instance") && e.contains("\"/keys\""),
            "{e}"
        );
    }

    #[test]
    fn the_seed_is_a_0600_tar_with_the_key_0600_inside() {
        let t = tempfile::tempdir().unwrap();
        provision(t.path(), "lgw-1", GOOD);
        let id = load(t.path(), "lgw-1").unwrap();
        let seed = t.path().join("seed.tar");
        write_seed(&seed, &id).unwrap();
        let meta = std::fs::metadata(&seed).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len() % 512, 0, "a disk is whole sectors");
        let mut a = tar::Archive::new(std::fs::File::open(&seed).unwrap());
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            seen.push((path, mode, String::from_utf8(body).unwrap()));
        }
        assert_eq!(
            seen,
            [
                ("agent.toml".into(), 0o644, GOOD.into()),
                ("instance/".into(), 0o755, String::new()),
                ("instance/instance.pub".into(), 0o644, "PUBLIC".into()),
                (
                    "instance/gateway.key".into(),
                    0o600,
                    "TOP-SECRET-KEY-BYTES".into()
                ),
                ("instance/credential".into(), 0o644, "CREDENTIAL".into()),
            ]
        );
        // Rewritten (a VM re-created under the same name): still 0600, replaced.
        write_seed(&seed, &id).unwrap();
        assert_eq!(
            std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn the_held_identity_survives_in_the_vm_directory() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(held_by(t.path()), None);
        record(t.path(), "lgw-1").unwrap();
        assert_eq!(held_by(t.path()).as_deref(), Some("lgw-1"));
    }
}
