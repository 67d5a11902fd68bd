//! The unlocker's attempt, step by step, against an in-process cryptod
//! (the real `Authority`, acking its own audit records as a collector
//! would) and a scripted agent.

mod support;

use portcullis_apps::common::AppError;
use portcullis_apps::trust::Trust;
use portcullis_apps::unlocker::{Attempt, Done, Fresh, Step, UnlockTarget};
use portcullis_authority::keys::kid_for;
use portcullis_authority::unlock::luks_passphrase;
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{KeysetReq, RequestId, UnlockOutcome, UnlockResult};
use portcullis_proto::token::VerifyError;
use support::*;
use zeroize::Zeroizing;

fn ask(a: &mut Authority, msg: &Message, now: u64) -> Message {
    ask_as(a, &PeerId::new(5, "unlocker"), msg, now)
}

/// Asks cryptod for the attestation `req`, and then the code check the
/// attempt builds with it; the attempt's step after cryptod's last answer.
fn answer(a: &mut Authority, att: &mut Attempt, req: &Message, trust: &Trust) -> Step {
    let step = att.on_cryptod_answer(ask(a, req, T0), trust, T0).unwrap();
    let Step::ToCryptod(check) = step else { return step };
    let Message::TotpValidateReq(r) = &*check else { panic!("not a code check") };
    assert!(r.attestation.is_some(), "the code check carries the attestation");
    att.on_cryptod_answer(ask(a, &check, T0), trust, T0).unwrap()
}

fn target() -> UnlockTarget {
    UnlockTarget {
        operator: "alice".into(),
        device: "yubi1".into(),
        volume: "data".into(),
        audience: "unlock_agent".into(),
    }
}

fn fresh(n: u8) -> Fresh {
    Fresh {
        esk: Zeroizing::new([n; 32]),
        request_id: RequestId([n; 16]),
        unlock_id: RequestId([n ^ 0xff; 16]),
        nonce: [n; 16],
    }
}

fn start(t: &UnlockTarget, code: &str, n: u8) -> (Attempt, Message) {
    Attempt::new(t, Zeroizing::new(code.into()), fresh(n), T0)
}

fn refused(step: Step) -> String {
    match step {
        Step::Refused(line) => line,
        Step::TokenUnverified(e) => panic!("token unverified: {e}"),
        Step::ToAgent(_) => panic!("went to the agent"),
        Step::ToCryptod(_) => panic!("asked cryptod again"),
    }
}

fn agent_says(att: &Attempt, id: RequestId, result: UnlockOutcome) -> Result<Done, AppError> {
    att.on_agent_answer(UnlockResult { request_id: id, result, reason: None }.into())
}

#[test]
fn a_right_code_hands_the_agent_the_volume_passphrase_and_the_token() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), &code_at(T0), 1);
    let step = answer(&mut a, &mut att, &req, &trust);
    let Step::ToAgent(msg) = step else { panic!("not to the agent") };
    let Message::UnlockRequest(u) = *msg else { panic!("not an unlock request") };
    assert_eq!(u.request_id, fresh(1).unlock_id);
    assert_eq!(u.volume_id, "data");
    assert_eq!(&u.passphrase[..], &luks_passphrase(&[0x22; 32], "data").unwrap()[..]);
    assert!(!u.token.is_empty());
    assert_eq!(
        agent_says(&att, fresh(1).unlock_id, UnlockOutcome::Ok).unwrap(),
        Done::Unlocked(String::new())
    );
}

#[test]
fn a_wrong_code_is_refused_as_fail() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), "00000000", 1);
    let line = refused(answer(&mut a, &mut att, &req, &trust));
    assert!(line.starts_with("refused: fail"), "{line}");
}

#[test]
fn a_code_used_once_is_refused_as_replay() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), &code_at(T0), 1);
    assert!(matches!(answer(&mut a, &mut att, &req, &trust), Step::ToAgent(_)));
    let (mut att, req) = start(&target(), &code_at(T0), 2);
    let line = refused(answer(&mut a, &mut att, &req, &trust));
    assert!(line.starts_with("refused: replay"), "{line}");
}

