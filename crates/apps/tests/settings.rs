//! The settings schema against cryptod's authority configuration and
//! against docs/settings.md.

use portcullis_apps::cryptod::authority_config;
use portcullis_apps::settings::{
    Kind, Role, Settings, CRYPTOD_SPECS, MAX_NAME, MAX_NAMES, MAX_TEXT,
};
use portcullis_authority::keys::KeyConfig;
use portcullis_authority::outcome::OutcomeKey;
use portcullis_authority::ratelimit::{IssueRateConfig, RateLimitConfig};
use portcullis_authority::Config;

#[test]
fn cryptods_defaults_are_the_authoritys_defaults() {
    let c = authority_config(&Settings::defaults(&CRYPTOD_SPECS), "cryptod").unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn every_cryptod_knob_reaches_the_authority_config() {
    let text = "\
clients=a,b
collector=coll
entropy=ent2
unlock_audience=agent2
outcome_key=dom0=0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526272829
answer_after_audit=0
totp_window=3
totp_max_failures=7
totp_lockout=45
totp_max_lockout=900
totp_max_domains=99
unlock_ttl=90
policy_ttl=100
max_policy_ttl=200
issue_burst=11
issue_per_minute=22
issue_max_peers=33
key_rotation=7200
key_overlap=1200
audit_outbox=128
max_held=64
audit_aggregate_window=0
reseed_interval=1000
";
    let s = Settings::parse(text, &CRYPTOD_SPECS).unwrap();
    for spec in CRYPTOD_SPECS {
        assert!(s.is_set(spec.key), "{} is not exercised here", spec.key);
    }
    let want = Config {
        name: "crypt9".into(),
        entropy_vm: "ent2".into(),
        unlock_audience: "agent2".into(),
        unlock_ttl: 90,
        policy_ttl: 100,
        max_policy_ttl: 200,
        totp_window: 3,
        rate_limit: RateLimitConfig {
            max_failures: 7,
            base_backoff: 45,
            max_backoff: 900,
            max_keys: 99,
        },
        issue_rate: IssueRateConfig { burst: 11, per_minute: 22, max_peers: 33 },
        keys: KeyConfig { rotation_period: 7200, overlap: 1200 },
        audit_outbox: 128,
        answer_after_audit: false,
        max_held: 64,
        reseed_interval: 1000,
        audit_aggregate_window: 0,
        outcome_keys: vec![OutcomeKey {
            peer: "dom0".into(),
            audience: "agent2".into(),
            key: core::array::from_fn(|i| 0x0a + i as u8),
        }],
    };
    let got = authority_config(&s, "crypt9").unwrap();
    assert_eq!(got, want);
    assert_eq!(got.check(), Ok(()));
    // Every field differs from its default, so none can be left unread.
    let d = Config::default();
    assert!(got.totp_window != d.totp_window && got.rate_limit != d.rate_limit);
    assert!(got.issue_rate != d.issue_rate && got.keys != d.keys);
}

#[test]
fn settings_in_bounds_but_inconsistent_fail_the_authoritys_check() {
    let check = |text: &str| {
        let s = Settings::parse(text, &CRYPTOD_SPECS).unwrap();
        authority_config(&s, "cryptod").unwrap().check()
    };
    assert!(check("policy_ttl=200\nmax_policy_ttl=100\n").is_err());
    assert!(check("key_rotation=600\nkey_overlap=600\n").is_err());
    assert!(check("totp_lockout=60\ntotp_max_lockout=30\n").is_err());
    assert!(check("totp_lockout=60\ntotp_max_lockout=60\n").is_ok());
}

#[test]
fn a_malformed_outcome_key_is_refused() {
    let config = |text: &str| {
        let s = Settings::parse(text, &CRYPTOD_SPECS).unwrap();
        authority_config(&s, "cryptod").map(|c| c.outcome_keys.len())
    };
    assert_eq!(config("outcome_key=none\n").unwrap(), 0);
    assert_eq!(config(&format!("outcome_key=dom0={}\n", "ab".repeat(32))).unwrap(), 1);
    for bad in [
        format!("outcome_key={}\n", "ab".repeat(32)),
        format!("outcome_key==={}\n", "ab".repeat(32)),
        format!("outcome_key=dom0={}\n", "ab".repeat(31)),
        format!("outcome_key=dom0={}zz\n", "ab".repeat(31)),
    ] {
        assert!(config(&bad).is_err(), "{bad}");
    }
}

// ---- docs/settings.md agreement ----

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/settings.md");

fn kind_text(kind: &Kind) -> (&'static str, String, String) {
    match *kind {
        Kind::Int { min, max, default } => {
            ("integer", default.to_string(), format!("{min} to {max}"))
        }
        Kind::Flag(b) => ("flag", u8::from(b).to_string(), "0 or 1".into()),
        Kind::Name(Some(d)) => ("name", format!("`{d}`"), format!("1 to {MAX_NAME} characters")),
        Kind::Name(None) => {
            ("name", "own domain name".into(), format!("1 to {MAX_NAME} characters"))
        }
        Kind::Names(d) => ("names", format!("`{d}`"), format!("1 to {MAX_NAMES} names")),
        Kind::Text(d) => ("text", format!("`{d}`"), format!("1 to {MAX_TEXT} characters")),
    }
}

/// The reference table of `role`, as docs/settings.md must hold it.
fn table(role: Role) -> String {
    let mut out = String::from("| key | type | unit | default | bounds | meaning |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for k in role.knobs() {
        let (ty, default, bounds) = kind_text(&k.spec.kind);
        out.push_str(&format!(
            "| `{}` | {ty} | {} | {default} | {bounds} | {} |\n",
            k.spec.key, k.unit, k.doc
        ));
    }
    out
}

fn markers(role: Role) -> (String, String) {
    (format!("<!-- schema:{} -->\n", role.name()), format!("<!-- /schema:{} -->", role.name()))
}

/// docs/settings.md with each role's table regenerated.
fn regenerated(doc: &str) -> String {
    let mut doc = doc.to_string();
    for role in Role::ALL {
        let (open, close) = markers(role);
        let start = doc.find(&open).unwrap_or_else(|| panic!("docs/settings.md lacks {open}"));
        let body = start + open.len();
        let end = doc[body..].find(&close).unwrap_or_else(|| panic!("lacks {close}")) + body;
        doc.replace_range(body..end, &table(role));
    }
    doc
}

/// Every key of every role's schema is documented with its type, unit,
/// default, bounds and meaning, and nothing else is: the tables between the
/// markers are exactly the schema. `PORTCULLIS_BLESS=1` rewrites them.
#[test]
fn docs_settings_md_documents_exactly_the_schema() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let want = regenerated(&doc);
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(DOC, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/settings.md does not match the schema in crates/apps/src/settings.rs; \
         run `PORTCULLIS_BLESS=1 cargo test -p portcullis-apps --test settings` and review"
    );
    // No key is documented outside the generated tables.
    let mut outside = doc.clone();
    for role in Role::ALL {
        let (open, close) = markers(role);
        let (start, end) = (outside.find(&open).unwrap(), outside.find(&close).unwrap());
        outside.replace_range(start..end + close.len(), "");
    }
    let stray: Vec<&str> = outside.lines().filter(|l| l.starts_with("| `")).collect();
    assert!(stray.is_empty(), "key rows outside the schema tables: {stray:?}");
}

// ---- hostile input ----

proptest::proptest! {
    /// Any bytes: an answer, never a panic; what is accepted reads back
    /// within the schema for every key.
    #[test]
    fn any_item_is_parsed_or_refused_without_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        lines in proptest::collection::vec("[a-z_]{0,20}( ?= ?)[ -~]{0,30}", 0..12),
    ) {
        for role in Role::ALL {
            let _ = Settings::parse_bytes(&bytes, role.specs());
            let text = lines.join("\n");
            if let Ok(s) = Settings::parse(&text, role.specs()) {
                for spec in role.specs() {
                    match spec.kind {
                        Kind::Int { min, max, .. } => {
                            let n = s.num(spec.key).unwrap();
                            proptest::prop_assert!((u64::from(min)..=u64::from(max)).contains(&n));
                        }
                        Kind::Flag(_) => { s.flag(spec.key).unwrap(); }
                        Kind::Names(_) => { proptest::prop_assert!(s.list(spec.key).unwrap().count() >= 1); }
                        Kind::Name(_) | Kind::Text(_) => { s.text(spec.key, "own").unwrap(); }
                    }
                }
            }
        }
    }
}
