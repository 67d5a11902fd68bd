//! Root key succession: a root key names its successor in a statement it
//! signs (COSE_Sign1, content type `root_succession`, payload
//! [`RootSuccession`](crate::msg::RootSuccession)); a verifier pinned to an older root follows the
//! chain of statements to the current root, and only so.
//!
//! Rules ([`follow`](crate::succession::follow)): at most
//! [`MAX_ROOT_CHAIN`](crate::msg::MAX_ROOT_CHAIN) statements; each is
//! verified under the root before it (kid and signature); only a version
//! above the one held moves on, so versions strictly increase: statements
//! at or below the version already held are skipped (a verifier that
//! followed part of the chain before no longer holds the roots that signed
//! them).

use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::cose::{self, ContentType, CoseError};
use crate::key::kid_for;
pub use crate::msg::{RootSuccession, MAX_ROOT_CHAIN};

/// Why a root chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// More than [`MAX_ROOT_CHAIN`] statements.
    TooLong,
    /// A statement not signed by the root before it.
    Signature(CoseError),
    /// A statement that does not decode, or names an unusable key.
    Malformed,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::TooLong => f.write_str("root chain too long"),
            ChainError::Signature(e) => write!(f, "root succession not signed by its root: {e}"),
            ChainError::Malformed => f.write_str("malformed root succession"),
        }
    }
}

impl core::error::Error for ChainError {}

/// The statement by `old` that `body.pubkey` succeeds it.
pub fn sign(old: &SigningKey, body: &RootSuccession) -> Result<Vec<u8>, CoseError> {
    let payload = body.to_cbor().map_err(|_| CoseError::Encoding)?;
    cose::sign(old, &kid_for(&old.verifying_key()), ContentType::RootSuccession, &payload)
}

/// Follows `chain` from the root `root` at `version` (0: the first root):
/// returns the last root it reaches and its version.
pub fn follow<S: AsRef<[u8]>>(
    root: VerifyingKey,
    version: u64,
    chain: &[S],
) -> Result<(VerifyingKey, u64), ChainError> {
    if chain.len() > MAX_ROOT_CHAIN {
        return Err(ChainError::TooLong);
    }
    let (mut root, mut version) = (root, version);
    for s in chain {
        let s = s.as_ref();
        let seen = crate::danger::open_unverified(s).map_err(ChainError::Signature)?;
        let claimed = RootSuccession::from_cbor(&seen.get_unverified().payload)
            .map_err(|_| ChainError::Malformed)?;
        if claimed.version <= version {
            continue;
        }
        let kid = kid_for(&root);
        let key = root;
        let v = cose::verify(s, ContentType::RootSuccession, |k| (k == kid).then_some(key))
            .map_err(ChainError::Signature)?;
        let body = RootSuccession::from_cbor(&v.into_inner().payload)
            .map_err(|_| ChainError::Malformed)?;
        root = VerifyingKey::from_bytes(&body.pubkey).map_err(|_| ChainError::Malformed)?;
        version = body.version;
    }
    Ok((root, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn step(old: u8, new: u8, version: u64) -> Vec<u8> {
        let body =
            RootSuccession { version, issued_at: 100, pubkey: key(new).verifying_key().to_bytes() };
        sign(&key(old), &body).unwrap()
    }

    #[test]
    fn a_valid_chain_is_followed_and_a_partial_one_resumed() {
        let chain = [step(1, 2, 1), step(2, 3, 2)];
        let root = key(1).verifying_key();
        assert_eq!(follow(root, 0, &chain), Ok((key(3).verifying_key(), 2)));
        // A verifier already at root 2 skips the first statement.
        assert_eq!(follow(key(2).verifying_key(), 1, &chain), Ok((key(3).verifying_key(), 2)));
        assert_eq!(follow::<Vec<u8>>(root, 0, &[]), Ok((root, 0)));
    }

    #[test]
    fn forged_reordered_and_long_chains_are_refused() {
        let root = key(1).verifying_key();
        // Signed by a key that is not the pinned root.
        let forged = [step(9, 3, 1)];
        assert!(matches!(follow(root, 0, &forged), Err(ChainError::Signature(_))));
        // A link skipped: the second statement's signer is not the root reached.
        let gap = [step(1, 2, 1), step(3, 4, 2)];
        assert!(matches!(follow(root, 0, &gap), Err(ChainError::Signature(_))));
        // Versions must increase: a later statement with the same version is skipped,
        // and the root reached is the first one's.
        let same = [step(1, 2, 2), step(2, 3, 2)];
        assert_eq!(follow(root, 0, &same), Ok((key(2).verifying_key(), 2)));
        let long: Vec<Vec<u8>> =
            (0..=MAX_ROOT_CHAIN as u8).map(|i| step(i + 1, i + 2, 1)).collect();
        assert_eq!(follow(root, 0, &long), Err(ChainError::TooLong));
        // The wrong kind of object.
        let other = cose::sign(&key(1), &kid_for(&root), ContentType::Keyset, b"\xa0").unwrap();
        assert!(follow(root, 0, &[other]).is_err());
    }

    #[test]
    fn a_rebuilt_statement_is_byte_identical() {
        let s = step(1, 2, 1);
        let seen = crate::danger::open_unverified(&s).unwrap().into_unverified();
        let sig: [u8; 64] = s[s.len() - 64..].try_into().unwrap();
        let kid = kid_for(&key(1).verifying_key());
        assert_eq!(cose::rebuild(&kid, ContentType::RootSuccession, &seen.payload, &sig), s);
    }
}
