//! Links over a UNIX socket: how dom0 tools reach the guests through Xen's
//! own `vchan-socket-proxy` (libxenvchan on one side, a socket on the other).
//!
//! The proxy copies bytes both ways unchanged, so the socket carries exactly
//! the frames a vchan would: a 4-byte big-endian length, then one CBOR
//! envelope. [`SocketChannel`] makes a `UnixStream` a [`Channel`] so the same
//! [`Framed`] link code runs over it.

use portcullis_apps::link::{Channel, Framed};
use portcullis_vchan::{Transport, VchanError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes read ahead by a wait (the next `recv` hands them out first).
const READ_AHEAD: usize = 16 * 1024;

/// A connected UNIX stream socket as a link channel.
///
/// Reads never block: `recv` returns what has arrived. `wait` blocks, up to
/// its timeout, until data arrives (reading it ahead into a small buffer),
/// so no `poll(2)` and no `unsafe` are needed.
pub struct SocketChannel {
    stream: UnixStream,
    ahead: Vec<u8>,
    taken: usize,
    eof: bool,
}

impl SocketChannel {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> SocketChannel {
        SocketChannel { stream, ahead: Vec::new(), taken: 0, eof: false }
    }

    /// Whether the stream has ended (closed by the peer or failed).
    pub fn is_ended(&self) -> bool {
        self.eof && self.buffered().is_empty()
    }

    fn buffered(&self) -> &[u8] {
        self.ahead.get(self.taken..).unwrap_or_default()
    }

    /// A failed stream is an ended one: the link reports the peer gone.
    fn failed(&mut self, _e: std::io::Error) -> VchanError {
        self.eof = true;
        VchanError::PeerClosed
    }
}

impl Transport for SocketChannel {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        let have = self.buffered();
        if !have.is_empty() {
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
            self.taken += n;
            return Ok(n);
        }
        if self.eof {
            return Err(VchanError::PeerClosed);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.stream.set_nonblocking(true) {
            return Err(self.failed(e));
        }
        let r = self.stream.read(buf);
        let _ = self.stream.set_nonblocking(false);
        match r {
            Ok(0) => {
                self.eof = true;
                Err(VchanError::PeerClosed)
            }
            Ok(n) => Ok(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        if self.eof && self.buffered().is_empty() {
            return Err(VchanError::PeerClosed);
        }
        // Blocking write: our messages are small and the socket buffer is
        // large, so this does not stall; a dead peer fails it.
        match self.stream.write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn abort(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.eof = true;
    }
}

impl Channel for SocketChannel {
    fn wait(&mut self, timeout: Duration) -> Result<(), VchanError> {
        if !self.buffered().is_empty() || self.eof {
            return Ok(()); // the next recv has something to say
        }
        self.ahead.clear();
        self.taken = 0;
        self.ahead.resize(READ_AHEAD, 0);
        // A zero timeout means "block forever" to the socket API.
        let timeout = timeout.max(Duration::from_millis(1));
        if let Err(e) = self.stream.set_read_timeout(Some(timeout)) {
            self.ahead.clear();
            return Err(self.failed(e));
        }
        let r = self.stream.read(&mut self.ahead);
        match r {
            Ok(n) => {
                self.ahead.truncate(n);
                self.eof = n == 0;
                Ok(())
            }
            Err(e) => {
                self.ahead.clear();
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(VchanError::Timeout),
                    ErrorKind::Interrupted => Ok(()),
                    _ => Err(self.failed(e)),
                }
            }
        }
    }
}

/// A framed link over a UNIX socket.
pub type SocketLink = Framed<SocketChannel>;

/// Connects to the socket at `path`, retrying until `patience` runs out
/// (the proxy may not have created it yet).
pub fn connect(path: &Path, patience: Duration) -> Result<SocketLink, String> {
    let deadline = Instant::now() + patience;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(Framed::new(SocketChannel::new(s))),
            Err(e) if Instant::now() >= deadline => return Err(format!("{}: {e}", path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Listens at `path` (replacing a stale socket file) for the proxy to
/// connect to.
pub fn listen(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_apps::link::LinkError;
    use portcullis_proto::envelope::Message;
    use portcullis_proto::msg::{KeysetReq, RequestId};

    fn pair() -> (SocketLink, SocketLink) {
        let (a, b) = UnixStream::pair().unwrap();
        (Framed::new(SocketChannel::new(a)), Framed::new(SocketChannel::new(b)))
    }

    #[test]
    fn message_crosses_a_socket_pair() {
        let (mut a, mut b) = pair();
        let req = Message::KeysetReq(KeysetReq { request_id: RequestId([7; 16]) });
        a.send_blocking(&req, Duration::from_secs(1)).unwrap();
        let got = b.recv_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(got.encode().unwrap(), req.encode().unwrap());
    }

    #[test]
    fn frames_split_across_writes_reassemble() {
        let (a, mut b) = pair();
        let mut raw = raw(a);
        let req = Message::KeysetReq(KeysetReq { request_id: RequestId([9; 16]) });
        let body = req.encode().unwrap();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        for chunk in bytes.chunks(3) {
            raw.write_all(chunk).unwrap();
        }
        let got = b.recv_blocking(Duration::from_secs(5)).unwrap();
        assert_eq!(got.encode().unwrap(), body);
    }

    #[test]
    fn nothing_sent_times_out_and_close_ends_the_link() {
        let (a, mut b) = pair();
        assert_eq!(b.recv_blocking(Duration::from_millis(20)).err(), Some(LinkError::Timeout));
        drop(a);
        match b.recv_blocking(Duration::from_secs(5)) {
            Err(LinkError::Frame(_)) => {}
            other => panic!("expected the link to end, got {other:?}"),
        }
    }

    #[test]
    fn oversize_header_is_refused() {
        let (a, mut b) = pair();
        let mut raw = raw(a);
        raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
        match b.recv_blocking(Duration::from_secs(5)) {
            Err(LinkError::Frame(portcullis_vchan::FrameError::Oversize { .. })) => {}
            other => panic!("expected an oversize refusal, got {other:?}"),
        }
    }

    /// The raw stream under a link, to write arbitrary bytes.
    fn raw(mut link: SocketLink) -> UnixStream {
        link.channel().stream.try_clone().unwrap()
    }
}
