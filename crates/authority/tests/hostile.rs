//! Issue 10 (hostile domains): an unlocker or policy domain that sends what
//! it likes, and cryptod restarts. Each test reproduces one finding through
//! `handle_request`, `entropy`, `collector_ack` (through `common::Route`),
//! `tick` and `export`, the way cryptod drives them.

use portcullis_authority::audit::{verify_log, Batch, LogCheck, LogErrorKind};
use portcullis_authority::authority::{Config, Output};
use portcullis_authority::ratelimit::{IssueRateConfig, RateLimitConfig};
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::totp::{totp, Algorithm};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AuditAck, AuditAction, AuditRecord, AuditResult, IssueResult, KeysetBody, KeysetReq, RequestId,
    RevocationBody, RevocationListReq, RevokeResult, TokenIssueReq, TokenRevokeReq, TotpResult,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use sha2::{Digest, Sha256};

mod common;
use common::*;

const KEK: [u8; 32] = [0x99; 32];

fn wrong_at(t: u64) -> String {
    format!("{:08}", (totp(SECRET, Algorithm::Sha1, 8, t) + 1) % 100_000_000)
}

fn issue_req() -> Message {
    TokenIssueReq {
        request_id: RequestId([0x43; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(Scope::NetRead),
        audience: "fw0".into(),
        justification: "rule update".into(),
        nonce: vec![3; 16],
        timestamp: T0,
        ttl: None,
        attestation: None,
        metadata: None,
    }
    .into()
}

/// cryptod and its collector: every record is stored in `log` and
/// acknowledged at once; held answers come back as the response.
struct Cryptod {
    a: Authority,
    config: Config,
    log: Vec<Vec<u8>>,
    boots: u64,
}

impl Cryptod {
    fn boot(config: Config, state: SealedState, now: u64) -> Cryptod {
        Cryptod::boot_nth(config, state, now, 1)
    }

    /// Each boot gets fresh entropy (so a fresh chain id), as from entropyd.
    fn boot_nth(config: Config, state: SealedState, now: u64, boots: u64) -> Cryptod {
        let a = Authority::new(config.clone(), state, now).unwrap();
        let mut c = Cryptod { a, config, log: Vec::new(), boots };
        c.call(&PeerId::new(2, "entropyd"), &entropy(boots), now);
        assert!(c.a.is_ready());
        c
    }

    /// What the collector does with a wake-up's batches: stores them,
    /// then acknowledges the last.
    fn store(&mut self, out: &mut Output, now: u64) {
        self.a.seal_audit(now);
        let batches: Vec<Batch> = self.a.pending_audit_batches().cloned().collect();
        let Some(last) = batches.last() else { return };
        let chain_id = audit_record(&last.records[0]).chain_id;
        for b in &batches {
            self.log.extend(b.items().map(<[u8]>::to_vec));
        }
        let acked = self.a.collector_ack(&AuditAck { chain_id, seq: last.last_seq });
        assert!(acked.state_changed, "an ack moves the sealed audit head");
        if let Some((_, answer)) = acked.released.into_iter().next() {
            assert!(out.response.is_none());
            out.response = Some(answer);
        }
    }

    fn call(&mut self, peer: &PeerId, msg: &Message, now: u64) -> Output {
        let mut out = self.a.handle(peer, msg, now, b"hw");
        self.store(&mut out, now);
        out
    }

    fn tick(&mut self, now: u64) -> Output {
        let mut out = self.a.tick(now);
        self.store(&mut out, now);
        out
    }

    /// SIGKILL and start again from the last exported sealed state.
    fn restart(&mut self, now: u64) {
        let blob = self.a.export(&KEK).unwrap();
        let state = sealed::unseal(&blob, &KEK).unwrap();
        let log = std::mem::take(&mut self.log);
        *self = Cryptod::boot_nth(self.config.clone(), state, now, self.boots + 1);
        self.log.splice(0..0, log);
    }

    fn totp(&mut self, operator: &str, code: &str, device: &str, now: u64) -> (TotpResult, Output) {
        let out = self.call(&unlocker(), &totp_req_for(operator, code, device).into(), now);
        (totp_resp(&out).result, out)
    }
}

/// `--expect-last last`.
fn anchored(last: u64) -> LogCheck {
    LogCheck { expect_last: Some(last), allow_unsealed_tail: false }
}

/// Whether a log item is a record (a CBOR map) rather than a seal.
fn is_record(item: &[u8]) -> bool {
    matches!(item.first(), Some(0xa0..=0xbf))
}

/// The last record of a log.
fn last_record(log: &[Vec<u8>]) -> &[u8] {
    log.iter().rev().find(|i| is_record(i)).unwrap()
}

/// The records of a log, read (its seals left out).
fn records_in(log: &[Vec<u8>]) -> Vec<AuditRecord> {
    log.iter().filter(|i| is_record(i)).map(|r| audit_record(r)).collect()
}

/// Finding 1: 4 wrong codes for `alice`, then ~1000 made-up operator ids,
/// repeated, used to give 12 consecutive wrong guesses without a lockout.
#[test]
fn made_up_operator_ids_do_not_reset_the_guess_count() {
    let mut c = Cryptod::boot(Config::default(), state(), T0);
    let mut checked = 0;
    for round in 0..3u64 {
        let now = T0 + round;
        for _ in 0..4 {
            match c.totp("alice", &wrong_at(now), "yubi1", now).0 {
                TotpResult::Fail => checked += 1,
                TotpResult::RateLimited => {}
                other => panic!("{other:?}"),
            }
        }
        for i in 0..1100 {
            c.totp(&format!("op{round}-{i}"), "00000000", &format!("dev{i}"), now);
        }
    }
    assert_eq!(checked, 5, "the fifth wrong guess locks alice; later ones are not checked");
    let (result, out) = c.totp("alice", &code_at(T0 + 3), "yubi1", T0 + 3);
    assert_eq!(result, TotpResult::RateLimited);
    assert!(totp_resp(&out).retry_after.unwrap() <= 30);
}

/// Finding 2: made-up ids with 5 failures each filled the table with locked
/// entries; the real operator's right code was then `rate_limited` with
/// `retry_after` u64::MAX - now.
#[test]
fn made_up_ids_cannot_lock_out_the_real_operator() {
    let config = Config {
        rate_limit: RateLimitConfig { max_keys: 8, ..RateLimitConfig::default() },
        ..Config::default()
    };
    let mut c = Cryptod::boot(config, state(), T0);
    for i in 0..40 {
        for _ in 0..5 {
            let (result, out) = c.totp(&format!("ghost{i}"), "00000000", &format!("d{i}"), T0);
            if result == TotpResult::RateLimited {
                assert!(totp_resp(&out).retry_after.unwrap() <= 3600);
            }
        }
    }
    // The device id is a claim: the attacker may claim alice's too.
    for _ in 0..10 {
        c.totp("ghost", "00000000", "yubi1", T0);
    }
    let (result, out) = c.totp("alice", &code_at(T0), "yubi1", T0);
    assert_eq!(result, TotpResult::Ok, "{:?}", totp_resp(&out));
}

/// Finding 3: after a SIGKILL and restart, the next wrong code was checked
/// as if nothing had happened.
#[test]
fn failures_and_lockouts_survive_a_restart() {
    let mut c = Cryptod::boot(Config::default(), state(), T0);
    for _ in 0..4 {
        let (result, out) = c.totp("alice", &wrong_at(T0), "yubi1", T0);
        assert_eq!(result, TotpResult::Fail);
        assert!(out.state_changed, "a failure that raises the counter must be persisted");
    }
    c.restart(T0 + 1);
    assert_eq!(c.totp("alice", &wrong_at(T0 + 1), "yubi1", T0 + 1).0, TotpResult::Fail);
    // That was the fifth: locked, and still locked after another restart.
    c.restart(T0 + 2);
    let (result, out) = c.totp("alice", &code_at(T0 + 2), "yubi1", T0 + 2);
    assert_eq!(result, TotpResult::RateLimited);
    assert_eq!(totp_resp(&out).retry_after, Some(29));
    // Once it has passed, the right code works and clears the counter.
    let later = T0 + 61;
    assert_eq!(c.totp("alice", &code_at(later), "yubi1", later).0, TotpResult::Ok);
    c.restart(later + 1);
    for _ in 0..4 {
        assert_eq!(c.totp("alice", &wrong_at(later + 40), "yubi1", later + 40).0, TotpResult::Fail);
    }
}

fn keyset_version(c: &mut Cryptod, now: u64) -> u64 {
    let out = c.call(&policy_pd(), &KeysetReq { request_id: RequestId([1; 16]) }.into(), now);
    let Some(Message::Keyset(ks)) = out.response else { panic!("{:?}", out.response) };
    let root = c.a.root_public();
    let v = cose::verify(&ks.signed, ContentType::Keyset, |_| Some(root)).unwrap();
    KeysetBody::from_cbor(&v.payload).unwrap().version
}

fn revocation_list(c: &mut Cryptod, now: u64) -> RevocationBody {
    let req = RevocationListReq { request_id: RequestId([6; 16]) }.into();
    let out = c.call(&policy_pd(), &req, now);
    let Some(Message::RevocationList(list)) = out.response else { panic!("{:?}", out.response) };
    let root = c.a.root_public();
    let v = cose::verify(&list.signed, ContentType::RevocationList, |_| Some(root)).unwrap();
    RevocationBody::from_cbor(&v.payload).unwrap()
}

/// `peer` asks to revoke `cti` (request id `tag` repeated): the answer's
/// result and reason, and whether the sealed state changed.
fn ask_revoke(
    c: &mut Cryptod,
    peer: &PeerId,
    tag: u8,
    cti: &[u8],
    now: u64,
) -> (RevokeResult, Option<String>, bool) {
    let req = TokenRevokeReq {
        request_id: RequestId([tag; 16]),
        cti: cti.to_vec(),
        reason: "leaked".into(),
        timestamp: now,
    };
    let out = c.call(peer, &req.into(), now);
    match out.response {
        Some(Message::TokenRevokeResp(r)) => (r.result, r.reason, out.state_changed),
        other => panic!("{other:?}"),
    }
}

fn revoke(c: &mut Cryptod, cti: &[u8], now: u64) {
    let (result, _, changed) = ask_revoke(c, &policy_pd(), 5, cti, now);
    assert!(changed, "a revocation changes the sealed state");
    assert_eq!(result, RevokeResult::Ok);
}

/// Finding 4: the keyset version and the revocation serial started again at
/// 0 after a restart (every verifier refused the new lists as a rollback),
/// and each boot's audit chain stood alone.
#[test]
fn counters_only_go_up_and_the_audit_log_is_one_chain_across_restarts() {
    let mut c = Cryptod::boot(Config::default(), state(), T0);
    let v1 = keyset_version(&mut c, T0);
    revoke(&mut c, &[7; 16], T0);
    let l1 = revocation_list(&mut c, T0);
    assert_eq!(l1.entries.len(), 1);
    let head = audit_record(last_record(&c.log));
    let head_hash: [u8; 32] = Sha256::digest(last_record(&c.log)).into();
    let before = c.log.len();

    c.restart(T0 + 10);
    let first = audit_record(&c.log[before]);
    assert_eq!(first.action, AuditAction::ChainStart);
    assert_ne!(first.chain_id, head.chain_id, "a new chain per boot");
    assert_eq!(first.seq, head.seq + 1, "seq continues from the sealed head");
    assert_eq!(first.prev_hash, head_hash, "and links to it");
    let v2 = keyset_version(&mut c, T0 + 10);
    let l2 = revocation_list(&mut c, T0 + 10);
    assert!(v2 > v1, "keyset version {v2} after restart, {v1} before");
    assert!(
        l2.serial > l1.serial,
        "revocation serial {} after restart, {} before",
        l2.serial,
        l1.serial
    );
    assert_eq!(l2.entries, l1.entries, "revocations outlive a restart");

    c.restart(T0 + 20);
    assert!(keyset_version(&mut c, T0 + 20) > v2);
    assert!(revocation_list(&mut c, T0 + 20).serial > l2.serial);
    let last = audit_record(last_record(&c.log)).seq;
    let s = verify_log(&c.log, &[c.a.root_public()], anchored(last)).unwrap();
    assert_eq!(s.chains.len(), 3);
    assert_eq!(s.superseded, 0);
}

/// Finding 7a: one peer flooding token requests made one signed
/// `rate_limited` record per request.
#[test]
fn a_flood_of_refusals_is_aggregated_per_peer_reason_and_window() {
    let issue_rate = IssueRateConfig { burst: 3, per_minute: 60, max_peers: 16 };
    let config = Config { issue_rate, audit_aggregate_window: 10, ..Config::default() };
    let mut c = Cryptod::boot(config, state(), T0);
    let start = c.log.len();
    let mut refused = 0;
    for _ in 0..3000 {
        let out = c.call(&policy_pd(), &issue_req(), T0);
        let Some(Message::TokenIssueResp(r)) = &out.response else { panic!() };
        refused += usize::from(r.result == IssueResult::RateLimited);
    }
    assert!(refused > 2900);
    let recs: Vec<AuditRecord> = records_in(&c.log[start..]);
    let limited: Vec<&AuditRecord> =
        recs.iter().filter(|r| r.result == AuditResult::RateLimited).collect();
    assert_eq!(limited.len(), 1, "the first refusal at once, the rest counted");
    assert_eq!(limited[0].actor, "policy_pd");
    // The window closes on a tick: one record with the count.
    assert!(records(&c.tick(T0 + 9)).is_empty());
    let out = c.tick(T0 + 10);
    let agg: Vec<AuditRecord> = records(&out).iter().map(|r| audit_record(r)).collect();
    assert_eq!(agg.len(), 1);
    let meta = agg[0].metadata.as_ref().unwrap();
    let ok = recs.iter().filter(|r| r.result == AuditResult::Ok).count();
    assert_eq!(meta.get("repeated").map(String::as_str), Some(&*(refused - 1).to_string()));
    assert_eq!(meta.get("reason").map(String::as_str), Some("too many token requests"));
    assert_eq!(agg[0].result, AuditResult::RateLimited);
    assert!(ok >= 3);

    // A different event closes the aggregate before its own record.
    let now = T0 + 11;
    for _ in 0..50 {
        c.call(&policy_pd(), &issue_req(), now);
    }
    let before = c.log.len();
    c.totp("alice", &code_at(now), "yubi1", now);
    let next: Vec<AuditRecord> = records_in(&c.log[before..]);
    assert_eq!(next[0].result, AuditResult::RateLimited);
    assert!(next[0].metadata.as_ref().unwrap().contains_key("repeated"));
    assert_eq!(next[1].action, AuditAction::TotpValidate);
    let last = audit_record(last_record(&c.log)).seq;
    verify_log(&c.log, &[c.a.root_public()], anchored(last)).unwrap();
}

/// Three boots' records: `(log, [(start, end)] per chain)`.
fn three_boots() -> (Cryptod, Vec<(usize, usize)>) {
    let mut c = Cryptod::boot(Config::default(), state(), T0);
    let mut bounds = Vec::new();
    let mut start = 0;
    for boot in 0..3u64 {
        let now = T0 + 100 * boot;
        for _ in 0..3 {
            c.call(&policy_pd(), &issue_req(), now);
        }
        bounds.push((start, c.log.len()));
        start = c.log.len();
        if boot < 2 {
            c.restart(now + 50);
        }
    }
    (c, bounds)
}

/// Finding 8: with two or more chains, whole-chain edits passed `audit verify`.
#[test]
fn audit_log_edits_across_chains_are_detected() {
    let (c, b) = three_boots();
    let keys = [c.a.root_public()];
    let chain = |i: usize| c.log[b[i].0..b[i].1].to_vec();
    let last = audit_record(last_record(&c.log)).seq;
    let check =
        |log: Vec<Vec<u8>>| verify_log(&log, &keys, anchored(last)).map(|_| ()).map_err(|e| e.kind);
    assert_eq!(check(c.log.clone()), Ok(()));

    let dropped_last = [chain(0), chain(1)].concat();
    assert!(matches!(check(dropped_last), Err(LogErrorKind::TruncatedTail { .. })));
    // Its last batch (one record and its seal) cut.
    let mut cut = chain(0);
    cut.truncate(cut.len() - 2);
    let cut_tail = [cut, chain(1), chain(2)].concat();
    assert!(matches!(check(cut_tail), Err(LogErrorKind::MissingLink { .. })));
    let dropped_middle = [chain(0), chain(2)].concat();
    assert!(matches!(check(dropped_middle), Err(LogErrorKind::MissingLink { .. })));
    let dropped_first = [chain(1), chain(2)].concat();
    assert!(matches!(check(dropped_first), Err(LogErrorKind::MissingStart { .. })));
    let swapped = [chain(1), chain(0), chain(2)].concat();
    assert!(matches!(check(swapped), Err(LogErrorKind::MissingStart { .. })));
    let swapped_late = [chain(0), chain(2), chain(1)].concat();
    assert!(check(swapped_late).is_err());
    let replayed = [chain(0), chain(1), chain(0), chain(1), chain(2)].concat();
    assert_eq!(check(replayed), Err(LogErrorKind::SecondStart));
    let replayed_middle = [chain(0), chain(1), chain(2), chain(1)].concat();
    assert!(check(replayed_middle).is_err());
    let twice = [chain(0), chain(1), chain(1), chain(2)].concat();
    assert!(check(twice).is_err());
    // Without an anchor, dropping the newest chain is what stays undetectable.
    let dropped_last = [chain(0), chain(1)].concat();
    assert!(verify_log(&dropped_last, &keys, LogCheck::default()).is_ok());
}

/// A client that may revoke tokens revoked made-up ids of the longest kind
/// (cryptod does not remember what it issued): about 50 of them made the
/// sealed state too large to persist under Xen (one xenstore value, 4 KiB),
/// and while persisting failed cryptod held every answer that waited for
/// the state, everyone's, for the 300 s the entries live. Its revocations
/// now stop at its share of the list, and the state grows by at most that.
#[test]
fn a_client_cannot_grow_the_sealed_state_by_revoking() {
    use portcullis_authority::revocation::PEER_REVOKED_BYTES;
    use portcullis_proto::msg::MAX_CTI_LEN;
    use portcullis_proto::token::MAX_LIFETIME_SECS;

    let mut c = Cryptod::boot(Config::default(), state(), T0);
    let before = c.a.export(&KEK).unwrap().len();
    let made_up = |c: &mut Cryptod, i: u8, now: u64| {
        let (result, reason, _) = ask_revoke(c, &policy_pd(), i, &[i; MAX_CTI_LEN], now);
        (result, reason)
    };
    let (mut accepted, mut share, mut limited) = (0, 0, 0);
    for i in 0..200u8 {
        match made_up(&mut c, i, T0) {
            (RevokeResult::Ok, _) => accepted += 1,
            (RevokeResult::Unavailable, Some(reason)) if reason.contains("share") => share += 1,
            (RevokeResult::Unavailable, Some(reason)) if reason.contains("too many") => {
                limited += 1
            }
            other => panic!("{other:?}"),
        }
    }
    // Seven ids of 64 bytes (73 sealed bytes each) fill a 512-byte share;
    // the caller's revocation bucket (60) lets the first 60 be decided.
    assert_eq!(accepted, PEER_REVOKED_BYTES / (1 + MAX_CTI_LEN + 8));
    let burst = usize::try_from(Config::default().issue_rate.burst).unwrap();
    assert_eq!((share, limited), (burst - accepted, 200 - burst));
    // The flood's records: each decided request, then the bucket's
    // refusals aggregated (one record now, a count when the window ends).
    let revokes = |c: &Cryptod| {
        records_in(&c.log).iter().filter(|r| r.action == AuditAction::TokenRevoke).count()
    };
    assert_eq!(revokes(&c), burst + 1);
    let grown = c.a.export(&KEK).unwrap().len() - before;
    assert!(grown <= PEER_REVOKED_BYTES, "the sealed state grew by {grown} bytes");
    // Once the tokens they name have expired, there is room again.
    let later = T0 + MAX_LIFETIME_SECS + 1;
    assert_eq!(made_up(&mut c, 250, later).0, RevokeResult::Ok);
}

/// Revocations had no rate limit: a client the ACL does not allow to revoke
/// made one `denied` record per request, as many as it sent. They now have
/// a token bucket per peer (sized like token issue's), and its refusals
/// are aggregated.
#[test]
fn a_flood_of_refused_revocations_makes_a_bounded_number_of_records() {
    let mut c = Cryptod::boot(Config::default(), state(), T0);
    let burst = usize::try_from(Config::default().issue_rate.burst).unwrap();
    let mut results = Vec::new();
    for i in 0..500u16 {
        let (result, ..) = ask_revoke(&mut c, &unlocker(), (i % 256) as u8, &i.to_be_bytes(), T0);
        results.push(result);
    }
    let denied = results.iter().filter(|r| **r == RevokeResult::Denied).count();
    assert_eq!(denied, burst, "the ACL decides the bucket's worth");
    assert_eq!(results.len() - denied, 500 - burst);
    let records: Vec<AuditRecord> = records_in(&c.log)
        .into_iter()
        .filter(|r| r.action == AuditAction::TokenRevoke && r.actor == "unlocker")
        .collect();
    assert_eq!(records.len(), burst + 1, "one record for the bucket's refusals so far");
    // When the window ends the count of the rest is written.
    c.tick(T0 + 60);
    let counted: Vec<AuditRecord> = records_in(&c.log)
        .into_iter()
        .filter(|r| r.action == AuditAction::TokenRevoke && r.result == AuditResult::RateLimited)
        .collect();
    assert_eq!(counted.len(), 2, "{counted:?}");
    let repeated = counted[1].metadata.as_ref().and_then(|m| m.get("repeated")).cloned();
    assert_eq!(repeated, Some((500 - burst - 1).to_string()), "every refusal counted");
}
