//! The volume, ACL and identity admin commands through the authority's
//! entry points: volume_add seals a fresh generation's passphrase to the
//! admin tool, volume_remove stops it, neither touches another volume;
//! acl_replace lints and requires a higher version; identity_revoke stops
//! token issue at once; all of it audited and sealed across a restart.

use ed25519_dalek::SigningKey;
use portcullis_authority::authority::{Config, Output, ADMIN_TRANSCRIPT_ID};
use portcullis_authority::registry::Volumes;
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::unlock::{self, Transcript};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AdminCommand, AdminOp, AdminReq, AdminResp, AdminResult, AuditAction, AuditRecord, AuditResult,
    IssueResult, RequestId, RevocationBody, RevocationListReq, TokenIssueReq, TokenIssueResp,
    TotpResult,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, RevokedSet, VerifyError};
use x25519_dalek::{PublicKey, StaticSecret};

mod common;
use common::*;

const ADMIN_SEED: [u8; 32] = [0xad; 32];
/// The unlocker may unlock vol0 and data, and the volumes the tests add,
/// without attestation (so the unlock path is short here).
const OPEN_ACL: &str = "\
allow vm=unlocker domid=5 scopes=luks:unlock aud=unlock_agent volumes=vol0,data,extra,more attest=false
allow vm=policy_pd domid=7 scopes=net:modify,net:read,token:revoke aud=fw0,cryptod
";

fn admin_key() -> SigningKey {
    SigningKey::from_bytes(&ADMIN_SEED)
}

fn seeded_from(mut st: SealedState) -> Authority {
    st.admin_key = Some(admin_key().verifying_key().to_bytes());
    let mut a = Authority::new(Config::default(), st, T0).unwrap();
    a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    a
}

/// Provisioned with vol0 and data (sealed before the registry, so those
/// two are registered at generation 0), the ACL since opened to more.
fn seeded() -> Authority {
    let mut st = state();
    let provisioned = Volumes::provisioned(["vol0", "data"].into_iter()).unwrap();
    st.set_section(sealed::section::VOLUMES, Some(provisioned.encode()));
    st.acl = OPEN_ACL.into();
    seeded_from(st)
}

fn command(a: &Authority, seq: u64, op: AdminOp) -> AdminCommand {
    common::admin_command(a, seq, op)
}

fn signed(c: &AdminCommand) -> Message {
    let key = admin_key();
    let kid = kid_for(&key.verifying_key());
    let signed = cose::sign(&key, &kid, ContentType::AdminCommand, &c.to_cbor().unwrap()).unwrap();
    AdminReq { request_id: c.request_id, signed }.into()
}

fn admin_resp(out: &Output) -> &AdminResp {
    match out.response.as_ref() {
        Some(Message::AdminResp(r)) => r,
        other => panic!("expected admin_resp, got {other:?}"),
    }
}

fn meta<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.metadata.as_ref()?.get(key).map(String::as_str)
}

/// Runs `c`; its verdict and its audit record.
fn admin(a: &mut Authority, c: &AdminCommand) -> (AdminResp, AuditRecord) {
    let (out, recs) = call(a, &PeerId::new(0, "dom0"), &signed(c), T0);
    (admin_resp(&out).clone(), recs.last().unwrap().clone())
}

