//! Ed25519 keys as Portcullis names, stores and publishes them: the key id
//! derivation ([`kid_for`](crate::key::kid_for)), COSE_Key (RFC 9052 §7) encoding and decoding for
//! key files, and the verifier's [`KeyEntry`](crate::key::KeyEntry), with its conversion from the
//! wire form a keyset carries ([`KeyEntryWire`](crate::msg::KeyEntryWire)).
//!
//! A COSE_Key here is an OKP key on curve Ed25519 (`kty` 1, `crv` 6), with
//! `x` (the 32-byte public key), `d` (the 32-byte seed) for a private key,
//! `alg` -19 and a `kid`. Plain CBOR, so other COSE tools (pycose's
//! `CoseKey.decode`) read it as it is.

use alloc::vec::Vec;
use core::fmt;

use coset::cbor::value::Value;
use coset::{
    iana, AsCborValue, CborSerializable, CoseKey, CoseKeyBuilder, KeyType, Label,
    RegisteredLabelWithPrivate,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cose::{ALG_ED25519, ALG_EDDSA};
use crate::msg::{KeyEntryWire, MAX_KID_LEN};

/// Length of the key ids Portcullis derives with [`kid_for`].
pub const KID_LEN: usize = 8;

/// Longest COSE_Key accepted by [`decode`], in bytes; an Ed25519 COSE_Key is
/// under 150 bytes.
pub const MAX_COSE_KEY_LEN: usize = 1024;

const OKP_CRV: i64 = iana::OkpKeyParameter::Crv as i64;
const OKP_X: i64 = iana::OkpKeyParameter::X as i64;
const OKP_D: i64 = iana::OkpKeyParameter::D as i64;
const CRV_ED25519: i64 = iana::EllipticCurve::Ed25519 as i64;

/// The key id of a public key: the first [`KID_LEN`] bytes of its SHA-256.
pub fn kid_for(key: &VerifyingKey) -> [u8; KID_LEN] {
    let digest = Sha256::digest(key.as_bytes());
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&digest[..KID_LEN]);
    kid
}

/// Why a key could not be encoded, decoded or converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Longer than [`MAX_COSE_KEY_LEN`].
    TooLarge,
    /// Not a well-formed COSE_Key.
    NotCoseKey,
    /// The key type is not OKP, or the curve is not Ed25519.
    NotEd25519,
    /// An algorithm other than Ed25519 (-19) or EdDSA (-8).
    WrongAlgorithm,
    /// The public key (`x`) is missing, not 32 bytes, or not a valid point.
    BadPublicKey,
    /// The private key (`d`) is not 32 bytes.
    BadPrivateKey,
    /// The private key does not belong to the public key.
    KeyMismatch,
    /// The key id is longer than [`MAX_KID_LEN`] (or, to encode, empty).
    BadKid,
    /// CBOR encoding failed.
    Encoding,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyError::TooLarge => "too large for a COSE_Key",
            KeyError::NotCoseKey => "not a COSE_Key",
            KeyError::NotEd25519 => "not an Ed25519 (OKP) key",
            KeyError::WrongAlgorithm => "key algorithm is not Ed25519",
            KeyError::BadPublicKey => "missing or invalid Ed25519 public key (x)",
            KeyError::BadPrivateKey => "bad Ed25519 private key (d)",
            KeyError::KeyMismatch => "private key does not match its public key",
            KeyError::BadKid => "key id empty or too long",
            KeyError::Encoding => "CBOR encoding failed",
        })
    }
}

impl core::error::Error for KeyError {}

/// A decoded Ed25519 COSE_Key: the public half always, the private half if
/// the key holds one.
pub struct Ed25519Key {
    /// The key's `kid`, if it has a non-empty one.
    pub kid: Option<Vec<u8>>,
    /// The public key.
    pub public: VerifyingKey,
    /// The signing key, checked to match `public`.
    pub secret: Option<SigningKey>,
}

impl Ed25519Key {
    /// The key's `kid`, or [`kid_for`] of the public key if it has none.
    pub fn kid_or_derived(&self) -> Vec<u8> {
        self.kid.clone().unwrap_or_else(|| kid_for(&self.public).to_vec())
    }
}

fn builder(public: &VerifyingKey, kid: &[u8]) -> Result<CoseKeyBuilder, KeyError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(KeyError::BadKid);
    }
    Ok(CoseKeyBuilder::new_okp_key()
        .key_id(kid.to_vec())
        .algorithm(iana::Algorithm::Ed25519)
        .param(OKP_CRV, Value::Integer(CRV_ED25519.into()))
        .param(OKP_X, Value::Bytes(public.as_bytes().to_vec())))
}

/// Encodes the COSE_Key of a public key (`key_ops` verify).
pub fn encode_public(public: &VerifyingKey, kid: &[u8]) -> Result<Vec<u8>, KeyError> {
    let key = builder(public, kid)?.add_key_op(iana::KeyOperation::Verify).build();
    key.to_vec().map_err(|_| KeyError::Encoding)
}

