//! [`XenPlatform`]: `portcullis_platform::Platform` for a PVH domain, and
//! [`XenBackend`], the vchan backend over grant tables, event channels and
//! xenstore.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use portcullis_platform::{
    BootMarks, ConfigItem, IoCause, IoDetail, IoOp, Platform, PlatformError,
};
use portcullis_vchan::backend::UnmapNotify;
use portcullis_vchan::{Backend, BackendError, DomId, GrantRef, Port, SharedMem, Wait};
use spin::mutex::SpinMutex;

use crate::dom0::{self, store_cause};
use crate::entropy::HwEntropy;
use crate::grant::{self, GrantError, Mapping};
use crate::page::SharedPages;
use crate::reclaim::{Granted, Reclaimer};
use crate::xenstore::wire::{Errno, XsError, PAYLOAD_MAX};
use crate::xenstore::{Perm, Tx, Xenstore};
use crate::{abi, console, evtchn, xen, Boot};

static STORE: SpinMutex<Option<Xenstore>> = SpinMutex::new(None);

/// The last I/O failure of the platform or its vchan backend.
static LAST_IO: SpinMutex<Option<IoDetail>> = SpinMutex::new(None);

/// Keeps `detail` as the last I/O failure and returns it.
fn note(detail: IoDetail) -> IoDetail {
    *LAST_IO.lock() = Some(detail);
    detail
}

/// Granted pages whose grants the peer still held when we gave them up.
static RECLAIM: SpinMutex<Reclaimer> = SpinMutex::new(Reclaimer::new());

/// Ends a grant we made; false while the peer still maps the page.
fn end_grant(r: GrantRef) -> bool {
    grant::end_access(r).is_ok()
}

/// Returns an allocation whose grants have all ended to the heap.
fn free_granted(g: Granted) {
    // SAFETY: allocated in `share` with exactly this layout at this
    // address; every grant of it has ended, so no peer can reach it, and
    // the `XenMem` that accessed it was consumed by `unshare`.
    unsafe { dealloc(g.base as *mut u8, g.layout) };
}

/// Revokes what can be revoked of `g` and frees it, or keeps it pending.
fn release_granted(g: Granted) {
    let done = RECLAIM.lock().release(g, &mut end_grant);
    if let Some(g) = done {
        free_granted(g);
    }
}

/// Tries again to end the grants of pages given up earlier, freeing those
/// whose peers have let go. Called on every share, unshare and wait.
fn reclaim_pending() {
    let mut freed = Vec::new();
    RECLAIM.lock().retry(&mut end_grant, &mut |g| freed.push(g));
    freed.into_iter().for_each(free_granted);
}

/// Pages granted to peers that are waiting for the peers to unmap them
/// (see `reclaim`); reported for diagnostics.
pub fn pending_reclaim_pages() -> usize {
    RECLAIM.lock().pending_pages()
}

/// Runs `f` on the xenstore connection, connecting on first use.
pub fn with_store<T>(f: impl FnOnce(&mut Xenstore) -> Result<T, XsError>) -> Result<T, XsError> {
    let mut guard = STORE.lock();
    f(store_in(&mut guard)?)
}

/// The xenstore connection in `slot`, connecting first if there is none
/// yet. Out of line: one copy for every [`with_store`] (image size, issue
/// 14).
#[inline(never)]
fn store_in(slot: &mut Option<Xenstore>) -> Result<&mut Xenstore, XsError> {
    if slot.is_none() {
        *slot = Some(Xenstore::connect()?);
    }
    slot.as_mut().ok_or(XsError::Transport)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Most pages one [`Backend::share`] or [`Backend::map`] handles.
pub const MAX_PAGES: usize = 256;

#[derive(Debug)]
enum Origin {
    /// Our heap pages, granted to a peer.
    Granted { refs: Vec<GrantRef>, layout: Layout },
    /// A peer's grants, mapped into window frames.
    Mapped { pfn: u64, mappings: Vec<Mapping> },
}

/// Pages shared with a peer (granted by us or mapped from it).
#[derive(Debug)]
pub struct XenMem {
    pages: SharedPages,
    origin: Origin,
}

impl SharedMem for XenMem {
    fn len(&self) -> usize {
        self.pages.len()
    }
    fn load_u8(&self, off: usize) -> u8 {
        self.pages.load_u8(off)
    }
    fn store_u8(&self, off: usize, value: u8) {
        self.pages.store_u8(off, value)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.pages.load_u16(off)
    }
    fn store_u16(&self, off: usize, value: u16) {
        self.pages.store_u16(off, value)
    }
    fn load_u32(&self, off: usize) -> u32 {
        self.pages.load_u32(off)
    }
    fn store_u32(&self, off: usize, value: u32) {
        self.pages.store_u32(off, value)
    }
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        self.pages.fetch_or_u8(off, bits)
    }
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        self.pages.fetch_and_u8(off, bits)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.pages.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.pages.write_bytes(off, src)
    }
}

