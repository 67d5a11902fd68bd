//! `portcullis unlock-agent`: the dom0 side of an unlock. It accepts an
//! `unlock_request` from the unlocker only with a `luks:unlock` token that
//! verifies against cryptod's root-signed keyset (fetched fresh, with the
//! revocation list, for each request), then feeds the secret to cryptsetup on
//! standard input: `cryptsetup open` for a real unlock, or
//! `cryptsetup open --test-passphrase` in dry-run mode.

use crate::{keyfile, Failure};
use clap::Args;
use portcullis_apps::common::{port, resolve_dom, CALL_TIMEOUT};
use portcullis_apps::link::{Link, LinkError};
use portcullis_apps::net::{connect, serve};
use portcullis_apps::trust::Trust;
use portcullis_hosted::{HostedBackend, HostedPlatform, World};
use portcullis_platform::Platform;
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{KeysetReq, RequestId, RevocationListReq, UnlockOutcome, UnlockRequest, UnlockResult};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

#[derive(Args)]
pub struct AgentArgs {
    /// The hosted world directory (from the launcher).
    #[arg(long)]
    world: PathBuf,
    /// This agent's domain name in the world.
    #[arg(long, default_value = "unlock_agent")]
    domain: String,
    /// The audience this agent answers to in tokens.
    #[arg(long, default_value = "unlock_agent")]
    audience: String,
    /// The unlocker's domain name (the only client served).
    #[arg(long, default_value = "unlocker")]
    client: String,
    /// cryptod's domain name (for the keyset and revocation list).
    #[arg(long, default_value = "cryptod")]
    cryptod: String,
    /// cryptod's root public key (root.pub from `portcullis provision`).
    #[arg(long)]
    root: PathBuf,
    /// A volume: ID=PATH (a LUKS device or file); may be repeated.
    #[arg(long = "volume", required = true)]
    volumes: Vec<String>,
    /// Only check the passphrase (`cryptsetup open --test-passphrase`).
    #[arg(long)]
    dry_run: bool,
    /// Exit after the first volume is opened.
    #[arg(long)]
    once: bool,
    /// Allowed clock skew, seconds.
    #[arg(long, default_value_t = 30)]
    skew: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn refresh(p: &mut HostedPlatform, link: &mut Link<HostedBackend>, trust: &mut Trust) -> Result<(), String> {
    let mut id = [0u8; 16];
    p.hw_entropy(&mut id).map_err(|e| e.to_string())?;
    match link.call(&Message::KeysetReq(KeysetReq { request_id: RequestId(id) }), CALL_TIMEOUT) {
        Ok(Message::Keyset(k)) => trust.accept_keyset(&k.signed).map_err(|e| format!("keyset: {e}"))?,
        Ok(other) => return Err(format!("expected keyset, got {}", other.kind().as_str())),
        Err(e) => return Err(format!("cryptod: {e}")),
    }
    match link.call(&Message::RevocationListReq(RevocationListReq { request_id: RequestId(id) }), CALL_TIMEOUT) {
        Ok(Message::RevocationList(l)) => trust.accept_revocations(&l.signed).map_err(|e| format!("revocations: {e}")),
        Ok(other) => Err(format!("expected revocation list, got {}", other.kind().as_str())),
        Err(e) => Err(format!("cryptod: {e}")),
    }
}

/// Runs cryptsetup with the key on standard input; returns success and stderr.
fn cryptsetup(args: &[&str], key: &[u8]) -> Result<(bool, String), String> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cryptsetup: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key);
    }
    let out = child.wait_with_output().map_err(|e| format!("cryptsetup: {e}"))?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string()))
}

