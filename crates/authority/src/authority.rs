//! The state machine: one [`Authority`] per cryptod, fed messages and time.
//!
//! See `docs/authority.md` for every rule; the short form:
//! - identity is the [`PeerId`] the platform resolved from the vchan domid;
//! - nothing audited happens before the DRBG is seeded (the audit chain id
//!   and the first signing key come from it): such requests get `unavailable`;
//! - every audited request first checks outbox room; a full outbox is
//!   `unavailable` (fail closed), never a dropped record;
//! - with [`Config::answer_after_audit`] (the default) an answer whose
//!   decision made audit records is held until the collector has
//!   acknowledged them, so no answer leaves before its record is stored;
//! - `entropy_pub` is accepted only from the configured entropy peer;
//! - repeated `rate_limited` refusals of one peer share one audit record per
//!   window ([`Config::audit_aggregate_window`]); the first is recorded at once;
//! - what [`Authority::export`] seals (TOTP steps and failure counters, keyset
//!   version, revocation list, acknowledged audit head) is flagged in
//!   [`Output::state_changed`] whenever it changes.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    self, is_valid_recovery_code, AdminCommand, AdminReq, AdminResp, AdminResult,
    AttestationClaims, AttestationReq, AuditAction, AuditResult, ErrorCode, ErrorMsg, IssueResult,
    OutcomeReport, OutcomeResp, OutcomeResult, RequestId, RevokeResult, TokenIssueReq,
    TokenIssueResp, TokenRevokeReq, TokenRevokeResp, TotpResult, TotpValidateReq, TotpValidateResp,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Claims};
use zeroize::Zeroizing;

use crate::acl::{Acl, AclError, DenyReason, PeerId};
use crate::admin::{
    Command, RecoveryCheck, RecoveryCodes, RecoveryTable, ADMIN_DOMID, ADMIN_SKEW, MAX_OPERATORS,
};
use crate::attest::{self, AttestError, Issued, ATTESTATION_TTL};
use crate::audit::{AuditLog, Batch, Event, Head, DEFAULT_OUTBOX};
use crate::backup;
use crate::drbg::{Drbg, DEFAULT_RESEED_INTERVAL};
use crate::keys::{KeyConfig, KeyError, KeyRing};
use crate::meta::{text_of, Hex, Num};
use crate::outcome::{self, Decisions, OutcomeKey, Vouch, MAX_OUTCOME_KEYS};
use crate::ratelimit::{
    Admission, Counted, FailureCount, FailureLimiter, IssueLimiter, IssueRateConfig,
    RateLimitConfig,
};
use crate::registry::{self, Identities, Volumes};
use crate::revocation::RevocationList;
use crate::sealed::{self, SealError, SealedHead, SealedState};
use crate::totp::{matching_step, CodeCheck, Totp, DEFAULT_WINDOW, MAX_WINDOW, STEP_SECONDS};
use crate::unlock::{self, Transcript};

/// Shortest and longest unlock-token lifetime that may be configured.
pub const UNLOCK_TTL_RANGE: core::ops::RangeInclusive<u64> = 30..=120;
/// Default unlock-token lifetime.
pub const DEFAULT_UNLOCK_TTL: u64 = 60;
/// Default policy-token lifetime when the request names none.
pub const DEFAULT_POLICY_TTL: u64 = 120;
/// Longest policy-token lifetime.
pub const MAX_POLICY_TTL: u64 = token::MAX_LIFETIME_SECS;
/// Default number of answers that may wait for the collector at once: as
/// many as the outbox has records (each held answer has a record of its
/// own there), so that many requests per wake-up can share one batch.
pub const DEFAULT_MAX_HELD: usize = DEFAULT_OUTBOX;
/// Default window over which repeated refusals share one audit record.
pub const DEFAULT_AGGREGATE_WINDOW: u64 = 10;
/// What the console is told for every wrong TOTP or recovery code: the
/// same line whatever was wrong (a clock-skew finding goes to the audit
/// log only, see `docs/authority.md`).
pub const CODE_NOT_ACCEPTED: &str = "code not accepted; if your phone's clock is off, check it";

/// cryptod's settings (not secret; from the platform's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// cryptod's name: the tokens' `iss`, and the audience of revocation requests.
    pub name: String,
    /// The only VM whose `entropy_pub` is accepted.
    pub entropy_vm: String,
    /// The audience of `luks:unlock` tokens (the unlock agent).
    pub unlock_audience: String,
    /// Unlock-token lifetime, in [`UNLOCK_TTL_RANGE`].
    pub unlock_ttl: u64,
    /// Policy-token lifetime when the request names none.
    pub policy_ttl: u64,
    /// Longest policy-token lifetime (at most [`MAX_POLICY_TTL`]).
    pub max_policy_ttl: u64,
    /// TOTP window in steps on either side (at most [`MAX_WINDOW`]).
    pub totp_window: u64,
    /// TOTP failure limits (per configured operator; per domain for unknown ids).
    pub rate_limit: RateLimitConfig,
    /// Token issue requests per peer (a token bucket).
    pub issue_rate: IssueRateConfig,
    /// Key rotation timing.
    pub keys: KeyConfig,
    /// Audit outbox capacity.
    pub audit_outbox: usize,
    /// Hold each answer whose decision made audit records until the
    /// collector has acknowledged those records (write-ahead audit).
    pub answer_after_audit: bool,
    /// Most answers held at once; further audited requests are answered
    /// `unavailable` without a decision.
    pub max_held: usize,
    /// DRBG generate calls allowed per reseed.
    pub reseed_interval: u64,
    /// Seconds over which repeated `rate_limited` refusals of one peer share
    /// one audit record (the first is recorded at once; 0: no aggregation).
    pub audit_aggregate_window: u64,
    /// Pinned outcome keys (at most [`MAX_OUTCOME_KEYS`]): which client may
    /// sign outcomes of which audience's tokens (see [`crate::outcome`]).
    pub outcome_keys: Vec<OutcomeKey>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "cryptod".into(),
            entropy_vm: "entropyd".into(),
            unlock_audience: "unlock_agent".into(),
            unlock_ttl: DEFAULT_UNLOCK_TTL,
            policy_ttl: DEFAULT_POLICY_TTL,
            max_policy_ttl: MAX_POLICY_TTL,
            totp_window: DEFAULT_WINDOW,
            rate_limit: RateLimitConfig::default(),
            issue_rate: IssueRateConfig::default(),
            keys: KeyConfig::default(),
            audit_outbox: DEFAULT_OUTBOX,
            answer_after_audit: true,
            max_held: DEFAULT_MAX_HELD,
            reseed_interval: DEFAULT_RESEED_INTERVAL,
            audit_aggregate_window: DEFAULT_AGGREGATE_WINDOW,
            outcome_keys: Vec::new(),
        }
    }
}

impl Config {
    /// Checks every range and the consistency between fields: what
    /// [`Authority::new`] refuses, so dom0 can check settings before it
    /// hands them to cryptod.
    pub fn check(&self) -> Result<(), InitError> {
        if !UNLOCK_TTL_RANGE.contains(&self.unlock_ttl) {
            return Err(InitError::Config("unlock_ttl must be 30 to 120 s"));
        }
        if self.max_policy_ttl > MAX_POLICY_TTL
            || self.policy_ttl == 0
            || self.policy_ttl > self.max_policy_ttl
        {
            return Err(InitError::Config("policy ttl must be 1 to max_policy_ttl <= 300 s"));
        }
        if self.totp_window > MAX_WINDOW {
            return Err(InitError::Config("totp_window too large"));
        }
        if self.rate_limit.max_backoff < self.rate_limit.base_backoff {
            return Err(InitError::Config("the longest lockout is shorter than the first"));
        }
        if self.outcome_keys.len() > MAX_OUTCOME_KEYS {
            return Err(InitError::Config("too many outcome keys"));
        }
        self.keys.check().map_err(InitError::Keys)
    }
}

/// Why an [`Authority`] could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The ACL in the sealed state does not pass the lint.
    Acl(AclError),
    /// Key rotation timing is inconsistent.
    Keys(KeyError),
    /// A lifetime or window outside its allowed range.
    Config(&'static str),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Acl(e) => write!(f, "acl: {e}"),
            InitError::Keys(e) => write!(f, "keys: {e}"),
            InitError::Config(what) => write!(f, "config: {what}"),
        }
    }
}

impl core::error::Error for InitError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            InitError::Acl(e) => Some(e),
            InitError::Keys(e) => Some(e),
            _ => None,
        }
    }
}

/// Why the state could not be exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportError {
    /// No nonce: the DRBG is not seeded or needs a reseed.
    Drbg(crate::drbg::DrbgError),
    /// Sealing failed.
    Seal(SealError),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Drbg(e) => write!(f, "export: {e}"),
            ExportError::Seal(e) => write!(f, "export: {e}"),
        }
    }
}

impl core::error::Error for ExportError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ExportError::Drbg(e) => Some(e),
            ExportError::Seal(e) => Some(e),
        }
    }
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Output {
    /// The answer to send back to the peer, if any.
    pub response: Option<Message>,
    /// Held answers the collector's ack released, each for the peer that
    /// asked (see [`Config::answer_after_audit`]).
    pub released: Vec<(PeerId, Message)>,
    /// The audit records this input made (encoded, not yet sealed): they
    /// wait in the outbox until [`Authority::seal_audit`] seals them into
    /// a batch for the collector and the collector acks it.
    pub audit: Vec<Vec<u8>>,
    /// The sealed state changed (an operator's last step or failure count,
    /// the keyset version, the revocation list, the acknowledged audit head):
    /// persist [`Authority::export`] before anything else depends on it.
    pub state_changed: bool,
}

