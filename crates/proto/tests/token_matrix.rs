//! The verification matrix: one token per `VerifyError` kind that fails exactly
//! that check, the accepted variants (alg -8, untagged, CWT tag, audience
//! array), skew boundaries, replay and revocation semantics, and byte flips.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use coset::cbor::value::Value;

mod common;
use common::{claims_map, int};
use ed25519_dalek::{Signer, SigningKey};
use portcullis_proto::danger::inspect;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    mint, verify, Claims, Expectations, KeyEntry, Keyset, KeysetError, MemoryReplayCache,
    ReplayCache, ReplayError, RevokedSet, TokenError, VerifyError, MAX_CTI_LEN, MAX_TOKEN_LEN,
};
use portcullis_proto::{cose, Verified};

const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
const SKEW: u64 = 5;
const KID: &[u8] = b"k1";
const AUD: &str = "unlocker";

// Making a key pair is a scalar multiplication, slow in debug builds: once each.
static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[0x11; 32]));
static OTHER_KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[0x22; 32]));
static KEYS: LazyLock<Keyset> = LazyLock::new(|| {
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: KID.to_vec(),
        key: KEY.verifying_key(),
        not_before: NOW - 3600,
        not_after: NOW + 3600,
    })
    .unwrap();
    keys
});

fn key() -> &'static SigningKey {
    &KEY
}

fn other_key() -> &'static SigningKey {
    &OTHER_KEY
}

fn keys() -> Keyset {
    KEYS.clone()
}

fn claims() -> Claims {
    Claims {
        iss: "cryptod".into(),
        sub: "policy_pd".into(),
        aud: AUD.into(),
        exp: NOW + 60,
        nbf: NOW,
        iat: NOW,
        cti: vec![0xc7; 16],
        scope: ScopeSet::parse_list("luks:unlock net:read").unwrap(),
        nonce: vec![0x4e; 16],
    }
}

fn expect_at(now: u64) -> Expectations<'static> {
    Expectations { audience: AUD, scope: ScopeSet::single(Scope::LuksUnlock), now, skew: SKEW }
}

/// Verifies with the standard keyset, a fresh replay cache and no revocations.
fn check(token: &[u8], expect: &Expectations) -> Result<Claims, VerifyError> {
    verify(token, &keys(), expect, &mut MemoryReplayCache::new(8), &RevokedSet::new())
        .map(Verified::into_inner)
}

fn mint_with(edit: impl FnOnce(&mut Claims)) -> Vec<u8> {
    let mut c = claims();
    edit(&mut c);
    mint(key(), KID, &c).unwrap()
}

// ---- an independent COSE_Sign1 builder, so tests can sign any shape ----

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    coset::cbor::ser::into_writer(v, &mut out).unwrap();
    out
}

/// `n` as a CBOR positive bignum (tag 2 around its big-endian bytes).
fn bignum(n: u64) -> Value {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
    Value::Tag(2, Box::new(Value::Bytes(bytes[first..].to_vec())))
}

fn set_claim(map: &mut Vec<(Value, Value)>, key: i64, value: Value) {
    map.retain(|(k, _)| *k != int(key));
    map.push((int(key), value));
}

/// Signs `payload` under `protected` (a map) with Sig_structure1 built by hand.
fn sign_raw(
    key: &SigningKey,
    protected: Vec<(Value, Value)>,
    unprotected: Vec<(Value, Value)>,
    payload: Vec<u8>,
) -> Vec<u8> {
    let protected = encode(&Value::Map(protected));
    let tbs = encode(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.clone()),
    ]));
    let signature = key.sign(&tbs).to_bytes().to_vec();
    encode(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(unprotected),
            Value::Bytes(payload),
            Value::Bytes(signature),
        ])),
    ))
}

fn standard_header(alg: i64) -> Vec<(Value, Value)> {
    vec![(int(1), int(alg)), (int(4), Value::Bytes(KID.to_vec()))]
}

fn token_from_map(map: Vec<(Value, Value)>) -> Vec<u8> {
    sign_raw(key(), standard_header(-19), vec![], encode(&Value::Map(map)))
}

// ---- the accepted cases ----

#[test]
fn minted_token_verifies_and_returns_its_claims() {
    let token = mint(key(), KID, &claims()).unwrap();
    assert_eq!(check(&token, &expect_at(NOW)), Ok(claims()));
}

