//! cryptod's sealed state: its secrets and the replay state that must survive
//! a restart, encrypted and authenticated under a key-encryption key (KEK)
//! that the platform supplies at boot.
//!
//! Format (all integers big-endian):
//!
//! ```text
//! header    = "PCSEAL" (6) || version u16 (= 4) || nonce (12) || body_len u32   -- 24 bytes
//! body      = ChaCha20-Poly1305(KEK, nonce, aad = header, plaintext)            -- body_len bytes
//! plaintext = root_key (32) || master_secret (32)
//!             || u16 n_ops   || n_ops   x (u8 id_len || id || u8 alg || u8 digits
//!                                          || u8 secret_len || secret)
//!             || u32 acl_len || acl (UTF-8)
//!             || u16 n_steps || n_steps x (u8 id_len || id || u64 last_step)
//!             || u16 n_fail  || n_fail  x (u8 id_len || id || u32 failures || u64 locked_until)
//!             || u64 keyset_version || u64 revocation_serial
//!             || u16 n_revoked || n_revoked x (u8 cti_len || cti || u64 exp)
//!             || u8 has_head (0 or 1) || [chain_id (16) || u64 seq || record_hash (32)]
//!             -- version 3 from here on --
//!             || u8 has_admin (0 or 1) || [admin_pubkey (32)] || u64 admin_seq
//!             || u16 n_rec || n_rec x (u8 id_len || id || u8 used_bits || 8 x (salt (16) || hash (32)))
//!             -- version 4 from here on --
//!             || u16 n_sec || n_sec x (u16 tag || u32 len || body)
//! ```
//!
//! Format 4's sections carry each lifecycle area's state (see [`section`]):
//! tags strictly ascending (so each at most once), each a known tag, each
//! body at most [`MAX_SECTION_LEN`]. The area that owns a tag decodes its
//! body (strictly) when cryptod starts; this module only frames them.
//!
//! Decoding is strict: every count is bounded by the blob size, operators,
//! steps, failure counters and revoked ids appear at most once, a failure
//! counter names a configured operator, a revoked id is 1 to `MAX_CTI_LEN`
//! bytes and there are at most `MAX_REVOKED`, there are at most
//! [`MAX_OPERATORS`] operators, and recovery codes name a configured
//! operator once each. Version 2 (before the admin key, the admin sequence
//! and the recovery codes) is read and migrated: no admin key, sequence 0,
//! no recovery codes; version 3 is read with no sections; both are written
//! back as version 4 at the next persist.
//! Version 1 (before the failure counters, monotonic counters and audit
//! head were sealed) is refused as [`SealError::OldVersion`]: re-provision.
//!
//! `alg` is 1 = SHA-1, 2 = SHA-256, 3 = SHA-512. A blob is exactly
//! `24 + body_len` bytes; anything shorter is [`SealError::Truncated`], anything
//! longer [`SealError::TrailingBytes`]. A wrong KEK or any changed byte of the
//! header or body is [`SealError::Authentication`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use portcullis_proto::msg::{MAX_CTI_LEN, MAX_REVOKED};

use crate::admin::{RecoveryHash, MAX_OPERATORS};
use crate::totp::{Algorithm, OperatorSecret};
use portcullis_proto::msg::{RECOVERY_CODES, RECOVERY_HASH_LEN};

/// Magic bytes at the start of a sealed blob.
pub const MAGIC: &[u8; 6] = b"PCSEAL";
/// The format version this code writes and reads.
pub const VERSION: u16 = 4;
/// The oldest version read (and migrated).
pub const OLDEST_READ: u16 = 2;
/// Header length (also the AEAD associated data).
pub const HEADER_LEN: usize = 24;
/// Largest sealed blob accepted or produced.
pub const MAX_SEALED_LEN: usize = 256 * 1024;
const TAG_LEN: usize = 16;
/// Largest section body.
pub const MAX_SECTION_LEN: usize = 64 * 1024;

/// Format 4's section tags: one per lifecycle area, each decoded by the
/// module that owns it. A blob with any other tag is refused.
pub mod section {
    /// Key history: signing-key rotation, revoked kids, the root chain.
    pub const KEYS: u16 = 1;
    /// Volumes bound to Portcullis.
    pub const VOLUMES: u16 = 2;
    /// The ACL's version and its signed form.
    pub const ACL: u16 = 3;
    /// The identity revocation list (device ids, domain names).
    pub const IDENTITIES: u16 = 4;
    /// Backup bookkeeping.
    pub const BACKUP: u16 = 5;
    /// Every tag this code knows, ascending.
    pub const KNOWN: [u16; 5] = [KEYS, VOLUMES, ACL, IDENTITIES, BACKUP];
}