/// A request cryptod serves to its clients: the only messages a client
/// link can hand to [`Authority::handle_request`]. Collector acks
/// ([`Authority::collector_ack`]) and entropy chunks ([`Authority::entropy`])
/// have their own entry points, reached only from their own links.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// `totp_validate_req`.
    TotpValidate(&'a TotpValidateReq),
    /// `token_issue_req`.
    TokenIssue(&'a TokenIssueReq),
    /// `token_revoke_req`.
    TokenRevoke(&'a TokenRevokeReq),
    /// `keyset_req`.
    Keyset(&'a msg::KeysetReq),
    /// `revocation_list_req`.
    RevocationList(&'a msg::RevocationListReq),
    /// `admin_req` (considered from dom0's link only).
    Admin(&'a AdminReq),
    /// `attestation_req`, with the SHA-256 of the peer's kernel as the
    /// platform measured it (`None` when the platform does not know it:
    /// the attestation then has no `measurement`).
    Attestation(&'a AttestationReq, Option<[u8; 32]>),
    /// `outcome_report`: an enforcer's signed outcome of a decision.
    Outcome(&'a OutcomeReport),
}

impl<'a> Request<'a> {
    /// The request `msg` carries, or `None` for any message that is not a
    /// request cryptod serves to clients (answers, acks, entropy, ...).
    pub fn from_message(msg: &'a Message) -> Option<Request<'a>> {
        Some(match msg {
            Message::TotpValidateReq(r) => Request::TotpValidate(r),
            Message::TokenIssueReq(r) => Request::TokenIssue(r),
            Message::TokenRevokeReq(r) => Request::TokenRevoke(r),
            Message::KeysetReq(r) => Request::Keyset(r),
            Message::RevocationListReq(r) => Request::RevocationList(r),
            Message::AdminReq(r) => Request::Admin(r),
            Message::AttestationReq(r) => Request::Attestation(r, None),
            Message::OutcomeReport(r) => Request::Outcome(r),
            _ => return None,
        })
    }
}

/// The answer to a message a client may not send cryptod (an ack, an
/// entropy chunk, an answer): `malformed`, with the message's request id.
pub fn not_served(msg: &Message) -> Message {
    error(
        ErrorCode::Malformed,
        &format!("{} is not a request cryptod serves to clients", msg.kind().as_str()),
        msg.request_id().copied(),
    )
}

/// cryptod's decision core.
pub struct Authority {
    config: Config,
    drbg: Drbg,
    acl: Acl,
    acl_text: String,
    totp: Totp,
    failures: FailureLimiter,
    issue_limit: IssueLimiter,
    keys: KeyRing,
    root_seed: Zeroizing<[u8; 32]>,
    master: Zeroizing<[u8; 32]>,
    revocations: RevocationList,
    /// The attestations issued, to check those requests carry.
    attested: Issued,
    /// The last tokens minted, for outcome reports (see [`crate::outcome`]).
    decisions: Decisions,
    /// Outcome reports per peer (a token bucket like token issue's).
    outcome_limit: IssueLimiter,
    /// Token revocations per peer (a token bucket like token issue's).
    revoke_limit: IssueLimiter,
    audit: Option<AuditLog>,
    /// The head the previous boot sealed: this boot's chain continues from it.
    sealed_head: Option<Head>,
    /// Repeated refusals not yet written (see [`Config::audit_aggregate_window`]).
    aggregate: Option<Aggregate>,
    /// Oldest first; a `Vec`, not a `VecDeque` (released from the front
    /// in one `drain`: image size, issue 14).
    held: Vec<Held>,
    /// The token of the request being handled, when its signing waits
    /// for its answer to be held ([`Authority::hold`]).
    deferred: Option<Deferred>,
    /// The admin public key (none: no admin command is accepted).
    admin_key: Option<VerifyingKey>,
    /// The last accepted `admin_seq`.
    admin_seq: u64,
    /// The operators' recovery codes.
    recovery: RecoveryTable,
    /// The sealed state's format-4 sections (see [`sealed::section`]), as
    /// the areas that own them last set them; written back at export.
    sections: Vec<sealed::Section>,
    /// The volume registry (section VOLUMES).
    volumes: Volumes,
    /// The ACL's version (section ACL).
    acl_version: u64,
    /// The identity revocation list (section IDENTITIES).
    identities: Identities,
    /// What the command being applied adds to its audit record, and the
    /// sealed passphrase `volume_add` answers with.
    admin_extra: AdminExtra,
}

/// Detail of one admin command beyond its verdict.
#[derive(Default)]
struct AdminExtra {
    /// A refusal reason with detail (replaces the static one).
    reason: Option<String>,
    /// Audit metadata.
    meta: Vec<(&'static str, String)>,
    /// `volume_add`'s sealed passphrase.
    sealed: Option<msg::SealedSecret>,
}

/// Refusals of one peer for one reason, counted instead of recorded one by
/// one; the first was recorded when the window opened.
struct Aggregate {
    domid: u32,
    actor: String,
    action: AuditAction,
    reason: &'static str,
    first_at: u64,
    last_at: u64,
    until: u64,
    count: u64,
}

/// An answer waiting for the collector to acknowledge audit record `need`.
struct Held {
    need: u64,
    peer: PeerId,
    response: Message,
    /// The answer's token, decided and recorded but not signed yet
    /// ([`Authority::sign_held`]); the answer carries no token until then.
    sign: Option<Deferred>,
}

/// A token to sign for a held `token_issue` answer: signed while the
/// collector writes the decision's record, not before the record is sealed,
/// so the answer waits for one signature (the seal's), not two. The key is
/// a copy of the signer decided with (zeroized when dropped), so a key
/// rotation in between changes nothing.
struct Deferred {
    key: SigningKey,
    token: portcullis_proto::cose::Unsigned,
}

impl Deferred {
    /// Signs the token into `response`.
    fn finish(self, response: &mut Message) {
        if let Message::TokenIssueResp(r) = response {
            r.token = Some(self.token.sign(&self.key));
        }
    }
}

impl Authority {
    /// Starts from the unsealed state at time `now`. The DRBG starts unseeded.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn new(config: Config, state: SealedState, now: u64) -> Result<Authority, InitError> {
        let _ = now;
        config.check()?;
        let acl = Acl::parse(&state.acl).map_err(InitError::Acl)?;
        let admin_key = match state.admin_key {
            Some(k) => Some(
                VerifyingKey::from_bytes(&k)
                    .map_err(|_| InitError::Config("sealed admin key is not a valid key"))?,
            ),
            None => None,
        };
        let mut recovery = RecoveryTable::default();
        for (id, hashes, used) in &state.recovery {
            let mut codes = RecoveryCodes::new(hashes.clone())
                .ok_or(InitError::Config("sealed recovery codes are not 8"))?;
            codes.used = *used;
            recovery.set(id, codes);
        }
        let mut keys = KeyRing::new(&state.root_key, config.keys).map_err(InitError::Keys)?;
        keys.resume_version(state.keyset_version);
        if let Some(body) = state.section(sealed::section::KEYS) {
            let section = crate::keys::decode_section(body)
                .map_err(|_| InitError::Config("sealed keys section is malformed"))?;
            keys.restore(section);
        }
        let mut failures =
            FailureLimiter::new(config.rate_limit, state.operators.iter().map(|o| o.id.clone()));
        for (id, count, locked_until) in &state.failures {
            failures.restore(id, FailureCount { failures: *count, locked_until: *locked_until });
        }
        // The serial moves on at every boot: the first list this boot
        // publishes is newer than any the last one did.
        let revocations = RevocationList::restore(
            state.revoked.iter().map(|(cti, exp)| (cti.as_slice(), *exp)),
            state.revocation_serial.saturating_add(1),
        );
        let sealed_head =
            state.audit_head.map(|h| Head { chain_id: h.chain_id, seq: h.seq, hash: h.hash });
        if !state.section(sealed::section::BACKUP).is_none_or(backup::Restored::valid) {
            return Err(InitError::Config("sealed backup section is malformed"));
        }
        let acl_volumes = acl.rules().iter().flat_map(|r| r.volumes.iter().map(String::as_str));
        let (volumes, acl_version, identities) = registry::decode_all(&state.sections, acl_volumes)
            .map_err(|e| InitError::Config(e.0))?;
        let mut sections = state.sections.clone();
        if registry::get_section(&sections, sealed::section::VOLUMES).is_none() {
            // The provisioned volumes, fixed now: a later ACL naming a new
            // volume does not bind it (volume_add does).
            registry::set_section(&mut sections, sealed::section::VOLUMES, volumes.encode());
        }
        Ok(Authority {
            drbg: Drbg::new(config.reseed_interval),
            acl,
            acl_text: state.acl.clone(),
            totp: Totp::new(
                state.operators.iter().cloned(),
                state.last_steps.iter().cloned(),
                config.totp_window,
            ),
            failures,
            issue_limit: IssueLimiter::new(config.issue_rate),
            keys,
            root_seed: Zeroizing::new(state.root_key),
            master: Zeroizing::new(state.master_secret),
            revocations,
            attested: Issued::default(),
            decisions: Decisions::default(),
            outcome_limit: IssueLimiter::new(config.issue_rate),
            revoke_limit: IssueLimiter::new(config.issue_rate),
            audit: None,
            sealed_head,
            aggregate: None,
            held: Vec::new(),
            deferred: None,
            admin_key,
            admin_seq: state.admin_seq,
            recovery,
            sections,
            volumes,
            acl_version,
            identities,
            admin_extra: AdminExtra::default(),
            config,
        })
    }

    /// The root public key (what verifiers and the audit tool pin).
    pub fn root_public(&self) -> VerifyingKey {
        self.keys.root_public()
    }

    /// The current token verification keys.
    pub fn verifier_keyset(&self) -> token::Keyset {
        self.keys.verifier_keyset()
    }

    /// The current revocation list.
    pub fn revocations(&self) -> &RevocationList {
        &self.revocations
    }

    /// Seals every audit record made since the last seal into batches,
    /// each with one signature by the root key (see [`crate::audit`]);
    /// returns how many batches it made. cryptod calls it once per wake-up,
    /// before shipping, so the requests of a wake-up share one signature
    /// and one collector commit. 0 if there was nothing to seal (or the
    /// seal could not be made: the records stay and are sealed next time).
    pub fn seal_audit(&mut self, now: u64) -> usize {
        let (key, kid) = self.keys.root();
        self.audit.as_mut().and_then(|a| a.seal(key, kid, now).ok()).unwrap_or(0)
    }

    /// Group commit: [`Authority::seal_audit`] only when
    /// [`crate::audit::AuditLog::seal_due`] says so (nothing sealed is
    /// waiting for the collector, or enough records or time have gathered);
    /// otherwise the records wait and the next wake-up asks again. cryptod
    /// calls it once per wake-up, so the requests that arrive while a batch
    /// is being written share the next seal and the next collector write.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn seal_audit_due(&mut self, now: u64) -> usize {
        if self.audit.as_ref().is_some_and(|a| a.seal_due(now)) {
            self.seal_audit(now)
        } else {
            0
        }
    }

    /// Sealed audit batches not yet acked, as `audit_log` messages, oldest
    /// first (to resend after a reconnect).
    pub fn pending_audit(&self) -> Vec<Message> {
        self.pending_audit_batches().map(|b| b.to_message().into()).collect()
    }

    /// Sealed audit batches not yet acked, oldest first; no copies (the
    /// platform loop ships them without re-reading them).
    pub fn pending_audit_batches(&self) -> impl Iterator<Item = &Batch> {
        self.audit.iter().flat_map(|a| a.pending())
    }

    /// How many audit records wait for the collector's ack (sealed or not).
    pub fn pending_audit_len(&self) -> usize {
        self.audit.as_ref().map_or(0, |a| a.pending_len())
    }

    /// How many audit records wait for [`Authority::seal_audit`].
    pub fn unsealed_audit_len(&self) -> usize {
        self.audit.as_ref().map_or(0, |a| a.unsealed_len())
    }

    /// How many answers wait for the collector's ack.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// How many held answers still wait for their token's signature
    /// ([`Authority::sign_held`]).
    pub fn unsigned_held(&self) -> usize {
        self.held.iter().rev().take_while(|h| h.sign.is_some()).count()
    }

    /// Drops the held answers for `peer` (its connection went away; the
    /// decisions stand and their records are still shipped); returns how many.
    pub fn drop_held(&mut self, peer: &PeerId) -> usize {
        let before = self.held.len();
        self.held.retain(|h| &h.peer != peer);
        before - self.held.len()
    }

    /// Whether the DRBG is seeded and the audit chain has started.
    pub fn is_ready(&self) -> bool {
        self.audit.is_some()
    }

    /// The sealed state as it is now, sealed under `kek` with a DRBG nonce.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn export(&mut self, kek: &[u8; 32]) -> Result<Vec<u8>, ExportError> {
        self.settle_restore();
        let nonce: Zeroizing<[u8; 12]> = self.drbg.bytes().map_err(ExportError::Drbg)?;
        let state = SealedState {
            root_key: *self.root_seed,
            master_secret: *self.master,
            operators: self.totp.operators().cloned().collect(),
            acl: self.acl_text.clone(),
            last_steps: self.totp.last_steps().map(|(k, v)| (k.clone(), *v)).collect(),
            failures: self
                .failures
                .operator_counts()
                .map(|(id, c)| (id.clone(), c.failures, c.locked_until))
                .collect(),
            keyset_version: self.keys.version(),
            revocation_serial: self.revocations.serial(),
            revoked: self.revocations.entries().map(|(cti, exp)| (cti.to_vec(), exp)).collect(),
            audit_head: self
                .audit
                .as_ref()
                .and_then(AuditLog::acked_head)
                .or(self.sealed_head)
                .map(|h| SealedHead { chain_id: h.chain_id, seq: h.seq, hash: h.hash }),
            admin_key: self.admin_key.map(|k| k.to_bytes()),
            admin_seq: self.admin_seq,
            recovery: self
                .recovery
                .iter()
                .map(|(id, c)| (id.clone(), c.hashes.clone(), c.used))
                .collect(),
            sections: self.sections.clone(),
        };
        sealed::seal(&state, kek, &nonce).map_err(ExportError::Seal)
    }

    /// Timers: rotates the signing key when due, drops keys past their
    /// overlap, prunes expired revocations.
    pub fn tick(&mut self, now: u64) -> Output {
        let before = self.sealed_marker();
        let mut out = Output::default();
        self.maintain(now, &mut out);
        out.state_changed |= self.sealed_marker() != before;
        out
    }

    /// What changes the sealed state outside the TOTP paths: the keyset
    /// version, the revocation serial and the acknowledged audit head. Out
    /// of line: read before and after each of four entry points (image
    /// size, issue 14).
    #[inline(never)]
    fn sealed_marker(&self) -> (u64, u64, Option<u64>) {
        let acked = self.audit.as_ref().and_then(AuditLog::acked_head).map(|h| h.seq);
        (self.keys.version(), self.revocations.serial(), acked)
    }

    /// Decides one client request from `peer` at time `now`; `hw_entropy`
    /// is an optional local hardware sample, mixed into the DRBG (never
    /// credited) when not empty. cryptod passes none: a request's
    /// randomness comes from the DRBG alone, which hardware entropy
    /// reseeds with every `entropy_pub`. Only the request kinds cryptod serves to clients can be
    /// passed here ([`Request`]): a client link cannot reach the collector's
    /// ack path or the entropy path by construction.
    pub fn handle_request(
        &mut self,
        peer: &PeerId,
        req: Request<'_>,
        now: u64,
        hw_entropy: &[u8],
    ) -> Output {
        self.handle_measured_request(peer, None, req, now, hw_entropy)
    }

    /// [`Authority::handle_request`] with dom0's measurement of the peer's
    /// launched image (`None`: dom0 published none, or the platform cannot
    /// know), checked against the `image=` of the ACL rule that decides:
    /// a rule that requires an image grants nothing to a peer measured
    /// otherwise or not at all (`denied`, audited with both digests).
    pub fn handle_measured_request(
        &mut self,
        peer: &PeerId,
        image: Option<&[u8; 32]>,
        req: Request<'_>,
        now: u64,
        hw_entropy: &[u8],
    ) -> Output {
        let before = self.sealed_marker();
        let mut out = Output::default();
        // A sample too long to mix is simply not mixed; nothing depends on it.
        if !hw_entropy.is_empty() {
            let _ = self.drbg.mix(hw_entropy);
        }
        self.maintain(now, &mut out);
        out.response = Some(match req {
            Request::TotpValidate(r) => self.totp_validate(peer, image, r, now, &mut out).into(),
            Request::TokenIssue(r) => self.token_issue(peer, image, r, now, &mut out).into(),
            Request::TokenRevoke(r) => self.token_revoke(peer, image, r, now, &mut out).into(),
            Request::Admin(r) => self.admin(peer, r, now, &mut out).into(),
            Request::Attestation(r, measurement) => {
                self.attestation(peer, r, measurement, now, &mut out)
            }
            Request::Outcome(r) => self.outcome(peer, r, now, &mut out).into(),
            // Before entropyd's first seed there is no signing key to
            // publish: `busy` (ask again), not a failure.
            Request::Keyset(r) if self.keys.published().next().is_none() => {
                error(ErrorCode::Busy, "no signing key yet (not seeded)", Some(r.request_id))
            }
            Request::Keyset(r) => match self.keys.signed_keyset(now) {
                Ok(signed) => msg::Keyset { signed }.into(),
                Err(_) => {
                    error(ErrorCode::Internal, "keyset could not be signed", Some(r.request_id))
                }
            },
            Request::RevocationList(r) => {
                self.revocations.prune(now);
                let (root, kid) = self.keys.root();
                let mut body = self.revocations.body(now);
                self.identities.publish(&mut body);
                match crate::revocation::sign_body(&body, root, kid) {
                    Ok(signed) => msg::RevocationList { signed }.into(),
                    Err(_) => error(
                        ErrorCode::Internal,
                        "revocation list could not be signed",
                        Some(r.request_id),
                    ),
                }
            }
        });
        self.hold(peer, &mut out);
        out.state_changed |= self.sealed_marker() != before;
        out
    }

    /// The collector acknowledged the audit chain up to `ack.seq`: those
    /// records leave the outbox, and the answers they held are released.
    /// Only the collector's link may call this (cryptod routes by link).
    pub fn collector_ack(&mut self, ack: &msg::AuditAck) -> Output {
        let before = self.sealed_marker();
        let mut out = Output::default();
        if let Some(log) = self.audit.as_mut() {
            log.ack(&ack.chain_id, ack.seq);
        }
        self.release(&mut out);
        out.state_changed |= self.sealed_marker() != before;
        out
    }

    /// An `entropy_pub` chunk arrived from `peer` on the entropy link;
    /// accepted only from the configured entropy VM (anything else is
    /// audited as denied). `hw_entropy` is mixed in with it.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn entropy(
        &mut self,
        peer: &PeerId,
        e: &msg::EntropyPub,
        now: u64,
        hw_entropy: &[u8],
    ) -> Output {
        let before = self.sealed_marker();
        let mut out = Output::default();
        self.accept_entropy(peer, e, now, hw_entropy, &mut out);
        out.state_changed |= self.sealed_marker() != before;
        out
    }

    /// Drops the held answers for `peer`, because its connection went away
    /// (the decisions stand and their records are still shipped). A drop of
    /// one or more answers is itself audited (`answer_drop`, with the count
    /// and `reason`), so the log says which decided answers never reached
    /// their client. Returns how many answers were dropped, and the output.
    pub fn drop_held_audited(&mut self, peer: &PeerId, reason: &str, now: u64) -> (usize, Output) {
        let mut out = Output::default();
        let n = self.drop_held(peer);
        if n > 0 {
            let ev = Event::new(&peer.vm, AuditAction::AnswerDrop, AuditResult::Error)
                .num("count", u64::try_from(n).unwrap_or(u64::MAX))
                .num("domid", u64::from(peer.domid))
                .meta("reason", reason);
            self.record(ev, now, &mut out);
        }
        (n, out)
    }

    /// Write-ahead audit: an answer to a decision that made audit records
    /// waits until the collector has acknowledged the last of them.
    /// A token whose signing was deferred ([`Authority::sign_held`]) is
    /// signed here when its answer is not held after all.
    fn hold(&mut self, peer: &PeerId, out: &mut Output) {
        let sign = self.deferred.take();
        let need = match self.audit.as_ref() {
            Some(a) if self.config.answer_after_audit && !out.audit.is_empty() => {
                a.next_seq().checked_sub(1)
            }
            _ => None,
        };
        match (need, out.response.take()) {
            (Some(need), Some(response)) => {
                self.held.push(Held { need, peer: peer.clone(), response, sign });
            }
            (_, mut response) => {
                if let (Some(d), Some(r)) = (sign, response.as_mut()) {
                    d.finish(r);
                }
                out.response = response;
            }
        }
    }

    /// Signs the tokens of held answers that wait for their signature
    /// (`token_issue` with [`Config::answer_after_audit`]); returns how many.
    /// The driver calls this once the batch with their records has gone to
    /// the collector, so the signing overlaps the collector's write; an
    /// answer released before that is signed on release.
    pub fn sign_held(&mut self) -> usize {
        // Unsigned ones are the newest: they are signed in one pass each.
        let mut n = 0;
        for h in self.held.iter_mut().rev() {
            let Some(d) = h.sign.take() else { break };
            d.finish(&mut h.response);
            n += 1;
        }
        n
    }

    /// Moves the held answers whose records are all acknowledged to `out`,
    /// in the order they were decided.
    fn release(&mut self, out: &mut Output) {
        let oldest_unacked = self.audit.as_ref().and_then(AuditLog::oldest_pending);
        let n = self
            .held
            .iter()
            .take_while(|h| oldest_unacked.is_none_or(|oldest| oldest > h.need))
            .count();
        for mut h in self.held.drain(..n) {
            if let Some(d) = h.sign.take() {
                d.finish(&mut h.response);
            }
            out.released.push((h.peer, h.response));
        }
    }

    fn accept_entropy(
        &mut self,
        peer: &PeerId,
        e: &msg::EntropyPub,
        now: u64,
        hw: &[u8],
        out: &mut Output,
    ) {
        if peer.vm != self.config.entropy_vm {
            let ev = Event::new(&peer.vm, AuditAction::EntropyReseed, AuditResult::Denied)
                .meta("reason", "entropy_pub from a peer that is not the entropy source");
            self.record(ev, now, out);
            return;
        }
        let was_seeded = self.drbg.is_seeded();
        if self.drbg.reseed(&e.entropy_chunk, hw).is_err() {
            return;
        }
        if !was_seeded && self.drbg.is_seeded() {
            self.start_chain(now, out);
        }
        self.maintain(now, out);
    }

    /// Starts the audit chain once the DRBG is seeded.
    fn start_chain(&mut self, now: u64, out: &mut Output) {
        let Ok(chain_id) = self.drbg.bytes::<16>() else { return };
        self.audit = Some(AuditLog::resume(*chain_id, self.config.audit_outbox, self.sealed_head));
        let mut ev = Event::new(&self.config.name, AuditAction::ChainStart, AuditResult::Ok)
            .meta_hex("root_kid", self.keys.root().1);
        if let Some(h) = self.sealed_head {
            ev = ev.meta("continues", &format!("{}:{}", hex(&h.chain_id), h.seq));
        }
        if let Some(id) = self.restore_pending().and_then(|b| b.get(backup::ID_AT)) {
            ev = ev.meta_hex("restored_from", id);
        }
        self.record(ev, now, out);
    }

    /// The BACKUP section's body while a restore is not yet in an
    /// acknowledged audit record (its layout was checked at load: see
    /// [`crate::backup::Restored`]).
    fn restore_pending(&mut self) -> Option<&mut Vec<u8>> {
        let s = self.sections.iter_mut().find(|s| s.tag == sealed::section::BACKUP)?;
        Some(&mut s.body).filter(|b| b.get(backup::PENDING_AT) == Some(&1))
    }

    /// Once the collector has acknowledged a record of this boot's chain
    /// (its `chain_start` says `restored_from`), the restore is no longer
    /// pending: the next boot does not say it again.
    fn settle_restore(&mut self) {
        let Some(log) = self.audit.as_ref() else { return };
        if log.acked_head().is_some_and(|h| h.chain_id == *log.chain_id()) {
            if let Some(p) = self.restore_pending().and_then(|b| b.get_mut(backup::PENDING_AT)) {
                *p = 0;
            }
        }
    }

    fn maintain(&mut self, now: u64, out: &mut Output) {
        if self.aggregate.as_ref().is_some_and(|a| now >= a.until) {
            self.flush_aggregate(now, out);
        }
        self.revocations.prune(now);
        if let Some(kid) = self.keys.expire(now) {
            let ev = Event::new(&self.config.name, AuditAction::KeyRotate, AuditResult::Ok)
                .target_hex(&kid)
                .meta("event", "retired");
            self.record(ev, now, out);
        }
        if self.audit.as_ref().is_some_and(|a| a.has_room(1)) && self.keys.rotation_due(now) {
            let Ok(seed) = self.drbg.bytes::<32>() else { return };
            let kid = self.keys.rotate(&seed, now);
            let ev = Event::new(&self.config.name, AuditAction::KeyRotate, AuditResult::Ok)
                .target_hex(&kid)
                .meta("event", "rotated");
            self.record(ev, now, out);
        }
    }

    /// Appends an audit record; false if it could not be (no chain or full).
    /// A different event closes the open aggregate of refusals first.
    fn record(&mut self, event: Event, now: u64, out: &mut Output) -> bool {
        self.flush_aggregate(now, out);
        self.append(event, now, out)
    }

    fn append(&mut self, event: Event, now: u64, out: &mut Output) -> bool {
        let Some(log) = self.audit.as_mut() else { return false };
        match log.append(event, now) {
            Ok(record) => {
                out.audit.push(record.to_vec());
                true
            }
            Err(_) => false,
        }
    }

    /// A refusal (`rate_limited`) of `peer` for `reason`: the first of a
    /// window is recorded at once; repeats within the window are counted and
    /// written as one record when the window closes or another event comes.
    fn refuse(
        &mut self,
        peer: &PeerId,
        event: Event,
        reason: &'static str,
        now: u64,
        out: &mut Output,
    ) {
        if let Some(a) = self.aggregate.as_mut() {
            if a.domid == peer.domid
                && a.actor == peer.vm
                && a.action == event.action
                && a.reason == reason
                && now < a.until
            {
                a.count = a.count.saturating_add(1);
                a.last_at = a.last_at.max(now);
                return;
            }
        }
        let action = event.action;
        if self.record(event.meta("reason", reason), now, out)
            && self.config.audit_aggregate_window > 0
            && self.aggregate.is_none()
        {
            self.aggregate = Some(Aggregate {
                domid: peer.domid,
                actor: peer.vm.clone(),
                action,
                reason,
                first_at: now,
                last_at: now,
                until: now.saturating_add(self.config.audit_aggregate_window),
                count: 0,
            });
        }
    }

    /// Writes the open aggregate's record if it counted any repeats, and
    /// closes it; if the outbox is full it stays open for a later try.
    fn flush_aggregate(&mut self, now: u64, out: &mut Output) {
        let Some(a) = self.aggregate.take() else { return };
        if a.count == 0 {
            return;
        }
        let ev = Event::new(&a.actor, a.action, AuditResult::RateLimited)
            .meta("reason", a.reason)
            .num("repeated", a.count)
            .num("domid", u64::from(a.domid))
            .num("first_at", a.first_at)
            .num("last_at", a.last_at);
        if !self.append(ev, now, out) {
            self.aggregate = Some(a);
        }
    }

    /// Whether `n` records can be written now (plus an open aggregate's),
    /// and (when answers wait for the collector) one more answer can be held.
    fn can_audit(&self, n: usize) -> bool {
        let room_to_hold =
            !self.config.answer_after_audit || self.held.len() < self.config.max_held;
        let n = n.saturating_add(usize::from(self.aggregate.is_some()));
        room_to_hold && self.audit.as_ref().is_some_and(|a| a.has_room(n))
    }

    /// The ACL's decision for `peer`, then the deciding rule's `image=`
    /// requirement against the peer's measurement.
    fn acl_decide(
        &self,
        peer: &PeerId,
        image: Option<&[u8; 32]>,
        scopes: ScopeSet,
        audience: &str,
    ) -> Result<usize, DenyReason> {
        if self.identities.is_revoked(&peer.vm) || self.identities.is_revoked(audience) {
            return Err(DenyReason::Revoked);
        }
        let line = self.acl.decide(peer, scopes, audience)?;
        self.acl.check_image(line, image)?;
        Ok(line)
    }

    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn totp_validate(
        &mut self,
        peer: &PeerId,
        image: Option<&[u8; 32]>,
        r: &TotpValidateReq,
        now: u64,
        out: &mut Output,
    ) -> TotpValidateResp {
        let resp = |result, reason: &str| TotpValidateResp {
            request_id: r.request_id,
            result,
            reason: Some(reason.into()),
            capability_token: None,
            unlock_secret: None,
            expires_at: None,
            retry_after: None,
        };
        let base = |result| {
            Event::new(&peer.vm, AuditAction::TotpValidate, result)
                .target(&r.operator_id)
                .meta("device", &r.device_id)
                .meta_hex("request_id", &r.request_id.0)
        };
        if !self.can_audit(2) {
            return resp(TotpResult::Unavailable, "audit not ready or the collector is behind");
        }
        if self.identities.is_device_revoked(&r.device_id) {
            // Before the code is looked at: no step is used, no failure
            // counted (the device id is the peer's claim; it retires an
            // honest console's device, see docs/authority.md).
            let reason = "device revoked";
            self.record(base(AuditResult::Denied).meta("reason", reason), now, out);
            return resp(TotpResult::Denied, reason);
        }
        let unlock = ScopeSet::single(Scope::LuksUnlock);
        if let Err(why) = self.acl_decide(peer, image, unlock, &self.config.unlock_audience) {
            let reason = text_of(&why);
            self.record(
                image_meta(
                    Event::new(&peer.vm, AuditAction::AclDeny, AuditResult::Denied)
                        .target("luks:unlock")
                        .meta("reason", &reason),
                    &why,
                ),
                now,
                out,
            );
            return resp(TotpResult::Denied, &reason);
        }
        let grant = match (&r.volume_id, &r.ephemeral_pubkey) {
            (Some(v), Some(k)) => Some((v.as_str(), k)),
            (None, None) => None,
            _ => {
                let reason = "volume_id and ephemeral_pubkey go together";
                self.record(base(AuditResult::Denied).meta("reason", reason), now, out);
                return resp(TotpResult::Denied, reason);
            }
        };
        if let Some((volume, epk)) = grant {
            let decided = self.acl.decide_unlock(peer, &self.config.unlock_audience, volume);
            let bound = self.volumes.generation(volume).is_some();
            let line =
                match decided.and_then(|l| if bound { Ok(l) } else { Err(DenyReason::Unbound) }) {
                    Ok(line) => line,
                    Err(why) => {
                        let reason = text_of(&why);
                        self.record(
                            Event::new(&peer.vm, AuditAction::AclDeny, AuditResult::Denied)
                                .target("luks:unlock")
                                .meta("volume", volume)
                                .meta("reason", &reason),
                            now,
                            out,
                        );
                        return resp(TotpResult::Denied, &reason);
                    }
                };
            let need = self.acl.requires_attestation(line);
            let action = Scope::LuksUnlock.as_str();
            if let Err(reason) = self.check_attestation(
                peer,
                r.attestation.as_deref(),
                need,
                action,
                Some(epk),
                now,
                out,
            ) {
                return resp(TotpResult::Denied, &reason);
            }
        } else if r.attestation.is_some() {
            // Carried without a grant: still checked, never ignored.
            let action = Scope::LuksUnlock.as_str();
            if let Err(reason) = self.check_attestation(
                peer,
                r.attestation.as_deref(),
                false,
                action,
                None,
                now,
                out,
            ) {
                return resp(TotpResult::Denied, &reason);
            }
        }
        if grant.is_some() && (self.drbg.remaining() < 2 || self.keys.signer(now).is_none()) {
            return resp(TotpResult::Unavailable, "no randomness or signing key");
        }
        let locked = match self.failures.admit(&r.operator_id, peer.domid, now) {
            Admission::Allowed => None,
            Admission::Locked(until) => Some(until),
            Admission::TableFull => Some(now.saturating_add(self.config.rate_limit.base_backoff)),
        };
        if let Some(until) = locked {
            let reason = "too many failures";
            self.refuse(peer, base(AuditResult::RateLimited), reason, now, out);
            let mut answer = resp(TotpResult::RateLimited, reason);
            answer.retry_after = Some(until.saturating_sub(now).max(1));
            return answer;
        }
        let recovery = is_valid_recovery_code(&r.totp_code);
        let check = if recovery {
            match self.recovery.get_mut(&r.operator_id).map(|c| c.check(&r.totp_code)) {
                Some(RecoveryCheck::Accepted(left)) => Ok(Some(left)),
                Some(RecoveryCheck::Used) => Err(CodeCheck::Replay),
                Some(RecoveryCheck::Fail) | None => Err(CodeCheck::Fail),
            }
        } else {
            match self.totp.check(&r.operator_id, &r.totp_code, now) {
                CodeCheck::Accepted(_) => Ok(None),
                other => Err(other),
            }
        };
        let remaining = match check {
            Ok(remaining) => {
                self.failures.succeed(&r.operator_id);
                out.state_changed = true;
                remaining
            }
            Err(failed) => {
                let (result, audit_result, reason) = match failed {
                    CodeCheck::Replay => {
                        (TotpResult::Replay, AuditResult::Replay, "code already used")
                    }
                    _ => (TotpResult::Fail, AuditResult::Fail, CODE_NOT_ACCEPTED),
                };
                if self.failures.fail(&r.operator_id, peer.domid, now).0 == Counted::Operator {
                    out.state_changed = true;
                }
                let mut ev = base(audit_result);
                if recovery {
                    ev = ev.meta("code", "recovery");
                } else if let Some(skew) = self.skew(&r.operator_id, &r.totp_code, now) {
                    ev = ev.meta("clock_skew_steps", &skew);
                }
                self.record(ev, now, out);
                return resp(result, reason);
            }
        };
        match remaining {
            Some(left) => {
                let ev = Event::new(&peer.vm, AuditAction::RecoveryCodeUsed, AuditResult::Ok)
                    .target(&r.operator_id)
                    .meta("device", &r.device_id)
                    .meta_hex("request_id", &r.request_id.0)
                    .num("remaining", u64::from(left));
                self.record(ev, now, out);
            }
            None => {
                self.record(base(AuditResult::Ok), now, out);
            }
        }
        let Some((volume, epk)) = grant else {
            return TotpValidateResp { reason: None, ..resp(TotpResult::Ok, "") };
        };
        match self.unlock_grant(peer, r, volume, epk, now) {
            Ok(answer) => {
                let cti = self.decisions.last_cti().map(hex).unwrap_or_default();
                let ev = Event::new(&peer.vm, AuditAction::UnlockSecret, AuditResult::Ok)
                    .target(volume)
                    .meta("operator", &r.operator_id)
                    .meta_hex("request_id", &r.request_id.0)
                    .meta("cti", &cti);
                self.record(ev, now, out);
                answer
            }
            Err(reason) => {
                let ev = Event::new(&peer.vm, AuditAction::UnlockSecret, AuditResult::Error)
                    .target(volume)
                    .meta("reason", reason);
                self.record(ev, now, out);
                resp(TotpResult::Unavailable, reason)
            }
        }
    }

    /// For the audit log only: how many steps outside the window a wrong
    /// code matched (`+3`, `-2`), looking up to [`MAX_WINDOW`] steps away.
    fn skew(&self, operator: &str, code: &str, now: u64) -> Option<String> {
        let op = self.totp.get(operator)?;
        if self.totp.window() >= MAX_WINDOW {
            return None;
        }
        let step = matching_step(op, code, now, MAX_WINDOW)?;
        let current = now / STEP_SECONDS;
        Some(if step >= current {
            format!("+{}", step - current)
        } else {
            format!("-{}", current - step)
        })
    }

    /// An admin command (see [`crate::admin`]): checked in the order peer,
    /// signature, payload, cryptod, sequence, time, shape; applied; the
    /// sequence number is consumed by every authentic, fresh command, even
    /// one a rule refuses, so a refused command cannot be replayed later.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn admin(&mut self, peer: &PeerId, r: &AdminReq, now: u64, out: &mut Output) -> AdminResp {
        let last = self.admin_seq;
        let resp = |result, reason: &str| AdminResp {
            request_id: r.request_id,
            result,
            reason: Some(reason.into()),
            admin_seq: Some(last),
            unlock_secret: None,
        };
        if !self.can_audit(1) {
            return resp(AdminResult::Unavailable, "audit not ready or the collector is behind");
        }
        let base = |result| {
            Event::new(&peer.vm, AuditAction::Admin, result)
                .num("domid", u64::from(peer.domid))
                .meta_hex("request_id", &r.request_id.0)
        };
        let refuse = |this: &mut Self, out: &mut Output, result, reason: &str| {
            this.record(base(AuditResult::Denied).meta("reason", reason), now, out);
            resp(result, reason)
        };
        if peer.domid != ADMIN_DOMID {
            // A domU can send these as fast as it likes: repeats are
            // aggregated like other refusals (one record per peer, reason
            // and window, with a count), so they cannot flood the audit.
            let reason = "admin commands are accepted only from dom0's link";
            self.refuse(peer, base(AuditResult::Denied), reason, now, out);
            return resp(AdminResult::Denied, reason);
        }
        let Some(key) = self.admin_key else {
            let reason = "no admin key is provisioned";
            return refuse(self, out, AdminResult::Denied, reason);
        };
        let kid = kid_for(&key);
        let payload = match cose::verify(&r.signed, ContentType::AdminCommand, |k| {
            (k == kid.as_slice()).then_some(key)
        }) {
            Ok(v) => v.into_inner().payload,
            Err(e) => {
                let reason = format!("admin signature: {e}");
                return refuse(self, out, AdminResult::Denied, &reason);
            }
        };
        let c = match AdminCommand::from_cbor(&payload) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("admin command: {e}");
                return refuse(self, out, AdminResult::Invalid, &reason);
            }
        };
        self.admin_extra = AdminExtra::default();
        let (result, reason) = self.admin_checked(&c, r, now);
        let extra = core::mem::take(&mut self.admin_extra);
        let reason = extra.reason.as_deref().unwrap_or(reason);
        let audit = match result {
            AdminResult::Ok => AuditResult::Ok,
            AdminResult::Replay => AuditResult::Replay,
            AdminResult::Fail => AuditResult::Fail,
            AdminResult::Unavailable => AuditResult::Error,
            _ => AuditResult::Denied,
        };
        // The record names what the command is about (never empty: an
        // empty target is not a valid record); the key commands name their
        // kid or cti in key_meta.
        let mut ev = base(audit)
            .target(admin_target(&c))
            .meta("command", c.command.as_str())
            .num("admin_seq", c.admin_seq);
        if !reason.is_empty() {
            ev = ev.meta("reason", reason);
        }
        for (k, v) in &extra.meta {
            ev = ev.meta(k, v);
        }
        ev = key_meta(ev, &c, self.keys.signer(now).map(|(_, kid)| &kid[..]), result);
        if c.command == msg::AdminOp::RootRotate && result == AdminResult::Ok {
            if let Some(statement) = self.keys.last_succession() {
                let n = self.keys.root_version();
                ev = succession_meta(ev, n, now, &self.keys.root_public(), statement);
            }
        }
        if let Some(codes) = c.operator_id.as_deref().and_then(|id| self.recovery.get(id)) {
            if result == AdminResult::Ok {
                ev = ev.num("recovery_remaining", u64::from(codes.remaining()));
            }
        }
        if self.admin_seq != last {
            out.state_changed = true;
        }
        self.record(ev, now, out);
        AdminResp {
            request_id: r.request_id,
            result,
            reason: (!reason.is_empty()).then(|| reason.into()),
            admin_seq: Some(self.admin_seq),
            unlock_secret: extra.sealed,
        }
    }

    /// The checks after the signature, and the change itself.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn admin_checked(
        &mut self,
        c: &AdminCommand,
        r: &AdminReq,
        now: u64,
    ) -> (AdminResult, &'static str) {
        if c.request_id != r.request_id {
            return (AdminResult::Invalid, "request_id differs from the signed one");
        }
        if !self.keys.is_root_kid(&c.state_id) {
            return (AdminResult::Replay, "command is for another cryptod (state_id)");
        }
        if c.admin_seq <= self.admin_seq {
            return (AdminResult::Replay, "admin_seq is not above the last accepted one");
        }
        if now.saturating_add(ADMIN_SKEW) < c.issued_at || now > c.expires_at {
            return (AdminResult::Expired, "outside the command's issued_at..expires_at");
        }
        let cmd = match Command::from_wire(c) {
            Ok(cmd) => cmd,
            Err(reason) => return (AdminResult::Invalid, reason),
        };
        // Authentic, for us, fresh and well-formed: its number is used now,
        // whatever a rule below decides.
        self.admin_seq = c.admin_seq;
        let applied = match cmd {
            Command::VolumeAdd { .. }
            | Command::VolumeRemove { .. }
            | Command::AclReplace { .. }
            | Command::Identity { .. } => self.apply_registry(cmd, r, now),
            cmd => self.apply(cmd, now),
        };
        match applied {
            Ok(()) => (AdminResult::Ok, ""),
            Err(refusal) => refusal,
        }
    }

    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn apply(&mut self, cmd: Command, now: u64) -> Result<(), (AdminResult, &'static str)> {
        let denied = |reason| Err((AdminResult::Denied, reason));
        match cmd {
            Command::OperatorAdd { op, confirm, codes } => {
                if self.totp.knows(&op.id) {
                    return denied("operator exists (operator-reset replaces a secret)");
                }
                if self.totp.len() >= MAX_OPERATORS {
                    return denied("too many operators");
                }
                // A fresh operator starts with only the codes sent, if any.
                self.recovery.remove(&op.id);
                self.enrol(op, &confirm, codes, now)
            }
            Command::OperatorReset { op, confirm, codes } => {
                if !self.totp.knows(&op.id) {
                    return denied("no such operator");
                }
                // Recovery codes stay unless new ones are sent: a lost phone
                // does not lose the printed codes.
                self.enrol(op, &confirm, codes, now)
            }
            Command::OperatorRemove { id } => {
                if !self.totp.knows(&id) {
                    return denied("no such operator");
                }
                if self.totp.len() <= 1 {
                    return denied("the last operator cannot be removed (add another first)");
                }
                self.totp.remove(&id);
                self.failures.remove_operator(&id);
                self.recovery.remove(&id);
                Ok(())
            }
            Command::RecoveryRegenerate { id, codes } => {
                if !self.totp.knows(&id) {
                    return denied("no such operator");
                }
                let codes =
                    RecoveryCodes::new(codes).ok_or((AdminResult::Invalid, "not 8 codes"))?;
                self.recovery.set(&id, codes);
                Ok(())
            }
            Command::KeyRotate
            | Command::KeyRevoke { .. }
            | Command::TokenRevoke { .. }
            | Command::RootRotate => self.apply_keys(cmd, now),
            Command::VolumeAdd { .. }
            | Command::VolumeRemove { .. }
            | Command::AclReplace { .. }
            | Command::Identity { .. } => Err((AdminResult::Invalid, "not an operator command")),
        }
    }

    /// The key commands: rotate now, revoke a kid (it leaves the keyset at
    /// once; the active key is rotated out first), revoke a token by cti.
    /// Revoked kids are sealed in the `KEYS` section.
    fn apply_keys(&mut self, cmd: Command, now: u64) -> Result<(), (AdminResult, &'static str)> {
        let no_seed = (AdminResult::Unavailable, "no randomness for a new signing key");
        match cmd {
            Command::KeyRotate => {
                let seed = self.drbg.bytes::<32>().map_err(|_| no_seed)?;
                self.keys.rotate(&seed, now);
            }
            Command::KeyRevoke { kid } => {
                let seed = self.drbg.bytes::<32>().map_err(|_| no_seed)?;
                self.keys
                    .revoke(&kid, &seed, now)
                    .map_err(|_| (AdminResult::Denied, "no published signing key has this kid"))?;
                self.keep_keys_section();
            }
            Command::RootRotate => {
                let seed = self.drbg.bytes::<32>().map_err(|_| no_seed)?;
                self.keys.rotate_root(&seed, now).map_err(|e| match e {
                    crate::keys::RootRotateError::ChainFull => {
                        (AdminResult::Denied, "root chain is full (re-provision)")
                    }
                    crate::keys::RootRotateError::Sign => {
                        (AdminResult::Unavailable, "succession could not be signed")
                    }
                })?;
                // The new root is what is sealed from now on.
                *self.root_seed = *seed;
                self.keep_keys_section();
            }
            Command::TokenRevoke { cti } => {
                let exp = now.saturating_add(token::MAX_LIFETIME_SECS);
                self.revocations
                    .revoke(&cti, exp, now)
                    .map_err(|_| (AdminResult::Unavailable, "revocation list is full"))?;
            }
            _ => return Err((AdminResult::Invalid, "not a key command")),
        }
        Ok(())
    }

    /// Puts the key ring's `KEYS` section into the sections to seal.
    fn keep_keys_section(&mut self) {
        sealed::set_section(&mut self.sections, sealed::section::KEYS, self.keys.section());
    }

    /// Seals `op`'s secret once `confirm` matches it (the confirming step
    /// becomes the last used one); a reset's old secret stops at once, and
    /// its failure count starts over.
    fn enrol(
        &mut self,
        op: crate::totp::OperatorSecret,
        confirm: &str,
        codes: Option<Vec<crate::admin::RecoveryHash>>,
        now: u64,
    ) -> Result<(), (AdminResult, &'static str)> {
        let Some(step) = matching_step(&op, confirm, now, self.totp.window()) else {
            return Err((
                AdminResult::Fail,
                "confirm_code does not match the new secret (nothing changed)",
            ));
        };
        let id = op.id.clone();
        self.totp.set(op, step);
        self.failures.add_operator(&id);
        if let Some(c) = codes.and_then(RecoveryCodes::new) {
            self.recovery.set(&id, c);
        }
        Ok(())
    }

    fn unlock_grant(
        &mut self,
        peer: &PeerId,
        r: &TotpValidateReq,
        volume: &str,
        epk: &[u8; 32],
        now: u64,
    ) -> Result<TotpValidateResp, &'static str> {
        let (aud, ttl) = (self.config.unlock_audience.clone(), self.config.unlock_ttl);
        let claims = self.claims(
            peer,
            &aud,
            ScopeSet::single(Scope::LuksUnlock),
            &r.client_nonce,
            now,
            ttl,
        )?;
        let token = self.mint(&claims, now)?;
        let esk: Zeroizing<[u8; 32]> = self.drbg.bytes().map_err(|_| "no randomness")?;
        let generation = self.volumes.generation(volume).ok_or("volume removed")?;
        let passphrase = unlock::luks_passphrase_gen(&self.master, volume, generation)
            .map_err(|_| "bad volume id")?;
        let transcript = Transcript {
            request_id: &r.request_id,
            operator: &r.operator_id,
            volume_id: volume,
            token: &token,
        };
        let sealed = unlock::seal_unlock_secret(&esk, epk, &transcript, &passphrase[..]).map_err(
            |e| match e {
                unlock::UnlockError::NonContributory => "ephemeral_pubkey is a low-order point",
                _ => "unlock secret could not be sealed",
            },
        )?;
        Ok(TotpValidateResp {
            request_id: r.request_id,
            result: TotpResult::Ok,
            reason: None,
            capability_token: Some(token),
            unlock_secret: Some(sealed),
            expires_at: Some(claims.exp),
            retry_after: None,
        })
    }

    fn claims(
        &mut self,
        peer: &PeerId,
        aud: &str,
        scope: ScopeSet,
        nonce: &[u8],
        now: u64,
        ttl: u64,
    ) -> Result<Claims, &'static str> {
        let cti: Zeroizing<[u8; token::CTI_LEN]> =
            self.drbg.bytes().map_err(|_| "no randomness")?;
        Ok(Claims {
            iss: self.config.name.clone(),
            sub: peer.vm.clone(),
            aud: aud.into(),
            exp: now.saturating_add(ttl),
            nbf: now,
            iat: now,
            cti: cti.to_vec(),
            scope,
            nonce: nonce.to_vec(),
        })
    }

    /// The token of a `token_issue` answer: signed now, or (when the answer
    /// will wait for the collector's ack) encoded now and signed once its
    /// record is on its way ([`Authority::sign_held`]): `None` then.
    fn mint_answer(&mut self, claims: &Claims, now: u64) -> Result<Option<Vec<u8>>, &'static str> {
        if !self.config.answer_after_audit {
            return self.mint(claims, now).map(Some);
        }
        let (key, kid) = self.keys.signer(now).ok_or("no signing key")?;
        let key = key.clone();
        let token = token::mint_unsigned(kid, claims).map_err(|_| "token could not be minted")?;
        self.decisions.push(&claims.cti, &claims.sub, &claims.aud);
        self.deferred = Some(Deferred { key, token });
        Ok(None)
    }

    fn mint(&mut self, claims: &Claims, now: u64) -> Result<Vec<u8>, &'static str> {
        let (key, kid) = self.keys.signer(now).ok_or("no signing key")?;
        let token = token::mint(key, kid, claims).map_err(|_| "token could not be minted")?;
        self.decisions.push(&claims.cti, &claims.sub, &claims.aud);
        Ok(token)
    }

    /// `outcome_report`: checks the enforcer's signed outcome
    /// ([`outcome::check`]) and appends it as an `outcome` record carrying
    /// the signed bytes; rate limited per peer; a refusal is audited.
    fn outcome(
        &mut self,
        peer: &PeerId,
        r: &OutcomeReport,
        now: u64,
        out: &mut Output,
    ) -> OutcomeResp {
        let resp = |result, reason: Option<String>| OutcomeResp {
            request_id: r.request_id,
            result,
            reason,
        };
        if !self.can_audit(1) {
            let reason = "audit not ready or the collector is behind";
            return resp(OutcomeResult::Unavailable, Some(reason.into()));
        }
        let event = |result| {
            Event::new(&peer.vm, AuditAction::Outcome, result)
                .meta_hex("request_id", &r.request_id.0)
                .num("domid", u64::from(peer.domid))
        };
        if self.outcome_limit.take(peer.domid, &peer.vm, now).is_err() {
            self.refuse(
                peer,
                event(AuditResult::RateLimited),
                "too many outcome reports",
                now,
                out,
            );
            return resp(OutcomeResult::Refused, Some("too many outcome reports".into()));
        }
        let attested = match r.attestation.as_deref() {
            None => Ok(None),
            Some(a) => self.attested.key_of(a, peer, now).map(Some),
        };
        let checked = attested.map_err(|e| text_of(&e)).and_then(|key| {
            outcome::check(&r.signed, peer, &self.config.outcome_keys, key, &self.decisions)
                .map_err(|e| text_of(&e))
        });
        match checked {
            Ok(a) => {
                let c = &a.claims;
                let mut ev = event(outcome::result_of(c.outcome))
                    .target_hex(&c.decision)
                    .meta("outcome", c.outcome.as_str())
                    .meta("signer", &c.enforcer)
                    .meta("key", if a.vouch == Vouch::Pinned { "pinned" } else { "attested" })
                    .meta("decision", if a.known { "known" } else { "unknown" })
                    .meta_hex("signer_key", &a.key);
                if let Some(why) = &c.reason {
                    ev = ev.meta("reason", why);
                }
                ev.evidence = Some(r.signed.clone());
                self.record(ev, now, out);
                resp(OutcomeResult::Recorded, None)
            }
            Err(reason) => {
                self.record(event(AuditResult::Denied).meta("reason", &reason), now, out);
                resp(OutcomeResult::Refused, Some(reason))
            }
        }
    }

    fn token_issue(
        &mut self,
        peer: &PeerId,
        image: Option<&[u8; 32]>,
        r: &TokenIssueReq,
        now: u64,
        out: &mut Output,
    ) -> TokenIssueResp {
        let resp = |result, reason: &str| TokenIssueResp {
            request_id: r.request_id,
            result,
            reason: Some(reason.into()),
            token: None,
            expires_at: None,
        };
        if !self.can_audit(1) {
            return resp(IssueResult::Unavailable, "audit not ready or the collector is behind");
        }
        let event = |result| {
            Event::new(&peer.vm, AuditAction::TokenIssue, result)
                .target(&r.audience)
                .meta("scope", &text_of(&r.requested_scope))
                .meta_hex("request_id", &r.request_id.0)
        };
        if let Err(wait) = self.issue_limit.take(peer.domid, &peer.vm, now) {
            self.refuse(peer, event(AuditResult::RateLimited), "too many token requests", now, out);
            let reason = format!("too many token requests; retry after {wait} s");
            return resp(IssueResult::RateLimited, &reason);
        }
        let decision = if r.requested_scope.contains(Scope::LuksUnlock) {
            Err(("luks:unlock is granted only with a TOTP validation".to_string(), None))
        } else {
            self.acl_decide(peer, image, r.requested_scope, &r.audience)
                .map_err(|why| (text_of(&why), Some(why)))
        };
        let line = match decision {
            Ok(line) => line,
            Err((reason, why)) => {
                let mut ev = event(AuditResult::Denied).meta("reason", &reason);
                if let Some(why) = why {
                    ev = image_meta(ev, &why);
                }
                self.record(ev, now, out);
                return resp(IssueResult::Denied, &reason);
            }
        };
        let need = self.acl.requires_attestation(line);
        let action = text_of(&r.requested_scope);
        if let Err(reason) =
            self.check_attestation(peer, r.attestation.as_deref(), need, &action, None, now, out)
        {
            return resp(IssueResult::Denied, &reason);
        }
        // 1 to max_policy_ttl (at least 1, `check`): `min` and `max` rather
        // than `clamp`, which has a panic path for bounds the compiler
        // cannot see are ordered.
        let ttl = r.ttl.unwrap_or(self.config.policy_ttl).min(self.config.max_policy_ttl).max(1);
        let issued = self
            .claims(peer, &r.audience, r.requested_scope, &r.nonce, now, ttl)
            .and_then(|c| Ok((self.mint_answer(&c, now)?, c)));
        match issued {
            Ok((token, claims)) => {
                self.record(event(AuditResult::Ok).meta_hex("cti", &claims.cti), now, out);
                TokenIssueResp {
                    request_id: r.request_id,
                    result: IssueResult::Ok,
                    reason: None,
                    token,
                    expires_at: Some(claims.exp),
                }
            }
            Err(reason) => {
                self.record(event(AuditResult::Error).meta("reason", reason), now, out);
                resp(IssueResult::Unavailable, reason)
            }
        }
    }

    /// Checks the attestation a request carries (required or not); a
    /// refusal is audited (`acl_deny`, with the reason) and returned as the
    /// reason for the `denied` answer.
    #[allow(clippy::too_many_arguments)]
    fn check_attestation(
        &mut self,
        peer: &PeerId,
        attestation: Option<&[u8]>,
        required: bool,
        action: &str,
        pubkey: Option<&[u8; 32]>,
        now: u64,
        out: &mut Output,
    ) -> Result<(), String> {
        let result = match attestation {
            None if required => Err(AttestError::Missing),
            None => return Ok(()),
            Some(bytes) => {
                let expect = attest::Expect { peer, action, pubkey, now };
                self.attested.take(bytes, &expect)
            }
        };
        result.map_err(|e| {
            let reason = text_of(&e);
            let ev = Event::new(&peer.vm, AuditAction::AclDeny, AuditResult::Denied)
                .target(action)
                .meta("reason", &reason)
                .num("domid", u64::from(peer.domid));
            self.record(ev, now, out);
            reason
        })
    }

    /// `attestation_req`: signs an attestation of `peer` for the request's
    /// action, if the ACL grants the peer that action; rate limited with
    /// token issue (one bucket per peer) and audited (`attest`).
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn attestation(
        &mut self,
        peer: &PeerId,
        r: &AttestationReq,
        measurement: Option<[u8; 32]>,
        now: u64,
        out: &mut Output,
    ) -> Message {
        let id = Some(r.request_id);
        if !self.can_audit(1) {
            return error(ErrorCode::Busy, "audit not ready or the collector is behind", id);
        }
        let scopes = match ScopeSet::parse_list(&r.action) {
            Ok(s) if text_of(&s) == r.action => s,
            _ => {
                let reason = "action is not a canonical scope list";
                return error(ErrorCode::Malformed, reason, id);
            }
        };
        let event = |result| {
            Event::new(&peer.vm, AuditAction::Attest, result)
                .target(&r.action)
                .num("domid", u64::from(peer.domid))
                .meta_hex("request_id", &r.request_id.0)
        };
        if let Err(wait) = self.issue_limit.take(peer.domid, &peer.vm, now) {
            self.refuse(peer, event(AuditResult::RateLimited), "too many token requests", now, out);
            let reason = format!("too many requests; retry after {wait} s");
            return error(ErrorCode::Busy, &reason, id);
        }
        if let Err(why) = self.acl.decide_scopes(peer, scopes) {
            let reason = text_of(&why);
            self.record(event(AuditResult::Denied).meta("reason", &reason), now, out);
            return error(ErrorCode::Denied, &reason, id);
        }
        let claims = AttestationClaims {
            subject_domid: u64::from(peer.domid),
            subject_vm: peer.vm.clone(),
            subject_pubkey: r.subject_pubkey,
            action: r.action.clone(),
            nonce: r.nonce.clone(),
            issued_at: now,
            expires_at: now.saturating_add(ATTESTATION_TTL),
            measurement,
        };
        let signed = self
            .keys
            .signer(now)
            .ok_or(text_of(&AttestError::NoSigningKey))
            .and_then(|(key, kid)| attest::sign(key, kid, &claims).map_err(|e| text_of(&e)));
        let signed = signed.and_then(|signed| {
            self.attested.record(peer, &signed, &claims, now).map_err(|e| text_of(&e))?;
            Ok(signed)
        });
        match signed {
            Ok(signed) => {
                let ev = event(AuditResult::Ok)
                    .num("expires_at", claims.expires_at)
                    .meta("measured", if measurement.is_some() { "yes" } else { "no" });
                self.record(ev, now, out);
                msg::Attestation { signed }.into()
            }
            Err(reason) => {
                self.record(event(AuditResult::Error).meta("reason", &reason), now, out);
                error(ErrorCode::Internal, &reason, id)
            }
        }
    }

    fn token_revoke(
        &mut self,
        peer: &PeerId,
        image: Option<&[u8; 32]>,
        r: &TokenRevokeReq,
        now: u64,
        out: &mut Output,
    ) -> TokenRevokeResp {
        let resp = |result, reason: Option<&str>| TokenRevokeResp {
            request_id: r.request_id,
            result,
            reason: reason.map(Into::into),
        };
        if !self.can_audit(1) {
            return resp(
                RevokeResult::Unavailable,
                Some("audit not ready or the collector is behind"),
            );
        }
        let event = |result| {
            Event::new(&peer.vm, AuditAction::TokenRevoke, result)
                .target_hex(&r.cti)
                .meta_hex("request_id", &r.request_id.0)
        };
        // A bucket of their own (a token flood does not hold up a
        // revocation): a flood of revocations, refused by the ACL or by the
        // list's bounds below, makes aggregated records, not one each.
        if let Err(wait) = self.revoke_limit.take(peer.domid, &peer.vm, now) {
            self.refuse(peer, event(AuditResult::RateLimited), "too many revocations", now, out);
            let reason = format!("too many revocations; retry after {wait} s");
            return resp(RevokeResult::Unavailable, Some(&reason));
        }
        if let Err(why) =
            self.acl_decide(peer, image, ScopeSet::single(Scope::TokenRevoke), &self.config.name)
        {
            let reason = text_of(&why);
            self.record(
                image_meta(event(AuditResult::Denied).meta("reason", &reason), &why),
                now,
                out,
            );
            return resp(RevokeResult::Denied, Some(&reason));
        }
        // cryptod does not remember what it issued; every token dies within
        // MAX_LIFETIME_SECS of now, so the entry is kept that long.
        let exp = now.saturating_add(token::MAX_LIFETIME_SECS);
        match self.revocations.revoke_for(peer.domid, &r.cti, exp, now) {
            Ok(_) => {
                self.record(event(AuditResult::Ok), now, out);
                resp(RevokeResult::Ok, None)
            }
            Err(e) => {
                let reason = text_of(&e);
                self.record(event(AuditResult::Error).meta("reason", &reason), now, out);
                resp(RevokeResult::Unavailable, Some(&reason))
            }
        }
    }
}