#[test]
fn hand_built_token_matches_mint_byte_for_byte() {
    // Our minted bytes equal an independent construction of the same object.
    let hand = token_from_map(claims_map(&claims()));
    assert_eq!(mint(key(), KID, &claims()).unwrap(), hand);
}

#[test]
fn alg_eddsa_minus_8_is_accepted() {
    let token =
        sign_raw(key(), standard_header(-8), vec![], encode(&Value::Map(claims_map(&claims()))));
    assert_eq!(check(&token, &expect_at(NOW)), Ok(claims()));
}

#[test]
fn untagged_token_is_accepted() {
    let token = mint(key(), KID, &claims()).unwrap();
    assert_eq!(token[0], 0xd2);
    assert_eq!(check(&token[1..], &expect_at(NOW)), Ok(claims()));
}

#[test]
fn cwt_tag_61_around_tag_18_is_accepted() {
    let mut token = vec![0xd8, 0x3d];
    token.extend(mint(key(), KID, &claims()).unwrap());
    assert_eq!(check(&token, &expect_at(NOW)), Ok(claims()));
}

#[test]
fn audience_array_matches_any_element() {
    let mut map = claims_map(&claims());
    let list =
        |names: &[&str]| Value::Array(names.iter().map(|n| Value::Text((*n).into())).collect());
    set_claim(&mut map, 3, list(&["policy_pd", AUD]));
    let claims_out = check(&token_from_map(map.clone()), &expect_at(NOW)).unwrap();
    assert_eq!(claims_out.aud, AUD);
    assert_eq!(
        inspect(&token_from_map(map.clone())).unwrap().into_unverified().claims.aud,
        "policy_pd"
    );

    set_claim(&mut map, 3, list(&["policy_pd", "entropyd"]));
    assert_eq!(
        check(&token_from_map(map.clone()), &expect_at(NOW)),
        Err(VerifyError::WrongAudience)
    );
    set_claim(&mut map, 3, list(&[]));
    assert_eq!(check(&token_from_map(map), &expect_at(NOW)), Err(VerifyError::Malformed));
}

#[test]
fn claims_in_any_order_are_accepted() {
    let mut map = claims_map(&claims());
    map.reverse();
    assert_eq!(check(&token_from_map(map), &expect_at(NOW)), Ok(claims()));
}

// ---- one test per error kind ----

#[test]
fn malformed() {
    let e = expect_at(NOW);
    // Not CBOR / not a COSE_Sign1.
    assert_eq!(check(&[], &e), Err(VerifyError::Malformed));
    assert_eq!(check(b"\xff\x00", &e), Err(VerifyError::Malformed));
    assert_eq!(check(&encode(&Value::Array(vec![])), &e), Err(VerifyError::Malformed));
    // Trailing bytes after a valid token.
    let mut token = mint(key(), KID, &claims()).unwrap();
    token.push(0);
    assert_eq!(check(&token, &e), Err(VerifyError::Malformed));
    // A correctly signed token lacking the nonce claim.
    let mut map = claims_map(&claims());
    map.retain(|(k, _)| *k != int(10));
    assert_eq!(check(&token_from_map(map), &e), Err(VerifyError::Malformed));
}

