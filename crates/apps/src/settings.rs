//! The guests' settings: one schema per role (every knob's name, type,
//! unit, default, bounds and documentation, defined here once) and the
//! strict parser of the `settings` item.
//!
//! The item is `key=value` lines; `#` starts a comment, blank lines are
//! skipped, spaces around keys and values are trimmed. Parsing is strict: a
//! line that is not `key=value`, a key the role's schema does not have, a
//! key given twice, or a value of the wrong type or out of its bounds is a
//! [`SettingsError`] naming the line and the key, so a typo never falls back
//! to a default silently. dom0 (`portcullis host`) checks the operator's
//! settings with the same schema ([`check`]) before it writes them.
//!
//! The guests only link the compact [`Spec`] tables (`*_SPECS`); the
//! documentation lives in the [`Knob`] tables, which `docs/settings.md` is
//! checked against.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use portcullis_authority::authority::{DEFAULT_AGGREGATE_WINDOW, MAX_POLICY_TTL, UNLOCK_TTL_RANGE};
use portcullis_authority::drbg::DEFAULT_RESEED_INTERVAL;
use portcullis_authority::keys::{DEFAULT_OVERLAP, DEFAULT_ROTATION_PERIOD};
use portcullis_authority::totp::{DEFAULT_WINDOW, MAX_WINDOW};
use portcullis_platform::{ConfigItem, Platform, PlatformError};

use crate::common::AppError;
use portcullis_proto::msg::{MAX_ENTROPY_CHUNK, MIN_ENTROPY_CHUNK};

/// Largest settings item read, bytes.
pub const MAX_SETTINGS: usize = 4096;
/// Longest name value (a domain, operator, volume or audience name), bytes.
pub const MAX_NAME: usize = 64;
/// Longest free-text value, bytes.
pub const MAX_TEXT: usize = 256;
/// Most names in one list value.
pub const MAX_NAMES: usize = 16;
/// Longest key quoted in an error (a hostile key is cut there).
const MAX_KEY_SHOWN: usize = 64;

