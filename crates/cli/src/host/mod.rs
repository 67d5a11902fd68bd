//! `portcullis host`: the dom0 service that does a toolstack's work for the
//! Portcullis guests (docs/host.md; the xenstore layout is in docs/xen.md).
//!
//! This module is the shell: it reads xenstore, asks [`core`] what to do,
//! and does it (xenstore writes with their permissions, durable files,
//! acknowledgements), and it runs the audit collector and the unlock agent
//! ([`links`]) in threads, starting them again when they fail.

pub mod config;
pub mod core;
pub mod links;
pub mod log;
pub mod measure;
pub mod peers;
pub mod persist;
pub mod xs;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_platform::ConfigItem;
use portcullis_xen::xenstore::client::Tx;
use portcullis_xen::xenstore::wire::{Errno, XsError};

use self::config::Config;
use self::core::{Core, PersistStep, Role, Seen, Source};
use self::peers::Peers;
use self::xs::Store;
use crate::kek::{self, Kek};
use crate::Failure;
use zeroize::Zeroizing;

/// Rescan every domain at least this often (a safety net for missed events).
const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// How long one wait for a watch event lasts before the stop flag is looked at.
const EVENT_WAIT: Duration = Duration::from_secs(1);
/// Pause before a failed link thread or a lost xenstore connection is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(5);
/// At most one log line per this long about one domain's refused persists.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Rescan at most this often while one of our guests is not measured yet
/// (libxl writes a domain's name before its record, so the first look
/// often misses the record, which follows tens of milliseconds later).
/// cryptod serves a guest only once it is measured, so this is on every
/// client's boot-to-ready (issue 14); see [`measure_retry`].
const MEASURE_RETRY: Duration = Duration::from_millis(500);
/// The first retry of a measurement, growing to [`MEASURE_RETRY`].
const MEASURE_RETRY_FIRST: Duration = Duration::from_millis(100);

/// How long to wait before looking again for the record of a guest that
/// has waited `waited` to be measured: half of that, between
/// [`MEASURE_RETRY_FIRST`] and [`MEASURE_RETRY`], so the record that comes
/// tens of milliseconds late is found about 0.1 s after the domain, and a
/// toolstack that is slow to write it (dom0 busy) is not met with ten
/// scans a second for the whole [`MEASURE_GRACE`].
pub fn measure_retry(waited: Duration) -> Duration {
    (waited / 2).clamp(MEASURE_RETRY_FIRST, MEASURE_RETRY)
}
/// A guest still not measured after this long is logged as an error.
const MEASURE_GRACE: Duration = Duration::from_secs(10);
/// The watch token of `@introduceDomain` and `@releaseDomain`.
const DOMAINS_TOKEN: &str = "portcullis-domains";

/// `portcullis host`.
#[derive(clap::Args)]
pub struct HostArgs {
    /// The service's configuration.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Parse and validate the configuration (and that the files it needs
    /// exist), print a summary and exit.
    #[arg(long)]
    check: bool,
    /// The KEK passphrase's file (passphrase protector); overrides
    /// `kek_passphrase_file` of the configuration.
    #[arg(long)]
    kek_passphrase_file: Option<PathBuf>,
}

/// Loads the config and checks the files it needs; the error names the
/// file, line and key.
pub fn load(path: &Path) -> Result<Config, Failure> {
    let cfg = config::load(path).map_err(|e| Failure::Error(e.to_string()))?;
    let src = std::fs::read_to_string(path).unwrap_or_default();
    cfg.check_files(path, &src).map_err(|e| Failure::Error(e.to_string()))?;
    Ok(cfg)
}

/// The KEK as the service unseals it at start (`unseal_kek_with`), for
/// the tests.
#[cfg(test)]
pub fn unseal_kek(cfg: &Config) -> Result<Option<Kek>, Failure> {
    Ok(unseal_kek_with(cfg)?.map(|(key, _)| key))
}

/// Unseals the KEK when a guest is cryptod (its `kek` item): with the
/// protector `cryptod/kek.sealed` names, the passphrase file of the config
/// (else one asked at start) or the systemd credential; returns it with
/// that protector (for the log). The KEK stays in memory only. Any failure
/// is an error: the service does not start.
fn unseal_kek_with(cfg: &Config) -> Result<Option<(Kek, kek::Protector)>, Failure> {
    let needs = cfg
        .guests
        .values()
        .any(|g| g.role.items().iter().any(|i| matches!(core::source(*i), Source::Kek)));
    if !needs {
        return Ok(None);
    }
    let sealed = kek::read(&cfg.state_dir).map_err(|e| kek_failure(cfg, &e))?;
    let how = kek::Unlock::from_env(cfg.kek_passphrase_file.as_deref());
    let key = kek::unseal(&sealed, &how).map_err(|e| kek_failure(cfg, &e))?;
    Ok(Some((key, sealed.protector())))
}

