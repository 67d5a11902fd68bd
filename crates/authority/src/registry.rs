//! The volume registry, the ACL version and the identity revocation list:
//! the sealed sections [`section::VOLUMES`], [`section::ACL`] and
//! [`section::IDENTITIES`], each encoded and decoded here (strictly,
//! bounded; see `docs/authority.md`, "Volumes, ACL and identities").
//!
//! - A volume's passphrase is derived from the master secret, its id and
//!   its generation ([`crate::unlock::luks_passphrase_gen`]). A volume the
//!   registry does not name is a volume provisioned before the registry:
//!   generation 0, the original derivation. A removed volume stays in the
//!   registry as removed (no passphrase), so adding it again takes the next
//!   generation and never gets the old secret back.
//! - The ACL's version only goes up; the text itself is the sealed ACL.
//! - The identity revocation list names domains cryptod serves no token
//!   to and issues no token for, and device ids it checks no TOTP code
//!   for; its serial goes up with every change.

use alloc::string::String;
use alloc::vec::Vec;

use crate::sealed::{section, Section};

/// Most volumes the registry keeps (removed ones included).
pub const MAX_VOLUMES: usize = 128;
/// Most revoked identities.
pub const MAX_IDENTITIES: usize = 64;
/// Longest volume id or identity, in bytes.
pub const MAX_ID_LEN: usize = portcullis_proto::msg::MAX_ID_LEN;

/// Why a section body does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionError(pub &'static str);

impl core::fmt::Display for SectionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.0)
    }
}

/// One volume the registry knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// The volume id (the HKDF input and the agent's name for it).
    pub id: String,
    /// Its generation: 1 for the first `volume_add`, one more per re-add.
    pub generation: u32,
    /// When it was (last) added.
    pub added_at: u64,
    /// Removed: no passphrase is derived for it.
    pub removed: bool,
}

/// The sealed volume registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volumes(Vec<Volume>);

impl Volumes {
    /// The registry of a state sealed before there was one: every volume
    /// the ACL names, at generation 0 (the original derivation), so volumes
    /// provisioned then keep their passphrases. Made once, then sealed.
    pub fn provisioned<'a>(names: impl Iterator<Item = &'a str>) -> Result<Volumes, SectionError> {
        let mut out: Vec<Volume> = Vec::new();
        for id in names {
            if out.iter().any(|v| v.id == id) {
                continue;
            }
            if out.len() >= MAX_VOLUMES {
                return Err(SectionError("volumes: the acl names too many volumes"));
            }
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(SectionError("volumes: volume id empty or too long"));
            }
            out.push(Volume { id: id.into(), generation: 0, added_at: 0, removed: false });
        }
        Ok(Volumes(out))
    }

    /// The generation whose passphrase `id` gets, `None` if it is not
    /// bound (never added, or removed).
    pub fn generation(&self, id: &str) -> Option<u32> {
        self.get(id).filter(|v| !v.removed).map(|v| v.generation)
    }

    /// `id`'s entry.
    pub fn get(&self, id: &str) -> Option<&Volume> {
        self.0.iter().find(|v| v.id == id)
    }

    /// Every entry.
    pub fn entries(&self) -> &[Volume] {
        &self.0
    }

    /// The generation [`Volumes::add`] would bind `id` at, or why not.
    pub fn next_generation(&self, id: &str) -> Result<u32, &'static str> {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err("volume id empty or too long");
        }
        match self.get(id) {
            Some(v) if !v.removed => Err("volume is bound already (remove it first)"),
            Some(v) => v.generation.checked_add(1).ok_or("volume generation exhausted"),
            None if self.0.len() >= MAX_VOLUMES => Err("volume registry is full"),
            None => Ok(1),
        }
    }

    /// Binds `id` at the next generation (1 for a new id).
    pub fn add(&mut self, id: &str, now: u64) -> Result<u32, &'static str> {
        let generation = self.next_generation(id)?;
        match self.0.iter_mut().find(|v| v.id == id) {
            Some(v) => {
                v.generation = generation;
                v.removed = false;
                v.added_at = now;
            }
            None => {
                self.0.push(Volume { id: id.into(), generation, added_at: now, removed: false })
            }
        }
        Ok(generation)
    }

    /// Unbinds `id` (kept as removed, so its generation is not reused).
    pub fn remove(&mut self, id: &str) -> Result<u32, &'static str> {
        match self.0.iter_mut().find(|v| v.id == id) {
            Some(v) if !v.removed => {
                v.removed = true;
                Ok(v.generation)
            }
            _ => Err("volume is not bound"),
        }
    }

    /// The section body: `u16 n || n x (u8 len || id || u32 generation ||
    /// u64 added_at || u8 removed)`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for v in &self.0 {
            put_text(&mut out, &v.id);
            out.extend_from_slice(&v.generation.to_be_bytes());
            out.extend_from_slice(&v.added_at.to_be_bytes());
            out.push(u8::from(v.removed));
        }
        out
    }

    /// Decodes [`Volumes::encode`]'s output, refusing anything else.
    pub fn decode(body: &[u8]) -> Result<Volumes, SectionError> {
        let mut r = Reader(body);
        let n = usize::from(r.u16()?);
        if n > MAX_VOLUMES {
            return Err(SectionError("volumes: too many entries"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.text()?;
            let generation = u32::from_be_bytes(r.array()?);
            let added_at = u64::from_be_bytes(r.array()?);
            let removed = match r.array::<1>()? {
                [0] => false,
                [1] => true,
                _ => return Err(SectionError("volumes: bad removed flag")),
            };
            if out.iter().any(|v: &Volume| v.id == id) {
                return Err(SectionError("volumes: duplicate id"));
            }
            out.push(Volume { id, generation, added_at, removed });
        }
        r.end()?;
        Ok(Volumes(out))
    }
}

/// The ACL section body: `u64 version`, big-endian. No section: version 0.
pub fn decode_acl_version(body: &[u8]) -> Result<u64, SectionError> {
    let mut r = Reader(body);
    let v = u64::from_be_bytes(r.array()?);
    r.end()?;
    Ok(v)
}

/// What an identity revocation list entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityKind {
    /// A domain name (what Xen says a peer is): no token to or for it.
    Domain,
    /// A device id (a TOTP request's `device_id`, the peer's claim): no
    /// code is checked for it.
    Device,
}

