//! End-to-end tests of the state machine through its entry points
//! (`handle_request`, `collector_ack`, `entropy`), reached through the
//! test-only `Route` shim in `common`.

use portcullis_authority::audit::verify_chain;
use portcullis_authority::authority::{not_served, Config, Output};
use portcullis_authority::sealed;
use portcullis_authority::totp::{totp, Algorithm, OperatorSecret};
use portcullis_authority::unlock::{self, Transcript};
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AuditAck, AuditResult, ErrorCode, IssueResult, KeysetBody, KeysetReq, RequestId,
    RevocationBody, RevocationListReq, RevokeResult, TokenIssueReq, TokenRevokeReq, TotpResult,
    TotpValidateResp,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, RevokedSet, VerifyError};
use x25519_dalek::{PublicKey, StaticSecret};

mod common;
use common::*;

fn seeded_with(config: Config) -> (Authority, Vec<Vec<u8>>) {
    let mut a = Authority::new(config, state(), T0).unwrap();
    let out = a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    (a, records(&out))
}

fn seeded() -> (Authority, Vec<Vec<u8>>) {
    seeded_with(Config::default())
}

fn call(a: &mut Authority, peer: &PeerId, msg: &Message, now: u64, hw: &[u8]) -> Output {
    let mut out = a.handle(peer, msg, now, hw);
    let Some(last) = records(&out).last().map(|r| audit_record(r)) else { return out };
    let ack = a.handle(
        &PeerId::new(0, "collector"),
        &AuditAck { chain_id: last.chain_id, seq: last.seq }.into(),
        now,
        b"",
    );
    assert!(ack.response.is_none() && ack.audit.is_empty());
    let mut released = ack.released.into_iter();
    if let Some((to, answer)) = released.next() {
        assert!(out.response.is_none(), "an answer was both sent and held");
        assert_eq!(&to, peer, "released to the peer that asked");
        out.response = Some(answer);
    }
    assert!(released.next().is_none());
    out
}

/// A fresh attestation of `peer` for `action` binding `pubkey`, fetched
/// (and its record acknowledged) at `now`.
fn attest(a: &mut Authority, peer: &PeerId, action: &str, pubkey: [u8; 32], now: u64) -> Vec<u8> {
    static NONCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NONCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    attestation_of(&call(a, peer, &attestation_req(action, pubkey, n, now).into(), now, b""))
}

fn issue_req(scope: ScopeSet, audience: &str, ttl: Option<u64>) -> TokenIssueReq {
    TokenIssueReq {
        request_id: RequestId([0x43; 16]),
        vm_id: "whatever-the-guest-claims".into(),
        requested_scope: scope,
        audience: audience.into(),
        justification: "rule update".into(),
        nonce: vec![3; 16],
        timestamp: T0,
        ttl,
        attestation: None,
        metadata: None,
    }
}

#[test]
fn unseeded_authority_refuses_with_unavailable() {
    let mut a = Authority::new(Config::default(), state(), T0).unwrap();
    let out = call(&mut a, &unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Unavailable);
    assert!(out.audit.is_empty());
    let out = call(
        &mut a,
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into(),
        T0,
        b"",
    );
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Unavailable)
    );
}

#[test]
fn unseeded_authority_answers_busy_for_its_keyset_then_the_keyset() {
    // Created before entropyd (any creation order works): no signing key
    // yet, so a client asking for the keyset is told to ask again, not
    // that cryptod failed.
    let mut a = Authority::new(Config::default(), state(), T0).unwrap();
    let ask = |a: &mut Authority| {
        a.handle(&unlocker(), &KeysetReq { request_id: RequestId([1; 16]) }.into(), T0, b"")
            .response
    };
    match ask(&mut a) {
        Some(Message::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert_eq!(e.request_id, Some(RequestId([1; 16])));
        }
        other => panic!("expected busy, got {other:?}"),
    }
    for i in 0..4 {
        call(&mut a, &PeerId::new(2, "entropyd"), &entropy(i), T0, b"");
    }
    assert!(a.is_ready());
    assert!(matches!(ask(&mut a), Some(Message::Keyset(_))));
}

#[test]
fn entropy_from_another_peer_is_not_credited() {
    let mut a = Authority::new(Config::default(), state(), T0).unwrap();
    for i in 0..4 {
        call(&mut a, &PeerId::new(9, "mallory"), &entropy(i), T0, b"");
    }
    assert!(!a.is_ready());
    call(&mut a, &PeerId::new(2, "entropyd"), &entropy(9), T0, b"");
    assert!(a.is_ready());
}

#[test]
fn seeding_starts_the_chain_and_the_first_key() {
    let (a, recs) = seeded();
    assert_eq!(recs.len(), 2, "chain_start and key_rotate");
    let s = verify_chain(&recs, &[a.root_public()]).unwrap();
    assert_eq!((s.first_seq, s.last_seq), (0, 1));
    assert_eq!(a.verifier_keyset().len(), 1);
}

