//! Instance bus messages (paper §II: the gateways of a BETaaS instance). Pure: bytes in, values out.
//!
//! Trust chain: the instance has one Ed25519 key pair; its public key is provisioned on every
//! gateway at flash time, its secret key stays with whoever admits gateways. A gateway's
//! [`Credential`] is its own public key signed by the instance key. Every message is an
//! [`Envelope`] signed by the sender's gateway key; an `Announce` (join) carries the credential, so a member
//! learns a newcomer's key only from a message the instance key vouches for.
//!
//! Replay: each sender numbers its messages with a strictly increasing counter (persisted in blocks
//! so a reboot never goes back, whatever the clock says); a receiver drops any counter not above
//! the last it accepted from that sender.
//!
//! Wire format: `version u8 | postcard(Signed)`; the signature covers `version`, `from`,
//! `counter` and the postcard bytes of the body.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::allocator::{Remote, Res, Virt};

/// Bumped on incompatible changes; a receiver rejects other versions (counted).
pub const VERSION: u8 = 2;
/// Largest message accepted: resource reports of a few VMs are well under this.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// A gateway's public key, vouched for by the instance key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub gateway: String,
    pub key: [u8; 32],
    pub signature: Vec<u8>,
}

impl Credential {
    fn signed_bytes(gateway: &str, key: &[u8; 32]) -> Vec<u8> {
        let mut b = b"betaas-credential-v1\0".to_vec();
        b.extend_from_slice(gateway.as_bytes());
        b.push(0);
        b.extend_from_slice(key);
        b
    }

    /// Admits `gateway` with public key `key` into the instance whose secret key is `instance`.
    pub fn issue(instance: &SigningKey, gateway: &str, key: &VerifyingKey) -> Credential {
        let k = key.to_bytes();
        let signature = instance
            .sign(&Self::signed_bytes(gateway, &k))
            .to_bytes()
            .to_vec();
        Credential {
            gateway: gateway.to_owned(),
            key: k,
            signature,
        }
    }

    /// The gateway's key if the instance key signed this credential.
    pub fn verify(&self, instance: &VerifyingKey) -> Result<VerifyingKey, MsgError> {
        let sig = Signature::from_slice(&self.signature).map_err(|_| MsgError::BadCredential)?;
        instance
            .verify(&Self::signed_bytes(&self.gateway, &self.key), &sig)
            .map_err(|_| MsgError::BadCredential)?;
        VerifyingKey::from_bytes(&self.key).map_err(|_| MsgError::BadCredential)
    }
}

/// What a gateway shares with the instance (retained, so a newcomer learns it at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub capacity: Res,
    pub used: Res,
    /// Holt forecast of free resources at the decision horizon, when there is history.
    pub forecast_free: Option<Res>,
    pub virt: Virt,
    /// 0..=1, None on mains.
    pub battery: Option<f64>,
    pub vms: u32,
    pub powerful: bool,
    /// The remote clouds this gateway holds credentials for, as the allocator should see them
    /// (a receiver takes the sender as their owner, whatever the report says).
    pub remotes: Vec<Remote>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Join, and every later resource report: published retained, so a newcomer learns each
    /// member's key and resources from one message.
    Announce {
        credential: Credential,
        report: Option<ResourceReport>,
    },
    Leave,
    Heartbeat,
    /// "Run this template": the receiver re-checks against its live state. With `cloud`, on
    /// that remote cloud, whose credentials the receiver holds.
    DeployRequest {
        request: u64,
        template: String,
        res: Res,
        cloud: Option<String>,
    },
    /// `vm`: the VM's name or remote id when accepted.
    DeployAnswer {
        request: u64,
        accepted: bool,
        reason: String,
        vm: String,
    },
    /// What the sender observed of the others (reputation input), 0..=1 each.
    Trust {
        scores: Vec<(String, f64)>,
    },
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Announce { .. } => "announce",
            Body::Leave => "leave",
            Body::Heartbeat => "heartbeat",
            Body::DeployRequest { .. } => "deploy-request",
            Body::DeployAnswer { .. } => "deploy-answer",
            Body::Trust { .. } => "trust",
        }
    }
}

/// A message as received: the sender's claim, before the signature is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub from: String,
    pub counter: u64,
    /// For deploy requests/answers: the one gateway it is meant for; None for broadcasts.
    pub to: Option<String>,
    pub body: Body,
}

#[derive(Serialize, Deserialize)]
struct Signed {
    envelope: Envelope,
    signature: Vec<u8>,
}

/// Why bytes from the bus were not acted on. Each is counted by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE} byte limit")]
    TooLarge(usize),
    #[error("empty message")]
    Empty,
    #[error("protocol version {0}, this gateway speaks {VERSION}")]
    Version(u8),
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("credential not signed by this instance's key")]
    BadCredential,
    #[error("sender {0} is not a member (no verified join)")]
    UnknownSender(String),
    #[error("sender {0} was dismissed")]
    Dismissed(String),
    #[error("replayed or reordered: counter {counter} not above {last} from {from}")]
    Replay {
        from: String,
        counter: u64,
        last: u64,
    },
    #[error("credential is for {credential}, message claims {from}")]
    Impersonation { from: String, credential: String },
}

