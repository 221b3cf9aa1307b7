//! Every message survives encode → split → decode; broken input yields the documented error reply.

use betaas_proto::*;
use proptest::prelude::*;

fn vm_info(name: &str) -> VmInfo {
    VmInfo {
        name: name.into(),
        template: "tiny".into(),
        kind: VirtKind::Qemu,
        state: VmState::Saved,
        created_s: 1_764_000_000,
        stopped_s: Some(1_764_000_100),
        restarts: 2,
        failed: true,
    }
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Probe { refresh: true },
        Request::Create {
            template: "tiny".into(),
        },
        Request::Acquire {
            template: "app".into(),
        },
        Request::Start { vm: "a".into() },
        Request::Stop { vm: "b".into() },
        Request::Resume { vm: "c".into() },
        Request::Destroy { vm: "d".into() },
        Request::Undefine { vm: "e".into() },
        Request::List,
        Request::Stats { vm: "f".into() },
        Request::AcquireWith {
            template: "bigdata-compute".into(),
            env: vec![("SPARK_MASTER".into(), "spark://10.0.0.5:7077".into())],
        },
    ]
}

fn all_responses() -> Vec<Response> {
    vec![
        Response::Capability(Capability {
            best: Some(VirtKind::Qemu),
            probes: vec![
                ProbeResult {
                    kind: VirtKind::Kvm,
                    ok: false,
                    detail: "guest did not reach its marker in 20 s".into(),
                    millis: 20_000,
                },
                ProbeResult {
                    kind: VirtKind::Qemu,
                    ok: true,
                    detail: "marker after 2900 ms".into(),
                    millis: 2900,
                },
            ],
            arch: "x86_64".into(),
            probed_s: 5,
        }),
        Response::Vm(vm_info("betaas-tiny-1")),
        Response::Undefined { vm: "x".into() },
        Response::Acquired {
            vm: vm_info("betaas-tiny-2"),
            resumed: true,
        },
        Response::Vms(vec![vm_info("a"), vm_info("b")]),
        Response::Stats(VmStats {
            name: "a".into(),
            state: VmState::Running,
            cpu_time_ns: u64::MAX,
            vcpus: 1,
            memory_kib: 65536,
            max_memory_kib: 131072,
            disk_capacity_bytes: 1 << 30,
            disk_allocation_bytes: 200_704,
        }),
        Response::Error(ErrorReply::new(
            ErrorKind::Foreign,
            "domain 'x' is not ours",
        )),
        Response::AcquiredAt {
            vm: vm_info("betaas-bigdata-master-1"),
            resumed: false,
            url: Some("spark://10.0.0.5:7077".into()),
        },
    ]
}

#[test]
fn every_request_round_trips_in_one_stream() {
    let reqs = all_requests();
    let mut stream = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        stream.extend(encode_request(i as u32 * 1000, r).expect("encodes"));
    }
    // Fed one byte at a time: boundaries come only from the length prefix.
    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    for b in stream {
        reader.push(&[b]);
        while let Some(f) = reader.next_frame().expect("valid stream") {
            assert_eq!(f.version, VERSION);
            got.push(decode_request(&f).expect("decodes"));
        }
    }
    assert_eq!(reader.pending(), 0);
    let want: Vec<_> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i as u32 * 1000, r))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn every_response_round_trips() {
    for (i, r) in all_responses().into_iter().enumerate() {
        let bytes = encode_response(i as u32, &r);
        let (frame, used) = split_frame(&bytes).expect("ok").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(decode_response(&frame).expect("decodes"), (i as u32, r));
    }
}

#[test]
fn header_layout_is_len_le_then_version() {
    let bytes = encode_request(7, &Request::List).expect("encodes");
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(len, bytes.len() - 4);
    assert_eq!(bytes[4], VERSION);
    // id 7 as a postcard varint, then List's variant index (8).
    assert_eq!(&bytes[5..], &[7, 8]);
}