fn grant_err(e: GrantError) -> BackendError {
    match e {
        GrantError::Exhausted => BackendError::Exhausted,
        GrantError::Xen(x) if x.0 == -1 || x.0 == -13 => BackendError::Denied,
        _ => BackendError::Grant,
    }
}

/// Whether xenstored refused access (`EACCES` or `EPERM`).
fn store_denied(e: &XsError) -> bool {
    matches!(e, XsError::Daemon(Errno::Acces | Errno::Perm))
}

/// A store failure of `op` on `path` as the platform reports it: what was
/// done, on which node, and the store's error, timeout or protocol fault.
fn platform_store_err(op: IoOp, path: &str, e: XsError) -> PlatformError {
    noted(dom0::store_error(op, path, e))
}

/// Keeps the detail of an I/O failure for `Platform::last_io_error`.
fn noted(e: PlatformError) -> PlatformError {
    if let PlatformError::Io(detail) = e {
        note(detail);
    }
    e
}

/// Runs `f` on the xenstore connection (connecting on first use); `f`
/// maps its own failures, a failed connect is reported as such.
fn store_session<T>(
    f: impl FnOnce(&mut Xenstore) -> Result<T, PlatformError>,
) -> Result<T, PlatformError> {
    let mut guard = STORE.lock();
    f(connected(&mut guard)?)
}

/// [`store_in`] with a failed connect as the platform reports it. Out of
/// line: one copy for every [`store_session`] (image size, issue 14).
#[inline(never)]
fn connected(slot: &mut Option<Xenstore>) -> Result<&mut Xenstore, PlatformError> {
    store_in(slot)
        .map_err(|e| PlatformError::Io(note(IoDetail::new(IoOp::StoreConnect, store_cause(e)))))
}

/// An event channel wait failure: Xen's error code as a positive errno.
fn wait_err(e: crate::hypercall::XenError) -> PlatformError {
    let errno = i32::try_from(e.0.saturating_neg()).unwrap_or(i32::MAX);
    PlatformError::Io(note(IoDetail::new(IoOp::EventWait, IoCause::Errno(errno))))
}

/// A store failure of `op` on `path` as the vchan backend reports it (a
/// kind only; the detail is kept for `Platform::last_io_error`).
///
/// Refusals are not kept: a vchan client reads the server's nodes and is
/// refused until they are published, which is no failure.
fn store_err(op: IoOp, path: &str, e: XsError) -> BackendError {
    if store_denied(&e) {
        BackendError::Denied
    } else {
        note(IoDetail::new(op, store_cause(e)).on(path));
        BackendError::Store
    }
}

/// The vchan backend of a Xen domain. All handles share the domain's grant
/// table, event channels and xenstore connection.
#[derive(Clone, Debug)]
pub struct XenBackend {
    domid: DomId,
}

impl XenBackend {
    fn watch_token(path: &str) -> String {
        format!("portcullis:{path}")
    }
}

impl Backend for XenBackend {
    type Mem = XenMem;

    fn domid(&self) -> DomId {
        self.domid
    }

