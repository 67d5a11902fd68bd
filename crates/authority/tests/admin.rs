//! The admin channel through the authority's entry points: signature,
//! peer, replay and expiry rules; operator add, reset and remove; recovery
//! codes at the unlocker; the sealed admin state across a restart.

use ed25519_dalek::SigningKey;
use portcullis_authority::admin::{recovery_hash, MAX_OPERATORS};
use portcullis_authority::authority::{Output, CODE_NOT_ACCEPTED};
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::totp::{totp, Algorithm};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    normalize_recovery_code, AdminCommand, AdminOp, AdminReq, AdminResp, AdminResult, AuditAction,
    AuditRecord, AuditResult, RequestId, TotpAlg, TotpResult, RECOVERY_HASH_LEN,
};
use zeroize::Zeroizing;

mod common;
use common::*;

const ADMIN_SEED: [u8; 32] = [0xad; 32];
const NEW_SECRET: &[u8] = b"abcdefghijklmnopqrst";
const CODES: [&str; 8] = [
    "AAAAA-BBBBB",
    "CCCCC-DDDDD",
    "EEEEE-FFFFF",
    "GGGGG-HHHHH",
    "IIIII-JJJJJ",
    "KKKKK-LLLLL",
    "MMMMM-NNNNN",
    "22222-77777",
];

fn admin_key() -> SigningKey {
    SigningKey::from_bytes(&ADMIN_SEED)
}

fn admin_state() -> SealedState {
    let mut s = state();
    s.admin_key = Some(admin_key().verifying_key().to_bytes());
    s
}

fn dom0() -> PeerId {
    PeerId::new(0, "dom0")
}

fn code(secret: &[u8], digits: u8, t: u64) -> String {
    format!("{:0w$}", totp(secret, Algorithm::Sha1, digits, t), w = usize::from(digits))
}

fn hashes() -> Vec<[u8; RECOVERY_HASH_LEN]> {
    CODES
        .iter()
        .enumerate()
        .map(|(i, c)| recovery_hash(&[i as u8; 16], &normalize_recovery_code(c).unwrap()))
        .collect()
}

fn command(a: &Authority, seq: u64, op: AdminOp, id: &str) -> AdminCommand {
    AdminCommand { operator_id: Some(id.into()), ..common::admin_command(a, seq, op) }
}

fn enrol(mut c: AdminCommand, secret: &[u8], confirm: &str) -> AdminCommand {
    c.secret = Some(Zeroizing::new(secret.to_vec()));
    c.algorithm = Some(TotpAlg::Sha1);
    c.digits = Some(6);
    c.confirm_code = Some(Zeroizing::new(confirm.into()));
    c
}

fn signed_by(key: &SigningKey, c: &AdminCommand) -> Message {
    let kid = kid_for(&key.verifying_key());
    let signed = cose::sign(key, &kid, ContentType::AdminCommand, &c.to_cbor().unwrap()).unwrap();
    AdminReq { request_id: c.request_id, signed }.into()
}

fn signed(c: &AdminCommand) -> Message {
    signed_by(&admin_key(), c)
}

fn admin_resp(out: &Output) -> &AdminResp {
    match out.response.as_ref() {
        Some(Message::AdminResp(r)) => r,
        other => panic!("expected admin_resp, got {other:?}"),
    }
}

fn totp_as(a: &mut Authority, operator: &str, code: &str, now: u64) -> (TotpResult, Output) {
    let mut req = totp_req_for(operator, code, "console");
    req.request_id = RequestId([now as u8; 16]);
    let (out, _) = call(a, &unlocker(), &req.into(), now);
    (totp_resp(&out).result, out)
}

fn meta<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.metadata.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn operator_reset_kills_the_old_secret_at_once() {
    let mut a = seeded_from(admin_state());
    let c = enrol(command(&a, 1, AdminOp::OperatorReset, "alice"), NEW_SECRET, "");
    let c =
        AdminCommand { digits: Some(8), confirm_code: Some(code(NEW_SECRET, 8, T0).into()), ..c };
    let (out, recs) = call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok, "{:?}", admin_resp(&out).reason);
    assert!(out.state_changed);
    let rec = recs.last().unwrap();
    assert_eq!((rec.action, rec.result), (AuditAction::Admin, AuditResult::Ok));
    assert_eq!(meta(rec, "command"), Some("operator_reset"));
    assert_eq!(rec.target.as_deref(), Some("alice"));
    // The old secret's fresh code is refused; the new one works.
    let t = T0 + 30;
    assert_eq!(totp_as(&mut a, "alice", &code_at(t), t).0, TotpResult::Fail);
    assert_eq!(totp_as(&mut a, "alice", &code(NEW_SECRET, 8, t), t + 1).0, TotpResult::Ok);
    // The code that confirmed the enrolment cannot unlock.
    let mut b = seeded_from(admin_state());
    call(&mut b, &dom0(), &signed(&c), T0);
    assert_eq!(totp_as(&mut b, "alice", &code(NEW_SECRET, 8, T0), T0).0, TotpResult::Replay);
}

