//! Token signing keys: two slots (A/B), rotation, and the signed keyset.
//!
//! Rules:
//! - the long-term root key (from the sealed state) signs keysets, revocation
//!   lists and audit records; it never signs tokens;
//! - token signing keys live in slots A and B; one is active. A key signs only
//!   while `now < sign_until` (`not_before + rotation_period`);
//! - rotation makes a new key from 32 DRBG bytes into the other slot (dropping
//!   whatever was there), makes it active, and ends the old key's signing at
//!   `now`; the old key stays published for verification until
//!   `now + overlap` (default 600 s, longer than any token lifetime), then
//!   [`KeyRing::expire`] drops it;
//! - a published key's `not_after` is `sign_until + overlap`: verifiers accept
//!   its tokens until then and refuse them after;
//! - `kid` = the first 8 bytes of SHA-256 of the 32-byte Ed25519 public key;
//! - an operator can rotate at any time ([`KeyRing::rotate`]) and revoke a
//!   published key by kid ([`KeyRing::revoke`]): it leaves the keyset at
//!   once (revoking the active key rotates first, so one key always signs)
//!   and its kid is remembered (at most [`MAX_REVOKED_KIDS`], sealed in the
//!   `KEYS` section, see [`encode_section`]);
//! - the root key can be rotated ([`KeyRing::rotate_root`]): the old root
//!   signs a succession statement naming the new one; the statements (at
//!   most `MAX_ROOT_CHAIN`) are sealed in the `KEYS` section and published
//!   in every keyset, so a verifier pinned to an older root follows them.

use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::msg::{
    KeyEntryWire, KeysetBody, RootSuccession, MAX_ROOT_CHAIN, MAX_SUCCESSION_LEN,
};
use portcullis_proto::succession;
use portcullis_proto::token;

/// Default time a signing key signs before it is rotated (one day).
pub const DEFAULT_ROTATION_PERIOD: u64 = 86_400;
/// Default time a rotated-out key stays valid for verification.
pub const DEFAULT_OVERLAP: u64 = 600;
/// Key ids: the first [`KID_LEN`] bytes of SHA-256 of the public key (one
/// definition, in `proto::key`, shared with the CLI's key files).
pub use portcullis_proto::key::{kid_for, KID_LEN};

/// Most revoked kids remembered (the oldest is forgotten first: its key
/// seed is gone, so it can never be published again anyway).
pub const MAX_REVOKED_KIDS: usize = 32;
/// Format of the sealed `KEYS` section body.
const SECTION_FORMAT: u8 = 1;

/// Why a key could not be revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeKeyError {
    /// No published key has this kid.
    NotPublished,
}

/// Why the sealed `KEYS` section was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionError {
    /// Empty, unknown format, wrong length or too many kids or statements.
    Malformed,
}

/// Why the root key could not be rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootRotateError {
    /// Already [`MAX_ROOT_CHAIN`] rotations: re-provision.
    ChainFull,
    /// The statement could not be signed.
    Sign,
}

/// What the sealed `KEYS` section keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysSection {
    /// Revoked signing-key ids, oldest first.
    pub revoked: Vec<[u8; KID_LEN]>,
    /// Root succession statements, oldest first, each with the kid of
    /// the root that signed it.
    pub chain: Vec<([u8; KID_LEN], Vec<u8>)>,
}