/// `volume_add` of `id` as command `seq`: the passphrase, opened as the
/// admin tool opens it.
fn volume_add(a: &mut Authority, seq: u64, id: &str) -> Result<Vec<u8>, Box<AdminResp>> {
    let sk = StaticSecret::from([seq as u8 ^ 0x5a; 32]);
    let c = AdminCommand {
        volume_id: Some(id.into()),
        ephemeral_pubkey: Some(PublicKey::from(&sk).to_bytes()),
        ..command(a, seq, AdminOp::VolumeAdd)
    };
    let msg = signed(&c);
    let (out, recs) = call(a, &PeerId::new(0, "dom0"), &msg, T0);
    let r = admin_resp(&out).clone();
    if r.result != AdminResult::Ok {
        return Err(Box::new(r));
    }
    let rec = recs.last().unwrap();
    assert_eq!(meta(rec, "command"), Some("volume_add"));
    assert_eq!(meta(rec, "volume"), Some(id));
    let Message::AdminReq(req) = &msg else { unreachable!() };
    let t = Transcript {
        request_id: &req.request_id,
        operator: ADMIN_TRANSCRIPT_ID,
        volume_id: id,
        token: &req.signed,
    };
    let sealed = r.unlock_secret.expect("volume_add answers with the sealed passphrase");
    Ok(unlock::open_unlock_secret(&sk, &sealed, &t).unwrap().to_vec())
}

fn volume_remove(a: &mut Authority, seq: u64, id: &str) -> AdminResp {
    let c = AdminCommand { volume_id: Some(id.into()), ..command(a, seq, AdminOp::VolumeRemove) };
    admin(a, &c).0
}

/// The passphrase the unlock path hands the unlocker for `volume` at `t`
/// (None: refused, with the result).
fn unlock_secret(a: &mut Authority, volume: &str, t: u64) -> Result<Vec<u8>, TotpResult> {
    let sk = StaticSecret::from([0x77; 32]);
    let mut req = totp_req(&code_at(t), "yubi1");
    req.request_id = RequestId([(t % 251) as u8; 16]);
    req.volume_id = Some(volume.into());
    req.ephemeral_pubkey = Some(PublicKey::from(&sk).to_bytes());
    let (out, _) = call(a, &unlocker(), &req.clone().into(), t);
    let r = totp_resp(&out);
    if r.result != TotpResult::Ok {
        return Err(r.result);
    }
    let token = r.capability_token.clone().unwrap();
    let t = Transcript {
        request_id: &req.request_id,
        operator: "alice",
        volume_id: volume,
        token: &token,
    };
    Ok(unlock::open_unlock_secret(&sk, r.unlock_secret.as_ref().unwrap(), &t).unwrap().to_vec())
}

#[test]
fn volume_add_and_remove_leave_other_volumes_alone() {
    let mut a = seeded();
    let vol0 = unlock_secret(&mut a, "vol0", T0).unwrap();
    let data = unlock_secret(&mut a, "data", T0 + 30).unwrap();
    // A provisioned volume keeps the original derivation (generation 0).
    assert_eq!(vol0, unlock::luks_passphrase(&[0x22; 32], "vol0").unwrap().to_vec());

    let extra = volume_add(&mut a, 1, "extra").unwrap();
    assert_eq!(extra, unlock_secret(&mut a, "extra", T0 + 60).unwrap(), "agent gets the same");
    assert_ne!(extra, vol0);
    assert_eq!(volume_remove(&mut a, 2, "extra").result, AdminResult::Ok);
    assert_eq!(unlock_secret(&mut a, "extra", T0 + 90), Err(TotpResult::Denied));
    // Re-added: a new generation, never the old secret.
    let again = volume_add(&mut a, 3, "extra").unwrap();
    assert_ne!(again, extra);
    assert_eq!(again, unlock_secret(&mut a, "extra", T0 + 120).unwrap());
    // The other volumes' passphrases are byte-identical.
    assert_eq!(unlock_secret(&mut a, "vol0", T0 + 150).unwrap(), vol0);
    assert_eq!(unlock_secret(&mut a, "data", T0 + 180).unwrap(), data);
}

