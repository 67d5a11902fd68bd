//! The watcher loop against a small fake xenstored on a UNIX socket pair:
//! guests introduced and released, items, names and `ready` written with
//! their permissions, a persist made durable before its ack, and a restart
//! of the service that neither re-sends items nor loses a persist made
//! while it was down.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portcullis_xen::xenstore::client::Tx;
use portcullis_xen::xenstore::wire::{self, Op, Part, Reassembler, XsError};

use super::peers::Peers;
use super::{config, core, serve, serve_measuring, xs};

#[derive(Default)]
struct Fake {
    nodes: BTreeMap<String, Vec<u8>>,
    perms: BTreeMap<String, Vec<String>>,
    watches: Vec<(String, String)>,
    /// Every path written, in order.
    writes: Vec<String>,
    /// Transaction commits to refuse with EAGAIN before accepting.
    eagain: usize,
    out: Option<UnixStream>,
}

impl Fake {
    fn send(&mut self, bytes: &[u8]) {
        if let Some(s) = &mut self.out {
            let _ = s.write_all(bytes);
        }
    }

    fn fire(&mut self, path: &str) {
        let hits: Vec<(String, String)> = self
            .watches
            .iter()
            .filter(|(w, _)| {
                path == w
                    || path.starts_with(&format!("{w}/"))
                    || w.starts_with(&format!("{path}/"))
            })
            .cloned()
            .collect();
        for (_, token) in hits {
            let ev = wire::encode(Op::WatchEvent, 0, 0, &[Part::Str(path), Part::Str(&token)]);
            self.send(&ev.unwrap());
        }
    }

    fn set(&mut self, path: &str, value: &[u8]) {
        let mut prefix = String::new();
        for part in path.trim_start_matches('/').split('/') {
            prefix.push('/');
            prefix.push_str(part);
            self.nodes.entry(prefix.clone()).or_default();
        }
        self.nodes.insert(path.to_string(), value.to_vec());
        self.writes.push(path.to_string());
        self.fire(path);
    }

    fn rm(&mut self, path: &str) {
        let sub = format!("{path}/");
        self.nodes.retain(|k, _| k != path && !k.starts_with(&sub));
        self.perms.retain(|k, _| k != path && !k.starts_with(&sub));
        self.fire(path);
    }

    fn introduce(&mut self, domid: u16, name: &str) {
        self.set(&format!("/local/domain/{domid}/name"), name.as_bytes());
        self.fire("@introduceDomain");
    }

    fn release(&mut self, domid: u16) {
        self.rm(&format!("/local/domain/{domid}"));
        self.fire("@releaseDomain");
    }

    fn handle(&mut self, msg: wire::Message) {
        let id = msg.header.req_id;
        let fields: Vec<&[u8]> = msg.payload.split(|&b| b == 0).collect();
        let text = |i: usize| String::from_utf8_lossy(fields.get(i).copied().unwrap_or_default());
        let ok = |op| wire::encode(op, id, 0, &[Part::Str("OK")]).unwrap();
        let enoent = wire::encode(Op::Error, id, 0, &[Part::Str("ENOENT")]).unwrap();
        let reply = match msg.op() {
            Some(Op::Read) => match self.nodes.get(&*text(0)) {
                Some(v) => wire::encode(Op::Read, id, 0, &[Part::Raw(v)]).unwrap(),
                None => enoent,
            },
            Some(Op::Write) => {
                let split = msg.payload.iter().position(|&b| b == 0).unwrap();
                self.set(&text(0), &msg.payload[split + 1..]);
                ok(Op::Write)
            }
            Some(Op::Directory) => {
                let dir = format!("{}/", text(0));
                if !self.nodes.contains_key(&*text(0)) {
                    enoent
                } else {
                    let kids: Vec<String> = self
                        .nodes
                        .keys()
                        .filter_map(|k| k.strip_prefix(&dir))
                        .filter(|k| !k.contains('/'))
                        .map(String::from)
                        .collect();
                    let parts: Vec<Part<'_>> = kids.iter().map(|k| Part::Str(k)).collect();
                    wire::encode(Op::Directory, id, 0, &parts).unwrap()
                }
            }
            Some(Op::Rm) => {
                self.rm(&text(0));
                ok(Op::Rm)
            }
            Some(Op::SetPerms) => {
                let perms = (1..fields.len()).map(text).filter(|p| !p.is_empty()).map(String::from);
                self.perms.insert(text(0).into(), perms.collect());
                ok(Op::SetPerms)
            }
            Some(Op::TransactionStart) => {
                wire::encode(Op::TransactionStart, id, 0, &[Part::Str("1")]).unwrap()
            }
            Some(Op::TransactionEnd) if self.eagain > 0 => {
                self.eagain -= 1;
                wire::encode(Op::Error, id, 0, &[Part::Str("EAGAIN")]).unwrap()
            }
            Some(Op::TransactionEnd) => ok(Op::TransactionEnd),
            Some(Op::Watch) => {
                self.watches.push((text(0).into(), text(1).into()));
                let r = ok(Op::Watch);
                self.send(&r);
                // xenstored fires a new watch once.
                let ev =
                    wire::encode(Op::WatchEvent, 0, 0, &[Part::Str(&text(0)), Part::Str(&text(1))]);
                self.send(&ev.unwrap());
                return;
            }
            Some(Op::Unwatch) => {
                let (p, t) = (text(0).to_string(), text(1).to_string());
                self.watches.retain(|w| *w != (p.clone(), t.clone()));
                ok(Op::Unwatch)
            }
            _ => wire::encode(Op::Error, id, 0, &[Part::Str("ENOSYS")]).unwrap(),
        };
        self.send(&reply);
    }
}