#[test]
fn totp_code_accepted_once_is_replay_the_second_time() {
    let (mut a, _) = seeded();
    let req: Message = totp_req(&code_at(T0), "yubi1").into();
    let first = call(&mut a, &unlocker(), &req, T0, b"");
    assert_eq!(totp_resp(&first).result, TotpResult::Ok);
    assert!(first.state_changed);
    let second = call(&mut a, &unlocker(), &req, T0 + 1, b"");
    assert_eq!(totp_resp(&second).result, TotpResult::Replay);
    assert_eq!(audit_record(&records(&second)[0]).result, AuditResult::Replay);
}

#[test]
fn sixth_wrong_code_is_rate_limited() {
    let (mut a, _) = seeded();
    let wrong = format!("{:08}", (totp(SECRET, Algorithm::Sha1, 8, T0) + 1) % 100_000_000);
    for i in 0..5 {
        let out = call(&mut a, &unlocker(), &totp_req(&wrong, "yubi1").into(), T0 + i, b"");
        assert_eq!(totp_resp(&out).result, TotpResult::Fail, "attempt {}", i + 1);
    }
    let out = call(&mut a, &unlocker(), &totp_req(&code_at(T0 + 5), "yubi1").into(), T0 + 5, b"");
    let r = totp_resp(&out);
    assert_eq!(r.result, TotpResult::RateLimited, "even a right code is refused while locked");
    assert_eq!(r.retry_after, Some(29));
    assert_eq!(audit_record(&records(&out)[0]).result, AuditResult::RateLimited);
    // After the lockout the right code works again.
    let later = T0 + 4 + 30 + 31;
    let out = call(&mut a, &unlocker(), &totp_req(&code_at(later), "yubi1").into(), later, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Ok);
}

#[test]
fn a_locked_operator_does_not_lock_another_operator_on_the_same_device() {
    let mut st = state();
    st.operators.push(OperatorSecret::new("bob", &[7; 20], Algorithm::Sha256, 6).unwrap());
    let mut a = Authority::new(Config::default(), st, T0).unwrap();
    call(&mut a, &PeerId::new(2, "entropyd"), &entropy(1), T0, b"");
    for _ in 0..5 {
        call(&mut a, &unlocker(), &totp_req("00000000", "shared").into(), T0, b"");
    }
    let locked = call(&mut a, &unlocker(), &totp_req(&code_at(T0), "shared").into(), T0, b"");
    assert_eq!(totp_resp(&locked).result, TotpResult::RateLimited);
    // The device id is the peer's claim, not a key: bob is checked (and
    // fails on a wrong code) rather than being locked out with alice.
    let mut req = totp_req("000000", "shared");
    req.operator_id = "bob".into();
    let out = call(&mut a, &unlocker(), &req.into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Fail);
}

#[test]
fn acl_denies_unknown_peers_and_audits_it() {
    let (mut a, _) = seeded();
    let out =
        call(&mut a, &PeerId::new(6, "unlocker"), &totp_req(&code_at(T0), "yubi1").into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Denied);
    let rec = audit_record(&records(&out)[0]);
    assert_eq!((rec.actor.as_str(), rec.result), ("unlocker", AuditResult::Denied));
    // The code was not consumed by the refused request.
    let out = call(&mut a, &unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Ok);

    let out = call(
        &mut a,
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetModify), "fw9", None).into(),
        T0,
        b"",
    );
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Denied)
    );
    assert_eq!(audit_record(&records(&out)[0]).result, AuditResult::Denied);
}

#[test]
fn full_outbox_refuses_until_acked() {
    let config = Config { audit_outbox: 4, answer_after_audit: false, ..Config::default() };
    let (mut a, recs) = seeded_with(config);
    assert_eq!(recs.len(), 2);
    let pd = policy_pd();
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    for _ in 0..2 {
        let out = a.handle(&pd, &req, T0, b"");
        assert!(
            matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Ok)
        );
    }
    let out = a.handle(&pd, &req, T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Unavailable)
    );
    assert!(out.audit.is_empty(), "nothing was dropped, nothing was written");
    assert_eq!(a.pending_audit_len(), 4);
    // Public data is still served.
    assert!(matches!(
        a.handle(&pd, &KeysetReq { request_id: RequestId([1; 16]) }.into(), T0, b"").response,
        Some(Message::Keyset(_))
    ));
    let chain_id = audit_record(&recs[0]).chain_id;
    a.handle(&PeerId::new(3, "collector"), &AuditAck { chain_id, seq: 1 }.into(), T0, b"");
    let out = a.handle(&pd, &req, T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Ok)
    );
}

