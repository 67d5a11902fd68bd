//! Round trips, every `DecodeError` kind, and hostile inputs for the envelope
//! and the signed payloads.

mod msg_samples;

use ciborium::Value;
use portcullis_proto::envelope::{
    DecodeError, EncodeError, FieldError, Message, MsgType, MAX_DEPTH, MAX_MESSAGE_LEN,
};
use portcullis_proto::msg::*;

fn all_samples() -> Vec<Message> {
    MsgType::ALL.iter().flat_map(|&k| msg_samples::samples(k)).collect()
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// An envelope with the given entries, in order.
fn envelope(entries: Vec<(&str, Value)>) -> Vec<u8> {
    to_bytes(&Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect()))
}

fn keyset_req_body() -> Value {
    Value::Map(vec![(text("request_id"), Value::Bytes(msg_samples::RID.0.to_vec()))])
}

fn keyset_req_with(body: Value) -> Vec<u8> {
    envelope(vec![("v", Value::Integer(1.into())), ("type", text("keyset_req")), ("body", body)])
}

#[test]
fn every_sample_round_trips_byte_for_byte() {
    for msg in all_samples() {
        let bytes = msg.encode().unwrap();
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        let back = Message::decode(&bytes).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.encode().unwrap(), bytes, "{} is not deterministic", msg.kind());
    }
}

#[test]
fn payloads_round_trip() {
    let claims = msg_samples::attestation_claims();
    assert_eq!(AttestationClaims::from_cbor(&claims.to_cbor().unwrap()).unwrap(), claims);
    for r in msg_samples::audit_records() {
        assert_eq!(AuditRecord::from_cbor(&r.to_cbor().unwrap()).unwrap(), r);
    }
    let ks = msg_samples::keyset_body();
    assert_eq!(KeysetBody::from_cbor(&ks.to_cbor().unwrap()).unwrap(), ks);
    for r in msg_samples::revocation_bodies() {
        assert_eq!(RevocationBody::from_cbor(&r.to_cbor().unwrap()).unwrap(), r);
    }
}

#[test]
fn attestation_claims_bounds() {
    let good = msg_samples::attestation_claims();
    let unmeasured = AttestationClaims { measurement: None, ..good.clone() };
    let back = AttestationClaims::from_cbor(&unmeasured.to_cbor().unwrap()).unwrap();
    assert_eq!(back, unmeasured);
    let bad = [
        AttestationClaims { subject_domid: u64::from(u32::MAX) + 1, ..good.clone() },
        AttestationClaims { subject_vm: String::new(), ..good.clone() },
        AttestationClaims { action: "a".repeat(129), ..good.clone() },
        AttestationClaims { nonce: vec![1; 15], ..good.clone() },
        AttestationClaims { nonce: vec![1; 65], ..good.clone() },
        AttestationClaims { expires_at: good.issued_at - 1, ..good.clone() },
    ];
    for claims in bad {
        assert!(claims.to_cbor().is_err(), "{claims:?} encoded");
    }
    let max = AttestationClaims { subject_domid: u64::from(u32::MAX), ..good };
    assert!(max.to_cbor().is_ok());
}

#[test]
fn attestation_req_and_carried_attestation_bounds() {
    let Message::AttestationReq(good) = &msg_samples::samples(MsgType::AttestationReq)[0] else {
        panic!()
    };
    let short_nonce = AttestationReq { nonce: vec![1; 15], ..good.clone() };
    assert!(Message::from(short_nonce).encode().is_err());
    let no_action = AttestationReq { action: String::new(), ..good.clone() };
    assert!(Message::from(no_action).encode().is_err());
    let Message::TokenIssueReq(issue) = &msg_samples::samples(MsgType::TokenIssueReq)[0] else {
        panic!()
    };
    for (len, ok) in
        [(0, false), (1, true), (MAX_ATTESTATION_LEN, true), (MAX_ATTESTATION_LEN + 1, false)]
    {
        let req = TokenIssueReq { attestation: Some(vec![0x84; len]), ..issue.clone() };
        assert_eq!(Message::from(req).encode().is_ok(), ok, "attestation of {len} bytes");
    }
}

