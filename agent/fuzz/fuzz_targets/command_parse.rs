//! Arbitrary bytes into the actuator command parser and the dedup memory
//! (`betaas_core::things::command`, which the agent's actuators use). Never a panic; an accepted
//! id is 1..=64 characters without control characters; what parses re-encodes to a command that
//! parses the same; a command with an id that was applied is never applied a second time.
#![no_main]

use libfuzzer_sys::fuzz_target;

use betaas_core::things::command::{parse, process, CommandValue, Dedup, MAX_ID_CHARS};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(cmd) => {
            if let Some(id) = &cmd.id {
                let n = id.chars().count();
                assert!((1..=MAX_ID_CHARS).contains(&n) && !id.chars().any(char::is_control));
            }
            if let CommandValue::Number(n) = cmd.value {
                assert!(n.is_finite());
            }
            let mut obj = serde_json::Map::new();
            if let Some(id) = &cmd.id {
                obj.insert("id".into(), serde_json::Value::String(id.clone()));
            }
            obj.insert("value".into(), cmd.value.to_json());
            let again = parse(serde_json::Value::Object(obj).to_string().as_bytes())
                .expect("re-encoded command parses");
            assert_eq!(again.id, cmd.id);
            match (&again.value, &cmd.value) {
                (CommandValue::Number(a), CommandValue::Number(b)) => {
                    assert!((a - b).abs() <= b.abs() * 1e-15)
                }
                (a, b) => assert_eq!(a, b),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty() && !e.kind().is_empty()),
    }
    let mut dedup = Dedup::new(4);
    let apply = |_: &CommandValue| Ok::<_, String>(serde_json::Value::Bool(true));
    let (first, ran_first) = process(&mut dedup, data, apply);
    let (second, ran_second) = process(&mut dedup, data, apply);
    let has_id = parse(data).ok().and_then(|c| c.id).is_some();
    if ran_first && has_id {
        assert!(!ran_second, "a command id was applied twice");
        assert_eq!(first, second);
    }
    let _ = first.to_json();
});
