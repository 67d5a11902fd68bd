//! Outcome reports through the state machine: an enforcer's signed outcome
//! of a decision is checked (key vouched for this peer, decision for this
//! peer) and appended as an `outcome` record carrying the signed bytes;
//! refusals are answered and audited; an unknown decision is recorded as such.

use ed25519_dalek::SigningKey;
use portcullis_authority::authority::{Config, Output};
use portcullis_authority::outcome::OutcomeKey;
use portcullis_authority::ratelimit::IssueRateConfig;
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AuditAck, AuditAction, AuditRecord, AuditResult, Enforced, OutcomeClaims, OutcomeReport,
    OutcomeResult, RequestId, TokenIssueReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};

mod common;
use common::*;

/// The enforcer's pinned outcome key (the "agent" for audience fw0 on dom0).
fn agent_key() -> SigningKey {
    SigningKey::from_bytes(&[0x61; 32])
}

fn dom0() -> PeerId {
    PeerId::new(0, "dom0")
}

fn pinned(audience: &str) -> OutcomeKey {
    OutcomeKey {
        peer: "dom0".into(),
        audience: audience.into(),
        key: agent_key().verifying_key().to_bytes(),
    }
}

fn authority_with(config: Config) -> Authority {
    let mut a = Authority::new(config, state(), T0).unwrap();
    a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    a
}

fn authority() -> Authority {
    authority_with(Config { outcome_keys: vec![pinned("fw0")], ..Config::default() })
}

/// Handles `req` and acknowledges its records, so the answer comes out.
fn run(a: &mut Authority, peer: &PeerId, req: Request<'_>, now: u64) -> Output {
    let mut out = a.handle_request(peer, req, now, b"");
    a.seal_audit(now);
    if let Some(last) = out.audit.last().map(|r| audit_record(r)) {
        let ack = a.collector_ack(&AuditAck { chain_id: last.chain_id, seq: last.seq });
        if let Some((_, answer)) = ack.released.into_iter().next() {
            out.response = Some(answer);
        }
    }
    out
}

