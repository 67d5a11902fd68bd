//! The dom0 unlock agent on the hosted platform keeps working across a
//! cryptod restart: it connects to the new cryptod again and fetches its
//! keyset and revocation list, instead of refusing every unlock with
//! "cannot check the token" for the rest of its life.
//!
//! The test plays the unlocker itself. Its token is well formed but signed
//! by a key cryptod never published, so a working agent refuses it *after*
//! looking its key up in the keyset it fetched ("token refused: ...
//! (unknown_kid)"); an agent that could not reach cryptod says "cannot
//! check the token" instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use portcullis_apps::link::Framed;
use portcullis_hosted::World;
use portcullis_platform::ConfigItem;
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{RequestId, UnlockOutcome, UnlockRequest};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Claims};
use portcullis_vchan::{ClientConfig, DomId, Vchan};

mod common;

const GUESTS: [&str; 2] = ["entropyd", "cryptod"];
const STEP: Duration = Duration::from_secs(60);

/// A process of the world whose output lines are collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for src in [out, err] {
            let lines = lines.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(src).lines() {
                    let Ok(text) = line else { break };
                    println!("[{name}] {text}");
                    lines.lock().unwrap().push(text);
                }
            });
        }
        Proc { child, lines }
    }

    fn wait_for(&self, pattern: &str, from: usize) -> usize {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(i) =
                self.lines.lock().unwrap().iter().skip(from).position(|l| l.contains(pattern))
            {
                return from + i;
            }
            assert!(Instant::now() < deadline, "no {pattern:?} within {STEP:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `luks:unlock` token for the agent, signed by a key that is not cryptod's.
fn foreign_token(n: u8) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = Claims {
        iss: "cryptod".into(),
        sub: "unlocker".into(),
        aud: "unlock_agent".into(),
        exp: now + 60,
        nbf: now,
        iat: now,
        cti: vec![n; 16],
        scope: ScopeSet::single(Scope::LuksUnlock),
        nonce: vec![n; 16],
    };
    token::mint(&SigningKey::from_bytes(&[9; 32]), b"not-cryptods-key", &claims).unwrap()
}

/// Sends an unlock request with a token cryptod never issued and returns
/// the agent's outcome and reason.
fn unlock(
    link: &mut Framed<Vchan<portcullis_hosted::HostedBackend>>,
    n: u8,
) -> (UnlockOutcome, String) {
    let req = UnlockRequest {
        request_id: RequestId([n; 16]),
        volume_id: "data".into(),
        passphrase: vec![7u8; 32].into(),
        token: foreign_token(n),
    };
    link.send_blocking(&Message::UnlockRequest(req), STEP).expect("send unlock_request");
    match link.recv_blocking(STEP).expect("unlock_result") {
        Message::UnlockResult(r) => {
            assert_eq!(r.request_id, RequestId([n; 16]));
            (r.result, r.reason.unwrap_or_default())
        }
        other => panic!("expected unlock_result, got {}", other.kind().as_str()),
    }
}

fn provision(dir: &Path) -> PathBuf {
    let out = dir.join("p");
    let o = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["provision", "--out", out.to_str().unwrap(), "--no-qr", "--no-image-binding"])
        .output()
        .expect("run portcullis provision");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn the_agent_reconnects_to_a_restarted_cryptod_and_refetches_its_trust() {
    let guests = common::guests_dir(&GUESTS);
    let work = tempfile::tempdir().unwrap();
    let prov = provision(work.path());
    let world = World::create(&work.path().join("world")).unwrap();
    let dom = |name: &str| world.add_domain(name).unwrap();
    let (entropyd, cryptod, unlocker, agent_dom) =
        (dom("entropyd"), dom("cryptod"), dom("unlocker"), dom("unlock_agent"));
    dom("collector");
    let read = |f: &str| std::fs::read(prov.join(f)).unwrap();
    world.set_config(cryptod, ConfigItem::KeyEncryptionKey, &read("cryptod/kek")).unwrap();
    world.set_config(cryptod, ConfigItem::SealedState, &read("cryptod/sealed-state")).unwrap();
    let settings = "clients=unlocker,unlock_agent\ncollector=collector\nentropy=entropyd\nanswer_after_audit=0\n";
    world.set_config(cryptod, ConfigItem::Settings, settings.as_bytes()).unwrap();
    world.set_config(entropyd, ConfigItem::Settings, b"allow=cryptod\ninterval_ms=500\n").unwrap();
    let guest = |name: &str, d: DomId| Proc::spawn(name, world.command_for(d, guests.join(name)));

    let _entropyd = guest("entropyd", entropyd);
    let mut crypto = guest("cryptod", cryptod);
    crypto.wait_for("cryptod: ready", 0);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.args(["unlock-agent", "--world"])
        .arg(world.dir())
        .arg("--root")
        .arg(prov.join("root.pub"))
        .args(["--volume", "data=/nonexistent/portcullis-test.luks", "--dry-run"]);
    let agent = Proc::spawn("agent", cmd);
    agent.wait_for("unlock-agent: ready", 0);

    let config =
        ClientConfig { server: agent_dom, port: portcullis_apps::common::port::UNLOCK_AGENT };
    let backend = world.backend(unlocker).unwrap();
    let mut link = Framed::new(Vchan::client_wait(backend, config, Some(STEP)).unwrap());
    let (outcome, reason) = unlock(&mut link, 1);
    assert_eq!(outcome, UnlockOutcome::Denied);
    let refused_by_keyset =
        |r: &str| r.starts_with("token refused") && r.ends_with("(unknown_kid)");
    assert!(refused_by_keyset(&reason), "before the restart: {reason}");

    // cryptod dies hard; the world cleans up after it and starts it again
    // under the same name.
    let _ = crypto.child.kill();
    let _ = crypto.child.wait();
    world.reap(cryptod).unwrap();
    drop(crypto);
    let from = agent.count();
    crypto = guest("cryptod", cryptod);
    crypto.wait_for("cryptod: ready", 0);

    for n in 2..4 {
        let (outcome, reason) = unlock(&mut link, n);
        assert_eq!(outcome, UnlockOutcome::Denied);
        assert!(
            refused_by_keyset(&reason),
            "after the restart the agent must check tokens against the new cryptod: {reason}"
        );
    }
    agent.wait_for("connecting again", from);

    // Again, but now the agent sits idle while cryptod is away: it notices
    // by itself and connects (with backoff) once cryptod is back.
    let _ = crypto.child.kill();
    let _ = crypto.child.wait();
    world.reap(cryptod).unwrap();
    let from = agent.count();
    agent.wait_for("cryptod went away", from);
    std::thread::sleep(Duration::from_secs(1));
    crypto = guest("cryptod", cryptod);
    crypto.wait_for("cryptod: ready", 0);
    agent.wait_for("connected to cryptod again; trust refreshed", from);
    let (outcome, reason) = unlock(&mut link, 9);
    assert_eq!(outcome, UnlockOutcome::Denied);
    assert!(refused_by_keyset(&reason), "after the second restart: {reason}");
}