/// A knob's type, bounds and default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An unsigned decimal integer in `min..=max`.
    Int {
        /// Smallest value allowed.
        min: u32,
        /// Largest value allowed.
        max: u32,
        /// The value when the key is absent.
        default: u32,
    },
    /// `0` or `1`; the default.
    Flag(bool),
    /// A name: 1 to [`MAX_NAME`] printable ASCII characters without space,
    /// `,`, `#` or `=`. The default; `None`: the guest's own domain name.
    Name(Option<&'static str>),
    /// A comma-separated list of 1 to [`MAX_NAMES`] names; the default.
    Names(&'static str),
    /// 1 to [`MAX_TEXT`] printable ASCII characters (spaces allowed), no
    /// `#`; the default.
    Text(&'static str),
}

/// What a guest needs of a knob to parse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The key.
    pub key: &'static str,
    /// Its type, bounds and default.
    pub kind: Kind,
}

/// A documented knob: what the guest parses plus the reference text.
#[derive(Clone, Copy, Debug)]
pub struct Knob {
    /// Key, type, bounds, default.
    pub spec: Spec,
    /// The unit of an integer (`s`, `ms`, `bytes`, `steps`, ...), else "".
    pub unit: &'static str,
    /// What the knob does (one sentence for docs/settings.md).
    pub doc: &'static str,
}

const fn int(
    key: &'static str,
    min: u64,
    max: u64,
    default: u64,
    unit: &'static str,
    doc: &'static str,
) -> Knob {
    // Every bound fits u32 (a compile-time error otherwise), which keeps the
    // table in the guest images small.
    assert!(max <= u32::MAX as u64 && min <= max && min <= default && default <= max);
    let (min, max, default) = (min as u32, max as u32, default as u32);
    Knob { spec: Spec { key, kind: Kind::Int { min, max, default } }, unit, doc }
}

const fn knob(key: &'static str, kind: Kind, doc: &'static str) -> Knob {
    Knob { spec: Spec { key, kind }, unit: "", doc }
}

/// The specs of a knob table, evaluated at compile time, so a guest image
/// holds no documentation text.
const fn specs<const N: usize>(knobs: &[Knob; N]) -> [Spec; N] {
    let mut out = [Spec { key: "", kind: Kind::Flag(false) }; N];
    let mut i = 0;
    while i < N {
        out[i] = knobs[i].spec;
        i += 1;
    }
    out
}

/// cryptod's knobs (every field of `portcullis_authority::Config` but its
/// name, which is the domain's, plus its links).
pub const CRYPTOD: [Knob; 23] = [
    knob("clients", Kind::Names("unlocker,policy_pd,dom0"), "Domains served on the request port (each link is bound to that domain)."),
    knob("collector", Kind::Name(Some("dom0")), "Domain of the audit collector."),
    knob("entropy", Kind::Name(Some("entropyd")), "Domain whose entropy is taken (the only accepted `entropy_pub` sender)."),
    knob("unlock_audience", Kind::Name(Some("unlock_agent")), "Audience of `luks:unlock` tokens."),
    knob("outcome_key", Kind::Text("none"), "The unlock agent's pinned outcome key: `DOMAIN=` and 64 hex digits (Ed25519 public key; outcomes of `unlock_audience` tokens from that domain), or `none`."),
    knob("answer_after_audit", Kind::Flag(true), "Hold each audited answer until the collector acknowledged its records (write-ahead audit)."),
    int("totp_window", 0, MAX_WINDOW, DEFAULT_WINDOW, "steps", "TOTP codes accepted this many 30 s steps before and after the current one."),
    int("totp_max_failures", 1, 100, 5, "failures", "Consecutive wrong codes (per operator, or per domain for unknown ids) before a lockout."),
    int("totp_lockout", 1, 86_400, 30, "s", "First lockout; each further failure doubles it."),
    int("totp_max_lockout", 1, 604_800, 3600, "s", "Longest lockout (at least `totp_lockout`)."),
    int("totp_max_domains", 1, 65_536, 1024, "domains", "Most domains tracked at once for unknown operator ids."),
    int("unlock_ttl", *UNLOCK_TTL_RANGE.start(), *UNLOCK_TTL_RANGE.end(), 60, "s", "Lifetime of `luks:unlock` tokens."),
    int("policy_ttl", 1, MAX_POLICY_TTL, 120, "s", "Policy-token lifetime when the request names none (at most `max_policy_ttl`)."),
    int("max_policy_ttl", 1, MAX_POLICY_TTL, MAX_POLICY_TTL, "s", "Longest policy-token lifetime; longer requests are cut to it."),
    int("issue_burst", 1, 100_000, 60, "requests", "Token requests a peer may make at once (token bucket size)."),
    int("issue_per_minute", 0, 600_000, 600, "requests/min", "Sustained token requests per peer (0: no limit)."),
    int("issue_max_peers", 1, 65_536, 256, "peers", "Most peers whose token buckets are tracked at once."),
    int("key_rotation", 301, 31_536_000, DEFAULT_ROTATION_PERIOD, "s", "How long a signing key signs before it is rotated (longer than `key_overlap`)."),
    int("key_overlap", 300, 86_400, DEFAULT_OVERLAP, "s", "How long a rotated-out key still verifies (at least the longest token lifetime, 300 s)."),
    int("audit_outbox", 16, 4096, 256, "records", "Audit records kept until the collector acknowledges them."),
    int("max_held", 1, 4096, 256, "answers", "Answers held for the collector at once; further audited requests are answered `unavailable`."),
    int("audit_aggregate_window", 0, 3600, DEFAULT_AGGREGATE_WINDOW, "s", "Repeated `rate_limited` refusals of one peer share one audit record over this time (0: one record each)."),
    int("reseed_interval", 1, 16_777_216, DEFAULT_RESEED_INTERVAL, "calls", "DRBG generate calls allowed between reseeds from entropyd."),
];

/// entropyd's knobs.
pub const ENTROPYD: [Knob; 3] = [
    knob("allow", Kind::Names("cryptod"), "Domains entropy is published to."),
    int("interval_ms", 10, 60_000, 1000, "ms", "Time between publications."),
    int(
        "chunk",
        MIN_ENTROPY_CHUNK as u64,
        MAX_ENTROPY_CHUNK as u64,
        64,
        "bytes",
        "Entropy bytes per publication.",
    ),
];

/// The unlocker's knobs.
pub const UNLOCKER: [Knob; 7] = [
    knob("operator", Kind::Name(Some("operator")), "Operator whose TOTP codes unlock."),
    knob(
        "device",
        Kind::Name(None),
        "Device id sent with the code (default: the unlocker's domain name).",
    ),
    knob("volume", Kind::Name(Some("data")), "Volume id to unlock (a key of the agent's volumes)."),
    knob(
        "agent_audience",
        Kind::Name(Some("unlock_agent")),
        "Audience the unlock token is asked for.",
    ),
    knob("agent", Kind::Name(Some("dom0")), "Domain of the unlock agent."),
    knob("cryptod", Kind::Name(Some("cryptod")), "Domain of cryptod."),
    int("attempts", 1, 100, 3, "prompts", "Codes asked for before giving up."),
];

/// policy_pd's knobs.
pub const POLICY_PD: [Knob; 6] = [
    knob("rule", Kind::Text("allow tcp 10.0.0.0/8 -> 443"), "The rule change asked for."),
    knob("cryptod", Kind::Name(Some("cryptod")), "Domain of cryptod."),
    knob("audience", Kind::Name(None), "Audience its tokens must name (default: policy_pd's domain name)."),
    int("skew", 0, 3600, 30, "s", "Clock skew allowed when checking tokens."),
    knob("selftest", Kind::Flag(false), "After the rule, check that replayed, wrong-audience, expired and revoked tokens are refused."),
    knob("other_audience", Kind::Name(Some("netd")), "Audience of the self-test's wrong-audience token."),
];

/// cryptod's specs (what its image holds).
pub const CRYPTOD_SPECS: [Spec; CRYPTOD.len()] = specs(&CRYPTOD);
/// entropyd's specs.
pub const ENTROPYD_SPECS: [Spec; ENTROPYD.len()] = specs(&ENTROPYD);
/// The unlocker's specs.
pub const UNLOCKER_SPECS: [Spec; UNLOCKER.len()] = specs(&UNLOCKER);
/// policy_pd's specs.
pub const POLICY_PD_SPECS: [Spec; POLICY_PD.len()] = specs(&POLICY_PD);

/// A guest role, for the tools that handle every role's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// cryptod.
    Cryptod,
    /// entropyd.
    Entropyd,
    /// The unlocker.
    Unlocker,
    /// policy_pd.
    PolicyPd,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Cryptod, Role::Entropyd, Role::Unlocker, Role::PolicyPd];

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Cryptod => "cryptod",
            Role::Entropyd => "entropyd",
            Role::Unlocker => "unlocker",
            Role::PolicyPd => "policy_pd",
        }
    }

    /// The documented knobs.
    pub fn knobs(self) -> &'static [Knob] {
        match self {
            Role::Cryptod => &CRYPTOD,
            Role::Entropyd => &ENTROPYD,
            Role::Unlocker => &UNLOCKER,
            Role::PolicyPd => &POLICY_PD,
        }
    }

    /// The specs.
    pub fn specs(self) -> &'static [Spec] {
        match self {
            Role::Cryptod => &CRYPTOD_SPECS,
            Role::Entropyd => &ENTROPYD_SPECS,
            Role::Unlocker => &UNLOCKER_SPECS,
            Role::PolicyPd => &POLICY_PD_SPECS,
        }
    }
}

