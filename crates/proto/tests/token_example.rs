//! The worked example of `protocol/token.md` is a real token: minting the
//! documented claims with the documented key gives exactly the documented
//! bytes, and those bytes verify.

use ed25519_dalek::SigningKey;
use portcullis_proto::danger::{inspect, TokenContents};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{
    mint, verify, Claims, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet,
};

const SPEC: &str = include_str!("../../../protocol/token.md");

/// RFC 8032 §7.1 TEST 1 secret key (public key d75a9801…511a).
const SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const KID: &[u8] = b"cryptod-1";
const IAT: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn key() -> SigningKey {
    SigningKey::from_bytes(&hex::decode(SECRET).unwrap().try_into().unwrap())
}

fn claims() -> Claims {
    Claims {
        iss: "cryptod".into(),
        sub: "policy_pd".into(),
        aud: "unlocker".into(),
        exp: IAT + 60,
        nbf: IAT,
        iat: IAT,
        cti: hex::decode("00112233445566778899aabbccddeeff").unwrap(),
        scope: ScopeSet::single(Scope::LuksUnlock),
        nonce: hex::decode("0102030405060708090a0b0c0d0e0f10").unwrap(),
    }
}

/// The hex between the `example-token` markers of the spec, whitespace removed.
fn documented_token() -> Vec<u8> {
    let start = SPEC.find("<!-- example-token:begin -->").expect("begin marker");
    let end = SPEC.find("<!-- example-token:end -->").expect("end marker");
    let block = &SPEC[start..end];
    let hex: String = block
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("```"))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    hex::decode(hex).expect("hex")
}

#[test]
fn mint_produces_the_documented_bytes() {
    let minted = mint(&key(), KID, &claims()).unwrap();
    println!("{}", hex::encode(&minted));
    assert_eq!(hex::encode(&minted), hex::encode(documented_token()));
}

#[test]
fn documented_token_verifies() {
    let mut keys = Keyset::new();
    keys.push(KeyEntry {
        kid: KID.to_vec(),
        key: key().verifying_key(),
        not_before: IAT - 86_400,
        not_after: IAT + 86_400,
    })
    .unwrap();
    let expect = Expectations {
        audience: "unlocker",
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: IAT + 10,
        skew: 5,
    };
    let token = documented_token();
    let got = verify(&token, &keys, &expect, &mut MemoryReplayCache::new(4), &RevokedSet::new());
    assert_eq!(got.map(|v| v.into_inner()), Ok(claims()));
    let seen = inspect(&token).map(|u| u.into_unverified());
    assert_eq!(seen, Ok(TokenContents { kid: KID.to_vec(), alg: -19, claims: claims() }));
}
