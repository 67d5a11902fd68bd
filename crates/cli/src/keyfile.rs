//! Signing and verification keys on disk, as COSE_Key structures (RFC 9052 §7,
//! OKP key type, curve Ed25519, `alg` -19, with `kid`).
//!
//! A private key file holds `d` (the 32-byte seed) and `x`; a public key file
//! holds only `x`. Both are plain CBOR, so other COSE tools (pycose's
//! `CoseKey.decode`) read them as they are. The encoding and its checks are
//! `portcullis_proto::key`'s; this module only reads and writes the files.

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::key::{self, MAX_COSE_KEY_LEN};
use std::fs;
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// A key read from a file: the public half always, the private half if present.
pub struct LoadedKey {
    pub kid: Vec<u8>,
    pub public: VerifyingKey,
    pub secret: Option<SigningKey>,
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_COSE_KEY_LEN as u64 {
        return Err(format!("{}: too large for a key file", path.display()));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a COSE_Key file and checks that it is an Ed25519 key whose private
/// half (if any) matches its public half. A key without a `kid` gets the
/// derived one ([`key::kid_for`]).
pub fn load(path: &Path) -> Result<LoadedKey, String> {
    let bytes = read_bounded(path)?;
    let key = key::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let kid = key.kid_or_derived();
    Ok(LoadedKey { kid, public: key.public, secret: key.secret })
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

/// Encodes the COSE_Key of a public key.
pub fn encode_public(public: &VerifyingKey, kid: &[u8]) -> Result<Vec<u8>, String> {
    key::encode_public(public, kid).map_err(|e| format!("encoding COSE_Key: {e}"))
}

/// Encodes the COSE_Key of a private key.
pub fn encode_private(secret: &SigningKey, kid: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    key::encode_private(secret, kid).map_err(|e| format!("encoding COSE_Key: {e}"))
}
