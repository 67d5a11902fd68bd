//! cryptod's hot paths: TOTP validation + token issue through `handle_request`, token
//! verification, and the raw Ed25519 operations underneath them.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use portcullis_authority::authority::Config;
use portcullis_authority::sealed::SealedState;
use portcullis_authority::totp::{totp, Algorithm, OperatorSecret};
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AuditAck, EntropyPub, RequestId, TokenIssueReq, TotpResult, TotpValidateReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, RevokedSet};
use std::hint::black_box;
use zeroize::Zeroizing;

const SECRET: &[u8] = b"12345678901234567890";
const T0: u64 = 1_700_000_000;

fn authority(operators: usize) -> Authority {
    let state = SealedState::new(
        [1; 32],
        [2; 32],
        (0..operators)
            .map(|i| OperatorSecret::new(&format!("op{i}"), SECRET, Algorithm::Sha1, 8).unwrap())
            .collect(),
        "allow vm=unlocker scopes=luks:unlock aud=unlock_agent volumes=data\nallow vm=pd scopes=net:read aud=fw0\n".into(),
    );
    // No issue rate limit: the loops below issue thousands of tokens at one instant.
    let issue_rate =
        portcullis_authority::ratelimit::IssueRateConfig { per_minute: 0, ..Default::default() };
    let config = Config { reseed_interval: u64::MAX, issue_rate, ..Config::default() };
    let mut a = Authority::new(config, state, T0).unwrap();
    let chunk = EntropyPub {
        drbg_version: "bench".into(),
        seq: 1,
        nonce: vec![0; 16],
        entropy_chunk: Zeroizing::new(vec![7; 64]),
        timestamp: T0,
    };
    a.entropy(&PeerId::new(2, "entropyd"), &chunk, T0, b"hw");
    a
}

/// Seals every pending record into one batch (one signature, as cryptod
/// does once per wake-up), acknowledges it (answers wait for this; at most
/// 64 may wait, so the loops below ack every 32) and returns the released
/// answers.
fn ack_all(a: &mut Authority) -> Vec<Message> {
    a.seal_audit(T0);
    let Some(last) = a.pending_audit_batches().last() else { return Vec::new() };
    let rec = portcullis_proto::msg::AuditRecord::from_cbor(&last.records[0]).unwrap();
    let ack = AuditAck { chain_id: rec.chain_id, seq: last.last_seq };
    let out = a.collector_ack(&ack);
    out.released.into_iter().map(|(_, m)| m).collect()
}

/// One request answered as cryptod answers it: held, then released by the ack.
fn answer(a: &mut Authority, peer: &PeerId, msg: &Message) -> Option<Message> {
    let req = Request::from_message(msg).unwrap();
    a.handle_request(peer, req, T0, b"").response.or_else(|| ack_all(a).pop())
}

/// A plain code check (no unlock grant) for `operator`.
fn totp_req(operator: &str, code: &str) -> TotpValidateReq {
    TotpValidateReq {
        request_id: RequestId([1; 16]),
        operator_id: operator.into(),
        device_id: "yubi".into(),
        totp_code: Zeroizing::new(code.into()),
        client_nonce: vec![9; 16],
        timestamp: T0,
        volume_id: None,
        ephemeral_pubkey: None,
        attestation: None,
        metadata: None,
    }
}

