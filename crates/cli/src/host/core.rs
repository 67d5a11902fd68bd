//! The host service's decisions, sans I/O: given the configured guests and
//! what xenstore shows (the domains, their names, whether `ready` is there,
//! what a guest persisted), which domains to configure, which name maps to
//! rewrite, which persist nodes to watch, what to write to disk and what to
//! acknowledge. The shell (`mod.rs`) reads xenstore, feeds this, and carries
//! out the plan; it reports back what it did, so a failed step is simply
//! planned again at the next scan.
//!
//! Everything read from xenstore is hostile: domain ids are parsed strictly,
//! names are bounded, the domain list is bounded, persisted values are at
//! most [`MAX_PERSIST_LEN`] bytes. Identity is the domain id; a name is only
//! trusted because xl (dom0) writes it and a domain cannot change it.

use std::collections::BTreeMap;

use portcullis_platform::{ConfigItem, DomId};
use portcullis_xen::dom0;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Domain ids from here on are reserved (`DOMID_FIRST_RESERVED`).
pub use portcullis_xen::dom0::DOMID_FIRST_RESERVED;
/// Most domains looked at in one scan.
pub const MAX_DOMAINS: usize = 1024;
/// Longest domain name considered (longer ones are never ours).
pub const MAX_NAME_LEN: usize = super::config::MAX_NAME_LEN;
/// Longest persisted item accepted from a guest.
pub const MAX_PERSIST_LEN: usize = 4096;
/// The root public key, relative to `state_dir`.
pub const ROOT_PUB: &str = "root.pub";

/// What a guest is; decides the items it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The authority.
    Cryptod,
    /// The entropy root.
    Entropyd,
    /// The operator console.
    Unlocker,
    /// The policy enforcer.
    PolicyPd,
}

impl Role {
    /// The role's name in host.toml.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Cryptod => "cryptod",
            Role::Entropyd => "entropyd",
            Role::Unlocker => "unlocker",
            Role::PolicyPd => "policy_pd",
        }
    }

    /// The configuration items the role gets (`settings` only if the
    /// guest has a settings table).
    pub const fn items(self) -> &'static [ConfigItem] {
        match self {
            Role::Cryptod => {
                &[ConfigItem::KeyEncryptionKey, ConfigItem::SealedState, ConfigItem::Settings]
            }
            Role::Unlocker | Role::PolicyPd => &[ConfigItem::RootPublicKey, ConfigItem::Settings],
            Role::Entropyd => &[ConfigItem::Settings],
        }
    }

    /// The role's settings schema (docs/settings.md).
    pub const fn settings(self) -> portcullis_apps::settings::Role {
        use portcullis_apps::settings::Role as S;
        match self {
            Role::Cryptod => S::Cryptod,
            Role::Entropyd => S::Entropyd,
            Role::Unlocker => S::Unlocker,
            Role::PolicyPd => S::PolicyPd,
        }
    }

    /// The items the role persists through dom0.
    pub const fn persists(self) -> &'static [ConfigItem] {
        match self {
            Role::Cryptod => &[ConfigItem::SealedState],
            _ => &[],
        }
    }
}

/// Where an item's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file relative to `state_dir`.
    File(&'static str),
    /// The guest's rendered `settings` table.
    Settings,
    /// The KEK, unsealed once at start from `cryptod/kek.sealed` and held
    /// only in memory (crate::kek).
    Kek,
}

/// Where `item`'s bytes come from. The sealed state's file is also where
/// every durable persist goes, so a guest created again gets the latest.
pub const fn source(item: ConfigItem) -> Source {
    match item {
        ConfigItem::SealedState => Source::File("cryptod/sealed-state"),
        ConfigItem::KeyEncryptionKey => Source::Kek,
        ConfigItem::RootPublicKey => Source::File(ROOT_PUB),
        ConfigItem::Settings => Source::Settings,
    }
}

/// The item's xenstore key: its name with `.` as `-`.
pub use portcullis_xen::dom0::store_key as item_key;

/// Parses a domain id as xenstore lists it: decimal digits only, at most
/// 5, below [`DOMID_FIRST_RESERVED`].
pub fn parse_domid(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&d| d < DOMID_FIRST_RESERVED)
}

