//! `proto::key`: key ids, COSE_Key files and the wire-to-verifier key entry.

use coset::cbor::value::Value;
use coset::{iana, CborSerializable, CoseKeyBuilder};
use ed25519_dalek::SigningKey;
use portcullis_proto::key::{self, kid_for, KeyEntry, KeyError, KID_LEN, MAX_COSE_KEY_LEN};
use portcullis_proto::msg::{KeyEntryWire, MAX_KID_LEN};
use sha2::{Digest, Sha256};

fn secret() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

const X: i64 = iana::OkpKeyParameter::X as i64;
const D: i64 = iana::OkpKeyParameter::D as i64;
const CRV: i64 = iana::OkpKeyParameter::Crv as i64;

/// A COSE_Key built independently of `proto::key`, so a test can put
/// anything in it.
fn raw(crv: i64, x: &[u8], d: Option<&[u8]>, kid: &[u8], alg: Option<iana::Algorithm>) -> Vec<u8> {
    let mut b = CoseKeyBuilder::new_okp_key()
        .key_id(kid.to_vec())
        .param(CRV, Value::Integer(crv.into()))
        .param(X, Value::Bytes(x.to_vec()));
    if let Some(d) = d {
        b = b.param(D, Value::Bytes(d.to_vec()));
    }
    if let Some(alg) = alg {
        b = b.algorithm(alg);
    }
    b.build().to_vec().unwrap()
}

const ED25519: i64 = iana::EllipticCurve::Ed25519 as i64;

#[test]
fn kid_is_the_sha256_prefix_of_the_public_key() {
    let public = secret().verifying_key();
    assert_eq!(kid_for(&public)[..], Sha256::digest(public.as_bytes())[..KID_LEN]);
    assert_ne!(kid_for(&public), kid_for(&SigningKey::from_bytes(&[8; 32]).verifying_key()));
}

#[test]
fn public_and_private_keys_round_trip() {
    let sk = secret();
    let public = key::decode(&key::encode_public(&sk.verifying_key(), b"root").unwrap()).unwrap();
    assert_eq!(public.kid.as_deref(), Some(&b"root"[..]));
    assert_eq!(public.public, sk.verifying_key());
    assert!(public.secret.is_none());

    let private = key::decode(&key::encode_private(&sk, b"root").unwrap()).unwrap();
    assert_eq!(private.public, sk.verifying_key());
    assert_eq!(private.secret.map(|s| s.to_bytes()), Some(sk.to_bytes()));
}

#[test]
fn a_key_without_kid_gets_the_derived_one() {
    let public = secret().verifying_key();
    let bytes = raw(ED25519, public.as_bytes(), None, b"", Some(iana::Algorithm::EdDSA));
    let k = key::decode(&bytes).unwrap();
    assert_eq!(k.kid, None);
    assert_eq!(k.kid_or_derived(), kid_for(&public).to_vec());
}

#[test]
fn encoding_refuses_empty_and_long_kids() {
    let sk = secret();
    assert_eq!(key::encode_public(&sk.verifying_key(), b"").err(), Some(KeyError::BadKid));
    let long = vec![1; MAX_KID_LEN + 1];
    assert_eq!(key::encode_private(&sk, &long).err(), Some(KeyError::BadKid));
}

#[test]
fn hostile_key_files_are_refused_with_their_reason() {
    let sk = secret();
    let x = sk.verifying_key().to_bytes();
    let other = SigningKey::from_bytes(&[9; 32]).to_bytes();
    let x448 = iana::EllipticCurve::X448 as i64;
    let cases: Vec<(&str, Vec<u8>, KeyError)> = vec![
        ("not CBOR", vec![0xff], KeyError::NotCoseKey),
        ("not a map", vec![0x80], KeyError::NotCoseKey),
        ("too large", vec![0; MAX_COSE_KEY_LEN + 1], KeyError::TooLarge),
        ("other curve", raw(x448, &x, None, b"k", None), KeyError::NotEd25519),
        (
            "EC2 key",
            CoseKeyBuilder::new_ec2_pub_key(iana::EllipticCurve::P_256, vec![1; 32], vec![2; 32])
                .build()
                .to_vec()
                .unwrap(),
            KeyError::NotEd25519,
        ),
        (
            "ES256",
            raw(ED25519, &x, None, b"k", Some(iana::Algorithm::ES256)),
            KeyError::WrongAlgorithm,
        ),
        ("short x", raw(ED25519, &x[..31], None, b"k", None), KeyError::BadPublicKey),
        (
            "no x",
            {
                CoseKeyBuilder::new_okp_key()
                    .param(CRV, Value::Integer(ED25519.into()))
                    .build()
                    .to_vec()
                    .unwrap()
            },
            KeyError::BadPublicKey,
        ),
        ("short d", raw(ED25519, &x, Some(&[1; 31]), b"k", None), KeyError::BadPrivateKey),
        ("d of another key", raw(ED25519, &x, Some(&other), b"k", None), KeyError::KeyMismatch),
        ("long kid", raw(ED25519, &x, None, &[1; MAX_KID_LEN + 1], None), KeyError::BadKid),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(key::decode(&bytes).err(), Some(want), "{what}");
    }
}

#[test]
fn wire_entries_convert_to_verifier_entries_only_when_usable() {
    let entry = KeyEntry {
        kid: b"k1".to_vec(),
        key: secret().verifying_key(),
        not_before: 10,
        not_after: 20,
    };
    let wire = KeyEntryWire::from(&entry);
    assert_eq!(wire.alg, -19);
    assert_eq!(KeyEntry::try_from(&wire), Ok(entry.clone()));
    let eddsa = KeyEntryWire { alg: -8, ..wire.clone() };
    assert_eq!(KeyEntry::try_from(&eddsa), Ok(entry));

    let es256 = KeyEntryWire { alg: -7, ..wire.clone() };
    assert_eq!(KeyEntry::try_from(&es256), Err(KeyError::WrongAlgorithm));
    // Not a point on the curve (y = 2 has no x).
    let mut bad = [0u8; 32];
    bad[0] = 2;
    let off_curve = KeyEntryWire { pubkey: bad, ..wire };
    assert_eq!(KeyEntry::try_from(&off_curve), Err(KeyError::BadPublicKey));
}