#[test]
fn msg_type_names_round_trip() {
    assert_eq!(MsgType::ALL.len(), 22);
    for &kind in MsgType::ALL {
        assert_eq!(MsgType::parse(kind.as_str()), Some(kind));
        assert_eq!(kind.to_string(), kind.as_str());
    }
    assert_eq!(MsgType::parse("Entropy_Pub"), None);
    assert_eq!(MsgType::parse(""), None);
}

#[test]
fn envelope_keys_may_come_in_any_order() {
    let msg = &msg_samples::samples(MsgType::TokenIssueReq)[0];
    let canonical = msg.encode().unwrap();
    let Value::Map(entries) = ciborium::de::from_reader::<Value, _>(&canonical[..]).unwrap() else {
        panic!("not a map")
    };
    for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
        let permuted = Value::Map(order.iter().map(|&i| entries[i].clone()).collect());
        assert_eq!(&Message::decode(&to_bytes(&permuted)).unwrap(), msg, "order {order:?}");
    }
}

/// The body map of an envelope decoded as a generic CBOR value.
fn body_of(envelope: &mut Value) -> &mut Vec<(Value, Value)> {
    let Value::Map(entries) = envelope else { panic!("envelope is not a map") };
    let Value::Map(body) = &mut entries[2].1 else { panic!("body is not a map") };
    body
}

#[test]
fn body_fields_may_come_in_any_order() {
    let msg = &msg_samples::samples(MsgType::TotpValidateReq)[0];
    let mut v: Value = ciborium::de::from_reader(&msg.encode().unwrap()[..]).unwrap();
    let body = body_of(&mut v);
    body.reverse();
    assert_eq!(&Message::decode(&to_bytes(&v)).unwrap(), msg);
}

#[test]
fn too_large_is_refused_before_parsing() {
    // Even well-formed bytes: the cap applies before anything is read.
    let mut big = keyset_req_with(keyset_req_body());
    big.resize(MAX_MESSAGE_LEN + 1, 0);
    assert_eq!(Message::decode(&big), Err(DecodeError::TooLarge));
    assert_eq!(AuditRecord::from_cbor(&big), Err(DecodeError::TooLarge));
    assert_eq!(DecodeError::TooLarge.code(), ErrorCode::TooLarge);

    // And the encoder will not produce one.
    let msg: Message = RevocationList { signed: vec![1; MAX_MESSAGE_LEN] }.into();
    assert_eq!(msg.encode(), Err(EncodeError::TooLarge));
    let just_fits: Message = RevocationList { signed: vec![1; MAX_MESSAGE_LEN - 64] }.into();
    let bytes = just_fits.encode().unwrap();
    assert_eq!(Message::decode(&bytes).unwrap(), just_fits);
}

#[test]
fn versions_other_than_1_are_unsupported() {
    for v in [0u64, 2, u64::MAX] {
        let bytes = envelope(vec![
            ("v", Value::Integer(v.into())),
            ("type", text("keyset_req")),
            ("body", keyset_req_body()),
        ]);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::UnsupportedVersion(v)));
    }
    // The version is judged first, even when the type and body are unknown to v1
    // and `v` comes last.
    let bytes = envelope(vec![
        ("type", text("quantum_handshake")),
        ("body", Value::Map(vec![(text("qubits"), Value::Integer(9.into()))])),
        ("v", Value::Integer(2.into())),
    ]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnsupportedVersion(2)));
    assert_eq!(DecodeError::UnsupportedVersion(2).code(), ErrorCode::UnsupportedVersion);
    // A version that is not an unsigned integer is a field error.
    let bytes =
        envelope(vec![("v", text("1")), ("type", text("keyset_req")), ("body", keyset_req_body())]);
    assert!(matches!(
        Message::decode(&bytes),
        Err(DecodeError::Invalid(FieldError { field: "v", .. }))
    ));
}

#[test]
fn unknown_types_are_refused() {
    for name in ["keyset_request", "KEYSET_REQ", "", "keyset_req\0"] {
        let bytes = envelope(vec![
            ("v", Value::Integer(1.into())),
            ("type", text(name)),
            ("body", keyset_req_body()),
        ]);
        assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownType), "{name:?}");
    }
    assert_eq!(DecodeError::UnknownType.code(), ErrorCode::UnknownType);
}

