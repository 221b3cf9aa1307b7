//! GPIO things: a digital input (PIR, door contact) as debounced edge events, and a digital
//! output (relay, LED) as an actuator with idempotent commands.
//!
//! Both go through the Linux GPIO character device (`/dev/gpiochipN`, kernel
//! Documentation/userspace-api/gpio/chardev_v1.rst): the input requests a line with
//! GPIOEVENT_REQUEST_BOTH_EDGES and blocks on its event fd, so nothing polls the pin; the output
//! is linux-embedded-hal's `CdevPin` behind embedded-hal's `OutputPin`.
//!
//! The logic is pure and takes time and levels as arguments: [`Debouncer`] (input),
//! [`Command`] parsing and [`Output`] (active-low mapping, toggle, idempotence by command id).
//! [`GpioInput`] and [`Relay`] are the thin I/O shells around them.
//!
//! `active_low` is applied here, never with the kernel's GPIOHANDLE_REQUEST_ACTIVE_LOW flag:
//! linux-embedded-hal 0.4's `CdevPin` inverts again when the line info says active-low, so using
//! both would cancel out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embedded_hal::digital::{OutputPin, PinState};
use gpio_cdev::{Chip, EventRequestFlags, LineEventHandle, LineRequestFlags};

use super::command::{CommandValue, Dedup};
use super::spec::{Actuator, Bus, Component, DriverSpec, Key, Opening, Quantity, Run};

/// A digital input (`driver = "gpio-in"`): every debounced edge is a reading, 1 active, 0 not.
pub const IN: DriverSpec = DriverSpec {
    name: "gpio-in",
    bus: Bus::Gpio,
    requires: &["device", "line"],
    keys: &[Key {
        name: "debounce_ms",
        default: 20.0,
        min: 0.0,
        min_exclusive: false,
        max: f64::MAX,
        unit: "ms",
    }],
    quantities: &[Quantity::own("", None)],
    component: Component::BinarySensor,
    range: None,
    run: Run::Watch,
};

/// A digital output (`driver = "gpio-out"`): a relay or LED, on/off/toggle commands.
pub const OUT: DriverSpec = DriverSpec {
    name: "gpio-out",
    bus: Bus::Gpio,
    requires: &["device", "line"],
    keys: &[],
    quantities: &[Quantity::own("", None)],
    component: Component::Switch,
    range: None,
    run: Run::Actuate(open_relay),
};

fn open_relay(o: &Opening) -> Result<Box<dyn Actuator>, String> {
    let pin =
        open_output(&o.device, o.line, o.active_low, "betaas-agent").map_err(|e| e.to_string())?;
    let relay = Relay::new(pin, o.active_low, 1).map_err(|e| e.to_string())?;
    Ok(Box::new(Switch(relay, 0)))
}

/// The relay and the id its next command gets.
struct Switch(Relay<linux_embedded_hal::CdevPin>, u64);

impl Actuator for Switch {
    fn state(&mut self) -> Result<serde_json::Value, String> {
        Ok(serde_json::json!(self.0.is_on()))
    }