fn kek_failure(cfg: &Config, e: &kek::KekError) -> Failure {
    Failure::Error(format!(
        "cannot unseal the KEK of {}: {e}; not starting",
        cfg.state_dir.display()
    ))
}

/// Runs `portcullis host`.
pub fn run(args: HostArgs) -> Result<(), Failure> {
    let mut cfg = load(&args.config)?;
    if let Some(p) = args.kek_passphrase_file {
        cfg.kek_passphrase_file = Some(p);
    }
    if args.check {
        // The protected KEK file is parsed, not unsealed.
        if cfg.guests.values().any(|g| g.role == Role::Cryptod) {
            let sealed = kek::read(&cfg.state_dir).map_err(|e| kek_failure(&cfg, &e))?;
            println!("{}: ok", args.config.display());
            println!("kek protector {}", sealed.protector().name());
        } else {
            println!("{}: ok", args.config.display());
        }
        print!("{}", cfg.summary());
        return Ok(());
    }
    log::init(cfg.log_level);
    let kek = unseal_kek_with(&cfg)?.map(|(key, protector)| {
        log::info(format_args!(
            "KEK unsealed ({}, protector {}); kept in memory only",
            kek::FILE,
            protector.name()
        ));
        key
    });
    log::info(format_args!(
        "portcullis host {} starting: config {}, guests {}",
        env!("CARGO_PKG_VERSION"),
        args.config.display(),
        cfg.guests.keys().cloned().collect::<Vec<_>>().join(", ")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let peers = Peers::default();
    start_links(&cfg, &peers, &stop);
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = watch(&cfg, kek.as_ref(), &peers, &stop) {
            log::error(format_args!("xenstore: {e}; connecting again in 5 s"));
            std::thread::sleep(RETRY_PAUSE);
        }
    }
    Ok(())
}

fn guest_with(cfg: &Config, role: Role) -> Option<String> {
    cfg.guests.iter().find(|(_, g)| g.role == role).map(|(n, _)| n.clone())
}

/// Runs `body` in a thread until `stop`, starting it again after a pause
/// whenever it returns.
fn keep_running(
    name: &'static str,
    stop: &Arc<AtomicBool>,
    body: impl Fn() -> Result<(), String> + Send + 'static,
) {
    let stop = stop.clone();
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match body() {
                Ok(()) if stop.load(Ordering::Relaxed) => return,
                Ok(()) => log::warn(format_args!("{name}: ended; started again in 5 s")),
                Err(e) => log::error(format_args!("{name}: {e}; started again in 5 s")),
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    });
    if let Err(e) = spawned {
        log::error(format_args!("{name}: cannot start a thread: {e}"));
    }
}

fn start_links(cfg: &Config, peers: &Peers, stop: &Arc<AtomicBool>) {
    let cryptod = guest_with(cfg, Role::Cryptod);
    if let (Some(c), Some(cryptod)) = (&cfg.collector, cryptod.clone()) {
        let (log_path, peers, flag) = (c.log.clone(), peers.clone(), stop.clone());
        keep_running("collector", stop, move || {
            let cfg = links::CollectorConfig { cryptod: cryptod.clone(), log: log_path.clone() };
            links::run_collector(peers.clone(), cfg, flag.clone())
        });
    } else {
        log::info(format_args!("collector: not configured"));
    }
    let unlocker = guest_with(cfg, Role::Unlocker);
    if let (Some(a), Some(cryptod), Some(unlocker)) = (&cfg.agent, cryptod, unlocker) {
        let (a, root) = (a.clone(), cfg.state_dir.join(core::ROOT_PUB));
        let (peers, flag) = (peers.clone(), stop.clone());
        keep_running("agent", stop, move || {
            let cfg = links::AgentConfig {
                unlocker: unlocker.clone(),
                cryptod: cryptod.clone(),
                root: root.clone(),
                volumes: a.volumes.clone(),
                skew: a.skew,
                dry_run: a.dry_run,
                outcome_key: a.outcome_key.clone(),
            };
            links::run_agent(peers.clone(), cfg, flag.clone())
        });
    } else {
        log::info(format_args!("agent: not configured"));
    }
}