impl IdentityKind {
    /// The audit record's key for an entry of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Domain => "identity",
            IdentityKind::Device => "device",
        }
    }
}

/// The identity revocation list: domain names and device ids, and one
/// serial that goes up with every change to either.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    serial: u64,
    names: Vec<String>,
    devices: Vec<String>,
}

impl Identities {
    /// Whether domain name `name` is revoked.
    pub fn is_revoked(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Whether device id `device` is revoked.
    pub fn is_device_revoked(&self, device: &str) -> bool {
        self.devices.iter().any(|d| d == device)
    }

    /// The list's serial (0: never changed).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The revoked names, in the order they were revoked.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The revoked device ids, in the order they were revoked.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Adds the list to a revocation list's payload, once it has ever
    /// changed (serial above 0): published with the token revocation list.
    pub fn publish(&self, body: &mut portcullis_proto::msg::RevocationBody) {
        if self.serial > 0 {
            body.revoked_names = Some(self.names.clone());
            body.identity_serial = Some(self.serial);
            if !self.devices.is_empty() {
                body.revoked_devices = Some(self.devices.clone());
            }
        }
    }

    fn list(&mut self, kind: IdentityKind) -> &mut Vec<String> {
        match kind {
            IdentityKind::Domain => &mut self.names,
            IdentityKind::Device => &mut self.devices,
        }
    }

    /// Revokes domain name `name`; refused if it is revoked already.
    pub fn revoke(&mut self, name: &str) -> Result<u64, &'static str> {
        self.revoke_kind(IdentityKind::Domain, name)
    }

