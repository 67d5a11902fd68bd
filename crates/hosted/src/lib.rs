//! The hosted platform: Portcullis guests as ordinary Linux processes, the
//! way MirageOS runs unikernels on its unix target.
//!
//! A launcher creates a [`World`] (a directory shared by every process of a
//! run), registers domains in it and starts each guest with
//! [`World::command_for`]. In the guest, [`HostedPlatform::from_env`] gives
//! the [`portcullis_platform::Platform`], whose [`HostedBackend`] carries
//! vchans between processes:
//!
//! - grants are files mapped `MAP_SHARED` ([`HostedMem`]),
//! - event channels are futex words in shared files,
//! - the store is a directory tree with xenstore's permission rules.
//!
//! See `docs/hosted.md` for the layout, the guarantees and what is only
//! cooperative (every process runs as the same user).
//!
//! [`xenvchan`] is the other use of this crate: in a real dom0, vchans to
//! the guests through Xen's own libxenvchan, loaded at run time.

mod backend;
mod evtchn;
mod mem;
mod platform;
mod store;
// The only module with `unsafe` (syscalls); the workspace denies it elsewhere.
#[allow(unsafe_code)]
mod sys;
mod world;
pub mod xenvchan;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_vchan::BackendError;

pub use backend::{HostedBackend, MAX_GRANT_PAGES};
pub use mem::HostedMem;
pub use platform::HostedPlatform;
pub use store::{MAX_PATH_LEN, MAX_VALUE_LEN};
pub use world::{World, MAX_NAME_LEN};

/// Environment variable naming the world directory.
pub const WORLD_ENV: &str = "PORTCULLIS_WORLD";
/// Environment variable holding the domain id of a guest process.
pub const DOMID_ENV: &str = "PORTCULLIS_DOMID";

/// Why setting up the hosted platform failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostedError {
    /// An environment variable is missing or malformed.
    Env(&'static str),
    /// The directory holds no world.
    NoWorld,
    /// The world, or a domain of that name, already exists.
    Exists,
    /// A domain name is empty, too long or has characters other than
    /// ASCII letters, digits, `-`, `_` and `.`.
    BadName,
    /// No such domain.
    NoSuchDomain,
    /// No domain ids are left.
    Exhausted,
    /// A domain's measurement node is not dom0's, or not 64 lowercase hex
    /// digits.
    BadMeasurement,
    /// The machine's page size is not 4096 bytes.
    PageSize,
    /// A file operation failed.
    Io(io::ErrorKind),
    /// A store operation failed.
    Backend(BackendError),
}

impl fmt::Display for HostedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostedError::Env(var) => write!(f, "environment variable {var} missing or malformed"),
            HostedError::NoWorld => f.write_str("no hosted world in that directory"),
            HostedError::Exists => f.write_str("already exists"),
            HostedError::BadName => f.write_str("bad domain name"),
            HostedError::NoSuchDomain => f.write_str("no such domain"),
            HostedError::Exhausted => f.write_str("no domain ids left"),
            HostedError::BadMeasurement => {
                f.write_str("measurement node not dom0's or not 64 lowercase hex digits")
            }
            HostedError::PageSize => f.write_str("page size is not 4096 bytes"),
            HostedError::Io(kind) => write!(f, "I/O: {kind}"),
            HostedError::Backend(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for HostedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostedError::Backend(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HostedError {
    fn from(e: io::Error) -> Self {
        HostedError::Io(e.kind())
    }
}

impl From<BackendError> for HostedError {
    fn from(e: BackendError) -> Self {
        HostedError::Backend(e)
    }
}

/// A name suffix unique within the world: process id and a counter.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}
