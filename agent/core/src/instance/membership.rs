//! The instance manager's state (paper §II): who is a member, what each shares, how much each is
//! trusted. Pure: every input (bytes from the bus, observations, the clock) is an argument, every
//! consequence is a returned [`Event`].

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use super::floors::{Check, Floors, Party, Urgency};
use super::msg::{self, Body, ClientRequest, Envelope, MsgError, ResourceReport};
use super::trust::{Observation, Trust};
use crate::allocator::{Gateway, InstanceView, Remote, Template};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How often members send heartbeats (the instance's members share one setting).
    pub heartbeat_interval_ms: u64,
    /// A member not heard from for this long is down; its resources are not offered.
    pub heartbeat_timeout_ms: u64,
    /// Below this combined trust for `dismiss_after_ms`, a member is dismissed.
    pub dismiss_threshold: f64,
    pub dismiss_after_ms: u64,
    /// A dismissed gateway's join is refused for this long; after it, it may join again.
    pub readmit_after_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 6_000,
            dismiss_threshold: 0.3,
            dismiss_after_ms: 10_000,
            readmit_after_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Dismissed { at_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Member {
    pub key: VerifyingKey,
    pub state: State,
    /// The highest counter accepted from it (its floor; the replay check uses [`Floors`]).
    pub last_counter: u64,
    pub last_seen_ms: u64,
    pub report: Option<ResourceReport>,
    pub trust: Trust,
    /// Heartbeats on time in a row since the last round was counted.
    pub on_time: u32,
}

/// Heartbeats on time in a row that count as one good observation (a minute at the default
/// interval: trust regained by being there is slow, lost by failing is fast).
pub const ROUND: u32 = 60;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Joined(String),
    /// A member that was down is heard from again.
    Back(String),
    Left(String),
    Down(String),
    Dismissed(String),
    /// A member (re)joining asks the others to announce themselves (see [`super::answer`]).
    JoinRequest(String),
    DeployRequest {
        from: String,
        request: u64,
        template: String,
        res: crate::allocator::Res,
        cloud: Option<String>,
        /// For the guest's start (a cluster's node URLs); empty for most.
        env: Vec<(String, String)>,
        /// Came as a `ClusterDeploy` or a `WarDeploy`: answered with a `ClusterAnswer` (the
        /// guest's URL).
        cluster: bool,
        /// Came as a `WarDeploy`: the application's URL and the sha256 it must have.
        war: Option<(String, String)>,
    },
    DeployAnswer {
        from: String,
        request: u64,
        accepted: bool,
        reason: String,
        vm: String,
        /// Where the guest serves (a cluster's master or storage node).
        url: Option<String>,
    },
    /// Stop one of our VMs (a cluster's scale-down); answered with a `DeployAnswer`.
    ReleaseRequest {
        from: String,
        request: u64,
        vm: String,
    },
}

pub struct Instance {
    me: String,
    instance_key: VerifyingKey,
    settings: Settings,
    members: BTreeMap<String, Member>,
    /// Every sender's replay floor, members or not (a gateway that left or was dismissed keeps
    /// its floor, so its old messages stay refused), and the clients'.
    floors: Floors,
    /// The most urgent reason to persist `floors` since the last [`Instance::take_floors`].
    dirty: Urgency,
    /// Messages not acted on, by [`MsgError::kind`].
    pub rejected: BTreeMap<&'static str, u64>,
    /// Signed messages from senders not known yet, kept until their announce or join arrives
    /// (then verified and taken in counter order) or for `heartbeat_timeout_ms` (then counted
    /// as `unknown-sender`): a restarted gateway hears the members' heartbeats before their
    /// answers to its join, and refuses nothing valid meanwhile.
    held: Vec<Held>,
    held_bytes: usize,
}

/// A message from a sender not known yet.
#[derive(Debug, Clone)]
struct Held {
    from: String,
    counter: u64,
    at_ms: u64,
    bytes: Vec<u8>,
}

/// At most this many messages, and bytes, are held for unknown senders (the oldest go first).
pub const MAX_HELD: usize = 64;
pub const MAX_HELD_BYTES: usize = 256 * 1024;

impl Member {
    /// A gateway just admitted by a verified join: up, no report yet, initial trust.
    fn joined(key: VerifyingKey, counter: u64, now_ms: u64) -> Member {
        Member {
            key,
            state: State::Up,
            last_counter: counter,
            last_seen_ms: now_ms,
            report: None,
            trust: Trust::default(),
            on_time: 0,
        }
    }
}

impl Instance {
    pub fn new(me: &str, instance_key: VerifyingKey, settings: Settings) -> Instance {
        Instance {
            me: me.to_owned(),
            instance_key,
            settings,
            members: BTreeMap::new(),
            floors: Floors::new(),
            dirty: Urgency::None,
            rejected: BTreeMap::new(),
            held: Vec::new(),
            held_bytes: 0,
        }
    }

    /// Messages held for senders not known yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn count_rejected(&mut self, kind: &'static str) {
        *self.rejected.entry(kind).or_default() += 1;
    }

    /// Keeps a message whose sender is not known yet; false if it cannot be (does not decode).
    fn hold(&mut self, bytes: &[u8], now_ms: u64) -> bool {
        let Ok((env, _)) = msg::decode(bytes) else {
            return false;
        };
        while self.held.len() >= MAX_HELD || self.held_bytes + bytes.len() > MAX_HELD_BYTES {
            if self.held.is_empty() {
                return false;
            }
            let old = self.held.remove(0);
            self.held_bytes -= old.bytes.len();
            self.count_rejected("unknown-sender");
        }
        self.held_bytes += bytes.len();
        self.held.push(Held {
            from: env.from,
            counter: env.counter,
            at_ms: now_ms,
            bytes: bytes.to_vec(),
        });
        true
    }

    /// `from` just became known: its held messages, verified and taken in counter order.
    fn release_held(&mut self, from: &str, now_ms: u64) -> Vec<Event> {
        let (mut mine, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.from == from);
        self.held = rest;
        self.held_bytes = self.held.iter().map(|h| h.bytes.len()).sum();
        mine.sort_by_key(|h| h.counter);
        let mut events = Vec::new();
        for h in mine {
            match self.accept(&h.bytes, now_ms) {
                Ok(ev) => events.extend(ev),
                Err(e) => self.count_rejected(e.kind()),
            }
        }
        events
    }

    /// The replay floors as they stand (to persist).
    pub fn floors(&self) -> Floors {
        self.floors.clone()
    }

    /// The floors as they stand, and nothing dirty any more: call when writing them out.
    pub fn take_floors(&mut self) -> Floors {
        self.dirty = Urgency::None;
        self.floors.clone()
    }

    /// How soon the floors should be written: [`Urgency::Now`] before acting on the events of
    /// the message just received.
    pub fn floors_dirty(&self) -> Urgency {
        self.dirty
    }

    /// The floors persisted before a restart (call before the first message). A floor already
    /// higher here is kept.
    pub fn restore_floors(&mut self, floors: Floors) {
        self.floors.merge(floors);
        for (id, m) in &mut self.members {
            if let Some(f) = self.floors.get(Party::Gateway, id) {
                m.last_counter = m.last_counter.max(f.counter);
            }
        }
    }

    /// A client's signed request (see [`msg::verify_client_request`]), addressed to this
    /// gateway, with a counter above the client's floor. Refusals are counted like bus messages.
    pub fn receive_client(&mut self, bytes: &[u8]) -> Result<ClientRequest, MsgError> {
        let r = self.accept_client(bytes);
        if let Err(e) = &r {
            *self.rejected.entry(e.kind()).or_default() += 1;
        }
        r
    }

    fn accept_client(&mut self, bytes: &[u8]) -> Result<ClientRequest, MsgError> {
        let req = msg::verify_client_request(bytes, &self.instance_key, &self.me)?;
        match self
            .floors
            .check(Party::Client, &req.client, req.counter, false)
        {
            Check::Fresh => {}
            // The same request again is refused too: carrying it out twice makes two VMs.
            Check::Same | Check::RetainedAnnounce | Check::Replay { .. } => {
                let last = self
                    .floors
                    .get(Party::Client, &req.client)
                    .map_or(0, |f| f.counter);
                return Err(MsgError::Replay {
                    from: req.client,
                    counter: req.counter,
                    last,
                });
            }
        }
        self.floors
            .accept(Party::Client, &req.client, req.counter, false);
        self.dirty = Urgency::Now;
        Ok(req)
    }

    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// One message from the bus. A message that fails to decode or verify changes nothing and
    /// is counted; a retained message delivered again (same counter) is ignored silently. A
    /// counter at or below the sender's floor is a replay, except the sender's retained announce.
    /// A message from a sender not known yet is held (see [`Instance::held`]): `Ok` with no
    /// events until its sender's announce or join arrives.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<Event>, MsgError> {
        let r = self.accept(bytes, now_ms);
        match &r {
            Err(MsgError::UnknownSender(_)) if self.hold(bytes, now_ms) => Ok(Vec::new()),
            Err(e) => {
                self.count_rejected(e.kind());
                r
            }
            Ok(_) => r,
        }
    }

    fn accept(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<Event>, MsgError> {
        let (env, sig) = msg::decode(bytes)?;
        if env.from == self.me {
            return Ok(Vec::new()); // our own broadcast coming back
        }
        let mut events = Vec::new();
        let key = match (&env.body, self.members.get(&env.from)) {
            // Clients talk to one gateway on its own topic (`receive_client`), never on the bus.
            (Body::ClientRequest { .. }, _) => return Err(MsgError::WrongKind("client-request")),
            (Body::Announce { credential, .. } | Body::Join { credential, .. }, _) => {
                if credential.gateway != env.from {
                    return Err(MsgError::Impersonation {
                        from: env.from,
                        credential: credential.gateway.clone(),
                    });
                }
                credential.verify(&self.instance_key)?
            }
            (_, Some(m)) => m.key,
            (_, None) => return Err(MsgError::UnknownSender(env.from)),
        };
        msg::verify(&env, &sig, &key)?;

        let announce = matches!(env.body, Body::Announce { .. });
        let known = self.members.get(&env.from).map(|m| m.state);
        match self
            .floors
            .check(Party::Gateway, &env.from, env.counter, announce)
        {
            Check::Fresh => {}
            Check::Same | Check::RetainedAnnounce
                if matches!(known, Some(State::Up | State::Down)) =>
            {
                return Ok(Vec::new()); // the same message again (retained re-delivery)
            }
            // The exact announce the broker still holds retained, from a gateway we do not know
            // (we restarted): accepting it again is idempotent and lets a restarted gateway
            // learn the members at once. Leave and dismissal clear it (`forget_announce`).
            Check::RetainedAnnounce if known.is_none() => {}
            Check::Same | Check::RetainedAnnounce | Check::Replay { .. } => {
                let last = self
                    .floors
                    .get(Party::Gateway, &env.from)
                    .map_or(0, |f| f.counter);
                return Err(MsgError::Replay {
                    from: env.from,
                    counter: env.counter,
                    last,
                });
            }
        }

        match self.members.get_mut(&env.from) {
            Some(m) => {
                if let State::Dismissed { at_ms } = m.state {
                    let rejoin = matches!(env.body, Body::Announce { .. } | Body::Join { .. })
                        && now_ms.saturating_sub(at_ms) >= self.settings.readmit_after_ms;
                    if !rejoin {
                        return Err(MsgError::Dismissed(env.from));
                    }
                    // Re-admission through the join procedure: a fresh start, with a fresh key.
                    *m = Member::joined(key, env.counter, now_ms);
                    events.push(Event::Joined(env.from.clone()));
                } else {
                    m.key = key;
                    let gap = now_ms.saturating_sub(m.last_seen_ms);
                    m.last_seen_ms = now_ms;
                    if m.state == State::Down {
                        m.state = State::Up;
                        m.on_time = 0;
                        events.push(Event::Back(env.from.clone()));
                    } else if matches!(env.body, Body::Heartbeat) {
                        // Network quality, from the gaps between what the member sends: a gap
                        // of n intervals stands for n - 1 heartbeats lost or held up.
                        let interval = self.settings.heartbeat_interval_ms.max(1);
                        if gap > 2 * interval {
                            for _ in 1..(gap / interval).min(10) {
                                m.trust.observe(Observation::HeartbeatLate);
                            }
                            m.on_time = 0;
                        } else {
                            m.trust.observe(Observation::HeartbeatOnTime);
                            m.on_time += 1;
                            if m.on_time >= ROUND {
                                m.trust.observe(Observation::HeartbeatRound);
                                m.on_time = 0;
                            }
                        }
                    }
                }
            }
            None => {
                let (Body::Announce { .. } | Body::Join { .. }) = env.body else {
                    return Err(MsgError::UnknownSender(env.from));
                };
                self.members
                    .insert(env.from.clone(), Member::joined(key, env.counter, now_ms));
                events.push(Event::Joined(env.from.clone()));
                // What it sent before we knew it, now that its key is known (before this
                // message's counter raises its floor).
                events.extend(self.release_held(&env.from, now_ms));
            }
        }

        // Accepted: the floor goes up (never down: a retained announce may be older).
        self.floors
            .accept(Party::Gateway, &env.from, env.counter, announce);
        if let (Some(m), Some(f)) = (
            self.members.get_mut(&env.from),
            self.floors.get(Party::Gateway, &env.from),
        ) {
            m.last_counter = f.counter;
        }
        self.dirty = self.dirty.max(Urgency::of(&env.body));

        let from = env.from;
        // Deploy requests and answers name one gateway; one addressed to nobody in particular
        // is not taken as ours (a broadcast request would start a VM on every member).
        let for_me = env.to.as_deref() == Some(self.me.as_str());
        match env.body {
            Body::Announce { report, .. } => {
                if let Some(m) = self.members.get_mut(&from) {
                    m.report = report;
                }
            }
            Body::Join { report, .. } => {
                if let Some(m) = self.members.get_mut(&from) {
                    m.report = report;
                }
                events.push(Event::JoinRequest(from));
            }
            Body::Leave => {
                self.members.remove(&from);
                // Its floor stays; its retained announce no longer brings it back.
                self.floors.forget_announce(Party::Gateway, &from);
                events.push(Event::Left(from));
            }
            Body::Heartbeat => {}
            Body::DeployRequest {
                request,
                template,
                res,
                cloud,
            } if for_me => {
                events.push(Event::DeployRequest {
                    from,
                    request,
                    template,
                    res,
                    cloud,
                    env: Vec::new(),
                    cluster: false,
                    war: None,
                });
            }
            Body::WarDeploy {
                request,
                template,
                res,
                war,
                sha256,
            } if for_me => {
                events.push(Event::DeployRequest {
                    from,
                    request,
                    template,
                    res,
                    cloud: None,
                    env: Vec::new(),
                    cluster: true,
                    war: Some((war, sha256)),
                });
            }
            Body::ClusterDeploy {
                request,
                template,
                res,
                env,
            } if for_me => {
                events.push(Event::DeployRequest {
                    from,
                    request,
                    template,
                    res,
                    cloud: None,
                    env,
                    cluster: true,
                    war: None,
                });
            }
            Body::ClusterAnswer {
                request,
                accepted,
                reason,
                vm,
                url,
            } if for_me => {
                events.push(Event::DeployAnswer {
                    from,
                    request,
                    accepted,
                    reason,
                    vm,
                    url,
                });
            }
            Body::ReleaseRequest { request, vm } if for_me => {
                events.push(Event::ReleaseRequest { from, request, vm });
            }
            Body::ClusterDeploy { .. }
            | Body::ClusterAnswer { .. }
            | Body::ReleaseRequest { .. }
            | Body::WarDeploy { .. } => {}
            Body::DeployAnswer {
                request,
                accepted,
                reason,
                vm,
            } if for_me => {
                events.push(Event::DeployAnswer {
                    from,
                    request,
                    accepted,
                    reason,
                    vm,
                    url: None,
                });
            }
            Body::DeployRequest { .. } | Body::DeployAnswer { .. } => {}
            Body::Trust { scores } => {
                for (about, score) in scores {
                    if about != from {
                        if let Some(m) = self.members.get_mut(&about) {
                            m.trust.report(&from, score);
                        }
                    }
                }
            }
            Body::ClientRequest { .. } => {} // refused above
        }
        Ok(events)
    }

    /// Something this gateway saw another one do.
    pub fn observe(&mut self, gateway: &str, o: Observation) {
        if let Some(m) = self.members.get_mut(gateway) {
            m.trust.observe(o);
        }
    }

    /// The combined trust of a member (0 for strangers).
    pub fn trust(&self, gateway: &str) -> f64 {
        let credible = |r: &str| {
            self.members
                .get(r)
                .is_some_and(|m| matches!(m.state, State::Up | State::Down))
        };
        self.members.get(gateway).map_or(0.0, |m| {
            m.trust
                .score(m.report.as_ref().and_then(|r| r.battery), credible)
        })
    }

    /// Heartbeat timeouts and dismissals, as of `now_ms`. Call about once a second.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        // Held this long and still nobody vouched for the sender: refused after all.
        let timeout = self.settings.heartbeat_timeout_ms;
        let before = self.held.len();
        self.held
            .retain(|h| now_ms.saturating_sub(h.at_ms) <= timeout);
        self.held_bytes = self.held.iter().map(|h| h.bytes.len()).sum();
        for _ in self.held.len()..before {
            self.count_rejected("unknown-sender");
        }
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let score = self.trust(&id);
            let s = self.settings;
            let Some(m) = self.members.get_mut(&id) else {
                continue;
            };
            if m.state == State::Up
                && now_ms.saturating_sub(m.last_seen_ms) > s.heartbeat_timeout_ms
            {
                m.state = State::Down;
                m.trust.observe(Observation::HeartbeatMissed);
                events.push(Event::Down(id.clone()));
            }
            if !matches!(m.state, State::Dismissed { .. })
                && m.trust
                    .below_for(score, s.dismiss_threshold, now_ms, s.dismiss_after_ms)
            {
                m.state = State::Dismissed { at_ms: now_ms };
                m.report = None;
                // Only a fresh announce may re-admit it, not the retained one (after a restart
                // of ours too, since the floors outlive it).
                self.floors.forget_announce(Party::Gateway, &id);
                self.dirty = self.dirty.max(Urgency::Soon);
                events.push(Event::Dismissed(id));
            }
        }
        events
    }

    /// What the allocator decides on: this gateway (from its own live report) and every member
    /// that is up and has reported, with its trust.
    pub fn view(
        &self,
        me: &ResourceReport,
        templates: &[Template],
        remotes: &[Remote],
    ) -> InstanceView {
        let gw = |id: &str, r: &ResourceReport, trust: f64| Gateway {
            id: id.to_owned(),
            capacity: r.capacity,
            used: r.used,
            forecast_free: r.forecast_free,
            virt: r.virt,
            trust,
            battery: r.battery,
            vms: r.vms,
            powerful: r.powerful,
        };
        let mut gateways = vec![gw(&self.me, me, 1.0)];
        let mut clouds = remotes.to_vec();
        for (id, m) in &self.members {
            if let (State::Up, Some(r)) = (m.state, &m.report) {
                gateways.push(gw(id, r, self.trust(id)));
                // A member offers only clouds it holds credentials for: it is their owner.
                clouds.extend(r.remotes.iter().map(|c| Remote {
                    owner: id.clone(),
                    ..c.clone()
                }));
            }
        }
        gateways.sort_by(|a, b| a.id.cmp(&b.id));
        InstanceView {
            gateways,
            templates: templates.to_vec(),
            remotes: clouds,
        }
    }

    /// Our scores of the others, for a `Trust` broadcast (reputation).
    pub fn scores(&self) -> Vec<(String, f64)> {
        self.members
            .iter()
            .map(|(id, m)| (id.clone(), m.trust.direct()))
            .collect()
    }
}

