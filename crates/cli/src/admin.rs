//! `portcullis admin`: build an admin command, sign it with the admin key
//! (`DIR/admin.key` from `portcullis provision`, kept offline), send it to
//! cryptod over its dom0 link and report cryptod's verdict.
//!
//! The link is cryptod's dom0 client vchan (port 9001), the one
//! `portcullis vchan-call` uses: in a dom0 `--domid N` (Xen's
//! libxenvchan), `--socket` (a UNIX socket relayed by Xen's
//! `vchan-socket-proxy`), or on the hosted platform `--world DIR` (the
//! tool speaks as domain 0 of that world). cryptod knows the sender as
//! the link's peer domain, never by anything in the command.
//!
//! Enrolment (operator-add, operator-reset) makes the new TOTP secret
//! here, shows its otpauth URI and QR code, and asks for a code from the
//! app: cryptod seals the secret only if that code matches it. Recovery
//! codes (operator-add, recovery-regenerate) are made here from the OS
//! random source, shown once, and only their salted hashes are sent.
//! See docs/authority.md ("Admin channel") and docs/operations.md.

use crate::provision::{base32, otpauth_uri, qr, secret_len, totp_algorithm};
use crate::volumes_cmd::{self, Existing, VolumeKey};
use crate::{keyfile, socket, xenlink, Failure};
use clap::{Args, Subcommand};
use ed25519_dalek::SigningKey;
use portcullis_apps::common::port;
use portcullis_apps::link::{Channel, Framed};
use portcullis_authority::admin::{recovery_hash, RecoveryHash};
use portcullis_authority::totp::{Algorithm, OperatorSecret};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AdminCommand, AdminOp, AdminReq, AdminResult, RequestId, TotpAlg, MAX_ADMIN_LIFETIME,
    MAX_CTI_LEN, MAX_KID_LEN, RECOVERY_CODES,
};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

#[derive(Args)]
pub struct AdminArgs {
    /// The admin private key (`admin.key` from `portcullis provision`).
    #[arg(long)]
    key: PathBuf,
    /// cryptod's root public key (`root.pub`): names the cryptod the
    /// command is for.
    #[arg(long)]
    root: PathBuf,
    /// cryptod's domain id: connect to its dom0 vchan with Xen's libxenvchan.
    #[arg(long, conflicts_with_all = ["socket", "world"])]
    domid: Option<u16>,
    /// Instead of --domid: the UNIX socket relaying to cryptod's dom0 vchan.
    #[arg(long, conflicts_with = "world")]
    socket: Option<PathBuf>,
    /// Instead of --domid: a hosted-platform world directory (speaks as
    /// its domain 0 to its domain `cryptod`).
    #[arg(long)]
    world: Option<PathBuf>,
    /// The command's sequence number; it must be above the last one
    /// cryptod accepted (default: the Unix time in milliseconds).
    #[arg(long)]
    seq: Option<u64>,
    /// Seconds the signed command stays valid (at most 300).
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// Seconds to wait for the link and for the answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: AdminCmd,
}

