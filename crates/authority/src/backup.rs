//! Backups of cryptod's sealed state, encrypted to a recovery key, and the
//! sealed state's BACKUP section (which notes that a state came from one).
//!
//! A backup holds the whole state (root key, master secret, operators,
//! ACL, recovery codes, counters, audit head, sections) so that a new host
//! keeps deriving the same volume passphrases. It is not sealed under the
//! KEK (a new host has another TPM) but under a **recovery key**: 256
//! random bits made when the backup is made, shown once, never stored on
//! the host. Format (integers big-endian):
//!
//! ```text
//! header    = "PCBACKUP" (8) || version u16 (= 1) || state_version u16
//!             || created u64 (Unix seconds) || backup_id (16) || salt (32)
//!             || nonce (12) || body_len u32                                 -- 84 bytes
//! key       = HKDF-SHA-256(ikm = recovery key, salt, info = "portcullis backup v1")
//! body      = ChaCha20-Poly1305(key, nonce, aad = header, plaintext)        -- body_len bytes
//! plaintext = the sealed state's plaintext at format state_version (crate::sealed)
//! ```
//!
//! A file is exactly `84 + body_len` bytes (shorter: [`BackupError::Truncated`],
//! longer: [`BackupError::TrailingBytes`]), at most [`MAX_BACKUP_LEN`]; a wrong
//! recovery key or any changed byte is [`BackupError::Authentication`].
//!
//! The recovery key is written as 72 modhex characters (the alphabet
//! `cbdefghijklnrtuv`, which reads the same on any keyboard layout, as
//! systemd-cryptenroll's recovery keys) in 9 groups of 8: the 32 key bytes
//! and a 4-byte checksum (the first bytes of SHA-256 of a label and the
//! key), so a typo is caught before any decryption is tried.
//!
//! The BACKUP section body ([`Restored`]) is `version u8 (= 1) || pending u8
//! (0 or 1) || backup_id (16) || created u64`: the backup the state was last
//! restored from; `pending` until cryptod's first audit chain after the
//! restore is acknowledged (its `chain_start` record says `restored_from`:
//! the backup id).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::sealed::{self, SealError, SealedState};

/// Magic bytes at the start of a backup file.
pub const MAGIC: &[u8; 8] = b"PCBACKUP";
/// The backup format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header length (also the AEAD associated data).
pub const HEADER_LEN: usize = 84;
/// Largest backup file accepted or produced.
pub const MAX_BACKUP_LEN: usize = HEADER_LEN + sealed::MAX_SEALED_LEN;
/// HKDF info of the backup key.
pub const INFO: &[u8] = b"portcullis backup v1";
/// Length of a written recovery key, separators excluded.
pub const KEY_CHARS: usize = 72;
const TAG_LEN: usize = 16;
const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";
const CHECK_LABEL: &[u8] = b"portcullis recovery key v1\0";

/// A recovery key (zeroed on drop).
pub struct RecoveryKey(Zeroizing<[u8; 32]>);

/// Why a typed recovery key is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// A character that is neither modhex nor a separator (`-`, space),
    /// at this 1-based position of the text.
    BadChar {
        /// 1-based position in the text.
        at: usize,
        /// The character.
        ch: char,
    },
    /// Not [`KEY_CHARS`] modhex characters (this many).
    Length(usize),
    /// The checksum does not match: a typo.
    Checksum,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::BadChar { at, ch } => write!(
                f,
                "recovery key: character {at} ({ch:?}) is not one of cbdefghijklnrtuv or -"
            ),
            KeyError::Length(n) => {
                write!(f, "recovery key: {n} characters, expected {KEY_CHARS} (9 groups of 8)")
            }
            KeyError::Checksum => f.write_str(
                "recovery key: the checksum does not match (a typo?); nothing was tried",
            ),
        }
    }
}

impl core::error::Error for KeyError {}

