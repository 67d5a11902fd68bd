//! The access-control list: which VM may get which scopes for which audiences.
//!
//! The file is line based (see `docs/authority.md`):
//!
//! ```text
//! # comment
//! allow vm=policy_pd domid=7 scopes=net:modify,net:read aud=fw0,fw1
//! deny  vm=*         domid=13
//! allow vm=unlocker  scopes=luks:unlock aud=unlock_agent volumes=data,home image=sha256:<64 hex>
//! ```
//!
//! Rules:
//! - a peer is the VM name the platform resolved from the vchan peer domid,
//!   plus that domid; nothing in a message is used;
//! - the first rule whose `vm` (a name or `*`) and optional `domid` match the
//!   peer decides; a `deny` rule refuses; an `allow` rule grants a request only
//!   if every requested scope and the audience are listed; no match is a deny;
//! - an unlock secret is derived only for a volume listed in the `volumes` of
//!   the rule that grants `luks:unlock`; `volumes` goes with `luks:unlock`
//!   and only with it;
//! - an `allow` rule may require `image=sha256:<hex>`: the matching peer
//!   is granted only if dom0 measured its launched image to that SHA-256;
//!   a missing or different measurement is a deny ([`DenyReason::Image`]),
//!   never a fall-through to a later rule;
//! - `attest=true|false` on an `allow` rule says whether every request it
//!   grants must carry a fresh attestation (`crate::attest`); the default
//!   is `true` for a rule that grants `luks:unlock` or `key:rotate` (the
//!   high-sensitivity actions) and `false` otherwise;
//! - the lint refuses unknown directives, keys and scopes, repeated keys,
//!   empty lists, duplicate rules (same `vm` and `domid`) and rules that can
//!   never match because an earlier rule matches every peer they match.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use portcullis_proto::scope::{Scope, ScopeSet};

/// Longest ACL text accepted, in bytes.
pub const MAX_ACL_LEN: usize = 64 * 1024;
/// Most rules in one ACL.
pub const MAX_RULES: usize = 256;
/// Longest VM or audience name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most audiences in one rule.
pub const MAX_AUDIENCES: usize = 16;
/// Most volumes in one rule.
pub const MAX_VOLUMES: usize = 16;
/// The prefix of an `image=` value; the digest follows as 64 lowercase hex.
pub const IMAGE_PREFIX: &str = "sha256:";

/// Who is asking: the vchan peer as the platform identified it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// The peer's Xen domain id (attached by the toolstack, not chosen by the guest).
    pub domid: u32,
    /// The VM name the platform resolved for that domid.
    pub vm: String,
}

impl PeerId {
    /// A peer with this domid and name.
    pub fn new(domid: u32, vm: &str) -> PeerId {
        PeerId { domid, vm: vm.into() }
    }
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Grant listed scopes for listed audiences.
    Allow,
    /// Refuse everything.
    Deny,
}

/// One parsed rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based line number in the source text.
    pub line: usize,
    /// Allow or deny.
    pub effect: Effect,
    /// VM name, or `None` for `*`.
    pub vm: Option<String>,
    /// Required domid, if any.
    pub domid: Option<u32>,
    /// Scopes granted (empty for `deny`).
    pub scopes: ScopeSet,
    /// Audiences granted (empty for `deny`).
    pub audiences: Vec<String>,
    /// Volumes whose unlock secret may be derived (only with `luks:unlock`).
    pub volumes: Vec<String>,
    /// The SHA-256 the peer's launched image must have (`image=`), if any.
    pub image: Option<[u8; 32]>,
    /// Whether the requests this rule grants need a fresh attestation.
    pub attest: bool,
}

impl Rule {
    fn matches(&self, peer: &PeerId) -> bool {
        self.vm.as_ref().is_none_or(|vm| *vm == peer.vm)
            && self.domid.is_none_or(|d| d == peer.domid)
    }

    /// Whether every peer matched by `later` is matched by `self`.
    fn covers(&self, later: &Rule) -> bool {
        let vm = match (&self.vm, &later.vm) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        let domid = match (self.domid, later.domid) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        vm && domid
    }
}

