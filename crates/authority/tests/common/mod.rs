//! What the authority's end-to-end test crates share: one sealed state (one
//! operator, alice), the two client peers its ACL names, entropy chunks,
//! the test-only [`Route`] shim, admin commands, and readers for the audit records an
//! [`Output`] carries. Each test crate uses a part of it.
#![allow(dead_code)]

use portcullis_authority::authority::{not_served, Output};
use portcullis_authority::sealed::SealedState;
use portcullis_authority::totp::{totp, Algorithm, OperatorSecret};
use portcullis_authority::{Authority, PeerId, Request};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    AttestationReq, AuditRecord, EntropyPub, RequestId, TotpValidateReq, TotpValidateResp,
};
use zeroize::Zeroizing;

/// alice's TOTP secret (RFC 6238's SHA-1 seed).
pub const SECRET: &[u8] = b"12345678901234567890";
/// The tests' clock.
pub const T0: u64 = 1_700_000_000;
/// The ACL: the unlocker (dom5) may unlock two volumes, policy_pd (dom7)
/// may get network tokens and revoke.
pub const ACL: &str = "\
allow vm=unlocker domid=5 scopes=luks:unlock aud=unlock_agent volumes=vol0,data
allow vm=policy_pd domid=7 scopes=net:modify,net:read,token:revoke aud=fw0,cryptod
";

/// Test-only: routes a message to the entry point for its kind, as if each
/// came in on the link of the role that may send it (cryptod itself routes
/// by link, never by kind), and seals the records it made, as cryptod does
/// at the end of each wake-up (here every message is its own wake-up). A
/// message no role may send is an error answer.
pub trait Route {
    /// The entry point for `msg`'s kind.
    fn handle(&mut self, peer: &PeerId, msg: &Message, now: u64, hw: &[u8]) -> Output;
}

impl Route for Authority {
    fn handle(&mut self, peer: &PeerId, msg: &Message, now: u64, hw: &[u8]) -> Output {
        let out = match msg {
            Message::EntropyPub(e) => self.entropy(peer, e, now, hw),
            Message::AuditAck(a) => self.collector_ack(a),
            other => match Request::from_message(other) {
                Some(req) => self.handle_request(peer, req, now, hw),
                None => Output { response: Some(not_served(other)), ..Output::default() },
            },
        };
        self.seal_audit(now);
        out
    }
}

/// The sealed state: alice (SHA-1, 8 digits) and [`ACL`].
pub fn state() -> SealedState {
    SealedState::new(
        [0x11; 32],
        [0x22; 32],
        vec![OperatorSecret::new("alice", SECRET, Algorithm::Sha1, 8).unwrap()],
        ACL.into(),
    )
}

/// The unlocker's peer id (dom5).
pub fn unlocker() -> PeerId {
    PeerId::new(5, "unlocker")
}

/// policy_pd's peer id (dom7).
pub fn policy_pd() -> PeerId {
    PeerId::new(7, "policy_pd")
}

/// entropyd's chunk number `seq`.
pub fn entropy(seq: u64) -> Message {
    EntropyPub {
        drbg_version: "entropyd-1".into(),
        seq,
        nonce: vec![seq as u8; 16],
        entropy_chunk: Zeroizing::new(vec![0x5a ^ seq as u8; 64]),
        timestamp: T0,
    }
    .into()
}

/// The encoded audit records in `out`.
pub fn records(out: &Output) -> Vec<Vec<u8>> {
    out.audit.clone()
}

/// An encoded audit record, read.
pub fn audit_record(bytes: &[u8]) -> AuditRecord {
    AuditRecord::from_cbor(bytes).unwrap()
}

/// The log items (records, then each batch's seal) of every sealed batch
/// `a` has not had acknowledged, oldest first.
pub fn pending_items(a: &Authority) -> Vec<Vec<u8>> {
    a.pending_audit_batches().flat_map(|b| b.items().map(<[u8]>::to_vec)).collect()
}

/// alice's code at `t`.
pub fn code_at(t: u64) -> String {
    format!("{:08}", totp(SECRET, Algorithm::Sha1, 8, t))
}

/// A `totp_validate_req` from `operator`'s `device` with `code`, at [`T0`].
pub fn totp_req_for(operator: &str, code: &str, device: &str) -> TotpValidateReq {
    TotpValidateReq {
        request_id: RequestId([0x42; 16]),
        operator_id: operator.into(),
        device_id: device.into(),
        totp_code: Zeroizing::new(code.into()),
        client_nonce: vec![9; 16],
        timestamp: T0,
        volume_id: None,
        ephemeral_pubkey: None,
        attestation: None,
        metadata: None,
    }
}

/// alice's `totp_validate_req` from `device` with `code`.
pub fn totp_req(code: &str, device: &str) -> TotpValidateReq {
    totp_req_for("alice", code, device)
}

/// The `totp_validate_resp` in `out` (panics on anything else).
pub fn totp_resp(out: &Output) -> &TotpValidateResp {
    match out.response.as_ref() {
        Some(Message::TotpValidateResp(r)) => r,
        other => panic!("expected totp_validate_resp, got {other:?}"),
    }
}

/// An `attestation_req` for `action`, binding `pubkey`, with a nonce made
/// of `nonce` (distinct nonces for distinct attestations).
pub fn attestation_req(action: &str, pubkey: [u8; 32], nonce: u64, now: u64) -> AttestationReq {
    let mut n = vec![0xa7; 16];
    n[..8].copy_from_slice(&nonce.to_le_bytes());
    AttestationReq {
        request_id: RequestId([0x44; 16]),
        action: action.into(),
        subject_pubkey: pubkey,
        nonce: n,
        timestamp: now,
    }
}

/// The signed attestation in `out` (panics on anything else).
pub fn attestation_of(out: &Output) -> Vec<u8> {
    match out.response.as_ref() {
        Some(Message::Attestation(a)) => a.signed.clone(),
        other => panic!("expected attestation, got {other:?}"),
    }
}

/// An admin command `op` for `a` (its root kid), sequence `seq`, issued at
/// [`T0`] for 300 s, request id `[seq; 16]`, no optional fields.
pub fn admin_command(
    a: &Authority,
    seq: u64,
    op: portcullis_proto::msg::AdminOp,
) -> portcullis_proto::msg::AdminCommand {
    portcullis_proto::msg::AdminCommand::new(
        RequestId([seq as u8; 16]),
        portcullis_proto::key::kid_for(&a.root_public()).to_vec(),
        seq,
        T0,
        T0 + 300,
        op,
    )
}

/// An authority started from `st` at [`T0`] and seeded by entropyd, ready.
pub fn seeded_from(st: SealedState) -> Authority {
    let mut a = Authority::new(portcullis_authority::authority::Config::default(), st, T0).unwrap();
    a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    assert!(a.is_ready());
    a
}

/// Sends `msg` from `peer` and acks its records as the collector, so a
/// held answer is released: the output (with the answer) and the records.
pub fn call(
    a: &mut Authority,
    peer: &PeerId,
    msg: &Message,
    now: u64,
) -> (Output, Vec<AuditRecord>) {
    let mut out = a.handle(peer, msg, now, b"");
    let recs: Vec<AuditRecord> = records(&out).iter().map(|r| audit_record(r)).collect();
    if let Some(last) = recs.last() {
        let ack: Message =
            portcullis_proto::msg::AuditAck { chain_id: last.chain_id, seq: last.seq }.into();
        let acked = a.handle(&PeerId::new(0, "collector"), &ack, now, b"");
        if let Some((_, answer)) = acked.released.into_iter().next() {
            out.response = Some(answer);
        }
    }
    (out, recs)
}
