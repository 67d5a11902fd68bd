//! COSE_Sign1 (RFC 9052) signed with Ed25519, and the signed objects that are
//! not tokens: keysets, revocation lists, audit seals and attestations.
//!
//! A signed object carries its kind as a text content type (header label 3) in
//! the protected header, so one kind can never be accepted as another, and a
//! token (which has no content type) is never accepted as a signed object.
//!
//! The decoding helpers here are shared with [`crate::token`]: input is size
//! capped before it is parsed, CBOR nesting is limited, trailing bytes are
//! refused, and signatures are checked with `verify_strict` over the original
//! protected-header bytes.

use alloc::vec::Vec;
use core::fmt;

use coset::cbor::value::Value;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use crate::cbor::{text_enum, Writer};
use crate::Verified;

/// COSE algorithm Ed25519 (RFC 9864). Used for everything we sign.
pub const ALG_ED25519: i64 = -19;
/// COSE algorithm EdDSA (RFC 9053, deprecated by RFC 9864); accepted on input
/// and treated as Ed25519 (our keys are Ed25519 keys).
pub const ALG_EDDSA: i64 = -8;
/// CBOR tag of a COSE_Sign1 (RFC 9052).
pub const TAG_COSE_SIGN1: u64 = 18;
/// CBOR tag of a CWT (RFC 8392); only ever accepted around a tagged token.
pub const TAG_CWT: u64 = 61;
/// Largest signed object accepted or produced, in bytes: one envelope.
pub const MAX_SIGNED_OBJECT_LEN: usize = crate::envelope::MAX_MESSAGE_LEN;
/// Deepest CBOR nesting accepted in any signed structure or payload we parse:
/// the envelope's limit.
pub(crate) use crate::envelope::MAX_DEPTH;
/// Longest key id we produce (input is only bounded by the object size).
pub use crate::msg::MAX_KID_LEN;

text_enum! {
    /// The kinds of signed object that are not tokens; the wire name is the
    /// media type text carried in header label 3.
    pub enum ContentType {
        /// cryptod's token verification keys with their validity windows.
        Keyset = "application/portcullis.keyset+cbor",
        /// The list of revoked token ids.
        RevocationList = "application/portcullis.revocation-list+cbor",
        /// The seal over one batch of hash-chained audit records.
        AuditSeal = "application/portcullis.audit-seal+cbor",
        /// A signed statement about a domain's state.
        Attestation = "application/portcullis.attestation+cbor",
        /// An admin command, signed by the offline admin key.
        AdminCommand = "application/portcullis.admin-command+cbor",
        /// An enforcer's signed outcome of a decision.
        Outcome = "application/portcullis.outcome+cbor",
        /// A root key's successor, signed by the root key it succeeds.
        RootSuccession = "application/portcullis.root-succession+cbor",
    }
}

/// A signed object's key id, kind and payload: [`verify`] returns it as
/// [`Verified`], [`crate::danger::open_unverified`] as
/// [`crate::danger::Unverified`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedObject {
    /// The key id from the protected header.
    pub kid: Vec<u8>,
    /// The content type from the protected header.
    pub content_type: ContentType,
    /// The signed payload.
    pub payload: Vec<u8>,
}

/// Why a signed object could not be produced or accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoseError {
    /// Larger than [`MAX_SIGNED_OBJECT_LEN`].
    TooLarge,
    /// Not a well-formed COSE_Sign1 of the shape we accept.
    Malformed,
    /// An algorithm other than Ed25519 (-19) or EdDSA (-8), or none.
    WrongAlgorithm,
    /// No content type, or not the one expected.
    WrongContentType,
    /// No key id, or no key known for it.
    UnknownKid,
    /// The signature does not verify.
    BadSignature,
    /// Signing was asked for with an empty or over-long key id.
    InvalidKid,
    /// CBOR encoding failed.
    Encoding,
}

