//! The signing side writes COSE_Sign1 with the crate's own CBOR writer; its
//! bytes must be exactly what coset writes for the same header, payload and
//! key (Ed25519 is deterministic, so the signatures match too).

use ciborium::Value;

mod common;
use common::claims_map;
use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use ed25519_dalek::{Signer, SigningKey};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::scope::ScopeSet;
use portcullis_proto::token::{mint, Claims};

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

/// What coset makes of the header and payload.
fn coset_sign1(header: coset::Header, payload: Vec<u8>) -> Vec<u8> {
    let k = key();
    CoseSign1Builder::new()
        .protected(header)
        .payload(payload)
        .create_signature(&[], |tbs| k.sign(tbs).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap()
}

#[test]
fn signed_objects_are_byte_for_byte_what_coset_writes() {
    for ct in ContentType::ALL {
        for (kid, payload) in [
            (&b"k"[..], vec![0xa0]),
            (&[7u8; 64][..], vec![0x5a; 300]),
            (&[1u8; 24][..], vec![0; 70_000 - 200]),
        ] {
            let ours = cose::sign(&key(), kid, *ct, &payload);
            let header = HeaderBuilder::new()
                .algorithm(iana::Algorithm::Ed25519)
                .content_type(ct.as_str().into())
                .key_id(kid.to_vec())
                .build();
            let theirs = coset_sign1(header, payload.clone());
            if theirs.len() > cose::MAX_SIGNED_OBJECT_LEN {
                assert_eq!(ours, Err(cose::CoseError::TooLarge));
            } else {
                assert_eq!(ours.unwrap(), theirs, "{ct:?}, kid {} bytes", kid.len());
            }
        }
    }
}

#[test]
fn tokens_are_byte_for_byte_what_coset_writes() {
    let claims = |exp: u64, cti: Vec<u8>| Claims {
        iss: "cryptod".into(),
        sub: "policy_pd".into(),
        aud: "netd".into(),
        exp,
        nbf: exp.saturating_sub(60),
        iat: exp.saturating_sub(60),
        cti,
        scope: ScopeSet::parse_list("net:modify luks:unlock").unwrap(),
        nonce: vec![9; 16],
    };
    for (kid, c) in [
        (&b"k1"[..], claims(1_795_000_060, vec![1; 16])),
        (&[3u8; 64][..], claims(23, vec![2; 64])),
        (&b"kid"[..], claims(u64::from(u32::MAX) + 100, vec![5])),
    ] {
        let ours = mint(&key(), kid, &c).unwrap();
        let payload = Value::Map(claims_map(&c));
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&payload, &mut bytes).unwrap();
        let header =
            HeaderBuilder::new().algorithm(iana::Algorithm::Ed25519).key_id(kid.to_vec()).build();
        assert_eq!(ours, coset_sign1(header, bytes));
    }
}