pub fn run(args: AgentArgs) -> Result<(), Failure> {
    let mut volumes = HashMap::new();
    for v in &args.volumes {
        let (id, path) = v.split_once('=').ok_or_else(|| format!("--volume {v}: use ID=PATH"))?;
        volumes.insert(id.to_string(), path.to_string());
    }
    let root = keyfile::load(&args.root)?;
    let mut trust = Trust::new(root.public, &root.kid);
    let world = World::open(&args.world).map_err(|e| format!("world {}: {e}", args.world.display()))?;
    let dom = world
        .resolve(&args.domain)
        .map_err(|e| format!("world: {e}"))?
        .ok_or_else(|| format!("no domain {:?} in the world", args.domain))?;
    let mut p = HostedPlatform::open(world, dom).map_err(|e| format!("platform: {e}"))?;
    let client = resolve_dom(&mut p, &args.client).map_err(|e| e.to_string())?;
    let cryptod_dom = resolve_dom(&mut p, &args.cryptod).map_err(|e| e.to_string())?;
    let mut listen = serve(&mut p, client, port::UNLOCK_AGENT).map_err(|e| e.to_string())?;
    let mut cryptod = connect(&mut p, cryptod_dom, port::CRYPTOD, Duration::from_secs(60)).map_err(|e| e.to_string())?;
    let mut replay = MemoryReplayCache::new(1024);
    println!("unlock-agent: ready ({} volume(s){})", volumes.len(), if args.dry_run { ", dry run" } else { "" });
    loop {
        if !listen.is_open() {
            listen.reinit().map_err(|e| e.to_string())?;
        }
        let msg = match listen.recv_blocking(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(LinkError::Timeout) => continue,
            Err(e) => {
                println!("unlock-agent: link: {e}; listening again");
                listen.reinit().map_err(|e| e.to_string())?;
                continue;
            }
        };
        let Message::UnlockRequest(req) = msg else {
            println!("unlock-agent: ignoring a {}", msg.kind().as_str());
            continue;
        };
        let (result, reason) = handle(&mut p, &mut cryptod, &mut trust, &mut replay, &args, &volumes, &req);
        println!("unlock-agent: volume {}: {} {reason}", req.volume_id, result.as_str());
        let answer = Message::UnlockResult(UnlockResult {
            request_id: req.request_id,
            result,
            reason: Some(reason),
        });
        drop(req); // zeroizes the passphrase
        if let Err(e) = listen.send_blocking(&answer, Duration::from_secs(5)) {
            println!("unlock-agent: reply: {e}");
        }
        if args.once && result == UnlockOutcome::Ok {
            return Ok(());
        }
    }
}

fn handle(
    p: &mut HostedPlatform,
    cryptod: &mut Link<HostedBackend>,
    trust: &mut Trust,
    replay: &mut MemoryReplayCache,
    args: &AgentArgs,
    volumes: &HashMap<String, String>,
    req: &UnlockRequest,
) -> (UnlockOutcome, String) {
    let Some(path) = volumes.get(&req.volume_id) else {
        return (UnlockOutcome::Denied, "unknown volume".into());
    };
    if let Err(e) = refresh(p, cryptod, trust) {
        return (UnlockOutcome::Denied, format!("cannot check the token: {e}"));
    }
    let expect = Expectations {
        audience: &args.audience,
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: now(),
        skew: args.skew,
    };
    if let Err(e) = token::verify(&req.token, trust.keyset(), &expect, replay, trust.revoked()) {
        return (UnlockOutcome::Denied, format!("token refused: {} ({})", e, e.code()));
    }
    // The LUKS key text is the lowercase hex of the 32-byte secret.
    let key = Zeroizing::new(hex::encode(&req.passphrase[..]));
    let name = format!("portcullis-{}", req.volume_id);
    let run = if args.dry_run {
        cryptsetup(&["open", "--test-passphrase", "--key-file=-", path], key.as_bytes())
    } else {
        cryptsetup(&["open", "--type", "luks", "--key-file=-", path, &name], key.as_bytes())
    };
    match run {
        Ok((true, _)) if args.dry_run => {
            (UnlockOutcome::Ok, "(passphrase verified with cryptsetup open --test-passphrase)".into())
        }
        Ok((true, _)) => (UnlockOutcome::Ok, format!("(opened as /dev/mapper/{name})")),
        Ok((false, err)) => (UnlockOutcome::Fail, err),
        Err(e) => (UnlockOutcome::Fail, e),
    }
}
