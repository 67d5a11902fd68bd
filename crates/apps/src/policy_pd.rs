//! policy_pd: a stateless enforcer.
//!
//! It holds a rule table (here: network rules) and changes it only when
//! presented a token that verifies: signature under a key of cryptod's
//! root-signed keyset (kid), scope `net:modify`, audience this enforcer,
//! within exp/nbf (with a small skew), not revoked, and never seen before.
//! It keeps no secrets: a restart forgets nothing that matters.
//!
//! With the setting `selftest=1` it also proves, against the live cryptod,
//! that the refusals work: a replayed token, a token for another audience,
//! an expired token and a revoked token are each refused for that reason.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use ed25519_dalek::SigningKey;
use portcullis_platform::Platform;
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AttestationReq, Enforced, IssueResult, OutcomeClaims, OutcomeReport, OutcomeResult, RequestId,
    RevokeResult, TokenIssueReq, TokenRevokeReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Claims, Expectations, MemoryReplayCache, VerifyError};
use zeroize::Zeroizing;

use crate::common::{port, random, request_id, AppError, CALL_TIMEOUT};
use crate::net::{await_dom, connect_as, sleep};
use crate::say;
use crate::settings::{Settings, POLICY_PD_SPECS};
use crate::startup::Startup;
use crate::trust::Trust;
use crate::unlocker::{load_trust, refresh_keyset};

/// policy_pd's links: they decode its message types only ([`crate::inbox::PolicyPd`]).
type Link<B> = crate::link::Link<B, crate::inbox::PolicyPd>;

/// The enforcer's state: the trust anchors, the replay cache and the rules.
pub struct Enforcer {
    /// What this enforcer answers to as a token audience.
    pub audience: String,
    /// Allowed clock skew, seconds.
    pub skew: u64,
    /// Keys and revocations.
    pub trust: Trust,
    replay: MemoryReplayCache,
    /// The rule table.
    pub rules: Vec<String>,
}

impl Enforcer {
    /// An enforcer answering to `audience`, allowing `skew` seconds of
    /// clock skew, trusting `trust`, with an empty rule table.
    pub fn new(audience: &str, skew: u64, trust: Trust) -> Enforcer {
        Enforcer {
            audience: audience.into(),
            skew,
            trust,
            replay: MemoryReplayCache::new(1024),
            rules: Vec::new(),
        }
    }

    /// Applies `rule` if `tok` authorises `net:modify` here, now.
    pub fn apply(&mut self, tok: &[u8], rule: &str, now: u64) -> Result<Claims, VerifyError> {
        let expect = Expectations {
            audience: &self.audience,
            scope: ScopeSet::single(Scope::NetModify),
            now,
            skew: self.skew,
        };
        let claims = token::verify(
            tok,
            self.trust.keyset(),
            &expect,
            &mut self.replay,
            self.trust.revoked(),
        )?;
        self.rules.push(rule.into());
        Ok(claims.into_inner())
    }
}

/// A `token_issue_req` from `vm` for `scope` at `audience`, lasting `ttl` s.
pub fn issue_request(
    vm: &str,
    request_id: RequestId,
    nonce: [u8; 16],
    scope: Scope,
    audience: &str,
    ttl: u64,
    now: u64,
) -> Message {
    Message::TokenIssueReq(TokenIssueReq {
        request_id,
        vm_id: vm.into(),
        requested_scope: ScopeSet::single(scope),
        audience: audience.into(),
        justification: "apply network rule".into(),
        nonce: nonce.to_vec(),
        timestamp: now,
        ttl: Some(ttl),
        attestation: None,
        metadata: None,
    })
}

/// The token in cryptod's answer to request `request_id`; a refusal (with
/// its result and reason) or any other answer is an error, `unavailable`
/// (not seeded yet, or the audit outbox full) [`AppError::Busy`].
pub fn issued_token(request_id: RequestId, answer: Message) -> Result<Vec<u8>, AppError> {
    match answer {
        Message::TokenIssueResp(r) if r.request_id == request_id => match (r.result, r.token) {
            (IssueResult::Ok, Some(t)) => Ok(t),
            (IssueResult::Unavailable, _) => Err(AppError::Busy(alloc::format!(
                "token refused: unavailable ({})",
                r.reason.as_deref().unwrap_or("")
            ))),
            (res, _) => Err(AppError::Protocol(alloc::format!(
                "token refused: {} ({})",
                res.as_str(),
                r.reason.as_deref().unwrap_or("")
            ))),
        },
        other => Err(AppError::Protocol(alloc::format!("unexpected {}", other.kind().as_str()))),
    }
}

