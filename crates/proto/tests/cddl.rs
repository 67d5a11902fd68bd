//! The code and `protocol/messages.cddl` agree: every message type and every
//! signed payload, as encoded by this crate, validates against the schema, and
//! mutants of them are refused by both the schema and the decoder.

mod msg_samples;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cddl::ast::CDDL;
use cddl::validator::cbor::CBORValidator;
use cddl::validator::Validator;
use ciborium::Value;
use portcullis_proto::envelope::{Message, MsgType};
use portcullis_proto::msg::{
    AttestationClaims, AuditRecord, AuditSeal, KeysetBody, RevocationBody,
};

const SCHEMA: &str = include_str!("../../../protocol/messages.cddl");

/// The schema as the validator sees it. `cddl` 0.10.7 only accepts a bare
/// `tstr` as the key type of a computed map entry (`{ * tstr .size (1..64) =>
/// ... }` rejects every map), so the metadata key bound is relaxed here and its
/// limit is tested against the decoder alone (`metadata_key_bound`).
fn schema_text() -> String {
    let precise = "metadata-map = { 0*16 metadata-key => metadata-value }";
    assert!(SCHEMA.contains(precise), "schema changed: revisit the validator workaround");
    SCHEMA.replace(precise, "metadata-map = { 0*16 tstr => metadata-value }")
}

/// The parsed schema with rule `root` moved first (the validator checks the
/// first rule). Parsed once, then kept for the whole test run.
fn schema(root: &str) -> &'static CDDL<'static> {
    static PARSED: OnceLock<CDDL<'static>> = OnceLock::new();
    static BY_ROOT: OnceLock<Mutex<HashMap<String, &'static CDDL<'static>>>> = OnceLock::new();
    let parsed = PARSED.get_or_init(|| {
        let text: &'static str = Box::leak(schema_text().into_boxed_str());
        cddl::cddl_from_str(text, false).unwrap_or_else(|e| panic!("schema does not parse: {e}"))
    });
    let mut by_root = BY_ROOT.get_or_init(Default::default).lock().unwrap();
    by_root.entry(root.to_string()).or_insert_with(|| {
        let mut doc = parsed.clone();
        let at = doc.rules.iter().position(|r| r.name() == root);
        let at = at.unwrap_or_else(|| panic!("no rule {root}"));
        let rule = doc.rules.remove(at);
        doc.rules.insert(0, rule);
        Box::leak(Box::new(doc))
    })
}

/// Validates `bytes` against rule `root` of the schema.
fn validate(root: &str, bytes: &[u8]) -> Result<(), String> {
    let value = cddl::validator::cbor_value::decode_cbor(bytes).map_err(|e| e.to_string())?;
    CBORValidator::new(schema(root), value, None).validate().map_err(|e| e.to_string())
}

fn to_value(bytes: &[u8]) -> Value {
    ciborium::de::from_reader(bytes).unwrap()
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

fn entries(value: &mut Value) -> &mut Vec<(Value, Value)> {
    match value {
        Value::Map(entries) => entries,
        other => panic!("expected a map, got {other:?}"),
    }
}

fn get<'a>(value: &'a mut Value, key: &str) -> &'a mut Value {
    entries(value)
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key {key}"))
}

fn remove(value: &mut Value, key: &str) {
    let map = entries(value);
    let before = map.len();
    map.retain(|(k, _)| k.as_text() != Some(key));
    assert_eq!(map.len(), before - 1, "no key {key}");
}

/// Asserts that the schema and the decoder both refuse `bytes`.
fn both_refuse(what: &str, bytes: &[u8]) {
    assert!(validate("envelope", bytes).is_err(), "schema accepted {what}");
    assert!(Message::decode(bytes).is_err(), "decoder accepted {what}");
}

/// The schema's rule for an envelope of type `kind` (rule names use hyphens,
/// so they never collide with the underscored member keys).
fn rule_of(kind: MsgType) -> String {
    format!("{}-msg", kind.as_str().replace('_', "-"))
}

#[test]
fn every_message_type_validates() {
    let mut count = 0;
    for &kind in MsgType::ALL {
        let samples = msg_samples::samples(kind);
        assert!(!samples.is_empty(), "no sample for {kind}");
        for msg in samples {
            assert_eq!(msg.kind(), kind);
            let bytes = msg.encode().unwrap();
            if let Err(e) = validate("envelope", &bytes) {
                panic!("{kind} does not match the schema: {e}\n{msg:?}");
            }
            // The type's own rule matches too.
            assert!(validate(&rule_of(kind), &bytes).is_ok(), "{kind} against {}", rule_of(kind));
            assert_eq!(Message::decode(&bytes).unwrap(), msg);
            count += 1;
        }
    }
    assert!(count >= MsgType::ALL.len());
}

