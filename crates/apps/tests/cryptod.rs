//! cryptod's driver over the vchan simulator with a fake platform: the
//! links' lifecycle, role routing, write-ahead audit, persistence,
//! isolation between connections, fairness and console rate limiting.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_apps::common::port;
use portcullis_apps::cryptod::{CryptodDriver, CLIENT_BUDGET};
use portcullis_apps::link::Link;
use portcullis_authority::sealed;
use portcullis_platform::{ConfigItem, DomId, IoCause, IoDetail, IoOp, PlatformError};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AuditAck, AuditAction, AuditResult, EntropyPub, ErrorCode, IssueResult, KeysetReq, RequestId,
    TokenIssueReq, TokenIssueResp, TotpResult, TotpValidateReq,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_vchan::sim::{Hypervisor, SimBackend};
use portcullis_vchan::VchanError;
use support::*;
use zeroize::Zeroizing;

struct World {
    hv: Hypervisor,
    p: FakePlatform,
    d: CryptodDriver<SimBackend>,
    entropyd: Link<SimBackend>,
    collector: Link<SimBackend>,
}

const SETTINGS: &str = "clients=unlocker,policy_pd\ncollector=dom0\n";

fn boot_with(settings: &str, names: &[(&str, DomId)]) -> World {
    boot_sealed(settings, names, &sealed_blob())
}

fn boot_sealed(settings: &str, names: &[(&str, DomId)], sealed: &[u8]) -> World {
    let hv = Hypervisor::new();
    let entropyd = server(&hv, ENTROPYD, CRYPTOD, port::ENTROPY);
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_names(names)
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, sealed)
        .settings(settings);
    let d = CryptodDriver::new(&mut p).unwrap();
    let collector = client(&hv, DOM0, CRYPTOD, port::AUDIT);
    World { hv, p, d, entropyd, collector }
}

fn boot() -> World {
    boot_with(SETTINGS, &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)])
}

fn chunk(seq: u64) -> Message {
    EntropyPub {
        drbg_version: "test".into(),
        seq,
        nonce: vec![seq as u8; 16],
        entropy_chunk: Zeroizing::new(vec![0x5a ^ seq as u8; 64]),
        timestamp: T0,
    }
    .into()
}

impl World {
    fn poll(&mut self) {
        self.d.poll(&mut self.p).unwrap();
    }

    /// entropyd publishes once; cryptod reads it and starts its audit chain.
    fn seed(&mut self) {
        self.poll(); // connects to entropyd
        self.entropyd.send(&chunk(1)).unwrap();
        self.poll();
        assert!(self.d.authority().is_ready());
        // The collector takes and acks the chain start.
        self.ack();
    }

    /// The collector reads and acks everything shipped; cryptod takes the acks.
    fn ack(&mut self) -> Vec<portcullis_proto::msg::AuditRecord> {
        self.poll();
        let records = collect(&mut self.collector, true);
        self.poll();
        records
    }

    fn p_wait(&mut self, ports: &[portcullis_platform::Port]) -> Option<portcullis_platform::Port> {
        use portcullis_platform::Platform;
        self.p.wait_any(ports, Some(Duration::ZERO)).unwrap()
    }

    /// Consumes every pending event on cryptod's ports; how many there were.
    fn events(&mut self) -> usize {
        let ports = self.d.ports();
        let mut n = 0;
        while self.p_wait(&ports).is_some() {
            n += 1;
        }
        n
    }

    fn client(&mut self, dom: DomId) -> Link<SimBackend> {
        let c = client(&self.hv, dom, CRYPTOD, port::CRYPTOD);
        self.poll(); // sees it connected
        c
    }
}

fn keyset_req(n: u8) -> Message {
    KeysetReq { request_id: RequestId([n; 16]) }.into()
}

fn issue_req(scope: Scope, audience: &str) -> Message {
    TokenIssueReq {
        request_id: RequestId([9; 16]),
        vm_id: "policy_pd".into(),
        requested_scope: ScopeSet::single(scope),
        audience: audience.into(),
        justification: "test".into(),
        nonce: vec![3; 16],
        timestamp: T0,
        ttl: None,
        attestation: None,
        metadata: None,
    }
    .into()
}

fn totp_req(code: &str) -> Message {
    TotpValidateReq {
        request_id: RequestId([4; 16]),
        operator_id: "alice".into(),
        device_id: "yubi1".into(),
        totp_code: Zeroizing::new(code.into()),
        client_nonce: vec![1; 16],
        timestamp: T0,
        volume_id: None,
        ephemeral_pubkey: None,
        attestation: None,
        metadata: None,
    }
    .into()
}

fn totp_result(m: &Message) -> TotpResult {
    match m {
        Message::TotpValidateResp(r) => r.result,
        other => panic!("not a totp answer: {other:?}"),
    }
}

#[test]
fn a_client_gets_its_keyset_in_one_wake_up() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(1)).unwrap();
    w.poll();
    let got = drain(&mut pd);
    assert!(matches!(got.as_slice(), [Message::Keyset(_)]), "{got:?}");
}

#[test]
fn before_entropy_audited_requests_are_unavailable() {
    let mut w = boot();
    let mut pd = w.client(POLICY_PD);
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    match drain(&mut pd).as_slice() {
        [Message::TokenIssueResp(r)] => assert_eq!(r.result, IssueResult::Unavailable),
        other => panic!("{other:?}"),
    }
    assert!(!w.d.authority().is_ready());
}

#[test]
fn an_answer_is_held_until_the_collector_acks_its_record() {
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert!(drain(&mut un).is_empty(), "no answer before the record is stored");
    // Shipped but not acked: still nothing.
    w.poll();
    let records = collect(&mut w.collector, false);
    assert_eq!(records.last().unwrap().action, AuditAction::TotpValidate);
    for _ in 0..3 {
        w.poll();
    }
    assert!(drain(&mut un).is_empty());
    let last = records.last().unwrap();
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    let got = drain(&mut un);
    assert_eq!(got.len(), 1);
    assert_eq!(totp_result(&got[0]), TotpResult::Ok);
}