#[test]
fn malformed_claims_are_refused_after_the_signature() {
    let e = expect_at(NOW);
    type Edit = Box<dyn Fn(&mut Vec<(Value, Value)>)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("unknown claim", Box::new(|m| m.push((int(8), int(1))))),
        ("text key", Box::new(|m| m.push((Value::Text("iss".into()), Value::Text("x".into()))))),
        ("duplicate key", Box::new(|m| m.push((int(1), Value::Text("again".into()))))),
        ("float exp", Box::new(|m| set_claim(m, 4, Value::Float((NOW + 60) as f64)))),
        ("negative nbf", Box::new(|m| set_claim(m, 5, int(-1)))),
        ("text cti", Box::new(|m| set_claim(m, 7, Value::Text("id".into())))),
        ("empty cti", Box::new(|m| set_claim(m, 7, Value::Bytes(vec![])))),
        ("long cti", Box::new(|m| set_claim(m, 7, Value::Bytes(vec![1; MAX_CTI_LEN + 1])))),
        (
            "scope array",
            Box::new(|m| set_claim(m, 9, Value::Array(vec![Value::Text("luks:unlock".into())]))),
        ),
        (
            "unknown scope",
            Box::new(|m| set_claim(m, 9, Value::Text("luks:unlock root:all".into()))),
        ),
        ("empty nonce", Box::new(|m| set_claim(m, 10, Value::Bytes(vec![])))),
        ("lifetime over 300 s", Box::new(|m| set_claim(m, 4, Value::Integer((NOW + 301).into())))),
        ("nbf after exp", Box::new(|m| set_claim(m, 5, Value::Integer((NOW + 61).into())))),
        ("iat after nbf", Box::new(|m| set_claim(m, 6, Value::Integer((NOW + 1).into())))),
        // protocol/token.md: tagged times (bignums, epoch tag 1) are malformed,
        // even when the value they stand for would be in range.
        ("bignum exp", Box::new(|m| set_claim(m, 4, bignum(NOW + 60)))),
        ("bignum nbf", Box::new(|m| set_claim(m, 5, bignum(NOW)))),
        ("bignum iat", Box::new(|m| set_claim(m, 6, bignum(NOW)))),
        (
            "epoch-tagged exp",
            Box::new(|m| set_claim(m, 4, Value::Tag(1, Box::new(int((NOW + 60) as i64))))),
        ),
        (
            "tagged exp",
            Box::new(|m| set_claim(m, 4, Value::Tag(1000, Box::new(int((NOW + 60) as i64))))),
        ),
    ];
    for (what, edit) in cases {
        let mut map = claims_map(&claims());
        edit(&mut map);
        assert_eq!(check(&token_from_map(map), &e), Err(VerifyError::Malformed), "{what}");
    }
    let not_a_map = sign_raw(key(), standard_header(-19), vec![], encode(&int(1)));
    assert_eq!(check(&not_a_map, &e), Err(VerifyError::Malformed));
}

#[test]
fn malformed_headers_and_envelopes() {
    let e = expect_at(NOW);
    let payload = encode(&Value::Map(claims_map(&claims())));
    // A content type makes it a signed object, not a token.
    let mut h = standard_header(-19);
    h.push((int(3), Value::Text("application/portcullis.keyset+cbor".into())));
    assert_eq!(
        check(&sign_raw(key(), h, vec![], payload.clone()), &e),
        Err(VerifyError::Malformed)
    );
    // crit, or an unknown protected header.
    let mut h = standard_header(-19);
    h.push((int(2), Value::Array(vec![int(4)])));
    assert_eq!(
        check(&sign_raw(key(), h, vec![], payload.clone()), &e),
        Err(VerifyError::Malformed)
    );
    let mut h = standard_header(-19);
    h.push((int(16), Value::Text("cwt".into())));
    assert_eq!(
        check(&sign_raw(key(), h, vec![], payload.clone()), &e),
        Err(VerifyError::Malformed)
    );
    // Duplicate header label.
    let mut h = standard_header(-19);
    h.push((int(1), int(-19)));
    assert_eq!(
        check(&sign_raw(key(), h, vec![], payload.clone()), &e),
        Err(VerifyError::Malformed)
    );
    // Tags other than 18, and 61 around an untagged COSE_Sign1.
    let token = mint(key(), KID, &claims()).unwrap();
    let mut wrong_tag = token.clone();
    wrong_tag[0] = 0xd1; // tag 17 (COSE_Mac0)
    assert_eq!(check(&wrong_tag, &e), Err(VerifyError::Malformed));
    let mut cwt_untagged = vec![0xd8, 0x3d];
    cwt_untagged.extend_from_slice(&token[1..]);
    assert_eq!(check(&cwt_untagged, &e), Err(VerifyError::Malformed));
    // Detached payload (nil).
    let mut detached = token.clone();
    let at = detached.len() - 66 - payload.len() - 2;
    assert_eq!(&detached[at..at + 2], &[0x58, payload.len() as u8]);
    detached.splice(at..at + 2 + payload.len(), [0xf6]);
    assert_eq!(check(&detached, &e), Err(VerifyError::Malformed));
}

#[test]
fn malformed_when_too_long_even_if_signed() {
    let mut c = claims();
    c.iss = "i".repeat(MAX_TOKEN_LEN);
    let token = token_from_map(claims_map(&c));
    assert!(token.len() > MAX_TOKEN_LEN);
    assert_eq!(check(&token, &expect_at(NOW)), Err(VerifyError::Malformed));
    assert_eq!(mint(key(), KID, &c), Err(TokenError::TooLarge));
}

