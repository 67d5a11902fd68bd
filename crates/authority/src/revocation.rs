//! The revocation list: revoked token ids, kept until their tokens expire.
//!
//! Rules:
//! - an entry is `(cti, exp)`; it is kept while `now <= exp` and pruned after;
//! - every change (an id added, entries pruned) bumps the serial, so a
//!   verifier can refuse an older list;
//! - at most [`MAX_REVOKED`] entries; when full, a new revocation is refused
//!   (the caller reports `unavailable`; nothing is dropped early);
//! - the list is published signed by the root key (content type
//!   `revocation_list`).

use crate::sorted::SortedMap;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::SigningKey;
use portcullis_proto::cose::{self, ContentType, CoseError};
pub use portcullis_proto::msg::MAX_REVOKED;
use portcullis_proto::msg::{RevocationBody, RevokedEntry, MAX_CTI_LEN};
use portcullis_proto::token::RevokedSet;

/// Why a token id could not be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeError {
    /// The list already holds [`MAX_REVOKED`] live entries.
    Full,
    /// The id is empty or longer than the protocol allows.
    BadId,
}

impl fmt::Display for RevokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevokeError::Full => "revocation list is full",
            RevokeError::BadId => "token id empty or too long",
        })
    }
}

impl core::error::Error for RevokeError {}

/// Revoked token ids with their expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: SortedMap<Vec<u8>, u64>,
    serial: u64,
}

impl RevocationList {
    /// An empty list with serial 0.
    pub fn new() -> RevocationList {
        RevocationList::default()
    }

    /// The list an earlier boot sealed: its entries (bounded and checked
    /// like [`RevocationList::revoke`]; bad or surplus ones are skipped) and
    /// its serial, so the next published list is never a rollback.
    pub fn restore<'a>(entries: impl IntoIterator<Item = (&'a [u8], u64)>, serial: u64) -> Self {
        let mut list = RevocationList { entries: SortedMap::new(), serial };
        for (cti, exp) in entries {
            if !cti.is_empty() && cti.len() <= MAX_CTI_LEN && list.entries.len() < MAX_REVOKED {
                list.entries.insert(cti.to_vec(), exp);
            }
        }
        list
    }

    /// The entries `(cti, exp)`, for sealing.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.entries.iter().map(|(cti, exp)| (cti.as_slice(), *exp))
    }

    /// Revokes `cti` until `exp`. Returns false if it was already revoked
    /// (its expiry is then extended if `exp` is later).
    pub fn revoke(&mut self, cti: &[u8], exp: u64, now: u64) -> Result<bool, RevokeError> {
        if cti.is_empty() || cti.len() > MAX_CTI_LEN {
            return Err(RevokeError::BadId);
        }
        self.prune(now);
        if let Some(old) = self.entries.get_mut(cti) {
            if exp > *old {
                *old = exp;
                self.serial = self.serial.saturating_add(1);
            }
            return Ok(false);
        }
        if self.entries.len() >= MAX_REVOKED {
            return Err(RevokeError::Full);
        }
        self.entries.insert(cti.to_vec(), exp);
        self.serial = self.serial.saturating_add(1);
        Ok(true)
    }

    /// Drops entries whose tokens have expired (`exp < now`).
    pub fn prune(&mut self, now: u64) {
        let before = self.entries.len();
        self.entries.retain(|_, exp| *exp >= now);
        if self.entries.len() != before {
            self.serial = self.serial.saturating_add(1);
        }
    }

    /// Whether `cti` is on the list.
    pub fn contains(&self, cti: &[u8]) -> bool {
        self.entries.contains_key(cti)
    }

    /// The current serial.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The ids as a verifier's [`RevokedSet`].
    pub fn revoked_set(&self) -> RevokedSet {
        RevokedSet::from_ids(self.entries.keys().cloned().collect())
    }

    /// The payload to publish.
    pub fn body(&self, now: u64) -> RevocationBody {
        RevocationBody {
            serial: self.serial,
            issued_at: now,
            entries: self
                .entries
                .iter()
                .map(|(cti, exp)| RevokedEntry { cti: cti.clone(), exp: *exp })
                .collect(),
            revoked_names: None,
            identity_serial: None,
            revoked_devices: None,
        }
    }

    /// The list signed with `key` (the root key) under `kid`.
    pub fn signed(&self, key: &SigningKey, kid: &[u8], now: u64) -> Result<Vec<u8>, CoseError> {
        sign_body(&self.body(now), key, kid)
    }
}