/// Issue 14: the requests of one wake-up share one audit batch (one seal,
/// one `audit_log` message, one collector commit), draw no hardware
/// entropy, print nothing, and are all released by the batch's one ack.
#[test]
fn the_requests_of_a_wake_up_share_one_sealed_batch() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let (hw_before, lines_before) = (w.p.hw_entropy_calls, w.p.console_out.lines().count());
    for _ in 0..CLIENT_BUDGET {
        pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    }
    let _ = pd.pump();
    w.poll();
    assert!(drain(&mut pd).is_empty(), "no answer before the batch is stored");
    // Their tokens were signed once the batch was shipped, before the ack.
    assert_eq!(w.d.authority().held_len(), CLIENT_BUDGET);
    assert_eq!(w.d.authority().unsigned_held(), 0);
    let batches = drain(&mut w.collector);
    let [Message::AuditLog(batch)] = batches.as_slice() else { panic!("{batches:?}") };
    assert_eq!(batch.records.len(), CLIENT_BUDGET, "one batch for the wake-up's records");
    let seal = portcullis_proto::cose::verify(
        &batch.seal,
        portcullis_proto::cose::ContentType::AuditSeal,
        |_| Some(w.d.authority().root_public()),
    )
    .expect("the seal is signed by the root key");
    let seal = portcullis_proto::msg::AuditSeal::from_cbor(&seal.payload).unwrap();
    let records = records_of(&batches[0]);
    let last = records.last().unwrap();
    assert_eq!((seal.first_seq, seal.last_seq), (records[0].seq, last.seq));
    assert_eq!(w.p.hw_entropy_calls, hw_before, "no hardware entropy per request");
    // One ack releases every answer the batch covers.
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    let got = drain(&mut pd);
    assert_eq!(got.len(), CLIENT_BUDGET);
    assert!(got
        .iter()
        .all(|m| matches!(m, Message::TokenIssueResp(r) if r.result == IssueResult::Ok)));
    // No console line per request (the "outbox empty" report at most).
    let lines = w.p.console_out.lines().count() - lines_before;
    assert!(lines <= 1, "{lines} console line(s):\n{}", w.p.console_out);
}

/// Issue 14, group commit: the requests of the wake-ups that come while a
/// batch waits for the collector are not shipped one batch each: once the
/// collector acks, they go as one batch with one seal, and its one ack
/// releases every caller's answer.
#[test]
fn requests_during_a_collector_write_share_the_next_batch() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let mut un = w.client(UNLOCKER);
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    let first = drain(&mut w.collector);
    assert_eq!(first.len(), 1, "nothing in flight: shipped at once");
    // Three more wake-ups, two callers, while that batch is being written.
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    assert!(drain(&mut w.collector).is_empty(), "they wait for the batch in flight");
    assert!(drain(&mut pd).is_empty() && drain(&mut un).is_empty());
    // The collector stores the first batch: its answer goes, and the rest
    // leave as one batch.
    let done = records_of(&first[0]);
    let last = done.last().unwrap();
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    assert_eq!(drain(&mut pd).len(), 1);
    let next = drain(&mut w.collector);
    let [Message::AuditLog(batch)] = next.as_slice() else { panic!("{next:?}") };
    // Two token issues and the code's validation.
    let records = records_of(&next[0]);
    assert_eq!(records.len(), 3, "{:?}", records.iter().map(|r| r.action).collect::<Vec<_>>());
    assert_eq!(records[0].seq, last.seq + 1);
    assert!(portcullis_proto::cose::verify(
        &batch.seal,
        portcullis_proto::cose::ContentType::AuditSeal,
        |_| Some(w.d.authority().root_public()),
    )
    .is_ok());
    let last = records.last().unwrap();
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    assert_eq!(drain(&mut pd).len(), 2);
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Ok);
}

/// Issue 14: while answers wait for a batch the collector is writing, the
/// clients' requests send cryptod no events (their answers could not leave
/// before that ack anyway); the ack's wake-up reads them all, and they
/// share the next batch. With nothing in flight a request wakes cryptod.
#[test]
fn requests_during_a_collector_write_do_not_wake_cryptod() {
    use portcullis_apps::cryptod::QUIET_FOR;
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let mut un = w.client(UNLOCKER);
    w.events();
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    assert_eq!(w.events(), 1, "nothing in flight: the request wakes cryptod");
    w.poll();
    let first = drain(&mut w.collector);
    assert_eq!(first.len(), 1);
    assert_eq!(w.d.poll_delay(), QUIET_FOR, "it looks at the quiet rings on its own");
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    un.send(&totp_req(&code_at(T0))).unwrap();
    assert_eq!(w.events(), 0, "no event while the batch is written");
    // The ack wakes cryptod; that wake-up releases the first answer and
    // reads both requests, which go as the next batch.
    let last = records_of(&first[0]).pop().unwrap();
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    assert_eq!(w.events(), 1);
    w.poll();
    assert_eq!(drain(&mut pd).len(), 1);
    let next = drain(&mut w.collector);
    assert_eq!(next.len(), 1);
    let records = records_of(&next[0]);
    assert_eq!(records.len(), 2, "both requests in one batch");
    // Its ack releases both answers; with nothing in flight and nothing
    // held, the links wake cryptod again.
    let last = records.last().unwrap();
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    assert_eq!(drain(&mut pd).len(), 1);
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Ok);
    assert_eq!(w.d.poll_delay(), portcullis_apps::common::STEP);
    w.events();
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    assert_eq!(w.events(), 1);
}

/// A collector that does not ack keeps the links quiet until the next
/// wake-up only ([`QUIET_FOR`] at most): then a request wakes cryptod again
/// (and is answered, if its answer need not wait for the collector).
///
/// [`QUIET_FOR`]: portcullis_apps::cryptod::QUIET_FOR
#[test]
fn a_silent_collector_keeps_the_links_quiet_for_a_while_only() {
    use portcullis_apps::cryptod::QUIET_FOR;
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    w.events();
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    assert_eq!(w.events(), 1);
    w.poll();
    assert_eq!(drain(&mut w.collector).len(), 1);
    assert_eq!(w.d.poll_delay(), QUIET_FOR);
    pd.send(&keyset_req(1)).unwrap();
    assert_eq!(w.events(), 0);
    w.p.advance(QUIET_FOR);
    w.poll(); // the time-out's wake-up: reads the keyset request, answers it
    assert_eq!(drain(&mut pd).len(), 1, "the keyset need not wait for the collector");
    assert_eq!(w.d.poll_delay(), portcullis_apps::common::STEP);
    pd.send(&keyset_req(2)).unwrap();
    assert_eq!(w.events(), 1, "no longer quiet");
}

/// Without the audit wait nothing is held, so the links never go quiet.
#[test]
fn without_answer_after_audit_every_request_wakes_cryptod() {
    let mut w = boot_no_audit_wait();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    w.events();
    for _ in 0..2 {
        pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
        assert_eq!(w.events(), 1);
        w.poll();
        assert_eq!(drain(&mut pd).len(), 1);
        assert_eq!(w.d.poll_delay(), portcullis_apps::common::STEP);
    }
}

/// The newest sealed state cryptod handed to the platform.
fn last_persisted(w: &World) -> sealed::SealedState {
    let (item, blob) = w.p.persisted.last().expect("cryptod persisted its state");
    assert_eq!(*item, ConfigItem::SealedState);
    sealed::unseal(blob, &KEK).unwrap()
}

