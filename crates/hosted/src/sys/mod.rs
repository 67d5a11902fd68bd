//! The kernel interfaces the hosted platform uses: shared file mappings,
//! futexes, `getrandom`, and terminal control; and, in [`xenvchan`], Xen's
//! libxenvchan loaded with `dlopen`. Every `unsafe` block of the crate is in
//! this module.

pub(crate) mod xenvchan;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

/// A memory mapping, unmapped on drop. Its contents are only ever accessed
/// through atomics, because other processes change them at any time.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all accesses go
// through `&AtomicU32`/`&AtomicU64` views, which are safe to share between
// threads.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

/// `mmap(2)`.
///
/// # Safety
///
/// With `MAP_FIXED`, `addr..addr + len` must be address space the caller
/// owns and nothing may reference it (the old contents are replaced).
unsafe fn mmap(
    addr: *mut libc::c_void,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    fd: libc::c_int,
    offset: u64,
) -> io::Result<NonNull<u8>> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: without MAP_FIXED mmap picks fresh address space; with it,
    // our caller guarantees the range is theirs and unreferenced.
    let p = unsafe { libc::mmap(addr, len, prot, flags, fd, offset) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::ErrorKind::Other.into())
}

fn prot(writable: bool) -> libc::c_int {
    if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    }
}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset`, shared with every other
    /// process that maps it.
    pub(crate) fn file(file: &File, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: no MAP_FIXED: the kernel chooses unused address space.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                prot(writable),
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )?
        };
        Ok(Mapping { ptr, len })
    }

    /// Reserves `len` bytes of address space (inaccessible until filled in
    /// with [`Mapping::map_fixed`]).
    pub(crate) fn reserve(len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: no MAP_FIXED: the kernel chooses unused address space.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )?
        };
        Ok(Mapping { ptr, len })
    }

    /// Replaces `at..at + len` of this reservation with a shared mapping of
    /// `file` from `offset`.
    pub(crate) fn map_fixed(
        &mut self,
        at: usize,
        file: &File,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<()> {
        let end = at.checked_add(len).ok_or(io::ErrorKind::InvalidInput)?;
        if len == 0 || end > self.len || !at.is_multiple_of(page_size()) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // `at < self.len`, so the address stays inside our own mapping.
        let addr = self.ptr.as_ptr().wrapping_add(at).cast::<libc::c_void>();
        // SAFETY: `addr..addr + len` lies inside this reservation, which we
        // own; `&mut self` guarantees no reference into it is alive.
        unsafe {
            mmap(
                addr,
                len,
                prot(writable),
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset,
            )?;
        }
        Ok(())
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The mapping as 32-bit words.
    pub(crate) fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is page-aligned, `len` bytes long and lives as
        // long as `self`; `AtomicU32` has the size and alignment of `u32`, and
        // every access through it is atomic, so concurrent changes by other
        // processes are not data races.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU32>(), self.len / 4) }
    }

    /// The mapping as 64-bit words.
    pub(crate) fn words64(&self) -> &[AtomicU64] {
        // SAFETY: as for `words`; the mapping is page-aligned, so also
        // 8-aligned, and `AtomicU64` has the size and alignment of `u64` on
        // the 64-bit targets this crate builds for.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// The 32-bit word at byte offset `off` (4-aligned, in bounds).
    pub(crate) fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4), "unaligned word at {off}");
        match self.words().get(off / 4) {
            Some(w) => w,
            None => panic!("word at {off} outside {} mapped bytes", self.len),
        }
    }

    /// The 64-bit word at byte offset `off` (8-aligned, in bounds).
    pub(crate) fn u64_at(&self, off: usize) -> &AtomicU64 {
        let in_bounds = off.checked_add(8).is_some_and(|end| end <= self.len);
        assert!(off.is_multiple_of(8) && in_bounds, "bad 64-bit word at {off}");
        // SAFETY: `off + 8 <= len` (checked above), so `ptr + off` stays
        // inside the one mapping this value owns.
        let word = unsafe { self.ptr.as_ptr().add(off) }.cast::<AtomicU64>();
        // SAFETY: `word..word + 8` is inside the page-aligned mapping and
        // 8-aligned; the reference lives no longer than `self`, and all
        // accesses are atomic (see `words`).
        unsafe { &*word }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is a mapping this value created and owns;
        // no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Sleeps while `word` holds `expected`, until woken or `timeout` passes.
/// Returns early (without error) on wake-ups, signals and value changes.
/// The futex is process-shared, keyed by the file page behind the mapping.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(t.subsec_nanos()),
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call and
    // `ts_ptr` is null or points to a live timespec. FUTEX_WAIT only reads
    // them. The result (woken, EAGAIN, EINTR, ETIMEDOUT) needs no handling:
    // callers re-check their condition and deadline.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every process waiting on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access it
    // beyond using its address as the key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Fills `buf` from the kernel's random number generator.
pub(crate) fn getrandom(mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = usize::try_from(n).map_err(|_| io::ErrorKind::Other)?;
        buf = buf.get_mut(n..).unwrap_or_default();
    }
    Ok(())
}

/// Whether `fd` is a terminal.
pub(crate) fn is_tty(fd: libc::c_int) -> bool {
    // SAFETY: isatty has no memory-safety preconditions.
    unsafe { libc::isatty(fd) == 1 }
}

/// A terminal switched to byte-at-a-time input without kernel echo; the
/// previous settings are restored on drop.
pub(crate) struct RawInput {
    fd: libc::c_int,
    saved: libc::termios,
}

impl RawInput {
    /// Turns off canonical mode and echo on `fd`.
    pub(crate) fn enable(fd: libc::c_int) -> io::Result<Self> {
        // SAFETY: termios is plain data; all-zero is a valid value that
        // tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios read from the same terminal.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawInput { fd, saved })
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: `saved` holds the settings read from this terminal.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// Waits until `fd` is readable; `false` if `timeout` passed first.
pub(crate) fn poll_readable(fd: libc::c_int, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout
        .map_or(-1, |t| libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX));
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `pfd` is one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads one byte from `fd` without buffering; `None` at end of file.
pub(crate) fn read_byte(fd: libc::c_int) -> io::Result<Option<u8>> {
    let mut b = 0u8;
    loop {
        // SAFETY: `b` is valid for a one-byte write.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        match n {
            1 => return Ok(Some(b)),
            0 => return Ok(None),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}