#[test]
fn every_payload_validates() {
    let payloads = msg_samples::payloads();
    for root in [
        "attestation-claims",
        "audit-record",
        "audit-seal",
        "keyset-body",
        "revocation-body",
        "outcome-claims",
    ] {
        assert!(payloads.iter().any(|(r, _)| *r == root), "no sample for {root}");
    }
    for (root, bytes) in &payloads {
        if let Err(e) = validate(root, bytes) {
            panic!("{root} does not match the schema: {e}");
        }
        // A payload is not an envelope.
        assert!(validate("envelope", bytes).is_err());
    }
}

#[test]
fn envelope_mutants_are_refused_by_both() {
    for &kind in MsgType::ALL {
        for msg in msg_samples::samples(kind) {
            let good = to_value(&msg.encode().unwrap());

            let mut v = good.clone();
            *get(&mut v, "v") = Value::Integer(2.into());
            both_refuse("v = 2", &to_bytes(&v));

            let mut v = good.clone();
            let other = if kind == MsgType::Error { MsgType::KeysetReq } else { MsgType::Error };
            *get(&mut v, "type") = Value::Text(other.as_str().into());
            both_refuse("a body under the wrong type", &to_bytes(&v));

            let mut v = good.clone();
            *get(&mut v, "type") = Value::Text("entropy_publish".into());
            both_refuse("an unknown type", &to_bytes(&v));

            let mut v = good.clone();
            entries(get(&mut v, "body")).push((Value::Text("extra".into()), Value::Bool(true)));
            both_refuse("an unknown body field", &to_bytes(&v));

            let mut v = good.clone();
            entries(&mut v).push((Value::Text("sig".into()), Value::Bytes(vec![1])));
            both_refuse("an unknown envelope key", &to_bytes(&v));

            let mut v = good.clone();
            remove(&mut v, "body");
            both_refuse("no body", &to_bytes(&v));

            // Dropping any required body field breaks both.
            let body = get(&mut good.clone(), "body").clone();
            for (key, _) in entries(&mut body.clone()).iter() {
                let key = key.as_text().unwrap().to_string();
                let mut v = good.clone();
                remove(get(&mut v, "body"), &key);
                let schema_ok = validate("envelope", &to_bytes(&v)).is_ok();
                let decode_ok = Message::decode(&to_bytes(&v)).is_ok();
                assert_eq!(
                    schema_ok, decode_ok,
                    "{kind} without `{key}`: schema and decoder disagree"
                );
            }
        }
    }
}

/// One field replaced by `value` in the body of `msg`; the schema and the
/// decoder must give the same verdict, which must be `accept`.
fn field_case(msg: &Message, field: &str, value: Value, accept: bool) {
    let mut v = to_value(&msg.encode().unwrap());
    *get(get(&mut v, "body"), field) = value.clone();
    let bytes = to_bytes(&v);
    let schema = validate("envelope", &bytes);
    let decoded = Message::decode(&bytes);
    assert_eq!(schema.is_ok(), accept, "schema on {field} = {value:?}: {schema:?}");
    assert_eq!(decoded.is_ok(), accept, "decoder on {field} = {value:?}: {decoded:?}");
}