#[test]
fn other_version_is_answered_with_unsupported_version_and_the_id() {
    let mut bytes = encode_request(42, &Request::List).expect("encodes");
    bytes[4] = VERSION + 1;
    let (f, _) = split_frame(&bytes).expect("ok").expect("complete");
    let err = decode_request(&f).expect_err("must refuse");
    let (id, resp) = err.reply();
    assert_eq!(id, 42);
    match resp {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
            let said = format!("version {}", VERSION + 1);
            assert!(e.message.contains(&said), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_variant_is_answered_with_unknown_message_and_the_id() {
    // id 9, variant index 200: beyond the last request variant.
    let frame = RawFrame {
        version: VERSION,
        body: vec![9, 200, 1],
    };
    let (id, resp) = decode_request(&frame).expect_err("unknown").reply();
    assert_eq!(id, 9);
    assert!(matches!(
        resp,
        Response::Error(ErrorReply {
            kind: ErrorKind::UnknownMessage,
            ..
        })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_request(3, &Request::List).expect("encodes");
    bytes.push(0xAA);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    let (f, _) = split_frame(&bytes).expect("ok").expect("complete");
    match decode_request(&f) {
        Err(DecodeError::Trailing { id: 3, extra: 1 }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn overlong_varint_id_decodes_to_the_same_value() {
    // [0x85, 0x00] is 5 written long; the fuzz target found postcard accepts it.
    let f = RawFrame {
        version: VERSION,
        body: vec![0x85, 0x00, 8],
    };
    assert_eq!(decode_request(&f).expect("decodes"), (5, Request::List));
}

#[test]
fn a_response_is_not_a_request() {
    // A peer that sends a response where a request is expected: Vms (index 3) reads as
    // Request::Start with a 3-byte name, and the bytes left over make it a refusal, not a misread.
    let bytes = encode_response(1, &Response::Vms(vec![vm_info("a"); 3]));
    let (f, _) = split_frame(&bytes).expect("ok").expect("complete");
    assert!(decode_request(&f).is_err());
}

#[test]
fn lengths_out_of_range_are_frame_errors() {
    assert_eq!(split_frame(&[0, 0, 0, 0, 1]), Err(FrameError::Empty));
    let big = (MAX_FRAME as u32 + 1).to_le_bytes();
    assert_eq!(
        split_frame(&big),
        Err(FrameError::TooLarge {
            len: MAX_FRAME + 1,
            max: MAX_FRAME
        })
    );
    // Incomplete is not an error.
    assert_eq!(split_frame(&[5, 0, 0]), Ok(None));
    assert_eq!(split_frame(&[5, 0, 0, 0, 1, 2]), Ok(None));
}

#[test]
fn oversized_message_is_refused_at_encode() {
    let req = Request::Create {
        template: "x".repeat(MAX_FRAME),
    };
    assert!(matches!(
        encode_request(1, &req),
        Err(EncodeError::TooLarge { .. })
    ));
}

#[test]
fn blocking_client_matches_reply_ids() {
    // A canned reply stream: the client sends into `out`, reads from the canned bytes.
    struct Duplex {
        input: std::io::Cursor<Vec<u8>>,
        out: Vec<u8>,
    }
    impl std::io::Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl std::io::Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.out.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut canned = encode_response(1, &Response::Vms(vec![]));
    canned.extend(encode_response(7, &Response::Vms(vec![])));
    let mut c = blocking::Client::new(Duplex {
        input: std::io::Cursor::new(canned),
        out: Vec::new(),
    });
    assert_eq!(c.call(&Request::List).expect("ok"), Response::Vms(vec![]));
    assert!(matches!(
        c.call(&Request::List),
        Err(blocking::CallError::WrongId { want: 2, got: 7 })
    ));
    assert!(matches!(
        c.call(&Request::List),
        Err(blocking::CallError::Closed)
    ));
    let sent = c.into_inner().out;
    let mut r = FrameReader::new();
    r.push(&sent);
    let mut n = 0;
    while let Some(f) = r.next_frame().expect("ok") {
        n += 1;
        assert_eq!(decode_request(&f).expect("ok"), (n, Request::List));
    }
    assert_eq!(n, 3);
}

fn arb_state() -> impl Strategy<Value = VmState> {
    prop_oneof![
        Just(VmState::ShutOff),
        Just(VmState::Running),
        Just(VmState::Paused),
        Just(VmState::Saved),
        Just(VmState::Crashed),
        Just(VmState::Other),
    ]
}

fn arb_kind() -> impl Strategy<Value = VirtKind> {
    prop_oneof![
        Just(VirtKind::Kvm),
        Just(VirtKind::Qemu),
        Just(VirtKind::Lxc)
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let s = ".{0,40}";
    prop_oneof![
        any::<bool>().prop_map(|refresh| Request::Probe { refresh }),
        s.prop_map(|template| Request::Create { template }),
        s.prop_map(|template| Request::Acquire { template }),
        s.prop_map(|vm| Request::Start { vm }),
        s.prop_map(|vm| Request::Stop { vm }),
        s.prop_map(|vm| Request::Resume { vm }),
        s.prop_map(|vm| Request::Destroy { vm }),
        s.prop_map(|vm| Request::Undefine { vm }),
        Just(Request::List),
        s.prop_map(|vm| Request::Stats { vm }),
    ]
}

fn arb_vm_info() -> impl Strategy<Value = VmInfo> {
    (
        ".{0,20}",
        ".{0,20}",
        arb_kind(),
        arb_state(),
        any::<u64>(),
        any::<Option<u64>>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(
            |(name, template, kind, state, created_s, stopped_s, restarts, failed)| VmInfo {
                name,
                template,
                kind,
                state,
                created_s,
                stopped_s,
                restarts,
                failed,
            },
        )
}

proptest! {
    #[test]
    fn random_requests_round_trip(id in any::<u32>(), req in arb_request()) {
        let bytes = encode_request(id, &req).expect("encodes");
        let (f, used) = split_frame(&bytes).expect("ok").expect("complete");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decode_request(&f).expect("decodes"), (id, req));
    }

    #[test]
    fn random_lists_round_trip(id in any::<u32>(), vms in prop::collection::vec(arb_vm_info(), 0..20)) {
        let resp = Response::Vms(vms);
        let bytes = encode_response(id, &resp);
        let (f, _) = split_frame(&bytes).expect("ok").expect("complete");
        prop_assert_eq!(decode_response(&f).expect("decodes"), (id, resp));
    }

    /// Arbitrary bodies behind a valid header: a request or a typed error with an error reply,
    /// and whatever decodes re-encodes to the same value (not always the same bytes: postcard
    /// accepts overlong varints, which the fuzz target found).
    #[test]
    fn random_bodies_never_panic(version in 0u8..3, body in prop::collection::vec(any::<u8>(), 0..64)) {
        let f = RawFrame { version, body };
        match decode_request(&f) {
            Ok((id, req)) => {
                prop_assert_eq!(version, VERSION);
                let again = encode_request(id, &req).expect("re-encodes");
                let (g, _) = split_frame(&again).expect("ok").expect("complete");
                prop_assert_eq!(decode_request(&g).expect("decodes"), (id, req));
            }
            Err(e) => {
                let (_, resp) = e.reply();
                let is_error = matches!(resp, Response::Error(_));
                prop_assert!(is_error);
            }
        }
    }

    /// Arbitrary bytes: the reader and decoder return a frame, "need more" or a typed error, and
    /// whatever decodes re-encodes to the same frame body.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut r = FrameReader::new();
        r.push(&bytes);
        while let Ok(Some(f)) = r.next_frame() {
            match decode_request(&f) {
                Ok((id, req)) => {
                    let again = encode_request(id, &req).expect("re-encodes");
                    let (g, _) = split_frame(&again).expect("ok").expect("complete");
                    prop_assert_eq!(decode_request(&g).expect("decodes"), (id, req));
                }
                Err(e) => {
                    let (_, resp) = e.reply();
                    let is_error = matches!(resp, Response::Error(_));
                    prop_assert!(is_error);
                }
            }
        }
    }
}
