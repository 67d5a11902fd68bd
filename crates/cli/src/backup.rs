//! `portcullis backup`: an encrypted backup of cryptod's state, to a
//! recovery key shown once (as systemd-cryptenroll's), and its restore on a
//! new host under that host's own KEK protector.
//!
//! - `create` runs in dom0: it unseals the KEK with the directory's
//!   protector (`crate::kek`), opens the sealed state cryptod last made
//!   durable (the service and cryptod replace it atomically, so the file
//!   read is one consistent state), and encrypts it to a recovery key
//!   (`portcullis_authority::backup`). The state is only ever in memory,
//!   zeroed after; the recovery key is never written on the host.
//! - `restore` asks for the recovery key, decrypts, marks the state as
//!   restored (the BACKUP section: cryptod's first audit chain says
//!   `restored_from`), seals it under a new KEK protected for the new host
//!   (`--kek tpm|passphrase|credential`, as `provision`), and writes the
//!   directory's cryptod files.
//! - `inspect` prints a backup's header (no key needed).
//!
//! docs/operations.md ("A restore on a new host") is the runbook;
//! docs/provisioning.md has the formats.

use crate::kek::{self, Unlock};
use crate::provision::{self, KekArgs, KekPlan};
use crate::{keyfile, Failure};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use portcullis_authority::backup::{self, RecoveryKey, Restored};
use portcullis_authority::sealed::{self, section, SealedState};
use portcullis_proto::key::kid_for;
use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// Where cryptod's sealed state lives in a provisioned directory.
pub const STATE_FILE: &str = "cryptod/sealed-state";

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up cryptod's state, encrypted to a recovery key (a new one,
    /// shown once, unless --recovery-key-file is given).
    Create(CreateArgs),
    /// Restore a backup into a new provisioned directory, under a new KEK
    /// protected for this host.
    Restore(RestoreArgs),
    /// Print a backup's header: format, when it was made, its id (no key needed).
    Inspect {
        /// The backup file.
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The provisioned directory (its cryptod/kek.sealed opens the state).
    #[arg(long)]
    dir: PathBuf,
    /// The sealed state to back up (default: DIR/cryptod/sealed-state).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The backup file to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// The passphrase protector's passphrase, from this file (else asked).
    #[arg(long)]
    kek_passphrase_file: Option<PathBuf>,
    /// Encrypt to the recovery key in this file ('-': standard input)
    /// instead of making a new one.
    #[arg(long)]
    recovery_key_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The directory to restore into (must not exist yet, or be empty).
    #[arg(long)]
    dir: PathBuf,
    /// The recovery key, from this file ('-': standard input); else asked.
    #[arg(long)]
    recovery_key_file: Option<PathBuf>,
    /// How the new KEK is protected on this host (as `provision --kek`).
    #[command(flatten)]
    kek: KekArgs,
    /// Seal a new admin key (written to DIR/admin.key: move it offline)
    /// in place of the backup's: for a state with none (migrated from
    /// sealed format 2) or a lost admin key.
    #[arg(long)]
    new_admin_key: bool,
}