#[test]
fn a_failure_and_an_accepted_code_are_persisted_before_the_answer_leaves() {
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    un.send(&totp_req("00000000")).unwrap();
    w.poll();
    let failures = |w: &World| {
        last_persisted(w).failures.iter().find(|(op, ..)| op == "alice").map(|(_, n, _)| *n)
    };
    assert_eq!(failures(&w), Some(1), "a counted failure survives a crash (issue 10, 3)");
    w.ack();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Fail);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert!(drain(&mut un).is_empty(), "no answer before the record is stored");
    let state = last_persisted(&w);
    assert!(state.last_steps.iter().any(|(op, _)| op == "alice"), "the used step survives");
    w.ack();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Ok);
    // The same code again: replay, refused; the step stays persisted.
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    w.ack();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Replay);
    assert!(last_persisted(&w).last_steps.iter().any(|(op, _)| op == "alice"));
}

#[test]
fn a_token_request_the_acl_refuses_is_denied_after_its_record() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.send(&issue_req(Scope::LuksUnlock, "unlock_agent")).unwrap();
    w.poll();
    assert!(drain(&mut pd).is_empty());
    let records = w.ack();
    assert!(records.iter().any(|r| r.action == AuditAction::TokenIssue));
    match drain(&mut pd).as_slice() {
        [Message::TokenIssueResp(r)] => assert_eq!(r.result, IssueResult::Denied),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_peer_is_checked_against_dom0s_measurement_of_its_connection() {
    let image = [0x5e; 32];
    let acl = format!(
        "allow vm=policy_pd domid=7 scopes=net:modify aud=fw0 image=sha256:{}\n",
        "5e".repeat(32)
    );
    let names = [("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)];
    let mut w = boot_sealed(SETTINGS, &names, &sealed_blob_with_acl(&acl));
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let ask = |w: &mut World, pd: &mut Link<SimBackend>| {
        pd.send(&issue_req(Scope::NetModify, "fw0")).unwrap();
        w.poll();
        let records = w.ack();
        let answer = match drain(pd).as_slice() {
            [Message::TokenIssueResp(r)] => r.result,
            other => panic!("{other:?}"),
        };
        (answer, records)
    };
    // Not measured (yet): denied, audited as such.
    let (answer, records) = ask(&mut w, &mut pd);
    assert_eq!(answer, IssueResult::Denied);
    let meta = records.last().and_then(|r| r.metadata.clone()).unwrap();
    assert_eq!(meta.get("image_actual").map(String::as_str), Some("none"));
    // Another image under the name, published late: it counts once cryptod
    // looks again (at most a second later), and is denied.
    w.p.measurements.insert(POLICY_PD, [0xba; 32]);
    w.p.advance(Duration::from_nanos(portcullis_apps::cryptod::MEASUREMENT_RECHECK_NS));
    let (answer, records) = ask(&mut w, &mut pd);
    assert_eq!(answer, IssueResult::Denied);
    let meta = records.last().and_then(|r| r.metadata.clone()).unwrap();
    assert_eq!(meta.get("image_actual"), Some(&"ba".repeat(32)));
    // The domain goes and another one, with the same id and the right
    // image, connects: it is measured afresh and granted.
    pd.chan().shutdown();
    w.poll();
    w.p.measurements.insert(POLICY_PD, image);
    let mut pd = w.client(POLICY_PD);
    assert_eq!(ask(&mut w, &mut pd).0, IssueResult::Ok);
}

/// Issue 14: dom0's measurement is read once per connection (a file read
/// on the hosted platform, a xenstore round trip on Xen), not per request.
#[test]
fn the_measurement_is_read_once_per_connection() {
    let mut w = boot();
    w.p.measurements.insert(POLICY_PD, [0x5e; 32]);
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let before = w.p.measurement_reads;
    for i in 0..5 {
        pd.send(&keyset_req(i)).unwrap();
        w.poll();
        w.ack();
        assert_eq!(drain(&mut pd).len(), 1);
    }
    assert_eq!(w.p.measurement_reads, before + 1, "one read for five requests");
    // A new connection reads it again.
    pd.chan().shutdown();
    w.poll();
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(9)).unwrap();
    w.poll();
    assert_eq!(w.p.measurement_reads, before + 2);
}

/// An unmeasured client is looked up again at most once per
/// `MEASUREMENT_RECHECK_NS`, and a measurement published late counts from
/// the first request after that.
#[test]
fn an_unmeasured_client_is_looked_up_again_after_a_while() {
    use portcullis_apps::cryptod::MEASUREMENT_RECHECK_NS;
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    let before = w.p.measurement_reads;
    let mut measured = |w: &mut World, n: u8| {
        un.send(&attestation_req(n)).unwrap();
        w.poll();
        w.ack();
        attested_claims(&drain(&mut un)[0]).measurement
    };
    assert_eq!(measured(&mut w, 1), None);
    w.p.measurements.insert(UNLOCKER, [0x5e; 32]);
    assert_eq!(measured(&mut w, 2), None, "not looked up again at once");
    assert_eq!(w.p.measurement_reads, before + 1);
    w.p.advance(Duration::from_nanos(MEASUREMENT_RECHECK_NS - 1));
    assert_eq!(measured(&mut w, 3), None);
    w.p.advance(Duration::from_nanos(1));
    assert_eq!(measured(&mut w, 4), Some([0x5e; 32]));
    assert_eq!(measured(&mut w, 5), Some([0x5e; 32]));
    assert_eq!(w.p.measurement_reads, before + 2);
}

/// The cache belongs to the connection: a domain that replaces another
/// under the same id (the old one left) never gets the old one's
/// measurement, not even between the old one leaving and cryptod noticing.
#[test]
fn a_new_domain_with_the_same_id_is_not_given_the_old_measurement() {
    let mut w = boot();
    w.p.measurements.insert(UNLOCKER, [0x5e; 32]);
    w.seed();
    // A fresh connection from the unlocker's id: the measurement attested.
    let attest = |w: &mut World, n: u8| {
        let mut un = w.client(UNLOCKER);
        un.send(&attestation_req(n)).unwrap();
        w.poll();
        w.ack();
        let got = attested_claims(&drain(&mut un)[0]).measurement;
        un.chan().shutdown();
        got
    };
    assert_eq!(attest(&mut w, 1), Some([0x5e; 32]));
    // The domain goes; dom0 publishes the new one's image under the same
    // id before cryptod runs again.
    w.p.measurements.insert(UNLOCKER, [0x77; 32]);
    w.poll();
    assert_eq!(attest(&mut w, 2), Some([0x77; 32]));
    // And one that is not measured gets no measurement at all.
    w.p.measurements.clear();
    w.poll();
    assert_eq!(attest(&mut w, 3), None);
}

#[test]
fn records_are_sent_again_after_the_collector_reconnects() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    w.poll();
    let first = collect(&mut w.collector, false);
    assert_eq!(first.len(), 1);
    // The collector leaves without acking and comes back.
    w.collector.chan().shutdown();
    w.poll(); // sees it gone, publishes afresh
    w.collector = client(&w.hv, DOM0, CRYPTOD, port::AUDIT);
    w.poll();
    let again = collect(&mut w.collector, true);
    assert_eq!(again.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![first[0].seq]);
    w.poll();
    assert!(matches!(drain(&mut pd).as_slice(), [Message::TokenIssueResp(_)]));
}

#[test]
fn an_audit_ack_on_a_client_link_is_refused_and_not_honoured() {
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    let mut pd = w.client(POLICY_PD);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    w.poll();
    // The client learned the chain id and the seq (here: from the collector's view).
    let records = collect(&mut w.collector, false);
    let last = records.last().unwrap();
    let pending = w.d.authority().pending_audit_len();
    assert!(pending > 0);
    pd.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    match drain(&mut pd).as_slice() {
        [Message::Error(e)] => {
            assert_eq!(e.code, ErrorCode::Malformed);
            assert!(e.reason.contains("audit_ack"), "{}", e.reason);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.d.authority().pending_audit_len(), pending, "no record discarded");
    assert_eq!(w.d.authority().held_len(), 1, "no answer released");
    assert!(drain(&mut un).is_empty());
    // The collector's own ack still works.
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Ok);
}

#[test]
fn entropy_on_a_client_link_is_refused_and_not_credited() {
    let mut w = boot();
    let mut pd = w.client(POLICY_PD);
    pd.send(&chunk(1)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut pd).as_slice(), [Message::Error(_)]));
    assert!(!w.d.authority().is_ready(), "a client cannot seed cryptod");
}

