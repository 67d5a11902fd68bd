//! Opening links: clients wait for their server to publish, servers listen.

use core::time::Duration;

use portcullis_platform::{DomId, Platform, PlatformError};
use portcullis_vchan::{ClientConfig, ServerConfig, Vchan, VchanError};

use crate::common::{resolve_dom, AppError, RING_BYTES, STEP};
use portcullis_proto::envelope::Role;

use crate::link::Link;
use crate::say;

/// How often [`await_dom`] says again that it is waiting, seconds.
pub const AWAIT_NOTICE_EVERY: u64 = 30;

/// Resolves `name` (`dom0` is domain 0), waiting while no domain has it:
/// a guest created before the peer it needs (plain `xl create`, any
/// order) waits for it instead of failing. Says `<me>: waiting for
/// <name>` once and every [`AWAIT_NOTICE_EVERY`] s; any other error is
/// returned.
pub fn await_dom<P: Platform>(p: &mut P, me: &str, name: &str) -> Result<DomId, AppError> {
    if name == "dom0" {
        return Ok(DomId(0));
    }
    let mut next_notice = p.monotonic_ns();
    loop {
        match p.resolve(name) {
            Ok(dom) => return Ok(dom),
            Err(PlatformError::UnknownDomain) => {}
            Err(e) => return Err(AppError::Config(alloc::format!("domain \"{name}\": {e}"))),
        }
        let now = p.monotonic_ns();
        if now >= next_notice {
            say!(p, "{me}: waiting for {name} (no domain has the name yet)");
            next_notice = now.saturating_add(AWAIT_NOTICE_EVERY.saturating_mul(1_000_000_000));
        }
        // A plain sleep, not `sleep_or_names`: a guest that asks about
        // names changes only while it starts would leave the platform's
        // watch (on Xen) queueing events nobody takes, crowding out its
        // other watches' events.
        sleep(p, Duration::from_secs(1))?;
    }
}

/// Connects to `server`'s vchan `port`, waiting up to `patience` for the
/// server to publish it; the link decodes every message type.
pub fn connect<P: Platform>(
    p: &mut P,
    server: DomId,
    port: u32,
    patience: Duration,
) -> Result<Link<P::Backend>, AppError> {
    connect_as(p, server, port, patience)
}

/// [`connect`] for a link that decodes the message types of `A` only.
pub fn connect_as<P: Platform, A: Role>(
    p: &mut P,
    server: DomId,
    port: u32,
    patience: Duration,
) -> Result<Link<P::Backend, A>, AppError> {
    let deadline = p.monotonic_ns().saturating_add(patience.as_nanos() as u64);
    loop {
        match Vchan::client_wait(p.backend(), ClientConfig { server, port }, Some(STEP)) {
            Ok(v) => return Ok(Link::new(v)),
            Err(VchanError::Timeout | VchanError::NotPublished) if p.monotonic_ns() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Publishes a vchan `port` for `client` and returns its listening link.
pub fn serve<P: Platform, A: Role>(
    p: &mut P,
    client: DomId,
    port: u32,
) -> Result<Link<P::Backend, A>, AppError> {
    let v = Vchan::server(
        p.backend(),
        ServerConfig { client, port, read_min: RING_BYTES, write_min: RING_BYTES },
    )?;
    Ok(Link::new(v))
}

/// Sleeps for `d` (waits on no event channel).
pub fn sleep<P: Platform>(p: &mut P, d: Duration) -> Result<(), AppError> {
    let deadline = p.monotonic_ns().saturating_add(d.as_nanos() as u64);
    loop {
        let now = p.monotonic_ns();
        if now >= deadline {
            return Ok(());
        }
        p.wait_any(&[], Some(Duration::from_nanos(deadline - now)))?;
    }
}

/// Sleeps for `d`, asking the platform every [`STEP`] whether the names
/// changed ([`Platform::names_changed`]); returns `true` at once if they
/// did (a peer appeared or was created again: look it up now, not at the
/// next periodic look-up), `false` when `d` has passed. For a guest that
/// keeps asking for its whole life (entropyd): the first call starts the
/// platform's watch.
pub fn sleep_or_names<P: Platform>(p: &mut P, d: Duration) -> Result<bool, AppError> {
    let deadline = p.monotonic_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let step = u64::try_from(STEP.as_nanos()).unwrap_or(u64::MAX);
    loop {
        if p.names_changed() {
            return Ok(true);
        }
        let now = p.monotonic_ns();
        if now >= deadline {
            return Ok(false);
        }
        p.wait_any(&[], Some(Duration::from_nanos((deadline - now).min(step))))?;
    }
}

/// Stands for "no domain has this name yet" (not a valid domain id): the
/// `current` of a client [`follow`] has not found so far.
pub const NOBODY: DomId = DomId(u16::MAX);

/// A client's new domain id and the channel published for it.
pub type Followed<B, A> = Option<(DomId, Link<B, A>)>;

/// How often servers look up their clients' names again, seconds.
pub const RESOLVE_EVERY: u64 = 2;

/// A server's client known by `name`, last seen as domain `current`: if the
/// name now belongs to another domain (the old one was destroyed and a new
/// one created under the name), publishes a fresh `port` for the new id and
/// returns it. `Ok(None)` while the name still means `current`, or resolves
/// to nothing for now.
pub fn follow<P: Platform, A: Role>(
    p: &mut P,
    name: &str,
    current: DomId,
    port: u32,
) -> Result<Followed<P::Backend, A>, AppError> {
    let Ok(dom) = resolve_dom(p, name) else { return Ok(None) };
    if dom == current {
        return Ok(None);
    }
    Ok(Some((dom, serve(p, dom, port)?)))
}