#[test]
fn a_locked_out_device_is_told_when_to_retry() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let mut last = String::new();
    for n in 0..8 {
        let (mut att, req) = start(&target(), "00000000", n);
        last = refused(answer(&mut a, &mut att, &req, &trust));
    }
    assert!(last.starts_with("refused: rate_limited") && last.contains("retry after"), "{last}");
}

#[test]
fn an_answer_to_another_request_is_a_protocol_error() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), "00000000", 1);
    let attestation = ask(&mut a, &req, T0);
    let (mut other, _) = start(&target(), "00000000", 2);
    // Another attempt's attestation (its key and nonce).
    let wrong = other.on_cryptod_answer(attestation.clone(), &trust, T0);
    assert!(matches!(wrong, Err(AppError::Protocol(_))));
    let Step::ToCryptod(check) = att.on_cryptod_answer(attestation, &trust, T0).unwrap() else {
        panic!()
    };
    let answer = ask(&mut a, &check, T0);
    let (mut other, _) = start(&target(), "00000000", 2);
    // Not before its own attestation came.
    let early = other.on_cryptod_answer(answer.clone(), &trust, T0);
    assert!(matches!(early, Err(AppError::Protocol(_))));
    assert!(matches!(other.on_cryptod_answer(answer, &trust, T0), Err(AppError::Protocol(_))));
    let keyset: Message = KeysetReq { request_id: RequestId([2; 16]) }.into();
    assert!(matches!(other.on_cryptod_answer(keyset, &trust, T0), Err(AppError::Protocol(_))));
}

#[test]
fn a_token_the_held_keyset_cannot_verify_is_checked_again_after_a_refresh() {
    let mut a = cryptod();
    let root = a.root_public();
    let stale = Trust::new(root, &kid_for(&root)); // no keyset yet
    let (mut att, req) = start(&target(), &code_at(T0), 1);
    let step = answer(&mut a, &mut att, &req, &stale);
    assert!(matches!(step, Step::TokenUnverified(_)));
    let fresh_trust = trust(&mut a);
    assert!(matches!(att.retry_token(&fresh_trust, T0).unwrap(), Step::ToAgent(_)));
}

#[test]
fn a_token_that_still_does_not_verify_is_refused_and_nothing_goes_to_the_agent() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    // The agent's audience is not what cryptod put in the token.
    let t = UnlockTarget { audience: "another_agent".into(), ..target() };
    let (mut att, req) = start(&t, &code_at(T0), 1);
    let step = answer(&mut a, &mut att, &req, &trust);
    assert!(matches!(step, Step::TokenUnverified(VerifyError::WrongAudience)));
    let line = refused(att.retry_token(&trust, T0).unwrap());
    assert!(line.starts_with("token refused"), "{line}");
    // Nothing left to hand on.
    assert!(att.retry_token(&trust, T0).is_err());
}

#[test]
fn the_agent_s_refusal_is_reported_and_its_wrong_answers_are_errors() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), &code_at(T0), 1);
    answer(&mut a, &mut att, &req, &trust);
    match agent_says(&att, fresh(1).unlock_id, UnlockOutcome::Fail).unwrap() {
        Done::AgentRefused(line) => assert!(line.starts_with("agent refused: fail"), "{line}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        agent_says(&att, RequestId([0; 16]), UnlockOutcome::Ok),
        Err(AppError::Protocol(_))
    ));
}

#[test]
fn a_refused_attestation_ends_the_attempt_before_the_code_is_sent() {
    let mut a = cryptod();
    let trust = trust(&mut a);
    let (mut att, req) = start(&target(), &code_at(T0), 1);
    // Asked from a domain the ACL grants no luks:unlock.
    let denied = ask_as(&mut a, &PeerId::new(7, "policy_pd"), &req, T0);
    let line = refused(att.on_cryptod_answer(denied, &trust, T0).unwrap());
    assert!(line.starts_with("attestation refused: denied"), "{line}");
    // The code was never sent: it still works in a new attempt.
    let (mut att, req) = start(&target(), &code_at(T0), 2);
    assert!(matches!(answer(&mut a, &mut att, &req, &trust), Step::ToAgent(_)));
}