#[test]
fn a_type_cryptod_never_receives_is_answered_as_an_unknown_type() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    // An answer kind: cryptod decodes no such type (portcullis_apps::inbox::Cryptod).
    let resp = TokenIssueResp {
        request_id: RequestId([3; 16]),
        result: IssueResult::Denied,
        reason: None,
        token: None,
        expires_at: None,
    };
    pd.send(&resp.into()).unwrap();
    w.poll();
    let refused = drain(&mut pd);
    // The same answer as to a type name outside the schema.
    // {"v": 1, "type": "no_such_type", "body": {}}
    let mut unknown = b"\xa3\x61v\x01\x64type\x6cno_such_type\x64body".to_vec();
    unknown.push(0xa0);
    let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&unknown);
    pd.chan().write(&frame).unwrap();
    w.poll();
    let answered_unknown = drain(&mut pd);
    match (refused.as_slice(), answered_unknown.as_slice()) {
        ([Message::Error(a)], [Message::Error(b)]) => {
            assert_eq!(a.code, ErrorCode::UnknownType);
            assert_eq!(a, b);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reconnection_gets_a_fresh_ring_and_nothing_meant_for_the_old_one() {
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    // An answer held for the collector, and a half frame in the ring.
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert_eq!(w.d.authority().held_len(), 1);
    un.chan().write(&[0, 0, 0, 40, 0xa1]).unwrap();
    // The client leaves and, before cryptod runs again, comes back: it must
    // not find the old ring.
    un.chan().shutdown();
    assert_eq!(
        try_client(&w.hv, UNLOCKER, CRYPTOD, port::CRYPTOD).err(),
        Some(VchanError::NotPublished)
    );
    w.poll(); // notices, drops the held answer, publishes a fresh ring
    assert_eq!(w.d.authority().held_len(), 0);
    let mut un = w.client(UNLOCKER);
    // The collector acks everything: the dropped answer goes nowhere. (The
    // drop's record waited behind the batch in flight, group commit, and
    // is shipped once that batch is acked: two rounds.)
    let mut records = w.ack();
    records.extend(w.ack());
    assert!(
        records.iter().any(|r| r.action == AuditAction::AnswerDrop && r.actor == "unlocker"),
        "the drop is audited"
    );
    w.poll();
    assert!(drain(&mut un).is_empty(), "nothing from the old connection");
    // And the new connection works, from a clean frame boundary.
    un.send(&keyset_req(2)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut un).as_slice(), [Message::Keyset(_)]));
    assert_eq!(w.p.lines_with("left before 1 answer"), 1);
}

#[test]
fn a_flooding_client_does_not_starve_another() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let mut un = w.client(UNLOCKER);
    for i in 0..200 {
        pd.send(&keyset_req(i as u8)).unwrap();
        let _ = pd.pump();
    }
    un.send(&keyset_req(255)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut un).as_slice(), [Message::Keyset(_)]), "served in the first turn");
    let first = drain(&mut pd).len();
    assert!(first <= CLIENT_BUDGET, "the flood got {first} answers in one wake-up");
    assert_eq!(w.d.poll_delay(), Duration::ZERO, "backlog: no sleeping");
    // The flood is still served, completely, over later wake-ups.
    let mut total = first;
    for _ in 0..200 {
        let _ = pd.pump();
        w.poll();
        total += drain(&mut pd).len();
    }
    assert_eq!(total, 200);
    assert_eq!(w.d.poll_delay(), portcullis_apps::common::STEP);
}

#[test]
fn a_client_that_does_not_read_loses_no_answer_and_floods_no_console() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    let mut sent = 0;
    for round in 0..400 {
        // Requests keep coming; answers are never read.
        for _ in 0..4 {
            if pd.send(&keyset_req(round as u8)).is_ok() {
                sent += 1;
            }
        }
        let _ = pd.pump();
        w.poll();
    }
    assert_eq!(w.p.lines_with("queue full"), 0, "{}", w.p.console_out);
    // Now the client reads: every answer to what cryptod read arrives.
    let mut got = 0;
    for _ in 0..2000 {
        got += drain(&mut pd).len();
        let _ = pd.pump();
        w.poll();
        if got == sent {
            break;
        }
    }
    assert_eq!(got, sent);
}

#[test]
fn console_lines_about_one_peer_are_rate_limited_with_a_count() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    for _ in 0..50 {
        pd.send(&AuditAck { chain_id: [0; 16], seq: 1 }.into()).unwrap();
        w.poll();
        drain(&mut pd);
    }
    let per_window = portcullis_apps::console::DEFAULT_PER_WINDOW as usize;
    assert_eq!(w.p.lines_with("sent audit_ack; refused"), per_window, "{}", w.p.console_out);
    // Once the window has passed the count is reported.
    w.p.advance(Duration::from_secs(11));
    w.poll();
    let suppressed = 50 - per_window;
    assert_eq!(w.p.lines_with(&format!("{suppressed} line(s) \"not_served\" about dom7")), 1);
}

#[test]
fn a_client_that_appears_later_is_served_once_its_name_resolves() {
    let mut w = boot_with(SETTINGS, &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER)]);
    assert!(w.p.console_out.contains("policy_pd not served yet"));
    w.seed();
    assert_eq!(
        try_client(&w.hv, POLICY_PD, CRYPTOD, port::CRYPTOD).err(),
        Some(VchanError::NotPublished)
    );
    w.p.names.insert("policy_pd".into(), POLICY_PD);
    // Names are looked up again every RESOLVE_EVERY seconds.
    w.p.advance(Duration::from_secs(2));
    w.poll();
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(1)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut pd).as_slice(), [Message::Keyset(_)]));
}

