//! The unlocker's whole run (its I/O shell included) against cryptod's
//! driver, over the vchan simulator: cryptod, its collector and an
//! entropyd stand-in in one thread, the dom0 unlock agent in another, the
//! unlocker (scripted console) in the test's own.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use portcullis_apps::common::port;
use portcullis_apps::cryptod::CryptodDriver;
use portcullis_apps::unlocker::{self, Outcome};
use portcullis_authority::keys::kid_for;
use portcullis_authority::unlock::luks_passphrase;
use portcullis_platform::ConfigItem;
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{EntropyPub, UnlockOutcome, UnlockResult};
use portcullis_vchan::sim::Hypervisor;
use support::*;
use zeroize::Zeroizing;

fn root_pub_cose_key() -> Vec<u8> {
    let root = cryptod().root_public();
    portcullis_proto::key::encode_public(&root, &kid_for(&root)).unwrap()
}

/// cryptod's driver, its collector and an entropyd stand-in, running in a
/// thread until `stop`; the thread returns whether cryptod persisted alice's used step.
fn start_cryptod(hv: &Hypervisor, stop: &Arc<AtomicBool>) -> thread::JoinHandle<bool> {
    start_cryptod_with(hv, stop, sealed_blob())
}

/// [`start_cryptod`] from the sealed state `blob`.
fn start_cryptod_with(
    hv: &Hypervisor,
    stop: &Arc<AtomicBool>,
    blob: Vec<u8>,
) -> thread::JoinHandle<bool> {
    spawn_cryptod(hv, stop, blob, Arc::new(AtomicU8::new(RUNNING)))
}

const RUNNING: u8 = 0;
const KILL: u8 = 1;
const KILLED: u8 = 2;

/// [`start_cryptod_with`], and when `life` goes to [`KILL`] the domain is
/// destroyed as `xl destroy` destroys a unikernel (no unmap notification,
/// nothing closed), then `life` goes to [`KILLED`].
fn spawn_cryptod(
    hv: &Hypervisor,
    stop: &Arc<AtomicBool>,
    blob: Vec<u8>,
    life: Arc<AtomicU8>,
) -> thread::JoinHandle<bool> {
    let mut entropyd = server(hv, ENTROPYD, CRYPTOD, port::ENTROPY);
    let chunk = EntropyPub {
        drbg_version: "test".into(),
        seq: 1,
        nonce: vec![1; 16],
        entropy_chunk: Zeroizing::new(vec![0x5a; 64]),
        timestamp: T0,
    };
    entropyd.send(&chunk.into()).unwrap();
    let (hv2, stop2) = (hv.clone(), stop.clone());
    thread::spawn(move || {
        let _entropyd = entropyd;
        let mut p = FakePlatform::new(&hv2, CRYPTOD, "cryptod")
            .with_names(&[("entropyd", ENTROPYD), ("unlocker", UNLOCKER)])
            .with_config(ConfigItem::KeyEncryptionKey, &KEK)
            .with_config(ConfigItem::SealedState, &blob)
            .settings("clients=unlocker\ncollector=dom0\n");
        let mut d = CryptodDriver::new(&mut p).unwrap();
        let mut collector = client(&hv2, DOM0, CRYPTOD, port::AUDIT);
        // cryptod's clock stays at T0: the codes are for T0.
        while !stop2.load(Ordering::Relaxed) {
            if life.load(Ordering::SeqCst) == KILL {
                hv2.kill(CRYPTOD);
                std::mem::forget(d);
                life.store(KILLED, Ordering::SeqCst);
                return false;
            }
            d.poll(&mut p).unwrap();
            collect(&mut collector, true);
            thread::sleep(Duration::from_millis(1));
        }
        // Whether the newest persisted state holds alice's used step (the
        // state is also persisted for failures and acks).
        p.persisted.last().is_some_and(|(_, blob)| {
            let state = portcullis_authority::sealed::unseal(blob, &KEK).unwrap();
            state.last_steps.iter().any(|(op, _)| op == "alice")
        })
    })
}

fn unlocker_platform(hv: &Hypervisor) -> FakePlatform {
    FakePlatform::new(hv, UNLOCKER, "unlocker")
        .with_names(&[("cryptod", CRYPTOD)])
        .with_config(ConfigItem::RootPublicKey, &root_pub_cose_key())
        .settings("operator=alice\ndevice=yubi1\nvolume=data\nattempts=3\n")
}

