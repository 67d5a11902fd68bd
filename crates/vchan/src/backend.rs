//! What a platform provides to set up and drive a vchan: grant tables,
//! event channels and a xenstore-like key/value store.

use core::fmt::{self, Write as _};
use core::time::Duration;

use crate::shm::SharedMem;

/// A Xen domain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomId(pub u16);

/// A grant reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GrantRef(pub u32);

/// A local event channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

/// Ask the platform to clear a byte and signal an event if this side goes
/// away without closing (gntalloc/gntdev "unmap notify"), so that the peer
/// sees the live byte drop. Backends that cannot do this ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Offset of the byte to clear, in the first page.
    pub offset: usize,
    /// Local port to signal.
    pub port: Port,
}

/// Outcome of a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// An event arrived (or the watched value may have changed).
    Event,
    /// The timeout passed first.
    TimedOut,
}

/// A platform operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// Granting pages failed.
    Grant,
    /// Mapping a peer's grants failed.
    Map,
    /// An event channel operation failed.
    EventChannel,
    /// A key/value store operation failed.
    Store,
    /// The platform refused the operation.
    Denied,
    /// Out of pages, grant entries or ports.
    Exhausted,
}

impl BackendError {
    /// What failed, in a few words (also the `Display` text).
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendError::Grant => "granting pages failed",
            BackendError::Map => "mapping grants failed",
            BackendError::EventChannel => "event channel operation failed",
            BackendError::Store => "store operation failed",
            BackendError::Denied => "permission denied",
            BackendError::Exhausted => "resources exhausted",
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::error::Error for BackendError {}

/// Grant tables, event channels and a key/value store, as one domain sees them.
///
/// A Xen guest implements this with hypercalls and the xenstore ring, a
/// hosted (dom0) build with the gntalloc/gntdev/evtchn devices, and tests
/// with the `sim` module (feature `std`).
pub trait Backend {
    /// A mapping of one or more pages, contiguous in offset.
    type Mem: SharedMem;

    /// This domain's id.
    fn domid(&self) -> DomId;

    /// Allocates `refs.len()` zeroed pages, grants them read-write to `peer`,
    /// stores their references in `refs`, and returns them as one region.
    fn share(
        &mut self,
        peer: DomId,
        refs: &mut [GrantRef],
        notify: Option<UnmapNotify>,
    ) -> Result<Self::Mem, BackendError>;

    /// Revokes and frees pages obtained from [`Backend::share`].
    fn unshare(&mut self, mem: Self::Mem);

    /// Maps pages that `peer` granted us, as one region.
    fn map(
        &mut self,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<Self::Mem, BackendError>;

    /// Unmaps pages obtained from [`Backend::map`].
    fn unmap(&mut self, mem: Self::Mem);

    /// Allocates a port that `peer` may bind to.
    fn alloc_unbound(&mut self, peer: DomId) -> Result<Port, BackendError>;

    /// Binds a local port to `remote` in domain `peer`.
    fn bind_interdomain(&mut self, peer: DomId, remote: Port) -> Result<Port, BackendError>;

    /// Closes a local port.
    fn unbind(&mut self, port: Port);

    /// Signals the peer of a bound port.
    fn notify(&mut self, port: Port) -> Result<(), BackendError>;

    /// Waits until `port` has a pending event (consuming it) or `timeout`
    /// passes; `None` waits forever.
    fn wait(&mut self, port: Port, timeout: Option<Duration>) -> Result<Wait, BackendError>;

    /// Whether the other end of `port` is still bound. Xen sends no event
    /// when a domain is destroyed: it closes the domain's ports, which
    /// leaves our end of each interdomain channel unbound, and nothing in
    /// a destroyed unikernel clears its live byte in the ring. So a
    /// [`crate::Vchan`] waiting on a live-looking peer asks this now and
    /// then ([`crate::PEER_CHECK`]). `Ok(false)` once the peer has closed
    /// its end or its domain is gone. A backend that cannot tell answers
    /// `Ok(true)` (the default): its peers are noticed only by their live
    /// byte.
    fn peer_bound(&mut self, port: Port) -> Result<bool, BackendError> {
        let _ = port;
        Ok(true)
    }

    /// Gives the CPU a moment between two looks at a ring, while a blocking
    /// helper polls before it sleeps ([`crate::Vchan::set_spin`]). The
    /// default is a CPU spin hint; a platform whose peers may share this
    /// CPU (processes on a busy host) yields to the scheduler instead, so
    /// the peer can run and move its index.
    fn relax(&mut self) {
        core::hint::spin_loop();
    }

    /// Writes `value` at `path`, readable by us and by `reader`.
    fn store_write(&mut self, path: &str, value: &str, reader: DomId) -> Result<(), BackendError>;

    /// Reads `path` into `buf`. Returns `None` if absent, otherwise the full
    /// length of the value (which may exceed `buf.len()`; then only a prefix
    /// was copied).
    fn store_read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, BackendError>;

    /// Removes `path` and everything below it.
    fn store_remove(&mut self, path: &str) -> Result<(), BackendError>;

    /// Waits until something at or below `path` may have changed, or
    /// `timeout` passes (a watch). Spurious wake-ups are allowed.
    fn store_wait(&mut self, path: &str, timeout: Option<Duration>) -> Result<Wait, BackendError>;
}

/// Longest store path this crate builds.
const PATH_CAP: usize = 96;

/// A store path in a fixed buffer (no allocation).
#[derive(Clone, Copy)]
pub struct StorePath {
    buf: [u8; PATH_CAP],
    len: usize,
}

impl StorePath {
    /// `/local/domain/<server>/data/vchan/<client>/<port>`, where a server
    /// publishes a vchan's `ring-ref` and `event-channel`.
    pub fn vchan_base(server: DomId, client: DomId, port: u32) -> Self {
        let mut p = StorePath { buf: [0; PATH_CAP], len: 0 };
        // Cannot overflow: at most 14 + 5 + 12 + 5 + 1 + 10 bytes.
        let _ = write!(
            p,
            "/local/domain/{}/data/vchan/{}/{}",
            u32::from(server.0),
            u32::from(client.0),
            port
        );
        p
    }

