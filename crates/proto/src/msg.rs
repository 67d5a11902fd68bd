//! Typed message bodies, the payloads of signed objects, and the limits that
//! `protocol/messages.cddl` states with `.size`.
//!
//! Every struct here encodes as a CBOR map with text keys equal to its field
//! names; optional fields are omitted when `None`. Encoding refuses a value a
//! receiver would refuse, and decoding checks every rule below.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The wrapper that zeroizes secret fields on drop (re-exported for callers).
pub use zeroize::Zeroizing;

use crate::cbor::{
    from_cbor, text_enum, to_cbor, wire_struct, Check, DecodeError, EncodeError, Field, FieldError,
    Reader, Writer,
};
use crate::scope::{Scope, ScopeSet};

/// Longest identifier-like text (operator, device, VM, volume, audience, actor…), in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest ACL text an `acl_replace` command carries, in bytes.
pub const MAX_ACL_TEXT_LEN: usize = 32 * 1024;
/// Longest free text (`reason`, `justification`), in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Shortest entropy chunk, in bytes.
pub const MIN_ENTROPY_CHUNK: usize = 32;
/// Longest entropy chunk, in bytes.
pub const MAX_ENTROPY_CHUNK: usize = 512;
/// Shortest nonce, in bytes.
pub const MIN_NONCE_LEN: usize = 16;
/// Longest nonce, in bytes, on the wire and in a token's `nonce` claim.
pub const MAX_NONCE_LEN: usize = 64;
/// Most entries in a `metadata` map.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest `metadata` key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 64;
/// Longest `metadata` value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 256;
/// Longest attestation (a COSE_Sign1 over [`AttestationClaims`]) a request
/// carries, in bytes.
pub const MAX_ATTESTATION_LEN: usize = 1024;
/// Longest capability token (a COSE_Sign1 CWT), in bytes: what a message
/// carries, and what `token::verify` accepts and `token::mint` produces.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Longest token id (`cti`), in bytes, on the wire and in a token.
pub const MAX_CTI_LEN: usize = 64;
/// Longest key id (`kid`), in bytes, in a keyset, a key file and a signature.
pub const MAX_KID_LEN: usize = 64;
/// Most keys in a keyset.
pub const MAX_KEYSET_KEYS: usize = 16;
/// Most entries in a revocation list.
pub const MAX_REVOKED: usize = 1024;
/// Most names on the identity revocation list.
pub const MAX_REVOKED_NAMES: usize = 64;
/// Longest unlock passphrase, in bytes.
pub const MAX_PASSPHRASE_LEN: usize = 512;
/// Shortest sealed-secret ciphertext (the 16-byte AEAD tag), in bytes.
pub const MIN_SEALED_LEN: usize = 16;
/// Longest sealed-secret ciphertext, in bytes.
pub const MAX_SEALED_LEN: usize = 1024;
/// Most audit records in one `audit_log` batch.
pub const MAX_AUDIT_BATCH: usize = 256;
/// Longest encoded audit record, in bytes (the largest a valid
/// [`AuditRecord`] can encode to is about 5.6 KiB).
pub const MAX_AUDIT_RECORD_LEN: usize = 8192;
/// Longest signed outcome (a COSE_Sign1 over [`OutcomeClaims`]) an
/// `outcome_report` or an audit record's `evidence` carries, in bytes.
pub const MAX_OUTCOME_LEN: usize = 1024;

/// Key-value annotations (console, source address…): at most
/// [`MAX_METADATA_ENTRIES`] entries; informational only.
pub type Metadata = crate::sorted::SortedMap<String, String>;

/// A 16-byte request id (UUIDv4 layout, drawn from the DRBG), echoed in the answer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub [u8; 16]);

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

/// Lower-case hex.
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Field for RequestId {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        self.0.encode(w)
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        <[u8; 16]>::decode(r, field).map(RequestId)
    }
}

/// A non-empty list of distinct scopes, encoded as an array of scope names.
impl Field for ScopeSet {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        if self.is_empty() {
            return Err(FieldError::new("requested_scope", "empty scope list"));
        }
        w.array(self.iter().count());
        self.iter().for_each(|s| w.text(s.as_str()));
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let len = r.array(field)?;
        if len == 0 {
            return Err(FieldError::new(field, "empty scope list").into());
        }
        let mut set = ScopeSet::EMPTY;
        for _ in 0..len {
            let scope =
                Scope::parse(r.text(field)?).ok_or(FieldError::new(field, "unknown scope"))?;
            if !set.insert(scope) {
                return Err(FieldError::new(field, "repeated scope").into());
            }
        }
        Ok(set)
    }
}

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), FieldError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(FieldError::new(field, "length out of range"))
    }
}

/// 1..=[`MAX_ID_LEN`] bytes.
fn check_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    check_len(field, id.len(), 1, MAX_ID_LEN)
}

fn check_opt_id(field: &'static str, id: &Option<String>) -> Result<(), FieldError> {
    id.as_deref().map_or(Ok(()), |id| check_id(field, id))
}

/// 0..=[`MAX_TEXT_LEN`] bytes.
fn check_text(field: &'static str, text: &str) -> Result<(), FieldError> {
    check_len(field, text.len(), 0, MAX_TEXT_LEN)
}

fn check_opt_text(field: &'static str, text: &Option<String>) -> Result<(), FieldError> {
    text.as_deref().map_or(Ok(()), |t| check_text(field, t))
}

fn check_nonce(field: &'static str, nonce: &[u8]) -> Result<(), FieldError> {
    check_len(field, nonce.len(), MIN_NONCE_LEN, MAX_NONCE_LEN)
}

fn check_token(field: &'static str, token: &[u8]) -> Result<(), FieldError> {
    check_len(field, token.len(), 1, MAX_TOKEN_LEN)
}

fn check_opt_attestation(attestation: &Option<Vec<u8>>) -> Result<(), FieldError> {
    attestation
        .as_ref()
        .map_or(Ok(()), |a| check_len("attestation", a.len(), 1, MAX_ATTESTATION_LEN))
}

