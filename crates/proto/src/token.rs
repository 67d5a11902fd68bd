//! Capability tokens: a COSE_Sign1 (tag 18) signed with Ed25519 whose payload
//! is a CWT claims set (RFC 8392). `protocol/token.md` is the normative
//! specification; this module implements it.
//!
//! [`mint`](crate::token::mint) is used by cryptod.
//! [`verify`](crate::token::verify) is used by every consumer: it runs the
//! checks in a fixed order, returns exactly one
//! [`VerifyError`](crate::token::VerifyError) for the first check that fails,
//! and wraps the claims in [`Verified`](crate::Verified).
//! [`inspect`](crate::danger::inspect) parses without verifying, for tools.
//! (Full paths: the outer doc on `pub mod token` makes rustdoc resolve these
//! links from the crate root.)

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::cbor::Writer;
use crate::cose::{self, decode_value, Sign1};
use crate::scope::ScopeSet;
use crate::Verified;
use coset::cbor::value::Value;

/// The Ed25519 key types of the token API, re-exported for convenience.
pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// The verifier's key entry (defined with the other key types in [`crate::key`]).
pub use crate::key::KeyEntry;
/// The token limits, defined once with the message limits: the longest token
/// accepted or minted (longer input is refused before it is parsed), token id
/// and requester nonce.
pub use crate::msg::{MAX_CTI_LEN, MAX_NONCE_LEN, MAX_TOKEN_LEN};

/// Length of the token ids (`cti`) cryptod mints.
pub const CTI_LEN: usize = 16;
/// Longest lifetime (`exp - iat`) of any token, in seconds.
pub const MAX_LIFETIME_SECS: u64 = 300;

/// CWT claim keys (RFC 8392 §4; IANA "CWT Claims" for `scope` and `nonce`).
mod claim {
    pub const ISS: i64 = 1;
    pub const SUB: i64 = 2;
    pub const AUD: i64 = 3;
    pub const EXP: i64 = 4;
    pub const NBF: i64 = 5;
    pub const IAT: i64 = 6;
    pub const CTI: i64 = 7;
    pub const SCOPE: i64 = 9;
    pub const NONCE: i64 = 10;
}

/// The claims of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Issuer (cryptod's name).
    pub iss: String,
    /// Subject: who the token was issued to.
    pub sub: String,
    /// Audience: the service that may accept the token. After [`verify`] this is
    /// the expected audience that matched; after [`crate::danger::inspect`] of
    /// a token with an audience array it is the array's first element.
    pub aud: String,
    /// Expiry, epoch seconds: not accepted after `exp + skew`.
    pub exp: u64,
    /// Not before, epoch seconds: not accepted before `nbf - skew`.
    pub nbf: u64,
    /// Issued at, epoch seconds.
    pub iat: u64,
    /// Token id (1 to [`MAX_CTI_LEN`] bytes; cryptod mints [`CTI_LEN`]).
    pub cti: Vec<u8>,
    /// The capabilities granted.
    pub scope: ScopeSet,
    /// The requester's nonce (1 to [`MAX_NONCE_LEN`] bytes).
    pub nonce: Vec<u8>,
}

impl Claims {
    /// Whether the claims are ones a token may carry: id and nonce lengths,
    /// a non-empty scope, `iat <= nbf <= exp` and `exp - iat <= MAX_LIFETIME_SECS`.
    pub fn is_well_formed(&self) -> bool {
        (1..=MAX_CTI_LEN).contains(&self.cti.len())
            && (1..=MAX_NONCE_LEN).contains(&self.nonce.len())
            && !self.scope.is_empty()
            && self.iat <= self.nbf
            && self.nbf <= self.exp
            && self.exp - self.iat <= MAX_LIFETIME_SECS
    }
}

/// Why a token could not be minted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// The key id is empty or longer than [`cose::MAX_KID_LEN`].
    InvalidKid,
    /// The claims fail [`Claims::is_well_formed`].
    InvalidClaims,
    /// The token would exceed [`MAX_TOKEN_LEN`].
    TooLarge,
    /// CBOR encoding failed.
    Encoding,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::InvalidKid => "key id empty or too long",
            TokenError::InvalidClaims => "claims not well formed",
            TokenError::TooLarge => "token too large",
            TokenError::Encoding => "CBOR encoding failed",
        })
    }
}

impl core::error::Error for TokenError {}