/// policy_pd (dom7) gets a net:modify token for fw0; returns its cti.
fn decision(a: &mut Authority, nonce: u8) -> Vec<u8> {
    let req = TokenIssueReq {
        request_id: RequestId([0x43; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(Scope::NetModify),
        audience: "fw0".into(),
        justification: "rule update".into(),
        nonce: vec![nonce; 16],
        timestamp: T0,
        ttl: None,
        attestation: None,
        metadata: None,
    };
    let out = run(a, &policy_pd(), Request::TokenIssue(&req), T0);
    let Some(Message::TokenIssueResp(r)) = out.response else { panic!("{:?}", out.response) };
    let token = r.token.expect("token");
    portcullis_proto::danger::inspect(&token).unwrap().into_unverified().claims.cti
}

fn claims(cti: &[u8], enforcer: &str, outcome: Enforced) -> OutcomeClaims {
    OutcomeClaims {
        decision: cti.to_vec(),
        enforcer: enforcer.into(),
        outcome,
        timestamp: T0 + 1,
        reason: (outcome == Enforced::Failed).then(|| "no key available".into()),
    }
}

fn sign(key: &SigningKey, c: &OutcomeClaims) -> Vec<u8> {
    let kid = kid_for(&key.verifying_key());
    cose::sign(key, &kid, ContentType::Outcome, &c.to_cbor().unwrap()).unwrap()
}

/// Reports `signed` from `peer`; the answer and the last record made.
fn report(
    a: &mut Authority,
    peer: &PeerId,
    signed: Vec<u8>,
    attestation: Option<Vec<u8>>,
) -> (OutcomeResult, Option<String>, AuditRecord) {
    let r = OutcomeReport { request_id: RequestId([0x77; 16]), signed, attestation };
    let out = run(a, peer, Request::Outcome(&r), T0 + 2);
    let Some(Message::OutcomeResp(resp)) = out.response else { panic!("{:?}", out.response) };
    assert_eq!(resp.request_id, r.request_id);
    let last = audit_record(out.audit.last().expect("a record"));
    (resp.result, resp.reason, last)
}

fn meta<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.metadata.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

#[test]
fn an_accepted_outcome_is_recorded_with_the_enforcers_signed_bytes() {
    let mut a = authority();
    let cti = decision(&mut a, 1);
    let signed = sign(&agent_key(), &claims(&cti, "fw0", Enforced::Applied));
    let (result, reason, rec) = report(&mut a, &dom0(), signed.clone(), None);
    assert_eq!((result, reason), (OutcomeResult::Recorded, None));
    assert_eq!((rec.action, rec.result), (AuditAction::Outcome, AuditResult::Ok));
    assert_eq!(rec.actor, "dom0", "the actor is the link's peer");
    assert_eq!(rec.target.as_deref(), Some(hex(&cti).as_str()));
    assert_eq!(meta(&rec, "outcome"), Some("applied"));
    assert_eq!(meta(&rec, "signer"), Some("fw0"));
    assert_eq!(meta(&rec, "key"), Some("pinned"));
    assert_eq!(meta(&rec, "decision"), Some("known"));
    let pk = agent_key().verifying_key().to_bytes();
    assert_eq!(meta(&rec, "signer_key"), Some(hex(&pk).as_str()));
    assert_eq!(rec.evidence.as_deref(), Some(signed.as_slice()));
    // A failure is recorded as `fail`, with its reason.
    let signed = sign(&agent_key(), &claims(&cti, "fw0", Enforced::Failed));
    let (result, _, rec) = report(&mut a, &dom0(), signed, None);
    assert_eq!((result, rec.result), (OutcomeResult::Recorded, AuditResult::Fail));
    assert_eq!(meta(&rec, "reason"), Some("no key available"));
}

#[test]
fn an_outcome_for_an_unknown_decision_is_recorded_as_such() {
    let mut a = authority();
    let signed = sign(&agent_key(), &claims(&[0xee; 16], "fw0", Enforced::Applied));
    let (result, _, rec) = report(&mut a, &dom0(), signed, None);
    assert_eq!(result, OutcomeResult::Recorded);
    assert_eq!((rec.action, meta(&rec, "decision")), (AuditAction::Outcome, Some("unknown")));
    assert!(rec.evidence.is_some());
}

fn assert_refused(got: (OutcomeResult, Option<String>, AuditRecord), want: &str) {
    let (result, reason, rec) = got;
    assert_eq!((result, reason.as_deref()), (OutcomeResult::Refused, Some(want)));
    assert_eq!((rec.action, rec.result), (AuditAction::Outcome, AuditResult::Denied));
    assert_eq!(meta(&rec, "reason"), Some(want));
    assert_eq!(rec.evidence, None, "a refused outcome is not evidence");
}

#[test]
fn an_outcome_from_the_wrong_peer_is_refused_and_audited() {
    let mut a = authority();
    let cti = decision(&mut a, 1);
    let signed = sign(&agent_key(), &claims(&cti, "fw0", Enforced::Applied));
    // The key is pinned for dom0: the same bytes from another domain.
    let got = report(&mut a, &PeerId::new(9, "intruder"), signed, None);
    assert_refused(got, "outcome: no key for this key id");
    // Claiming another enforcer than the key's audience.
    let signed = sign(&agent_key(), &claims(&cti, "fw1", Enforced::Applied));
    assert_refused(
        report(&mut a, &dom0(), signed, None),
        "outcome: the decision was not for this peer",
    );
    // A key pinned for fw1 reporting on a decision for fw0.
    let mut a = authority_with(Config { outcome_keys: vec![pinned("fw1")], ..Config::default() });
    let cti = decision(&mut a, 2);
    let signed = sign(&agent_key(), &claims(&cti, "fw1", Enforced::Applied));
    assert_refused(
        report(&mut a, &dom0(), signed, None),
        "outcome: the decision was not for this peer",
    );
}

#[test]
fn an_outcome_with_a_bad_signature_is_refused() {
    let mut a = authority();
    let cti = decision(&mut a, 1);
    let mut signed = sign(&agent_key(), &claims(&cti, "fw0", Enforced::Applied));
    let last = signed.len() - 1;
    signed[last] ^= 1;
    assert_refused(report(&mut a, &dom0(), signed, None), "outcome: signature does not verify");
    // Signed by another key under the pinned key's kid.
    let other = SigningKey::from_bytes(&[0x62; 32]);
    let kid = kid_for(&agent_key().verifying_key());
    let c = claims(&cti, "fw0", Enforced::Applied).to_cbor().unwrap();
    let forged = cose::sign(&other, &kid, ContentType::Outcome, &c).unwrap();
    assert_refused(report(&mut a, &dom0(), forged, None), "outcome: signature does not verify");
    // Not an outcome at all (another content type).
    let wrong = cose::sign(&agent_key(), &kid, ContentType::Attestation, &c).unwrap();
    let (result, _, rec) = report(&mut a, &dom0(), wrong, None);
    assert_eq!((result, rec.result), (OutcomeResult::Refused, AuditResult::Denied));
}

#[test]
fn an_attested_key_vouches_for_its_own_peers_decisions_only() {
    let mut a = authority();
    let eph = SigningKey::from_bytes(&[0x63; 32]);
    let pk = eph.verifying_key().to_bytes();
    let req = attestation_req("net:modify", pk, 1, T0);
    let att = attestation_of(&run(&mut a, &policy_pd(), Request::Attestation(&req, None), T0));
    let cti = decision(&mut a, 1);
    let signed = sign(&eph, &claims(&cti, "fw0", Enforced::Applied));
    let (result, _, rec) = report(&mut a, &policy_pd(), signed.clone(), Some(att.clone()));
    assert_eq!(result, OutcomeResult::Recorded);
    assert_eq!((meta(&rec, "key"), meta(&rec, "decision")), (Some("attested"), Some("known")));
    // Without the attestation the key is unknown.
    assert_refused(
        report(&mut a, &policy_pd(), signed.clone(), None),
        "outcome: no key for this key id",
    );
    // Another domain presenting policy_pd's attestation.
    let got = report(&mut a, &PeerId::new(8, "policy_pd"), signed, Some(att.clone()));
    assert_refused(got, "attestation: subject is not this peer");
    // Claiming another enforcer than the decision's audience.
    let signed = sign(&eph, &claims(&cti, "fw9", Enforced::Applied));
    let got = report(&mut a, &policy_pd(), signed, Some(att.clone()));
    assert_refused(got, "outcome: the decision was not for this peer");
    // After the attestation expires.
    let signed = sign(&eph, &claims(&cti, "fw0", Enforced::Applied));
    let r = OutcomeReport { request_id: RequestId([1; 16]), signed, attestation: Some(att) };
    let out = run(&mut a, &policy_pd(), Request::Outcome(&r), T0 + 61);
    let Some(Message::OutcomeResp(resp)) = out.response else { panic!() };
    assert_eq!(resp.reason.as_deref(), Some("attestation: stale"));
}

#[test]
fn outcome_reports_are_rate_limited_per_peer() {
    let issue_rate = IssueRateConfig { burst: 2, per_minute: 1, max_peers: 8 };
    let mut a = authority_with(Config {
        outcome_keys: vec![pinned("fw0")],
        issue_rate,
        ..Config::default()
    });
    let signed = sign(&agent_key(), &claims(&[0xee; 16], "fw0", Enforced::Applied));
    for _ in 0..2 {
        assert_eq!(report(&mut a, &dom0(), signed.clone(), None).0, OutcomeResult::Recorded);
    }
    let (result, reason, rec) = report(&mut a, &dom0(), signed, None);
    assert_eq!(
        (result, reason.as_deref()),
        (OutcomeResult::Refused, Some("too many outcome reports"))
    );
    assert_eq!((rec.action, rec.result), (AuditAction::Outcome, AuditResult::RateLimited));
}

#[test]
fn too_many_pinned_keys_are_refused_at_start() {
    let config = Config { outcome_keys: vec![pinned("fw0"); 9], ..Config::default() };
    assert!(Authority::new(config, state(), T0).is_err());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