/// Serves one connection from the fake (a new connection: no watches).
fn serve_fake(fake: &Arc<Mutex<Fake>>, theirs: UnixStream) {
    {
        let mut f = fake.lock().unwrap();
        f.watches.clear();
        f.out = Some(theirs.try_clone().unwrap());
    }
    let fake = fake.clone();
    std::thread::spawn(move || {
        let mut theirs = theirs;
        let mut rx = Reassembler::default();
        let mut buf = [0u8; 512];
        loop {
            let n = match theirs.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let (used, msg) = rx.push(rest).unwrap();
                rest = &rest[used..];
                if let Some(msg) = msg {
                    fake.lock().unwrap().handle(msg);
                }
            }
        }
    });
}

/// Connects a new client to the fake.
fn connect(fake: &Arc<Mutex<Fake>>) -> xs::Store {
    let (ours, theirs) = UnixStream::pair().unwrap();
    serve_fake(fake, theirs);
    xs::over_socket(ours).unwrap()
}

struct Service {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), String>>,
}

fn start(fake: &Arc<Mutex<Fake>>, cfg: &config::Config, peers: &Peers) -> Service {
    let mut c = connect(fake);
    let stop = Arc::new(AtomicBool::new(false));
    let (cfg, peers, flag) = (cfg.clone(), peers.clone(), stop.clone());
    // xl's records of the domains, as setup() made them.
    let thread = std::thread::spawn(move || {
        // As `portcullis host` does at start: unseal, keep in memory.
        let kek = super::unseal_kek(&cfg).map_err(|e| e.to_string())?;
        assert!(kek.is_some(), "cryptod is configured: its KEK is unsealed");
        serve_measuring(&mut c, &cfg, kek.as_ref(), &peers, &flag, &cfg.state_dir.join("xen"))
    });
    Service { stop, thread }
}

impl Service {
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert_eq!(self.thread.join().unwrap(), Ok(()));
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn node(fake: &Arc<Mutex<Fake>>, path: &str) -> Option<Vec<u8>> {
    fake.lock().unwrap().nodes.get(path).cloned()
}

fn perms(fake: &Arc<Mutex<Fake>>, path: &str) -> Vec<String> {
    fake.lock().unwrap().perms.get(path).cloned().unwrap_or_default()
}

fn setup(dir: &Path) -> config::Config {
    std::fs::create_dir(dir.join("cryptod")).unwrap();
    let sealed = crate::kek::seal_passphrase(
        &[0x4b; 32],
        b"host test passphrase",
        crate::kek::Cost { m_kib: 64, t: 1, p: 1 },
    )
    .unwrap();
    std::fs::write(dir.join(crate::kek::FILE), sealed.encode()).unwrap();
    std::fs::write(dir.join("kek-pass"), b"host test passphrase\n").unwrap();
    std::fs::write(dir.join("cryptod/sealed-state"), b"provisioned").unwrap();
    std::fs::write(dir.join("root.pub"), b"root key").unwrap();
    // What libxl recorded for the domains the tests create (ids 5 to 7).
    let userdata = dir.join("xen");
    std::fs::create_dir(&userdata).unwrap();
    std::fs::write(dir.join("guest.img"), b"a guest image").unwrap();
    for id in 5..=7 {
        record(&userdata, id, &dir.join("guest.img"));
    }
    let src = format!(
        "state_dir = \"{0}\"\nkek_passphrase_file = \"{0}/kek-pass\"\n[guests.cryptod]\nrole = \"cryptod\"\nsettings = {{ collector = \
         \"dom0\" }}\n[guests.unlocker]\nrole = \"unlocker\"\n",
        dir.display()
    );
    config::parse(Path::new("host.toml"), &src).unwrap()
}

#[test]
fn the_watcher_configures_guests_keeps_persists_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let fake = Arc::new(Mutex::new(Fake::default()));
    {
        let mut f = fake.lock().unwrap();
        f.set("/local/domain/0/name", b"Domain-0");
        f.set("/local/domain/3/name", b"other");
        f.eagain = 1; // the first commit must be retried
    }
    let peers = Peers::default();
    let svc = start(&fake, &cfg, &peers);

