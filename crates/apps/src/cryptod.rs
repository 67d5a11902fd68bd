//! cryptod: the authority. A thin loop around [`portcullis_authority::Authority`]:
//! it owns the links, attaches each link's peer identity (the domain id the
//! platform bound to the channel, and the name the toolstack gave it), feeds
//! messages, time and hardware entropy in, and sends responses and audit
//! records out. Every decision is the authority crate's.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use portcullis_authority::ratelimit::IssueRateConfig;
use portcullis_authority::sealed;
use portcullis_authority::{Authority, Config, Output, PeerId};
use portcullis_platform::{ConfigItem, DomId, Platform, PlatformError};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AuditLog, ErrorCode, ErrorMsg};
use portcullis_vchan::Backend;
use zeroize::Zeroizing;

use crate::common::{port, random, resolve_dom, AppError, Settings, STEP};
use crate::link::{Link, LinkError};
use crate::net::{connect, follow, serve, NOBODY, RESOLVE_EVERY};
use crate::say;

struct Client<B: Backend> {
    /// The toolstack's name for the client; its domain id is looked up again
    /// now and then, since a domain created again gets a new id.
    name: String,
    peer: PeerId,
    /// None while no domain has the name (served once one appears).
    link: Option<Link<B>>,
}

/// The peer id of a client whose name no domain has (yet).
fn absent(name: &str) -> PeerId {
    PeerId::new(u32::from(NOBODY.0), name)
}