#[test]
fn deep_nesting_is_malformed_not_a_crash() {
    let mut deep = vec![0x81; 2000];
    deep.push(0x00);
    assert_eq!(check(&deep, &expect_at(NOW)), Err(VerifyError::Malformed));
    let mut map = claims_map(&claims());
    let mut nested = Value::Bytes(vec![1; 16]);
    for _ in 0..40 {
        nested = Value::Array(vec![nested]);
    }
    set_claim(&mut map, 10, nested);
    assert_eq!(check(&token_from_map(map), &expect_at(NOW)), Err(VerifyError::Malformed));
}

#[test]
fn unknown_kid() {
    let e = expect_at(NOW);
    let token = mint(key(), b"k9", &claims()).unwrap();
    assert_eq!(check(&token, &e), Err(VerifyError::UnknownKid));
    // No kid at all, an empty kid, or a kid only in the unprotected header.
    let payload = encode(&Value::Map(claims_map(&claims())));
    let no_kid = sign_raw(key(), vec![(int(1), int(-19))], vec![], payload.clone());
    assert_eq!(check(&no_kid, &e), Err(VerifyError::UnknownKid));
    let empty = vec![(int(1), int(-19)), (int(4), Value::Bytes(vec![]))];
    assert_eq!(
        check(&sign_raw(key(), empty, vec![], payload.clone()), &e),
        Err(VerifyError::UnknownKid)
    );
    let kid = vec![(int(4), Value::Bytes(KID.to_vec()))];
    let unprotected_kid = sign_raw(key(), vec![(int(1), int(-19))], kid, payload);
    assert_eq!(check(&unprotected_kid, &e), Err(VerifyError::UnknownKid));
}

#[test]
fn the_unprotected_header_is_never_read() {
    // Nothing in it can change the algorithm, the key or the kind.
    let payload = encode(&Value::Map(claims_map(&claims())));
    let unprotected = vec![
        (int(1), int(-7)),
        (int(4), Value::Bytes(b"k9".to_vec())),
        (int(3), Value::Text("application/portcullis.keyset+cbor".into())),
    ];
    let token = sign_raw(key(), standard_header(-19), unprotected, payload);
    assert_eq!(check(&token, &expect_at(NOW)), Ok(claims()));
    // It must still be a map.
    let mut bad = mint(key(), KID, &claims()).unwrap();
    let at = 2 + 1 + 7; // tag, array, bstr header and the 7-byte protected map
    assert_eq!(bad[at], 0xa0);
    bad[at] = 0x80;
    assert_eq!(check(&bad, &expect_at(NOW)), Err(VerifyError::Malformed));
}

#[test]
fn unknown_kid_when_the_key_window_does_not_cover_the_token() {
    // Key retired: now is past not_after + skew.
    let token = mint_with(|c| {
        c.iat = NOW + 3600;
        c.nbf = NOW + 3600;
        c.exp = NOW + 3660;
    });
    assert_eq!(check(&token, &expect_at(NOW + 3600 + SKEW)).map(|c| c.iat), Ok(NOW + 3600));
    let late = mint_with(|c| {
        c.iat = NOW + 3600;
        c.nbf = NOW + 3600;
        c.exp = NOW + 3900;
    });
    assert_eq!(check(&late, &expect_at(NOW + 3600 + SKEW + 1)), Err(VerifyError::UnknownKid));
    // iat before the key's not_before, or after its not_after.
    let early = mint_with(|c| {
        c.iat = NOW - 3601;
        c.nbf = NOW - 3601;
        c.exp = NOW - 3601 + 300;
    });
    assert_eq!(check(&early, &expect_at(NOW - 3601)), Err(VerifyError::UnknownKid));
    let at_start = mint_with(|c| {
        c.iat = NOW - 3600;
        c.nbf = NOW - 3600;
        c.exp = NOW - 3600 + 300;
    });
    assert!(check(&at_start, &expect_at(NOW - 3600)).is_ok());
    let after = mint_with(|c| {
        c.iat = NOW + 3601;
        c.nbf = NOW + 3601;
        c.exp = NOW + 3601 + 60;
    });
    assert_eq!(check(&after, &expect_at(NOW + 3600)), Err(VerifyError::UnknownKid));
}