#[derive(Subcommand)]
pub enum AdminCmd {
    /// Enrol a new operator: a new TOTP secret, confirmed with a code from
    /// the app, and 8 recovery codes.
    OperatorAdd(Enrol),
    /// A lost phone: a new TOTP secret for an operator, confirmed with a
    /// code from the app; the old secret stops working at once (recovery
    /// codes are kept).
    OperatorReset(Enrol),
    /// Remove an operator (never the last one).
    OperatorRemove {
        /// The operator id.
        #[arg(long)]
        id: String,
    },
    /// Replace an operator's recovery codes with 8 new ones.
    RecoveryRegenerate {
        /// The operator id.
        #[arg(long)]
        id: String,
        /// Also write the codes to this new file (0600), one per line.
        #[arg(long)]
        recovery_out: Option<PathBuf>,
    },
    /// Rotate the token signing key now (the old key keeps verifying
    /// tokens it signed for the overlap).
    KeyRotate,
    /// Revoke a token signing key: it leaves the keyset at once and its
    /// tokens are refused (the active key is rotated out first).
    KeyRevoke {
        /// The key id, hex (`portcullis vchan-call keyset` lists them).
        #[arg(long)]
        kid: String,
    },
    /// Rotate the root key: cryptod makes a new one, which the old one
    /// vouches for in a succession statement published with every keyset
    /// and recorded in the audit log; verifiers pinned to root.pub follow it.
    RootRotate,
    /// Revoke one token by its id: it joins the revocation list.
    TokenRevoke {
        /// The token id (`cti`), hex (`portcullis token inspect` shows it).
        #[arg(long)]
        cti: String,
    },
    /// Bind a new volume: cryptod derives its passphrase (a fresh
    /// generation), sealed to a one-use key of this tool, which enrols it
    /// with `cryptsetup luksAddKey` and records the slot in a LUKS2 token.
    VolumeAdd(VolumeAdd),
    /// Unbind a volume: cryptod stops deriving its passphrase; with
    /// --device its token is removed, with --kill-slot its key slot too.
    VolumeRemove(VolumeRemove),
    /// Replace the ACL with a new, linted, higher-versioned one.
    AclReplace {
        /// The new ACL text.
        #[arg(long)]
        file: PathBuf,
        /// Its version: above the current one.
        #[arg(long)]
        version: u64,
    },
    /// Put a domain name (cryptod issues it no token, and no token for it
    /// as audience) or a device id (cryptod checks no TOTP code sent for
    /// it) on the identity revocation list.
    IdentityRevoke(Identity),
    /// Take a domain name or a device id off the identity revocation list.
    IdentityRestore(Identity),
}

/// A domain name or a device id, exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Identity {
    /// The domain name.
    #[arg(long)]
    name: Option<String>,
    /// The device id (the unlocker's `device` setting, sent with each code).
    #[arg(long)]
    device: Option<String>,
}

#[derive(Args)]
pub struct VolumeAdd {
    /// The volume id (the unlock agent's `--volume NAME=PATH`).
    #[arg(long)]
    name: String,
    /// The LUKS device (or file volume) to enrol the passphrase into;
    /// without it the passphrase is printed once instead.
    #[arg(long)]
    device: Option<PathBuf>,
    /// A key file that opens --device today (otherwise an existing
    /// passphrase is read from standard input).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct VolumeRemove {
    /// The volume id.
    #[arg(long)]
    name: String,
    /// The LUKS device: remove the volume's `portcullis` token.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Also wipe the key slot the token names (`luksKillSlot`).
    #[arg(long, requires = "device")]
    kill_slot: bool,
    /// A key file that opens --device (for --kill-slot; otherwise a
    /// passphrase is read from standard input).
    #[arg(long)]
    key_file: Option<PathBuf>,
}

/// The device's existing key: `file`, or a passphrase line from stdin.
fn existing_key(file: &Option<PathBuf>, device: &Path) -> Result<Existing, Failure> {
    if let Some(f) = file {
        return Ok(Existing::KeyFile(f.clone()));
    }
    print!("a passphrase that opens {} today: ", device.display());
    std::io::stdout().flush().map_err(|err| format!("stdout: {err}"))?;
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line).map_err(|err| format!("stdin: {err}"))?;
    Ok(Existing::Passphrase(Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string())))
}