fn checksum(key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(CHECK_LABEL);
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl RecoveryKey {
    /// From 32 random bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> RecoveryKey {
        RecoveryKey(Zeroizing::new(bytes))
    }

    /// The written form: 9 groups of 8 modhex characters joined by `-`.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 36]);
        raw[..32].copy_from_slice(&self.0[..]);
        raw[32..].copy_from_slice(&checksum(&self.0));
        let mut out = Zeroizing::new(String::with_capacity(KEY_CHARS + 8));
        for (i, b) in raw.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(char::from(MODHEX[usize::from(b >> 4)]));
            out.push(char::from(MODHEX[usize::from(b & 15)]));
        }
        out
    }

    /// Parses a written key: case, `-` and spaces do not matter; the
    /// checksum must match.
    pub fn parse(text: &str) -> Result<RecoveryKey, KeyError> {
        let mut raw = Zeroizing::new([0u8; 36]);
        let mut n = 0usize;
        for (i, ch) in text.chars().enumerate() {
            if ch == '-' || ch == ' ' {
                continue;
            }
            let lower = ch.to_ascii_lowercase();
            let v = MODHEX
                .iter()
                .position(|&m| char::from(m) == lower)
                .ok_or(KeyError::BadChar { at: i + 1, ch })?;
            if let Some(b) = raw.get_mut(n / 2) {
                *b |= (v as u8) << if n & 1 == 0 { 4 } else { 0 };
            }
            n = n.saturating_add(1);
        }
        if n != KEY_CHARS {
            return Err(KeyError::Length(n));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&raw[..32]);
        if checksum(&key) != raw[32..] {
            return Err(KeyError::Checksum);
        }
        Ok(RecoveryKey(key))
    }

    fn aead(&self, salt: &[u8; 32]) -> ChaCha20Poly1305 {
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes from HKDF-SHA-256 cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(salt), &self.0[..]).expand(INFO, &mut k[..]);
        ChaCha20Poly1305::new(&(*k).into())
    }
}

/// A backup's header: what can be read without the recovery key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The sealed-state format of the plaintext.
    pub state_version: u16,
    /// When the backup was made (Unix seconds).
    pub created: u64,
    /// The backup's random id.
    pub backup_id: [u8; 16],
    /// HKDF salt.
    pub salt: [u8; 32],
    /// AEAD nonce.
    pub nonce: [u8; 12],
}

/// Why a backup could not be made or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupError {
    /// Shorter than its header or than the length the header states.
    Truncated,
    /// Longer than the length the header states.
    TrailingBytes,
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// A backup format version this code does not read.
    UnsupportedVersion(u16),
    /// Larger than [`MAX_BACKUP_LEN`].
    TooLarge,
    /// The AEAD tag does not verify: wrong recovery key, or the file was
    /// changed.
    Authentication,
    /// The state inside (authentic) is not one this code reads.
    State(SealError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Truncated => f.write_str("backup is truncated"),
            BackupError::TrailingBytes => f.write_str("backup has trailing bytes"),
            BackupError::BadMagic => f.write_str("not a Portcullis backup (bad magic)"),
            BackupError::UnsupportedVersion(v) => {
                write!(f, "backup format {v} is not supported (this build reads {VERSION})")
            }
            BackupError::TooLarge => f.write_str("backup too large"),
            BackupError::Authentication => {
                f.write_str("backup does not open: wrong recovery key, or the file was changed")
            }
            BackupError::State(e) => write!(f, "backup's state: {e}"),
        }
    }
}

impl core::error::Error for BackupError {}

/// Reads and checks a backup's header and length (no key needed).
pub fn header(bytes: &[u8]) -> Result<Header, BackupError> {
    if bytes.len() > MAX_BACKUP_LEN {
        return Err(BackupError::TooLarge);
    }
    let (h, body) = bytes.split_at_checked(HEADER_LEN).ok_or(BackupError::Truncated)?;
    if &h[..8] != MAGIC {
        return Err(BackupError::BadMagic);
    }
    let version = u16::from_be_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    let arr = |at: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[at..at + 8]);
        a
    };
    let mut out = Header {
        state_version: u16::from_be_bytes([h[10], h[11]]),
        created: u64::from_be_bytes(arr(12)),
        backup_id: [0; 16],
        salt: [0; 32],
        nonce: [0; 12],
    };
    out.backup_id.copy_from_slice(&h[20..36]);
    out.salt.copy_from_slice(&h[36..68]);
    out.nonce.copy_from_slice(&h[68..80]);
    let body_len = usize::try_from(u32::from_be_bytes([h[80], h[81], h[82], h[83]]))
        .map_err(|_| BackupError::TooLarge)?;
    match body.len().cmp(&body_len) {
        core::cmp::Ordering::Less => Err(BackupError::Truncated),
        core::cmp::Ordering::Greater => Err(BackupError::TrailingBytes),
        core::cmp::Ordering::Equal => Ok(out),
    }
}