#[test]
fn bad_signature() {
    let token = mint(other_key(), KID, &claims()).unwrap();
    assert_eq!(check(&token, &expect_at(NOW)), Err(VerifyError::BadSignature));
}

#[test]
fn bad_signature_for_a_non_canonical_s() {
    // verify_strict refuses s >= L: add the group order L to s.
    let token = mint(key(), KID, &claims()).unwrap();
    let n = token.len();
    let s = &token[n - 32..];
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut sum = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = s[i] as u16 + L[i] as u16 + carry;
        sum[i] = v as u8;
        carry = v >> 8;
    }
    let mut malleated = token.clone();
    malleated[n - 32..].copy_from_slice(&sum);
    assert_eq!(check(&malleated, &expect_at(NOW)), Err(VerifyError::BadSignature));
}

#[test]
fn wrong_algorithm() {
    let e = expect_at(NOW);
    let payload = encode(&Value::Map(claims_map(&claims())));
    for alg in [int(-7), int(-35), int(-20), int(0), Value::Text("EdDSA".into())] {
        let h = vec![(int(1), alg.clone()), (int(4), Value::Bytes(KID.to_vec()))];
        let token = sign_raw(key(), h, vec![], payload.clone());
        assert_eq!(check(&token, &e), Err(VerifyError::WrongAlgorithm), "{alg:?}");
    }
    let no_alg = sign_raw(key(), vec![(int(4), Value::Bytes(KID.to_vec()))], vec![], payload);
    assert_eq!(check(&no_alg, &e), Err(VerifyError::WrongAlgorithm));
}

#[test]
fn expired() {
    let token = mint(key(), KID, &claims()).unwrap();
    assert_eq!(check(&token, &expect_at(NOW + 60 + SKEW + 1)), Err(VerifyError::Expired));
}

#[test]
fn not_yet_valid() {
    let token = mint(key(), KID, &claims()).unwrap();
    assert_eq!(check(&token, &expect_at(NOW - SKEW - 1)), Err(VerifyError::NotYetValid));
    // nbf later than iat.
    let token = mint_with(|c| c.nbf = NOW + 30);
    assert_eq!(check(&token, &expect_at(NOW + 30 - SKEW - 1)), Err(VerifyError::NotYetValid));
}

#[test]
fn wrong_audience() {
    let token = mint_with(|c| c.aud = "policy_pd".into());
    assert_eq!(check(&token, &expect_at(NOW)), Err(VerifyError::WrongAudience));
    // Comparison is exact: no prefix or case folding.
    let token = mint_with(|c| c.aud = "Unlocker".into());
    assert_eq!(check(&token, &expect_at(NOW)), Err(VerifyError::WrongAudience));
}

#[test]
fn missing_scope() {
    let token = mint_with(|c| c.scope = ScopeSet::single(Scope::NetRead));
    assert_eq!(check(&token, &expect_at(NOW)), Err(VerifyError::MissingScope));
    // Every required scope must be granted.
    let token = mint(key(), KID, &claims()).unwrap();
    let mut e = expect_at(NOW);
    e.scope = ScopeSet::parse_list("luks:unlock net:modify").unwrap();
    assert_eq!(check(&token, &e), Err(VerifyError::MissingScope));
    e.scope = ScopeSet::parse_list("luks:unlock net:read").unwrap();
    assert!(check(&token, &e).is_ok());
    // A verifier that requires nothing grants nothing.
    e.scope = ScopeSet::EMPTY;
    assert_eq!(check(&token, &e), Err(VerifyError::MissingScope));
}

#[test]
fn replayed() {
    let token = mint(key(), KID, &claims()).unwrap();
    let mut cache = MemoryReplayCache::new(8);
    let none = RevokedSet::new();
    assert!(verify(&token, &keys(), &expect_at(NOW), &mut cache, &none).is_ok());
    assert_eq!(
        verify(&token, &keys(), &expect_at(NOW + 1), &mut cache, &none),
        Err(VerifyError::Replayed)
    );
    // Another token with a fresh id still passes.
    let fresh = mint_with(|c| c.cti = vec![0xc8; 16]);
    assert!(verify(&fresh, &keys(), &expect_at(NOW + 1), &mut cache, &none).is_ok());
}

