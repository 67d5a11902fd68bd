//! `/etc/portcullis/host.toml`, parsed strictly: an unknown key, a guest
//! with an unknown role, two guests with one role, a setting its role's
//! schema (`portcullis_apps::settings`, docs/settings.md) does not have or
//! whose value is of the wrong type, out of bounds or inconsistent with
//! another, or a missing file the service will need is an error naming the
//! file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use portcullis_apps::cryptod::authority_config;
use portcullis_apps::settings::{self, Kind, Problem, Settings};
use serde::Deserialize;
use toml::Spanned;

use super::core::Role;
use super::log::Level;

/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/portcullis/host.toml";
/// Longest config file read.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;
/// Most guests in one config.
pub const MAX_GUESTS: usize = 16;
/// Longest guest (Xen domain) name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest rendered `settings` item (it must fit one xenstore write with
/// its path).
pub const MAX_SETTINGS_LEN: usize = 3072;

/// The parsed, validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where `portcullis provision --out` wrote cryptod/kek.sealed,
    /// cryptod/sealed-state and root.pub.
    pub state_dir: PathBuf,
    /// The KEK passphrase's file, for the passphrase protector (else it is
    /// asked at start with systemd-ask-password).
    pub kek_passphrase_file: Option<PathBuf>,
    /// The most verbose level logged.
    pub log_level: Level,
    /// xenstored's UNIX socket (else /dev/xen/xenbus).
    pub xenstore: PathBuf,
    /// The audit collector, if configured.
    pub collector: Option<Collector>,
    /// The unlock agent, if configured.
    pub agent: Option<Agent>,
    /// Our guests by Xen domain name.
    pub guests: BTreeMap<String, Guest>,
}

/// `[collector]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Collector {
    /// The audit log file.
    pub log: PathBuf,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Volume id to LUKS device or file.
    pub volumes: Vec<(String, PathBuf)>,
    /// Clock skew allowed on unlock tokens, seconds.
    pub skew: u64,
    /// Check tokens but do not run cryptsetup.
    pub dry_run: bool,
    /// The agent's outcome key (private key file; its public half pinned in
    /// cryptod's `outcome_key` setting): outcomes are reported when set.
    pub outcome_key: Option<PathBuf>,
}

/// `[guests.<name>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guest {
    /// What the guest is.
    pub role: Role,
    /// The rendered `settings` item (`key=value\n` lines), if any.
    pub settings: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_state_dir")]
    state_dir: Spanned<PathBuf>,
    kek_passphrase_file: Option<PathBuf>,
    #[serde(default = "default_log_level")]
    log_level: Level,
    #[serde(default = "default_xenstore")]
    xenstore: PathBuf,
    collector: Option<Spanned<RawCollector>>,
    agent: Option<Spanned<RawAgent>>,
    #[serde(default)]
    guests: BTreeMap<Spanned<String>, Spanned<RawGuest>>,
}

fn default_state_dir() -> Spanned<PathBuf> {
    Spanned::new(0..0, PathBuf::from("/var/lib/portcullis"))
}

fn default_log_level() -> Level {
    Level::Info
}

fn default_xenstore() -> PathBuf {
    PathBuf::from("/var/run/xenstored/socket")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    log: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    volumes: BTreeMap<Spanned<String>, PathBuf>,
    #[serde(default = "default_skew")]
    skew: u64,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    outcome_key: Option<PathBuf>,
}

fn default_skew() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    role: Spanned<Role>,
    settings: Option<Spanned<BTreeMap<Spanned<String>, Spanned<Setting>>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Setting {
    Bool(bool),
    Int(i64),
    Text(String),
    List(Vec<String>),
}

/// A config error: the file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub at: Option<(usize, usize)>,
    /// The key concerned (`guests.cryptod.role`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl core::error::Error for ConfigError {}

struct Ctx<'a> {
    file: &'a Path,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Option<Range<usize>>, key: Option<String>, message: String) -> ConfigError {
        let at = span.filter(|s| s != &(0..0)).map(|s| line_col(self.src, s.start));
        ConfigError { file: self.file.to_path_buf(), at, key, message }
    }
}