#[test]
fn a_held_token_is_signed_after_its_record_and_is_the_token_an_unheld_answer_gets() {
    // The same state, entropy and requests: one authority answers at once,
    // the other holds the answers until the collector's ack and signs
    // their tokens in between (`sign_held`) or, failing that, on release.
    let (mut now, _) = seeded_with(Config { answer_after_audit: false, ..Config::default() });
    let (mut held, _) = seeded();
    let req = issue_req(ScopeSet::single(Scope::NetModify), "fw0", Some(10_000)).into();
    let token_of = |m: Option<&Message>| match m {
        Some(Message::TokenIssueResp(r)) if r.result == IssueResult::Ok => r.token.clone(),
        other => panic!("expected a token answer, got {other:?}"),
    };
    for signed_early in [true, false] {
        let at_once = token_of(now.handle(&policy_pd(), &req, T0, b"").response.as_ref());
        let out = held.handle(&policy_pd(), &req, T0, b"");
        assert!(out.response.is_none(), "held until the collector has the record");
        held.seal_audit(T0);
        assert_eq!(held.unsigned_held(), 1);
        if signed_early {
            assert_eq!(held.sign_held(), 1);
            assert_eq!(held.unsigned_held(), 0);
            assert_eq!(held.sign_held(), 0, "each token is signed once");
        }
        let rec = records(&out).pop().unwrap();
        let released = ack(&mut held, &rec).released;
        assert_eq!(released.len(), 1);
        let later = token_of(Some(&released[0].1));
        assert!(later.is_some());
        assert_eq!(later, at_once, "signed early: {signed_early}");
    }
    assert_eq!(held.held_len(), 0);
    assert_eq!(held.sign_held(), 0);
}

#[test]
fn issued_token_verifies_and_carries_the_rules() {
    let (mut a, _) = seeded();
    let out = call(
        &mut a,
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetModify), "fw0", Some(10_000)).into(),
        T0,
        b"",
    );
    let Some(Message::TokenIssueResp(r)) = out.response else { panic!() };
    assert_eq!(r.result, IssueResult::Ok);
    let tok = r.token.unwrap();
    let exp = Expectations {
        audience: "fw0",
        scope: ScopeSet::single(Scope::NetModify),
        now: T0 + 1,
        skew: 0,
    };
    let c = token::verify(
        &tok,
        &a.verifier_keyset(),
        &exp,
        &mut MemoryReplayCache::new(4),
        &RevokedSet::new(),
    )
    .unwrap();
    assert_eq!(
        (c.iss.as_str(), c.sub.as_str()),
        ("cryptod", "policy_pd"),
        "sub is the peer, not vm_id"
    );
    assert_eq!(c.exp - c.iat, 300, "ttl capped at 300 s");
    assert_eq!(c.cti.len(), 16);
    assert_eq!(c.nonce, vec![3; 16]);
    assert_eq!(r.expires_at, Some(c.exp));
    // luks:unlock is never issued through token_issue_req.
    let out = call(
        &mut a,
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::LuksUnlock), "unlock_agent", None).into(),
        T0,
        b"",
    );
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Denied)
    );
}

#[test]
fn revoked_token_is_refused_by_the_verifier() {
    let (mut a, _) = seeded();
    let out = call(
        &mut a,
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into(),
        T0,
        b"",
    );
    let Some(Message::TokenIssueResp(r)) = out.response else { panic!() };
    let tok = r.token.unwrap();
    let cti = danger::inspect(&tok).unwrap().into_unverified().claims.cti;
    let revoke = TokenRevokeReq {
        request_id: RequestId([5; 16]),
        cti: cti.clone(),
        reason: "leaked".into(),
        timestamp: T0,
    };
    let out = call(&mut a, &policy_pd(), &revoke.clone().into(), T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenRevokeResp(ref r)) if r.result == RevokeResult::Ok)
    );
    // The unlocker may not revoke.
    let out = call(&mut a, &unlocker(), &revoke.into(), T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenRevokeResp(ref r)) if r.result == RevokeResult::Denied)
    );

    let out = call(
        &mut a,
        &policy_pd(),
        &RevocationListReq { request_id: RequestId([6; 16]) }.into(),
        T0 + 1,
        b"",
    );
    let Some(Message::RevocationList(list)) = out.response else { panic!() };
    let root = a.root_public();
    let v = cose::verify(&list.signed, ContentType::RevocationList, |_| Some(root)).unwrap();
    let body = RevocationBody::from_cbor(&v.payload).unwrap();
    assert_eq!(body.entries.len(), 1);
    let revoked = RevokedSet::from_ids(body.entries.into_iter().map(|e| e.cti).collect());
    let exp = Expectations {
        audience: "fw0",
        scope: ScopeSet::single(Scope::NetRead),
        now: T0 + 1,
        skew: 0,
    };
    assert_eq!(
        token::verify(&tok, &a.verifier_keyset(), &exp, &mut MemoryReplayCache::new(4), &revoked),
        Err(VerifyError::Revoked)
    );
}

