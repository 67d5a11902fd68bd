//! Outcomes: an enforcer's signed report of what it did with a decision
//! (the unlock agent opened the volume or failed; policy_pd applied the
//! rule or refused), checked here and appended to the audit chain as an
//! `outcome` record carrying the enforcer's signed bytes as `evidence`.
//!
//! Who vouches for the enforcer's key (see `docs/authority.md`, "Outcomes"):
//! - a **pinned** key ([`OutcomeKey`], from cryptod's configuration: made at
//!   provisioning, its public half given to cryptod), bound to the peer
//!   domain that may use it and to the token audience it enforces; or
//! - an **attested** key: the ephemeral key of an attestation this cryptod
//!   issued to the same peer and that is still live ([`crate::attest::Issued`]).
//!
//! cryptod remembers the last [`DECISIONS_MAX`] tokens it minted
//! ([`Decisions`]: token id, subject, audience), to tell which decision an
//! outcome reports on and whether the reporting peer is the one it was for:
//! with a pinned key, the token's audience must be the key's audience; with
//! an attested key, the token's subject must be the peer (it asked for the
//! token itself) and its audience the outcome's `enforcer`. An outcome for
//! a token cryptod does not remember (older, or from an earlier boot) is
//! recorded all the same, marked `decision=unknown`; one whose decision
//! was for someone else is refused (and the refusal audited).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::VerifyingKey;
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{AuditResult, Enforced, OutcomeClaims};

use crate::acl::PeerId;

/// Most token decisions remembered (oldest forgotten first).
pub const DECISIONS_MAX: usize = 64;
/// Most pinned outcome keys in a configuration.
pub const MAX_OUTCOME_KEYS: usize = 8;

/// A pinned outcome key: `peer` (a client's name) may sign outcomes of
/// tokens whose audience is `audience` with `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeKey {
    /// The client (link peer) name that holds the key.
    pub peer: String,
    /// The token audience it enforces (its `enforcer` name).
    pub audience: String,
    /// The Ed25519 public key (32 bytes).
    pub key: [u8; 32],
}

/// A token cryptod minted.
struct Decision {
    cti: Vec<u8>,
    sub: String,
    aud: String,
}

/// The last [`DECISIONS_MAX`] tokens cryptod minted, oldest first.
#[derive(Default)]
pub struct Decisions {
    entries: Vec<Decision>,
}

impl Decisions {
    /// Remembers a minted token.
    pub fn push(&mut self, cti: &[u8], sub: &str, aud: &str) {
        if self.entries.len() >= DECISIONS_MAX {
            self.entries.remove(0);
        }
        self.entries.push(Decision { cti: cti.into(), sub: sub.into(), aud: aud.into() });
    }

    /// The id of the last token minted.
    pub fn last_cti(&self) -> Option<&[u8]> {
        self.entries.last().map(|d| d.cti.as_slice())
    }

    /// `(subject, audience)` of the token `cti`, if remembered.
    fn find(&self, cti: &[u8]) -> Option<(&str, &str)> {
        self.entries.iter().find(|d| d.cti == cti).map(|d| (d.sub.as_str(), d.aud.as_str()))
    }
}

/// Why an outcome report is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeError {
    /// Not a COSE_Sign1 outcome by a key vouched for this peer (shape,
    /// algorithm, content type, unknown kid, bad signature).
    Signature(CoseError),
    /// The attestation is not a live one this cryptod issued to this peer.
    Attestation,
    /// The payload is not well-formed outcome claims.
    Claims,
    /// The decision was for another enforcer than this peer.
    WrongPeer,
}

impl fmt::Display for OutcomeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutcomeError::Signature(e) => write!(f, "outcome: {e}"),
            OutcomeError::Attestation => {
                f.write_str("outcome: attestation not issued to this peer or stale")
            }
            OutcomeError::Claims => f.write_str("outcome: malformed claims"),
            OutcomeError::WrongPeer => f.write_str("outcome: the decision was not for this peer"),
        }
    }
}

impl core::error::Error for OutcomeError {}

/// Which kind of key vouched for an accepted outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouch {
    /// A pinned key.
    Pinned,
    /// An attestation's ephemeral key.
    Attested,
}

/// An accepted outcome.
#[derive(Debug)]
pub struct Accepted {
    /// The signed claims.
    pub claims: OutcomeClaims,
    /// Who vouched for the key.
    pub vouch: Vouch,
    /// Whether cryptod remembers the decision.
    pub known: bool,
    /// The public key that signed it.
    pub key: [u8; 32],
}

/// Checks `signed` from `peer`: the signature under the peer's pinned keys,
/// or under `attested` (the key of a live attestation issued to the peer),
/// the claims, and the decision's binding to the peer (module docs).
pub fn check(
    signed: &[u8],
    peer: &PeerId,
    pinned: &[OutcomeKey],
    attested: Option<[u8; 32]>,
    decisions: &Decisions,
) -> Result<Accepted, OutcomeError> {
    let mut used: Option<(Vouch, &str, [u8; 32])> = None;
    let object = {
        let lookup = |kid: &[u8]| -> Option<(VerifyingKey, Vouch, &str)> {
            let attested = attested.and_then(|k| VerifyingKey::from_bytes(&k).ok());
            if let Some(k) = attested.filter(|k| kid_for(k)[..] == *kid) {
                return Some((k, Vouch::Attested, ""));
            }
            pinned.iter().filter(|p| p.peer == peer.vm).find_map(|p| {
                let k = VerifyingKey::from_bytes(&p.key).ok()?;
                (kid_for(&k)[..] == *kid).then_some((k, Vouch::Pinned, p.audience.as_str()))
            })
        };
        cose::verify(signed, ContentType::Outcome, |kid| lookup(kid).map(|(k, _, _)| k))
            .map_err(OutcomeError::Signature)
            .inspect(|o| used = lookup(&o.get().kid).map(|(k, v, a)| (v, a, k.to_bytes())))?
            .into_inner()
    };
    let (vouch, audience, key) = used.ok_or(OutcomeError::Signature(CoseError::UnknownKid))?;
    let claims = OutcomeClaims::from_cbor(&object.payload).map_err(|_| OutcomeError::Claims)?;
    let bound = match vouch {
        Vouch::Pinned => claims.enforcer == audience,
        Vouch::Attested => true,
    };
    if !bound {
        return Err(OutcomeError::WrongPeer);
    }
    let known = match decisions.find(&claims.decision) {
        None => false,
        Some((sub, aud)) => {
            let for_peer = match vouch {
                Vouch::Pinned => aud == audience,
                Vouch::Attested => sub == peer.vm && aud == claims.enforcer,
            };
            if !for_peer {
                return Err(OutcomeError::WrongPeer);
            }
            true
        }
    };
    Ok(Accepted { claims, vouch, known, key })
}

/// The audit result an outcome is recorded with.
pub fn result_of(outcome: Enforced) -> AuditResult {
    match outcome {
        Enforced::Opened | Enforced::Applied => AuditResult::Ok,
        Enforced::Failed => AuditResult::Fail,
        Enforced::Refused => AuditResult::Denied,
    }
}
