//! The verifier side of cryptod's published objects: a keyset or revocation
//! list is accepted only if the long-term root key signed it, and only if it
//! is not older than the one already held (no rollback).

use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use ed25519_dalek::VerifyingKey;
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::envelope::{Message, Role};
use portcullis_proto::msg::{
    ErrorCode, KeysetBody, KeysetReq, RequestId, RevocationBody, RevocationListReq,
};
use portcullis_proto::token::{KeyEntry, Keyset, RevokedSet};

use crate::common::AppError;
use crate::link::{Channel, Framed};

/// Why a published object was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustError {
    /// Not signed by the root key, or not the expected kind of object.
    Signature(CoseError),
    /// The payload does not decode.
    Malformed,
    /// Older than what is already held.
    Rollback,
    /// A key entry with an unusable public key or algorithm.
    BadKey,
    /// The keyset's root chain does not lead from the pinned root.
    Chain(portcullis_proto::succession::ChainError),
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Signature(e) => write!(f, "not signed by the root key: {e}"),
            TrustError::Malformed => f.write_str("malformed payload"),
            TrustError::Rollback => f.write_str("older than the one held"),
            TrustError::BadKey => f.write_str("unusable key entry"),
            TrustError::Chain(e) => write!(f, "root chain: {e}"),
        }
    }
}

impl core::error::Error for TrustError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            TrustError::Signature(e) => Some(e),
            _ => None,
        }
    }
}

/// What a verifier trusts: the root key, and the newest keyset and
/// revocation list it signed. The root is the pinned one until a keyset
/// carries a root chain that leads from it to a newer root (see
/// `portcullis_proto::succession`) and is signed by that newer root: then
/// the newer root is pinned instead.
pub struct Trust {
    root: VerifyingKey,
    root_kid: Vec<u8>,
    /// The pinned root's succession version (0: the provisioned root).
    root_version: u64,
    keyset: Keyset,
    keyset_version: Option<u64>,
    revoked: RevokedSet,
    revocation_serial: Option<u64>,
    /// The identity revocation list's serial last accepted.
    identity_serial: Option<u64>,
}

impl Trust {
    /// Trust anchored in the root public key `root` with key id `root_kid`.
    pub fn new(root: VerifyingKey, root_kid: &[u8]) -> Trust {
        Trust {
            root,
            root_kid: root_kid.to_vec(),
            root_version: 0,
            keyset: Keyset::default(),
            keyset_version: None,
            revoked: RevokedSet::default(),
            revocation_serial: None,
            identity_serial: None,
        }
    }

    fn open(&self, bytes: &[u8], ct: ContentType) -> Result<Vec<u8>, TrustError> {
        let root = self.root;
        let kid = self.root_kid.clone();
        cose::verify(bytes, ct, move |k| (k == kid.as_slice()).then_some(root))
            .map(|v| v.into_inner().payload)
            .map_err(TrustError::Signature)
    }

    /// Role a signed keyset (the `signed` field of a `keyset` message).
    pub fn accept_keyset(&mut self, signed: &[u8]) -> Result<(), TrustError> {
        // The chain is read before the signature is checked: only to find
        // the root to check it with, which the chain must lead to from the
        // pinned one (each statement verified).
        let seen = portcullis_proto::danger::open_unverified(signed)
            .map_err(TrustError::Signature)?
            .into_unverified();
        let chain = KeysetBody::from_cbor(&seen.payload)
            .map_err(|_| TrustError::Malformed)?
            .root_chain
            .unwrap_or_default();
        let (root, root_version) =
            portcullis_proto::succession::follow(self.root, self.root_version, &chain)
                .map_err(TrustError::Chain)?;
        let kid = portcullis_proto::key::kid_for(&root);
        let payload = cose::verify(signed, ContentType::Keyset, |k| (k == kid).then_some(root))
            .map_err(TrustError::Signature)?
            .into_inner()
            .payload;
        let body = KeysetBody::from_cbor(&payload).map_err(|_| TrustError::Malformed)?;
        if self.keyset_version.is_some_and(|v| body.version < v) {
            return Err(TrustError::Rollback);
        }
        let mut keys = Keyset::default();
        for e in &body.keys {
            let entry = KeyEntry::try_from(e).map_err(|_| TrustError::BadKey)?;
            keys.push(entry).map_err(|_| TrustError::BadKey)?;
        }
        self.keyset = keys;
        self.keyset_version = Some(body.version);
        if root_version > self.root_version {
            (self.root, self.root_kid, self.root_version) = (root, kid.to_vec(), root_version);
        }
        Ok(())
    }

