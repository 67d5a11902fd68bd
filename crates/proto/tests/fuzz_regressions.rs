//! Replays the saved fuzz inputs (`fuzz/regressions/<target>/*` and the
//! committed corpus `fuzz/corpus/<target>/*`) with the properties the fuzz
//! targets assert, so a fixed crash stays fixed and what the fuzzer found
//! interesting is checked on every `cargo test`.

use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    self, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet, SigningKey,
};
use std::path::PathBuf;

/// Every saved input of a fuzz target: its regressions (inputs that once
/// failed, and hand-made seeds) and its committed, minimized corpus.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for dir in [fuzz.join("regressions").join(target), fuzz.join("corpus").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no saved inputs for {target} under {}", fuzz.display());
    out
}

#[test]
fn envelope_decode_inputs() {
    for (name, data) in inputs("envelope_decode") {
        if let Ok(msg) = Message::decode(&data) {
            let bytes = msg.encode().unwrap_or_else(|e| panic!("{name}: re-encode: {e:?}"));
            assert_eq!(Message::decode(&bytes).as_ref(), Ok(&msg), "{name}");
        }
    }
}

#[test]
fn token_verify_inputs() {
    let public = SigningKey::from_bytes(&[0x5e; 32]).verifying_key();
    let mut keys = Keyset::new();
    keys.push(KeyEntry { kid: b"k1".to_vec(), key: public, not_before: 0, not_after: u64::MAX })
        .unwrap();
    for (name, data) in inputs("token_verify") {
        let expect = Expectations {
            audience: "unlocker",
            scope: ScopeSet::single(Scope::LuksUnlock),
            now: 1_767_225_600,
            skew: 30,
        };
        let mut replay = MemoryReplayCache::new(4);
        let revoked = RevokedSet::from_ids(vec![vec![0; 16]]);
        assert!(token::verify(&data, &keys, &expect, &mut replay, &revoked).is_err(), "{name}");
        let _ = danger::inspect(&data);
        assert!(cose::verify(&data, ContentType::Keyset, |_| Some(public)).is_err(), "{name}");
        let _ = danger::open_unverified(&data);
    }
}
