//! The credentials file of a remote cloud (TOML, default under `/etc/betaas/credentials/`).
//!
//! It must be a regular file owned by the agent's user with no group or other permission bits
//! (0600 or stricter): anything else is refused before it is read. Parse errors name the file, the
//! line and the key, never a value (toml's own messages quote the line, which may hold the secret).
//!
//! ```toml
//! # OpenStack, password:
//! auth = "password"
//! username = "betaas"
//! password = "..."
//! user_domain = "Default"       # default
//! project = "iot"
//! project_domain = "Default"    # default
//! # OpenStack, application credential:
//! auth = "application_credential"
//! id = "..."
//! secret = "..."
//! # OpenNebula (session string user:password):
//! auth = "password"
//! username = "oneadmin"
//! password = "..."
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "auth", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    Password {
        username: String,
        password: Secret,
        #[serde(default = "default_domain")]
        user_domain: String,
        project: Option<String>,
        #[serde(default = "default_domain")]
        project_domain: String,
    },
    ApplicationCredential {
        id: String,
        secret: Secret,
    },
}

fn default_domain() -> String {
    "Default".into()
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: mode {mode:o} lets group or others read it: chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: owned by uid {owner}, the agent runs as uid {me}: chown it")]
    Owner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}:{line}: {problem}")]
    Parse {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

impl Credentials {
    /// Checks the file's type, mode and owner, then parses it.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let meta = std::fs::metadata(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(CredentialsError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(CredentialsError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(CredentialsError::Owner {
                path: path.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Credentials::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Credentials, CredentialsError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            let msg = e.message();
            // "missing field", "unknown variant `x`" name keys and the auth kind; messages about
            // a value's type or content may quote the value: say only which key.
            let problem = if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
                let key = text
                    .lines()
                    .nth(line.saturating_sub(1))
                    .and_then(|l| l.split_once('='))
                    .map(|(k, _)| k.trim().to_owned())
                    .unwrap_or_default();
                format!("key `{key}`: wrong type or value")
            } else if msg.contains("expected") || msg.starts_with("missing field") {
                msg.trim().to_owned()
            } else {
                "not valid TOML here".to_owned()
            };
            CredentialsError::Parse {
                path: path.to_owned(),
                line,
                problem,
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const PW: &str =
        "auth = \"password\"\nusername = \"u\"\npassword = \"hunter2-secret\"\nproject = \"p\"\n";

    #[test]
    fn password_and_application_credential_parse() {
        let c = Credentials::parse(Path::new("c.toml"), PW).unwrap();
        match &c {
            Credentials::Password {
                username,
                password,
                user_domain,
                project,
                ..
            } => {
                assert_eq!(
                    (username.as_str(), password.expose()),
                    ("u", "hunter2-secret")
                );
                assert_eq!(
                    (user_domain.as_str(), project.as_deref()),
                    ("Default", Some("p"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = Credentials::parse(
            Path::new("c.toml"),
            "auth = \"application_credential\"\nid = \"abc\"\nsecret = \"s3cr3t\"\n",
        )
        .unwrap();
        assert!(matches!(c, Credentials::ApplicationCredential { ref id, .. } if id == "abc"));
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn parse_errors_name_line_and_key_never_the_value() {
        let bad = PW.replace("\"hunter2-secret\"", "[\"hunter2-secret\"]");
        let e = Credentials::parse(Path::new("/etc/c.toml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.starts_with("/etc/c.toml:"), "{e}");
        let e = Credentials::parse(
            Path::new("c.toml"),
            "auth = \"password\"\nusername = \"u\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing field `password`"), "{e}");
        // A misspelt key is named rather than silently ignored.
        let e = Credentials::parse(
            Path::new("c.toml"),
            &format!("{PW}user_domain_name = \"d\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `user_domain_name`"), "{e}");
        let e = Credentials::parse(Path::new("c.toml"), "auth = \"token\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("application_credential"), "{e}");
        let e = Credentials::parse(Path::new("c.toml"), "password = \"hunter2-secret\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn loose_mode_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, PW).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Credentials::load(&p).unwrap_err();
            assert!(
                matches!(e, CredentialsError::Mode { mode: m, .. } if m == mode),
                "{e}"
            );
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            Credentials::load(&p).unwrap();
        }
        assert!(matches!(
            Credentials::load(dir.path()),
            Err(CredentialsError::NotAFile { .. })
        ));
    }

    #[test]
    fn file_of_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, PW).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Only root can give a file away; as another user this case cannot be built.
        if std::os::unix::fs::chown(&p, Some(65534), None).is_err() {
            return;
        }
        let e = Credentials::load(&p).unwrap_err();
        assert!(
            matches!(e, CredentialsError::Owner { owner: 65534, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chown it"), "{e}");
    }
}