#[test]
fn a_client_domain_created_again_gets_a_new_channel_under_its_new_id() {
    let mut w = boot();
    w.seed();
    let mut old = w.client(POLICY_PD);
    old.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    assert_eq!(w.d.authority().held_len(), 1);
    // policy_pd is destroyed (no unmap notification) and created again
    // as dom 8.
    w.hv.kill(POLICY_PD);
    w.p.names.insert("policy_pd".into(), DomId(8));
    w.p.advance(Duration::from_secs(2));
    w.poll();
    assert_eq!(w.d.authority().held_len(), 0, "the old domain's answer is dropped");
    let mut new = w.client(DomId(8));
    new.send(&keyset_req(1)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut new).as_slice(), [Message::Keyset(_)]));
}

#[test]
fn a_malformed_frame_is_answered_malformed() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.chan().write(&[0, 0, 0, 2, 0xff, 0xff]).unwrap();
    w.poll();
    match drain(&mut pd).as_slice() {
        [Message::Error(e)] => assert_eq!(e.code, ErrorCode::Malformed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_signing_key_rotates_on_the_timer_and_the_rotation_is_shipped() {
    use portcullis_authority::keys::DEFAULT_ROTATION_PERIOD;
    let mut w = boot();
    w.seed();
    // Idle wake-ups: the collector gets nothing new.
    for _ in 0..3 {
        w.poll();
    }
    assert!(collect(&mut w.collector, true).is_empty());
    w.p.advance(Duration::from_secs(DEFAULT_ROTATION_PERIOD + 1));
    w.poll();
    let records = collect(&mut w.collector, true);
    assert!(
        records.iter().any(|r| r.action == AuditAction::KeyRotate),
        "{:?}",
        records.iter().map(|r| r.action).collect::<Vec<_>>()
    );
}

#[test]
fn between_wake_ups_cryptod_waits_on_every_link_it_has() {
    let mut w = boot();
    // Client links (published, even before the clients come) and the
    // collector's; no entropy link until entropyd is found.
    assert_eq!(w.d.ports().len(), 3);
    w.seed();
    assert_eq!(w.d.ports().len(), 4, "and the entropy link once connected");
    assert_eq!(w.d.poll_delay(), portcullis_apps::common::STEP);
    // A client's request wakes cryptod on that client's port.
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(1)).unwrap();
    let ports = w.d.ports();
    let woke = w.p_wait(&ports);
    assert!(woke.is_some(), "the request's event is pending");
    w.poll();
    assert_eq!(drain(&mut pd).len(), 1);
}

#[test]
fn a_client_reconnecting_in_a_loop_gets_a_fresh_ring_each_time_and_few_console_lines() {
    let mut w = boot();
    w.seed();
    for i in 0..20u8 {
        let mut pd = w.client(POLICY_PD);
        pd.send(&keyset_req(i)).unwrap();
        w.poll();
        assert_eq!(drain(&mut pd).len(), 1, "connection {i} is served");
        pd.chan().shutdown();
        w.poll(); // notices, publishes afresh
    }
    let per_window = portcullis_apps::console::DEFAULT_PER_WINDOW as usize;
    assert_eq!(w.p.lines_with("policy_pd (dom7) left; listening again"), per_window);
}

#[test]
fn a_client_whose_fresh_ring_cannot_be_published_is_served_again_later() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.chan().shutdown();
    // Publishing the fresh ring fails (xenstored busy): cryptod goes on.
    w.hv.fail_store_writes(CRYPTOD, 1);
    w.poll();
    assert_eq!(
        w.p.lines_with("cryptod: policy_pd (dom7): transport: backend: store operation failed; publishing again later"),
        1,
        "{}",
        w.p.console_out
    );
    let mut un = w.client(UNLOCKER);
    un.send(&keyset_req(1)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut un)[0], Message::Keyset(_)), "the other client is served");
    w.p.advance(Duration::from_secs(2));
    w.poll(); // looks the names up again, publishes afresh
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(2)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut pd)[0], Message::Keyset(_)));
}

/// Whether a sealed state holds alice's used TOTP step.
fn has_alice_step(blob: &[u8]) -> bool {
    sealed::unseal(blob, &KEK).unwrap().last_steps.iter().any(|(op, _)| op == "alice")
}

fn persist_timeout() -> PlatformError {
    PlatformError::Io(IoDetail::new(IoOp::Persist, IoCause::Timeout).on("persist-ack/sealed-state"))
}

const NO_AUDIT_WAIT: &str = "clients=unlocker,policy_pd\ncollector=dom0\nanswer_after_audit=0\n";

fn boot_no_audit_wait() -> World {
    boot_with(
        NO_AUDIT_WAIT,
        &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)],
    )
}

/// The client's link shared with the persist hook, which takes whatever
/// reached the client before the state was stored.
fn watch_early_answers(
    w: &mut World,
    link: Link<SimBackend>,
) -> Arc<Mutex<(Link<SimBackend>, Vec<Message>)>> {
    let shared = Arc::new(Mutex::new((link, Vec::new())));
    let hook = shared.clone();
    w.p.on_persist = Some(Box::new(move |_blob| {
        let mut guard = hook.lock().unwrap();
        let (link, early) = &mut *guard;
        let got = drain(link);
        early.extend(got);
    }));
    shared
}

#[test]
fn without_answer_after_audit_an_accepted_code_is_persisted_before_its_answer_leaves() {
    let mut w = boot_no_audit_wait();
    w.seed();
    let un = w.client(UNLOCKER);
    let shared = watch_early_answers(&mut w, un);
    shared.lock().unwrap().0.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    let (link, early) = &mut *shared.lock().unwrap();
    assert!(early.is_empty(), "the answer reached the client before the state was persisted");
    let (_, blob) = w.p.persisted.last().unwrap();
    assert!(has_alice_step(blob));
    let got = drain(link);
    assert_eq!(got.len(), 1, "answered in the same wake-up, after persisting");
    assert_eq!(totp_result(&got[0]), TotpResult::Ok);
}

#[test]
fn with_answer_after_audit_the_released_answer_also_waits_for_the_persist() {
    let mut w = boot();
    w.seed();
    let mut un = w.client(UNLOCKER);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.p.persist_error = Some(persist_timeout());
    w.poll();
    // The collector stores the record and acks: the authority releases the
    // answer, but its step is not durable.
    for _ in 0..3 {
        w.ack();
    }
    assert!(drain(&mut un).is_empty(), "released while the step was not persisted");
    assert_eq!(w.d.unpersisted_len(), 1);
    assert!(!w.p.persisted.iter().any(|(_, b)| has_alice_step(b)));
    w.p.persist_error = None;
    let shared = watch_early_answers(&mut w, un);
    w.poll();
    let (link, early) = &mut *shared.lock().unwrap();
    assert!(early.is_empty(), "the answer left before the state was stored");
    assert!(has_alice_step(&w.p.persisted.last().unwrap().1));
    let got = drain(link);
    assert_eq!(got.len(), 1);
    assert_eq!(totp_result(&got[0]), TotpResult::Ok);
    assert_eq!(w.d.unpersisted_len(), 0);
    assert_eq!(w.p.lines_with("sealed state persisted again; releasing 1 held answer"), 1);
}