#[test]
fn the_unlocker_run_refuses_bad_codes_then_unlocks_with_the_right_one() {
    let hv = Hypervisor::new();
    let stop = Arc::new(AtomicBool::new(false));
    let cryptod = start_cryptod(&hv, &stop);
    let hv3 = hv.clone();
    let agent = thread::spawn(move || {
        let mut link = server(&hv3, DOM0, UNLOCKER, port::UNLOCK_AGENT);
        match link.recv_blocking(Duration::from_secs(30)).unwrap() {
            Message::UnlockRequest(u) => {
                let right = u.passphrase[..] == luks_passphrase(&[0x22; 32], "data").unwrap()[..];
                let result = if right { UnlockOutcome::Ok } else { UnlockOutcome::Fail };
                let answer = UnlockResult { request_id: u.request_id, result, reason: None };
                link.send_blocking(&answer.into(), Duration::from_secs(30)).unwrap();
                // Wait for the unlocker to read the answer and leave.
                let _ = link.recv_blocking(Duration::from_secs(5));
                right
            }
            other => panic!("{other:?}"),
        }
    });

    let mut p = unlocker_platform(&hv);
    p.console_in.push_back(Ok("12345".into()));
    p.console_in.push_back(Ok("00000000".into()));
    p.console_in.push_back(Ok(code_at(T0)));
    let outcome = unlocker::run(&mut p);
    stop.store(true, Ordering::Relaxed);
    let persisted = cryptod.join().unwrap();
    assert!(matches!(outcome, Ok(Outcome::Unlocked)), "{outcome:?}\n{}", p.console_out);
    assert!(agent.join().unwrap(), "the agent got the volume's passphrase");
    assert_eq!(p.lines_with("unlocker: a code is 6 or 8 digits"), 1, "{}", p.console_out);
    assert_eq!(p.lines_with("unlocker: refused: fail"), 1, "{}", p.console_out);
    assert_eq!(p.lines_with("unlocker: volume data unlocked"), 1, "{}", p.console_out);
    assert!(persisted, "cryptod persisted the used step");
}

#[test]
fn an_unlocker_started_before_cryptod_is_seeded_asks_again_for_the_keyset() {
    // Reverse creation order: cryptod has no signing key until entropyd
    // seeds it and answers a keyset request `busy` until then (the
    // authority's own answer, unseeded then seeded); the unlocker asks
    // again rather than stopping, then waits for a code.
    use portcullis_authority::{Authority, Config, PeerId};
    let hv = Hypervisor::new();
    let hv2 = hv.clone();
    let stand_in = thread::spawn(move || {
        let mut link = server(&hv2, CRYPTOD, UNLOCKER, port::CRYPTOD);
        let mut unseeded = Authority::new(Config::default(), sealed_state(), T0).unwrap();
        let mut seeded = cryptod();
        let peer = PeerId::new(u32::from(UNLOCKER.0), "unlocker");
        let mut answers = Vec::new();
        for a in [&mut unseeded, &mut seeded] {
            let req = link.recv_blocking(Duration::from_secs(30)).unwrap();
            let answer = ask_as(a, &peer, &req, T0);
            answers.push(answer.kind().as_str().to_string());
            link.send_blocking(&answer, Duration::from_secs(30)).unwrap();
        }
        answers
    });
    let mut p = unlocker_platform(&hv);
    for _ in 0..3 {
        p.console_in.push_back(Err(portcullis_platform::PlatformError::Timeout));
    }
    let outcome = unlocker::run(&mut p);
    assert_eq!(stand_in.join().unwrap(), ["error", "keyset"]);
    assert!(matches!(outcome, Ok(Outcome::GaveUp)), "{outcome:?}\n{}", p.console_out);
    assert_eq!(p.lines_with("unlocker: ready"), 1, "{}", p.console_out);
}

#[test]
fn the_unlocker_gives_up_after_its_attempts_time_out_and_sends_no_code() {
    use portcullis_platform::PlatformError;
    let hv = Hypervisor::new();
    let stop = Arc::new(AtomicBool::new(false));
    let cryptod = start_cryptod(&hv, &stop);
    let mut p = unlocker_platform(&hv);
    for _ in 0..3 {
        p.console_in.push_back(Err(PlatformError::Timeout));
    }
    // A fourth line is there but never asked for: attempts=3.
    p.console_in.push_back(Ok(code_at(T0)));
    let outcome = unlocker::run(&mut p);
    stop.store(true, Ordering::Relaxed);
    assert!(!cryptod.join().unwrap(), "no code was accepted");
    assert!(matches!(outcome, Ok(Outcome::GaveUp)), "{outcome:?}\n{}", p.console_out);
    assert_eq!(p.console_in.len(), 1);
    assert_eq!(p.lines_with("unlocker: ready"), 1);
}

