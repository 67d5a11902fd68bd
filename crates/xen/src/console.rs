//! The console: Xen's PV console ring when there is one, otherwise the
//! 0xe9 debug port (QEMU's `-debugcon`, or Xen's guest log).
//!
//! Ring output translates `\n` to `\r\n`, as a terminal on `xl console`
//! expects; the debug port gets the text unchanged.
//! Input is line-edited by [`LineEditor`]: backspace and DEL erase, Ctrl-U
//! erases the line, CR or LF ends it, other control bytes are ignored, and
//! echo can be switched off (for the TOTP code).

use core::fmt;
use core::sync::atomic::{fence, Ordering};

use portcullis_vchan::{Port, SharedMem};
use spin::mutex::SpinMutex;

use crate::abi::console as ring;
use crate::page::SharedPages;

/// Why console input failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleError {
    /// This console has no input (the debug port).
    NoInput,
    /// The peer left the ring indexes inconsistent.
    Corrupt,
    /// No complete line before the timeout.
    Timeout,
    /// Waiting for the console event failed.
    Event,
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConsoleError::NoInput => "console has no input",
            ConsoleError::Corrupt => "console ring indexes corrupt",
            ConsoleError::Timeout => "console input timed out",
            ConsoleError::Event => "console event wait failed",
        })
    }
}

impl core::error::Error for ConsoleError {}

/// Bytes a ring of `size` holds between `cons` and `prod`, or `None` if the
/// indexes are inconsistent (more than `size` apart).
pub fn ring_used(prod: u32, cons: u32, size: u32) -> Option<u32> {
    let used = prod.wrapping_sub(cons);
    (used <= size).then_some(used)
}

/// What the line editor did with one input byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// Keep reading; write these bytes back to the terminal (may be empty).
    More(&'static [u8]),
    /// Echo this one byte and keep reading.
    Echo(u8),
    /// The line is complete with this many bytes; write `\r\n`.
    Done(usize),
}

/// Line editing over a caller's buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineEditor {
    len: usize,
}

impl LineEditor {
    /// Bytes in the line so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the line is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds one byte. Printable bytes beyond `buf`'s capacity are dropped.
    pub fn feed(&mut self, byte: u8, buf: &mut [u8], echo: bool) -> Edit {
        match byte {
            b'\r' | b'\n' => {
                let n = self.len;
                self.len = 0;
                Edit::Done(n)
            }
            0x08 | 0x7f => {
                if self.len == 0 {
                    return Edit::More(b"");
                }
                self.len -= 1;
                Edit::More(if echo { b"\x08 \x08" } else { b"" })
            }
            0x15 => {
                // Ctrl-U erases the line; with echo, return to column 0
                // and clear to the end of the terminal line.
                let had = self.len;
                self.len = 0;
                Edit::More(if echo && had > 0 { b"\r\x1b[K" } else { b"" })
            }
            0x20..=0x7e => match buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = byte;
                    self.len += 1;
                    if echo {
                        Edit::Echo(byte)
                    } else {
                        Edit::More(b"")
                    }
                }
                None => Edit::More(b"\x07"),
            },
            _ => Edit::More(b""),
        }
    }
}

/// The PV console ring and its event channel.
#[derive(Debug)]
pub struct RingConsole {
    page: SharedPages,
    port: Port,
}

impl RingConsole {
    /// Wraps the ring page and port from `HVM_PARAM_CONSOLE_{PFN,EVTCHN}`.
    pub fn new(page: SharedPages, port: Port) -> Self {
        RingConsole { page, port }
    }

    fn notify(&self) {
        let _ = crate::evtchn::send(self.port);
    }

    /// Queues `bytes`, waiting (bounded) for the backend when the ring is
    /// full. Output is dropped if the backend never drains it.
    fn write(&self, bytes: &[u8]) -> Result<(), ConsoleError> {
        let mut rest = bytes;
        let mut stalls = 0u32;
        while !rest.is_empty() {
            let cons = self.page.load_u32(ring::OUT_CONS);
            let prod = self.page.load_u32(ring::OUT_PROD);
            let used = ring_used(prod, cons, ring::OUT_SIZE).ok_or(ConsoleError::Corrupt)?;
            let free = (ring::OUT_SIZE - used) as usize;
            if free == 0 {
                self.notify();
                stalls += 1;
                if stalls > 100 {
                    return Ok(());
                }
                let _ = crate::evtchn::wait_any(&[self.port], Some(10_000_000));
                continue;
            }
            let n = free.min(rest.len());
            for (i, &b) in rest.iter().take(n).enumerate() {
                let idx = prod.wrapping_add(i as u32) % ring::OUT_SIZE;
                self.page.store_u8(ring::OUT + idx as usize, b);
            }
            fence(Ordering::Release);
            self.page.store_u32(ring::OUT_PROD, prod.wrapping_add(n as u32));
            rest = rest.get(n..).unwrap_or_default();
        }
        self.notify();
        Ok(())
    }