#[test]
fn while_persist_fails_answers_are_held_bounded_and_retried_then_all_delivered_in_order() {
    let mut w = boot_no_audit_wait();
    w.seed();
    let mut un = w.client(UNLOCKER);
    w.p.persist_error = Some(persist_timeout());
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert!(drain(&mut un).is_empty(), "answered while the step is not durable");
    // More requests: the client is not read while its answer is held.
    for i in 0..20 {
        un.send(&keyset_req(i)).unwrap();
        let _ = un.pump();
    }
    let attempts = w.p.persist_attempts;
    for _ in 0..50 {
        w.poll();
        w.p.advance(Duration::from_millis(200));
    }
    assert!(drain(&mut un).is_empty());
    assert_eq!(w.d.unpersisted_len(), 1, "held answers stay bounded");
    assert!(w.p.persist_attempts >= attempts + 50, "retried on every wake-up");
    let said = w.p.lines_with("cannot persist the sealed state");
    assert!(said >= 1, "{}", w.p.console_out);
    assert!(said <= portcullis_apps::console::DEFAULT_PER_WINDOW as usize * 2, "rate-limited");
    assert!(w.p.console_out.contains("persist persist-ack/sealed-state: timed out"));
    // dom0 is back: the held answer goes first, then the others are served.
    w.p.persist_error = None;
    let mut got = Vec::new();
    for _ in 0..20 {
        w.poll();
        got.extend(drain(&mut un));
        let _ = un.pump();
    }
    assert!(has_alice_step(&w.p.persisted.last().unwrap().1));
    assert_eq!(got.len(), 21, "{got:?}");
    assert_eq!(totp_result(&got[0]), TotpResult::Ok);
    assert!(got[1..].iter().all(|m| matches!(m, Message::Keyset(_))));
}

#[test]
fn a_client_leaving_while_its_answer_waits_for_persist_is_told_on_the_console() {
    let mut w = boot_no_audit_wait();
    w.seed();
    let mut un = w.client(UNLOCKER);
    w.p.persist_error = Some(persist_timeout());
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert_eq!(w.d.unpersisted_len(), 1);
    un.chan().shutdown();
    w.poll();
    assert_eq!(w.d.unpersisted_len(), 0);
    assert_eq!(w.p.lines_with("left before 1 answer(s) could be released; dropped"), 1);
}

#[test]
fn on_a_platform_that_cannot_persist_answers_go_and_it_is_said_once() {
    let mut w = boot_no_audit_wait();
    w.p.persist_error = Some(PlatformError::Unsupported);
    w.seed();
    let mut un = w.client(UNLOCKER);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Ok);
    un.send(&totp_req(&code_at(T0))).unwrap();
    w.poll();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Replay);
    assert_eq!(w.p.lines_with("replay state lasts only until restart"), 1);
    assert_eq!(w.d.unpersisted_len(), 0);
}

#[test]
fn cryptod_created_before_entropyd_takes_its_entropy_once_it_appears() {
    let mut w = boot_with(SETTINGS, &[("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)]);
    assert_eq!(w.p.lines_with("entropyd not there yet"), 1, "{}", w.p.console_out);
    w.poll();
    assert!(!w.d.authority().is_ready());
    w.p.names.insert("entropyd".into(), ENTROPYD);
    // Names are looked up again every RESOLVE_EVERY seconds.
    w.p.advance(Duration::from_secs(2));
    w.seed();
    assert_eq!(w.p.lines_with("entropyd is dom2; taking entropy from it"), 1);
}

#[test]
fn a_client_whose_channel_cannot_be_published_at_start_is_served_at_the_next_look_up() {
    // xenstored busy: the first store write (the unlocker's ring, the
    // first client) fails. cryptod starts all the same and publishes the
    // unlocker's channel again when it next looks the names up.
    let hv = Hypervisor::new();
    let entropyd = server(&hv, ENTROPYD, CRYPTOD, port::ENTROPY);
    hv.fail_store_writes(CRYPTOD, 1);
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_names(&[("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)])
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, &sealed_blob())
        .settings(SETTINGS);
    let d = CryptodDriver::new(&mut p).unwrap();
    let collector = client(&hv, DOM0, CRYPTOD, port::AUDIT);
    let mut w = World { hv, p, d, entropyd, collector };
    assert_eq!(
        w.p.lines_with("cryptod: client unlocker not served yet (link: transport: backend: store operation failed)"),
        1,
        "{}",
        w.p.console_out
    );
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.send(&keyset_req(1)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut pd)[0], Message::Keyset(_)), "the other client is served");
    // Names are looked up again every RESOLVE_EVERY seconds.
    w.p.advance(Duration::from_secs(2));
    w.poll();
    assert_eq!(w.p.lines_with("cryptod: unlocker is dom"), 1, "{}", w.p.console_out);
    let mut un = w.client(UNLOCKER);
    un.send(&keyset_req(2)).unwrap();
    w.poll();
    assert!(matches!(drain(&mut un)[0], Message::Keyset(_)));
}

#[test]
fn a_destroyed_entropyd_s_link_is_closed_though_its_ring_still_looks_open() {
    let mut w = boot();
    w.seed();
    let ports = w.d.ports().len();
    w.hv.kill(ENTROPYD);
    w.p.names.remove("entropyd");
    w.poll();
    assert_eq!(w.d.ports().len(), ports, "nothing said so yet: the names are looked up later");
    w.p.advance(Duration::from_secs(2));
    w.poll();
    assert_eq!(w.p.lines_with("cryptod: entropyd (dom2) is gone; its link is closed"), 1);
    assert_eq!(w.d.ports().len(), ports - 1, "the dead domain's pages and port let go");
    assert_eq!(w.hv.port_count(CRYPTOD), ports - 1);
}

#[test]
fn entropyd_created_again_under_a_new_id_is_followed() {
    let mut w = boot();
    w.seed();
    let ports = w.d.ports().len();
    // `xl destroy` (or a crash and xl's restart): the old ring still looks
    // connected and no event comes; cryptod learns it at its next names
    // look-up (the old port unbound, the name on a new id).
    w.hv.kill(ENTROPYD);
    w.poll();
    let new_id = DomId(9);
    let mut again = server(&w.hv, new_id, CRYPTOD, port::ENTROPY);
    w.p.names.insert("entropyd".into(), new_id);
    w.p.advance(Duration::from_secs(2));
    w.poll(); // looks the name up again
    w.poll(); // connects
    assert_eq!(
        w.p.lines_with("entropyd is dom9; taking entropy from it"),
        1,
        "{}",
        w.p.console_out
    );
    assert_eq!(w.d.ports().len(), ports, "an entropy link again");
    again.send(&chunk(2)).unwrap();
    w.poll();
    let records = w.ack();
    // An accepted chunk makes no record; a refused one would.
    assert!(!records.iter().any(|r| r.action == AuditAction::EntropyReseed), "{records:?}");
}

/// A code `steps_back` steps old, sent once the clock is 1 s into a step
/// (so the step cannot change under the test).
fn old_code_result(settings: &str, steps_back: u64) -> TotpResult {
    let mut w = boot_with(
        settings,
        &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)],
    );
    w.seed();
    let mut un = w.client(UNLOCKER);
    {
        use portcullis_platform::Platform;
        let now = w.p.now_unix();
        w.p.advance(Duration::from_secs(30 - now % 30 + 1));
    }
    let now = {
        use portcullis_platform::Platform;
        w.p.now_unix()
    };
    un.send(&totp_req(&code_at(now - 30 * steps_back))).unwrap();
    w.poll();
    w.ack();
    let answers = drain(&mut un);
    totp_result(&answers[0])
}

#[test]
fn the_totp_window_setting_decides_how_old_a_code_may_be() {
    // Issue 12: `totp_window` was documented but never read.
    let wide = format!("{SETTINGS}totp_window=2\n");
    let narrow = format!("{SETTINGS}totp_window=1\n");
    assert_eq!(old_code_result(&wide, 2), TotpResult::Ok, "2 steps old, window 2");
    assert_eq!(old_code_result(&narrow, 2), TotpResult::Fail, "2 steps old, window 1");
    assert_eq!(old_code_result(&narrow, 1), TotpResult::Ok, "1 step old, window 1");
    assert_eq!(old_code_result(SETTINGS, 2), TotpResult::Fail, "the default window is 1");
}

#[test]
fn the_lockout_settings_lock_an_operator_out_after_the_set_failures() {
    let settings = format!("{SETTINGS}totp_max_failures=2\ntotp_lockout=600\n");
    let mut w = boot_with(
        &settings,
        &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER), ("policy_pd", POLICY_PD)],
    );
    w.seed();
    let mut un = w.client(UNLOCKER);
    for _ in 0..2 {
        un.send(&totp_req("00000000")).unwrap();
        w.poll();
        w.ack();
        assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::Fail);
    }
    // Locked for 600 s: even the right code is refused unchecked.
    let now = {
        use portcullis_platform::Platform;
        w.p.now_unix()
    };
    un.send(&totp_req(&code_at(now))).unwrap();
    w.poll();
    w.ack();
    assert_eq!(totp_result(&drain(&mut un)[0]), TotpResult::RateLimited);
}

