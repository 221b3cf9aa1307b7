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
//! the last it accepted from that sender, and keeps those floors across its own restarts
//! (`super::floors`).
//!
//! Clients (applications, an operator's PC) hold a client credential: the same shape, signed
//! under another domain, so it never passes as a gateway's and a gateway's never as a client's.
//! A client sends one `ClientRequest` to one gateway ([`verify_client_request`]).
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

/// What the instance key vouches for with a credential. The domain is part of the signed bytes,
/// so a client credential never verifies as a gateway's (a client cannot join as a member) and a
/// gateway credential never verifies as a client's.
const GATEWAY_DOMAIN: &[u8] = b"betaas-credential-v1\0";
const CLIENT_DOMAIN: &[u8] = b"betaas-client-v1\0";

impl Credential {
    fn signed_bytes(domain: &[u8], gateway: &str, key: &[u8; 32]) -> Vec<u8> {
        let mut b = domain.to_vec();
        b.extend_from_slice(gateway.as_bytes());
        b.push(0);
        b.extend_from_slice(key);
        b
    }

    fn issue_in(
        domain: &[u8],
        instance: &SigningKey,
        name: &str,
        key: &VerifyingKey,
    ) -> Credential {
        let k = key.to_bytes();
        let signature = instance
            .sign(&Self::signed_bytes(domain, name, &k))
            .to_bytes()
            .to_vec();
        Credential {
            gateway: name.to_owned(),
            key: k,
            signature,
        }
    }

    fn verify_in(&self, domain: &[u8], instance: &VerifyingKey) -> Result<VerifyingKey, MsgError> {
        let sig = Signature::from_slice(&self.signature).map_err(|_| MsgError::BadCredential)?;
        instance
            .verify(&Self::signed_bytes(domain, &self.gateway, &self.key), &sig)
            .map_err(|_| MsgError::BadCredential)?;
        VerifyingKey::from_bytes(&self.key).map_err(|_| MsgError::BadCredential)
    }

    /// Admits `gateway` with public key `key` into the instance whose secret key is `instance`.
    pub fn issue(instance: &SigningKey, gateway: &str, key: &VerifyingKey) -> Credential {
        Self::issue_in(GATEWAY_DOMAIN, instance, gateway, key)
    }

    /// The gateway's key if the instance key signed this as a gateway credential.
    pub fn verify(&self, instance: &VerifyingKey) -> Result<VerifyingKey, MsgError> {
        self.verify_in(GATEWAY_DOMAIN, instance)
    }

    /// Lets client `name` (an application, an operator's PC) with public key `key` send requests
    /// to the gateways; it does not make it a member. `gateway` holds the client's name.
    pub fn issue_client(instance: &SigningKey, name: &str, key: &VerifyingKey) -> Credential {
        Self::issue_in(CLIENT_DOMAIN, instance, name, key)
    }