/// What is wrong with an ACL line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclErrorKind {
    /// The text is longer than [`MAX_ACL_LEN`] or has more than [`MAX_RULES`] rules.
    TooLarge,
    /// The first word is neither `allow` nor `deny`.
    UnknownDirective,
    /// A word that is not `key=value`, or a key this format does not have.
    UnknownKey,
    /// A key given twice on one line.
    RepeatedKey,
    /// A required key is missing (`vm`; `scopes` and `aud` for `allow`), or
    /// `scopes`/`aud` on a `deny` line.
    MissingOrExtraKey,
    /// A name with characters outside `[A-Za-z0-9._-]`, empty or too long.
    BadName,
    /// A domid that is not a decimal `u32`.
    BadDomid,
    /// An `attest` value other than `true` or `false`.
    BadAttest,
    /// A scope name that is not a known scope.
    UnknownScope,
    /// A list with an empty item or a repeated item.
    BadList,
    /// An `image=` value that is not `sha256:` and 64 lowercase hex digits,
    /// or `image=` on a `deny` line.
    BadImage,
    /// `volumes=` without `luks:unlock` in `scopes`, or `luks:unlock`
    /// without `volumes=`.
    Volumes,
    /// Same `vm` and `domid` as the rule on `first`.
    Duplicate {
        /// Line of the earlier rule.
        first: usize,
    },
    /// Can never match: the rule on `by` matches every peer this one does.
    Shadowed {
        /// Line of the earlier rule.
        by: usize,
    },
}

/// An ACL lint or parse error, with its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclError {
    /// The offending line (0 for whole-file problems).
    pub line: usize,
    /// What is wrong.
    pub kind: AclErrorKind,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "acl line {}: ", self.line)?;
        match &self.kind {
            AclErrorKind::TooLarge => f.write_str("acl too large"),
            AclErrorKind::UnknownDirective => f.write_str("expected `allow` or `deny`"),
            AclErrorKind::UnknownKey => f.write_str(
                "unknown key (expected vm=, domid=, scopes=, aud=, volumes=, image=, attest=)",
            ),
            AclErrorKind::RepeatedKey => f.write_str("key given twice"),
            AclErrorKind::MissingOrExtraKey => {
                f.write_str("allow needs vm=, scopes=, aud=; deny takes only vm= and domid=")
            }
            AclErrorKind::BadName => f.write_str("name must be 1-64 of [A-Za-z0-9._-]"),
            AclErrorKind::BadDomid => f.write_str("domid must be a decimal u32"),
            AclErrorKind::BadAttest => f.write_str("attest must be true or false"),
            AclErrorKind::UnknownScope => f.write_str("unknown scope"),
            AclErrorKind::BadList => f.write_str("list has an empty or repeated item"),
            AclErrorKind::BadImage => {
                f.write_str("image must be sha256: and 64 lowercase hex digits, on allow only")
            }
            AclErrorKind::Volumes => {
                f.write_str("luks:unlock needs volumes=, and volumes= needs luks:unlock")
            }
            AclErrorKind::Duplicate { first } => write!(f, "duplicates the rule on line {first}"),
            AclErrorKind::Shadowed { by } => write!(f, "never matches: shadowed by line {by}"),
        }
    }
}

impl core::error::Error for AclError {}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule matches the peer (default deny).
    NoRule,
    /// A `deny` rule on this line matched.
    DenyRule(usize),
    /// The rule on this line does not grant every requested scope.
    Scope(usize),
    /// The rule on this line does not list the audience.
    Audience(usize),
    /// The rule on this line does not list the volume.
    Volume(usize),
    /// The volume is not bound in the volume registry
    /// (`crate::registry::Volumes`): never added, or removed.
    Unbound,
    /// The peer or the audience is on the identity revocation list
    /// (`crate::registry::Identities`); no rule is consulted.
    Revoked,
    /// The rule on this line requires an image the peer was not measured
    /// to have: `actual` is dom0's measurement, `None` if it published none.
    Image {
        /// The rule's line.
        line: usize,
        /// The SHA-256 the rule requires.
        expected: [u8; 32],
        /// The SHA-256 dom0 measured, if any.
        actual: Option<[u8; 32]>,
    },
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRule => f.write_str("no acl rule for this vm"),
            DenyReason::DenyRule(l) => write!(f, "denied by acl line {l}"),
            DenyReason::Scope(l) => write!(f, "scope not granted by acl line {l}"),
            DenyReason::Audience(l) => write!(f, "audience not granted by acl line {l}"),
            DenyReason::Volume(l) => write!(f, "volume not granted by acl line {l}"),
            DenyReason::Revoked => f.write_str("identity revoked (peer or audience)"),
            DenyReason::Unbound => f.write_str("volume not bound (removed or never added)"),
            DenyReason::Image { line, actual: None, .. } => {
                write!(f, "no image measurement for acl line {line}")
            }
            DenyReason::Image { line, .. } => write!(f, "image not granted by acl line {line}"),
        }
    }
}

