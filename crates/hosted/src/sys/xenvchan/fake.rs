//! For tests only: an in-process stand-in for libxenvchan behind the same
//! function table, so the safe wrapper's logic (never a call that could
//! block, states, end of stream, waits) is checked without Xen.
//!
//! It keeps libxenvchan's contract as `io.c` states it: `read` and `write`
//! move what they can; with too little data or room, the real library
//! would block (its `blocking` bit is uninitialised), which this one counts
//! as a violation instead; `wait` blocks until an event, counted as a
//! violation if none is pending; `is_open` is the peer's live flag (2: no
//! client yet). Events are bytes on a socket pair per end, whose read side
//! is the end's `fd_for_select`.

use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::Lib;

const SERVER: usize = 0;
const CLIENT: usize = 1;

/// One fake vchan: rings, live flags, each end's doorbell.
struct Shared {
    /// Ring 0 carries client to server, ring 1 server to client.
    rings: [VecDeque<u8>; 2],
    caps: [usize; 2],
    /// Live flag of the server and of the client (2: not yet connected).
    live: [c_int; 2],
    /// Writing a byte here wakes end `i`.
    bells: [UnixStream; 2],
    /// Waiting sides of the bells, taken by the ends.
    waits: [Option<UnixStream>; 2],
    /// Calls the real library could have blocked in.
    violations: usize,
}

impl Shared {
    fn ring(&self, end: usize) {
        let _ = (&self.bells[end]).write(&[1]);
    }
}

/// One end's control structure.
struct End {
    shared: Arc<Mutex<Shared>>,
    me: usize,
    rx: UnixStream,
}

impl End {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn peer(&self) -> usize {
        1 - self.me
    }
    fn rx_ring(&self) -> usize {
        if self.me == SERVER {
            0
        } else {
            1
        }
    }
    fn tx_ring(&self) -> usize {
        1 - self.rx_ring()
    }
}

type Registry = Mutex<HashMap<String, Arc<Mutex<Shared>>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Calls that would have blocked the real library, on the vchan at `path`
/// (live or closed).
pub(crate) fn violations(path: &str) -> usize {
    let reg = registry().lock().unwrap_or_else(PoisonError::into_inner);
    reg.get(path).map_or(0, |s| s.lock().unwrap_or_else(PoisonError::into_inner).violations)
}

/// # Safety
///
/// `ctrl` must come from `fake_server_init` or `fake_client_init` and not
/// be closed.
unsafe fn end<'a>(ctrl: *mut c_void) -> &'a End {
    // SAFETY: per this function's contract, `ctrl` is a live `Box<End>`.
    unsafe { &*ctrl.cast::<End>() }
}

fn path_of(path: *const c_char) -> String {
    // SAFETY: the wrapper passes a NUL-terminated CString.
    unsafe { CStr::from_ptr(path) }.to_string_lossy().into_owned()
}

fn new_end(shared: Arc<Mutex<Shared>>, me: usize) -> *mut c_void {
    let rx = {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.waits[me].take()
    };
    let Some(rx) = rx else { return std::ptr::null_mut() };
    Box::into_raw(Box::new(End { shared, me, rx })).cast()
}

unsafe extern "C" fn fake_server_init(
    _logger: *mut c_void,
    _domid: c_int,
    path: *const c_char,
    read_min: usize,
    write_min: usize,
) -> *mut c_void {
    let path = path_of(path);
    let (Ok((bell0, wait0)), Ok((bell1, wait1))) = (UnixStream::pair(), UnixStream::pair()) else {
        return std::ptr::null_mut();
    };
    let shared = Arc::new(Mutex::new(Shared {
        rings: [VecDeque::new(), VecDeque::new()],
        caps: [read_min.max(1024), write_min.max(2048)],
        live: [1, 2],
        bells: [bell0, bell1],
        waits: [Some(wait0), Some(wait1)],
        violations: 0,
    }));
    registry().lock().unwrap_or_else(PoisonError::into_inner).insert(path.clone(), shared.clone());
    new_end(shared, SERVER)
}