/// Encrypts `state` to `key`. `created`, `backup_id`, `salt` and `nonce`
/// come from the caller (the clock and the OS random source).
pub fn create(
    state: &SealedState,
    key: &RecoveryKey,
    created: u64,
    backup_id: [u8; 16],
    salt: [u8; 32],
    nonce: [u8; 12],
) -> Result<Vec<u8>, BackupError> {
    let plain = sealed::encode_plain(state).map_err(BackupError::State)?;
    let body_len = plain.len() + TAG_LEN;
    if HEADER_LEN + body_len > MAX_BACKUP_LEN {
        return Err(BackupError::TooLarge);
    }
    let mut h = Vec::with_capacity(HEADER_LEN + body_len);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_be_bytes());
    h.extend_from_slice(&sealed::VERSION.to_be_bytes());
    h.extend_from_slice(&created.to_be_bytes());
    h.extend_from_slice(&backup_id);
    h.extend_from_slice(&salt);
    h.extend_from_slice(&nonce);
    h.extend_from_slice(&(body_len as u32).to_be_bytes());
    let body = key
        .aead(&salt)
        .encrypt(&Nonce::from(nonce), Payload { msg: &plain, aad: &h })
        .map_err(|_| BackupError::TooLarge)?;
    h.extend_from_slice(&body);
    Ok(h)
}

/// Checks and decrypts a backup.
pub fn open(bytes: &[u8], key: &RecoveryKey) -> Result<(Header, SealedState), BackupError> {
    let h = header(bytes)?;
    let (aad, body) = bytes.split_at(HEADER_LEN);
    let plain = Zeroizing::new(
        key.aead(&h.salt)
            .decrypt(&Nonce::from(h.nonce), Payload { msg: body, aad })
            .map_err(|_| BackupError::Authentication)?,
    );
    let state = sealed::decode_plain(&plain, h.state_version).map_err(BackupError::State)?;
    Ok((h, state))
}

/// The BACKUP section: the backup this state was last restored from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The backup's id.
    pub backup_id: [u8; 16],
    /// When the backup was made (Unix seconds).
    pub created: u64,
    /// The restore is not yet in an acknowledged audit record.
    pub pending: bool,
}

/// Length of the BACKUP section body.
pub const SECTION_LEN: usize = 26;
/// Where the BACKUP section body holds its `pending` flag.
pub const PENDING_AT: usize = 1;
/// Where the BACKUP section body holds the backup id.
pub const ID_AT: core::ops::Range<usize> = 2..18;

