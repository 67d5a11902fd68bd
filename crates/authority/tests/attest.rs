//! Attestations end to end through the state machine: issue, the checks a
//! request's attestation passes or fails, and the ACL's `attest` rule.

use ed25519_dalek::SigningKey;
use portcullis_authority::acl::{Acl, AclErrorKind};
use portcullis_authority::attest::{
    self, AttestError, Expect, ATTESTATION_TTL, ATTEST_MAX_PER_PEER,
};
use portcullis_authority::authority::{Config, Output};
use portcullis_authority::ratelimit::IssueRateConfig;
use portcullis_authority::sealed::SealedState;
use portcullis_authority::totp::{Algorithm, OperatorSecret};
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AttestationClaims, AuditAck, AuditAction, AuditResult, ErrorCode, IssueResult, RequestId,
    TokenIssueReq, TotpResult, TotpValidateReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::MemoryReplayCache;

mod common;
use common::*;

/// Two domains named `unlocker` (dom5, dom6) may unlock and read; policy_pd
/// (dom7) gets net:modify only with an attestation, net:read without.
const ACL: &str = "\
allow vm=unlocker scopes=luks:unlock,net:read aud=unlock_agent,fw0 volumes=vol0
allow vm=policy_pd domid=7 scopes=net:modify aud=fw0 attest=true
allow vm=policy_pd scopes=net:read aud=fw0
";

const PK: [u8; 32] = [0x33; 32];
const MEASURED: [u8; 32] = [0x5e; 32];

fn authority_with(config: Config) -> Authority {
    let state = SealedState::new(
        [0x11; 32],
        [0x22; 32],
        vec![OperatorSecret::new("alice", SECRET, Algorithm::Sha1, 8).unwrap()],
        ACL.into(),
    );
    let mut a = Authority::new(config, state, T0).unwrap();
    a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    a
}

fn authority() -> Authority {
    authority_with(Config::default())
}

/// Handles `req` from `peer` and acknowledges its records, so the answer
/// comes out at once.
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

fn attest_at(a: &mut Authority, peer: &PeerId, action: &str, nonce: u64, now: u64) -> Vec<u8> {
    let req = attestation_req(action, PK, nonce, now);
    attestation_of(&run(a, peer, Request::Attestation(&req, Some(MEASURED)), now))
}

fn unlock_req(now: u64, attestation: Option<Vec<u8>>) -> TotpValidateReq {
    let mut req = totp_req(&code_at(now), "yubi1");
    req.volume_id = Some("vol0".into());
    req.ephemeral_pubkey = Some(PK);
    req.attestation = attestation;
    req
}

fn unlock(
    a: &mut Authority,
    peer: &PeerId,
    req: &TotpValidateReq,
    now: u64,
) -> (TotpResult, String, Output) {
    let out = run(a, peer, Request::TotpValidate(req), now);
    let r = totp_resp(&out);
    (r.result, r.reason.clone().unwrap_or_default(), out)
}

fn claims_of(a: &Authority, signed: &[u8]) -> AttestationClaims {
    let keys = a.verifier_keyset();
    let v = cose::verify(signed, ContentType::Attestation, |kid| keys.find(kid).map(|e| e.key))
        .unwrap();
    AttestationClaims::from_cbor(&v.payload).unwrap()
}

fn last_deny(out: &Output) -> (AuditAction, AuditResult, Option<String>) {
    let rec = audit_record(out.audit.last().expect("a record"));
    let reason = rec.metadata.as_ref().and_then(|m| m.get("reason").cloned());
    (rec.action, rec.result, reason)
}

#[test]
fn an_attestation_states_what_cryptod_knows_and_verifies_with_the_keyset() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let signed = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    let c = claims_of(&a, &signed);
    assert_eq!((c.subject_domid, c.subject_vm.as_str()), (5, "unlocker"));
    assert_eq!((c.action.as_str(), c.subject_pubkey), ("luks:unlock", PK));
    assert_eq!((c.issued_at, c.expires_at), (T0, T0 + ATTESTATION_TTL));
    assert_eq!(c.measurement, Some(MEASURED));
    // The platform does not know the measurement: the claim is absent.
    let req = attestation_req("luks:unlock", PK, 2, T0);
    let out = run(&mut a, &peer, Request::Attestation(&req, None), T0);
    assert_eq!(claims_of(&a, &attestation_of(&out)).measurement, None);
    // Audited: subject, action, expiry.
    let rec = audit_record(out.audit.last().unwrap());
    assert_eq!((rec.action, rec.result), (AuditAction::Attest, AuditResult::Ok));
    assert_eq!(rec.actor, "unlocker");
    assert_eq!(rec.target.as_deref(), Some("luks:unlock"));
    let meta = rec.metadata.unwrap();
    assert_eq!(meta.get("domid").map(String::as_str), Some("5"));
    assert_eq!(meta.get("expires_at"), Some(&(T0 + ATTESTATION_TTL).to_string()));
    assert_eq!(meta.get("measured").map(String::as_str), Some("no"));
}

