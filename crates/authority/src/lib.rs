//! cryptod's decision core as a sans-IO state machine.
//!
//! Everything cryptod decides lives here: the DRBG, TOTP validation with replay
//! and rate limiting, the ACL, token issue, unlock secrets, signing keys and
//! their rotation, revocation, the signed audit chain and the sealed state.
//! The platform feeds in messages, the peer identity it resolved from the vchan
//! domain id, the time and hardware entropy samples; it gets back responses and
//! audit records. No clocks, no I/O, no global state.
#![no_std]
#![forbid(unsafe_code)]
extern crate alloc;

pub mod acl;
pub mod admin;
pub mod attest;
pub mod audit;
pub mod authority;
pub mod backup;
pub mod drbg;
pub mod keys;
mod meta;
pub mod outcome;
pub mod ratelimit;
pub mod registry;
pub mod revocation;
pub mod sealed;
/// HMAC-SHA1 for TOTP, compact.
mod sha1;
pub use portcullis_proto::sorted;
pub mod totp;
pub mod unlock;

pub use crate::acl::PeerId;
pub use crate::authority::{Authority, Config, Output, Request};