impl core::error::Error for DenyReason {}

/// A parsed, linted ACL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// Parses and lints `text`; any lint finding is an error (the first one).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let (rules, mut errors) = parse_all(text);
        if errors.is_empty() {
            Ok(Acl { rules })
        } else {
            Err(errors.swap_remove(0))
        }
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether the rule on `line` (as [`Acl::decide`] returned it) requires
    /// a fresh attestation; `true` for a line that is not a rule (fail closed).
    pub fn requires_attestation(&self, line: usize) -> bool {
        self.rules.iter().find(|r| r.line == line).is_none_or(|r| r.attest)
    }

    /// Decides whether `peer` may have `scopes` for `audience`; returns the
    /// line of the granting rule.
    pub fn decide(
        &self,
        peer: &PeerId,
        scopes: ScopeSet,
        audience: &str,
    ) -> Result<usize, DenyReason> {
        let rule = self.rules.iter().find(|r| r.matches(peer)).ok_or(DenyReason::NoRule)?;
        match rule.effect {
            Effect::Deny => Err(DenyReason::DenyRule(rule.line)),
            Effect::Allow if scopes.is_empty() || !rule.scopes.is_superset(scopes) => {
                Err(DenyReason::Scope(rule.line))
            }
            Effect::Allow if !rule.audiences.iter().any(|a| a == audience) => {
                Err(DenyReason::Audience(rule.line))
            }
            Effect::Allow => Ok(rule.line),
        }
    }

    /// Checks the `image=` requirement of the rule on `line` (the one
    /// [`Acl::decide`] or [`Acl::decide_unlock`] granted by) against dom0's
    /// measurement of the peer (`None`: none published, or the platform
    /// cannot know). A rule without `image=` accepts any (or no)
    /// measurement; one with it accepts only an equal digest.
    pub fn check_image(&self, line: usize, measured: Option<&[u8; 32]>) -> Result<(), DenyReason> {
        let rule = self.rules.iter().find(|r| r.line == line).ok_or(DenyReason::NoRule)?;
        match (rule.image, measured) {
            (None, _) => Ok(()),
            (Some(expected), Some(actual)) if expected == *actual => Ok(()),
            (Some(expected), actual) => {
                Err(DenyReason::Image { line, expected, actual: actual.copied() })
            }
        }
    }

    /// Whether the rule that decides for `peer` grants every scope of
    /// `scopes` (for any of its audiences); returns its line. What cryptod
    /// asks before it attests a peer for an action.
    pub fn decide_scopes(&self, peer: &PeerId, scopes: ScopeSet) -> Result<usize, DenyReason> {
        let rule = self.rules.iter().find(|r| r.matches(peer)).ok_or(DenyReason::NoRule)?;
        match rule.effect {
            Effect::Deny => Err(DenyReason::DenyRule(rule.line)),
            Effect::Allow if scopes.is_empty() || !rule.scopes.is_superset(scopes) => {
                Err(DenyReason::Scope(rule.line))
            }
            Effect::Allow => Ok(rule.line),
        }
    }

    /// Decides whether `peer` may have `luks:unlock` for `audience` and the
    /// unlock secret of `volume`; returns the line of the granting rule.
    pub fn decide_unlock(
        &self,
        peer: &PeerId,
        audience: &str,
        volume: &str,
    ) -> Result<usize, DenyReason> {
        let line = self.decide(peer, ScopeSet::single(Scope::LuksUnlock), audience)?;
        let rule = self.rules.iter().find(|r| r.line == line).ok_or(DenyReason::NoRule)?;
        if rule.volumes.iter().any(|v| v == volume) {
            Ok(line)
        } else {
            Err(DenyReason::Volume(line))
        }
    }
}

