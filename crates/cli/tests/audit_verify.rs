//! `portcullis audit verify` on logs of several cryptod boots (issue 10,
//! finding 8): the log is built with the authority core from a provisioned
//! sealed state, restarted through `export`/`unseal` as cryptod does, and
//! every whole-chain edit must fail `--expect-last`.

mod common;

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
    AuditRecord::from_cbor(bytes).unwrap()
}

/// The last record of a log (the last item is a seal).
fn last_record(log: &[Vec<u8>]) -> AuditRecord {
    log.iter().rev().find_map(|i| AuditRecord::from_cbor(i).ok()).unwrap()
}

/// Boots cryptod from `state`, makes a few audited decisions with every
/// record acknowledged at once, and returns its records and next state.
fn boot(state: SealedState, kek: &[u8; 32], boot: u64, log: &mut Vec<Vec<u8>>) -> SealedState {
    boot_persisting(state, kek, boot, log, false)
}

/// [`boot`]; with `stale`, the state returned is the one persisted after
/// the chain start was acknowledged, as when cryptod crashes before it
/// persisted the audit head of the later acks (it persists the head after
/// the answers leave, at most a second late under load).
fn boot_persisting(
    state: SealedState,
    kek: &[u8; 32],
    boot: u64,
    log: &mut Vec<Vec<u8>>,
    stale: bool,
) -> SealedState {
    let now = T0 + 100 * boot;
    let mut a = Authority::new(Config::default(), state, now).unwrap();
    let seed = EntropyPub {
        drbg_version: "entropyd-1".into(),
        seq: boot,
        nonce: vec![boot as u8; 16],
        entropy_chunk: Zeroizing::new(vec![0x3c ^ boot as u8; 64]),
        timestamp: now,
    };
    // Each input is its own wake-up: its records are one sealed batch.
    let out = a.entropy(&PeerId::new(2, "entropyd"), &seed, now, b"hw");
    store(&mut a, &out, log);
    let early = a.export(kek).unwrap();
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
        let out = a.handle_request(&PeerId::new(7, "policy_pd"), req, now, b"hw");
        store(&mut a, &out, log);
    }
    let blob = if stale { early } else { a.export(kek).unwrap() };
    sealed::unseal(&blob, kek).unwrap()
}