#[test]
fn replay_protection_keys_on_the_signed_cti_not_on_the_token_bytes() {
    // Anyone holding a token can change the bytes the signature does not
    // cover (the unprotected header, the tag) and it still verifies. The
    // replay cache keys on `cti`, inside the signed payload, so every such
    // variant is the same token: one use in all.
    let token = mint(key(), KID, &claims()).unwrap();
    let at = 2 + 1 + 7; // tag, array, bstr header and the 7-byte protected map
    assert_eq!(token[at], 0xa0, "empty unprotected header");
    let mut reheadered = token[..at].to_vec();
    reheadered.extend(encode(&Value::Map(vec![(int(99), Value::Text("padding".into()))])));
    reheadered.extend(&token[at + 1..]);
    let mut cwt_tagged = vec![0xd8, 0x3d];
    cwt_tagged.extend(&token);
    let variants = [reheadered, token[1..].to_vec(), cwt_tagged];

    let none = RevokedSet::new();
    for variant in &variants {
        assert_ne!(variant, &token);
        // Each variant is a valid token on its own...
        assert_eq!(check(variant, &expect_at(NOW)), Ok(claims()));
        // ...and the same token as the original to a replay cache.
        let mut cache = MemoryReplayCache::new(8);
        let first = verify(&token, &keys(), &expect_at(NOW), &mut cache, &none);
        assert_eq!(first.map(Verified::into_inner), Ok(claims()));
        assert_eq!(
            verify(variant, &keys(), &expect_at(NOW), &mut cache, &none),
            Err(VerifyError::Replayed)
        );
    }
}

#[test]
fn revoked() {
    let token = mint(key(), KID, &claims()).unwrap();
    let revoked = RevokedSet::from_ids(vec![vec![0xff; 16], claims().cti, vec![0x00; 16]]);
    let mut cache = MemoryReplayCache::new(8);
    assert_eq!(
        verify(&token, &keys(), &expect_at(NOW), &mut cache, &revoked),
        Err(VerifyError::Revoked)
    );
    // The refusal took no replay slot.
    assert!(cache.is_empty());
}

#[test]
fn replay_cache_full_fails_closed() {
    let none = RevokedSet::new();
    let mut cache = MemoryReplayCache::new(1);
    let first = mint(key(), KID, &claims()).unwrap();
    let second = mint_with(|c| c.cti = vec![0xc8; 16]);
    assert!(verify(&first, &keys(), &expect_at(NOW), &mut cache, &none).is_ok());
    assert_eq!(
        verify(&second, &keys(), &expect_at(NOW), &mut cache, &none),
        Err(VerifyError::ReplayCacheFull)
    );
    // Once the first token can no longer be accepted, its slot is reused.
    let late = mint_with(|c| {
        c.cti = vec![0xc9; 16];
        c.iat = NOW + 66;
        c.nbf = NOW + 66;
        c.exp = NOW + 126;
    });
    assert!(verify(&late, &keys(), &expect_at(NOW + 60 + SKEW + 1), &mut cache, &none).is_ok());
}

#[test]
fn refused_tokens_take_no_replay_slot() {
    let mut cache = MemoryReplayCache::new(1);
    let none = RevokedSet::new();
    let token = mint(key(), KID, &claims()).unwrap();
    let mut e = expect_at(NOW);
    e.audience = "policy_pd";
    assert_eq!(verify(&token, &keys(), &e, &mut cache, &none), Err(VerifyError::WrongAudience));
    assert!(cache.is_empty());
    assert!(verify(&token, &keys(), &expect_at(NOW), &mut cache, &none).is_ok());
}

#[test]
fn checks_run_in_the_documented_order() {
    // Wrong key AND expired AND wrong audience: the signature check comes first.
    let token = mint_with(|c| c.aud = "x".into());
    let forged = mint(other_key(), KID, &claims_with_aud("x")).unwrap();
    let late = expect_at(NOW + 1000);
    assert_eq!(check(&forged, &late), Err(VerifyError::BadSignature));
    // Expired AND wrong audience: expiry first.
    assert_eq!(check(&token, &late), Err(VerifyError::Expired));
    // Wrong algorithm AND unknown kid: the algorithm first.
    let payload = encode(&Value::Map(claims_map(&claims())));
    let both = sign_raw(
        key(),
        vec![(int(1), int(-7)), (int(4), Value::Bytes(b"k9".to_vec()))],
        vec![],
        payload,
    );
    assert_eq!(check(&both, &expect_at(NOW)), Err(VerifyError::WrongAlgorithm));
    // Revoked AND replayed: revocation first, and no slot taken.
    let mut cache = MemoryReplayCache::new(4);
    let fine = mint(key(), KID, &claims()).unwrap();
    verify(&fine, &keys(), &expect_at(NOW), &mut cache, &RevokedSet::new()).unwrap();
    let revoked = RevokedSet::from_ids(vec![claims().cti]);
    assert_eq!(
        verify(&fine, &keys(), &expect_at(NOW), &mut cache, &revoked),
        Err(VerifyError::Revoked)
    );
}