#[test]
fn a_fresh_attestation_lets_the_unlock_pass() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let now = T0 + 10;
    let att = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    let (result, _, out) = unlock(&mut a, &peer, &unlock_req(now, Some(att)), now);
    assert_eq!(result, TotpResult::Ok);
    assert!(totp_resp(&out).unlock_secret.is_some());
}

#[test]
fn an_attestation_is_good_until_expires_at_and_stale_after() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let att = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    let late = T0 + ATTESTATION_TTL + 1;
    let (result, reason, out) = unlock(&mut a, &peer, &unlock_req(late, Some(att)), late);
    assert_eq!((result, reason.as_str()), (TotpResult::Denied, "attestation: stale"));
    assert_eq!(
        last_deny(&out),
        (AuditAction::AclDeny, AuditResult::Denied, Some("attestation: stale".into()))
    );
    // The code was not consumed by the refusal; at the last second a fresh one works.
    let att = attest_at(&mut a, &peer, "luks:unlock", 2, late - ATTESTATION_TTL);
    let (result, _, _) = unlock(&mut a, &peer, &unlock_req(late, Some(att)), late);
    assert_eq!(result, TotpResult::Ok);
}

#[test]
fn an_unlock_without_an_attestation_is_denied_and_audited() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let (result, reason, out) = unlock(&mut a, &peer, &unlock_req(T0, None), T0);
    assert_eq!((result, reason.as_str()), (TotpResult::Denied, "attestation required"));
    assert_eq!(
        last_deny(&out),
        (AuditAction::AclDeny, AuditResult::Denied, Some("attestation required".into()))
    );
    // A code check without a volume grants nothing and needs none.
    let out = run(&mut a, &peer, Request::TotpValidate(&totp_req(&code_at(T0), "yubi1")), T0);
    assert_eq!(totp_resp(&out).result, TotpResult::Ok);
}

#[test]
fn another_domains_attestation_is_refused() {
    let mut a = authority();
    let (dom5, dom6) = (PeerId::new(5, "unlocker"), PeerId::new(6, "unlocker"));
    let att = attest_at(&mut a, &dom6, "luks:unlock", 1, T0);
    let (result, reason, _) = unlock(&mut a, &dom5, &unlock_req(T0, Some(att)), T0);
    assert_eq!(
        (result, reason.as_str()),
        (TotpResult::Denied, "attestation: subject is not this peer")
    );
}

#[test]
fn an_attestation_for_another_action_or_key_is_refused() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let att = attest_at(&mut a, &peer, "net:read", 1, T0);
    let (result, reason, _) = unlock(&mut a, &peer, &unlock_req(T0, Some(att)), T0);
    assert_eq!(
        (result, reason.as_str()),
        (TotpResult::Denied, "attestation: action is not this request's")
    );
    let att = attest_at(&mut a, &peer, "luks:unlock", 2, T0);
    let mut req = unlock_req(T0, Some(att));
    req.ephemeral_pubkey = Some([0x34; 32]);
    let (result, reason, _) = unlock(&mut a, &peer, &req, T0);
    assert_eq!(
        (result, reason.as_str()),
        (TotpResult::Denied, "attestation: key is not the request's key")
    );
}