/// 1-based line and column of byte `offset` in `src`.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The trimmed text of the line holding byte `offset`, at most 80 characters.
fn line_text(src: &str, offset: usize) -> Option<String> {
    let start = src.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = src.get(start..)?.lines().next()?.trim();
    if line.is_empty() {
        return None;
    }
    Some(line.chars().take(80).collect())
}

/// Reads and parses `file` (see [`parse`]).
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let fail =
        |message: String| ConfigError { file: file.to_path_buf(), at: None, key: None, message };
    let bytes = super::persist::read_bounded(file, MAX_CONFIG_LEN)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let src = String::from_utf8(bytes).map_err(|_| fail("not UTF-8".into()))?;
    parse(file, &src)
}

fn key_ok(k: &str, max: usize) -> bool {
    !k.is_empty()
        && k.len() <= max
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn value_ok(v: &str) -> bool {
    !v.chars().any(char::is_control)
}

/// Parses and validates the text of a config (`file` only names it in
/// errors). Does not look at the disk: see [`Config::check_files`].
pub fn parse(file: &Path, src: &str) -> Result<Config, ConfigError> {
    let cx = Ctx { file, src };
    let raw: RawConfig = toml::from_str(src).map_err(|e| {
        // toml's message names an unknown key; for a bad value the line's
        // text shows the key.
        let mut message = e.message().trim_end().to_string();
        if let Some(text) = e.span().and_then(|s| line_text(src, s.start)) {
            message.push_str(&format!(" (in `{text}`)"));
        }
        cx.err(e.span(), None, message)
    })?;

    if raw.guests.len() > MAX_GUESTS {
        return Err(cx.err(None, Some("guests".into()), format!("more than {MAX_GUESTS} guests")));
    }
    let mut guests = BTreeMap::new();
    let mut by_role: BTreeMap<Role, String> = BTreeMap::new();
    for (name, guest) in &raw.guests {
        let key = format!("guests.{}", name.get_ref());
        if !key_ok(name.get_ref(), MAX_NAME_LEN) {
            return Err(cx.err(
                Some(name.span()),
                Some(key),
                format!(
                    "a guest's name is its Xen domain name: 1 to {MAX_NAME_LEN} letters, \
                     digits, '-' or '_'"
                ),
            ));
        }
        let g = guest.get_ref();
        let role = *g.role.get_ref();
        if let Some(other) = by_role.insert(role, name.get_ref().clone()) {
            return Err(cx.err(
                Some(g.role.span()),
                Some(format!("{key}.role")),
                format!("guests.{other} already has role {}; one guest per role", role.name()),
            ));
        }
        let settings = match &g.settings {
            None => None,
            Some(map) => Some(render_settings(&cx, &key, name.get_ref(), role, map)?),
        };
        guests.insert(name.get_ref().clone(), Guest { role, settings });
    }

    let need = |role: Role, table: &str, span: Range<usize>| -> Result<(), ConfigError> {
        if by_role.contains_key(&role) {
            Ok(())
        } else {
            Err(cx.err(
                Some(span),
                Some(table.into()),
                format!("needs a guest with role {} under [guests]", role.name()),
            ))
        }
    };
    let collector = match raw.collector {
        None => None,
        Some(c) => {
            need(Role::Cryptod, "collector", c.span())?;
            Some(Collector { log: c.into_inner().log })
        }
    };
    let agent = match raw.agent {
        None => None,
        Some(a) => {
            let span = a.span();
            need(Role::Cryptod, "agent", span.clone())?;
            need(Role::Unlocker, "agent", span)?;
            let a = a.into_inner();
            let mut volumes = Vec::with_capacity(a.volumes.len());
            for (id, path) in a.volumes {
                if !key_ok(id.get_ref(), 32) {
                    return Err(cx.err(
                        Some(id.span()),
                        Some(format!("agent.volumes.{}", id.get_ref())),
                        "a volume id is 1 to 32 letters, digits, '-' or '_'".into(),
                    ));
                }
                volumes.push((id.into_inner(), path));
            }
            Some(Agent { volumes, skew: a.skew, dry_run: a.dry_run, outcome_key: a.outcome_key })
        }
    };
    Ok(Config {
        state_dir: raw.state_dir.into_inner(),
        kek_passphrase_file: raw.kek_passphrase_file,
        log_level: raw.log_level,
        xenstore: raw.xenstore,
        collector,
        agent,
        guests,
    })
}

/// Renders a guest's settings table as its `settings` item, checking each
/// key and value against the role's schema, then the whole item with the
/// guest's own parser (and, for cryptod, the authority's consistency
/// checks), so nothing a guest would refuse is written.
fn render_settings(
    cx: &Ctx<'_>,
    guest_key: &str,
    guest_name: &str,
    role: Role,
    table: &Spanned<BTreeMap<Spanned<String>, Spanned<Setting>>>,
) -> Result<Vec<u8>, ConfigError> {
    let schema = role.settings();
    let table_key = format!("{guest_key}.settings");
    let mut out = String::new();
    for (k, v) in table.get_ref() {
        let key = format!("{table_key}.{}", k.get_ref());
        let Some(spec) = schema.specs().iter().find(|s| s.key == k.get_ref()) else {
            return Err(cx.err(
                Some(k.span()),
                Some(key),
                format!("unknown setting for role {} (docs/settings.md)", role.name()),
            ));
        };
        let bad = |why: String| cx.err(Some(v.span()), Some(key.clone()), why);
        let value = match (&spec.kind, v.get_ref()) {
            (Kind::Flag(_), Setting::Bool(b)) => u8::from(*b).to_string(),
            (Kind::Int { .. } | Kind::Flag(_), Setting::Int(i)) => i.to_string(),
            (Kind::Name(_) | Kind::Names(_) | Kind::Text(_), Setting::Text(s)) => s.clone(),
            (Kind::Names(_), Setting::List(items)) => {
                if items.iter().any(|s| s.contains(',')) {
                    return Err(bad("list items may not hold ','".into()));
                }
                items.join(",")
            }
            (kind, _) => return Err(bad(format!("expected {}", kind_name(kind)))),
        };
        if !value_ok(&value) {
            return Err(bad("a setting may not hold control characters".into()));
        }
        settings::check(&spec.kind, &value).map_err(|p| bad(problem_text(p)))?;
        out.push_str(k.get_ref());
        out.push('=');
        out.push_str(&value);
        out.push('\n');
    }
    let whole = |message: String| cx.err(Some(table.span()), Some(table_key.clone()), message);
    if out.len() > MAX_SETTINGS_LEN {
        return Err(whole(format!("renders to {} bytes, more than {MAX_SETTINGS_LEN}", out.len())));
    }
    // The guest's own parser, on exactly the bytes it will get.
    let parsed = Settings::parse(&out, schema.specs()).map_err(|e| whole(e.to_string()))?;
    if role == Role::Cryptod {
        let config = authority_config(&parsed, guest_name).map_err(|e| whole(e.to_string()))?;
        config.check().map_err(|e| whole(e.to_string()))?;
    }
    Ok(out.into_bytes())
}

/// The guest's terse text of a problem, with the rule spelled out.
fn problem_text(p: Problem) -> String {
    use settings::{MAX_NAME, MAX_NAMES, MAX_TEXT};
    match p {
        Problem::BadName => format!(
            "a name is 1 to {MAX_NAME} printable ASCII characters without space, ',', '#' or '='"
        ),
        Problem::BadText => {
            format!("text is 1 to {MAX_TEXT} printable ASCII characters (or spaces) without '#'")
        }
        Problem::TooManyNames => format!("more than {MAX_NAMES} names"),
        other => other.to_string(),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int { .. } => "an integer",
        Kind::Flag(_) => "a boolean (or 0 or 1)",
        Kind::Name(_) => "a string (a name)",
        Kind::Names(_) => "an array of names or a string of comma-separated names",
        Kind::Text(_) => "a string",
    }
}

/// A file under `state_dir` the service reads, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// Its path.
    pub path: PathBuf,
    /// Who needs it.
    pub why: String,
}