fn claims_with_aud(aud: &str) -> Claims {
    Claims { aud: aud.into(), ..claims() }
}

// ---- boundaries ----

#[test]
fn skew_boundaries() {
    let token = mint(key(), KID, &claims()).unwrap();
    // exp: accepted up to and including exp + skew.
    assert!(check(&token, &expect_at(NOW + 60 + SKEW)).is_ok());
    assert_eq!(check(&token, &expect_at(NOW + 60 + SKEW + 1)), Err(VerifyError::Expired));
    // nbf/iat: accepted from nbf - skew.
    assert!(check(&token, &expect_at(NOW - SKEW)).is_ok());
    assert_eq!(check(&token, &expect_at(NOW - SKEW - 1)), Err(VerifyError::NotYetValid));
    // Zero skew.
    let mut e = expect_at(NOW + 60);
    e.skew = 0;
    assert!(check(&token, &e).is_ok());
    e.now = NOW + 61;
    assert_eq!(check(&token, &e), Err(VerifyError::Expired));
}

#[test]
fn times_near_u64_max_do_not_wrap() {
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: KID.to_vec(),
        key: key().verifying_key(),
        not_before: 0,
        not_after: u64::MAX,
    })
    .unwrap();
    let token = mint_with(|c| {
        c.iat = u64::MAX - 10;
        c.nbf = u64::MAX - 10;
        c.exp = u64::MAX;
    });
    let e = Expectations { now: u64::MAX, skew: u64::MAX, ..expect_at(0) };
    let got = verify(&token, &keys, &e, &mut MemoryReplayCache::new(1), &RevokedSet::new());
    assert_eq!(got.map(|c| c.exp), Ok(u64::MAX));
}

// ---- byte flips ----

#[test]
fn no_single_byte_change_anywhere_verifies() {
    let token = mint(key(), KID, &claims()).unwrap();
    let mut kinds: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut tried = 0;
    for i in 0..token.len() {
        // Two bit flips everywhere; more patterns over the headers, where the
        // parser rather than the signature has to catch them. (Each attempt
        // costs a signature check, which is slow in debug builds.)
        let masks: &[u8] = if i < 40 { &[0x01, 0x02, 0x10, 0x80, 0xff] } else { &[0x01, 0x80] };
        for &mask in masks {
            tried += 1;
            let mut t = token.clone();
            t[i] ^= mask;
            match check(&t, &expect_at(NOW)) {
                Ok(c) => panic!("flip {mask:#04x} at byte {i} verified: {c:?}"),
                Err(e) => *kinds.entry(e.code()).or_default() += 1,
            }
        }
    }
    // Also every truncation.
    for n in 0..token.len() {
        assert!(check(&token[..n], &expect_at(NOW)).is_err(), "truncated to {n}");
    }
    println!("{tried} byte flips of a {}-byte token refused as: {kinds:?}", token.len());
    // Sanity: the flips exercised both the parser and the signature check.
    assert!(kinds.contains_key("malformed") && kinds.contains_key("bad_signature"));
}

// ---- inspect, mint, key sets, caches ----

#[test]
fn inspect_parses_without_verifying() {
    let token = mint(other_key(), b"someone-else", &claims()).unwrap();
    let seen = inspect(&token).unwrap().into_unverified();
    let (kid, alg, c) = (seen.kid, seen.alg, seen.claims);
    assert_eq!((kid.as_slice(), alg, c), (&b"someone-else"[..], cose::ALG_ED25519, claims()));
    // It still refuses what is not a token.
    assert_eq!(inspect(b"\x00").map(|t| t.get_unverified().alg), Err(VerifyError::Malformed));
    let payload = encode(&Value::Map(claims_map(&claims())));
    let es256 = sign_raw(
        key(),
        vec![(int(1), int(-7)), (int(4), Value::Bytes(KID.to_vec()))],
        vec![],
        payload,
    );
    assert_eq!(inspect(&es256).map(|t| t.get_unverified().alg), Ok(-7));
}