fn issue<P: Platform>(
    p: &mut P,
    link: &mut Link<P::Backend>,
    scope: Scope,
    audience: &str,
    ttl: u64,
) -> Result<Vec<u8>, AppError> {
    let rid = request_id(p)?;
    let nonce: [u8; 16] = random(p)?;
    let req = issue_request(p.name(), rid, nonce, scope, audience, ttl, p.now_unix());
    issued_token(rid, link.call(&req, CALL_TIMEOUT)?)
}

/// A signed outcome of decision `cti` by `enforcer`, with `key`.
pub fn signed_outcome(
    key: &SigningKey,
    enforcer: &str,
    cti: &[u8],
    outcome: Enforced,
    reason: Option<&str>,
    now: u64,
) -> Result<Vec<u8>, AppError> {
    let claims = OutcomeClaims {
        decision: cti.into(),
        enforcer: enforcer.into(),
        outcome,
        timestamp: now,
        reason: reason.map(Into::into),
    };
    let payload = claims.to_cbor().map_err(|e| AppError::Protocol(alloc::format!("{e}")))?;
    cose::sign(key, &kid_for(&key.verifying_key()), ContentType::Outcome, &payload)
        .map_err(|e| AppError::Protocol(alloc::format!("{e}")))
}

/// Reports to cryptod what this enforcer did with decision `cti`: signed
/// with a fresh key that a cryptod attestation binds to this domain (the
/// attestation goes with the report); Ok once cryptod answers `recorded`
/// (after the collector stored the record).
fn report_outcome<P: Platform>(
    p: &mut P,
    link: &mut Link<P::Backend>,
    enforcer: &str,
    cti: &[u8],
    outcome: Enforced,
) -> Result<(), AppError> {
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(random(p)?);
    let key = SigningKey::from_bytes(&seed);
    let rid = request_id(p)?;
    let nonce: [u8; 16] = random(p)?;
    let req = Message::AttestationReq(AttestationReq {
        request_id: rid,
        action: Scope::NetModify.as_str().into(),
        subject_pubkey: key.verifying_key().to_bytes(),
        nonce: nonce.to_vec(),
        timestamp: p.now_unix(),
    });
    let attestation = match link.call(&req, CALL_TIMEOUT)? {
        Message::Attestation(a) => a.signed,
        other => {
            return Err(AppError::Protocol(alloc::format!(
                "attestation: unexpected {}",
                other.kind().as_str()
            )))
        }
    };
    let signed = signed_outcome(&key, enforcer, cti, outcome, None, p.now_unix())?;
    let rid = request_id(p)?;
    let report = Message::OutcomeReport(OutcomeReport {
        request_id: rid,
        signed,
        attestation: Some(attestation),
    });
    match link.call(&report, CALL_TIMEOUT)? {
        Message::OutcomeResp(r) if r.request_id == rid && r.result == OutcomeResult::Recorded => {
            Ok(())
        }
        Message::OutcomeResp(r) => Err(AppError::Protocol(alloc::format!(
            "outcome {} ({})",
            r.result.as_str(),
            r.reason.as_deref().unwrap_or("")
        ))),
        other => Err(AppError::Protocol(alloc::format!("unexpected {}", other.kind().as_str()))),
    }
}

fn refresh_revocations<P: Platform>(
    p: &mut P,
    link: &mut Link<P::Backend>,
    trust: &mut Trust,
) -> Result<(), AppError> {
    trust.fetch_revocations(link, request_id(p)?, CALL_TIMEOUT)
}

/// The claims of a token the self-test was just issued, read without
/// verifying it (only its `exp` or id are used, to wait or to revoke).
fn own_claims(token: &[u8]) -> Result<Claims, AppError> {
    portcullis_proto::danger::inspect(token)
        .map(|t| t.into_unverified().claims)
        .map_err(|e| AppError::Protocol(alloc::format!("{e}")))
}

/// Most seconds the self-test waits beyond its computed wait for this
/// domain's clock to pass a short token's expiry.
const EXPIRY_GRACE_SECS: u32 = 30;