#[test]
fn unlock_grant_delivers_the_sealed_passphrase() {
    let (mut a, _) = seeded();
    let sk = StaticSecret::from([0x77; 32]);
    let mut req = totp_req(&code_at(T0), "yubi1");
    req.volume_id = Some("vol0".into());
    req.ephemeral_pubkey = Some(PublicKey::from(&sk).to_bytes());
    let pk = PublicKey::from(&sk).to_bytes();
    req.attestation = Some(attest(&mut a, &unlocker(), "luks:unlock", pk, T0));
    let out = call(&mut a, &unlocker(), &req.clone().into(), T0, b"");
    let r = totp_resp(&out);
    assert_eq!(r.result, TotpResult::Ok);
    let tok = r.capability_token.clone().unwrap();
    let exp = Expectations {
        audience: "unlock_agent",
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: T0,
        skew: 0,
    };
    let c = token::verify(
        &tok,
        &a.verifier_keyset(),
        &exp,
        &mut MemoryReplayCache::new(4),
        &RevokedSet::new(),
    )
    .unwrap();
    assert_eq!(c.exp - c.iat, 60);
    assert_eq!(c.nonce, req.client_nonce);
    let sealed = r.unlock_secret.clone().unwrap();
    let t = Transcript {
        request_id: &req.request_id,
        operator: "alice",
        volume_id: "vol0",
        token: &tok,
    };
    let passphrase = unlock::open_unlock_secret(&sk, &sealed, &t).unwrap();
    assert_eq!(&passphrase[..], &unlock::luks_passphrase(&[0x22; 32], "vol0").unwrap()[..]);
    let recs = records(&out);
    assert_eq!(recs.len(), 2, "totp_validate and unlock_secret");

    // A volume without a key is refused before the code is consumed.
    let mut half = totp_req(&code_at(T0 + 30), "yubi1");
    half.volume_id = Some("vol0".into());
    let out = call(&mut a, &unlocker(), &half.into(), T0 + 30, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Denied);
}

#[test]
fn a_volume_the_acl_does_not_list_gets_no_secret_and_keeps_the_code() {
    let (mut a, _) = seeded();
    let sk = StaticSecret::from([0x77; 32]);
    let mut req = totp_req(&code_at(T0), "yubi1");
    req.volume_id = Some("home".into());
    req.ephemeral_pubkey = Some(PublicKey::from(&sk).to_bytes());
    let out = call(&mut a, &unlocker(), &req.clone().into(), T0, b"");
    let r = totp_resp(&out);
    assert_eq!(r.result, TotpResult::Denied);
    assert_eq!(r.reason.as_deref(), Some("volume not granted by acl line 1"));
    assert!(r.unlock_secret.is_none() && r.capability_token.is_none());
    let rec = audit_record(&records(&out)[0]);
    assert_eq!(
        (rec.action, rec.result),
        (portcullis_proto::msg::AuditAction::AclDeny, AuditResult::Denied)
    );
    // The code was not consumed: the same code for a listed volume works.
    req.volume_id = Some("data".into());
    let pk = PublicKey::from(&sk).to_bytes();
    req.attestation = Some(attest(&mut a, &unlocker(), "luks:unlock", pk, T0));
    let out = call(&mut a, &unlocker(), &req.into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Ok);
}

#[test]
fn a_low_order_ephemeral_key_gets_no_secret() {
    let (mut a, _) = seeded();
    let mut req = totp_req(&code_at(T0), "yubi1");
    req.volume_id = Some("vol0".into());
    req.ephemeral_pubkey = Some([0; 32]);
    req.attestation = Some(attest(&mut a, &unlocker(), "luks:unlock", [0; 32], T0));
    let out = call(&mut a, &unlocker(), &req.into(), T0, b"");
    let r = totp_resp(&out);
    assert_eq!(r.result, TotpResult::Unavailable);
    assert!(r.unlock_secret.is_none() && r.capability_token.is_none());
}

#[test]
fn rotation_on_tick_publishes_both_keys_then_drops_the_old_one() {
    let (mut a, _) = seeded();
    let period = Config::default().keys.rotation_period;
    let overlap = Config::default().keys.overlap;
    let out = a.tick(T0 + period);
    assert_eq!(records(&out).len(), 1, "key_rotate record");
    let out = call(
        &mut a,
        &policy_pd(),
        &KeysetReq { request_id: RequestId([1; 16]) }.into(),
        T0 + period,
        b"",
    );
    let Some(Message::Keyset(ks)) = out.response else { panic!() };
    let root = a.root_public();
    let body = KeysetBody::from_cbor(
        &cose::verify(&ks.signed, ContentType::Keyset, |_| Some(root)).unwrap().payload,
    )
    .unwrap();
    assert_eq!(body.keys.len(), 2);
    a.tick(T0 + period + overlap + 1);
    assert_eq!(a.verifier_keyset().len(), 1);
}