/// One format-4 section: its tag (see [`section`]) and its body, which the
/// owning area encodes and decodes.
#[derive(Clone, Debug, PartialEq, Eq, Zeroize)]
pub struct Section {
    /// One of [`section::KNOWN`].
    pub tag: u16,
    /// The area's encoding, at most [`MAX_SECTION_LEN`] bytes.
    pub body: Vec<u8>,
}

/// Everything cryptod keeps across restarts.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SealedState {
    /// Seed of the long-term Ed25519 root key (signs keysets, revocation lists, audit records).
    pub root_key: [u8; 32],
    /// Master secret from which volume passphrases are derived.
    pub master_secret: [u8; 32],
    /// The operators' TOTP secrets.
    pub operators: Vec<OperatorSecret>,
    /// The ACL text.
    pub acl: String,
    /// Per operator, the last accepted TOTP step.
    pub last_steps: Vec<(String, u64)>,
    /// Per operator with failures: `(id, consecutive failures, locked_until)`.
    pub failures: Vec<(String, u32, u64)>,
    /// Version of the last published keyset (only goes up).
    pub keyset_version: u64,
    /// Serial of the last revocation list (only goes up).
    pub revocation_serial: u64,
    /// Revoked token ids with their expiry.
    pub revoked: Vec<(Vec<u8>, u64)>,
    /// The audit chain head the collector last acknowledged (the next boot's
    /// chain links to it).
    pub audit_head: Option<SealedHead>,
    /// The admin public key (Ed25519) whose signed commands cryptod accepts.
    pub admin_key: Option<[u8; 32]>,
    /// The last accepted admin command's `admin_seq`.
    pub admin_seq: u64,
    /// Per operator: the recovery codes' hashes and the used bits.
    pub recovery: Vec<(String, Vec<RecoveryHash>, u8)>,
    /// Format 4's sections, tags strictly ascending.
    pub sections: Vec<Section>,
}

impl SealedState {
    /// The body of section `tag`, if present.
    pub fn section(&self, tag: u16) -> Option<&[u8]> {
        get_section(&self.sections, tag)
    }

    /// Sets section `tag` to `body` (`None` removes it), keeping the tags
    /// ascending.
    pub fn set_section(&mut self, tag: u16, body: Option<Vec<u8>>) {
        match body {
            Some(body) => set_section(&mut self.sections, tag, body),
            None => self.sections.retain(|s| s.tag != tag),
        }
    }
}

/// Section `tag`'s body in `sections`, if any.
pub fn get_section(sections: &[Section], tag: u16) -> Option<&[u8]> {
    sections.iter().find(|s| s.tag == tag).map(|s| s.body.as_slice())
}

/// Sets section `tag` of `sections` to `body`, keeping the tags ascending.
pub fn set_section(sections: &mut Vec<Section>, tag: u16, body: Vec<u8>) {
    sections.retain(|s| s.tag != tag);
    let at = sections.iter().position(|s| s.tag > tag).unwrap_or(sections.len());
    sections.insert(at, Section { tag, body });
}

/// An audit record the collector has stored: the chain, its `seq`, and
/// SHA-256 of its signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Zeroize)]
pub struct SealedHead {
    /// The chain (one per boot).
    pub chain_id: [u8; 16],
    /// The record's `seq`.
    pub seq: u64,
    /// SHA-256 of the record's signed bytes.
    pub hash: [u8; 32],
}

impl SealedState {
    /// A freshly provisioned state: no TOTP step used, no failures, counters
    /// at zero, nothing revoked, no audit chain yet.
    pub fn new(
        root_key: [u8; 32],
        master_secret: [u8; 32],
        operators: Vec<OperatorSecret>,
        acl: String,
    ) -> SealedState {
        SealedState {
            root_key,
            master_secret,
            operators,
            acl,
            last_steps: Vec::new(),
            failures: Vec::new(),
            keyset_version: 0,
            revocation_serial: 0,
            revoked: Vec::new(),
            audit_head: None,
            admin_key: None,
            admin_seq: 0,
            recovery: Vec::new(),
            sections: Vec::new(),
        }
    }
}