fn check_metadata(metadata: &Option<Metadata>) -> Result<(), FieldError> {
    let Some(map) = metadata else { return Ok(()) };
    check_len("metadata", map.len(), 0, MAX_METADATA_ENTRIES)?;
    map.iter().try_for_each(|(k, v)| {
        check_len("metadata", k.len(), 1, MAX_METADATA_KEY_LEN)?;
        check_len("metadata", v.len(), 0, MAX_METADATA_VALUE_LEN)
    })
}

/// Whether `code` is a TOTP code as this protocol carries it: 6 or 8 ASCII digits.
pub fn is_valid_totp_code(code: &str) -> bool {
    matches!(code.len(), 6 | 8) && code.bytes().all(|b| b.is_ascii_digit())
}

text_enum! {
    /// Outcome of a TOTP validation.
    pub enum TotpResult {
        /// The code was right; the response may carry a token and a sealed secret.
        Ok = "ok",
        /// The code was wrong.
        Fail = "fail",
        /// Too many attempts; see `retry_after`.
        RateLimited = "rate_limited",
        /// The code or nonce was already used.
        Replay = "replay",
        /// The ACL does not allow this operator, device or volume.
        Denied = "denied",
        /// cryptod cannot decide now (not seeded, no key).
        Unavailable = "unavailable",
    }
}

text_enum! {
    /// Outcome of a token issue request.
    pub enum IssueResult {
        /// A token was issued.
        Ok = "ok",
        /// The ACL does not grant the requested scope.
        Denied = "denied",
        /// Too many requests.
        RateLimited = "rate_limited",
        /// cryptod cannot decide now.
        Unavailable = "unavailable",
    }
}

text_enum! {
    /// Outcome of a token revocation request.
    pub enum RevokeResult {
        /// The token id is on the revocation list.
        Ok = "ok",
        /// The caller may not revoke tokens.
        Denied = "denied",
        /// cryptod cannot decide now.
        Unavailable = "unavailable",
    }
}

text_enum! {
    /// Outcome of an unlock request.
    pub enum UnlockOutcome {
        /// The volume is open.
        Ok = "ok",
        /// The passphrase did not open the volume.
        Fail = "fail",
        /// The token did not authorise the unlock.
        Denied = "denied",
    }
}

text_enum! {
    /// The code of an `error` message.
    pub enum ErrorCode {
        /// The request was not well-formed.
        Malformed = "malformed",
        /// The request exceeded the message size limit.
        TooLarge = "too_large",
        /// The envelope's version is not spoken here.
        UnsupportedVersion = "unsupported_version",
        /// The envelope's type is not known here.
        UnknownType = "unknown_type",
        /// The receiver failed.
        Internal = "internal",
        /// The receiver is overloaded; retry later.
        Busy = "busy",
        /// The request was understood and refused (an `attestation_req`
        /// for an action the ACL does not grant the peer).
        Denied = "denied",
    }
}

text_enum! {
    /// The construction that seals an unlock secret to the requester.
    pub enum SealAlg {
        /// X25519 key agreement, HKDF-SHA-256, ChaCha20-Poly1305.
        X25519HkdfSha256ChaCha20Poly1305 = "x25519-hkdf-sha256-chacha20poly1305",
    }
}

text_enum! {
    /// What an audit record is about.
    pub enum AuditAction {
        /// First record of a new chain.
        ChainStart = "chain_start",
        /// A TOTP validation.
        TotpValidate = "totp_validate",
        /// A token issue decision.
        TokenIssue = "token_issue",
        /// A token revocation.
        TokenRevoke = "token_revoke",
        /// An unlock secret was released.
        UnlockSecret = "unlock_secret",
        /// A signing key rotation.
        KeyRotate = "key_rotate",
        /// The DRBG was reseeded.
        EntropyReseed = "entropy_reseed",
        /// A request refused by the ACL.
        AclDeny = "acl_deny",
        /// A keyset was published.
        KeysetPublish = "keyset_publish",
        /// The policy (ACL) changed.
        PolicyChange = "policy_change",
        /// An attestation was issued.
        Attest = "attest",
        /// Decided answers dropped undelivered: their client's connection
        /// went away while they waited for the collector.
        AnswerDrop = "answer_drop",
        /// An admin command (accepted or refused).
        Admin = "admin",
        /// A recovery code was used in place of a TOTP code.
        RecoveryCodeUsed = "recovery_code_used",
        /// An enforcer's signed report of what it did with a decision
        /// (the record's `evidence` carries the enforcer's signed bytes).
        Outcome = "outcome",
    }
}

text_enum! {
    /// The outcome an audit record reports.
    pub enum AuditResult {
        /// Allowed / succeeded.
        Ok = "ok",
        /// Wrong credential.
        Fail = "fail",
        /// Refused by policy.
        Denied = "denied",
        /// Refused by a rate limit.
        RateLimited = "rate_limited",
        /// Refused as a replay.
        Replay = "replay",
        /// An internal failure.
        Error = "error",
    }
}

/// Recovery codes per operator.
pub const RECOVERY_CODES: usize = 8;
/// Base32 characters of a recovery code (5 bits each: 50 bits).
pub const RECOVERY_CODE_CHARS: usize = 10;
/// A stored recovery code: a 16-byte salt and the SHA-256 of the salted code
/// (see `portcullis_authority::admin::recovery_hash`).
pub const RECOVERY_HASH_LEN: usize = 48;
/// Longest admin command lifetime (`expires_at - issued_at`), seconds.
pub const MAX_ADMIN_LIFETIME: u64 = 300;

