//! Arbitrary bytes into the journal's decoders: they must return a typed error, never panic, never
//! allocate more than MAX_PAYLOAD for a frame. The format is `betaas_core::journal` (pure: the fuzz
//! build does not pull in the agent's tokio/MQTT/I2C dependencies), the agent's journal store uses it.
#![no_main]

use libfuzzer_sys::fuzz_target;

use betaas_core::journal as format;

fuzz_target!(|data: &[u8]| {
    let _ = format::decode_header(data);
    let _ = format::decode_state(data);
    // Walk the bytes as the store walks a segment: frame after frame until the first error.
    let mut rest = data;
    while !rest.is_empty() {
        match format::decode_record(rest) {
            Ok((rec, n)) => {
                assert!(n > format::FRAME_OVERHEAD && n <= rest.len());
                // Whatever decodes must encode again and decode to a record with the same identity.
                let mut buf = Vec::new();
                if format::encode_record(&rec, &mut buf).is_ok() {
                    let (again, m) = format::decode_record(&buf).expect("re-encoded record decodes");
                    assert_eq!(m, buf.len());
                    assert_eq!((&again.thing, again.seq, again.ts_ms), (&rec.thing, rec.seq, rec.ts_ms));
                }
                rest = &rest[n..];
            }
            Err(format::FrameError::Payload(_)) => {
                // Intact frame, foreign payload: the store skips exactly this frame.
                match format::decode_frame(rest) {
                    Ok(f) => rest = &rest[f.len..],
                    Err(e) => panic!("payload error but frame does not decode: {e}"),
                }
            }
            Err(_) => break,
        }
    }
});