#[test]
fn volume_rules() {
    let mut a = seeded();
    // A provisioned volume is bound already; a bound one cannot be added twice.
    let r = volume_add(&mut a, 1, "vol0").unwrap_err();
    assert_eq!(r.result, AdminResult::Denied);
    assert!(r.reason.unwrap().contains("bound already"));
    volume_add(&mut a, 2, "more").unwrap();
    assert_eq!(volume_add(&mut a, 3, "more").unwrap_err().result, AdminResult::Denied);
    // Removing an unknown volume is refused; a provisioned one can go.
    assert_eq!(volume_remove(&mut a, 4, "nope").result, AdminResult::Denied);
    assert_eq!(volume_remove(&mut a, 5, "vol0").result, AdminResult::Ok);
    assert_eq!(unlock_secret(&mut a, "vol0", T0), Err(TotpResult::Denied));
    assert_eq!(volume_remove(&mut a, 6, "vol0").result, AdminResult::Denied);
    // A volume_add without its key is invalid.
    let c = AdminCommand { volume_id: Some("x".into()), ..command(&a, 7, AdminOp::VolumeAdd) };
    assert_eq!(admin(&mut a, &c).0.result, AdminResult::Invalid);
}

fn acl_replace(a: &mut Authority, seq: u64, text: &str, version: u64) -> (AdminResp, AuditRecord) {
    let c = AdminCommand {
        acl: Some(text.into()),
        acl_version: Some(version),
        ..command(a, seq, AdminOp::AclReplace)
    };
    admin(a, &c)
}

fn issue(a: &mut Authority, peer: &PeerId, audience: &str, t: u64) -> TokenIssueResp {
    let req = TokenIssueReq {
        request_id: RequestId([(t % 251) as u8; 16]),
        vm_id: "whatever-the-guest-claims".into(),
        requested_scope: ScopeSet::single(Scope::NetModify),
        audience: audience.into(),
        justification: "rule update".into(),
        nonce: vec![3; 16],
        timestamp: t,
        ttl: None,
        attestation: None,
        metadata: None,
    };
    let (out, _) = call(a, peer, &req.into(), t);
    match out.response {
        Some(Message::TokenIssueResp(r)) => r,
        other => panic!("expected token_issue_resp, got {other:?}"),
    }
}

#[test]
fn acl_replace_lints_requires_a_higher_version_and_is_audited() {
    let mut a = seeded();
    assert_eq!(issue(&mut a, &policy_pd(), "fw0", T0).result, IssueResult::Ok);
    // A lint failure is refused with its line; nothing changes.
    let bad = "allow vm=policy_pd scopes=net:modify aud=fw0\nallow vm=x scopes=bogus aud=y\n";
    let (r, rec) = acl_replace(&mut a, 1, bad, 1);
    assert_eq!(r.result, AdminResult::Invalid);
    assert_eq!(r.reason.as_deref(), Some("acl lint failed at line 2"));
    assert_eq!(rec.result, AuditResult::Denied);
    // fw0 no longer granted, fw1 is.
    let new = "allow vm=policy_pd domid=7 scopes=net:modify aud=fw1\n";
    let (r, rec) = acl_replace(&mut a, 2, new, 1);
    assert_eq!(r.result, AdminResult::Ok, "{:?}", r.reason);
    assert_eq!((rec.action, rec.result), (AuditAction::Admin, AuditResult::Ok));
    assert_eq!(meta(&rec, "command"), Some("acl_replace"));
    assert_eq!(meta(&rec, "acl_old_version"), Some("0"));
    assert_eq!(meta(&rec, "acl_new_version"), Some("1"));
    assert_eq!(meta(&rec, "acl_new_sha256").map(str::len), Some(64));
    assert_ne!(meta(&rec, "acl_new_sha256"), meta(&rec, "acl_old_sha256"));
    assert_eq!(a.acl_version(), 1);
    assert_eq!(issue(&mut a, &policy_pd(), "fw0", T0 + 1).result, IssueResult::Denied);
    assert_eq!(issue(&mut a, &policy_pd(), "fw1", T0 + 2).result, IssueResult::Ok);
    // The same version again, or a lower one, is refused.
    let (r, _) = acl_replace(&mut a, 3, OPEN_ACL, 1);
    assert_eq!(r.result, AdminResult::Denied);
    assert_eq!(issue(&mut a, &policy_pd(), "fw1", T0 + 3).result, IssueResult::Ok);
}

