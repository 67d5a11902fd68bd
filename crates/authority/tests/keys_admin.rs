//! The key admin commands through the authority's entry points: rotate on
//! demand (the new kid signs, the old one verifies through the overlap),
//! revoke a kid (its tokens are refused at once; revoking the active key
//! rotates first), revoke a token by cti, every command audited, replays
//! refused, and the revoked kids sealed in the `KEYS` section.

use ed25519_dalek::SigningKey;
use portcullis_authority::authority::Config;
use portcullis_authority::keys::decode_section;
use portcullis_authority::sealed::{self};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AdminCommand, AdminOp, AdminReq, AdminResult, AuditRecord, KeysetBody, KeysetReq, RequestId,
    TokenIssueReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, VerifyError};

mod common;
use common::*;

const ADMIN_SEED: [u8; 32] = [0xad; 32];

fn seeded() -> Authority {
    let mut st = state();
    st.admin_key = Some(SigningKey::from_bytes(&ADMIN_SEED).verifying_key().to_bytes());
    seeded_from(st)
}

fn command(a: &Authority, seq: u64, op: AdminOp) -> AdminCommand {
    common::admin_command(a, seq, op)
}

/// Signs and sends `c` from dom0; the verdict and the admin record.
fn admin(a: &mut Authority, c: &AdminCommand, now: u64) -> (AdminResult, AuditRecord) {
    let key = SigningKey::from_bytes(&ADMIN_SEED);
    let kid = kid_for(&key.verifying_key());
    let signed = cose::sign(&key, &kid, ContentType::AdminCommand, &c.to_cbor().unwrap()).unwrap();
    let msg: Message = AdminReq { request_id: c.request_id, signed }.into();
    let (out, recs) = call(a, &PeerId::new(0, "dom0"), &msg, now);
    let Some(Message::AdminResp(r)) = out.response else { panic!("no admin_resp") };
    let rec = recs.last().cloned();
    (r.result, rec.unwrap_or_else(|| panic!("no admin record: {:?} {:?}", r.result, r.reason)))
}

fn meta<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.metadata.as_ref()?.get(key).map(String::as_str)
}