#[test]
fn an_attestation_cryptod_did_not_issue_is_refused() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let signed = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    let good = claims_of(&a, &signed);
    let kid = a.verifier_keyset().iter().next().unwrap().kid.clone();
    let forger = SigningKey::from_bytes(&[0x66; 32]);
    let claims = AttestationClaims { nonce: vec![0x77; 16], ..good };
    let not_ours = "attestation: not issued by this cryptod";
    // cryptod's kid, another key; and a kid cryptod never had.
    for kid in [&kid[..], b"forger-1"] {
        let forged = attest::sign(&forger, kid, &claims).unwrap();
        let (result, reason, _) = unlock(&mut a, &peer, &unlock_req(T0, Some(forged.clone())), T0);
        assert_eq!((result, reason.as_str()), (TotpResult::Denied, not_ours));
        // The public-key check agrees.
        let expect = Expect { peer: &peer, action: "luks:unlock", pubkey: Some(&PK), now: T0 };
        let mut replay = MemoryReplayCache::new(4);
        assert!(matches!(
            attest::verify(&forged, &a.verifier_keyset(), &expect, &mut replay),
            Err(AttestError::Signature(_))
        ));
    }
    // One bit of a real one flipped anywhere: refused, never accepted.
    for i in 0..signed.len() {
        let mut bad = signed.clone();
        bad[i] ^= 0x01;
        let (result, reason, _) = unlock(&mut a, &peer, &unlock_req(T0, Some(bad)), T0);
        assert_eq!(result, TotpResult::Denied, "byte {i}: {reason}");
        assert!(reason.starts_with("attestation: "), "byte {i}: {reason}");
    }
    // The real one still passes (no refusal took its nonce), checked both ways.
    let expect = Expect { peer: &peer, action: "luks:unlock", pubkey: Some(&PK), now: T0 };
    let mut replay = MemoryReplayCache::new(4);
    assert!(attest::verify(&signed, &a.verifier_keyset(), &expect, &mut replay).is_ok());
    let (result, _, _) = unlock(&mut a, &peer, &unlock_req(T0, Some(signed)), T0);
    assert_eq!(result, TotpResult::Ok);
    // A token is not an attestation.
    let att = attest_at(&mut a, &peer, "luks:unlock", 2, T0);
    let tok = {
        let out =
            run(&mut a, &peer, Request::TotpValidate(&unlock_req(T0 + 30, Some(att))), T0 + 30);
        totp_resp(&out).capability_token.clone().unwrap()
    };
    let (_, reason, _) = unlock(&mut a, &peer, &unlock_req(T0 + 60, Some(tok)), T0 + 60);
    assert_eq!(reason, not_ours);
}

#[test]
fn an_attestation_is_used_once() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let att = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    let (result, _, _) = unlock(&mut a, &peer, &unlock_req(T0, Some(att.clone())), T0);
    assert_eq!(result, TotpResult::Ok);
    let (result, reason, _) =
        unlock(&mut a, &peer, &unlock_req(T0 + 30, Some(att.clone())), T0 + 30);
    assert_eq!((result, reason.as_str()), (TotpResult::Denied, "attestation: already used"));
    // Asked for again with the same nonce in the same second, cryptod signs
    // the same bytes (Ed25519 is deterministic): still used once.
    let again = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    assert_eq!(again, att);
    let (_, reason, _) = unlock(&mut a, &peer, &unlock_req(T0 + 30, Some(again)), T0 + 30);
    assert_eq!(reason, "attestation: already used");
}

