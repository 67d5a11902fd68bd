//! Interoperability with the COSE working group's examples.
//!
//! Test data from https://github.com/cose-wg/Examples (commit 53c9d634333b),
//! folder `eddsa-examples`: the `output.cbor` bytes, the signer key's `x_hex`
//! and `d_hex`, and the `ToBeSign_hex` intermediate of each file named below.

use coset::{CborSerializable, CoseSign, CoseSign1, TaggedCborSerializable};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use portcullis_proto::cose::{verify, verify_sign1_raw, ContentType, CoseError};

/// eddsa-examples/eddsa-sig-01.json, "EdDSA-01: EdDSA - 25519 - sign0":
/// COSE_Sign1, protected {alg: EdDSA (-8), content type: 0}, unprotected {kid: "11"}.
const SIG01_CBOR: &str = "D28445A201270300A10442313154546869732069732074686520636F6E74656E742E58407142FD2FF96D56DB85BEE905A76BA1D0B7321A95C8C4D3607C5781932B7AFB8711497DFA751BF40B58B3BCC32300B1487F3DB34085EEF013BF08F4A44D6FEF0D";
const SIG01_TBS: &str =
    "846A5369676E61747572653145A2012703004054546869732069732074686520636F6E74656E742E";

/// eddsa-examples/eddsa-01.json, "EdDSA-01: EdDSA - 25519": COSE_Sign (tag
/// 98) with one Ed25519 signer (protected {alg: EdDSA}, unprotected {kid: "11"}).
const EDDSA01_CBOR: &str = "D8628443A10300A054546869732069732074686520636F6E74656E742E818343A10127A104423131584077F3EACD11852C4BF9CB1D72FABE6B26FBA1D76092B2B5B7EC83B83557652264E69690DBC1172DDC0BF88411C0D25A507FDB247A20C40D5E245FABD3FC9EC106";
const EDDSA01_TBS: &str =
    "85695369676E617475726543A1030043A101274054546869732069732074686520636F6E74656E742E";

/// eddsa-examples/eddsa-sig-02.json, "EdDSA-sig-02: EdDSA - 448 - sign1": an
/// Ed448 signature under alg EdDSA; it must never pass as Ed25519.
const SIG02_ED448_CBOR: &str = "D28443A10127A10445656434343854546869732069732074686520636F6E74656E742E5872988240A3A2F189BD486DE14AA77F54686C576A09F2E7ED9BAE910DF9139C2AC3BE7C27B7E10A20FA17C9D57D3510A2CF1F634BC0345AB9BE00849842171D1E9E98B2674C0E38BFCF6C557A1692B01B71015A47AC9F7748840CAD1DA80CBB5B349309FEBB912672B377C8B2072AF1598B3700";

/// The Ed25519 key of both 25519 examples (it is RFC 8032 §7.1 TEST 1).
const X: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const D: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

const CONTENT: &[u8] = b"This is the content.";

fn bytes(h: &str) -> Vec<u8> {
    hex::decode(h).unwrap()
}

fn public() -> VerifyingKey {
    VerifyingKey::from_bytes(&bytes(X).try_into().unwrap()).unwrap()
}

fn secret() -> SigningKey {
    SigningKey::from_bytes(&bytes(D).try_into().unwrap())
}

#[test]
fn the_example_key_pair_matches() {
    assert_eq!(secret().verifying_key(), public());
}

#[test]
fn eddsa_sig_01_verifies_with_our_sign1_verifier() {
    assert_eq!(verify_sign1_raw(&bytes(SIG01_CBOR), &public()), Ok(CONTENT.to_vec()));
    // Untagged too.
    assert_eq!(verify_sign1_raw(&bytes(SIG01_CBOR)[1..], &public()), Ok(CONTENT.to_vec()));
}

#[test]
fn eddsa_sig_01_signature_is_reproduced_by_our_signing_key() {
    // Ed25519 is deterministic: signing the example's ToBeSign with the
    // example's secret gives the example's signature.
    let object = CoseSign1::from_tagged_slice(&bytes(SIG01_CBOR)).unwrap();
    assert_eq!(object.tbs_data(&[]), bytes(SIG01_TBS));
    assert_eq!(secret().sign(&bytes(SIG01_TBS)).to_bytes().to_vec(), object.signature);
}

#[test]
fn eddsa_sig_01_tampering_is_refused() {
    let good = bytes(SIG01_CBOR);
    // Bytes 8..13 are the unprotected header {4: h'3131'}, which the
    // signature does not cover (RFC 9052 §3); every other byte is protected.
    assert_eq!(&good[8..13], &[0xa1, 0x04, 0x42, 0x31, 0x31]);
    for i in (0..good.len()).filter(|i| !(8..13).contains(i)) {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(verify_sign1_raw(&bad, &public()).is_err(), "flip at {i} verified");
    }
    let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
    assert_eq!(verify_sign1_raw(&good, &other), Err(CoseError::BadSignature));
}

#[test]
fn eddsa_sig_01_is_not_one_of_our_signed_objects() {
    // Its content type is CoAP format 0 and its kid is unprotected.
    let got = verify(&bytes(SIG01_CBOR), ContentType::Keyset, |_| Some(public()));
    assert_eq!(got, Err(CoseError::WrongContentType));
}

#[test]
fn eddsa_01_cose_sign_verifies_with_dalek_verify_strict() {
    let object = CoseSign::from_tagged_slice(&bytes(EDDSA01_CBOR)).unwrap();
    assert_eq!(object.payload.as_deref(), Some(CONTENT));
    assert_eq!(object.signatures.len(), 1);
    assert_eq!(object.tbs_data(&[], &object.signatures[0]), bytes(EDDSA01_TBS));
    let check = |sig: &[u8], data: &[u8]| {
        let sig = Signature::from_slice(sig).map_err(|_| "length")?;
        public().verify_strict(data, &sig).map_err(|_| "bad")
    };
    assert_eq!(object.verify_signature(0, &[], check), Ok(()));
    assert_eq!(object.verify_signature(0, b"aad", check), Err("bad"));
    // Re-signing reproduces the example's signature bytes.
    assert_eq!(
        secret().sign(&bytes(EDDSA01_TBS)).to_bytes().to_vec(),
        object.signatures[0].signature
    );
    // A COSE_Sign (tag 98) is not a COSE_Sign1.
    assert_eq!(verify_sign1_raw(&bytes(EDDSA01_CBOR), &public()), Err(CoseError::Malformed));
}

#[test]
fn eddsa_sig_02_ed448_never_passes_as_ed25519() {
    let ed448 = bytes(SIG02_ED448_CBOR);
    // Well-formed COSE_Sign1 with alg EdDSA, but a 114-byte signature.
    let object = CoseSign1::from_slice(&ed448[1..]).unwrap();
    assert_eq!(object.signature.len(), 114);
    assert_eq!(verify_sign1_raw(&ed448, &public()), Err(CoseError::BadSignature));
}