/// Whether a xenstore error ends the connection (the others concern one
/// node or one domain and are retried at the next scan).
fn fatal(e: XsError) -> bool {
    matches!(e, XsError::Transport | XsError::Protocol)
}

fn persist_token(domid: u16, item: ConfigItem) -> String {
    format!("portcullis-persist:{domid}:{}", core::item_key(item))
}

fn parse_persist_token(token: &str) -> Option<(u16, ConfigItem)> {
    let rest = token.strip_prefix("portcullis-persist:")?;
    let (id, key) = rest.split_once(':')?;
    let domid = core::parse_domid(id)?;
    [ConfigItem::SealedState].into_iter().find(|i| core::item_key(*i) == key).map(|i| (domid, i))
}

/// The service's watcher: connects, then configures guests and keeps their
/// persists until `stop` or a connection failure.
pub fn watch(
    cfg: &Config,
    kek: Option<&Kek>,
    peers: &Peers,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut c = xs::connect(&cfg.xenstore).map_err(|e| format!("cannot connect: {e}"))?;
    log::info(format_args!("xenstore: connected ({})", xs::describe(&cfg.xenstore)));
    serve(&mut c, cfg, kek, peers, stop).map_err(|e| match c.ring().closed() {
        Some(why) => format!("{e} ({why})"),
        None => e,
    })
}

/// [`watch`] on an open connection. `kek` is the unsealed KEK
/// (`unseal_kek_with`); a cryptod guest is not configured without it.
pub fn serve(
    c: &mut Store,
    cfg: &Config,
    kek: Option<&Kek>,
    peers: &Peers,
    stop: &AtomicBool,
) -> Result<(), String> {
    serve_measuring(c, cfg, kek, peers, stop, Path::new(measure::USERDATA_DIR))
}

/// [`serve`], reading xl's records of the domains (to measure them) from
/// `userdata` instead of [`measure::USERDATA_DIR`].
pub fn serve_measuring(
    c: &mut Store,
    cfg: &Config,
    kek: Option<&Kek>,
    peers: &Peers,
    stop: &AtomicBool,
    userdata: &Path,
) -> Result<(), String> {
    let mut shell = Shell::new(cfg, kek, peers, userdata);
    for path in ["@introduceDomain", "@releaseDomain"] {
        c.watch(path, DOMAINS_TOKEN).map_err(|e| format!("watch {path}: {e}"))?;
    }
    log::info(format_args!("watching for domains (@introduceDomain, @releaseDomain)"));
    let mut last_scan: Option<Instant> = None;
    let mut rescan = true;
    while !stop.load(Ordering::Relaxed) {
        let every = shell.measuring().unwrap_or(RESCAN_EVERY);
        if rescan || last_scan.is_none_or(|t| t.elapsed() >= every) {
            shell.scan(c)?;
            last_scan = Some(Instant::now());
            rescan = false;
        }
        let wait = shell.measuring().unwrap_or(EVENT_WAIT);
        let timeout = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        match c.next_event(Some(timeout)) {
            Ok(None) => {}
            Ok(Some((_, token))) if token == DOMAINS_TOKEN => rescan = true,
            Ok(Some((_, token))) => match parse_persist_token(&token) {
                Some((domid, item)) => shell.check_persist(c, domid, item)?,
                None => log::debug(format_args!("xenstore: event for unknown token {token}")),
            },
            Err(e) => return Err(format!("waiting for events: {e}")),
        }
    }
    Ok(())
}

/// The watcher's state: the config, the core, and what was last logged.
struct Shell<'a> {
    cfg: &'a Config,
    kek: Option<&'a Kek>,
    peers: &'a Peers,
    core: Core,
    warnings: Vec<String>,
    /// When a refused persist was last logged, per domain.
    refusals: BTreeMap<u16, Instant>,
    /// Where xl records the domains' configurations.
    userdata: &'a Path,
    /// Our domains not measured yet: since when, and whether that was
    /// logged as an error (once per domain life, after [`MEASURE_GRACE`]).
    unmeasured: BTreeMap<u16, (Instant, bool)>,
}