/// The sealed `KEYS` section: `u8 format (1) || u8 n || n x kid (8) ||
/// u8 m || m x (signer kid (8) || u16be len || statement)`,
/// `n <= MAX_REVOKED_KIDS`, `m <= MAX_ROOT_CHAIN`, each statement 1 to
/// `MAX_SUCCESSION_LEN` bytes.
pub fn encode_section(revoked: &[[u8; KID_LEN]], chain: &[([u8; KID_LEN], Vec<u8>)]) -> Vec<u8> {
    let n = revoked.len().min(MAX_REVOKED_KIDS);
    let mut out = Vec::with_capacity(3 + n * KID_LEN);
    out.push(SECTION_FORMAT);
    out.push(n as u8);
    for kid in &revoked[revoked.len() - n..] {
        out.extend_from_slice(kid);
    }
    let chain = &chain[..chain.len().min(MAX_ROOT_CHAIN)];
    out.push(chain.len() as u8);
    for (kid, s) in chain {
        out.extend_from_slice(kid);
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// Decodes [`encode_section`]'s output strictly: exact lengths, bounded counts.
pub fn decode_section(body: &[u8]) -> Result<KeysSection, SectionError> {
    let bad = SectionError::Malformed;
    let [SECTION_FORMAT, n, rest @ ..] = body else { return Err(bad) };
    let n = usize::from(*n);
    // Checked reads throughout: a short body is `bad`, never a panic (and
    // no panic location per read: image size, issue 14).
    let Some((kids, rest)) = rest.split_at_checked(n * KID_LEN).filter(|_| n <= MAX_REVOKED_KIDS)
    else {
        return Err(bad);
    };
    let revoked =
        kids.chunks_exact(KID_LEN).filter_map(|c| <[u8; KID_LEN]>::try_from(c).ok()).collect();
    let [m, tail @ ..] = rest else { return Err(bad) };
    let mut rest: &[u8] = tail;
    if usize::from(*m) > MAX_ROOT_CHAIN {
        return Err(bad);
    }
    let mut chain = Vec::new();
    for _ in 0..*m {
        let Some((signer, tail)) = rest.split_first_chunk::<KID_LEN>() else { return Err(bad) };
        let Some((len, tail)) = tail.split_first_chunk::<2>() else { return Err(bad) };
        let len = usize::from(u16::from_be_bytes(*len));
        if len == 0 || len > MAX_SUCCESSION_LEN {
            return Err(bad);
        }
        let Some((statement, after)) = tail.split_at_checked(len) else { return Err(bad) };
        chain.push((*signer, statement.to_vec()));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(KeysSection { revoked, chain })
}

/// Rotation timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    /// How long a key signs (seconds).
    pub rotation_period: u64,
    /// How long a rotated-out key stays valid for verification (seconds).
    pub overlap: u64,
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig { rotation_period: DEFAULT_ROTATION_PERIOD, overlap: DEFAULT_OVERLAP }
    }
}

impl KeyConfig {
    /// The overlap covers the longest token lifetime and is shorter than
    /// the rotation period.
    pub fn check(&self) -> Result<(), KeyError> {
        if self.overlap < token::MAX_LIFETIME_SECS || self.rotation_period <= self.overlap {
            return Err(KeyError::BadTiming);
        }
        Ok(())
    }
}

/// Why a key configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The overlap is shorter than the longest token lifetime, or the rotation
    /// period is not longer than the overlap.
    BadTiming,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "overlap must cover the longest token lifetime and be shorter than the rotation period",
        )
    }
}

impl core::error::Error for KeyError {}

/// One token signing key and its windows.
pub struct Slot {
    key: SigningKey,
    kid: [u8; KID_LEN],
    not_before: u64,
    sign_until: u64,
    not_after: u64,
}

impl Slot {
    /// The key id.
    pub fn kid(&self) -> &[u8; KID_LEN] {
        &self.kid
    }

    /// Published validity: `(not_before, not_after)`.
    pub fn window(&self) -> (u64, u64) {
        (self.not_before, self.not_after)
    }
}

/// The root key and the two token signing slots.
pub struct KeyRing {
    root: SigningKey,
    root_kid: [u8; KID_LEN],
    slots: [Option<Slot>; 2],
    /// Which slot signs: `false` the first, `true` the second (a `bool`
    /// indexes the two slots with no out-of-range case).
    active: bool,
    config: KeyConfig,
    version: u64,
    revoked: Vec<[u8; KID_LEN]>,
    /// The root succession statements, oldest first, each with the kid of
    /// the root that signed it (see `portcullis_proto::succession`).
    chain: Vec<([u8; KID_LEN], Vec<u8>)>,
}

impl KeyRing {
    /// A ring with the root key from `root_seed` and no signing key yet.
    pub fn new(root_seed: &[u8; 32], config: KeyConfig) -> Result<KeyRing, KeyError> {
        config.check()?;
        let root = SigningKey::from_bytes(root_seed);
        let root_kid = kid_for(&root.verifying_key());
        Ok(KeyRing {
            root,
            root_kid,
            slots: [None, None],
            active: false,
            config,
            version: 0,
            revoked: Vec::new(),
            chain: Vec::new(),
        })
    }

    /// Continues the keyset versions of an earlier boot: the next published
    /// keyset is newer than `version` (the version sealed last), so verifiers
    /// never see a rollback.
    pub fn resume_version(&mut self, version: u64) {
        self.version = self.version.max(version);
    }