impl fmt::Display for CoseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CoseError::TooLarge => "signed object too large",
            CoseError::Malformed => "malformed COSE_Sign1",
            CoseError::WrongAlgorithm => "signature algorithm is not Ed25519",
            CoseError::WrongContentType => "content type missing or not the expected one",
            CoseError::UnknownKid => "no key for this key id",
            CoseError::BadSignature => "signature does not verify",
            CoseError::InvalidKid => "key id empty or too long",
            CoseError::Encoding => "CBOR encoding failed",
        })
    }
}

impl core::error::Error for CoseError {}

/// Signs `payload` as a signed object of kind `ct`: a tagged COSE_Sign1 whose
/// protected header is `{1: -19, 3: ct, 4: kid}`.
pub fn sign(
    key: &SigningKey,
    kid: &[u8],
    ct: ContentType,
    payload: &[u8],
) -> Result<Vec<u8>, CoseError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(CoseError::InvalidKid);
    }
    let bytes = sign1(key, &protected_header(Some(ct), kid), payload);
    if bytes.len() > MAX_SIGNED_OBJECT_LEN {
        return Err(CoseError::TooLarge);
    }
    Ok(bytes)
}

/// Verifies a signed object that must be of kind `ct`, looking its key up with
/// `key_for(kid)`. Checks, in order: size, shape, algorithm, content type, key
/// id, signature.
pub fn verify(
    bytes: &[u8],
    ct: ContentType,
    key_for: impl Fn(&[u8]) -> Option<VerifyingKey>,
) -> Result<Verified<SignedObject>, CoseError> {
    let object = open(bytes)?;
    if !object.alg_accepted() {
        return Err(CoseError::WrongAlgorithm);
    }
    if object.our_content_type() != Some(ct) {
        return Err(CoseError::WrongContentType);
    }
    if object.kid.is_empty() {
        return Err(CoseError::UnknownKid);
    }
    let key = key_for(&object.kid).ok_or(CoseError::UnknownKid)?;
    if !object.signature_ok(&key) {
        return Err(CoseError::BadSignature);
    }
    Ok(Verified::new(SignedObject { kid: object.kid, content_type: ct, payload: object.payload }))
}

/// Verifies any COSE_Sign1 with an attached payload (tagged 18 or untagged)
/// against one Ed25519 key and returns the payload. Only the protected `alg`
/// (-19 or -8) and the signature (empty external AAD) are checked; other
/// headers are ignored, except a protected `crit`, which is refused. Low
/// level: prefer [`verify`] or [`crate::token::verify`].
pub fn verify_sign1_raw(bytes: &[u8], key: &VerifyingKey) -> Result<Vec<u8>, CoseError> {
    if bytes.len() > MAX_SIGNED_OBJECT_LEN {
        return Err(CoseError::TooLarge);
    }
    let object = Sign1::decode(bytes, false).ok_or(CoseError::Malformed)?;
    if object.crit {
        return Err(CoseError::Malformed);
    }
    if !object.alg_accepted() {
        return Err(CoseError::WrongAlgorithm);
    }
    if !object.signature_ok(key) {
        return Err(CoseError::BadSignature);
    }
    Ok(object.payload)
}

/// Size cap, decode, and the signed-object shape: a protected header holding
/// only alg, content type and kid. The unprotected header is ignored.
pub(crate) fn open(bytes: &[u8]) -> Result<Sign1, CoseError> {
    if bytes.len() > MAX_SIGNED_OBJECT_LEN {
        return Err(CoseError::TooLarge);
    }
    let object = Sign1::decode(bytes, false).ok_or(CoseError::Malformed)?;
    if object.crit || object.other_protected {
        return Err(CoseError::Malformed);
    }
    Ok(object)
}

/// Decodes one CBOR item from `bytes` with nesting limited to [`MAX_DEPTH`];
/// `None` on any error or on trailing bytes.
pub(crate) fn decode_value(bytes: &[u8]) -> Option<Value> {
    crate::value::decode_value(bytes, MAX_DEPTH)
}

