//! Message framing over a byte stream: a 4-byte big-endian length, then
//! that many bytes.
//!
//! Big-endian because it is the usual order for length prefixes on the wire
//! (TLS records, SSH packets, gRPC messages) and reads naturally in a hex
//! dump; nothing else in a frame depends on the host's byte order.
//!
//! Neither side allocates: each works in a buffer the caller provides, whose
//! length is the largest payload accepted ([`DEFAULT_MAX_FRAME`] matches
//! `portcullis-proto`'s `MAX_MESSAGE_LEN`). Both sides survive partial
//! transfers of any size, down to one byte per call.

use core::fmt;
use core::time::Duration;

use crate::backend::Backend;
use crate::vchan::Vchan;
use crate::VchanError;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;
/// Default largest payload, the protocol's largest message.
pub const DEFAULT_MAX_FRAME: usize = 65536;

/// A byte stream frames travel over.
pub trait Transport {
    /// Reads what is available; `Ok(0)` means nothing yet.
    /// [`VchanError::PeerClosed`] means the stream has ended.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError>;
    /// Writes what fits; `Ok(0)` means no room yet.
    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError>;
    /// Closes the stream after a framing violation by the peer.
    fn abort(&mut self);
}

impl<B: Backend> Transport for Vchan<B> {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        let arm = !self.is_quiet();
        self.read_with(buf, arm)
    }
    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        self.write(data)
    }
    fn abort(&mut self) {
        self.shutdown();
    }
}

/// Why a frame could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A header announced more than the maximum; the stream was closed.
    Oversize {
        /// The announced length.
        len: u32,
        /// The maximum accepted.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    TruncatedFrame,
    /// A payload to send is larger than the writer's buffer.
    TooLarge,
    /// The writer still holds an unsent frame.
    Busy,
    /// The transport failed (including a clean end between frames:
    /// [`VchanError::PeerClosed`]).
    Vchan(VchanError),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
            FrameError::TruncatedFrame => f.write_str("stream ended inside a frame"),
            FrameError::TooLarge => f.write_str("payload larger than the frame buffer"),
            FrameError::Busy => f.write_str("previous frame not yet sent"),
            FrameError::Vchan(e) => write!(f, "transport: {e}"),
        }
    }
}

impl core::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            FrameError::Vchan(e) => Some(e),
            _ => None,
        }
    }
}

impl From<VchanError> for FrameError {
    fn from(e: VchanError) -> Self {
        FrameError::Vchan(e)
    }
}

/// Maps a transport error, turning an end of stream inside a frame into
/// [`FrameError::TruncatedFrame`].
fn ended(e: VchanError, mid_frame: bool) -> FrameError {
    match e {
        VchanError::PeerClosed if mid_frame => FrameError::TruncatedFrame,
        e => FrameError::Vchan(e),
    }
}

/// Reassembles frames from a transport into a caller-provided buffer.
#[derive(Debug)]
pub struct FrameReader<Buf> {
    buf: Buf,
    max: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload length, once the header is complete.
    body_len: Option<usize>,
    body_filled: usize,
    /// The last call returned a complete frame; start afresh next time.
    delivered: bool,
}

impl<Buf: AsRef<[u8]> + AsMut<[u8]>> FrameReader<Buf> {
    /// A reader accepting payloads up to `buf`'s length.
    pub fn new(buf: Buf) -> Self {
        let max = buf.as_ref().len();
        FrameReader {
            buf,
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            body_len: None,
            body_filled: 0,
            delivered: false,
        }
    }

    /// A reader accepting payloads up to `max` bytes (at most `buf`'s length).
    pub fn with_max(buf: Buf, max: usize) -> Self {
        let mut r = Self::new(buf);
        r.max = r.max.min(max);
        r
    }

    /// Largest payload accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether part of a frame has been received.
    pub fn in_frame(&self) -> bool {
        !self.delivered && (self.header_len > 0 || self.body_len.is_some())
    }

    fn reset(&mut self) {
        self.header_len = 0;
        self.body_len = None;
        self.body_filled = 0;
        self.delivered = false;
    }

    /// Receives what is available. Returns the payload once a frame is
    /// complete, `None` if more bytes are needed.
    pub fn poll<T: Transport + ?Sized>(&mut self, t: &mut T) -> Result<Option<&[u8]>, FrameError> {
        Ok(match self.poll_len(t)? {
            Some(len) => Some(self.buf.as_ref().get(..len).unwrap_or_default()),
            None => None,
        })
    }

    /// Like [`FrameReader::poll`], returning the payload length.
    fn poll_len<T: Transport + ?Sized>(&mut self, t: &mut T) -> Result<Option<usize>, FrameError> {
        if self.delivered {
            self.reset();
        }
        let body_len = match self.body_len {
            Some(len) => len,
            None => {
                while self.header_len < HEADER_LEN {
                    let rest = self.header.get_mut(self.header_len..).unwrap_or_default();
                    let n = t.recv(rest).map_err(|e| ended(e, self.header_len > 0))?;
                    if n == 0 {
                        return Ok(None);
                    }
                    self.header_len += n;
                }
                let len = u32::from_be_bytes(self.header);
                let fits = usize::try_from(len).ok().filter(|l| *l <= self.max);
                let Some(len) = fits else {
                    self.reset();
                    t.abort();
                    return Err(FrameError::Oversize { len, max: self.max });
                };
                self.body_len = Some(len);
                len
            }
        };
        while self.body_filled < body_len {
            let rest = self.buf.as_mut().get_mut(self.body_filled..body_len).unwrap_or_default();
            let n = t.recv(rest).map_err(|e| ended(e, true))?;
            if n == 0 {
                return Ok(None);
            }
            self.body_filled += n;
        }
        self.delivered = true;
        Ok(Some(body_len))
    }

