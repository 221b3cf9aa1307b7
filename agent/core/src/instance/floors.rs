//! Replay floors that survive a restart: per sender, the highest message counter this gateway
//! accepted, and the counter of the sender's last accepted `Announce`. Held only in memory, a
//! restart would forget them and an older, validly signed message (a captured `DeployRequest`, a
//! client's VM request) would be accepted again. The runtime persists [`Floors::encode`] (write a
//! temporary file, fsync, rename) when [`Urgency`] says so, and hands [`Floors::decode`] back at
//! start. Pure: no I/O, no clock.
//!
//! Format: `b"BFLR" | FORMAT u8 | postcard(table) | crc32 (LE) of everything before it`. A torn or
//! corrupt file does not decode; the runtime then starts empty with a loud warning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::msg::Body;

/// Senders remembered at most. Only senders whose credential the instance key signed, with a
/// message that verified, get an entry, so the table fills only with real gateways and clients;
/// when it is full the sender not heard from longest is dropped (its old messages become
/// replayable, the least harm: refusing newcomers instead would shut a genuine member or client
/// out of an instance that grew past the bound).
pub const MAX_SENDERS: usize = 256;
/// Bumped on incompatible changes of the encoding.
pub const FORMAT: u8 = 1;
const MAGIC: &[u8; 4] = b"BFLR";

/// Gateways and clients are separate namespaces: a client named like a gateway does not share
/// (or lower) that gateway's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Party {
    Gateway,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    /// The highest counter accepted from the sender: nothing at or below it is accepted again.
    pub counter: u64,
    /// The counter of its last accepted `Announce`, the one the broker keeps retained: it alone
    /// may be accepted again. `None` once the sender left or was dismissed.
    pub announce: Option<u64>,
    /// When it was last accepted, on the table's own logical clock (for eviction, no wall clock).
    seen: u64,
}

/// What a counter is, against the sender's floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Above the floor (or no floor yet): new.
    Fresh,
    /// Exactly the sender's remembered `Announce`: the retained message again.
    RetainedAnnounce,
    /// Exactly the last accepted counter.
    Same,
    /// Below the floor.
    Replay { last: u64 },
}

/// How soon the floors should reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Urgency {
    /// Nothing changed since the last [`super::membership::Instance::take_floors`].
    #[default]
    None,
    /// Only messages whose replay is harmless (heartbeats, trust, announces): write within a few
    /// seconds, batched, to spare the SD card.
    Soon,
    /// A message whose replay would act again (deploy requests and answers, leave, client
    /// requests): write before acting on it.
    Now,
}