    /// Takes domain name `name` off the list; refused if it is not on it.
    pub fn restore(&mut self, name: &str) -> Result<u64, &'static str> {
        self.restore_kind(IdentityKind::Domain, name)
    }

    /// Revokes `id` of `kind`; refused if it is revoked already, or the
    /// list (at most [`MAX_IDENTITIES`] of each kind) is full.
    pub fn revoke_kind(&mut self, kind: IdentityKind, id: &str) -> Result<u64, &'static str> {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err("identity empty or too long");
        }
        let serial = self.serial.checked_add(1).ok_or("identity serial exhausted")?;
        let list = self.list(kind);
        if list.iter().any(|n| n == id) {
            return Err("identity is revoked already");
        }
        if list.len() >= MAX_IDENTITIES {
            return Err("identity revocation list is full");
        }
        list.push(id.into());
        self.serial = serial;
        Ok(serial)
    }

    /// Takes `id` of `kind` off the list; refused if it is not on it.
    pub fn restore_kind(&mut self, kind: IdentityKind, id: &str) -> Result<u64, &'static str> {
        let serial = self.serial.checked_add(1).ok_or("identity serial exhausted")?;
        let list = self.list(kind);
        if !list.iter().any(|n| n == id) {
            return Err("identity is not revoked");
        }
        list.retain(|n| n != id);
        self.serial = serial;
        Ok(serial)
    }

    /// The section body: `u64 serial || u16 n || n x (u8 len || name)`,
    /// then, once a device was ever listed, `u16 m || m x (u8 len ||
    /// device)` (a body without it, as written before device ids, lists
    /// none).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.serial.to_be_bytes());
        put_list(&mut out, &self.names);
        if !self.devices.is_empty() {
            put_list(&mut out, &self.devices);
        }
        out
    }

    /// Decodes [`Identities::encode`]'s output, refusing anything else.
    pub fn decode(body: &[u8]) -> Result<Identities, SectionError> {
        let mut r = Reader(body);
        let serial = u64::from_be_bytes(r.array()?);
        let names = r.list()?;
        let devices = if r.0.is_empty() { Vec::new() } else { r.list()? };
        if devices.is_empty() && body.len() > IDENTITIES_HEAD + text_list_len(&names) {
            // encode writes no device list rather than an empty one
            return Err(SectionError("identities: empty device list"));
        }
        r.end()?;
        Ok(Identities { serial, names, devices })
    }
}

/// The bytes before the name list: the serial.
const IDENTITIES_HEAD: usize = 8;

/// The encoded length of a `u16 n || n x (u8 len || text)` list.
fn text_list_len(list: &[String]) -> usize {
    list.iter().fold(2, |n, t| n.saturating_add(1).saturating_add(t.len()))
}

fn put_list(out: &mut Vec<u8>, list: &[String]) {
    // At most MAX_IDENTITIES entries: checked on the way in.
    out.extend_from_slice(&(list.len().min(MAX_IDENTITIES) as u16).to_be_bytes());
    for n in list.iter().take(MAX_IDENTITIES) {
        put_text(out, n);
    }
}

pub use crate::sealed::{get_section, set_section};

