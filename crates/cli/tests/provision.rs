//! `portcullis provision`: outputs, sealing, and interop of the TOTP enrolment
//! and LUKS passphrase with the standard tools (oathtool, cryptsetup).

mod common;

use portcullis_authority::sealed;
use portcullis_authority::totp::{totp, Algorithm};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).output().expect("run portcullis")
}

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn provision(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["--save-otpauth"];
    args.extend_from_slice(extra);
    let o = common::provision(&dir.join("p"), &args);
    String::from_utf8(o.stdout).unwrap()
}

fn secret_of(uri: &str) -> String {
    let q = uri.split_once('?').unwrap().1;
    q.split('&').find_map(|kv| kv.strip_prefix("secret=")).unwrap().to_string()
}

#[test]
fn sealed_state_opens_with_the_kek_and_holds_the_enrolled_secret() {
    let dir = tempfile::tempdir().unwrap();
    provision(
        dir.path(),
        &[
            "--operator",
            "alice",
            "--operator",
            "bob",
            "--totp-algorithm",
            "sha256",
            "--digits",
            "8",
        ],
    );
    let p = dir.path().join("p");
    let kek = common::kek_of(&p);
    let blob = std::fs::read(p.join("cryptod/sealed-state")).unwrap();
    let state = sealed::unseal(&blob, &kek).unwrap();
    let ids: Vec<_> = state.operators.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["alice", "bob"]);
    assert!(state
        .operators
        .iter()
        .all(|o| o.algorithm == Algorithm::Sha256 && o.digits == 8 && o.secret.len() == 32));
    let mut wrong = kek;
    wrong[0] ^= 1;
    assert!(sealed::unseal(&blob, &wrong).is_err());
    let uri = std::fs::read_to_string(p.join("operators/alice.otpauth")).unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Portcullis:alice?")
            && uri.contains("algorithm=SHA256&digits=8")
    );
}

#[test]
fn oathtool_codes_from_the_uri_match_cryptods_totp() {
    assert!(tool("oathtool"), "oathtool is required (apt-get install oathtool)");
    let dir = tempfile::tempdir().unwrap();
    provision(dir.path(), &["--operator", "alice"]);
    let p = dir.path().join("p");
    let uri = std::fs::read_to_string(p.join("operators/alice.otpauth")).unwrap();
    let kek = common::kek_of(&p);
    let state =
        sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &kek).unwrap();
    let op = &state.operators[0];
    for t in [59u64, 1_111_111_109, 2_000_000_000] {
        let o = Command::new("oathtool")
            .args(["--totp", "--base32", "-N", &format!("@{t}"), &secret_of(&uri)])
            .output()
            .unwrap();
        assert!(o.status.success());
        let theirs = String::from_utf8(o.stdout).unwrap().trim().to_string();
        let ours = format!("{:06}", totp(&op.secret, op.algorithm, op.digits, t));
        assert_eq!(theirs, ours, "time {t}");
    }
}

#[test]
fn printed_luks_passphrase_opens_the_created_volume() {
    assert!(tool("cryptsetup"), "cryptsetup is required (apt-get install cryptsetup-bin)");
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    let out = provision(dir.path(), &["--volume", "data", "--luks-format", vol.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    let i = lines.iter().position(|l| l.starts_with("LUKS passphrase of volume \"data\"")).unwrap();
    let pass = lines[i + 1].trim();
    assert_eq!(pass.len(), 64);
    let test = |key: &str| {
        let mut c = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file=-"])
            .arg(&vol)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
        c.wait().unwrap().success()
    };
    assert!(test(pass));
    assert!(!test(&pass.replace(&pass[..1], if &pass[..1] == "0" { "1" } else { "0" })));
}

#[test]
fn bad_arguments_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p");
    let o = portcullis(&["provision", "--out", out.to_str().unwrap(), "--digits", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow vm=x scopes=root:all aud=y\n").unwrap();
    let o =
        portcullis(&["provision", "--out", out.to_str().unwrap(), "--acl", acl.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ACL"));
    assert!(!out.exists());
    // A volume no rule grants could never be unlocked: refused up front.
    std::fs::write(&acl, "allow vm=unlocker scopes=luks:unlock aud=unlock_agent volumes=home\n")
        .unwrap();
    let o = portcullis(&[
        "provision",
        "--out",
        out.to_str().unwrap(),
        "--acl",
        acl.to_str().unwrap(),
        "--volume",
        "data",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no rule lists volume \"data\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
    // A provisioned directory is never overwritten.
    provision(dir.path(), &[]);
    let before = std::fs::read(out.join("cryptod/sealed-state")).unwrap();
    let o = portcullis(&["provision", "--out", out.to_str().unwrap(), "--no-image-binding"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(out.join("cryptod/sealed-state")).unwrap(), before);
}

#[test]
fn the_default_acl_is_bound_to_the_images_in_sha256sums() {
    let dir = tempfile::tempdir().unwrap();
    let pass = common::passphrase_file(dir.path());
    // `portcullis provision` with the tests' KEK protection (no TPM here).
    let provision_with = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("provision")
            .args(["--kek", "passphrase", "--kek-passphrase-file", pass.to_str().unwrap()])
            .args(["--kek-argon2", common::TEST_ARGON2])
            .args(args)
            .output()
            .expect("run portcullis provision")
    };
    let sums = dir.path().join("SHA256SUMS");
    let (u, p) = ("ab".repeat(32), "cd".repeat(32));
    std::fs::write(&sums, format!("{u}  unlocker\n{p}  policy_pd\n{}  cryptod\n", "ef".repeat(32)))
        .unwrap();
    provision(dir.path(), &[]);
    let acl = std::fs::read_to_string(dir.path().join("p/acl")).unwrap();
    assert!(!acl.contains("image="), "--no-image-binding: {acl}");
    let out = dir.path().join("q");
    let o = provision_with(&[
        "--out",
        out.to_str().unwrap(),
        "--no-qr",
        "--images",
        sums.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acl = std::fs::read_to_string(out.join("acl")).unwrap();
    assert!(acl.contains(&format!("volumes=data image=sha256:{u}")), "{acl}");
    assert!(acl.contains(&format!("aud=policy_pd,netd,cryptod image=sha256:{p}")), "{acl}");
    // Without the file (or with a guest missing from it) nothing is made.
    let missing = dir.path().join("none");
    let out = dir.path().join("r");
    let o =
        provision_with(&["--out", out.to_str().unwrap(), "--images", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("none") && e.contains("--no-image-binding"), "{e}");
    std::fs::write(&sums, format!("{u}  unlocker\n")).unwrap();
    let o = provision_with(&["--out", out.to_str().unwrap(), "--images", sums.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no line for policy_pd"));
    assert!(!out.exists());
}