#[test]
fn a_wrong_confirmation_code_changes_nothing_and_uses_the_sequence_number() {
    let mut a = seeded_from(admin_state());
    let wrong = code(NEW_SECRET, 6, T0 + 3000);
    let c = enrol(command(&a, 1, AdminOp::OperatorReset, "alice"), NEW_SECRET, &wrong);
    let (out, recs) = call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Fail);
    assert_eq!(recs.last().unwrap().result, AuditResult::Fail);
    assert_eq!(totp_as(&mut a, "alice", &code_at(T0), T0).0, TotpResult::Ok, "old secret stays");
    // The same command again is a replay.
    let (out, _) = call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Replay);
}

#[test]
fn replayed_or_reordered_commands_are_refused_and_audited() {
    let mut a = seeded_from(admin_state());
    let c5 = command(&a, 5, AdminOp::RecoveryRegenerate, "alice");
    let c5 = AdminCommand { code_hashes: Some(hashes()), ..c5 };
    let (out, _) = call(&mut a, &dom0(), &signed(&c5), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
    assert_eq!(admin_resp(&out).admin_seq, Some(5));
    for seq in [5, 4, 1] {
        let c = AdminCommand { admin_seq: seq, ..c5.clone() };
        let (out, recs) = call(&mut a, &dom0(), &signed(&c), T0 + 1);
        let r = admin_resp(&out);
        assert_eq!(r.result, AdminResult::Replay, "seq {seq}");
        assert_eq!(r.admin_seq, Some(5));
        let rec = recs.last().unwrap();
        assert_eq!((rec.action, rec.result), (AuditAction::Admin, AuditResult::Replay));
        assert_eq!(meta(rec, "command"), Some("recovery_regenerate"));
    }
    // A command for another cryptod (another root key) is refused too.
    let other = AdminCommand { admin_seq: 6, state_id: vec![1; 8], ..c5.clone() };
    let (out, _) = call(&mut a, &dom0(), &signed(&other), T0 + 1);
    assert_eq!(admin_resp(&out).result, AdminResult::Replay);
    let next = AdminCommand { admin_seq: 6, ..c5 };
    let (out, _) = call(&mut a, &dom0(), &signed(&next), T0 + 1);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
}

#[test]
fn expired_and_future_commands_are_refused() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    let (out, recs) = call(&mut a, &dom0(), &signed(&c), T0 + 301);
    assert_eq!(admin_resp(&out).result, AdminResult::Expired);
    assert_eq!(recs.last().unwrap().result, AuditResult::Denied);
    let future = AdminCommand { issued_at: T0 + 61, expires_at: T0 + 100, ..c.clone() };
    let (out, _) = call(&mut a, &dom0(), &signed(&future), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Expired);
    // At the edges: a minute early and the last second are fine; the
    // refused ones did not use the sequence number.
    let early = AdminCommand { issued_at: T0 + 60, expires_at: T0 + 100, ..c.clone() };
    let (out, _) = call(&mut a, &dom0(), &signed(&early), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
    let last = AdminCommand { admin_seq: 2, ..c };
    let (out, _) = call(&mut a, &dom0(), &signed(&last), T0 + 300);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
}

#[test]
fn a_command_not_signed_by_the_admin_key_is_refused() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    let mallory = SigningKey::from_bytes(&[0x66; 32]);
    let (out, recs) = call(&mut a, &dom0(), &signed_by(&mallory, &c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
    let rec = recs.last().unwrap();
    assert_eq!((rec.action, rec.result), (AuditAction::Admin, AuditResult::Denied));
    // Signed by the root key (cryptod's own): still not the admin key.
    let root = SigningKey::from_bytes(&[0x11; 32]);
    let (out, _) = call(&mut a, &dom0(), &signed_by(&root, &c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
    // A flipped payload byte breaks the signature.
    let Message::AdminReq(mut req) = signed(&c) else { unreachable!() };
    let n = req.signed.len();
    req.signed[n - 70] ^= 1;
    let (out, _) = call(&mut a, &dom0(), &req.into(), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
    // Without a sealed admin key nothing is accepted.
    let mut b = seeded_from(state());
    let (out, _) = call(&mut b, &dom0(), &signed(&c), T0);
    let r = admin_resp(&out);
    assert_eq!(
        (r.result, r.reason.as_deref()),
        (AdminResult::Denied, Some("no admin key is provisioned"))
    );
    // The right key still works: nothing above used the sequence number.
    let (out, _) = call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
}

#[test]
fn a_validly_signed_command_from_another_peer_is_refused_and_audited() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    for peer in [policy_pd(), unlocker(), PeerId::new(9, "dom0")] {
        let (out, recs) = call(&mut a, &peer, &signed(&c), T0);
        let r = admin_resp(&out);
        assert_eq!(r.result, AdminResult::Denied, "{peer:?}");
        let rec = recs.last().unwrap();
        assert_eq!((rec.action, rec.result), (AuditAction::Admin, AuditResult::Denied));
        assert_eq!(rec.actor, peer.vm);
        assert_eq!(meta(rec, "domid"), Some(peer.domid.to_string().as_str()));
    }
    // Recovery codes were not set: a code is refused.
    assert_eq!(totp_as(&mut a, "alice", CODES[0], T0).0, TotpResult::Fail);
    // The same command from dom0's link is applied.
    let (out, _) = call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
}

#[test]
fn a_domu_flooding_admin_commands_gets_one_audit_record_per_window() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    let mut records = 0;
    for i in 0..50 {
        let (out, recs) = call(&mut a, &policy_pd(), &signed(&c), T0 + i / 10);
        assert_eq!(admin_resp(&out).result, AdminResult::Denied);
        records += recs.iter().filter(|r| r.action == AuditAction::Admin).count();
    }
    assert_eq!(records, 1, "50 refusals within one aggregation window");
}

#[test]
fn add_and_remove_operators_never_the_last() {
    let mut a = seeded_from(admin_state());
    let rm = command(&a, 1, AdminOp::OperatorRemove, "alice");
    let (out, _) = call(&mut a, &dom0(), &signed(&rm), T0);
    let r = admin_resp(&out);
    assert_eq!(r.result, AdminResult::Denied);
    assert!(r.reason.as_deref().unwrap().contains("last operator"));
    let add =
        enrol(command(&a, 2, AdminOp::OperatorAdd, "bob"), NEW_SECRET, &code(NEW_SECRET, 6, T0));
    let (out, _) = call(&mut a, &dom0(), &signed(&add), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
    // Adding bob again is refused (reset replaces a secret).
    let again = AdminCommand { admin_seq: 3, request_id: RequestId([3; 16]), ..add.clone() };
    let (out, _) = call(&mut a, &dom0(), &signed(&again), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
    // The old refused removal cannot be replayed now that it would pass.
    let (out, _) = call(&mut a, &dom0(), &signed(&rm), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Replay);
    let rm = command(&a, 4, AdminOp::OperatorRemove, "alice");
    let (out, _) = call(&mut a, &dom0(), &signed(&rm), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
    let t = T0 + 30;
    assert_eq!(totp_as(&mut a, "alice", &code_at(t), t).0, TotpResult::Fail);
    assert_eq!(totp_as(&mut a, "bob", &code(NEW_SECRET, 6, t), t).0, TotpResult::Ok);
    // Resetting a removed operator is refused; a command with the wrong
    // fields for its kind is invalid.
    let reset = enrol(command(&a, 5, AdminOp::OperatorReset, "alice"), NEW_SECRET, "123456");
    let (out, _) = call(&mut a, &dom0(), &signed(&reset), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
    let bad = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 6, AdminOp::OperatorRemove, "bob")
    };
    let (out, _) = call(&mut a, &dom0(), &signed(&bad), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Invalid);
    // An operator command without its operator is invalid.
    let anon = AdminCommand { operator_id: None, ..command(&a, 7, AdminOp::OperatorRemove, "bob") };
    let (out, _) = call(&mut a, &dom0(), &signed(&anon), T0);
    let r = admin_resp(&out);
    assert_eq!(r.result, AdminResult::Invalid);
    assert_eq!(r.reason.as_deref(), Some("operator_id is required"));
}

#[test]
fn the_operator_table_is_bounded() {
    let mut a = seeded_from(admin_state());
    for i in 1..MAX_OPERATORS as u64 {
        let add = enrol(
            command(&a, i, AdminOp::OperatorAdd, &format!("op{i}")),
            NEW_SECRET,
            &code(NEW_SECRET, 6, T0),
        );
        let (out, _) = call(&mut a, &dom0(), &signed(&add), T0);
        assert_eq!(admin_resp(&out).result, AdminResult::Ok, "op{i}");
    }
    let add = enrol(
        command(&a, 99, AdminOp::OperatorAdd, "one-too-many"),
        NEW_SECRET,
        &code(NEW_SECRET, 6, T0),
    );
    let (out, _) = call(&mut a, &dom0(), &signed(&add), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Denied);
}

#[test]
fn a_recovery_code_unlocks_once_and_is_audited_with_the_count_left() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    call(&mut a, &dom0(), &signed(&c), T0);
    let (result, out) = totp_as(&mut a, "alice", "ggggg-hhhhh", T0);
    assert_eq!(result, TotpResult::Ok);
    assert!(out.state_changed);
    let rec = audit_record(&records(&out)[0]);
    assert_eq!((rec.action, rec.result), (AuditAction::RecoveryCodeUsed, AuditResult::Ok));
    assert_eq!(meta(&rec, "remaining"), Some("7"));
    assert!(!format!("{rec:?}").contains("GGGGG"), "the code is never audited");
    let (result, out) = totp_as(&mut a, "alice", "GGGGG-HHHHH", T0 + 1);
    assert_eq!(result, TotpResult::Replay);
    assert_eq!(audit_record(&records(&out)[0]).result, AuditResult::Replay);
    // Another operator's codes are not alice's; a made-up code fails with
    // the one line every failure gets.
    let (result, out) = totp_as(&mut a, "alice", "GGGGG-HHHHI", T0 + 2);
    assert_eq!(result, TotpResult::Fail);
    assert_eq!(totp_resp(&out).reason.as_deref(), Some(CODE_NOT_ACCEPTED));
    // Regenerating replaces them all: the old unused ones stop working.
    let c2 = AdminCommand {
        admin_seq: 2,
        code_hashes: Some(vec![recovery_hash(&[9; 16], b"QQQQQRRRRR"); 8]),
        ..c
    };
    let (out, _) = call(&mut a, &dom0(), &signed(&c2), T0 + 3);
    assert_eq!(admin_resp(&out).result, AdminResult::Ok);
    assert_eq!(totp_as(&mut a, "alice", CODES[0], T0 + 4).0, TotpResult::Fail);
    assert_eq!(totp_as(&mut a, "alice", "QQQQQ-RRRRR", T0 + 5).0, TotpResult::Ok);
}

#[test]
fn wrong_recovery_codes_count_towards_the_lockout() {
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 1, AdminOp::RecoveryRegenerate, "alice")
    };
    call(&mut a, &dom0(), &signed(&c), T0);
    for i in 0..5 {
        assert_eq!(totp_as(&mut a, "alice", "ZZZZZ-ZZZZZ", T0 + i).0, TotpResult::Fail);
    }
    let (result, out) = totp_as(&mut a, "alice", CODES[1], T0 + 5);
    assert_eq!(result, TotpResult::RateLimited, "a right code is refused while locked");
    assert!(totp_resp(&out).retry_after.is_some());
    // The lockout did not burn the code.
    let later = T0 + 4 + 31;
    assert_eq!(totp_as(&mut a, "alice", CODES[1], later).0, TotpResult::Ok);
}

#[test]
fn clock_skew_is_noted_in_the_audit_log_only() {
    let mut a = seeded_from(admin_state());
    // A code from four steps ahead (the phone's clock is 2 minutes fast).
    let ahead = code_at(T0 + 120);
    let (result, out) = totp_as(&mut a, "alice", &ahead, T0);
    assert_eq!(result, TotpResult::Fail);
    let r = totp_resp(&out);
    assert_eq!(r.reason.as_deref(), Some(CODE_NOT_ACCEPTED));
    let rec = audit_record(&records(&out)[0]);
    assert_eq!(meta(&rec, "clock_skew_steps"), Some("+4"));
    // A plainly wrong code gets the same answer and no skew note.
    let (_, out) = totp_as(&mut a, "alice", "00000000", T0 + 1);
    assert_eq!(totp_resp(&out).reason.as_deref(), Some(CODE_NOT_ACCEPTED));
    assert_eq!(meta(&audit_record(&records(&out)[0]), "clock_skew_steps"), None);
}

#[test]
fn admin_state_survives_a_restart() {
    let kek = [7u8; 32];
    let mut a = seeded_from(admin_state());
    let c = AdminCommand {
        code_hashes: Some(hashes()),
        ..command(&a, 7, AdminOp::RecoveryRegenerate, "alice")
    };
    call(&mut a, &dom0(), &signed(&c), T0);
    assert_eq!(totp_as(&mut a, "alice", CODES[2], T0).0, TotpResult::Ok);
    let st = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    assert_eq!(st.admin_seq, 7);
    assert_eq!(st.recovery[0].2, 0b100);
    let mut b = seeded_from(st);
    assert_eq!(totp_as(&mut b, "alice", CODES[2], T0 + 1).0, TotpResult::Replay);
    assert_eq!(totp_as(&mut b, "alice", CODES[3], T0 + 2).0, TotpResult::Ok);
    let (out, _) = call(&mut b, &dom0(), &signed(&c), T0);
    assert_eq!(admin_resp(&out).result, AdminResult::Replay);
}
