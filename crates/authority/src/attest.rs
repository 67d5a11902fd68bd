//! Attestations: cryptod's signed statement that a domain asked, holding an
//! ephemeral key, to do an action; and the check of one a request carries.
//!
//! An attestation is a COSE_Sign1 signed object (content type
//! `application/portcullis.attestation+cbor`, kid in the protected header)
//! by cryptod's current token signing key, so it verifies with the published
//! keyset as tokens do. Its payload is [`AttestationClaims`]. The subject
//! (domid and name) is the link's peer and the measurement is what the
//! platform says; the requester chooses only the action, its ephemeral
//! public key and the nonce.
//!
//! A request that carries an attestation is checked, in this order:
//! signature by a key of cryptod's keyset whose window holds `issued_at`;
//! claims well-formed; not yet valid (`issued_at > now`); stale
//! (`now > expires_at`, no skew: cryptod's own clock made both); subject
//! domid and name equal the link's peer; action equals the request's action;
//! subject key equals the request's ephemeral key when the request has one;
//! and last the nonce, which is accepted once per subject (a bounded replay
//! cache; full is a refusal), so a refused attestation never takes a slot.

use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::SigningKey;
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::msg::AttestationClaims;
use portcullis_proto::token::{self, MemoryReplayCache, ReplayCache, ReplayError};
use sha2::{Digest, Sha256};

use crate::acl::PeerId;

/// Lifetime of an attestation cryptod issues, in seconds.
pub const ATTESTATION_TTL: u64 = 60;
/// Most attestation nonces remembered at once (each for at most
/// [`ATTESTATION_TTL`] seconds); when all are live, further attestations are
/// refused until one expires.
pub const ATTEST_REPLAY_CAPACITY: usize = 256;

/// Why an attestation was refused (or could not be issued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestError {
    /// The request needs an attestation and carries none.
    Missing,
    /// Not a signed attestation of cryptod's keyset (shape, algorithm,
    /// content type, unknown kid, bad signature).
    Signature(CoseError),
    /// The signing key's window does not hold `issued_at`.
    KeyWindow,
    /// The payload is not well-formed attestation claims.
    Claims,
    /// `issued_at` is in the future.
    NotYetValid,
    /// `expires_at` has passed.
    Stale,
    /// Issued for another domain or name than the link's peer.
    WrongSubject,
    /// Issued for another action than the request's.
    WrongAction,
    /// Binds another public key than the request's ephemeral key.
    WrongKey,
    /// Its nonce was used before.
    Replayed,
    /// The replay cache is full of live nonces.
    ReplayCacheFull,
    /// No signing key at this time.
    NoSigningKey,
}

impl fmt::Display for AttestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttestError::Missing => f.write_str("attestation required"),
            AttestError::Signature(e) => write!(f, "attestation: {e}"),
            AttestError::KeyWindow => {
                f.write_str("attestation: key window does not hold issued_at")
            }
            AttestError::Claims => f.write_str("attestation: malformed claims"),
            AttestError::NotYetValid => f.write_str("attestation: issued in the future"),
            AttestError::Stale => f.write_str("attestation: stale"),
            AttestError::WrongSubject => f.write_str("attestation: subject is not this peer"),
            AttestError::WrongAction => f.write_str("attestation: action is not this request's"),
            AttestError::WrongKey => f.write_str("attestation: key is not the request's key"),
            AttestError::Replayed => f.write_str("attestation: nonce already used"),
            AttestError::ReplayCacheFull => f.write_str("attestation: replay cache full"),
            AttestError::NoSigningKey => f.write_str("attestation: no signing key"),
        }
    }
}

impl core::error::Error for AttestError {}

/// Signs `claims` as an attestation with `key` (key id `kid`).
pub fn sign(
    key: &SigningKey,
    kid: &[u8],
    claims: &AttestationClaims,
) -> Result<Vec<u8>, CoseError> {
    let payload = claims.to_cbor().map_err(|_| CoseError::Encoding)?;
    cose::sign(key, kid, ContentType::Attestation, &payload)
}

/// What a request requires of the attestation it carries.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// The link's peer.
    pub peer: &'a PeerId,
    /// The request's action.
    pub action: &'a str,
    /// The request's ephemeral public key, if it has one.
    pub pubkey: Option<&'a [u8; 32]>,
    /// Now, in cryptod's clock.
    pub now: u64,
}

/// Checks `bytes` against `keys` and `expect` (see the module docs for the
/// order), and records its nonce in `replay`; returns the claims.
pub fn verify(
    bytes: &[u8],
    keys: &token::Keyset,
    expect: &Expect<'_>,
    replay: &mut MemoryReplayCache,
) -> Result<AttestationClaims, AttestError> {
    let object = cose::verify(bytes, ContentType::Attestation, |kid| keys.find(kid).map(|e| e.key))
        .map_err(AttestError::Signature)?;
    let claims = AttestationClaims::from_cbor(&object.payload).map_err(|_| AttestError::Claims)?;
    let entry = keys.find(&object.kid).ok_or(AttestError::Signature(CoseError::UnknownKid))?;
    if claims.issued_at < entry.not_before || claims.issued_at > entry.not_after {
        return Err(AttestError::KeyWindow);
    }
    if claims.issued_at > expect.now {
        return Err(AttestError::NotYetValid);
    }
    if expect.now > claims.expires_at {
        return Err(AttestError::Stale);
    }
    if claims.subject_domid != u64::from(expect.peer.domid) || claims.subject_vm != expect.peer.vm {
        return Err(AttestError::WrongSubject);
    }
    if claims.action != expect.action {
        return Err(AttestError::WrongAction);
    }
    if expect.pubkey.is_some_and(|k| *k != claims.subject_pubkey) {
        return Err(AttestError::WrongKey);
    }
    let id = replay_id(claims.subject_domid, &claims.nonce);
    replay.check_and_insert(&id, claims.expires_at, expect.now).map_err(|e| match e {
        ReplayError::Replayed => AttestError::Replayed,
        ReplayError::Full => AttestError::ReplayCacheFull,
        ReplayError::InvalidId => AttestError::Claims,
    })?;
    Ok(claims)
}

/// The replay cache key: a nonce is single-use per subject domain.
fn replay_id(domid: u64, nonce: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domid.to_le_bytes());
    h.update(nonce);
    h.finalize().into()
}