    /// Version of the keyset as it is now.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The root key and its kid.
    pub fn root(&self) -> (&SigningKey, &[u8; KID_LEN]) {
        (&self.root, &self.root_kid)
    }

    /// The root public key (what verifiers pin).
    pub fn root_public(&self) -> VerifyingKey {
        self.root.verifying_key()
    }

    /// Whether a rotation is due: no active key, or it has stopped signing.
    pub fn rotation_due(&self, now: u64) -> bool {
        self.active_slot().is_none_or(|s| now >= s.sign_until)
    }

    /// Installs a new signing key from `seed` (32 DRBG bytes) and makes it
    /// active; the previous key stops signing now and is kept for the overlap.
    /// Returns the new kid.
    pub fn rotate(&mut self, seed: &[u8; 32], now: u64) -> [u8; KID_LEN] {
        let overlap = self.config.overlap;
        if let Some(old) = self.slot_mut(self.active).as_mut() {
            old.sign_until = old.sign_until.min(now);
            old.not_after = old.sign_until.saturating_add(overlap);
        }
        let key = SigningKey::from_bytes(seed);
        let kid = kid_for(&key.verifying_key());
        let sign_until = now.saturating_add(self.config.rotation_period);
        let next = !self.active;
        *self.slot_mut(next) = Some(Slot {
            key,
            kid,
            not_before: now,
            sign_until,
            not_after: sign_until.saturating_add(overlap),
        });
        self.active = next;
        self.version = self.version.saturating_add(1);
        kid
    }

    /// Drops a rotated-out key whose overlap has ended; returns its kid.
    pub fn expire(&mut self, now: u64) -> Option<[u8; KID_LEN]> {
        let other = !self.active;
        if self.slot(other).as_ref().is_some_and(|s| now > s.not_after) {
            self.version = self.version.saturating_add(1);
            return self.slot_mut(other).take().map(|s| s.kid);
        }
        None
    }

    /// Revokes the published key `kid` at `now`: it leaves the keyset (a
    /// new version) and its kid joins [`KeyRing::revoked`]. If it is the
    /// active key, a new key from `seed` is made active first, so a key
    /// always signs. Returns whether a rotation was forced.
    pub fn revoke(
        &mut self,
        kid: &[u8],
        seed: &[u8; 32],
        now: u64,
    ) -> Result<bool, RevokeKeyError> {
        let published = |i: &bool| self.slot(*i).as_ref().is_some_and(|s| s.kid == kid);
        let Some(i) = [false, true].into_iter().find(published) else {
            return Err(RevokeKeyError::NotPublished);
        };
        let forced = i == self.active;
        if forced {
            self.rotate(seed, now);
        }
        if let Some(s) = self.slot_mut(i).take() {
            if self.revoked.len() >= MAX_REVOKED_KIDS {
                self.revoked.remove(0);
            }
            self.revoked.push(s.kid);
        }
        self.version = self.version.saturating_add(1);
        Ok(forced)
    }

    /// Restores what an earlier boot sealed in the `KEYS` section (see
    /// [`decode_section`], which bounded it): the revoked kids and the root
    /// chain. The section is authenticated with the rest of the sealed
    /// state; cryptod does not parse the statements (verifiers check them).
    pub fn restore(&mut self, section: KeysSection) {
        self.revoked = section.revoked;
        self.revoked.truncate(MAX_REVOKED_KIDS);
        self.chain = section.chain;
        self.chain.truncate(MAX_ROOT_CHAIN);
    }

    /// The `KEYS` section body for what this ring keeps.
    pub fn section(&self) -> Vec<u8> {
        encode_section(&self.revoked, &self.chain)
    }

    /// Replaces the root key with one from `seed`: the old root signs the
    /// statement that the new one succeeds it (its version is one more
    /// than the rotations so far, at most [`MAX_ROOT_CHAIN`]), and the
    /// keyset version goes up.
    /// Returns the new root's kid.
    pub fn rotate_root(
        &mut self,
        seed: &[u8; 32],
        now: u64,
    ) -> Result<[u8; KID_LEN], RootRotateError> {
        if self.chain.len() >= MAX_ROOT_CHAIN {
            return Err(RootRotateError::ChainFull);
        }
        let new = SigningKey::from_bytes(seed);
        let body = RootSuccession {
            version: self.chain.len() as u64 + 1,
            issued_at: now,
            pubkey: new.verifying_key().to_bytes(),
        };
        let statement = succession::sign(&self.root, &body).map_err(|_| RootRotateError::Sign)?;
        self.chain.push((self.root_kid, statement));
        self.root_kid = kid_for(&new.verifying_key());
        self.root = new;
        self.version = self.version.saturating_add(1);
        Ok(self.root_kid)
    }

