//! cryptod: the authority. A thin shell around [`portcullis_authority::Authority`]:
//! [`CryptodDriver`] owns the links, attaches each link's peer identity (the
//! domain id the platform bound to the channel, and the name the toolstack
//! gave it), feeds messages, time and hardware entropy in, and sends
//! responses and audit records out. Every decision is the authority crate's.
//!
//! Links have roles, and a message is routed by the link it came in on,
//! never by what it says: only the collector's link reaches
//! [`Authority::collector_ack`], only the entropy link reaches
//! [`Authority::entropy`], and a client link reaches only
//! [`Authority::handle_request`] (anything else a client sends is answered
//! with an error).
//!
//! Clients are served round-robin, at most [`CLIENT_BUDGET`] messages each
//! per wake-up (all of a wake-up's requests share one audit seal and one
//! collector commit), and a client whose answers are not being read is not read
//! either, so one flooding client neither starves the others nor makes
//! cryptod drop answers. A client's connection is served on a ring that no
//! later connection can find (it is unpublished once the client is there);
//! when the client leaves, its unsent and held answers are dropped (the
//! drop is audited) and a fresh ring is published.
//!
//! Audit (group commit): at the end of a wake-up the records made since the
//! last seal are sealed into one batch with one signature and shipped as
//! one `audit_log` message, unless a sealed batch is still waiting for the
//! collector's ack: then they wait for it (at most 64 records or 1 s,
//! [`Authority::seal_audit_due`]), so the requests that arrive during a
//! collector write share the next seal and the next write. The collector
//! stores a batch with one fsync and acks its last `seq`, which releases
//! every answer the batch covers. The tokens of the answers held for that
//! ack are signed after the batch is shipped, while the collector writes
//! ([`Authority::sign_held`]).
//! Requests draw their randomness from the authority's DRBG; hardware
//! entropy goes in with every `entropy_pub` reseed, not per request. No
//! console line is printed per request on the success path. dom0's
//! measurement of a client's image is read once per connection, at its
//! first request (a connection never outlives its peer domain), and an
//! unmeasured client is looked up again at most once per
//! [`MEASUREMENT_RECHECK_NS`], not at every request.
//!
//! Write-ahead persistence: no answer leaves while the sealed state has
//! changed and is not yet durable. Each wake-up collects its answers (and
//! those the collector's acks released), persists the state if a decision
//! changed it, and sends them only once [`Platform::persist`] returned
//! `Ok`, so an accepted TOTP step is on dom0's disk before the operator learns it was
//! accepted, with or without `answer_after_audit`. When persisting fails
//! the answers stay held (a client with answers held is not read, so they
//! stay bounded), the state stays dirty and the next wake-up tries again; a
//! platform without durable storage ([`PlatformError::Unsupported`]) sends
//! them, saying once that replay state lasts only until restart. The one
//! change no answer depends on, the sealed audit head moved by the
//! collector's acks, is persisted after the answers leave, at most once
//! per [`HEAD_PERSIST_EVERY_NS`], so an answer waits for one durable write
//! (the collector's), not two.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use portcullis_authority::keys::KeyConfig;
use portcullis_authority::outcome::OutcomeKey;
use portcullis_authority::ratelimit::{IssueRateConfig, RateLimitConfig};
use portcullis_authority::sealed;
use portcullis_authority::{Authority, Config, Output, PeerId, Request};
use portcullis_platform::{ConfigItem, DomId, Platform, PlatformError, Port};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::ErrorMsg;
use portcullis_vchan::{Backend, ClientConfig, PeerState, Vchan, VchanError};
use zeroize::Zeroizing;

use crate::common::{port, random, resolve_dom, AppError, STEP};
use crate::console::{LineLimiter, Verdict};
use crate::link::LinkError;
use crate::net::{follow, serve, NOBODY, RESOLVE_EVERY};
use crate::say;
use crate::settings::{Problem, Settings, SettingsError, CRYPTOD_SPECS};
use crate::startup::Startup;

/// cryptod's links: they decode its message types only ([`crate::inbox::Cryptod`]).
type Link<B> = crate::link::Link<B, crate::inbox::Cryptod>;

/// Most messages read from one client per wake-up, before the next
/// client's turn. Every client is served at each wake-up, and the records
/// of all of them share one seal; a larger budget was tried (32) and broke
/// the fairness bound (a lone client's p99 under a flood of signed
/// `keyset` answers), since each flood request costs a signature.
pub const CLIENT_BUDGET: usize = 8;

/// How long the client links stay quiet after a batch is shipped
/// ([`CryptodDriver::poll_delay`]): while the collector writes it and
/// answers wait for its ack, the clients' writes send no events, and the
/// ack's wake-up (or this time-out) reads what came meanwhile. A request
/// whose answer need not wait for the collector (a keyset, a `busy`)
/// waits this much longer at most, and a collector that does not ack
/// costs one wake-up per batch.
pub const QUIET_FOR: Duration = Duration::from_millis(2);

/// Shortest time between two persists of the sealed audit head alone
/// (nanoseconds): the head lags the collector's acks by at most this (and
/// one [`STEP`]), and is persisted this often at most, not once per ack.
pub const HEAD_PERSIST_EVERY_NS: u64 = 1_000_000_000;

