//! The API's TLS: rustls 0.23 on ring (the stack reqwest already links). A provisioned
//! certificate and key (`[api] cert`, `key`), or a self-signed one made at first boot under
//! `data_dir/api/` ([`self_signed`]: ECDSA P-256 by ring, the key 0600) and kept: its SHA-256 fingerprint, printed
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
    let (cert_der, pkcs8) = self_signed(names)?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_new(key, pem("PRIVATE KEY", &pkcs8).as_bytes(), 0o600)?;
    write_new(cert, pem("CERTIFICATE", &cert_der).as_bytes(), 0o644)
}

/// DER: a tag, its length, its contents.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

const OID_ECDSA_SHA256: &[u8] = &[0x06, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_CN: &[u8] = &[0x06, 3, 0x55, 0x04, 0x03];
const OID_SAN: &[u8] = &[0x06, 3, 0x55, 0x1d, 0x11];

/// A self-signed X.509 v3 certificate (ECDSA P-256, SHA-256) for `names` (the first is the
/// common name; each is a DNS name, or an IP address if it parses as one), valid from 1970 to
/// 9999 (a gateway's clock may be anything after boot; the browser compares with its own), and its
/// PKCS#8 key. ring does the key and the signature; the few DER structures are written here (a
/// certificate library would add ~57 KB to the static agent).
pub fn self_signed(names: &[String]) -> Result<(Vec<u8>, Vec<u8>), String> {
    use ring::rand::SecureRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "certificate key: no randomness".to_owned())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| format!("certificate key: {e}"))?;
    let mut serial = [0u8; 16];
    rng.fill(&mut serial)
        .map_err(|_| "certificate serial: no randomness".to_owned())?;
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 bytes
    let cn = names.first().map_or("betaas", String::as_str);
    let name = seq(&[&tlv(0x31, &seq(&[OID_CN, &tlv(0x0c, cn.as_bytes())]))]);
    let alg = seq(&[OID_ECDSA_SHA256]);
    let validity = seq(&[&tlv(0x17, b"700101000000Z"), &tlv(0x18, b"99991231235959Z")]);
    let spki = seq(&[
        &seq(&[OID_EC_PUBLIC_KEY, OID_P256]),
        &tlv(0x03, &[&[0u8][..], pair.public_key().as_ref()].concat()),
    ]);
    let sans: Vec<u8> = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => tlv(0x87, &ip.octets()),
            Ok(std::net::IpAddr::V6(ip)) => tlv(0x87, &ip.octets()),
            Err(_) => tlv(0x82, n.as_bytes()),
        })
        .collect::<Vec<_>>()
        .concat();
    let extensions = tlv(
        0xa3,
        &seq(&[&seq(&[OID_SAN, &tlv(0x04, &tlv(0x30, &sans))])]),
    );
    let tbs = seq(&[
        &tlv(0xa0, &[0x02, 1, 2]), // v3
        &tlv(0x02, &serial),
        &alg,
        &name,
        &validity,
        &name,
        &spki,
        &extensions,
    ]);
    let sig = pair
        .sign(&rng, &tbs)
        .map_err(|_| "certificate: cannot sign".to_owned())?;
    let cert = seq(&[&tbs, &alg, &tlv(0x03, &[&[0u8][..], sig.as_ref()].concat())]);
    Ok((cert, pkcs8.as_ref().to_vec()))
}

/// PEM armour: base64 in lines of 64.
fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
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
    fn der_lengths_and_pem_armour() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(
            pem("X", b"foobar!"),
            "-----BEGIN X-----\nZm9vYmFyIQ==\n-----END X-----\n"
        );
    }

    #[test]
    fn the_certificate_names_the_gateway_and_matches_its_key() {
        let names = vec!["gw-7".to_owned(), "10.0.0.9".to_owned()];
        let (cert, _) = self_signed(&names).unwrap();
        let find = |needle: &[u8]| cert.windows(needle.len()).any(|w| w == needle);
        assert!(find(&tlv(0x0c, b"gw-7")), "common name");
        assert!(find(&tlv(0x82, b"gw-7")), "DNS name");
        assert!(find(&tlv(0x87, &[10, 0, 0, 9])), "IP address");
        // rustls parses it and checks that the key is the certificate's: another key is refused.
        let d = tempfile::tempdir().unwrap();
        assert!(load(None, d.path(), &names).is_ok());
        let other = tempfile::tempdir().unwrap();
        load(None, other.path(), &names).unwrap();
        std::fs::copy(other.path().join("key.pem"), d.path().join("key.pem")).unwrap();
        assert!(
            load(None, d.path(), &names).is_err(),
            "a key that is not the certificate's"
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