    /// The root succession statements, oldest first.
    pub fn root_chain(&self) -> Vec<Vec<u8>> {
        self.chain.iter().map(|(_, s)| s.clone()).collect()
    }

    /// How many times the root was rotated (the current root's version).
    pub fn root_version(&self) -> usize {
        self.chain.len()
    }

    /// The newest succession statement, if the root was ever rotated.
    pub fn last_succession(&self) -> Option<&[u8]> {
        self.chain.last().map(|(_, s)| s.as_slice())
    }

    /// Whether `kid` names this ring's root key or one it succeeded (what
    /// an admin command's `state_id` may be).
    pub fn is_root_kid(&self, kid: &[u8]) -> bool {
        kid == self.root_kid || self.chain.iter().any(|(k, _)| k == kid)
    }

    /// The revoked kids, oldest first.
    pub fn revoked(&self) -> &[[u8; KID_LEN]] {
        &self.revoked
    }

    /// The key that signs tokens at `now`, if any.
    pub fn signer(&self, now: u64) -> Option<(&SigningKey, &[u8; KID_LEN])> {
        self.active_slot()
            .filter(|s| s.not_before <= now && now < s.sign_until)
            .map(|s| (&s.key, &s.kid))
    }

    fn active_slot(&self) -> Option<&Slot> {
        self.slot(self.active).as_ref()
    }

    /// Slot `second` (`false`: the first).
    fn slot(&self, second: bool) -> &Option<Slot> {
        &self.slots[usize::from(second)]
    }

    fn slot_mut(&mut self, second: bool) -> &mut Option<Slot> {
        &mut self.slots[usize::from(second)]
    }

    /// The published keys (active first).
    pub fn published(&self) -> impl Iterator<Item = &Slot> {
        [self.active, !self.active].into_iter().filter_map(|i| self.slot(i).as_ref())
    }

    /// The keys as a verifier's [`token::Keyset`].
    pub fn verifier_keyset(&self) -> token::Keyset {
        let mut set = token::Keyset::new();
        for s in self.published() {
            // Kids of two distinct keys collide with negligible probability; a
            // collision would leave the second key out, refusing its tokens.
            let _ = set.push(token::KeyEntry {
                kid: s.kid.to_vec(),
                key: s.key.verifying_key(),
                not_before: s.not_before,
                not_after: s.not_after,
            });
        }
        set
    }

    /// The keyset payload: every published key with its window.
    pub fn keyset_body(&self, now: u64) -> KeysetBody {
        KeysetBody {
            version: self.version,
            issued_at: now,
            keys: self
                .published()
                .map(|s| KeyEntryWire {
                    kid: s.kid.to_vec(),
                    alg: cose::ALG_ED25519,
                    pubkey: s.key.verifying_key().to_bytes(),
                    not_before: s.not_before,
                    not_after: s.not_after,
                })
                .collect(),
            root_chain: (!self.chain.is_empty()).then(|| self.root_chain()),
        }
    }

