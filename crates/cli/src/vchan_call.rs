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
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AttestationClaims, AttestationReq, RequestId, TokenIssueReq};
use portcullis_proto::scope::ScopeSet;
use std::path::PathBuf;
use std::time::Duration;

/// What to ask cryptod for.
#[derive(Clone, Copy, ValueEnum)]
pub enum Request {
    /// `keyset_req`: the root-signed token verification keys.
    Keyset,
    /// `revocation_list_req`: the root-signed revocation list.
    Revocations,
    /// `attestation_req` for `--action`: the attestation, checked against
    /// the root-signed keyset, saved to `--save`.
    Attestation,
    /// `token_issue_req` for `--action` and `--aud`, carrying the
    /// attestation in `--attestation` if given. Exit 0 only if issued.
    TokenIssue,
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
    /// With attestation and token-issue: the action (scope names,
    /// space-separated).
    #[arg(long, default_value = "net:read")]
    action: String,
    /// With token-issue: the token's audience.
    #[arg(long, default_value = "dom0-check")]
    aud: String,
    /// With attestation: the file to save it to.
    #[arg(long)]
    save: Option<PathBuf>,
    /// With token-issue: the attestation file to carry.
    #[arg(long)]
    attestation: Option<PathBuf>,
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
        Request::Attestation => {
            let save = args.save.as_ref().ok_or("--save is required with attestation")?;
            let req = AttestationReq {
                request_id,
                action: args.action.clone(),
                subject_pubkey: random()?,
                nonce: random::<16>()?.to_vec(),
                timestamp: unix_now(),
            };
            let signed = match link.call(&Message::AttestationReq(req), timeout) {
                Ok(Message::Attestation(a)) => a.signed,
                Ok(Message::Error(e)) => {
                    return Err(Failure::Invalid(format!(
                        "attestation refused: {} ({})",
                        e.code.as_str(),
                        e.reason
                    )))
                }
                Ok(other) => {
                    return Err(Failure::Invalid(format!("unexpected {}", other.kind().as_str())))
                }
                Err(e) => return Err(Failure::Error(format!("cryptod: {e}"))),
            };
            trust.fetch_keyset(link, request_id, timeout).map_err(fail)?;
            let keys = trust.keyset();
            let object = cose::verify(&signed, ContentType::Attestation, |kid| {
                keys.find(kid).map(|e| e.key)
            })
            .map_err(|e| Failure::Invalid(format!("attestation: {e}")))?;
            let c = AttestationClaims::from_cbor(&object.payload)
                .map_err(|e| Failure::Invalid(format!("attestation claims: {e}")))?;
            keyfile::write_file(save, &signed, false)?;
            println!(
                "vchan-call: attestation verified against the keyset (kid {}): dom{} {} \
                 action=\"{}\" expires_at={} measurement={}",
                hex::encode(&object.kid),
                c.subject_domid,
                c.subject_vm,
                c.action,
                c.expires_at,
                c.measurement.map_or("none".into(), hex::encode)
            );
        }
        Request::TokenIssue => {
            let scope = ScopeSet::parse_list(&args.action)
                .map_err(|e| format!("--action {:?}: {e}", args.action))?;
            let attestation = match &args.attestation {
                Some(path) => {
                    Some(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?)
                }
                None => None,
            };
            let req = TokenIssueReq {
                request_id,
                vm_id: "dom0".into(),
                requested_scope: scope,
                audience: args.aud.clone(),
                justification: "vchan-call".into(),
                nonce: random::<16>()?.to_vec(),
                timestamp: unix_now(),
                ttl: None,
                attestation,
                metadata: None,
            };
            match link.call(&Message::TokenIssueReq(req), timeout) {
                Ok(Message::TokenIssueResp(r)) if r.request_id == request_id => {
                    let reason = r.reason.unwrap_or_default();
                    if let Some(exp) = r.token.as_ref().and(r.expires_at) {
                        println!(
                            "vchan-call: token issued ({}, expires_at {exp})",
                            r.result.as_str()
                        );
                    } else {
                        return Err(Failure::Invalid(format!(
                            "token_issue: {} ({reason})",
                            r.result.as_str()
                        )));
                    }
                }
                Ok(other) => {
                    return Err(Failure::Invalid(format!("unexpected {}", other.kind().as_str())))
                }
                Err(e) => return Err(Failure::Error(format!("cryptod: {e}"))),
            }
        }
    }
    Ok(())
}

fn random<const N: usize>() -> Result<[u8; N], Failure> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("OS random source: {e}"))?;
    Ok(b)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