unsafe extern "C" fn fake_client_init(
    _logger: *mut c_void,
    _domid: c_int,
    path: *const c_char,
) -> *mut c_void {
    let path = path_of(path);
    let shared = registry().lock().unwrap_or_else(PoisonError::into_inner).get(&path).cloned();
    let Some(shared) = shared else { return std::ptr::null_mut() };
    {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if s.live[SERVER] == 0 || s.live[CLIENT] != 2 {
            return std::ptr::null_mut();
        }
        s.live[CLIENT] = 1;
        s.ring(SERVER);
    }
    new_end(shared, CLIENT)
}

unsafe extern "C" fn fake_close(ctrl: *mut c_void) {
    // SAFETY: `ctrl` is a live `Box<End>` the wrapper owns and never uses again.
    let end = unsafe { Box::from_raw(ctrl.cast::<End>()) };
    let mut s = end.lock();
    s.live[end.me] = 0;
    s.ring(end.peer());
}

unsafe extern "C" fn fake_read(ctrl: *mut c_void, buf: *mut c_void, size: usize) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    // SAFETY: the wrapper passes a buffer valid for `size` bytes of writes.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) };
    let mut s = end.lock();
    let ring = &mut s.rings[end.rx_ring()];
    if ring.is_empty() {
        s.violations += 1; // the real one may block here
        return 0;
    }
    let n = ring.len().min(size);
    for (dst, src) in buf.iter_mut().zip(ring.drain(..n)) {
        *dst = src;
    }
    s.ring(end.peer());
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn fake_write(ctrl: *mut c_void, data: *const c_void, size: usize) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    // SAFETY: the wrapper passes data valid for `size` bytes of reads.
    let data = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
    let mut s = end.lock();
    if s.live[end.peer()] == 0 {
        return -1;
    }
    let tx = end.tx_ring();
    let space = s.caps[tx] - s.rings[tx].len();
    if size > space {
        s.violations += 1; // the real one may block here
    }
    let n = size.min(space);
    s.rings[tx].extend(&data[..n]);
    s.ring(end.peer());
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn fake_wait(ctrl: *mut c_void) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    let mut rx = &end.rx;
    let _ = rx.set_nonblocking(true);
    let mut byte = [0u8; 64];
    match rx.read(&mut byte) {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            end.lock().violations += 1; // the real one blocks here
            0
        }
        Err(_) => -1,
    }
}

unsafe extern "C" fn fake_fd(ctrl: *mut c_void) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    unsafe { end(ctrl) }.rx.as_raw_fd()
}

unsafe extern "C" fn fake_is_open(ctrl: *mut c_void) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    end.lock().live[end.peer()]
}

unsafe extern "C" fn fake_data_ready(ctrl: *mut c_void) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    c_int::try_from(end.lock().rings[end.rx_ring()].len()).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn fake_buffer_space(ctrl: *mut c_void) -> c_int {
    // SAFETY: the wrapper passes its live control structure.
    let end = unsafe { end(ctrl) };
    let s = end.lock();
    let tx = end.tx_ring();
    c_int::try_from(s.caps[tx] - s.rings[tx].len()).unwrap_or(c_int::MAX)
}

/// The fake library's function table.
pub(crate) fn lib() -> &'static Lib {
    static LIB: OnceLock<Lib> = OnceLock::new();
    LIB.get_or_init(|| Lib {
        name: "fake libxenvchan".into(),
        client_init: fake_client_init,
        server_init: fake_server_init,
        close: fake_close,
        read: fake_read,
        write: fake_write,
        wait: fake_wait,
        fd_for_select: fake_fd,
        is_open: fake_is_open,
        data_ready: fake_data_ready,
        buffer_space: fake_buffer_space,
    })
}
