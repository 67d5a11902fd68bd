//! policy_pd's enforcer and its token requests, against tokens from an
//! in-process cryptod: the one accepted path and every refusal.

mod support;

use portcullis_apps::common::AppError;
use portcullis_apps::policy_pd::{issue_request, issued_token, Enforcer};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{KeysetReq, RequestId, RevocationListReq, TokenRevokeReq};
use portcullis_proto::scope::Scope;
use portcullis_proto::token::VerifyError;
use support::*;

const RULE: &str = "allow tcp 10.0.0.0/8 -> 443";

fn pd() -> PeerId {
    PeerId::new(7, "policy_pd")
}

fn token_for(a: &mut Authority, scope: Scope, audience: &str, ttl: u64, n: u8) -> Vec<u8> {
    let rid = RequestId([n; 16]);
    let req = issue_request("policy_pd", rid, [n; 16], scope, audience, ttl, T0);
    issued_token(rid, ask_as(a, &pd(), &req, T0)).unwrap()
}

fn enforcer(a: &mut Authority) -> Enforcer {
    Enforcer::new("policy_pd", 30, trust(a))
}

#[test]
fn a_fresh_scoped_token_applies_the_rule_once() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetModify, "policy_pd", 60, 1);
    let claims = enf.apply(&tok, RULE, T0).unwrap();
    assert_eq!(claims.sub, "policy_pd");
    assert_eq!(enf.rules, vec![RULE.to_string()]);
    assert_eq!(enf.apply(&tok, RULE, T0).unwrap_err(), VerifyError::Replayed);
    assert_eq!(enf.rules.len(), 1, "a refused token changes nothing");
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetModify, "fw0", 60, 1);
    assert_eq!(enf.apply(&tok, RULE, T0).unwrap_err(), VerifyError::WrongAudience);
    assert!(enf.rules.is_empty());
}

#[test]
fn a_token_without_the_scope_is_refused() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetRead, "policy_pd", 60, 1);
    assert_eq!(enf.apply(&tok, RULE, T0).unwrap_err(), VerifyError::MissingScope);
}

#[test]
fn an_expired_token_is_refused() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetModify, "policy_pd", 1, 1);
    assert_eq!(enf.apply(&tok, RULE, T0 + 1 + 30 + 1).unwrap_err(), VerifyError::Expired);
}

#[test]
fn a_revoked_token_is_refused_once_the_list_is_fetched() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetModify, "policy_pd", 60, 1);
    let contents = portcullis_proto::danger::inspect(&tok).unwrap();
    let claims = &contents.get_unverified().claims;
    let revoke: Message = TokenRevokeReq {
        request_id: RequestId([5; 16]),
        cti: claims.cti.clone(),
        reason: "test".into(),
        timestamp: T0,
    }
    .into();
    assert!(matches!(ask_as(&mut a, &pd(), &revoke, T0), Message::TokenRevokeResp(_)));
    let list: Message = RevocationListReq { request_id: RequestId([6; 16]) }.into();
    match ask_as(&mut a, &pd(), &list, T0) {
        Message::RevocationList(l) => enf.trust.accept_revocations(&l.signed).unwrap(),
        other => panic!("{other:?}"),
    }
    assert_eq!(enf.apply(&tok, RULE, T0).unwrap_err(), VerifyError::Revoked);
}

#[test]
fn a_token_from_another_authority_is_refused() {
    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    // Same keys, but a verifier that holds no keyset signed by the root.
    let root = a.root_public();
    let mut bare = Enforcer::new(
        "policy_pd",
        30,
        portcullis_apps::trust::Trust::new(root, &portcullis_authority::keys::kid_for(&root)),
    );
    let tok = token_for(&mut a, Scope::NetModify, "policy_pd", 60, 1);
    assert_eq!(bare.apply(&tok, RULE, T0).unwrap_err(), VerifyError::UnknownKid);
    let mut forged = tok.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(enf.apply(&forged, RULE, T0).is_err());
    assert!(enf.rules.is_empty());
}