    fn apply(&mut self, value: &CommandValue) -> Result<serde_json::Value, String> {
        let cmd = Command::parse(&value.to_json()).map_err(|e| e.to_string())?;
        // Ids are deduplicated by command::process; the relay gets a fresh one each time.
        self.1 += 1;
        self.0
            .execute(&self.1.to_string(), cmd)
            .map(|on| serde_json::json!(on))
            .map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Input: debounce state machine (pure)
// ---------------------------------------------------------------------------------------------

/// A debounced state change of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Logical level after `active_low`: true = contact closed / motion.
    pub active: bool,
    /// When the line went quiet at this level, in the caller's clock (ns).
    pub at_ns: u64,
}

/// Accepts a level only after the line has seen no edge for `window_ns`: contacts and PIR
/// outputs bounce for a few ms, and each bounce is an edge event. After the quiet period the
/// shell samples the line and passes that level to [`Debouncer::settle`]; sampling (rather than
/// trusting the last edge's direction) stays right when the kernel's 16-event FIFO overflowed.
#[derive(Debug, Clone)]
pub struct Debouncer {
    stable: bool,
    last_edge_ns: Option<u64>,
    window_ns: u64,
}

impl Debouncer {
    pub fn new(initial: bool, window: Duration) -> Self {
        Debouncer {
            stable: initial,
            last_edge_ns: None,
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The last accepted level.
    pub fn stable(&self) -> bool {
        self.stable
    }

    /// An edge at `t_ns` (either direction): restarts the quiet period.
    pub fn edge(&mut self, t_ns: u64) {
        self.last_edge_ns = Some(t_ns);
    }

    /// When the line will have been quiet long enough; None when nothing is pending.
    pub fn deadline(&self) -> Option<u64> {
        self.last_edge_ns.map(|t| t.saturating_add(self.window_ns))
    }

    /// Offers the sampled `level` at `now_ns`. Before the deadline nothing happens; at or after
    /// it the pending edges are resolved and a [`Change`] is returned if the level differs
    /// from the last accepted one (a bounce that returned to the old level is no change).
    pub fn settle(&mut self, level: bool, now_ns: u64) -> Option<Change> {
        let deadline = self.deadline()?;
        if now_ns < deadline {
            return None;
        }
        self.last_edge_ns = None;
        if level == self.stable {
            return None;
        }
        self.stable = level;
        Some(Change {
            active: level,
            at_ns: deadline,
        })
    }
}

/// Raw line value (0/1 as the kernel reports it) → logical level.
pub fn logical(raw: u8, active_low: bool) -> bool {
    (raw != 0) != active_low
}

// ---------------------------------------------------------------------------------------------
// Output: commands and idempotence (pure)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    On,
    Off,
    Toggle,
}

pub const ACCEPTED_COMMANDS: &str = "\"on\", \"off\", \"toggle\" (any case), true or false";
/// Command ids are echoed back and remembered; a cap keeps a hostile client from making the
/// agent store megabytes per id.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0}: accepted are {ACCEPTED_COMMANDS}")]
    Unknown(String),
    #[error("command id is empty")]
    EmptyId,
    #[error("command id is {0} bytes long, at most {MAX_ID_LEN} are accepted")]
    IdTooLong(usize),
}

impl Command {
    /// Parses the `state` of a set command: a string (Home Assistant sends "ON"/"OFF") or a bool.
    pub fn parse(v: &serde_json::Value) -> Result<Command, CommandError> {
        match v {
            serde_json::Value::Bool(true) => Ok(Command::On),
            serde_json::Value::Bool(false) => Ok(Command::Off),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("on") => Ok(Command::On),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("off") => Ok(Command::Off),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("toggle") => Ok(Command::Toggle),
            other => {
                // Echo at most a short prefix: the payload may be huge.
                let mut shown = other.to_string();
                if shown.len() > 40 {
                    let cut = (0..=40)
                        .rev()
                        .find(|&i| shown.is_char_boundary(i))
                        .unwrap_or(0);
                    shown.truncate(cut);
                    shown.push('…');
                }
                Err(CommandError::Unknown(shown))
            }
        }
    }
}

pub fn check_id(id: &str) -> Result<(), CommandError> {
    match id.len() {
        0 => Err(CommandError::EmptyId),
        n if n > MAX_ID_LEN => Err(CommandError::IdTooLong(n)),
        _ => Ok(()),
    }
}

/// What the shell must do for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Drive the pin to `level`, then call [`Output::commit`] with `on`.
    Write { on: bool, level: PinState },
    /// This id was already applied: do nothing, report the state it produced.
    Duplicate { on: bool },
}

/// The actuator's logical state and a bounded memory of recently applied command ids. MQTT
/// QoS 1 redelivers a command after a reconnect; without the memory a redelivered "toggle"
/// would switch the relay back.
#[derive(Debug, Clone)]
pub struct Output {
    on: bool,
    active_low: bool,
    /// Command id → the state it produced.
    applied: Dedup<bool>,
}

