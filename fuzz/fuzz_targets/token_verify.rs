//! Token and signed-object decoders on hostile input: `token::verify` with a
//! fixed keyset and expectations, `danger::inspect`, `cose::verify` and
//! `danger::open_unverified`. None may panic, and nothing but a real token can
//! verify (the fuzzer cannot forge the fixed key's signature).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    self, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet, SigningKey, VerifyingKey,
};

static PUBLIC: LazyLock<VerifyingKey> =
    LazyLock::new(|| SigningKey::from_bytes(&[0x5e; 32]).verifying_key());

static KEYS: LazyLock<Keyset> = LazyLock::new(|| {
    let mut keys = Keyset::new();
    keys.push(KeyEntry { kid: b"k1".to_vec(), key: *PUBLIC, not_before: 0, not_after: u64::MAX })
        .expect("one key");
    keys
});

fuzz_target!(|data: &[u8]| {
    let expect = Expectations {
        audience: "unlocker",
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: 1_767_225_600,
        skew: 30,
    };
    let mut replay = MemoryReplayCache::new(4);
    let revoked = RevokedSet::from_ids(vec![vec![0; 16]]);
    assert!(token::verify(data, &KEYS, &expect, &mut replay, &revoked).is_err());
    let _ = danger::inspect(data);
    assert!(cose::verify(data, ContentType::Keyset, |_| Some(*PUBLIC)).is_err());
    let _ = danger::open_unverified(data);
});