/// How long a client found unmeasured (dom0 published no measurement of
/// its image, or it could not be read) is taken as unmeasured before the
/// platform is asked again, in nanoseconds: a measurement published after
/// a domain's first request counts within this time, and an unmeasured
/// client costs one platform read (a file or a xenstore round trip) per
/// this time, not one per request.
pub const MEASUREMENT_RECHECK_NS: u64 = 1_000_000_000;

/// Shortest time between two "audit outbox empty" console lines, in
/// nanoseconds: under steady load the outbox empties at every ack, and the
/// line must not become one per request. The last one is always printed
/// (late by at most this much), since the demo waits for it.
const EMPTY_REPORT_EVERY_NS: u64 = 1_000_000_000;

/// A client link: requests in, answers out.
struct Client<B: Backend> {
    /// The toolstack's name for the client; its domain id is looked up again
    /// now and then, since a domain created again gets a new id.
    name: String,
    peer: PeerId,
    /// None while no domain has the name (served once one appears).
    link: Option<Link<B>>,
    /// The current ring's store entries are removed (the client is there).
    unpublished: bool,
    /// dom0's measurement of the domain on the current connection, read at
    /// its first request and kept until the connection ends: the image a
    /// domain was launched with does not change while it runs, and a
    /// connection never outlives its peer domain (a domain that dies, or a
    /// name that moves to another domain, ends it). Cleared with every new
    /// connection ([`Client::new_connection`]), so a later domain, even one
    /// with the same id, is measured afresh.
    image: Option<[u8; 32]>,
    /// When the current connection's peer was last found unmeasured
    /// (monotonic ns): looked up again [`MEASUREMENT_RECHECK_NS`] later.
    unmeasured_at: Option<u64>,
}

impl<B: Backend> Client<B> {
    /// A client served under `peer` (on `link`, if its domain exists).
    fn new(name: &str, peer: PeerId, link: Option<Link<B>>) -> Self {
        Client {
            name: name.into(),
            peer,
            link,
            unpublished: false,
            image: None,
            unmeasured_at: None,
        }
    }

    /// The link now serves a new connection (a fresh ring, or a new
    /// domain's): nothing learned about the previous peer carries over.
    fn new_connection(&mut self) {
        self.unpublished = false;
        self.image = None;
        self.unmeasured_at = None;
    }
}

/// The audit collector's link: records out, acks in.
struct Collector<B: Backend> {
    link: Link<B>,
    /// Last `seq` of the last audit batch written to the collector link.
    shipped: Option<u64>,
    /// Highest audit seq the collector acknowledged.
    acked: Option<u64>,
}

/// The entropy link (cryptod is the client): `entropy_pub` in.
struct EntropySource<B: Backend> {
    /// The toolstack's name for the entropy domain; looked up again while
    /// the link is down (it may be created later, or again under a new id).
    name: String,
    /// [`NOBODY`] until a domain has the name.
    dom: DomId,
    peer: PeerId,
    link: Option<Link<B>>,
}

/// The peer id of a client whose name no domain has (yet).
fn absent(name: &str) -> PeerId {
    PeerId::new(u32::from(NOBODY.0), name)
}

/// cryptod's state between wake-ups; [`run`] is a loop of
/// [`CryptodDriver::poll`] and a wait on [`CryptodDriver::ports`] for at
/// most [`CryptodDriver::poll_delay`].
pub struct CryptodDriver<B: Backend> {
    auth: Authority,
    kek: Zeroizing<[u8; 32]>,
    clients: Vec<Client<B>>,
    collector: Collector<B>,
    entropy: EntropySource<B>,
    /// The client served first at the next wake-up (round-robin).
    next: usize,
    /// A client still had messages when its budget ran out.
    backlog: bool,
    /// The client links are quiet ([`CryptodDriver::poll_delay`]).
    quiet: bool,
    ready: bool,
    /// Said once that the platform cannot persist.
    persist_warned: bool,
    /// The last persist failed (answers are held until one succeeds).
    persist_failing: bool,
    /// The sealed state changed (a client request, seeding, a key
    /// rotation) and is not durable yet: no answer leaves until it is.
    state_dirty: bool,
    /// Only the sealed audit head moved (collector acks) since the state
    /// was last persisted: persisted after the answers leave, not before
    /// ([`HEAD_PERSIST_EVERY_NS`]).
    head_dirty: bool,
    /// A head in this boot's chain is durable. Until then the first ack's
    /// head is persisted at once rather than within the second: a stop
    /// before it would leave this boot's chain one that the next boot's
    /// does not link to (`audit verify` would report it broken).
    own_head_durable: bool,
    /// When the state was last persisted (monotonic ns).
    persisted_at: u64,
    /// Answers decided or released and not yet sent, because the state
    /// they may depend on is not durable yet; in order.
    unsent: Vec<(PeerId, Message)>,
    last_tick: u64,
    outbox_empty: bool,
    /// When the last "audit outbox empty" line was printed (monotonic ns).
    empty_said_at: Option<u64>,
    /// The outbox emptied since that line and it is not said yet.
    empty_report_due: bool,
    /// Audit records were made outside a request (an answer drop).
    fresh_audit: bool,
    console: LineLimiter,
    /// The start-up timing, until the ready line has reported it.
    startup: Option<Startup>,
}