/// Runs policy_pd: one rule change (setting `rule`), plus the self-test.
/// Returns the number of self-test checks that did not hold (0 is success).
pub fn run<P: Platform>(p: &mut P) -> Result<u32, AppError> {
    let mut startup = Startup::new(p.boot_marks());
    let s = Settings::load(p, &POLICY_PD_SPECS)?;
    let rule = String::from(s.text("rule", "")?);
    let cryptod_dom = await_dom(p, "policy_pd", s.text("cryptod", "")?)?;
    let audience = String::from(s.text("audience", p.name())?);
    let trust = load_trust(p)?;
    let mut enf = Enforcer::new(&audience, s.num("skew")?, trust);
    let mut link = connect_as(p, cryptod_dom, port::CRYPTOD, Duration::from_secs(60))?;
    startup.mark("cryptod", p.monotonic_ns());
    // cryptod answers `unavailable` until entropyd has seeded it.
    let tok = loop {
        match issue(p, &mut link, Scope::NetModify, &enf.audience.clone(), 60) {
            Ok(t) => break t,
            Err(AppError::Busy(_)) => sleep(p, Duration::from_millis(500))?,
            Err(e) => return Err(e),
        }
    };
    startup.mark("token", p.monotonic_ns());
    refresh_keyset(p, &mut link, &mut enf.trust)?;
    refresh_revocations(p, &mut link, &mut enf.trust)?;
    startup.mark("trust", p.monotonic_ns());
    say!(p, "policy_pd: ready");
    say!(p, "{}", startup.report("policy_pd"));
    let claims = enf
        .apply(&tok, &rule, p.now_unix())
        .map_err(|e| AppError::Protocol(alloc::format!("fresh token refused: {e}")))?;
    say!(
        p,
        "policy_pd: applied rule \"{rule}\" (token from {} for {}, scope {})",
        claims.iss,
        claims.sub,
        claims.scope
    );
    let audience = enf.audience.clone();
    match report_outcome(p, &mut link, &audience, &claims.cti, Enforced::Applied) {
        Ok(()) => say!(p, "policy_pd: outcome applied recorded"),
        Err(e) => say!(p, "policy_pd: outcome not recorded: {e}"),
    }

    if !s.flag("selftest")? {
        return Ok(0);
    }
    let mut failed = 0u32;
    let mut expect =
        |p: &mut P, what: &str, got: Result<Claims, VerifyError>, want: VerifyError| match got {
            Err(e) if e == want => {
                say!(p, "policy_pd: selftest {what}: refused ({}) as expected", e.code())
            }
            other => {
                failed += 1;
                say!(p, "policy_pd: selftest {what}: FAILED, got {:?}", other.map(|c| c.cti));
            }
        };
    let now = p.now_unix();
    expect(p, "replay", enf.apply(&tok, &rule, now), VerifyError::Replayed);

    let other = issue(p, &mut link, Scope::NetModify, s.text("other_audience", "")?, 60)?;
    let now = p.now_unix();
    expect(p, "wrong audience", enf.apply(&other, &rule, now), VerifyError::WrongAudience);

    let short = issue(p, &mut link, Scope::NetModify, &enf.audience.clone(), 1)?;
    // Expired by this domain's clock: past the token's `exp` plus the skew,
    // not a fixed wait (cryptod's clock and this one can differ by a second
    // under Xen). Its own token, just issued: only `exp` is read.
    let exp = own_claims(&short)?.exp;
    let until = exp.saturating_add(enf.skew).saturating_add(1);
    let wait = until.saturating_sub(p.now_unix()).max(1);
    say!(p, "policy_pd: selftest: waiting {wait} s for a 1 s token to expire");
    sleep(p, Duration::from_secs(wait))?;
    // A clock that lagged meanwhile: up to EXPIRY_GRACE more, a second at a
    // time; past that the check below says what it got.
    let mut extra = 0;
    while p.now_unix() < until && extra < EXPIRY_GRACE_SECS {
        sleep(p, Duration::from_secs(1))?;
        extra += 1;
    }
    let now = p.now_unix();
    expect(p, "expired", enf.apply(&short, &rule, now), VerifyError::Expired);

    let doomed = issue(p, &mut link, Scope::NetModify, &enf.audience.clone(), 60)?;
    // Its own token, just issued: only its id is read, to revoke it.
    let c = own_claims(&doomed)?;
    let rid = request_id(p)?;
    let req = Message::TokenRevokeReq(TokenRevokeReq {
        request_id: rid,
        cti: c.cti.clone(),
        reason: "selftest".into(),
        timestamp: p.now_unix(),
    });
    match link.call(&req, CALL_TIMEOUT)? {
        Message::TokenRevokeResp(r) if r.result == RevokeResult::Ok => {}
        other => return Err(AppError::Protocol(alloc::format!("revoke failed: {other:?}"))),
    }
    refresh_revocations(p, &mut link, &mut enf.trust)?;
    let now = p.now_unix();
    expect(p, "revoked", enf.apply(&doomed, &rule, now), VerifyError::Revoked);

    say!(p, "policy_pd: selftest done, {failed} failed; {} rule(s) in table", enf.rules.len());
    Ok(failed)
}
