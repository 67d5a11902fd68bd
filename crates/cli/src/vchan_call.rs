//! `portcullis vchan-call`: one request to cryptod through a UNIX socket
//! (Xen's `vchan-socket-proxy` in client mode relays it over libxenvchan),
//! with the answer checked against the root public key.

use crate::socket;
use crate::{keyfile, Failure};
use clap::{Args, ValueEnum};
use portcullis_apps::common::AppError;
use portcullis_apps::trust::Trust;
use portcullis_proto::msg::RequestId;
use std::path::PathBuf;
use std::time::Duration;

/// What to ask cryptod for.
#[derive(Clone, Copy, ValueEnum)]
pub enum Request {
    /// `keyset_req`: the root-signed token verification keys.
    Keyset,
    /// `revocation_list_req`: the root-signed revocation list.
    Revocations,
}

#[derive(Args)]
pub struct CallArgs {
    /// The UNIX socket relaying to cryptod's vchan.
    #[arg(long)]
    socket: PathBuf,
    /// cryptod's root public key (root.pub from `portcullis provision`).
    #[arg(long)]
    root: PathBuf,
    /// The request to send.
    #[arg(long, value_enum, default_value = "keyset")]
    request: Request,
    /// Seconds to wait for the socket and for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// Sends the request, verifies the answer's root signature, says what it held.
pub fn run(args: CallArgs) -> Result<(), Failure> {
    let root = keyfile::load(&args.root)?;
    let mut trust = Trust::new(root.public, &root.kid);
    let timeout = Duration::from_secs(args.timeout);
    let mut link = socket::connect(&args.socket, timeout)?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| format!("OS random source: {e}"))?;
    let request_id = RequestId(id);
    // A broken link is an error (exit 2); a refused or unexpected answer is invalid (exit 1).
    let fail = |e: AppError| match e {
        AppError::Link(e) => Failure::Error(format!("cryptod: {e}")),
        other => Failure::Invalid(other.to_string()),
    };
    match args.request {
        Request::Keyset => {
            trust.fetch_keyset(&mut link, request_id, timeout).map_err(fail)?;
            let kids: Vec<String> = trust.keyset().iter().map(|e| hex::encode(&e.kid)).collect();
            println!(
                "vchan-call: keyset verified against root kid {}: {} key(s), kid {}",
                hex::encode(&root.kid),
                kids.len(),
                kids.join(",")
            );
        }
        Request::Revocations => {
            trust.fetch_revocations(&mut link, request_id, timeout).map_err(fail)?;
            println!(
                "vchan-call: revocation list verified against root kid {}: {} revoked",
                hex::encode(&root.kid),
                trust.revoked().len()
            );
        }
    }
    Ok(())
}
