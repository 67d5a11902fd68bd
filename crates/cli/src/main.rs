//! `portcullis`: the host-side operator tool.
//!
//! Exit codes: 0 success; 1 the checked thing is invalid (a token that does not
//! verify, an audit log that does not check out); 2 usage or I/O error.
#![forbid(unsafe_code)]

mod admin;
mod agent;
mod attest_cmd;
mod audit_cmd;
mod backup;
mod demo;
mod host;
mod hostile;
mod kek;
mod kek_cmd;
mod keyfile;
mod lifecycle;
mod provision;
mod socket;
mod token_cmd;
mod vchan_call;
mod volumes_cmd;
mod xenlink;

use clap::{Parser, Subcommand};
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::MAX_KID_LEN;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Portcullis host tool: keys, tokens, provisioning, audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an Ed25519 signing key: writes PREFIX.key (private COSE_Key,
    /// mode 0600) and PREFIX.pub (public COSE_Key).
    Keygen {
        /// Path prefix of the two files to create; existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Key id as hex (default: first 8 bytes of SHA-256 of the public key).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Mint, verify or inspect capability tokens.
    #[command(subcommand)]
    Token(token_cmd::TokenCmd),
    /// Sign or check attestations as cryptod does.
    #[command(subcommand)]
    Attest(attest_cmd::AttestCmd),
    /// Create cryptod's sealed state, the operators' TOTP enrolment and the
    /// volumes' LUKS passphrases.
    Provision(provision::ProvisionArgs),
    /// Send cryptod an admin command signed by the offline admin key
    /// (operators, recovery codes; docs/authority.md).
    Admin(admin::AdminArgs),
    /// Volumes bound to Portcullis in LUKS2 headers, read-only (like
    /// `clevis luks list`).
    #[command(subcommand)]
    Volumes(VolumesCmd),
    /// Check collected audit logs.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCmd),
    /// Back up cryptod's state to a recovery key; restore it on a new host.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// The protected key-encryption key: move it to another protector
    /// (e.g. a TPM added later) without re-provisioning.
    #[command(subcommand)]
    Kek(kek_cmd::KekCmd),
    /// Collect cryptod's audit records over vchan into a file (fsync before ack).
    AuditCollect(audit_cmd::CollectArgs),
    /// The dom0 unlock agent: verify the unlock token, then cryptsetup.
    UnlockAgent(agent::AgentArgs),
    /// Send one request to cryptod (a libxenvchan client of its dom0 vchan,
    /// or through a UNIX socket) and verify the root-signed answer.
    VchanCall(vchan_call::CallArgs),
    /// Run the whole system on the hosted platform, end to end.
    Demo(demo::DemoArgs),
    /// The dom0 service: configures the guests as xl creates them, keeps
    /// cryptod's sealed state durably, runs the audit collector and the
    /// unlock agent (docs/host.md).
    Host(host::HostArgs),
}

#[derive(Subcommand)]
enum VolumesCmd {
    /// Which volumes and key slots each device binds to Portcullis (its
    /// `portcullis` LUKS2 tokens).
    List(volumes_cmd::ListArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// The input was checked and is invalid (exit 1).
    Invalid(String),
    /// Usage, I/O or environment error (exit 2).
    Error(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure::Error(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Failure {
        Failure::Error(s.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Invalid(m) | Failure::Error(m) => f.write_str(m),
        }
    }
}

impl core::error::Error for Failure {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out, kid } => keygen(&out, kid.as_deref()),
        Command::Token(cmd) => token_cmd::run(cmd),
        Command::Attest(cmd) => attest_cmd::run(cmd),
        Command::Provision(args) => provision::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Volumes(VolumesCmd::List(args)) => volumes_cmd::list(args),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Backup(cmd) => backup::run(cmd),
        Command::Kek(cmd) => kek_cmd::run(cmd),
        Command::AuditCollect(args) => audit_cmd::collect(args),
        Command::UnlockAgent(args) => agent::run(args),
        Command::VchanCall(args) => vchan_call::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Host(args) => host::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(msg)) => {
            eprintln!("invalid: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Error(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn with_ext(prefix: &std::path::Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn keygen(out: &std::path::Path, kid_hex: Option<&str>) -> Result<(), Failure> {
    let sk = keyfile::generate()?;
    let pk = sk.verifying_key();
    let kid = match kid_hex {
        Some(h) => {
            let kid = hex::decode(h).map_err(|e| format!("--kid: not hex: {e}"))?;
            if kid.is_empty() || kid.len() > MAX_KID_LEN {
                return Err(Failure::Error(format!("--kid: must be 1 to {MAX_KID_LEN} bytes")));
            }
            kid
        }
        None => kid_for(&pk).to_vec(),
    };
    let (key_path, pub_path) = (with_ext(out, "key"), with_ext(out, "pub"));
    if key_path.exists() || pub_path.exists() {
        return Err(Failure::Error(format!(
            "{} or {} already exists; refusing to overwrite a key",
            key_path.display(),
            pub_path.display()
        )));
    }
    let private = keyfile::encode_private(&sk, &kid)?;
    let public = keyfile::encode_public(&pk, &kid)?;
    keyfile::write_file(&key_path, &private, true)?;
    keyfile::write_file(&pub_path, &public, false)?;
    println!("kid {}", hex::encode(&kid));
    println!("public {}", hex::encode(pk.to_bytes()));
    println!("wrote {} (private) and {}", key_path.display(), pub_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Failure;

    #[test]
    fn failure_is_a_core_error() {
        let e: &dyn core::error::Error = &Failure::Invalid("bad token".into());
        assert_eq!(e.to_string(), Failure::Invalid("bad token".into()).to_string());
        assert!(e.source().is_none());
    }
}
