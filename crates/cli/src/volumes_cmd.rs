//! Volumes and the ACL from dom0 (issue 12; docs/operations.md):
//!
//! - `portcullis admin volume-add`: the passphrase cryptod derives for the
//!   new volume arrives sealed to a one-use X25519 key made here
//!   ([`VolumeKey`]), is enrolled with `cryptsetup luksAddKey` (authorised
//!   by a passphrase or key file that opens the volume today), and the slot
//!   it landed in is recorded in a LUKS2 token of type `portcullis`, the way
//!   clevis records its bindings;
//! - `portcullis volumes list DEVICE...`: which volumes and key slots are
//!   bound to Portcullis, read from those tokens (read-only, like
//!   `clevis luks list`);
//! - `portcullis admin acl-replace`: the ACL is linted here with cryptod's
//!   own parser before it is signed ([`lint_acl`]).

use crate::Failure;
use clap::Args;
use portcullis_authority::authority::ADMIN_TRANSCRIPT_ID;
use portcullis_authority::unlock::{self, Transcript};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AdminReq, SealedSecret};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The LUKS2 token type Portcullis records its key slots under.
pub const TOKEN_TYPE: &str = "portcullis";

/// The admin tool's one-use X25519 key for a `volume_add` answer.
pub struct VolumeKey(StaticSecret);

impl VolumeKey {
    /// A fresh key from the OS random source.
    pub fn new() -> Result<VolumeKey, Failure> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| format!("OS random source: {e}"))?;
        Ok(VolumeKey(StaticSecret::from(*seed)))
    }

    /// The public half, for the command's `ephemeral_pubkey`.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }

    /// Opens cryptod's answer to the signed request `req` for `volume`:
    /// the LUKS key text (lowercase hex of the 32-byte secret, as the
    /// unlock agent feeds cryptsetup).
    pub fn open(
        &self,
        req: &Message,
        volume: &str,
        sealed: &SealedSecret,
    ) -> Result<Zeroizing<String>, Failure> {
        let Message::AdminReq(AdminReq { request_id, signed }) = req else {
            return Err(Failure::Error("not an admin request".into()));
        };
        let t = Transcript {
            request_id,
            operator: ADMIN_TRANSCRIPT_ID,
            volume_id: volume,
            token: signed,
        };
        let raw = unlock::open_unlock_secret(&self.0, sealed, &t)
            .map_err(|e| Failure::Invalid(format!("volume {volume:?}: {e}")))?;
        Ok(Zeroizing::new(hex::encode(&raw[..])))
    }
}

/// Lints `text` as cryptod will; the first error names its line.
pub fn lint_acl(path: &Path, text: &str) -> Result<(), Failure> {
    let errors = portcullis_authority::acl::lint(text);
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors.iter().map(|e| format!("{}: {e}", path.display())).collect();
    Err(Failure::Invalid(lines.join("\n")))
}

