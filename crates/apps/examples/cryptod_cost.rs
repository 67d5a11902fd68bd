//! cryptod's work per audited token on the sans-IO path, independent of the
//! machine's load: [`CryptodDriver`] over the vchan simulator with the
//! drivers' fake platform (`tests/support`), four policy domains each with
//! one token request in flight (as `portcullis demo --scenario bench`'s
//! concurrent phase), the audit wait on, and a collector that acks every
//! batch it reads.
//!
//! ```text
//! cargo run --release -p portcullis-apps --example cryptod_cost [tokens]
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     --toggle-collect='*CryptodDriver*poll*' \
//!     target/release/examples/cryptod_cost [tokens]
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     --toggle-collect='*sign_reference*' \
//!     target/release/examples/cryptod_cost --sign 1000
//! ```
//!
//! `--sign N` signs N token-sized messages with the same Ed25519 build
//! (the hosted platform's `fast` tables): the reference, one signature.
//!
//! Under callgrind with `--toggle-collect` on the driver's `poll`, the
//! instructions counted are cryptod's alone (the clients and the collector
//! of this process are not counted): the difference between two runs with
//! different token counts, divided by the difference, is the instructions
//! per audited token (`cargo xtask bench` does this). Without valgrind it
//! prints the time per token, which moves with the machine's load.
//!
//! What this does not include is the platform: the hosted platform's
//! system calls (event channel waits and wakes, persists) and Xen's
//! hypercalls are the platform's, counted by `strace -c` on the demo.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use portcullis_apps::common::port;
use portcullis_apps::cryptod::CryptodDriver;
use portcullis_apps::link::Link;
use portcullis_platform::{ConfigItem, DomId};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{EntropyPub, IssueResult, RequestId, TokenIssueReq};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_vchan::sim::{Hypervisor, SimBackend};
use support::{
    client, collect, sealed_blob_with_acl, server, FakePlatform, CRYPTOD, DOM0, ENTROPYD, KEK, T0,
};
use zeroize::Zeroizing;

/// The policy domains asking at once, and their domain ids.
const CLIENTS: [(&str, DomId); 4] = [
    ("policy_pd", DomId(7)),
    ("policy_pd2", DomId(8)),
    ("policy_pd3", DomId(9)),
    ("policy_pd4", DomId(10)),
];

fn issue_req(name: &str, i: u64) -> Message {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    TokenIssueReq {
        request_id: RequestId(id),
        vm_id: name.into(),
        requested_scope: ScopeSet::single(Scope::NetModify),
        audience: name.into(),
        justification: "benchmark".into(),
        nonce: id.to_vec(),
        timestamp: T0,
        ttl: Some(60),
        attestation: None,
        metadata: None,
    }
    .into()
}

/// `n` Ed25519 signatures of a token-sized message with the hosted
/// platform's signing (the `fast` tables): the reference for the driver's
/// figure, counted by callgrind in this function alone.
#[inline(never)]
fn sign_reference(n: u64) -> u8 {
    use ed25519_dalek::{Signer, SigningKey};
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut msg = [0x5a_u8; 200];
    let mut acc = 0u8;
    for _ in 0..n {
        let sig = key.sign(&msg);
        acc ^= sig.to_bytes()[0];
        msg[0] = acc;
    }
    acc
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--sign") {
        let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
        let start = Instant::now();
        let acc = sign_reference(n);
        let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{n} signatures ({acc}): {us:.1} us each");
        return;
    }
    let tokens: u64 = first.and_then(|a| a.parse().ok()).unwrap_or(2000);
    let hv = Hypervisor::new();
    let mut acl = String::new();
    let mut settings = String::from("clients=");
    for (i, (name, _)) in CLIENTS.iter().enumerate() {
        acl.push_str(&format!("allow vm={name} scopes=net:modify aud={name}\n"));
        settings.push_str(if i == 0 { "" } else { "," });
        settings.push_str(name);
    }
    settings.push_str("\ncollector=dom0\nissue_per_minute=0\nanswer_after_audit=1\n");
    let mut names = vec![("entropyd", ENTROPYD)];
    names.extend(CLIENTS);
    let mut entropyd: Link<SimBackend> = server(&hv, ENTROPYD, CRYPTOD, port::ENTROPY);
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_names(&names)
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, &sealed_blob_with_acl(&acl))
        .settings(&settings);
    for (i, (_, dom)) in CLIENTS.iter().enumerate() {
        p.measurements.insert(*dom, [i as u8 + 1; 32]);
    }
    let mut d = CryptodDriver::new(&mut p).expect("cryptod boots");
    let mut collector = client(&hv, DOM0, CRYPTOD, port::AUDIT);
    d.poll(&mut p).expect("poll");
    entropyd
        .send(
            &EntropyPub {
                drbg_version: "cryptod_cost".into(),
                seq: 1,
                nonce: vec![1; 16],
                entropy_chunk: Zeroizing::new(vec![0x5a; 64]),
                timestamp: T0,
            }
            .into(),
        )
        .expect("entropy chunk");
    d.poll(&mut p).expect("poll");
    assert!(d.authority().is_ready(), "cryptod did not seed");
    let mut links: Vec<Link<SimBackend>> =
        CLIENTS.iter().map(|(_, dom)| client(&hv, *dom, CRYPTOD, port::CRYPTOD)).collect();

    // One request in flight per client; a new one as soon as its answer
    // came. Each round: cryptod's wake-up, the collector's write and ack,
    // cryptod's wake-up that releases the answers.
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut in_flight = [false; CLIENTS.len()];
    let start = Instant::now();
    let mut rounds = 0u64;
    while answered < tokens {
        for (i, link) in links.iter_mut().enumerate() {
            if !in_flight[i] && sent < tokens {
                link.send(&issue_req(CLIENTS[i].0, sent)).expect("request");
                in_flight[i] = true;
                sent += 1;
            }
        }
        d.poll(&mut p).expect("poll");
        collect(&mut collector, true);
        d.poll(&mut p).expect("poll");
        for (i, link) in links.iter_mut().enumerate() {
            while let Ok(Some(m)) = link.poll() {
                match m {
                    Message::TokenIssueResp(r) if r.result == IssueResult::Ok => {
                        assert!(r.token.is_some(), "a token");
                        in_flight[i] = false;
                        answered += 1;
                    }
                    other => panic!("{}: unexpected answer {other:?}", CLIENTS[i].0),
                }
            }
        }
        rounds += 1;
        assert!(rounds < 10 * tokens + 100, "no progress: {answered} of {tokens} answered");
    }
    let took = start.elapsed();
    println!(
        "{answered} audited tokens, {} clients, {rounds} rounds: {:.1} us per token (wall time, \
         clients and collector included)",
        CLIENTS.len(),
        took.as_secs_f64() * 1e6 / answered as f64
    );
    println!(
        "figure: driver tokens={answered} us_per_token={:.1}",
        took.as_secs_f64() * 1e6 / answered as f64
    );
}