/// Decodes `bytes`, which must fail, and returns the `error` message a
/// receiver answers with, as it arrives on the wire.
fn answer_to(bytes: &[u8]) -> ErrorMsg {
    let e = Message::decode(bytes).unwrap_err();
    let wire = Message::Error(ErrorMsg::for_decode_error(&e)).encode().unwrap();
    match Message::decode(&wire).unwrap() {
        Message::Error(answer) => answer,
        other => panic!("answered with {other:?}"),
    }
}

#[test]
fn the_answer_to_an_undecodable_message_carries_the_schemas_code() {
    // messages.cddl: `v` other than 1 -> unsupported_version; an unknown
    // `type` -> unknown_type; everything else that cannot be read -> malformed.
    let v2 = envelope(vec![
        ("v", Value::Integer(2.into())),
        ("type", text("keyset_req")),
        ("body", keyset_req_body()),
    ]);
    let answer = answer_to(&v2);
    assert_eq!((answer.code, answer.request_id), (ErrorCode::UnsupportedVersion, None));
    assert!(answer.reason.contains('2'), "{}", answer.reason);

    let unknown = envelope(vec![
        ("v", Value::Integer(1.into())),
        ("type", text("keyset_request")),
        ("body", keyset_req_body()),
    ]);
    assert_eq!(answer_to(&unknown).code, ErrorCode::UnknownType);
    assert_eq!(answer_to(&vec![0; MAX_MESSAGE_LEN + 1]).code, ErrorCode::TooLarge);
    assert_eq!(answer_to(b"\xff").code, ErrorCode::Malformed);
    assert_eq!(answer_to(&keyset_req_with(text("x"))).code, ErrorCode::Malformed);
}

#[test]
fn the_version_is_judged_before_unknown_envelope_keys() {
    // A later version may add envelope keys; its sender still learns that the
    // version is the problem.
    let bytes = envelope(vec![
        ("ext", Value::Integer(1.into())),
        ("v", Value::Integer(2.into())),
        ("type", text("keyset_req")),
        ("body", keyset_req_body()),
    ]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnsupportedVersion(2)));
    let bytes = envelope(vec![
        ("ext", Value::Integer(1.into())),
        ("v", Value::Integer(1.into())),
        ("type", text("keyset_req")),
        ("body", keyset_req_body()),
    ]);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownField));
}

#[test]
fn unknown_duplicate_and_missing_keys_are_refused() {
    let v1 = || ("v", Value::Integer(1.into()));
    let ty = || ("type", text("keyset_req"));
    let body = || ("body", keyset_req_body());

    let extra = envelope(vec![v1(), ty(), body(), ("sig", Value::Bytes(vec![0; 64]))]);
    assert_eq!(Message::decode(&extra), Err(DecodeError::UnknownField));

    let dup = envelope(vec![v1(), ty(), v1(), body()]);
    assert_eq!(Message::decode(&dup), Err(DecodeError::DuplicateField("v")));
    let dup = envelope(vec![v1(), ty(), body(), body()]);
    assert_eq!(Message::decode(&dup), Err(DecodeError::DuplicateField("body")));

    assert_eq!(Message::decode(&envelope(vec![ty(), body()])), Err(DecodeError::MissingField("v")));
    assert_eq!(
        Message::decode(&envelope(vec![v1(), body()])),
        Err(DecodeError::MissingField("type"))
    );
    assert_eq!(
        Message::decode(&envelope(vec![v1(), ty()])),
        Err(DecodeError::MissingField("body"))
    );

    // Inside the body.
    let rid = || (text("request_id"), Value::Bytes(msg_samples::RID.0.to_vec()));
    let body_extra = Value::Map(vec![rid(), (text("note"), text("hi"))]);
    assert_eq!(Message::decode(&keyset_req_with(body_extra)), Err(DecodeError::UnknownField));
    let body_dup = Value::Map(vec![rid(), rid()]);
    assert_eq!(
        Message::decode(&keyset_req_with(body_dup)),
        Err(DecodeError::DuplicateField("request_id"))
    );
    assert_eq!(
        Message::decode(&keyset_req_with(Value::Map(vec![]))),
        Err(DecodeError::MissingField("request_id"))
    );
    // A non-text key.
    let int_key = Value::Map(vec![(Value::Integer(1.into()), Value::Bytes(vec![0; 16]))]);
    assert!(matches!(Message::decode(&keyset_req_with(int_key)), Err(DecodeError::Malformed(_))));
}