impl Config {
    /// Every file under `state_dir` the configured guests and the agent need.
    pub fn needed_files(&self) -> Vec<Needed> {
        let mut out: Vec<Needed> = Vec::new();
        let mut add = |rel: &str, why: String| {
            let path = self.state_dir.join(rel);
            if !out.iter().any(|n| n.path == path) {
                out.push(Needed { path, why });
            }
        };
        for (name, g) in &self.guests {
            for item in g.role.items() {
                let why = format!("guest {name}'s {} item", super::core::item_key(*item));
                match super::core::source(*item) {
                    super::core::Source::File(rel) => add(rel, why),
                    super::core::Source::Kek => add(crate::kek::FILE, why),
                    super::core::Source::Settings => {}
                }
            }
        }
        if self.agent.is_some() {
            add(super::core::ROOT_PUB, "the unlock agent".into());
        }
        out
    }

    /// Checks that every needed file exists; the error names the file, the
    /// key `state_dir` and its line in `src` (the config's text).
    pub fn check_files(&self, file: &Path, src: &str) -> Result<(), ConfigError> {
        let missing: Vec<String> = self
            .needed_files()
            .into_iter()
            .filter(|n| !n.path.is_file())
            .map(|n| format!("{} (for {})", n.path.display(), n.why))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let at = state_dir_span(src).map(|s| line_col(src, s.start));
        Err(ConfigError {
            file: file.to_path_buf(),
            at,
            key: Some("state_dir".into()),
            message: format!(
                "missing {}; run `portcullis provision --out {}` first",
                missing.join(", "),
                self.state_dir.display()
            ),
        })
    }