/// The canonical form of a recovery code: 10 RFC 4648 base32 characters,
/// upper case, as typed either whole or in two groups of 5 joined by one
/// `-` (`ABCDE-FGHIJ`); lower case is accepted. `None` for anything else.
pub fn normalize_recovery_code(code: &str) -> Option<[u8; RECOVERY_CODE_CHARS]> {
    let b = code.as_bytes();
    let (first, second) = match b.len() {
        10 => b.split_at(5),
        11 if b[5] == b'-' => (&b[..5], &b[6..]),
        _ => return None,
    };
    let mut out = [0u8; RECOVERY_CODE_CHARS];
    for (o, &c) in out.iter_mut().zip(first.iter().chain(second)) {
        let c = c.to_ascii_uppercase();
        if !(c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)) {
            return None;
        }
        *o = c;
    }
    Some(out)
}

/// Whether `code` is a recovery code ([`normalize_recovery_code`]).
pub fn is_valid_recovery_code(code: &str) -> bool {
    normalize_recovery_code(code).is_some()
}

text_enum! {
    /// Outcome of an admin command.
    pub enum AdminResult {
        /// Checked, applied, sealed and audited.
        Ok = "ok",
        /// Not from dom0's link, not signed by the admin key, or refused by
        /// a rule (the last operator, an operator that exists or not).
        Denied = "denied",
        /// `admin_seq` not above the last accepted one, or the command is
        /// for another cryptod (`state_id`).
        Replay = "replay",
        /// Outside `issued_at ..= expires_at`.
        Expired = "expired",
        /// The enrolment confirmation code does not match the new secret.
        Fail = "fail",
        /// The command is not valid (missing or extra fields for its kind).
        Invalid = "invalid",
        /// cryptod cannot decide now (not seeded, audit not ready).
        Unavailable = "unavailable",
    }
}

text_enum! {
    /// What an admin command does (new administrative changes are new values).
    pub enum AdminOp {
        /// Enrol a new operator (secret confirmed by a code from the app).
        OperatorAdd = "operator_add",
        /// Replace an operator's secret (a lost phone); the old one stops at once.
        OperatorReset = "operator_reset",
        /// Remove an operator (never the last one).
        OperatorRemove = "operator_remove",
        /// Replace an operator's recovery codes.
        RecoveryRegenerate = "recovery_regenerate",
        /// Rotate the token signing key now (the old one keeps verifying
        /// for the overlap).
        KeyRotate = "key_rotate",
        /// Revoke a token signing key by `kid`: it leaves the keyset at once
        /// (the current key is rotated out first).
        KeyRevoke = "key_revoke",
        /// Revoke one token by `cti` (added to the revocation list).
        TokenRevoke = "token_revoke",
        /// Rotate the root key: a new root, succeeding the old one by a
        /// statement the old one signs.
        RootRotate = "root_rotate",
        /// Bind a volume: register it (a fresh generation) and send its
        /// passphrase sealed to the admin tool's ephemeral key.
        VolumeAdd = "volume_add",
        /// Unbind a volume: its passphrase cannot be derived any more.
        VolumeRemove = "volume_remove",
        /// Replace the ACL with a linted text of a higher version.
        AclReplace = "acl_replace",
        /// Add a domain name to the identity revocation list.
        IdentityRevoke = "identity_revoke",
        /// Take a domain name off the identity revocation list.
        IdentityRestore = "identity_restore",
        /// Add a device id (a [`TotpValidateReq`]'s `device_id`) to the
        /// identity revocation list.
        DeviceRevoke = "device_revoke",
        /// Take a device id off the identity revocation list.
        DeviceRestore = "device_restore",
    }
}

text_enum! {
    /// A TOTP secret's HMAC hash, as an admin command names it.
    pub enum TotpAlg {
        /// HMAC-SHA1.
        Sha1 = "sha1",
        /// HMAC-SHA256.
        Sha256 = "sha256",
        /// HMAC-SHA512.
        Sha512 = "sha512",
    }
}

wire_struct! {
    /// dom0 → cryptod: one admin command, signed by the admin key.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AdminReq {
        /// Request id, echoed in the response; equal to the command's.
        request_id: RequestId,
        /// COSE_Sign1 (content type `admin_command`) whose payload is an
        /// [`AdminCommand`].
        signed: Vec<u8>,
    }
}

impl Check for AdminReq {
    fn check(&self) -> Result<(), FieldError> {
        check_len("signed", self.signed.len(), 1, crate::envelope::MAX_MESSAGE_LEN)
    }
}

wire_struct! {
    /// cryptod → dom0: the verdict on an admin command.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AdminResp {
        /// The request's id.
        request_id: RequestId,
        /// The verdict.
        result: AdminResult,
    }
    optional {
        /// Human-readable detail.
        reason: String,
        /// The last accepted `admin_seq` (the next command must be above it).
        admin_seq: u64,
        /// `volume_add`: the volume's passphrase, sealed to the command's
        /// `ephemeral_pubkey` (transcript: `docs/authority.md`).
        unlock_secret: SealedSecret,
    }
}

impl Check for AdminResp {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)?;
        self.unlock_secret.as_ref().map_or(Ok(()), Check::check)
    }
}

wire_struct! {
    /// The payload of an admin command (signed by the admin key).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AdminCommand {
        /// Equal to the carrying [`AdminReq`]'s.
        request_id: RequestId,
        /// The cryptod it is for: the key id of its root key.
        state_id: Vec<u8>,
        /// Strictly above the last command cryptod accepted.
        admin_seq: u64,
        /// When it was made.
        issued_at: u64,
        /// Last second it may be applied, at most [`MAX_ADMIN_LIFETIME`]
        /// after `issued_at`.
        expires_at: u64,
        /// What to do.
        command: AdminOp,
    }
    optional {
        /// The operator it is about: the operator commands.
        operator_id: String,
        /// The new TOTP secret (16 to 64 bytes): add, reset.
        secret: Zeroizing<Vec<u8>>,
        /// Its HMAC hash: add, reset.
        algorithm: TotpAlg,
        /// Its code length, 6 or 8: add, reset.
        digits: u64,
        /// A code the operator read from the new app entry: add, reset.
        confirm_code: Zeroizing<String>,
        /// Exactly [`RECOVERY_CODES`] salted hashes of the new recovery
        /// codes: regenerate (and optionally add, reset).
        code_hashes: Vec<[u8; RECOVERY_HASH_LEN]>,
        /// A token signing key's id: key_revoke.
        kid: Vec<u8>,
        /// A token's id: token_revoke.
        cti: Vec<u8>,
        /// The volume: `volume_add`, `volume_remove`.
        volume_id: String,
        /// The admin tool's ephemeral X25519 key: `volume_add`.
        ephemeral_pubkey: [u8; 32],
        /// The new ACL text, at most [`MAX_ACL_TEXT_LEN`] bytes: `acl_replace`.
        acl: String,
        /// The new ACL's version, above the current one: `acl_replace`.
        acl_version: u64,
        /// The domain name (`identity_revoke`, `identity_restore`) or the
        /// device id (`device_revoke`, `device_restore`).
        identity: String,
    }
}