/// The three sections of `sections`, decoded (absent: the provisioned
/// volumes `acl_volumes`, version 0, nothing revoked).
// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
pub fn decode_all<'a>(
    sections: &[Section],
    acl_volumes: impl Iterator<Item = &'a str>,
) -> Result<(Volumes, u64, Identities), SectionError> {
    let volumes = match get_section(sections, section::VOLUMES) {
        Some(body) => Volumes::decode(body)?,
        None => Volumes::provisioned(acl_volumes)?,
    };
    let acl = get_section(sections, section::ACL).map_or(Ok(0), decode_acl_version)?;
    let ids = get_section(sections, section::IDENTITIES)
        .map_or(Ok(Identities::default()), Identities::decode)?;
    Ok((volumes, acl, ids))
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    // Every text here is at most MAX_ID_LEN (128) bytes: checked on the way in.
    out.push(text.len().min(MAX_ID_LEN) as u8);
    out.extend_from_slice(&text.as_bytes()[..text.len().min(MAX_ID_LEN)]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SectionError> {
        if self.0.len() < n {
            return Err(SectionError("section body truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SectionError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, SectionError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<String, SectionError> {
        let len = usize::from(self.array::<1>()?[0]);
        if len == 0 || len > MAX_ID_LEN {
            return Err(SectionError("section text empty or too long"));
        }
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes)
            .map(String::from)
            .map_err(|_| SectionError("section text is not UTF-8"))
    }

    /// `u16 n || n x text`: at most [`MAX_IDENTITIES`], no duplicates.
    fn list(&mut self) -> Result<Vec<String>, SectionError> {
        let n = usize::from(self.u16()?);
        if n > MAX_IDENTITIES {
            return Err(SectionError("identities: too many entries"));
        }
        let mut out: Vec<String> = Vec::with_capacity(n);
        for _ in 0..n {
            let text = self.text()?;
            if out.contains(&text) {
                return Err(SectionError("identities: duplicate entry"));
            }
            out.push(text);
        }
        Ok(out)
    }

    fn end(&self) -> Result<(), SectionError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SectionError("section body has trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_round_trip_and_generations() {
        let mut v = Volumes::provisioned(["data", "home", "data"].into_iter()).unwrap();
        assert_eq!(v.entries().len(), 2);
        assert_eq!(v.generation("data"), Some(0));
        assert_eq!(v.generation("extra"), None);
        assert_eq!(v.add("data", 5), Err("volume is bound already (remove it first)"));
        assert_eq!(v.add("extra", 5), Ok(1));
        v.remove("extra").unwrap();
        assert_eq!(v.generation("extra"), None);
        assert_eq!(v.add("extra", 8), Ok(2));
        assert_eq!(v.remove("nope"), Err("volume is not bound"));
        assert_eq!(v.remove("data"), Ok(0));
        assert_eq!(v.remove("data"), Err("volume is not bound"));
        assert_eq!(v.add("data", 9), Ok(1));
        let back = Volumes::decode(&v.encode()).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let mut v = Volumes::default();
        v.add("a", 1).unwrap();
        let good = v.encode();
        for cut in 0..good.len() {
            assert!(Volumes::decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Volumes::decode(&trailing).is_err());
        let mut flag = good.clone();
        *flag.last_mut().unwrap() = 2;
        assert!(Volumes::decode(&flag).is_err());
        assert!(Volumes::decode(&[0xff, 0xff]).is_err());
        assert!(decode_acl_version(&[0; 7]).is_err());
        assert!(decode_acl_version(&[0; 9]).is_err());
        let mut ids = Identities::default();
        ids.revoke("policy_pd").unwrap();
        let body = ids.encode();
        for cut in 0..body.len() {
            assert!(Identities::decode(&body[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn identity_serial_goes_up() {
        let mut ids = Identities::default();
        assert_eq!(ids.revoke("policy_pd"), Ok(1));
        assert_eq!(ids.revoke("policy_pd"), Err("identity is revoked already"));
        assert!(ids.is_revoked("policy_pd"));
        assert_eq!(ids.restore("policy_pd"), Ok(2));
        assert_eq!(ids.restore("policy_pd"), Err("identity is not revoked"));
        assert!(!ids.is_revoked("policy_pd"));
        assert_eq!(Identities::decode(&ids.encode()).unwrap(), ids);
    }

    #[test]
    fn device_ids_are_a_second_list_after_the_names() {
        let mut ids = Identities::default();
        ids.revoke("policy_pd").unwrap();
        // A body written before device ids (no second list) lists none.
        let old = ids.encode();
        assert_eq!(Identities::decode(&old).unwrap(), ids);
        assert_eq!(ids.revoke_kind(IdentityKind::Device, "yubi1"), Ok(2));
        assert!(ids.is_device_revoked("yubi1") && !ids.is_revoked("yubi1"));
        let body = ids.encode();
        assert_eq!(body.len(), old.len() + 2 + 1 + 5);
        assert_eq!(Identities::decode(&body).unwrap(), ids);
        for cut in old.len() + 1..body.len() {
            assert!(Identities::decode(&body[..cut]).is_err(), "{cut}");
        }
        // An empty second list is not what encode writes: refused.
        let mut empty = old.clone();
        empty.extend_from_slice(&[0, 0]);
        assert!(Identities::decode(&empty).is_err());
        // A duplicate device is refused.
        let mut dup = body.clone();
        dup[old.len() + 1] = 2;
        dup.extend_from_slice(&[5, b'y', b'u', b'b', b'i', b'1']);
        assert_eq!(Identities::decode(&dup), Err(SectionError("identities: duplicate entry")));
        assert_eq!(ids.restore_kind(IdentityKind::Device, "yubi1"), Ok(3));
        assert_eq!(ids.restore_kind(IdentityKind::Device, "yubi1"), Err("identity is not revoked"));
        assert_eq!(ids.encode(), [&3u64.to_be_bytes()[..], &old[8..]].concat());
    }
}