impl fmt::Debug for SealedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedState")
            .field("operators", &self.operators)
            .field("last_steps", &self.last_steps)
            .field("failures", &self.failures)
            .field("keyset_version", &self.keyset_version)
            .field("revocation_serial", &self.revocation_serial)
            .field("revoked", &self.revoked.len())
            .field("audit_head", &self.audit_head)
            .field("admin_key", &self.admin_key.is_some())
            .field("admin_seq", &self.admin_seq)
            .field("recovery", &self.recovery.len())
            .field("sections", &self.sections.iter().map(|s| s.tag).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why state could not be sealed or unsealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than its header or than the length the header states.
    Truncated,
    /// Longer than the length the header states.
    TrailingBytes,
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion(u16),
    /// An older format version, which lacks state this code must restore.
    OldVersion(u16),
    /// Larger than [`MAX_SEALED_LEN`] (or a field longer than its length prefix allows).
    TooLarge,
    /// The AEAD tag does not verify: wrong KEK, or header or body tampered with.
    Authentication,
    /// Authentic but not a valid state (a bug or a different writer).
    Malformed(&'static str),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Truncated => f.write_str("sealed state is truncated"),
            SealError::TrailingBytes => f.write_str("sealed state has trailing bytes"),
            SealError::BadMagic => f.write_str("not a sealed state (bad magic)"),
            // The versions as `u32`s: no `u16` formatting linked (image
            // size, issue 14).
            SealError::UnsupportedVersion(v) => write!(
                f,
                "sealed state version {} is not supported (this build reads {})",
                u32::from(*v),
                u32::from(VERSION)
            ),
            SealError::OldVersion(v) => write!(
                f,
                "sealed state version {} predates version {} (failure counters, keyset \
                 version, revocation serial and audit head are sealed since): re-provision",
                u32::from(*v),
                u32::from(VERSION)
            ),
            SealError::TooLarge => f.write_str("sealed state too large"),
            SealError::Authentication => {
                f.write_str("sealed state does not authenticate (wrong key or tampered)")
            }
            SealError::Malformed(what) => write!(f, "sealed state is malformed: {what}"),
        }
    }
}

impl core::error::Error for SealError {}

/// Encrypts `state` under `kek` with `nonce` (which must never repeat for a KEK).
pub fn seal(state: &SealedState, kek: &[u8; 32], nonce: &[u8; 12]) -> Result<Vec<u8>, SealError> {
    let plain = encode(state)?;
    let body_len = plain.len() + TAG_LEN;
    if HEADER_LEN + body_len > MAX_SEALED_LEN {
        return Err(SealError::TooLarge);
    }
    let body_len32 = u32::try_from(body_len).map_err(|_| SealError::TooLarge)?;
    // The header, written straight into the output (appends: no slice
    // bounds to check, no panic location each; image size, issue 14).
    const _: () = assert!(MAGIC.len() + 2 + 12 + 4 == HEADER_LEN);
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&body_len32.to_be_bytes());
    let cipher = ChaCha20Poly1305::new_from_slice(kek).map_err(|_| SealError::Authentication)?;
    let body = cipher
        .encrypt(&Nonce::from(*nonce), Payload { msg: &plain, aad: &out })
        .map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks and decrypts a sealed blob.
// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
pub fn unseal(bytes: &[u8], kek: &[u8; 32]) -> Result<SealedState, SealError> {
    if bytes.len() > MAX_SEALED_LEN {
        return Err(SealError::TooLarge);
    }
    let (header, body) = bytes.split_at_checked(HEADER_LEN).ok_or(SealError::Truncated)?;
    if &header[..6] != MAGIC {
        return Err(SealError::BadMagic);
    }
    let version = u16::from_be_bytes([header[6], header[7]]);
    if version < OLDEST_READ {
        return Err(SealError::OldVersion(version));
    }
    if version > VERSION {
        return Err(SealError::UnsupportedVersion(version));
    }
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&header[8..20]);
    let body_len =
        usize::try_from(u32::from_be_bytes([header[20], header[21], header[22], header[23]]))
            .map_err(|_| SealError::TooLarge)?;
    match body.len().cmp(&body_len) {
        core::cmp::Ordering::Less => return Err(SealError::Truncated),
        core::cmp::Ordering::Greater => return Err(SealError::TrailingBytes),
        core::cmp::Ordering::Equal => {}
    }
    let cipher = ChaCha20Poly1305::new_from_slice(kek).map_err(|_| SealError::Authentication)?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: body, aad: header })
            .map_err(|_| SealError::Authentication)?,
    );
    decode(&plain, version)
}