    /// The client's key if the instance key signed this as a client credential.
    pub fn verify_client(&self, instance: &VerifyingKey) -> Result<VerifyingKey, MsgError> {
        self.verify_in(CLIENT_DOMAIN, instance)
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
    /// A client's request to one gateway (`to`), from `from` = the client's name, under a client
    /// credential. `request` is the JSON request object as the service layer reads it (a VM
    /// request or release). Last variant: the others keep their postcard tags.
    ClientRequest {
        credential: Credential,
        request: String,
    },
    /// A member (re)joining asks every member that is up to announce itself again (on a broker
    /// that does not deliver retained announces to a wildcard subscriber, this is how it learns
    /// them). Taken as an announce of its own (it carries the credential and report), never
    /// retained. After `ClientRequest`: the others keep their postcard tags.
    Join {
        credential: Credential,
        report: Option<ResourceReport>,
    },
    /// A `DeployRequest` for a clustered template (local only): `env` reaches the guest's start
    /// (a worker's master URL). Answered `ClusterAnswer`. After `Join`: the others keep their tags.
    ClusterDeploy {
        request: u64,
        template: String,
        res: Res,
        env: Vec<(String, String)>,
    },
    /// A `DeployAnswer` that also names the URL the guest serves at (a master, a storage node).
    ClusterAnswer {
        request: u64,
        accepted: bool,
        reason: String,
        vm: String,
        url: Option<String>,
    },
    /// Stop this VM of the receiver's (a cluster's scale-down); answered `DeployAnswer`
    /// (accepted: stopped, kept for reuse).
    ReleaseRequest {
        request: u64,
        vm: String,
    },
    /// A `DeployRequest` with an application (`"war"`): the receiver fetches `war` itself (within
    /// its own `war_max_mb`) and deploys it only if its sha256 is `sha256` (what the requesting
    /// gateway computed or was given); a mismatch is refused with the reason. Answered
    /// `ClusterAnswer` (the application's URL). Last variant: the others keep their tags, and a
    /// gateway of an older firmware rejects it as undecodable (an unknown variant tag, counted as
    /// `decode`) and never answers, so the requester's wait runs out and it decides again.
    WarDeploy {
        request: u64,
        template: String,
        res: Res,
        war: String,
        sha256: String,
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
            Body::ClientRequest { .. } => "client-request",
            Body::Join { .. } => "join",
            Body::ClusterDeploy { .. } => "cluster-deploy",
            Body::ClusterAnswer { .. } => "cluster-answer",
            Body::ReleaseRequest { .. } => "release-request",
            Body::WarDeploy { .. } => "war-deploy",
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
    #[error("addressed to {to:?}, not to this gateway")]
    NotForMe { to: Option<String> },
    #[error("a {0} message is not accepted here")]
    WrongKind(&'static str),
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
            MsgError::NotForMe { .. } => "not-for-me",
            MsgError::WrongKind(_) => "wrong-kind",
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

/// A client request whose credential and signature verified, addressed to this gateway. The
/// replay check (counter above the client's floor) is the caller's: see
/// `Instance::receive_client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    pub client: String,
    pub counter: u64,
    /// The JSON request object, as the client sent it (not parsed here).
    pub request: String,
}

/// Verifies a client's signed request to gateway `me`: decodes (size, version), the body is a
/// `ClientRequest`, the credential names the sender and is a client credential of this instance,
/// the sender's key signed it, and it is addressed to `me` (a request for another gateway, or for
/// everyone, is not ours to carry out). Does not check the counter.
pub fn verify_client_request(
    bytes: &[u8],
    instance: &VerifyingKey,
    me: &str,
) -> Result<ClientRequest, MsgError> {
    let (env, sig) = decode(bytes)?;
    let Body::ClientRequest {
        credential,
        request,
    } = &env.body
    else {
        return Err(MsgError::WrongKind(env.body.kind()));
    };
    if credential.gateway != env.from {
        return Err(MsgError::Impersonation {
            from: env.from.clone(),
            credential: credential.gateway.clone(),
        });
    }
    let key = credential.verify_client(instance)?;
    verify(&env, &sig, &key)?;
    if env.to.as_deref() != Some(me) {
        return Err(MsgError::NotForMe { to: env.to });
    }
    Ok(ClientRequest {
        client: env.from.clone(),
        counter: env.counter,
        request: request.clone(),
    })
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
    // Not an iterator: it never ends, and its second value is an instruction to the caller.
    #[allow(clippy::should_implement_trait)]
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

    fn random_name(rng: &mut fastrand::Rng) -> String {
        let n = rng.usize(1..12);
        std::iter::repeat_with(|| rng.alphanumeric())
            .take(n)
            .collect()
    }

    #[test]
    fn client_and_gateway_credentials_do_not_stand_in_for_each_other() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let instance = key(9);
        // Few rounds: signatures are slow in debug builds.
        for _ in 0..8 {
            let name = random_name(&mut rng);
            let k = key(rng.u8(..));
            let client = Credential::issue_client(&instance, &name, &k.verifying_key());
            let gateway = Credential::issue(&instance, &name, &k.verifying_key());
            let ivk = instance.verifying_key();
            assert_eq!(client.verify_client(&ivk).unwrap(), k.verifying_key());
            assert_eq!(gateway.verify(&ivk).unwrap(), k.verifying_key());
            assert_eq!(client.verify(&ivk), Err(MsgError::BadCredential));
            assert_eq!(gateway.verify_client(&ivk), Err(MsgError::BadCredential));
            // Same wire shape: only the signature differs.
            assert_eq!(
                (&client.gateway, client.key),
                (&gateway.gateway, gateway.key)
            );
            let forged = Credential::issue_client(&key(8), &name, &k.verifying_key());
            assert_eq!(forged.verify_client(&ivk), Err(MsgError::BadCredential));
        }
    }

    fn client_request(
        instance: &SigningKey,
        client: &SigningKey,
        name: &str,
        to: Option<&str>,
        counter: u64,
        request: &str,
    ) -> Vec<u8> {
        let credential = Credential::issue_client(instance, name, &client.verifying_key());
        encode(
            client,
            Envelope {
                from: name.into(),
                counter,
                to: to.map(str::to_owned),
                body: Body::ClientRequest {
                    credential,
                    request: request.into(),
                },
            },
        )
    }

    #[test]
    fn client_requests_verify_only_signed_by_a_client_and_addressed_to_me() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let instance = key(9);
        let ivk = instance.verifying_key();
        let client = key(5);
        let counter = rng.u64(..);
        let request = format!(r#"{{"id":"r{}","template":"app"}}"#, rng.u32(..));
        let good = client_request(&instance, &client, "pc", Some("gw1"), counter, &request);
        assert_eq!(
            verify_client_request(&good, &ivk, "gw1").unwrap(),
            ClientRequest {
                client: "pc".into(),
                counter,
                request: request.clone(),
            }
        );
        // For another gateway, or for everyone.
        assert_eq!(
            verify_client_request(&good, &ivk, "gw2"),
            Err(MsgError::NotForMe {
                to: Some("gw1".into())
            })
        );
        let broadcast = client_request(&instance, &client, "pc", None, counter, &request);
        assert_eq!(
            verify_client_request(&broadcast, &ivk, "gw1"),
            Err(MsgError::NotForMe { to: None })
        );
        // Another instance's client.
        let foreign = client_request(&key(8), &client, "pc", Some("gw1"), counter, &request);
        assert_eq!(
            verify_client_request(&foreign, &ivk, "gw1"),
            Err(MsgError::BadCredential)
        );
        // A gateway credential is not a client's.
        let gw_cred = Credential::issue(&instance, "pc", &client.verifying_key());
        let as_gateway = encode(
            &client,
            Envelope {
                from: "pc".into(),
                counter,
                to: Some("gw1".into()),
                body: Body::ClientRequest {
                    credential: gw_cred,
                    request: request.clone(),
                },
            },
        );
        assert_eq!(
            verify_client_request(&as_gateway, &ivk, "gw1"),
            Err(MsgError::BadCredential)
        );
        // Someone else's credential: under its name but signed by another key, or under our name.
        let thief = key(6);
        let mut stolen = client_request(&instance, &thief, "pc", Some("gw1"), counter, &request);
        let (mut env, _) = decode(&stolen).unwrap();
        if let Body::ClientRequest { credential, .. } = &mut env.body {
            *credential = Credential::issue_client(&instance, "pc", &client.verifying_key());
        }
        stolen = encode(&thief, env.clone());
        assert_eq!(
            verify_client_request(&stolen, &ivk, "gw1"),
            Err(MsgError::BadSignature)
        );
        env.from = "thief".into();
        assert!(matches!(
            verify_client_request(&encode(&thief, env), &ivk, "gw1"),
            Err(MsgError::Impersonation { .. })
        ));
        // Any flipped bit fails (a random sample of positions: signatures are slow in debug).
        for _ in 0..40 {
            let i = rng.usize(1..good.len());
            let mut t = good.clone();
            t[i] ^= 1 << rng.u8(0..8);
            assert!(
                verify_client_request(&t, &ivk, "gw1").is_err(),
                "flip at {i}"
            );
        }
        // Other kinds of message are not client requests.
        assert_eq!(
            verify_client_request(&encode(&client, hb("pc", 1)), &ivk, "gw1"),
            Err(MsgError::WrongKind("heartbeat"))
        );
    }

    /// Postcard writes a variant's index first: a variant appended keeps every older tag, and a
    /// gateway whose firmware stops at `ReleaseRequest` (tag 10) meets tag 11 as an unknown
    /// variant, a decode error, never as another message.
    #[test]
    fn variant_tags_are_stable_and_war_deploy_is_appended() {
        let res = Res::new(1, 512, 2);
        let tag = |b: Body| postcard::to_allocvec(&b).expect("encodes")[0];
        assert_eq!(tag(Body::Heartbeat), 2);
        assert_eq!(
            tag(Body::ReleaseRequest {
                request: 1,
                vm: "w".into()
            }),
            10
        );
        let war = Body::WarDeploy {
            request: 1,
            template: "app".into(),
            res,
            war: "http://h/app.war".into(),
            sha256: "0".repeat(64),
        };
        assert_eq!(tag(war.clone()), 11);
        assert_eq!(war.kind(), "war-deploy");
        // What an older firmware does with it: its decoder knows 11 variants (0..=10).
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        enum Old {
            A(u8),
            B,
            C,
            D(u8),
            E(u8),
            F(u8),
            G(u8),
            H(u8),
            I(u8),
            J(u8),
            K(u8),
        }
        let bytes = postcard::to_allocvec(&war).expect("encodes");
        assert!(postcard::from_bytes::<Old>(&bytes).is_err());
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
