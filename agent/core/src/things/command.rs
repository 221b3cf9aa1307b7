//! Actuator commands (issue #3 item 4), received on `<prefix>/<gateway>/things/<thing>/set`,
//! answered on `<prefix>/<gateway>/things/<thing>/result`.
//!
//! Pure: [`parse`] turns a payload into a [`Command`], [`Dedup`] remembers the [`Outcome`] of
//! recent command ids so a redelivered command (MQTT QoS 1 after a reconnect, a client retry)
//! is answered again without being applied again, and [`process`] ties the two around the
//! caller's `apply`. The agent's actuators (`actuators.rs`, `things::gpio`) use it; the fuzz crate
//! feeds it arbitrary bytes.
//!
//! Accepted payloads:
//! - `{"id": "<1..=64 chars>", "value": <bool | number | string>}`; other fields are ignored;
//! - `{"value": ...}` without id, or a bare `on` / `off` (any case, not JSON), `true` / `false`,
//!   number or JSON string: id = None, applied every time (nothing to deduplicate on).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Commands are a few dozen bytes; anything above this is rejected before parsing.
pub const MAX_COMMAND: usize = 4 * 1024;
/// Ids are echoed and remembered: a cap keeps a client from making the agent store megabytes.
pub const MAX_ID_CHARS: usize = 64;
/// Ids remembered per thing by default.
pub const DEDUP_CAPACITY: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: Option<String>,
    pub value: CommandValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandValue {
    Bool(bool),
    Number(f64),
    Text(String),
}

impl CommandValue {
    /// The value as a switch state: booleans, `"on"`/`"off"`/`"true"`/`"false"` (any case),
    /// and the numbers 1 and 0. None for anything else.
    pub fn as_switch(&self) -> Option<bool> {
        match self {
            CommandValue::Bool(b) => Some(*b),
            CommandValue::Number(n) if *n == 1.0 => Some(true),
            CommandValue::Number(n) if *n == 0.0 => Some(false),
            CommandValue::Text(t)
                if t.eq_ignore_ascii_case("on") || t.eq_ignore_ascii_case("true") =>
            {
                Some(true)
            }
            CommandValue::Text(t)
                if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("false") =>
            {
                Some(false)
            }
            _ => None,
        }
    }

