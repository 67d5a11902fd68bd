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
use portcullis_proto::msg::{EntropyPub, MAX_ENTROPY_CHUNK, MIN_ENTROPY_CHUNK};
use zeroize::Zeroizing;

use crate::common::{port, random, AppError, Settings};
use crate::link::{Link, LinkError};
use crate::net::{follow, serve, NOBODY, RESOLVE_EVERY};
use crate::say;

/// The DRBG construction named in every chunk.
pub const DRBG_VERSION: &str = "chacha20-drbg-v1";

struct Subscriber<B: portcullis_vchan::Backend> {
    name: String,
    /// The domain last seen with the name (`NOBODY` before there was one).
    dom: DomId,
    /// None until a domain has the name.
    link: Option<Link<B>>,
}

/// Runs entropyd until the platform stops it.
pub fn run<P: Platform>(p: &mut P) -> Result<(), AppError> {
    let s = Settings::load(p)?;
    let interval = Duration::from_millis(s.num("interval_ms", 1000)?.clamp(10, 60_000));
    let chunk_len = usize::try_from(s.num("chunk", 64)?).unwrap_or(usize::MAX);
    if !(MIN_ENTROPY_CHUNK..=MAX_ENTROPY_CHUNK).contains(&chunk_len) {
        return Err(AppError::Config(alloc::format!(
            "chunk must be {MIN_ENTROPY_CHUNK} to {MAX_ENTROPY_CHUNK} bytes"
        )));
    }
    let mut drbg = Drbg::new(DEFAULT_RESEED_INTERVAL);
    reseed(p, &mut drbg)?;

    let mut subs: Vec<Subscriber<P::Backend>> = Vec::new();
    let allow: Vec<String> = s.list("allow", "cryptod").map(String::from).collect();
    for name in &allow {
        // A subscriber not created yet is served once a domain has its name.
        match p.resolve(name) {
            Ok(dom) => {
                subs.push(Subscriber {
                    name: name.clone(),
                    dom,
                    link: Some(serve(p, dom, port::ENTROPY)?),
                });
                say!(p, "entropyd: publishing to {name} (dom{})", dom.0);
            }
            Err(e) => {
                subs.push(Subscriber { name: name.clone(), dom: NOBODY, link: None });
                say!(p, "entropyd: {name} not there yet ({e}); publishing to it when it appears");
            }
        }
    }
    say!(p, "entropyd: ready");

    let mut seq = 0u64;
    let mut last_resolve = p.now_unix();
    loop {
        reseed(p, &mut drbg)?;
        let now = p.now_unix();
        let resolve = now.saturating_sub(last_resolve) >= RESOLVE_EVERY;
        if resolve {
            last_resolve = now;
        }
        for sub in subs.iter_mut() {
            // A subscriber destroyed and created again under its name (a
            // restarted cryptod) gets a fresh channel for its new id.
            if resolve {
                match follow(p, &sub.name, sub.dom, port::ENTROPY) {
                    Ok(Some((dom, link))) => {
                        match sub.link {
                            Some(_) => say!(p, "entropyd: {} is now dom{} (was dom{}); publishing to the new domain", sub.name, dom.0, sub.dom.0),
                            None => say!(p, "entropyd: {} is dom{}; publishing to it", sub.name, dom.0),
                        }
                        sub.dom = dom;
                        sub.link = Some(link);
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
                link.reinit()?;
                continue;
            }
            let mut chunk = Zeroizing::new(alloc::vec![0u8; chunk_len]);
            drbg.fill(&mut chunk).map_err(|_| AppError::Protocol("DRBG refused".into()))?;
            let nonce: [u8; 16] = random(p)?;
            let msg = Message::EntropyPub(EntropyPub {
                drbg_version: DRBG_VERSION.into(),
                seq,
                nonce: nonce.to_vec(),
                entropy_chunk: chunk,
                timestamp: p.now_unix(),
            });
            match link.send(&msg) {
                // A subscriber that does not read (or has not connected yet)
                // just misses chunks; it is never waited for.
                Ok(()) | Err(LinkError::QueueFull) => {}
                Err(e) => say!(p, "entropyd: {}: {e}", sub.name),
            }
            // Anything a subscriber writes to us is ignored, but drained.
            while let Ok(Some(_)) = link.poll() {}
        }
        seq = seq.wrapping_add(1);
        crate::net::sleep(p, interval)?;
    }
}

/// Reseeds from 64 fresh bytes of health-tested hardware entropy; fails
/// closed if the source is absent or failing.
fn reseed<P: Platform>(p: &mut P, drbg: &mut Drbg) -> Result<(), AppError> {
    let sample = Zeroizing::new(random::<P, 64>(p)?);
    drbg.reseed(&sample[..], &[]).map_err(|_| AppError::Protocol("DRBG reseed refused".into()))
}