    fn share(
        &mut self,
        peer: DomId,
        refs: &mut [GrantRef],
        _notify: Option<UnmapNotify>,
    ) -> Result<XenMem, BackendError> {
        // A guest has no unmap-notify: if it dies, Xen tears its grants
        // down and the peer sees the event channel close instead.
        let n = refs.len();
        if n == 0 || n > MAX_PAGES {
            return Err(BackendError::Exhausted);
        }
        // Pages a peer held on to are given back first; while too many are
        // still held, no more are handed out (the loss stays bounded).
        reclaim_pending();
        if !RECLAIM.lock().admits() {
            return Err(BackendError::Exhausted);
        }
        let layout = Layout::from_size_align(n * abi::PAGE_SIZE, abi::PAGE_SIZE)
            .map_err(|_| BackendError::Exhausted)?;
        // SAFETY: `layout` has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        if base.is_null() {
            return Err(BackendError::Exhausted);
        }
        let mut granted = Vec::with_capacity(n);
        for i in 0..n {
            let gfn = (base as u64 >> abi::PAGE_SHIFT) + i as u64;
            match grant::grant_access(peer, gfn, false) {
                Ok(r) => granted.push(r),
                Err(e) => {
                    // The references were never published, but revoke
                    // through the same path in case a peer guessed one.
                    release_granted(Granted { base: base as usize, layout, refs: granted });
                    return Err(grant_err(e));
                }
            }
        }
        refs.copy_from_slice(&granted);
        // SAFETY: a fresh heap allocation of `layout.size()` bytes, owned by
        // the returned value until `unshare`, accessed only through it.
        let pages = unsafe { SharedPages::new(base as usize, layout.size()) };
        Ok(XenMem { pages, origin: Origin::Granted { refs: granted, layout } })
    }

    fn unshare(&mut self, mem: XenMem) {
        if let Origin::Granted { refs, layout } = mem.origin {
            // A page the peer still maps cannot be revoked now (a closing
            // client unmaps just after it leaves; a destroyed peer's
            // mappings go when Xen has torn it down): it waits in RECLAIM
            // and is freed once every grant of its allocation has ended.
            release_granted(Granted { base: mem.pages.addr(), layout, refs });
        }
        reclaim_pending();
    }

    fn map(
        &mut self,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
        _notify: Option<UnmapNotify>,
    ) -> Result<XenMem, BackendError> {
        let n = refs.len();
        if n == 0 || n > MAX_PAGES {
            return Err(BackendError::Exhausted);
        }
        let pfn = xen::alloc_frames(n as u64).ok_or(BackendError::Exhausted)?;
        let mut mappings = Vec::with_capacity(n);
        for (i, &r) in refs.iter().enumerate() {
            let gpa = (pfn + i as u64) << abi::PAGE_SHIFT;
            match grant::map(peer, r, gpa, writable) {
                Ok(m) => mappings.push(m),
                Err(_) => {
                    for m in mappings {
                        let _ = grant::unmap(m);
                    }
                    xen::free_frames(pfn, n as u64);
                    return Err(BackendError::Map);
                }
            }
        }
        // SAFETY: the frames were just populated by Xen with the peer's
        // pages, inside the identity map; `XenMem` is their only accessor.
        let pages =
            unsafe { SharedPages::new((pfn as usize) << abi::PAGE_SHIFT, n * abi::PAGE_SIZE) };
        Ok(XenMem { pages, origin: Origin::Mapped { pfn, mappings } })
    }

    fn unmap(&mut self, mem: XenMem) {
        if let Origin::Mapped { pfn, mappings } = mem.origin {
            let n = mappings.len() as u64;
            let failed = mappings.into_iter().filter(|&m| grant::unmap(m).is_err()).count();
            let all_unmapped = failed == 0;
            if all_unmapped {
                xen::free_frames(pfn, n);
            }
        }
    }

    fn alloc_unbound(&mut self, peer: DomId) -> Result<Port, BackendError> {
        evtchn::alloc_unbound(peer).map_err(|_| BackendError::EventChannel)
    }

    fn bind_interdomain(&mut self, peer: DomId, remote: Port) -> Result<Port, BackendError> {
        evtchn::bind_interdomain(peer, remote).map_err(|_| BackendError::EventChannel)
    }

    fn unbind(&mut self, port: Port) {
        let _ = evtchn::close(port);
        evtchn::take_pending(port);
    }

    fn notify(&mut self, port: Port) -> Result<(), BackendError> {
        evtchn::send(port).map_err(|_| BackendError::EventChannel)
    }

    fn peer_bound(&mut self, port: Port) -> Result<bool, BackendError> {
        // Xen closes a destroyed domain's ports, leaving ours unbound.
        evtchn::status(port)
            .map(|s| s == abi::evtchn::STAT_INTERDOMAIN)
            .map_err(|_| BackendError::EventChannel)
    }

    fn wait(&mut self, port: Port, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        reclaim_pending();
        match evtchn::wait_any(&[port], timeout.map(nanos)) {
            Ok(Some(_)) => Ok(Wait::Event),
            Ok(None) => Ok(Wait::TimedOut),
            Err(_) => Err(BackendError::EventChannel),
        }
    }

    fn store_write(&mut self, path: &str, value: &str, reader: DomId) -> Result<(), BackendError> {
        let me = self.domid;
        with_store(|s| {
            s.write(Tx::NONE, path, value.as_bytes())?;
            s.set_perms(Tx::NONE, path, &[Perm::None(me), Perm::Read(reader)])
        })
        .map_err(|e| store_err(IoOp::StoreWrite, path, e))
    }

    fn store_read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let value = with_store(|s| s.read(Tx::NONE, path))
            .map_err(|e| store_err(IoOp::StoreRead, path, e))?;
        Ok(value.map(|v| {
            let n = v.len().min(buf.len());
            buf[..n].copy_from_slice(&v[..n]);
            v.len()
        }))
    }

    fn store_remove(&mut self, path: &str) -> Result<(), BackendError> {
        with_store(|s| s.rm(Tx::NONE, path)).map_err(|e| store_err(IoOp::StoreRemove, path, e))
    }

    fn store_wait(&mut self, path: &str, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        let token = Self::watch_token(path);
        with_store(|s| {
            if !s.is_watched(path, &token) {
                s.watch(path, &token)?;
            }
            s.wait_watch(&token, timeout.map(nanos))
        })
        .map(|fired| if fired { Wait::Event } else { Wait::TimedOut })
        .map_err(|e| store_err(IoOp::StoreWatch, path, e))
    }
}