/// `/local/domain/<id>`.
pub fn dom_path(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

/// `/local/domain/<id>/portcullis`, the directory dom0 gives the guest.
pub fn base_path(domid: u16) -> String {
    dom0::base(DomId(domid))
}

/// Where the guest reads `item`.
pub fn item_path(domid: u16, item: ConfigItem) -> String {
    dom0::config_path(DomId(domid), item)
}

/// The guest's map of our guests' domain ids.
pub fn names_path(domid: u16) -> String {
    format!("{}/names", base_path(domid))
}

/// Written last, once per domain life.
pub fn ready_path(domid: u16) -> String {
    dom0::ready_path(DomId(domid))
}

/// The acknowledgement directory.
pub fn ack_dir(domid: u16) -> String {
    format!("{}/persist-ack", base_path(domid))
}

/// The acknowledgement of a durable persist of `item`.
pub fn ack_path(domid: u16, item: ConfigItem) -> String {
    dom0::ack_path(DomId(domid), item)
}

/// Where the guest writes `item` to persist it (its own `data` directory).
pub fn persist_path(domid: u16, item: ConfigItem) -> String {
    dom0::persist_path(DomId(domid), item)
}

/// The longest value of `item` that fits one xenstore write at
/// [`item_path`] for any domain id.
pub fn max_item_len(item: ConfigItem) -> usize {
    let path = item_path(DOMID_FIRST_RESERVED - 1, item);
    portcullis_xen::xenstore::wire::PAYLOAD_MAX.saturating_sub(path.len() + 1)
}

/// SHA-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One domain as a scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its id.
    pub domid: u16,
    /// Its `name` node's bytes (hostile), if it has one.
    pub name: Option<Vec<u8>>,
    /// Whether `portcullis/ready` exists (it was configured already,
    /// perhaps by an earlier run of the service).
    pub ready: bool,
    /// The SHA-256 of the kernel xl loaded for it, if the shell measured it
    /// for this scan (it does so while [`Core::wants_measurement`]).
    pub measurement: Option<[u8; 32]>,
}

/// Configure a guest: every item, the names map, then `ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configure {
    /// The domain.
    pub domid: u16,
    /// Its name (a configured guest's).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The names map to write.
    pub names: BTreeMap<String, u16>,
    /// For cryptod: the measurements to write (each measured peer's id to
    /// its image's SHA-256), before the names, in the same transaction.
    pub measurements: BTreeMap<u16, [u8; 32]>,
}

/// What a scan decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Domains of our guests seen for the first time (id, name).
    pub arrived: Vec<(u16, String)>,
    /// Domains of our guests that are gone (id, name).
    pub left: Vec<(u16, String)>,
    /// Guests to configure.
    pub configure: Vec<Configure>,
    /// Already configured guests whose names map must be rewritten.
    pub names: Vec<(u16, BTreeMap<String, u16>)>,
    /// Of those, the cryptod domains whose measurements directory must
    /// hold exactly this (written before the names, in one transaction).
    pub measurements: BTreeMap<u16, BTreeMap<u16, [u8; 32]>>,
    /// Persist nodes to watch (new domains of persisting roles); each is
    /// also to be read now ([`Core::persist_read`]).
    pub watch: Vec<(u16, ConfigItem)>,
    /// Persist nodes of gone domains to stop watching.
    pub unwatch: Vec<(u16, ConfigItem)>,
    /// Our guests' current domain ids (the `Peers` map).
    pub peers: BTreeMap<String, u16>,
    /// Things worth a warning (ambiguous names, too many domains).
    pub warnings: Vec<String>,
}

/// What to do with a value a guest persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistStep {
    /// Nothing (no value, not ours, or already acknowledged).
    Nothing,
    /// Refused (and not acknowledged): why.
    Refuse(String),
    /// Write `bytes` durably to `file` (relative to `state_dir`), then call
    /// [`Core::persisted`].
    Write {
        /// File relative to `state_dir`.
        file: &'static str,
        /// The value.
        bytes: Vec<u8>,
        /// Its SHA-256.
        hash: [u8; 32],
    },
    /// The value is durable already: write the ack.
    Ack(Ack),
}

/// An acknowledgement to write: `path` gets `hex`; then call [`Core::acked`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The domain.
    pub domid: u16,
    /// The item.
    pub item: ConfigItem,
    /// Its ack node.
    pub path: String,
    /// Lowercase hex SHA-256 of the durable bytes.
    pub hex: String,
    /// The same as bytes.
    pub hash: [u8; 32],
}

#[derive(Clone, Debug)]
struct Live {
    name: String,
    role: Role,
    configured: bool,
    /// The names map as last written (None: unknown, e.g. after a restart).
    names: Option<BTreeMap<String, u16>>,
    /// The hash last acknowledged per persisted item.
    acked: Vec<(ConfigItem, [u8; 32])>,
    /// The SHA-256 of the kernel xl loaded for it, once measured.
    measurement: Option<[u8; 32]>,
    /// For cryptod: the measurements directory as last written.
    measurements: Option<BTreeMap<u16, [u8; 32]>>,
}