impl<'a> Shell<'a> {
    fn new(
        cfg: &'a Config,
        kek: Option<&'a Kek>,
        peers: &'a Peers,
        userdata: &'a Path,
    ) -> Shell<'a> {
        let roles = cfg.guests.iter().map(|(n, g)| (n.clone(), g.role)).collect();
        let mut core = Core::new(roles);
        // What is durable now: a persist equal to it is acked without a rewrite.
        for g in cfg.guests.values() {
            for item in g.role.persists() {
                if let Source::File(rel) = core::source(*item) {
                    let path = cfg.state_dir.join(rel);
                    match persist::read_bounded(&path, core::MAX_PERSIST_LEN) {
                        Ok(bytes) => core.set_durable(rel, core::digest(&bytes)),
                        Err(e) => log::warn(format_args!("{}: {e}", path.display())),
                    }
                }
            }
        }
        Shell {
            cfg,
            kek,
            peers,
            core,
            warnings: Vec::new(),
            refusals: BTreeMap::new(),
            userdata,
            unmeasured: Default::default(),
        }
    }

    /// While a guest is waiting to be measured (within its grace time):
    /// how soon to look again ([`measure_retry`] of the newest wait).
    fn measuring(&self) -> Option<Duration> {
        self.unmeasured
            .values()
            .filter(|(_, logged)| !logged)
            .map(|(since, _)| measure_retry(since.elapsed()))
            .min()
    }

    fn scan(&mut self, c: &mut Store) -> Result<(), String> {
        let ids =
            c.directory(Tx::NONE, "/local/domain").map_err(|e| format!("list domains: {e}"))?;
        let mut seen = Vec::new();
        for id in ids.iter().take(core::MAX_DOMAINS + 1) {
            let Some(domid) = core::parse_domid(id).filter(|d| *d != 0) else { continue };
            let name = self.read(c, &format!("{}/name", core::dom_path(domid)))?;
            let ours = name
                .as_deref()
                .and_then(|n| std::str::from_utf8(n).ok())
                .is_some_and(|n| self.cfg.guests.contains_key(n));
            let ready = ours && self.read(c, &core::ready_path(domid))?.is_some();
            let wanted = name.as_deref().is_some_and(|n| self.core.wants_measurement(domid, n));
            let measurement = if wanted { self.measure(domid, name.as_deref()) } else { None };
            seen.push(Seen { domid, name, ready, measurement });
        }
        self.unmeasured.retain(|id, _| seen.iter().any(|s| s.domid == *id));
        let plan = self.core.scan(&seen);
        if plan.warnings != self.warnings {
            for w in &plan.warnings {
                log::warn(format_args!("{w}"));
            }
            self.warnings = plan.warnings.clone();
        }
        for (id, name) in &plan.left {
            self.refusals.remove(id);
            self.unmeasured.remove(id);
            log::info(format_args!("{name} (dom{id}) is gone"));
        }
        for (id, name) in &plan.arrived {
            log::info(format_args!("{name} is dom{id}"));
        }
        for (id, item) in &plan.unwatch {
            let _ = c.unwatch(&core::persist_path(*id, *item), &persist_token(*id, *item));
        }
        self.peers.set(plan.peers.clone());
        for cf in &plan.configure {
            match self.configure(c, cf) {
                Ok(()) => {
                    self.core.configured(cf.domid, cf.names.clone());
                    if cf.role == Role::Cryptod {
                        self.core.measurements_written(cf.domid, cf.measurements.clone());
                    }
                    log::info(format_args!("{} (dom{}): configured, ready", cf.name, cf.domid));
                }
                Err(e) if e.fatal => return Err(e.message),
                Err(e) => log::error(format_args!(
                    "{} (dom{}): not configured: {}",
                    cf.name, cf.domid, e.message
                )),
            }
        }
        for (id, names) in &plan.names {
            let measurements = plan.measurements.get(id);
            let written = in_domain(c, *id, |c, tx| {
                if let Some(m) = measurements {
                    write_measurements(c, tx, *id, m)?;
                }
                write_names(c, tx, *id, names)
            });
            match written {
                Ok(()) => {
                    self.core.names_written(*id, names.clone());
                    if let Some(m) = measurements {
                        self.core.measurements_written(*id, m.clone());
                    }
                    log::debug(format_args!("dom{id}: names map rewritten"));
                }
                Err(e) if fatal(e) => return Err(format!("dom{id}: names: {e}")),
                Err(e) => log::warn(format_args!("dom{id}: names map not rewritten: {e}")),
            }
        }
        for (id, item) in &plan.watch {
            let path = core::persist_path(*id, *item);
            c.watch(&path, &persist_token(*id, *item)).map_err(|e| format!("watch {path}: {e}"))?;
        }
        // Every persist node, not only the new ones: the client keeps a
        // bounded number of events, so one may have been dropped.
        for (id, item) in self.core.persisting() {
            self.check_persist(c, id, item)?;
        }
        Ok(())
    }

    /// Measures domain `domid` (the kernel xl recorded for it). A failure
    /// reads as not measured (cryptod is not given the name yet; tried
    /// again after [`measure_retry`]); it is logged at `debug`, and once
    /// at `error` if it lasts [`MEASURE_GRACE`].
    fn measure(&mut self, domid: u16, name: Option<&[u8]>) -> Option<[u8; 32]> {
        let name = String::from_utf8_lossy(name.unwrap_or_default()).into_owned();
        match measure::measure(self.userdata, domid) {
            Ok(m) => {
                self.unmeasured.remove(&domid);
                log::info(format_args!(
                    "{name} (dom{domid}): image {} sha256 {}",
                    m.kernel.display(),
                    hex::encode(m.digest)
                ));
                Some(m.digest)
            }
            Err(e) => {
                let (since, logged) =
                    self.unmeasured.entry(domid).or_insert((Instant::now(), false));
                if !*logged && since.elapsed() >= MEASURE_GRACE {
                    *logged = true;
                    log::error(format_args!(
                        "{name} (dom{domid}): not measured after {} s: {e}",
                        MEASURE_GRACE.as_secs()
                    ));
                } else {
                    log::debug(format_args!("{name} (dom{domid}): not measured: {e}"));
                }
                None
            }
        }
    }

    /// Reads a node; a daemon error (the domain went away, say) reads as absent.
    fn read(&self, c: &mut Store, path: &str) -> Result<Option<Vec<u8>>, String> {
        match c.read(Tx::NONE, path) {
            Ok(v) => Ok(v),
            Err(e) if fatal(e) => Err(format!("read {path}: {e}")),
            Err(e) => {
                log::debug(format_args!("read {path}: {e}"));
                Ok(None)
            }
        }
    }

    fn configure(&self, c: &mut Store, cf: &core::Configure) -> Result<(), StepError> {
        let guest =
            self.cfg.guests.get(&cf.name).ok_or_else(|| StepError::local("not configured"))?;
        let mut items: Vec<(ConfigItem, Zeroizing<Vec<u8>>)> = Vec::new();
        for item in cf.role.items() {
            let bytes = Zeroizing::new(match core::source(*item) {
                Source::Kek => match self.kek {
                    Some(k) => k.to_vec(),
                    None => return Err(StepError::local("the KEK is not unsealed")),
                },
                Source::Settings => match &guest.settings {
                    Some(s) => s.clone(),
                    None => continue,
                },
                Source::File(rel) => {
                    let path = self.cfg.state_dir.join(rel);
                    persist::read_bounded(&path, core::max_item_len(*item))
                        .map_err(|e| StepError::local(&format!("{}: {e}", path.display())))?
                }
            });
            items.push((*item, bytes));
        }
        let id = cf.domid;
        in_domain(c, id, |c, tx| {
            xs::write_for(c, tx, &core::base_path(id), b"", id)?;
            for (item, bytes) in &items {
                xs::write_for(c, tx, &core::item_path(id, *item), bytes, id)?;
            }
            if cf.role == Role::Cryptod {
                write_measurements(c, tx, id, &cf.measurements)?;
            }
            write_names(c, tx, id, &cf.names)?;
            xs::write_for(c, tx, &core::ready_path(id), b"1", id)
        })
        .map_err(StepError::store)
    }

    /// Reads `domid`'s persist node of `item` and makes it durable, then
    /// acknowledges it.
    fn check_persist(&mut self, c: &mut Store, domid: u16, item: ConfigItem) -> Result<(), String> {
        if !self.core.persists(domid, item) {
            return Ok(());
        }
        let path = core::persist_path(domid, item);
        let value = self.read(c, &path)?;
        let ack = match self.core.persist_read(domid, item, value.as_deref()) {
            PersistStep::Nothing => return Ok(()),
            PersistStep::Refuse(why) => {
                // A guest may write as often as it likes: one line a minute.
                let now = Instant::now();
                let quiet = self
                    .refusals
                    .get(&domid)
                    .is_some_and(|t| now.saturating_duration_since(*t) < REFUSAL_LOG_EVERY);
                if !quiet {
                    self.refusals.insert(domid, now);
                    log::warn(format_args!("dom{domid}: {path} refused, not acknowledged: {why}"));
                }
                return Ok(());
            }
            PersistStep::Ack(a) => a,
            PersistStep::Write { file, bytes, hash } => {
                let target = self.cfg.state_dir.join(file);
                if let Err(e) = persist::replace_durably(&target, &bytes) {
                    log::error(format_args!(
                        "dom{domid}: persist of {} not acknowledged: {}: {e}",
                        core::item_key(item),
                        target.display()
                    ));
                    return Ok(());
                }
                // One per state change (each accepted code, each audit ack):
                // debug, or the journal gets a line per token.
                log::debug(format_args!(
                    "dom{domid}: {} persisted to {} ({} bytes, sha256 {})",
                    core::item_key(item),
                    target.display(),
                    bytes.len(),
                    hex::encode(hash)
                ));
                match self.core.persisted(domid, item, file, hash) {
                    Some(a) => a,
                    None => return Ok(()),
                }
            }
        };
        let written = in_domain(c, domid, |c, tx| {
            xs::write_for(c, tx, &core::ack_dir(domid), b"", domid)?;
            xs::write_for(c, tx, &ack.path, ack.hex.as_bytes(), domid)
        });
        match written {
            Ok(()) => {
                self.core.acked(&ack);
                log::debug(format_args!("dom{domid}: acknowledged {}", ack.hex));
                Ok(())
            }
            Err(e) if fatal(e) => Err(format!("{}: {e}", ack.path)),
            Err(e) => {
                log::warn(format_args!("{}: not written: {e}", ack.path));
                Ok(())
            }
        }
    }
}

