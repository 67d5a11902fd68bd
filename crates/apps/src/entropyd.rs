//! entropyd: the entropy root.
//!
//! Health-tested hardware entropy (the platform's RDSEED/RDRAND with its
//! health tests; the platform fails closed) seeds and continually reseeds a
//! ChaCha20 DRBG, whose output is published as `entropy_pub` chunks, only to
//! the domains named in the allow-list (`allow=` setting, default `cryptod`).
//! Nobody can ask entropyd for anything: it serves no requests.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use portcullis_authority::drbg::{Drbg, DEFAULT_RESEED_INTERVAL};
use portcullis_platform::{DomId, Platform};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::EntropyPub;
use portcullis_vchan::PeerState;
use zeroize::Zeroizing;

use crate::common::{port, random, AppError};
use crate::link::LinkError;
use crate::net::{follow, serve, sleep_or_names, NOBODY, RESOLVE_EVERY};
use crate::say;
use crate::settings::{Settings, ENTROPYD_SPECS};
use crate::startup::Startup;

/// entropyd's links: they decode its message types only ([`crate::inbox::Entropyd`]).
type Link<B> = crate::link::Link<B, crate::inbox::Entropyd>;

/// The DRBG construction named in every chunk.
pub const DRBG_VERSION: &str = "chacha20-drbg-v1";

/// Most frames read and dropped from one subscriber per round: a
/// subscriber that keeps writing cannot hold entropyd in the loop.
const MAX_DISCARD: usize = 64;

struct Subscriber<B: portcullis_vchan::Backend> {
    name: String,
    /// The domain last seen with the name (`NOBODY` before there was one).
    dom: DomId,
    /// None until a domain has the name.
    link: Option<Link<B>>,
    /// The current ring's store entries are removed (the subscriber is there).
    unpublished: bool,
}

/// entropyd's state between rounds; [`run`] is a loop of
/// [`EntropydDriver::publish`] and a sleep of [`EntropydDriver::interval`].
pub struct EntropydDriver<B: portcullis_vchan::Backend> {
    drbg: Drbg,
    subs: Vec<Subscriber<B>>,
    seq: u64,
    last_resolve: u64,
    chunk_len: usize,
    interval: Duration,
    /// The platform said the names changed: look them up in the next round.
    names_changed: bool,
}

impl<B: portcullis_vchan::Backend + Clone> EntropydDriver<B> {
    /// Boots: reads the settings, seeds the DRBG from the hardware source
    /// (failing closed without one) and publishes a channel to each
    /// allow-listed subscriber that exists.
    pub fn new<P: Platform<Backend = B>>(p: &mut P) -> Result<Self, AppError> {
        let mut startup = Startup::new(p.boot_marks());
        let s = Settings::load(p, &ENTROPYD_SPECS)?;
        let interval = Duration::from_millis(s.num("interval_ms")?);
        let chunk_len = s.num_usize("chunk")?;
        // The schema bounds it to the protocol's MIN_ENTROPY_CHUNK..=MAX_ENTROPY_CHUNK.
        let mut drbg = Drbg::new(DEFAULT_RESEED_INTERVAL);
        reseed(p, &mut drbg)?;
        startup.mark("seed", p.monotonic_ns());

        let mut subs = Vec::new();
        for name in s.list("allow")? {
            // A subscriber not created yet is served once a domain has its name.
            let (dom, link) = match p.resolve(name).map(|dom| (dom, serve(p, dom, port::ENTROPY))) {
                Ok((dom, Ok(link))) => {
                    say!(p, "entropyd: publishing to {name} (dom{})", dom.0);
                    (dom, Some(link))
                }
                // Publishing failed (xenstore busy): tried again at the next
                // look-up, as for a subscriber not created yet.
                Ok((dom, Err(e))) => {
                    say!(
                        p,
                        "entropyd: {name} (dom{}) not published to yet ({e}); trying again",
                        dom.0
                    );
                    (NOBODY, None)
                }
                Err(e) => {
                    say!(
                        p,
                        "entropyd: {name} not there yet ({e}); publishing to it when it appears"
                    );
                    (NOBODY, None)
                }
            };
            subs.push(Subscriber { name: name.into(), dom, link, unpublished: false });
        }
        startup.mark("publish", p.monotonic_ns());
        say!(p, "entropyd: ready");
        say!(p, "{}", startup.report("entropyd"));
        let last_resolve = p.now_unix();
        Ok(EntropydDriver {
            drbg,
            subs,
            seq: 0,
            last_resolve,
            chunk_len,
            interval,
            names_changed: false,
        })
    }