    /// The value as JSON (for an [`Outcome`]'s `state` when the actuator takes it as is).
    pub fn to_json(&self) -> Value {
        match self {
            CommandValue::Bool(b) => Value::Bool(*b),
            // Finite by construction: JSON has no NaN or infinity.
            CommandValue::Number(n) => {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
            CommandValue::Text(t) => Value::String(t.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("command is {len} bytes, at most {max} are accepted")]
    TooLarge { len: usize, max: usize },
    #[error("command is not JSON (nor a bare on/off): {message} at line {line} column {column}")]
    NotJson {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("command has no \"value\"")]
    MissingValue,
    #[error("\"value\" is {found}: accepted are a bool, a number or a string")]
    BadValue { found: &'static str },
    #[error("bad command id: {0}")]
    BadId(String),
}

impl CommandError {
    /// A stable label per variant, for per-kind error counters.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::TooLarge { .. } => "too_large",
            CommandError::NotJson { .. } => "not_json",
            CommandError::MissingValue => "missing_value",
            CommandError::BadValue { .. } => "bad_value",
            CommandError::BadId(_) => "bad_id",
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A command id: a JSON string of 1 to [`MAX_ID_CHARS`] characters, no control characters.
/// Numbers are not accepted as ids (`17` and `"17"` would otherwise be the same command).
pub fn check_id(id: &Value) -> Result<String, CommandError> {
    let Value::String(s) = id else {
        return Err(CommandError::BadId(format!(
            "is {}, must be a string of 1 to {MAX_ID_CHARS} characters",
            json_type(id)
        )));
    };
    let n = s.chars().count();
    if n == 0 || n > MAX_ID_CHARS {
        return Err(CommandError::BadId(format!(
            "is {n} characters long, must be 1 to {MAX_ID_CHARS}"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(CommandError::BadId("contains control characters".into()));
    }
    Ok(s.clone())
}

fn value_of(v: &Value) -> Result<CommandValue, CommandError> {
    match v {
        Value::Bool(b) => Ok(CommandValue::Bool(*b)),
        Value::Number(n) => n
            .as_f64()
            .map(CommandValue::Number)
            .ok_or(CommandError::BadValue { found: "a number" }),
        Value::String(s) => Ok(CommandValue::Text(s.clone())),
        other => Err(CommandError::BadValue {
            found: json_type(other),
        }),
    }
}

/// Parses a set command. See the module doc for the accepted forms.
pub fn parse(payload: &[u8]) -> Result<Command, CommandError> {
    if payload.len() > MAX_COMMAND {
        return Err(CommandError::TooLarge {
            len: payload.len(),
            max: MAX_COMMAND,
        });
    }
    let trimmed = payload.trim_ascii();
    for (word, on) in [(&b"on"[..], true), (b"off", false)] {
        if trimmed.eq_ignore_ascii_case(word) {
            return Ok(Command {
                id: None,
                value: CommandValue::Bool(on),
            });
        }
    }
    // serde_json checks UTF-8 itself and reports it as a position like any syntax error.
    let doc: Value = serde_json::from_slice(payload).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        CommandError::NotJson {
            line: e.line(),
            column: e.column(),
            message: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
        }
    })?;
    match &doc {
        Value::Object(map) => {
            // The id is checked first, so a bad id is reported even when the value is bad too.
            let id = map.get("id").map(check_id).transpose()?;
            let value = value_of(map.get("value").ok_or(CommandError::MissingValue)?)?;
            Ok(Command { id, value })
        }
        bare => Ok(Command {
            id: None,
            value: value_of(bare)?,
        }),
    }
}

/// What the agent publishes on `<prefix>/<gateway>/things/<thing>/result`:
/// `{"id":"c1","ok":true,"state":true}` or `{"id":"c1","ok":false,"error":"..."}`;
/// `id` is `null` for commands without one; `state` and `error` are left out when None.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: Option<String>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    pub fn applied(id: Option<String>, state: Value) -> Self {
        Outcome {
            id,
            ok: true,
            state: Some(state),
            error: None,
        }
    }

    pub fn rejected(id: Option<String>, error: impl std::fmt::Display) -> Self {
        Outcome {
            id,
            ok: false,
            state: None,
            error: Some(error.to_string()),
        }
    }

    pub fn to_json(&self) -> String {
        // A struct of strings, bools and a Value: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"ok\":false}"))
    }
}

/// A bounded memory of the last `capacity` command ids and what each produced; the oldest id is
/// forgotten first. One per actuator. Generic so the GPIO relay can remember its on/off state.
#[derive(Debug, Clone)]
pub struct Dedup<V = Outcome> {
    capacity: usize,
    order: VecDeque<String>,
    seen: HashMap<String, V>,
}

impl<V> Dedup<V> {
    /// Remembers `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        Dedup {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashMap::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&V> {
        self.seen.get(id)
    }

    /// Stores `v` for `id`. An id already remembered gets the new value and keeps its place in
    /// the eviction order.
    pub fn remember(&mut self, id: &str, v: V) {
        if self.seen.insert(id.to_owned(), v).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Default for Dedup<Outcome> {
    fn default() -> Self {
        Dedup::new(DEDUP_CAPACITY)
    }
}

/// One command end to end, for one actuator: parse, answer a known id from memory, otherwise
/// call `apply` (which drives the hardware and returns the resulting state, or why it could not)
/// and remember a successful outcome under the command's id. A failed `apply` is not remembered,
/// so the same id can be retried. Returns the outcome to publish and whether `apply` ran.
pub fn process(
    dedup: &mut Dedup,
    payload: &[u8],
    apply: impl FnOnce(&CommandValue) -> Result<Value, String>,
) -> (Outcome, bool) {
    let cmd = match parse(payload) {
        Ok(cmd) => cmd,
        Err(e) => return (Outcome::rejected(peek_id(payload), e), false),
    };
    if let Some(done) = cmd.id.as_deref().and_then(|id| dedup.get(id)) {
        return (done.clone(), false);
    }
    let outcome = match apply(&cmd.value) {
        Ok(state) => Outcome::applied(cmd.id.clone(), state),
        Err(e) => Outcome::rejected(cmd.id.clone(), e),
    };
    if let (Some(id), true) = (&cmd.id, outcome.ok) {
        dedup.remember(id, outcome.clone());
    }
    (outcome, true)
}

/// The id of a rejected command, if it has a valid one, so the error reply can be correlated.
fn peek_id(payload: &[u8]) -> Option<String> {
    if payload.len() > MAX_COMMAND {
        return None;
    }
    let doc: Value = serde_json::from_slice(payload).ok()?;
    check_id(doc.get("id")?).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(id: Option<&str>, value: CommandValue) -> Command {
        Command {
            id: id.map(str::to_owned),
            value,
        }
    }

    #[test]
    fn json_commands_with_id() {
        use CommandValue::*;
        for (payload, value) in [
            (r#"{"id":"a1","value":true}"#, Bool(true)),
            (r#"{"value":false,"id":"a1"}"#, Bool(false)),
            (r#"{"id":"a1","value":21.5}"#, Number(21.5)),
            (r#"{"id":"a1","value":-3}"#, Number(-3.0)),
            (r#"{"id":"a1","value":"toggle"}"#, Text("toggle".into())),
            (
                r#"{"id":"a1","value":"","extra":[1,{}]}"#,
                Text(String::new()),
            ),
        ] {
            assert_eq!(
                parse(payload.as_bytes()),
                Ok(cmd(Some("a1"), value)),
                "{payload}"
            );
        }
        // Home Assistant's template id: a float timestamp as a string.
        assert_eq!(
            parse(br#"{"id":"1764083000.123456","value":42}"#)
                .unwrap()
                .id
                .as_deref(),
            Some("1764083000.123456")
        );
    }

    #[test]
    fn bare_commands_have_no_id() {
        use CommandValue::*;
        for (payload, value) in [
            ("on", Bool(true)),
            ("OFF", Bool(false)),
            (" On\n", Bool(true)),
            ("true", Bool(true)),
            ("false", Bool(false)),
            ("12", Number(12.0)),
            ("-0.5", Number(-0.5)),
            ("\"toggle\"", Text("toggle".into())),
            (r#"{"value":1}"#, Number(1.0)),
        ] {
            assert_eq!(parse(payload.as_bytes()), Ok(cmd(None, value)), "{payload}");
        }
    }

    #[test]
    fn malformed_commands() {
        let kind = |p: &[u8]| parse(p).map_err(|e| e.kind());
        for p in [
            &b""[..],
            b"onn",
            b"toggle",
            b"{",
            b"{\"value\":}",
            b"\xff",
            b"0x10",
            b"NaN",
            b"1e400",
        ] {
            assert_eq!(kind(p), Err("not_json"), "{:?}", String::from_utf8_lossy(p));
        }
        assert_eq!(parse(br#"{"id":"a"}"#), Err(CommandError::MissingValue));
        assert_eq!(parse(br#"{}"#), Err(CommandError::MissingValue));
        for (p, found) in [
            (&br#"{"value":null}"#[..], "null"),
            (br#"{"value":[true]}"#, "an array"),
            (br#"{"value":{"on":1}}"#, "an object"),
            (b"null", "null"),
            (b"[1]", "an array"),
        ] {
            assert_eq!(parse(p), Err(CommandError::BadValue { found }));
        }
        let e = parse(b"{\"value\":\n }").unwrap_err();
        assert_eq!(
            e,
            CommandError::NotJson {
                line: 2,
                column: 2,
                message: "expected value".into()
            }
        );
    }

    #[test]
    fn ids_are_checked() {
        let long = "é".repeat(MAX_ID_CHARS);
        let p = json!({"id": long, "value": 1}).to_string();
        assert_eq!(
            parse(p.as_bytes()).unwrap().id,
            Some(long.clone()),
            "64 chars, 128 bytes"
        );
        for (id, why) in [
            (json!(""), "0 characters"),
            (json!("x".repeat(MAX_ID_CHARS + 1)), "65 characters"),
            (json!("a\nb"), "control"),
            (json!(17), "is a number"),
            (json!(null), "is null"),
            (json!(["a"]), "is an array"),
        ] {
            let p = json!({"id": id, "value": true}).to_string();
            let e = parse(p.as_bytes()).unwrap_err();
            assert!(
                matches!(&e, CommandError::BadId(m) if m.contains(why)),
                "{p}: {e}"
            );
        }
        // A bad id is reported even when the value is bad too.
        assert_eq!(
            parse(br#"{"id":1,"value":null}"#).map_err(|e| e.kind()),
            Err("bad_id")
        );
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        // Exactly at the cap (padded with whitespace): parsed.
        let ok = format!("{:<width$}", r#"{"value":1}"#, width = MAX_COMMAND);
        assert_eq!(
            parse(ok.as_bytes()).unwrap().value,
            CommandValue::Number(1.0)
        );
        let big = vec![b'['; MAX_COMMAND + 1];
        assert_eq!(
            parse(&big),
            Err(CommandError::TooLarge {
                len: MAX_COMMAND + 1,
                max: MAX_COMMAND
            })
        );
        // Nesting within the cap hits serde_json's recursion limit, not the stack.
        let deep = [vec![b'['; 2000], vec![b']'; 2000]].concat();
        assert_eq!(parse(&deep).map_err(|e| e.kind()), Err("not_json"));
    }

    #[test]
    fn switch_interpretation() {
        use CommandValue::*;
        for (v, s) in [
            (Bool(true), Some(true)),
            (Text("ON".into()), Some(true)),
            (Text("false".into()), Some(false)),
            (Number(1.0), Some(true)),
            (Number(0.0), Some(false)),
            (Number(0.5), None),
            (Text("toggle".into()), None),
        ] {
            assert_eq!(v.as_switch(), s, "{v:?}");
        }
        assert_eq!(Number(2.5).to_json(), json!(2.5));
        assert_eq!(Text("x".into()).to_json(), json!("x"));
    }

    #[test]
    fn outcome_json_shapes() {
        let ok = Outcome::applied(Some("c1".into()), json!(true));
        assert_eq!(ok.to_json(), r#"{"id":"c1","ok":true,"state":true}"#);
        let err = Outcome::rejected(None, CommandError::MissingValue);
        assert_eq!(
            err.to_json(),
            r#"{"id":null,"ok":false,"error":"command has no \"value\""}"#
        );
        let both = Outcome {
            state: Some(json!(21.5)),
            ..Outcome::rejected(Some("c2".into()), "pin write failed")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&both.to_json()).unwrap(),
            json!({"id": "c2", "ok": false, "state": 21.5, "error": "pin write failed"})
        );
        for o in [ok, err, both] {
            assert_eq!(serde_json::from_str::<Outcome>(&o.to_json()).unwrap(), o);
        }
    }

    #[test]
    fn dedup_is_bounded_and_forgets_oldest_first() {
        let mut d: Dedup<u32> = Dedup::new(3);
        for (i, id) in ["1", "2", "3", "4"].into_iter().enumerate() {
            d.remember(id, i as u32);
        }
        assert_eq!(d.get("1"), None, "evicted");
        assert_eq!((d.get("2"), d.get("4")), (Some(&1), Some(&3)));
        // Re-remembering keeps the place: "2" is still the oldest.
        d.remember("2", 20);
        assert_eq!((d.len(), d.order.len(), d.get("2")), (3, 3, Some(&20)));
        d.remember("5", 5);
        assert_eq!(d.get("2"), None);
        assert_eq!(Dedup::<u8>::new(0).capacity(), 1);
        assert_eq!(Dedup::default().capacity(), DEDUP_CAPACITY);
    }

    #[test]
    fn dedup_matches_a_reference_model_on_random_ids() {
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let cap = rng.usize(1..10);
        let mut d: Dedup<u32> = Dedup::new(cap);
        let mut model: Vec<(String, u32)> = Vec::new(); // oldest first
        for step in 0..5_000u32 {
            let id = rng.u8(..20).to_string();
            assert_eq!(
                d.get(&id),
                model.iter().find(|(k, _)| *k == id).map(|(_, v)| v),
                "seed {seed} step {step}"
            );
            if rng.bool() {
                d.remember(&id, step);
                match model.iter_mut().find(|(k, _)| *k == id) {
                    Some(e) => e.1 = step,
                    None => model.push((id, step)),
                }
                if model.len() > cap {
                    model.remove(0);
                }
            }
            assert_eq!(d.len(), model.len());
            assert!(d.len() <= cap && d.order.len() == d.len());
        }
    }

    #[test]
    fn process_applies_once_per_id_and_replays_the_outcome() {
        let mut d = Dedup::default();
        let mut writes = Vec::new();
        let run = |d: &mut Dedup, p: &str, writes: &mut Vec<bool>| {
            process(d, p.as_bytes(), |v| {
                let on = v.as_switch().ok_or("not a switch value")?;
                writes.push(on);
                Ok(json!(on))
            })
        };
        let first = run(&mut d, r#"{"id":"c1","value":"ON"}"#, &mut writes);
        assert_eq!(
            first,
            (Outcome::applied(Some("c1".into()), json!(true)), true)
        );
        // Redelivered, even with a different value: same answer, no write.
        let again = run(&mut d, r#"{"id":"c1","value":false}"#, &mut writes);
        assert_eq!(again, (first.0.clone(), false));
        // No id: applied every time.
        run(&mut d, "off", &mut writes);
        run(&mut d, "off", &mut writes);
        assert_eq!(writes, [true, false, false]);
        // apply refuses: an error reply with the id, not remembered, so a retry applies.
        let (o, ran) = run(&mut d, r#"{"id":"c2","value":"dim"}"#, &mut writes);
        assert_eq!(
            (o.ok, o.error.as_deref(), ran),
            (false, Some("not a switch value"), true)
        );
        assert_eq!(d.get("c2"), None);
        // Parse errors: rejected with the id when it can be read, apply never called.
        let (o, ran) = run(&mut d, r#"{"id":"c3","value":null}"#, &mut writes);
        assert_eq!((o.id.as_deref(), o.ok, ran), (Some("c3"), false, false));
        let (o, _) = run(&mut d, r#"{"id":"","value":null}"#, &mut writes);
        assert_eq!(o.id, None, "an invalid id is not echoed");
        let (o, _) = run(&mut d, "garbage", &mut writes);
        assert!(o.error.unwrap().starts_with("command is not JSON"));
        assert_eq!(writes, [true, false, false]);
    }

    /// Random well-formed commands round-trip through their JSON form.
    #[test]
    fn random_commands_parse_back() {
        let seed = fastrand::u64(..);
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        for case in 0..2_000 {
            let id: Option<String> = rng.bool().then(|| {
                (0..rng.usize(1..=MAX_ID_CHARS))
                    .map(|_| ['a', '9', '-', '.', 'é', '"', '\\', ' ', '✓'][rng.usize(..9)])
                    .collect()
            });
            let value = match rng.u8(..3) {
                0 => CommandValue::Bool(rng.bool()),
                1 => CommandValue::Number((rng.f64() - 0.5) * 10f64.powi(rng.i32(-5..6))),
                _ => CommandValue::Text((0..rng.usize(..20)).map(|_| rng.alphanumeric()).collect()),
            };
            let mut obj = serde_json::Map::new();
            if let Some(id) = &id {
                obj.insert("id".into(), json!(id));
            }
            obj.insert("value".into(), value.to_json());
            let p = Value::Object(obj).to_string();
            let got =
                parse(p.as_bytes()).unwrap_or_else(|e| panic!("seed {seed} case {case}: {p}: {e}"));
            assert_eq!(got.id, id, "seed {seed} case {case}");
            match (&got.value, &value) {
                // serde_json without float_roundtrip may be 1 ulp off.
                (CommandValue::Number(a), CommandValue::Number(b)) => {
                    assert!((a - b).abs() <= b.abs() * 4.0 * f64::EPSILON, "{a} vs {b}")
                }
                (a, b) => assert_eq!(a, b, "seed {seed} case {case}"),
            }
        }
    }
}