/// Every problem in `text`, in line order (empty when the ACL is clean).
pub fn lint(text: &str) -> Vec<AclError> {
    parse_all(text).1
}

fn parse_all(text: &str) -> (Vec<Rule>, Vec<AclError>) {
    let mut rules: Vec<Rule> = Vec::new();
    let mut errors = Vec::new();
    if text.len() > MAX_ACL_LEN {
        errors.push(AclError { line: 0, kind: AclErrorKind::TooLarge });
        return (rules, errors);
    }
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if rules.len() >= MAX_RULES {
            errors.push(AclError { line, kind: AclErrorKind::TooLarge });
            break;
        }
        let rule = match parse_rule(line, content) {
            Ok(rule) => rule,
            Err(kind) => {
                errors.push(AclError { line, kind });
                continue;
            }
        };
        if let Some(earlier) = rules.iter().find(|r| r.covers(&rule)) {
            let kind = if rule.covers(earlier) {
                AclErrorKind::Duplicate { first: earlier.line }
            } else {
                AclErrorKind::Shadowed { by: earlier.line }
            };
            errors.push(AclError { line, kind });
            continue;
        }
        rules.push(rule);
    }
    (rules, errors)
}

// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
fn parse_rule(line: usize, content: &str) -> Result<Rule, AclErrorKind> {
    let mut words = content.split_ascii_whitespace();
    let effect = match words.next() {
        Some("allow") => Effect::Allow,
        Some("deny") => Effect::Deny,
        _ => return Err(AclErrorKind::UnknownDirective),
    };
    let (mut vm, mut domid, mut scopes, mut aud, mut volumes, mut image) =
        (None, None, None, None, None, None);
    let mut attest = None;
    for word in words {
        let (key, value) = word.split_once('=').ok_or(AclErrorKind::UnknownKey)?;
        let slot = match key {
            "vm" => &mut vm,
            "domid" => &mut domid,
            "scopes" => &mut scopes,
            "aud" => &mut aud,
            "volumes" => &mut volumes,
            "image" => &mut image,
            "attest" => &mut attest,
            _ => return Err(AclErrorKind::UnknownKey),
        };
        if slot.replace(value).is_some() {
            return Err(AclErrorKind::RepeatedKey);
        }
    }
    let vm = match vm.ok_or(AclErrorKind::MissingOrExtraKey)? {
        "*" => None,
        name => Some(parse_name(name)?),
    };
    let domid = domid.map(parse_domid).transpose()?;
    let (scopes, audiences) = match (effect, scopes, aud) {
        (Effect::Allow, Some(s), Some(a)) => (parse_scopes(s)?, parse_audiences(a)?),
        (Effect::Deny, None, None) if volumes.is_none() && attest.is_none() => {
            (ScopeSet::EMPTY, Vec::new())
        }
        _ => return Err(AclErrorKind::MissingOrExtraKey),
    };
    let volumes = match (scopes.contains(Scope::LuksUnlock), volumes) {
        (true, Some(list)) => parse_list(list, MAX_VOLUMES)?,
        (false, None) => Vec::new(),
        _ => return Err(AclErrorKind::Volumes),
    };
    let image = match (effect, image) {
        (_, None) => None,
        (Effect::Allow, Some(text)) => Some(parse_image(text).ok_or(AclErrorKind::BadImage)?),
        (Effect::Deny, Some(_)) => return Err(AclErrorKind::BadImage),
    };
    let sensitive = scopes.contains(Scope::LuksUnlock) || scopes.contains(Scope::KeyRotate);
    let attest = match attest {
        None => sensitive,
        Some("true") => true,
        Some("false") => false,
        Some(_) => return Err(AclErrorKind::BadAttest),
    };
    Ok(Rule { line, effect, vm, domid, scopes, audiences, volumes, image, attest })
}

fn parse_name(name: &str) -> Result<String, AclErrorKind> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| name.into()).ok_or(AclErrorKind::BadName)
}

