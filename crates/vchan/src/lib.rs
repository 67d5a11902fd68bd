//! A libxenvchan-compatible vchan: two byte rings in memory shared between
//! Xen domains, with event-channel notifications, plus length-prefixed
//! message framing on top.
//!
//! - [`layout`]: the shared control page, byte for byte, and ring placement.
//! - [`shm`]: the [`SharedMem`] trait platforms implement over mapped pages.
//! - [`ring`]: the sans-I/O ring protocol of one endpoint ([`Channel`]).
//! - [`backend`]: the [`Backend`] trait (grants, event channels, store).
//! - [`Vchan`]: server and client endpoints over a backend.
//! - [`frame`]: [`FrameReader`] and [`FrameWriter`].
//! - `sim` (feature `std`): an in-process backend for tests and benchmarks.
//! - `fuzzing` (feature `std`): the `vchan_ring` fuzz target's body.
//!
//! Everything the peer can write is treated as hostile; see `docs/vchan.md`.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod backend;
pub mod frame;
#[cfg(feature = "std")]
pub mod fuzzing;
pub mod layout;
pub mod ring;
pub mod shm;
#[cfg(feature = "std")]
pub mod sim;
mod vchan;

use core::fmt;

pub use backend::{Backend, BackendError, DomId, GrantRef, Port, Wait};
pub use frame::{FrameError, FrameReader, FrameWriter, Transport};
pub use layout::{Geometry, LayoutError};
pub use ring::{Channel, PeerState, Role, WRITE_PIECES, WRITE_PIECE_MIN};
pub use shm::{AtomicMem, SharedMem};
pub use vchan::{
    ClientConfig, ServerConfig, Vchan, DEFAULT_SPIN, EVENT_CHANNEL_KEY, PEER_CHECK, REKICK_FIRST,
    REKICK_MAX, RING_REF_KEY,
};

/// Why a vchan operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VchanError {
    /// The peer broke the ring protocol (impossible indices); the channel
    /// has been closed.
    BrokenPeer,
    /// The peer has closed or exited and no data is left.
    PeerClosed,
    /// This endpoint is closed.
    Closed,
    /// No event arrived within the timeout.
    Timeout,
    /// The server has not published the vchan in the store (yet).
    NotPublished,
    /// A store value is not a valid non-zero decimal number.
    BadStoreValue,
    /// The mapped memory does not match the ring layout.
    BadMapping,
    /// A server-only operation on a client.
    NotServer,
    /// Unusable ring sizes or orders.
    Layout(LayoutError),
    /// The platform failed.
    Backend(BackendError),
}

impl fmt::Display for VchanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VchanError::BrokenPeer => f.write_str("peer broke the ring protocol"),
            VchanError::PeerClosed => f.write_str("peer closed the vchan"),
            VchanError::Closed => f.write_str("vchan is closed"),
            VchanError::Timeout => f.write_str("timed out waiting for an event"),
            VchanError::NotPublished => f.write_str("vchan not published by the server"),
            VchanError::BadStoreValue => f.write_str("malformed store value"),
            VchanError::BadMapping => f.write_str("mapping does not match the ring layout"),
            VchanError::NotServer => f.write_str("operation needs the server end"),
            VchanError::Layout(e) => write!(f, "ring layout: {e}"),
            VchanError::Backend(e) => write!(f, "backend: {e}"),
        }
    }
}

impl core::error::Error for VchanError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            VchanError::Layout(e) => Some(e),
            VchanError::Backend(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LayoutError> for VchanError {
    fn from(e: LayoutError) -> Self {
        VchanError::Layout(e)
    }
}

impl From<BackendError> for VchanError {
    fn from(e: BackendError) -> Self {
        VchanError::Backend(e)
    }
}
