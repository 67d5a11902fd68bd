//! dom0's xenstore connection: `portcullis_xen::xenstore::Client` over a
//! byte stream, xenstored's UNIX socket or, without it, the kernel's
//! `/dev/xen/xenbus`. Both carry the same messages as the shared ring
//! (`xs_wire.h`). A reader thread moves whatever arrives into a channel, so
//! waiting for a reply or a watch event has a deadline.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use portcullis_xen::xenstore::client::{
    Client, Perm, StoreRing, Tx, REQUEST_TIMEOUT_NS, SLOW_REPLY_NS,
};
use portcullis_xen::xenstore::wire::{Errno, Op, XsError};

/// The kernel's xenstore device, used when xenstored's socket is absent.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// Most attempts of a transaction that xenstored asks to retry (`EAGAIN`).
pub const MAX_TX_ATTEMPTS: usize = 16;

/// Most chunks read ahead of the watcher (each at most one message's size).
const READ_QUEUE: usize = 256;

/// The write half of the connection.
enum Writer {
    Socket(UnixStream),
    Device(File),
}

/// A [`StoreRing`] over a byte stream.
pub struct StreamRing {
    writer: Writer,
    rx: Receiver<io::Result<Vec<u8>>>,
    pending: VecDeque<u8>,
    closed: Option<String>,
    start: Instant,
}

impl std::fmt::Debug for StreamRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRing").field("pending", &self.pending.len()).finish()
    }
}

/// The host's xenstore connection.
pub type Store = Client<StreamRing>;

/// Where the connection went.
pub fn describe(socket: &Path) -> String {
    if socket.exists() {
        socket.display().to_string()
    } else {
        XENBUS_DEVICE.to_string()
    }
}

/// Connects to xenstored's socket at `socket`, or, if there is none,
/// to [`XENBUS_DEVICE`].
pub fn connect(socket: &Path) -> io::Result<Store> {
    let (writer, reader): (Writer, Box<dyn Read + Send>) = if socket.exists() {
        let s = UnixStream::connect(socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        let r = s.try_clone()?;
        (Writer::Socket(s), Box::new(r))
    } else {
        let f = OpenOptions::new().read(true).write(true).open(XENBUS_DEVICE).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{} does not exist and {XENBUS_DEVICE}: {e}", socket.display()),
            )
        })?;
        let r = f.try_clone()?;
        (Writer::Device(f), Box::new(r))
    };
    Ok(Client::new(StreamRing::new(writer, reader)))
}

/// A connection over an already connected UNIX socket (tests).
#[cfg(test)]
pub fn over_socket(s: UnixStream) -> io::Result<Store> {
    let r = s.try_clone()?;
    Ok(Client::new(StreamRing::new(Writer::Socket(s), Box::new(r))))
}

impl StreamRing {
    fn new(writer: Writer, mut reader: Box<dyn Read + Send>) -> StreamRing {
        // Bounded: if the watcher falls behind, the reader waits and
        // xenstored keeps the rest.
        let (tx, rx) = mpsc::sync_channel(READ_QUEUE);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096 + 16];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "xenstore closed the connection",
                        )));
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Ok(buf.get(..n).unwrap_or_default().to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        StreamRing { writer, rx, pending: VecDeque::new(), closed: None, start: Instant::now() }
    }

    /// Why the connection ended, if it did.
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    fn take(&mut self, got: io::Result<Vec<u8>>) {
        match got {
            Ok(bytes) => self.pending.extend(bytes),
            Err(e) => self.closed = Some(e.to_string()),
        }
    }
}

impl StoreRing for StreamRing {
    fn write(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        let r = match &mut self.writer {
            Writer::Socket(s) => s.write_all(bytes),
            Writer::Device(f) => f.write_all(bytes),
        };
        match r {
            Ok(()) => Ok(bytes.len()),
            Err(e) => {
                self.closed = Some(e.to_string());
                Err(XsError::Transport)
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        // Empty or disconnected: the reader's last word (an error) was
        // already taken.
        while let Ok(got) = self.rx.try_recv() {
            self.take(got);
        }
        if self.pending.is_empty() && self.closed.is_some() {
            return Err(XsError::Transport);
        }
        let n = buf.len().min(self.pending.len());
        for (slot, b) in buf.iter_mut().zip(self.pending.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }

    fn notify(&mut self) -> Result<(), XsError> {
        Ok(())
    }

    fn now_ns(&mut self) -> Result<u64, XsError> {
        Ok(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn slow(&mut self, op: Op) {
        super::log::warn(format_args!(
            "xenstore: no reply to {op:?} after {} s; still waiting (up to {} s)",
            SLOW_REPLY_NS / 1_000_000_000,
            REQUEST_TIMEOUT_NS / 1_000_000_000
        ));
    }

    fn wait(&mut self, deadline_ns: u64) -> Result<(), XsError> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        if self.closed.is_some() {
            return Err(XsError::Transport);
        }
        let now = self.now_ns()?;
        if now >= deadline_ns {
            return Err(XsError::Timeout);
        }
        match self.rx.recv_timeout(Duration::from_nanos(deadline_ns - now)) {
            Ok(got) => {
                self.take(got);
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(XsError::Timeout),
            Err(RecvTimeoutError::Disconnected) => {
                self.closed.get_or_insert_with(|| "xenstore reader stopped".into());
                Err(XsError::Transport)
            }
        }
    }
}

/// Runs `body` in a transaction, retrying the whole of it while xenstored
/// answers the commit with `EAGAIN` (at most [`MAX_TX_ATTEMPTS`] times).
/// An error inside `body` aborts the transaction and is returned.
pub fn in_tx<T>(
    c: &mut Store,
    mut body: impl FnMut(&mut Store, Tx) -> Result<T, XsError>,
) -> Result<T, XsError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tx = c.transaction_start()?;
        let value = match body(c, tx) {
            Ok(v) => v,
            Err(e) => {
                let _ = c.transaction_end(tx, false);
                return Err(e);
            }
        };
        match c.transaction_end(tx, true) {
            Ok(()) => return Ok(value),
            Err(XsError::Daemon(Errno::Again)) if attempt < MAX_TX_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes `value` at `path` and gives it the permissions `n0 r<domid>`
/// (owner dom0, `domid` may read, nobody else).
pub fn write_for(
    c: &mut Store,
    tx: Tx,
    path: &str,
    value: &[u8],
    domid: u16,
) -> Result<(), XsError> {
    c.write(tx, path, value)?;
    c.set_perms(tx, path, &[Perm::None(dom(0)), Perm::Read(dom(domid))])
}

/// A domain id as the xenstore client takes it.
pub fn dom(id: u16) -> portcullis_vchan::DomId {
    portcullis_vchan::DomId(id)
}