    // cryptod appears: its items, names and ready, all n0 r5.
    fake.lock().unwrap().introduce(5, "cryptod");
    // The fake applies a transaction's writes at once, so `ready` shows
    // after the attempt whose commit gets EAGAIN too: wait for the retry's.
    let readies = |f: &Arc<Mutex<Fake>>| {
        f.lock().unwrap().writes.iter().filter(|w| *w == "/local/domain/5/portcullis/ready").count()
    };
    wait_for("cryptod ready, after the retried commit", || readies(&fake) >= 2);
    let base = "/local/domain/5/portcullis";
    assert_eq!(node(&fake, &format!("{base}/kek")), Some(vec![0x4b; 32]));
    assert_eq!(node(&fake, &format!("{base}/sealed-state")), Some(b"provisioned".to_vec()));
    assert_eq!(node(&fake, &format!("{base}/settings")), Some(b"collector=dom0\n".to_vec()));
    assert_eq!(node(&fake, &format!("{base}/names/cryptod")), Some(b"5".to_vec()));
    assert_eq!(node(&fake, &format!("{base}/ready")), Some(b"1".to_vec()));
    for p in ["", "/kek", "/sealed-state", "/settings", "/names", "/names/cryptod", "/ready"] {
        assert_eq!(perms(&fake, &format!("{base}{p}")), ["n0", "r5"], "{base}{p}");
    }
    assert_eq!(node(&fake, "/local/domain/3/portcullis"), None, "not our guest");
    let writes = fake.lock().unwrap().writes.clone();
    // (The fake applies a transaction's writes at once, so the attempt whose
    // commit got EAGAIN shows too: the last attempt ends with ready.)
    let ready_at = writes.iter().rposition(|w| w == "/local/domain/5/portcullis/ready").unwrap();
    assert_eq!(ready_at, writes.len() - 1, "ready is written last: {writes:?}");
    assert_eq!(writes.iter().filter(|w| w.ends_with("/ready")).count(), 2, "EAGAIN retried");
    assert_eq!(peers.get("cryptod"), Some(5));

    // unlocker appears: configured; cryptod's map gains it.
    fake.lock().unwrap().introduce(6, "unlocker");
    wait_for("unlocker ready", || node(&fake, "/local/domain/6/portcullis/ready").is_some());
    assert_eq!(node(&fake, "/local/domain/6/portcullis/root-pub"), Some(b"root key".to_vec()));
    assert_eq!(node(&fake, "/local/domain/6/portcullis/settings"), None);
    assert_eq!(node(&fake, "/local/domain/6/portcullis/names/cryptod"), Some(b"5".to_vec()));
    // (Written, then given its permissions: the fake applies each request
    // of a transaction at once, so wait for both.)
    wait_for("cryptod's map", || !perms(&fake, &format!("{base}/names/unlocker")).is_empty());
    assert_eq!(perms(&fake, &format!("{base}/names/unlocker")), ["n0", "r5"]);