fn encode(s: &SealedState) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut out = Zeroizing::new(Vec::new());
    out.extend_from_slice(&s.root_key);
    out.extend_from_slice(&s.master_secret);
    put_u16(&mut out, s.operators.len())?;
    for op in &s.operators {
        put_short(&mut out, op.id.as_bytes())?;
        out.push(op.algorithm.code());
        out.push(op.digits);
        put_short(&mut out, &op.secret)?;
    }
    let acl_len = u32::try_from(s.acl.len()).map_err(|_| SealError::TooLarge)?;
    out.extend_from_slice(&acl_len.to_be_bytes());
    out.extend_from_slice(s.acl.as_bytes());
    put_u16(&mut out, s.last_steps.len())?;
    for (id, step) in &s.last_steps {
        put_short(&mut out, id.as_bytes())?;
        out.extend_from_slice(&step.to_be_bytes());
    }
    put_u16(&mut out, s.failures.len())?;
    for (id, failures, locked_until) in &s.failures {
        put_short(&mut out, id.as_bytes())?;
        out.extend_from_slice(&failures.to_be_bytes());
        out.extend_from_slice(&locked_until.to_be_bytes());
    }
    out.extend_from_slice(&s.keyset_version.to_be_bytes());
    out.extend_from_slice(&s.revocation_serial.to_be_bytes());
    put_u16(&mut out, s.revoked.len())?;
    for (cti, exp) in &s.revoked {
        put_short(&mut out, cti)?;
        out.extend_from_slice(&exp.to_be_bytes());
    }
    match &s.audit_head {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.chain_id);
            out.extend_from_slice(&h.seq.to_be_bytes());
            out.extend_from_slice(&h.hash);
        }
    }
    match &s.admin_key {
        None => out.push(0),
        Some(k) => {
            out.push(1);
            out.extend_from_slice(k);
        }
    }
    out.extend_from_slice(&s.admin_seq.to_be_bytes());
    put_u16(&mut out, s.recovery.len())?;
    for (id, hashes, used) in &s.recovery {
        if hashes.len() != RECOVERY_CODES {
            return Err(SealError::Malformed("recovery codes are not 8"));
        }
        put_short(&mut out, id.as_bytes())?;
        out.push(*used);
        hashes.iter().for_each(|h| out.extend_from_slice(h));
    }
    put_u16(&mut out, s.sections.len())?;
    let mut last = None;
    for sec in &s.sections {
        if !section::KNOWN.contains(&sec.tag) || last.is_some_and(|l| l >= sec.tag) {
            return Err(SealError::Malformed("section tags unknown or not ascending"));
        }
        if sec.body.len() > MAX_SECTION_LEN {
            return Err(SealError::TooLarge);
        }
        last = Some(sec.tag);
        out.extend_from_slice(&sec.tag.to_be_bytes());
        out.extend_from_slice(&(sec.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&sec.body);
    }
    Ok(out)
}

/// The plaintext [`seal`] encrypts, at [`VERSION`]: for a container that
/// encrypts the state under another key (a backup, [`crate::backup`]).
pub fn encode_plain(state: &SealedState) -> Result<Zeroizing<Vec<u8>>, SealError> {
    encode(state)
}

/// Decodes a plaintext of format `version` ([`OLDEST_READ`] to [`VERSION`])
/// as strictly as [`unseal`] does.
pub fn decode_plain(plain: &[u8], version: u16) -> Result<SealedState, SealError> {
    if version < OLDEST_READ {
        return Err(SealError::OldVersion(version));
    }
    if version > VERSION {
        return Err(SealError::UnsupportedVersion(version));
    }
    decode(plain, version)
}

fn put_u16(out: &mut Vec<u8>, n: usize) -> Result<(), SealError> {
    out.extend_from_slice(&u16::try_from(n).map_err(|_| SealError::TooLarge)?.to_be_bytes());
    Ok(())
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SealError> {
    out.push(u8::try_from(bytes.len()).map_err(|_| SealError::TooLarge)?);
    out.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked reader over the plaintext.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealError> {
        let (head, rest) =
            self.0.split_at_checked(n).ok_or(SealError::Malformed("short plaintext"))?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SealError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, SealError> {
        Ok(self.array::<1>()?[0])
    }

    fn short(&mut self) -> Result<&'a [u8], SealError> {
        let n = self.byte()?;
        self.take(usize::from(n))
    }

    fn text(&mut self, n: usize) -> Result<String, SealError> {
        let bytes = self.take(n)?;
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| SealError::Malformed("text is not UTF-8"))
    }
}

fn decode(plain: &[u8], version: u16) -> Result<SealedState, SealError> {
    let mut c = Cursor(plain);
    let root_key = c.array::<32>()?;
    let master_secret = c.array::<32>()?;
    let mut state = SealedState::new(root_key, master_secret, Vec::new(), String::new());
    decode_into(&mut c, version, &mut state)?;
    Ok(state)
}