    /// Role a signed revocation list (the `signed` field of a
    /// `revocation_list` message).
    pub fn accept_revocations(&mut self, signed: &[u8]) -> Result<(), TrustError> {
        let body = RevocationBody::from_cbor(&self.open(signed, ContentType::RevocationList)?)
            .map_err(|_| TrustError::Malformed)?;
        if self.revocation_serial.is_some_and(|s| body.serial < s) {
            return Err(TrustError::Rollback);
        }
        // The identity list has its own serial: a list without it, or with
        // an older one, is a rollback once one has been seen.
        if self.identity_serial.is_some_and(|s| body.identity_serial.is_none_or(|n| n < s)) {
            return Err(TrustError::Rollback);
        }
        let ids = body.entries.iter().map(|e| e.cti.clone()).collect();
        self.revoked = RevokedSet::from_ids(ids).with_names(body.revoked_names.unwrap_or_default());
        self.revocation_serial = Some(body.serial);
        self.identity_serial = body.identity_serial;
        Ok(())
    }

    /// Asks cryptod for its current keyset over `link` and accepts it.
    pub fn fetch_keyset<C: Channel, A: Role>(
        &mut self,
        link: &mut Framed<C, A>,
        request_id: RequestId,
        timeout: Duration,
    ) -> Result<(), AppError> {
        match link.call(&Message::KeysetReq(KeysetReq { request_id }), timeout)? {
            Message::Keyset(k) => self
                .accept_keyset(&k.signed)
                .map_err(|e| AppError::Protocol(alloc::format!("keyset refused: {e}"))),
            other => Err(unexpected("keyset", &other)),
        }
    }

    /// Asks cryptod for its current revocation list over `link` and accepts it.
    pub fn fetch_revocations<C: Channel, A: Role>(
        &mut self,
        link: &mut Framed<C, A>,
        request_id: RequestId,
        timeout: Duration,
    ) -> Result<(), AppError> {
        match link.call(&Message::RevocationListReq(RevocationListReq { request_id }), timeout)? {
            Message::RevocationList(l) => self
                .accept_revocations(&l.signed)
                .map_err(|e| AppError::Protocol(alloc::format!("revocation list refused: {e}"))),
            other => Err(unexpected("revocation list", &other)),
        }
    }

    /// The token verification keys.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// The revoked token ids.
    pub fn revoked(&self) -> &RevokedSet {
        &self.revoked
    }

    /// The pinned root key and its succession version (0: the provisioned
    /// root).
    pub fn root(&self) -> (&VerifyingKey, u64) {
        (&self.root, self.root_version)
    }

    /// Whether a keyset has been accepted.
    pub fn has_keyset(&self) -> bool {
        self.keyset_version.is_some()
    }
}

/// Reads a root public key from its COSE_Key bytes (`root.pub` as written
/// by `portcullis provision`): returns the key and its key id, which the
/// file must carry.
pub fn root_from_cose_key(bytes: &[u8]) -> Option<(VerifyingKey, Vec<u8>)> {
    let key = portcullis_proto::key::decode(bytes).ok()?;
    Some((key.public, key.kid?))
}

/// Why an answer is not the `what` asked for: its kind, and an error's
/// code and reason in full (a `busy` cryptod is not a broken one).
fn unexpected(what: &str, other: &Message) -> AppError {
    match other {
        Message::Error(e) if e.code == ErrorCode::Busy => AppError::Busy(e.reason.clone()),
        Message::Error(e) => AppError::Protocol(alloc::format!(
            "expected {what}, got error {} ({})",
            e.code.as_str(),
            e.reason
        )),
        _ => AppError::Protocol(alloc::format!("expected {what}, got {}", other.kind().as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;
    use ed25519_dalek::SigningKey;
    use portcullis_proto::key::kid_for;
    use portcullis_proto::token::Revocations;

    fn list(root: &SigningKey, serial: u64, names: Option<(u64, &[&str])>) -> Vec<u8> {
        let body = RevocationBody {
            serial,
            issued_at: 1,
            entries: vec![],
            revoked_names: names.map(|(_, n)| n.iter().map(|s| String::from(*s)).collect()),
            identity_serial: names.map(|(s, _)| s),
            revoked_devices: None,
        };
        let kid = kid_for(&root.verifying_key());
        cose::sign(root, &kid, ContentType::RevocationList, &body.to_cbor().unwrap()).unwrap()
    }

    #[test]
    fn revoked_names_are_taken_and_cannot_roll_back() {
        let root = SigningKey::from_bytes(&[3; 32]);
        let mut t = Trust::new(root.verifying_key(), &kid_for(&root.verifying_key()));
        t.accept_revocations(&list(&root, 1, None)).unwrap();
        assert!(!t.revoked().is_name_revoked("policy_pd"));
        t.accept_revocations(&list(&root, 1, Some((1, &["policy_pd"])))).unwrap();
        assert!(t.revoked().is_name_revoked("policy_pd"));
        // The same token serial without the names, or with an older
        // identity serial, is a rollback.
        assert_eq!(t.accept_revocations(&list(&root, 2, None)), Err(TrustError::Rollback));
        assert_eq!(
            t.accept_revocations(&list(&root, 2, Some((0, &[])))),
            Err(TrustError::Rollback)
        );
        assert!(t.revoked().is_name_revoked("policy_pd"));
        t.accept_revocations(&list(&root, 2, Some((2, &[])))).unwrap();
        assert!(!t.revoked().is_name_revoked("policy_pd"));
    }
}
