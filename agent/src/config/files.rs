//! The files a valid config names, opened and checked (`betaas-agent check-config`): instance keys,
//! TLS PEM files, the broker password, remote cloud credentials. Each problem names the config's
//! file, the line and field that name the file, and the file itself with what is wrong; the
//! checks are the ones the agent applies when it uses the file (the same functions where they
//! exist), so a config that passes here does not fail on them at start.
//!
//! Not checked: things' devices (a missing device is reported `offline` and retried, by design),
//! `data_dir` (created at start), `vmd_socket` (the daemon may start later).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{key_line, Config, ConfigError};

/// Reads a one-line password file: a regular file that group and others cannot read (0600 or
/// stricter, the rule of the TLS key), one non-empty line; a trailing newline is not part of it.
/// Errors name the file, never the content.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    private_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&text);
    if line.is_empty() {
        return Err(format!(
            "{}: empty: the password is its one line",
            path.display()
        ));
    }
    if line.contains(['\n', '\r']) {
        return Err(format!(
            "{}: more than one line: the password is its one line",
            path.display()
        ));
    }
    Ok(line.to_owned())
}

/// A regular file with no group or other permission bits.
/// A file holding a secret: a regular file that neither group nor others may read.
pub fn private_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: readable by others (mode {mode:o}): chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

fn pem(path: &Path, want: Pem) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = 0;
    let mut keys = 0;
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item.map_err(|e| format!("{}: not valid PEM: {e}", path.display()))? {
            rustls_pemfile::Item::X509Certificate(_) => certs += 1,
            rustls_pemfile::Item::Pkcs1Key(_)
            | rustls_pemfile::Item::Pkcs8Key(_)
            | rustls_pemfile::Item::Sec1Key(_) => keys += 1,
            _ => {}
        }
    }
    match want {
        Pem::Certificates if certs == 0 => Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )),
        Pem::PrivateKey if keys == 0 => Err(format!(
            "{}: no PEM private key (PKCS#1, PKCS#8 or SEC1) in it",
            path.display()
        )),
        _ => Ok(()),
    }
}