/// Every body field of every sample, left out: an optional field's absence
/// decodes; a required one's is `MissingField` naming it. With it and
/// every field after it left out, the first missing required field (in
/// declaration order, which is the encoder's) is the one named.
#[test]
fn missing_body_fields_name_the_first_required_one() {
    for msg in all_samples() {
        let mut full: Value = ciborium::de::from_reader(&msg.encode().unwrap()[..]).unwrap();
        let keys: Vec<Value> = body_of(&mut full).iter().map(|(k, _)| k.clone()).collect();
        let mut required = 0;
        for (j, key) in keys.iter().enumerate() {
            let name = key.as_text().unwrap();
            let mut one_out = full.clone();
            body_of(&mut one_out).retain(|(k, _)| k != key);
            match Message::decode(&to_bytes(&one_out)) {
                Ok(_) => continue,
                Err(e) => assert!(
                    matches!(e, DecodeError::MissingField(n) if n == name),
                    "{:?} without {name}: {e:?}",
                    msg.kind()
                ),
            }
            required += 1;
            let mut rest_out = full.clone();
            body_of(&mut rest_out).truncate(j);
            let e = Message::decode(&to_bytes(&rest_out)).unwrap_err();
            assert!(
                matches!(e, DecodeError::MissingField(n) if n == name),
                "{:?} without {name} and what follows: {e:?}",
                msg.kind()
            );
        }
        // The fields the encoder writes first are the required ones.
        let mut none = full.clone();
        body_of(&mut none).clear();
        if required > 0 {
            let first = keys[0].as_text().unwrap();
            let e = Message::decode(&to_bytes(&none)).unwrap_err();
            assert!(matches!(e, DecodeError::MissingField(n) if n == first), "{e:?}");
        }
    }
}

#[test]
fn duplicate_metadata_keys_are_refused() {
    let msg = &msg_samples::samples(MsgType::TotpValidateReq)[0];
    let mut v: Value = ciborium::de::from_reader(&msg.encode().unwrap()[..]).unwrap();
    let body = body_of(&mut v);
    let (_, meta) = body.iter_mut().find(|(k, _)| k.as_text() == Some("metadata")).unwrap();
    *meta = Value::Map(vec![(text("console"), text("a")), (text("console"), text("b"))]);
    assert_eq!(Message::decode(&to_bytes(&v)), Err(DecodeError::DuplicateField("metadata")));
}