fn identity(a: &mut Authority, seq: u64, name: &str, restore: bool) -> (AdminResp, AuditRecord) {
    let op = if restore { AdminOp::IdentityRestore } else { AdminOp::IdentityRevoke };
    let c = AdminCommand { identity: Some(name.into()), ..command(a, seq, op) };
    admin(a, &c)
}

#[test]
fn a_revoked_name_is_refused_at_once_and_restored_versioned() {
    let mut a = seeded();
    let first = issue(&mut a, &policy_pd(), "fw0", T0);
    assert_eq!(first.result, IssueResult::Ok);
    let before = first.token.unwrap();
    let (r, rec) = identity(&mut a, 1, "policy_pd", false);
    assert_eq!(r.result, AdminResult::Ok);
    assert_eq!(meta(&rec, "command"), Some("identity_revoke"));
    assert_eq!(meta(&rec, "identity_serial"), Some("1"));
    let r = issue(&mut a, &policy_pd(), "fw0", T0 + 1);
    assert_eq!(r.result, IssueResult::Denied);
    assert!(r.reason.unwrap().contains("revoked"));
    // Revoking twice is refused; a revoked audience is refused to anyone.
    assert_eq!(identity(&mut a, 2, "policy_pd", false).0.result, AdminResult::Denied);
    identity(&mut a, 3, "fw0", false);
    identity(&mut a, 4, "policy_pd", true);
    assert_eq!(a.identities().serial(), 3);
    assert_eq!(issue(&mut a, &policy_pd(), "fw0", T0 + 2).result, IssueResult::Denied);
    assert_eq!(issue(&mut a, &policy_pd(), "cryptod", T0 + 3).result, IssueResult::Ok);
    // Published with the revocation list: a verifier refuses a token
    // issued to policy_pd before, and one for fw0.
    let body = published(&mut a, T0 + 4);
    assert_eq!(body.revoked_names.as_deref(), Some(&["fw0".to_string()][..]));
    assert_eq!(body.identity_serial, Some(3));
    let mut set = RevokedSet::from_ids(vec![]).with_names(vec!["policy_pd".into()]);
    let exp = Expectations {
        audience: "fw0",
        scope: ScopeSet::single(Scope::NetModify),
        now: T0,
        skew: 0,
    };
    let verify = |set: &RevokedSet| {
        token::verify(&before, &a.verifier_keyset(), &exp, &mut MemoryReplayCache::new(4), set)
    };
    assert_eq!(verify(&set).unwrap_err(), VerifyError::Revoked, "subject revoked");
    set = RevokedSet::from_ids(vec![]).with_names(body.revoked_names.unwrap());
    assert_eq!(verify(&set).unwrap_err(), VerifyError::Revoked, "audience revoked");
    assert!(verify(&RevokedSet::new()).is_ok());
    // The unlocker's name revoked: no unlock either.
    identity(&mut a, 5, "unlocker", false);
    assert_eq!(unlock_secret(&mut a, "vol0", T0), Err(TotpResult::Denied));
}

#[test]
fn registry_acl_and_identities_survive_a_restart() {
    let kek = [7u8; 32];
    let mut a = seeded();
    let extra = volume_add(&mut a, 1, "extra").unwrap();
    volume_remove(&mut a, 2, "data");
    acl_replace(&mut a, 3, OPEN_ACL, 5);
    identity(&mut a, 4, "policy_pd", false);
    let st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    assert!(st.section(sealed::section::VOLUMES).is_some());
    let mut b = seeded_from(st);
    assert_eq!(b.acl_version(), 5);
    assert_eq!(unlock_secret(&mut b, "extra", T0).unwrap(), extra);
    assert_eq!(unlock_secret(&mut b, "data", T0 + 30), Err(TotpResult::Denied));
    assert_eq!(issue(&mut b, &policy_pd(), "fw0", T0 + 31).result, IssueResult::Denied);
    assert_eq!(acl_replace(&mut b, 5, OPEN_ACL, 5).0.result, AdminResult::Denied);
    // A hostile section body stops the start, with a typed error.
    let mut st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    st.set_section(sealed::section::VOLUMES, Some(vec![0, 1, 0]));
    assert!(Authority::new(Config::default(), st, T0).is_err());
}