/// A failed step for one domain: `fatal` if the connection is lost.
struct StepError {
    fatal: bool,
    message: String,
}

impl StepError {
    fn local(message: &str) -> StepError {
        StepError { fatal: false, message: message.into() }
    }

    fn store(e: XsError) -> StepError {
        StepError { fatal: fatal(e), message: format!("xenstore: {e}") }
    }
}

/// Runs `body` in a transaction that first checks `domid` still exists, so
/// nothing is written under a domain xl has already removed (the
/// transaction fails with `ENOENT` then).
fn in_domain(
    c: &mut Store,
    domid: u16,
    mut body: impl FnMut(&mut Store, Tx) -> Result<(), XsError>,
) -> Result<(), XsError> {
    let name = format!("{}/name", core::dom_path(domid));
    xs::in_tx(c, |c, tx| {
        if c.read(tx, &name)?.is_none() {
            return Err(XsError::Daemon(Errno::NoEnt));
        }
        body(c, tx)
    })
}

/// Makes cryptod's (`domid`'s) measurements directory hold exactly
/// `measurements` (lowercase hex SHA-256 per measured domain id).
fn write_measurements(
    c: &mut Store,
    tx: Tx,
    domid: u16,
    measurements: &BTreeMap<u16, [u8; 32]>,
) -> Result<(), XsError> {
    let dir = core::measurements_path(domid);
    xs::write_for(c, tx, &dir, b"", domid)?;
    let existing = match c.directory(tx, &dir) {
        Ok(v) => v,
        Err(XsError::Daemon(Errno::NoEnt)) => Vec::new(),
        Err(e) => return Err(e),
    };
    for stale in core::stale_measurements(&existing, measurements) {
        c.rm(tx, &format!("{dir}/{stale}"))?;
    }
    for (dom, digest) in measurements {
        let hex = hex::encode(digest);
        xs::write_for(c, tx, &core::measurement_path(domid, *dom), hex.as_bytes(), domid)?;
    }
    Ok(())
}

/// Makes `domid`'s names directory hold exactly `names`.
fn write_names(
    c: &mut Store,
    tx: Tx,
    domid: u16,
    names: &BTreeMap<String, u16>,
) -> Result<(), XsError> {
    let dir = core::names_path(domid);
    xs::write_for(c, tx, &dir, b"", domid)?;
    let existing = match c.directory(tx, &dir) {
        Ok(v) => v,
        Err(XsError::Daemon(Errno::NoEnt)) => Vec::new(),
        Err(e) => return Err(e),
    };
    for stale in core::stale_names(&existing, names) {
        c.rm(tx, &format!("{dir}/{stale}"))?;
    }
    for (name, id) in names {
        xs::write_for(c, tx, &format!("{dir}/{name}"), id.to_string().as_bytes(), domid)?;
    }
    Ok(())
}