impl MsgError {
    pub fn kind(&self) -> &'static str {
        match self {
            MsgError::TooLarge(_) => "too-large",
            MsgError::Empty => "empty",
            MsgError::Version(_) => "version",
            MsgError::Decode(_) => "decode",
            MsgError::BadSignature => "bad-signature",
            MsgError::BadCredential => "bad-credential",
            MsgError::UnknownSender(_) => "unknown-sender",
            MsgError::Dismissed(_) => "dismissed",
            MsgError::Replay { .. } => "replay",
            MsgError::Impersonation { .. } => "impersonation",
        }
    }
}

fn signed_bytes(e: &Envelope) -> Result<Vec<u8>, MsgError> {
    let mut b = vec![VERSION];
    b.extend(postcard::to_allocvec(e).map_err(|err| MsgError::Decode(err.to_string()))?);
    Ok(b)
}

/// Signs and encodes a message.
pub fn encode(key: &SigningKey, envelope: Envelope) -> Vec<u8> {
    // Encoding our own in-memory values cannot fail (postcard only fails on I/O or length overflow).
    let to_sign = signed_bytes(&envelope).unwrap_or_default();
    let signature = key.sign(&to_sign).to_bytes().to_vec();
    let mut out = vec![VERSION];
    out.extend(
        postcard::to_allocvec(&Signed {
            envelope,
            signature,
        })
        .unwrap_or_default(),
    );
    out
}

/// Decodes without verifying: the caller looks up the sender's key (or the credential in an Announce)
/// and calls [`verify`].
pub fn decode(bytes: &[u8]) -> Result<(Envelope, Signature), MsgError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(MsgError::TooLarge(bytes.len()));
    }
    let (&version, rest) = bytes.split_first().ok_or(MsgError::Empty)?;
    if version != VERSION {
        return Err(MsgError::Version(version));
    }
    let s: Signed = postcard::from_bytes(rest).map_err(|e| MsgError::Decode(e.to_string()))?;
    let sig = Signature::from_slice(&s.signature).map_err(|_| MsgError::BadSignature)?;
    Ok((s.envelope, sig))
}

pub fn verify(envelope: &Envelope, sig: &Signature, key: &VerifyingKey) -> Result<(), MsgError> {
    key.verify(&signed_bytes(envelope)?, sig)
        .map_err(|_| MsgError::BadSignature)
}

/// A sender's message counter that never goes back across reboots: it is persisted as a reserved
/// upper bound every `BLOCK` messages (so the SD card sees one small write per `BLOCK` messages),
/// and a restart continues from the last reserved bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    next: u64,
    reserved: u64,
}

impl Counter {
    pub const BLOCK: u64 = 1000;

    /// From the persisted bound (0 on first start).
    pub fn resume(reserved: u64) -> Counter {
        Counter {
            next: reserved,
            reserved,
        }
    }

    /// The next counter value, and a new bound to persist *before* sending, when one is due.
    pub fn next(&mut self) -> (u64, Option<u64>) {
        let n = self.next;
        self.next += 1;
        if n >= self.reserved {
            self.reserved = n + Self::BLOCK;
            (n, Some(self.reserved))
        } else {
            (n, None)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn hb(from: &str, counter: u64) -> Envelope {
        Envelope {
            from: from.into(),
            counter,
            to: None,
            body: Body::Heartbeat,
        }
    }

    #[test]
    fn signed_round_trip_verifies_and_tampering_does_not() {
        let k = key(1);
        let bytes = encode(&k, hb("gw1", 7));
        let (env, sig) = decode(&bytes).unwrap();
        assert_eq!(env, hb("gw1", 7));
        verify(&env, &sig, &k.verifying_key()).unwrap();
        // Another key, or any flipped bit, fails.
        assert_eq!(
            verify(&env, &sig, &key(2).verifying_key()),
            Err(MsgError::BadSignature)
        );
        for i in 1..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            if let Ok((e, s)) = decode(&t) {
                assert!(
                    verify(&e, &s, &k.verifying_key()).is_err(),
                    "flip at {i} verified"
                );
            }
        }
    }

    #[test]
    fn credentials_come_only_from_the_instance_key() {
        let instance = key(9);
        let gw = key(3);
        let c = Credential::issue(&instance, "gw3", &gw.verifying_key());
        assert_eq!(
            c.verify(&instance.verifying_key()).unwrap(),
            gw.verifying_key()
        );
        let forged = Credential::issue(&key(8), "gw3", &gw.verifying_key());
        assert_eq!(
            forged.verify(&instance.verifying_key()),
            Err(MsgError::BadCredential)
        );
        let mut renamed = c.clone();
        renamed.gateway = "gw4".into();
        assert_eq!(
            renamed.verify(&instance.verifying_key()),
            Err(MsgError::BadCredential)
        );
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(MsgError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(MsgError::Version(9)));
        assert!(matches!(
            decode(&[VERSION, 0xff, 0xff]),
            Err(MsgError::Decode(_))
        ));
        assert!(matches!(
            decode(&vec![VERSION; MAX_MESSAGE + 1]),
            Err(MsgError::TooLarge(_))
        ));
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        for _ in 0..2000 {
            let n = rng.usize(0..300);
            let bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn counter_never_goes_back_across_restarts() {
        let mut c = Counter::resume(0);
        let (first, persist) = c.next();
        assert_eq!((first, persist), (0, Some(Counter::BLOCK)));
        let mut last = first;
        let mut bound = persist.unwrap();
        for _ in 0..2500 {
            let (n, p) = c.next();
            assert!(n > last);
            last = n;
            if let Some(b) = p {
                bound = b;
            }
        }
        // A crash at any point: restarting from the persisted bound continues above all sent.
        let mut after = Counter::resume(bound);
        assert!(after.next().0 > last);
    }
}