    /// Receives one whole frame from a vchan, waiting for events as needed.
    /// `timeout` bounds each wait.
    pub fn recv_blocking<B: Backend>(
        &mut self,
        v: &mut Vchan<B>,
        timeout: Option<Duration>,
    ) -> Result<&[u8], FrameError> {
        let len = loop {
            if let Some(len) = self.poll_len(v)? {
                break len;
            }
            v.wait(timeout).map_err(|e| ended(e, self.in_frame()))?;
        };
        Ok(self.buf.as_ref().get(..len).unwrap_or_default())
    }
}

/// Sends frames through a transport from a caller-provided buffer.
#[derive(Debug)]
pub struct FrameWriter<Buf> {
    buf: Buf,
    header: [u8; HEADER_LEN],
    /// Payload length of the pending frame.
    len: usize,
    /// Bytes of header + payload sent so far.
    sent: usize,
    pending: bool,
    /// Where the pending payload starts in `buf`: [`HEADER_LEN`] when the
    /// header is in `buf` just before it, so the whole frame goes out in
    /// one write (one event for the peer, not one for the header and one
    /// for the payload); 0 for a payload within [`HEADER_LEN`] of the
    /// buffer's length, whose header goes out first, from `header`.
    at: usize,
}

impl<Buf: AsRef<[u8]> + AsMut<[u8]>> FrameWriter<Buf> {
    /// A writer accepting payloads up to `buf`'s length. A payload at
    /// least [`HEADER_LEN`] bytes shorter than `buf` goes out with its
    /// header in one write, so the peer gets one event per frame: give the
    /// buffer [`HEADER_LEN`] bytes more than the largest payload.
    pub fn new(buf: Buf) -> Self {
        FrameWriter { buf, header: [0; HEADER_LEN], len: 0, sent: 0, pending: false, at: 0 }
    }

    /// Largest payload accepted.
    pub fn max(&self) -> usize {
        self.buf.as_ref().len().min(u32::MAX as usize)
    }

    /// Whether a frame is waiting to be (fully) sent.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Queues one frame. Fails if one is still pending or `payload` is
    /// larger than the buffer.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        if self.pending {
            return Err(FrameError::Busy);
        }
        if payload.len() > self.max() {
            return Err(FrameError::TooLarge);
        }
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge)?;
        self.header = len.to_be_bytes();
        let buf = self.buf.as_mut();
        // Header and payload side by side when there is room.
        self.at = if buf.len() - payload.len() >= HEADER_LEN { HEADER_LEN } else { 0 };
        let dst = buf.get_mut(self.at..self.at + payload.len()).ok_or(FrameError::TooLarge)?;
        dst.copy_from_slice(payload);
        let head = self.header.get(..self.at).unwrap_or_default();
        buf.get_mut(..self.at).unwrap_or_default().copy_from_slice(head);
        self.len = payload.len();
        self.sent = 0;
        self.pending = true;
        Ok(())
    }

    /// Sends as much of the pending frame as fits. Returns `true` when
    /// nothing is pending any more. If the peer goes away after part of the
    /// frame was sent, fails with [`FrameError::TruncatedFrame`].
    pub fn flush<T: Transport + ?Sized>(&mut self, t: &mut T) -> Result<bool, FrameError> {
        while self.pending {
            let chunk = if self.sent < HEADER_LEN - self.at {
                self.header.get(self.sent..).unwrap_or_default()
            } else {
                // Frame byte `sent` is at `sent - HEADER_LEN + at` in `buf`.
                let from = self.sent + self.at - HEADER_LEN;
                self.buf.as_ref().get(from..self.at + self.len).unwrap_or_default()
            };
            let n = match t.send(chunk) {
                Ok(n) => n,
                Err(e) => {
                    let mid = self.sent > 0;
                    self.pending = false;
                    return Err(ended(e, mid));
                }
            };
            if n == 0 {
                return Ok(false);
            }
            self.sent += n;
            if self.sent >= HEADER_LEN + self.len {
                self.pending = false;
            }
        }
        Ok(true)
    }

    /// Sends one whole frame over a vchan, waiting for room as needed.
    /// `timeout` bounds each wait.
    pub fn send_blocking<B: Backend>(
        &mut self,
        v: &mut Vchan<B>,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<(), FrameError> {
        // Finish any earlier frame first.
        while !self.flush(v)? {
            v.wait(timeout).map_err(|e| ended(e, self.sent > 0))?;
        }
        self.push(payload)?;
        while !self.flush(v)? {
            v.wait(timeout).map_err(|e| ended(e, self.sent > 0))?;
        }
        Ok(())
    }
}