/// Why [`XenPlatform::new`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformSetupError {
    /// Not running on Xen.
    NoXen,
    /// The grant table could not be mapped.
    Grant(GrantError),
    /// Xenstore was unreachable, or `domid`/`name` unreadable.
    Store(XsError),
}

impl core::fmt::Display for PlatformSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlatformSetupError::NoXen => f.write_str("not running on Xen"),
            PlatformSetupError::Grant(e) => write!(f, "{e}"),
            PlatformSetupError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for PlatformSetupError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            PlatformSetupError::Grant(e) => Some(e),
            PlatformSetupError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// `Platform` for a PVH domain on Xen.
#[derive(Debug)]
pub struct XenPlatform {
    domid: DomId,
    name: String,
    entropy: HwEntropy,
    marks: BootMarks,
}

impl XenPlatform {
    /// Sets up grants and xenstore and learns this domain's id and name.
    pub fn new(boot: &Boot) -> Result<XenPlatform, PlatformSetupError> {
        if boot.xen.is_none() {
            return Err(PlatformSetupError::NoXen);
        }
        grant::init().map_err(PlatformSetupError::Grant)?;
        let (domid, name) = with_store(|s| {
            let id = s.read(Tx::NONE, "domid")?.ok_or(XsError::Daemon(Errno::NoEnt))?;
            let id = core::str::from_utf8(&id)
                .ok()
                .and_then(|t| t.parse::<u16>().ok())
                .ok_or(XsError::Protocol)?;
            let name = s.read(Tx::NONE, "name")?.unwrap_or_default();
            Ok((DomId(id), String::from_utf8(name).map_err(|_| XsError::Protocol)?))
        })
        .map_err(PlatformSetupError::Store)?;
        Ok(XenPlatform {
            domid,
            name,
            entropy: HwEntropy::new(),
            marks: BootMarks { started_ns: boot.started_ns, configured_ns: 0 },
        })
    }

