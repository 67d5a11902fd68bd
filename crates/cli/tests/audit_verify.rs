//! `portcullis audit verify` on logs of several cryptod boots (issue 10,
//! finding 8): the log is built with the authority core from a provisioned
//! sealed state, restarted through `export`/`unseal` as cryptod does, and
//! every whole-chain edit must fail `--expect-last`.

use portcullis_authority::authority::{Config, Output};
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AuditAck, AuditRecord, EntropyPub, RequestId, TokenIssueReq};
use portcullis_proto::scope::{Scope, ScopeSet};
use std::path::Path;
use std::process::Command;
use zeroize::Zeroizing;

const T0: u64 = 1_900_000_000;

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).output().expect("run portcullis")
}

fn record_of(bytes: &[u8]) -> AuditRecord {
    let object = portcullis_proto::danger::open_unverified(bytes).unwrap();
    AuditRecord::from_cbor(&object.get_unverified().payload).unwrap()
}

/// Boots cryptod from `state`, makes a few audited decisions with every
/// record acknowledged at once, and returns its records and next state.
fn boot(state: SealedState, kek: &[u8; 32], boot: u64, log: &mut Vec<Vec<u8>>) -> SealedState {
    let now = T0 + 100 * boot;
    let mut a = Authority::new(Config::default(), state, now).unwrap();
    let seed = EntropyPub {
        drbg_version: "entropyd-1".into(),
        seq: boot,
        nonce: vec![boot as u8; 16],
        entropy_chunk: Zeroizing::new(vec![0x3c ^ boot as u8; 64]),
        timestamp: now,
    };
    let mut outs = vec![a.entropy(&PeerId::new(2, "entropyd"), &seed, now, b"hw")];
    for i in 0..3u8 {
        let req: Message = TokenIssueReq {
            request_id: RequestId([i; 16]),
            vm_id: "policy_pd".into(),
            requested_scope: ScopeSet::single(Scope::NetRead),
            audience: "fw0".into(),
            justification: "test".into(),
            nonce: vec![i; 16],
            timestamp: now,
            ttl: None,
            attestation: None,
            metadata: None,
        }
        .into();
        let req = Request::from_message(&req).unwrap();
        outs.push(a.handle_request(&PeerId::new(7, "policy_pd"), req, now, b"hw"));
    }
    for out in &outs {
        store(&mut a, out, log);
    }
    sealed::unseal(&a.export(kek).unwrap(), kek).unwrap()
}

fn store(a: &mut Authority, out: &Output, log: &mut Vec<Vec<u8>>) {
    for m in &out.audit {
        let Message::AuditLog(l) = m else { panic!("{m:?}") };
        let r = record_of(&l.record);
        log.push(l.record.clone());
        a.collector_ack(&AuditAck { chain_id: r.chain_id, seq: r.seq });
    }
}

/// The log file format: a CBOR sequence of byte strings.
fn write_log(path: &Path, records: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for r in records {
        match r.len() {
            0..=23 => bytes.push(0x40 | r.len() as u8),
            24..=0xff => bytes.extend_from_slice(&[0x58, r.len() as u8]),
            _ => {
                bytes.push(0x59);
                bytes.extend_from_slice(&(r.len() as u16).to_be_bytes());
            }
        }
        bytes.extend_from_slice(r);
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn whole_chain_edits_fail_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let o = portcullis(&["provision", "--out", p.to_str().unwrap(), "--no-qr"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kek: [u8; 32] = std::fs::read(p.join("cryptod/kek")).unwrap().try_into().unwrap();
    let mut state = sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &kek)
        .expect("provision writes the current sealed-state version");
    assert_eq!((state.keyset_version, state.revocation_serial), (0, 0));
    assert!(state.audit_head.is_none() && state.failures.is_empty());

    // Two boots (cryptod restarted once): two chains.
    let mut chains = Vec::new();
    for n in 0..2 {
        let mut log = Vec::new();
        state = boot(state, &kek, n, &mut log);
        chains.push(log);
    }
    let last = record_of(chains[1].last().unwrap()).seq;
    let root = p.join("root.pub");
    let verify = |name: &str, records: Vec<Vec<u8>>| {
        let file = dir.path().join(name);
        write_log(&file, &records);
        let o = portcullis(&[
            "audit",
            "verify",
            "--root",
            root.to_str().unwrap(),
            "--expect-last",
            &last.to_string(),
            file.to_str().unwrap(),
        ]);
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (a, b) = (chains[0].clone(), chains[1].clone());
    let (code, err) = verify("intact.log", [a.clone(), b.clone()].concat());
    assert_eq!(code, Some(0), "{err}");

    let mut cut = a.clone();
    cut.truncate(a.len() - 2);
    let edits = [
        ("dropped-last.log", a.clone(), "truncated"),
        ("cut-first-tail.log", [cut, b.clone()].concat(), "records or chains are missing"),
        ("dropped-first.log", b.clone(), "its beginning is missing"),
        ("swapped.log", [b.clone(), a.clone()].concat(), "its beginning is missing"),
        ("replayed.log", [a.clone(), b.clone(), a.clone(), b.clone()].concat(), "second chain"),
    ];
    for (name, records, why) in edits {
        let (code, err) = verify(name, records);
        assert_eq!(code, Some(1), "{name} passed: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
    // A chain replayed right after itself breaks inside the merged run.
    let (code, err) = verify("twice.log", [a.clone(), b.clone(), b.clone()].concat());
    assert_eq!(code, Some(1), "{err}");
}