#[test]
fn mint_refuses_bad_input() {
    assert_eq!(mint(key(), b"", &claims()), Err(TokenError::InvalidKid));
    assert_eq!(mint(key(), &[1; 65], &claims()), Err(TokenError::InvalidKid));
    let bad: [fn(&mut Claims); 6] = [
        |c| c.cti.clear(),
        |c| c.nonce = vec![0; 65],
        |c| c.scope = ScopeSet::EMPTY,
        |c| c.exp = c.iat + 301,
        |c| c.nbf = c.exp + 1,
        |c| c.iat = c.nbf + 1,
    ];
    for edit in bad {
        let mut c = claims();
        edit(&mut c);
        assert_eq!(mint(key(), KID, &c), Err(TokenError::InvalidClaims), "{c:?}");
    }
}

#[test]
fn keyset_refuses_duplicate_kids() {
    let mut keys = keys();
    let again = keys.find(KID).unwrap().clone();
    assert_eq!(keys.push(again), Err(KeysetError::DuplicateKid));
    assert_eq!(keys.len(), 1);
    assert!(keys.find(b"k2").is_none());
}

#[test]
fn memory_replay_cache_forgets_only_expired_ids() {
    let mut cache = MemoryReplayCache::new(2);
    assert_eq!(cache.check_and_insert(b"a", NOW + 10, NOW), Ok(()));
    assert_eq!(cache.check_and_insert(b"a", NOW + 10, NOW + 10), Err(ReplayError::Replayed));
    assert_eq!(cache.check_and_insert(b"b", NOW + 20, NOW), Ok(()));
    assert_eq!(cache.check_and_insert(b"c", NOW + 20, NOW + 10), Err(ReplayError::Full));
    // "a" is forgotten once its time has passed; "b" is still live.
    assert_eq!(cache.check_and_insert(b"c", NOW + 30, NOW + 11), Ok(()));
    assert_eq!(cache.check_and_insert(b"b", NOW + 20, NOW + 11), Err(ReplayError::Replayed));
    // Prefixes and extensions are different ids.
    assert_eq!(cache.check_and_insert(b"", NOW, NOW), Err(ReplayError::InvalidId));
    assert_eq!(
        cache.check_and_insert(&[0; MAX_CTI_LEN + 1], NOW, NOW),
        Err(ReplayError::InvalidId)
    );
    let mut cache = MemoryReplayCache::new(2);
    cache.check_and_insert(b"ab", NOW + 10, NOW).unwrap();
    assert_eq!(cache.check_and_insert(b"a", NOW + 10, NOW), Ok(()));
    assert_eq!(cache.check_and_insert(b"abc", NOW + 10, NOW), Err(ReplayError::Full));
    assert_eq!(cache.capacity(), 2);
}

#[test]
fn revoked_set_is_sorted_and_searchable() {
    use portcullis_proto::token::Revocations;
    let mut set = RevokedSet::from_ids(vec![b"c".to_vec(), b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![&b"a"[..], &b"c"[..]]);
    assert!(set.insert(b"b"));
    assert!(!set.insert(b"b"));
    assert!(set.is_revoked(b"b") && set.is_revoked(b"c") && !set.is_revoked(b"d"));
    assert_eq!(set.len(), 3);
}

#[test]
fn error_codes_and_reasons_are_distinct() {
    let all = [
        VerifyError::Malformed,
        VerifyError::UnknownKid,
        VerifyError::BadSignature,
        VerifyError::WrongAlgorithm,
        VerifyError::Expired,
        VerifyError::NotYetValid,
        VerifyError::WrongAudience,
        VerifyError::MissingScope,
        VerifyError::Replayed,
        VerifyError::Revoked,
        VerifyError::ReplayCacheFull,
    ];
    let codes: std::collections::BTreeSet<_> = all.iter().map(|e| e.code()).collect();
    let reasons: std::collections::BTreeSet<_> = all.iter().map(|e| e.to_string()).collect();
    assert_eq!((codes.len(), reasons.len()), (all.len(), all.len()));
    assert!(reasons.iter().all(|r| !r.contains('\n')));
}