impl Output {
    /// Starts off. `capacity` ids are remembered (at least 1).
    pub fn new(active_low: bool, capacity: usize) -> Self {
        Output {
            on: false,
            active_low,
            applied: Dedup::new(capacity),
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The electrical level that means `on`.
    pub fn level(&self, on: bool) -> PinState {
        PinState::from(on != self.active_low)
    }

    pub fn plan(&self, id: &str, cmd: Command) -> Result<Plan, CommandError> {
        check_id(id)?;
        if let Some(&on) = self.applied.get(id) {
            return Ok(Plan::Duplicate { on });
        }
        let on = match cmd {
            Command::On => true,
            Command::Off => false,
            Command::Toggle => !self.on,
        };
        Ok(Plan::Write {
            on,
            level: self.level(on),
        })
    }

    /// Records a command whose write succeeded. A failed write is not committed, so the same
    /// id can be retried.
    pub fn commit(&mut self, id: &str, on: bool) {
        self.on = on;
        self.applied.remember(id, on);
    }
}

// ---------------------------------------------------------------------------------------------
// I/O shells
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("{chip}: line {line}: {source}")]
    Cdev {
        chip: PathBuf,
        line: u32,
        #[source]
        source: gpio_cdev::errors::Error,
    },
    #[error("{chip}: line {line}: waiting for an edge: {source}")]
    Poll {
        chip: PathBuf,
        line: u32,
        #[source]
        source: nix::Error,
    },
}

/// The output pin failed; the command was not applied.
#[derive(Debug, thiserror::Error)]
#[error("setting the output pin: {0:?}")]
pub struct PinError<E: std::fmt::Debug>(pub E);

/// A relay/LED on any embedded-hal output pin.
pub struct Relay<P> {
    pin: P,
    logic: Output,
}

impl<P: OutputPin> Relay<P> {
    /// Drives the pin to "off" first, so the actuator's state is known from the start.
    pub fn new(mut pin: P, active_low: bool, id_memory: usize) -> Result<Self, PinError<P::Error>> {
        let logic = Output::new(active_low, id_memory);
        pin.set_state(logic.level(false)).map_err(PinError)?;
        Ok(Relay { pin, logic })
    }

    pub fn is_on(&self) -> bool {
        self.logic.is_on()
    }