    /// The input ring's consumer index and the bytes waiting after it
    /// (each index read once).
    fn input(&self) -> Result<(u32, usize), ConsoleError> {
        let cons = self.page.load_u32(ring::IN_CONS);
        let prod = self.page.load_u32(ring::IN_PROD);
        let avail = ring_used(prod, cons, ring::IN_SIZE).ok_or(ConsoleError::Corrupt)?;
        Ok((cons, avail as usize))
    }

    /// Whether input bytes wait to be read.
    fn has_input(&self) -> Result<bool, ConsoleError> {
        Ok(self.input()?.1 > 0)
    }

    /// Takes up to `dst.len()` input bytes.
    fn read(&self, dst: &mut [u8]) -> Result<usize, ConsoleError> {
        let (cons, avail) = self.input()?;
        fence(Ordering::Acquire);
        let n = avail.min(dst.len());
        for (i, slot) in dst.iter_mut().take(n).enumerate() {
            let idx = cons.wrapping_add(i as u32) % ring::IN_SIZE;
            *slot = self.page.load_u8(ring::IN + idx as usize);
        }
        fence(Ordering::Release);
        self.page.store_u32(ring::IN_CONS, cons.wrapping_add(n as u32));
        if n > 0 {
            self.notify();
        }
        Ok(n)
    }
}

/// Where console text goes.
#[derive(Debug)]
pub enum Console {
    /// I/O port 0xe9 (output only).
    DebugPort,
    /// Xen's PV console ring.
    Ring(RingConsole),
}

impl Console {
    fn write_raw(&self, bytes: &[u8]) {
        match self {
            Console::DebugPort => {
                for &b in bytes {
                    debug_port_write(b);
                }
            }
            Console::Ring(r) => {
                let _ = r.write(bytes);
            }
        }
    }

    /// Writes text; on the ring (a terminal) `\n` becomes `\r\n`.
    pub fn write_text(&self, text: &[u8]) {
        if let Console::DebugPort = self {
            return self.write_raw(text);
        }
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.write_raw(b"\r\n");
            }
            self.write_raw(line);
        }
    }

    /// Waits up to `timeout_ns` of Xen system time for input, without
    /// taking it: whether a byte waits to be read.
    pub fn wait_input(&self, timeout_ns: u64) -> Result<bool, ConsoleError> {
        let Console::Ring(r) = self else {
            return Err(ConsoleError::NoInput);
        };
        let start = crate::xen::system_time_ns().ok_or(ConsoleError::Event)?;
        loop {
            if r.has_input()? {
                return Ok(true);
            }
            let spent = crate::xen::system_time_ns().unwrap_or(u64::MAX).saturating_sub(start);
            if spent >= timeout_ns {
                return Ok(false);
            }
            crate::evtchn::wait_any(&[r.port], Some(timeout_ns - spent))
                .map_err(|_| ConsoleError::Event)?;
        }
    }

    /// Reads one edited line into `buf`; `timeout_ns` of Xen system time.
    pub fn read_line(
        &self,
        buf: &mut [u8],
        echo: bool,
        timeout_ns: Option<u64>,
    ) -> Result<usize, ConsoleError> {
        let Console::Ring(r) = self else {
            return Err(ConsoleError::NoInput);
        };
        let start = crate::xen::system_time_ns().ok_or(ConsoleError::Event)?;
        let mut editor = LineEditor::default();
        let mut chunk = [0u8; 64];
        loop {
            let n = r.read(&mut chunk)?;
            for &b in chunk.get(..n).unwrap_or_default() {
                match editor.feed(b, buf, echo) {
                    Edit::More(out) => r.write(out)?,
                    Edit::Echo(c) => r.write(&[c])?,
                    Edit::Done(len) => {
                        r.write(b"\r\n")?;
                        return Ok(len);
                    }
                }
            }
            if n > 0 {
                continue;
            }
            let left = match timeout_ns {
                Some(t) => {
                    let spent =
                        crate::xen::system_time_ns().unwrap_or(u64::MAX).saturating_sub(start);
                    if spent >= t {
                        return Err(ConsoleError::Timeout);
                    }
                    Some(t - spent)
                }
                None => None,
            };
            crate::evtchn::wait_any(&[r.port], left).map_err(|_| ConsoleError::Event)?;
        }
    }
}