    /// Where dom0's host service leaves a configuration item:
    /// `/local/domain/<id>/portcullis/<key>` (see [`dom0`]).
    pub fn config_path(&self, item: ConfigItem) -> String {
        dom0::config_path(self.domid, item)
    }

    /// Where [`Platform::persist`] hands an item to dom0:
    /// `/local/domain/<id>/data/portcullis-persist/<key>`, under the
    /// domain's own writable `data` directory (everything under
    /// `.../portcullis/` is dom0's and read-only to the domain).
    pub fn persist_path(&self, item: ConfigItem) -> String {
        dom0::persist_path(self.domid, item)
    }

    /// Blocks until dom0's `portcullis host` service has configured this
    /// domain (`/local/domain/<id>/portcullis/ready` exists; it is written
    /// after every item and name), watching the node. Says
    /// `<name>: waiting for dom0's portcullis host service` on the console
    /// once, and again every 30 s while it waits.
    pub fn wait_configured(&mut self) -> Result<(), PlatformError> {
        let ready = dom0::ready_path(self.domid);
        let name = self.name.clone();
        store_session(|s| {
            dom0::wait_ready(s, &ready, dom0::READY_NOTICE_EVERY_NS, || {
                crate::println!("{name}: waiting for dom0's portcullis host service");
            })
        })
        .map_err(noted)?;
        // A start the clock could not give (0), or one after this (a
        // clock not set up then), counts as now: the report then starts
        // at the configuration, and says so (config 0 ms).
        let configured_ns = self.monotonic_ns();
        let started = self.marks.started_ns;
        let started_ns =
            if started > 0 && started <= configured_ns { started } else { configured_ns };
        self.marks = BootMarks { started_ns, configured_ns };
        Ok(())
    }
}

impl Platform for XenPlatform {
    type Backend = XenBackend;

    fn backend(&self) -> XenBackend {
        XenBackend { domid: self.domid }
    }