fn issue(scope: Scope, attestation: Option<Vec<u8>>) -> TokenIssueReq {
    TokenIssueReq {
        request_id: RequestId([0x43; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(scope),
        audience: "fw0".into(),
        justification: "rule update".into(),
        nonce: vec![3; 16],
        timestamp: T0,
        ttl: None,
        attestation,
        metadata: None,
    }
}

fn issue_result(a: &mut Authority, peer: &PeerId, req: &TokenIssueReq) -> (IssueResult, String) {
    let out = run(a, peer, Request::TokenIssue(req), T0);
    let Some(Message::TokenIssueResp(r)) = out.response else { panic!("{:?}", out.response) };
    (r.result, r.reason.unwrap_or_default())
}

#[test]
fn an_acl_rule_with_attest_needs_one_for_token_issue() {
    let mut a = authority();
    let pd = PeerId::new(7, "policy_pd");
    let (result, reason) = issue_result(&mut a, &pd, &issue(Scope::NetModify, None));
    assert_eq!((result, reason.as_str()), (IssueResult::Denied, "attestation required"));
    let att = attest_at(&mut a, &pd, "net:modify", 1, T0);
    assert_eq!(issue_result(&mut a, &pd, &issue(Scope::NetModify, Some(att))).0, IssueResult::Ok);
    // A rule without `attest` needs none, but one carried is still checked.
    let other = PeerId::new(8, "policy_pd");
    assert_eq!(issue_result(&mut a, &other, &issue(Scope::NetRead, None)).0, IssueResult::Ok);
    let att = attest_at(&mut a, &pd, "net:modify", 2, T0);
    let (result, reason) = issue_result(&mut a, &other, &issue(Scope::NetRead, Some(att)));
    assert_eq!(
        (result, reason.as_str()),
        (IssueResult::Denied, "attestation: subject is not this peer")
    );
}

fn error_of(out: &Output) -> (ErrorCode, String) {
    match out.response.as_ref() {
        Some(Message::Error(e)) => (e.code, e.reason.clone()),
        other => panic!("expected error, got {other:?}"),
    }
}

#[test]
fn cryptod_attests_only_actions_the_acl_grants_and_rate_limits() {
    let config = Config {
        issue_rate: IssueRateConfig { burst: 2, per_minute: 1, max_peers: 8 },
        ..Config::default()
    };
    let mut a = authority_with(config);
    let pd = PeerId::new(7, "policy_pd");
    let req = attestation_req("luks:unlock", PK, 1, T0);
    let out = run(&mut a, &pd, Request::Attestation(&req, None), T0);
    assert_eq!(error_of(&out), (ErrorCode::Denied, "scope not granted by acl line 2".into()));
    assert_eq!(audit_record(out.audit.last().unwrap()).result, AuditResult::Denied);
    // Not the canonical scope list: malformed, no token bucket taken.
    let req = attestation_req("net:read luks:unlock", PK, 2, T0);
    let out = run(&mut a, &PeerId::new(5, "unlocker"), Request::Attestation(&req, None), T0);
    assert_eq!(error_of(&out).0, ErrorCode::Malformed);
    let req = attestation_req("net:modify", PK, 3, T0);
    attestation_of(&run(&mut a, &pd, Request::Attestation(&req, None), T0));
    let out = run(&mut a, &pd, Request::Attestation(&req, None), T0);
    let (code, reason) = error_of(&out);
    assert_eq!(code, ErrorCode::Busy);
    assert!(reason.starts_with("too many requests"), "{reason}");
}

#[test]
fn the_acl_attest_key() {
    let rule = |text: &str| Acl::parse(text).map(|acl| acl.rules()[0].attest);
    let unlock = "allow vm=u scopes=luks:unlock aud=a volumes=v";
    assert_eq!(rule(unlock), Ok(true));
    assert_eq!(rule("allow vm=k scopes=key:rotate aud=cryptod"), Ok(true));
    assert_eq!(rule("allow vm=p scopes=net:read aud=fw0"), Ok(false));
    assert_eq!(rule("allow vm=p scopes=net:read aud=fw0 attest=true"), Ok(true));
    assert_eq!(rule(&format!("{unlock} attest=false")), Ok(false));
    let kind = |text: &str| Acl::parse(text).unwrap_err().kind;
    assert_eq!(kind("allow vm=p scopes=net:read aud=fw0 attest=yes"), AclErrorKind::BadAttest);
    assert_eq!(kind("deny vm=p attest=true"), AclErrorKind::MissingOrExtraKey);
    assert_eq!(
        kind("allow vm=p scopes=net:read aud=fw0 attest=true attest=false"),
        AclErrorKind::RepeatedKey
    );
}

#[test]
fn cryptod_remembers_a_bounded_number_of_attestations_per_peer() {
    let mut a = authority();
    let peer = PeerId::new(5, "unlocker");
    let first = attest_at(&mut a, &peer, "luks:unlock", 1, T0);
    for n in 2..=(ATTEST_MAX_PER_PEER as u64) {
        attest_at(&mut a, &peer, "luks:unlock", n, T0);
    }
    // Another peer's attestations do not evict this peer's.
    let dom6 = PeerId::new(6, "unlocker");
    for n in 0..(2 * ATTEST_MAX_PER_PEER as u64) {
        attest_at(&mut a, &dom6, "luks:unlock", 100 + n, T0);
    }
    let kept = unlock_req(T0, Some(first.clone()));
    let (result, _, _) = unlock(&mut a, &peer, &kept, T0);
    assert_eq!(result, TotpResult::Ok);
    // One more of its own forgets the peer's oldest.
    let second = attest_at(&mut a, &peer, "luks:unlock", 2, T0);
    for n in 0..(ATTEST_MAX_PER_PEER as u64) {
        attest_at(&mut a, &peer, "luks:unlock", 200 + n, T0 + 30);
    }
    let (_, reason, _) = unlock(&mut a, &peer, &unlock_req(T0 + 30, Some(second)), T0 + 30);
    assert_eq!(reason, "attestation: not issued by this cryptod");
}
