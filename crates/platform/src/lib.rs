//! What a Portcullis guest needs from the platform it runs on.
//!
//! The four guests' application code is written once, against [`Platform`];
//! `portcullis-xen` implements it for a PVH domain (hypercalls, the PV
//! console, grant tables, event channels, xenstore) and `portcullis-hosted`
//! for a Linux process (shared files, futexes, a directory standing in for
//! xenstore). Like MirageOS's unix and xen targets: one application, two
//! platforms.
//!
//! Everything here is `no_std` and allocation-free; the traits carry no
//! decision logic.
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;
use core::time::Duration;

pub use portcullis_vchan::{Backend, DomId, Port};

/// Why a platform service failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// No hardware entropy source (RDSEED/RDRAND absent), or it failed its
    /// health tests; entropy consumers must fail closed.
    NoEntropy,
    /// The console is closed or failed.
    Console,
    /// The wait for input or events timed out.
    Timeout,
    /// A boot-time item (sealed state, key, config) is missing.
    MissingConfig,
    /// A boot-time item is present but too large or unreadable.
    BadConfig,
    /// A domain name could not be resolved to a domain id.
    UnknownDomain,
    /// The store refused access (xenstore `EACCES`/`EPERM`): the
    /// toolstack has not granted this domain the node.
    Denied,
    /// The store or another platform service failed.
    Io,
    /// This platform does not offer the service.
    Unsupported,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlatformError::NoEntropy => "no healthy hardware entropy source",
            PlatformError::Console => "console failed",
            PlatformError::Timeout => "timed out",
            PlatformError::MissingConfig => "boot configuration item missing",
            PlatformError::BadConfig => "boot configuration item unreadable",
            PlatformError::UnknownDomain => "unknown domain name",
            PlatformError::Denied => "permission denied by the store",
            PlatformError::Io => "platform I/O failed",
            PlatformError::Unsupported => "not supported on this platform",
        })
    }
}

impl core::error::Error for PlatformError {}

/// Boot-time configuration items a guest may be given by its toolstack
/// (on Xen: a PVH module or xenstore keys written by dom0; hosted: files the
/// launcher names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigItem {
    /// cryptod's sealed state (encrypted and authenticated).
    SealedState,
    /// cryptod's key-encryption key for the sealed state.
    KeyEncryptionKey,
    /// The root public key (COSE_Key) verifiers use to check keysets.
    RootPublicKey,
    /// Free-form guest settings, `key=value` lines.
    Settings,
}

impl ConfigItem {
    /// The item's name (file name on the hosted platform, xenstore key on Xen).
    pub const fn name(self) -> &'static str {
        match self {
            ConfigItem::SealedState => "sealed-state",
            ConfigItem::KeyEncryptionKey => "kek",
            ConfigItem::RootPublicKey => "root.pub",
            ConfigItem::Settings => "settings",
        }
    }
}

/// The platform services a guest uses. One value per guest, owned by its
/// main loop.
pub trait Platform {
    /// The vchan backend (grants, event channels, store). Cheap to clone: each
    /// [`portcullis_vchan::Vchan`] owns one handle.
    type Backend: Backend + Clone;

    /// A handle to the vchan backend for a new channel.
    fn backend(&self) -> Self::Backend;

    /// This domain's id.
    fn domid(&self) -> DomId;

    /// This domain's name (as the toolstack named it).
    fn name(&self) -> &str;

    /// Wall-clock time, seconds since the Unix epoch (UTC).
    fn now_unix(&self) -> u64;

    /// A monotonic clock in nanoseconds, for timeouts only.
    fn monotonic_ns(&self) -> u64;

    /// Writes text to the domain's console (on Xen, the PV console ring that
    /// `xl console` shows).
    fn console_write(&mut self, text: &str);

    /// Reads one line of operator input into `buf`, handling backspace; the
    /// typed characters are echoed only if `echo`. Returns the line's length
    /// (without the newline).
    fn console_read_line(
        &mut self,
        buf: &mut [u8],
        echo: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, PlatformError>;

    /// Fills `buf` from the hardware entropy source after its health tests
    /// (RDSEED, falling back to RDRAND, on x86). Fails closed.
    fn hw_entropy(&mut self, buf: &mut [u8]) -> Result<(), PlatformError>;

    /// Copies a boot-time configuration item into `buf`, returning its length.
    fn config(&mut self, item: ConfigItem, buf: &mut [u8]) -> Result<usize, PlatformError>;

    /// Replaces a boot-time configuration item for the next boot (cryptod's
    /// resealed state: replay steps survive a restart). The write is atomic:
    /// after a crash the item is the old or the new value, never a mix.
    /// Platforms without durable storage return [`PlatformError::Unsupported`].
    fn persist(&mut self, item: ConfigItem, bytes: &[u8]) -> Result<(), PlatformError> {
        let _ = (item, bytes);
        Err(PlatformError::Unsupported)
    }

    /// Resolves a domain name to its id (from the store's
    /// `/local/domain/<id>/name`, which only the toolstack can write).
    fn resolve(&mut self, name: &str) -> Result<DomId, PlatformError>;

    /// Blocks until one of `ports` has a pending event (consuming it) or the
    /// timeout passes. Returns the port, or `None` on timeout.
    fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, PlatformError>;

    /// Ends the domain: exit code 0 is a clean poweroff, anything else a crash.
    fn shutdown(&mut self, code: u8) -> !;
}