impl AdminCommand {
    /// A command `command` with its required fields and none of the
    /// optional ones (each command then sets its own).
    pub fn new(
        request_id: RequestId,
        state_id: Vec<u8>,
        admin_seq: u64,
        issued_at: u64,
        expires_at: u64,
        command: AdminOp,
    ) -> AdminCommand {
        AdminCommand {
            request_id,
            state_id,
            admin_seq,
            issued_at,
            expires_at,
            command,
            operator_id: None,
            secret: None,
            algorithm: None,
            digits: None,
            confirm_code: None,
            code_hashes: None,
            kid: None,
            cti: None,
            volume_id: None,
            ephemeral_pubkey: None,
            acl: None,
            acl_version: None,
            identity: None,
        }
    }
}

impl Check for AdminCommand {
    fn check(&self) -> Result<(), FieldError> {
        check_len("state_id", self.state_id.len(), 1, MAX_KID_LEN)?;
        if let Some(id) = &self.operator_id {
            check_id("operator_id", id)?;
        }
        let lifetime = self.expires_at.checked_sub(self.issued_at);
        if lifetime.is_none_or(|l| l > MAX_ADMIN_LIFETIME) {
            return Err(FieldError::new("expires_at", "not within 300 s after issued_at"));
        }
        if let Some(secret) = &self.secret {
            check_len("secret", secret.len(), 16, 64)?;
        }
        if self.digits.is_some_and(|d| d != 6 && d != 8) {
            return Err(FieldError::new("digits", "not 6 or 8"));
        }
        if self.confirm_code.as_deref().is_some_and(|c| !is_valid_totp_code(c)) {
            return Err(FieldError::new("confirm_code", "not 6 or 8 ASCII digits"));
        }
        if let Some(hashes) = &self.code_hashes {
            check_len("code_hashes", hashes.len(), RECOVERY_CODES, RECOVERY_CODES)?;
        }
        if let Some(kid) = &self.kid {
            check_len("kid", kid.len(), 1, MAX_KID_LEN)?;
        }
        if let Some(cti) = &self.cti {
            check_len("cti", cti.len(), 1, MAX_CTI_LEN)?;
        }
        check_opt_id("volume_id", &self.volume_id)?;
        check_opt_id("identity", &self.identity)?;
        if let Some(acl) = &self.acl {
            check_len("acl", acl.len(), 1, MAX_ACL_TEXT_LEN)?;
        }
        Ok(())
    }
}

wire_struct! {
    /// entropyd → cryptod: one chunk of entropy for the DRBG.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct EntropyPub {
        /// Version string of the publishing DRBG.
        drbg_version: String,
        /// Publication counter (strictly increasing per entropyd boot).
        seq: u64,
        /// Publisher nonce, [`MIN_NONCE_LEN`]..=[`MAX_NONCE_LEN`] bytes.
        nonce: Vec<u8>,
        /// The entropy, [`MIN_ENTROPY_CHUNK`]..=[`MAX_ENTROPY_CHUNK`] bytes.
        entropy_chunk: Zeroizing<Vec<u8>>,
        /// Publication time.
        timestamp: u64,
    }
}

impl Check for EntropyPub {
    fn check(&self) -> Result<(), FieldError> {
        check_id("drbg_version", &self.drbg_version)?;
        check_nonce("nonce", &self.nonce)?;
        check_len("entropy_chunk", self.entropy_chunk.len(), MIN_ENTROPY_CHUNK, MAX_ENTROPY_CHUNK)
    }
}

wire_struct! {
    /// unlocker → cryptod: check an operator's TOTP code (and, for a volume,
    /// release its unlock secret sealed to `ephemeral_pubkey`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TotpValidateReq {
        /// Request id, echoed in the response.
        request_id: RequestId,
        /// The operator who typed the code.
        operator_id: String,
        /// The operator's TOTP device.
        device_id: String,
        /// The code: 6 or 8 ASCII digits, or one of the operator's recovery
        /// codes ([`normalize_recovery_code`]).
        totp_code: Zeroizing<String>,
        /// Requester nonce, [`MIN_NONCE_LEN`]..=[`MAX_NONCE_LEN`] bytes.
        client_nonce: Vec<u8>,
        /// Request time.
        timestamp: u64,
    }
    optional {
        /// The volume to unlock.
        volume_id: String,
        /// X25519 public key the unlock secret is sealed to (required by
        /// cryptod for a `luks:unlock` grant).
        ephemeral_pubkey: [u8; 32],
        /// An attestation cryptod signed for this peer and `luks:unlock`
        /// (COSE_Sign1, 1..=[`MAX_ATTESTATION_LEN`] bytes).
        attestation: Vec<u8>,
        /// Informational annotations.
        metadata: Metadata,
    }
}