#[test]
fn export_keeps_replay_state_across_a_restart() {
    let (mut a, _) = seeded();
    let req: Message = totp_req(&code_at(T0), "yubi1").into();
    assert_eq!(totp_resp(&call(&mut a, &unlocker(), &req, T0, b"")).result, TotpResult::Ok);
    let kek = [0x99; 32];
    let blob = a.export(&kek).unwrap();
    let restored = sealed::unseal(&blob, &kek).unwrap();
    let mut b = Authority::new(Config::default(), restored, T0).unwrap();
    b.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"");
    assert_eq!(totp_resp(&call(&mut b, &unlocker(), &req, T0, b"")).result, TotpResult::Replay);
}

#[test]
fn the_whole_session_is_one_verifiable_chain() {
    // Answers go out at once here; the outbox keeps every record.
    let (mut a, mut all) = seeded_with(Config { answer_after_audit: false, ..Config::default() });
    let wrong = totp_req("00000000", "yubi1");
    all.extend(records(&a.handle(&unlocker(), &wrong.into(), T0, b"")));
    all.extend(records(&a.handle(&unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0, b"")));
    all.extend(records(&a.handle(
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into(),
        T0,
        b"",
    )));
    all.extend(records(&a.tick(T0 + 86_400)));
    assert_eq!(a.unsealed_audit_len(), 1, "the tick's record waits for the next seal");
    a.seal_audit(T0 + 86_400);
    let items = pending_items(&a);
    let s = verify_chain(&items, &[a.root_public()]).unwrap();
    assert_eq!((s.records, s.unsealed, s.sealed_last), (all.len(), 0, Some(s.last_seq)));
    assert_eq!(s.last_seq as usize, all.len() - 1);
    assert_eq!(a.pending_audit_len(), all.len());
    // Every record made is in the log, byte for byte, each batch sealed once.
    let stored: Vec<&Vec<u8>> = items.iter().filter(|i| i[0] != 0xd2).collect();
    assert_eq!(stored, all.iter().collect::<Vec<_>>());
    assert_eq!(s.seals, a.pending_audit().len());
}

#[test]
fn responses_and_unknown_requests_get_an_error() {
    let (mut a, _) = seeded();
    let resp = TotpValidateResp {
        request_id: RequestId([1; 16]),
        result: TotpResult::Ok,
        reason: None,
        capability_token: None,
        unlock_secret: None,
        expires_at: None,
        retry_after: None,
    };
    let out = call(&mut a, &unlocker(), &resp.into(), T0, b"");
    assert!(matches!(out.response, Some(Message::Error(_))));
}

fn ack(a: &mut Authority, rec: &[u8]) -> Output {
    let r = audit_record(rec);
    a.handle(
        &PeerId::new(0, "collector"),
        &AuditAck { chain_id: r.chain_id, seq: r.seq }.into(),
        T0,
        b"",
    )
}

#[test]
fn answers_wait_until_the_collector_has_their_records() {
    let (mut a, start) = seeded();
    // An accepted code: two records (validation, unlock secret), no answer yet.
    let mut req = totp_req(&code_at(T0), "yubi1");
    let secret = StaticSecret::from([7u8; 32]);
    req.volume_id = Some("data".into());
    req.ephemeral_pubkey = Some(PublicKey::from(&secret).to_bytes());
    let pk = PublicKey::from(&secret).to_bytes();
    req.attestation = Some(attest(&mut a, &unlocker(), "luks:unlock", pk, T0));
    let out = a.handle(&unlocker(), &req.into(), T0, b"");
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    assert!(out.response.is_none(), "no answer before the collector stored the records");
    assert!(out.state_changed, "the step is used (and resealed) at once");
    assert_eq!(a.held_len(), 1);
    // Another peer's audited request is held behind it.
    let out = a.handle(
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into(),
        T0,
        b"",
    );
    let issued = records(&out);
    assert!(out.response.is_none());
    assert_eq!(a.held_len(), 2);
    // Requests that make no record are answered at once.
    let out = a.handle(&policy_pd(), &KeysetReq { request_id: RequestId([1; 16]) }.into(), T0, b"");
    assert!(matches!(out.response, Some(Message::Keyset(_))));
    // Acks for records before them, or for another chain, release nothing.
    assert!(ack(&mut a, &start[1]).released.is_empty());
    assert!(ack(&mut a, &recs[0]).released.is_empty());
    let mut other = audit_record(&recs[1]);
    other.chain_id[0] ^= 1;
    let out = a.handle(
        &PeerId::new(0, "collector"),
        &AuditAck { chain_id: other.chain_id, seq: 99 }.into(),
        T0,
        b"",
    );
    assert!(out.released.is_empty());
    // The ack of the unlock record releases the unlocker's answer only.
    let out = ack(&mut a, &recs[1]);
    assert_eq!(out.released.len(), 1);
    let (to, answer) = &out.released[0];
    assert_eq!(to, &unlocker());
    assert!(
        matches!(answer, Message::TotpValidateResp(r) if r.result == TotpResult::Ok && r.unlock_secret.is_some())
    );
    // A cumulative ack releases the rest in order.
    let out = ack(&mut a, &issued[0]);
    assert_eq!(out.released.len(), 1);
    assert_eq!(out.released[0].0, policy_pd());
    assert!(
        matches!(out.released[0].1, Message::TokenIssueResp(ref r) if r.result == IssueResult::Ok)
    );
    assert_eq!(a.held_len(), 0);
}