/// Reads everything after the two keys into `s` (filled in place: an
/// error drops, and zeroizes, one partial state; image size, issue 14).
#[inline(never)]
fn decode_into(c: &mut Cursor<'_>, version: u16, s: &mut SealedState) -> Result<(), SealError> {
    let n_ops = u16::from_be_bytes(c.array()?);
    if usize::from(n_ops) > MAX_OPERATORS {
        return Err(SealError::Malformed("too many operators"));
    }
    for _ in 0..n_ops {
        let id_len = usize::from(c.byte()?);
        let id = c.text(id_len)?;
        let algorithm = Algorithm::from_code(c.byte()?)
            .ok_or(SealError::Malformed("unknown TOTP algorithm"))?;
        let digits = c.byte()?;
        let secret = Zeroizing::new(c.short()?.to_vec());
        let op = OperatorSecret::new(&id, &secret, algorithm, digits)
            .map_err(|_| SealError::Malformed("invalid operator record"))?;
        if s.operators.iter().any(|o: &OperatorSecret| o.id == op.id) {
            return Err(SealError::Malformed("operator listed twice"));
        }
        s.operators.push(op);
    }
    let acl_len =
        usize::try_from(u32::from_be_bytes(c.array()?)).map_err(|_| SealError::TooLarge)?;
    s.acl = c.text(acl_len)?;
    let n_steps = u16::from_be_bytes(c.array()?);
    for _ in 0..n_steps {
        let id_len = usize::from(c.byte()?);
        let id = c.text(id_len)?;
        let step = u64::from_be_bytes(c.array()?);
        if s.last_steps.iter().any(|(other, _)| *other == id) {
            return Err(SealError::Malformed("last step listed twice"));
        }
        s.last_steps.push((id, step));
    }
    let n_fail = u16::from_be_bytes(c.array()?);
    for _ in 0..n_fail {
        let id_len = usize::from(c.byte()?);
        let id = c.text(id_len)?;
        let count = u32::from_be_bytes(c.array()?);
        let locked_until = u64::from_be_bytes(c.array()?);
        if !s.operators.iter().any(|o| o.id == id) {
            return Err(SealError::Malformed("failure counter for an unknown operator"));
        }
        if s.failures.iter().any(|(other, _, _)| *other == id) {
            return Err(SealError::Malformed("failure counter listed twice"));
        }
        s.failures.push((id, count, locked_until));
    }
    s.keyset_version = u64::from_be_bytes(c.array()?);
    s.revocation_serial = u64::from_be_bytes(c.array()?);
    let n_revoked = usize::from(u16::from_be_bytes(c.array()?));
    if n_revoked > MAX_REVOKED {
        return Err(SealError::Malformed("too many revoked ids"));
    }
    for _ in 0..n_revoked {
        let cti = c.short()?;
        if cti.is_empty() || cti.len() > MAX_CTI_LEN {
            return Err(SealError::Malformed("revoked id empty or too long"));
        }
        let exp = u64::from_be_bytes(c.array()?);
        if s.revoked.iter().any(|(other, _)| other.as_slice() == cti) {
            return Err(SealError::Malformed("revoked id listed twice"));
        }
        s.revoked.push((cti.to_vec(), exp));
    }
    s.audit_head = match c.byte()? {
        0 => None,
        1 => Some(SealedHead {
            chain_id: c.array()?,
            seq: u64::from_be_bytes(c.array()?),
            hash: c.array()?,
        }),
        _ => return Err(SealError::Malformed("audit head flag is not 0 or 1")),
    };
    if version >= 3 {
        s.admin_key = match c.byte()? {
            0 => None,
            1 => Some(c.array::<32>()?),
            _ => return Err(SealError::Malformed("admin key flag is not 0 or 1")),
        };
        s.admin_seq = u64::from_be_bytes(c.array()?);
        let n_rec = usize::from(u16::from_be_bytes(c.array()?));
        if n_rec > s.operators.len() {
            return Err(SealError::Malformed("more recovery code sets than operators"));
        }
        for _ in 0..n_rec {
            let id_len = usize::from(c.byte()?);
            let id = c.text(id_len)?;
            let used = c.byte()?;
            let mut hashes = Vec::with_capacity(RECOVERY_CODES);
            for _ in 0..RECOVERY_CODES {
                hashes.push(c.array::<RECOVERY_HASH_LEN>()?);
            }
            if !s.operators.iter().any(|o| o.id == id) {
                return Err(SealError::Malformed("recovery codes for an unknown operator"));
            }
            if s.recovery.iter().any(|(other, _, _): &(String, _, _)| *other == id) {
                return Err(SealError::Malformed("recovery codes listed twice"));
            }
            s.recovery.push((id, hashes, used));
        }
    }
    if version >= 4 {
        let n_sec = usize::from(u16::from_be_bytes(c.array()?));
        if n_sec > section::KNOWN.len() {
            return Err(SealError::Malformed("more sections than known tags"));
        }
        for _ in 0..n_sec {
            let tag = u16::from_be_bytes(c.array()?);
            if !section::KNOWN.contains(&tag) {
                return Err(SealError::Malformed("unknown section tag"));
            }
            if s.sections.last().is_some_and(|l| l.tag >= tag) {
                return Err(SealError::Malformed("section tags not ascending"));
            }
            let len =
                usize::try_from(u32::from_be_bytes(c.array()?)).map_err(|_| SealError::TooLarge)?;
            if len > MAX_SECTION_LEN {
                return Err(SealError::Malformed("section too long"));
            }
            s.sections.push(Section { tag, body: c.take(len)?.to_vec() });
        }
    }
    if !c.0.is_empty() {
        return Err(SealError::Malformed("trailing plaintext"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEK: [u8; 32] = [0x5a; 32];
    const NONCE: [u8; 12] = [0x01; 12];

    fn state() -> SealedState {
        SealedState {
            root_key: [1; 32],
            master_secret: [2; 32],
            operators: alloc::vec![
                OperatorSecret::new("alice", b"12345678901234567890", Algorithm::Sha1, 8).unwrap(),
                OperatorSecret::new("bob", &[9; 32], Algorithm::Sha512, 6).unwrap(),
            ],
            acl: "allow vm=unlocker scopes=luks:unlock aud=unlocker volumes=data\n".into(),
            last_steps: alloc::vec![("alice".into(), 37037036)],
            failures: alloc::vec![("bob".into(), 6, 1_700_000_060)],
            keyset_version: 41,
            revocation_serial: 17,
            revoked: alloc::vec![(alloc::vec![7; 16], 1_700_000_300)],
            audit_head: Some(SealedHead { chain_id: [3; 16], seq: 99, hash: [4; 32] }),
            admin_key: Some([5; 32]),
            admin_seq: 12,
            recovery: alloc::vec![("bob".into(), alloc::vec![[6; RECOVERY_HASH_LEN]; 8], 0b101)],
            sections: alloc::vec![
                Section { tag: section::KEYS, body: alloc::vec![8; 40] },
                Section { tag: section::ACL, body: alloc::vec![] },
            ],
        }
    }

    /// `state()` encoded with its sections replaced by `raw` (a count and
    /// the sections' bytes), sealed.
    fn with_raw_sections(raw: &[u8]) -> Vec<u8> {
        let mut s = state();
        s.sections.clear();
        let mut plain = encode(&s).unwrap().to_vec();
        plain.truncate(plain.len() - 2);
        plain.extend_from_slice(raw);
        seal_plain(&plain, VERSION)
    }

    #[test]
    fn sections_round_trip_and_stay_ascending() {
        let mut s = state();
        s.set_section(section::VOLUMES, Some(alloc::vec![1, 2, 3]));
        s.set_section(section::ACL, None);
        let tags: Vec<u16> = s.sections.iter().map(|s| s.tag).collect();
        assert_eq!(tags, [section::KEYS, section::VOLUMES]);
        let back = unseal(&seal(&s, &KEK, &NONCE).unwrap(), &KEK).unwrap();
        assert_eq!(back.section(section::VOLUMES), Some(&[1u8, 2, 3][..]));
        assert_eq!(back.section(section::KEYS), Some(&[8u8; 40][..]));
        assert_eq!(back.section(section::ACL), None);
        assert!(back == s);
    }

    #[test]
    fn bad_sections_are_refused() {
        let sec = |tag: u16, body: &[u8]| {
            let mut v = tag.to_be_bytes().to_vec();
            v.extend_from_slice(&(body.len() as u32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let count = |n: u16| n.to_be_bytes().to_vec();
        let cases: [(Vec<u8>, &str); 4] = [
            ([count(1), sec(99, b"x")].concat(), "unknown section tag"),
            ([count(2), sec(2, b"a"), sec(1, b"b")].concat(), "section tags not ascending"),
            ([count(2), sec(2, b"a"), sec(2, b"b")].concat(), "section tags not ascending"),
            ([count(1), sec(1, &[0; MAX_SECTION_LEN + 1])].concat(), "section too long"),
        ];
        for (raw, why) in cases {
            assert_eq!(unseal(&with_raw_sections(&raw), &KEK), Err(SealError::Malformed(why)));
        }
        // A length past the end is short, not a panic.
        let raw = [count(1), 1u16.to_be_bytes().to_vec(), 10u32.to_be_bytes().to_vec()].concat();
        assert_eq!(
            unseal(&with_raw_sections(&raw), &KEK),
            Err(SealError::Malformed("short plaintext"))
        );
        // Unknown tags are refused when sealing too.
        let mut s = state();
        s.sections.push(Section { tag: 99, body: alloc::vec![] });
        assert!(seal(&s, &KEK, &NONCE).is_err());
    }

    #[test]
    fn seal_unseal_round_trip() {
        let blob = seal(&state(), &KEK, &NONCE).unwrap();
        assert_eq!(&blob[..6], MAGIC);
        assert!(!blob.windows(5).any(|w| w == b"alice"), "encrypted");
        assert_eq!(unseal(&blob, &KEK).unwrap(), state());
    }

    #[test]
    fn sealed_state_wrong_key_is_refused() {
        let blob = seal(&state(), &KEK, &NONCE).unwrap();
        assert_eq!(unseal(&blob, &[0x5b; 32]), Err(SealError::Authentication));
    }

    #[test]
    fn sealed_state_tamper_detection() {
        let blob = seal(&state(), &KEK, &NONCE).unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x80;
            let expected = match i {
                0..=5 => SealError::BadMagic,
                6..=7 => match u16::from_be_bytes([bad[6], bad[7]]) {
                    v if v < VERSION => SealError::OldVersion(v),
                    v => SealError::UnsupportedVersion(v),
                },
                20..=23 => {
                    let stated = u32::from_be_bytes([bad[20], bad[21], bad[22], bad[23]]) as usize;
                    if stated > blob.len() - HEADER_LEN {
                        SealError::Truncated
                    } else {
                        SealError::TrailingBytes
                    }
                }
                _ => SealError::Authentication,
            };
            assert_eq!(unseal(&bad, &KEK), Err(expected), "byte {i}");
        }
    }

    #[test]
    fn sealed_state_truncation_is_reported() {
        let blob = seal(&state(), &KEK, &NONCE).unwrap();
        for len in [0, 5, HEADER_LEN - 1, HEADER_LEN, blob.len() - 1] {
            assert_eq!(unseal(&blob[..len], &KEK), Err(SealError::Truncated), "len {len}");
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(unseal(&longer, &KEK), Err(SealError::TrailingBytes));
    }

    #[test]
    fn invalid_plaintext_is_malformed() {
        let mut s = state();
        s.operators.push(s.operators[0].clone());
        let blob = seal(&s, &KEK, &NONCE).unwrap();
        assert_eq!(unseal(&blob, &KEK), Err(SealError::Malformed("operator listed twice")));
    }

    #[test]
    fn version_1_is_refused_with_a_clear_error() {
        let mut blob = seal(&state(), &KEK, &NONCE).unwrap();
        blob[6..8].copy_from_slice(&1u16.to_be_bytes());
        let e = unseal(&blob, &KEK).unwrap_err();
        assert_eq!(e, SealError::OldVersion(1));
        assert!(alloc::format!("{e}").contains("re-provision"));
    }

    #[test]
    fn hostile_plaintext_is_refused() {
        type Change = fn(&mut SealedState);
        let cases: [(&str, Change); 5] = [
            ("failure counter for an unknown operator", |s| {
                s.failures.push(("mallory".into(), 1, 0))
            }),
            ("failure counter listed twice", |s| s.failures.push(("bob".into(), 1, 0))),
            ("last step listed twice", |s| s.last_steps.push(("alice".into(), 1))),
            ("revoked id listed twice", |s| s.revoked.push((alloc::vec![7; 16], 0))),
            ("revoked id empty or too long", |s| s.revoked.push((alloc::vec![1; 65], 0))),
        ];
        for (why, change) in cases {
            let mut s = state();
            change(&mut s);
            let blob = seal(&s, &KEK, &NONCE).unwrap();
            assert_eq!(unseal(&blob, &KEK), Err(SealError::Malformed(why)));
        }
        // Too many revoked ids.
        let mut s = state();
        s.revoked = (0..=MAX_REVOKED as u32).map(|i| (i.to_be_bytes().to_vec(), 0)).collect();
        let blob = seal(&s, &KEK, &NONCE).unwrap();
        assert_eq!(unseal(&blob, &KEK), Err(SealError::Malformed("too many revoked ids")));
        // A head flag other than 0 or 1: re-encrypt a patched plaintext.
        let mut plain = encode(&state()).unwrap();
        let sections = 2 + (2 + 4 + 40) + (2 + 4);
        let tail = 1 + 32 + 8 + 2 + (1 + 3 + 1 + 8 * RECOVERY_HASH_LEN) + sections;
        let flag = plain.len() - tail - (1 + 16 + 8 + 32);
        plain[flag] = 2;
        assert_eq!(
            decode(&plain, VERSION),
            Err(SealError::Malformed("audit head flag is not 0 or 1"))
        );
        plain.truncate(flag + 1 + 16);
        plain[flag] = 1;
        assert_eq!(decode(&plain, VERSION), Err(SealError::Malformed("short plaintext")));
    }

    /// Seals a raw plaintext under a header naming `version`.
    fn seal_plain(plain: &[u8], version: u16) -> Vec<u8> {
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(MAGIC);
        header[6..8].copy_from_slice(&version.to_be_bytes());
        header[8..20].copy_from_slice(&NONCE);
        header[20..24].copy_from_slice(&((plain.len() + TAG_LEN) as u32).to_be_bytes());
        let cipher = ChaCha20Poly1305::new_from_slice(&KEK).unwrap();
        let body =
            cipher.encrypt(&Nonce::from(NONCE), Payload { msg: plain, aad: &header }).unwrap();
        [&header[..], &body].concat()
    }

    #[test]
    fn version_2_is_migrated() {
        // A version 2 blob is the version 4 plaintext without the tail.
        let mut v2 = state();
        v2.admin_key = None;
        v2.admin_seq = 0;
        v2.recovery.clear();
        v2.sections.clear();
        let plain = encode(&v2).unwrap();
        let blob = seal_plain(&plain[..plain.len() - (1 + 8 + 2 + 2)], 2);
        let migrated = unseal(&blob, &KEK).unwrap();
        assert_eq!(migrated, v2);
        // Written back as the current version, and read again the same.
        let again = seal(&migrated, &KEK, &NONCE).unwrap();
        assert_eq!(u16::from_be_bytes([again[6], again[7]]), VERSION);
        assert_eq!(unseal(&again, &KEK).unwrap(), v2);
    }

    #[test]
    fn version_3_is_migrated() {
        // A version 3 blob is the version 4 plaintext without the sections.
        let mut v3 = state();
        v3.sections.clear();
        let plain = encode(&v3).unwrap();
        let blob = seal_plain(&plain[..plain.len() - 2], 3);
        let migrated = unseal(&blob, &KEK).unwrap();
        assert_eq!(migrated, v3);
        // A version 3 blob with a sections tail has trailing plaintext.
        assert_eq!(
            unseal(&seal_plain(&plain, 3), &KEK),
            Err(SealError::Malformed("trailing plaintext"))
        );
    }

    #[test]
    fn hostile_admin_tail_is_refused() {
        let mut s = state();
        s.recovery.push(("mallory".into(), alloc::vec![[0; RECOVERY_HASH_LEN]; 8], 0));
        let blob = seal(&s, &KEK, &NONCE).unwrap();
        assert_eq!(
            unseal(&blob, &KEK),
            Err(SealError::Malformed("recovery codes for an unknown operator"))
        );
        let mut s = state();
        s.recovery.push(s.recovery[0].clone());
        let blob = seal(&s, &KEK, &NONCE).unwrap();
        assert_eq!(unseal(&blob, &KEK), Err(SealError::Malformed("recovery codes listed twice")));
        let mut s = state();
        s.recovery[0].1.pop();
        assert_eq!(seal(&s, &KEK, &NONCE), Err(SealError::Malformed("recovery codes are not 8")));
        let mut s = state();
        s.operators = (0..=MAX_OPERATORS)
            .map(|i| {
                OperatorSecret::new(&alloc::format!("op{i}"), &[1; 20], Algorithm::Sha1, 6).unwrap()
            })
            .collect();
        s.failures.clear();
        s.recovery.clear();
        let blob = seal(&s, &KEK, &NONCE).unwrap();
        assert_eq!(unseal(&blob, &KEK), Err(SealError::Malformed("too many operators")));
    }

    proptest! {
        #[test]
        fn unseal_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = unseal(&bytes, &KEK);
        }

        #[test]
        fn round_trips_any_steps(steps in proptest::collection::btree_map("[a-z]{1,20}", any::<u64>(), 0..8),
                                 acl in "\\PC{0,100}",
                                 counters in any::<(u64, u64, u32, u64)>(),
                                 head in proptest::option::of(any::<([u8; 16], u64, [u8; 32])>())) {
            let mut s = state();
            s.last_steps = steps.into_iter().collect();
            (s.keyset_version, s.revocation_serial) = (counters.0, counters.1);
            s.failures = alloc::vec![("alice".into(), counters.2, counters.3)];
            s.audit_head = head.map(|(chain_id, seq, hash)| SealedHead { chain_id, seq, hash });
            s.acl = acl;
            prop_assert_eq!(unseal(&seal(&s, &KEK, &NONCE).unwrap(), &KEK).unwrap(), s);
        }
    }
}
