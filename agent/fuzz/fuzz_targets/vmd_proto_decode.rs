//! Arbitrary bytes into the betaas-vmd protocol decoder, as the daemon reads a socket: frames
//! until the first frame error; each frame decodes to a request or to an error reply, never a
//! panic, never an allocation beyond MAX_FRAME. `betaas-proto` is pure: the fuzz build pulls in
//! no runtime.
#![no_main]

use libfuzzer_sys::fuzz_target;

use betaas_proto::{frame, msg};

fuzz_target!(|data: &[u8]| {
    let mut reader = frame::FrameReader::new();
    // Two pushes: the split point must not matter.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    reader.push(&data[..cut]);
    reader.push(&data[cut..]);
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => {
                assert!(f.body.len() < frame::MAX_FRAME);
                match frame::decode_request(&f) {
                    Ok((id, req)) => {
                        // Postcard accepts overlong varints (found here: [0x85, 0x00] reads as 5),
                        // so the bytes may differ; the value must not, and canonical is never longer.
                        let again = frame::encode_request(id, &req).expect("re-encodes");
                        assert!(again.len() - frame::HEADER_LEN <= f.body.len());
                        let (g, _) = frame::split_frame(&again).expect("ok").expect("complete");
                        assert_eq!(frame::decode_request(&g).expect("decodes"), (id, req));
                    }
                    Err(e) => {
                        let (_, resp) = e.reply();
                        assert!(matches!(resp, msg::Response::Error(_)));
                        // The reply itself must be sendable.
                        assert!(!frame::encode_response(0, &resp).is_empty());
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.reply();
                break;
            }
        }
    }
});