/// Runs cryptod until the platform stops it.
pub fn run<P: Platform>(p: &mut P) -> Result<(), AppError> {
    let s = Settings::load(p)?;
    let mut kek = Zeroizing::new([0u8; 32]);
    let n = p.config(ConfigItem::KeyEncryptionKey, &mut kek[..])?;
    if n != 32 {
        return Err(AppError::Config("key-encryption key must be 32 bytes".into()));
    }
    let mut blob = alloc::vec![0u8; sealed::MAX_SEALED_LEN];
    let n = p.config(ConfigItem::SealedState, &mut blob)?;
    let state = sealed::unseal(blob.get(..n).unwrap_or_default(), &kek)
        .map_err(|e| AppError::Config(alloc::format!("sealed state: {e}")))?;
    let config = Config {
        name: String::from(p.name()),
        entropy_vm: s.get("entropy", "entropyd").into(),
        unlock_audience: s.get("unlock_audience", "unlock_agent").into(),
        answer_after_audit: s.num("answer_after_audit", 1)? != 0,
        issue_rate: IssueRateConfig {
            burst: u32::try_from(s.num("issue_burst", 60)?).unwrap_or(u32::MAX),
            per_minute: u32::try_from(s.num("issue_per_minute", 600)?).unwrap_or(u32::MAX),
            ..IssueRateConfig::default()
        },
        ..Config::default()
    };
    let mut auth = Authority::new(config, state, p.now_unix())
        .map_err(|e| AppError::Config(alloc::format!("authority: {e}")))?;

    // Clients: each link is bound to one peer domain; its identity is that
    // domain, never anything the peer says.
    let mut clients: Vec<Client<P::Backend>> = Vec::new();
    for name in s.list("clients", "unlocker,policy_pd,dom0") {
        // A client that does not exist now (not created yet, or powered
        // off) is served as soon as a domain gets its name.
        let client = match resolve_dom(p, name) {
            Ok(dom) => Client {
                name: name.into(),
                peer: PeerId::new(u32::from(dom.0), name),
                link: Some(serve(p, dom, port::CRYPTOD)?),
            },
            Err(e) => {
                say!(p, "cryptod: client {name} not there yet ({e}); serving it when it appears");
                Client { name: name.into(), peer: absent(name), link: None }
            }
        };
        clients.push(client);
    }
    let collector = resolve_dom(p, s.get("collector", "dom0"))?;
    let mut audit = serve(p, collector, port::AUDIT)?;
    let entropy_name = String::from(s.get("entropy", "entropyd"));
    let entropy_dom = p.resolve(&entropy_name)?;
    let entropy_peer = PeerId::new(u32::from(entropy_dom.0), &entropy_name);
    let mut entropy: Option<Link<P::Backend>> = None;
    say!(
        p,
        "cryptod: serving {} clients; audit to dom{}; entropy from {entropy_name}",
        clients.len(),
        collector.0
    );

    let mut shipped: Option<u64> = None; // highest audit seq written to the collector link
    let mut acked: Option<u64> = None; // highest audit seq the collector acknowledged
    let mut outbox_empty = true;
    let mut ready = false;
    let mut persist_warned = false;
    let mut last_tick = 0u64;
    loop {
        let now = p.now_unix();
        let mut changed = false;
        if entropy.as_ref().is_none_or(|l| !l.is_open()) {
            entropy = connect(p, entropy_dom, port::ENTROPY, Duration::ZERO).ok();
        }
        if let Some(link) = entropy.as_mut() {
            loop {
                match link.poll() {
                    Ok(Some(msg)) => {
                        let hw: Zeroizing<[u8; 32]> = Zeroizing::new(random(p)?);
                        let out = auth.handle(&entropy_peer, &msg, now, &hw[..]);
                        changed |= !out.audit.is_empty();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        say!(p, "cryptod: entropy link: {e}");
                        entropy = None;
                        break;
                    }
                }
            }
        }
        if !ready && auth.is_ready() {
            ready = true;
            say!(p, "cryptod: ready");
        }
        let mut dirty = false;
        for c in clients.iter_mut() {
            changed |= serve_client(p, &mut auth, c, now, &mut dirty)?;
        }
        if dirty {
            persist(p, &mut auth, &kek, &mut persist_warned);
        }
        if now != last_tick {
            if now.is_multiple_of(RESOLVE_EVERY) {
                for c in clients.iter_mut() {
                    follow_domain(p, c);
                }
            }
            last_tick = now;
            changed |= !auth.tick(now).audit.is_empty();
        }
        let released =
            ship_audit(p, &mut auth, &mut audit, &mut shipped, &mut acked, changed, now)?;
        deliver(p, &mut clients, released);
        let empty = auth.pending_audit_len() == 0;
        if empty && !outbox_empty {
            if let Some(seq) = acked {
                say!(p, "cryptod: audit outbox empty; collector acknowledged seq {seq}");
            }
        }
        outbox_empty = empty;

        let mut ports: Vec<_> = clients.iter().filter_map(|c| c.link.as_ref()?.port()).collect();
        ports.extend(audit.port());
        ports.extend(entropy.as_ref().and_then(|l| l.port()));
        match p.wait_any(&ports, Some(STEP)) {
            Ok(_) | Err(PlatformError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Serves a client under its current domain id: when its name now belongs to
/// another domain (the old one was destroyed and the name created again),
/// the old channel is dropped and a fresh one published for the new id. A
/// name that does not resolve (the domain is gone for now) changes nothing.
fn follow_domain<P: Platform>(p: &mut P, c: &mut Client<P::Backend>) {
    let old = u16::try_from(c.peer.domid).map_or(NOBODY, DomId);
    match follow(p, &c.name, old, port::CRYPTOD) {
        Ok(Some((dom, link))) => {
            match c.link {
                Some(_) => say!(
                    p,
                    "cryptod: {} is now dom{} (was dom{}); serving the new domain",
                    c.name,
                    dom.0,
                    c.peer.domid
                ),
                None => say!(p, "cryptod: {} is dom{}; serving it", c.name, dom.0),
            }
            c.link = Some(link);
            c.peer = PeerId::new(u32::from(dom.0), &c.name);
        }
        Ok(None) => {}
        Err(e) => say!(p, "cryptod: {} has a new domain, cannot serve it yet: {e}", c.name),
    }
}

/// The client's connection is gone: answers still waiting for the collector
/// must not reach whoever connects next.
fn forget_answers<P: Platform>(p: &mut P, auth: &mut Authority, peer: &PeerId) {
    let n = auth.drop_held(peer);
    if n > 0 {
        say!(
            p,
            "cryptod: {} (dom{}) left before {n} answer(s) could be released; dropped",
            peer.vm,
            peer.domid
        );
    }
}

/// Handles everything a client has sent; returns whether audit records were made.
fn serve_client<P: Platform>(
    p: &mut P,
    auth: &mut Authority,
    c: &mut Client<P::Backend>,
    now: u64,
    dirty: &mut bool,
) -> Result<bool, AppError> {
    let mut audited = false;
    let Some(link) = c.link.as_mut() else { return Ok(false) };
    if !link.is_open() {
        forget_answers(p, auth, &c.peer);
        link.reinit()?;
        return Ok(false);
    }
    loop {
        let Some(link) = c.link.as_mut() else { return Ok(audited) };
        let reply = match link.poll() {
            Ok(None) => break,
            Ok(Some(msg)) => {
                let hw: Zeroizing<[u8; 32]> = Zeroizing::new(random(p)?);
                let out: Output = auth.handle(&c.peer, &msg, now, &hw[..]);
                audited |= !out.audit.is_empty();
                *dirty |= out.state_changed;
                out.response
            }
            Err(LinkError::Decode(e)) => Some(Message::Error(ErrorMsg {
                code: ErrorCode::Malformed,
                reason: alloc::format!("{e}"),
                request_id: None,
            })),
            Err(e) => {
                say!(p, "cryptod: {} (dom{}): {e}; listening again", c.peer.vm, c.peer.domid);
                forget_answers(p, auth, &c.peer);
                link.reinit()?;
                break;
            }
        };
        if let Some(reply) = reply {
            if let Err(e) = link.send(&reply) {
                say!(p, "cryptod: reply to {}: {e}", c.peer.vm);
            }
        }
    }
    if let Some(link) = c.link.as_mut() {
        let _ = link.pump();
    }
    Ok(audited)
}

/// Reseals the state (the operators' last accepted TOTP steps) and hands it
/// to the platform for the next boot, so a code stays refused after a
/// restart. Where the platform cannot persist, cryptod says so once.
fn persist<P: Platform>(p: &mut P, auth: &mut Authority, kek: &[u8; 32], warned: &mut bool) {
    let result = auth.export(kek).map_err(|e| alloc::format!("{e}")).and_then(|sealed| {
        p.persist(ConfigItem::SealedState, &sealed).map_err(|e| alloc::format!("{e}"))
    });
    if let Err(e) = result {
        if !*warned {
            say!(
                p,
                "cryptod: cannot persist the sealed state ({e}); replay state lasts until restart"
            );
            *warned = true;
        }
    }
}

/// Sends the answers the collector's acks released, each to the client that
/// asked, if it is still the same domain.
fn deliver<P: Platform>(
    p: &mut P,
    clients: &mut [Client<P::Backend>],
    released: Vec<(PeerId, Message)>,
) {
    for (peer, answer) in released {
        match clients.iter_mut().find(|c| c.peer == peer).and_then(|c| c.link.as_mut()) {
            Some(link) => {
                if let Err(e) = link.send(&answer) {
                    say!(p, "cryptod: reply to {}: {e}", peer.vm);
                }
            }
            None => {
                say!(p, "cryptod: {} (dom{}) is gone; its answer is dropped", peer.vm, peer.domid)
            }
        }
    }
}

/// Ships unacknowledged audit records to the collector: everything after the
/// last one written, or everything still unacknowledged after the collector
/// reconnects. Records leave the outbox only when the collector acks them;
/// returns the answers those acks released.
fn ship_audit<P: Platform>(
    p: &mut P,
    auth: &mut Authority,
    link: &mut Link<P::Backend>,
    shipped: &mut Option<u64>,
    acked: &mut Option<u64>,
    new_records: bool,
    now: u64,
) -> Result<Vec<(PeerId, Message)>, AppError> {
    let mut released = Vec::new();
    if !link.is_open() {
        say!(p, "cryptod: audit collector left; unacknowledged records will be sent again");
        link.reinit()?;
        *shipped = None;
    }
    loop {
        match link.poll() {
            Ok(Some(ack @ Message::AuditAck(_))) => {
                if let Message::AuditAck(a) = &ack {
                    *acked = Some(acked.map_or(a.seq, |s| s.max(a.seq)));
                }
                let hw: Zeroizing<[u8; 32]> = Zeroizing::new(random(p)?);
                // Acks make no audit records of their own.
                released
                    .extend(auth.handle(&PeerId::new(0, "collector"), &ack, now, &hw[..]).released);
            }
            Ok(Some(_)) | Ok(None) => break,
            Err(e) => {
                say!(p, "cryptod: audit link: {e}");
                link.reinit()?;
                *shipped = None;
                break;
            }
        }
    }
    if new_records || !link.has_queued() {
        for (seq, record) in auth.pending_audit_records() {
            if shipped.is_some_and(|s| seq <= s) {
                continue;
            }
            match link.send(&Message::AuditLog(AuditLog { record: record.to_vec() })) {
                Ok(()) => *shipped = Some(seq),
                Err(LinkError::QueueFull) => break,
                Err(e) => {
                    say!(p, "cryptod: audit link: {e}");
                    break;
                }
            }
        }
    }
    let _ = link.pump();
    Ok(released)
}
