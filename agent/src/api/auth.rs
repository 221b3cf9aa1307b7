//! The API's bearer token and the limit on wrong ones. Pure, but for reading and making the token
//! file ([`load_or_make`]).
//!
//! Each client address may get [`BURST`] wrong tokens at once, then one per [`INTERVAL`] (GCRA: a
//! wrong token pushes the address's clock forward by the interval). An address over its limit is
//! answered 429 with the wait before its token is even looked at.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub const BURST: u32 = 5;
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Addresses remembered; beyond this, unknown addresses share one allowance.
pub const MAX_ADDRESSES: usize = 1024;
/// A token shorter than this is refused at start (a guessable token guards nothing).
pub const MIN_TOKEN: usize = 16;

/// The token of `Authorization: Bearer <token>`, if that is the header's form.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
pub fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    expected
        .iter()
        .zip(given)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The per-address allowance of wrong tokens.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Per address: its theoretical arrival time (GCRA).
    tat: HashMap<IpAddr, Instant>,
}

impl Limiter {
    fn key(&self, ip: IpAddr) -> IpAddr {
        if self.tat.contains_key(&ip) || self.tat.len() < MAX_ADDRESSES {
            ip
        } else {
            IpAddr::from([0u8, 0, 0, 0])
        }
    }

    /// `Err(wait)`: this address must wait before another try.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(tat) = self.tat.get(&self.key(ip)) else {
            return Ok(());
        };
        let allowed_until = now + INTERVAL * BURST;
        if *tat > allowed_until {
            Err(*tat - allowed_until)
        } else {
            Ok(())
        }
    }

    /// A wrong or missing token from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.tat.len() >= MAX_ADDRESSES {
            self.tat.retain(|_, t| *t > now);
        }
        let key = self.key(ip);
        let tat = self.tat.entry(key).or_insert(now);
        *tat = (*tat).max(now) + INTERVAL;
    }
}

/// The token in `path`; when the file does not exist, a new random one is written there (0600)
/// and returned with `true` (the caller prints it once).
pub fn load_or_make(path: &Path) -> Result<(String, bool), String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            crate::config::private_file(path)?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.len() < MIN_TOKEN || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "{}: the token must be one line of at least {MIN_TOKEN} printable characters",
                    path.display()
                ));
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = random_hex(32)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((token, true))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// `n` random bytes from the OS, in hex.
pub fn random_hex(n: usize) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness from the OS".to_owned())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret-token", b"secret-token"));
        assert!(!token_matches(b"secret-token", b"secret-tokeN"));
        assert!(!token_matches(b"secret-token", b"secret-toke"));
        assert!(!token_matches(b"secret-token", b""));
    }

    #[test]
    fn a_burst_of_wrong_tokens_then_one_per_interval() {
        let mut l = Limiter::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..=BURST {
            assert_eq!(l.check(ip, t0), Ok(()));
            l.failed(ip, t0);
        }
        let wait = l.check(ip, t0).unwrap_err();
        assert_eq!(wait, INTERVAL);
        assert_eq!(l.check(other, t0), Ok(()), "another address is not limited");
        assert_eq!(
            l.check(ip, t0 + INTERVAL),
            Ok(()),
            "one more after the interval"
        );
        l.failed(ip, t0 + INTERVAL);
        assert!(l.check(ip, t0 + INTERVAL).is_err());
        // Long quiet: the full burst again.
        let later = t0 + INTERVAL * 100;
        for _ in 0..=BURST {
            assert_eq!(l.check(ip, later), Ok(()));
            l.failed(ip, later);
        }
        assert!(l.check(ip, later).is_err());
    }

    #[test]
    fn many_addresses_stay_bounded_and_still_limited() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            let ip = IpAddr::from(i.to_be_bytes());
            for _ in 0..=BURST {
                l.failed(ip, t0);
            }
        }
        assert!(l.tat.len() <= MAX_ADDRESSES + 1);
        let newcomer = IpAddr::from([192, 168, 9, 9]);
        assert!(
            l.check(newcomer, t0).is_err(),
            "shares the overflow allowance"
        );
    }

    #[test]
    fn the_token_file_is_made_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api").join("token");
        let (t, made) = load_or_make(&p).unwrap();
        assert!(made && t.len() == 64);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_make(&p).unwrap(), (t, false));
        std::fs::write(&p, "short\n").unwrap();
        assert!(load_or_make(&p).unwrap_err().contains("at least"));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_make(&p).is_err(), "readable by others: refused");
    }
}