#[test]
fn a_typo_in_cryptods_settings_stops_it_naming_the_line_and_key() {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, &sealed_blob())
        .settings("clients=unlocker\ntotp_windwo=2\n");
    let e = CryptodDriver::new(&mut p).err().expect("refused");
    assert_eq!(e.to_string(), "settings: line 2: totp_windwo: unknown key");
}

#[test]
fn inconsistent_settings_stop_cryptod() {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, &sealed_blob())
        .settings("policy_ttl=200\nmax_policy_ttl=100\n");
    let e = CryptodDriver::new(&mut p).err().expect("refused");
    assert!(e.to_string().contains("max_policy_ttl"), "{e}");
}

/// An admin command for the test cryptod, signed by `key`: new recovery
/// codes for alice.
fn admin_req(key: &ed25519_dalek::SigningKey, seq: u64) -> Message {
    use portcullis_authority::admin::recovery_hash;
    use portcullis_proto::cose::{self, ContentType};
    use portcullis_proto::key::kid_for;
    use portcullis_proto::msg::{AdminCommand, AdminOp, AdminReq};
    let root = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]).verifying_key();
    let c = AdminCommand {
        operator_id: Some("alice".into()),
        code_hashes: Some(vec![recovery_hash(&[1; 16], b"AAAAABBBBB"); 8]),
        ..AdminCommand::new(
            RequestId([seq as u8; 16]),
            kid_for(&root).to_vec(),
            seq,
            T0,
            T0 + 300,
            AdminOp::RecoveryRegenerate,
        )
    };
    let kid = kid_for(&key.verifying_key());
    let signed = cose::sign(key, &kid, ContentType::AdminCommand, &c.to_cbor().unwrap()).unwrap();
    AdminReq { request_id: c.request_id, signed }.into()
}

fn admin_result(m: &[Message]) -> portcullis_proto::msg::AdminResult {
    match m {
        [Message::AdminResp(r)] => r.result,
        other => panic!("not one admin answer: {other:?}"),
    }
}

#[test]
fn admin_commands_are_honoured_only_on_dom0_s_link() {
    use portcullis_proto::msg::AdminResult;
    let key = ed25519_dalek::SigningKey::from_bytes(&[0xad; 32]);
    let mut st = sealed_state();
    st.admin_key = Some(key.verifying_key().to_bytes());
    let hv = Hypervisor::new();
    let entropyd = server(&hv, ENTROPYD, CRYPTOD, port::ENTROPY);
    let mut p = FakePlatform::new(&hv, CRYPTOD, "cryptod")
        .with_names(&[
            ("entropyd", ENTROPYD),
            ("unlocker", UNLOCKER),
            ("policy_pd", POLICY_PD),
            ("dom0", DOM0),
        ])
        .with_config(ConfigItem::KeyEncryptionKey, &KEK)
        .with_config(ConfigItem::SealedState, &sealed::seal(&st, &KEK, &[7; 12]).unwrap())
        .settings("clients=unlocker,policy_pd,dom0\ncollector=dom0\n");
    let d = CryptodDriver::new(&mut p).unwrap();
    let collector = client(&hv, DOM0, CRYPTOD, port::AUDIT);
    let mut w = World { hv, p, d, entropyd, collector };
    w.seed();
    // A valid command on policy_pd's link: refused, audited, not applied.
    let mut pd = w.client(POLICY_PD);
    pd.send(&admin_req(&key, 1)).unwrap();
    w.poll();
    let records = w.ack();
    let rec = records.iter().find(|r| r.action == AuditAction::Admin).expect("audited");
    assert_eq!((rec.actor.as_str(), rec.result), ("policy_pd", AuditResult::Denied));
    assert_eq!(admin_result(&drain(&mut pd)), AdminResult::Denied);
    assert!(last_persisted(&w).recovery.is_empty());
    // The same command on dom0's link: applied and persisted before the answer.
    let mut admin = w.client(DOM0);
    admin.send(&admin_req(&key, 1)).unwrap();
    w.poll();
    assert!(drain(&mut admin).is_empty(), "no answer before the record is stored");
    let state = last_persisted(&w);
    assert_eq!((state.admin_seq, state.recovery.len()), (1, 1));
    w.ack();
    assert_eq!(admin_result(&drain(&mut admin)), AdminResult::Ok);
    // Sent again: a replay.
    admin.send(&admin_req(&key, 1)).unwrap();
    w.poll();
    w.ack();
    assert_eq!(admin_result(&drain(&mut admin)), AdminResult::Replay);
}