impl Check for TotpValidateReq {
    fn check(&self) -> Result<(), FieldError> {
        check_id("operator_id", &self.operator_id)?;
        check_id("device_id", &self.device_id)?;
        if !is_valid_totp_code(&self.totp_code) && !is_valid_recovery_code(&self.totp_code) {
            return Err(FieldError::new(
                "totp_code",
                "not 6 or 8 ASCII digits nor a recovery code",
            ));
        }
        check_nonce("client_nonce", &self.client_nonce)?;
        check_opt_id("volume_id", &self.volume_id)?;
        check_opt_attestation(&self.attestation)?;
        check_metadata(&self.metadata)
    }
}

wire_struct! {
    /// An unlock secret encrypted to the requester's ephemeral X25519 key.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct SealedSecret {
        /// The volume the secret opens.
        volume_id: String,
        /// The sealing construction.
        alg: SealAlg,
        /// cryptod's ephemeral X25519 public key.
        epk: [u8; 32],
        /// AEAD ciphertext with tag, [`MIN_SEALED_LEN`]..=[`MAX_SEALED_LEN`] bytes.
        ciphertext: Vec<u8>,
    }
}

impl Check for SealedSecret {
    fn check(&self) -> Result<(), FieldError> {
        check_id("volume_id", &self.volume_id)?;
        check_len("ciphertext", self.ciphertext.len(), MIN_SEALED_LEN, MAX_SEALED_LEN)
    }
}

wire_struct! {
    /// cryptod → unlocker: the TOTP verdict.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TotpValidateResp {
        /// The request's id.
        request_id: RequestId,
        /// The verdict.
        result: TotpResult,
    }
    optional {
        /// Human-readable detail.
        reason: String,
        /// A short-lived capability token (COSE_Sign1 CWT).
        capability_token: Vec<u8>,
        /// The volume's unlock secret, sealed to the request's `ephemeral_pubkey`.
        unlock_secret: SealedSecret,
        /// When the token or secret stops being valid.
        expires_at: u64,
        /// Seconds to wait before retrying (with `rate_limited`).
        retry_after: u64,
    }
}

impl Check for TotpValidateResp {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)?;
        if let Some(token) = &self.capability_token {
            check_token("capability_token", token)?;
        }
        Ok(())
    }
}

wire_struct! {
    /// A policy VM → cryptod: ask for a capability token.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TokenIssueReq {
        /// Request id, echoed in the response.
        request_id: RequestId,
        /// The requester's name for itself (informational; identity is the peer domid).
        vm_id: String,
        /// The scopes asked for (non-empty, no repeats).
        requested_scope: ScopeSet,
        /// The service that will accept the token.
        audience: String,
        /// Why the token is needed (goes to the audit log).
        justification: String,
        /// Requester nonce, bound into the token.
        nonce: Vec<u8>,
        /// Request time.
        timestamp: u64,
    }
    optional {
        /// Requested lifetime in seconds (cryptod may shorten it).
        ttl: u64,
        /// An attestation cryptod signed for this peer and the requested
        /// scopes (COSE_Sign1, 1..=[`MAX_ATTESTATION_LEN`] bytes).
        attestation: Vec<u8>,
        /// Informational annotations.
        metadata: Metadata,
    }
}

impl Check for TokenIssueReq {
    fn check(&self) -> Result<(), FieldError> {
        check_id("vm_id", &self.vm_id)?;
        check_id("audience", &self.audience)?;
        check_text("justification", &self.justification)?;
        check_nonce("nonce", &self.nonce)?;
        check_opt_attestation(&self.attestation)?;
        check_metadata(&self.metadata)
    }
}

wire_struct! {
    /// cryptod → policy VM: the token, or why not.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TokenIssueResp {
        /// The request's id.
        request_id: RequestId,
        /// The verdict.
        result: IssueResult,
    }
    optional {
        /// Human-readable detail.
        reason: String,
        /// The token (COSE_Sign1 CWT).
        token: Vec<u8>,
        /// The token's `exp`.
        expires_at: u64,
    }
}

impl Check for TokenIssueResp {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)?;
        if let Some(token) = &self.token {
            check_token("token", token)?;
        }
        Ok(())
    }
}

wire_struct! {
    /// Ask cryptod to revoke a token by id.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TokenRevokeReq {
        /// Request id, echoed in the response.
        request_id: RequestId,
        /// The token id (`cti`), 1..=[`MAX_CTI_LEN`] bytes.
        cti: Vec<u8>,
        /// Why (goes to the audit log).
        reason: String,
        /// Request time.
        timestamp: u64,
    }
}

impl Check for TokenRevokeReq {
    fn check(&self) -> Result<(), FieldError> {
        check_len("cti", self.cti.len(), 1, MAX_CTI_LEN)?;
        check_text("reason", &self.reason)
    }
}

wire_struct! {
    /// cryptod's answer to a revocation request.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TokenRevokeResp {
        /// The request's id.
        request_id: RequestId,
        /// The verdict.
        result: RevokeResult,
    }
    optional {
        /// Human-readable detail.
        reason: String,
    }
}

impl Check for TokenRevokeResp {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)
    }
}

/// Declares a message that carries one signed blob (a COSE_Sign1).
macro_rules! signed_message {
    ($(#[$meta:meta])* $name:ident { $field:ident }) => {
        wire_struct! {
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub struct $name {
                /// The COSE_Sign1 bytes (non-empty).
                $field: Vec<u8>,
            }
        }

        impl Check for $name {
            fn check(&self) -> Result<(), FieldError> {
                check_len(stringify!($field), self.$field.len(), 1, crate::envelope::MAX_MESSAGE_LEN)
            }
        }
    };
}

wire_struct! {
    /// A client → cryptod: ask for an attestation of itself for `action`,
    /// binding `subject_pubkey` (the requester's ephemeral key) and `nonce`.
    /// The subject (domid, name) and measurement come from cryptod's own
    /// facts about the link, never from this message.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AttestationReq {
        /// Request id, echoed in an `error` answer.
        request_id: RequestId,
        /// The action the attestation is for: the scopes of the request it
        /// will go with, as a token's `scope` claim writes them (names
        /// space-separated in canonical order, e.g. `luks:unlock`).
        action: String,
        /// The requester's ephemeral public key (X25519 or Ed25519).
        subject_pubkey: [u8; 32],
        /// Requester nonce, [`MIN_NONCE_LEN`]..=[`MAX_NONCE_LEN`] bytes,
        /// bound into the attestation.
        nonce: Vec<u8>,
        /// Request time.
        timestamp: u64,
    }
}