impl<B: Backend + Clone> CryptodDriver<B> {
    /// Boots: reads the settings, key-encryption key and sealed state,
    /// starts the authority and publishes the client and collector links.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn new<P: Platform<Backend = B>>(p: &mut P) -> Result<Self, AppError> {
        let mut startup = Startup::new(p.boot_marks());
        let s = Settings::load(p, &CRYPTOD_SPECS)?;
        let mut kek = Zeroizing::new([0u8; 32]);
        let n = p.config(ConfigItem::KeyEncryptionKey, &mut kek[..])?;
        if n != 32 {
            return Err(AppError::Config("key-encryption key must be 32 bytes".into()));
        }
        let mut blob = alloc::vec![0u8; sealed::MAX_SEALED_LEN];
        let n = p.config(ConfigItem::SealedState, &mut blob)?;
        // A `match` rather than `map_err` and `?` here and for the
        // authority below: the large values are moved fewer times (272
        // bytes less code; issue 14).
        let state = match sealed::unseal(blob.get(..n).unwrap_or_default(), &kek) {
            Ok(state) => state,
            Err(e) => return Err(AppError::Config(alloc::format!("sealed state: {e}"))),
        };
        let config = authority_config(&s, p.name())?;
        let auth = match Authority::new(config, state, p.now_unix()) {
            Ok(auth) => auth,
            Err(e) => return Err(AppError::Config(alloc::format!("authority: {e}"))),
        };

