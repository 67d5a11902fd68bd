//! `portcullis unlock-agent`: the dom0 side of an unlock. It accepts an
//! `unlock_request` from the unlocker only with a `luks:unlock` token that
//! verifies against cryptod's root-signed keyset (fetched fresh, with the
//! revocation list, for each request), then feeds the secret to cryptsetup on
//! standard input: `cryptsetup open` for a real unlock, or
//! `cryptsetup open --test-passphrase` in dry-run mode.
//!
//! As a command it runs on the hosted platform (`--world`) or, in a Xen
//! dom0, behind Xen's `vchan-socket-proxy`: `--socket` is where the proxy
//! (vchan server for the unlocker) connects for each unlocker connection,
//! `--cryptod-socket` where a second proxy (vchan client of cryptod)
//! listens. The dom0 host service runs the same [`Agent`] over Xen's own
//! libxenvchan instead (`host::links::run_agent`), with a transient
//! [`Upstream`] that holds cryptod's dom0 port only for a request.
//!
//! cryptod may restart (or be destroyed and created again) while the agent
//! runs. The link to it is then connected again: at once when a request
//! finds it broken, and between requests with a bounded exponential backoff
//! ([`BACKOFF_FIRST`] doubling up to [`BACKOFF_MAX`]). Every (re)connection
//! fetches the keyset and revocation list again. The agent keeps one
//! [`Trust`] for its whole life, and `Trust` refuses a keyset or revocation
//! list older than the one it holds, so a restarted cryptod is believed
//! only if its versions did not go back.

use crate::socket::{self, SocketLink};
use crate::{keyfile, Failure};
use clap::Args;
use portcullis_apps::common::{port, resolve_dom, AppError, CALL_TIMEOUT};
use portcullis_apps::link::{Channel, Framed, LinkError};
use portcullis_apps::net::{connect, serve};
use portcullis_apps::trust::Trust;
use portcullis_hosted::{HostedBackend, HostedPlatform, World};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    Enforced, OutcomeClaims, OutcomeReport, OutcomeResult, RequestId, UnlockOutcome, UnlockRequest,
    UnlockResult, MAX_METADATA_VALUE_LEN,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache};
use portcullis_vchan::Vchan;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// The agent's outcome key (a private key file from `portcullis
    /// keygen`; its public half is pinned in cryptod's `outcome_key`
    /// setting): after each unlock whose token verified, the agent signs
    /// what happened (opened / failed) and reports it to cryptod, which
    /// appends it to the audit log.
    #[arg(long)]
    outcome_key: Option<PathBuf>,
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

/// Why fetching cryptod's keyset and revocation list failed.
#[derive(Debug)]
enum RefreshError {
    /// The link to cryptod failed (gone, timed out): worth reconnecting.
    Link(String),
    /// cryptod answered, but not with something we accept (or we could
    /// not ask): reconnecting would not help.
    Refused(String),
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefreshError::Link(e) | RefreshError::Refused(e) => write!(f, "cryptod: {e}"),
        }
    }
}

fn refresh_error(e: AppError) -> RefreshError {
    match e {
        AppError::Link(_) => RefreshError::Link(e.to_string()),
        other => RefreshError::Refused(other.to_string()),
    }
}

fn refresh<C: Channel>(link: &mut Framed<C>, trust: &mut Trust) -> Result<(), RefreshError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)
        .map_err(|e| RefreshError::Refused(format!("OS random source: {e}")))?;
    trust.fetch_keyset(link, RequestId(id), CALL_TIMEOUT).map_err(refresh_error)?;
    trust.fetch_revocations(link, RequestId(id), CALL_TIMEOUT).map_err(refresh_error)
}

/// First pause before connecting to cryptod again after a failed attempt.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Longest pause between attempts to connect to cryptod.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a request waits for cryptod to be reachable again.
const REQUEST_PATIENCE: Duration = Duration::from_secs(3);
/// How long an outcome report waits for cryptod's answer (which waits
/// for the collector).
const OUTCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounded exponential backoff between connection attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    pause: Duration,
    not_before: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { pause: BACKOFF_FIRST, not_before: None }
    }

    /// Whether an attempt may be made at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// An attempt at `now` failed: wait before the next, longer each time.
    pub(crate) fn failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.pause);
        self.pause = (self.pause * 2).min(BACKOFF_MAX);
    }

    pub(crate) fn succeeded(&mut self) {
        *self = Backoff::new();
    }
}