impl Check for AttestationReq {
    fn check(&self) -> Result<(), FieldError> {
        check_id("action", &self.action)?;
        check_nonce("nonce", &self.nonce)
    }
}

signed_message! {
    /// A signed attestation; the payload is [`AttestationClaims`].
    Attestation { signed }
}

wire_struct! {
    /// One batch of cryptod's audit log: consecutive hash-chained records
    /// (each the exact bytes of an encoded [`AuditRecord`]) and the
    /// COSE_Sign1 seal (payload [`AuditSeal`]) over the last one.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuditLog {
        /// 1..=[`MAX_AUDIT_BATCH`] encoded records, each
        /// 1..=[`MAX_AUDIT_RECORD_LEN`] bytes, in `seq` order.
        records: Vec<Vec<u8>>,
        /// The seal (a COSE_Sign1 by the root key).
        seal: Vec<u8>,
    }
}

impl Check for AuditLog {
    fn check(&self) -> Result<(), FieldError> {
        check_len("records", self.records.len(), 1, MAX_AUDIT_BATCH)?;
        self.records
            .iter()
            .try_for_each(|r| check_len("records", r.len(), 1, MAX_AUDIT_RECORD_LEN))?;
        check_len("seal", self.seal.len(), 1, crate::envelope::MAX_MESSAGE_LEN)
    }
}

signed_message! {
    /// A signed keyset; the payload is [`KeysetBody`].
    Keyset { signed }
}

signed_message! {
    /// A signed revocation list; the payload is [`RevocationBody`].
    RevocationList { signed }
}

wire_struct! {
    /// The receiver has stored an audit chain up to and including `seq`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuditAck {
        /// The chain.
        chain_id: [u8; 16],
        /// Highest sequence number stored.
        seq: u64,
    }
}

impl Check for AuditAck {
    fn check(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Declares a request that carries only a request id.
macro_rules! id_only_request {
    ($(#[$meta:meta])* $name:ident) => {
        wire_struct! {
            $(#[$meta])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub struct $name {
                /// Request id, echoed in the response.
                request_id: RequestId,
            }
        }

        impl Check for $name {
            fn check(&self) -> Result<(), FieldError> {
                Ok(())
            }
        }
    };
}

id_only_request! {
    /// Ask cryptod for its current signed keyset.
    KeysetReq
}

id_only_request! {
    /// Ask cryptod for its current signed revocation list.
    RevocationListReq
}

wire_struct! {
    /// unlocker → dom0 unlock agent: open a volume.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UnlockRequest {
        /// Request id, echoed in the result.
        request_id: RequestId,
        /// The volume to open.
        volume_id: String,
        /// The volume passphrase, 1..=[`MAX_PASSPHRASE_LEN`] bytes (zeroized on drop).
        passphrase: Zeroizing<Vec<u8>>,
        /// A `luks:unlock` token for the agent to verify.
        token: Vec<u8>,
    }
}

impl Check for UnlockRequest {
    fn check(&self) -> Result<(), FieldError> {
        check_id("volume_id", &self.volume_id)?;
        check_len("passphrase", self.passphrase.len(), 1, MAX_PASSPHRASE_LEN)?;
        check_token("token", &self.token)
    }
}

wire_struct! {
    /// The unlock agent's answer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct UnlockResult {
        /// The request's id.
        request_id: RequestId,
        /// The verdict.
        result: UnlockOutcome,
    }
    optional {
        /// Human-readable detail.
        reason: String,
    }
}

impl Check for UnlockResult {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)
    }
}

wire_struct! {
    /// A request could not be handled at all.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ErrorMsg {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    }
    optional {
        /// The failed request's id, if it could be read.
        request_id: RequestId,
    }
}

impl Check for ErrorMsg {
    fn check(&self) -> Result<(), FieldError> {
        check_text("reason", &self.reason)
    }
}

impl ErrorMsg {
    /// The answer to bytes that did not decode: the code the schema requires
    /// for the failure ([`DecodeError::code`]: `unsupported_version`,
    /// `unknown_type`, `too_large` or `malformed`) and the failure as the
    /// reason. There is no request id, since the request could not be read.
    pub fn for_decode_error(e: &DecodeError) -> ErrorMsg {
        use alloc::string::ToString;
        ErrorMsg { code: e.code(), reason: e.to_string(), request_id: None }
    }
}

/// Adds `to_cbor`/`from_cbor` to a signed-object payload.
macro_rules! payload_codec {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Encodes the payload as one CBOR map (the bytes to sign).
            pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
                to_cbor(self)
            }

            /// Decodes a payload, which must be exactly one CBOR map.
            pub fn from_cbor(bytes: &[u8]) -> Result<Self, DecodeError> {
                from_cbor(bytes, $what)
            }
        }
    };
}

wire_struct! {
    /// The payload of an [`Attestation`]: cryptod vouches that domain
    /// `subject_domid` (named `subject_vm`, with kernel `measurement`)
    /// asked, holding `subject_pubkey`, to do `action`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AttestationClaims {
        /// The Xen domain id of the link the request came on (at most `u32::MAX`).
        subject_domid: u64,
        /// The VM name cryptod resolved for that domain.
        subject_vm: String,
        /// The requester's ephemeral public key (X25519 or Ed25519).
        subject_pubkey: [u8; 32],
        /// The action the attestation is for.
        action: String,
        /// The nonce of the request that asked for it.
        nonce: Vec<u8>,
        /// Issue time.
        issued_at: u64,
        /// End of validity.
        expires_at: u64,
    }
    optional {
        /// SHA-256 of the domain's kernel as dom0 measured it at launch;
        /// absent when the platform does not know it.
        measurement: [u8; 32],
    }
}
payload_codec!(AttestationClaims, "attestation_claims");
payload_codec!(AdminCommand, "admin_command");