    /// A human summary for `--check`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "state_dir {}\nkek passphrase {}\nlog_level {}\nxenstore {}\n",
            self.state_dir.display(),
            self.kek_passphrase_file.as_ref().map_or(
                "asked at start (if the protector is passphrase)".into(),
                |p| format!("from {}", p.display())
            ),
            self.log_level.name(),
            self.xenstore.display()
        );
        for (name, g) in &self.guests {
            let items: Vec<String> = g
                .role
                .items()
                .iter()
                .filter(|i| {
                    **i != portcullis_platform::ConfigItem::Settings || g.settings.is_some()
                })
                .map(|i| super::core::item_key(*i))
                .collect();
            s.push_str(&format!(
                "guest {name}: role {}, items {}\n",
                g.role.name(),
                if items.is_empty() { "none".into() } else { items.join(", ") }
            ));
        }
        match &self.collector {
            Some(c) => s.push_str(&format!("collector: audit log {}\n", c.log.display())),
            None => s.push_str("collector: not configured\n"),
        }
        match &self.agent {
            Some(a) => {
                let vols: Vec<String> =
                    a.volumes.iter().map(|(id, p)| format!("{id}={}", p.display())).collect();
                s.push_str(&format!(
                    "agent: volumes {}, skew {} s{}\n",
                    if vols.is_empty() { "none".into() } else { vols.join(", ") },
                    a.skew,
                    if a.dry_run { ", dry run" } else { "" }
                ));
            }
            None => s.push_str("agent: not configured\n"),
        }
        s
    }
}

