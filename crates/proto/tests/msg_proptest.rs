//! Property tests: decoding arbitrary or mutated bytes never panics, and
//! encode → decode is the identity on generated messages.

mod msg_samples;

use portcullis_proto::envelope::{Message, MsgType};
use portcullis_proto::msg::*;
use portcullis_proto::scope::{Scope, ScopeSet};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn id_text() -> impl Strategy<Value = String> {
    "[a-z0-9_.:-]{1,128}"
}

fn free_text() -> impl Strategy<Value = String> {
    // Any Unicode, bounded in bytes by MAX_TEXT_LEN (at most 4 bytes a char).
    ".{0,256}"
}

fn nonce() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), MIN_NONCE_LEN..=MAX_NONCE_LEN)
}

fn metadata() -> impl Strategy<Value = Option<Metadata>> {
    let map = btree_map("[a-z]{1,64}", ".{0,64}", 0..=MAX_METADATA_ENTRIES);
    proptest::option::of(map.prop_map(|m| m.into_iter().collect()))
}

fn request_id() -> impl Strategy<Value = RequestId> {
    any::<[u8; 16]>().prop_map(RequestId)
}

fn entropy_pub() -> impl Strategy<Value = Message> {
    (
        id_text(),
        any::<u64>(),
        nonce(),
        vec(any::<u8>(), MIN_ENTROPY_CHUNK..=MAX_ENTROPY_CHUNK),
        any::<u64>(),
    )
        .prop_map(|(drbg_version, seq, nonce, chunk, timestamp)| {
            EntropyPub { drbg_version, seq, nonce, entropy_chunk: Zeroizing::new(chunk), timestamp }
                .into()
        })
}

fn token_issue_req() -> impl Strategy<Value = Message> {
    let scopes = proptest::sample::subsequence(Scope::ALL.to_vec(), 1..=Scope::ALL.len())
        .prop_map(|s| s.into_iter().collect::<ScopeSet>());
    (
        (request_id(), id_text(), scopes, id_text(), free_text(), nonce(), any::<u64>()),
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(vec(any::<u8>(), 1..300)),
            metadata(),
        ),
    )
        .prop_map(
            |(
                (request_id, vm_id, requested_scope, audience, justification, nonce, timestamp),
                (ttl, attestation, metadata),
            )| {
                TokenIssueReq {
                    request_id,
                    vm_id,
                    requested_scope,
                    audience,
                    justification,
                    nonce,
                    timestamp,
                    ttl,
                    attestation,
                    metadata,
                }
                .into()
            },
        )
}

fn totp_validate_resp() -> impl Strategy<Value = Message> {
    let sealed = (id_text(), any::<[u8; 32]>(), vec(any::<u8>(), MIN_SEALED_LEN..=MAX_SEALED_LEN))
        .prop_map(|(volume_id, epk, ciphertext)| SealedSecret {
            volume_id,
            alg: SealAlg::X25519HkdfSha256ChaCha20Poly1305,
            epk,
            ciphertext,
        });
    (
        request_id(),
        proptest::sample::select(TotpResult::ALL.to_vec()),
        proptest::option::of(free_text()),
        proptest::option::of(vec(any::<u8>(), 1..=MAX_TOKEN_LEN)),
        proptest::option::of(sealed),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(
                request_id,
                result,
                reason,
                capability_token,
                unlock_secret,
                expires_at,
                retry_after,
            )| {
                TotpValidateResp {
                    request_id,
                    result,
                    reason,
                    capability_token,
                    unlock_secret,
                    expires_at,
                    retry_after,
                }
                .into()
            },
        )
}

fn error_msg() -> impl Strategy<Value = Message> {
    (
        proptest::option::of(request_id()),
        proptest::sample::select(ErrorCode::ALL.to_vec()),
        free_text(),
    )
        .prop_map(|(request_id, code, reason)| ErrorMsg { request_id, code, reason }.into())
}

fn audit_record() -> impl Strategy<Value = AuditRecord> {
    (
        (any::<[u8; 16]>(), any::<u64>(), any::<[u8; 16]>(), any::<[u8; 32]>(), id_text()),
        (
            proptest::sample::select(AuditAction::ALL.to_vec()),
            proptest::sample::select(AuditResult::ALL.to_vec()),
            any::<u64>(),
            proptest::option::of(id_text()),
            metadata(),
        ),
    )
        .prop_map(
            |(
                (chain_id, seq, entry_id, prev_hash, actor),
                (action, result, timestamp, target, metadata),
            )| {
                AuditRecord {
                    chain_id,
                    seq,
                    entry_id,
                    prev_hash,
                    actor,
                    action,
                    result,
                    timestamp,
                    target,
                    metadata,
                    evidence: None,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![entropy_pub(), token_issue_req(), totp_validate_resp(), error_msg()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
        let _ = AuditRecord::from_cbor(&bytes);
        let _ = KeysetBody::from_cbor(&bytes);
    }

    /// Random edits of valid encodings reach far deeper than random bytes.
    #[test]
    fn mutated_messages_never_panic(
        kind in proptest::sample::select(MsgType::ALL.to_vec()),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = msg_samples::samples(kind)[0].encode().unwrap();
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        if let Ok(msg) = Message::decode(&bytes) {
            // Whatever is accepted is a valid message: it re-encodes and round trips.
            let again = msg.encode().unwrap();
            prop_assert_eq!(Message::decode(&again).unwrap(), msg);
        }
    }

    #[test]
    fn encode_decode_is_identity(msg in message()) {
        let bytes = msg.encode().unwrap();
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn audit_record_round_trips(record in audit_record()) {
        let bytes = record.to_cbor().unwrap();
        prop_assert_eq!(AuditRecord::from_cbor(&bytes).unwrap(), record);
    }
}
