//! RFC 8392 Appendix A.3, "Example Signed CWT".
//!
//! Hex copied from RFC 8392 Figure 10 (A.3); the claims set is A.1 (Figure 2).
//! It is signed with ECDSA P-256 (ES256, alg -7) and the kid is in the
//! unprotected header, so our verifier must refuse it as WrongAlgorithm; the
//! structure and claims are decoded and checked against the RFC's values.

use coset::cwt::{ClaimsSet, Timestamp};
use coset::{iana, CborSerializable, TaggedCborSerializable};
use ed25519_dalek::SigningKey;
use portcullis_proto::danger::inspect;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    verify, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet, VerifyError,
};

const A3_SIGNED_CWT: &str = concat!(
    "d28443a10126a104524173796d6d657472696345434453413235365850a701756",
    "36f61703a2f2f61732e6578616d706c652e636f6d02656572696b77037818636f",
    "61703a2f2f6c696768742e6578616d706c652e636f6d041a5612aeb0051a5610d",
    "9f0061a5610d9f007420b7158405427c1ff28d23fbad1f29c4c7c6a555e601d6f",
    "a29f9179bc3d7438bacaca5acd08c8d4d4f96131680c429a01f85951ecee743a5",
    "2b9b63632c57209120e1c9e30",
);

const A1_CLAIMS: &str = concat!(
    "a70175636f61703a2f2f61732e6578616d706c652e636f6d02656572696b7703",
    "7818636f61703a2f2f6c696768742e6578616d706c652e636f6d041a5612aeb0",
    "051a5610d9f0061a5610d9f007420b71",
);

fn a3() -> Vec<u8> {
    hex::decode(A3_SIGNED_CWT).unwrap()
}

#[test]
fn a3_decodes_to_the_rfc_structure_and_claims() {
    let object = coset::CoseSign1::from_tagged_slice(&a3()).unwrap();
    assert_eq!(object.protected.header.alg, Some(iana::Algorithm::ES256.into()));
    assert_eq!(object.unprotected.key_id, b"AsymmetricECDSA256");
    assert_eq!(object.signature.len(), 64);
    let payload = object.payload.unwrap();
    assert_eq!(payload, hex::decode(A1_CLAIMS).unwrap());
    let claims = ClaimsSet::from_slice(&payload).unwrap();
    assert_eq!(claims.issuer.as_deref(), Some("coap://as.example.com"));
    assert_eq!(claims.subject.as_deref(), Some("erikw"));
    assert_eq!(claims.audience.as_deref(), Some("coap://light.example.com"));
    assert_eq!(claims.expiration_time, Some(Timestamp::WholeSeconds(1444064944)));
    assert_eq!(claims.not_before, Some(Timestamp::WholeSeconds(1443944944)));
    assert_eq!(claims.issued_at, Some(Timestamp::WholeSeconds(1443944944)));
    assert_eq!(claims.cwt_id, Some(vec![0x0b, 0x71]));
    assert!(claims.rest.is_empty());
}

#[test]
fn a3_is_refused_as_wrong_algorithm() {
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: b"AsymmetricECDSA256".to_vec(),
        key: SigningKey::from_bytes(&[1; 32]).verifying_key(),
        not_before: 0,
        not_after: u64::MAX,
    })
    .unwrap();
    let expect = Expectations {
        audience: "coap://light.example.com",
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: 1443944944,
        skew: 0,
    };
    let mut cache = MemoryReplayCache::new(1);
    assert_eq!(
        verify(&a3(), &keys, &expect, &mut cache, &RevokedSet::new()),
        Err(VerifyError::WrongAlgorithm)
    );
    assert!(cache.is_empty());
    // inspect reads the algorithm but the kid is not protected, so: no kid.
    assert_eq!(inspect(&a3()), Err(VerifyError::UnknownKid));
}