/// What is wrong with one line or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The line is not `key=value`.
    NotKeyValue,
    /// The role has no such key.
    UnknownKey,
    /// The key was given on an earlier line.
    Duplicate {
        /// That line (1-based).
        first: u32,
    },
    /// Not an unsigned decimal integer (or over 2^64 - 1).
    NotANumber,
    /// An integer outside its bounds.
    OutOfRange {
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A flag other than `0` or `1`.
    NotAFlag,
    /// A name that is empty, too long or holds a character names may not.
    BadName,
    /// Text that is empty, too long or holds a character text may not.
    BadText,
    /// A list with more than [`MAX_NAMES`] names.
    TooManyNames,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotKeyValue => f.write_str("not key=value"),
            Problem::UnknownKey => f.write_str("unknown key"),
            Problem::Duplicate { first } => write!(f, "given twice (first on line {first})"),
            Problem::NotANumber => f.write_str("not an unsigned decimal integer"),
            Problem::OutOfRange { min, max } => write!(f, "out of range {min} to {max}"),
            Problem::NotAFlag => f.write_str("not 0 or 1"),
            Problem::BadName => f.write_str("not a name (docs/settings.md)"),
            Problem::BadText => f.write_str("not text (docs/settings.md)"),
            Problem::TooManyNames => f.write_str("too many names"),
        }
    }
}