    // cryptod persists: on disk first, then the ack.
    let state = dir.path().join("cryptod/sealed-state");
    let ack = "/local/domain/5/portcullis/persist-ack/sealed-state";
    fake.lock().unwrap().set("/local/domain/5/data/portcullis-persist/sealed-state", b"resealed");
    let want = hex::encode(core::digest(b"resealed"));
    wait_for("the ack and its permissions", || !perms(&fake, ack).is_empty());
    assert_eq!(std::fs::read(&state).unwrap(), b"resealed", "durable before the ack");
    assert_eq!(node(&fake, ack), Some(want.into_bytes()));
    assert_eq!(perms(&fake, ack), ["n0", "r5"]);
    // A persist too big to be handed back is refused: no ack, the file
    // keeps the last one. (No xenstore node can exceed MAX_PERSIST_LEN.)
    let big = vec![b'x'; core::MAX_PERSIST_LEN - 6];
    fake.lock().unwrap().set("/local/domain/5/data/portcullis-persist/sealed-state", &big);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read(&state).unwrap(), b"resealed");
    assert_eq!(node(&fake, ack), Some(hex::encode(core::digest(b"resealed")).into_bytes()));

    // cryptod is destroyed: the unlocker's map forgets it.
    fake.lock().unwrap().release(5);
    wait_for("stale name removed", || {
        node(&fake, "/local/domain/6/portcullis/names/cryptod").is_none()
    });
    assert_eq!(node(&fake, "/local/domain/6/portcullis/names/unlocker"), Some(b"6".to_vec()));
    assert_eq!(peers.get("cryptod"), None);
    assert_eq!(node(&fake, "/local/domain/5/portcullis"), None, "nothing written after release");

    // Created again: it gets the latest durable state.
    fake.lock().unwrap().introduce(7, "cryptod");
    wait_for("cryptod ready again", || node(&fake, "/local/domain/7/portcullis/ready").is_some());
    assert_eq!(node(&fake, "/local/domain/7/portcullis/sealed-state"), Some(b"resealed".to_vec()));

    // The service stops; cryptod persists meanwhile; the service starts again.
    svc.stop();
    let unlocker_writes = |f: &Fake| {
        f.writes.iter().filter(|w| w.starts_with("/local/domain/6/portcullis/root-pub")).count()
    };
    let before = unlocker_writes(&fake.lock().unwrap());
    fake.lock().unwrap().set("/local/domain/7/data/portcullis-persist/sealed-state", b"while down");
    let peers = Peers::default();
    let svc = start(&fake, &cfg, &peers);
    let ack7 = "/local/domain/7/portcullis/persist-ack/sealed-state";
    wait_for("the ack after the restart", || node(&fake, ack7).is_some());
    assert_eq!(std::fs::read(&state).unwrap(), b"while down");
    assert_eq!(node(&fake, ack7), Some(hex::encode(core::digest(b"while down")).into_bytes()));
    wait_for("peers after the restart", || peers.get("unlocker") == Some(6));
    assert_eq!(unlocker_writes(&fake.lock().unwrap()), before, "items are not sent again");

    // A persist whose watch event was lost is found at the next rescan
    // (here one caused by another domain arriving).
    {
        let mut f = fake.lock().unwrap();
        let node = "/local/domain/7/data/portcullis-persist/sealed-state";
        f.nodes.insert(node.into(), b"event lost".to_vec());
        f.introduce(9, "bystander");
    }
    let want = hex::encode(core::digest(b"event lost")).into_bytes();
    wait_for("the ack of a persist without its event", || node(&fake, ack7) == Some(want.clone()));
    assert_eq!(std::fs::read(&state).unwrap(), b"event lost");
    svc.stop();
}

/// What libxl records for a domain booted from `kernel` (abridged).
fn record(userdata: &Path, domid: u16, kernel: &Path) {
    let uuid = format!("00000000-0000-4000-8000-{domid:012}");
    let json = format!(
        "{{\"c_info\": {{\"type\": \"pvh\", \"uuid\": \"{uuid}\"}}, \
         \"b_info\": {{\"kernel\": \"{}\", \"max_memkb\": 2048}}}}\n\0",
        kernel.display()
    );
    std::fs::write(userdata.join(format!("userdata-d.{domid}.{uuid}.libxl-json")), json).unwrap();
}

