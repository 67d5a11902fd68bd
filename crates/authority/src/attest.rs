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
//! cryptod remembers what it issued ([`Issued`]): the SHA-256 of each
//! attestation's bytes with its subject, action, key and expiry, at most
//! [`ATTEST_MAX_PER_PEER`] per peer and [`ATTEST_MAX`] in all. A request
//! that carries an attestation is checked against that table, in this
//! order: the exact bytes were issued by this cryptod (anything forged,
//! altered, re-encoded or forgotten is `NotIssued`; this needs no signature
//! verification code in cryptod's image, and is stricter than one);
//! `now <= expires_at` (no skew: cryptod's own clock made both; saturating);
//! subject domid and name equal the link's peer; action equals the
//! request's action; subject key equals the request's ephemeral key when the
//! request has one; and it was not used before (single use: a used entry
//! stays, marked, until it is evicted). A refused check uses nothing up.
//!
//! Anyone else checks an attestation with the published keyset
//! ([`verify`]: signature, key window, then the same claim checks, without
//! the single-use memory).

use alloc::string::String;
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
/// Most attestations cryptod remembers (see [`Issued`]).
pub const ATTEST_MAX: usize = 256;
/// Most attestations remembered per peer domain: issuing one more forgets
/// that peer's oldest, so one peer can neither fill the table nor evict
/// another's.
pub const ATTEST_MAX_PER_PEER: usize = 8;

/// Why an attestation was refused (or could not be issued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestError {
    /// The request needs an attestation and carries none.
    Missing,
    /// Not bytes this cryptod issued (forged, altered, re-encoded, or
    /// forgotten: from an earlier boot, or evicted).
    NotIssued,
    /// Every remembered attestation is live and the table is full.
    TableFull,
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
            AttestError::NotIssued => f.write_str("attestation: not issued by this cryptod"),
            AttestError::TableFull => f.write_str("attestation: too many live attestations"),
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
            AttestError::Replayed => f.write_str("attestation: already used"),
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

/// Checks `bytes` against the public `keys` and `expect` (see the module
/// docs for the order), and records its nonce in `replay`; returns the
/// claims. What `portcullis attest verify` and other verifiers use.
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
    check(claims, (entry.not_before, entry.not_after), expect, replay)
}

/// One attestation cryptod issued.
struct Entry {
    digest: [u8; 32],
    domid: u32,
    vm: String,
    action: String,
    pubkey: [u8; 32],
    expires_at: u64,
    used: bool,
}

/// What cryptod issued, to check an attestation a request carries
/// (see the module docs).
#[derive(Default)]
pub struct Issued {
    /// Oldest first.
    entries: Vec<Entry>,
}

impl Issued {
    /// Remembers `signed`, just issued with `claims` to `peer`; forgets the
    /// peer's oldest beyond [`ATTEST_MAX_PER_PEER`], and an expired entry
    /// when the table is full. `TableFull` if every entry is live: the
    /// attestation must not be handed out then.
    pub fn record(
        &mut self,
        peer: &PeerId,
        signed: &[u8],
        claims: &AttestationClaims,
        now: u64,
    ) -> Result<(), AttestError> {
        if self.entries.iter().filter(|e| e.domid == peer.domid).count() >= ATTEST_MAX_PER_PEER {
            if let Some(i) = self.entries.iter().position(|e| e.domid == peer.domid) {
                self.entries.remove(i);
            }
        }
        if self.entries.len() >= ATTEST_MAX {
            let i = self
                .entries
                .iter()
                .position(|e| e.used || now > e.expires_at)
                .ok_or(AttestError::TableFull)?;
            self.entries.remove(i);
        }
        self.entries.push(Entry {
            digest: Sha256::digest(signed).into(),
            domid: peer.domid,
            vm: peer.vm.clone(),
            action: claims.action.clone(),
            pubkey: claims.subject_pubkey,
            expires_at: claims.expires_at,
            used: false,
        });
        Ok(())
    }

    /// Checks `bytes` against what was issued and `expect`, and marks it
    /// used.
    pub fn take(&mut self, bytes: &[u8], expect: &Expect<'_>) -> Result<(), AttestError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let e =
            self.entries.iter_mut().find(|e| e.digest == digest).ok_or(AttestError::NotIssued)?;
        if expect.now > e.expires_at {
            return Err(AttestError::Stale);
        }
        if e.domid != expect.peer.domid || e.vm != expect.peer.vm {
            return Err(AttestError::WrongSubject);
        }
        if e.action != expect.action {
            return Err(AttestError::WrongAction);
        }
        if expect.pubkey.is_some_and(|k| *k != e.pubkey) {
            return Err(AttestError::WrongKey);
        }
        if e.used {
            return Err(AttestError::Replayed);
        }
        e.used = true;
        Ok(())
    }

    /// The key `bytes` binds, if it is a live attestation issued to
    /// `peer` (used or not: it vouches for the key until it expires).
    pub fn key_of(&self, bytes: &[u8], peer: &PeerId, now: u64) -> Result<[u8; 32], AttestError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let e = self.entries.iter().find(|e| e.digest == digest).ok_or(AttestError::NotIssued)?;
        if now > e.expires_at {
            return Err(AttestError::Stale);
        }
        if e.domid != peer.domid || e.vm != peer.vm {
            return Err(AttestError::WrongSubject);
        }
        Ok(e.pubkey)
    }

    /// How many attestations are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The checks after the signature: key window, times, subject, action,
/// key, and last the nonce.
fn check(
    claims: AttestationClaims,
    (not_before, not_after): (u64, u64),
    expect: &Expect<'_>,
    replay: &mut MemoryReplayCache,
) -> Result<AttestationClaims, AttestError> {
    if claims.issued_at < not_before || claims.issued_at > not_after {
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
