//! Issue 12: `portcullis backup create` encrypts cryptod's state to a
//! recovery key shown once; `portcullis backup restore` opens it on a "new
//! host" (another directory, another KEK passphrase) and seals it under a
//! new KEK: the restored state derives the same volume passphrases. A
//! wrong, mistyped or tampered key or file is refused with a clear error,
//! and no plaintext KEK, master secret or recovery key lands on disk.

mod common;

use common::kek::{self, KekError};
use portcullis_authority::backup::{RecoveryKey, Restored};
use portcullis_authority::sealed::{self, section, SealedState};
use portcullis_authority::unlock::luks_passphrase;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("INVOCATION_ID")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn unseal_with(dir: &Path, pass: &str) -> Result<SealedState, KekError> {
    let how = kek::Unlock {
        passphrase: kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(pass.into())),
        credentials: None,
    };
    let k = kek::unseal(&kek::read(dir).unwrap(), &how)?;
    Ok(sealed::unseal(&std::fs::read(dir.join("cryptod/sealed-state")).unwrap(), &k).unwrap())
}

/// Every file under `dir` (recursively) holding `needle` raw or as hex.
fn files_holding(dir: &Path, needle: &[u8]) -> (usize, Vec<PathBuf>) {
    let (mut n, mut hits) = (0, Vec::new());
    let hexed = hex::encode(needle);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                continue;
            }
            n += 1;
            let b = std::fs::read(e.path()).unwrap();
            if b.windows(needle.len()).any(|w| w == needle)
                || b.windows(hexed.len()).any(|w| w.eq_ignore_ascii_case(hexed.as_bytes()))
            {
                hits.push(e.path());
            }
        }
    }
    (n, hits)
}

struct Made {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    old: PathBuf,
    file: PathBuf,
    key: String,
}