/// How the agent reaches cryptod.
pub(crate) trait Dial {
    type Chan: Channel;
    /// Connects, waiting up to `patience` for cryptod to be there.
    fn dial(&mut self, patience: Duration) -> Result<Framed<Self::Chan>, String>;
    /// Whether a link still reaches the cryptod it was made to.
    fn is_up(link: &mut Framed<Self::Chan>) -> bool;
}

/// On the hosted platform: a vchan to the domain named `name`, looked up
/// again on every attempt (a recreated cryptod may have a new id).
struct WorldDial {
    p: HostedPlatform,
    name: String,
}

impl Dial for WorldDial {
    type Chan = Vchan<HostedBackend>;

    fn dial(&mut self, patience: Duration) -> Result<Framed<Self::Chan>, String> {
        let dom = resolve_dom(&mut self.p, &self.name).map_err(|e| e.to_string())?;
        connect(&mut self.p, dom, port::CRYPTOD, patience).map_err(|e| e.to_string())
    }

    fn is_up(link: &mut Framed<Self::Chan>) -> bool {
        link.is_open()
    }
}

/// In a Xen dom0: the UNIX socket of the vchan-socket-proxy relaying to cryptod.
struct SocketDial {
    path: PathBuf,
}

impl Dial for SocketDial {
    type Chan = socket::SocketChannel;

    fn dial(&mut self, patience: Duration) -> Result<SocketLink, String> {
        socket::connect(&self.path, patience)
    }

    fn is_up(link: &mut SocketLink) -> bool {
        !link.channel().is_ended()
    }
}

/// The link to cryptod, connected again when cryptod goes away; every
/// new connection refreshes the agent's trust.
///
/// A transient upstream holds no link between requests: each request
/// connects, fetches keyset and revocations, and closes, so other dom0
/// tools can use cryptod's one dom0 connection in between.
pub(crate) struct Upstream<D: Dial> {
    dial: D,
    link: Option<Framed<D::Chan>>,
    backoff: Backoff,
    transient: bool,
}

impl<D: Dial> Upstream<D> {
    fn new(dial: D) -> Self {
        Upstream { dial, link: None, backoff: Backoff::new(), transient: false }
    }

    /// An upstream that connects only for a request (see the type's doc).
    pub(crate) fn transient(dial: D) -> Self {
        Upstream { dial, link: None, backoff: Backoff::new(), transient: true }
    }

    /// Connects and fetches keyset and revocations; keeps the link unless
    /// it failed.
    fn connect(&mut self, trust: &mut Trust, patience: Duration) -> Result<(), RefreshError> {
        let mut link = match self.dial.dial(patience) {
            Ok(link) => link,
            Err(e) => {
                self.backoff.failed(Instant::now());
                return Err(RefreshError::Link(e));
            }
        };
        let fetched = refresh(&mut link, trust);
        match &fetched {
            Err(RefreshError::Link(_)) => self.backoff.failed(Instant::now()),
            _ => {
                self.backoff.succeeded();
                if !self.transient {
                    self.link = Some(link);
                }
            }
        }
        fetched
    }

    /// Between requests: drops a link whose cryptod went away and, when
    /// the backoff allows, connects again (refreshing trust).
    fn tick(&mut self, trust: &mut Trust) {
        if self.transient {
            return;
        }
        if self.link.as_mut().is_some_and(|l| !D::is_up(l)) {
            println!("unlock-agent: cryptod went away; connecting again");
            self.link = None;
        }
        if self.link.is_none() && self.backoff.due(Instant::now()) {
            match self.connect(trust, Duration::ZERO) {
                Ok(()) => println!("unlock-agent: connected to cryptod again; trust refreshed"),
                Err(RefreshError::Refused(e)) => {
                    println!("unlock-agent: connected to cryptod again, but: {e}")
                }
                Err(RefreshError::Link(_)) => {}
            }
        }
    }