#[test]
fn a_refused_or_mismatched_issue_answer_is_an_error() {
    let mut a = cryptod();
    // luks:unlock is never issued this way: refused, with the reason.
    let rid = RequestId([1; 16]);
    let req = issue_request("policy_pd", rid, [1; 16], Scope::LuksUnlock, "policy_pd", 60, T0);
    match issued_token(rid, ask_as(&mut a, &pd(), &req, T0)) {
        Err(AppError::Protocol(e)) => assert!(e.starts_with("token refused: denied"), "{e}"),
        other => panic!("{other:?}"),
    }
    // An answer to another request, or of another kind.
    let req = issue_request("policy_pd", rid, [2; 16], Scope::NetModify, "policy_pd", 60, T0);
    let answer = ask_as(&mut a, &pd(), &req, T0);
    assert!(matches!(issued_token(RequestId([9; 16]), answer), Err(AppError::Protocol(_))));
    let keyset = ask_as(&mut a, &pd(), &KeysetReq { request_id: rid }.into(), T0);
    assert!(matches!(issued_token(rid, keyset), Err(AppError::Protocol(_))));
    // Before its first seed cryptod cannot issue: ask again (policy_pd's
    // start waits on this), not a refusal.
    let mut unseeded =
        portcullis_authority::Authority::new(Default::default(), sealed_state(), T0).unwrap();
    match issued_token(rid, ask_as(&mut unseeded, &pd(), &req, T0)) {
        Err(AppError::Busy(e)) => assert!(e.starts_with("token refused: unavailable"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Issue 13: after applying the rule, policy_pd's signed outcome (a fresh
/// key, attested by cryptod for policy_pd) is recorded by cryptod; the same
/// outcome without the attestation, or from another enforcer name than the
/// token's audience, is refused.
#[test]
fn the_rule_outcome_signed_with_an_attested_key_is_recorded() {
    use ed25519_dalek::SigningKey;
    use portcullis_apps::policy_pd::signed_outcome;
    use portcullis_proto::msg::{AttestationReq, Enforced, OutcomeReport, OutcomeResult};

    let mut a = cryptod();
    let mut enf = enforcer(&mut a);
    let tok = token_for(&mut a, Scope::NetModify, "policy_pd", 60, 1);
    let claims = enf.apply(&tok, RULE, T0).unwrap();
    let key = SigningKey::from_bytes(&[0x44; 32]);
    let req = AttestationReq {
        request_id: RequestId([9; 16]),
        action: "net:modify".into(),
        subject_pubkey: key.verifying_key().to_bytes(),
        nonce: vec![9; 16],
        timestamp: T0,
    };
    let Message::Attestation(att) = ask_as(&mut a, &pd(), &req.into(), T0) else { panic!() };
    let report = |a: &mut Authority, enforcer: &str, attestation: Option<Vec<u8>>| {
        let signed =
            signed_outcome(&key, enforcer, &claims.cti, Enforced::Applied, None, T0 + 1).unwrap();
        let r = OutcomeReport { request_id: RequestId([3; 16]), signed, attestation };
        match ask_as(a, &pd(), &r.into(), T0 + 1) {
            Message::OutcomeResp(resp) => (resp.result, resp.reason),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        report(&mut a, "policy_pd", Some(att.signed.clone())),
        (OutcomeResult::Recorded, None)
    );
    let (result, reason) = report(&mut a, "policy_pd", None);
    assert_eq!(
        (result, reason.as_deref()),
        (OutcomeResult::Refused, Some("outcome: no key for this key id"))
    );
    let (result, reason) = report(&mut a, "fw0", Some(att.signed));
    assert_eq!(
        (result, reason.as_deref()),
        (OutcomeResult::Refused, Some("outcome: the decision was not for this peer"))
    );
}