/// The volume, ACL and identity commands (issue 12; `crate::registry`).
impl Authority {
    /// Applies one of them; every change updates its sealed section, so
    /// the answer waits for the state to be persisted like any admin change.
    fn apply_registry(
        &mut self,
        cmd: Command,
        r: &AdminReq,
        now: u64,
    ) -> Result<(), (AdminResult, &'static str)> {
        let denied = |reason| (AdminResult::Denied, reason);
        match cmd {
            Command::VolumeAdd { id, epk } => {
                let generation = self.volumes.next_generation(&id).map_err(denied)?;
                let esk: Zeroizing<[u8; 32]> =
                    self.drbg.bytes().map_err(|_| (AdminResult::Unavailable, "no randomness"))?;
                let passphrase = unlock::luks_passphrase_gen(&self.master, &id, generation)
                    .map_err(|_| (AdminResult::Invalid, "bad volume id"))?;
                let transcript = Transcript {
                    request_id: &r.request_id,
                    operator: ADMIN_TRANSCRIPT_ID,
                    volume_id: &id,
                    token: &r.signed,
                };
                let sealed = unlock::seal_unlock_secret(&esk, &epk, &transcript, &passphrase[..])
                    .map_err(|_| {
                    (AdminResult::Invalid, "ephemeral_pubkey is a low-order point")
                })?;
                self.volumes.add(&id, now).map_err(denied)?;
                self.admin_extra.sealed = Some(sealed);
                self.volume_changed(id, generation);
            }
            Command::VolumeRemove { id } => {
                let generation = self.volumes.remove(&id).map_err(denied)?;
                self.volume_changed(id, generation);
            }
            Command::AclReplace { text, version } => {
                if version <= self.acl_version {
                    return Err(denied("acl_version is not above the current version"));
                }
                let acl = match Acl::parse(&text) {
                    Ok(acl) => acl,
                    Err(e) => {
                        // The line only (the tool lints first and shows the
                        // whole message): no Display of every lint error here.
                        let mut why = String::from("acl lint failed at line ");
                        why.push_str(&text_of(&e.line));
                        self.admin_extra.reason = Some(why);
                        return Err((AdminResult::Invalid, "acl lint failed"));
                    }
                };
                let meta = &mut self.admin_extra.meta;
                meta.push(("acl_old_version", text_of(&self.acl_version)));
                meta.push(("acl_new_version", text_of(&version)));
                meta.push(("acl_old_sha256", hex(&sha256(self.acl_text.as_bytes()))));
                meta.push(("acl_new_sha256", hex(&sha256(text.as_bytes()))));
                self.acl = acl;
                self.acl_text = text;
                self.acl_version = version;
                registry::set_section(
                    &mut self.sections,
                    sealed::section::ACL,
                    version.to_be_bytes().to_vec(),
                );
            }
            Command::Identity { kind, name, restore } => {
                let serial = if restore {
                    self.identities.restore_kind(kind, &name)
                } else {
                    self.identities.revoke_kind(kind, &name)
                }
                .map_err(denied)?;
                self.admin_extra.meta.push((kind.as_str(), name));
                self.admin_extra.meta.push(("identity_serial", text_of(&serial)));
                registry::set_section(
                    &mut self.sections,
                    sealed::section::IDENTITIES,
                    self.identities.encode(),
                );
            }
            _ => return Err((AdminResult::Invalid, "not a volume, acl or identity command")),
        }
        Ok(())
    }