impl Check for AttestationClaims {
    fn check(&self) -> Result<(), FieldError> {
        if self.subject_domid > u64::from(u32::MAX) {
            return Err(FieldError::new("subject_domid", "not a domain id"));
        }
        check_id("subject_vm", &self.subject_vm)?;
        check_id("action", &self.action)?;
        check_nonce("nonce", &self.nonce)?;
        if self.expires_at < self.issued_at {
            return Err(FieldError::new("expires_at", "before issued_at"));
        }
        Ok(())
    }
}

wire_struct! {
    /// One hash-chained audit record (unsigned: a batch's [`AuditSeal`]
    /// covers it through the hash chain).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuditRecord {
        /// The chain (fresh per chain start).
        chain_id: [u8; 16],
        /// Position in the chain, from 0.
        seq: u64,
        /// Unique record id.
        entry_id: [u8; 16],
        /// SHA-256 of the previous record's encoded bytes (zeros for `seq` 0).
        prev_hash: [u8; 32],
        /// Who acted (operator, VM or `cryptod`).
        actor: String,
        /// What happened.
        action: AuditAction,
        /// The outcome.
        result: AuditResult,
        /// When.
        timestamp: u64,
    }
    optional {
        /// What it happened to (volume, token id, key id…).
        target: String,
        /// Extra detail.
        metadata: Metadata,
        /// An `outcome` record's enforcer-signed outcome (a COSE_Sign1 over
        /// [`OutcomeClaims`], 1..=[`MAX_OUTCOME_LEN`] bytes), as received.
        evidence: Vec<u8>,
    }
}
payload_codec!(AuditRecord, "audit_record");

impl Check for AuditRecord {
    fn check(&self) -> Result<(), FieldError> {
        check_id("actor", &self.actor)?;
        check_opt_id("target", &self.target)?;
        check_metadata(&self.metadata)?;
        self.evidence
            .as_ref()
            .map_or(Ok(()), |e| check_len("evidence", e.len(), 1, MAX_OUTCOME_LEN))
    }
}

wire_struct! {
    /// The payload of an audit seal (content type `audit_seal`, signed by
    /// the root key): the batch of chain `chain_id` from `first_seq` to
    /// `last_seq`, whose last record hashes to `head_hash`. Through the
    /// records' hash links it covers every record of the log up to there.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct AuditSeal {
        /// The chain.
        chain_id: [u8; 16],
        /// `seq` of the batch's first record.
        first_seq: u64,
        /// `seq` of the batch's last record.
        last_seq: u64,
        /// SHA-256 of the last record's encoded bytes.
        head_hash: [u8; 32],
        /// When the batch was sealed.
        timestamp: u64,
    }
}
payload_codec!(AuditSeal, "audit_seal");

impl Check for AuditSeal {
    fn check(&self) -> Result<(), FieldError> {
        if self.last_seq < self.first_seq {
            return Err(FieldError::new("last_seq", "before first_seq"));
        }
        Ok(())
    }
}

wire_struct! {
    /// One verification key in a keyset, as published (the verifier's form,
    /// with a checked public key, is [`crate::key::KeyEntry`]; `TryFrom`
    /// converts).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct KeyEntryWire {
        /// Key id, 1..=[`MAX_KID_LEN`] bytes.
        kid: Vec<u8>,
        /// COSE algorithm (-19 Ed25519; -8 EdDSA).
        alg: i64,
        /// The public key.
        pubkey: [u8; 32],
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
    }
}

impl Check for KeyEntryWire {
    fn check(&self) -> Result<(), FieldError> {
        check_len("kid", self.kid.len(), 1, MAX_KID_LEN)?;
        if self.not_after < self.not_before {
            return Err(FieldError::new("not_after", "before not_before"));
        }
        Ok(())
    }
}

wire_struct! {
    /// The payload of a [`Keyset`]: cryptod's token verification keys.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct KeysetBody {
        /// Keyset version; a verifier refuses a version older than its current one.
        version: u64,
        /// Issue time.
        issued_at: u64,
        /// 1..=[`MAX_KEYSET_KEYS`] keys.
        keys: Vec<KeyEntryWire>,
    }
    optional {
        /// The root keys' succession from the first root on: each a
        /// COSE_Sign1 (content type `root_succession`, payload
        /// [`RootSuccession`]) by the root before it; at most
        /// [`MAX_ROOT_CHAIN`]. Absent while the first root signs.
        root_chain: Vec<Vec<u8>>,
    }
}
payload_codec!(KeysetBody, "keyset_body");

/// Most root rotations a cryptod makes (the length of a root chain).
pub const MAX_ROOT_CHAIN: usize = 8;
/// Longest root succession statement.
pub const MAX_SUCCESSION_LEN: usize = 512;

wire_struct! {
    /// The payload of a root succession statement: the root key that
    /// signs it is succeeded by `pubkey` from `issued_at` on.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RootSuccession {
        /// The new root's number: 1 for the first successor, each next one more.
        version: u64,
        /// When the old root signed it.
        issued_at: u64,
        /// The new root public key (Ed25519).
        pubkey: [u8; 32],
    }
}
payload_codec!(RootSuccession, "root_succession");

impl Check for RootSuccession {
    fn check(&self) -> Result<(), FieldError> {
        if self.version == 0 || self.version > MAX_ROOT_CHAIN as u64 {
            return Err(FieldError::new("version", "not 1 to MAX_ROOT_CHAIN"));
        }
        Ok(())
    }
}

impl Check for KeysetBody {
    fn check(&self) -> Result<(), FieldError> {
        // Each key checked itself when it was encoded or decoded.
        if let Some(chain) = &self.root_chain {
            check_len("root_chain", chain.len(), 1, MAX_ROOT_CHAIN)?;
            chain
                .iter()
                .try_for_each(|s| check_len("root_chain", s.len(), 1, MAX_SUCCESSION_LEN))?;
        }
        check_len("keys", self.keys.len(), 1, MAX_KEYSET_KEYS)
    }
}

