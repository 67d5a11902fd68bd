//! Token costs: raw Ed25519 sign and `verify_strict`, token mint, token verify.
//!
//! `cargo bench -p portcullis-proto --bench token`
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    mint, verify, Claims, Expectations, KeyEntry, Keyset, ReplayCache, ReplayError, RevokedSet,
};
use std::hint::black_box;

const NOW: u64 = 1_767_225_600;

/// Accepts every id, so one token can be verified over and over.
struct NoReplay;

impl ReplayCache for NoReplay {
    fn check_and_insert(&mut self, _: &[u8], _: u64, _: u64) -> Result<(), ReplayError> {
        Ok(())
    }
}

fn claims() -> Claims {
    Claims {
        iss: "cryptod".into(),
        sub: "policy_pd".into(),
        aud: "unlocker".into(),
        exp: NOW + 60,
        nbf: NOW,
        iat: NOW,
        cti: vec![7; 16],
        scope: ScopeSet::single(Scope::LuksUnlock),
        nonce: vec![9; 16],
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[0x42; 32]);
    let public = key.verifying_key();
    let message = [0x5a_u8; 200];
    let signature = key.sign(&message);
    let claims = claims();
    let token = mint(&key, b"k1", &claims).expect("mint");
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: b"k1".to_vec(),
        key: public,
        not_before: NOW - 3600,
        not_after: NOW + 3600,
    })
    .expect("push");
    let revoked = RevokedSet::new();
    let expect = Expectations {
        audience: "unlocker",
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: NOW,
        skew: 5,
    };
    println!("token size: {} bytes", token.len());

    c.bench_function("ed25519_sign_200B", |b| b.iter(|| key.sign(black_box(&message))));
    c.bench_function("ed25519_verify_strict_200B", |b| {
        b.iter(|| public.verify_strict(black_box(&message), black_box(&signature)))
    });
    c.bench_function("token_mint", |b| b.iter(|| mint(&key, b"k1", black_box(&claims))));
    c.bench_function("token_verify", |b| {
        b.iter(|| verify(black_box(&token), &keys, &expect, &mut NoReplay, &revoked))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