impl Restored {
    /// The section body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SECTION_LEN);
        out.push(1);
        out.push(u8::from(self.pending));
        out.extend_from_slice(&self.backup_id);
        out.extend_from_slice(&self.created.to_be_bytes());
        out
    }

    /// Whether `body` is a valid section body (what cryptod checks at
    /// load; [`Restored::decode`] reads it).
    pub fn valid(body: &[u8]) -> bool {
        matches!(body, [1, 0 | 1, ..] if body.len() == SECTION_LEN)
    }

    /// Decodes a section body strictly.
    pub fn decode(body: &[u8]) -> Result<Restored, SealError> {
        if !Self::valid(body) {
            return Err(SealError::Malformed("backup section"));
        }
        let mut backup_id = [0u8; 16];
        backup_id.copy_from_slice(&body[ID_AT]);
        let mut created = [0u8; 8];
        created.copy_from_slice(&body[18..26]);
        let pending = body[PENDING_AT] == 1;
        Ok(Restored { backup_id, created: u64::from_be_bytes(created), pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::totp::{Algorithm, OperatorSecret};
    use alloc::vec;

    fn state() -> SealedState {
        let op = OperatorSecret::new("alice", &[7u8; 20], Algorithm::Sha1, 6).unwrap();
        let mut s = SealedState::new([1; 32], [2; 32], vec![op], "deny vm=*\n".into());
        s.keyset_version = 9;
        s.admin_seq = 77;
        s.set_section(sealed::section::BACKUP, Some(vec![9; 3]));
        s
    }

    fn key(b: u8) -> RecoveryKey {
        RecoveryKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let s = state();
        let bytes = create(&s, &key(5), 1_700_000_000, [3; 16], [4; 32], [6; 12]).unwrap();
        let (h, back) = open(&bytes, &key(5)).unwrap();
        assert!(back == s);
        assert_eq!(h.created, 1_700_000_000);
        assert_eq!(h.backup_id, [3; 16]);
        assert_eq!(h.state_version, sealed::VERSION);
        // Neither secret appears in the file.
        assert!(!bytes.windows(32).any(|w| w == [2; 32] || w == [1; 32]));
    }

    #[test]
    fn wrong_key_truncated_and_edited_files_are_refused() {
        let bytes = create(&state(), &key(5), 1, [3; 16], [4; 32], [6; 12]).unwrap();
        assert_eq!(open(&bytes, &key(6)).err(), Some(BackupError::Authentication));
        for i in [0, 9, 11, 12, 20, 40, 70, 83, 84, bytes.len() - 1] {
            let mut t = bytes.clone();
            t[i] ^= 1;
            let e = open(&t, &key(5)).err().unwrap();
            let want = match i {
                0 => BackupError::BadMagic,
                9 => BackupError::UnsupportedVersion(VERSION ^ 1),
                // body_len one more or one less.
                83 if bytes[83] & 1 == 0 => BackupError::Truncated,
                83 => BackupError::TrailingBytes,
                _ => BackupError::Authentication,
            };
            assert_eq!(e, want, "byte {i}");
        }
        assert_eq!(open(&bytes[..bytes.len() - 1], &key(5)).err(), Some(BackupError::Truncated));
        assert_eq!(open(&bytes[..10], &key(5)).err(), Some(BackupError::Truncated));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(open(&long, &key(5)).err(), Some(BackupError::TrailingBytes));
        let huge = vec![0u8; MAX_BACKUP_LEN + 1];
        assert_eq!(open(&huge, &key(5)).err(), Some(BackupError::TooLarge));
    }

    #[test]
    fn recovery_key_text_round_trips_and_catches_typos() {
        let k = RecoveryKey::from_bytes(core::array::from_fn(|i| i as u8 * 7));
        let text = k.to_text();
        assert_eq!(text.len(), KEY_CHARS + 8);
        assert_eq!(text.split('-').count(), 9);
        assert!(text.split('-').all(|g| g.len() == 8));
        let back = RecoveryKey::parse(&text).unwrap();
        assert_eq!(*back.0, *k.0);
        let loose = text.to_ascii_uppercase().replace('-', " ");
        assert_eq!(*RecoveryKey::parse(&loose).unwrap().0, *k.0);
        // One character changed: the checksum catches it.
        let mut typo: Vec<char> = text.chars().collect();
        typo[3] = if typo[3] == 'c' { 'b' } else { 'c' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(RecoveryKey::parse(&typo).err(), Some(KeyError::Checksum));
        assert_eq!(RecoveryKey::parse(&text[..text.len() - 1]).err(), Some(KeyError::Length(71)));
        assert_eq!(RecoveryKey::parse("cbdea").err(), Some(KeyError::BadChar { at: 5, ch: 'a' }));
    }

    #[test]
    fn section_is_strict() {
        let r = Restored { backup_id: [8; 16], created: 42, pending: true };
        let body = r.encode();
        assert_eq!(body.len(), SECTION_LEN);
        assert_eq!(Restored::decode(&body), Ok(r));
        for bad in [&body[..25], &[body.as_slice(), &[0]].concat()[..]] {
            assert!(Restored::decode(bad).is_err());
        }
        let mut v2 = body.clone();
        v2[0] = 2;
        assert!(Restored::decode(&v2).is_err());
        let mut flag = body;
        flag[1] = 2;
        assert!(Restored::decode(&flag).is_err());
    }
}