    /// The time between rounds.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The wait between rounds: [`EntropydDriver::interval`], cut short
    /// when the platform says the names changed (a subscriber appeared or
    /// was created again), so the next round, at once, publishes to it.
    /// Returns whether it was cut short.
    pub fn rest<P: Platform<Backend = B>>(&mut self, p: &mut P) -> Result<bool, AppError> {
        let changed = sleep_or_names(p, self.interval)?;
        self.names_changed |= changed;
        Ok(changed)
    }

    /// The sequence number of the next round's chunks.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// One round: reseeds from the hardware source, follows subscribers to
    /// new domain ids, and offers each connected subscriber a fresh chunk.
    pub fn publish<P: Platform<Backend = B>>(&mut self, p: &mut P) -> Result<(), AppError> {
        reseed(p, &mut self.drbg)?;
        let now = p.now_unix();
        let resolve = core::mem::take(&mut self.names_changed)
            || now.saturating_sub(self.last_resolve) >= RESOLVE_EVERY;
        if resolve {
            self.last_resolve = now;
        }
        for sub in self.subs.iter_mut() {
            // A subscriber destroyed and created again under its name (a
            // restarted cryptod) gets a fresh channel for its new id.
            if resolve {
                match follow(p, &sub.name, sub.dom, port::ENTROPY) {
                    Ok(Some((dom, link))) => {
                        match sub.link {
                            Some(_) => say!(
                                p,
                                "entropyd: {} is now dom{} (was dom{}); publishing to the new domain",
                                sub.name,
                                dom.0,
                                sub.dom.0
                            ),
                            None => {
                                say!(p, "entropyd: {} is dom{}; publishing to it", sub.name, dom.0)
                            }
                        }
                        sub.dom = dom;
                        sub.link = Some(link);
                        sub.unpublished = false;
                    }
                    Ok(None) => {}
                    Err(e) => say!(
                        p,
                        "entropyd: {} has a new domain, cannot publish to it yet: {e}",
                        sub.name
                    ),
                }
            }
            let Some(link) = sub.link.as_mut() else { continue };
            if !link.is_open() {
                say!(p, "entropyd: {} left; listening again", sub.name);
                sub.unpublished = false;
                if let Err(e) = link.reinit() {
                    // Published again from scratch at the next look-up.
                    say!(p, "entropyd: {}: {e}; publishing again later", sub.name);
                    sub.link = None;
                    sub.dom = NOBODY;
                }
                continue;
            }
            // Once connected, no later connection may find this ring.
            if !sub.unpublished && link.chan().peer_state() != Some(PeerState::Waiting) {
                if let Err(e) = link.chan().unpublish() {
                    say!(p, "entropyd: {}: cannot unpublish: {e}", sub.name);
                }
                sub.unpublished = true;
            }
            let mut chunk = Zeroizing::new(alloc::vec![0u8; self.chunk_len]);
            self.drbg.fill(&mut chunk).map_err(|_| AppError::Protocol("DRBG refused".into()))?;
            let nonce: [u8; 16] = random(p)?;
            let msg = Message::EntropyPub(EntropyPub {
                drbg_version: DRBG_VERSION.into(),
                seq: self.seq,
                nonce: nonce.to_vec(),
                entropy_chunk: chunk,
                timestamp: p.now_unix(),
            });
            match link.send(&msg) {
                // A subscriber that does not read just misses chunks; it is
                // never waited for.
                Ok(()) | Err(LinkError::QueueFull) => {}
                Err(e) => say!(p, "entropyd: {}: {e}", sub.name),
            }
            // Anything a subscriber writes to us is ignored, but drained
            // (undecoded: entropyd decodes no message type).
            let _ = link.discard(MAX_DISCARD);
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }
}

/// Runs entropyd until the platform stops it.
pub fn run<P: Platform>(p: &mut P) -> Result<(), AppError> {
    let mut d = EntropydDriver::new(p)?;
    loop {
        d.publish(p)?;
        d.rest(p)?;
    }
}

/// Reseeds from 64 fresh bytes of health-tested hardware entropy; fails
/// closed if the source is absent or failing.
fn reseed<P: Platform>(p: &mut P, drbg: &mut Drbg) -> Result<(), AppError> {
    let sample = Zeroizing::new(random::<P, 64>(p)?);
    drbg.reseed(&sample[..], &[]).map_err(|_| AppError::Protocol("DRBG reseed refused".into()))
}