/// `sha256:` and exactly 64 lowercase hex digits, as the digest.
pub fn parse_image(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix(IMAGE_PREFIX)?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn parse_domid(text: &str) -> Result<u32, AclErrorKind> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AclErrorKind::BadDomid);
    }
    text.parse().map_err(|_| AclErrorKind::BadDomid)
}

fn parse_scopes(list: &str) -> Result<ScopeSet, AclErrorKind> {
    let mut set = ScopeSet::EMPTY;
    for item in list.split(',') {
        if item.is_empty() {
            return Err(AclErrorKind::BadList);
        }
        let scope = Scope::parse(item).ok_or(AclErrorKind::UnknownScope)?;
        if !set.insert(scope) {
            return Err(AclErrorKind::BadList);
        }
    }
    Ok(set)
}

fn parse_audiences(list: &str) -> Result<Vec<String>, AclErrorKind> {
    parse_list(list, MAX_AUDIENCES)
}

/// A comma-separated list of at most `max` distinct names.
fn parse_list(list: &str, max: usize) -> Result<Vec<String>, AclErrorKind> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',') {
        if item.is_empty() || out.iter().any(|a| a == item) || out.len() >= max {
            return Err(AclErrorKind::BadList);
        }
        out.push(parse_name(item)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: &str = "\
# Portcullis ACL
allow vm=policy_pd domid=7 scopes=net:modify,net:read aud=fw0,fw1
deny vm=* domid=13   # quarantined domain
allow vm=unlocker scopes=luks:unlock aud=unlocker volumes=data
allow vm=policy_pd scopes=net:read aud=fw0
";

    fn set(list: &str) -> ScopeSet {
        ScopeSet::parse_list(list).unwrap()
    }

    #[test]
    fn first_match_decides() {
        let acl = Acl::parse(POLICY).unwrap();
        let pd7 = PeerId::new(7, "policy_pd");
        assert_eq!(acl.decide(&pd7, set("net:modify"), "fw1"), Ok(2));
        // The same name on another domid falls to the narrower rule on line 5.
        let pd8 = PeerId::new(8, "policy_pd");
        assert_eq!(acl.decide(&pd8, set("net:modify"), "fw0"), Err(DenyReason::Scope(5)));
        assert_eq!(acl.decide(&pd8, set("net:read"), "fw0"), Ok(5));
        assert_eq!(acl.decide(&pd8, set("net:read"), "fw1"), Err(DenyReason::Audience(5)));
        // Domid 13 is denied whatever name it resolves to.
        let q = PeerId::new(13, "unlocker");
        assert_eq!(acl.decide(&q, set("luks:unlock"), "unlocker"), Err(DenyReason::DenyRule(3)));
    }

    #[test]
    fn default_deny() {
        let acl = Acl::parse(POLICY).unwrap();
        let stranger = PeerId::new(99, "mallory");
        assert_eq!(acl.decide(&stranger, set("net:read"), "fw0"), Err(DenyReason::NoRule));
        assert_eq!(
            Acl::parse("").unwrap().decide(&stranger, set("net:read"), "fw0"),
            Err(DenyReason::NoRule)
        );
    }

    #[test]
    fn requested_scopes_must_all_be_granted() {
        let acl = Acl::parse(POLICY).unwrap();
        let pd7 = PeerId::new(7, "policy_pd");
        assert_eq!(
            acl.decide(&pd7, set("net:modify luks:unlock"), "fw0"),
            Err(DenyReason::Scope(2))
        );
        assert_eq!(acl.decide(&pd7, ScopeSet::EMPTY, "fw0"), Err(DenyReason::Scope(2)));
    }

    #[test]
    fn unlock_needs_the_volume_listed() {
        let acl = Acl::parse(POLICY).unwrap();
        let u = PeerId::new(5, "unlocker");
        assert_eq!(acl.decide_unlock(&u, "unlocker", "data"), Ok(4));
        assert_eq!(acl.decide_unlock(&u, "unlocker", "home"), Err(DenyReason::Volume(4)));
        assert_eq!(acl.decide_unlock(&u, "agent", "data"), Err(DenyReason::Audience(4)));
        let pd = PeerId::new(7, "policy_pd");
        assert_eq!(acl.decide_unlock(&pd, "fw0", "data"), Err(DenyReason::Scope(2)));
    }

    #[test]
    fn volumes_go_with_luks_unlock_only() {
        assert_eq!(lint_kinds("allow vm=u scopes=luks:unlock aud=a"), [(1, AclErrorKind::Volumes)]);
        assert_eq!(
            lint_kinds("allow vm=u scopes=net:read aud=a volumes=data"),
            [(1, AclErrorKind::Volumes)]
        );
        assert_eq!(lint_kinds("deny vm=u volumes=data"), [(1, AclErrorKind::MissingOrExtraKey)]);
        assert_eq!(
            lint_kinds("allow vm=u scopes=luks:unlock aud=a volumes=data,data"),
            [(1, AclErrorKind::BadList)]
        );
        assert_eq!(
            lint_kinds("allow vm=u scopes=luks:unlock aud=a volumes=da/ta"),
            [(1, AclErrorKind::BadName)]
        );
        assert!(lint("allow vm=u scopes=luks:unlock,net:read aud=a volumes=data,home").is_empty());
    }

    const IMG_A: [u8; 32] = [0xab; 32];
    const IMG_B: [u8; 32] = [0x01; 32];

    fn image_rule(img: &[u8; 32]) -> String {
        let hex: String = img.iter().map(|b| alloc::format!("{b:02x}")).collect();
        alloc::format!("allow vm=policy_pd scopes=net:read aud=fw0 image=sha256:{hex}\n")
    }

    #[test]
    fn image_rule_grants_only_the_measured_image() {
        let acl = Acl::parse(&image_rule(&IMG_A)).unwrap();
        assert_eq!(acl.rules()[0].image, Some(IMG_A));
        let pd = PeerId::new(7, "policy_pd");
        let line = acl.decide(&pd, set("net:read"), "fw0").unwrap();
        assert_eq!(acl.check_image(line, Some(&IMG_A)), Ok(()));
        assert_eq!(
            acl.check_image(line, Some(&IMG_B)),
            Err(DenyReason::Image { line: 1, expected: IMG_A, actual: Some(IMG_B) })
        );
        let missing = acl.check_image(line, None);
        assert_eq!(missing, Err(DenyReason::Image { line: 1, expected: IMG_A, actual: None }));
        assert_eq!(
            alloc::string::ToString::to_string(&missing.unwrap_err()),
            "no image measurement for acl line 1"
        );
        // A rule without image= does not care about the measurement.
        let open = Acl::parse("allow vm=policy_pd scopes=net:read aud=fw0").unwrap();
        assert_eq!(open.check_image(1, None), Ok(()));
        assert_eq!(open.check_image(1, Some(&IMG_B)), Ok(()));
    }

    #[test]
    fn image_values_are_strict() {
        let good = image_rule(&IMG_A);
        assert!(lint(&good).is_empty());
        let hex64 = "ab".repeat(32);
        for bad in [
            alloc::format!("sha256:{}", &hex64[..62]),
            alloc::format!("sha256:{hex64}00"),
            alloc::format!("sha256:{}", hex64.to_uppercase()),
            alloc::format!("sha512:{hex64}"),
            hex64.clone(),
            alloc::format!("sha256:{}zz", &hex64[..62]),
            "sha256:".into(),
        ] {
            let text = alloc::format!("allow vm=a scopes=net:read aud=x image={bad}");
            assert_eq!(lint_kinds(&text), [(1, AclErrorKind::BadImage)], "{bad}");
        }
        let deny = alloc::format!("deny vm=a image=sha256:{hex64}");
        assert_eq!(lint_kinds(&deny), [(1, AclErrorKind::BadImage)]);
        let twice = alloc::format!(
            "allow vm=a scopes=net:read aud=x image=sha256:{hex64} image=sha256:{hex64}"
        );
        assert_eq!(lint_kinds(&twice), [(1, AclErrorKind::RepeatedKey)]);
    }

    fn lint_kinds(text: &str) -> Vec<(usize, AclErrorKind)> {
        lint(text).into_iter().map(|e| (e.line, e.kind)).collect()
    }

    #[test]
    fn acl_lint_rejects_unknown_scope() {
        assert_eq!(
            lint_kinds("allow vm=a scopes=root:all aud=x"),
            [(1, AclErrorKind::UnknownScope)]
        );
    }

    #[test]
    fn acl_lint_rejects_duplicate_rule() {
        let text = "allow vm=a domid=1 scopes=net:read aud=x\ndeny vm=a domid=1\n";
        assert_eq!(lint_kinds(text), [(2, AclErrorKind::Duplicate { first: 1 })]);
    }

    #[test]
    fn acl_lint_rejects_shadowed_rules() {
        let text = "\
deny vm=* domid=3
allow vm=a scopes=net:read aud=x
allow vm=a domid=3 scopes=net:read aud=x
allow vm=a domid=4 scopes=net:modify aud=x
allow vm=* scopes=net:read aud=x
allow vm=b scopes=net:read aud=x
";
        assert_eq!(
            lint_kinds(text),
            [
                (3, AclErrorKind::Shadowed { by: 1 }),
                (4, AclErrorKind::Shadowed { by: 2 }),
                (6, AclErrorKind::Shadowed { by: 5 })
            ]
        );
        // Narrow before broad is fine.
        assert!(lint(
            "allow vm=a domid=4 scopes=net:modify aud=x\nallow vm=a scopes=net:read aud=x"
        )
        .is_empty());
    }

    #[test]
    fn acl_lint_rejects_malformed_lines() {
        let cases: [(&str, AclErrorKind); 12] = [
            ("permit vm=a", AclErrorKind::UnknownDirective),
            ("allow vm=a scopes=net:read aud=x color=red", AclErrorKind::UnknownKey),
            ("allow vm=a vm=b scopes=net:read aud=x", AclErrorKind::RepeatedKey),
            ("allow vm=a scopes=net:read", AclErrorKind::MissingOrExtraKey),
            ("allow domid=1 scopes=net:read aud=x", AclErrorKind::MissingOrExtraKey),
            ("deny vm=a scopes=net:read", AclErrorKind::MissingOrExtraKey),
            ("allow vm=a/b scopes=net:read aud=x", AclErrorKind::BadName),
            ("allow vm=a domid=-1 scopes=net:read aud=x", AclErrorKind::BadDomid),
            ("allow vm=a domid=4294967296 scopes=net:read aud=x", AclErrorKind::BadDomid),
            ("allow vm=a scopes=net:read,,net:modify aud=x", AclErrorKind::BadList),
            ("allow vm=a scopes=net:read,net:read aud=x", AclErrorKind::BadList),
            ("allow vm=a scopes=net:read aud=x,x", AclErrorKind::BadList),
        ];
        for (text, kind) in cases {
            assert_eq!(lint_kinds(text), [(1, kind)], "{text}");
            assert!(Acl::parse(text).is_err());
        }
    }

    #[test]
    fn size_limits() {
        let mut text = String::new();
        for i in 0..=MAX_RULES {
            text.push_str(&alloc::format!("deny vm=v{i}\n"));
        }
        assert_eq!(lint_kinds(&text), [(MAX_RULES + 1, AclErrorKind::TooLarge)]);
        let huge = "#".repeat(MAX_ACL_LEN + 1);
        assert_eq!(lint_kinds(&huge), [(0, AclErrorKind::TooLarge)]);
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in "\\PC{0,200}") {
            let _ = Acl::parse(&text);
        }

        #[test]
        fn a_clean_acl_has_one_live_rule_per_peer(names in proptest::collection::vec("[a-c]", 1..6),
                                                  domids in proptest::collection::vec(proptest::option::of(0u32..3), 1..6)) {
            let mut text = String::new();
            for (n, d) in names.iter().zip(&domids) {
                match d {
                    Some(d) => text.push_str(&alloc::format!("allow vm={n} domid={d} scopes=net:read aud=x\n")),
                    None => text.push_str(&alloc::format!("allow vm={n} scopes=net:read aud=x\n")),
                }
            }
            // Whatever the lint keeps, each kept rule must be reachable: some peer
            // is decided by it.
            let (rules, _) = parse_all(&text);
            for r in &rules {
                let peer = PeerId::new(r.domid.unwrap_or(1000), r.vm.as_deref().unwrap_or("zz"));
                let first = rules.iter().find(|x| x.matches(&peer)).unwrap();
                prop_assert_eq!(first.line, r.line);
            }
        }
    }
}