fn issue(a: &mut Authority, now: u64) -> Vec<u8> {
    let req = TokenIssueReq {
        request_id: RequestId([now as u8; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(Scope::NetRead),
        audience: "fw0".into(),
        justification: "test".into(),
        nonce: vec![3; 16],
        timestamp: now,
        ttl: None,
        attestation: None,
        metadata: None,
    };
    let (out, _) = call(a, &policy_pd(), &req.into(), now);
    match out.response {
        Some(Message::TokenIssueResp(r)) => r.token.expect("a token"),
        other => panic!("expected a token, got {other:?}"),
    }
}

/// What a verifier that fetched the keyset and revocation list now decides.
fn verify(a: &Authority, tok: &[u8], now: u64) -> Result<(), VerifyError> {
    let exp =
        Expectations { audience: "fw0", scope: ScopeSet::single(Scope::NetRead), now, skew: 0 };
    let revoked = a.revocations().revoked_set();
    token::verify(tok, &a.verifier_keyset(), &exp, &mut MemoryReplayCache::new(8), &revoked)
        .map(|_| ())
}

fn kid_of(tok: &[u8]) -> Vec<u8> {
    danger::inspect(tok).unwrap().into_unverified().kid
}

fn published_kids(a: &mut Authority, now: u64) -> Vec<Vec<u8>> {
    let req: Message = KeysetReq { request_id: RequestId([9; 16]) }.into();
    let out = a.handle(&policy_pd(), &req, now, b"");
    let Some(Message::Keyset(k)) = out.response else { panic!("no keyset") };
    let root = a.root_public();
    let rk = kid_for(&root);
    let v =
        cose::verify(&k.signed, ContentType::Keyset, |kid| (kid == rk).then_some(root)).unwrap();
    KeysetBody::from_cbor(&v.payload).unwrap().keys.into_iter().map(|e| e.kid).collect()
}

#[test]
fn rotate_on_demand_new_kid_signs_old_verifies_through_the_overlap() {
    let mut a = seeded();
    let old = issue(&mut a, T0);
    let c = command(&a, 1, AdminOp::KeyRotate);
    let (r, rec) = admin(&mut a, &c, T0 + 1);
    assert_eq!(r, AdminResult::Ok);
    assert_eq!(meta(&rec, "command"), Some("key_rotate"));
    let new = issue(&mut a, T0 + 2);
    assert_ne!(kid_of(&old), kid_of(&new), "the new kid signs");
    assert_eq!(meta(&rec, "signing_kid"), Some(hex::encode(kid_of(&new)).as_str()));
    assert_eq!(verify(&a, &old, T0 + 3), Ok(()), "old key verifies within the overlap");
    assert_eq!(verify(&a, &new, T0 + 3), Ok(()));
    assert_eq!(published_kids(&mut a, T0 + 3).len(), 2);
}

#[test]
fn revoking_a_kid_refuses_its_tokens_at_once() {
    let mut a = seeded();
    let old = issue(&mut a, T0);
    let c = command(&a, 1, AdminOp::KeyRotate);
    admin(&mut a, &c, T0 + 1);
    let new = issue(&mut a, T0 + 2);
    let c = AdminCommand { kid: Some(kid_of(&old)), ..command(&a, 2, AdminOp::KeyRevoke) };
    let (r, rec) = admin(&mut a, &c, T0 + 3);
    assert_eq!(r, AdminResult::Ok);
    assert_eq!(meta(&rec, "kid"), Some(hex::encode(kid_of(&old)).as_str()));
    assert_eq!(verify(&a, &old, T0 + 3), Err(VerifyError::UnknownKid), "within the overlap");
    assert_eq!(verify(&a, &new, T0 + 3), Ok(()));
    assert!(!published_kids(&mut a, T0 + 3).contains(&kid_of(&old)));
    // Again: nothing published has that kid any more.
    let again = AdminCommand { kid: Some(kid_of(&old)), ..command(&a, 3, AdminOp::KeyRevoke) };
    assert_eq!(admin(&mut a, &again, T0 + 4).0, AdminResult::Denied);
}

#[test]
fn revoking_the_active_kid_rotates_first() {
    let mut a = seeded();
    let tok = issue(&mut a, T0);
    let c = AdminCommand { kid: Some(kid_of(&tok)), ..command(&a, 1, AdminOp::KeyRevoke) };
    let (r, rec) = admin(&mut a, &c, T0 + 1);
    assert_eq!(r, AdminResult::Ok);
    assert_eq!(verify(&a, &tok, T0 + 1), Err(VerifyError::UnknownKid));
    let next = issue(&mut a, T0 + 2);
    assert_ne!(kid_of(&next), kid_of(&tok));
    assert_eq!(meta(&rec, "signing_kid"), Some(hex::encode(kid_of(&next)).as_str()));
    assert_eq!(verify(&a, &next, T0 + 2), Ok(()));
    assert_eq!(published_kids(&mut a, T0 + 2), vec![kid_of(&next)]);
}

#[test]
fn token_revoke_from_dom0_refuses_that_token() {
    let mut a = seeded();
    let tok = issue(&mut a, T0);
    let cti = danger::inspect(&tok).unwrap().into_unverified().claims.cti;
    let c = AdminCommand { cti: Some(cti.clone()), ..command(&a, 1, AdminOp::TokenRevoke) };
    let (r, rec) = admin(&mut a, &c, T0 + 1);
    assert_eq!(r, AdminResult::Ok);
    assert_eq!(meta(&rec, "command"), Some("token_revoke"));
    assert_eq!(meta(&rec, "cti"), Some(hex::encode(&cti).as_str()));
    assert!(a.revocations().contains(&cti));
    assert_eq!(verify(&a, &tok, T0 + 1), Err(VerifyError::Revoked));
}

#[test]
fn key_commands_take_only_their_fields_and_replays_are_refused() {
    let mut a = seeded();
    let tok = issue(&mut a, T0);
    let mut bad = command(&a, 1, AdminOp::KeyRevoke);
    assert_eq!(admin(&mut a, &bad, T0).0, AdminResult::Invalid, "no kid");
    bad = AdminCommand { kid: Some(kid_of(&tok)), ..command(&a, 2, AdminOp::KeyRotate) };
    assert_eq!(admin(&mut a, &bad, T0).0, AdminResult::Invalid, "rotate with a kid");
    bad =
        AdminCommand { operator_id: Some("alice".into()), ..command(&a, 3, AdminOp::TokenRevoke) };
    bad.cti = Some(vec![1; 16]);
    assert_eq!(admin(&mut a, &bad, T0).0, AdminResult::Invalid, "token_revoke with an operator");
    bad = AdminCommand { kid: Some(vec![1; 8]), ..command(&a, 4, AdminOp::OperatorRemove) };
    bad.operator_id = Some("alice".into());
    assert_eq!(admin(&mut a, &bad, T0).0, AdminResult::Invalid, "operator command with a kid");
    let ok = command(&a, 5, AdminOp::KeyRotate);
    assert_eq!(admin(&mut a, &ok, T0).0, AdminResult::Ok);
    let kid_now = kid_of(&issue(&mut a, T0 + 1));
    assert_eq!(admin(&mut a, &ok, T0 + 2).0, AdminResult::Replay, "the same command again");
    assert_eq!(kid_of(&issue(&mut a, T0 + 3)), kid_now, "a replay does not rotate");
    // From a domU, even signed: refused.
    let key = SigningKey::from_bytes(&ADMIN_SEED);
    let c = command(&a, 6, AdminOp::KeyRotate);
    let signed = cose::sign(
        &key,
        &kid_for(&key.verifying_key()),
        ContentType::AdminCommand,
        &c.to_cbor().unwrap(),
    )
    .unwrap();
    let msg: Message = AdminReq { request_id: c.request_id, signed }.into();
    let (out, _) = call(&mut a, &policy_pd(), &msg, T0 + 4);
    let Some(Message::AdminResp(r)) = out.response else { panic!("no admin_resp") };
    assert_eq!(r.result, AdminResult::Denied);
}

#[test]
fn revoked_kids_are_sealed_in_the_keys_section() {
    let kek = [7u8; 32];
    let mut a = seeded();
    let tok = issue(&mut a, T0);
    let c = AdminCommand { kid: Some(kid_of(&tok)), ..command(&a, 1, AdminOp::KeyRevoke) };
    assert_eq!(admin(&mut a, &c, T0 + 1).0, AdminResult::Ok);
    let st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    let body = st.section(sealed::section::KEYS).expect("a KEYS section");
    let want = vec![<[u8; 8]>::try_from(kid_of(&tok)).unwrap()];
    assert_eq!(decode_section(body).unwrap().revoked, want);
    let mut b = seeded_from(st.clone());
    let tok2 = issue(&mut b, T0 + 2);
    let c = AdminCommand { kid: Some(kid_of(&tok2)), ..command(&b, 2, AdminOp::KeyRevoke) };
    assert_eq!(admin(&mut b, &c, T0 + 3).0, AdminResult::Ok);
    let st2 = sealed::unseal(&b.export(&kek).unwrap(), &kek).unwrap();
    let kids = decode_section(st2.section(sealed::section::KEYS).unwrap()).unwrap();
    assert_eq!(kids.revoked.len(), 2, "the restored list grows, nothing is lost across a restart");
    // A malformed section is refused at start, never half-read.
    let mut broken = st;
    broken.set_section(sealed::section::KEYS, Some(vec![1, 2, 0]));
    assert!(Authority::new(Config::default(), broken, T0).is_err());
}

#[test]
fn root_rotation_chains_seals_and_keeps_the_admin_channel() {
    use portcullis_authority::audit::verify_chain;
    use portcullis_proto::succession;
    let kek = [7u8; 32];
    let mut a = seeded();
    let old_root = a.root_public();
    let tok = issue(&mut a, T0);
    let c = command(&a, 1, AdminOp::RootRotate);
    let (r, rec) = admin(&mut a, &c, T0 + 1);
    assert_eq!(r, AdminResult::Ok);
    let new_root = a.root_public();
    assert_ne!(new_root, old_root);
    assert_eq!(meta(&rec, "command"), Some("root_rotate"));
    assert_eq!(meta(&rec, "root_pubkey"), Some(hex::encode(new_root.to_bytes()).as_str()));
    // The keyset is signed by the new root and carries the chain from the old one.
    let req: Message = KeysetReq { request_id: RequestId([9; 16]) }.into();
    let out = a.handle(&policy_pd(), &req, T0 + 2, b"");
    let Some(Message::Keyset(k)) = out.response else { panic!("no keyset") };
    let seen = danger::open_unverified(&k.signed).unwrap().into_unverified();
    assert_eq!(seen.kid, kid_for(&new_root).to_vec());
    let chain = KeysetBody::from_cbor(&seen.payload).unwrap().root_chain.unwrap();
    assert_eq!(succession::follow(old_root, 0, &chain), Ok((new_root, 1)));
    // The record's fields and signature rebuild the statement.
    let sig: [u8; 64] = hex::decode(meta(&rec, "root_sig").unwrap()).unwrap().try_into().unwrap();
    let rebuilt = cose::rebuild(
        &kid_for(&old_root),
        ContentType::RootSuccession,
        &danger::open_unverified(&chain[0]).unwrap().into_unverified().payload,
        &sig,
    );
    assert_eq!(rebuilt, chain[0]);
    // Tokens of the signing key still verify: only the root changed.
    assert_eq!(verify(&a, &tok, T0 + 2), Ok(()));
    // Admin commands naming the old root (root.pub of provisioning) or the
    // new one still apply; a replay does not.
    let by_old = command(&a, 2, AdminOp::KeyRotate);
    assert_eq!(by_old.state_id, kid_for(&new_root).to_vec());
    let by_old = AdminCommand { state_id: kid_for(&old_root).to_vec(), ..by_old };
    assert_eq!(admin(&mut a, &by_old, T0 + 3).0, AdminResult::Ok);
    assert_eq!(admin(&mut a, &c, T0 + 4).0, AdminResult::Replay);
    let other = AdminCommand { state_id: vec![1; 8], ..command(&a, 9, AdminOp::KeyRotate) };
    assert_eq!(admin(&mut a, &other, T0 + 4).0, AdminResult::Replay);
    // Seals after the rotation are by the new root, not the old one.
    let req = TokenIssueReq {
        request_id: RequestId([0x77; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(Scope::NetRead),
        audience: "fw0".into(),
        justification: "test".into(),
        nonce: vec![3; 16],
        timestamp: T0 + 4,
        ttl: None,
        attestation: None,
        metadata: None,
    };
    a.handle(&policy_pd(), &req.into(), T0 + 4, b"");
    let items = pending_items(&a);
    assert_eq!(items.len(), 2, "one record, one seal");
    assert!(verify_chain(&items, &[new_root]).is_ok());
    assert!(verify_chain(&items, &[old_root]).is_err());
    // Sealed: the new root and the chain; a restart continues from them.
    let st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    let b = seeded_from(st);
    assert_eq!(b.root_public(), new_root);
    let mut b = b;
    let c = command(&b, 10, AdminOp::RootRotate);
    assert_eq!(admin(&mut b, &c, T0 + 5).0, AdminResult::Ok);
    let req: Message = KeysetReq { request_id: RequestId([9; 16]) }.into();
    let out = b.handle(&policy_pd(), &req, T0 + 6, b"");
    let Some(Message::Keyset(k)) = out.response else { panic!("no keyset") };
    let seen = danger::open_unverified(&k.signed).unwrap().into_unverified();
    let chain = KeysetBody::from_cbor(&seen.payload).unwrap().root_chain.unwrap();
    assert_eq!(succession::follow(old_root, 0, &chain), Ok((b.root_public(), 2)));
}
