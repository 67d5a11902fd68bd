//! Realistic instances of every message type and signed payload, shared by the
//! integration tests.
#![allow(dead_code)]

use portcullis_proto::envelope::{Message, MsgType};
use portcullis_proto::msg::*;
use portcullis_proto::scope::{Scope, ScopeSet};
use zeroize::Zeroizing;

pub const RID: RequestId = RequestId([
    0x5b, 0x1e, 0x2c, 0x9a, 0x40, 0x77, 0x4f, 0x0d, 0x8e, 0x31, 0x6a, 0x52, 0x0f, 0xc4, 0x19, 0xe2,
]);
pub const T0: u64 = 1_795_000_000;

/// A stand-in COSE_Sign1 (tag 18, four-element array): the envelope does not
/// look inside signed blobs, so realistic framing is enough here.
pub fn cose(len: usize) -> Vec<u8> {
    let mut v = vec![0xd2, 0x84, 0x43, 0xa1, 0x01, 0x32, 0xa0];
    v.resize(len, 0x5a);
    v
}

fn metadata() -> Metadata {
    [("console", "hvc0"), ("site", "rack-7")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// At least one instance of `kind`; where the type has optional fields, one
/// with all of them and one with none.
pub fn samples(kind: MsgType) -> Vec<Message> {
    match kind {
        MsgType::EntropyPub => vec![EntropyPub {
            drbg_version: "entropyd-chacha20-1".into(),
            seq: 42,
            nonce: vec![0x11; 16],
            entropy_chunk: Zeroizing::new((0..64u8).collect()),
            timestamp: T0,
        }
        .into()],
        MsgType::TotpValidateReq => {
            let full = TotpValidateReq {
                request_id: RID,
                operator_id: "alice".into(),
                device_id: "yubikey-7731".into(),
                totp_code: Zeroizing::new("287082".into()),
                client_nonce: vec![0x22; 32],
                timestamp: T0,
                volume_id: Some("vault-home".into()),
                ephemeral_pubkey: Some([0x33; 32]),
                attestation: Some(cose(120)),
                metadata: Some(metadata()),
            };
            let minimal = TotpValidateReq {
                totp_code: Zeroizing::new("94287082".into()),
                volume_id: None,
                ephemeral_pubkey: None,
                attestation: None,
                metadata: None,
                ..full.clone()
            };
            vec![full.into(), minimal.into()]
        }
        MsgType::TotpValidateResp => {
            let full = TotpValidateResp {
                request_id: RID,
                result: TotpResult::Ok,
                reason: Some("code accepted".into()),
                capability_token: Some(cose(286)),
                unlock_secret: Some(SealedSecret {
                    volume_id: "vault-home".into(),
                    alg: SealAlg::X25519HkdfSha256ChaCha20Poly1305,
                    epk: [0x44; 32],
                    ciphertext: vec![0x55; 48],
                }),
                expires_at: Some(T0 + 60),
                retry_after: Some(0),
            };
            let minimal = TotpValidateResp {
                request_id: RID,
                result: TotpResult::RateLimited,
                reason: None,
                capability_token: None,
                unlock_secret: None,
                expires_at: None,
                retry_after: None,
            };
            vec![full.into(), minimal.into()]
        }
        MsgType::TokenIssueReq => {
            let full = TokenIssueReq {
                request_id: RID,
                vm_id: "policy-net".into(),
                requested_scope: [Scope::NetModify, Scope::NetRead].into_iter().collect(),
                audience: "policy_pd".into(),
                justification: "open port 443 for sys-web".into(),
                nonce: vec![0x66; 24],
                timestamp: T0,
                ttl: Some(120),
                attestation: Some(cose(150)),
                metadata: Some(metadata()),
            };
            let minimal = TokenIssueReq {
                requested_scope: ScopeSet::single(Scope::LuksUnlock),
                ttl: None,
                attestation: None,
                metadata: None,
                ..full.clone()
            };
            vec![full.into(), minimal.into()]
        }
        MsgType::TokenIssueResp => {
            let full = TokenIssueResp {
                request_id: RID,
                result: IssueResult::Ok,
                reason: Some("granted by acl rule 3".into()),
                token: Some(cose(286)),
                expires_at: Some(T0 + 120),
            };
            let minimal = TokenIssueResp {
                result: IssueResult::Denied,
                reason: None,
                token: None,
                expires_at: None,
                ..full.clone()
            };
            vec![full.into(), minimal.into()]
        }
        MsgType::TokenRevokeReq => vec![TokenRevokeReq {
            request_id: RID,
            cti: vec![0x77; 16],
            reason: "operator left".into(),
            timestamp: T0,
        }
        .into()],
        MsgType::TokenRevokeResp => vec![
            TokenRevokeResp { request_id: RID, result: RevokeResult::Ok, reason: None }.into(),
            TokenRevokeResp {
                request_id: RID,
                result: RevokeResult::Denied,
                reason: Some("caller lacks token:revoke".into()),
            }
            .into(),
        ],
        MsgType::AttestationReq => vec![AttestationReq {
            request_id: RID,
            action: "luks:unlock".into(),
            subject_pubkey: [0x99; 32],
            nonce: vec![0xaa; 16],
            timestamp: T0,
        }
        .into()],
        MsgType::Attestation => vec![Attestation { signed: cose(200) }.into()],
        MsgType::AuditLog => vec![
            AuditLog {
                records: audit_records().iter().map(|r| r.to_cbor().unwrap()).collect(),
                seal: cose(180),
            }
            .into(),
            AuditLog { records: vec![audit_records()[1].to_cbor().unwrap()], seal: cose(120) }
                .into(),
        ],
        MsgType::AuditAck => vec![AuditAck { chain_id: [0x88; 16], seq: 1234 }.into()],
        MsgType::KeysetReq => vec![KeysetReq { request_id: RID }.into()],
        MsgType::Keyset => vec![Keyset { signed: cose(220) }.into()],
        MsgType::RevocationListReq => vec![RevocationListReq { request_id: RID }.into()],
        MsgType::RevocationList => vec![RevocationList { signed: cose(90) }.into()],
        MsgType::UnlockRequest => vec![UnlockRequest {
            request_id: RID,
            volume_id: "vault-home".into(),
            passphrase: Zeroizing::new(b"correct horse battery staple".to_vec()),
            token: cose(286),
        }
        .into()],
        MsgType::UnlockResult => vec![
            UnlockResult { request_id: RID, result: UnlockOutcome::Ok, reason: None }.into(),
            UnlockResult {
                request_id: RID,
                result: UnlockOutcome::Fail,
                reason: Some("cryptsetup: no key available".into()),
            }
            .into(),
        ],
        MsgType::Error => vec![
            ErrorMsg { request_id: Some(RID), code: ErrorCode::Busy, reason: "queue full".into() }
                .into(),
            ErrorMsg { request_id: None, code: ErrorCode::Malformed, reason: String::new() }.into(),
        ],
        MsgType::AdminReq => vec![AdminReq { request_id: RID, signed: cose(200) }.into()],
        MsgType::AdminResp => vec![
            AdminResp {
                request_id: RID,
                result: AdminResult::Replay,
                reason: Some("admin_seq is not above the last accepted one".into()),
                admin_seq: Some(41),
                unlock_secret: None,
            }
            .into(),
            AdminResp {
                request_id: RID,
                result: AdminResult::Ok,
                reason: None,
                admin_seq: None,
                unlock_secret: None,
            }
            .into(),
            AdminResp {
                request_id: RID,
                result: AdminResult::Ok,
                reason: None,
                admin_seq: Some(43),
                unlock_secret: Some(SealedSecret {
                    volume_id: "vault-data".into(),
                    alg: SealAlg::X25519HkdfSha256ChaCha20Poly1305,
                    epk: [0x45; 32],
                    ciphertext: vec![0x56; 48],
                }),
            }
            .into(),
        ],
        MsgType::OutcomeReport => vec![
            OutcomeReport { request_id: RID, signed: cose(180), attestation: None }.into(),
            OutcomeReport { request_id: RID, signed: cose(180), attestation: Some(cose(300)) }
                .into(),
        ],
        MsgType::OutcomeResp => vec![
            OutcomeResp { request_id: RID, result: OutcomeResult::Recorded, reason: None }.into(),
            OutcomeResp {
                request_id: RID,
                result: OutcomeResult::Refused,
                reason: Some("outcome: bad signature".into()),
            }
            .into(),
        ],
    }
}

pub fn admin_command() -> AdminCommand {
    AdminCommand {
        request_id: RID,
        state_id: vec![0x42; 8],
        admin_seq: 42,
        issued_at: T0,
        expires_at: T0 + 300,
        command: AdminOp::OperatorReset,
        operator_id: Some("alice".into()),
        secret: Some(Zeroizing::new(vec![0x17; 20])),
        algorithm: Some(TotpAlg::Sha1),
        digits: Some(6),
        confirm_code: Some(Zeroizing::new("123456".into())),
        code_hashes: Some(vec![[0x5c; RECOVERY_HASH_LEN]; RECOVERY_CODES]),
        kid: Some(vec![0x4b; 8]),
        cti: Some(vec![0xc7; 16]),
        volume_id: Some("vault-home".into()),
        ephemeral_pubkey: Some([0x66; 32]),
        acl: Some("allow vm=policy_pd scopes=net:modify aud=fw0\n".into()),
        acl_version: Some(2),
        identity: Some("policy_pd".into()),
    }
}

pub fn attestation_claims() -> AttestationClaims {
    AttestationClaims {
        subject_domid: 5,
        subject_vm: "unlocker".into(),
        subject_pubkey: [0x99; 32],
        action: "luks:unlock".into(),
        nonce: vec![0xaa; 16],
        issued_at: T0,
        expires_at: T0 + 60,
        measurement: Some([0x5e; 32]),
    }
}

pub fn audit_records() -> Vec<AuditRecord> {
    let full = AuditRecord {
        chain_id: [0x88; 16],
        seq: 7,
        entry_id: [0xbb; 16],
        prev_hash: [0xcc; 32],
        actor: "alice".into(),
        action: AuditAction::TotpValidate,
        result: AuditResult::RateLimited,
        timestamp: T0,
        target: Some("vault-home".into()),
        metadata: Some(metadata()),
        evidence: Some(cose(160)),
    };
    let minimal = AuditRecord {
        seq: 0,
        prev_hash: [0; 32],
        actor: "cryptod".into(),
        action: AuditAction::ChainStart,
        result: AuditResult::Ok,
        target: None,
        metadata: None,
        evidence: None,
        ..full.clone()
    };
    vec![full, minimal]
}

pub fn audit_seal() -> AuditSeal {
    AuditSeal {
        chain_id: [0x88; 16],
        first_seq: 3,
        last_seq: 7,
        head_hash: [0xdd; 32],
        timestamp: T0,
    }
}

pub fn keyset_body() -> KeysetBody {
    KeysetBody {
        version: 3,
        issued_at: T0,
        keys: vec![
            KeyEntryWire {
                kid: b"cryptod-2026-11".to_vec(),
                alg: -19,
                pubkey: [0xdd; 32],
                not_before: T0,
                not_after: T0 + 7 * 86400,
            },
            KeyEntryWire {
                kid: vec![0x01, 0x02],
                alg: -8,
                pubkey: [0xee; 32],
                not_before: T0 - 86400,
                not_after: T0 + 3600,
            },
        ],
        root_chain: None,
    }
}

pub fn revocation_bodies() -> Vec<RevocationBody> {
    vec![
        RevocationBody {
            serial: 9,
            issued_at: T0,
            entries: vec![
                RevokedEntry { cti: vec![0x77; 16], exp: T0 + 60 },
                RevokedEntry { cti: vec![0x78; 16], exp: T0 + 90 },
            ],
            revoked_names: None,
            identity_serial: None,
            revoked_devices: None,
        },
        RevocationBody {
            serial: 0,
            issued_at: T0,
            entries: vec![],
            revoked_names: None,
            identity_serial: None,
            revoked_devices: None,
        },
        RevocationBody {
            serial: 3,
            issued_at: T0,
            entries: vec![],
            revoked_names: Some(vec!["policy_pd".into()]),
            identity_serial: Some(2),
            revoked_devices: Some(vec!["yubikey-7731".into()]),
        },
    ]
}

/// Every payload sample, encoded, with its CDDL rule name.
pub fn payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        ("attestation-claims", attestation_claims().to_cbor().unwrap()),
        ("keyset-body", keyset_body().to_cbor().unwrap()),
        ("audit-seal", audit_seal().to_cbor().unwrap()),
        ("admin-command", admin_command().to_cbor().unwrap()),
        ("outcome-claims", outcome_claims().to_cbor().unwrap()),
    ];
    out.extend(audit_records().iter().map(|r| ("audit-record", r.to_cbor().unwrap())));
    out.extend(revocation_bodies().iter().map(|r| ("revocation-body", r.to_cbor().unwrap())));
    out
}

pub fn outcome_claims() -> OutcomeClaims {
    OutcomeClaims {
        decision: vec![0x3c; 16],
        enforcer: "unlock_agent".into(),
        outcome: Enforced::Failed,
        timestamp: T0 + 2,
        reason: Some("cryptsetup: no key available with this passphrase".into()),
    }
}