    /// Validates, applies once per id, and returns the resulting logical state.
    pub fn execute(&mut self, id: &str, cmd: Command) -> Result<bool, RelayError<P::Error>> {
        match self.logic.plan(id, cmd).map_err(RelayError::Command)? {
            Plan::Duplicate { on } => Ok(on),
            Plan::Write { on, level } => {
                self.pin
                    .set_state(level)
                    .map_err(|e| RelayError::Pin(PinError(e)))?;
                self.logic.commit(id, on);
                Ok(on)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError<E: std::fmt::Debug> {
    #[error(transparent)]
    Command(CommandError),
    #[error(transparent)]
    Pin(PinError<E>),
}

/// Requests `line` of `chip` as an output for [`Relay`], driven to `off` from the first instant.
pub fn open_output(
    chip: &Path,
    line: u32,
    active_low: bool,
    consumer: &str,
) -> Result<linux_embedded_hal::CdevPin, GpioError> {
    let err = |source| GpioError::Cdev {
        chip: chip.to_owned(),
        line,
        source,
    };
    let off = u8::from(active_low);
    let handle = Chip::new(chip)
        .and_then(|mut c| c.get_line(line))
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, off, consumer))
        .map_err(err)?;
    linux_embedded_hal::CdevPin::new(handle).map_err(err)
}

/// A debounced digital input fed by the kernel's edge events.
pub struct GpioInput {
    chip: PathBuf,
    line: u32,
    active_low: bool,
    events: LineEventHandle,
    debounce: Debouncer,
    origin: Instant,
}

impl GpioInput {
    pub fn open(
        chip: &Path,
        line: u32,
        active_low: bool,
        debounce: Duration,
        consumer: &str,
    ) -> Result<Self, GpioError> {
        let err = |source| GpioError::Cdev {
            chip: chip.to_owned(),
            line,
            source,
        };
        let events = Chip::new(chip)
            .and_then(|mut c| c.get_line(line))
            .and_then(|l| {
                l.events(
                    LineRequestFlags::INPUT,
                    EventRequestFlags::BOTH_EDGES,
                    consumer,
                )
            })
            .map_err(err)?;
        let initial = logical(events.get_value().map_err(err)?, active_low);
        Ok(GpioInput {
            chip: chip.to_owned(),
            line,
            active_low,
            events,
            debounce: Debouncer::new(initial, debounce),
            origin: Instant::now(),
        })
    }

    /// The last debounced level.
    pub fn active(&self) -> bool {
        self.debounce.stable()
    }

    /// Blocks until the next debounced change, or returns None after `give_up` without one
    /// (so a caller in `spawn_blocking` can check for shutdown).
    ///
    /// Time is `Instant` (CLOCK_MONOTONIC), not the events' kernel timestamps: those are
    /// CLOCK_REALTIME before Linux 5.7, and only the quiet period matters here.
    pub fn next_change(&mut self, give_up: Duration) -> Result<Option<Change>, GpioError> {
        let give_up_at = self.now_ns().saturating_add(duration_ns(give_up));
        loop {
            let now = self.now_ns();
            let until = self
                .debounce
                .deadline()
                .unwrap_or(give_up_at)
                .min(give_up_at);
            let timeout_ms =
                i32::try_from(until.saturating_sub(now).div_ceil(1_000_000)).unwrap_or(i32::MAX);
            let ready = {
                let mut fds = [nix::poll::PollFd::new(
                    self.events.file(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, timeout_ms) {
                    Ok(n) => n > 0,
                    Err(nix::Error::EINTR) => continue,
                    Err(source) => {
                        return Err(GpioError::Poll {
                            chip: self.chip.clone(),
                            line: self.line,
                            source,
                        })
                    }
                }
            };
            if ready {
                self.events.get_event().map_err(|e| self.cdev_err(e))?;
                let t = self.now_ns();
                self.debounce.edge(t);
                continue;
            }
            let now = self.now_ns();
            if self.debounce.deadline().is_some_and(|d| now >= d) {
                let raw = self.events.get_value().map_err(|e| self.cdev_err(e))?;
                if let Some(change) = self.debounce.settle(logical(raw, self.active_low), now) {
                    return Ok(Some(change));
                }
            }
            if now >= give_up_at {
                return Ok(None);
            }
        }
    }

    fn now_ns(&self) -> u64 {
        duration_ns(self.origin.elapsed())
    }

    fn cdev_err(&self, source: gpio_cdev::errors::Error) -> GpioError {
        GpioError::Cdev {
            chip: self.chip.clone(),
            line: self.line,
            source,
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction as Pin};
    use embedded_hal_mock::eh1::MockError;
    use serde_json::json;

    const MS: u64 = 1_000_000;

    fn deb(initial: bool, ms: u64) -> Debouncer {
        Debouncer::new(initial, Duration::from_millis(ms))
    }

    #[test]
    fn nothing_pending_means_no_deadline_and_no_change() {
        let mut d = deb(false, 20);
        assert_eq!(d.deadline(), None);
        // Sampling without an edge never produces a change, whatever the level.
        assert_eq!(d.settle(true, 1_000 * MS), None);
        assert!(!d.stable());
    }

    #[test]
    fn a_clean_edge_is_accepted_after_the_quiet_period() {
        let mut d = deb(false, 20);
        d.edge(100 * MS);
        assert_eq!(d.deadline(), Some(120 * MS));
        assert_eq!(d.settle(true, 119 * MS), None, "too early");
        assert_eq!(
            d.settle(true, 120 * MS),
            Some(Change {
                active: true,
                at_ns: 120 * MS
            })
        );
        assert!(d.stable());
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn bounces_restart_the_window_and_only_the_final_level_counts() {
        let mut d = deb(false, 20);
        // A contact closing with 5 bounces 3 ms apart.
        for i in 0..5 {
            d.edge((100 + 3 * i) * MS);
            assert_eq!(d.settle(i % 2 == 0, (101 + 3 * i) * MS), None);
        }
        assert_eq!(d.deadline(), Some(132 * MS));
        assert_eq!(d.settle(true, 131 * MS), None);
        assert_eq!(d.settle(true, 140 * MS).map(|c| c.active), Some(true));
    }

    #[test]
    fn a_glitch_back_to_the_old_level_is_no_change() {
        let mut d = deb(true, 10);
        d.edge(5 * MS);
        d.edge(6 * MS);
        assert_eq!(d.settle(true, 50 * MS), None);
        assert!(d.stable());
        assert_eq!(d.deadline(), None, "the pending edge is resolved");
    }

    #[test]
    fn exhaustive_edge_patterns_match_a_reference_model() {
        // Every pattern of edges over 12 one-ms slots, window 3 ms, the line level flipping at
        // each edge and sampled at every slot: the debouncer reports a change exactly when the
        // level has been steady for the window and differs from the last report.
        for pattern in 0u32..(1 << 12) {
            let mut d = deb(false, 3);
            let (mut level, mut reported, mut last_edge) = (false, false, None::<u64>);
            for slot in 0..16u64 {
                let t = slot * MS;
                if slot < 12 && pattern & (1 << slot) != 0 {
                    level = !level;
                    d.edge(t);
                    last_edge = Some(t);
                }
                let expect = match last_edge {
                    Some(e) if t >= e + 3 * MS => {
                        last_edge = None;
                        (level != reported).then(|| {
                            reported = level;
                            Change {
                                active: level,
                                at_ns: e + 3 * MS,
                            }
                        })
                    }
                    _ => None,
                };
                assert_eq!(
                    d.settle(level, t),
                    expect,
                    "pattern {pattern:012b} slot {slot}"
                );
            }
            assert_eq!(d.stable(), level, "pattern {pattern:012b} ends settled");
        }
    }

    #[test]
    fn zero_window_accepts_immediately_and_huge_window_does_not_overflow() {
        let mut d = Debouncer::new(false, Duration::ZERO);
        d.edge(7);
        assert_eq!(d.settle(true, 7).map(|c| c.at_ns), Some(7));
        let mut d = Debouncer::new(false, Duration::MAX);
        d.edge(u64::MAX - 1);
        assert_eq!(d.deadline(), Some(u64::MAX));
    }

    #[test]
    fn active_low_inverts_raw_levels() {
        assert!(logical(1, false));
        assert!(!logical(0, false));
        assert!(!logical(1, true));
        assert!(logical(0, true));
    }

    #[test]
    fn command_parsing_accepts_the_documented_forms_only() {
        for (v, c) in [
            (json!("on"), Command::On),
            (json!("ON"), Command::On),
            (json!("Off"), Command::Off),
            (json!("toggle"), Command::Toggle),
            (json!("TOGGLE"), Command::Toggle),
            (json!(true), Command::On),
            (json!(false), Command::Off),
        ] {
            assert_eq!(Command::parse(&v), Ok(c), "{v}");
        }
        for bad in [
            json!("onn"),
            json!(""),
            json!(" on"),
            json!(1),
            json!(0),
            json!(null),
            json!(["on"]),
            json!({"state": "on"}),
        ] {
            let e = Command::parse(&bad).unwrap_err();
            assert!(e.to_string().contains("accepted are"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_command_echo_is_bounded() {
        let huge = json!("x".repeat(100_000));
        let CommandError::Unknown(shown) = Command::parse(&huge).unwrap_err() else {
            panic!("not Unknown");
        };
        assert!(shown.len() < 50, "{}", shown.len());
        let multibyte = json!("é".repeat(100));
        assert!(Command::parse(&multibyte).is_err());
    }

    #[test]
    fn ids_are_checked() {
        let o = Output::new(false, 4);
        assert_eq!(o.plan("", Command::On), Err(CommandError::EmptyId));
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            o.plan(&long, Command::On),
            Err(CommandError::IdTooLong(MAX_ID_LEN + 1))
        );
        assert!(o.plan(&"a".repeat(MAX_ID_LEN), Command::On).is_ok());
    }

    #[test]
    fn levels_follow_active_low() {
        let high = Output::new(false, 1);
        assert_eq!(high.level(true), PinState::High);
        assert_eq!(high.level(false), PinState::Low);
        let low = Output::new(true, 1);
        assert_eq!(low.level(true), PinState::Low);
        assert_eq!(low.level(false), PinState::High);
    }

    #[test]
    fn toggle_and_redelivered_ids() {
        let mut o = Output::new(false, 8);
        let step = |o: &mut Output, id: &str, c| match o.plan(id, c).unwrap() {
            Plan::Write { on, .. } => {
                o.commit(id, on);
                on
            }
            Plan::Duplicate { on } => on,
        };
        assert!(step(&mut o, "a", Command::Toggle));
        assert!(!step(&mut o, "b", Command::Toggle));
        // "a" redelivered: no write, answers what "a" did, state unchanged.
        assert_eq!(
            o.plan("a", Command::Toggle),
            Ok(Plan::Duplicate { on: true })
        );
        assert!(!o.is_on());
        // Same id with a different command is still the same command.
        assert_eq!(o.plan("b", Command::On), Ok(Plan::Duplicate { on: false }));
        assert!(step(&mut o, "c", Command::On));
        assert!(step(&mut o, "d", Command::On), "on when on stays on");
        assert!(!step(&mut o, "e", Command::Off));
    }

    #[test]
    fn id_memory_is_bounded_and_forgets_oldest_first() {
        let mut o = Output::new(false, 3);
        for id in ["1", "2", "3", "4"] {
            o.commit(id, true);
        }
        assert!(
            matches!(o.plan("1", Command::Off), Ok(Plan::Write { .. })),
            "1 was evicted"
        );
        for id in ["2", "3", "4"] {
            assert!(
                matches!(o.plan(id, Command::Off), Ok(Plan::Duplicate { .. })),
                "{id}"
            );
        }
        assert_eq!(o.applied.len(), 3);
        // Recommitting a remembered id does not duplicate it in the eviction order.
        o.commit("4", false);
        assert_eq!(o.applied.len(), 3);
        o.commit("5", false);
        assert!(
            matches!(o.plan("2", Command::Off), Ok(Plan::Write { .. })),
            "2 was evicted"
        );
        assert!(matches!(
            o.plan("4", Command::Off),
            Ok(Plan::Duplicate { on: false })
        ));
    }

    #[test]
    fn relay_drives_the_pin_once_per_id() {
        // active_low relay board: off = high at start, on = low.
        let ex = [
            Pin::set(State::High),
            Pin::set(State::Low),
            Pin::set(State::High),
        ];
        let mut pin = PinMock::new(&ex);
        let mut r = Relay::new(pin.clone(), true, 16).unwrap();
        assert!(!r.is_on());
        assert!(r.execute("cmd-1", Command::On).unwrap());
        assert!(
            r.execute("cmd-1", Command::On).unwrap(),
            "duplicate: no pin write"
        );
        assert!(!r.execute("cmd-2", Command::Toggle).unwrap());
        assert!(matches!(
            r.execute("", Command::On),
            Err(RelayError::Command(CommandError::EmptyId))
        ));
        pin.done();
    }

    #[test]
    fn a_failed_write_is_not_remembered_so_the_id_can_be_retried() {
        let ex = [
            Pin::set(State::Low),
            Pin::set(State::High).with_error(MockError::Io(std::io::ErrorKind::Other)),
            Pin::set(State::High),
        ];
        let mut pin = PinMock::new(&ex);
        let mut r = Relay::new(pin.clone(), false, 16).unwrap();
        assert!(matches!(
            r.execute("x", Command::On),
            Err(RelayError::Pin(_))
        ));
        assert!(!r.is_on(), "state unchanged after a failed write");
        assert!(r.execute("x", Command::On).unwrap());
        pin.done();
    }
}