/// The service's state between events.
#[derive(Debug)]
pub struct Core {
    guests: BTreeMap<String, Role>,
    live: BTreeMap<u16, Live>,
    /// SHA-256 of what is durable on disk, per file.
    durable: BTreeMap<&'static str, [u8; 32]>,
}

impl Core {
    /// A core for the configured guests (name to role).
    pub fn new(guests: BTreeMap<String, Role>) -> Core {
        Core { guests, live: BTreeMap::new(), durable: BTreeMap::new() }
    }

    /// Records what `file` (relative to `state_dir`) holds on disk now.
    pub fn set_durable(&mut self, file: &'static str, hash: [u8; 32]) {
        self.durable.insert(file, hash);
    }

    /// The configured role of the domain named `name`, if it is ours.
    fn ours(&self, name: &[u8]) -> Option<(String, Role)> {
        if name.len() > MAX_NAME_LEN {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        self.guests.get(name).map(|r| (name.to_string(), *r))
    }

    /// Whether the shell should measure domain `domid` named `name` (its
    /// `name` node's bytes) before the next scan: one of our guests not
    /// measured yet in this domain life (a failed measurement is tried
    /// again at every scan).
    pub fn wants_measurement(&self, domid: u16, name: &[u8]) -> bool {
        let Some((name, _)) = self.ours(name) else { return false };
        self.live.get(&domid).is_none_or(|l| l.name != name || l.measurement.is_none())
    }

    /// The measurements a cryptod domain is to be given: every live
    /// measured guest's.
    fn measured(&self) -> BTreeMap<u16, [u8; 32]> {
        self.live.iter().filter_map(|(id, l)| l.measurement.map(|m| (*id, m))).collect()
    }

    /// Decides what to do given every domain now (see [`Plan`]).
    pub fn scan(&mut self, seen: &[Seen]) -> Plan {
        let mut plan = Plan::default();
        if seen.len() > MAX_DOMAINS {
            plan.warnings.push(format!(
                "{} domains listed; only the first {MAX_DOMAINS} are looked at",
                seen.len()
            ));
        }
        // Our guests' domains now, by id; names held by more than one
        // domain are ambiguous and resolve to nobody.
        let mut now: BTreeMap<u16, (String, Role, bool)> = BTreeMap::new();
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        let mut measured: BTreeMap<u16, [u8; 32]> = BTreeMap::new();
        for s in seen.iter().take(MAX_DOMAINS) {
            if s.domid == 0 || s.domid >= DOMID_FIRST_RESERVED {
                continue;
            }
            let Some((name, role)) = s.name.as_deref().and_then(|n| self.ours(n)) else {
                continue;
            };
            *count.entry(name.clone()).or_default() += 1;
            if let Some(m) = s.measurement {
                measured.insert(s.domid, m);
            }
            now.insert(s.domid, (name, role, s.ready));
        }
        for (name, n) in &count {
            if *n > 1 {
                plan.warnings.push(format!(
                    "{n} domains are named {name}; none of them is configured or resolved \
                     until only one is left"
                ));
            }
        }
        now.retain(|_, (name, _, _)| count.get(name) == Some(&1));

        // Gone, or the id now names another guest.
        let gone: Vec<u16> = self
            .live
            .iter()
            .filter(|(id, l)| now.get(id).is_none_or(|(name, _, _)| *name != l.name))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(l) = self.live.remove(&id) {
                plan.unwatch.extend(l.role.persists().iter().map(|i| (id, *i)));
                plan.left.push((id, l.name));
            }
        }
        for (id, (name, role, ready)) in &now {
            if !self.live.contains_key(id) {
                plan.arrived.push((*id, name.clone()));
                plan.watch.extend(role.persists().iter().map(|i| (*id, *i)));
                self.live.insert(
                    *id,
                    Live {
                        name: name.clone(),
                        role: *role,
                        configured: *ready,
                        names: None,
                        acked: Vec::new(),
                        measurement: None,
                        measurements: None,
                    },
                );
            }
            // Measured once per domain life: the first measurement stays.
            if let (Some(l), Some(m)) = (self.live.get_mut(id), measured.get(id)) {
                l.measurement.get_or_insert(*m);
            }
        }
        plan.peers = self.live.iter().map(|(id, l)| (l.name.clone(), *id)).collect();
        // cryptod is given a guest's name only with its measurement: its
        // names map holds the measured guests only (one measured later is
        // added then), so it never sees a name without the measurement.
        let measurements = self.measured();
        let measured_names: BTreeMap<String, u16> = plan
            .peers
            .iter()
            .filter(|(_, id)| measurements.contains_key(id))
            .map(|(n, id)| (n.clone(), *id))
            .collect();
        for (id, l) in &self.live {
            let cryptod = l.role == Role::Cryptod;
            let names = if cryptod { &measured_names } else { &plan.peers };
            if !l.configured {
                plan.configure.push(Configure {
                    domid: *id,
                    name: l.name.clone(),
                    role: l.role,
                    names: names.clone(),
                    measurements: if cryptod { measurements.clone() } else { BTreeMap::new() },
                });
            } else if cryptod && l.measurements.as_ref() != Some(&measurements) {
                plan.names.push((*id, names.clone()));
                plan.measurements.insert(*id, measurements.clone());
            } else if l.names.as_ref() != Some(names) {
                plan.names.push((*id, names.clone()));
            }
        }
        plan
    }