    /// Sends `msg` to cryptod and waits for the answer (cryptod holds an
    /// audited answer until the collector stored its record): over the
    /// link, or over a new connection (a transient upstream's, closed after).
    fn call(&mut self, msg: &Message) -> Result<Message, String> {
        if let Some(link) = self.link.as_mut() {
            match link.call(msg, OUTCOME_TIMEOUT) {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    println!("unlock-agent: cryptod link: {e}; connecting again");
                    self.link = None;
                }
            }
        }
        let mut link = self.dial.dial(REQUEST_PATIENCE)?;
        let answer = link.call(msg, OUTCOME_TIMEOUT).map_err(|e| e.to_string());
        if !self.transient && answer.is_ok() {
            self.link = Some(link);
        }
        answer
    }

    /// For a request: fetches keyset and revocations over the link, or,
    /// if it is gone or fails, over a new one.
    fn refresh(&mut self, trust: &mut Trust) -> Result<(), RefreshError> {
        if let Some(link) = self.link.as_mut() {
            match refresh(link, trust) {
                Err(RefreshError::Link(e)) => {
                    println!("unlock-agent: cryptod link: {e}; connecting again");
                    self.link = None;
                }
                done => return done,
            }
        }
        if !self.transient {
            return self.connect(trust, REQUEST_PATIENCE);
        }
        // A fresh connection per request: cryptod may still be tearing down
        // the previous dom0 connection, so a link failure is tried again
        // until the request's patience runs out.
        let deadline = Instant::now() + REQUEST_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.connect(trust, left) {
                Err(RefreshError::Link(e)) if Instant::now() >= deadline => {
                    return Err(RefreshError::Link(e))
                }
                Err(RefreshError::Link(_)) => std::thread::sleep(BACKOFF_FIRST.min(left)),
                done => return done,
            }
        }
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

/// The agent's fixed inputs, its trust in cryptod and its replay memory;
/// the same whatever channels carry the requests (hosted world, sockets,
/// libxenvchan in the dom0 host service).
pub(crate) struct Agent {
    /// The audience this agent answers to in tokens.
    pub(crate) audience: String,
    /// Volume id to LUKS device or file.
    pub(crate) volumes: HashMap<String, String>,
    /// Only check the passphrase.
    pub(crate) dry_run: bool,
    /// Stop after the first volume opened.
    pub(crate) once: bool,
    /// Allowed clock skew, seconds.
    pub(crate) skew: u64,
    /// cryptod's root key, keyset and revocation list.
    pub(crate) trust: Trust,
    /// Token ids seen.
    pub(crate) replay: MemoryReplayCache,
    /// The key outcomes are signed with (none: no outcome reports).
    pub(crate) outcome_key: Option<ed25519_dalek::SigningKey>,
}

impl Agent {
    /// An agent trusting `root` for `volumes`.
    pub(crate) fn new(
        root: &keyfile::LoadedKey,
        volumes: HashMap<String, String>,
        dry_run: bool,
        skew: u64,
    ) -> Agent {
        Agent {
            audience: "unlock_agent".into(),
            volumes,
            dry_run,
            once: false,
            skew,
            trust: Trust::new(root.public, &root.kid),
            replay: MemoryReplayCache::new(1024),
            outcome_key: None,
        }
    }
}

pub fn run(args: AgentArgs) -> Result<(), Failure> {
    let mut volumes = HashMap::new();
    for v in &args.volumes {
        let (id, path) = v.split_once('=').ok_or_else(|| format!("--volume {v}: use ID=PATH"))?;
        volumes.insert(id.to_string(), path.to_string());
    }
    let root = keyfile::load(&args.root)?;
    let mut agent = Agent::new(&root, volumes, args.dry_run, args.skew);
    agent.audience = args.audience.clone();
    agent.once = args.once;
    if let Some(path) = &args.outcome_key {
        let key = keyfile::load(path)?;
        let secret = key.secret.ok_or_else(|| format!("{}: not a private key", path.display()))?;
        agent.outcome_key = Some(secret);
    }
    match (args.socket.clone(), args.cryptod_socket.clone()) {
        (Some(listen), Some(cryptod)) => run_sockets(&mut agent, &listen, &cryptod),
        _ => run_world(&mut agent, &args),
    }
}

fn ready_line(agent: &Agent) {
    println!(
        "unlock-agent: ready ({} volume(s){})",
        agent.volumes.len(),
        if agent.dry_run { ", dry run" } else { "" }
    );
}

