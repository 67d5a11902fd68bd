//! Volume unlock secrets: derivation, and sealing to the unlocker's ephemeral key.
//!
//! The LUKS passphrase of volume `v` is
//! `HKDF-SHA256(salt = none, ikm = master secret, info = "portcullis luks v1" || v)`,
//! 32 bytes. It only ever leaves cryptod sealed to the requester's ephemeral
//! X25519 public key `rpk`:
//!
//! ```text
//! esk, epk  = X25519 key pair from 32 DRBG bytes
//! shared    = X25519(esk, rpk)              -- all-zero result refused
//! key       = HKDF-SHA256(salt = epk || rpk, ikm = shared,
//!                         info = "portcullis unlock-secret v1", L = 32)
//! aad       = request_id (16) || u16be(len op) || op || u16be(len vol) || vol
//!             || SHA-256(token bytes) (32)
//! ciphertext = ChaCha20-Poly1305(key, nonce = 12 zero bytes, aad, passphrase)
//! ```
//!
//! The all-zero nonce is sound because every key is used for exactly one
//! message: `epk` is fresh per seal and is part of the HKDF salt.
//! [`open_unlock_secret`] is the unlocker side of the same construction.

use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use hkdf::Hkdf;
use portcullis_proto::msg::{RequestId, SealAlg, SealedSecret, MAX_ID_LEN, MAX_PASSPHRASE_LEN};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// HKDF info prefix for LUKS passphrases (followed by the volume id bytes).
pub const LUKS_INFO: &[u8] = b"portcullis luks v1";
/// HKDF info for the unlock-secret sealing key.
pub const SEAL_INFO: &[u8] = b"portcullis unlock-secret v1";
/// Length of a derived LUKS passphrase, in bytes.
pub const PASSPHRASE_LEN: usize = 32;

/// Why an unlock secret could not be derived, sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// An empty or over-long volume id or operator id.
    BadId,
    /// The X25519 shared secret is all zeros (a low-order public key).
    NonContributory,
    /// The plaintext is empty or longer than the protocol allows.
    BadLength,
    /// The ciphertext does not open: wrong key, wrong transcript or tampered.
    Open,
}

impl fmt::Display for UnlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnlockError::BadId => "volume or operator id empty or too long",
            UnlockError::NonContributory => "X25519 shared secret is all zeros",
            UnlockError::BadLength => "unlock secret length out of range",
            UnlockError::Open => "unlock secret does not open (wrong key, transcript or tampered)",
        })
    }
}

impl core::error::Error for UnlockError {}

/// Derives the LUKS passphrase of `volume_id` from the master secret.
pub fn luks_passphrase(
    master: &[u8; 32],
    volume_id: &str,
) -> Result<Zeroizing<[u8; PASSPHRASE_LEN]>, UnlockError> {
    check_id(volume_id)?;
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut out = Zeroizing::new([0u8; PASSPHRASE_LEN]);
    hk.expand_multi_info(&[LUKS_INFO, volume_id.as_bytes()], &mut out[..])
        .map_err(|_| UnlockError::BadLength)?;
    Ok(out)
}

/// HKDF info prefix for the passphrase of a registered volume generation
/// (followed by `u32be(generation) || volume id`).
pub const LUKS_INFO_GEN: &[u8] = b"portcullis luks v2";

/// The passphrase of `volume_id` at `generation`: generation 0 (a volume
/// provisioned before the registry) is [`luks_passphrase`]; any other is
/// `HKDF-SHA256(salt = none, ikm = master, info = "portcullis luks v2" ||
/// u32be(generation) || volume id)`, so a removed-then-added volume never
/// gets an earlier generation's secret back.
pub fn luks_passphrase_gen(
    master: &[u8; 32],
    volume_id: &str,
    generation: u32,
) -> Result<Zeroizing<[u8; PASSPHRASE_LEN]>, UnlockError> {
    if generation == 0 {
        return luks_passphrase(master, volume_id);
    }
    check_id(volume_id)?;
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut out = Zeroizing::new([0u8; PASSPHRASE_LEN]);
    hk.expand_multi_info(
        &[LUKS_INFO_GEN, &generation.to_be_bytes(), volume_id.as_bytes()],
        &mut out[..],
    )
    .map_err(|_| UnlockError::BadLength)?;
    Ok(out)
}

