//! The host service's two vchan links to the guests, spoken from dom0
//! through Xen's own libxenvchan (no proxy process):
//!
//! - the audit collector, a libxenvchan **client** of
//!   `/local/domain/<cryptod>/data/vchan/0/9005`: it appends each record to
//!   the log, fsyncs, then acknowledges (`audit_cmd::serve_link`), and
//!   resumes after the last record in the file;
//! - the unlock agent, a libxenvchan **server** at
//!   `/local/domain/0/data/vchan/<unlocker>/9003`, one unlocker connection
//!   at a time (a libxenvchan server serves one connection, so it is
//!   created afresh after each), and for each request a short-lived
//!   **client** of `/local/domain/<cryptod>/data/vchan/0/9001` for the
//!   keyset and revocation list (closed again at once: cryptod serves one
//!   dom0 connection at a time, and other dom0 tools may need it).
//!
//! Both follow [`Peers`]: they wait for their guest's domid, connect
//! (retrying with a bounded exponential backoff while the guest has not
//! published its ring), and start over when the link ends or the domid
//! changes (the guest was destroyed, crashed or created again). A stale
//! link is never trusted to notice a destroyed peer by itself: a grant
//! mapping of a dead domain's page can look open forever.

use super::peers::Peers;
use crate::agent::{self, Agent, Backoff, Dial, Upstream};
use crate::audit_cmd;
use crate::keyfile;
use crate::xenlink::{self, XenChannel, XenLink};
use portcullis_apps::common::port;
use portcullis_apps::link::{Framed, LinkError};
use portcullis_hosted::xenvchan::{VchanState, XenVchanError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The audit collector's configuration.
pub struct CollectorConfig {
    /// cryptod's Xen domain name.
    pub cryptod: String,
    /// The audit log file (appended, fsynced before each ack).
    pub log: PathBuf,
}

/// The unlock agent's configuration.
pub struct AgentConfig {
    /// The unlocker's Xen domain name (the only client served).
    pub unlocker: String,
    /// cryptod's Xen domain name (keyset and revocation list).
    pub cryptod: String,
    /// cryptod's root public key (`<state_dir>/root.pub`).
    pub root: PathBuf,
    /// Volume id to LUKS device or file.
    pub volumes: Vec<(String, PathBuf)>,
    /// Allowed clock skew, seconds.
    pub skew: u64,
    /// Only check passphrases (`cryptsetup open --test-passphrase`).
    pub dry_run: bool,
    /// The agent's outcome key file (none: no outcome reports).
    pub outcome_key: Option<PathBuf>,
}

/// How often a waiting link looks at the stop flag and the peer map.
const CHECK: Duration = Duration::from_millis(200);
/// A link that ends unused sooner than this counts as a failed attempt.
const SHORT_LINK: Duration = Duration::from_secs(1);

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum DialError {
    /// Worth trying again (the guest has not published its ring yet).
    Retry(String),
    /// Trying again cannot help (libxenvchan missing, bad argument).
    Fatal(String),
}

impl From<XenVchanError> for DialError {
    fn from(e: XenVchanError) -> Self {
        if e.is_transient() {
            DialError::Retry(e.to_string())
        } else {
            DialError::Fatal(e.to_string())
        }
    }
}

/// Follows the domain `name` in `peers` until `stop`: connects to its
/// current domid with `dial` (with backoff while that fails) and runs
/// `session` on each link. A session gets a `still` check, true while
/// neither `stop` is set nor the domid changed, and must return once it is
/// false or its link ended, saying whether the link carried anything; then
/// the next connection is made. A link that ended unused within
/// [`SHORT_LINK`] counts as a failed attempt (backoff), so a peer that
/// accepts and drops at once is not redialled in a busy loop.
///
/// Returns `Ok` when stopped, `Err` on a fatal dial error or a session
/// error (such as a log that can no longer be written).
pub(crate) fn follow<L>(
    peers: &Peers,
    name: &str,
    what: &str,
    stop: &AtomicBool,
    mut dial: impl FnMut(u16) -> Result<L, DialError>,
    mut session: impl FnMut(u16, L, &dyn Fn() -> bool) -> Result<bool, String>,
) -> Result<(), String> {
    let mut backoff = Backoff::new();
    // The domid whose failure was last reported (reported once each).
    let mut reported: Option<u16> = None;
    let mut announced_absent = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (generation, _) = peers.snapshot();
        let Some(domid) = peers.get(name) else {
            if !announced_absent {
                super::log::info(format_args!("{what}: waiting for domain {name} to exist"));
                announced_absent = true;
            }
            peers.wait_change(generation, CHECK);
            continue;
        };
        announced_absent = false;
        if !backoff.due(Instant::now()) {
            // Wake early for a new domid or the stop flag.
            peers.wait_change(generation, CHECK);
            if peers.get(name) != Some(domid) {
                backoff.succeeded();
            }
            continue;
        }
        let link = match dial(domid) {
            Ok(link) => link,
            Err(DialError::Fatal(e)) => return Err(format!("{what}: {e}")),
            Err(DialError::Retry(e)) => {
                if reported != Some(domid) {
                    super::log::info(format_args!(
                        "{what}: {name} (domain {domid}) not reachable yet: {e}"
                    ));
                    reported = Some(domid);
                }
                backoff.failed(Instant::now());
                continue;
            }
        };
        reported = None;
        super::log::info(format_args!("{what}: connected to {name} (domain {domid})"));
        let still = || !stop.load(Ordering::Relaxed) && peers.get(name) == Some(domid);
        let started = Instant::now();
        let used = session(domid, link, &still).map_err(|e| format!("{what}: {e}"))?;
        if used || started.elapsed() >= SHORT_LINK {
            backoff.succeeded();
        } else {
            backoff.failed(Instant::now());
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match peers.get(name) {
            Some(now) if now == domid => super::log::info(format_args!(
                "{what}: link to {name} (domain {domid}) ended; connecting again"
            )),
            Some(now) => super::log::info(format_args!(
                "{what}: {name} is now domain {now} (was {domid}); connecting to it"
            )),
            None => super::log::info(format_args!("{what}: {name} (domain {domid}) is gone")),
        }
    }
}

/// Runs until `stop`; follows `peers` (reconnects when the domid changes or the link ends).
pub fn run_collector(
    peers: Peers,
    cfg: CollectorConfig,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let (mut file, mut last) =
        audit_cmd::open_log(&cfg.log).map_err(|e| format!("collector: {e}"))?;
    super::log::info(format_args!(
        "collector: {} chain(s) in {}; collecting from {}",
        last.len(),
        cfg.log.display(),
        cfg.cryptod
    ));
    follow(
        &peers,
        &cfg.cryptod,
        "collector",
        &stop,
        |domid| xenlink::client(domid, port::AUDIT).map_err(DialError::from),
        |_, mut link: XenLink, still| {
            audit_cmd::serve_link(&mut link, &mut file, &mut last, &cfg.log, still)
                .map_err(|e| e.to_string())
        },
    )
}

/// The agent's way to cryptod in a dom0: a libxenvchan client of cryptod's
/// dom0 port at its current domid, retried while not published.
struct XenDial {
    peers: Peers,
    name: String,
}

impl Dial for XenDial {
    type Chan = XenChannel;

    fn dial(&mut self, patience: Duration) -> Result<XenLink, String> {
        let deadline = Instant::now() + patience;
        loop {
            let Some(domid) = self.peers.get(&self.name) else {
                if Instant::now() >= deadline {
                    return Err(format!("no domain {} is running", self.name));
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            return xenlink::connect(domid, port::CRYPTOD, left)
                .map_err(|e| format!("{} (domain {domid}): {e}", self.name));
        }
    }

    fn is_up(link: &mut XenLink) -> bool {
        link.channel().state() != VchanState::Closed
    }
}

/// Serves one unlocker connection on `link` until it ends or `still` is
/// false; returns whether any message arrived.
pub(crate) fn serve_unlocker<C: portcullis_apps::link::Channel, D: Dial>(
    agent: &mut Agent,
    link: &mut Framed<C>,
    cryptod: &mut Upstream<D>,
    still: &dyn Fn() -> bool,
) -> bool {
    let mut used = false;
    while still() {
        let msg = match link.recv_blocking(CHECK) {
            Ok(m) => m,
            Err(LinkError::Timeout) => continue,
            Err(e) => {
                super::log::info(format_args!("agent: unlocker link: {e}"));
                break;
            }
        };
        used = true;
        agent::answer(agent, link, cryptod, msg);
    }
    used
}

/// Runs until `stop`; follows `peers` (reconnects when the domid changes or the link ends).
pub fn run_agent(peers: Peers, cfg: AgentConfig, stop: Arc<AtomicBool>) -> Result<(), String> {
    let root = keyfile::load(&cfg.root).map_err(|e| format!("agent: root key: {e}"))?;
    let mut volumes = HashMap::new();
    for (id, path) in &cfg.volumes {
        let path = path
            .to_str()
            .ok_or_else(|| format!("agent: volume {id}: path {} is not UTF-8", path.display()))?;
        volumes.insert(id.clone(), path.to_string());
    }
    let mut agent = Agent::new(&root, volumes, cfg.dry_run, cfg.skew);
    if let Some(path) = &cfg.outcome_key {
        let key = keyfile::load(path).map_err(|e| format!("agent: outcome key: {e}"))?;
        agent.outcome_key = Some(key.secret.ok_or("agent: outcome key: not a private key")?);
    }
    let mut cryptod =
        Upstream::transient(XenDial { peers: peers.clone(), name: cfg.cryptod.clone() });
    super::log::info(format_args!(
        "agent: serving {} for {} volume(s){}",
        cfg.unlocker,
        agent.volumes.len(),
        if cfg.dry_run { " (dry run)" } else { "" }
    ));
    follow(
        &peers,
        &cfg.unlocker,
        "agent",
        &stop,
        |domid| xenlink::server(domid, port::UNLOCK_AGENT).map_err(DialError::from),
        |_, mut link: XenLink, still| {
            Ok(serve_unlocker(&mut agent, &mut link, &mut cryptod, still))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn peers_with(entries: &[(&str, u16)]) -> Peers {
        let p = Peers::default();
        p.set(entries.iter().map(|(n, d)| ((*n).to_string(), *d)).collect::<BTreeMap<_, _>>());
        p
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fake link: which domid it was made to, and whether the session
    /// should end it at once (a link that ends) or hold it (a live one).
    struct Fake {
        domid: u16,
        ends_at_once: bool,
    }

    #[test]
    fn follows_the_domid_reconnects_after_a_link_end_and_honours_stop() {
        let peers = peers_with(&[("cryptod", 3)]);
        let stop = Arc::new(AtomicBool::new(false));
        let dials = Arc::new(Mutex::new(Vec::new()));
        let sessions_ended = Arc::new(Mutex::new(Vec::new()));
        let t = {
            let (peers, stop, dials, ended) =
                (peers.clone(), stop.clone(), dials.clone(), sessions_ended.clone());
            std::thread::spawn(move || {
                follow(
                    &peers,
                    "cryptod",
                    "test",
                    &stop,
                    |domid| {
                        let mut d = dials.lock().unwrap();
                        d.push(domid);
                        // The first link to domain 3 ends by itself.
                        Ok(Fake { domid, ends_at_once: d.len() == 1 })
                    },
                    |domid, link: Fake, still| {
                        assert_eq!(link.domid, domid);
                        while !link.ends_at_once && still() {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        ended.lock().unwrap().push(domid);
                        Ok(true)
                    },
                )
            })
        };
        // The link that ended is made again to the same domain.
        eventually("a second link to domain 3", || *dials.lock().unwrap() == [3, 3]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*dials.lock().unwrap(), [3, 3], "a live link is not replaced");
        // cryptod created again as domain 7: the live link is dropped.
        peers.set(BTreeMap::from([("cryptod".to_string(), 7)]));
        eventually("a link to domain 7", || *dials.lock().unwrap() == [3, 3, 7]);
        assert_eq!(*sessions_ended.lock().unwrap(), [3, 3]);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(*sessions_ended.lock().unwrap(), [3, 3, 7]);
        assert_eq!(*dials.lock().unwrap(), [3, 3, 7], "no link made after stop");
    }

    #[test]
    fn waits_for_the_domain_retries_unpublished_rings_and_stops_while_waiting() {
        let peers = Peers::default();
        let stop = Arc::new(AtomicBool::new(false));
        let dials = Arc::new(Mutex::new(Vec::<(u16, Instant)>::new()));
        let t = {
            let (peers, stop, dials) = (peers.clone(), stop.clone(), dials.clone());
            std::thread::spawn(move || {
                follow(
                    &peers,
                    "unlocker",
                    "test",
                    &stop,
                    |domid| -> Result<(), DialError> {
                        dials.lock().unwrap().push((domid, Instant::now()));
                        Err(DialError::Retry("not published".into()))
                    },
                    |_, (), _| panic!("no link was made"),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(dials.lock().unwrap().is_empty(), "no dial before the domain exists");
        peers.set(BTreeMap::from([("unlocker".to_string(), 5)]));
        eventually("three attempts", || dials.lock().unwrap().len() >= 3);
        {
            let d = dials.lock().unwrap();
            assert!(d.iter().all(|(dom, _)| *dom == 5));
            // Backed off: the second pause is at least the first doubled.
            assert!(d[1].1 - d[0].1 >= crate::agent::BACKOFF_FIRST);
            assert!(d[2].1 - d[1].1 >= crate::agent::BACKOFF_FIRST * 2);
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_link_dropped_unused_at_once_is_redialled_with_backoff_not_in_a_busy_loop() {
        let peers = peers_with(&[("cryptod", 4)]);
        let stop = Arc::new(AtomicBool::new(false));
        let dials = Arc::new(Mutex::new(0usize));
        let t = {
            let (peers, stop, dials) = (peers.clone(), stop.clone(), dials.clone());
            std::thread::spawn(move || {
                follow(
                    &peers,
                    "cryptod",
                    "test",
                    &stop,
                    |_| {
                        *dials.lock().unwrap() += 1;
                        Ok(())
                    },
                    |_, (), _| Ok(false),
                )
            })
        };
        // Pauses of 200, 400, 800 ms: at most 3 dials in 700 ms.
        std::thread::sleep(Duration::from_millis(700));
        let n = *dials.lock().unwrap();
        assert!((1..=3).contains(&n), "{n} dials in 700 ms");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_fatal_dial_error_ends_the_thread_with_it() {
        let peers = peers_with(&[("cryptod", 2)]);
        let stop = AtomicBool::new(false);
        let r = follow(
            &peers,
            "cryptod",
            "collector",
            &stop,
            |_| -> Result<(), DialError> { Err(DialError::Fatal("libxenvchan missing".into())) },
            |_, (), _| Ok(true),
        );
        assert_eq!(r, Err("collector: libxenvchan missing".to_string()));
    }

    #[test]
    fn a_session_error_ends_the_thread_with_it() {
        let peers = peers_with(&[("cryptod", 2)]);
        let stop = AtomicBool::new(false);
        let r = follow(
            &peers,
            "cryptod",
            "collector",
            &stop,
            |_| Ok(()),
            |_, (), _| -> Result<bool, String> {
                Err("audit.log: No space left on device".to_string())
            },
        );
        assert_eq!(r, Err("collector: audit.log: No space left on device".to_string()));
    }

    /// A way to cryptod that never gets there, counting attempts.
    struct NoCryptod(Arc<Mutex<usize>>);

    impl Dial for NoCryptod {
        type Chan = crate::socket::SocketChannel;
        fn dial(&mut self, _: Duration) -> Result<Framed<Self::Chan>, String> {
            *self.0.lock().unwrap() += 1;
            Err("cryptod (domain 4): not published".into())
        }
        fn is_up(_: &mut Framed<Self::Chan>) -> bool {
            false
        }
    }

    #[test]
    fn the_agent_answers_each_request_and_waits_for_cryptod_within_its_patience() {
        use crate::socket::{SocketChannel, SocketLink};
        use portcullis_proto::envelope::Message;
        use portcullis_proto::msg::{RequestId, UnlockOutcome, UnlockRequest};
        use std::os::unix::net::UnixStream;
        use zeroize::Zeroizing;

        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let root =
            keyfile::LoadedKey { kid: vec![1; 8], public: key.verifying_key(), secret: None };
        let volumes = HashMap::from([("data".to_string(), "/nonexistent/volume".to_string())]);
        let dials = Arc::new(Mutex::new(0));
        let keep = Arc::new(AtomicBool::new(true));
        let (ours, theirs) = UnixStream::pair().unwrap();
        let agent = {
            let (dials, keep) = (dials.clone(), keep.clone());
            std::thread::spawn(move || {
                let mut agent = Agent::new(&root, volumes, true, 30);
                let mut cryptod = Upstream::transient(NoCryptod(dials));
                let mut link = SocketLink::new(SocketChannel::new(ours));
                let used = serve_unlocker(&mut agent, &mut link, &mut cryptod, &|| {
                    keep.load(Ordering::Relaxed)
                });
                assert!(used);
            })
        };
        let mut unlocker = SocketLink::new(SocketChannel::new(theirs));
        let mut ask = |volume: &str, id: u8| {
            let req = Message::UnlockRequest(UnlockRequest {
                request_id: RequestId([id; 16]),
                volume_id: volume.into(),
                passphrase: Zeroizing::new(vec![9; 32]),
                token: vec![1; 16],
            });
            match unlocker.call(&req, Duration::from_secs(10)).unwrap() {
                Message::UnlockResult(r) => {
                    assert_eq!(r.request_id, RequestId([id; 16]));
                    (r.result, r.reason.unwrap_or_default())
                }
                other => panic!("expected an unlock result, got {other:?}"),
            }
        };
        // No volume of that id: refused without asking cryptod.
        assert_eq!(ask("other", 1), (UnlockOutcome::Denied, "unknown volume".to_string()));
        assert_eq!(*dials.lock().unwrap(), 0, "cryptod is asked only for a real request");
        // A real request needs cryptod's keyset: tried again while cryptod is
        // not there, then refused saying why.
        let (outcome, reason) = ask("data", 2);
        assert_eq!(outcome, UnlockOutcome::Denied);
        assert!(reason.starts_with("cannot check the token") && reason.contains("not published"));
        assert!(*dials.lock().unwrap() >= 3, "retried within the request's patience");
        keep.store(false, Ordering::Relaxed);
        eventually("the agent to stop", || agent.is_finished());
        agent.join().unwrap();
    }

    #[test]
    fn without_libxenvchan_the_links_fail_with_what_to_install() {
        // On a machine without Xen's library, both threads end at once with
        // the install hint; with it (but no Xen) they keep retrying, so
        // this only runs where the library is absent.
        if portcullis_hosted::xenvchan::load_library().is_ok() {
            return;
        }
        let peers = peers_with(&[("cryptod", 2)]);
        let dir = tempfile::tempdir().unwrap();
        let cfg = CollectorConfig { cryptod: "cryptod".into(), log: dir.path().join("audit.log") };
        let e = run_collector(peers, cfg, Arc::new(AtomicBool::new(false))).unwrap_err();
        assert!(e.starts_with("collector: ") && e.contains("xen-utils"), "{e}");
        assert!(dir.path().join("audit.log").exists(), "the log is opened first");
    }
}