/// Why a settings item was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettingsError {
    /// The item is longer than [`MAX_SETTINGS`].
    TooLong,
    /// The item is not UTF-8.
    NotUtf8,
    /// A line is wrong.
    Line {
        /// 1-based line number.
        line: u32,
        /// The key as written (its first 64 bytes, each not printable
        /// ASCII as `?`), or empty if there is none.
        key: String,
        /// What is wrong.
        problem: Problem,
    },
    /// The program asked for a key its schema does not have, or with
    /// another type (a bug, reported rather than defaulted).
    NotInSchema(&'static str),
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::TooLong => f.write_str("too long"),
            SettingsError::NotUtf8 => f.write_str("not UTF-8"),
            SettingsError::Line { line, key, problem } if key.is_empty() => {
                write!(f, "line {line}: {problem}")
            }
            SettingsError::Line { line, key, problem } => {
                write!(f, "line {line}: {key}: {problem}")
            }
            SettingsError::NotInSchema(key) => write!(f, "{key}: not in the schema"),
        }
    }
}

impl core::error::Error for SettingsError {}

/// A parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An integer.
    Int(u64),
    /// A flag.
    Flag(bool),
    /// A name, list or text, as written (trimmed).
    Text(String),
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b'#' | b'='))
}

/// Checks `value` (trimmed) against `kind`.
#[inline(never)]
pub fn check(kind: &Kind, value: &str) -> Result<Value, Problem> {
    match *kind {
        Kind::Int { min, max, .. } => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Problem::NotANumber);
            }
            let n: u64 = value.parse().map_err(|_| Problem::NotANumber)?;
            if n < u64::from(min) || n > u64::from(max) {
                return Err(Problem::OutOfRange { min, max });
            }
            Ok(Value::Int(n))
        }
        Kind::Flag(_) => match value {
            "0" => Ok(Value::Flag(false)),
            "1" => Ok(Value::Flag(true)),
            _ => Err(Problem::NotAFlag),
        },
        Kind::Name(_) if name_ok(value) => Ok(Value::Text(value.into())),
        Kind::Name(_) => Err(Problem::BadName),
        Kind::Names(_) => {
            let mut n = 0usize;
            for item in value.split(',') {
                if !name_ok(item.trim()) {
                    return Err(Problem::BadName);
                }
                n += 1;
                if n > MAX_NAMES {
                    return Err(Problem::TooManyNames);
                }
            }
            Ok(Value::Text(value.into()))
        }
        Kind::Text(_) => {
            let ok = !value.is_empty()
                && value.len() <= MAX_TEXT
                && value.bytes().all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'#');
            if ok {
                Ok(Value::Text(value.into()))
            } else {
                Err(Problem::BadText)
            }
        }
    }
}

/// A guest's settings, parsed against its role's specs.
pub struct Settings {
    specs: &'static [Spec],
    /// Per spec: the value given, or `None` (the default).
    values: Vec<Option<Value>>,
}

/// A key as quoted in an error: its first [`MAX_KEY_SHOWN`] bytes, each
/// one not printable ASCII shown as `?` (the error may reach a console).
fn cut(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes().take(MAX_KEY_SHOWN) {
        out.push(if b.is_ascii_graphic() || b == b' ' { char::from(b) } else { '?' });
    }
    out
}

impl Settings {
    /// Every knob at its default.
    pub fn defaults(specs: &'static [Spec]) -> Settings {
        Settings { specs, values: vec![None; specs.len()] }
    }