/// The request an unlock secret is bound to (the AEAD associated data).
#[derive(Clone, Copy, Debug)]
pub struct Transcript<'a> {
    /// The `totp_validate_req` request id.
    pub request_id: &'a RequestId,
    /// The operator whose code was accepted.
    pub operator: &'a str,
    /// The volume.
    pub volume_id: &'a str,
    /// The `luks:unlock` token issued with the secret.
    pub token: &'a [u8],
}

impl Transcript<'_> {
    /// The associated data, byte-exactly as documented in the module docs.
    pub fn aad(&self) -> Result<Vec<u8>, UnlockError> {
        check_id(self.operator)?;
        check_id(self.volume_id)?;
        let mut aad = Vec::with_capacity(16 + 4 + self.operator.len() + self.volume_id.len() + 32);
        aad.extend_from_slice(&self.request_id.0);
        for text in [self.operator, self.volume_id] {
            let len = u16::try_from(text.len()).map_err(|_| UnlockError::BadId)?;
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(text.as_bytes());
        }
        aad.extend_from_slice(&Sha256::digest(self.token));
        Ok(aad)
    }
}

/// Seals `secret` to `recipient_pk` with the ephemeral scalar `esk` (32 DRBG bytes).
pub fn seal_unlock_secret(
    esk: &[u8; 32],
    recipient_pk: &[u8; 32],
    transcript: &Transcript<'_>,
    secret: &[u8],
) -> Result<SealedSecret, UnlockError> {
    if secret.is_empty() || secret.len() > MAX_PASSPHRASE_LEN {
        return Err(UnlockError::BadLength);
    }
    let esk = StaticSecret::from(*esk);
    let epk = PublicKey::from(&esk).to_bytes();
    let cipher = cipher(&esk, recipient_pk, &epk, recipient_pk)?;
    let aad = transcript.aad()?;
    let ciphertext = cipher
        .encrypt(&Nonce::default(), Payload { msg: secret, aad: &aad })
        .map_err(|_| UnlockError::BadLength)?;
    Ok(SealedSecret {
        volume_id: transcript.volume_id.into(),
        alg: SealAlg::X25519HkdfSha256ChaCha20Poly1305,
        epk,
        ciphertext,
    })
}

/// Opens a sealed unlock secret with the unlocker's ephemeral secret key.
pub fn open_unlock_secret(
    recipient_sk: &StaticSecret,
    sealed: &SealedSecret,
    transcript: &Transcript<'_>,
) -> Result<Zeroizing<Vec<u8>>, UnlockError> {
    if sealed.volume_id != transcript.volume_id {
        return Err(UnlockError::Open);
    }
    let recipient_pk = PublicKey::from(recipient_sk).to_bytes();
    let cipher = cipher(recipient_sk, &sealed.epk, &sealed.epk, &recipient_pk)?;
    let aad = transcript.aad()?;
    let plain = cipher
        .decrypt(&Nonce::default(), Payload { msg: &sealed.ciphertext, aad: &aad })
        .map_err(|_| UnlockError::Open)?;
    Ok(Zeroizing::new(plain))
}