#[test]
fn wrong_types_and_sizes_are_field_errors() {
    let invalid = |body: Value| match Message::decode(&keyset_req_with(body)) {
        Err(DecodeError::Invalid(e)) => e,
        other => panic!("expected a field error, got {other:?}"),
    };
    let with_rid = |v: Value| Value::Map(vec![(text("request_id"), v)]);
    assert_eq!(invalid(with_rid(Value::Bytes(vec![0; 15]))).field, "request_id");
    assert_eq!(invalid(with_rid(Value::Bytes(vec![0; 17]))).field, "request_id");
    assert_eq!(invalid(with_rid(text("5b1e2c9a40774f0d8e316a520fc419e2"))).field, "request_id");
    assert_eq!(invalid(with_rid(Value::Integer(7.into()))).field, "request_id");
    // A tag is not a byte string.
    let tagged = with_rid(Value::Tag(37, Box::new(Value::Bytes(vec![0; 16]))));
    assert_eq!(invalid(tagged).field, "request_id");
    // The body itself must be a map.
    assert_eq!(invalid(Value::Array(vec![])).field, "body");
    assert_eq!(invalid(Value::Null).field, "body");
    assert_eq!(
        DecodeError::Invalid(FieldError { field: "x", reason: "y" }).code(),
        ErrorCode::Malformed
    );
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let mut req = match &msg_samples::samples(MsgType::TotpValidateReq)[0] {
        Message::TotpValidateReq(r) => r.clone(),
        _ => unreachable!(),
    };
    req.totp_code = Zeroizing::new("12345".into());
    let err = Message::from(req.clone()).encode().unwrap_err();
    assert_eq!(
        err,
        EncodeError::Invalid(FieldError {
            field: "totp_code",
            reason: "not 6 or 8 ASCII digits nor a recovery code"
        })
    );
    // A recovery code (10 base32 characters, optionally 5-5 with a dash)
    // may stand in for a TOTP code; nothing else may.
    for ok in ["ABCDE-FGH27", "abcdefgh27"] {
        req.totp_code = Zeroizing::new(ok.into());
        assert!(Message::from(req.clone()).encode().is_ok(), "{ok}");
    }
    for bad in ["ABCDE-FGH2", "ABCDEFGH01", "ABCDE_FGH27", "ABCD-EFGH27"] {
        req.totp_code = Zeroizing::new(bad.into());
        assert!(Message::from(req.clone()).encode().is_err(), "{bad}");
    }
    assert!(err.to_string().contains("totp_code"));

    req.totp_code = Zeroizing::new("123456".into());
    req.client_nonce = vec![0; 8];
    assert!(matches!(
        Message::from(req).encode(),
        Err(EncodeError::Invalid(FieldError { field: "client_nonce", .. }))
    ));

    let empty_scope = TokenIssueReq {
        requested_scope: portcullis_proto::scope::ScopeSet::EMPTY,
        ..match &msg_samples::samples(MsgType::TokenIssueReq)[0] {
            Message::TokenIssueReq(r) => r.clone(),
            _ => unreachable!(),
        }
    };
    assert!(Message::from(empty_scope).encode().is_err());

    let mut ks = msg_samples::keyset_body();
    ks.keys[1].not_after = ks.keys[1].not_before - 1;
    assert!(matches!(
        ks.to_cbor(),
        Err(EncodeError::Invalid(FieldError { field: "not_after", .. }))
    ));
    ks.keys.clear();
    assert!(ks.to_cbor().is_err());
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = keyset_req_with(keyset_req_body());
    bytes.push(0x00);
    assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingBytes));
    // Two messages back to back are not one message.
    let one = keyset_req_with(keyset_req_body());
    let two = [one.clone(), one].concat();
    assert_eq!(Message::decode(&two), Err(DecodeError::TrailingBytes));

    let mut payload = msg_samples::keyset_body().to_cbor().unwrap();
    payload.push(0xf6);
    assert_eq!(KeysetBody::from_cbor(&payload), Err(DecodeError::TrailingBytes));
}

#[test]
fn every_truncation_is_refused() {
    for msg in all_samples() {
        let bytes = msg.encode().unwrap();
        for len in 0..bytes.len() {
            assert!(Message::decode(&bytes[..len]).is_err(), "{} cut at {len}", msg.kind());
        }
    }
    let payload = msg_samples::audit_records()[0].to_cbor().unwrap();
    for len in 0..payload.len() {
        assert!(AuditRecord::from_cbor(&payload[..len]).is_err());
    }
}

/// `prefix` then a head of major type `major` declaring `len` (8-byte argument).
fn huge_head(prefix: &[u8], major: u8, len: u64) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.push((major << 5) | 27);
    out.extend_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn huge_declared_lengths_are_refused_without_allocating() {
    // {"v": 1, "type": "keyset_req", "body": {"request_id": <header only>
    let prefix = {
        let full = keyset_req_with(keyset_req_body());
        let rid_at = full.windows(2).position(|w| w == [0x50, 0x5b]).unwrap();
        full[..rid_at].to_vec()
    };
    for major in [2u8, 3, 4, 5] {
        for len in [1u64 << 60, u64::MAX, 1 << 32] {
            let bytes = huge_head(&prefix, major, len);
            assert_eq!(
                Message::decode(&bytes),
                Err(DecodeError::Malformed("truncated")),
                "major {major} len {len}"
            );
            // As the whole input, and as a payload.
            assert!(Message::decode(&huge_head(&[], major, len)).is_err());
            assert!(AuditRecord::from_cbor(&huge_head(&[], major, len)).is_err());
        }
    }
    // As the declared length of the envelope map itself.
    assert_eq!(
        Message::decode(&huge_head(&[], 5, 1 << 60)),
        Err(DecodeError::Malformed("truncated"))
    );
}

