//! What the process-level tests share: the guest binaries they start, and
//! provisioning with a protected KEK (and unsealing it with the same code
//! as `portcullis host`).
#![allow(dead_code)]

#[path = "../../src/kek.rs"]
pub mod kek;

/// The KEK passphrase the tests provision with.
pub const TEST_PASSPHRASE: &str = "portcullis test passphrase";
/// A small Argon2id cost for the tests (the file records it).
pub const TEST_ARGON2: &str = "m=256,t=1,p=1";

/// Writes the test passphrase to `dir/kek-pass` (outside any provisioned
/// directory) and returns its path.
pub fn passphrase_file(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("kek-pass");
    std::fs::write(&p, format!("{TEST_PASSPHRASE}\n")).unwrap();
    p
}

/// `portcullis provision --out OUT --no-qr` with the passphrase protector
/// (passphrase file in OUT's parent) and `extra`; panics on failure.
pub fn provision(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let pass = passphrase_file(out.parent().unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["provision", "--out", out.to_str().unwrap(), "--no-qr"])
        .args(["--kek", "passphrase", "--kek-passphrase-file", pass.to_str().unwrap()])
        .args(["--kek-argon2", TEST_ARGON2])
        // Tests provision without the package's SHA256SUMS unless they
        // give `--images`.
        .args(if extra.contains(&"--images") { &[][..] } else { &["--no-image-binding"][..] })
        .args(extra)
        .output()
        .expect("run portcullis provision");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The KEK of a directory provisioned by [`provision`].
pub fn kek_of(dir: &std::path::Path) -> [u8; 32] {
    let sealed = kek::read(dir).unwrap();
    let how = kek::Unlock {
        passphrase: kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(
            TEST_PASSPHRASE.as_bytes().to_vec(),
        )),
        credentials: None,
    };
    *kek::unseal(&sealed, &how).unwrap()
}

use std::path::PathBuf;
use std::process::Command;

/// Builds `guests` (in the same profile as the test running) and returns the
/// directory that holds them next to `portcullis`.
pub fn guests_dir(guests: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    for g in guests {
        cmd.args(["-p", g]);
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build for the guests");
    assert!(status.success(), "building the guests failed");
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_portcullis")).parent().unwrap().to_path_buf();
    for g in guests {
        assert!(dir.join(g).exists(), "guest {g} not found in {}", dir.display());
    }
    dir
}

/// Runs `portcullis demo ARGS --dir WORK --guests DIR` to its end, with
/// `guests` built first (see [`guests_dir`]).
pub fn demo(work: &std::path::Path, guests: &[&str], args: &[&str]) -> std::process::Output {
    let guests = guests_dir(guests);
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("demo")
        .args(args)
        .arg("--dir")
        .arg(work)
        .arg("--guests")
        .arg(&guests)
        .output()
        .expect("run portcullis demo")
}
