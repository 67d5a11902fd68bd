//! Signing and verification keys on disk, as COSE_Key structures (RFC 9052 §7,
//! OKP key type, curve Ed25519, `alg` -19, with `kid`).
//!
//! A private key file holds `d` (the 32-byte seed) and `x`; a public key file
//! holds only `x`. Both are plain CBOR, so other COSE tools (pycose's
//! `CoseKey.decode`) read them as they are.

use coset::{iana, CborSerializable, CoseKey, CoseKeyBuilder, KeyType, Label};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

const OKP_CRV: i64 = iana::OkpKeyParameter::Crv as i64;
const OKP_X: i64 = iana::OkpKeyParameter::X as i64;
const OKP_D: i64 = iana::OkpKeyParameter::D as i64;
/// Largest key file we read; a COSE_Key for Ed25519 is under 100 bytes.
const MAX_KEY_FILE: u64 = 1024;

/// The default key id: the first 8 bytes of SHA-256 over the public key.
pub fn default_kid(public: &VerifyingKey) -> Vec<u8> {
    Sha256::digest(public.as_bytes())[..8].to_vec()
}

/// Builds the COSE_Key of a public key, or of a private key when `secret` is given.
pub fn cose_key(public: &VerifyingKey, kid: &[u8], secret: Option<&SigningKey>) -> CoseKey {
    let mut b = CoseKeyBuilder::new_okp_key()
        .key_id(kid.to_vec())
        .algorithm(iana::Algorithm::Ed25519)
        .param(OKP_CRV, ciborium::Value::from(iana::EllipticCurve::Ed25519 as i64))
        .param(OKP_X, ciborium::Value::Bytes(public.as_bytes().to_vec()));
    if let Some(sk) = secret {
        b = b
            .param(OKP_D, ciborium::Value::Bytes(sk.to_bytes().to_vec()))
            .add_key_op(iana::KeyOperation::Sign);
    } else {
        b = b.add_key_op(iana::KeyOperation::Verify);
    }
    b.build()
}

/// A key read from a file: the public half always, the private half if present.
pub struct LoadedKey {
    pub kid: Vec<u8>,
    pub public: VerifyingKey,
    pub secret: Option<SigningKey>,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(format!("{}: too large for a key file", path.display()));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn bytes_param(key: &CoseKey, label: i64) -> Option<&[u8]> {
    key.params.iter().find_map(|(l, v)| match (l, v) {
        (Label::Int(n), ciborium::Value::Bytes(b)) if *n == label => Some(b.as_slice()),
        _ => None,
    })
}

/// Reads a COSE_Key file and checks that it is an Ed25519 key whose private
/// half (if any) matches its public half.
pub fn load(path: &Path) -> Result<LoadedKey, String> {
    let bytes = read_bounded(path)?;
    let what = |m: &str| format!("{}: {m}", path.display());
    let key = CoseKey::from_slice(&bytes).map_err(|_| what("not a COSE_Key"))?;
    if key.kty != KeyType::Assigned(iana::KeyType::OKP) {
        return Err(what("not an OKP key"));
    }
    let crv_ok = key.params.iter().any(|(l, v)| {
        *l == Label::Int(OKP_CRV)
            && v.as_integer() == Some((iana::EllipticCurve::Ed25519 as i64).into())
    });
    if !crv_ok {
        return Err(what("not an Ed25519 key"));
    }
    let x: [u8; 32] = bytes_param(&key, OKP_X)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| what("missing or bad public key (x)"))?;
    let public = VerifyingKey::from_bytes(&x).map_err(|_| what("invalid Ed25519 public key"))?;
    let secret = match bytes_param(&key, OKP_D) {
        None => None,
        Some(d) => {
            let seed: Zeroizing<[u8; 32]> =
                Zeroizing::new(d.try_into().map_err(|_| what("bad private key (d)"))?);
            let sk = SigningKey::from_bytes(&seed);
            if sk.verifying_key() != public {
                return Err(what("private key does not match its public key"));
            }
            Some(sk)
        }
    };
    let kid = if key.key_id.is_empty() { default_kid(&public) } else { key.key_id.clone() };
    Ok(LoadedKey { kid, public, secret })
}

/// Writes `bytes` to `path`, creating it with mode 0600 when `private`.
pub fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Generates a new signing key from the OS random source.
pub fn generate() -> Result<SigningKey, String> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| format!("OS random source: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Encodes a COSE_Key to CBOR bytes.
pub fn encode(key: CoseKey) -> Result<Vec<u8>, String> {
    key.to_vec().map_err(|e| format!("encoding COSE_Key: {e:?}"))
}