    /// After a volume command: its record names the volume and generation,
    /// and the registry's section is sealed anew.
    fn volume_changed(&mut self, id: String, generation: u32) {
        self.admin_extra.meta.push(("volume", id));
        self.admin_extra.meta.push(("generation", text_of(&generation)));
        registry::set_section(&mut self.sections, sealed::section::VOLUMES, self.volumes.encode());
    }

    /// The volume registry.
    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    /// The ACL's version (0: never replaced).
    pub fn acl_version(&self) -> u64 {
        self.acl_version
    }

    /// The identity revocation list.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }
}

/// What an admin command is about, for its audit record's target (never
/// empty: the record's target is an id).
fn admin_target(c: &AdminCommand) -> &str {
    let about = c.operator_id.as_deref().or(c.volume_id.as_deref()).or(c.identity.as_deref());
    about.unwrap_or(if c.acl.is_some() { "acl" } else { c.command.as_str() })
}

/// The `operator` of a `volume_add` seal's transcript (the admin tool
/// opens it with the same): the command's request id, this text, the
/// volume id, and SHA-256 of the command's COSE_Sign1 bytes.
pub const ADMIN_TRANSCRIPT_ID: &str = "admin";

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn error(code: ErrorCode, reason: &str, request_id: Option<RequestId>) -> Message {
    ErrorMsg { code, reason: reason.into(), request_id }.into()
}