/// Runs cryptsetup with `stdin` on its standard input; its stdout, or why not.
fn cryptsetup(args: &[&OsStr], stdin: &[u8]) -> Result<String, Failure> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cryptsetup (apt-get install cryptsetup-bin): {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        // A cryptsetup that exits before reading is reported by its status.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| format!("cryptsetup: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let what = args.first().map_or("".into(), |a| a.to_string_lossy().into_owned());
        Err(Failure::Error(format!(
            "cryptsetup {what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Enrols `key` into `device` (authorised by `existing`, a key file or a
/// passphrase), finds the slot it landed in and records it in a
/// `portcullis` LUKS2 token. Returns the slot.
pub fn enrol(device: &Path, volume: &str, key: &str, existing: &Existing) -> Result<u32, Failure> {
    let dev = device.as_os_str();
    // The new key is 256 bits of HKDF output: a cheap PBKDF2 costs no
    // security (as at provisioning, provision::create_file_volume).
    let mut args: Vec<&OsStr> = vec![
        "luksAddKey".as_ref(),
        "--batch-mode".as_ref(),
        "--pbkdf".as_ref(),
        "pbkdf2".as_ref(),
        "--pbkdf-force-iterations".as_ref(),
        "1000".as_ref(),
    ];
    let stdin: Zeroizing<Vec<u8>> = match existing {
        Existing::KeyFile(f) => {
            args.extend(["--key-file".as_ref(), f.as_os_str(), dev, "/dev/stdin".as_ref()]);
            Zeroizing::new(key.as_bytes().to_vec())
        }
        Existing::Passphrase(p) => {
            // The old passphrase, then the new one, one line each.
            args.extend([dev]);
            Zeroizing::new(format!("{}\n{key}\n", p.as_str()).into_bytes())
        }
    };
    cryptsetup(&args, &stdin)?;
    let slot = slot_of(device, key)?;
    let token = serde_json::json!({
        "type": TOKEN_TYPE,
        "keyslots": [slot.to_string()],
        "volume_id": volume,
    });
    cryptsetup(
        &["token".as_ref(), "import".as_ref(), dev, "--json-file".as_ref(), "-".as_ref()],
        token.to_string().as_bytes(),
    )?;
    Ok(slot)
}

/// The key slot `key` opens in `device` (`cryptsetup open --test-passphrase
/// --verbose` says "Key slot N unlocked").
pub fn slot_of(device: &Path, key: &str) -> Result<u32, Failure> {
    let out = cryptsetup(
        &[
            "open".as_ref(),
            "--test-passphrase".as_ref(),
            "--verbose".as_ref(),
            "--key-file=-".as_ref(),
            device.as_os_str(),
        ],
        key.as_bytes(),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("Key slot ")?.strip_suffix(" unlocked.")?.parse().ok())
        .ok_or_else(|| Failure::Error("cryptsetup did not name the key slot".into()))
}

/// How `volume-add` proves it may add a key to the device.
pub enum Existing {
    /// A key file that opens it today.
    KeyFile(PathBuf),
    /// A passphrase that opens it today (read from standard input).
    Passphrase(Zeroizing<String>),
}

/// One Portcullis binding in a LUKS2 header.
#[derive(Debug, PartialEq, Eq)]
pub struct Binding {
    /// The LUKS2 token id.
    pub token: String,
    /// The volume id cryptod derives the passphrase for.
    pub volume_id: String,
    /// The key slots the token names.
    pub keyslots: Vec<String>,
}

/// The Portcullis bindings in a LUKS2 header's JSON metadata (hostile:
/// anything that is not a well-formed `portcullis` token is skipped).
pub fn bindings(metadata: &str) -> Result<Vec<Binding>, Failure> {
    let v: serde_json::Value =
        serde_json::from_str(metadata).map_err(|e| format!("LUKS2 metadata: {e}"))?;
    let mut out = Vec::new();
    let Some(tokens) = v.get("tokens").and_then(|t| t.as_object()) else { return Ok(out) };
    for (id, t) in tokens {
        if t.get("type").and_then(|t| t.as_str()) != Some(TOKEN_TYPE) {
            continue;
        }
        let Some(volume_id) = t.get("volume_id").and_then(|v| v.as_str()) else { continue };
        let keyslots = t
            .get("keyslots")
            .and_then(|k| k.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        out.push(Binding { token: id.clone(), volume_id: volume_id.into(), keyslots });
    }
    Ok(out)
}

/// Removes the `portcullis` token naming `volume` from `device`, and with
/// `kill` the key slots it names (`luksKillSlot`, authorised by `existing`).
pub fn unbind(
    device: &Path,
    volume: &str,
    kill: Option<&Existing>,
) -> Result<Vec<String>, Failure> {
    let dev = device.as_os_str();
    let meta = cryptsetup(&["luksDump".as_ref(), "--dump-json-metadata".as_ref(), dev], b"")?;
    let mut killed = Vec::new();
    for b in bindings(&meta)?.into_iter().filter(|b| b.volume_id == volume) {
        if let Some(existing) = kill {
            for slot in &b.keyslots {
                let mut args: Vec<&OsStr> = vec!["luksKillSlot".as_ref(), "--batch-mode".as_ref()];
                let stdin = match existing {
                    Existing::KeyFile(f) => {
                        args.extend(["--key-file".as_ref(), f.as_os_str()]);
                        Zeroizing::new(Vec::new())
                    }
                    Existing::Passphrase(p) => {
                        args.extend::<[&OsStr; 2]>(["--key-file".as_ref(), "-".as_ref()]);
                        Zeroizing::new(p.as_bytes().to_vec())
                    }
                };
                args.extend([dev, slot.as_ref()]);
                cryptsetup(&args, &stdin)?;
                killed.push(slot.clone());
            }
        }
        cryptsetup(
            &["token".as_ref(), "remove".as_ref(), "--token-id".as_ref(), b.token.as_ref(), dev],
            b"",
        )?;
    }
    Ok(killed)
}

#[derive(Args)]
pub struct ListArgs {
    /// LUKS2 devices or file volumes to inspect.
    #[arg(required = true)]
    devices: Vec<PathBuf>,
}

/// `portcullis volumes list`: one line per binding, `DEVICE VOLUME slot N`.
pub fn list(args: ListArgs) -> Result<(), Failure> {
    for dev in &args.devices {
        let meta = cryptsetup(
            &["luksDump".as_ref(), "--dump-json-metadata".as_ref(), dev.as_os_str()],
            b"",
        )?;
        let found = bindings(&meta)?;
        if found.is_empty() {
            println!("{}: no volume bound to Portcullis", dev.display());
        }
        for b in found {
            println!("{}: {} slot {}", dev.display(), b.volume_id, b.keyslots.join(","));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_read_from_portcullis_tokens_only() {
        let meta = r#"{"keyslots":{"0":{},"1":{}},"tokens":{
            "0":{"type":"clevis","keyslots":["0"]},
            "1":{"type":"portcullis","keyslots":["1"],"volume_id":"extra"},
            "2":{"type":"portcullis","keyslots":"bogus","volume_id":"odd"},
            "3":{"type":"portcullis","keyslots":["2"]}}}"#;
        let b = bindings(meta).unwrap();
        assert_eq!(
            b,
            vec![
                Binding {
                    token: "1".into(),
                    volume_id: "extra".into(),
                    keyslots: vec!["1".into()]
                },
                Binding { token: "2".into(), volume_id: "odd".into(), keyslots: vec![] },
            ]
        );
        assert!(bindings("{}").unwrap().is_empty());
        assert!(bindings("not json").is_err());
    }

    #[test]
    fn enrol_list_and_unbind_a_file_volume() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.img");
        crate::provision::create_file_volume(&file, 16, b"old-key").unwrap();
        let old = dir.path().join("old.key");
        std::fs::write(&old, b"old-key").unwrap();
        let new_key = "ab".repeat(32);
        let slot = enrol(&file, "extra", &new_key, &Existing::KeyFile(old.clone())).unwrap();
        assert_eq!(slot, 1, "slot 0 holds the old key");
        assert_eq!(slot_of(&file, &new_key).unwrap(), 1);
        let meta = cryptsetup(
            &["luksDump".as_ref(), "--dump-json-metadata".as_ref(), file.as_os_str()],
            b"",
        )
        .unwrap();
        let b = bindings(&meta).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].volume_id.as_str(), b[0].keyslots.clone()), ("extra", vec!["1".into()]));
        // A passphrase read from stdin works as the existing key too.
        let pass = Existing::Passphrase(Zeroizing::new("old-key".into()));
        let killed = unbind(&file, "extra", Some(&pass)).unwrap();
        assert_eq!(killed, vec!["1".to_string()]);
        assert!(slot_of(&file, &new_key).is_err(), "the slot is wiped");
        assert_eq!(slot_of(&file, "old-key").unwrap(), 0);
        let meta = cryptsetup(
            &["luksDump".as_ref(), "--dump-json-metadata".as_ref(), file.as_os_str()],
            b"",
        )
        .unwrap();
        assert!(bindings(&meta).unwrap().is_empty());
    }

    #[test]
    fn a_bad_acl_is_refused_with_its_line() {
        let bad = "allow vm=a scopes=net:modify aud=fw0\nallow vm=b scopes=nope aud=x\n";
        let err = lint_acl(Path::new("new.acl"), bad).unwrap_err().to_string();
        assert!(err.starts_with("new.acl: acl line 2:"), "{err}");
        lint_acl(Path::new("ok.acl"), "allow vm=a scopes=net:modify aud=fw0\n").unwrap();
    }
}
