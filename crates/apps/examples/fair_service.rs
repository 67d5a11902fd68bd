//! Fair service, measured on the hosted platform: the unlocker's round trip
//! to cryptod (a `keyset_req`) while policy_pd floods cryptod with keyset
//! requests, against the same round trip with nobody else asking.
//!
//! ```text
//! cargo run --release -p portcullis-apps --example fair_service [round trips]
//! ```
//!
//! One process: cryptod's driver ([`CryptodDriver`], as `cryptod::run`
//! steps it) in one thread over a `HostedPlatform`, the flooding policy_pd
//! in another, the unlocker in the main thread, all through the hosted
//! backend (shared files, futex event channels, the store stand-in) of one
//! world in a temporary directory. Prints the median, p99 and maximum.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use portcullis_apps::common::port;
use portcullis_apps::cryptod::CryptodDriver;
use portcullis_apps::link::Link;
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::totp::{Algorithm, OperatorSecret};
use portcullis_hosted::{HostedPlatform, World};
use portcullis_platform::{ConfigItem, DomId, Platform, PlatformError};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{EntropyPub, KeysetReq, RequestId};
use portcullis_vchan::{ClientConfig, ServerConfig, Vchan};
use zeroize::Zeroizing;

const KEK: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(10);

fn connect(world: &World, dom: DomId, server: DomId) -> Link<portcullis_hosted::HostedBackend> {
    let backend = world.backend(dom).expect("backend");
    let config = ClientConfig { server, port: port::CRYPTOD };
    Link::new(Vchan::client_wait(backend, config, Some(WAIT)).expect("connect to cryptod"))
}

fn keyset_req(n: u64) -> Message {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    KeysetReq { request_id: RequestId(id) }.into()
}

/// `n` round trips of the unlocker; their durations, sorted.
fn round_trips(link: &mut Link<portcullis_hosted::HostedBackend>, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        match link.call(&keyset_req(i as u64), WAIT).expect("round trip") {
            Message::Keyset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn report(what: &str, t: &[Duration]) {
    let at = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    println!(
        "{what}: {} round trips, median {:?}, p99 {:?}, max {:?}",
        t.len(),
        at(0.5),
        at(0.99),
        t[t.len() - 1]
    );
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let world = World::create(dir.path()).expect("world");
    let cryptod = world.add_domain("cryptod").unwrap();
    let entropyd = world.add_domain("entropyd").unwrap();
    let unlocker = world.add_domain("unlocker").unwrap();
    let policy_pd = world.add_domain("policy_pd").unwrap();
    let state = SealedState::new(
        [0x11; 32],
        [0x22; 32],
        vec![OperatorSecret::new("alice", b"12345678901234567890", Algorithm::Sha1, 8).unwrap()],
        "allow vm=unlocker scopes=luks:unlock aud=unlock_agent volumes=data\n".into(),
    );
    let blob = sealed::seal(&state, &KEK, &[7; 12]).unwrap();
    world.set_config(cryptod, ConfigItem::KeyEncryptionKey, &KEK).unwrap();
    world.set_config(cryptod, ConfigItem::SealedState, &blob).unwrap();
    world
        .set_config(cryptod, ConfigItem::Settings, b"clients=unlocker,policy_pd\ncollector=dom0\n")
        .unwrap();

    // entropyd's stand-in publishes one chunk: cryptod seeds, makes its
    // first signing key and can sign keysets.
    let config =
        ServerConfig { client: cryptod, port: port::ENTROPY, read_min: 4096, write_min: 4096 };
    let mut entropy: Link<_> =
        Link::new(Vchan::server(world.backend(entropyd).unwrap(), config).unwrap());
    let chunk = EntropyPub {
        drbg_version: "fair_service".into(),
        seq: 0,
        nonce: vec![1; 16],
        entropy_chunk: Zeroizing::new(vec![0x5a; 64]),
        timestamp: 0,
    };
    entropy.send(&chunk.into()).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (w, s) = (world.clone(), stop.clone());
    let server = thread::spawn(move || {
        let mut p = HostedPlatform::open(w, cryptod).expect("cryptod platform");
        let mut d = CryptodDriver::new(&mut p).expect("cryptod boots");
        while !s.load(Ordering::Relaxed) {
            d.poll(&mut p).expect("cryptod poll");
            let ports = d.ports();
            match p.wait_any(&ports, Some(d.poll_delay())) {
                Ok(_) | Err(PlatformError::Timeout) => {}
                Err(e) => panic!("wait: {e}"),
            }
        }
    });

    let mut un = connect(&world, unlocker, cryptod);
    // Until cryptod has read the chunk, keysets cannot be signed.
    let deadline = Instant::now() + WAIT;
    while !matches!(un.call(&keyset_req(0), WAIT), Ok(Message::Keyset(_))) {
        assert!(Instant::now() < deadline, "cryptod did not get ready");
        thread::sleep(Duration::from_millis(10));
    }
    report("alone", &round_trips(&mut un, n));

    let flooded = Arc::new(AtomicU64::new(0));
    let (w, s, count) = (world.clone(), stop.clone(), flooded.clone());
    let flood = thread::spawn(move || {
        let mut pd = connect(&w, policy_pd, cryptod);
        let mut i = 0u64;
        while !s.load(Ordering::Relaxed) {
            // As many requests as the ring takes, answers read as they come.
            while pd.send(&keyset_req(i)).is_ok() {
                i += 1;
            }
            let _ = pd.pump();
            while let Ok(Some(_)) = pd.poll() {
                count.fetch_add(1, Ordering::Relaxed);
            }
            let _ = pd.channel().wait(Some(Duration::from_millis(50)));
        }
    });
    thread::sleep(Duration::from_millis(200));
    let before = flooded.load(Ordering::Relaxed);
    let start = Instant::now();
    let t = round_trips(&mut un, n);
    let rate = (flooded.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
    report("while policy_pd floods", &t);
    println!("policy_pd's flood was answered at {rate:.0} requests/s meanwhile");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    server.join().unwrap();
    drop(entropy);
}