/// The revocation list `a` publishes at `t`, its root signature checked.
fn published(a: &mut Authority, t: u64) -> RevocationBody {
    let req: Message = RevocationListReq { request_id: RequestId([0x55; 16]) }.into();
    let (out, _) = call(a, &policy_pd(), &req, t);
    let Some(Message::RevocationList(l)) = out.response else { panic!("no revocation list") };
    let root = a.root_public();
    let kid = kid_for(&root);
    let payload = cose::verify(&l.signed, ContentType::RevocationList, |k| {
        (k == kid.as_slice()).then_some(root)
    })
    .unwrap()
    .into_inner()
    .payload;
    RevocationBody::from_cbor(&payload).unwrap()
}

fn device(a: &mut Authority, seq: u64, id: &str, restore: bool) -> (AdminResp, AuditRecord) {
    let op = if restore { AdminOp::DeviceRestore } else { AdminOp::DeviceRevoke };
    let c = AdminCommand { identity: Some(id.into()), ..command(a, seq, op) };
    admin(a, &c)
}

#[test]
fn a_revoked_device_is_refused_before_its_code_is_checked() {
    let kek = [7u8; 32];
    let mut a = seeded();
    let (r, rec) = device(&mut a, 1, "yubi1", false);
    assert_eq!(r.result, AdminResult::Ok);
    assert_eq!(meta(&rec, "command"), Some("device_revoke"));
    assert_eq!(meta(&rec, "device"), Some("yubi1"));
    assert_eq!(meta(&rec, "identity_serial"), Some("1"));
    assert!(a.identities().is_device_revoked("yubi1"));
    // A domain of the same name is not revoked: the kinds are apart.
    assert!(!a.identities().is_revoked("yubi1"));
    assert_eq!(device(&mut a, 2, "yubi1", false).0.result, AdminResult::Denied);
    // The code is refused, audited with the reason, and its step is not
    // used: restored, the same code is accepted.
    assert_eq!(unlock_secret(&mut a, "vol0", T0), Err(TotpResult::Denied));
    let (out, recs) = call(&mut a, &unlocker(), &totp_req(&code_at(T0), "yubi1").into(), T0);
    let r = totp_resp(&out);
    assert_eq!((r.result, r.reason.as_deref()), (TotpResult::Denied, Some("device revoked")));
    assert!(recs.iter().any(|rec| {
        rec.action == AuditAction::TotpValidate
            && rec.result == AuditResult::Denied
            && meta(rec, "reason") == Some("device revoked")
            && meta(rec, "device") == Some("yubi1")
    }));
    // Another device's code is still checked.
    let (out, _) = call(&mut a, &unlocker(), &totp_req("000000", "yubi2").into(), T0);
    assert_eq!(totp_resp(&out).result, TotpResult::Fail);
    // Sealed and published; survives a restart.
    let st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    let mut b = seeded_from(st);
    assert!(b.identities().is_device_revoked("yubi1"));
    let body = published(&mut b, T0 + 1);
    assert_eq!(body.revoked_devices.as_deref(), Some(&["yubi1".to_string()][..]));
    assert_eq!(body.revoked_names.as_deref(), Some(&[][..]));
    let (r, _) = device(&mut b, 3, "yubi1", true);
    assert_eq!(r.result, AdminResult::Ok);
    assert_eq!(b.identities().serial(), 2);
    assert!(unlock_secret(&mut b, "vol0", T0).is_ok(), "the step was not used");
    assert_eq!(device(&mut b, 4, "yubi1", true).0.result, AdminResult::Denied);
}