pub fn run(cmd: BackupCmd) -> Result<(), Failure> {
    match cmd {
        BackupCmd::Create(a) => create(&a),
        BackupCmd::Restore(a) => restore(&a),
        BackupCmd::Inspect { file } => {
            let bytes = read_backup(&file)?;
            let h = backup::header(&bytes)
                .map_err(|e| Failure::Invalid(format!("{}: {e}", file.display())))?;
            println!("{}: Portcullis backup format {}", file.display(), backup::VERSION);
            println!("backup id {}", hex::encode(h.backup_id));
            println!("created {} (Unix time)", h.created);
            println!("sealed-state format {}", h.state_version);
            Ok(())
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, Failure> {
    crate::host::persist::read_bounded(path, max)
        .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))
}

fn read_backup(path: &Path) -> Result<Vec<u8>, Failure> {
    read_bounded(path, backup::MAX_BACKUP_LEN)
}

/// Reads a recovery key from `file` ('-': standard input), or asks for it
/// with systemd-ask-password on a terminal. The checksum is checked here.
fn recovery_key(file: Option<&Path>) -> Result<RecoveryKey, Failure> {
    let mut text = Zeroizing::new(Vec::new());
    match file {
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .take(1024)
                .read_to_end(&mut text)
                .map_err(|e| format!("standard input: {e}"))?;
        }
        Some(p) => *text = read_bounded(p, 1024)?,
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(Failure::Error(
                    "no recovery key: standard input is not a terminal; give \
                     --recovery-key-file FILE (or - for standard input)"
                        .into(),
                ));
            }
            let out = Command::new("systemd-ask-password")
                .args(["--id=portcullis:backup", "--timeout=0", "Portcullis recovery key:"])
                .stdin(Stdio::inherit())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("systemd-ask-password: {e}; give --recovery-key-file"))?;
            *text = out.stdout;
            if !out.status.success() {
                return Err(Failure::Error("systemd-ask-password: no recovery key".into()));
            }
        }
    }
    let s = std::str::from_utf8(&text).map_err(|_| "recovery key: not UTF-8 text")?;
    RecoveryKey::parse(s.trim()).map_err(|e| Failure::Invalid(e.to_string()))
}

fn os_random<const N: usize>() -> Result<[u8; N], Failure> {
    Ok(*provision::os_random::<N>()?)
}

fn create(a: &CreateArgs) -> Result<(), Failure> {
    if a.out.exists() {
        return Err(Failure::Error(format!("{} exists; refusing to overwrite", a.out.display())));
    }
    // The key first: a typo in a given key stops here, before the KEK.
    let (key, new) = match &a.recovery_key_file {
        Some(f) => (recovery_key(Some(f))?, false),
        None => (RecoveryKey::from_bytes(os_random::<32>()?), true),
    };
    let protected = kek::read(&a.dir).map_err(|e| e.to_string())?;
    let kek = kek::unseal(&protected, &Unlock::from_env(a.kek_passphrase_file.as_deref()))
        .map_err(|e| e.to_string())?;
    let state_path = a.state.clone().unwrap_or_else(|| a.dir.join(STATE_FILE));
    let blob = read_bounded(&state_path, sealed::MAX_SEALED_LEN)?;
    let state =
        sealed::unseal(&blob, &kek).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let created = unix_now();
    let id = os_random::<16>()?;
    let bytes = backup::create(&state, &key, created, id, os_random::<32>()?, os_random::<12>()?)
        .map_err(|e| e.to_string())?;
    // Check it opens, and to the same state, before anyone relies on it.
    let (_, back) =
        backup::open(&bytes, &key).map_err(|e| format!("backup does not reopen: {e}"))?;
    if back != state {
        return Err(Failure::Error("the backup reopens to a different state".into()));
    }
    keyfile::write_file(&a.out, &bytes, true)?;
    println!("backup {} written: id {}, created {created}", a.out.display(), hex::encode(id));
    summary(&state);
    if new {
        println!();
        println!("!! The recovery key of this backup (shown once; it is stored nowhere):");
        println!("recovery key: {}", key.to_text().as_str());
        println!("!! Write it down and keep it away from this host and from the backup file.");
        println!("!! Without it the backup cannot be opened; with it, anyone holding the");
        println!("!! file has every secret of this Portcullis (volume passphrases, TOTP secrets).");
    } else {
        println!("encrypted to the recovery key given");
    }
    Ok(())
}