/// A decoded COSE_Sign1 (RFC 9052 §4.2) with an attached payload. Only the
/// protected header parameters we act on are decoded (the unprotected header
/// is never read); the protected header's original bytes are kept for the
/// signature check.
pub(crate) struct Sign1 {
    protected: Vec<u8>,
    /// Protected `alg` (label 1), if present and an integer.
    pub alg: Option<i64>,
    /// Protected `kid` (label 4); empty if absent.
    pub kid: Vec<u8>,
    /// Protected content type (label 3), if present.
    pub content_type: Option<Value>,
    /// Whether the protected header has `crit` (label 2).
    pub crit: bool,
    /// Whether the protected header has any label other than 1, 2, 3, 4.
    pub other_protected: bool,
    /// The payload.
    pub payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Sign1 {
    /// Decodes a COSE_Sign1, tagged 18 or untagged; with `allow_cwt_tag`, also
    /// inside a CWT tag 61 (which must wrap the tag 18). `None` if it is not
    /// one, if a header label we read is repeated or mistyped, or if the
    /// payload is detached.
    pub fn decode(bytes: &[u8], allow_cwt_tag: bool) -> Option<Sign1> {
        let value = match decode_value(bytes)? {
            Value::Tag(TAG_CWT, inner) if allow_cwt_tag => match *inner {
                Value::Tag(TAG_COSE_SIGN1, inner) => *inner,
                _ => return None,
            },
            Value::Tag(TAG_COSE_SIGN1, inner) => *inner,
            Value::Tag(..) => return None,
            untagged => untagged,
        };
        let Value::Array(items) = value else {
            return None;
        };
        let [protected, unprotected, payload, signature]: [Value; 4] = items.try_into().ok()?;
        // The unprotected header is not covered by the signature and is never
        // read; it only has to be a map.
        let (Value::Bytes(protected), Value::Map(_)) = (protected, unprotected) else {
            return None;
        };
        let (Value::Bytes(payload), Value::Bytes(signature)) = (payload, signature) else {
            return None;
        };
        let mut object = Sign1 {
            protected: Vec::new(),
            alg: None,
            kid: Vec::new(),
            content_type: None,
            crit: false,
            other_protected: false,
            payload,
            signature,
        };
        // An empty bstr stands for an empty map (RFC 9052 §3).
        if !protected.is_empty() {
            let Value::Map(entries) = decode_value(&protected)? else {
                return None;
            };
            object.read_protected(entries)?;
        }
        object.protected = protected;
        Some(object)
    }

    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn read_protected(&mut self, entries: Vec<(Value, Value)>) -> Option<()> {
        let mut seen = [false; 5];
        for (label, value) in entries {
            let label = match label {
                Value::Integer(i) => i64::try_from(i).ok(),
                _ => None,
            };
            let Some(slot) =
                label.and_then(|l| usize::try_from(l).ok()).filter(|l| (1..=4).contains(l))
            else {
                self.other_protected = true;
                continue;
            };
            if core::mem::replace(seen.get_mut(slot)?, true) {
                return None;
            }
            match (slot, value) {
                (1, Value::Integer(alg)) => self.alg = i64::try_from(alg).ok(),
                (1, Value::Text(_)) => self.alg = None,
                (2, _) => self.crit = true,
                (3, ct @ (Value::Text(_) | Value::Integer(_))) => self.content_type = Some(ct),
                (4, Value::Bytes(kid)) => self.kid = kid,
                _ => return None,
            }
        }
        Some(())
    }

    /// Whether `alg` is Ed25519 (-19) or EdDSA (-8).
    pub fn alg_accepted(&self) -> bool {
        matches!(self.alg, Some(ALG_ED25519 | ALG_EDDSA))
    }

    /// The content type, if it is one of ours.
    pub fn our_content_type(&self) -> Option<ContentType> {
        match &self.content_type {
            Some(Value::Text(text)) => ContentType::parse(text),
            _ => None,
        }
    }

    /// Checks the Ed25519 signature over `Sig_structure1` (empty external
    /// AAD) with `verify_strict`.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        let Ok(signature) = Signature::from_slice(&self.signature) else {
            return false;
        };
        key.verify_strict(&to_be_signed(&self.protected, &self.payload), &signature).is_ok()
    }
}

