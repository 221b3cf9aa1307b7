//! The API's TLS: rustls 0.23 on ring (the stack reqwest already links). A provisioned
//! certificate and key (`[api] cert`, `key`), or a self-signed one made at first boot under
//! `data_dir/api/` (rcgen, ECDSA P-256, the key 0600) and kept: its SHA-256 fingerprint, printed
//! on the console and in health, is what a user compares in the browser.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// `AB:CD:…`: the SHA-256 of a certificate's DER bytes, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub struct Loaded {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: String,
    /// The certificate was made now (first boot).
    pub made: Option<PathBuf>,
}

/// The server's TLS configuration from `cert`/`key`, or from the self-signed pair under `dir`
/// (made when missing, for the names `names`).
pub fn load(
    provisioned: Option<(&Path, &Path)>,
    dir: &Path,
    names: &[String],
) -> Result<Loaded, String> {
    let (cert_path, key_path, made) = match provisioned {
        Some((c, k)) => (c.to_owned(), k.to_owned(), None),
        None => {
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let made = if c.exists() && k.exists() {
                None
            } else {
                make_self_signed(&c, &k, names)?;
                Some(c.clone())
            };
            (c, k, made)
        }
    };
    crate::config::private_file(&key_path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(
        &mut std::fs::read(&cert_path)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?
            .as_slice(),
    )
    .collect::<Result<_, _>>()
    .map_err(|e| format!("{}: not valid PEM: {e}", cert_path.display()))?;
    let first = certs
        .first()
        .ok_or_else(|| format!("{}: no PEM certificate in it", cert_path.display()))?;
    let fingerprint = fingerprint(first.as_ref());
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(
        &mut std::fs::read(&key_path)
            .map_err(|e| format!("{}: {e}", key_path.display()))?
            .as_slice(),
    )
    .map_err(|e| format!("{}: not valid PEM: {e}", key_path.display()))?
    .ok_or_else(|| format!("{}: no PEM private key in it", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", cert_path.display(), key_path.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        fingerprint,
        made,
    })
}

fn make_self_signed(cert: &Path, key: &Path, names: &[String]) -> Result<(), String> {
    let pair = rcgen::KeyPair::generate().map_err(|e| format!("certificate key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| format!("certificate: {e}"))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    // rcgen's validity (1975 to 4096) holds whatever a gateway's clock says after boot.
    let c = params
        .self_signed(&pair)
        .map_err(|e| format!("certificate: {e}"))?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_new(key, pair.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert, c.pem().as_bytes(), 0o644)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sha256_in_colon_hex() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let names = vec!["gw-1".to_owned(), "localhost".to_owned()];
        let a = load(None, d.path(), &names).unwrap();
        assert!(a.made.is_some());
        let mode = std::fs::metadata(d.path().join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load(None, d.path(), &names).unwrap();
        assert!(b.made.is_none());
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "the same certificate after a restart"
        );
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
    }
}
