//! Parsing signed things WITHOUT verifying them, for tools that must show or
//! route them before (or instead of) checking: the CLI's `token inspect`, an
//! audit collector reading a seal's sequence numbers, a self-test reading
//! the id of a token it holds.
//!
//! Everything here returns an [`Unverified`](crate::danger::Unverified) value, which does not dereference
//! to its contents: each read says `get_unverified` or `into_unverified` at the
//! call site. Nothing it holds may be trusted or acted on as a grant; verify
//! with [`crate::token::verify`] or [`crate::cose::verify`] for that.

use alloc::vec::Vec;

use crate::cose::{self, CoseError, SignedObject};
use crate::token::{self, Claims, VerifyError};

/// A value parsed from signed bytes whose signature was NOT checked. It does
/// not dereference to its contents, and it is not a [`crate::Verified`]:
///
/// ```compile_fail
/// # fn f(token: &[u8]) {
/// let seen = portcullis_proto::danger::inspect(token).unwrap();
/// let cti = &seen.claims.cti; // must say get_unverified()
/// # }
/// ```
///
/// ```compile_fail
/// # fn f(token: &[u8]) {
/// fn grant(_: portcullis_proto::Verified<portcullis_proto::token::Claims>) {}
/// let seen = portcullis_proto::danger::inspect(token).unwrap();
/// grant(seen.into_unverified().claims); // an Unverified is never a Verified
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified<T>(T);

impl<T> Unverified<T> {
    /// The unverified value.
    pub fn get_unverified(&self) -> &T {
        &self.0
    }

    /// The unverified value, taken out of its wrapper.
    pub fn into_unverified(self) -> T {
        self.0
    }
}

/// What [`inspect`] reads from a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenContents {
    /// The key id from the protected header.
    pub kid: Vec<u8>,
    /// The algorithm from the protected header (any integer).
    pub alg: i64,
    /// The claims (with the first audience in `aud`).
    pub claims: Claims,
}

/// Parses a token WITHOUT verifying anything but its shape: returns the key
/// id, the algorithm and the claims. The signature, key, times, audience,
/// scope, revocation and replay are NOT checked (protocol/token.md §4: steps
/// 1 and 5 only).
///
/// # Errors
///
/// [`VerifyError::Malformed`] if the token or its claims break the token
/// shape, [`VerifyError::WrongAlgorithm`] if there is no integer `alg`, and
/// [`VerifyError::UnknownKid`] if there is no protected `kid`.
pub fn inspect(bytes: &[u8]) -> Result<Unverified<TokenContents>, VerifyError> {
    let object = token::decode_token(bytes)?;
    let alg = object.alg.ok_or(VerifyError::WrongAlgorithm)?;
    if object.kid.is_empty() {
        return Err(VerifyError::UnknownKid);
    }
    let (claims, _) = token::parse_claims(&object.payload).ok_or(VerifyError::Malformed)?;
    Ok(Unverified(TokenContents { kid: object.kid, alg, claims }))
}

/// Parses a signed object WITHOUT verifying its signature or algorithm,
/// returning its key id, content type and payload.
///
/// # Errors
///
/// [`CoseError::TooLarge`], [`CoseError::Malformed`] for a shape
/// [`cose::verify`] would refuse, and [`CoseError::WrongContentType`] if the
/// content type is not one of ours.
pub fn open_unverified(bytes: &[u8]) -> Result<Unverified<SignedObject>, CoseError> {
    let object = cose::open(bytes)?;
    let content_type = object.our_content_type().ok_or(CoseError::WrongContentType)?;
    Ok(Unverified(SignedObject { kid: object.kid, content_type, payload: object.payload }))
}