/// An image refusal's record carries both digests: `image_expected` (the
/// rule's) and `image_actual` (dom0's measurement, or `none`).
fn image_meta(ev: Event, why: &DenyReason) -> Event {
    match why {
        DenyReason::Image { expected, actual, .. } => ev
            .meta_hex("image_expected", expected)
            .meta("image_actual", &actual.as_ref().map_or_else(|| "none".into(), |a| hex(a))),
        _ => ev,
    }
}

/// A key command's record names the kid or cti it is about and, once
/// applied, the kid that signs now.
fn key_meta(mut ev: Event, c: &AdminCommand, signing: Option<&[u8]>, r: AdminResult) -> Event {
    if let Some(kid) = &c.kid {
        ev = ev.target_hex(kid).meta_hex("kid", kid);
    }
    if let Some(cti) = &c.cti {
        ev = ev.target_hex(cti).meta_hex("cti", cti);
    }
    let key_op = matches!(c.command, msg::AdminOp::KeyRotate | msg::AdminOp::KeyRevoke);
    match signing {
        Some(kid) if key_op && r == AdminResult::Ok => ev.meta_hex("signing_kid", kid),
        _ => ev,
    }
}

/// A root rotation's record carries the succession statement as its
/// fields and signature (`portcullis_proto::cose::rebuild` makes the
/// statement again), so the audit log alone leads a verifier from the old
/// root to the new one. The rotation happened at `now`, to version `n`.
fn succession_meta(ev: Event, n: usize, now: u64, root: &VerifyingKey, statement: &[u8]) -> Event {
    let sig = statement.get(statement.len().saturating_sub(64)..).unwrap_or(&[]);
    ev.num("root_version", u64::try_from(n).unwrap_or(u64::MAX))
        .num("root_issued_at", now)
        .meta_hex("root_pubkey", root.as_bytes())
        .meta_hex("root_sig", sig)
}

/// Lowercase hex, two digits a byte: one allocation, no formatting
/// machinery (it runs for several fields of every audit record).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |n: u8| char::from(DIGITS.get(usize::from(n & 0x0f)).copied().unwrap_or(b'0'));
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(*b));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::hex;
    use alloc::format;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), want);
        assert_eq!(hex(&[]), "");
        let id = portcullis_proto::msg::RequestId([0xa5; 16]);
        assert_eq!(hex(&id.0), id.to_string());
    }
}