/// The AEAD for one seal: `own` is this side's secret, `peer` the other
/// side's public key; `epk`/`rpk` fix the salt order.
fn cipher(
    own: &StaticSecret,
    peer: &[u8; 32],
    epk: &[u8; 32],
    rpk: &[u8; 32],
) -> Result<ChaCha20Poly1305, UnlockError> {
    let shared = own.diffie_hellman(&PublicKey::from(*peer));
    if !shared.was_contributory() {
        return Err(UnlockError::NonContributory);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(epk);
    salt[32..].copy_from_slice(rpk);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(SEAL_INFO, &mut key[..]).map_err(|_| UnlockError::BadLength)?;
    ChaCha20Poly1305::new_from_slice(&key[..]).map_err(|_| UnlockError::BadLength)
}

fn check_id(id: &str) -> Result<(), UnlockError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(UnlockError::BadId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RID: RequestId = RequestId([0x11; 16]);
    const TOKEN: &[u8] = b"a token";

    fn transcript() -> Transcript<'static> {
        Transcript { request_id: &RID, operator: "alice", volume_id: "vol0", token: TOKEN }
    }

    fn recipient() -> (StaticSecret, [u8; 32]) {
        let sk = StaticSecret::from([0x42; 32]);
        let pk = PublicKey::from(&sk).to_bytes();
        (sk, pk)
    }

    #[test]
    fn luks_passphrase_matches_hkdf_definition() {
        let master = [7u8; 32];
        let p = luks_passphrase(&master, "vol0").unwrap();
        let mut info = LUKS_INFO.to_vec();
        info.extend_from_slice(b"vol0");
        let mut expected = [0u8; 32];
        Hkdf::<Sha256>::new(None, &master).expand(&info, &mut expected).unwrap();
        assert_eq!(*p, expected);
        assert_ne!(*luks_passphrase(&master, "vol1").unwrap(), expected);
        assert_ne!(*luks_passphrase(&[8u8; 32], "vol0").unwrap(), expected);
        assert_eq!(luks_passphrase(&master, ""), Err(UnlockError::BadId));
    }

    #[test]
    fn unlock_secret_seal_open_round_trip() {
        let (sk, pk) = recipient();
        let sealed = seal_unlock_secret(&[9u8; 32], &pk, &transcript(), b"passphrase").unwrap();
        assert_eq!(sealed.volume_id, "vol0");
        assert_eq!(sealed.ciphertext.len(), b"passphrase".len() + 16);
        assert!(!sealed.ciphertext.windows(10).any(|w| w == b"passphrase"), "never in the clear");
        let opened = open_unlock_secret(&sk, &sealed, &transcript()).unwrap();
        assert_eq!(&opened[..], b"passphrase");
    }

    #[test]
    fn unlock_secret_tamper_is_detected() {
        let (sk, pk) = recipient();
        let sealed = seal_unlock_secret(&[9u8; 32], &pk, &transcript(), b"passphrase").unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 1;
            assert_eq!(open_unlock_secret(&sk, &bad, &transcript()), Err(UnlockError::Open));
        }
        let mut bad = sealed.clone();
        bad.epk[0] ^= 1;
        assert!(open_unlock_secret(&sk, &bad, &transcript()).is_err());
        // Every transcript field is bound.
        let other = RequestId([0x12; 16]);
        let variants = [
            Transcript { request_id: &other, ..transcript() },
            Transcript { operator: "bob", ..transcript() },
            Transcript { token: b"another token", ..transcript() },
        ];
        for t in variants {
            assert_eq!(open_unlock_secret(&sk, &sealed, &t), Err(UnlockError::Open));
        }
        let t = Transcript { volume_id: "vol1", ..transcript() };
        assert_eq!(open_unlock_secret(&sk, &sealed, &t), Err(UnlockError::Open));
        // The wrong recipient key.
        let wrong = StaticSecret::from([0x43; 32]);
        assert_eq!(open_unlock_secret(&wrong, &sealed, &transcript()), Err(UnlockError::Open));
    }

    #[test]
    fn all_zero_shared_secret_is_refused() {
        // The identity point and a small-order point give an all-zero X25519 result.
        for low_order in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            assert_eq!(
                seal_unlock_secret(&[9u8; 32], &low_order, &transcript(), b"x"),
                Err(UnlockError::NonContributory)
            );
        }
    }

    #[test]
    fn lengths_are_bounded() {
        let (_, pk) = recipient();
        assert_eq!(
            seal_unlock_secret(&[9u8; 32], &pk, &transcript(), b""),
            Err(UnlockError::BadLength)
        );
        let long = alloc::vec![0u8; MAX_PASSPHRASE_LEN + 1];
        assert_eq!(
            seal_unlock_secret(&[9u8; 32], &pk, &transcript(), &long),
            Err(UnlockError::BadLength)
        );
    }

    proptest! {
        #[test]
        fn round_trips_for_any_keys(esk in any::<[u8; 32]>(), rsk in any::<[u8; 32]>(),
                                    secret in proptest::collection::vec(any::<u8>(), 1..64)) {
            let sk = StaticSecret::from(rsk);
            let pk = PublicKey::from(&sk).to_bytes();
            let sealed = seal_unlock_secret(&esk, &pk, &transcript(), &secret).unwrap();
            prop_assert_eq!(&open_unlock_secret(&sk, &sealed, &transcript()).unwrap()[..], &secret[..]);
        }
    }
}