wire_struct! {
    /// One revoked token.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RevokedEntry {
        /// The token id, 1..=[`MAX_CTI_LEN`] bytes.
        cti: Vec<u8>,
        /// The token's `exp` (after which the entry may be dropped).
        exp: u64,
    }
}

impl Check for RevokedEntry {
    fn check(&self) -> Result<(), FieldError> {
        check_len("cti", self.cti.len(), 1, MAX_CTI_LEN)
    }
}

wire_struct! {
    /// The payload of a [`RevocationList`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RevocationBody {
        /// List serial number; a verifier refuses a serial older than its current one.
        serial: u64,
        /// Issue time.
        issued_at: u64,
        /// At most [`MAX_REVOKED`] entries.
        entries: Vec<RevokedEntry>,
    }
    optional {
        /// The identity revocation list: domain names no token may be
        /// issued to (`sub`) or for (`aud`), at most
        /// [`MAX_REVOKED_NAMES`]; absent while it was never changed.
        revoked_names: Vec<String>,
        /// Its serial (with `revoked_names`): a verifier refuses one older
        /// than its current one.
        identity_serial: u64,
        /// Revoked device ids (a TOTP request's `device_id`), at most
        /// [`MAX_REVOKED_NAMES`]; only with `revoked_names`, absent while
        /// no device was ever revoked.
        revoked_devices: Vec<String>,
    }
}
payload_codec!(RevocationBody, "revocation_body");

impl Check for RevocationBody {
    fn check(&self) -> Result<(), FieldError> {
        check_len("entries", self.entries.len(), 0, MAX_REVOKED)?;
        if let Some(names) = &self.revoked_names {
            check_len("revoked_names", names.len(), 0, MAX_REVOKED_NAMES)?;
            for n in names {
                check_id("revoked_names", n)?;
            }
        }
        if self.revoked_names.is_some() != self.identity_serial.is_some() {
            return Err(FieldError::new("identity_serial", "goes with revoked_names"));
        }
        if let Some(devices) = &self.revoked_devices {
            if self.revoked_names.is_none() {
                return Err(FieldError::new("revoked_devices", "goes with revoked_names"));
            }
            check_len("revoked_devices", devices.len(), 0, MAX_REVOKED_NAMES)?;
            for d in devices {
                check_id("revoked_devices", d)?;
            }
        }
        Ok(())
    }
}

text_enum! {
    /// What an enforcer did with a decision (an [`OutcomeClaims`]'s `outcome`).
    pub enum Enforced {
        /// The unlock agent opened the volume.
        Opened = "opened",
        /// The unlock agent could not open the volume (`reason` says why).
        Failed = "failed",
        /// policy_pd applied the rule.
        Applied = "applied",
        /// policy_pd refused the token or the rule (`reason` says why).
        Refused = "refused",
    }
}

text_enum! {
    /// cryptod's verdict on an `outcome_report`.
    pub enum OutcomeResult {
        /// Appended to the audit chain (and stored by the collector).
        Recorded = "recorded",
        /// Not recorded as an outcome: bad signature, unknown key, or too
        /// many reports (the refusal itself is audited).
        Refused = "refused",
        /// cryptod cannot record now (audit not ready); try again.
        Unavailable = "unavailable",
    }
}

wire_struct! {
    /// The payload of a signed outcome: what enforcer `enforcer` did with
    /// the decision whose token id is `decision`, at `timestamp` (the
    /// enforcer's clock). Signed (COSE_Sign1, content type
    /// `application/portcullis.outcome+cbor`) by the enforcer's outcome key.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct OutcomeClaims {
        /// The `cti` of the token the enforcer was presented, 1..=[`MAX_CTI_LEN`] bytes.
        decision: Vec<u8>,
        /// The enforcer's name (its VM name, as cryptod knows its link's peer).
        enforcer: String,
        /// What happened.
        outcome: Enforced,
        /// When, in the enforcer's clock.
        timestamp: u64,
    }
    optional {
        /// Why, for `failed` and `refused`.
        reason: String,
    }
}
payload_codec!(OutcomeClaims, "outcome_claims");

impl Check for OutcomeClaims {
    fn check(&self) -> Result<(), FieldError> {
        check_len("decision", self.decision.len(), 1, MAX_CTI_LEN)?;
        check_id("enforcer", &self.enforcer)?;
        self.reason
            .as_deref()
            .map_or(Ok(()), |r| check_len("reason", r.len(), 0, MAX_METADATA_VALUE_LEN))
    }
}

wire_struct! {
    /// An enforcer → cryptod: a signed outcome to append to the audit chain.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct OutcomeReport {
        /// Request id, echoed in the answer.
        request_id: RequestId,
        /// COSE_Sign1 over [`OutcomeClaims`], 1..=[`MAX_OUTCOME_LEN`] bytes.
        signed: Vec<u8>,
    }
    optional {
        /// A live attestation cryptod issued to this peer whose
        /// `subject_pubkey` is the key that signed `signed` (for an
        /// enforcer without a pinned outcome key).
        attestation: Vec<u8>,
    }
}

impl Check for OutcomeReport {
    fn check(&self) -> Result<(), FieldError> {
        check_len("signed", self.signed.len(), 1, MAX_OUTCOME_LEN)?;
        check_opt_attestation(&self.attestation)
    }
}

wire_struct! {
    /// cryptod's answer to an [`OutcomeReport`] (sent once the record is stored).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct OutcomeResp {
        /// The report's id.
        request_id: RequestId,
        /// The verdict.
        result: OutcomeResult,
    }
    optional {
        /// Human-readable detail.
        reason: String,
    }
}

impl Check for OutcomeResp {
    fn check(&self) -> Result<(), FieldError> {
        check_opt_text("reason", &self.reason)
    }
}
