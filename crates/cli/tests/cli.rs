//! End-to-end tests of the `portcullis` binary: keys, tokens and exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run portcullis")
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let prefix = dir.join(name);
    let out = run(&["keygen", "--out", prefix.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    prefix
}

fn with(prefix: &Path, ext: &str) -> String {
    format!("{}.{ext}", prefix.display())
}

const NOW: &str = "1900000000";

fn mint(dir: &Path, key: &Path, aud: &str, scope: &str, ttl: &str) -> String {
    let path = dir.join(format!("tok-{aud}-{ttl}"));
    let out = run(&[
        "token",
        "mint",
        "--key",
        &with(key, "key"),
        "--sub",
        "policy_pd",
        "--aud",
        aud,
        "--scope",
        scope,
        "--ttl",
        ttl,
        "--now",
        NOW,
        "--out",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path.to_str().unwrap().to_string()
}

fn verify(key: &Path, token: &str, now: &str, extra: &[&str]) -> (i32, String) {
    let pubkey = with(key, "pub");
    let mut args = vec![
        "token",
        "verify",
        "--pub",
        &pubkey,
        "--aud",
        "netd",
        "--scope",
        "net:modify",
        "--now",
        now,
    ];
    args.extend_from_slice(extra);
    args.push(token);
    let out = run(&args);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

#[test]
fn minted_token_verifies_and_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let tok = mint(dir.path(), &key, "netd", "net:modify", "60");
    assert_eq!(verify(&key, &tok, NOW, &[]).0, 0);
    let out = run(&["token", "inspect", &tok]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("UNVERIFIED")
            && text.contains("scope net:modify")
            && text.contains("sub   policy_pd")
    );
}

#[test]
fn each_refusal_has_its_own_reason_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let other = keygen(dir.path(), "other");
    let tok = mint(dir.path(), &key, "netd", "net:modify", "60");
    let cases: &[(&Path, &str, &[&str], &str)] = &[
        (&key, "1900000100", &[], "expired"),
        (&key, "1899999000", &[], "not_yet_valid"),
        (&other, NOW, &[], "unknown_kid"),
    ];
    for (k, now, extra, code) in cases {
        let (status, reason) = verify(k, &tok, now, extra);
        assert_eq!(status, 1, "{code}: {reason}");
        assert!(
            reason.starts_with("invalid:") && reason.ends_with(&format!("({code})")),
            "{reason}"
        );
    }
    let wrong_aud = mint(dir.path(), &key, "unlock-agent", "net:modify", "60");
    assert!(verify(&key, &wrong_aud, NOW, &[]).1.ends_with("(wrong_audience)"));
    let wrong_scope = mint(dir.path(), &key, "netd", "net:read", "61");
    assert!(verify(&key, &wrong_scope, NOW, &[]).1.ends_with("(missing_scope)"));
    // Revocation: take the cti from inspect.
    let out = run(&["token", "inspect", &tok]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let cti = text.lines().find_map(|l| l.trim().strip_prefix("cti ")).unwrap().trim().to_string();
    let (status, reason) = verify(&key, &tok, NOW, &["--revoked", &cti]);
    assert_eq!(status, 1);
    assert!(reason.ends_with("(revoked)"), "{reason}");
}

#[test]
fn garbage_is_malformed_and_bad_usage_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a token at all").unwrap();
    let (status, reason) = verify(&key, junk.to_str().unwrap(), NOW, &[]);
    assert_eq!((status, reason.ends_with("(malformed)")), (1, true), "{reason}");
    let out = run(&[
        "token",
        "verify",
        "--pub",
        "/nonexistent.pub",
        "--aud",
        "a",
        "--scope",
        "net:modify",
        junk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "token",
        "mint",
        "--key",
        &with(&key, "key"),
        "--sub",
        "s",
        "--aud",
        "a",
        "--scope",
        "root:all",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "token",
        "mint",
        "--key",
        &with(&key, "pub"),
        "--sub",
        "s",
        "--aud",
        "a",
        "--scope",
        "net:modify",
    ]);
    assert_eq!(out.status.code(), Some(2), "a public key cannot mint");
    let out = run(&[
        "token",
        "mint",
        "--key",
        &with(&key, "key"),
        "--sub",
        "s",
        "--aud",
        "a",
        "--scope",
        "net:modify",
        "--ttl",
        "301",
    ]);
    assert_eq!(out.status.code(), Some(2), "lifetime capped at 300 s");
}

#[test]
fn keygen_never_overwrites_and_private_key_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k");
    let before = std::fs::read(with(&key, "key")).unwrap();
    let out = run(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read(with(&key, "key")).unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(with(&key, "key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn host_check_validates_the_config_and_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("cryptod")).unwrap();
    let shipped = include_str!("../../../packaging/host.toml")
        .replace("state_dir = \"/var/lib/portcullis\"", &format!("state_dir = {:?}", state));
    let config = dir.path().join("host.toml");
    std::fs::write(&config, &shipped).unwrap();
    let cfg = config.to_str().unwrap();

    // The provisioned files are missing: exit 2, the state_dir line named.
    let out = run(&["host", "--check", "--config", cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with(&format!("error: {cfg}:12:13: state_dir: missing ")), "{err}");
    assert!(err.contains("cryptod/kek.sealed"), "{err}");

    for f in ["cryptod/kek.sealed", "cryptod/sealed-state", "root.pub"] {
        std::fs::write(state.join(f), b"x").unwrap();
    }
    // --check parses the protected KEK file (without unsealing it).
    let out = run(&["host", "--check", "--config", cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cryptod/kek.sealed:1: the line does not end with a newline"), "{err}");
    let sealed = common::kek::seal_passphrase(
        &[1; 32],
        b"passphrase",
        common::kek::Cost { m_kib: 64, t: 1, p: 1 },
    )
    .unwrap();
    std::fs::write(state.join("cryptod/kek.sealed"), sealed.encode()).unwrap();
    let out = run(&["host", "--check", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("{cfg}: ok\nkek protector passphrase\n")), "{stdout}");
    assert!(stdout.contains("guest unlocker: role unlocker, items root-pub, settings"), "{stdout}");

    // An unknown key, with or without --check.
    std::fs::write(&config, shipped.replace("skew = 30", "skew = 30\nretries = 3")).unwrap();
    for args in [&["host", "--check", "--config", cfg][..], &["host", "--config", cfg][..]] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with(&format!("error: {cfg}:32:1: unknown field `retries`")), "{err}");
    }

    // A guest setting its role does not have, or out of its bounds
    // (docs/settings.md): refused before anything reaches xenstore.
    let typo = shipped.replace("totp_window = 1\n", "totp_windwo = 1\n");
    let line = typo.lines().position(|l| l.starts_with("totp_windwo")).unwrap() + 1;
    let wide = shipped.replace("totp_window = 1\n", "totp_window = 11\n");
    for (text, want) in [
        (
            typo,
            format!(
                "error: {cfg}:{line}:1: guests.cryptod.settings.totp_windwo: unknown setting for \
                 role cryptod"
            ),
        ),
        (
            wide,
            format!(
                "error: {cfg}:{line}:15: guests.cryptod.settings.totp_window: out of range 0 to 10"
            ),
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        for args in [&["host", "--check", "--config", cfg][..], &["host", "--config", cfg][..]] {
            let out = run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(err.starts_with(&want), "{err}");
        }
    }
}

#[test]
fn vchan_call_needs_a_domid_or_a_socket_and_says_why_libxenvchan_failed() {
    let dir = tempfile::tempdir().unwrap();
    let root = with(&keygen(dir.path(), "root"), "pub");
    let out = run(&["vchan-call", "--root", &root]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--domid"));
    let out = run(&["vchan-call", "--domid", "7", "--socket", "/nonexistent", "--root", &root]);
    assert_eq!(out.status.code(), Some(2), "--domid and --socket conflict");
    // No Xen here: either the library is missing (say what to install) or
    // it finds no vchan (say which domain and path); never a success.
    let out = run(&["vchan-call", "--domid", "7", "--root", &root, "--timeout", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: cryptod (domain 7): "), "{err}");
    assert!(
        err.contains("install xen-utils")
            || err.contains("libxenvchan client for domain 7 at /local/domain/7/data/vchan/0/9001"),
        "{err}"
    );
}