#[test]
fn field_limits_agree() {
    let entropy = &msg_samples::samples(MsgType::EntropyPub)[0];
    for (len, ok) in [(31, false), (32, true), (512, true), (513, false)] {
        field_case(entropy, "entropy_chunk", Value::Bytes(vec![7; len]), ok);
    }
    for (len, ok) in [(15, false), (16, true), (64, true), (65, false)] {
        field_case(entropy, "nonce", Value::Bytes(vec![7; len]), ok);
    }
    for (len, ok) in [(0, false), (1, true), (128, true), (129, false)] {
        field_case(entropy, "drbg_version", Value::Text("d".repeat(len)), ok);
    }
    field_case(entropy, "seq", Value::Integer((-1).into()), false);
    field_case(entropy, "timestamp", Value::Text("2026-11-23T12:00:00Z".into()), false);

    let totp = &msg_samples::samples(MsgType::TotpValidateReq)[0];
    for (code, ok) in [
        ("123456", true),
        ("12345678", true),
        ("1234567", false),
        ("12345", false),
        ("123456789", false),
        ("12345a", false),
        (" 123456", false),
        ("", false),
    ] {
        field_case(totp, "totp_code", Value::Text(code.into()), ok);
    }
    field_case(totp, "request_id", Value::Bytes(vec![1; 15]), false);
    field_case(totp, "request_id", Value::Bytes(vec![1; 17]), false);
    field_case(totp, "request_id", Value::Text("5b1e2c9a-4077-4f0d".into()), false);
    field_case(totp, "ephemeral_pubkey", Value::Bytes(vec![1; 31]), false);
    field_case(totp, "attestation", Value::Bytes(msg_samples::cose(40)), true);
    field_case(totp, "attestation", Value::Bytes(vec![0x84; 1024]), true);
    field_case(totp, "attestation", Value::Bytes(vec![0x84; 1025]), false);
    field_case(totp, "attestation", Value::Bytes(vec![]), false);
    let meta = |n: usize| {
        Value::Map(
            (0..n).map(|i| (Value::Text(format!("k{i}")), Value::Text("v".into()))).collect(),
        )
    };
    field_case(totp, "metadata", meta(16), true);
    field_case(totp, "metadata", meta(17), false);
    field_case(
        totp,
        "metadata",
        Value::Map(vec![(Value::Text("k".into()), Value::Integer(1.into()))]),
        false,
    );

    let issue = &msg_samples::samples(MsgType::TokenIssueReq)[0];
    let scopes =
        |names: &[&str]| Value::Array(names.iter().map(|s| Value::Text((*s).into())).collect());
    field_case(issue, "requested_scope", scopes(&["net:read"]), true);
    field_case(issue, "requested_scope", scopes(&[]), false);
    field_case(issue, "requested_scope", scopes(&["root:all"]), false);
    field_case(issue, "justification", Value::Text("j".repeat(1024)), true);
    field_case(issue, "justification", Value::Text("j".repeat(1025)), false);

    let resp = &msg_samples::samples(MsgType::TotpValidateResp)[0];
    field_case(resp, "result", Value::Text("maybe".into()), false);
    field_case(resp, "result", Value::Text("unavailable".into()), true);

    let error = &msg_samples::samples(MsgType::Error)[0];
    field_case(error, "code", Value::Text("teapot".into()), false);
}

#[test]
fn payload_mutants_are_refused_by_both() {
    let refuse = |root: &str, bytes: &[u8], decode: &dyn Fn(&[u8]) -> bool| {
        assert!(validate(root, bytes).is_err(), "schema accepted a bad {root}");
        assert!(!decode(bytes), "decoder accepted a bad {root}");
    };

    let mut v = to_value(&msg_samples::audit_records()[0].to_cbor().unwrap());
    *get(&mut v, "action") = Value::Text("format_disk".into());
    refuse("audit-record", &to_bytes(&v), &|b| AuditRecord::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::audit_records()[0].to_cbor().unwrap());
    *get(&mut v, "prev_hash") = Value::Bytes(vec![0; 31]);
    refuse("audit-record", &to_bytes(&v), &|b| AuditRecord::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::audit_seal().to_cbor().unwrap());
    *get(&mut v, "head_hash") = Value::Bytes(vec![0; 16]);
    refuse("audit-seal", &to_bytes(&v), &|b| AuditSeal::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::audit_seal().to_cbor().unwrap());
    remove(&mut v, "first_seq");
    refuse("audit-seal", &to_bytes(&v), &|b| AuditSeal::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::keyset_body().to_cbor().unwrap());
    *get(&mut v, "keys") = Value::Array(vec![]);
    refuse("keyset-body", &to_bytes(&v), &|b| KeysetBody::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::keyset_body().to_cbor().unwrap());
    if let Value::Array(keys) = get(&mut v, "keys") {
        *get(&mut keys[0], "pubkey") = Value::Bytes(vec![0; 33]);
    }
    refuse("keyset-body", &to_bytes(&v), &|b| KeysetBody::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::revocation_bodies()[0].to_cbor().unwrap());
    if let Value::Array(entries) = get(&mut v, "entries") {
        *get(&mut entries[0], "cti") = Value::Bytes(vec![]);
    }
    refuse("revocation-body", &to_bytes(&v), &|b| RevocationBody::from_cbor(b).is_ok());

    let mut v = to_value(&msg_samples::attestation_claims().to_cbor().unwrap());
    entries(&mut v).push((Value::Text("sig".into()), Value::Bytes(vec![1])));
    refuse("attestation-claims", &to_bytes(&v), &|b| AttestationClaims::from_cbor(b).is_ok());
}

#[test]
fn metadata_key_bound() {
    // The one limit the validator cannot check (see `schema_text`): keys of
    // 1..=MAX_METADATA_KEY_LEN bytes, enforced by the decoder.
    let totp = &msg_samples::samples(MsgType::TotpValidateReq)[0];
    let meta = |key: String| Value::Map(vec![(Value::Text(key), Value::Text("v".into()))]);
    for (len, ok) in [(0, false), (1, true), (64, true), (65, false)] {
        let mut v = to_value(&totp.encode().unwrap());
        *get(get(&mut v, "body"), "metadata") = meta("k".repeat(len));
        assert_eq!(Message::decode(&to_bytes(&v)).is_ok(), ok, "key of {len} bytes");
    }
}