    fn domid(&self) -> DomId {
        self.domid
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn now_unix(&self) -> u64 {
        xen::unix_seconds().unwrap_or(0)
    }

    fn monotonic_ns(&self) -> u64 {
        xen::system_time_ns().unwrap_or(0)
    }

    fn console_write(&mut self, text: &str) {
        console::write_str(text);
    }

    fn console_read_line(
        &mut self,
        buf: &mut [u8],
        echo: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, PlatformError> {
        console::read_line(buf, echo, timeout.map(nanos)).map_err(|e| match e {
            console::ConsoleError::Timeout => PlatformError::Timeout,
            _ => PlatformError::Console,
        })
    }

    fn console_wait_input(&mut self, timeout: Duration) -> Result<bool, PlatformError> {
        console::wait_input(nanos(timeout)).map_err(|_| PlatformError::Console)
    }

    fn hw_entropy(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        self.entropy.fill(buf).map_err(|_| PlatformError::NoEntropy)
    }

    fn config(&mut self, item: ConfigItem, buf: &mut [u8]) -> Result<usize, PlatformError> {
        let path = self.config_path(item);
        let value = store_session(|s| {
            s.read(Tx::NONE, &path).map_err(|e| platform_store_err(IoOp::StoreRead, &path, e))
        })?
        .ok_or(PlatformError::MissingConfig)?;
        let dst = buf.get_mut(..value.len()).ok_or(PlatformError::BadConfig)?;
        dst.copy_from_slice(&value);
        Ok(value.len())
    }

    /// Hands the item to dom0's host service through xenstore (one node
    /// write, so atomic) and waits up to 5 s for the service to acknowledge
    /// that exactly these bytes are durable on its disk
    /// (`.../portcullis/persist-ack/<key>` = their hex SHA-256). Without the
    /// acknowledgement: `Io(persist <ack node>: timed out)`. An item larger
    /// than one xenstore payload is refused.
    fn persist(&mut self, item: ConfigItem, bytes: &[u8]) -> Result<(), PlatformError> {
        let path = self.persist_path(item);
        if path.len() + 1 + bytes.len() > PAYLOAD_MAX {
            return Err(PlatformError::BadConfig);
        }
        let ack = dom0::ack_path(self.domid, item);
        store_session(|s| dom0::persist(s, &path, &ack, bytes, dom0::PERSIST_ACK_TIMEOUT_NS))
            .map_err(noted)
    }

    /// Reads the domain id dom0's host service published for `name` in
    /// this domain's own `.../portcullis/names/` (only Portcullis guests
    /// are there; no other domain's nodes are read).
    /// Reads dom0's measurement of `dom` from this domain's
    /// `portcullis/measurements/<dom>` (`docs/host.md`), again on every
    /// call; absent is [`PlatformError::MissingConfig`].
    fn measurement(&mut self, dom: DomId) -> Result<[u8; 32], PlatformError> {
        let me = self.domid;
        store_session(|s| dom0::measurement(s, me, dom)).map_err(noted)
    }

    /// A watch on this domain's `names/` (see [`dom0::names_changed`]);
    /// a store failure answers yes (look again: the look-up says what
    /// failed).
    fn names_changed(&mut self) -> bool {
        let names = dom0::names_dir(self.domid);
        store_session(|s| dom0::names_changed(s, &names, 0)).map_err(noted).unwrap_or(true)
    }

    fn resolve(&mut self, name: &str) -> Result<DomId, PlatformError> {
        let me = self.domid;
        store_session(|s| dom0::resolve(s, me, name)).map_err(noted)
    }

    fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, PlatformError> {
        reclaim_pending();
        evtchn::wait_any(ports, timeout.map(nanos)).map_err(wait_err)
    }

    fn last_io_error(&self) -> Option<IoDetail> {
        *LAST_IO.lock()
    }

    fn boot_marks(&self) -> BootMarks {
        self.marks
    }

    fn shutdown(&mut self, code: u8) -> ! {
        crate::shutdown(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn store_failures_keep_operation_path_and_cause() {
        let path = "/local/domain/5/portcullis/settings";
        let e = platform_store_err(IoOp::StoreRead, path, XsError::Timeout);
        assert_eq!(e, PlatformError::Io(IoDetail::new(IoOp::StoreRead, IoCause::Timeout).on(path)));
        assert_eq!(
            e.to_string(),
            "platform I/O failed: store read /local/domain/5/portcullis/settings: timed out"
        );
        let e = platform_store_err(IoOp::StoreWrite, "/p", XsError::Daemon(Errno::NoSpc));
        assert_eq!(e.to_string(), "platform I/O failed: store write /p: store error ENOSPC");
        let e = platform_store_err(
            IoOp::StoreWatch,
            "/local/domain/5/portcullis/ready",
            XsError::Protocol,
        );
        assert!(e.to_string().ends_with(
            "store watch /local/domain/5/portcullis/ready: malformed or unexpected reply"
        ));
        assert_eq!(
            platform_store_err(IoOp::StoreRead, "/p", XsError::Daemon(Errno::Acces)),
            PlatformError::Denied
        );
        assert_eq!(
            wait_err(crate::hypercall::XenError(-22)).to_string(),
            "platform I/O failed: event wait: errno 22"
        );
        // The vchan backend's store failures keep their detail (for
        // `last_io_error`); a refusal does not count.
        let path = "/local/domain/3/data/vchan/4/9001/ring-ref";
        assert_eq!(store_err(IoOp::StoreRead, path, XsError::Protocol), BackendError::Store);
        let kept = *LAST_IO.lock();
        assert_eq!(kept, Some(IoDetail::new(IoOp::StoreRead, IoCause::Protocol).on(path)));
        assert_eq!(
            store_err(IoOp::StoreRead, "/x", XsError::Daemon(Errno::Acces)),
            BackendError::Denied
        );
        assert_eq!(*LAST_IO.lock(), kept);
    }
}