    /// The shell configured `domid` (items, `names`, `ready` written).
    pub fn configured(&mut self, domid: u16, names: BTreeMap<String, u16>) {
        if let Some(l) = self.live.get_mut(&domid) {
            l.configured = true;
            l.names = Some(names);
        }
    }

    /// The shell wrote `domid`'s (cryptod's) measurements directory.
    pub fn measurements_written(&mut self, domid: u16, measurements: BTreeMap<u16, [u8; 32]>) {
        if let Some(l) = self.live.get_mut(&domid) {
            l.measurements = Some(measurements);
        }
    }

    /// The shell rewrote `domid`'s names map.
    pub fn names_written(&mut self, domid: u16, names: BTreeMap<String, u16>) {
        if let Some(l) = self.live.get_mut(&domid) {
            l.names = Some(names);
        }
    }

    /// Whether `domid` is a live domain of ours that persists `item`.
    pub fn persists(&self, domid: u16, item: ConfigItem) -> bool {
        self.live.get(&domid).is_some_and(|l| l.role.persists().contains(&item))
    }

    /// Every live domain's persisted items (each to be checked at a
    /// rescan, in case a watch event was lost).
    pub fn persisting(&self) -> Vec<(u16, ConfigItem)> {
        self.live
            .iter()
            .flat_map(|(id, l)| l.role.persists().iter().map(move |i| (*id, *i)))
            .collect()
    }

    /// Decides about the value of `domid`'s persist node for `item`
    /// (`None`: the node does not exist).
    pub fn persist_read(
        &mut self,
        domid: u16,
        item: ConfigItem,
        value: Option<&[u8]>,
    ) -> PersistStep {
        if !self.persists(domid, item) {
            return PersistStep::Nothing;
        }
        let Some(value) = value else { return PersistStep::Nothing };
        let Source::File(file) = source(item) else { return PersistStep::Nothing };
        if value.is_empty() {
            return PersistStep::Refuse("an empty value".into());
        }
        if value.len() > MAX_PERSIST_LEN {
            return PersistStep::Refuse(format!(
                "{} bytes, more than {MAX_PERSIST_LEN}",
                value.len()
            ));
        }
        if value.len() > max_item_len(item) {
            return PersistStep::Refuse(format!(
                "{} bytes would not fit back as the item (at most {})",
                value.len(),
                max_item_len(item)
            ));
        }
        let hash = digest(value);
        if self.durable.get(file) != Some(&hash) {
            return PersistStep::Write { file, bytes: value.to_vec(), hash };
        }
        let acked = self
            .live
            .get(&domid)
            .is_some_and(|l| l.acked.iter().any(|(i, h)| *i == item && *h == hash));
        if acked {
            PersistStep::Nothing
        } else {
            PersistStep::Ack(ack(domid, item, hash))
        }
    }

    /// `file` now durably holds the value hashing to `hash`; returns the
    /// ack to write if `domid` is still there.
    pub fn persisted(
        &mut self,
        domid: u16,
        item: ConfigItem,
        file: &'static str,
        hash: [u8; 32],
    ) -> Option<Ack> {
        self.durable.insert(file, hash);
        self.persists(domid, item).then(|| ack(domid, item, hash))
    }

    /// The shell wrote `a`.
    pub fn acked(&mut self, a: &Ack) {
        if let Some(l) = self.live.get_mut(&a.domid) {
            l.acked.retain(|(i, _)| *i != a.item);
            l.acked.push((a.item, a.hash));
        }
    }
}

