//! Replays the saved fuzz inputs (`fuzz/regressions/<target>/*`) with the
//! properties the fuzz targets assert, so a fixed crash stays fixed.

use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    self, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet, SigningKey,
};
use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
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