fn made() -> Made {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let old = root.join("old");
    common::provision(&old, &["--volume", "data"]);
    let file = root.join("state.pcbackup");
    let o = portcullis(&[
        "backup",
        "create",
        "--dir",
        old.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
        "--kek-passphrase-file",
        root.join("kek-pass").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("recovery key: "))
        .unwrap_or_else(|| panic!("no recovery key in {out}"))
        .to_string();
    Made { _tmp: tmp, root, old, file, key }
}

fn restore(m: &Made, dir: &Path, key: &str, file: &Path) -> Output {
    let key_file = m.root.join("typed-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let pass = m.root.join("new-pass");
    std::fs::write(&pass, "the new host's passphrase\n").unwrap();
    portcullis(&[
        "backup",
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--recovery-key-file",
        key_file.to_str().unwrap(),
        "--kek",
        "passphrase",
        "--kek-passphrase-file",
        pass.to_str().unwrap(),
        "--kek-argon2",
        common::TEST_ARGON2,
    ])
}

#[test]
fn a_restore_on_a_new_host_derives_the_same_volume_passphrase() {
    let m = made();
    let new = m.root.join("new");
    let o = restore(&m, &new, &m.key, &m.file);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Lost with the rollback"), "{}", text(&o));

    let before = unseal_with(&m.old, common::TEST_PASSPHRASE).unwrap();
    let after = unseal_with(&new, "the new host's passphrase").unwrap();
    // The old host's passphrase does not open the new host's KEK.
    assert_eq!(unseal_with(&new, common::TEST_PASSPHRASE).err(), Some(KekError::WrongPassphrase));
    assert_eq!(
        *luks_passphrase(&after.master_secret, "data").unwrap(),
        *luks_passphrase(&before.master_secret, "data").unwrap()
    );
    // The whole state came across; the BACKUP section notes the restore.
    let restored = Restored::decode(after.section(section::BACKUP).unwrap()).unwrap();
    assert!(restored.pending);
    let mut same = after.clone();
    same.set_section(section::BACKUP, None);
    assert!(same == before, "{same:?} vs {before:?}");
    for f in ["root.pub", "admin.pub", "acl"] {
        assert_eq!(std::fs::read(m.old.join(f)).unwrap(), std::fs::read(new.join(f)).unwrap());
    }
    assert!(!new.join("admin.key").exists(), "the admin key stays the offline one");

    // No plaintext KEK, master secret or recovery key on disk (the walk
    // covers both hosts' directories and the backup file).
    let new_kek = {
        let how = kek::Unlock {
            passphrase: kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(
                b"the new host's passphrase".to_vec(),
            )),
            credentials: None,
        };
        *kek::unseal(&kek::read(&new).unwrap(), &how).unwrap()
    };
    let key_bytes = m.key.replace('-', "");
    std::fs::remove_file(m.root.join("typed-key")).unwrap();
    for needle in
        [&new_kek[..], &common::kek_of(&m.old)[..], &before.master_secret[..], key_bytes.as_bytes()]
    {
        let (n, hits) = files_holding(&m.root, needle);
        assert!(n >= 10, "walked only {n} files");
        assert!(hits.is_empty(), "plaintext secret in {hits:?}");
    }
    // The walk can fail.
    assert_eq!(files_holding(&m.root, b"PCBACKUP").1, std::slice::from_ref(&m.file));

    // inspect reads the header without the key.
    let o = portcullis(&["backup", "inspect", m.file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("backup id {}", hex::encode(restored.backup_id))));
}

#[test]
fn a_wrong_mistyped_or_tampered_key_or_file_is_refused() {
    let m = made();
    let refused = |dir: &str, key: &str, file: &Path, why: &str| {
        let d = m.root.join(dir);
        let o = restore(&m, &d, key, file);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(why), "{why:?} not in {}", text(&o));
        assert!(!d.join("cryptod/sealed-state").exists(), "nothing written");
    };
    // Another well-formed key.
    let other = RecoveryKey::from_bytes([1; 32]).to_text();
    refused("a", &other, &m.file, "wrong recovery key, or the file was changed");
    // One character mistyped: the checksum says so before any decryption.
    let mut typo: Vec<char> = m.key.chars().collect();
    typo[10] = if typo[10] == 'c' { 'b' } else { 'c' };
    refused("b", &typo.into_iter().collect::<String>(), &m.file, "checksum does not match");
    refused("c", &m.key[..m.key.len() - 1], &m.file, "71 characters, expected 72");
    // The file edited, truncated, or not a backup.
    let bytes = std::fs::read(&m.file).unwrap();
    let edited = m.root.join("edited");
    let mut e = bytes.clone();
    e[200] ^= 1;
    std::fs::write(&edited, &e).unwrap();
    refused("d", &m.key, &edited, "wrong recovery key, or the file was changed");
    let mut e = bytes.clone();
    e[15] ^= 1; // the creation time: authenticated too
    std::fs::write(&edited, &e).unwrap();
    refused("e", &m.key, &edited, "wrong recovery key, or the file was changed");
    std::fs::write(&edited, &bytes[..bytes.len() - 5]).unwrap();
    refused("f", &m.key, &edited, "backup is truncated");
    std::fs::write(&edited, [&b"PCSEAL"[..], &[0u8; 100]].concat()).unwrap();
    refused("g", &m.key, &edited, "not a Portcullis backup (bad magic)");
    // The right key still opens the original.
    let o = restore(&m, &m.root.join("h"), &m.key, &m.file);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn restore_can_seal_a_new_admin_key() {
    let m = made();
    let new = m.root.join("new");
    let key_file = m.root.join("k");
    std::fs::write(&key_file, &m.key).unwrap();
    let o = portcullis(&[
        "backup",
        "restore",
        "--from",
        m.file.to_str().unwrap(),
        "--dir",
        new.to_str().unwrap(),
        "--recovery-key-file",
        key_file.to_str().unwrap(),
        "--kek",
        "passphrase",
        "--kek-passphrase-file",
        m.root.join("kek-pass").to_str().unwrap(),
        "--kek-argon2",
        common::TEST_ARGON2,
        "--new-admin-key",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let before = unseal_with(&m.old, common::TEST_PASSPHRASE).unwrap();
    let after = unseal_with(&new, common::TEST_PASSPHRASE).unwrap();
    assert!(after.admin_key.is_some() && after.admin_key != before.admin_key);
    assert_ne!(
        std::fs::read(m.old.join("admin.pub")).unwrap(),
        std::fs::read(new.join("admin.pub")).unwrap()
    );
    assert!(new.join("admin.key").exists());
}