#[test]
fn cryptod_gets_each_guests_measurement_before_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let userdata = dir.path().join("xen");
    let (good, other) = (dir.path().join("unlocker.img"), dir.path().join("modified.img"));
    std::fs::write(&good, b"unlocker image").unwrap();
    std::fs::write(&other, b"unlocker image, modified").unwrap();
    let cryptod_img = dir.path().join("cryptod.img");
    std::fs::write(&cryptod_img, b"cryptod image").unwrap();
    record(&userdata, 5, &cryptod_img);
    record(&userdata, 6, &good);
    record(&userdata, 8, &other);
    let fake = Arc::new(Mutex::new(Fake::default()));
    let peers = Peers::default();
    let mut c = connect(&fake);
    let stop = Arc::new(AtomicBool::new(false));
    let (cfg2, peers2, flag, ud) = (cfg.clone(), peers.clone(), stop.clone(), userdata.clone());
    let thread = std::thread::spawn(move || {
        let kek = super::unseal_kek(&cfg2).map_err(|e| e.to_string())?;
        serve_measuring(&mut c, &cfg2, kek.as_ref(), &peers2, &flag, &ud)
    });
    let svc = Service { stop, thread };
    let hex_of = |b: &[u8]| hex::encode(core::digest(b)).into_bytes();
    let m = "/local/domain/5/portcullis/measurements";

    fake.lock().unwrap().introduce(5, "cryptod");
    wait_for("cryptod ready", || node(&fake, "/local/domain/5/portcullis/ready").is_some());
    assert_eq!(node(&fake, &format!("{m}/5")), Some(hex_of(b"cryptod image")));
    assert_eq!(perms(&fake, &format!("{m}/5")), ["n0", "r5"]);

    fake.lock().unwrap().introduce(6, "unlocker");
    wait_for("cryptod's map", || {
        node(&fake, "/local/domain/5/portcullis/names/unlocker").is_some()
    });
    assert_eq!(node(&fake, &format!("{m}/6")), Some(hex_of(b"unlocker image")));
    assert_eq!(perms(&fake, &format!("{m}/6")), ["n0", "r5"]);
    assert_eq!(node(&fake, "/local/domain/6/portcullis/measurements"), None, "only cryptod's");
    let writes = fake.lock().unwrap().writes.clone();
    let at = |p: &str| writes.iter().position(|w| w == p).unwrap();
    assert!(
        at(&format!("{m}/6")) < at("/local/domain/5/portcullis/names/unlocker"),
        "the measurement before the name: {writes:?}"
    );

    // The unlocker goes: its measurement goes with its name.
    fake.lock().unwrap().release(6);
    // (One transaction removes both, the measurement first; the fake
    // applies each request at once, so wait for both.)
    wait_for("measurement and name removed", || {
        node(&fake, &format!("{m}/6")).is_none()
            && node(&fake, "/local/domain/5/portcullis/names/unlocker").is_none()
    });
    // Started again from a modified image under the same name: measured anew.
    fake.lock().unwrap().introduce(8, "unlocker");
    wait_for("the new measurement", || node(&fake, &format!("{m}/8")).is_some());
    assert_eq!(node(&fake, &format!("{m}/8")), Some(hex_of(b"unlocker image, modified")));
    svc.stop();
}

#[test]
fn the_socket_path_is_used_and_a_lost_connection_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = Arc::new(Mutex::new(Fake::default()));
    fake.lock().unwrap().set("/a", b"A");
    let f = fake.clone();
    let server = std::thread::spawn(move || serve_fake(&f, listener.accept().unwrap().0));
    let mut c = xs::connect(&path).unwrap();
    server.join().unwrap();
    assert_eq!(c.read(Tx::NONE, "/a"), Ok(Some(b"A".to_vec())));
    assert_eq!(xs::describe(&path), path.display().to_string());
    // xenstored goes away: the next request fails as a transport error,
    // which ends the watcher (it connects again), with the reason.
    let out = fake.lock().unwrap().out.take().unwrap();
    out.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(c.read(Tx::NONE, "/a"), Err(XsError::Transport));
    assert!(c.ring().closed().is_some());
    let cfg = setup(dir.path());
    let e = serve(&mut c, &cfg, None, &Peers::default(), &AtomicBool::new(false)).unwrap_err();
    assert!(e.starts_with("watch @introduceDomain: xenstore ring unavailable"), "{e}");
    // Without the socket the kernel's device is used; where there is none
    // either, the error names both.
    let missing = dir.path().join("none");
    if !Path::new(xs::XENBUS_DEVICE).exists() {
        let e = xs::connect(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()) && e.contains("/dev/xen/xenbus"), "{e}");
    }
    assert_eq!(xs::describe(&missing), xs::XENBUS_DEVICE);
}

#[test]
fn a_missing_measurement_is_looked_for_again_soon_then_less_often() {
    use super::measure_retry;
    let ms = Duration::from_millis;
    assert_eq!(measure_retry(Duration::ZERO), ms(100));
    assert_eq!(measure_retry(ms(150)), ms(100));
    assert_eq!(measure_retry(ms(400)), ms(200));
    assert_eq!(measure_retry(ms(1000)), ms(500));
    assert_eq!(measure_retry(Duration::from_secs(9)), ms(500));
}