/// On the hosted platform: vchans in a world directory.
fn run_world(agent: &mut Agent, args: &AgentArgs) -> Result<(), Failure> {
    let world_dir = args.world.clone().ok_or("--world or --socket is required")?;
    let world =
        World::open(&world_dir).map_err(|e| format!("world {}: {e}", world_dir.display()))?;
    let dom = world
        .resolve(&args.domain)
        .map_err(|e| format!("world: {e}"))?
        .ok_or_else(|| format!("no domain {:?} in the world", args.domain))?;
    let mut p = HostedPlatform::open(world, dom).map_err(|e| format!("platform: {e}"))?;
    let client = resolve_dom(&mut p, &args.client).map_err(|e| e.to_string())?;
    let mut listen = serve(&mut p, client, port::UNLOCK_AGENT).map_err(|e| e.to_string())?;
    let mut cryptod = Upstream::new(WorldDial { p, name: args.cryptod.clone() });
    let first = cryptod.dial.dial(Duration::from_secs(60))?;
    cryptod.link = Some(first);
    ready_line(agent);
    loop {
        if !listen.is_open() {
            listen.reinit().map_err(|e| e.to_string())?;
        }
        cryptod.tick(&mut agent.trust);
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
    let mut cryptod = Upstream::new(SocketDial { path: cryptod_path.to_path_buf() });
    // Check the path to cryptod works before saying ready.
    cryptod
        .connect(&mut agent.trust, Duration::from_secs(60))
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
            // away: `handle` connects again before using it.
            if answer(agent, &mut link, &mut cryptod, msg) {
                return Ok(());
            }
        }
    }
}

/// Handles one message from the unlocker and replies; returns whether the
/// agent is done (`--once` and a volume was opened).
pub(crate) fn answer<L: Channel, D: Dial>(
    agent: &mut Agent,
    listen: &mut Framed<L>,
    cryptod: &mut Upstream<D>,
    msg: Message,
) -> bool {
    let Message::UnlockRequest(req) = msg else {
        println!("unlock-agent: ignoring a {}", msg.kind().as_str());
        return false;
    };
    let (result, reason, cti) = handle(cryptod, agent, &req);
    println!("unlock-agent: volume {}: {} {reason}", req.volume_id, result.as_str());
    let answer = Message::UnlockResult(UnlockResult {
        request_id: req.request_id,
        result,
        reason: Some(reason.clone()),
    });
    drop(req); // zeroizes the passphrase
    if let Err(e) = listen.send_blocking(&answer, Duration::from_secs(5)) {
        println!("unlock-agent: reply: {e}");
    }
    // What was enforced goes to the audit log too, signed by the agent.
    if let (Some(key), Some(cti)) = (&agent.outcome_key, cti) {
        let outcome = if result == UnlockOutcome::Ok { Enforced::Opened } else { Enforced::Failed };
        match report_outcome(cryptod, key, &agent.audience, cti, outcome, &reason) {
            Ok(()) => println!("unlock-agent: outcome {} recorded", outcome.as_str()),
            Err(e) => println!("unlock-agent: outcome not recorded: {e}"),
        }
    }
    agent.once && result == UnlockOutcome::Ok
}

/// Signs an outcome of the decision `cti` and reports it to cryptod; Ok
/// once cryptod answers `recorded` (after the collector stored it).
fn report_outcome<D: Dial>(
    cryptod: &mut Upstream<D>,
    key: &ed25519_dalek::SigningKey,
    enforcer: &str,
    cti: Vec<u8>,
    outcome: Enforced,
    reason: &str,
) -> Result<(), String> {
    // A reason is at most 256 bytes in the signed claims (cut at a char).
    let mut cut = reason.len().min(MAX_METADATA_VALUE_LEN);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let claims = OutcomeClaims {
        decision: cti,
        enforcer: enforcer.into(),
        outcome,
        timestamp: now(),
        reason: (outcome == Enforced::Failed).then(|| reason[..cut].to_string()),
    };
    let payload = claims.to_cbor().map_err(|e| e.to_string())?;
    let kid = kid_for(&key.verifying_key());
    let signed =
        cose::sign(key, &kid, ContentType::Outcome, &payload).map_err(|e| e.to_string())?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| format!("OS random source: {e}"))?;
    let msg = Message::OutcomeReport(OutcomeReport {
        request_id: RequestId(id),
        signed,
        attestation: None,
    });
    match cryptod.call(&msg)? {
        Message::OutcomeResp(r) if r.request_id.0 == id && r.result == OutcomeResult::Recorded => {
            Ok(())
        }
        Message::OutcomeResp(r) => {
            Err(format!("cryptod: {} ({})", r.result.as_str(), r.reason.as_deref().unwrap_or("")))
        }
        other => Err(format!("cryptod answered {}", other.kind().as_str())),
    }
}

