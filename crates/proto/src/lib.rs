//! Portcullis wire protocol: the CBOR envelope and messages exchanged over vchan,
//! COSE_Sign1 CWT capability tokens, and the other signed objects (keysets,
//! revocation lists, audit seals, attestations).
//!
//! `no_std` + `alloc`. Every decoder takes untrusted bytes, bounds them first and
//! returns a typed error; none of them panics.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

/// The bounded CBOR codec under the envelope and the signed payloads.
mod cbor;
/// Signed objects other than tokens (COSE_Sign1 with a content type).
pub mod cose;
/// Parsing signed things without verifying them, for tools.
pub mod danger;
/// Ed25519 signing, with a basepoint table computed at run time.
pub mod ed25519;
/// The versioned `{v, type, body}` envelope.
pub mod envelope;
/// Ed25519 keys: key ids, COSE_Key files, the verifier's key entry.
pub mod key;
/// Typed message bodies.
pub mod msg;
/// Capability scopes.
pub mod scope;
/// An ordered map kept as a sorted `Vec` (small bounded tables).
pub mod sorted;
/// Root key succession statements and the chain a verifier follows.
pub mod succession;
/// CWT capability tokens: minting and verification.
pub mod token;
/// One CBOR item into a generic value, for the COSE and CWT parsers.
mod value;
mod verified;
pub use verified::Verified;
