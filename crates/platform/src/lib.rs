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
    /// The store or another platform service failed; the detail says
    /// which operation, on what, and why.
    Io(IoDetail),
    /// This platform does not offer the service.
    Unsupported,
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let PlatformError::Io(detail) = self {
            return write!(f, "platform I/O failed: {detail}");
        }
        f.write_str(match self {
            PlatformError::NoEntropy => "no healthy hardware entropy source",
            PlatformError::Console => "console failed",
            PlatformError::Timeout => "timed out",
            PlatformError::MissingConfig => "boot configuration item missing",
            PlatformError::BadConfig => "boot configuration item unreadable",
            PlatformError::UnknownDomain => "unknown domain name",
            PlatformError::Denied => "permission denied by the store",
            PlatformError::Io(_) => "platform I/O failed",
            PlatformError::Unsupported => "not supported on this platform",
        })
    }
}

/// Which platform operation failed (the first part of an [`IoDetail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Connecting to the store.
    StoreConnect,
    /// Reading a store node.
    StoreRead,
    /// Writing a store node.
    StoreWrite,
    /// Listing a store directory.
    StoreList,
    /// Removing a store node.
    StoreRemove,
    /// Watching a store node for changes.
    StoreWatch,
    /// Waiting for events on event channels.
    EventWait,
    /// Writing a configuration item for the next boot.
    Persist,
    /// Looking up a domain by name.
    Resolve,
}

impl IoOp {
    /// What the operation is, in a few words.
    pub const fn as_str(self) -> &'static str {
        match self {
            IoOp::StoreConnect => "store connect",
            IoOp::StoreRead => "store read",
            IoOp::StoreWrite => "store write",
            IoOp::StoreList => "store directory",
            IoOp::StoreRemove => "store remove",
            IoOp::StoreWatch => "store watch",
            IoOp::EventWait => "event wait",
            IoOp::Persist => "persist",
            IoOp::Resolve => "resolve",
        }
    }
}

/// Why a platform operation failed (the second part of an [`IoDetail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCause {
    /// No answer before the deadline.
    Timeout,
    /// The other side (the store daemon) sent something malformed or
    /// unexpected.
    Protocol,
    /// The channel to the service (a ring, an event channel) is unusable.
    Transport,
    /// The request itself was refused as invalid (too large, bad name).
    Invalid,
    /// The store answered with this error (xenstore's name, e.g. `EIO`).
    Store(&'static str),
    /// The OS or hypervisor call failed with this errno (positive).
    Errno(i32),
    /// Another failure, described.
    Other(&'static str),
}

/// A signed number written as `{}` writes an `i64` (a `-` and the
/// magnitude), through the `u64` formatting every guest links: no copy of
/// the signed formatting per integer type (image size, issue 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signed(pub i64);

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        write!(f, "{sign}{}", self.0.unsigned_abs())
    }
}

impl fmt::Display for IoCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoCause::Timeout => f.write_str("timed out"),
            IoCause::Protocol => f.write_str("malformed or unexpected reply"),
            IoCause::Transport => f.write_str("channel unavailable"),
            IoCause::Invalid => f.write_str("invalid request"),
            IoCause::Store(name) => write!(f, "store error {name}"),
            IoCause::Errno(n) => write!(f, "errno {}", Signed(i64::from(*n))),
            IoCause::Other(text) => f.write_str(text),
        }
    }
}

/// Longest subject (a store path, a file name) an [`IoDetail`] keeps; a
/// longer one keeps its end, which names the node.
pub const SUBJECT_CAP: usize = 64;

/// What failed in a [`PlatformError::Io`]: the operation, its subject
/// (a store path or file, possibly shortened to its last
/// [`SUBJECT_CAP`] bytes) and the cause. Fixed size, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IoDetail {
    /// The operation.
    pub op: IoOp,
    /// The cause.
    pub cause: IoCause,
    subject: [u8; SUBJECT_CAP],
    subject_len: u8,
    truncated: bool,
}

impl IoDetail {
    /// A failure of `op` because of `cause`, with no subject.
    pub const fn new(op: IoOp, cause: IoCause) -> Self {
        IoDetail { op, cause, subject: [0; SUBJECT_CAP], subject_len: 0, truncated: false }
    }

    /// The same failure, about `subject` (kept whole if it fits, else its
    /// last bytes, starting on a character boundary).
    pub fn on(mut self, subject: &str) -> Self {
        let mut start = subject.len().saturating_sub(SUBJECT_CAP);
        while !subject.is_char_boundary(start) {
            start += 1;
        }
        let tail = subject.get(start..).unwrap_or_default().as_bytes();
        let n = tail.len().min(SUBJECT_CAP);
        if let (Some(dst), Some(src)) = (self.subject.get_mut(..n), tail.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.subject_len = n as u8;
        self.truncated = start > 0;
        self
    }

    /// The subject kept (empty if none), and whether it was shortened.
    pub fn subject(&self) -> (&str, bool) {
        let bytes = self.subject.get(..usize::from(self.subject_len)).unwrap_or_default();
        (core::str::from_utf8(bytes).unwrap_or_default(), self.truncated)
    }
}

impl fmt::Display for IoDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.op.as_str())?;
        match self.subject() {
            ("", _) => {}
            (s, false) => write!(f, " {s}")?,
            (s, true) => write!(f, " ...{s}")?,
        }
        write!(f, ": {}", self.cause)
    }
}

impl fmt::Debug for IoDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoDetail")
            .field("op", &self.op)
            .field("cause", &self.cause)
            .field("subject", &self.subject())
            .finish()
    }
}

impl core::error::Error for PlatformError {}