/// The unlock itself: the volume, the token, cryptsetup; with the token's
/// id once it verified (the decision an outcome reports on).
fn handle<D: Dial>(
    cryptod: &mut Upstream<D>,
    agent: &mut Agent,
    req: &UnlockRequest,
) -> (UnlockOutcome, String, Option<Vec<u8>>) {
    let Agent { audience, volumes, dry_run, skew, trust, replay, .. } = agent;
    let Some(path) = volumes.get(&req.volume_id) else {
        return (UnlockOutcome::Denied, "unknown volume".into(), None);
    };
    if let Err(e) = cryptod.refresh(trust) {
        return (UnlockOutcome::Denied, format!("cannot check the token: {e}"), None);
    }
    let expect = Expectations {
        audience: audience.as_str(),
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: now(),
        skew: *skew,
    };
    let cti = match token::verify(&req.token, trust.keyset(), &expect, replay, trust.revoked()) {
        Ok(claims) => claims.into_inner().cti,
        Err(e) => {
            return (UnlockOutcome::Denied, format!("token refused: {} ({})", e, e.code()), None)
        }
    };
    // The LUKS key text is the lowercase hex of the 32-byte secret.
    let key = Zeroizing::new(hex::encode(&req.passphrase[..]));
    let name = format!("portcullis-{}", req.volume_id);
    let run = if *dry_run {
        cryptsetup(&["open", "--test-passphrase", "--key-file=-", path], key.as_bytes())
    } else {
        cryptsetup(&["open", "--type", "luks", "--key-file=-", path, &name], key.as_bytes())
    };
    let (result, reason) = match run {
        Ok((true, _)) if *dry_run => (
            UnlockOutcome::Ok,
            "(passphrase verified with cryptsetup open --test-passphrase)".into(),
        ),
        Ok((true, _)) => (UnlockOutcome::Ok, format!("(opened as /dev/mapper/{name})")),
        Ok((false, err)) => (UnlockOutcome::Fail, err),
        Err(e) => (UnlockOutcome::Fail, e),
    };
    (result, reason, Some(cti))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's outcome report over a socket "cryptod": signed by the
    /// agent's key for the token's cti, with a failure's reason cut to 256
    /// bytes at a character boundary; `recorded` is Ok, `refused` an error.
    #[test]
    fn report_outcome_signs_what_happened_and_needs_recorded() {
        use portcullis_proto::msg::OutcomeResp;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cryptod.sock");
        let listener = socket::listen(&path).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[0x61; 32]);
        let public = key.verifying_key();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in [OutcomeResult::Recorded, OutcomeResult::Refused] {
                let (stream, _) = listener.accept().unwrap();
                let mut link = SocketLink::new(socket::SocketChannel::new(stream));
                let Message::OutcomeReport(r) = link.recv_blocking(Duration::from_secs(5)).unwrap()
                else {
                    panic!("not an outcome report")
                };
                let object = cose::verify(&r.signed, ContentType::Outcome, |kid| {
                    (kid == kid_for(&public).as_slice()).then_some(public)
                })
                .unwrap()
                .into_inner();
                seen.push(OutcomeClaims::from_cbor(&object.payload).unwrap());
                let resp = OutcomeResp { request_id: r.request_id, result: answer, reason: None };
                link.send_blocking(&Message::OutcomeResp(resp), Duration::from_secs(5)).unwrap();
            }
            seen
        });
        // A transient upstream: one connection per report.
        let mut up = Upstream::transient(SocketDial { path });
        let long = "é".repeat(200); // 400 bytes
        report_outcome(&mut up, &key, "unlock_agent", vec![7; 16], Enforced::Opened, "ok").unwrap();
        let e = report_outcome(&mut up, &key, "unlock_agent", vec![8; 16], Enforced::Failed, &long)
            .unwrap_err();
        assert!(e.contains("refused"), "{e}");
        let seen = server.join().unwrap();
        assert_eq!(
            (seen[0].decision.as_slice(), seen[0].outcome),
            (&[7u8; 16][..], Enforced::Opened)
        );
        assert_eq!((seen[0].enforcer.as_str(), seen[0].reason.as_deref()), ("unlock_agent", None));
        assert_eq!(seen[1].outcome, Enforced::Failed);
        assert_eq!(seen[1].reason.as_deref(), Some("é".repeat(128).as_str()));
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert!(b.due(t0));
        let mut pauses = Vec::new();
        for _ in 0..8 {
            b.failed(t0);
            pauses.push(b.not_before.unwrap() - t0);
        }
        assert_eq!(pauses[0], BACKOFF_FIRST);
        assert_eq!(pauses[1], BACKOFF_FIRST * 2);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), BACKOFF_MAX);
        assert!(!b.due(t0));
        assert!(b.due(t0 + BACKOFF_MAX));
        b.succeeded();
        assert_eq!(b, Backoff::new());
    }
}
