//! The revocation list: revoked token ids, kept until their tokens expire.
//!
//! Rules:
//! - an entry is `(cti, exp)`; it is kept while `now <= exp` and pruned after;
//! - every change (an id added, entries pruned) bumps the serial, so a
//!   verifier can refuse an older list;
//! - at most [`MAX_REVOKED`] entries; when full, a new revocation is refused
//!   (the caller reports `unavailable`; nothing is dropped early);
//! - a client's revocation ([`RevocationList::revoke_for`]) is also bounded
//!   by what it costs the sealed state, which must stay small enough to
//!   persist (one xenstore value under Xen): the list's entries take at most
//!   [`CLIENT_REVOKED_BYTES`] sealed bytes, and one client's own live
//!   entries at most [`PEER_REVOKED_BYTES`], so no client can make the
//!   state too large to persist (which would hold every answer that waits
//!   for it) or use up the others' room; the admin path is bounded by
//!   [`MAX_REVOKED`] only;
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

/// Sealed bytes the live entries may take when a client revokes: with
/// cryptod's 16-byte token ids, 61 entries (21 of the longest ids).
pub const CLIENT_REVOKED_BYTES: usize = 1536;

/// Sealed bytes one client's own live entries may take: 20 of cryptod's
/// token ids (7 of the longest).
pub const PEER_REVOKED_BYTES: usize = 512;

/// An entry's size in the sealed state: `u8 cti_len || cti || u64 exp`.
fn sealed_len(cti: &[u8]) -> usize {
    1 + cti.len() + 8
}

/// Why a token id could not be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeError {
    /// The list already holds [`MAX_REVOKED`] live entries, or (a client's
    /// revocation) [`CLIENT_REVOKED_BYTES`] of them.
    Full,
    /// The client's own live entries take [`PEER_REVOKED_BYTES`].
    PeerShare,
    /// The id is empty or longer than the protocol allows.
    BadId,
}

impl fmt::Display for RevokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevokeError::Full => "revocation list is full",
            RevokeError::PeerShare => "caller's revocation share is full",
            RevokeError::BadId => "token id empty or too long",
        })
    }
}

impl core::error::Error for RevokeError {}

