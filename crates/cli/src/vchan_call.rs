//! `portcullis vchan-call`: one request to cryptod, with the answer checked
//! against the root public key. In a dom0, `--domid N` is a libxenvchan
//! client of `/local/domain/N/data/vchan/0/9001` (Xen's own library, loaded
//! at run time); `--socket` goes through a UNIX socket instead (Xen's
//! `vchan-socket-proxy` in client mode relaying it over libxenvchan).

use crate::{keyfile, socket, xenlink, Failure};
use clap::{Args, ValueEnum};
use portcullis_apps::common::{port, AppError};
use portcullis_apps::link::{Channel, Framed};
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
    /// cryptod's domain id: connect to its dom0 vchan (port 9001) with Xen's
    /// libxenvchan.
    #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
    domid: Option<u16>,
    /// Instead of --domid: the UNIX socket relaying to cryptod's vchan
    /// (Xen's vchan-socket-proxy).
    #[arg(long)]
    socket: Option<PathBuf>,
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
    let timeout = Duration::from_secs(args.timeout);
    match (args.domid, &args.socket) {
        (Some(domid), _) => {
            let mut link = xenlink::connect(domid, port::CRYPTOD, timeout)
                .map_err(|e| format!("cryptod (domain {domid}): {e}"))?;
            call(&mut link, &args, &root, timeout)
        }
        (None, Some(path)) => {
            let mut link = socket::connect(path, timeout)?;
            call(&mut link, &args, &root, timeout)
        }
        (None, None) => Err(Failure::Error("--domid or --socket is required".into())),
    }
}

/// Sends the request over `link` and checks the answer.
fn call<C: Channel>(
    link: &mut Framed<C>,
    args: &CallArgs,
    root: &keyfile::LoadedKey,
    timeout: Duration,
) -> Result<(), Failure> {
    let mut trust = Trust::new(root.public, &root.kid);
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
            trust.fetch_keyset(link, request_id, timeout).map_err(fail)?;
            let kids: Vec<String> = trust.keyset().iter().map(|e| hex::encode(&e.kid)).collect();
            println!(
                "vchan-call: keyset verified against root kid {}: {} key(s), kid {}",
                hex::encode(&root.kid),
                kids.len(),
                kids.join(",")
            );
        }
        Request::Revocations => {
            trust.fetch_revocations(link, request_id, timeout).map_err(fail)?;
            println!(
                "vchan-call: revocation list verified against root kid {}: {} revoked",
                hex::encode(&root.kid),
                trust.revoked().len()
            );
        }
    }
    Ok(())
}