fn summary(s: &SealedState) {
    let ops: Vec<&str> = s.operators.iter().map(|o| o.id.as_str()).collect();
    println!(
        "state: operators {}, keyset version {}, revocation serial {} ({} revoked), admin key {}, \
         admin seq {}, audit head {}",
        ops.join(","),
        s.keyset_version,
        s.revocation_serial,
        s.revoked.len(),
        if s.admin_key.is_some() { "sealed" } else { "none" },
        s.admin_seq,
        s.audit_head.map_or_else(|| "none".into(), |h| h.seq.to_string()),
    );
}

fn restore(a: &RestoreArgs) -> Result<(), Failure> {
    let bytes = read_backup(&a.from)?;
    // The header first: a file that is no backup fails before any question.
    backup::header(&bytes).map_err(|e| Failure::Invalid(format!("{}: {e}", a.from.display())))?;
    let key = recovery_key(a.recovery_key_file.as_deref())?;
    let (h, mut state) = backup::open(&bytes, &key)
        .map_err(|e| Failure::Invalid(format!("{}: {e}", a.from.display())))?;
    let restored = Restored { backup_id: h.backup_id, created: h.created, pending: true };
    state.set_section(section::BACKUP, Some(restored.encode()));
    let admin = if a.new_admin_key {
        let sk = SigningKey::from_bytes(&Zeroizing::new(os_random::<32>()?));
        state.admin_key = Some(sk.verifying_key().to_bytes());
        Some(sk)
    } else {
        None
    };
    let plan = provision::kek_plan(&a.kek)?;
    let kek = provision::os_random::<32>()?;
    let sealed = sealed::seal(&state, &kek, &os_random::<12>()?).map_err(|e| e.to_string())?;
    sealed::unseal(&sealed, &kek).map_err(|e| format!("sealed state does not reopen: {e}"))?;
    provision::prepare_dir(&a.dir)?;
    let protected = provision::protect(&plan, &a.dir, &kek)?;
    keyfile::write_file(&a.dir.join(kek::FILE), protected.encode().as_bytes(), true)?;
    keyfile::write_file(&a.dir.join(STATE_FILE), &sealed, true)?;
    let root_pub = SigningKey::from_bytes(&state.root_key).verifying_key();
    keyfile::write_file(
        &a.dir.join("root.pub"),
        &keyfile::encode_public(&root_pub, &kid_for(&root_pub))?,
        false,
    )?;
    keyfile::write_file(&a.dir.join("acl"), state.acl.as_bytes(), false)?;
    if let Some(k) = state.admin_key.and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
    {
        keyfile::write_file(
            &a.dir.join("admin.pub"),
            &keyfile::encode_public(&k, &kid_for(&k))?,
            false,
        )?;
    }
    if let Some(sk) = &admin {
        let kid = kid_for(&sk.verifying_key());
        keyfile::write_file(&a.dir.join("admin.key"), &keyfile::encode_private(sk, &kid)?, true)?;
    }
    println!(
        "restored backup {} (made {}, {} s ago) into {}",
        hex::encode(h.backup_id),
        h.created,
        unix_now().saturating_sub(h.created),
        a.dir.display()
    );
    summary(&state);
    println!("root key id {}", hex::encode(kid_for(&root_pub)));
    let how = match &plan {
        KekPlan::Tpm(pcrs) => format!("sealed to this host's TPM under PCR policy {pcrs}"),
        KekPlan::Passphrase(_, cost) => format!("protected by your passphrase (Argon2id {cost})"),
        KekPlan::Credential(k) => {
            format!("in systemd credential {} (--with-key={k})", provision::CREDENTIAL_FILE)
        }
    };
    println!("new KEK {how}: {}", kek::FILE);
    if admin.is_some() {
        println!(
            "!! a NEW admin key is sealed: {} (move it offline now; the old one is refused)",
            a.dir.join("admin.key").display()
        );
    }
    println!("Lost with the rollback to this backup (re-do them: docs/operations.md):");
    println!("  revocations, operator resets and removals, recovery codes regenerated or used,");
    println!("  and key rotations made after the backup was created.");
    Ok(())
}