fn ack(domid: u16, item: ConfigItem, hash: [u8; 32]) -> Ack {
    Ack { domid, item, path: ack_path(domid, item), hex: hex::encode(hash), hash }
}

/// The directory of dom0's measurements in cryptod's (`domid`'s) own dir.
pub fn measurements_path(domid: u16) -> String {
    format!("{}/measurements", base_path(domid))
}

/// Where cryptod (`reader`) finds the measurement of `dom`.
pub fn measurement_path(reader: u16, dom: u16) -> String {
    dom0::measurement_path(DomId(reader), DomId(dom))
}

/// The entries of a measurements directory to remove: everything not in
/// `desired`.
pub fn stale_measurements(existing: &[String], desired: &BTreeMap<u16, [u8; 32]>) -> Vec<String> {
    existing
        .iter()
        .filter(|e| parse_domid(e).is_none_or(|d| !desired.contains_key(&d)))
        .cloned()
        .collect()
}

/// The entries of a names directory to remove: everything not in `desired`.
pub fn stale_names(existing: &[String], desired: &BTreeMap<String, u16>) -> Vec<String> {
    existing.iter().filter(|n| !desired.contains_key(n.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Core {
        Core::new(BTreeMap::from([
            ("cryptod".to_string(), Role::Cryptod),
            ("unlocker".to_string(), Role::Unlocker),
            ("entropyd".to_string(), Role::Entropyd),
        ]))
    }

    /// A domain seen, measured (to `[domid; 32]`).
    fn seen(domid: u16, name: &str, ready: bool) -> Seen {
        let measurement = Some([domid as u8; 32]);
        Seen { domid, name: Some(name.as_bytes().to_vec()), ready, measurement }
    }

    fn unmeasured(domid: u16, name: &str) -> Seen {
        Seen { measurement: None, ..seen(domid, name, false) }
    }

    fn map(entries: &[(&str, u16)]) -> BTreeMap<String, u16> {
        entries.iter().map(|(n, d)| (n.to_string(), *d)).collect()
    }

    /// Carries out a plan as a shell that never fails would.
    fn apply(c: &mut Core, plan: &Plan) {
        for cfg in &plan.configure {
            c.configured(cfg.domid, cfg.names.clone());
            if cfg.role == Role::Cryptod {
                c.measurements_written(cfg.domid, cfg.measurements.clone());
            }
        }
        for (id, names) in &plan.names {
            c.names_written(*id, names.clone());
        }
        for (id, m) in &plan.measurements {
            c.measurements_written(*id, m.clone());
        }
    }

    fn measured(domid: u16, name: &str, m: [u8; 32]) -> Seen {
        Seen { measurement: Some(m), ..seen(domid, name, false) }
    }

    #[test]
    fn cryptod_gets_each_measurement_with_or_before_the_name() {
        let mut c = core();
        let (u, k) = ([0x11; 32], [0x22; 32]);
        // The unlocker arrives first, measured: nothing to publish yet.
        assert!(c.wants_measurement(5, b"unlocker"));
        assert!(!c.wants_measurement(6, b"stranger"), "only our guests are measured");
        let p = c.scan(&[measured(5, "unlocker", u)]);
        assert!(!c.wants_measurement(5, b"unlocker"), "measured once per domain life");
        assert!(p.configure[0].measurements.is_empty(), "only cryptod gets measurements");
        apply(&mut c, &p);
        // cryptod arrives: configured with the unlocker's name and measurement
        // (and its own), written in the same transaction as its names.
        let p = c.scan(&[seen(5, "unlocker", false), measured(7, "cryptod", k)]);
        let cf = &p.configure[0];
        assert_eq!((cf.domid, cf.role), (7, Role::Cryptod));
        assert_eq!(cf.names, map(&[("cryptod", 7), ("unlocker", 5)]));
        assert_eq!(cf.measurements, BTreeMap::from([(5, u), (7, k)]));
        apply(&mut c, &p);
        // policy_pd arrives unmeasured (xl's record is not there yet): it is
        // configured, but cryptod is not given its name yet.
        let mut c2 = Core::new(BTreeMap::from([
            ("cryptod".to_string(), Role::Cryptod),
            ("unlocker".to_string(), Role::Unlocker),
            ("policy_pd".to_string(), Role::PolicyPd),
        ]));
        let p = c2.scan(&[measured(5, "unlocker", u), measured(7, "cryptod", k)]);
        apply(&mut c2, &p);
        let all = [unmeasured(5, "unlocker"), unmeasured(7, "cryptod"), unmeasured(8, "policy_pd")];
        let p = c2.scan(&all);
        assert!(c2.wants_measurement(8, b"policy_pd"), "tried again next scan");
        assert_eq!(p.configure[0].domid, 8, "configured all the same");
        assert!(p.names.iter().all(|(id, _)| *id != 7), "cryptod's names unchanged: {p:?}");
        assert_eq!(p.names, [(5, map(&[("cryptod", 7), ("policy_pd", 8), ("unlocker", 5)]))]);
        apply(&mut c2, &p);
        assert!(c2.scan(&all).names.is_empty(), "nothing new until it is measured");
        // Measured at the next scan: the name and the measurement together.
        let pd = [0x33; 32];
        let p = c2.scan(&[
            unmeasured(5, "unlocker"),
            unmeasured(7, "cryptod"),
            measured(8, "policy_pd", pd),
        ]);
        assert_eq!(p.measurements.get(&7), Some(&BTreeMap::from([(5, u), (7, k), (8, pd)])));
        let names7 = &p.names.iter().find(|(id, _)| *id == 7).unwrap().1;
        assert_eq!(names7.get("policy_pd"), Some(&8), "in the same step as the measurement");
        apply(&mut c2, &p);
        // policy_pd leaves: its measurement goes with its name.
        let p = c2.scan(&[unmeasured(5, "unlocker"), unmeasured(7, "cryptod")]);
        assert_eq!(p.measurements.get(&7), Some(&BTreeMap::from([(5, u), (7, k)])));
        assert_eq!(p.names.iter().find(|(id, _)| *id == 7).unwrap().1.get("policy_pd"), None);
        apply(&mut c2, &p);
        // Created again from another image: a new life, measured again.
        assert!(c2.wants_measurement(9, b"policy_pd"));
        let other = [0x44; 32];
        let p = c2.scan(&[
            seen(5, "unlocker", false),
            seen(7, "cryptod", false),
            measured(9, "policy_pd", other),
        ]);
        assert_eq!(p.measurements.get(&7).and_then(|m| m.get(&9)), Some(&other));
        apply(&mut c2, &p);
        // Measured once per domain life: a later digest is not taken.
        let p = c2.scan(&[
            seen(5, "unlocker", false),
            measured(7, "cryptod", [0x55; 32]),
            seen(9, "policy_pd", false),
        ]);
        assert!(p.names.is_empty() && p.measurements.is_empty(), "{p:?}");
        assert_eq!(
            stale_measurements(&["5".into(), "8".into(), "junk".into()], &BTreeMap::from([(5, u)])),
            ["8".to_string(), "junk".to_string()]
        );
        assert_eq!(measurement_path(7, 9), "/local/domain/7/portcullis/measurements/9");
        assert_eq!(measurements_path(7), "/local/domain/7/portcullis/measurements");
    }

    #[test]
    fn guests_are_configured_once_per_domain_life_in_any_order() {
        let mut c = core();
        let dom0 =
            Seen { domid: 0, name: Some(b"cryptod".to_vec()), ready: false, measurement: None };
        let plan = c.scan(&[dom0.clone(), seen(5, "unlocker", false), seen(6, "other", false)]);
        assert_eq!(plan.arrived, [(5, "unlocker".to_string())]);
        assert_eq!(
            plan.configure,
            [Configure {
                domid: 5,
                name: "unlocker".into(),
                role: Role::Unlocker,
                names: map(&[("unlocker", 5)]),
                measurements: BTreeMap::new(),
            }]
        );
        assert!(plan.watch.is_empty(), "unlocker persists nothing");
        assert!(c.persisting().is_empty());
        apply(&mut c, &plan);
        // cryptod arrives: it is configured, unlocker's map is rewritten.
        let plan = c.scan(&[dom0, seen(5, "unlocker", false), seen(7, "cryptod", false)]);
        assert_eq!(plan.configure.len(), 1);
        assert_eq!(plan.configure[0].domid, 7);
        assert_eq!(plan.configure[0].names, map(&[("cryptod", 7), ("unlocker", 5)]));
        assert_eq!(plan.names, [(5, map(&[("cryptod", 7), ("unlocker", 5)]))]);
        assert_eq!(plan.watch, [(7, ConfigItem::SealedState)]);
        assert_eq!(c.persisting(), [(7, ConfigItem::SealedState)]);
        assert_eq!(plan.peers, map(&[("cryptod", 7), ("unlocker", 5)]));
        apply(&mut c, &plan);
        // Nothing changed: nothing to do.
        let plan = c.scan(&[seen(5, "unlocker", false), seen(7, "cryptod", false)]);
        assert_eq!(
            plan,
            Plan { peers: map(&[("cryptod", 7), ("unlocker", 5)]), ..Plan::default() }
        );
    }

    #[test]
    fn a_failed_step_is_planned_again() {
        let mut c = core();
        let plan = c.scan(&[seen(7, "cryptod", false)]);
        assert_eq!(plan.configure.len(), 1);
        // The shell failed and reported nothing.
        let again = c.scan(&[seen(7, "cryptod", false)]);
        assert_eq!(again.configure, plan.configure);
        assert!(again.watch.is_empty(), "the watch was planned once");
    }

    #[test]
    fn a_restart_keeps_ready_guests_but_refreshes_their_names() {
        let mut c = core();
        let plan = c.scan(&[seen(7, "cryptod", true), seen(8, "unlocker", false)]);
        assert_eq!(plan.configure.len(), 1);
        assert_eq!(plan.configure[0].domid, 8);
        assert_eq!(plan.names, [(7, map(&[("cryptod", 7), ("unlocker", 8)]))]);
        assert_eq!(plan.watch, [(7, ConfigItem::SealedState)], "its persists are checked");
    }

    #[test]
    fn a_recreated_guest_is_a_new_domain() {
        let mut c = core();
        let p = c.scan(&[seen(7, "cryptod", false), seen(8, "unlocker", false)]);
        apply(&mut c, &p);
        // cryptod destroyed: unlocker's map loses it, the watch goes.
        let p = c.scan(&[seen(8, "unlocker", false)]);
        assert_eq!(p.left, [(7, "cryptod".to_string())]);
        assert_eq!(p.unwatch, [(7, ConfigItem::SealedState)]);
        assert_eq!(p.names, [(8, map(&[("unlocker", 8)]))]);
        assert!(p.configure.is_empty());
        apply(&mut c, &p);
        // Created again (on_crash = "restart"): new id, configured afresh.
        let p = c.scan(&[seen(8, "unlocker", false), seen(9, "cryptod", false)]);
        assert_eq!(p.configure.len(), 1);
        assert_eq!(p.configure[0].domid, 9);
        assert_eq!(p.names, [(8, map(&[("cryptod", 9), ("unlocker", 8)]))]);
        // An id that now carries another of our names is a new life too.
        apply(&mut c, &p);
        let p = c.scan(&[seen(8, "entropyd", false), seen(9, "cryptod", false)]);
        assert_eq!(p.left, [(8, "unlocker".to_string())]);
        assert_eq!(p.arrived, [(8, "entropyd".to_string())]);
        assert_eq!(p.configure[0].role, Role::Entropyd);
    }

    #[test]
    fn hostile_names_and_lists_are_bounded() {
        let mut c = core();
        let long = "c".repeat(MAX_NAME_LEN + 1);
        let mut list = vec![
            seen(3, &long, false),
            Seen { domid: 4, name: Some(vec![0xff, b'x']), ready: false, measurement: None },
            Seen { domid: 5, name: None, ready: false, measurement: None },
            seen(DOMID_FIRST_RESERVED, "cryptod", false),
            seen(10, "unlocker", false),
            seen(11, "unlocker", false),
        ];
        let p = c.scan(&list);
        assert!(p.configure.is_empty() && p.peers.is_empty(), "{p:?}");
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].starts_with("2 domains are named unlocker"));
        // Once only one is left, it is configured.
        list.pop();
        assert_eq!(c.scan(&list).configure.len(), 1);
        // Past MAX_DOMAINS nothing is looked at.
        let mut many: Vec<Seen> = (1..=MAX_DOMAINS as u16).map(|d| seen(d, "x", false)).collect();
        many.push(seen(2000, "cryptod", false));
        let p = core().scan(&many);
        assert!(p.configure.is_empty());
        assert!(p.warnings[0].contains("only the first 1024"), "{:?}", p.warnings);
    }

    #[test]
    fn domids_are_parsed_strictly() {
        assert_eq!(parse_domid("0"), Some(0));
        assert_eq!(parse_domid("32751"), Some(32751));
        for bad in ["", "32752", "65535", "123456", "-1", "+1", " 1", "1a", "٣"] {
            assert_eq!(parse_domid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn persists_are_written_durably_then_acked_once() {
        let mut c = core();
        let old = b"provisioned".to_vec();
        c.set_durable("cryptod/sealed-state", digest(&old));
        let p = c.scan(&[seen(7, "cryptod", false), seen(8, "unlocker", false)]);
        apply(&mut c, &p);
        let item = ConfigItem::SealedState;
        // The node does not exist yet; the provisioned state is durable.
        assert_eq!(c.persist_read(7, item, None), PersistStep::Nothing);
        // A value equal to what is durable is acked without a rewrite.
        let PersistStep::Ack(a) = c.persist_read(7, item, Some(&old)) else { panic!() };
        assert_eq!(a.path, "/local/domain/7/portcullis/persist-ack/sealed-state");
        assert_eq!(a.hex, hex::encode(digest(&old)));
        c.acked(&a);
        assert_eq!(c.persist_read(7, item, Some(&old)), PersistStep::Nothing);
        // A new value is written first; the ack comes from `persisted`.
        let new = b"resealed".to_vec();
        let step = c.persist_read(7, item, Some(&new));
        assert_eq!(
            step,
            PersistStep::Write {
                file: "cryptod/sealed-state",
                bytes: new.clone(),
                hash: digest(&new)
            }
        );
        let a = c.persisted(7, item, "cryptod/sealed-state", digest(&new)).unwrap();
        assert_eq!(a.hex, hex::encode(digest(&new)));
        c.acked(&a);
        assert_eq!(c.persist_read(7, item, Some(&new)), PersistStep::Nothing);
        // Only the persisting role's own node counts.
        assert_eq!(c.persist_read(8, item, Some(&new)), PersistStep::Nothing);
        assert_eq!(c.persist_read(9, item, Some(&new)), PersistStep::Nothing);
        assert_eq!(
            c.persist_read(7, ConfigItem::KeyEncryptionKey, Some(&new)),
            PersistStep::Nothing
        );
        // Hostile values are refused, not acked.
        let big = vec![1u8; MAX_PERSIST_LEN + 1];
        assert_eq!(
            c.persist_read(7, item, Some(&big)),
            PersistStep::Refuse("4097 bytes, more than 4096".into())
        );
        assert!(matches!(c.persist_read(7, item, Some(&[])), PersistStep::Refuse(_)));
        // "/local/domain/32751/portcullis/sealed-state" is 43 bytes, + NUL.
        assert_eq!(max_item_len(item), 4096 - 44);
        let over = vec![1u8; max_item_len(item) + 1];
        assert_eq!(
            c.persist_read(7, item, Some(&over)),
            PersistStep::Refuse("4053 bytes would not fit back as the item (at most 4052)".into())
        );
        let max = vec![1u8; max_item_len(item)];
        assert!(matches!(c.persist_read(7, item, Some(&max)), PersistStep::Write { .. }));
    }

    #[test]
    fn a_persist_finished_after_the_domain_left_is_durable_but_not_acked() {
        let mut c = core();
        let p = c.scan(&[seen(7, "cryptod", false)]);
        apply(&mut c, &p);
        let v = b"state".to_vec();
        assert!(matches!(
            c.persist_read(7, ConfigItem::SealedState, Some(&v)),
            PersistStep::Write { .. }
        ));
        c.scan(&[]);
        assert_eq!(
            c.persisted(7, ConfigItem::SealedState, "cryptod/sealed-state", digest(&v)),
            None
        );
        // The next cryptod's equal value is acked without a rewrite.
        let p = c.scan(&[seen(9, "cryptod", false)]);
        apply(&mut c, &p);
        assert!(matches!(
            c.persist_read(9, ConfigItem::SealedState, Some(&v)),
            PersistStep::Ack(_)
        ));
    }

    #[test]
    fn items_and_paths() {
        assert_eq!(item_key(ConfigItem::RootPublicKey), "root-pub");
        assert_eq!(item_path(3, ConfigItem::KeyEncryptionKey), "/local/domain/3/portcullis/kek");
        assert_eq!(names_path(3), "/local/domain/3/portcullis/names");
        assert_eq!(ready_path(3), "/local/domain/3/portcullis/ready");
        assert_eq!(
            persist_path(3, ConfigItem::SealedState),
            "/local/domain/3/data/portcullis-persist/sealed-state"
        );
        assert_eq!(source(ConfigItem::RootPublicKey), Source::File("root.pub"));
        assert_eq!(source(ConfigItem::Settings), Source::Settings);
        assert_eq!(source(ConfigItem::KeyEncryptionKey), Source::Kek);
        assert_eq!(
            stale_names(&["cryptod".into(), "gone".into()], &map(&[("cryptod", 3)])),
            ["gone".to_string()]
        );
    }
}