impl Urgency {
    /// For an accepted message of this kind.
    pub fn of(body: &Body) -> Urgency {
        match body {
            Body::Heartbeat | Body::Trust { .. } | Body::Announce { .. } | Body::Join { .. } => {
                Urgency::Soon
            }
            Body::Leave
            | Body::DeployRequest { .. }
            | Body::DeployAnswer { .. }
            | Body::ClientRequest { .. }
            | Body::ClusterDeploy { .. }
            | Body::ClusterAnswer { .. }
            | Body::ReleaseRequest { .. }
            | Body::WarDeploy { .. } => Urgency::Now,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Floors {
    entries: BTreeMap<(Party, String), Floor>,
    clock: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloorsError {
    #[error("{0} bytes: too short to be a floors file")]
    TooShort(usize),
    #[error("not a floors file (bad magic)")]
    Magic,
    #[error("floors format {0}, this gateway reads {FORMAT}")]
    Format(u8),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x}): torn or corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("{0} senders, over the {MAX_SENDERS} limit")]
    TooMany(usize),
    #[error("inconsistent entry for {0}")]
    Inconsistent(String),
}

#[derive(Serialize, Deserialize)]
struct Wire {
    clock: u64,
    entries: Vec<(Party, String, Floor)>,
}

impl Floors {
    pub fn new() -> Floors {
        Floors::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, party: Party, id: &str) -> Option<&Floor> {
        self.entries.get(&(party, id.to_owned()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (Party, &str, &Floor)> {
        self.entries.iter().map(|((p, id), f)| (*p, id.as_str(), f))
    }

    /// Where `counter` from `id` stands; `announce` when the message is an `Announce`.
    pub fn check(&self, party: Party, id: &str, counter: u64, announce: bool) -> Check {
        let Some(f) = self.get(party, id) else {
            return Check::Fresh;
        };
        if announce && f.announce == Some(counter) {
            // Checked before the floor: the retained announce is usually below it (heartbeats
            // followed it).
            Check::RetainedAnnounce
        } else if counter > f.counter {
            Check::Fresh
        } else if counter == f.counter {
            Check::Same
        } else {
            Check::Replay { last: f.counter }
        }
    }

    /// Records an accepted message: the floor only goes up. Returns the sender dropped to make
    /// room, if any.
    pub fn accept(
        &mut self,
        party: Party,
        id: &str,
        counter: u64,
        announce: bool,
    ) -> Option<(Party, String)> {
        self.clock += 1;
        let seen = self.clock;
        let key = (party, id.to_owned());
        if let Some(f) = self.entries.get_mut(&key) {
            if counter > f.counter {
                f.counter = counter;
                if announce {
                    f.announce = Some(counter);
                }
            }
            f.seen = seen;
            return None;
        }
        let evicted = self.make_room();
        let announce = announce.then_some(counter);
        self.entries.insert(
            key,
            Floor {
                counter,
                announce,
                seen,
            },
        );
        evicted
    }

    fn make_room(&mut self) -> Option<(Party, String)> {
        if self.entries.len() < MAX_SENDERS {
            return None;
        }
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(k, f)| (f.seen, *k))
            .map(|(k, _)| k.clone())?;
        self.entries.remove(&oldest);
        Some(oldest)
    }

    /// The sender left or was dismissed: its retained announce no longer re-admits it; the
    /// counter floor stays, so nothing older is accepted either.
    pub fn forget_announce(&mut self, party: Party, id: &str) {
        if let Some(f) = self.entries.get_mut(&(party, id.to_owned())) {
            f.announce = None;
        }
    }

    /// Takes in floors from elsewhere (the disk at start): per sender the higher floor wins, so a
    /// late or stale restore never lowers one.
    pub fn merge(&mut self, other: Floors) {
        for ((party, id), f) in other.entries {
            match self.entries.get_mut(&(party, id.clone())) {
                Some(mine) if mine.counter >= f.counter => {}
                Some(mine) => {
                    mine.counter = f.counter;
                    mine.announce = f.announce;
                }
                None => {
                    self.make_room();
                    self.entries.insert((party, id), f);
                }
            }
        }
        self.clock = self.clock.max(other.clock);
    }

    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            clock: self.clock,
            entries: self
                .entries
                .iter()
                .map(|((p, id), f)| (*p, id.clone(), *f))
                .collect(),
        };
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        // Encoding our own in-memory values cannot fail (postcard only fails on I/O or length overflow).
        out.extend(postcard::to_allocvec(&wire).unwrap_or_default());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Floors, FloorsError> {
        if bytes.len() < MAGIC.len() + 1 + 4 {
            return Err(FloorsError::TooShort(bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if &body[..MAGIC.len()] != MAGIC {
            return Err(FloorsError::Magic);
        }
        let format = body[MAGIC.len()];
        if format != FORMAT {
            return Err(FloorsError::Format(format));
        }
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(FloorsError::Checksum { stored, computed });
        }
        let (wire, rest): (Wire, _) = postcard::take_from_bytes(&body[MAGIC.len() + 1..])
            .map_err(|e| FloorsError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(FloorsError::Decode(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        if wire.entries.len() > MAX_SENDERS {
            return Err(FloorsError::TooMany(wire.entries.len()));
        }
        let mut entries = BTreeMap::new();
        for (party, id, f) in wire.entries {
            // What `accept` never writes: a retained announce above the floor, a sender seen
            // after the clock, the same sender twice.
            let sane = f.announce.is_none_or(|a| a <= f.counter) && f.seen <= wire.clock;
            if !sane || entries.insert((party, id.clone()), f).is_some() {
                return Err(FloorsError::Inconsistent(id));
            }
        }
        Ok(Floors {
            entries,
            clock: wire.clock,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn random_floors(rng: &mut fastrand::Rng, n: usize) -> Floors {
        let mut f = Floors::new();
        for _ in 0..n {
            let party = if rng.bool() {
                Party::Gateway
            } else {
                Party::Client
            };
            let id = format!("gw-{}", rng.u32(0..1000));
            f.accept(party, &id, rng.u64(..), rng.bool());
        }
        f
    }

    #[test]
    fn round_trips_and_refuses_every_torn_or_flipped_file() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let n = rng.usize(1..40);
        let f = random_floors(&mut rng, n);
        let bytes = f.encode();
        assert_eq!(Floors::decode(&bytes).unwrap(), f, "seed {seed}");
        // Every truncation (a write cut short) and every single-bit flip is refused.
        for n in 0..bytes.len() {
            assert!(
                Floors::decode(&bytes[..n]).is_err(),
                "seed {seed}: cut at {n}"
            );
        }
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 1 << rng.u8(0..8);
            assert!(Floors::decode(&t).is_err(), "seed {seed}: flip at {i}");
        }
        // Random bytes: errors, not panics.
        for _ in 0..2000 {
            let n = rng.usize(0..200);
            let junk: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(n).collect();
            let _ = Floors::decode(&junk);
        }
        assert_eq!(
            Floors::decode(&Floors::new().encode()).unwrap(),
            Floors::new()
        );
    }

    #[test]
    fn a_well_checksummed_but_inconsistent_table_is_refused() {
        let seal = |wire: &Wire| {
            let mut out = MAGIC.to_vec();
            out.push(FORMAT);
            out.extend(postcard::to_allocvec(wire).unwrap());
            let crc = crc32fast::hash(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        };
        let floor = |counter, announce| Floor {
            counter,
            announce,
            seen: 1,
        };
        let dup = Wire {
            clock: 5,
            entries: vec![
                (Party::Gateway, "a".into(), floor(3, None)),
                (Party::Gateway, "a".into(), floor(1, None)),
            ],
        };
        assert!(matches!(
            Floors::decode(&seal(&dup)),
            Err(FloorsError::Inconsistent(_))
        ));
        let above = Wire {
            clock: 5,
            entries: vec![(Party::Gateway, "a".into(), floor(3, Some(4)))],
        };
        assert!(Floors::decode(&seal(&above)).is_err());
        let too_many = Wire {
            clock: 500,
            entries: (0..=MAX_SENDERS)
                .map(|i| (Party::Client, format!("c{i}"), floor(1, None)))
                .collect(),
        };
        assert_eq!(
            Floors::decode(&seal(&too_many)),
            Err(FloorsError::TooMany(MAX_SENDERS + 1))
        );
        let mut other_format = seal(&above);
        other_format[4] = FORMAT + 1;
        assert_eq!(
            Floors::decode(&other_format),
            Err(FloorsError::Format(FORMAT + 1))
        );
    }

    #[test]
    fn floors_only_go_up_and_the_retained_announce_is_remembered() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let mut f = Floors::new();
        let ann = rng.u64(1..1 << 40);
        f.accept(Party::Gateway, "a", ann, true);
        let hb = ann + rng.u64(1..100);
        f.accept(Party::Gateway, "a", hb, false);
        // An older message accepted late (the retained announce) does not lower anything.
        f.accept(Party::Gateway, "a", ann, true);
        assert_eq!(f.get(Party::Gateway, "a").unwrap().counter, hb);
        assert_eq!(
            f.check(Party::Gateway, "a", ann, true),
            Check::RetainedAnnounce
        );
        // The same counter as a heartbeat, or an older announce, is a replay.
        assert_eq!(
            f.check(Party::Gateway, "a", ann, false),
            Check::Replay { last: hb }
        );
        assert_eq!(
            f.check(Party::Gateway, "a", ann - 1, true),
            Check::Replay { last: hb }
        );
        assert_eq!(f.check(Party::Gateway, "a", hb, false), Check::Same);
        assert_eq!(f.check(Party::Gateway, "a", hb + 1, false), Check::Fresh);
        // The client namespace is separate.
        assert_eq!(f.check(Party::Client, "a", 0, false), Check::Fresh);
        f.forget_announce(Party::Gateway, "a");
        assert_eq!(
            f.check(Party::Gateway, "a", ann, true),
            Check::Replay { last: hb }
        );
    }

    #[test]
    fn a_full_table_drops_the_sender_heard_from_longest_ago() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let mut f = Floors::new();
        for i in 0..MAX_SENDERS {
            assert_eq!(f.accept(Party::Gateway, &format!("g{i}"), 1, false), None);
        }
        // Everybody but one speaks again: that one is the oldest.
        let quiet = rng.usize(0..MAX_SENDERS);
        for i in (0..MAX_SENDERS).filter(|&i| i != quiet) {
            f.accept(Party::Gateway, &format!("g{i}"), 2, false);
        }
        assert_eq!(
            f.accept(Party::Client, "new", 1, false),
            Some((Party::Gateway, format!("g{quiet}")))
        );
        assert_eq!(f.len(), MAX_SENDERS);
        assert!(f.get(Party::Client, "new").is_some());
        assert!(f.get(Party::Gateway, &format!("g{quiet}")).is_none());
    }

    #[test]
    fn merging_keeps_the_higher_floor() {
        let mut a = Floors::new();
        a.accept(Party::Gateway, "x", 10, false);
        a.accept(Party::Gateway, "y", 3, false);
        let mut b = Floors::new();
        b.accept(Party::Gateway, "x", 4, true);
        b.accept(Party::Gateway, "y", 7, true);
        b.accept(Party::Client, "z", 9, false);
        a.merge(b);
        assert_eq!(a.get(Party::Gateway, "x").unwrap().counter, 10);
        assert_eq!(a.get(Party::Gateway, "x").unwrap().announce, None);
        assert_eq!(a.get(Party::Gateway, "y").unwrap().announce, Some(7));
        assert_eq!(a.get(Party::Client, "z").unwrap().counter, 9);
        assert_eq!(Floors::decode(&a.encode()).unwrap(), a);
    }
}