        // Clients: each link is bound to one peer domain; its identity is
        // that domain, never anything the peer says.
        let mut clients = Vec::new();
        for name in s.list("clients")? {
            // A client that does not exist now (not created yet, or powered
            // off) is served as soon as a domain gets its name.
            // Publishing its channel may fail too (xenstore busy): one
            // client's trouble, not cryptod's; tried again at the next
            // look-up, as for a client not created yet.
            let served = resolve_dom(p, name)
                .and_then(|dom| serve(p, dom, port::CRYPTOD).map(|link| (dom, link)));
            let client = match served {
                Ok((dom, link)) => {
                    Client::new(name, PeerId::new(u32::from(dom.0), name), Some(link))
                }
                Err(e) => {
                    say!(
                        p,
                        "cryptod: client {name} not served yet ({e}); serving it when it appears"
                    );
                    Client::new(name, absent(name), None)
                }
            };
            clients.push(client);
        }
        let collector_dom = resolve_dom(p, s.text("collector", "")?)?;
        let collector =
            Collector { link: serve(p, collector_dom, port::AUDIT)?, shipped: None, acked: None };
        let entropy_name = String::from(s.text("entropy", "")?);
        // Created before entropyd (any creation order works): it is
        // looked up again until it appears; requests are `unavailable`
        // until it has seeded cryptod.
        let entropy_dom = match p.resolve(&entropy_name) {
            Ok(dom) => dom,
            Err(PlatformError::UnknownDomain) => {
                say!(
                    p,
                    "cryptod: {entropy_name} not there yet; taking entropy from it when it appears"
                );
                NOBODY
            }
            Err(e) => return Err(e.into()),
        };
        let entropy = EntropySource {
            name: entropy_name.clone(),
            dom: entropy_dom,
            peer: PeerId::new(u32::from(entropy_dom.0), &entropy_name),
            link: None,
        };
        say!(
            p,
            "cryptod: serving {} clients; audit to dom{}; entropy from {entropy_name}",
            clients.len(),
            u32::from(collector_dom.0)
        );
        startup.mark("unseal", p.monotonic_ns());
        Ok(CryptodDriver {
            auth,
            kek,
            clients,
            collector,
            entropy,
            next: 0,
            backlog: false,
            quiet: false,
            ready: false,
            persist_warned: false,
            persist_failing: false,
            state_dirty: false,
            head_dirty: false,
            own_head_durable: false,
            persisted_at: 0,
            unsent: Vec::new(),
            last_tick: 0,
            outbox_empty: true,
            empty_said_at: None,
            empty_report_due: false,
            fresh_audit: false,
            console: LineLimiter::default(),
            startup: Some(startup),
        })
    }

    /// The decision core (for inspection).
    pub fn authority(&self) -> &Authority {
        &self.auth
    }

    /// How many answers wait for the sealed state to be persisted.
    pub fn unpersisted_len(&self) -> usize {
        self.unsent.len()
    }

    /// The event channel ports a wake-up may come from.
    pub fn ports(&self) -> Vec<Port> {
        let mut ports: Vec<_> =
            self.clients.iter().filter_map(|c| c.link.as_ref()?.port()).collect();
        ports.extend(self.collector.link.port());
        ports.extend(self.entropy.link.as_ref().and_then(|l| l.port()));
        ports
    }

    /// How long the shell may wait for an event before the next
    /// [`CryptodDriver::poll`]: zero while a client has unread messages
    /// left over from its budget; [`QUIET_FOR`] while the client links are
    /// quiet; else [`STEP`] (timers, name lookups).
    ///
    /// Quiet: with answers held for the collector's ack and a batch just
    /// sealed for it to write, a request that comes now is answered after
    /// that ack at the earliest (its record goes in the next batch), so
    /// until the next wake-up (the ack, or [`QUIET_FOR`]) the clients'
    /// writes do not wake cryptod ([`Vchan::set_quiet`]): the ack's wake-up
    /// serves every request that came during the write at once, instead of
    /// one wake-up each (issue 14).
    pub fn poll_delay(&self) -> Duration {
        if self.backlog {
            Duration::ZERO
        } else if self.quiet {
            QUIET_FOR
        } else {
            STEP
        }
    }

    /// Makes every client link quiet or not ([`CryptodDriver::poll_delay`]).
    fn quiet_clients(&mut self, quiet: bool) {
        if self.quiet != quiet {
            self.quiet = quiet;
            for link in self.clients.iter_mut().filter_map(|c| c.link.as_mut()) {
                link.chan().set_quiet(quiet);
            }
        }
    }

    /// One wake-up: entropy in, each client's requests (round-robin, within
    /// budget), timers, audit shipping and acks, the sealed state persisted
    /// if it changed, and then (only if that succeeded) the answers out.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn poll<P: Platform<Backend = B>>(&mut self, p: &mut P) -> Result<(), AppError> {
        let now = p.now_unix();
        let mut changed = self.poll_entropy(p, now)?;
        if !self.ready && self.auth.is_ready() {
            self.ready = true;
            say!(p, "cryptod: ready");
            if let Some(mut t) = self.startup.take() {
                t.mark("seed", p.monotonic_ns());
                say!(p, "{}", t.report("cryptod"));
            }
        }
        let mut dirty = false;
        self.backlog = false;
        self.quiet_clients(false);
        let n = self.clients.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            changed |= self.serve_client(p, idx, now, &mut dirty)?;
        }
        if n > 0 {
            self.next = (self.next + 1) % n;
        }
        self.state_dirty |= dirty;
        // Names are looked up again when the platform says they changed
        // (a client or entropyd created), and every RESOLVE_EVERY s all the
        // same.
        let tick = now != self.last_tick;
        if p.names_changed() || (tick && now.is_multiple_of(RESOLVE_EVERY)) {
            for idx in 0..n {
                self.follow_domain(p, idx, now);
            }
            self.follow_entropy(p);
        }
        if tick {
            self.last_tick = now;
            let out = self.auth.tick(now);
            changed |= !out.audit.is_empty();
            self.state_dirty |= out.state_changed;
            for q in self.console.expired(p.monotonic_ns()) {
                say!(
                    p,
                    "cryptod: {} line(s) \"{}\" about dom{} suppressed",
                    q.suppressed,
                    q.kind,
                    q.peer
                );
            }
        }
        changed |= core::mem::take(&mut self.fresh_audit);
        let released = self.take_acks(p)?;
        self.unsent.extend(released);
        // Write-ahead: the state these answers may depend on is durable
        // before any of them leaves.
        if self.state_dirty {
            self.state_dirty = !self.persist(p);
        }
        if !self.state_dirty {
            let answers = core::mem::take(&mut self.unsent);
            self.deliver(p, answers);
        }
        // Group commit: one seal (one signature) over the records made
        // since the last one, once no sealed batch waits for the collector
        // (or enough records or time have gathered), so the requests that
        // arrive while the collector writes share the next seal and write.
        // Shipped after the answers that need not wait for it (answers that
        // wait for their records are held by the authority until the
        // collector acks the batch), so the seal is not on their path.
        let sealed = self.auth.seal_audit_due(now);
        self.ship_batches(p, changed || sealed > 0)?;
        // The held answers' tokens are signed now, while the collector
        // writes their records (they leave only on its ack): an answer
        // waits for the seal's signature, not for its token's too.
        self.auth.sign_held();
        // A batch sealed for the collector now, and answers held for acks.
        let quiet = !self.backlog && sealed > 0 && self.auth.held_len() > 0;
        self.quiet_clients(quiet);
        self.persist_head(p);
        let empty = self.auth.pending_audit_len() == 0;
        if empty && !self.outbox_empty {
            self.empty_report_due = true;
        }
        self.outbox_empty = empty;
        self.report_empty_outbox(p);
        Ok(())
    }

    /// The sealed audit head moved (collector acks) and nothing else did:
    /// persisted after the answers the acks released have left (they need
    /// their records on the collector's disk, which the acks say, not the
    /// head in cryptod's state), at most once per [`HEAD_PERSIST_EVERY_NS`]
    /// (a wake-up comes at least every [`STEP`], so it is at most that
    /// much later): a client asking again at once does not wait for it. A crash before
    /// then loses no record: the next boot's chain continues from the older
    /// head and the records after it stay in the log, verified by their
    /// seals and counted as superseded (`docs/authority.md`, Audit). The
    /// first head of this boot's chain is persisted at once (see
    /// `own_head_durable`).
    fn persist_head<P: Platform>(&mut self, p: &mut P) {
        if !self.head_dirty || self.state_dirty {
            return;
        }
        let now = p.monotonic_ns();
        if self.own_head_durable && now.saturating_sub(self.persisted_at) < HEAD_PERSIST_EVERY_NS {
            return;
        }
        self.persist(p);
    }

    /// Says that the audit outbox is empty and what the collector
    /// acknowledged last, at most once per [`EMPTY_REPORT_EVERY_NS`]; a
    /// report held back is said at a later wake-up if the outbox is still
    /// empty then (else at the next time it empties).
    fn report_empty_outbox<P: Platform>(&mut self, p: &mut P) {
        if !self.empty_report_due || !self.outbox_empty {
            return;
        }
        let Some(seq) = self.collector.acked else { return };
        let now = p.monotonic_ns();
        if self.empty_said_at.is_some_and(|t| now.saturating_sub(t) < EMPTY_REPORT_EVERY_NS) {
            return;
        }
        say!(p, "cryptod: audit outbox empty; collector acknowledged seq {seq}");
        self.empty_said_at = Some(now);
        self.empty_report_due = false;
    }

    /// A console line about `peer`, rate-limited per kind and peer.
    fn warn<P: Platform>(
        &mut self,
        p: &mut P,
        kind: &'static str,
        peer: u32,
        args: fmt::Arguments<'_>,
    ) {
        warn(&mut self.console, p, kind, peer, args);
    }

    /// Reads what entropyd published (the entropy link is the only way to
    /// [`Authority::entropy`]); reconnects when the link is down.
    fn poll_entropy<P: Platform<Backend = B>>(
        &mut self,
        p: &mut P,
        now: u64,
    ) -> Result<bool, AppError> {
        let mut changed = false;
        if self.entropy.dom == NOBODY {
            return Ok(false);
        }
        if self.entropy.link.as_ref().is_none_or(|l| !l.is_open()) {
            let config = ClientConfig { server: self.entropy.dom, port: port::ENTROPY };
            self.entropy.link = match Vchan::client(p.backend(), config) {
                Ok(v) => Some(Link::new(v)),
                Err(VchanError::NotPublished) => None,
                Err(e) => {
                    let dom = u32::from(self.entropy.dom.0);
                    self.warn(p, "entropy_connect", dom, format_args!("entropy link: {e}"));
                    None
                }
            };
        }
        let Some(link) = self.entropy.link.as_mut() else { return Ok(false) };
        for _ in 0..CLIENT_BUDGET {
            match link.poll() {
                Ok(Some(Message::EntropyPub(e))) => {
                    let hw: Zeroizing<[u8; 32]> = Zeroizing::new(random(p)?);
                    let out = self.auth.entropy(&self.entropy.peer, &e, now, &hw[..]);
                    changed |= !out.audit.is_empty();
                    self.state_dirty |= out.state_changed;
                }
                Ok(Some(other)) => {
                    let dom = self.entropy.peer.domid;
                    let kind = other.kind().as_str();
                    warn(
                        &mut self.console,
                        p,
                        "entropy_other",
                        dom,
                        format_args!("entropy link sent {kind}; ignored"),
                    );
                }
                Ok(None) => break,
                Err(e) => {
                    let dom = self.entropy.peer.domid;
                    self.warn(p, "entropy_link", dom, format_args!("entropy link: {e}"));
                    self.entropy.link = None;
                    break;
                }
            }
        }
        Ok(changed)
    }

    /// Looks the entropy domain's name up again: it may have appeared, or
    /// been created again under a new id. An open link does not mean the
    /// old domain lives: a destroyed unikernel leaves its ring looking
    /// connected (nothing runs in it to say otherwise, and Xen sends no
    /// event), so the name decides, as it does for clients.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn follow_entropy<P: Platform>(&mut self, p: &mut P) {
        // A destroyed entropyd whose pages we still map stays a zombie
        // domain (its memory not freed) until we let go of them. No
        // reconnecting to it either (a store read every wake-up): the
        // name, once it resolves again, says where entropy comes from.
        if self.entropy.link.as_mut().is_some_and(|l| l.chan().peer_vanished().unwrap_or(false)) {
            say!(
                p,
                "cryptod: {} (dom{}) is gone; its link is closed",
                self.entropy.name,
                self.entropy.peer.domid
            );
            self.entropy.link = None;
            self.entropy.dom = NOBODY;
        }
        let Ok(dom) = p.resolve(&self.entropy.name) else { return };
        if dom != self.entropy.dom {
            say!(
                p,
                "cryptod: {} is dom{}; taking entropy from it",
                self.entropy.name,
                u32::from(dom.0)
            );
            self.entropy.dom = dom;
            self.entropy.peer = PeerId::new(u32::from(dom.0), &self.entropy.name);
            self.entropy.link = None;
        }
    }

    /// Serves a client under its current domain id: when its name now
    /// belongs to another domain (the old one was destroyed and the name
    /// created again), the old channel is dropped and a fresh one published
    /// for the new id. A name that does not resolve (the domain is gone for
    /// now) changes nothing.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn follow_domain<P: Platform<Backend = B>>(&mut self, p: &mut P, idx: usize, now: u64) {
        let Some(c) = self.clients.get(idx) else { return };
        let old = u16::try_from(c.peer.domid).map_or(NOBODY, DomId);
        let name = c.name.clone();
        match follow(p, &name, old, port::CRYPTOD) {
            Ok(Some((dom, link))) => {
                let had_link = c.link.is_some();
                let old_peer = c.peer.clone();
                if had_link {
                    say!(
                        p,
                        "cryptod: {name} is now dom{} (was dom{}); serving the new domain",
                        u32::from(dom.0),
                        old_peer.domid
                    );
                    self.forget_answers(p, &old_peer, "domain replaced", now);
                } else {
                    say!(p, "cryptod: {name} is dom{}; serving it", u32::from(dom.0));
                }
                if let Some(c) = self.clients.get_mut(idx) {
                    c.link = Some(link);
                    c.peer = PeerId::new(u32::from(dom.0), &name);
                    c.new_connection();
                }
            }
            Ok(None) => {}
            Err(e) => say!(p, "cryptod: {name} has a new domain, cannot serve it yet: {e}"),
        }
    }

    /// The client's connection is gone: answers still waiting for the
    /// collector must not reach whoever connects next. The drop is audited.
    fn forget_answers<P: Platform>(&mut self, p: &mut P, peer: &PeerId, why: &str, now: u64) {
        let (n, out) = self.auth.drop_held_audited(peer, why, now);
        self.fresh_audit |= !out.audit.is_empty();
        let before = self.unsent.len();
        self.unsent.retain(|(p, _)| p != peer);
        let n = n + (before - self.unsent.len());
        if n > 0 {
            self.warn(
                p,
                "answers_dropped",
                peer.domid,
                format_args!(
                    "cryptod: {} (dom{}) left before {n} answer(s) could be released; dropped",
                    peer.vm, peer.domid
                ),
            );
        }
    }

    /// The client `idx` left (or broke its link): drops its answers and
    /// publishes a fresh ring for its next connection.
    fn reset_client<P: Platform>(
        &mut self,
        p: &mut P,
        idx: usize,
        why: &str,
        now: u64,
    ) -> Result<(), AppError> {
        let Some(peer) = self.clients.get(idx).map(|c| c.peer.clone()) else { return Ok(()) };
        self.forget_answers(p, &peer, why, now);
        let Some(c) = self.clients.get_mut(idx) else { return Ok(()) };
        c.new_connection();
        let Some(Err(e)) = c.link.as_mut().map(|l| l.reinit()) else { return Ok(()) };
        // A fresh ring could not be published (xenstore busy): the client
        // is served again from scratch at the next look-up of its name.
        c.link = None;
        c.peer = absent(&c.name);
        say!(p, "cryptod: {} (dom{}): {e}; publishing again later", peer.vm, peer.domid);
        Ok(())
    }

    /// The client `idx` (`peer`) closed its end: says so (rate-limited) and
    /// listens again on a fresh ring.
    fn client_left<P: Platform>(
        &mut self,
        p: &mut P,
        idx: usize,
        peer: &PeerId,
        now: u64,
    ) -> Result<(), AppError> {
        self.warn(
            p,
            "left",
            peer.domid,
            format_args!("cryptod: {} (dom{}) left; listening again", peer.vm, peer.domid),
        );
        self.reset_client(p, idx, "client left", now)
    }

    /// Handles up to [`CLIENT_BUDGET`] messages from client `idx`; returns
    /// whether audit records were made.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn serve_client<P: Platform<Backend = B>>(
        &mut self,
        p: &mut P,
        idx: usize,
        now: u64,
        dirty: &mut bool,
    ) -> Result<bool, AppError> {
        let mut audited = false;
        let Some(c) = self.clients.get_mut(idx) else { return Ok(false) };
        let peer = c.peer.clone();
        let Some(link) = c.link.as_mut() else { return Ok(false) };
        if !link.is_open() {
            self.client_left(p, idx, &peer, now)?;
            return Ok(false);
        }
        // Not read while answers to it wait for the state to be persisted
        // (as while its answers are not read): they stay bounded.
        if self.unsent.iter().any(|(p, _)| *p == peer) {
            return Ok(false);
        }
        let Some(c) = self.clients.get_mut(idx) else { return Ok(false) };
        let Some(link) = c.link.as_mut() else { return Ok(false) };
        // Once the client is there, nobody else may find this ring: a
        // reconnection gets a fresh one (after we noticed this one end).
        if !c.unpublished && link.chan().peer_state() != Some(PeerState::Waiting) {
            if let Err(e) = link.chan().unpublish() {
                say!(p, "cryptod: {} (dom{}): cannot unpublish: {e}", peer.vm, peer.domid);
            }
            c.unpublished = true;
        }
        let _ = link.pump();
        for _ in 0..CLIENT_BUDGET {
            let Some(link) = self.clients.get_mut(idx).and_then(|c| c.link.as_mut()) else {
                break;
            };
            // Not read while its answers are not: no answer is ever dropped
            // for a full queue, and one client cannot fill cryptod's memory.
            if link.has_queued() {
                return Ok(audited);
            }
            if !link.is_open() {
                self.client_left(p, idx, &peer, now)?;
                return Ok(audited);
            }
            let reply = match link.poll() {
                Ok(None) => return Ok(audited),
                Ok(Some(msg)) => match Request::from_message(&msg) {
                    Some(mut req) => {
                        // dom0's measurement of the peer's image, read once
                        // per connection ([`Client::image`]); none, or one
                        // that cannot be read, is no measurement: an
                        // image-bound rule denies, and an attestation
                        // leaves it out. Randomness from the DRBG alone
                        // (reseeded with hardware entropy at every
                        // entropy_pub).
                        let image = self.image_of(p, idx);
                        if let Request::Attestation(r, _) = req {
                            req = Request::Attestation(r, image);
                        }
                        let out: Output =
                            self.auth.handle_measured_request(&peer, image.as_ref(), req, now, &[]);
                        audited |= !out.audit.is_empty();
                        *dirty |= out.state_changed;
                        out.response
                    }
                    None => {
                        // An ack or entropy chunk on a client link is not
                        // honoured: only their own links reach those paths.
                        let kind = msg.kind().as_str();
                        self.warn(
                            p,
                            "not_served",
                            peer.domid,
                            format_args!(
                                "cryptod: {} (dom{}) sent {kind}; refused",
                                peer.vm, peer.domid
                            ),
                        );
                        Some(portcullis_authority::authority::not_served(&msg))
                    }
                },
                Err(LinkError::Decode(e)) => {
                    self.warn(
                        p,
                        "malformed",
                        peer.domid,
                        format_args!("cryptod: {} (dom{}): {e}", peer.vm, peer.domid),
                    );
                    // The schema's code: unsupported_version, unknown_type,
                    // too_large or malformed.
                    Some(Message::Error(ErrorMsg::for_decode_error(&e)))
                }
                Err(e) => {
                    self.warn(
                        p,
                        "link_broke",
                        peer.domid,
                        format_args!(
                            "cryptod: {} (dom{}): {e}; listening again",
                            peer.vm, peer.domid
                        ),
                    );
                    self.reset_client(p, idx, "client link broke", now)?;
                    return Ok(audited);
                }
            };
            // Sent at the end of the wake-up, once the state is durable.
            if let Some(reply) = reply {
                self.unsent.push((peer.clone(), reply));
            }
        }
        // Budget spent: the others' turn; come back at once.
        self.backlog = true;
        Ok(audited)
    }

    /// dom0's measurement of the peer on client `idx`'s current connection
    /// ([`Platform::measurement`] for the link's peer domain): read at its
    /// first request and kept for the connection; while there is none, read
    /// again at most once per [`MEASUREMENT_RECHECK_NS`].
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn image_of<P: Platform>(&mut self, p: &mut P, idx: usize) -> Option<[u8; 32]> {
        let c = self.clients.get_mut(idx)?;
        if let Some(image) = c.image {
            return Some(image);
        }
        let now = p.monotonic_ns();
        if c.unmeasured_at.is_some_and(|t| now.saturating_sub(t) < MEASUREMENT_RECHECK_NS) {
            return None;
        }
        let dom = u16::try_from(c.peer.domid).ok().map(DomId)?;
        match p.measurement(dom) {
            Ok(image) => {
                c.image = Some(image);
                c.unmeasured_at = None;
                Some(image)
            }
            Err(_) => {
                c.unmeasured_at = Some(now);
                None
            }
        }
    }

    /// Sends one answer to client `idx`, saying (rate-limited) if it fails.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn send_to<P: Platform>(&mut self, p: &mut P, idx: usize, answer: &Message) {
        let Some(c) = self.clients.get_mut(idx) else { return };
        let Some(link) = c.link.as_mut() else { return };
        if let Err(e) = link.send(answer) {
            let (vm, dom) = (c.peer.vm.clone(), c.peer.domid);
            self.warn(p, "reply_failed", dom, format_args!("cryptod: reply to {vm}: {e}"));
        }
    }

    /// Reseals the state (the operators' last accepted TOTP steps, failure
    /// counters and lockouts, keyset version, revocation list, acknowledged
    /// audit head) and hands it to the platform for the next boot, so neither
    /// a crash nor `xl destroy` resets them. Returns whether the held
    /// answers may go: the state is durable, or the platform has no durable
    /// storage ([`PlatformError::Unsupported`], said once). A failure is
    /// said (rate-limited) and keeps them held.
    fn persist<P: Platform>(&mut self, p: &mut P) -> bool {
        let result = match self.auth.export(&self.kek) {
            Ok(sealed) => p.persist(ConfigItem::SealedState, &sealed).map_err(|e| match e {
                PlatformError::Unsupported => None,
                e => Some(alloc::format!("{e}")),
            }),
            Err(e) => Err(Some(alloc::format!("{e}"))),
        };
        match result {
            Ok(()) => {
                // Only acks move the head, and this boot's acks move it
                // into this boot's chain.
                self.own_head_durable |= self.head_dirty;
                self.head_dirty = false;
                self.persisted_at = p.monotonic_ns();
                if core::mem::take(&mut self.persist_failing) {
                    say!(
                        p,
                        "cryptod: sealed state persisted again; releasing {} held answer(s)",
                        self.unsent.len()
                    );
                }
                true
            }
            Err(None) => {
                self.head_dirty = false;
                if !self.persist_warned {
                    say!(
                        p,
                        "cryptod: this platform cannot persist the sealed state; replay state lasts only until restart"
                    );
                    self.persist_warned = true;
                }
                true
            }
            Err(Some(e)) => {
                self.persist_failing = true;
                let held = self.unsent.len();
                let me = u32::from(p.domid().0);
                self.warn(
                    p,
                    "persist_failed",
                    me,
                    format_args!(
                        "cryptod: cannot persist the sealed state ({e}); {held} answer(s) held until it is durable, retrying"
                    ),
                );
                false
            }
        }
    }

    /// Sends the answers the collector's acks released, each to the client
    /// that asked, if it is still the same domain.
    fn deliver<P: Platform>(&mut self, p: &mut P, released: Vec<(PeerId, Message)>) {
        for (peer, answer) in released {
            match self.clients.iter().position(|c| c.peer == peer && c.link.is_some()) {
                Some(idx) => self.send_to(p, idx, &answer),
                None => self.warn(
                    p,
                    "gone",
                    peer.domid,
                    format_args!(
                        "cryptod: {} (dom{}) is gone; its answer is dropped",
                        peer.vm, peer.domid
                    ),
                ),
            }
        }
    }

    /// Takes the collector's acks (re-opening its link if it left, so that
    /// every unacknowledged batch is sent again). Records leave the outbox
    /// only when the collector acks their batch (the collector link is the
    /// only way to [`Authority::collector_ack`]); returns the answers those
    /// acks released.
    fn take_acks<P: Platform>(&mut self, p: &mut P) -> Result<Vec<(PeerId, Message)>, AppError> {
        let mut released = Vec::new();
        let col = &mut self.collector;
        if !col.link.is_open() {
            say!(p, "cryptod: audit collector left; unacknowledged records will be sent again");
            col.link.reinit()?;
            col.shipped = None;
        }
        loop {
            match col.link.poll() {
                Ok(Some(Message::AuditAck(a))) => {
                    col.acked = Some(col.acked.map_or(a.seq, |s| s.max(a.seq)));
                    // Acks make no audit records of their own; they move the
                    // sealed audit head (the next boot's chain continues
                    // from it).
                    let out = self.auth.collector_ack(&a);
                    self.head_dirty |= out.state_changed;
                    released.extend(out.released);
                }
                Ok(Some(other)) => {
                    say!(p, "cryptod: audit link sent {}; ignored", other.kind().as_str());
                }
                Ok(None) => break,
                Err(e) => {
                    say!(p, "cryptod: audit link: {e}");
                    col.link.reinit()?;
                    col.shipped = None;
                    break;
                }
            }
        }
        Ok(released)
    }

    /// Ships the sealed batches not written yet (all unacknowledged ones
    /// after the collector reconnected), one `audit_log` message each.
    fn ship_batches<P: Platform>(&mut self, p: &mut P, new_records: bool) -> Result<(), AppError> {
        let col = &mut self.collector;
        if new_records || !col.link.has_queued() {
            for batch in self.auth.pending_audit_batches() {
                if col.shipped.is_some_and(|s| batch.last_seq <= s) {
                    continue;
                }
                match col.link.send(&Message::AuditLog(batch.to_message())) {
                    Ok(()) => col.shipped = Some(batch.last_seq),
                    Err(LinkError::QueueFull) => break,
                    Err(e) => {
                        say!(p, "cryptod: audit link: {e}");
                        break;
                    }
                }
            }
        }
        let _ = col.link.pump();
        Ok(())
    }
}

