//! `portcullis attest sign|verify`: attestations as cryptod signs and
//! checks them (the same code: `portcullis_authority::attest`), for
//! interop checks and for inspecting one by hand.

use crate::token_cmd::{now_or, random, read_token};
use crate::{keyfile, Failure};
use clap::Subcommand;
use portcullis_authority::attest::{self, Expect, ATTESTATION_TTL};
use portcullis_authority::PeerId;
use portcullis_proto::msg::AttestationClaims;
use portcullis_proto::token::{KeyEntry, Keyset, MemoryReplayCache};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AttestCmd {
    /// Sign an attestation with a private key file, as cryptod does. Prints
    /// it as hex unless --out is given.
    Sign {
        /// Private COSE_Key file (from `portcullis keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The subject's domain id.
        #[arg(long)]
        domid: u32,
        /// The subject's domain name.
        #[arg(long)]
        vm: String,
        /// The action (scope names, space-separated, canonical order).
        #[arg(long)]
        action: String,
        /// The subject's ephemeral public key, 32 bytes as hex.
        #[arg(long)]
        pubkey: String,
        /// The nonce as hex (default: 16 random bytes).
        #[arg(long)]
        nonce: Option<String>,
        /// The kernel measurement, 32 bytes as hex (default: none).
        #[arg(long)]
        measurement: Option<String>,
        /// Issue time, epoch seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Write the raw bytes to this file instead of printing hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an attestation as cryptod checks one a request carries. Exit 0
    /// only if it is valid; otherwise print a one-line reason and exit 1.
    Verify {
        /// Public (or private) COSE_Key files of the trusted signing keys.
        #[arg(long = "pub", required = true)]
        keys: Vec<PathBuf>,
        /// The requesting peer's domain id.
        #[arg(long)]
        domid: u32,
        /// The requesting peer's domain name.
        #[arg(long)]
        vm: String,
        /// The request's action.
        #[arg(long)]
        action: String,
        /// The request's ephemeral public key as hex, if it has one.
        #[arg(long)]
        pubkey: Option<String>,
        /// Verification time, epoch seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Attestation file (raw or hex), or - for standard input.
        attestation: PathBuf,
    },
}

fn hex32(what: &str, text: &str) -> Result<[u8; 32], Failure> {
    let bytes = hex::decode(text).map_err(|e| format!("--{what}: not hex: {e}"))?;
    bytes.try_into().map_err(|_| Failure::Error(format!("--{what}: not 32 bytes")))
}

pub fn run(cmd: AttestCmd) -> Result<(), Failure> {
    match cmd {
        AttestCmd::Sign { key, domid, vm, action, pubkey, nonce, measurement, now, out } => {
            let loaded = keyfile::load(&key)?;
            let sk =
                loaded.secret.ok_or_else(|| format!("{}: has no private key", key.display()))?;
            let nonce = match nonce {
                Some(h) => hex::decode(h).map_err(|e| format!("--nonce: not hex: {e}"))?,
                None => random(16)?,
            };
            let issued_at = now_or(now)?;
            let claims = AttestationClaims {
                subject_domid: u64::from(domid),
                subject_vm: vm,
                subject_pubkey: hex32("pubkey", &pubkey)?,
                action,
                nonce,
                issued_at,
                expires_at: issued_at.saturating_add(ATTESTATION_TTL),
                measurement: measurement.map(|m| hex32("measurement", &m)).transpose()?,
            };
            let signed =
                attest::sign(&sk, &loaded.kid, &claims).map_err(|e| format!("sign: {e}"))?;
            match out {
                Some(path) => keyfile::write_file(&path, &signed, false)?,
                None => println!("{}", hex::encode(&signed)),
            }
            Ok(())
        }
        AttestCmd::Verify { keys, domid, vm, action, pubkey, now, attestation } => {
            let mut keyset = Keyset::default();
            for path in &keys {
                let k = keyfile::load(path)?;
                let entry =
                    KeyEntry { kid: k.kid, key: k.public, not_before: 0, not_after: u64::MAX };
                keyset.push(entry).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let pubkey = pubkey.map(|p| hex32("pubkey", &p)).transpose()?;
            let bytes = read_token(&attestation)?;
            let peer = PeerId::new(domid, &vm);
            let expect =
                Expect { peer: &peer, action: &action, pubkey: pubkey.as_ref(), now: now_or(now)? };
            let mut replay = MemoryReplayCache::new(1);
            let c = attest::verify(&bytes, &keyset, &expect, &mut replay)
                .map_err(|e| Failure::Invalid(e.to_string()))?;
            let measured = c.measurement.map_or("none".into(), hex::encode);
            println!(
                "valid: dom{} {} action=\"{}\" expires_at={} measurement={measured}",
                c.subject_domid, c.subject_vm, c.action, c.expires_at
            );
            Ok(())
        }
    }
}