/// Mints a token: a tagged COSE_Sign1 with protected header `{1: -19, 4: kid}`,
/// an empty unprotected header, and the claims as a deterministically encoded
/// CBOR map (keys 1, 2, 3, 4, 5, 6, 7, 9, 10).
pub fn mint(key: &SigningKey, kid: &[u8], claims: &Claims) -> Result<Vec<u8>, TokenError> {
    Ok(mint_unsigned(kid, claims)?.sign(key))
}

/// The token [`mint`] makes, checked and encoded but not signed yet: its
/// [`cose::Unsigned::sign`] gives the same bytes as [`mint`] (so a signer
/// can decide and record first, and sign while the record is written).
pub fn mint_unsigned(kid: &[u8], claims: &Claims) -> Result<cose::Unsigned, TokenError> {
    if kid.is_empty() || kid.len() > cose::MAX_KID_LEN {
        return Err(TokenError::InvalidKid);
    }
    if !claims.is_well_formed() {
        return Err(TokenError::InvalidClaims);
    }
    let payload = claims_cbor(claims);
    let token = cose::Unsigned::new(&cose::protected_header(None, kid), &payload);
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    Ok(token)
}

/// The claims map, keys in ascending order, shortest heads.
fn claims_cbor(c: &Claims) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(9);
    for (key, text) in [(claim::ISS, &c.iss), (claim::SUB, &c.sub), (claim::AUD, &c.aud)] {
        w.int(key);
        w.text(text);
    }
    for (key, time) in [(claim::EXP, c.exp), (claim::NBF, c.nbf), (claim::IAT, c.iat)] {
        w.int(key);
        w.uint(time);
    }
    w.int(claim::CTI);
    w.bytes(&c.cti);
    w.int(claim::SCOPE);
    w.text(&c.scope.to_string());
    w.int(claim::NONCE);
    w.bytes(&c.nonce);
    w.into_bytes()
}

/// The set of verification keys a consumer trusts; key ids are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyset {
    entries: Vec<KeyEntry>,
}

/// Why a key could not be added to a [`Keyset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysetError {
    /// An entry with the same key id is already present.
    DuplicateKid,
}

impl fmt::Display for KeysetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("duplicate key id in keyset")
    }
}

impl core::error::Error for KeysetError {}

impl Keyset {
    /// An empty keyset.
    pub const fn new() -> Keyset {
        Keyset { entries: Vec::new() }
    }

    /// Adds a key; refuses a second key with the same id.
    pub fn push(&mut self, entry: KeyEntry) -> Result<(), KeysetError> {
        if self.find(&entry.kid).is_some() {
            return Err(KeysetError::DuplicateKid);
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The key with id `kid`, if any.
    pub fn find(&self, kid: &[u8]) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.kid == kid)
    }

    /// The keys, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a consumer requires of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectations<'a> {
    /// This consumer's audience name; the token's `aud` must equal it (or an
    /// audience array must contain it).
    pub audience: &'a str,
    /// Every scope needed for the action; an empty set is refused as
    /// [`VerifyError::MissingScope`] (a consumer always names what it grants).
    pub scope: ScopeSet,
    /// The current time, epoch seconds.
    pub now: u64,
    /// Allowed clock skew in seconds, applied to `exp`, `nbf`, `iat` and key
    /// retirement.
    pub skew: u64,
}

/// Why a replay cache refused a token id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// The id was already seen and has not yet expired.
    Replayed,
    /// No room for another live id (fail closed).
    Full,
    /// The id is empty or longer than [`MAX_CTI_LEN`].
    InvalidId,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayError::Replayed => "token id already used",
            ReplayError::Full => "replay cache full",
            ReplayError::InvalidId => "token id empty or too long",
        })
    }
}

impl core::error::Error for ReplayError {}

/// Remembers token ids until they can no longer be accepted.
pub trait ReplayCache {
    /// Records `cti`, or refuses it if it is already recorded. `exp` is the last
    /// second at which the token could still be accepted ([`verify`] passes the
    /// token's `exp` plus the skew); once `now > exp` the entry may be forgotten.
    fn check_and_insert(&mut self, cti: &[u8], exp: u64, now: u64) -> Result<(), ReplayError>;
}

/// A bounded in-memory [`ReplayCache`]: at most `capacity` live ids; expired
/// ids are overwritten; when every slot holds a live id it refuses (fails
/// closed) with [`ReplayError::Full`].
#[derive(Clone, Debug)]
pub struct MemoryReplayCache {
    entries: Vec<ReplayEntry>,
    capacity: usize,
}

#[derive(Clone, Copy, Debug)]
struct ReplayEntry {
    cti: [u8; MAX_CTI_LEN],
    len: usize,
    until: u64,
}

impl ReplayEntry {
    fn id(&self) -> &[u8] {
        self.cti.get(..self.len).unwrap_or(&[])
    }
}

