//! Xen's own libxenvchan, loaded at run time with `dlopen(3)`, so building
//! needs neither Xen's headers nor its libraries.
//!
//! The C interface (Xen 4.17 and later, `tools/include/libxenvchan.h`):
//!
//! - `libxenvchan_client_init(logger, domain, xs_path)` and
//!   `libxenvchan_server_init(logger, domain, xs_path, read_min, write_min)`
//!   return a control structure or NULL. A NULL logger is what Xen's own
//!   tools pass (`vchan-node`, `vchan-socket-proxy`): errors then go to
//!   libxentoollog's default.
//! - `read`/`write` return -1 on error, else the number of bytes moved; they
//!   block or not by a `blocking` bit in the control structure that the init
//!   functions leave uninitialised. We never touch that structure, so the
//!   safe wrapper calls `read` only when `data_ready` says bytes are there and
//!   `write` only with at most `buffer_space` bytes: neither call can block
//!   then, whatever the bit holds.
//! - `wait` reads the event channel device and blocks until an event; it is
//!   called only after `poll(2)` found `fd_for_select` readable.
//! - `is_open`: 0 closed (or the peer crashed), 1 connected, 2 a server whose
//!   client has not come yet.
//!
//! The library handle is never closed: the functions stay valid for the
//! whole process.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::ptr::NonNull;

use crate::xenvchan::XenVchanError;

type ClientInit = unsafe extern "C" fn(*mut c_void, c_int, *const c_char) -> *mut c_void;
type ServerInit =
    unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize, usize) -> *mut c_void;
type Close = unsafe extern "C" fn(*mut c_void);
type Read = unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> c_int;
type Write = unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> c_int;
type Query = unsafe extern "C" fn(*mut c_void) -> c_int;

/// The bound functions of one loaded libxenvchan.
pub(crate) struct Lib {
    /// The file name that was loaded.
    pub(crate) name: String,
    client_init: ClientInit,
    server_init: ServerInit,
    close: Close,
    read: Read,
    write: Write,
    wait: Query,
    fd_for_select: Query,
    is_open: Query,
    data_ready: Query,
    buffer_space: Query,
}

/// The last `dlerror(3)` message, if any.
fn dlerror() -> String {
    // SAFETY: dlerror takes no arguments; it returns NULL or a
    // NUL-terminated string valid until the next dl* call on this thread,
    // which we copy at once.
    let msg = unsafe { libc::dlerror() };
    if msg.is_null() {
        return "no detail from dlerror".to_string();
    }
    // SAFETY: non-NULL, NUL-terminated (dlerror's contract), not freed
    // before this copy.
    unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
}

/// Looks up `symbol` in the library `handle`.
fn symbol(
    handle: NonNull<c_void>,
    library: &str,
    symbol: &'static CStr,
) -> Result<*mut c_void, XenVchanError> {
    // SAFETY: `handle` came from a successful dlopen and is never closed;
    // `symbol` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle.as_ptr(), symbol.as_ptr()) };
    if p.is_null() {
        return Err(XenVchanError::SymbolMissing {
            library: library.to_string(),
            symbol: symbol.to_str().unwrap_or("?"),
            detail: dlerror(),
        });
    }
    Ok(p)
}

/// Binds one function of libxenvchan as the given pointer type.
macro_rules! bind {
    ($handle:expr, $library:expr, $name:literal, $ty:ty) => {{
        let p = symbol($handle, $library, $name)?;
        // SAFETY: `p` is the non-NULL address of this libxenvchan function,
        // whose C prototype (libxenvchan.h, unchanged since Xen 4.2) is the
        // one `$ty` spells; the library stays loaded for the process's life.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
    }};
}

/// Loads the first of `names` that `dlopen` finds and binds its functions.
pub(crate) fn load(names: &[&str]) -> Result<Lib, XenVchanError> {
    let mut details = Vec::new();
    for name in names {
        let Ok(c_name) = CString::new(*name) else { continue };
        // SAFETY: `c_name` is NUL-terminated; loading runs the library's
        // initialisers, which for libxenvchan and its Xen dependencies only
        // set up their own state.
        let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        let Some(handle) = NonNull::new(handle) else {
            details.push(dlerror());
            continue;
        };
        return Ok(Lib {
            name: (*name).to_string(),
            client_init: bind!(handle, name, c"libxenvchan_client_init", ClientInit),
            server_init: bind!(handle, name, c"libxenvchan_server_init", ServerInit),
            close: bind!(handle, name, c"libxenvchan_close", Close),
            read: bind!(handle, name, c"libxenvchan_read", Read),
            write: bind!(handle, name, c"libxenvchan_write", Write),
            wait: bind!(handle, name, c"libxenvchan_wait", Query),
            fd_for_select: bind!(handle, name, c"libxenvchan_fd_for_select", Query),
            is_open: bind!(handle, name, c"libxenvchan_is_open", Query),
            data_ready: bind!(handle, name, c"libxenvchan_data_ready", Query),
            buffer_space: bind!(handle, name, c"libxenvchan_buffer_space", Query),
        });
    }
    Err(XenVchanError::LibraryMissing {
        tried: names.iter().map(|n| (*n).to_string()).collect(),
        detail: details.join("; "),
    })
}