/// A console line through `limiter`: printed (with the count of lines
/// suppressed before it) or counted.
fn warn<P: Platform>(
    limiter: &mut LineLimiter,
    p: &mut P,
    kind: &'static str,
    peer: u32,
    args: fmt::Arguments<'_>,
) {
    match limiter.check(kind, peer, p.monotonic_ns()) {
        Verdict::Print { suppressed: 0 } => crate::common::say(p, args),
        Verdict::Print { suppressed } => {
            crate::common::say(p, args);
            say!(p, "cryptod: ({suppressed} similar line(s) suppressed)");
        }
        Verdict::Suppress => {}
    }
}

/// The authority's configuration from cryptod's settings (every field but
/// `name`, which is cryptod's domain name, `name` here). Each field comes
/// from the knob of docs/settings.md named beside it; the consistency
/// between fields is [`Config::check`]'s (run by [`Authority::new`]).
#[inline(never)]
pub fn authority_config(s: &Settings, name: &str) -> Result<Config, SettingsError> {
    // Every integer knob, in the schema's order (image size: no key lookups).
    let [totp_window, max_failures, base_backoff, max_backoff, max_keys, unlock_ttl, policy_ttl, max_policy_ttl, burst, per_minute, max_peers, rotation_period, overlap, audit_outbox, max_held, audit_aggregate_window, reseed_interval] =
        s.ints()?;
    let answer_after_audit = s.flag("answer_after_audit")?;
    let entropy_vm = s.text("entropy", name)?;
    let unlock_audience = s.text("unlock_audience", name)?;
    let outcome_keys = outcome_keys(s.text("outcome_key", "none")?, unlock_audience)?;
    // Nothing fails from here. The schema bounds every integer below
    // u32::MAX.
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Config {
        name: String::from(name),
        entropy_vm: String::from(entropy_vm),
        unlock_audience: String::from(unlock_audience),
        unlock_ttl,
        policy_ttl,
        max_policy_ttl,
        totp_window,
        rate_limit: RateLimitConfig {
            max_failures: small(max_failures),
            base_backoff,
            max_backoff,
            max_keys: small(max_keys) as usize,
        },
        issue_rate: IssueRateConfig {
            burst: small(burst),
            per_minute: small(per_minute),
            max_peers: small(max_peers) as usize,
        },
        keys: KeyConfig { rotation_period, overlap },
        audit_outbox: small(audit_outbox) as usize,
        answer_after_audit,
        max_held: small(max_held) as usize,
        reseed_interval,
        audit_aggregate_window,
        outcome_keys,
    })
}

/// The `outcome_key` setting: `none`, or `DOMAIN=` and 64 hex digits, the
/// key pinned for outcomes of `audience` tokens from that domain.
fn outcome_keys(text: &str, audience: &str) -> Result<Vec<OutcomeKey>, SettingsError> {
    if text == "none" {
        return Ok(Vec::new());
    }
    let bad =
        || SettingsError::Line { line: 0, key: "outcome_key".into(), problem: Problem::BadText };
    let (peer, hex) = text.split_once('=').ok_or_else(bad)?;
    let mut key = [0u8; 32];
    if peer.is_empty() || hex.len() != 64 {
        return Err(bad());
    }
    for (i, b) in key.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(alloc::vec![OutcomeKey { peer: peer.into(), audience: audience.into(), key }])
}

/// Runs cryptod until the platform stops it.
pub fn run<P: Platform>(p: &mut P) -> Result<(), AppError> {
    let mut d = CryptodDriver::new(p)?;
    loop {
        d.poll(p)?;
        let ports = d.ports();
        match p.wait_any(&ports, Some(d.poll_delay())) {
            Ok(_) | Err(PlatformError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