impl Config {
    /// Opens and checks every file this config names; every problem found (empty: all good).
    /// `path` is the config file, re-read only to name lines.
    pub fn check_files(&self, path: &Path) -> Vec<ConfigError> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut problems = Vec::new();
        let mut check = |table: &str, n: usize, key: &str, field: String, r: Result<(), String>| {
            if let Err(message) = r {
                problems.push(ConfigError {
                    file: path.to_owned(),
                    line: key_line(&text, table, n, key),
                    field,
                    message,
                });
            }
        };
        if let Some(file) = &self.mqtt.password_file {
            check(
                "mqtt",
                0,
                "password_file",
                "mqtt.password_file".into(),
                read_password_file(file).map(drop),
            );
        }
        if let Some(tls) = &self.mqtt.tls {
            check(
                "mqtt.tls",
                0,
                "ca",
                "mqtt.tls.ca".into(),
                pem(&tls.ca, Pem::Certificates),
            );
            if let Some(cert) = &tls.cert {
                check(
                    "mqtt.tls",
                    0,
                    "cert",
                    "mqtt.tls.cert".into(),
                    pem(cert, Pem::Certificates),
                );
            }
            if let Some(key) = &tls.key {
                let r = private_file(key).and_then(|()| pem(key, Pem::PrivateKey));
                check("mqtt.tls", 0, "key", "mqtt.tls.key".into(), r);
            }
        }
        if let Some(inst) = &self.instance {
            let r = crate::instance::Keys::load(&inst.keys).and_then(|keys| {
                let gw = self.gateway_id.to_string();
                if keys.credential.gateway == gw {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: the credential is for gateway {:?}, this is {gw:?}",
                        inst.keys.join(crate::instance::CREDENTIAL).display(),
                        keys.credential.gateway
                    ))
                }
            });
            check("instance", 0, "keys", "instance.keys".into(), r);
        }
        if let Some(api) = &self.api {
            // A token file that is not there yet is made at first start.
            if let Some(file) = api.token_file.as_ref().filter(|f| f.exists()) {
                let r = crate::api::auth::load_or_make(file).map(drop);
                check("api", 0, "token_file", "api.token_file".into(), r);
            }
            if let (Some(cert), Some(key)) = (&api.cert, &api.key) {
                check(
                    "api",
                    0,
                    "cert",
                    "api.cert".into(),
                    pem(cert, Pem::Certificates),
                );
                let r = private_file(key).and_then(|()| pem(key, Pem::PrivateKey));
                check("api", 0, "key", "api.key".into(), r);
            }
        }
        for (i, cloud) in self.clouds.iter().enumerate() {
            let r = crate::cloud::Credentials::load(&cloud.credentials_path())
                .map(drop)
                .map_err(|e| e.to_string());
            check(
                "clouds",
                i,
                "credentials",
                format!("clouds[{i}].credentials"),
                r,
            );
        }
        problems
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn password_file_is_one_private_line() {
        let d = tempfile::tempdir().unwrap();
        let pw = format!("pw-{}", fastrand::u64(..));
        for text in [pw.clone(), format!("{pw}\n"), format!("{pw}\r\n")] {
            let p = write(d.path(), "pw", &text, 0o600);
            assert_eq!(read_password_file(&p).unwrap(), pw);
        }
        let p = write(d.path(), "pw", &format!("{pw}\n"), 0o640);
        let e = read_password_file(&p).unwrap_err();
        assert!(e.contains("pw: readable by others (mode 640)"), "{e}");
        for (text, what) in [
            ("", "empty"),
            ("\n", "empty"),
            ("a\nb\n", "more than one line"),
        ] {
            let p = write(d.path(), "pw", text, 0o400);
            let e = read_password_file(&p).unwrap_err();
            assert!(e.contains(what) && !e.contains('\n'), "{text:?}: {e}");
        }
        let e = read_password_file(&d.path().join("missing")).unwrap_err();
        assert!(e.contains("missing: No such file"), "{e}");
        let e = read_password_file(d.path()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        // The password itself never appears in an error.
        let p = write(d.path(), "pw", &format!("{pw}\n{pw}\n"), 0o644);
        assert!(!read_password_file(&p).unwrap_err().contains(&pw));
    }

    #[test]
    fn pem_files_must_hold_what_they_are_for() {
        let d = tempfile::tempdir().unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        let key = "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n";
        let c = write(d.path(), "c.pem", cert, 0o644);
        let k = write(d.path(), "k.pem", key, 0o600);
        pem(&c, Pem::Certificates).unwrap();
        pem(&k, Pem::PrivateKey).unwrap();
        let e = pem(&k, Pem::Certificates).unwrap_err();
        assert!(e.contains("k.pem: no PEM certificate"), "{e}");
        let e = pem(&c, Pem::PrivateKey).unwrap_err();
        assert!(e.contains("c.pem: no PEM private key"), "{e}");
        let junk = write(d.path(), "j.pem", "not pem at all\n", 0o644);
        assert!(pem(&junk, Pem::Certificates).is_err());
        let bad = write(d.path(), "b.pem", &cert.replace("MAMCAQA=", "!!!!"), 0o644);
        let e = pem(&bad, Pem::Certificates).unwrap_err();
        assert!(e.contains("b.pem: not valid PEM"), "{e}");
    }

    #[test]
    fn check_files_names_every_problem_with_its_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display();
        let text = format!(
            "gateway_id = \"g\"\n[mqtt]\nhost = \"h\"\nusername = \"g\"\npassword_file = \"{dir}/pw\"\n\
             [mqtt.tls]\nca = \"{dir}/ca.pem\"\n\
             [[clouds]]\nname = \"c\"\nprovider = \"openstack\"\nendpoint = \"https://k/v3\"\nvm_limit = 1\n\
             credentials = \"{dir}/c.toml\"\n"
        );
        let cfg_path = write(d.path(), "agent.toml", &text, 0o644);
        let cfg = Config::load(&cfg_path).unwrap();
        let problems = cfg.check_files(&cfg_path);
        let got: Vec<(usize, &str)> = problems
            .iter()
            .map(|e| (e.line, e.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (5, "mqtt.password_file"),
                (7, "mqtt.tls.ca"),
                (13, "clouds[0].credentials")
            ],
            "{problems:?}"
        );
        assert!(
            problems[1].to_string().starts_with(&format!(
                "{}:7: field `mqtt.tls.ca`: {dir}/ca.pem: No such file",
                cfg_path.display()
            )),
            "{}",
            problems[1]
        );
        write(d.path(), "pw", "secret\n", 0o600);
        write(
            d.path(),
            "ca.pem",
            "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
            0o644,
        );
        write(
            d.path(),
            "c.toml",
            "auth = \"application_credential\"\nid = \"i\"\nsecret = \"s\"\n",
            0o600,
        );
        assert_eq!(cfg.check_files(&cfg_path), []);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod api_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn check_config_names_the_api_files() {
        let d = tempfile::tempdir().unwrap();
        let tok = d.path().join("api.token");
        let cfg_path = d.path().join("agent.toml");
        let text = format!(
            "gateway_id = \"g\"\n[mqtt]\nhost = \"h\"\n[api]\nlisten = \"127.0.0.1:1\"\n\
             token_file = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            tok.display(),
            d.path().join("c.pem").display(),
            d.path().join("k.pem").display(),
        );
        std::fs::write(&cfg_path, &text).unwrap();
        let config = Config::parse(&cfg_path, &text).unwrap();
        let fields = |c: &Config| -> Vec<(String, usize)> {
            c.check_files(&cfg_path)
                .into_iter()
                .map(|e| (e.field, e.line))
                .collect()
        };
        // No token yet (made at first start); no certificate files.
        assert_eq!(
            fields(&config),
            [("api.cert".to_owned(), 7), ("api.key".to_owned(), 8)]
        );
        std::fs::write(&tok, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(fields(&config)[0], ("api.token_file".to_owned(), 6));
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
        crate::api::tls::load(None, d.path(), &["g".to_owned()]).unwrap();
        std::fs::rename(d.path().join("cert.pem"), d.path().join("c.pem")).unwrap();
        std::fs::rename(d.path().join("key.pem"), d.path().join("k.pem")).unwrap();
        assert!(fields(&config).is_empty(), "{:?}", fields(&config));
    }
}
