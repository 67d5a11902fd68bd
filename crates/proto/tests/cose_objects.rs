//! Signed objects that are not tokens: content types keep the kinds apart,
//! and tokens and signed objects are never accepted as each other.

use coset::cbor::value::Value;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use portcullis_proto::cose::{
    sign, verify, verify_sign1_raw, ContentType, CoseError, MAX_SIGNED_OBJECT_LEN,
};
use portcullis_proto::danger::open_unverified;
use portcullis_proto::scope::ScopeSet;
use portcullis_proto::token::{self, Claims, KeyEntry, Keyset, MemoryReplayCache, RevokedSet};

const KID: &[u8] = b"cryptod-1";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x33; 32])
}

fn key_for(kid: &[u8]) -> Option<VerifyingKey> {
    (kid == KID).then(|| key().verifying_key())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    coset::cbor::ser::into_writer(v, &mut out).unwrap();
    out
}

/// Signs `payload` under an arbitrary protected header, by hand.
fn sign_raw(protected: Vec<(Value, Value)>, payload: &[u8]) -> Vec<u8> {
    let protected = encode(&Value::Map(protected));
    let tbs = encode(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.to_vec()),
    ]));
    encode(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(vec![]),
            Value::Bytes(payload.to_vec()),
            Value::Bytes(key().sign(&tbs).to_bytes().to_vec()),
        ])),
    ))
}

#[test]
fn every_kind_round_trips_and_no_kind_passes_as_another() {
    for &ct in ContentType::ALL {
        let object = sign(&key(), KID, ct, b"payload").unwrap();
        let got = verify(&object, ct, key_for).unwrap();
        assert_eq!(
            (got.kid.as_slice(), got.content_type, got.payload.as_slice()),
            (KID, ct, &b"payload"[..])
        );
        for &other in ContentType::ALL.iter().filter(|o| **o != ct) {
            assert_eq!(
                verify(&object, other, key_for),
                Err(CoseError::WrongContentType),
                "{ct} as {other}"
            );
        }
    }
    let names: std::collections::BTreeSet<_> =
        ContentType::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), ContentType::ALL.len());
    assert_eq!(ContentType::parse("application/portcullis.keyset+cbor"), Some(ContentType::Keyset));
}

#[test]
fn wire_shape_is_tag_18_with_protected_alg_ct_kid() {
    let object = sign(&key(), KID, ContentType::AuditSeal, b"x").unwrap();
    let Value::Tag(18, inner) = coset::cbor::de::from_reader::<Value, _>(&object[..]).unwrap()
    else {
        panic!("not tag 18");
    };
    let Value::Array(items) = *inner else { panic!("not an array") };
    let Value::Bytes(protected) = &items[0] else { panic!() };
    let header: Value = coset::cbor::de::from_reader(&protected[..]).unwrap();
    assert_eq!(
        header,
        Value::Map(vec![
            (int(1), int(-19)),
            (int(3), Value::Text("application/portcullis.audit-seal+cbor".into())),
            (int(4), Value::Bytes(KID.to_vec())),
        ])
    );
    assert_eq!(items[1], Value::Map(vec![]));
    assert_eq!(items[2], Value::Bytes(b"x".to_vec()));
    // And it is a standard COSE_Sign1 that a generic verifier accepts.
    assert_eq!(verify_sign1_raw(&object, &key().verifying_key()), Ok(b"x".to_vec()));
}

#[test]
fn a_token_is_not_a_signed_object_and_vice_versa() {
    let claims = Claims {
        iss: "cryptod".into(),
        sub: "policy_pd".into(),
        aud: "unlocker".into(),
        exp: 1060,
        nbf: 1000,
        iat: 1000,
        cti: vec![1; 16],
        scope: ScopeSet::parse_list("net:modify").unwrap(),
        nonce: vec![2; 16],
    };
    let tok = token::mint(&key(), KID, &claims).unwrap();
    assert_eq!(verify(&tok, ContentType::Keyset, key_for), Err(CoseError::WrongContentType));
    assert_eq!(open_unverified(&tok), Err(CoseError::WrongContentType));

    // A signed object whose payload is a valid claims set is still no token.
    let Value::Tag(18, inner) = coset::cbor::de::from_reader::<Value, _>(&tok[..]).unwrap() else {
        panic!()
    };
    let Value::Array(items) = *inner else { panic!() };
    let Value::Bytes(claims_bytes) = &items[2] else { panic!() };
    let object = sign(&key(), KID, ContentType::Attestation, claims_bytes).unwrap();
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: KID.to_vec(),
        key: key().verifying_key(),
        not_before: 0,
        not_after: 5000,
    })
    .unwrap();
    let expect = token::Expectations {
        audience: "unlocker",
        scope: ScopeSet::parse_list("net:modify").unwrap(),
        now: 1000,
        skew: 0,
    };
    let mut cache = MemoryReplayCache::new(2);
    assert!(token::verify(&tok, &keys, &expect, &mut cache, &RevokedSet::new()).is_ok());
    assert_eq!(
        token::verify(&object, &keys, &expect, &mut MemoryReplayCache::new(2), &RevokedSet::new()),
        Err(token::VerifyError::Malformed)
    );
}

