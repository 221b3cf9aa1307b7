//! Arbitrary bytes into the MQTT-thing payload parser (`betaas_core::things::payload`, which the
//! agent's MQTT things use). The first byte picks a field spec; the rest is the payload.
//! It must return a value or a typed error, never panic, and an accepted value must be finite and in
//! range.
#![no_main]

use libfuzzer_sys::fuzz_target;

use betaas_core::things::payload::{extract, FieldSpec};

fn spec(pick: u8) -> FieldSpec {
    let pointer = [
        "",
        "/t",
        "/a/0",
        "/0",
        "/a~1b/~0",
        "/sensors/1/t",
        "/x/y/z/w",
        "/",
    ][usize::from(pick & 7)];
    let (scale, offset) =
        [(1.0, 0.0), (0.1, -40.0), (-1e10, 1e300), (1e-300, 0.0)][usize::from((pick >> 3) & 3)];
    let (min, max) = [
        (None, None),
        (Some(-40.0), Some(125.0)),
        (Some(0.0), None),
        (None, Some(0.0)),
    ][usize::from((pick >> 5) & 3)];
    FieldSpec {
        pointer: pointer.into(),
        scale,
        offset,
        min,
        max,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let s = spec(pick);
    assert!(s.check().is_ok(), "{s:?}");
    match extract(payload, &s) {
        Ok(v) => {
            assert!(v.is_finite());
            assert!(
                s.min.is_none_or(|m| v >= m) && s.max.is_none_or(|m| v <= m),
                "{v} {s:?}"
            );
        }
        Err(e) => {
            // Every error renders (the agent logs it) and has a counter label.
            assert!(!e.to_string().is_empty() && !e.kind().is_empty());
        }
    }
});