/// Encodes the COSE_Key of a private key, with its public half (`key_ops`
/// sign). The bytes are zeroized when dropped.
pub fn encode_private(secret: &SigningKey, kid: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let seed = Zeroizing::new(secret.to_bytes());
    let key = builder(&secret.verifying_key(), kid)?
        .param(OKP_D, Value::Bytes(seed.to_vec()))
        .add_key_op(iana::KeyOperation::Sign)
        .build();
    let bytes = Zeroizing::new(key.to_vec().map_err(|_| KeyError::Encoding)?);
    Ok(bytes)
}

fn param(key: &CoseKey, label: i64) -> Option<&Value> {
    key.params.iter().find_map(|(l, v)| (*l == Label::Int(label)).then_some(v))
}

fn bytes_param(key: &CoseKey, label: i64) -> Option<&[u8]> {
    match param(key, label)? {
        Value::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Decodes an Ed25519 COSE_Key and checks it: OKP, curve Ed25519, `alg`
/// absent or -19/-8, a valid 32-byte `x`, and a `d` (if present) that is
/// the seed of `x`. A `kid` longer than [`MAX_KID_LEN`] is refused.
pub fn decode(bytes: &[u8]) -> Result<Ed25519Key, KeyError> {
    if bytes.len() > MAX_COSE_KEY_LEN {
        return Err(KeyError::TooLarge);
    }
    // Parsed without serde (crate::value), then shaped by coset.
    let value = crate::cose::decode_value(bytes).ok_or(KeyError::NotCoseKey)?;
    let key = CoseKey::from_cbor_value(value).map_err(|_| KeyError::NotCoseKey)?;
    if key.kty != KeyType::Assigned(iana::KeyType::OKP)
        || param(&key, OKP_CRV) != Some(&Value::Integer(CRV_ED25519.into()))
    {
        return Err(KeyError::NotEd25519);
    }
    match &key.alg {
        None => {}
        Some(RegisteredLabelWithPrivate::Assigned(alg))
            if matches!(*alg as i64, ALG_ED25519 | ALG_EDDSA) => {}
        Some(_) => return Err(KeyError::WrongAlgorithm),
    }
    if key.key_id.len() > MAX_KID_LEN {
        return Err(KeyError::BadKid);
    }
    let x: [u8; 32] =
        bytes_param(&key, OKP_X).and_then(|b| b.try_into().ok()).ok_or(KeyError::BadPublicKey)?;
    let public = VerifyingKey::from_bytes(&x).map_err(|_| KeyError::BadPublicKey)?;
    let secret = match param(&key, OKP_D) {
        None => None,
        Some(Value::Bytes(d)) => {
            let seed: Zeroizing<[u8; 32]> =
                Zeroizing::new(d.as_slice().try_into().map_err(|_| KeyError::BadPrivateKey)?);
            let secret = SigningKey::from_bytes(&seed);
            if secret.verifying_key() != public {
                return Err(KeyError::KeyMismatch);
            }
            Some(secret)
        }
        Some(_) => return Err(KeyError::BadPrivateKey),
    };
    let kid = (!key.key_id.is_empty()).then(|| key.key_id.clone());
    Ok(Ed25519Key { kid, public, secret })
}

/// One verification key of cryptod, with the window in which it signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Key id, as carried in the token's protected header.
    pub kid: Vec<u8>,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
    /// First `iat` (epoch seconds) of tokens this key may have signed.
    pub not_before: u64,
    /// Last `iat` of tokens this key may have signed. The key is retired (its
    /// tokens refused as [`crate::token::VerifyError::UnknownKid`]) once
    /// `now > not_after + skew`.
    pub not_after: u64,
}

impl KeyEntry {
    /// Whether the key may be used at `now` (not yet retired).
    pub(crate) fn live(&self, now: u64, skew: u64) -> bool {
        now <= self.not_after.saturating_add(skew)
    }

    /// Whether a token issued at `iat` lies inside the key's window.
    pub(crate) fn signed_at(&self, iat: u64) -> bool {
        self.not_before <= iat && iat <= self.not_after
    }
}

/// A keyset entry as published on the wire: its algorithm must be -19 or -8
/// and its public key a valid Ed25519 point.
impl TryFrom<&KeyEntryWire> for KeyEntry {
    type Error = KeyError;

    fn try_from(e: &KeyEntryWire) -> Result<KeyEntry, KeyError> {
        if !matches!(e.alg, ALG_ED25519 | ALG_EDDSA) {
            return Err(KeyError::WrongAlgorithm);
        }
        let key = VerifyingKey::from_bytes(&e.pubkey).map_err(|_| KeyError::BadPublicKey)?;
        Ok(KeyEntry { kid: e.kid.clone(), key, not_before: e.not_before, not_after: e.not_after })
    }
}

/// The wire form of a verification key, as cryptod publishes it (`alg` -19).
impl From<&KeyEntry> for KeyEntryWire {
    fn from(e: &KeyEntry) -> KeyEntryWire {
        KeyEntryWire {
            kid: e.kid.clone(),
            alg: ALG_ED25519,
            pubkey: e.key.to_bytes(),
            not_before: e.not_before,
            not_after: e.not_after,
        }
    }
}