#[derive(Args)]
pub struct Enrol {
    /// The operator id.
    #[arg(long)]
    id: String,
    /// TOTP HMAC algorithm: sha1, sha256, sha512.
    #[arg(long, default_value = "sha1")]
    totp_algorithm: String,
    /// TOTP code length: 6 or 8.
    #[arg(long, default_value_t = 6)]
    digits: u8,
    /// Issuer name shown by authenticator apps.
    #[arg(long, default_value = "Portcullis")]
    issuer: String,
    /// Do not draw the QR code (the otpauth URI is still printed).
    #[arg(long)]
    no_qr: bool,
    /// Also write the recovery codes (operator-add) to this new file (0600).
    #[arg(long)]
    recovery_out: Option<PathBuf>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn os_random(buf: &mut [u8]) -> Result<(), Failure> {
    getrandom::fill(buf).map_err(|e| Failure::Error(format!("OS random source: {e}")))
}

/// Eight fresh recovery codes (`ABCDE-FGHIJ`, 50 bits each) and their
/// salted hashes.
fn recovery_codes() -> Result<(Vec<Zeroizing<String>>, Vec<RecoveryHash>), Failure> {
    let (mut codes, mut hashes) = (Vec::new(), Vec::new());
    for _ in 0..RECOVERY_CODES {
        let mut raw = Zeroizing::new([0u8; 7]);
        os_random(raw.as_mut())?;
        let text = Zeroizing::new(base32(raw.as_ref()));
        let code = &text.as_bytes()[..10];
        let mut salt = [0u8; 16];
        os_random(&mut salt)?;
        hashes.push(recovery_hash(&salt, code));
        let shown = format!(
            "{}-{}",
            String::from_utf8_lossy(&code[..5]),
            String::from_utf8_lossy(&code[5..])
        );
        codes.push(Zeroizing::new(shown));
    }
    Ok((codes, hashes))
}

fn show_codes(id: &str, codes: &[Zeroizing<String>], out: Option<&Path>) -> Result<(), Failure> {
    println!("recovery codes for {id} (each works once at the unlocker console in place of");
    println!("a TOTP code; print them and keep them offline; they are not shown again):");
    for c in codes {
        println!("  {}", c.as_str());
    }
    if let Some(path) = out {
        let text: Zeroizing<String> =
            Zeroizing::new(codes.iter().map(|c| format!("{}\n", c.as_str())).collect());
        keyfile::write_file(path, text.as_bytes(), true)?;
    }
    Ok(())
}

/// Makes the secret, shows it and reads the confirmation code from stdin.
fn enrol(e: &Enrol) -> Result<(OperatorSecret, Zeroizing<String>), Failure> {
    let alg = totp_algorithm(&e.totp_algorithm)?;
    let mut secret = Zeroizing::new(vec![0u8; secret_len(alg)]);
    os_random(&mut secret)?;
    let op = OperatorSecret::new(&e.id, &secret, alg, e.digits)
        .map_err(|err| format!("operator {:?}: {err}", e.id))?;
    let uri = Zeroizing::new(otpauth_uri(&e.issuer, &op));
    println!("operator {}: add this to the authenticator app", op.id);
    println!("  {}", uri.as_str());
    if !e.no_qr {
        println!("{}", qr(&uri)?);
    }
    print!("code shown by the app for {}: ", op.id);
    std::io::stdout().flush().map_err(|err| format!("stdout: {err}"))?;
    let mut line = Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line).map_err(|err| format!("stdin: {err}"))?;
    let code = Zeroizing::new(line.trim().to_string());
    if code.len() != usize::from(e.digits) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::Error(format!("the code is {} digits", e.digits)));
    }
    Ok((op, code))
}

fn wire_alg(a: Algorithm) -> TotpAlg {
    match a {
        Algorithm::Sha1 => TotpAlg::Sha1,
        Algorithm::Sha256 => TotpAlg::Sha256,
        Algorithm::Sha512 => TotpAlg::Sha512,
    }
}

