//! A framed, typed message link over one byte stream.
//!
//! Frames are the vchan crate's length-prefixed frames; each frame is one
//! protocol envelope. Outgoing messages wait in a small bounded queue while
//! the stream is full, so a slow peer never blocks the guest's main loop.
//!
//! Guests use [`Link`], a [`Framed`] over a vchan endpoint. Any other
//! [`Channel`] (on the host: a UNIX socket to Xen's `vchan-socket-proxy`)
//! carries the same frames through the same code.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::time::Duration;

use portcullis_proto::envelope::{AnyRole, DecodeError, Message, Role, MAX_MESSAGE_LEN};
use portcullis_vchan::frame::HEADER_LEN;
use portcullis_vchan::{
    Backend, FrameError, FrameReader, FrameWriter, Port, Transport, Vchan, VchanError,
};

/// Most messages queued for sending on one link.
pub const MAX_QUEUED: usize = 64;

/// Why a link operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The frame layer or the vchan failed (peer gone, broken peer, ...).
    Frame(FrameError),
    /// A frame arrived that is not a valid envelope.
    Decode(DecodeError),
    /// Encoding our own message failed (a bug, reported rather than sent).
    Encode,
    /// The send queue is full.
    QueueFull,
    /// No answer within the time allowed.
    Timeout,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Frame(e) => write!(f, "{e}"),
            LinkError::Decode(e) => write!(f, "bad message: {e}"),
            LinkError::Encode => f.write_str("cannot encode message"),
            LinkError::QueueFull => f.write_str("send queue full"),
            LinkError::Timeout => f.write_str("timed out"),
        }
    }
}

impl core::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            LinkError::Frame(e) => Some(e),
            LinkError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for LinkError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Vchan(VchanError::Timeout) => LinkError::Timeout,
            e => LinkError::Frame(e),
        }
    }
}

impl From<VchanError> for LinkError {
    fn from(e: VchanError) -> Self {
        LinkError::from(FrameError::Vchan(e))
    }
}

/// A byte stream a [`Framed`] link runs over: frames in and out, plus a
/// bounded wait for the peer.
pub trait Channel: Transport {
    /// Waits until the peer may have sent data or made room, or `timeout`
    /// passes ([`VchanError::Timeout`]).
    fn wait(&mut self, timeout: Duration) -> Result<(), VchanError>;
}

impl<B: Backend> Channel for Vchan<B> {
    fn wait(&mut self, timeout: Duration) -> Result<(), VchanError> {
        Vchan::wait(self, Some(timeout))
    }
}

/// A channel with framing and message encoding. It decodes the message
/// types of `A` (by default every type); any other type arrives as
/// [`LinkError::Decode`] with `DecodeError::UnknownType` (see
/// [`crate::inbox`]).
pub struct Framed<C: Channel, A: Role = AnyRole> {
    chan: C,
    rx: FrameReader<Vec<u8>>,
    tx: FrameWriter<Vec<u8>>,
    /// Encoded messages waiting to be sent, oldest first (at most
    /// [`MAX_QUEUED`]; a `Vec`, not a `VecDeque`, for these few: image
    /// size, issue 14).
    queue: Vec<Vec<u8>>,
    accepts: PhantomData<fn() -> A>,
}

/// A vchan endpoint with framing and message encoding (what guests use),
/// decoding the types of `A`.
pub type Link<B, A = AnyRole> = Framed<Vchan<B>, A>;

impl<C: Channel, A: Role> Framed<C, A> {
    /// Wraps a connected (or, for a vchan server, listening) channel.
    pub fn new(chan: C) -> Self {
        Framed {
            chan,
            rx: FrameReader::new(vec![0; MAX_MESSAGE_LEN]),
            tx: FrameWriter::new(vec![0; MAX_MESSAGE_LEN + HEADER_LEN]),
            queue: Vec::new(),
            accepts: PhantomData,
        }
    }

    /// The underlying channel.
    pub fn channel(&mut self) -> &mut C {
        &mut self.chan
    }
}

impl<B: Backend, A: Role> Framed<Vchan<B>, A> {
    /// The vchan endpoint.
    pub fn chan(&mut self) -> &mut Vchan<B> {
        &mut self.chan
    }

    /// The local event channel port, while open.
    pub fn port(&self) -> Option<Port> {
        self.chan.port()
    }

    /// Whether the vchan is open and the peer has not left.
    pub fn is_open(&self) -> bool {
        self.chan.is_open()
    }

    /// Server side: drops the old connection and listens afresh for a new
    /// client, discarding partial frames and queued messages.
    pub fn reinit(&mut self) -> Result<(), LinkError> {
        self.chan.reinit()?;
        self.rx = FrameReader::new(vec![0; MAX_MESSAGE_LEN]);
        self.tx = FrameWriter::new(vec![0; MAX_MESSAGE_LEN + HEADER_LEN]);
        self.queue.clear();
        Ok(())
    }
}

impl<C: Channel, A: Role> Framed<C, A> {
    /// Receives one message if a whole frame has arrived.
    pub fn poll(&mut self) -> Result<Option<Message>, LinkError> {
        match self.rx.poll(&mut self.chan)? {
            None => Ok(None),
            Some(frame) => Message::decode_for::<A>(frame).map(Some).map_err(LinkError::Decode),
        }
    }

    /// Reads and drops up to `max` whole frames without decoding them (what
    /// a peer writes that is never read); returns how many.
    pub fn discard(&mut self, max: usize) -> Result<usize, LinkError> {
        let mut n = 0;
        while n < max && self.rx.poll(&mut self.chan)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Queues a message and sends as much as the ring takes now.
    pub fn send(&mut self, msg: &Message) -> Result<(), LinkError> {
        let bytes = msg.encode_for::<A>().map_err(|_| LinkError::Encode)?;
        if self.queue.len() >= MAX_QUEUED {
            return Err(LinkError::QueueFull);
        }
        self.queue.push(bytes);
        self.pump()
    }

    /// Sends queued messages until the ring is full or the queue is empty.
    pub fn pump(&mut self) -> Result<(), LinkError> {
        loop {
            if !self.tx.flush(&mut self.chan)? {
                return Ok(());
            }
            if self.queue.is_empty() {
                return Ok(());
            }
            let next = self.queue.remove(0);
            self.tx.push(&next)?;
        }
    }

    /// Whether messages are still waiting to be sent.
    pub fn has_queued(&self) -> bool {
        self.tx.is_pending() || !self.queue.is_empty()
    }

    /// Sends a message, waiting for ring space; `timeout` bounds each wait.
    pub fn send_blocking(&mut self, msg: &Message, timeout: Duration) -> Result<(), LinkError> {
        self.send(msg)?;
        while self.has_queued() {
            self.chan.wait(timeout)?;
            self.pump()?;
        }
        Ok(())
    }

    /// Waits for the next message; `timeout` bounds each wait for an event.
    pub fn recv_blocking(&mut self, timeout: Duration) -> Result<Message, LinkError> {
        loop {
            if let Some(m) = self.poll()? {
                return Ok(m);
            }
            self.chan.wait(timeout)?;
        }
    }

    /// Sends a request and waits for the first message back.
    pub fn call(&mut self, msg: &Message, timeout: Duration) -> Result<Message, LinkError> {
        self.send_blocking(msg, timeout)?;
        self.recv_blocking(timeout)
    }
}