fn bench(c: &mut Criterion) {
    // Each iteration uses a fresh operator (a code is accepted once per step).
    const OPS: usize = 100_000;
    let mut a = authority(OPS);
    let unlocker = PeerId::new(5, "unlocker");
    let code = format!("{:08}", totp(SECRET, Algorithm::Sha1, 8, T0));
    // More iterations than operators move to the next 30 s step (with its
    // code), so every iteration is an accepted code, never a replay or a
    // lockout refusal.
    const STEPS: usize = 64;
    let codes: Vec<String> = (0..STEPS)
        .map(|s| format!("{:08}", totp(SECRET, Algorithm::Sha1, 8, T0 + 30 * s as u64)))
        .collect();
    let mut i = 0usize;
    let mut accepted = 0usize;
    c.bench_function("handle: totp_validate (accept + audit, sealed per 32)", |b| {
        b.iter(|| {
            let step = (i / OPS) % STEPS;
            let req = totp_req(&format!("op{}", i % OPS), &codes[step]);
            let now = T0 + 30 * step as u64;
            i += 1;
            let out = a.handle_request(&unlocker, Request::TotpValidate(&req), now, b"");
            accepted += usize::from(out.response.is_none());
            if i.is_multiple_of(32) {
                ack_all(&mut a);
            }
            black_box(out)
        })
    });

    // Held, not refused: every iteration was an audited acceptance (or at
    // least an audited decision) while i stayed within the steps.
    assert!(i > OPS * STEPS || accepted == i, "{accepted} of {i} held");
    let mut a = authority(1);
    let pd = PeerId::new(7, "pd");
    let issue: Message = TokenIssueReq {
        request_id: RequestId([2; 16]),
        vm_id: "pd".into(),
        requested_scope: ScopeSet::single(Scope::NetRead),
        audience: "fw0".into(),
        justification: "bench".into(),
        nonce: vec![3; 16],
        timestamp: T0,
        ttl: None,
        attestation: None,
        metadata: None,
    }
    .into();
    let mut n = 0u32;
    // One request per wake-up: its records get a seal of their own (what
    // one signature per record cost before batches).
    c.bench_function("handle: token_issue (acl + mint + audit + own seal)", |b| {
        b.iter(|| {
            let out = a.handle_request(&pd, Request::from_message(&issue).unwrap(), T0, b"");
            a.seal_audit(T0);
            n += 1;
            if n.is_multiple_of(32) {
                ack_all(&mut a);
            }
            black_box(out)
        })
    });
    ack_all(&mut a);
    // 32 requests per wake-up share one seal.
    c.bench_function("handle: token_issue (acl + mint + audit, sealed per 32)", |b| {
        b.iter(|| {
            let out = a.handle_request(&pd, Request::from_message(&issue).unwrap(), T0, b"");
            n += 1;
            if n.is_multiple_of(32) {
                ack_all(&mut a);
            }
            black_box(out)
        })
    });

    // Sanity: a full TOTP + unlock-free validation on a fresh authority is "ok".
    let mut fresh = authority(1);
    let req = totp_req("op0", &code);
    ack_all(&mut fresh);
    match answer(&mut fresh, &unlocker, &req.into()) {
        Some(Message::TotpValidateResp(r)) => assert_eq!(r.result, TotpResult::Ok),
        other => panic!("unexpected {other:?}"),
    }

    ack_all(&mut a);
    let Some(Message::TokenIssueResp(resp)) = answer(&mut a, &pd, &issue) else { panic!() };
    let tok = resp.token.unwrap();
    let keys = a.verifier_keyset();
    let exp =
        Expectations { audience: "fw0", scope: ScopeSet::single(Scope::NetRead), now: T0, skew: 0 };
    c.bench_function("token::verify (fresh replay cache)", |b| {
        b.iter(|| {
            let mut cache = MemoryReplayCache::new(4);
            black_box(token::verify(&tok, &keys, &exp, &mut cache, &RevokedSet::new()).unwrap())
        })
    });

    let key = SigningKey::from_bytes(&[5; 32]);
    let msg = [0x42u8; 200];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    c.bench_function("ed25519 sign (200 B)", |b| b.iter(|| black_box(key.sign(black_box(&msg)))));
    c.bench_function("ed25519 verify (200 B)", |b| {
        b.iter(|| black_box(vk.verify(black_box(&msg), &sig).is_ok()))
    });
    c.bench_function("ed25519 verify_strict (200 B)", |b| {
        b.iter(|| black_box(vk.verify_strict(black_box(&msg), &sig).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