fn attestation_req(nonce: u8) -> Message {
    portcullis_proto::msg::AttestationReq {
        request_id: RequestId([nonce; 16]),
        action: "luks:unlock".into(),
        subject_pubkey: [0x33; 32],
        nonce: vec![nonce; 16],
        timestamp: T0,
    }
    .into()
}

fn attested_claims(m: &Message) -> portcullis_proto::msg::AttestationClaims {
    let Message::Attestation(a) = m else { panic!("{m:?}") };
    let object = portcullis_proto::danger::open_unverified(&a.signed).unwrap().into_unverified();
    portcullis_proto::msg::AttestationClaims::from_cbor(&object.payload).unwrap()
}

#[test]
fn an_attestation_names_the_link_s_peer_and_what_dom0_measured() {
    let mut w = boot();
    w.p.measurements.insert(UNLOCKER, [0x5e; 32]);
    w.seed();
    let mut un = w.client(UNLOCKER);
    un.send(&attestation_req(1)).unwrap();
    w.poll();
    let records = w.ack();
    assert!(records.iter().any(|r| r.action == AuditAction::Attest));
    let c = attested_claims(&drain(&mut un)[0]);
    assert_eq!((c.subject_domid, c.subject_vm.as_str()), (u64::from(UNLOCKER.0), "unlocker"));
    assert_eq!(c.measurement, Some([0x5e; 32]));
    // Nothing published for the domain (a new one on a new connection):
    // the claim is left out.
    un.chan().shutdown();
    w.p.measurements.clear();
    w.poll();
    let mut un = w.client(UNLOCKER);
    un.send(&attestation_req(2)).unwrap();
    w.poll();
    w.ack();
    assert_eq!(attested_claims(&drain(&mut un)[0]).measurement, None);
}

/// Issue 14: an answer waits for one durable write, its record's at the
/// collector. The sealed audit head the collector's ack moves is persisted
/// after the answer leaves: a failing persist does not hold it (a decision
/// that changed the state, a used TOTP step, still waits: see above).
#[test]
fn an_ack_releases_its_answers_without_waiting_for_the_head_to_be_persisted() {
    let mut w = boot();
    w.seed();
    let mut pd = w.client(POLICY_PD);
    pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
    w.poll();
    let records = collect(&mut w.collector, false);
    let last = records.last().unwrap();
    w.p.persist_error = Some(persist_timeout());
    w.collector.send(&AuditAck { chain_id: last.chain_id, seq: last.seq }.into()).unwrap();
    w.poll();
    let got = drain(&mut pd);
    assert!(
        matches!(got.as_slice(), [Message::TokenIssueResp(r)] if r.result == IssueResult::Ok),
        "{got:?}"
    );
    // The head is persisted later (a failure retried), once the platform can.
    w.p.advance(Duration::from_nanos(portcullis_apps::cryptod::HEAD_PERSIST_EVERY_NS));
    w.poll();
    w.p.persist_error = None;
    w.poll();
    let head = last_persisted(&w).audit_head.expect("the acked head is sealed");
    assert_eq!((head.chain_id, head.seq), (last.chain_id, last.seq));
}

/// The first acked head of a boot is persisted at once, although the
/// chain's start was persisted just before: were cryptod stopped before it
/// is durable, the next boot's chain would continue from the previous
/// boot's head, and `audit verify` would find this boot's chain linked to
/// by nothing.
#[test]
fn the_first_acked_head_of_a_boot_is_persisted_at_once() {
    let mut w = boot();
    w.poll(); // connects to entropyd
    w.entropyd.send(&chunk(1)).unwrap();
    w.poll();
    let persists = w.p.persisted.len();
    assert!(persists > 0, "the chain's start (and first key) persisted");
    let records = w.ack();
    let last = records.last().expect("the chain start was shipped");
    assert_eq!(w.p.persisted.len(), persists + 1);
    let head = last_persisted(&w).audit_head.expect("the acked head is sealed");
    assert_eq!((head.chain_id, head.seq), (last.chain_id, last.seq));
}

/// The acked head is persisted at most once per `HEAD_PERSIST_EVERY_NS`,
/// not once per ack (a client asking again at once does not wait for it),
/// and is persisted once that time has passed.
#[test]
fn the_acked_head_is_persisted_at_most_once_a_second() {
    use portcullis_apps::cryptod::HEAD_PERSIST_EVERY_NS;
    let mut w = boot();
    w.seed();
    w.p.advance(Duration::from_nanos(HEAD_PERSIST_EVERY_NS));
    w.poll();
    let mut pd = w.client(POLICY_PD);
    let mut acked = Vec::new();
    for _ in 0..3 {
        pd.send(&issue_req(Scope::NetRead, "fw0")).unwrap();
        w.poll();
        let records = collect(&mut w.collector, true);
        w.poll();
        assert_eq!(drain(&mut pd).len(), 1);
        acked.push(records.last().unwrap().seq);
    }
    let persists = w.p.persisted.len();
    w.p.advance(Duration::from_nanos(HEAD_PERSIST_EVERY_NS));
    w.poll();
    assert_eq!(w.p.persisted.len(), persists + 1, "one persist for the three acks");
    assert_eq!(last_persisted(&w).audit_head.map(|h| h.seq), acked.last().copied());
    w.p.advance(Duration::from_nanos(HEAD_PERSIST_EVERY_NS));
    w.poll();
    assert_eq!(w.p.persisted.len(), persists + 1, "nothing moved since");
}

/// With a platform that tells of names changes, a client created after
/// cryptod is served in the next wake-up (at most a STEP later), not at the
/// next periodic look-up (up to RESOLVE_EVERY s); without, it waits for it.
fn served_in_the_same_second(watch_names: bool) -> bool {
    let mut w = boot_with(SETTINGS, &[("entropyd", ENTROPYD), ("unlocker", UNLOCKER)]);
    w.p.watch_names = watch_names;
    w.seed();
    w.poll();
    // Stay within the current second, so no periodic look-up is due.
    let second = w.p.mono_ns / 1_000_000_000;
    w.p.names_at.push((w.p.mono_ns + 1_000_000, "policy_pd".into(), POLICY_PD));
    w.p.advance(Duration::from_millis(1));
    assert_eq!(w.p.mono_ns / 1_000_000_000, second, "the test crossed a second");
    w.poll();
    match try_client(&w.hv, POLICY_PD, CRYPTOD, port::CRYPTOD) {
        Ok(mut pd) => {
            pd.send(&keyset_req(1)).unwrap();
            w.poll();
            assert!(matches!(drain(&mut pd).as_slice(), [Message::Keyset(_)]));
            true
        }
        Err(e) => {
            assert_eq!(e, VchanError::NotPublished);
            false
        }
    }
}

#[test]
fn a_client_is_served_as_soon_as_the_platform_says_its_name_appeared() {
    assert!(served_in_the_same_second(true));
    assert!(!served_in_the_same_second(false));
}