    /// Reads the platform's settings item and parses it against `specs`;
    /// absent settings are all defaults.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn load<P: Platform>(p: &mut P, specs: &'static [Spec]) -> Result<Settings, AppError> {
        let mut buf = vec![0u8; MAX_SETTINGS];
        match p.config(ConfigItem::Settings, &mut buf) {
            Ok(n) => Ok(Settings::parse_bytes(buf.get(..n).unwrap_or_default(), specs)?),
            Err(PlatformError::MissingConfig) => Ok(Settings::defaults(specs)),
            // Including `BadConfig`: too large for the buffer, or unreadable.
            Err(e) => Err(e.into()),
        }
    }

    /// Parses settings bytes.
    pub fn parse_bytes(bytes: &[u8], specs: &'static [Spec]) -> Result<Settings, SettingsError> {
        if bytes.len() > MAX_SETTINGS {
            return Err(SettingsError::TooLong);
        }
        let text = core::str::from_utf8(bytes).map_err(|_| SettingsError::NotUtf8)?;
        Settings::parse(text, specs)
    }

    /// Parses settings text strictly (see the module documentation).
    #[inline(never)]
    pub fn parse(text: &str, specs: &'static [Spec]) -> Result<Settings, SettingsError> {
        if text.len() > MAX_SETTINGS {
            return Err(SettingsError::TooLong);
        }
        let mut s = Settings::defaults(specs);
        // The line each key was given on (0: not given).
        let mut seen = vec![0u32; specs.len()];
        for (i, raw) in text.lines().enumerate() {
            let line = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
            let body = raw.split('#').next().unwrap_or_default().trim();
            if body.is_empty() {
                continue;
            }
            let fail = |key: &str, problem| SettingsError::Line { line, key: cut(key), problem };
            let Some((k, v)) = body.split_once('=') else {
                return Err(fail("", Problem::NotKeyValue));
            };
            let (k, v) = (k.trim(), v.trim());
            let Some(idx) = specs.iter().position(|sp| sp.key == k) else {
                return Err(fail(k, Problem::UnknownKey));
            };
            let (Some(spec), Some(first), Some(slot)) =
                (specs.get(idx), seen.get_mut(idx), s.values.get_mut(idx))
            else {
                return Err(fail(k, Problem::UnknownKey));
            };
            if *first != 0 {
                return Err(fail(k, Problem::Duplicate { first: *first }));
            }
            *first = line;
            *slot = Some(check(&spec.kind, v).map_err(|p| fail(k, p))?);
        }
        Ok(s)
    }

    #[inline(never)]
    fn lookup(&self, key: &'static str) -> Result<(&Kind, Option<&Value>), SettingsError> {
        let idx =
            self.specs.iter().position(|s| s.key == key).ok_or(SettingsError::NotInSchema(key))?;
        let spec = self.specs.get(idx).ok_or(SettingsError::NotInSchema(key))?;
        Ok((&spec.kind, self.values.get(idx).and_then(Option::as_ref)))
    }

    /// Whether `key` was given (rather than defaulted).
    pub fn is_set(&self, key: &'static str) -> bool {
        matches!(self.lookup(key), Ok((_, Some(_))))
    }

    /// Every integer knob's value, in the schema's order; `N` must be
    /// their number (else `NotInSchema`). One pass, no key lookups.
    pub fn ints<const N: usize>(&self) -> Result<[u64; N], SettingsError> {
        const WRONG: SettingsError = SettingsError::NotInSchema("(number of integers)");
        let mut out = [0u64; N];
        let mut slots = out.iter_mut();
        for (spec, value) in self.specs.iter().zip(&self.values) {
            if let Kind::Int { default, .. } = spec.kind {
                let slot = slots.next().ok_or(WRONG)?;
                *slot = match value {
                    Some(Value::Int(n)) => *n,
                    _ => u64::from(default),
                };
            }
        }
        if slots.next().is_some() {
            return Err(WRONG);
        }
        Ok(out)
    }

    /// An integer knob.
    #[inline(never)]
    pub fn num(&self, key: &'static str) -> Result<u64, SettingsError> {
        match self.lookup(key)? {
            (Kind::Int { .. }, Some(Value::Int(n))) => Ok(*n),
            (Kind::Int { default, .. }, None) => Ok(u64::from(*default)),
            _ => Err(SettingsError::NotInSchema(key)),
        }
    }

    /// An integer knob that fits `usize`.
    pub fn num_usize(&self, key: &'static str) -> Result<usize, SettingsError> {
        usize::try_from(self.num(key)?).map_err(|_| SettingsError::NotInSchema(key))
    }

    /// A flag knob.
    pub fn flag(&self, key: &'static str) -> Result<bool, SettingsError> {
        match self.lookup(key)? {
            (Kind::Flag(_), Some(Value::Flag(b))) => Ok(*b),
            (Kind::Flag(default), None) => Ok(*default),
            _ => Err(SettingsError::NotInSchema(key)),
        }
    }

    /// A name or text knob; `own` is the guest's domain name (the default
    /// of names whose default is the guest's own name).
    pub fn text<'a>(&'a self, key: &'static str, own: &'a str) -> Result<&'a str, SettingsError> {
        match self.lookup(key)? {
            (Kind::Name(_) | Kind::Text(_), Some(Value::Text(t))) => Ok(t.as_str()),
            (Kind::Name(Some(d)) | Kind::Text(d), None) => Ok(d),
            (Kind::Name(None), None) => Ok(own),
            _ => Err(SettingsError::NotInSchema(key)),
        }
    }

    /// A list knob's names.
    pub fn list(
        &self,
        key: &'static str,
    ) -> Result<impl Iterator<Item = &str> + '_, SettingsError> {
        let text = match self.lookup(key)? {
            (Kind::Names(_), Some(Value::Text(t))) => t.as_str(),
            (Kind::Names(d), None) => d,
            _ => return Err(SettingsError::NotInSchema(key)),
        };
        Ok(text.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_err(r: Result<Settings, SettingsError>) -> (u32, String, Problem) {
        match r {
            Err(SettingsError::Line { line, key, problem }) => (line, key, problem),
            Err(e) => panic!("not a line error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn every_default_is_within_its_own_bounds_and_keys_are_unique() {
        for role in Role::ALL {
            let knobs = role.knobs();
            for (i, k) in knobs.iter().enumerate() {
                assert_eq!(role.specs().get(i), Some(&k.spec), "{}", k.spec.key);
                assert!(!k.doc.is_empty(), "{} has no doc", k.spec.key);
                assert!(
                    knobs.iter().filter(|o| o.spec.key == k.spec.key).count() == 1,
                    "{} twice in {}",
                    k.spec.key,
                    role.name()
                );
                let default = match k.spec.kind {
                    Kind::Int { default, .. } => alloc::format!("{default}"),
                    Kind::Flag(b) => String::from(if b { "1" } else { "0" }),
                    Kind::Name(Some(d)) | Kind::Names(d) | Kind::Text(d) => d.into(),
                    Kind::Name(None) => "own_name".into(),
                };
                assert!(check(&k.spec.kind, &default).is_ok(), "{} default {default}", k.spec.key);
            }
        }
    }

    #[test]
    fn absent_keys_take_their_defaults() {
        let s = Settings::parse("# nothing\n\n", &CRYPTOD_SPECS).unwrap();
        assert_eq!(s.num("totp_window").unwrap(), DEFAULT_WINDOW);
        assert_eq!(s.num("issue_burst").unwrap(), 60);
        assert!(s.flag("answer_after_audit").unwrap());
        assert_eq!(s.text("collector", "me").unwrap(), "dom0");
        assert_eq!(s.list("clients").unwrap().count(), 3);
        assert!(!s.is_set("totp_window"));
        let u = Settings::parse("", &UNLOCKER_SPECS).unwrap();
        assert_eq!(u.text("device", "unlocker7").unwrap(), "unlocker7");
    }

    #[test]
    fn given_values_are_read() {
        let text = "totp_window = 3 # wide\nanswer_after_audit=0\nclients= a , b\n";
        let s = Settings::parse(text, &CRYPTOD_SPECS).unwrap();
        assert_eq!(s.num("totp_window").unwrap(), 3);
        assert!(!s.flag("answer_after_audit").unwrap());
        assert_eq!(s.list("clients").unwrap().collect::<Vec<_>>(), ["a", "b"]);
        assert!(s.is_set("totp_window"));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it_and_its_line() {
        let e = line_err(Settings::parse("totp_window=1\ntotp_windwo=2\n", &CRYPTOD_SPECS));
        assert_eq!(e, (2, "totp_windwo".into(), Problem::UnknownKey));
        // A key of another role is unknown here.
        let e = line_err(Settings::parse("skew=3\n", &CRYPTOD_SPECS));
        assert_eq!(e, (1, "skew".into(), Problem::UnknownKey));
        let long = "k".repeat(300) + "=1";
        let (_, key, _) = line_err(Settings::parse(&long, &CRYPTOD_SPECS));
        assert_eq!(key.len(), 64, "a hostile key is cut");
        let (_, key, _) = line_err(Settings::parse("a\u{1b}[2J\u{e9}=1", &CRYPTOD_SPECS));
        assert_eq!(key, "a?[2J??", "nothing a console would act on");
    }

    #[test]
    fn a_duplicate_key_is_an_error_naming_both_lines() {
        let e = line_err(Settings::parse("skew=1\n\nskew=1\n", &POLICY_PD_SPECS));
        assert_eq!(e, (3, "skew".into(), Problem::Duplicate { first: 1 }));
    }

    #[test]
    fn malformed_and_out_of_bounds_values_are_errors() {
        let bad = |t: &str, specs: &'static [Spec]| line_err(Settings::parse(t, specs)).2;
        assert_eq!(bad("totp_window=11", &CRYPTOD_SPECS), Problem::OutOfRange { min: 0, max: 10 });
        assert_eq!(bad("unlock_ttl=29", &CRYPTOD_SPECS), Problem::OutOfRange { min: 30, max: 120 });
        assert_eq!(bad("totp_window=-1", &CRYPTOD_SPECS), Problem::NotANumber);
        assert_eq!(bad("totp_window=+1", &CRYPTOD_SPECS), Problem::NotANumber);
        assert_eq!(bad("totp_window=", &CRYPTOD_SPECS), Problem::NotANumber);
        assert_eq!(bad("totp_window=99999999999999999999999", &CRYPTOD_SPECS), Problem::NotANumber);
        assert_eq!(bad("answer_after_audit=yes", &CRYPTOD_SPECS), Problem::NotAFlag);
        assert_eq!(bad("collector=dom 0", &CRYPTOD_SPECS), Problem::BadName);
        assert_eq!(bad("clients=a,,b", &CRYPTOD_SPECS), Problem::BadName);
        assert_eq!(
            bad("interval_ms=5", &ENTROPYD_SPECS),
            Problem::OutOfRange { min: 10, max: 60_000 }
        );
        assert_eq!(bad("chunk=4096", &ENTROPYD_SPECS), Problem::OutOfRange { min: 32, max: 512 });
        assert_eq!(bad("rule=\u{7}", &POLICY_PD_SPECS), Problem::BadText);
        let many = alloc::format!("allow={}", ["d"; 17].join(","));
        assert_eq!(bad(&many, &ENTROPYD_SPECS), Problem::TooManyNames);
        assert_eq!(line_err(Settings::parse("\njust words\n", &ENTROPYD_SPECS)).0, 2);
    }

    #[test]
    fn ints_are_in_schema_order_and_their_number_must_match() {
        let s = Settings::parse("chunk=100\n", &ENTROPYD_SPECS).unwrap();
        assert_eq!(s.ints::<2>(), Ok([1000, 100]));
        assert!(s.ints::<1>().is_err());
        assert!(s.ints::<3>().is_err());
    }

    #[test]
    fn oversized_or_non_utf8_items_are_refused() {
        let big = "#".repeat(MAX_SETTINGS + 1);
        assert_eq!(Settings::parse(&big, &ENTROPYD_SPECS).err(), Some(SettingsError::TooLong));
        assert_eq!(
            Settings::parse_bytes(b"allow=\xff", &ENTROPYD_SPECS).err(),
            Some(SettingsError::NotUtf8)
        );
    }

    #[test]
    fn asking_for_a_key_outside_the_schema_or_of_another_type_is_an_error() {
        let s = Settings::parse("", &ENTROPYD_SPECS).unwrap();
        assert_eq!(s.num("totp_window").err(), Some(SettingsError::NotInSchema("totp_window")));
        assert_eq!(s.flag("chunk").err(), Some(SettingsError::NotInSchema("chunk")));
    }

    #[test]
    fn errors_read_as_line_key_and_problem() {
        let e = Settings::parse("a=1\nunlock_ttl=500\n", &CRYPTOD_SPECS).err().unwrap();
        assert_eq!(alloc::format!("{e}"), "line 1: a: unknown key");
        let e = Settings::parse("unlock_ttl=500\n", &CRYPTOD_SPECS).err().unwrap();
        assert_eq!(alloc::format!("{e}"), "line 1: unlock_ttl: out of range 30 to 120");
    }
}