#[test]
fn held_answers_are_bounded_and_the_rest_fail_closed_undecided() {
    let (mut a, _) = seeded_with(Config { max_held: 2, ..Config::default() });
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    let mut last = Vec::new();
    for _ in 0..2 {
        let out = a.handle(&policy_pd(), &req, T0, b"");
        assert!(out.response.is_none());
        last = records(&out);
    }
    let out = a.handle(&policy_pd(), &req, T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Unavailable)
    );
    assert!(out.audit.is_empty(), "refused before any decision");
    // A code checked now would be consumed, so it is not checked at all.
    let out = a.handle(&unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0, b"");
    assert_eq!(totp_resp(&out).result, TotpResult::Unavailable);
    assert!(out.audit.is_empty());
    assert_eq!(ack(&mut a, &last[0]).released.len(), 2);
    let out = call(&mut a, &unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0, b"");
    assert_eq!(
        totp_resp(&out).result,
        TotpResult::Ok,
        "the code was not used by the refused request"
    );
}

#[test]
fn a_departed_peer_s_held_answers_are_dropped_not_misdelivered() {
    let (mut a, _) = seeded();
    let out = a.handle(
        &policy_pd(),
        &issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into(),
        T0,
        b"",
    );
    let first = records(&out);
    let out = a.handle(&unlocker(), &totp_req("00000000", "yubi1").into(), T0, b"");
    let second = records(&out);
    assert_eq!(a.drop_held(&policy_pd()), 1);
    assert_eq!(a.drop_held(&policy_pd()), 0);
    assert!(ack(&mut a, &first[0]).released.is_empty());
    let out = ack(&mut a, &second[0]);
    assert_eq!(out.released.len(), 1);
    assert_eq!(out.released[0].0, unlocker());
    assert_eq!(
        a.pending_audit().len(),
        0,
        "the dropped answer's record was still shipped and acked"
    );
}

#[test]
fn a_peer_flooding_token_requests_is_rate_limited_and_audited() {
    use portcullis_authority::ratelimit::IssueRateConfig;
    let issue_rate = IssueRateConfig { burst: 3, per_minute: 60, max_peers: 16 };
    let (mut a, _) = seeded_with(Config { issue_rate, ..Config::default() });
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    for _ in 0..3 {
        let out = call(&mut a, &policy_pd(), &req, T0, b"");
        assert!(
            matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Ok)
        );
    }
    let out = call(&mut a, &policy_pd(), &req, T0, b"");
    let Some(Message::TokenIssueResp(r)) = &out.response else { panic!("{:?}", out.response) };
    assert_eq!(r.result, IssueResult::RateLimited);
    assert!(r.token.is_none());
    assert_eq!(r.reason.as_deref(), Some("too many token requests; retry after 1 s"));
    assert_eq!(audit_record(&records(&out)[0]).result, AuditResult::RateLimited);
    // Another peer has its own budget; a second later there is one more.
    let other = PeerId::new(9, "policy_pd");
    let out = call(&mut a, &other, &req, T0, b"");
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result != IssueResult::RateLimited)
    );
    let out = call(&mut a, &policy_pd(), &req, T0 + 1, b"");
    assert!(
        matches!(out.response, Some(Message::TokenIssueResp(ref r)) if r.result == IssueResult::Ok)
    );
}

#[test]
fn dropping_held_answers_is_audited_with_the_count() {
    let (mut a, _) = seeded();
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    a.handle(&policy_pd(), &req, T0, b"");
    a.handle(&policy_pd(), &req, T0, b"");
    let (n, out) = a.drop_held_audited(&policy_pd(), "reconnected", T0 + 1);
    assert_eq!(n, 2);
    let recs = records(&out);
    assert_eq!(recs.len(), 1, "one record for the drop");
    let r = audit_record(&recs[0]);
    assert_eq!(r.action, portcullis_proto::msg::AuditAction::AnswerDrop);
    assert_eq!(r.actor, "policy_pd");
    let meta = format!("{:?}", r.metadata);
    assert!(meta.contains("\"2\"") && meta.contains("reconnected"), "{meta}");
    // Nothing held: nothing dropped, nothing audited.
    let (n, out) = a.drop_held_audited(&policy_pd(), "reconnected", T0 + 1);
    assert_eq!(n, 0);
    assert!(out.audit.is_empty());
}