/// Builds a message envelope.
pub fn envelope(from: &str, counter: u64, to: Option<&str>, body: Body) -> Envelope {
    Envelope {
        from: from.to_owned(),
        counter,
        to: to.map(str::to_owned),
        body,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::allocator::{Res, Virt};
    use crate::instance::msg::{encode, Credential};
    use ed25519_dalek::SigningKey;

    struct Gw {
        id: String,
        key: SigningKey,
        cred: Credential,
        counter: u64,
    }

    impl Gw {
        fn new(instance: &SigningKey, id: &str, seed: u8) -> Gw {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let cred = Credential::issue(instance, id, &key.verifying_key());
            Gw {
                id: id.into(),
                key,
                cred,
                counter: 0,
            }
        }
        fn send(&mut self, to: Option<&str>, body: Body) -> Vec<u8> {
            self.counter += 1;
            encode(&self.key, envelope(&self.id, self.counter, to, body))
        }
        fn announce(&mut self, report: Option<ResourceReport>) -> Vec<u8> {
            let credential = self.cred.clone();
            self.send(None, Body::Announce { credential, report })
        }
    }

    fn report(mem_mb: u64) -> ResourceReport {
        ResourceReport {
            capacity: Res::new(2, mem_mb, 8),
            used: Res::default(),
            forecast_free: None,
            virt: Virt::Kvm,
            battery: None,
            vms: 0,
            powerful: true,
            remotes: Vec::new(),
        }
    }

    fn setup() -> (SigningKey, Instance) {
        let instance = SigningKey::from_bytes(&[42; 32]);
        let me = Instance::new("me", instance.verifying_key(), Settings::default());
        (instance, me)
    }

    #[test]
    fn join_share_and_view() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        assert_eq!(
            me.receive(&a.announce(Some(report(1024))), 0).unwrap(),
            vec![Event::Joined("a".into())]
        );
        let v = me.view(&report(2048), &[], &[]);
        assert_eq!(
            v.gateways.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["a", "me"]
        );
        assert_eq!(v.gateways[0].capacity.mem_mb, 1024);
        // A later report replaces the earlier one.
        me.receive(&a.announce(Some(report(512))), 10).unwrap();
        assert_eq!(
            me.view(&report(2048), &[], &[]).gateways[0].capacity.mem_mb,
            512
        );
    }

    #[test]
    fn heartbeats_on_time_earn_trust_and_late_ones_cost_it() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        let mut b = Gw::new(&ik, "b", 2);
        me.receive(&a.announce(None), 0).unwrap();
        me.receive(&b.announce(None), 0).unwrap();
        let start = me.trust("a");
        // a: a round on time (jitter within two intervals); b: the same count, every one late.
        let mut t = 0;
        for i in 0..ROUND {
            t += 1_000 + u64::from(i % 3) * 400;
            me.receive(&a.send(None, Body::Heartbeat), t).unwrap();
        }
        assert!(me.trust("a") > start, "{} !> {start}", me.trust("a"));
        let mut t = 0;
        for _ in 0..ROUND {
            t += 2_500;
            me.receive(&b.send(None, Body::Heartbeat), t).unwrap();
        }
        // b's link is poor: out of the allocator's choice (below 0.5), yet not dismissed (0.3).
        let b_trust = me.trust("b");
        assert!((0.3..0.5).contains(&b_trust), "{b_trust}");
        me.tick(t + 5_000);
        assert_eq!(me.members()["b"].state, State::Up);
    }

    #[test]
    fn members_offer_their_own_clouds_while_up() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        let cloud = |name: &str, owner: &str| Remote {
            name: name.into(),
            provider: crate::allocator::Provider::Openstack,
            max_vms: 3,
            in_use: 1,
            reachable: true,
            owner: owner.into(),
            cost_per_vm: 0.5,
        };
        let mut r = report(1024);
        // A report naming another owner cannot offer that gateway's cloud.
        r.remotes = vec![cloud("campus", "someone-else")];
        me.receive(&a.announce(Some(r)), 0).unwrap();
        let mine = [cloud("home", "me")];
        let v = me.view(&report(1), &[], &mine);
        assert_eq!(v.remotes, vec![cloud("home", "me"), cloud("campus", "a")]);
        // A member down: its clouds are withdrawn with its resources.
        me.tick(6_001);
        assert_eq!(me.view(&report(1), &[], &mine).remotes, mine.to_vec());
    }

    #[test]
    fn strangers_forgers_tamperers_and_replays_are_rejected_and_counted() {
        let (ik, mut me) = setup();
        // No instance credential: a key signed by another "instance".
        let rogue_instance = SigningKey::from_bytes(&[7; 32]);
        let mut rogue = Gw::new(&rogue_instance, "rogue", 2);
        assert_eq!(
            me.receive(&rogue.announce(None), 0),
            Err(MsgError::BadCredential)
        );
        // Someone else's credential under another name.
        let mut a = Gw::new(&ik, "a", 1);
        let mut thief = Gw::new(&ik, "thief", 3);
        thief.cred = a.cred.clone();
        assert!(matches!(
            me.receive(&thief.announce(None), 0),
            Err(MsgError::Impersonation { .. })
        ));
        // A stolen credential with the thief's own key: the signature does not verify.
        let mut b_thief = Gw::new(&ik, "a", 4);
        b_thief.cred = a.cred.clone();
        assert_eq!(
            me.receive(&b_thief.announce(None), 0),
            Err(MsgError::BadSignature)
        );
        // Messages before joining are held until the sender's announce vouches for it.
        assert_eq!(me.receive(&a.send(None, Body::Heartbeat), 0), Ok(vec![]));
        assert_eq!(me.held(), 1);
        me.receive(&a.announce(None), 0).unwrap();
        assert_eq!(me.held(), 0);
        // Tampered: flip a byte in the body.
        let mut t = a.send(None, Body::Heartbeat);
        let n = t.len();
        t[n / 2] ^= 0x40;
        assert!(me.receive(&t, 0).is_err());
        // Replayed.
        let old = a.send(None, Body::Heartbeat);
        me.receive(&a.send(None, Body::Heartbeat), 0).unwrap();
        assert!(matches!(me.receive(&old, 0), Err(MsgError::Replay { .. })));
        assert_eq!(me.rejected["replay"], 1);
        assert_eq!(me.rejected["bad-credential"], 1);
        assert!(!me.rejected.contains_key("unknown-sender"));
        // The same retained message again is not an attack.
        let ann = a.announce(None);
        me.receive(&ann, 0).unwrap();
        assert_eq!(me.receive(&ann, 0).unwrap(), vec![]);
    }

    #[test]
    fn a_join_is_an_announce_that_asks_for_answers() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        let join = |a: &mut Gw, mem| {
            let credential = a.cred.clone();
            a.send(
                None,
                Body::Join {
                    credential,
                    report: Some(report(mem)),
                },
            )
        };
        // A newcomer: it joins and asks.
        assert_eq!(
            me.receive(&join(&mut a, 1024), 0).unwrap(),
            vec![Event::Joined("a".into()), Event::JoinRequest("a".into())]
        );
        assert_eq!(
            me.view(&report(1), &[], &[]).gateways[0].capacity.mem_mb,
            1024
        );
        // A member we know that restarted: it only asks; its report is taken.
        me.receive(&a.send(None, Body::Heartbeat), 500).unwrap();
        assert_eq!(
            me.receive(&join(&mut a, 512), 1_000).unwrap(),
            vec![Event::JoinRequest("a".into())]
        );
        assert_eq!(
            me.view(&report(1), &[], &[]).gateways[0].capacity.mem_mb,
            512
        );
        // A join replayed is refused like any message; one with another's credential too.
        let old = join(&mut a, 1);
        me.receive(&a.send(None, Body::Heartbeat), 1_500).unwrap();
        assert!(matches!(
            me.receive(&old, 1_600),
            Err(MsgError::Replay { .. })
        ));
        let mut thief = Gw::new(&ik, "thief", 3);
        thief.cred = a.cred.clone();
        assert!(matches!(
            me.receive(&join(&mut thief, 1), 1_700),
            Err(MsgError::Impersonation { .. })
        ));
        // A client credential does not join.
        let mut c = Gw::new(&ik, "pc", 5);
        c.cred = Credential::issue_client(&ik, "pc", &c.key.verifying_key());
        assert_eq!(
            me.receive(&join(&mut c, 1), 1_800),
            Err(MsgError::BadCredential)
        );
        assert!(!me.members().contains_key("pc"));
    }

    #[test]
    fn messages_before_the_announce_are_held_then_taken_in_order() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        // A restarted gateway hears a's heartbeat, trust report and a deploy request for it
        // before a's answer to its join: nothing is refused, nothing acted on yet.
        let hb = a.send(None, Body::Heartbeat);
        let req = a.send(
            Some("me"),
            Body::DeployRequest {
                request: 7,
                template: "app".into(),
                res: Res::new(1, 256, 1),
                cloud: None,
            },
        );
        let trust = a.send(None, Body::Trust { scores: vec![] });
        // Out of order on the wire: taken in counter order all the same.
        for m in [&trust, &req, &hb] {
            assert_eq!(me.receive(m, 100), Ok(vec![]));
        }
        assert_eq!(me.held(), 3);
        assert!(me.rejected.is_empty(), "{:?}", me.rejected);
        let events = me.receive(&a.announce(Some(report(1024))), 300).unwrap();
        assert_eq!(events[0], Event::Joined("a".into()));
        assert!(
            matches!(&events[1..], [Event::DeployRequest { request: 7, from, .. }] if from == "a"),
            "{events:?}"
        );
        assert_eq!(me.held(), 0);
        assert!(me.rejected.is_empty(), "{:?}", me.rejected);
        assert_eq!(me.members()["a"].last_counter, a.counter);
        // Held ones are still checked when released: one forged under b's name is refused then.
        let mut b = Gw::new(&ik, "b", 2);
        let mut forger = Gw::new(&ik, "b", 9);
        forger.counter = 10;
        assert_eq!(
            me.receive(&forger.send(None, Body::Heartbeat), 400),
            Ok(vec![])
        );
        assert_eq!(
            me.receive(&b.announce(None), 500).unwrap(),
            vec![Event::Joined("b".into())]
        );
        assert_eq!(me.rejected["bad-signature"], 1);
    }

    #[test]
    fn held_messages_expire_as_unknown_and_are_bounded() {
        let (ik, mut me) = setup();
        let mut stranger = Gw::new(&ik, "s", 1);
        assert_eq!(
            me.receive(&stranger.send(None, Body::Heartbeat), 0),
            Ok(vec![])
        );
        me.tick(6_000);
        assert_eq!(me.held(), 1, "kept for heartbeat_timeout_ms");
        me.tick(6_001);
        assert_eq!(me.held(), 0);
        assert_eq!(me.rejected["unknown-sender"], 1);
        // A flood under made-up names: at most MAX_HELD kept, the oldest refused first.
        for i in 0..(MAX_HELD + 10) {
            let mut g = Gw::new(&ik, &format!("x{i}"), 7);
            assert_eq!(
                me.receive(&g.send(None, Body::Heartbeat), 7_000),
                Ok(vec![])
            );
        }
        assert_eq!(me.held(), MAX_HELD);
        assert_eq!(me.rejected["unknown-sender"], 11);
        // Undecodable bytes are refused at once, never held.
        assert!(me.receive(&[msg::VERSION, 0xff], 7_000).is_err());
        assert_eq!(me.held(), MAX_HELD);
    }

    #[test]
    fn silence_means_down_then_back() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        me.receive(&a.announce(Some(report(1024))), 0).unwrap();
        assert_eq!(me.tick(6_000), vec![]);
        assert_eq!(me.tick(6_001), vec![Event::Down("a".into())]);
        assert_eq!(
            me.view(&report(1), &[], &[]).gateways.len(),
            1,
            "a down gateway's resources are withdrawn"
        );
        assert_eq!(
            me.receive(&a.send(None, Body::Heartbeat), 7_000).unwrap(),
            vec![Event::Back("a".into())]
        );
        assert_eq!(me.view(&report(1), &[], &[]).gateways.len(), 2);
    }

    #[test]
    fn failing_gateway_is_dismissed_ignored_and_readmitted_only_by_joining_later() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        me.receive(&a.announce(Some(report(1024))), 0).unwrap();
        for _ in 0..4 {
            me.observe("a", Observation::DeployFailed);
        }
        assert!(me.trust("a") < 0.3);
        assert_eq!(me.tick(1_000), vec![]);
        me.receive(&a.send(None, Body::Heartbeat), 5_000).unwrap();
        assert_eq!(me.tick(11_000), vec![Event::Dismissed("a".into())]);
        assert_eq!(
            me.receive(&a.send(None, Body::Heartbeat), 11_500),
            Err(MsgError::Dismissed("a".into()))
        );
        assert_eq!(
            me.receive(&a.announce(None), 12_000),
            Err(MsgError::Dismissed("a".into()))
        );
        assert_eq!(me.view(&report(1), &[], &[]).gateways.len(), 1);
        assert_eq!(
            me.receive(&a.announce(Some(report(1024))), 71_000).unwrap(),
            vec![Event::Joined("a".into())]
        );
        assert!((me.trust("a") - crate::instance::trust::INITIAL).abs() < 1e-9);
    }

    #[test]
    fn cluster_deploys_answers_and_releases_reach_only_their_addressee() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        me.receive(&a.announce(None), 0).unwrap();
        let env = vec![(
            "SPARK_MASTER".to_owned(),
            "spark://10.0.0.5:7077".to_owned(),
        )];
        let bodies = [
            Body::ClusterDeploy {
                request: 6,
                template: "bigdata-compute".into(),
                res: Res::new(1, 1024, 2),
                env: env.clone(),
            },
            Body::ClusterAnswer {
                request: 7,
                accepted: true,
                reason: String::new(),
                vm: "m1".into(),
                url: Some("spark://10.0.0.5:7077".into()),
            },
            Body::ReleaseRequest {
                request: 8,
                vm: "w1".into(),
            },
            Body::WarDeploy {
                request: 9,
                template: "app".into(),
                res: Res::new(1, 512, 2),
                war: "http://10.0.0.9/app.war".into(),
                sha256: "ab".repeat(32),
            },
        ];
        for body in &bodies {
            assert_eq!(
                me.receive(&a.send(Some("other"), body.clone()), 0).unwrap(),
                vec![]
            );
        }
        let got: Vec<Event> = bodies
            .into_iter()
            .flat_map(|b| me.receive(&a.send(Some("me"), b), 0).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                Event::DeployRequest {
                    from: "a".into(),
                    request: 6,
                    template: "bigdata-compute".into(),
                    res: Res::new(1, 1024, 2),
                    cloud: None,
                    env,
                    cluster: true,
                    war: None,
                },
                Event::DeployAnswer {
                    from: "a".into(),
                    request: 7,
                    accepted: true,
                    reason: String::new(),
                    vm: "m1".into(),
                    url: Some("spark://10.0.0.5:7077".into()),
                },
                Event::ReleaseRequest {
                    from: "a".into(),
                    request: 8,
                    vm: "w1".into(),
                },
                Event::DeployRequest {
                    from: "a".into(),
                    request: 9,
                    template: "app".into(),
                    res: Res::new(1, 512, 2),
                    cloud: None,
                    env: Vec::new(),
                    cluster: true,
                    war: Some(("http://10.0.0.9/app.war".into(), "ab".repeat(32))),
                },
            ]
        );
    }

    #[test]
    fn deploy_messages_reach_only_their_addressee() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        me.receive(&a.announce(None), 0).unwrap();
        let body = Body::DeployRequest {
            request: 5,
            template: "app".into(),
            res: Res::new(1, 256, 1),
            cloud: None,
        };
        assert_eq!(
            me.receive(&a.send(Some("other"), body.clone()), 0).unwrap(),
            vec![]
        );
        assert_eq!(
            me.receive(&a.send(Some("me"), body), 0).unwrap(),
            vec![Event::DeployRequest {
                from: "a".into(),
                request: 5,
                template: "app".into(),
                res: Res::new(1, 256, 1),
                cloud: None,
                env: Vec::new(),
                cluster: false,
                war: None,
            }]
        );
    }

    fn deploy(request: u64) -> Body {
        Body::DeployRequest {
            request,
            template: "app".into(),
            res: Res::new(1, 256, 1),
            cloud: None,
        }
    }

    /// `me` restarted: a new instance with the floors `before` persisted, through their encoding.
    fn restarted(before: &Instance) -> Instance {
        let (_, mut after) = setup();
        let bytes = before.floors().encode();
        after.restore_floors(Floors::decode(&bytes).unwrap());
        after
    }

    #[test]
    fn replay_after_a_restart_is_refused_but_the_retained_announce_is_not() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        a.counter = rng.u64(..1 << 40);
        let old_announce = a.announce(Some(report(256)));
        me.receive(&old_announce, 0).unwrap();
        let retained = a.announce(Some(report(1024)));
        me.receive(&retained, 0).unwrap();
        let mut old = Vec::new();
        for i in 0..rng.usize(1..20) {
            let m = if rng.bool() {
                a.send(Some("me"), deploy(i as u64))
            } else {
                a.send(None, Body::Heartbeat)
            };
            me.receive(&m, 0).unwrap();
            old.push(m);
        }
        let mut after = restarted(&me);
        // The retained announce teaches the restarted gateway the member and its report at once.
        assert_eq!(
            after.receive(&retained, 0).unwrap(),
            vec![Event::Joined("a".into())],
            "seed {seed}"
        );
        assert_eq!(
            after.view(&report(1), &[], &[]).gateways[0].capacity.mem_mb,
            1024
        );
        // Everything sent before the restart, and an older announce, is refused; the last one
        // (at the floor) is a duplicate delivery: ignored, as before the restart.
        let (last, older) = old.split_last().unwrap();
        for m in older.iter().chain([&old_announce]) {
            let r = after.receive(m, 0);
            assert!(
                matches!(r, Err(MsgError::Replay { .. })),
                "seed {seed}: {r:?}"
            );
        }
        assert_eq!(after.rejected["replay"], older.len() as u64 + 1);
        assert_eq!(after.receive(last, 0), Ok(vec![]));
        // New messages are taken.
        after.receive(&a.send(None, Body::Heartbeat), 0).unwrap();
        // Control: without the floors, the captured deploy requests act again.
        let (_, mut forgetful) = setup();
        forgetful.receive(&retained, 0).unwrap();
        let acted = old
            .iter()
            .filter(|m| {
                forgetful
                    .receive(m, 0)
                    .unwrap()
                    .iter()
                    .any(|e| matches!(e, Event::DeployRequest { .. }))
            })
            .count();
        let deploys = old
            .iter()
            .filter(|m| matches!(msg::decode(m).unwrap().0.body, Body::DeployRequest { .. }))
            .count();
        assert_eq!(acted, deploys);
    }

    #[test]
    fn a_gateway_that_left_or_was_dismissed_stays_out_until_it_announces_again() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        let retained = a.announce(Some(report(1024)));
        me.receive(&retained, 0).unwrap();
        let hb = a.send(None, Body::Heartbeat);
        me.receive(&hb, 0).unwrap();
        assert_eq!(
            me.receive(&a.send(None, Body::Leave), 0).unwrap(),
            vec![Event::Left("a".into())]
        );
        // Its retained announce (not cleared yet, or replayed) and older messages: refused, now
        // and after a restart.
        let mut after = restarted(&me);
        for inst in [&mut me, &mut after] {
            assert!(matches!(
                inst.receive(&retained, 0),
                Err(MsgError::Replay { .. })
            ));
            assert!(inst.members().is_empty());
        }
        // A new announce is a new join.
        assert_eq!(
            me.receive(&a.announce(None), 0).unwrap(),
            vec![Event::Joined("a".into())]
        );

        // Dismissed: after the readmission delay only a fresh announce re-admits it.
        let mut b = Gw::new(&ik, "b", 2);
        let retained = b.announce(None);
        me.receive(&retained, 0).unwrap();
        for _ in 0..4 {
            me.observe("b", Observation::DeployFailed);
        }
        me.tick(1_000);
        me.receive(&b.send(None, Body::Heartbeat), 5_000).unwrap();
        me.tick(11_000);
        assert!(matches!(me.members()["b"].state, State::Dismissed { .. }));
        assert!(matches!(
            me.receive(&retained, 80_000),
            Err(MsgError::Replay { .. })
        ));
        let mut after = restarted(&me);
        assert!(matches!(
            after.receive(&retained, 0),
            Err(MsgError::Replay { .. })
        ));
        assert_eq!(
            me.receive(&b.announce(None), 80_000).unwrap(),
            vec![Event::Joined("b".into())]
        );
    }

    #[test]
    fn floors_ask_to_be_written_now_only_for_messages_that_act() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        assert_eq!(me.floors_dirty(), Urgency::None);
        let ann = a.announce(None);
        me.receive(&ann, 0).unwrap();
        assert_eq!(me.floors_dirty(), Urgency::Soon);
        me.receive(&a.send(None, Body::Heartbeat), 0).unwrap();
        assert_eq!(me.floors_dirty(), Urgency::Soon);
        let taken = me.take_floors();
        assert_eq!(taken, me.floors());
        assert_eq!(me.floors_dirty(), Urgency::None);
        // Nothing accepted, nothing to write.
        me.receive(&ann, 0).unwrap();
        let _ = me.receive(&[1, 2, 3], 0);
        assert_eq!(me.floors_dirty(), Urgency::None);
        // A deploy request, even for another gateway, or an answer, or a leave: now.
        for body in [
            deploy(1),
            Body::DeployAnswer {
                request: 1,
                accepted: true,
                reason: String::new(),
                vm: "vm-1".into(),
            },
            Body::Leave,
        ] {
            me.take_floors();
            me.receive(&a.send(Some("other"), body), 0).unwrap();
            assert_eq!(me.floors_dirty(), Urgency::Now);
        }
        // Heartbeats after a deploy do not lower the urgency.
        me.receive(&a.announce(None), 0).unwrap();
        me.receive(&a.send(Some("me"), deploy(2)), 0).unwrap();
        me.receive(&a.send(None, Body::Heartbeat), 0).unwrap();
        assert_eq!(me.floors_dirty(), Urgency::Now);
    }

    #[test]
    fn deploy_answers_for_another_gateway_or_nobody_are_not_ours() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        me.receive(&a.announce(None), 0).unwrap();
        let answer = Body::DeployAnswer {
            request: fastrand::u64(..),
            accepted: true,
            reason: String::new(),
            vm: "vm-1".into(),
        };
        for to in [Some("other"), None] {
            assert_eq!(me.receive(&a.send(to, answer.clone()), 0).unwrap(), vec![]);
            assert_eq!(me.receive(&a.send(to, deploy(3)), 0).unwrap(), vec![]);
        }
        let got = me.receive(&a.send(Some("me"), answer), 0).unwrap();
        assert!(matches!(&got[..], [Event::DeployAnswer { from, .. }] if from == "a"));
    }

    fn client_request(ik: &SigningKey, counter: u64, to: &str, request: &str) -> Vec<u8> {
        let key = SigningKey::from_bytes(&[77; 32]);
        let credential = Credential::issue_client(ik, "pc", &key.verifying_key());
        encode(
            &key,
            envelope(
                "pc",
                counter,
                Some(to),
                Body::ClientRequest {
                    credential,
                    request: request.into(),
                },
            ),
        )
    }

    #[test]
    fn client_requests_are_taken_once_even_across_a_restart() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let (ik, mut me) = setup();
        let base = rng.u64(..1 << 40);
        let first = client_request(&ik, base, "me", r#"{"id":"r1","template":"app"}"#);
        let got = me.receive_client(&first).unwrap();
        assert_eq!((got.client.as_str(), got.counter), ("pc", base));
        assert_eq!(got.request, r#"{"id":"r1","template":"app"}"#);
        assert_eq!(me.floors_dirty(), Urgency::Now);
        // The same request again, or an older one: refused and counted.
        assert!(matches!(
            me.receive_client(&first),
            Err(MsgError::Replay { .. })
        ));
        let older = client_request(&ik, base - 1, "me", "{}");
        assert!(matches!(
            me.receive_client(&older),
            Err(MsgError::Replay { .. })
        ));
        assert_eq!(me.rejected["replay"], 2);
        let later = base + rng.u64(1..1000);
        let second = client_request(&ik, later, "me", "{}");
        me.receive_client(&second).unwrap();
        // After a restart, still refused.
        let mut after = restarted(&me);
        for m in [&first, &second] {
            assert!(matches!(
                after.receive_client(m),
                Err(MsgError::Replay { .. })
            ));
        }
        after
            .receive_client(&client_request(&ik, later + 1, "me", "{}"))
            .unwrap();
        // For another gateway.
        assert!(matches!(
            after.receive_client(&client_request(&ik, later + 2, "gw2", "{}")),
            Err(MsgError::NotForMe { .. })
        ));
        assert_eq!(after.rejected["not-for-me"], 1);
        // A client's floor is not a gateway's: a gateway named "pc" is unaffected.
        let mut pc = Gw::new(&ik, "pc", 3);
        pc.counter = 0;
        after.receive(&pc.announce(None), 0).unwrap();
    }

    #[test]
    fn client_and_gateway_credentials_stay_in_their_lanes() {
        let (ik, mut me) = setup();
        // A client credential in an announce: not a member.
        let mut c = Gw::new(&ik, "pc", 5);
        c.cred = Credential::issue_client(&ik, "pc", &c.key.verifying_key());
        assert_eq!(
            me.receive(&c.announce(None), 0),
            Err(MsgError::BadCredential)
        );
        assert!(me.members().is_empty());
        // A gateway credential in a client request: refused.
        let mut a = Gw::new(&ik, "a", 1);
        let credential = a.cred.clone();
        let req = a.send(
            Some("me"),
            Body::ClientRequest {
                credential,
                request: "{}".into(),
            },
        );
        assert_eq!(me.receive_client(&req), Err(MsgError::BadCredential));
        // A client request on the bus, even from a member, is not acted on.
        me.receive(&a.announce(None), 0).unwrap();
        assert_eq!(
            me.receive(&client_request(&ik, 1, "me", "{}"), 0),
            Err(MsgError::WrongKind("client-request"))
        );
        // A bus message where a client request is expected.
        assert_eq!(
            me.receive_client(&a.send(Some("me"), Body::Heartbeat)),
            Err(MsgError::WrongKind("heartbeat"))
        );
        assert_eq!(me.rejected["bad-credential"], 2);
        assert_eq!(me.rejected["wrong-kind"], 2);
    }

    #[test]
    fn reputation_from_members_moves_trust() {
        let (ik, mut me) = setup();
        let mut a = Gw::new(&ik, "a", 1);
        let mut b = Gw::new(&ik, "b", 2);
        me.receive(&a.announce(None), 0).unwrap();
        me.receive(&b.announce(None), 0).unwrap();
        let before = me.trust("b");
        me.receive(
            &a.send(
                None,
                Body::Trust {
                    scores: vec![("b".into(), 0.0), ("a".into(), 1.0)],
                },
            ),
            0,
        )
        .unwrap();
        assert!(me.trust("b") < before);
        // Nobody vouches for themselves.
        assert!((me.trust("a") - 0.8).abs() < 1e-9);
    }
}