    /// This path with `/<name>` appended; `None` if it would not fit.
    pub fn child(&self, name: &str) -> Option<Self> {
        let mut p = *self;
        write!(p, "/{name}").ok()?;
        Some(p)
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended, so this is valid UTF-8.
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

impl fmt::Write for StorePath {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decimal number as written by `snprintf("%d")`, for ring-ref and
/// event-channel values. Strict: digits only, no sign, no padding, fits a
/// `u32`, not zero (libxenvchan treats 0 as "absent").
pub fn parse_store_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 10 {
        return None;
    }
    let mut value: u32 = 0;
    for &c in text {
        let digit = c.checked_sub(b'0').filter(|d| *d <= 9)?;
        value = value.checked_mul(10)?.checked_add(digit.into())?;
    }
    (value != 0).then_some(value)
}

/// A `u32` formatted in decimal into a fixed buffer.
pub(crate) struct Decimal {
    buf: [u8; 10],
    start: usize,
}

impl Decimal {
    pub(crate) fn new(mut v: u32) -> Self {
        let mut buf = [b'0'; 10];
        let mut start = buf.len();
        loop {
            start -= 1;
            if let Some(slot) = buf.get_mut(start) {
                *slot = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 || start == 0 {
                break;
            }
        }
        Decimal { buf, start }
    }

    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(self.start..).unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn paths() {
        let base = StorePath::vchan_base(DomId(0), DomId(65535), u32::MAX);
        assert_eq!(base.as_str(), "/local/domain/0/data/vchan/65535/4294967295");
        assert_eq!(
            base.child("event-channel").unwrap().as_str(),
            "/local/domain/0/data/vchan/65535/4294967295/event-channel"
        );
        let long = "x".repeat(60);
        assert!(base.child(&long).is_none());
    }

    #[test]
    fn decimal_round_trip() {
        for v in [1u32, 9, 10, 4095, 1234567, u32::MAX] {
            let d = Decimal::new(v);
            assert_eq!(d.as_str(), v.to_string());
            assert_eq!(parse_store_u32(d.as_str().as_bytes()), Some(v));
        }
        assert_eq!(Decimal::new(0).as_str(), "0");
    }

    #[test]
    fn strict_parsing() {
        for bad in
            [&b""[..], b"0", b"-1", b"+1", b" 1", b"1 ", b"4294967296", b"12345678901", b"1a"]
        {
            assert_eq!(parse_store_u32(bad), None, "{bad:?}");
        }
        assert_eq!(parse_store_u32(b"007"), Some(7));
    }
}