#[test]
fn only_client_requests_reach_handle_request() {
    assert!(Request::from_message(&KeysetReq { request_id: RequestId([1; 16]) }.into()).is_some());
    let ack: Message = AuditAck { chain_id: [0; 16], seq: 1 }.into();
    assert!(Request::from_message(&ack).is_none());
    assert!(Request::from_message(&entropy(1)).is_none());
    match not_served(&ack) {
        Message::Error(e) => assert!(e.reason.contains("audit_ack"), "{}", e.reason),
        other => panic!("{other:?}"),
    }
}

/// [`call`] with dom0's measurement of the peer's image.
fn call_measured(
    a: &mut Authority,
    peer: &PeerId,
    image: Option<&[u8; 32]>,
    msg: &Message,
) -> Output {
    let req = Request::from_message(msg).unwrap();
    let mut out = a.handle_measured_request(peer, image, req, T0, b"");
    a.seal_audit(T0);
    let last = audit_record(records(&out).last().unwrap());
    let ack = a.handle(
        &PeerId::new(0, "collector"),
        &AuditAck { chain_id: last.chain_id, seq: last.seq }.into(),
        T0,
        b"",
    );
    if let Some((to, answer)) = ack.released.into_iter().next() {
        assert_eq!(&to, peer);
        out.response = Some(answer);
    }
    out
}

const GOOD_IMAGE: [u8; 32] = [0x5e; 32];
const BAD_IMAGE: [u8; 32] = [0xba; 32];

fn image_bound() -> Authority {
    let hex: String = GOOD_IMAGE.iter().map(|b| format!("{b:02x}")).collect();
    let acl = format!(
        "allow vm=unlocker domid=5 scopes=luks:unlock aud=unlock_agent volumes=data image=sha256:{hex}\n\
         allow vm=policy_pd domid=7 scopes=net:modify,token:revoke aud=fw0,cryptod image=sha256:{hex}\n"
    );
    let mut st = state();
    st.acl = acl;
    let mut a = Authority::new(Config::default(), st, T0).unwrap();
    a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    a
}

fn issue_result(out: &Output) -> IssueResult {
    match out.response {
        Some(Message::TokenIssueResp(ref r)) => r.result,
        ref other => panic!("expected token_issue_resp, got {other:?}"),
    }
}

#[test]
fn an_image_bound_rule_grants_only_the_measured_image() {
    let mut a = image_bound();
    let issue: Message = issue_req(ScopeSet::single(Scope::NetModify), "fw0", None).into();
    let out = call_measured(&mut a, &policy_pd(), Some(&GOOD_IMAGE), &issue);
    assert_eq!(issue_result(&out), IssueResult::Ok);

    // The right name and domid from another image: denied, both digests audited.
    let out = call_measured(&mut a, &policy_pd(), Some(&BAD_IMAGE), &issue);
    assert_eq!(issue_result(&out), IssueResult::Denied);
    let rec = audit_record(&records(&out)[0]);
    assert_eq!((rec.actor.as_str(), rec.result), ("policy_pd", AuditResult::Denied));
    let meta = rec.metadata.unwrap();
    assert_eq!(meta.get("image_expected").map(String::as_str), Some(&"5e".repeat(32)[..]));
    assert_eq!(meta.get("image_actual").map(String::as_str), Some(&"ba".repeat(32)[..]));
    assert_eq!(meta.get("reason").map(String::as_str), Some("image not granted by acl line 2"));

    // No measurement published: denied, audited as `none`.
    let out = call_measured(&mut a, &policy_pd(), None, &issue);
    assert_eq!(issue_result(&out), IssueResult::Denied);
    let meta = audit_record(&records(&out)[0]).metadata.unwrap();
    assert_eq!(meta.get("image_actual").map(String::as_str), Some("none"));
    // handle_request knows no measurement: the same.
    let out = call(&mut a, &policy_pd(), &issue, T0, b"");
    assert_eq!(issue_result(&out), IssueResult::Denied);

    // Revocation goes through the same rule.
    let revoke: Message = TokenRevokeReq {
        request_id: RequestId([7; 16]),
        cti: vec![1; 16],
        reason: "test".into(),
        timestamp: T0,
    }
    .into();
    let out = call_measured(&mut a, &policy_pd(), Some(&BAD_IMAGE), &revoke);
    assert!(
        matches!(out.response, Some(Message::TokenRevokeResp(ref r)) if r.result == RevokeResult::Denied)
    );
    let out = call_measured(&mut a, &policy_pd(), Some(&GOOD_IMAGE), &revoke);
    assert!(
        matches!(out.response, Some(Message::TokenRevokeResp(ref r)) if r.result == RevokeResult::Ok)
    );
}

