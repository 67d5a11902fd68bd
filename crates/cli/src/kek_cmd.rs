//! `portcullis kek`: the protected KEK of an installation
//! (`DIR/cryptod/kek.sealed`, crate::kek).
//!
//! `kek reseal` moves an installation's KEK to another protector without
//! re-provisioning (what an operator does after adding a TPM, like
//! `systemd-cryptenroll` adding a TPM2 slot): it unseals the KEK with the
//! current protector, checks that it opens cryptod's sealed state, protects
//! the SAME KEK as `provision --kek` would (and checks that it unseals to
//! it), then replaces `kek.sealed` durably (temporary file, fsync, rename,
//! fsync of the directory). The KEK is only ever in memory; on any error
//! the old file is untouched.

use crate::backup::STATE_FILE;
use crate::host::persist;
use crate::kek::{self, Sealed, Unlock};
use crate::provision::{self, KekArgs, KekPlan};
use crate::Failure;
use clap::{Args, Subcommand};
use portcullis_authority::sealed;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KekCmd {
    /// Protect the installation's KEK with another protector (or a new
    /// passphrase) without re-provisioning: unseal it with the current one,
    /// seal the same KEK anew, replace DIR/cryptod/kek.sealed atomically.
    Reseal(ResealArgs),
}

#[derive(Args)]
pub struct ResealArgs {
    /// The provisioned directory (the service's state_dir).
    #[arg(long)]
    dir: PathBuf,
    /// The CURRENT passphrase protector's passphrase, from this file (else
    /// asked on the terminal); as `host --kek-passphrase-file`.
    #[arg(long)]
    old_kek_passphrase_file: Option<PathBuf>,
    /// The new protector (as `provision --kek`).
    #[command(flatten)]
    kek: KekArgs,
}

pub fn run(cmd: KekCmd) -> Result<(), Failure> {
    match cmd {
        KekCmd::Reseal(a) => reseal(&a),
    }
}

fn describe(s: &Sealed) -> String {
    match s {
        Sealed::Tpm { pcrs, .. } => {
            format!("tpm (PCR policy {pcrs}, TCTI {})", kek::tpm::tcti())
        }
        Sealed::Passphrase { cost, .. } => format!("passphrase (Argon2id {cost})"),
        Sealed::Credential { .. } => {
            format!("credential ({})", provision::CREDENTIAL_FILE)
        }
    }
}

fn reseal(a: &ResealArgs) -> Result<(), Failure> {
    let path = a.dir.join(kek::FILE);
    let old = kek::read(&a.dir).map_err(|e| e.to_string())?;
    // The new protector is checked first (a TPM answers, a new passphrase
    // is long enough), before the KEK is in memory.
    let plan = provision::kek_plan(&a.kek)?;
    let key = kek::unseal(&old, &Unlock::from_env(a.old_kek_passphrase_file.as_deref()))
        .map_err(|e| format!("cannot unseal the current KEK ({}): {e}", old.protector().name()))?;
    // It is this installation's KEK: cryptod's sealed state opens with it.
    let state_path = a.dir.join(STATE_FILE);
    let blob = persist::read_bounded(&state_path, sealed::MAX_SEALED_LEN)
        .map_err(|e| format!("{}: {e}", state_path.display()))?;
    sealed::unseal(&blob, &key).map_err(|e| {
        format!("{}: does not open with the unsealed KEK: {e}", state_path.display())
    })?;
    let new = provision::protect(&plan, &a.dir, &key)?;
    persist::replace_durably(&path, new.encode().as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("KEK resealed: {} -> {}", describe(&old), describe(&new));
    println!("wrote {} (the same KEK; cryptod's sealed state is unchanged)", path.display());
    match plan {
        KekPlan::Passphrase(..) => println!(
            "the service needs the new passphrase: kek_passphrase_file in host.toml \
             (or it asks with systemd-ask-password)"
        ),
        KekPlan::Tpm(_) | KekPlan::Credential(_) => {
            if old.protector() == kek::Protector::Passphrase {
                println!(
                    "the passphrase no longer opens it: remove kek_passphrase_file from \
                     host.toml (and the file), then restart the service"
                );
            }
            if let KekPlan::Credential(_) = plan {
                println!(
                    "give the service the credential: LoadCredentialEncrypted=portcullis-kek:{}",
                    a.dir.join(provision::CREDENTIAL_FILE).display()
                );
            }
        }
    }
    Ok(())
}