impl MemoryReplayCache {
    /// A cache for at most `capacity` live token ids (allocated up front).
    pub fn new(capacity: usize) -> MemoryReplayCache {
        MemoryReplayCache { entries: Vec::with_capacity(capacity), capacity }
    }

    /// The number of ids held (live or not yet overwritten).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no id has been recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most ids the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl ReplayCache for MemoryReplayCache {
    fn check_and_insert(&mut self, cti: &[u8], exp: u64, now: u64) -> Result<(), ReplayError> {
        if cti.is_empty() || cti.len() > MAX_CTI_LEN {
            return Err(ReplayError::InvalidId);
        }
        let mut free = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if now > entry.until {
                free.get_or_insert(i);
            } else if entry.id() == cti {
                return Err(ReplayError::Replayed);
            }
        }
        let mut id = [0; MAX_CTI_LEN];
        id.get_mut(..cti.len()).ok_or(ReplayError::InvalidId)?.copy_from_slice(cti);
        let entry = ReplayEntry { cti: id, len: cti.len(), until: exp };
        if let Some(slot) = free.and_then(|i| self.entries.get_mut(i)) {
            *slot = entry;
        } else if self.entries.len() < self.capacity {
            self.entries.push(entry);
        } else {
            return Err(ReplayError::Full);
        }
        Ok(())
    }
}

/// The set of revoked token ids.
pub trait Revocations {
    /// Whether the token with id `cti` is revoked.
    fn is_revoked(&self, cti: &[u8]) -> bool;

    /// Whether domain name `name` is on the identity revocation list (a
    /// token whose `sub` or `aud` it is, is refused).
    fn is_name_revoked(&self, name: &str) -> bool {
        let _ = name;
        false
    }
}

/// Revoked token ids, kept sorted for binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokedSet {
    ids: Vec<Vec<u8>>,
    /// Revoked domain names (the identity revocation list).
    names: Vec<String>,
}

impl RevokedSet {
    /// An empty set.
    pub const fn new() -> RevokedSet {
        RevokedSet { ids: Vec::new(), names: Vec::new() }
    }

    /// A set holding `ids` (sorted and deduplicated here).
    pub fn from_ids(mut ids: Vec<Vec<u8>>) -> RevokedSet {
        ids.sort_unstable();
        ids.dedup();
        RevokedSet { ids, names: Vec::new() }
    }

    /// This set, with the revoked domain names `names`.
    pub fn with_names(mut self, names: Vec<String>) -> RevokedSet {
        self.names = names;
        self
    }

    /// The revoked domain names.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds `cti`; returns false if it was already present.
    pub fn insert(&mut self, cti: &[u8]) -> bool {
        match self.ids.binary_search_by(|id| id.as_slice().cmp(cti)) {
            Ok(_) => false,
            Err(at) => {
                self.ids.insert(at, cti.to_vec());
                true
            }
        }
    }