pub fn run(args: AdminArgs) -> Result<(), Failure> {
    if args.ttl == 0 || args.ttl > MAX_ADMIN_LIFETIME {
        return Err(Failure::Error(format!("--ttl must be 1 to {MAX_ADMIN_LIFETIME} s")));
    }
    let admin = keyfile::load(&args.key)?;
    let Some(secret) = admin.secret else {
        return Err(Failure::Error(format!("{}: not a private key", args.key.display())));
    };
    let root = keyfile::load(&args.root)?;
    let now = unix_now();
    let seq = match args.seq {
        Some(s) => s,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("clock: {e}"))?
            .as_millis()
            .try_into()
            .map_err(|_| "clock out of range")?,
    };
    let mut rid = [0u8; 16];
    os_random(&mut rid)?;
    let mut c = AdminCommand::new(
        RequestId(rid),
        kid_for(&root.public).to_vec(),
        seq,
        now,
        now.saturating_add(args.ttl),
        AdminOp::OperatorRemove,
    );
    // volume-add: the one-use key cryptod seals the passphrase to; and the
    // device's existing key, asked before anything is sent.
    let mut volume_key = None;
    let mut existing = None;
    // Recovery codes to show once cryptod has taken their hashes.
    let mut shown: Option<(Vec<Zeroizing<String>>, Option<PathBuf>)> = None;
    match &args.command {
        AdminCmd::OperatorAdd(e) | AdminCmd::OperatorReset(e) => {
            let (op, code) = enrol(e)?;
            let add = matches!(args.command, AdminCmd::OperatorAdd(_));
            c.command = if add { AdminOp::OperatorAdd } else { AdminOp::OperatorReset };
            c.operator_id = Some(op.id.clone());
            c.secret = Some(Zeroizing::new(op.secret.clone()));
            c.algorithm = Some(wire_alg(op.algorithm));
            c.digits = Some(u64::from(op.digits));
            c.confirm_code = Some(code);
            if add {
                let (codes, hashes) = recovery_codes()?;
                c.code_hashes = Some(hashes);
                shown = Some((codes, e.recovery_out.clone()));
            }
        }
        AdminCmd::OperatorRemove { id } => {
            c.command = AdminOp::OperatorRemove;
            c.operator_id = Some(id.clone());
        }
        AdminCmd::RecoveryRegenerate { id, recovery_out } => {
            c.command = AdminOp::RecoveryRegenerate;
            c.operator_id = Some(id.clone());
            let (codes, hashes) = recovery_codes()?;
            c.code_hashes = Some(hashes);
            shown = Some((codes, recovery_out.clone()));
        }
        AdminCmd::KeyRotate
        | AdminCmd::KeyRevoke { .. }
        | AdminCmd::TokenRevoke { .. }
        | AdminCmd::RootRotate => key_command(&args.command, &mut c)?,
        AdminCmd::VolumeAdd(v) => {
            c.command = AdminOp::VolumeAdd;
            c.volume_id = Some(v.name.clone());
            let key = VolumeKey::new()?;
            c.ephemeral_pubkey = Some(key.public());
            volume_key = Some(key);
            if let Some(dev) = &v.device {
                existing = Some(existing_key(&v.key_file, dev)?);
            }
        }
        AdminCmd::VolumeRemove(v) => {
            c.command = AdminOp::VolumeRemove;
            c.volume_id = Some(v.name.clone());
            if let (true, Some(dev)) = (v.kill_slot, &v.device) {
                existing = Some(existing_key(&v.key_file, dev)?);
            }
        }
        AdminCmd::AclReplace { file, version } => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            volumes_cmd::lint_acl(file, &text)?;
            c.command = AdminOp::AclReplace;
            c.acl = Some(text);
            c.acl_version = Some(*version);
        }
        AdminCmd::IdentityRevoke(id) | AdminCmd::IdentityRestore(id) => {
            let revoke = matches!(args.command, AdminCmd::IdentityRevoke(_));
            let (op, text) = match (&id.name, &id.device, revoke) {
                (Some(name), _, true) => (AdminOp::IdentityRevoke, name),
                (Some(name), _, false) => (AdminOp::IdentityRestore, name),
                (None, Some(device), true) => (AdminOp::DeviceRevoke, device),
                (None, Some(device), false) => (AdminOp::DeviceRestore, device),
                (None, None, _) => return Err("give --name or --device".into()),
            };
            c.command = op;
            c.identity = Some(text.clone());
        }
    }
    let req = sign(&secret, &c)?;
    let timeout = Duration::from_secs(args.timeout);
    let answer = match (args.domid, &args.socket, &args.world) {
        (Some(domid), _, _) => {
            let mut link = xenlink::connect(domid, port::CRYPTOD, timeout)
                .map_err(|e| format!("cryptod (domain {domid}): {e}"))?;
            exchange(&mut link, &req, timeout)?
        }
        (None, Some(path), _) => exchange(&mut socket::connect(path, timeout)?, &req, timeout)?,
        (None, None, Some(dir)) => hosted_exchange(dir, &req, timeout)?,
        (None, None, None) => {
            return Err(Failure::Error("--domid, --socket or --world is required".into()))
        }
    };
    let Message::AdminResp(r) = answer else {
        return Err(Failure::Error(format!("cryptod answered {}", answer.kind().as_str())));
    };
    if r.request_id != c.request_id {
        return Err(Failure::Error("cryptod answered another request".into()));
    }
    let reason = r.reason.as_deref().unwrap_or("");
    if r.result != AdminResult::Ok {
        let last =
            r.admin_seq.map(|s| format!("; last accepted admin_seq {s}")).unwrap_or_default();
        return Err(Failure::Invalid(format!(
            "admin: refused: {} ({reason}){last}",
            r.result.as_str()
        )));
    }
    let hexed = c.kid.as_ref().or(c.cti.as_ref()).map(hex::encode);
    let about = c.operator_id.as_deref().or(c.volume_id.as_deref()).or(c.identity.as_deref());
    let about = about.or(hexed.as_deref()).unwrap_or("");
    println!("admin: ok: {} {about} (admin_seq {seq})", c.command.as_str());
    if let Some((codes, out)) = shown {
        show_codes(about, &codes, out.as_deref())?;
    }
    match &args.command {
        AdminCmd::VolumeAdd(v) => {
            let (Some(key), Some(sealed)) = (volume_key, r.unlock_secret.as_ref()) else {
                return Err(Failure::Error("cryptod sent no sealed passphrase".into()));
            };
            let text = key.open(&req, &v.name, sealed)?;
            match (&v.device, &existing) {
                (Some(dev), Some(existing)) => {
                    let slot = volumes_cmd::enrol(dev, &v.name, &text, existing)?;
                    println!(
                        "enrolled volume {:?} into {} (key slot {slot})",
                        v.name,
                        dev.display()
                    );
                }
                _ => {
                    println!("LUKS passphrase of volume {:?} (shown once; add it with `cryptsetup luksAddKey`):", v.name);
                    println!("  {}", text.as_str());
                }
            }
        }
        AdminCmd::VolumeRemove(v) => {
            if let Some(dev) = &v.device {
                let killed = volumes_cmd::unbind(dev, &v.name, existing.as_ref())?;
                println!(
                    "unbound volume {:?} from {} (key slots wiped: {})",
                    v.name,
                    dev.display(),
                    if killed.is_empty() { "none".into() } else { killed.join(",") }
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Fills in a key command: its op and its one field (hex on the command line).
fn key_command(cmd: &AdminCmd, c: &mut AdminCommand) -> Result<(), Failure> {
    let bytes = |what: &str, text: &str, max: usize| -> Result<Vec<u8>, Failure> {
        match hex::decode(text) {
            Ok(b) if !b.is_empty() && b.len() <= max => Ok(b),
            _ => Err(Failure::Error(format!("--{what}: 1 to {max} bytes of hex"))),
        }
    };
    match cmd {
        AdminCmd::KeyRotate => c.command = AdminOp::KeyRotate,
        AdminCmd::RootRotate => c.command = AdminOp::RootRotate,
        AdminCmd::KeyRevoke { kid } => {
            c.command = AdminOp::KeyRevoke;
            c.kid = Some(bytes("kid", kid, MAX_KID_LEN)?);
        }
        AdminCmd::TokenRevoke { cti } => {
            c.command = AdminOp::TokenRevoke;
            c.cti = Some(bytes("cti", cti, MAX_CTI_LEN)?);
        }
        _ => return Err(Failure::Error("not a key command".into())),
    }
    Ok(())
}

/// The signed `admin_req` for `c` (COSE_Sign1, content type admin_command,
/// kid derived from the admin public key, which is what cryptod looks up).
fn sign(key: &SigningKey, c: &AdminCommand) -> Result<Message, Failure> {
    let payload = Zeroizing::new(c.to_cbor().map_err(|e| format!("admin command: {e}"))?);
    let kid = kid_for(&key.verifying_key());
    let signed = cose::sign(key, &kid, ContentType::AdminCommand, &payload)
        .map_err(|e| format!("signing: {e}"))?;
    Ok(AdminReq { request_id: c.request_id, signed }.into())
}

fn exchange<C: Channel>(
    link: &mut Framed<C>,
    req: &Message,
    timeout: Duration,
) -> Result<Message, Failure> {
    link.call(req, timeout).map_err(|e| Failure::Error(format!("cryptod: {e}")))
}

/// On the hosted platform: as domain 0 of the world at `dir`, to its `cryptod`.
fn hosted_exchange(dir: &Path, req: &Message, timeout: Duration) -> Result<Message, Failure> {
    use portcullis_hosted::{HostedPlatform, World};
    use portcullis_platform::DomId;
    let world = World::open(dir).map_err(|e| format!("world {}: {e}", dir.display()))?;
    let cryptod = world
        .resolve("cryptod")
        .map_err(|e| format!("world: {e}"))?
        .ok_or("world: no domain cryptod")?;
    let mut p = HostedPlatform::open(world, DomId(0)).map_err(|e| format!("world: {e}"))?;
    let mut link = portcullis_apps::net::connect(&mut p, cryptod, port::CRYPTOD, timeout)
        .map_err(|e| format!("cryptod: {e}"))?;
    exchange(&mut link, req, timeout)
}
