//! `portcullis unlock-agent`: the dom0 side of an unlock. It accepts an
//! `unlock_request` from the unlocker only with a `luks:unlock` token that
//! verifies against cryptod's root-signed keyset (fetched fresh, with the
//! revocation list, for each request), then feeds the secret to cryptsetup on
//! standard input: `cryptsetup open` for a real unlock, or
//! `cryptsetup open --test-passphrase` in dry-run mode.
//!
//! It runs on the hosted platform (`--world`) or, in a Xen dom0, behind
//! Xen's `vchan-socket-proxy`: `--socket` is where the proxy (vchan server
//! for the unlocker) connects for each unlocker connection, `--cryptod-socket`
//! where a second proxy (vchan client of cryptod) listens.

use crate::socket::{self, SocketLink};
use crate::{keyfile, Failure};
use clap::Args;
use portcullis_apps::common::{port, resolve_dom, CALL_TIMEOUT};
use portcullis_apps::link::{Channel, Framed, LinkError};
use portcullis_apps::net::{connect, serve};
use portcullis_apps::trust::Trust;
use portcullis_hosted::{HostedPlatform, World};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{RequestId, UnlockOutcome, UnlockRequest, UnlockResult};
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
    #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
    world: Option<PathBuf>,
    /// Instead of a hosted world: listen on this UNIX socket for the
    /// unlocker's connections (Xen's vchan-socket-proxy in server mode
    /// connects here).
    #[arg(long, requires = "cryptod_socket")]
    socket: Option<PathBuf>,
    /// With --socket: the UNIX socket relaying to cryptod (vchan-socket-proxy
    /// in client mode), for the keyset and revocation list.
    #[arg(long)]
    cryptod_socket: Option<PathBuf>,
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

fn refresh<C: Channel>(link: &mut Framed<C>, trust: &mut Trust) -> Result<(), String> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| format!("OS random source: {e}"))?;
    trust.fetch_keyset(link, RequestId(id), CALL_TIMEOUT).map_err(|e| format!("cryptod: {e}"))?;
    trust.fetch_revocations(link, RequestId(id), CALL_TIMEOUT).map_err(|e| format!("cryptod: {e}"))
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

/// The agent's fixed inputs and its replay memory.
struct Agent {
    args: AgentArgs,
    volumes: HashMap<String, String>,
    trust: Trust,
    replay: MemoryReplayCache,
}

pub fn run(args: AgentArgs) -> Result<(), Failure> {
    let mut volumes = HashMap::new();
    for v in &args.volumes {
        let (id, path) = v.split_once('=').ok_or_else(|| format!("--volume {v}: use ID=PATH"))?;
        volumes.insert(id.to_string(), path.to_string());
    }
    let root = keyfile::load(&args.root)?;
    let trust = Trust::new(root.public, &root.kid);
    let mut agent = Agent { args, volumes, trust, replay: MemoryReplayCache::new(1024) };
    match (agent.args.socket.clone(), agent.args.cryptod_socket.clone()) {
        (Some(listen), Some(cryptod)) => run_sockets(&mut agent, &listen, &cryptod),
        _ => run_world(&mut agent),
    }
}

fn ready_line(agent: &Agent) {
    println!(
        "unlock-agent: ready ({} volume(s){})",
        agent.volumes.len(),
        if agent.args.dry_run { ", dry run" } else { "" }
    );
}

/// On the hosted platform: vchans in a world directory.
fn run_world(agent: &mut Agent) -> Result<(), Failure> {
    let world_dir = agent.args.world.clone().ok_or("--world or --socket is required")?;
    let world =
        World::open(&world_dir).map_err(|e| format!("world {}: {e}", world_dir.display()))?;
    let dom = world
        .resolve(&agent.args.domain)
        .map_err(|e| format!("world: {e}"))?
        .ok_or_else(|| format!("no domain {:?} in the world", agent.args.domain))?;
    let mut p = HostedPlatform::open(world, dom).map_err(|e| format!("platform: {e}"))?;
    let client = resolve_dom(&mut p, &agent.args.client).map_err(|e| e.to_string())?;
    let cryptod_dom = resolve_dom(&mut p, &agent.args.cryptod).map_err(|e| e.to_string())?;
    let mut listen = serve(&mut p, client, port::UNLOCK_AGENT).map_err(|e| e.to_string())?;
    let mut cryptod = connect(&mut p, cryptod_dom, port::CRYPTOD, Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    ready_line(agent);
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
        if answer(agent, &mut listen, &mut cryptod, msg) {
            return Ok(());
        }
    }
}

/// In a Xen dom0: each connection on `listen` is one unlocker vchan
/// connection relayed by vchan-socket-proxy; cryptod is reached through
/// another proxy at `cryptod_path`.
fn run_sockets(
    agent: &mut Agent,
    listen_path: &std::path::Path,
    cryptod_path: &std::path::Path,
) -> Result<(), Failure> {
    let listener = socket::listen(listen_path)?;
    let mut cryptod: SocketLink = socket::connect(cryptod_path, Duration::from_secs(60))?;
    // Check the path to cryptod works before saying ready.
    refresh(&mut cryptod, &mut agent.trust)
        .map_err(|e| format!("cryptod via {}: {e}", cryptod_path.display()))?;
    ready_line(agent);
    loop {
        let (stream, _) =
            listener.accept().map_err(|e| format!("{}: {e}", listen_path.display()))?;
        println!("unlock-agent: connection from the proxy");
        let mut link = SocketLink::new(socket::SocketChannel::new(stream));
        loop {
            let msg = match link.recv_blocking(Duration::from_millis(500)) {
                Ok(m) => m,
                Err(LinkError::Timeout) => continue,
                Err(e) => {
                    println!("unlock-agent: link: {e}; listening again");
                    break;
                }
            };
            // The relay to cryptod ends when cryptod (or its proxy) goes
            // away: connect again before using it.
            if cryptod.channel().is_ended() {
                println!("unlock-agent: reconnecting to cryptod");
                cryptod = socket::connect(cryptod_path, Duration::from_secs(10))?;
            }
            if answer(agent, &mut link, &mut cryptod, msg) {
                return Ok(());
            }
        }
    }
}

/// Handles one message from the unlocker and replies; returns whether the
/// agent is done (`--once` and a volume was opened).
fn answer<L: Channel, K: Channel>(
    agent: &mut Agent,
    listen: &mut Framed<L>,
    cryptod: &mut Framed<K>,
    msg: Message,
) -> bool {
    let Message::UnlockRequest(req) = msg else {
        println!("unlock-agent: ignoring a {}", msg.kind().as_str());
        return false;
    };
    let (result, reason) = handle(cryptod, agent, &req);
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
    agent.args.once && result == UnlockOutcome::Ok
}

fn handle<K: Channel>(
    cryptod: &mut Framed<K>,
    agent: &mut Agent,
    req: &UnlockRequest,
) -> (UnlockOutcome, String) {
    let Agent { args, volumes, trust, replay } = agent;
    let Some(path) = volumes.get(&req.volume_id) else {
        return (UnlockOutcome::Denied, "unknown volume".into());
    };
    if let Err(e) = refresh(cryptod, trust) {
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
        Ok((true, _)) if args.dry_run => (
            UnlockOutcome::Ok,
            "(passphrase verified with cryptsetup open --test-passphrase)".into(),
        ),
        Ok((true, _)) => (UnlockOutcome::Ok, format!("(opened as /dev/mapper/{name})")),
        Ok((false, err)) => (UnlockOutcome::Fail, err),
        Err(e) => (UnlockOutcome::Fail, e),
    }
}