/// A measurement as dom0 publishes it ([`Platform::measurement`]): exactly
/// 64 lowercase hex digits, as the 32-byte SHA-256. Anything else is `None`.
pub fn parse_measurement_hex(value: &[u8]) -> Option<[u8; 32]> {
    if value.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(value.chunks_exact(2)) {
        *byte = (nibble(*pair.first()?)? << 4) | nibble(*pair.get(1)?)?;
    }
    Some(out)
}

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

/// When a guest started and when its platform had it configured, on the
/// clock of [`Platform::monotonic_ns`]: for the one start-up report a
/// guest prints after it is ready (`docs/xen-boot.md`, "Boot-to-ready").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootMarks {
    /// The guest's first clock reading (Xen: Xen's system time in
    /// `Boot::init`, 0 when it could not be read yet); a process's start on
    /// the hosted platform.
    pub started_ns: u64,
    /// When the platform had the guest's configuration (Xen: dom0's host
    /// service wrote `ready`); not before `started_ns`.
    pub configured_ns: u64,
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

    /// Waits up to `timeout` for operator input at the console without
    /// reading it: `true` once a byte waits to be read, `false` when the
    /// time is up first. A caller idle at a prompt looks at its links
    /// between waits. Platforms that cannot tell answer `true` at once (the
    /// read then blocks as before); the hosted one does, since polling its
    /// terminal outside raw mode would echo what the operator types.
    fn console_wait_input(&mut self, timeout: Duration) -> Result<bool, PlatformError> {
        let _ = timeout;
        Ok(true)
    }

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

    /// The measurement dom0 took of domain `dom`'s launched image: the
    /// SHA-256 of the kernel file its toolstack loaded, published by dom0
    /// (never by the domain itself). [`PlatformError::MissingConfig`] when
    /// dom0 published none for `dom`; platforms that cannot know return
    /// [`PlatformError::Unsupported`]. Hostile input: a platform returns
    /// only a well-formed 32-byte digest.
    fn measurement(&mut self, dom: DomId) -> Result<[u8; 32], PlatformError> {
        let _ = dom;
        Err(PlatformError::Unsupported)
    }

    /// Resolves a domain name to its id (from the store's
    /// `/local/domain/<id>/name`, which only the toolstack can write).
    fn resolve(&mut self, name: &str) -> Result<DomId, PlatformError>;

    /// Whether the names [`Platform::resolve`] reads may have changed
    /// since the last call (a peer created, destroyed, created again): a
    /// guest that follows its peers looks their names up at once when this
    /// says so, and on its own schedule all the same (a change can be
    /// missed; this is a hint, never a name). The first call may start
    /// watching (Xen: a xenstore watch whose events queue until the next
    /// call), so only a guest that keeps asking for its whole life should
    /// ask at all. The default, `false`, leaves a platform to that
    /// schedule.
    fn names_changed(&mut self) -> bool {
        false
    }

    /// Blocks until one of `ports` has a pending event (consuming it) or the
    /// timeout passes. Returns the port, or `None` on timeout.
    fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, PlatformError>;

    /// The last I/O failure the platform saw, including those of its vchan
    /// backend, whose errors name only a kind
    /// ([`portcullis_vchan::BackendError`]): for a guest to print when it
    /// stops. `None` if there was none, or the platform does not keep it.
    fn last_io_error(&self) -> Option<IoDetail> {
        None
    }

    /// When this guest started and was configured ([`BootMarks`]). The
    /// default, both zero, is right for a platform whose monotonic clock
    /// starts with the guest and whose configuration needs no wait.
    fn boot_marks(&self) -> BootMarks {
        BootMarks::default()
    }

    /// Ends the domain: exit code 0 is a clean poweroff, anything else a crash.
    fn shutdown(&mut self, code: u8) -> !;
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::ToString;

    #[test]
    fn signed_reads_as_the_integer_does() {
        for n in [0, 1, -1, 22, -22, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(format!("{}", Signed(n)), format!("{n}"));
        }
        for n in [i32::MIN, i32::MAX] {
            assert_eq!(format!("{}", Signed(i64::from(n))), format!("{n}"));
        }
    }

    #[test]
    fn io_errors_say_what_failed_on_what_and_why() {
        let e = PlatformError::Io(
            IoDetail::new(IoOp::StoreRead, IoCause::Store("EIO"))
                .on("/local/domain/7/data/portcullis/settings"),
        );
        assert_eq!(
            e.to_string(),
            "platform I/O failed: store read /local/domain/7/data/portcullis/settings: store error EIO"
        );
        let e = PlatformError::Io(IoDetail::new(IoOp::EventWait, IoCause::Errno(22)));
        assert_eq!(e.to_string(), "platform I/O failed: event wait: errno 22");
        let e = PlatformError::Io(IoDetail::new(IoOp::StoreList, IoCause::Timeout).on("/x"));
        assert_eq!(e.to_string(), "platform I/O failed: store directory /x: timed out");
    }

    #[test]
    fn long_subjects_keep_their_end_on_a_char_boundary() {
        let long = std::format!("/local/domain/1/{}/é-node", "d".repeat(100));
        let d = IoDetail::new(IoOp::StoreWrite, IoCause::Protocol).on(&long);
        let (kept, truncated) = d.subject();
        assert!(truncated);
        assert!(kept.len() <= SUBJECT_CAP && kept.ends_with("/é-node"), "{kept}");
        assert!(long.ends_with(kept));
        let odd = std::format!("{}{}", "é".repeat(40), "z");
        let d2 = IoDetail::new(IoOp::Persist, IoCause::Errno(5)).on(&odd);
        let (kept, _) = d2.subject();
        assert!(odd.ends_with(kept) && kept.len() >= SUBJECT_CAP - 1);
        assert!(d.to_string().starts_with("store write ...ddd"), "{d}");
        assert!(core::mem::size_of::<PlatformError>() <= 96);
    }
}
