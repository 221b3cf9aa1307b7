//! Arbitrary bytes from the instance bus into the instance manager (`betaas-core`'s
//! `instance::membership::Instance::receive`): decode, credential and signature checks, replay
//! window; the same bytes as a client's VM request (`receive_client`) and as a persisted floors
//! file (`Floors::decode`). It must reject or accept, never panic; nothing unverified may make a
//! member or pass as a client's request.
#![no_main]

use betaas_core::instance::membership::{Instance, Settings};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let instance = SigningKey::from_bytes(&[7; 32]);
    let mut me = Instance::new("me", instance.verifying_key(), Settings::default());
    let _ = betaas_core::instance::msg::decode(data);
    if me.receive(data, 1).is_ok() {
        // Only a message signed under a credential from the instance key could have joined.
        assert!(me.members().is_empty(), "unsigned bytes made a member");
    }
    // No client key of this instance exists: nothing may verify as a client's request.
    assert!(me.receive_client(data).is_err(), "unsigned bytes passed as a client request");
    if let Ok(floors) = betaas_core::instance::floors::Floors::decode(data) {
        // What decodes re-encodes to bytes that decode to the same table.
        let again = betaas_core::instance::floors::Floors::decode(&floors.encode());
        assert_eq!(again.ok(), Some(floors), "floors do not round-trip");
    }
});