/// `body` signed with `key` (the root key) under `kid`, content type
/// `revocation_list`.
pub fn sign_body(
    body: &RevocationBody,
    key: &SigningKey,
    kid: &[u8],
) -> Result<Vec<u8>, CoseError> {
    let payload = body.to_cbor().map_err(|_| CoseError::Encoding)?;
    cose::sign(key, kid, ContentType::RevocationList, &payload)
}

impl RevocationList {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use portcullis_proto::scope::{Scope, ScopeSet};
    use portcullis_proto::token::{
        self, Claims, Expectations, KeyEntry, Keyset, MemoryReplayCache, VerifyError,
    };

    #[test]
    fn a_revoked_cti_is_refused_by_the_verifier() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let claims = Claims {
            iss: String::from("cryptod"),
            sub: String::from("policy_pd"),
            aud: String::from("fw0"),
            exp: 160,
            nbf: 100,
            iat: 100,
            cti: alloc::vec![0xc7; 16],
            scope: ScopeSet::single(Scope::NetModify),
            nonce: alloc::vec![1; 16],
        };
        let tok = token::mint(&key, b"k1", &claims).unwrap();
        let mut keys = Keyset::new();
        keys.push(KeyEntry {
            kid: b"k1".to_vec(),
            key: key.verifying_key(),
            not_before: 0,
            not_after: 1000,
        })
        .unwrap();
        let exp = Expectations {
            audience: "fw0",
            scope: ScopeSet::single(Scope::NetModify),
            now: 110,
            skew: 0,
        };

        let mut list = RevocationList::new();
        assert!(token::verify(
            &tok,
            &keys,
            &exp,
            &mut MemoryReplayCache::new(4),
            &list.revoked_set()
        )
        .is_ok());
        assert_eq!(list.revoke(&claims.cti, claims.exp, 110), Ok(true));
        assert_eq!(
            token::verify(&tok, &keys, &exp, &mut MemoryReplayCache::new(4), &list.revoked_set()),
            Err(VerifyError::Revoked)
        );
    }

    #[test]
    fn entries_live_until_exp_and_serial_tracks_changes() {
        let mut list = RevocationList::new();
        assert_eq!(list.revoke(b"a", 100, 0), Ok(true));
        assert_eq!(list.revoke(b"b", 200, 0), Ok(true));
        assert_eq!(list.serial(), 2);
        assert_eq!(list.revoke(b"a", 50, 0), Ok(false));
        assert_eq!(list.serial(), 2, "no change, no new serial");
        list.prune(100);
        assert!(list.contains(b"a"), "kept through its exp");
        list.prune(101);
        assert!(!list.contains(b"a") && list.contains(b"b"));
        assert_eq!(list.serial(), 3);
    }

    #[test]
    fn full_list_refuses_and_bad_ids_are_refused() {
        let mut list = RevocationList::new();
        for i in 0..MAX_REVOKED {
            list.revoke(&(i as u32).to_be_bytes(), 1000, 0).unwrap();
        }
        assert_eq!(list.revoke(b"one more", 1000, 0), Err(RevokeError::Full));
        // Once old entries expire there is room again.
        assert_eq!(list.revoke(b"one more", 2000, 1001), Ok(true));
        assert_eq!(list.revoke(b"", 1, 0), Err(RevokeError::BadId));
        assert_eq!(list.revoke(&[0; MAX_CTI_LEN + 1], 1, 0), Err(RevokeError::BadId));
    }

    #[test]
    fn signed_list_verifies_with_its_content_type() {
        let root = SigningKey::from_bytes(&[5; 32]);
        let mut list = RevocationList::new();
        list.revoke(b"x", 10, 0).unwrap();
        let bytes = list.signed(&root, b"root", 5).unwrap();
        let v = cose::verify(&bytes, ContentType::RevocationList, |_| Some(root.verifying_key()))
            .unwrap();
        let body = RevocationBody::from_cbor(&v.payload).unwrap();
        assert_eq!((body.serial, body.entries.len()), (1, 1));
        assert!(cose::verify(&bytes, ContentType::Keyset, |_| Some(root.verifying_key())).is_err());
    }
}
