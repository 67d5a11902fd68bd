//! The verifiers' trust across a root rotation: a verifier pinned to the
//! provisioned root follows the root chain a keyset carries to the new
//! root (then pins it: revocation lists signed by the new root verify),
//! and refuses a forged, broken or too long chain, or a new root's keyset
//! without its chain.

use ed25519_dalek::SigningKey;
use portcullis_apps::trust::{Trust, TrustError};
use portcullis_authority::keys::{KeyConfig, KeyRing};
use portcullis_authority::revocation::RevocationList;
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{KeysetBody, RootSuccession, MAX_ROOT_CHAIN};
use portcullis_proto::succession::{self, ChainError};

const T0: u64 = 1_700_000_000;

fn ring() -> KeyRing {
    let mut r = KeyRing::new(&[1; 32], KeyConfig::default()).unwrap();
    r.rotate(&[2; 32], T0);
    r
}

fn pinned(r: &KeyRing) -> Trust {
    let root = r.root_public();
    Trust::new(root, &kid_for(&root))
}

/// A keyset with `chain`, signed by `root`.
fn keyset_signed(r: &KeyRing, root: &SigningKey, chain: Vec<Vec<u8>>) -> Vec<u8> {
    let mut body = r.keyset_body(T0);
    body.root_chain = (!chain.is_empty()).then_some(chain);
    let kid = kid_for(&root.verifying_key());
    cose::sign(root, &kid, ContentType::Keyset, &body.to_cbor().unwrap()).unwrap()
}

#[test]
fn a_verifier_follows_the_chain_then_pins_the_new_root() {
    let mut r = ring();
    let mut t = pinned(&r);
    t.accept_keyset(&r.signed_keyset(T0).unwrap()).unwrap();
    r.rotate_root(&[3; 32], T0 + 10).unwrap();
    let list = RevocationList::new();
    let (root, kid) = r.root();
    let revs = list.signed(root, kid, T0 + 10).unwrap();
    // Before it has seen the chain, the new root's list is not trusted.
    assert!(matches!(t.accept_revocations(&revs), Err(TrustError::Signature(_))));
    t.accept_keyset(&r.signed_keyset(T0 + 10).unwrap()).unwrap();
    assert_eq!(t.root(), (&r.root_public(), 1));
    t.accept_revocations(&revs).unwrap();
    // A second rotation: followed from the root it pinned.
    r.rotate_root(&[4; 32], T0 + 20).unwrap();
    t.accept_keyset(&r.signed_keyset(T0 + 20).unwrap()).unwrap();
    assert_eq!(t.root(), (&r.root_public(), 2));
}

#[test]
fn forged_broken_long_or_missing_chains_are_refused() {
    let r = ring();
    let mut t = pinned(&r);
    let thief = SigningKey::from_bytes(&[66; 32]);
    let pretender = SigningKey::from_bytes(&[77; 32]);
    let body = |v| RootSuccession {
        version: v,
        issued_at: T0,
        pubkey: pretender.verifying_key().to_bytes(),
    };
    // Succession signed by a key that is not the pinned root.
    let forged = succession::sign(&thief, &body(1)).unwrap();
    let bytes = keyset_signed(&r, &pretender, vec![forged]);
    assert!(matches!(t.accept_keyset(&bytes), Err(TrustError::Chain(ChainError::Signature(_)))));
    // The new root's keyset without the chain: not signed by the pinned root.
    let bytes = keyset_signed(&r, &pretender, Vec::new());
    assert!(matches!(
        t.accept_keyset(&bytes),
        Err(TrustError::Malformed | TrustError::Signature(_))
    ));
    // A valid first link, then one from a key the chain never reached.
    let mut real = KeyRing::new(&[1; 32], KeyConfig::default()).unwrap();
    real.rotate(&[2; 32], T0);
    real.rotate_root(&[3; 32], T0).unwrap();
    let mut chain = real.root_chain().to_vec();
    chain.push(succession::sign(&thief, &body(2)).unwrap());
    let bytes = keyset_signed(&r, &pretender, chain);
    assert!(matches!(t.accept_keyset(&bytes), Err(TrustError::Chain(_))));
    // Longer than MAX_ROOT_CHAIN: refused before any signature is checked.
    let long = vec![succession::sign(&thief, &body(1)).unwrap(); MAX_ROOT_CHAIN + 1];
    let mut b: KeysetBody = r.keyset_body(T0);
    b.root_chain = Some(long);
    assert!(b.to_cbor().is_err(), "the encoder refuses it too");
    // Nothing was pinned by any of these.
    assert_eq!(t.root(), (&r.root_public(), 0));
    assert!(!t.has_keyset());
}
