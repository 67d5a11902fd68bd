//! `/etc/portcullis/host.toml`, parsed strictly: an unknown key, a guest
//! with an unknown role, two guests with one role, a setting that cannot be
//! rendered as a `key=value` line, or a missing file the service will need
//! is an error naming the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

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
}

fn default_skew() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    role: Spanned<Role>,
    settings: Option<BTreeMap<Spanned<String>, Spanned<Setting>>>,
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
            Some(map) => Some(render_settings(&cx, &key, map)?),
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
            Some(Agent { volumes, skew: a.skew, dry_run: a.dry_run })
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

fn render_settings(
    cx: &Ctx<'_>,
    guest_key: &str,
    map: &BTreeMap<Spanned<String>, Spanned<Setting>>,
) -> Result<Vec<u8>, ConfigError> {
    let mut out = String::new();
    for (k, v) in map {
        let key = format!("{guest_key}.settings.{}", k.get_ref());
        if !key_ok(k.get_ref(), 64) {
            return Err(cx.err(
                Some(k.span()),
                Some(key),
                "a setting's name is 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        let bad = |why: &str| cx.err(Some(v.span()), Some(key.clone()), why.to_string());
        let value = match v.get_ref() {
            Setting::Bool(b) => u8::from(*b).to_string(),
            Setting::Int(i) => i.to_string(),
            Setting::Text(s) if value_ok(s) => s.clone(),
            Setting::Text(_) => return Err(bad("a setting may not hold control characters")),
            Setting::List(items) => {
                if items.iter().any(|s| !value_ok(s) || s.contains(',')) {
                    return Err(bad("list items may not hold ',' or control characters"));
                }
                items.join(",")
            }
        };
        out.push_str(k.get_ref());
        out.push('=');
        out.push_str(&value);
        out.push('\n');
    }
    if out.len() > MAX_SETTINGS_LEN {
        return Err(cx.err(
            None,
            Some(format!("{guest_key}.settings")),
            format!("renders to {} bytes, more than {MAX_SETTINGS_LEN}", out.len()),
        ));
    }
    Ok(out.into_bytes())
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
            })
        );
        let names: Vec<&str> = c.guests.keys().map(String::as_str).collect();
        assert_eq!(names, ["cryptod", "entropyd", "policy_pd", "unlocker"]);
        assert_eq!(c.guests["cryptod"].role, Role::Cryptod);
        assert_eq!(
            c.guests["cryptod"].settings.as_deref(),
            Some(&b"clients=unlocker,policy_pd,dom0\ncollector=dom0\n"[..])
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
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { x = \"a\\nb=1\" }\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        assert!(e.contains("guests.c.settings.x: a setting may not hold control"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { x = [\"a,b\"] }\n");
        assert!(e.contains("list items may not hold ','"), "{e}");
        let e = err("[guests.c]\nrole = \"cryptod\"\nsettings = { x = 1.5 }\n");
        assert!(e.starts_with("host.toml:3:"), "{e}");
        let big = "y".repeat(MAX_SETTINGS_LEN);
        let e = err(&format!("[guests.c]\nrole = \"cryptod\"\nsettings = {{ x = \"{big}\" }}\n"));
        assert!(e.contains("more than 3072"), "{e}");
        let c = parse_str(
            "[guests.p]\nrole = \"policy_pd\"\nsettings = { selftest = true, skew = 30, \
             list = [\"a\", \"b\"], off = false }\n",
        )
        .unwrap();
        assert_eq!(
            c.guests["p"].settings.as_deref(),
            Some(&b"list=a,b\noff=0\nselftest=1\nskew=30\n"[..])
        );
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