#[test]
fn an_unlocker_idle_at_its_prompt_stops_once_cryptod_is_destroyed() {
    // Without this the unlocker would keep the dead cryptod's ring mapped
    // (a zombie domain under Xen) until the operator typed a code.
    use portcullis_apps::common::AppError;
    use portcullis_apps::link::LinkError;
    use portcullis_vchan::{FrameError, VchanError};
    let hv = Hypervisor::new();
    let stop = Arc::new(AtomicBool::new(false));
    let life = Arc::new(AtomicU8::new(RUNNING));
    let cryptod = spawn_cryptod(&hv, &stop, sealed_blob(), life.clone());
    let mut p = unlocker_platform(&hv);
    p.console_idle = 1000;
    let idle_at_kill = 3;
    p.on_console_idle = Some(Box::new(move |n| {
        if n == idle_at_kill {
            life.store(KILL, Ordering::SeqCst);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while life.load(Ordering::SeqCst) != KILLED {
                assert!(std::time::Instant::now() < deadline, "cryptod's thread never died");
                thread::sleep(Duration::from_millis(1));
            }
        }
    }));
    let outcome = unlocker::run(&mut p);
    stop.store(true, Ordering::Relaxed);
    assert!(!cryptod.join().unwrap());
    assert!(
        matches!(
            outcome,
            Err(AppError::Link(LinkError::Frame(FrameError::Vchan(VchanError::PeerClosed))))
        ),
        "{outcome:?}\n{}",
        p.console_out
    );
    // Alive, cryptod kept the unlocker at its prompt; dead (during the
    // third wait), the look after that wait found it gone.
    assert_eq!(p.idle_waits(), idle_at_kill, "{}", p.console_out);
    assert_eq!(p.lines_with("unlocker: cryptod (dom1) is gone"), 1, "{}", p.console_out);
    assert_eq!(p.lines_with("TOTP code"), 1, "{}", p.console_out);
}

/// The dom0 unlock agent stand-in: answers one unlock request, `ok` if it
/// carries the volume's passphrase.
fn start_agent(hv: &Hypervisor) -> thread::JoinHandle<bool> {
    let hv3 = hv.clone();
    thread::spawn(move || {
        let mut link = server(&hv3, DOM0, UNLOCKER, port::UNLOCK_AGENT);
        match link.recv_blocking(Duration::from_secs(30)).unwrap() {
            Message::UnlockRequest(u) => {
                let right = u.passphrase[..] == luks_passphrase(&[0x22; 32], "data").unwrap()[..];
                let result = if right { UnlockOutcome::Ok } else { UnlockOutcome::Fail };
                let answer = UnlockResult { request_id: u.request_id, result, reason: None };
                link.send_blocking(&answer.into(), Duration::from_secs(30)).unwrap();
                let _ = link.recv_blocking(Duration::from_secs(5));
                right
            }
            other => panic!("{other:?}"),
        }
    })
}

#[test]
fn a_recovery_code_typed_at_the_console_unlocks_once() {
    use portcullis_authority::admin::recovery_hash;
    use portcullis_platform::PlatformError;
    let mut st = sealed_state();
    let codes: Vec<String> = [
        "AAAAA2BBBB",
        "AAAAA3BBBB",
        "AAAAA4BBBB",
        "AAAAA5BBBB",
        "AAAAA6BBBB",
        "AAAAA7BBBB",
        "QQQQQRRRRR",
        "SSSSSTTTTT",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    st.recovery = vec![(
        "alice".into(),
        codes
            .iter()
            .enumerate()
            .map(|(i, c)| recovery_hash(&[i as u8; 16], c.as_bytes()))
            .collect(),
        0,
    )];
    let blob = portcullis_authority::sealed::seal(&st, &KEK, &[7; 12]).unwrap();
    let hv = Hypervisor::new();
    let stop = Arc::new(AtomicBool::new(false));
    let cryptod = start_cryptod_with(&hv, &stop, blob);
    let agent = start_agent(&hv);
    let mut p = unlocker_platform(&hv);
    p.console_in.push_back(Ok("aaaaa-4bbbb".into()));
    let outcome = unlocker::run(&mut p);
    assert!(matches!(outcome, Ok(Outcome::Unlocked)), "{outcome:?}\n{}", p.console_out);
    assert!(agent.join().unwrap(), "the agent got the volume's passphrase");
    // The same code again, at a second console session (another boot: its
    // own randomness): refused.
    let mut p = unlocker_platform(&hv).with_entropy_seed(0x5eed_0002);
    p.console_in.push_back(Ok("AAAAA-4BBBB".into()));
    p.console_in.push_back(Err(PlatformError::Timeout));
    p.console_in.push_back(Err(PlatformError::Timeout));
    let outcome = unlocker::run(&mut p);
    stop.store(true, Ordering::Relaxed);
    cryptod.join().unwrap();
    assert!(matches!(outcome, Ok(Outcome::GaveUp)), "{outcome:?}\n{}", p.console_out);
    assert_eq!(p.lines_with("unlocker: refused: replay"), 1, "{}", p.console_out);
}