/// What cryptod and the collector do at the end of a wake-up: seal its
/// records into a batch, store the batch (records, then seal), ack it.
fn store(a: &mut Authority, out: &Output, log: &mut Vec<Vec<u8>>) {
    if out.audit.is_empty() {
        return;
    }
    a.seal_audit(T0);
    let batches: Vec<_> = a.pending_audit_batches().cloned().collect();
    for b in &batches {
        log.extend(b.items().map(<[u8]>::to_vec));
        let chain_id = record_of(&b.records[0]).chain_id;
        a.collector_ack(&AuditAck { chain_id, seq: b.last_seq });
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
    common::provision(&p, &[]);
    let kek = common::kek_of(&p);
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
    let last = last_record(&chains[1]).seq;
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

    // The first chain's last batch (one record and its seal) cut.
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

/// Issue 14: records are signed once per batch; `audit verify` checks
/// every link and seal, and refuses records after the last seal unless
/// told to accept an unsealed tail.
#[test]
fn audit_verify_checks_seals_and_reports_an_unsealed_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    common::provision(&p, &[]);
    let kek = common::kek_of(&p);
    let state =
        sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &kek).unwrap();
    let mut log = Vec::new();
    boot(state, &kek, 0, &mut log);
    let root = p.join("root.pub");
    let verify = |name: &str, items: &[Vec<u8>], extra: &[&str]| {
        let file = dir.path().join(name);
        write_log(&file, items);
        let mut args = vec!["audit", "verify", "--root", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        let o = portcullis(&args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.code(), out + &String::from_utf8_lossy(&o.stderr))
    };
    let (code, out) = verify("intact.log", &log, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("seals and links verify"), "{out}");

    // The last seal dropped: an unsealed tail.
    let unsealed = &log[..log.len() - 1];
    let (code, out) = verify("unsealed.log", unsealed, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unsealed tail"), "{out}");
    let (code, out) = verify("unsealed-ok.log", unsealed, &["--allow-unsealed-tail"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("NOT covered by a signature"), "{out}");

    // A record inside a sealed batch edited (a valid record, other content).
    let i = log.iter().position(|item| AuditRecord::from_cbor(item).is_ok()).unwrap();
    let mut edited = log.clone();
    let mut r = record_of(&edited[i]);
    r.actor = "mallory".into();
    edited[i] = r.to_cbor().unwrap();
    let (code, out) = verify("edited.log", &edited, &["--allow-unsealed-tail"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("breaks at item {}", i + 1)), "{out}");

    // A seal moved (two batches' seals swapped).
    let seals: Vec<usize> = (0..log.len()).filter(|&i| record_of_opt(&log[i]).is_none()).collect();
    let mut swapped = log.clone();
    swapped.swap(seals[0], seals[1]);
    let (code, out) = verify("swapped-seals.log", &swapped, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("seal covers seq"), "{out}");
}

fn record_of_opt(bytes: &[u8]) -> Option<AuditRecord> {
    AuditRecord::from_cbor(bytes).ok()
}

/// Issue 13: outcome records carry the enforcer's signed outcome; `audit
/// verify` checks that signature (under the key the record names, and the
/// pinned key given with `--outcome-key`) and that the record says what the
/// enforcer signed, and `--list` shows the outcome next to its decision.
/// Each forged log below is correctly chained and sealed: only the outcome
/// check can catch it.
#[test]
fn audit_verify_checks_outcome_signatures_and_lists_them_by_their_decision() {
    use ed25519_dalek::SigningKey;
    use portcullis_authority::audit::{AuditLog, Event};
    use portcullis_proto::cose::{self, ContentType};
    use portcullis_proto::key::{encode_public, kid_for};
    use portcullis_proto::msg::{AuditAction, AuditResult, Enforced, OutcomeClaims};

    let dir = tempfile::tempdir().unwrap();
    let root = SigningKey::from_bytes(&[9; 32]);
    let agent = SigningKey::from_bytes(&[0x61; 32]);
    let other = SigningKey::from_bytes(&[0x62; 32]);
    let write_pub = |name: &str, k: &SigningKey| {
        let path = dir.path().join(name);
        let vk = k.verifying_key();
        std::fs::write(&path, encode_public(&vk, &kid_for(&vk)).unwrap()).unwrap();
        path
    };
    let root_pub = write_pub("root.pub", &root);
    let agent_pub = write_pub("agent.pub", &agent);
    let cti = [0xc7u8; 16];
    let cti_hex = hex::encode(cti);
    let signed = |k: &SigningKey, outcome: Enforced| {
        let c = OutcomeClaims {
            decision: cti.to_vec(),
            enforcer: "unlock_agent".into(),
            outcome,
            timestamp: T0,
            reason: None,
        };
        let kid = kid_for(&k.verifying_key());
        cose::sign(k, &kid, ContentType::Outcome, &c.to_cbor().unwrap()).unwrap()
    };
    // A log: the decision, then its outcome as `edit` makes it.
    let log_with = |edit: &dyn Fn(&mut Event)| {
        let mut log = AuditLog::new([1; 16], 16);
        let decision = Event::new("unlocker", AuditAction::UnlockSecret, AuditResult::Ok)
            .target("data")
            .meta("cti", &cti_hex);
        log.append(decision, T0).unwrap();
        let mut ev = Event::new("dom0", AuditAction::Outcome, AuditResult::Ok)
            .target(&cti_hex)
            .meta("outcome", "opened")
            .meta("signer", "unlock_agent")
            .meta("signer_key", &hex::encode(agent.verifying_key().to_bytes()));
        ev.evidence = Some(signed(&agent, Enforced::Opened));
        edit(&mut ev);
        log.append(ev, T0 + 1).unwrap();
        log.seal(&root, &kid_for(&root.verifying_key()), T0 + 1).unwrap();
        log.pending().flat_map(|b| b.items().map(<[u8]>::to_vec)).collect::<Vec<_>>()
    };
    let verify = |name: &str, items: &[Vec<u8>], extra: &[&str]| {
        let file = dir.path().join(name);
        write_log(&file, items);
        let mut args = vec!["audit", "verify", "--root", root_pub.to_str().unwrap(), "--list"];
        args.extend_from_slice(extra);
        args.push(file.to_str().unwrap());
        let o = portcullis(&args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.code(), out + &String::from_utf8_lossy(&o.stderr))
    };
    let pin = format!("unlock_agent={}", agent_pub.display());

    let good = log_with(&|_| {});
    let (code, out) = verify("good.log", &good, &["--outcome-key", &pin]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 outcome record(s), enforcer signatures verify"), "{out}");
    let decision_line = out.lines().find(|l| l.starts_with("record 0 ")).unwrap();
    assert!(decision_line.ends_with("outcome=opened signer=unlock_agent"), "{decision_line}");
    assert!(out.contains(&format!("record 1 dom0 outcome ok {cti_hex}")), "{out}");

    /// A forged log: its name, items, extra arguments and the expected error.
    type Forged<'a> = (&'a str, Vec<Vec<u8>>, &'a [&'a str], &'a str);
    let forged: [Forged; 5] = [
        (
            "other-key.log",
            log_with(&|ev| ev.evidence = Some(signed(&other, Enforced::Opened))),
            &[],
            "enforcer signature",
        ),
        (
            "other-named-key.log",
            log_with(&|ev| {
                ev.evidence = Some(signed(&other, Enforced::Opened));
                ev.metadata
                    .insert("signer_key".into(), hex::encode(other.verifying_key().to_bytes()));
            }),
            &["--outcome-key", &pin],
            "other than unlock_agent's pinned key",
        ),
        (
            "says-opened.log",
            log_with(&|ev| ev.evidence = Some(signed(&agent, Enforced::Failed))),
            &[],
            "does not say what the enforcer signed",
        ),
        (
            "flipped.log",
            log_with(&|ev| {
                if let Some(e) = ev.evidence.as_mut() {
                    let last = e.len() - 1;
                    e[last] ^= 1;
                }
            }),
            &[],
            "enforcer signature",
        ),
        ("no-evidence.log", log_with(&|ev| ev.evidence = None), &[], "no enforcer-signed evidence"),
    ];
    for (name, items, extra, why) in forged {
        let (code, out) = verify(name, &items, extra);
        assert_eq!(code, Some(1), "{name} passed: {out}");
        assert!(out.contains(why), "{name}: {out}");
    }
    // The other key vouched only by itself passes without a pinned key:
    // the record names it, cryptod checked it (that is what --outcome-key adds).
    let self_named = log_with(&|ev| {
        ev.evidence = Some(signed(&other, Enforced::Opened));
        ev.metadata.insert("signer_key".into(), hex::encode(other.verifying_key().to_bytes()));
    });
    assert_eq!(verify("self-named.log", &self_named, &[]).0, Some(0));
    // Editing the evidence of a stored log breaks the chain.
    let mut edited = good.clone();
    let mut r = record_of(&edited[1]);
    r.evidence = Some(signed(&agent, Enforced::Failed));
    edited[1] = r.to_cbor().unwrap();
    let (code, out) = verify("edited.log", &edited, &[]);
    assert_eq!(code, Some(1), "{out}");
}

/// Issue 14: cryptod persists the audit head the collector acknowledged
/// after the answers leave. A crash before it did: the next boot continues
/// from the older head, the records after it stay in the log, sealed, and
/// `audit verify` passes, with `--expect-last`, counting them as
/// superseded; cutting them is not detected (docs/authority.md, Audit).
#[test]
fn a_restart_from_an_older_persisted_head_verifies_and_reports_superseded_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    common::provision(&p, &[]);
    let kek = common::kek_of(&p);
    let state =
        sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &kek).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let state = boot_persisting(state, &kek, 0, &mut a, true);
    boot(state, &kek, 1, &mut b);
    // The first batch (the chain start) ends before its seal.
    let head = a.iter().map_while(|i| record_of_opt(i)).last().unwrap();
    let first = record_of(&b[0]);
    assert_eq!(first.seq, head.seq + 1, "continues from the head persisted");
    assert!(last_record(&a).seq > head.seq, "boot 0 went on after it");
    let last = last_record(&b).seq;
    let file = dir.path().join("crash.log");
    write_log(&file, &[a, b].concat());
    let root = p.join("root.pub");
    let o = portcullis(&[
        "audit",
        "verify",
        "--root",
        root.to_str().unwrap(),
        "--expect-last",
        &last.to_string(),
        file.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("3 record(s) stored after the audit head cryptod had persisted"), "{out}");
}