fn state_dir_span(src: &str) -> Option<Range<usize>> {
    #[derive(Deserialize)]
    struct Only {
        state_dir: Option<Spanned<toml::Value>>,
    }
    toml::from_str::<Only>(src).ok()?.state_dir.map(|s| s.span())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../../packaging/host.toml");
    const XEN_TEST: &str = include_str!("../../../../tests/xen/host.toml");

    fn parse_str(src: &str) -> Result<Config, ConfigError> {
        parse(Path::new("host.toml"), src)
    }

    fn err(src: &str) -> String {
        parse_str(src).unwrap_err().to_string()
    }

    #[test]
    fn the_shipped_config_parses() {
        let c = parse(Path::new("packaging/host.toml"), SHIPPED).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/portcullis"));
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.xenstore, Path::new("/var/run/xenstored/socket"));
        assert_eq!(c.collector, Some(Collector { log: "/var/lib/portcullis/audit.log".into() }));
        assert_eq!(
            c.agent,
            Some(Agent {
                volumes: vec![("data".into(), "/dev/disk/by-partlabel/portcullis-data".into())],
                skew: 30,
                dry_run: false,
                outcome_key: None,
            })
        );
        let names: Vec<&str> = c.guests.keys().map(String::as_str).collect();
        assert_eq!(names, ["cryptod", "entropyd", "policy_pd", "unlocker"]);
        assert_eq!(c.guests["cryptod"].role, Role::Cryptod);
        // The shipped values of cryptod's knobs are their defaults.
        let text = String::from_utf8(c.guests["cryptod"].settings.clone().unwrap()).unwrap();
        assert!(text.starts_with("clients=unlocker,policy_pd,dom0\ncollector=dom0\n"), "{text}");
        let shipped = Settings::parse(&text, Role::Cryptod.settings().specs()).unwrap();
        assert!(shipped.is_set("totp_window") && shipped.is_set("key_rotation"));
        let defaults = Settings::defaults(Role::Cryptod.settings().specs());
        assert_eq!(
            authority_config(&shipped, "cryptod").unwrap(),
            authority_config(&defaults, "cryptod").unwrap()
        );
        assert_eq!(
            c.guests["unlocker"].settings.as_deref(),
            Some(&b"agent=dom0\noperator=operator\nvolume=data\n"[..])
        );
        assert_eq!(c.guests["entropyd"].settings, None);
        assert_eq!(c.guests["policy_pd"].role, Role::PolicyPd);
        let summary = c.summary();
        assert!(summary.contains("guest cryptod: role cryptod, items kek, sealed-state, settings"));
        assert_eq!(c.kek_passphrase_file, None);
        let c = parse_str("kek_passphrase_file = \"/run/pass\"\n").unwrap();
        assert_eq!(c.kek_passphrase_file.as_deref(), Some(Path::new("/run/pass")));
        assert!(summary.contains("guest entropyd: role entropyd, items none"));
    }

    #[test]
    fn the_xen_tests_config_parses_with_its_settings() {
        let c = parse(Path::new("tests/xen/host.toml"), XEN_TEST).unwrap();
        assert_eq!(c.guests["policy_pd"].settings.as_deref(), Some(&b"selftest=1\nskew=600\n"[..]));
        // The harness edits the skew line to 3 and restarts the service.
        let edited = XEN_TEST.replace("skew = 600 # policy_pd", "skew = 3 # policy_pd");
        let c = parse(Path::new("tests/xen/host.toml"), &edited).unwrap();
        assert_eq!(c.guests["policy_pd"].settings.as_deref(), Some(&b"selftest=1\nskew=3\n"[..]));
    }

    #[test]
    fn the_xen_tests_config_with_the_agents_outcome_key_parses() {
        // What tests/xen/dom0-test.sh's "agent outcome key" stage does to
        // host.toml (its awk): a line after `[agent]`, and cryptod's
        // settings table gets `outcome_key`.
        let hex = "ab".repeat(32);
        let mut edited = String::new();
        let mut in_cryptod = false;
        for line in XEN_TEST.lines() {
            if line == "[guests.cryptod]" {
                in_cryptod = true;
            }
            if in_cryptod && line.starts_with("settings = {") {
                let head = line.strip_suffix(" }").unwrap();
                edited.push_str(&format!("{head}, outcome_key = \"dom0={hex}\" }}\n"));
                in_cryptod = false;
                continue;
            }
            edited.push_str(line);
            edited.push('\n');
            if line == "[agent]" {
                edited.push_str("outcome_key = \"/var/lib/portcullis/agent-outcome.key\"\n");
            }
        }
        let c = parse(Path::new("tests/xen/host.toml"), &edited).unwrap();
        let agent = c.agent.unwrap();
        assert_eq!(agent.outcome_key, Some("/var/lib/portcullis/agent-outcome.key".into()));
        let settings = String::from_utf8(c.guests["cryptod"].settings.clone().unwrap()).unwrap();
        assert!(settings.contains(&format!("outcome_key=dom0={hex}\n")), "{settings}");
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let e = err("state_dir = \"/x\"\nlog_levle = \"info\"\n");
        assert!(e.starts_with("host.toml:2:1: "), "{e}");
        assert!(e.contains("log_levle"), "{e}");
        let e = err("[collector]\nlog = \"/a\"\nfsync = true\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        assert!(e.contains("fsync"), "{e}");
        let e = err("[guests.cryptod]\nrole = \"cryptod\"\nsetings = {}\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        assert!(e.contains("setings"), "{e}");
        let e = err("[agent]\nvolumes = {}\nskew = 30\nretries = 2\n");
        assert!(e.starts_with("host.toml:4:"), "{e}");
        let e = err("[nothing]\n");
        assert!(e.contains("nothing"), "{e}");
    }

    #[test]
    fn bad_values_are_errors_with_their_line() {
        let e = err("log_level = \"loud\"\n");
        assert!(e.starts_with("host.toml:1:"), "{e}");
        assert!(e.contains("loud"), "{e}");
        let e = err("\n[guests.x]\nrole = \"keyd\"\n");
        assert!(e.starts_with("host.toml:3:8: unknown variant `keyd`"), "{e}");
        assert!(e.ends_with("(in `role = \"keyd\"`)"), "{e}");
        let e = err("[agent]\nskew = -1\n");
        assert!(e.starts_with("host.toml:2:"), "{e}");
    }

    #[test]
    fn one_guest_per_role() {
        let e = err("[guests.a]\nrole = \"cryptod\"\n[guests.b]\nrole = \"cryptod\"\n");
        assert_eq!(
            e,
            "host.toml:4:8: guests.b.role: guests.a already has role cryptod; one guest per role"
        );
    }

    #[test]
    fn the_links_need_their_guests() {
        let e = err("[collector]\nlog = \"/a\"\n");
        assert!(e.contains("collector: needs a guest with role cryptod"), "{e}");
        let e = err("[agent]\n[guests.c]\nrole = \"cryptod\"\n");
        assert!(e.starts_with("host.toml:1:1: agent: needs a guest with role unlocker"), "{e}");
        assert!(parse_str(
            "[agent]\n[guests.c]\nrole = \"cryptod\"\n[guests.u]\nrole = \"unlocker\"\n"
        )
        .is_ok());
    }

    #[test]
    fn names_and_settings_are_checked() {
        let e = err("[guests.\"a/b\"]\nrole = \"cryptod\"\n");
        assert!(e.starts_with("host.toml:1:"), "{e}");
        assert!(e.contains("guests.a/b: a guest's name"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { collector = \"a\\nb=1\" }\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        assert!(e.contains("guests.c.settings.collector: a setting may not hold control"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { clients = [\"a,b\"] }\n");
        assert!(e.contains("list items may not hold ','"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { totp_window = 1.5 }\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        let many = vec!["d"; 17].join(",");
        let e = err(&format!(
            "[guests.c]\nrole = \"cryptod\"\nsettings = {{ clients = \"{many}\" }}\n"
        ));
        assert!(e.ends_with("guests.c.settings.clients: more than 16 names"), "{e}");
        let c = parse_str(
            "[guests.p]\nrole = \"policy_pd\"\nsettings = { selftest = true, skew = 30, \
             rule = \"allow tcp 10.0.0.0/8 -> 443\" }\n[guests.e]\nrole = \"entropyd\"\n\
             settings = { allow = [\"a\", \"b\"], chunk = 32 }\n",
        )
        .unwrap();
        assert_eq!(
            c.guests["p"].settings.as_deref(),
            Some(&b"rule=allow tcp 10.0.0.0/8 -> 443\nselftest=1\nskew=30\n"[..])
        );
        assert_eq!(c.guests["e"].settings.as_deref(), Some(&b"allow=a,b\nchunk=32\n"[..]));
    }

    #[test]
    fn a_setting_its_role_does_not_have_is_an_error_at_its_key() {
        let e = err("[guests.c]\nrole = \"cryptod\"\n\n[guests.c.settings]\ntotp_window = 2\n\
                     totp_windwo = 2\n");
        assert_eq!(
            e,
            "host.toml:6:1: guests.c.settings.totp_windwo: unknown setting for role cryptod \
             (docs/settings.md)"
        );
        // A key of another role is unknown too.
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { skew = 3 }\n");
        assert!(e.starts_with("host.toml:3:14: guests.c.settings.skew: unknown setting"), "{e}");
    }

    #[test]
    fn a_setting_out_of_bounds_or_of_the_wrong_type_is_an_error_at_its_value() {
        let src = "[guests.c]\nrole = \"cryptod\"\n[guests.c.settings]\ntotp_window = 11\n";
        assert_eq!(err(src), "host.toml:4:15: guests.c.settings.totp_window: out of range 0 to 10");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { unlock_ttl = -5 }\n");
        assert!(
            e.ends_with("guests.c.settings.unlock_ttl: not an unsigned decimal integer"),
            "{e}"
        );
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { totp_window = \"2\" }\n");
        assert!(e.ends_with("totp_window: expected an integer"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { answer_after_audit = 2 }\n");
        assert!(e.ends_with("answer_after_audit: not 0 or 1"), "{e}");
        let e = err("[guests.u]\nrole = \"unlocker\"\nsettings = { operator = \"a b\" }\n");
        assert!(e.contains("guests.u.settings.operator: a name is"), "{e}");
        let e = err("[guests.e]\nrole = \"entropyd\"\nsettings = { interval_ms = 1 }\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
    }

    #[test]
    fn cryptod_settings_that_contradict_each_other_are_an_error_at_the_table() {
        let e = err("[guests.c]\nrole = \"cryptod\"\n\
                     settings = { policy_ttl = 200, max_policy_ttl = 100 }\n");
        assert!(e.starts_with("host.toml:3:12: guests.c.settings: config: policy ttl"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\n\
                     settings = { key_rotation = 400, key_overlap = 400 }\n");
        assert!(e.contains("guests.c.settings: keys: overlap"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\n\
                     settings = { totp_lockout = 600, totp_max_lockout = 60 }\n");
        assert!(e.contains("longest lockout"), "{e}");
    }

    #[test]
    fn missing_state_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = format!(
            "# comment\nstate_dir = \"{}\"\n[agent]\n[guests.cryptod]\nrole = \"cryptod\"\n\
             [guests.u]\nrole = \"unlocker\"\n",
            dir.path().display()
        );
        let c = parse_str(&src).unwrap();
        let e = c.check_files(Path::new("host.toml"), &src).unwrap_err().to_string();
        assert!(e.starts_with("host.toml:2:13: state_dir: missing "), "{e}");
        for f in ["cryptod/kek.sealed", "cryptod/sealed-state", "root.pub"] {
            assert!(e.contains(&dir.path().join(f).display().to_string()), "{f}: {e}");
        }
        std::fs::create_dir(dir.path().join("cryptod")).unwrap();
        for f in ["cryptod/kek.sealed", "cryptod/sealed-state"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let e = c.check_files(Path::new("host.toml"), &src).unwrap_err().to_string();
        assert!(e.contains("root.pub (for guest u's root-pub item)"), "{e}");
        std::fs::write(dir.path().join("root.pub"), b"x").unwrap();
        c.check_files(Path::new("host.toml"), &src).unwrap();
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd\n", 0), (1, 1));
        assert_eq!(line_col("ab\ncd\n", 4), (2, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