/// Clears `errno`, so an init failure that sets none is not blamed on an
/// older error.
fn clear_errno() {
    // SAFETY: __errno_location takes no arguments and returns this
    // thread's errno.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: that pointer is valid for writes for the thread's life.
    unsafe { errno.write(0) };
}

/// `errno` after a failed call; `None` if the library set none.
fn errno() -> Option<i32> {
    io::Error::last_os_error().raw_os_error().filter(|e| *e != 0)
}

/// One libxenvchan control structure, closed on drop.
pub(crate) struct RawVchan {
    lib: &'static Lib,
    ctrl: NonNull<c_void>,
}

// SAFETY: the control structure is heap memory plus file descriptors owned
// by this value; libxenvchan keeps no thread-local state, and every call
// takes `&mut self`, so one thread at a time uses it.
unsafe impl Send for RawVchan {}

impl RawVchan {
    /// `libxenvchan_client_init(NULL, domid, path)`; `Err(errno)` on NULL.
    pub(crate) fn client(lib: &'static Lib, domid: u16, path: &CStr) -> Result<Self, Option<i32>> {
        clear_errno();
        // SAFETY: NULL logger (Xen's own tools pass it); `path` is
        // NUL-terminated and short enough for the library's 64-byte buffers
        // (checked by the caller); the result is NULL or a control
        // structure we now own.
        let ctrl =
            unsafe { (lib.client_init)(std::ptr::null_mut(), c_int::from(domid), path.as_ptr()) };
        NonNull::new(ctrl).map(|ctrl| RawVchan { lib, ctrl }).ok_or_else(errno)
    }

    /// `libxenvchan_server_init(NULL, domid, path, read_min, write_min)`.
    pub(crate) fn server(
        lib: &'static Lib,
        domid: u16,
        path: &CStr,
        read_min: usize,
        write_min: usize,
    ) -> Result<Self, Option<i32>> {
        clear_errno();
        // SAFETY: as in `client`; the ring sizes are checked by the caller
        // (the library refuses over 1 MiB itself, too).
        let ctrl = unsafe {
            (lib.server_init)(
                std::ptr::null_mut(),
                c_int::from(domid),
                path.as_ptr(),
                read_min,
                write_min,
            )
        };
        NonNull::new(ctrl).map(|ctrl| RawVchan { lib, ctrl }).ok_or_else(errno)
    }

    /// `libxenvchan_read` into `buf` (at most `c_int::MAX` bytes): -1 on
    /// error, else the bytes read. Blocks unless `data_ready` was non-zero.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> c_int {
        let len = buf.len().min(c_int::MAX as usize);
        // SAFETY: `ctrl` is live; `buf` is valid for `len` bytes of writes.
        unsafe { (self.lib.read)(self.ctrl.as_ptr(), buf.as_mut_ptr().cast(), len) }
    }

    /// `libxenvchan_write` of `data` (at most `c_int::MAX` bytes): -1 on
    /// error, else the bytes written. Blocks unless `data` fits in
    /// `buffer_space`.
    pub(crate) fn write(&mut self, data: &[u8]) -> c_int {
        let len = data.len().min(c_int::MAX as usize);
        // SAFETY: `ctrl` is live; `data` is valid for `len` bytes of reads.
        unsafe { (self.lib.write)(self.ctrl.as_ptr(), data.as_ptr().cast(), len) }
    }

    fn query(&mut self, f: Query) -> c_int {
        // SAFETY: `ctrl` is live and `f` is one of the library's
        // single-argument functions taking it.
        unsafe { f(self.ctrl.as_ptr()) }
    }

    /// `libxenvchan_wait`: consumes one pending event (blocks if none).
    pub(crate) fn wait(&mut self) -> c_int {
        self.query(self.lib.wait)
    }

    /// `libxenvchan_fd_for_select`: the event channel's file descriptor.
    pub(crate) fn fd(&mut self) -> c_int {
        self.query(self.lib.fd_for_select)
    }

    /// `libxenvchan_is_open`: 0 closed, 1 connected, 2 server not yet connected.
    pub(crate) fn is_open(&mut self) -> c_int {
        self.query(self.lib.is_open)
    }

    /// `libxenvchan_data_ready`: bytes ready to read.
    pub(crate) fn data_ready(&mut self) -> c_int {
        self.query(self.lib.data_ready)
    }

    /// `libxenvchan_buffer_space`: bytes that can be written now.
    pub(crate) fn buffer_space(&mut self) -> c_int {
        self.query(self.lib.buffer_space)
    }
}

impl Drop for RawVchan {
    fn drop(&mut self) {
        // SAFETY: `ctrl` is live and never used again: close frees it,
        // unmaps the rings, tells the peer and (server) removes the xenstore
        // nodes.
        unsafe { (self.lib.close)(self.ctrl.as_ptr()) }
    }
}

#[cfg(test)]
pub(crate) mod fake;