#[test]
fn nesting_is_limited() {
    // A body nested `n` arrays deep inside the envelope (levels 2..=n+1).
    let nested = |n: usize| {
        let mut v = Value::Integer(0.into());
        for _ in 0..n {
            v = Value::Array(vec![v]);
        }
        keyset_req_with(v)
    };
    // Envelope at level 1 plus 15 arrays: at the limit, so the body is merely the wrong type.
    assert!(matches!(Message::decode(&nested(MAX_DEPTH - 1)), Err(DecodeError::Invalid(_))));
    assert_eq!(Message::decode(&nested(MAX_DEPTH)), Err(DecodeError::TooDeep));
    // Far beyond: refused before any recursion gets deep (hand-built, 50k levels).
    let mut deep = keyset_req_with(Value::Null);
    deep.pop();
    deep.extend(std::iter::repeat_n(0x81, 50_000));
    deep.push(0x00);
    assert_eq!(Message::decode(&deep), Err(DecodeError::TooDeep));
    // Tags count as levels too.
    let mut tags = keyset_req_with(Value::Null);
    tags.pop();
    tags.extend(std::iter::repeat_n(0xc1, 40));
    tags.push(0x00);
    assert_eq!(Message::decode(&tags), Err(DecodeError::TooDeep));
}

#[test]
fn non_preferred_encodings_are_malformed() {
    let good = keyset_req_with(keyset_req_body());
    assert_eq!(good[0], 0xa3);
    let malformed = |bytes: &[u8]| matches!(Message::decode(bytes), Err(DecodeError::Malformed(_)));
    // The map head with a one-byte argument (0xb8 0x03) instead of 0xa3.
    assert!(malformed(&[&[0xb8, 0x03][..], &good[1..]].concat()));
    // An indefinite-length map, closed by a break.
    assert!(malformed(&[&[0xbf][..], &good[1..], &[0xff]].concat()));
    // Reserved additional information 28..=30.
    for initial in [0x1c, 0x3d, 0x5e] {
        assert!(malformed(&[initial]));
    }
    // `v` written as 0x18 0x01 instead of 0x01.
    let v_at = good.windows(2).position(|w| w == [0x61, b'v']).unwrap() + 2;
    let long_v = [&good[..v_at], &[0x18, 0x01], &good[v_at + 1..]].concat();
    assert!(malformed(&long_v));
    // A lone break.
    assert!(malformed(&[0xff]));
    // Invalid UTF-8 in a key.
    assert!(malformed(&[0xa1, 0x61, 0xff, 0x01]));
    assert!(malformed(&[]));
}

#[test]
fn errors_display() {
    let cases = [
        (DecodeError::TooLarge, "65536"),
        (DecodeError::Malformed("truncated"), "truncated"),
        (DecodeError::TooDeep, "16"),
        (DecodeError::TrailingBytes, "trailing"),
        (DecodeError::UnsupportedVersion(7), "7"),
        (DecodeError::UnknownType, "type"),
        (DecodeError::UnknownField, "field"),
        (DecodeError::DuplicateField("seq"), "seq"),
        (DecodeError::MissingField("seq"), "seq"),
        (DecodeError::Invalid(FieldError { field: "seq", reason: "bad" }), "bad"),
    ];
    for (err, needle) in cases {
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn request_ids_are_exposed() {
    for msg in all_samples() {
        let has_id = !matches!(
            msg.kind(),
            MsgType::EntropyPub
                | MsgType::Attestation
                | MsgType::AuditLog
                | MsgType::AuditAck
                | MsgType::Keyset
                | MsgType::RevocationList
        );
        match msg.request_id() {
            Some(id) => assert_eq!(*id, msg_samples::RID),
            None => assert!(!has_id || msg.kind() == MsgType::Error, "{}", msg.kind()),
        }
    }
    assert_eq!(msg_samples::RID.to_string(), "5b1e2c9a40774f0d8e316a520fc419e2");
}

#[test]
fn secrets_are_redacted_in_debug() {
    for msg in msg_samples::samples(MsgType::UnlockRequest)
        .into_iter()
        .chain(msg_samples::samples(MsgType::TotpValidateReq))
    {
        let debug = format!("{msg:?}");
        assert!(!debug.contains("horse"), "{debug}");
        assert!(!debug.contains("287082"), "{debug}");
    }
}