#[test]
fn an_image_bound_unlock_rule_refuses_another_image_before_the_code() {
    let mut a = image_bound();
    let msg: Message = totp_req(&code_at(T0), "yubi1").into();
    let out = call_measured(&mut a, &unlocker(), Some(&BAD_IMAGE), &msg);
    assert_eq!(totp_resp(&out).result, TotpResult::Denied);
    let rec = audit_record(&records(&out)[0]);
    assert_eq!(rec.target.as_deref(), Some("luks:unlock"));
    let meta = rec.metadata.unwrap();
    assert_eq!(meta.get("image_actual").map(String::as_str), Some(&"ba".repeat(32)[..]));
    // The code was not consumed: the measured image may still use it.
    let out = call_measured(&mut a, &unlocker(), Some(&GOOD_IMAGE), &msg);
    assert_eq!(totp_resp(&out).result, TotpResult::Ok);
}

/// The collector's ack alone (the `Route` shim's `handle` also seals).
fn ack_only(a: &mut Authority, rec: &[u8]) -> Output {
    let r = audit_record(rec);
    a.collector_ack(&AuditAck { chain_id: r.chain_id, seq: r.seq })
}

/// Group commit: while a sealed batch waits for the collector, the
/// requests of later wake-ups are not sealed one by one; once the batch is
/// acknowledged they all share one seal (one signature) and one collector
/// write, and the ack of that one batch releases every caller's answer.
#[test]
fn group_commit_many_callers_share_one_seal_while_a_batch_is_in_flight() {
    let (mut a, start) = seeded();
    // The whole log as the collector stores it, batch by batch.
    let mut log = pending_items(&a);
    assert!(ack_only(&mut a, start.last().unwrap()).released.is_empty());
    assert_eq!(a.pending_audit_batches().count(), 0);
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    let issue = |a: &mut Authority| {
        let out = a.handle_request(&policy_pd(), Request::from_message(&req).unwrap(), T0, b"");
        assert!(out.response.is_none(), "held until its record is stored");
        records(&out)
    };
    // A lone request, nothing in flight: sealed at once.
    let first = issue(&mut a);
    assert_eq!(a.seal_audit_due(T0), 1);
    log.extend(pending_items(&a));
    // Eight more callers (wake-ups) while that batch is being written.
    let mut later = Vec::new();
    for _ in 0..8 {
        later.extend(issue(&mut a));
        assert_eq!(a.seal_audit_due(T0), 0, "waits for the batch in flight");
    }
    assert_eq!(a.unsealed_audit_len(), 8);
    assert_eq!(a.pending_audit_batches().count(), 1);
    // The collector stores the first batch: one answer out, then the eight
    // records are sealed together.
    assert_eq!(ack_only(&mut a, first.last().unwrap()).released.len(), 1);
    assert_eq!(a.seal_audit_due(T0), 1);
    let batches: Vec<_> = a.pending_audit_batches().cloned().collect();
    assert_eq!(batches.len(), 1, "one seal for the eight");
    assert_eq!(batches[0].records, later);
    log.extend(pending_items(&a));
    // The log verifies whole: one seal per batch (three), no unsealed tail.
    let s = verify_chain(&log, &[a.root_public()]).unwrap();
    assert_eq!((s.records, s.seals, s.unsealed), (start.len() + 9, 3, 0));
    // One ack releases all eight answers, in order.
    let out = ack_only(&mut a, later.last().unwrap());
    assert_eq!(out.released.len(), 8);
    assert!(out.released.iter().all(|(to, _)| to == &policy_pd()));
    assert_eq!(a.held_len(), 0);
}

/// Group commit is bounded in time: records waiting behind a batch the
/// collector does not acknowledge are sealed (and shipped) after
/// `GROUP_WAIT_SECS` anyway, so nothing waits forever for a slow collector.
#[test]
fn group_commit_seals_after_its_wait_when_the_collector_is_slow() {
    use portcullis_authority::audit::GROUP_WAIT_SECS;
    let (mut a, start) = seeded();
    assert!(ack_only(&mut a, start.last().unwrap()).released.is_empty());
    let req: Message = issue_req(ScopeSet::single(Scope::NetRead), "fw0", None).into();
    let issue = |a: &mut Authority| {
        a.handle_request(&policy_pd(), Request::from_message(&req).unwrap(), T0, b"");
    };
    issue(&mut a);
    issue(&mut a);
    assert_eq!(a.seal_audit_due(T0), 1);
    issue(&mut a);
    assert_eq!(a.seal_audit_due(T0 + GROUP_WAIT_SECS - 1), 0);
    assert_eq!(a.seal_audit_due(T0 + GROUP_WAIT_SECS), 1);
    assert_eq!(a.pending_audit_batches().count(), 2);
}