    /// The revoked ids, in ascending byte order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ids.iter().map(Vec::as_slice)
    }

    /// Number of revoked ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl Revocations for RevokedSet {
    fn is_revoked(&self, cti: &[u8]) -> bool {
        self.ids.binary_search_by(|id| id.as_slice().cmp(cti)).is_ok()
    }

    fn is_name_revoked(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Why a token was refused: one kind per check of [`verify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VerifyError {
    /// Too long, not CBOR, not a COSE_Sign1 of the token shape, or claims
    /// missing, mistyped, unknown or inconsistent.
    Malformed,
    /// No key id, no key with that id, the key is retired, or the token's
    /// `iat` is outside the key's window.
    UnknownKid,
    /// The signature does not verify under the key.
    BadSignature,
    /// The algorithm is not Ed25519 (-19) or EdDSA (-8), or is missing.
    WrongAlgorithm,
    /// `now > exp + skew`.
    Expired,
    /// `now + skew < nbf` or `now + skew < iat`.
    NotYetValid,
    /// The audience is not this consumer's.
    WrongAudience,
    /// The token lacks a required scope (or none was required).
    MissingScope,
    /// The token id was already used.
    Replayed,
    /// The token id is on the revocation list.
    Revoked,
    /// The replay cache has no room; the token is refused (fail closed).
    ReplayCacheFull,
}

impl VerifyError {
    /// A stable snake_case name for logs and wire error codes.
    pub const fn code(self) -> &'static str {
        match self {
            VerifyError::Malformed => "malformed",
            VerifyError::UnknownKid => "unknown_kid",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::WrongAlgorithm => "wrong_algorithm",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::WrongAudience => "wrong_audience",
            VerifyError::MissingScope => "missing_scope",
            VerifyError::Replayed => "replayed",
            VerifyError::Revoked => "revoked",
            VerifyError::ReplayCacheFull => "replay_cache_full",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyError::Malformed => "token is malformed",
            VerifyError::UnknownKid => "token key id is unknown or its key is not valid for it",
            VerifyError::BadSignature => "token signature does not verify",
            VerifyError::WrongAlgorithm => "token algorithm is not Ed25519",
            VerifyError::Expired => "token has expired",
            VerifyError::NotYetValid => "token is not yet valid",
            VerifyError::WrongAudience => "token is for another audience",
            VerifyError::MissingScope => "token lacks a required scope",
            VerifyError::Replayed => "token id was already used",
            VerifyError::Revoked => "token is revoked",
            VerifyError::ReplayCacheFull => "replay cache is full",
        })
    }
}

impl core::error::Error for VerifyError {}

/// Verifies a token and returns its claims. The checks run in this order and
/// the first failure is returned: size and parse (`Malformed`), algorithm,
/// key id, signature (`verify_strict`), claims (`Malformed`), key window
/// (`UnknownKid`), expiry, not-before, audience, scope, revocation, and last
/// the replay cache, so a refused token never takes a replay slot.
pub fn verify(
    token: &[u8],
    keys: &Keyset,
    exp: &Expectations,
    replay: &mut dyn ReplayCache,
    revoked: &dyn Revocations,
) -> Result<Verified<Claims>, VerifyError> {
    let object = decode_token(token)?;
    if !object.alg_accepted() {
        return Err(VerifyError::WrongAlgorithm);
    }
    let entry = keys
        .find(&object.kid)
        .filter(|e| !object.kid.is_empty() && e.live(exp.now, exp.skew))
        .ok_or(VerifyError::UnknownKid)?;
    if !object.signature_ok(&entry.key) {
        return Err(VerifyError::BadSignature);
    }
    let (mut claims, audiences) = parse_claims(&object.payload).ok_or(VerifyError::Malformed)?;
    if !entry.signed_at(claims.iat) {
        return Err(VerifyError::UnknownKid);
    }
    if exp.now > claims.exp.saturating_add(exp.skew) {
        return Err(VerifyError::Expired);
    }
    let earliest = exp.now.saturating_add(exp.skew);
    if earliest < claims.nbf || earliest < claims.iat {
        return Err(VerifyError::NotYetValid);
    }
    if !audiences.iter().any(|a| a == exp.audience) {
        return Err(VerifyError::WrongAudience);
    }
    if exp.scope.is_empty() || !claims.scope.is_superset(exp.scope) {
        return Err(VerifyError::MissingScope);
    }
    if revoked.is_revoked(&claims.cti)
        || revoked.is_name_revoked(&claims.sub)
        || audiences.iter().any(|a| revoked.is_name_revoked(a))
    {
        return Err(VerifyError::Revoked);
    }
    replay.check_and_insert(&claims.cti, claims.exp.saturating_add(exp.skew), exp.now).map_err(
        |e| match e {
            ReplayError::Replayed => VerifyError::Replayed,
            ReplayError::Full => VerifyError::ReplayCacheFull,
            ReplayError::InvalidId => VerifyError::Malformed,
        },
    )?;
    claims.aud = exp.audience.to_string();
    Ok(Verified::new(claims))
}

/// Size cap, decode, and the token shape: a protected header with only alg and
/// kid (no content type, no crit) and an attached payload. The unprotected
/// header is ignored, so a kid found only there counts as no kid.
pub(crate) fn decode_token(token: &[u8]) -> Result<Sign1, VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed);
    }
    let object = Sign1::decode(token, true).ok_or(VerifyError::Malformed)?;
    if object.crit || object.other_protected || object.content_type.is_some() {
        return Err(VerifyError::Malformed);
    }
    Ok(object)
}

/// Decodes and checks a claims set; returns the claims (with the first
/// audience in `aud`) and every audience. `None` if anything is missing,
/// duplicated, unknown, mistyped or inconsistent.
pub(crate) fn parse_claims(payload: &[u8]) -> Option<(Claims, Vec<String>)> {
    let Value::Map(entries) = decode_value(payload)? else {
        return None;
    };
    // No claim is tagged. The check is on the bytes: the CBOR library turns a
    // bignum (tag 2 or 3) that fits into a plain integer, so an `exp` sent as
    // a bignum would otherwise pass as a uint.
    if !untagged(payload) {
        return None;
    }
    let mut seen = 0u32;
    let (mut iss, mut sub, mut audiences) = (None, None, Vec::new());
    let (mut exp, mut nbf, mut iat) = (None, None, None);
    let (mut cti, mut scope, mut nonce) = (None, None, None);
    for (k, v) in entries {
        let k = i64::try_from(k.into_integer().ok()?).ok()?;
        // Every known key is in 1..=10, so it has a bit; a repeat is refused.
        let bit = 1u32.checked_shl(u32::try_from(k).ok()?)?;
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match k {
            claim::ISS => iss = Some(v.into_text().ok()?),
            claim::SUB => sub = Some(v.into_text().ok()?),
            claim::AUD => audiences = parse_audience(v)?,
            claim::EXP => exp = Some(uint(v)?),
            claim::NBF => nbf = Some(uint(v)?),
            claim::IAT => iat = Some(uint(v)?),
            claim::CTI => cti = Some(v.into_bytes().ok()?),
            claim::SCOPE => scope = Some(ScopeSet::parse_list(&v.into_text().ok()?).ok()?),
            claim::NONCE => nonce = Some(v.into_bytes().ok()?),
            _ => return None,
        }
    }
    let claims = Claims {
        iss: iss?,
        sub: sub?,
        aud: audiences.first()?.clone(),
        exp: exp?,
        nbf: nbf?,
        iat: iat?,
        cti: cti?,
        scope: scope?,
        nonce: nonce?,
    };
    claims.is_well_formed().then_some((claims, audiences))
}

/// `aud`: a text string, or a non-empty array of text strings.
fn parse_audience(v: Value) -> Option<Vec<String>> {
    match v {
        Value::Text(aud) => Some(alloc::vec![aud]),
        Value::Array(items) if !items.is_empty() => {
            items.into_iter().map(|a| a.into_text().ok()).collect()
        }
        _ => None,
    }
}

/// An unsigned integer that fits `u64` (no floats, no negatives, no tags).
fn uint(v: Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(i).ok(),
        _ => None,
    }
}

/// Whether `bytes` is exactly one well-formed CBOR item with no tag anywhere
/// in it, nested at most [`cose::MAX_DEPTH`] levels. Accepts any encoding the
/// CBOR library accepts (long heads, indefinite lengths), since verifiers do
/// not require deterministic encoding.
fn untagged(bytes: &[u8]) -> bool {
    let mut r = TagScan { bytes, pos: 0 };
    r.item(1).is_some() && r.pos == bytes.len()
}

/// A cursor for [`untagged`]; every method returns `None` on a tag, a
/// malformed item or the end of input.
struct TagScan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl TagScan<'_> {
    fn take(&mut self, n: u64) -> Option<&[u8]> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    /// Reads a head: the major type and the argument (`None`: indefinite).
    fn head(&mut self) -> Option<(u8, Option<u64>)> {
        let initial = *self.take(1)?.first()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let width = 1u64 << (info - 24);
                let arg = self.take(width)?.iter().fold(0u64, |a, b| a << 8 | u64::from(*b));
                Some(arg)
            }
            31 => None,
            _ => return None,
        };
        Some((major, arg))
    }

    fn at_break(&mut self) -> bool {
        let brk = self.bytes.get(self.pos) == Some(&0xff);
        self.pos += usize::from(brk);
        brk
    }

    fn item(&mut self, depth: usize) -> Option<()> {
        if depth > cose::MAX_DEPTH {
            return None;
        }
        match self.head()? {
            (0 | 1, Some(_)) => Some(()),
            (2 | 3, Some(len)) => self.take(len).map(drop),
            // Indefinite string: definite chunks of the same major type.
            (major @ (2 | 3), None) => {
                while !self.at_break() {
                    match self.head()? {
                        (m, Some(len)) if m == major => self.take(len)?,
                        _ => return None,
                    };
                }
                Some(())
            }
            (major @ (4 | 5), Some(len)) => {
                let per = if major == 5 { 2 } else { 1 };
                // Each item takes at least one byte, so the loop ends with
                // the input even if `len` is huge.
                for _ in 0..len {
                    for _ in 0..per {
                        self.item(depth + 1)?;
                    }
                }
                Some(())
            }
            (major @ (4 | 5), None) => {
                while !self.at_break() {
                    self.item(depth + 1)?;
                    if major == 5 {
                        self.item(depth + 1)?;
                    }
                }
                Some(())
            }
            // Simple values and floats; a lone break is malformed.
            (7, Some(_)) => Some(()),
            // Tags (major 6), and everything malformed.
            _ => None,
        }
    }
}