/// Writes one byte to port 0xe9.
pub fn debug_port_write(b: u8) {
    // SAFETY: port 0xe9 is QEMU's debugcon or Xen's guest log port; writing
    // it has no effect on guest memory (and is ignored where nothing listens).
    unsafe { crate::arch::outb(0xe9, b) }
}

static CONSOLE: SpinMutex<Console> = SpinMutex::new(Console::DebugPort);

/// Makes `console` the one [`write_str`] and [`read_line`] use.
pub fn install(console: Console) {
    *CONSOLE.lock() = console;
}

/// Whether the console is the PV ring.
pub fn is_ring() -> bool {
    matches!(*CONSOLE.lock(), Console::Ring(_))
}

/// Writes text to the console.
pub fn write_str(s: &str) {
    CONSOLE.lock().write_text(s.as_bytes());
}

/// Reads an edited line (see [`Console::read_line`]).
pub fn read_line(
    buf: &mut [u8],
    echo: bool,
    timeout_ns: Option<u64>,
) -> Result<usize, ConsoleError> {
    CONSOLE.lock().read_line(buf, echo, timeout_ns)
}

/// Waits for input (see [`Console::wait_input`]).
pub fn wait_input(timeout_ns: u64) -> Result<bool, ConsoleError> {
    CONSOLE.lock().wait_input(timeout_ns)
}

/// Writes text even if the console lock is held (for the panic handler):
/// the ring if it can be locked, the debug port otherwise.
pub fn emergency_write(s: &str) {
    match CONSOLE.try_lock() {
        Some(c) => c.write_text(s.as_bytes()),
        None => s.bytes().for_each(debug_port_write),
    }
}

/// A `fmt::Write` sink for the console.
pub struct Writer;

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// Prints to the console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::console::Writer, format_args!($($arg)*));
    }};
}

/// Prints a line to the console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        input: &[u8],
        cap: usize,
        echo: bool,
    ) -> (std::vec::Vec<u8>, Option<usize>, std::vec::Vec<u8>) {
        let mut buf = std::vec![0u8; cap];
        let mut ed = LineEditor::default();
        let mut shown = std::vec::Vec::new();
        for &b in input {
            match ed.feed(b, &mut buf, echo) {
                Edit::More(out) => shown.extend_from_slice(out),
                Edit::Echo(c) => shown.push(c),
                Edit::Done(n) => return (buf[..n].to_vec(), Some(n), shown),
            }
        }
        (buf[..ed.len()].to_vec(), None, shown)
    }

    #[test]
    fn backspace_and_del_erase() {
        let (line, done, shown) = run(b"abx\x08c\x7fd\r", 16, true);
        assert_eq!(line, b"abd");
        assert_eq!(done, Some(3));
        assert_eq!(shown, b"abx\x08 \x08c\x08 \x08d");
    }

    #[test]
    fn no_echo_shows_nothing() {
        let (line, done, shown) = run(b"123\x08456\n", 16, false);
        assert_eq!((line.as_slice(), done), (&b"12456"[..], Some(5)));
        assert!(shown.is_empty());
    }

    #[test]
    fn overflow_rings_the_bell_and_control_bytes_are_ignored() {
        let (line, done, shown) = run(b"ab\x01\x1bcd\r", 3, true);
        assert_eq!((line.as_slice(), done), (&b"abc"[..], Some(3)));
        assert_eq!(shown, b"abc\x07");
    }

    #[test]
    fn backspace_on_empty_and_kill_line() {
        let (line, done, _) = run(b"\x08\x08xy\x15z\n", 8, true);
        assert_eq!((line.as_slice(), done), (&b"z"[..], Some(1)));
    }

    #[test]
    fn ring_indexes() {
        assert_eq!(ring_used(5, 3, 8), Some(2));
        assert_eq!(ring_used(1, u32::MAX - 2, 8), Some(4));
        assert_eq!(ring_used(3, 3, 8), Some(0));
        assert_eq!(ring_used(12, 3, 8), None);
        assert_eq!(ring_used(3, 5, 8), None);
    }
}