#[test]
fn refusals() {
    let object = sign(&key(), KID, ContentType::Keyset, b"keys").unwrap();
    // Unknown kid, wrong key.
    assert_eq!(verify(&object, ContentType::Keyset, |_| None), Err(CoseError::UnknownKid));
    let other = SigningKey::from_bytes(&[0x44; 32]).verifying_key();
    assert_eq!(verify(&object, ContentType::Keyset, |_| Some(other)), Err(CoseError::BadSignature));
    // Every single-bit change is refused.
    for i in 0..object.len() {
        let mut bad = object.clone();
        bad[i] ^= 0x04;
        assert!(verify(&bad, ContentType::Keyset, key_for).is_err(), "byte {i}");
    }
    // Wrong algorithm, missing content type, numeric content type, crit, extra labels.
    let ct = || (int(3), Value::Text(ContentType::Keyset.as_str().into()));
    let kid = || (int(4), Value::Bytes(KID.to_vec()));
    let cases = [
        (vec![(int(1), int(-7)), ct(), kid()], CoseError::WrongAlgorithm),
        (vec![ct(), kid()], CoseError::WrongAlgorithm),
        (vec![(int(1), int(-19)), kid()], CoseError::WrongContentType),
        (vec![(int(1), int(-19)), (int(3), int(60)), kid()], CoseError::WrongContentType),
        (
            vec![(int(1), int(-19)), (int(3), Value::Text("application/cbor".into())), kid()],
            CoseError::WrongContentType,
        ),
        (vec![(int(1), int(-19)), ct()], CoseError::UnknownKid),
        (
            vec![(int(1), int(-19)), ct(), kid(), (int(2), Value::Array(vec![int(3)]))],
            CoseError::Malformed,
        ),
        (vec![(int(1), int(-19)), ct(), kid(), (int(99), int(0))], CoseError::Malformed),
        (vec![(int(1), int(-19)), ct(), kid(), ct()], CoseError::Malformed),
    ];
    for (header, want) in cases {
        let bytes = sign_raw(header.clone(), b"keys");
        assert_eq!(verify(&bytes, ContentType::Keyset, key_for), Err(want), "{header:?}");
    }
    // alg -8 (EdDSA) is accepted.
    let eddsa = sign_raw(vec![(int(1), int(-8)), ct(), kid()], b"keys");
    assert_eq!(
        verify(&eddsa, ContentType::Keyset, key_for).map(|v| v.into_inner().payload),
        Ok(b"keys".to_vec())
    );
    // A CWT tag is not accepted on a signed object.
    let mut tagged = vec![0xd8, 0x3d];
    tagged.extend_from_slice(&object);
    assert_eq!(verify(&tagged, ContentType::Keyset, key_for), Err(CoseError::Malformed));
    // Untagged is accepted.
    assert!(verify(&object[1..], ContentType::Keyset, key_for).is_ok());
}

#[test]
fn size_limits() {
    let big = vec![0u8; MAX_SIGNED_OBJECT_LEN];
    assert_eq!(sign(&key(), KID, ContentType::AuditSeal, &big), Err(CoseError::TooLarge));
    let fits = vec![0u8; MAX_SIGNED_OBJECT_LEN - 200];
    let object = sign(&key(), KID, ContentType::AuditSeal, &fits).unwrap();
    assert_eq!(
        verify(&object, ContentType::AuditSeal, key_for).map(|v| v.payload.len()),
        Ok(fits.len())
    );
    let mut too_long = object.clone();
    too_long.resize(MAX_SIGNED_OBJECT_LEN + 1, 0);
    assert_eq!(verify(&too_long, ContentType::AuditSeal, key_for), Err(CoseError::TooLarge));
    assert_eq!(open_unverified(&too_long), Err(CoseError::TooLarge));
    assert_eq!(sign(&key(), b"", ContentType::Keyset, b""), Err(CoseError::InvalidKid));
    assert_eq!(sign(&key(), &[0; 65], ContentType::Keyset, b""), Err(CoseError::InvalidKid));
}

#[test]
fn open_unverified_gives_kid_and_payload_without_a_key() {
    let object =
        sign(&SigningKey::from_bytes(&[0x55; 32]), b"unknown", ContentType::RevocationList, b"ids")
            .unwrap();
    let got = open_unverified(&object).unwrap().into_unverified();
    assert_eq!(
        (got.kid.as_slice(), got.content_type, got.payload.as_slice()),
        (&b"unknown"[..], ContentType::RevocationList, &b"ids"[..])
    );
    assert_eq!(open_unverified(b"\x01"), Err(CoseError::Malformed));
}