    /// The keyset signed by the root key (content type `keyset`).
    pub fn signed_keyset(&self, now: u64) -> Result<Vec<u8>, CoseError> {
        let payload = self.keyset_body(now).to_cbor().map_err(|_| CoseError::Encoding)?;
        cose::sign(&self.root, &self.root_kid, ContentType::Keyset, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use portcullis_proto::scope::{Scope, ScopeSet};
    use portcullis_proto::token::{
        Claims, Expectations, MemoryReplayCache, RevokedSet, VerifyError,
    };

    fn ring() -> KeyRing {
        KeyRing::new(&[1; 32], KeyConfig::default()).unwrap()
    }

    fn claims(iat: u64) -> Claims {
        Claims {
            iss: String::from("cryptod"),
            sub: String::from("policy_pd"),
            aud: String::from("fw0"),
            exp: iat + 60,
            nbf: iat,
            iat,
            cti: alloc::vec![7; 16],
            scope: ScopeSet::single(Scope::NetRead),
            nonce: alloc::vec![1; 16],
        }
    }

    fn check(ring: &KeyRing, token: &[u8], now: u64) -> Result<Claims, VerifyError> {
        let exp =
            Expectations { audience: "fw0", scope: ScopeSet::single(Scope::NetRead), now, skew: 0 };
        token::verify(
            token,
            &ring.verifier_keyset(),
            &exp,
            &mut MemoryReplayCache::new(8),
            &RevokedSet::new(),
        )
        .map(portcullis_proto::Verified::into_inner)
    }

    #[test]
    fn timing_is_validated() {
        let bad = KeyConfig { rotation_period: 1000, overlap: 100 };
        assert_eq!(KeyRing::new(&[1; 32], bad).err(), Some(KeyError::BadTiming));
        let bad = KeyConfig { rotation_period: 600, overlap: 600 };
        assert_eq!(KeyRing::new(&[1; 32], bad).err(), Some(KeyError::BadTiming));
    }

    #[test]
    fn no_signer_until_first_rotation_and_after_period() {
        let mut r = ring();
        assert!(r.signer(0).is_none());
        assert!(r.rotation_due(0));
        r.rotate(&[2; 32], 1000);
        assert!(r.signer(1000).is_some());
        assert!(!r.rotation_due(1000 + DEFAULT_ROTATION_PERIOD - 1));
        assert!(r.rotation_due(1000 + DEFAULT_ROTATION_PERIOD));
        assert!(r.signer(1000 + DEFAULT_ROTATION_PERIOD).is_none(), "never signs past its period");
    }

    #[test]
    fn rotation_keeps_previous_key_for_overlap_then_drops_it() {
        let mut r = ring();
        let a = r.rotate(&[2; 32], 1000);
        let (key, kid) = r.signer(1000).unwrap();
        let token = token::mint(key, kid, &claims(1000)).unwrap();
        let b = r.rotate(&[3; 32], 1010);
        assert_ne!(a, b);
        assert_eq!(r.signer(1010).unwrap().1, &b, "slot B is now active");
        assert_eq!(r.published().count(), 2);
        assert!(check(&r, &token, 1020).is_ok(), "old key verifies during overlap");
        assert_eq!(r.expire(1010 + DEFAULT_OVERLAP), None);
        assert_eq!(r.expire(1010 + DEFAULT_OVERLAP + 1), Some(a));
        assert_eq!(r.published().count(), 1);
        assert_eq!(check(&r, &token, 1020), Err(VerifyError::UnknownKid));
    }

    #[test]
    fn a_key_past_its_overlap_is_refused() {
        let mut r = ring();
        r.rotate(&[2; 32], 1000);
        let (key, kid) = r.signer(1000).unwrap();
        // A token claiming a long life (policy tokens live up to 300 s).
        let mut c = claims(1000);
        c.exp = 1300;
        let token = token::mint(key, kid, &c).unwrap();
        r.rotate(&[3; 32], 1001);
        // Still published (expire not yet called), but once its window ends
        // verifiers refuse it on the published not_after, before looking at exp.
        assert!(check(&r, &token, 1200).is_ok());
        assert_eq!(check(&r, &token, 1001 + DEFAULT_OVERLAP), Err(VerifyError::Expired));
        assert_eq!(check(&r, &token, 1001 + DEFAULT_OVERLAP + 1), Err(VerifyError::UnknownKid));
    }

    #[test]
    fn revoking_a_kid_drops_it_at_once_and_rotates_if_active() {
        let mut r = ring();
        let a = r.rotate(&[2; 32], 1000);
        let (key, kid) = r.signer(1000).unwrap();
        let old = token::mint(key, kid, &claims(1000)).unwrap();
        let b = r.rotate(&[3; 32], 1010);
        assert!(check(&r, &old, 1020).is_ok(), "within the overlap");
        assert_eq!(r.revoke(&a, &[4; 32], 1020), Ok(false));
        assert_eq!(check(&r, &old, 1020), Err(VerifyError::UnknownKid));
        assert_eq!(r.revoke(&a, &[4; 32], 1020), Err(RevokeKeyError::NotPublished));
        // The active key: a new one signs first, then b is gone.
        let v = r.version();
        assert_eq!(r.revoke(&b, &[5; 32], 1030), Ok(true));
        assert!(r.version() > v);
        let (_, now_kid) = r.signer(1030).unwrap();
        assert_ne!(now_kid, &b);
        assert_eq!(r.published().count(), 1);
        assert_eq!(r.revoked(), &[a, b]);
    }

    #[test]
    fn keys_section_round_trips_and_is_strict() {
        let kids = [[1u8; KID_LEN], [2; KID_LEN]];
        let chain = alloc::vec![([5u8; KID_LEN], alloc::vec![9u8; 3])];
        let body = encode_section(&kids, &chain);
        let want = KeysSection { revoked: kids.to_vec(), chain: chain.clone() };
        assert_eq!(decode_section(&body), Ok(want));
        assert_eq!(decode_section(&encode_section(&[], &[])), Ok(KeysSection::default()));
        for bad in [
            &[][..],
            &body[..body.len() - 1],
            &[body.as_slice(), &[0]].concat()[..],
            &[2, 0, 0][..],
            &[1, 0][..],
            &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[1, 33][..],
            &[1, 0, 9][..],
            &[1, 0, 1, 0, 0][..],
            &[1, 0, 1, 5, 5, 5, 5, 5, 5, 5, 5, 0, 0][..],
        ] {
            assert_eq!(decode_section(bad), Err(SectionError::Malformed), "{bad:?}");
        }
        let many = [[7u8; KID_LEN]; MAX_REVOKED_KIDS + 3];
        let back = decode_section(&encode_section(&many, &[])).unwrap();
        assert_eq!(back.revoked.len(), MAX_REVOKED_KIDS);
    }

    #[test]
    fn root_rotation_chains_from_the_old_root_and_is_bounded() {
        let mut r = ring();
        r.rotate(&[2; 32], 1000);
        let first = r.root_public();
        let first_kid = *r.root().1;
        let v = r.version();
        let kid = r.rotate_root(&[8; 32], 1100).unwrap();
        assert_eq!(&kid, r.root().1);
        assert!(r.version() > v);
        assert!(r.is_root_kid(&first_kid) && r.is_root_kid(&kid) && !r.is_root_kid(b"other"));
        assert_eq!(
            succession::follow(first, 0, &r.root_chain()),
            Ok((r.root_public(), 1)),
            "a verifier pinned to the first root reaches the new one"
        );
        assert_eq!(r.keyset_body(1100).root_chain, Some(r.root_chain()));
        // The chain survives the section, and so do the roots it names.
        let section = decode_section(&r.section()).unwrap();
        let mut again = KeyRing::new(&[8; 32], KeyConfig::default()).unwrap();
        again.restore(section);
        assert_eq!(again.root_chain(), r.root_chain());
        assert!(again.is_root_kid(&first_kid));
        for i in 1..MAX_ROOT_CHAIN as u8 {
            r.rotate_root(&[10 + i; 32], 1200).unwrap();
        }
        assert_eq!(r.rotate_root(&[99; 32], 1300), Err(RootRotateError::ChainFull));
        assert_eq!(succession::follow(first, 0, &r.root_chain()).unwrap().0, r.root_public());
    }

    #[test]
    fn signed_keyset_verifies_under_the_root_key_only() {
        let mut r = ring();
        r.rotate(&[2; 32], 1000);
        r.rotate(&[3; 32], 2000);
        let bytes = r.signed_keyset(2000).unwrap();
        let root = r.root_public();
        let rk = *r.root().1;
        let v =
            cose::verify(&bytes, ContentType::Keyset, |kid| (kid == rk).then_some(root)).unwrap();
        let body = KeysetBody::from_cbor(&v.payload).unwrap();
        assert_eq!(body.keys.len(), 2);
        assert_eq!(body.version, 2);
        assert_eq!(
            (body.keys[1].not_before, body.keys[1].not_after),
            (1000, 2000 + DEFAULT_OVERLAP)
        );
        assert_eq!(
            cose::verify(&bytes, ContentType::RevocationList, |_| Some(root)).err(),
            Some(CoseError::WrongContentType)
        );
        let other = SigningKey::from_bytes(&[9; 32]).verifying_key();
        assert_eq!(
            cose::verify(&bytes, ContentType::Keyset, |_| Some(other)).err(),
            Some(CoseError::BadSignature)
        );
    }
}