/// `Sig_structure1 = ["Signature1", protected, h'', payload]` (RFC 9052
/// §4.4), over the protected header's bytes.
fn to_be_signed(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    const PREFIX: &[u8] = b"\x84\x6aSignature1";
    let mut tbs = Vec::with_capacity(PREFIX.len() + 19 + protected.len() + payload.len());
    tbs.extend_from_slice(PREFIX);
    push_bstr(&mut tbs, protected);
    push_bstr(&mut tbs, &[]);
    push_bstr(&mut tbs, payload);
    tbs
}

/// Appends `bytes` as a definite-length CBOR byte string.
fn push_bstr(out: &mut Vec<u8>, bytes: &[u8]) {
    const BSTR: u8 = 0x40;
    let len = bytes.len() as u64;
    match len {
        0..=23 => out.push(BSTR | len as u8),
        24..=0xff => out.extend_from_slice(&[BSTR | 24, len as u8]),
        0x100..=0xffff => {
            out.push(BSTR | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(BSTR | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(BSTR | 27);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
}

/// The protected header we sign with: `{1: -19, 3: ct, 4: kid}`, or
/// `{1: -19, 4: kid}` without a content type (tokens), labels in ascending
/// order (what coset writes for the same header; a test compares).
pub(crate) fn protected_header(ct: Option<ContentType>, kid: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.map(if ct.is_some() { 3 } else { 2 });
    w.int(1);
    w.int(ALG_ED25519);
    if let Some(ct) = ct {
        w.int(3);
        w.text(ct.as_str());
    }
    w.int(4);
    w.bytes(kid);
    w.into_bytes()
}

/// Signs `payload` as a tagged COSE_Sign1 (tag 18) with the given protected
/// header bytes and an empty unprotected header, written with the crate's
/// own CBOR writer (no coset or serde code in an image that only signs).
pub(crate) fn sign1(key: &SigningKey, protected: &[u8], payload: &[u8]) -> Vec<u8> {
    Unsigned::new(protected, payload).sign(key)
}

/// A COSE_Sign1 as `sign1` makes it, before its signature: the bytes to sign
/// and the object with room for the signature as its last 64 bytes. Signing
/// it later gives byte for byte what signing at once gives (Ed25519 is
/// deterministic); it never leaves this type unsigned.
pub struct Unsigned {
    tbs: Vec<u8>,
    object: Vec<u8>,
}

impl Unsigned {
    pub(crate) fn new(protected: &[u8], payload: &[u8]) -> Self {
        Unsigned {
            tbs: to_be_signed(protected, payload),
            object: assemble(protected, payload, &[0; 64]),
        }
    }

    /// Length of the signed object.
    pub fn len(&self) -> usize {
        self.object.len()
    }

    /// Never: a COSE_Sign1 has at least its signature.
    pub fn is_empty(&self) -> bool {
        self.object.is_empty()
    }

    /// Signs with `key`: the tagged COSE_Sign1.
    pub fn sign(mut self, key: &SigningKey) -> Vec<u8> {
        let signature = crate::ed25519::sign(key, &self.tbs);
        // The signature is the array's last item: a 64-byte string ends it.
        if let Some(last) = self.object.last_chunk_mut::<64>() {
            *last = signature;
        }
        self.object
    }
}

/// The signed object [`sign`] makes for `kid`, `ct` and `payload`, put
/// together from its signature alone (Ed25519 and the encoding are
/// deterministic, so this is byte for byte what the signer made): for a
/// statement carried as its fields and signature. Verify it like any other.
pub fn rebuild(kid: &[u8], ct: ContentType, payload: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    assemble(&protected_header(Some(ct), kid), payload, signature)
}

fn assemble(protected: &[u8], payload: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut w = Writer::default();
    w.tag(TAG_COSE_SIGN1);
    w.array(4);
    w.bytes(protected);
    w.map(0);
    w.bytes(payload);
    w.bytes(signature);
    w.into_bytes()
}