/// Revoked token ids with their expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    entries: SortedMap<Vec<u8>, u64>,
    /// What each client revocation of this boot takes: the client's domid,
    /// the entry's expiry and its sealed bytes (not sealed: an earlier
    /// boot's entries, and the admin's, belong to no client).
    shares: Vec<(u32, u64, usize)>,
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
        let mut list = RevocationList { serial, ..RevocationList::default() };
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

    /// Revokes `cti` until `exp` (the admin's revocation). Returns false if
    /// it was already revoked (its expiry is then extended if `exp` is
    /// later).
    pub fn revoke(&mut self, cti: &[u8], exp: u64, now: u64) -> Result<bool, RevokeError> {
        self.revoke_as(None, cti, exp, now)
    }

    /// [`RevocationList::revoke`] for the client domain `client`, within
    /// [`CLIENT_REVOKED_BYTES`] and [`PEER_REVOKED_BYTES`]; an id already
    /// on the list keeps its expiry.
    pub fn revoke_for(
        &mut self,
        client: u32,
        cti: &[u8],
        exp: u64,
        now: u64,
    ) -> Result<bool, RevokeError> {
        self.revoke_as(Some(client), cti, exp, now)
    }

    fn revoke_as(
        &mut self,
        client: Option<u32>,
        cti: &[u8],
        exp: u64,
        now: u64,
    ) -> Result<bool, RevokeError> {
        if cti.is_empty() || cti.len() > MAX_CTI_LEN {
            return Err(RevokeError::BadId);
        }
        self.prune(now);
        if let Some(old) = self.entries.get_mut(cti) {
            // An entry already covers its token's life (a token lives at
            // most as long as an entry); a client does not extend it, so
            // it cannot keep the list full by revoking its entries again.
            if client.is_none() && exp > *old {
                *old = exp;
                self.serial = self.serial.saturating_add(1);
            }
            return Ok(false);
        }
        if self.entries.len() >= MAX_REVOKED {
            return Err(RevokeError::Full);
        }
        if let Some(client) = client {
            let cost = sealed_len(cti);
            let all: usize = self.entries.keys().map(|c| sealed_len(c)).sum();
            if all.saturating_add(cost) > CLIENT_REVOKED_BYTES {
                return Err(RevokeError::Full);
            }
            let own: usize =
                self.shares.iter().filter(|(dom, ..)| *dom == client).map(|s| s.2).sum();
            if own.saturating_add(cost) > PEER_REVOKED_BYTES {
                return Err(RevokeError::PeerShare);
            }
            self.shares.push((client, exp, cost));
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
        self.shares.retain(|(_, exp, _)| *exp >= now);
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
    fn clients_revoke_within_their_share_and_the_lists_sealed_size() {
        let long = |c: u8, i: u8| {
            let mut cti = alloc::vec![c; MAX_CTI_LEN];
            cti[0] = i;
            cti
        };
        let per = sealed_len(&long(0, 0));
        let mut list = RevocationList::new();
        // One client: its share, then refused (nothing added).
        for i in 0..PEER_REVOKED_BYTES / per {
            assert_eq!(list.revoke_for(1, &long(b'a', i as u8), 300, 0), Ok(true));
        }
        assert_eq!(list.revoke_for(1, b"one more", 300, 0), Err(RevokeError::PeerShare));
        // Its share is its own: another client still has room, and an id
        // already on the list costs nothing.
        assert_eq!(list.revoke_for(6, b"one more", 300, 0), Ok(true));
        assert_eq!(list.revoke_for(1, b"one more", 400, 0), Ok(false));
        assert!(list.entries().any(|(cti, exp)| cti == b"one more" && exp == 300), "not extended");
        // Every client's entries together stay within the total.
        let mut refused = None;
        for (n, c) in [b'b', b'c', b'd', b'e'].into_iter().enumerate() {
            for i in 0..PEER_REVOKED_BYTES / per {
                match list.revoke_for(u32::from(c), &long(c, i as u8), 300, 0) {
                    Ok(true) => {}
                    Err(RevokeError::Full) => {
                        refused.get_or_insert(n);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let sealed: usize = list.entries().map(|(cti, _)| sealed_len(cti)).sum();
        assert!(sealed <= CLIENT_REVOKED_BYTES, "{sealed}");
        assert!(sealed + per > CLIENT_REVOKED_BYTES, "full: {sealed}");
        // a's 511 bytes, f's 12, b's 511: the list fills during c's.
        assert_eq!(refused, Some(1), "the second of them found the list full");
        // The admin's revocation is bounded by MAX_REVOKED only.
        assert_eq!(list.revoke(&long(b'z', 0), 300, 0), Ok(true));
        // Expired entries free the room they took.
        assert_eq!(list.revoke_for(1, &long(b'a', 0), 500, 301), Ok(true));
        assert!(list.entries().all(|(_, exp)| exp >= 301));
    }

    #[test]
    fn an_earlier_boots_entries_count_toward_the_total_only() {
        let ctis: Vec<Vec<u8>> = (0..=255u8).map(|i| alloc::vec![i; MAX_CTI_LEN]).collect();
        let mut list = RevocationList::restore(ctis.iter().map(|c| (c.as_slice(), 300)), 9);
        assert_eq!(list.revoke_for(1, b"new", 300, 0), Err(RevokeError::Full));
        assert_eq!(list.revoke(b"new", 300, 0), Ok(true));
        let mut small = RevocationList::restore([(&b"old"[..], 300)], 9);
        assert_eq!(small.revoke_for(1, b"new", 300, 0), Ok(true));
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
