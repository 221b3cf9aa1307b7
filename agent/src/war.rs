//! The application of a VM request (`"war": "<url>"`, optional `"war_sha256"`; paper §V, service
//! deployment): fetched by the gateway that places the request, before anything is started, so a
//! bad URL, an archive over `[instance] war_max_mb` or a sha256 that does not match ends the
//! request with nothing running. The agent fetches rather than `betaas-vmd`: it already speaks
//! HTTP(S) (reqwest + rustls, for the remote clouds) on its async runtime, while the daemon stays a
//! small libvirt front end. The archive is kept as `data_dir/wars/<sha256>-<random>.war` for the
//! daemon to copy into the guest's share (it checks the sha256 again), then removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::io::Write;

use ring::digest;

/// Connecting and each read: an unreachable or stalled server fails the request, never hangs it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Where it was fetched from (another gateway chosen for the request fetches it there too).
    pub url: String,
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

/// A 64-digit hex sha256, lowercased; else why not.
pub fn parse_sha256(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(format!(
            "war_sha256 {s:?}: a sha256 is 64 hexadecimal digits (as sha256sum prints)"
        ))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fetches `url` (http or https) into `dir`, at most `max_bytes`; with `want`, its sha256 must
/// match. Err: what went wrong, naming the URL; nothing is left in `dir` then.
pub async fn fetch(
    url: &str,
    want: Option<&str>,
    max_bytes: u64,
    dir: &Path,
) -> Result<Fetched, String> {
    let want = want.map(parse_sha256).transpose()?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("war {url:?}: not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("war {url:?}: only http and https URLs are fetched"));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(FETCH_TIMEOUT)
        .read_timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| format!("war: HTTP client: {e}"))?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| format!("war {url}: unreachable: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("war {url}: HTTP {}", resp.status()));
    }
    let too_large = |n: u64| {
        format!("war {url}: larger than war_max_mb ({n} bytes or more, the limit is {max_bytes})")
    };
    if let Some(n) = resp.content_length().filter(|n| *n > max_bytes) {
        return Err(too_large(n));
    }
    // Plain file writes (the agent's tokio has no fs feature): chunks of a bounded archive.
    std::fs::create_dir_all(dir).map_err(|e| format!("war: {}: {e}", dir.display()))?;
    let nonce = format!("{:016x}", crate::instance::random_u64());
    let tmp = dir.join(format!(".fetch-{nonce}"));
    let r = async {
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| format!("war: {}: {e}", tmp.display()))?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut bytes = 0u64;
        // The body is counted as it comes: a server that sends no length (or lies) is cut off at
        // the limit, not read to the end.
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("war {url}: reading: {e}"))?
        {
            bytes += chunk.len() as u64;
            if bytes > max_bytes {
                return Err(too_large(bytes));
            }
            ctx.update(&chunk);
            f.write_all(&chunk)
                .map_err(|e| format!("war: {}: {e}", tmp.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("war: {}: {e}", tmp.display()))?;
        let got = hex(ctx.finish().as_ref());
        if let Some(w) = &want {
            if *w != got {
                return Err(format!(
                    "war {url}: sha256 {got}, the request says {w}: not deployed"
                ));
            }
        }
        // Unique per request: another request for the same archive may remove its own copy.
        let path = dir.join(format!("{got}-{nonce}.war"));
        std::fs::rename(&tmp, &path).map_err(|e| format!("war: {}: {e}", path.display()))?;
        Ok(Fetched {
            url: url.to_owned(),
            path,
            sha256: got,
            bytes,
        })
    }
    .await;
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Waits until `url` answers HTTP (any status: the guest's server is up and its startup
/// deployments are done), at most `within`. The guest prints its readiness marker at the same
/// moment; this is the same fact seen from where the requester will connect.
pub async fn answers(url: &str, within: Duration) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return false;
    };
    let end = tokio::time::Instant::now() + within;
    loop {
        if client.get(url).send().await.is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        // Connection refused comes back at once: retry at a steady pace, not in a busy loop.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_64_hex_digits() {
        let s = "AB".repeat(32);
        assert_eq!(parse_sha256(&s).expect("test input"), "ab".repeat(32));
        assert!(parse_sha256("abc")
            .expect_err("fails")
            .contains("64 hexadecimal"));
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }

    #[tokio::test]
    async fn other_schemes_and_bad_urls_are_refused_before_any_io() {
        let d = tempfile::tempdir().expect("test input");
        let e = fetch("file:///etc/passwd", None, 10, d.path())
            .await
            .expect_err("fails");
        assert!(e.contains("only http and https"), "{e}");
        let e = fetch("not a url", None, 10, d.path())
            .await
            .expect_err("fails");
        assert!(e.contains("not a URL"), "{e}");
        assert!(!d.path().join("x").exists());
    }
}
