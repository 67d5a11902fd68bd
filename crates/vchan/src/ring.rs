//! One endpoint's view of a connected vchan: the byte rings and the
//! notification protocol of libxenvchan's `tools/libs/vchan/io.c`, sans I/O.
//!
//! [`Channel`] never sends events itself. Each operation reports whether the
//! peer asked to be told about it ([`Io::notify`]); the caller then signals
//! the event channel. That keeps this module free of any backend and lets
//! tests and the fuzzer drive it directly over [`crate::shm::AtomicMem`].
//!
//! Hostile-peer rules:
//! - The ring orders are validated once, when the channel is built, and kept
//!   privately; every ring offset is `index & (size - 1)` of that private size.
//! - Our own index (consumer of the read ring, producer of the write ring) is
//!   kept privately and only ever written to the page.
//! - The peer's index is loaded once into a local, validated (`prod - cons`,
//!   wrapping, may not exceed the ring size) and only that local is used.
//!   A bad value closes the channel with [`VchanError::BrokenPeer`].

use core::sync::atomic::{fence, Ordering};

use crate::layout::{
    Dir, Geometry, CLI_LIVE, CLI_NOTIFY, LIVE_CONNECTED, LIVE_EXITED, LIVE_WAITING, NOTIFY_READ,
    NOTIFY_WRITE, PAGE_SIZE, SRV_LIVE, SRV_NOTIFY,
};
use crate::shm::SharedMem;
use crate::VchanError;

/// A write publishes its producer index after each of up to this many
/// pieces of the ring ([`Channel::write_piece`]).
pub const WRITE_PIECES: usize = 4;

/// The smallest piece a write publishes on its own (bytes): an order-10
/// ring is published whole, an order-11 ring in halves. Smaller pieces were
/// measured slower (`docs/vchan.md`, "Publishing in pieces").
pub const WRITE_PIECE_MIN: usize = 1024;

/// Which end of the vchan this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Created the page; reads the left ring, writes the right ring.
    Server,
    /// Mapped the page; reads the right ring, writes the left ring.
    Client,
}

impl Role {
    const fn read_dir(self) -> Dir {
        match self {
            Role::Server => Dir::Left,
            Role::Client => Dir::Right,
        }
    }

    const fn write_dir(self) -> Dir {
        match self {
            Role::Server => Dir::Right,
            Role::Client => Dir::Left,
        }
    }

    /// Our live byte.
    const fn own_live(self) -> usize {
        match self {
            Role::Server => SRV_LIVE,
            Role::Client => CLI_LIVE,
        }
    }

    /// The peer's live byte.
    const fn peer_live(self) -> usize {
        match self {
            Role::Server => CLI_LIVE,
            Role::Client => SRV_LIVE,
        }
    }

    /// The byte where the peer asks *us* for events (we clear it on sending).
    const fn own_notify(self) -> usize {
        match self {
            Role::Server => SRV_NOTIFY,
            Role::Client => CLI_NOTIFY,
        }
    }

    /// The byte where we ask the *peer* for events.
    const fn peer_notify(self) -> usize {
        match self {
            Role::Server => CLI_NOTIFY,
            Role::Client => SRV_NOTIFY,
        }
    }
}

/// Where one ring's bytes live.
#[derive(Debug)]
pub enum RingBuf<M> {
    /// Inside the control page at this offset.
    InPage(usize),
    /// In separately mapped pages.
    Pages(M),
}

/// What a read or write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// Bytes transferred.
    pub len: usize,
    /// The peer asked for an event about this; signal the event channel.
    pub notify: bool,
}

/// The peer's state as its live byte shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// The client has not connected yet (server side only).
    Waiting,
    /// Connected.
    Connected,
    /// Exited or closed.
    Gone,
    /// A value libxenvchan never writes; like libxenvchan, treated as open.
    Unknown(u8),
}

/// A connected vchan endpoint over shared memory `M`.
#[derive(Debug)]
pub struct Channel<M> {
    role: Role,
    geometry: Geometry,
    page: M,
    read_buf: RingBuf<M>,
    write_buf: RingBuf<M>,
    /// Private copy of our consumer index on the read ring.
    read_cons: u32,
    /// Private copy of our producer index on the write ring.
    write_prod: u32,
    closed: bool,
}

/// Checks that a ring buffer matches the placement the geometry gives it.
fn check_buf<M: SharedMem>(
    geometry: &Geometry,
    dir: Dir,
    buf: &RingBuf<M>,
) -> Result<(), VchanError> {
    let ok = match (geometry.placement(dir), buf) {
        (crate::layout::Placement::InPage(want), RingBuf::InPage(have)) => want == *have,
        (crate::layout::Placement::Granted { .. }, RingBuf::Pages(m)) => {
            m.len() >= geometry.ring_size(dir)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(VchanError::BadMapping)
    }
}

impl<M: SharedMem> Channel<M> {
    /// Checks that the control page and ring buffers fit `geometry` (what
    /// the constructors check before taking ownership).
    pub fn check(
        page: &M,
        geometry: Geometry,
        left: &RingBuf<M>,
        right: &RingBuf<M>,
    ) -> Result<(), VchanError> {
        if page.len() < PAGE_SIZE {
            return Err(VchanError::BadMapping);
        }
        check_buf(&geometry, Dir::Left, left)?;
        check_buf(&geometry, Dir::Right, right)
    }

    /// Initialises a fresh control page as a server (what `init_gnt_srv` does
    /// before publishing it) and returns the server endpoint.
    ///
    /// The page is zeroed, the orders written, `cli_live` set to "waiting",
    /// `srv_live` to "connected", and the server asks to be notified of the
    /// client's writes. The caller writes the grant list afterwards with
    /// [`Channel::write_grant`].
    pub fn server(
        page: M,
        geometry: Geometry,
        left: RingBuf<M>,
        right: RingBuf<M>,
    ) -> Result<Self, VchanError> {
        Self::check(&page, geometry, &left, &right)?;
        page.write_bytes(0, &[0u8; PAGE_SIZE]);
        page.store_u16(crate::layout::LEFT_ORDER, geometry.order(Dir::Left).into());
        page.store_u16(crate::layout::RIGHT_ORDER, geometry.order(Dir::Right).into());
        page.store_u8(CLI_LIVE, LIVE_WAITING);
        page.store_u8(SRV_LIVE, LIVE_CONNECTED);
        page.store_u8(CLI_NOTIFY, NOTIFY_WRITE);
        Ok(Channel {
            role: Role::Server,
            geometry,
            page,
            read_buf: left,
            write_buf: right,
            read_cons: 0,
            write_prod: 0,
            closed: false,
        })
    }

    /// Attaches to a control page published by a server, with `geometry`
    /// read from it by [`Geometry::read`] and the rings mapped accordingly.
    ///
    /// Our own indices are taken from the page once, here; after that they
    /// are private. This does not yet announce the client: call
    /// [`Channel::announce_client`] once the event channel is bound.
    pub fn client(
        page: M,
        geometry: Geometry,
        left: RingBuf<M>,
        right: RingBuf<M>,
    ) -> Result<Self, VchanError> {
        Self::check(&page, geometry, &left, &right)?;
        let read_cons = page.load_u32(Dir::Right.cons_offset());
        let write_prod = page.load_u32(Dir::Left.prod_offset());
        Ok(Channel {
            role: Role::Client,
            geometry,
            page,
            read_buf: right,
            write_buf: left,
            read_cons,
            write_prod,
            closed: false,
        })
    }

    /// Marks the client connected and asks the server to notify us of its
    /// writes; the caller then signals the event channel to wake the server.
    pub fn announce_client(&mut self) {
        if self.role == Role::Client && !self.closed {
            self.page.store_u8(CLI_LIVE, LIVE_CONNECTED);
            self.page.store_u8(SRV_NOTIFY, NOTIFY_WRITE);
            fence(Ordering::SeqCst);
        }
    }

    /// Writes entry `index` of the grant list (server side, during setup).
    pub fn write_grant(&self, index: usize, gref: u32) -> Result<(), VchanError> {
        if index >= self.geometry.grant_count() {
            return Err(VchanError::BadMapping);
        }
        self.page.store_u32(crate::layout::grant_offset(index), gref);
        Ok(())
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The validated ring orders.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Size of the ring we read from.
    pub fn read_ring_size(&self) -> usize {
        self.geometry.ring_size(self.role.read_dir())
    }

    /// Size of the ring we write to.
    pub fn write_ring_size(&self) -> usize {
        self.geometry.ring_size(self.role.write_dir())
    }

    /// Whether this endpoint has been closed (by us or after a broken peer).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The peer's live byte, read once.
    pub fn peer_state(&self) -> PeerState {
        match self.page.load_u8(self.role.peer_live()) {
            LIVE_EXITED => PeerState::Gone,
            LIVE_CONNECTED => PeerState::Connected,
            LIVE_WAITING => PeerState::Waiting,
            other => PeerState::Unknown(other),
        }
    }

    /// `libxenvchan_is_open`: we are open and the peer has not exited
    /// (a server whose client has not connected yet counts as open).
    pub fn is_open(&self) -> bool {
        !self.closed && self.peer_state() != PeerState::Gone
    }

    /// Closes our side: sets our live byte to "exited". Returns whether the
    /// caller should signal the event channel (true the first time).
    pub fn close(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        self.page.store_u8(self.role.own_live(), LIVE_EXITED);
        fence(Ordering::SeqCst);
        true
    }

    /// Gives back the shared memory (control page, read ring, write ring).
    pub fn into_parts(self) -> (M, RingBuf<M>, RingBuf<M>) {
        (self.page, self.read_buf, self.write_buf)
    }

    /// Bytes ready to read, arming a "notify me on write" request so that
    /// an event follows the next change (`libxenvchan_data_ready`).
    pub fn data_ready(&mut self) -> Result<usize, VchanError> {
        self.live()?;
        self.request_notify(NOTIFY_WRITE);
        self.ready()
    }

    /// Withdraws our "notify me on write" request: the peer's writes send
    /// no event until [`Channel::data_ready`] or [`Channel::read`] asks
    /// again. The peer may already have taken the request (an event on its
    /// way), so one more event can still come. Only the bit the peer
    /// consumes (`libxenvchan`'s `send_notify`) is cleared: no new state.
    pub fn disarm_read(&mut self) {
        self.page.fetch_and_u8(self.role.peer_notify(), !NOTIFY_WRITE);
    }

    /// Free space in the write ring, arming a "notify me on read" request
    /// (`libxenvchan_buffer_space`).
    pub fn buffer_space(&mut self) -> Result<usize, VchanError> {
        self.live()?;
        self.request_notify(NOTIFY_READ);
        self.space()
    }

    /// Reads up to `buf.len()` bytes without blocking.
    ///
    /// Returns `len: 0` when nothing is ready and the peer is still open, and
    /// [`VchanError::PeerClosed`] when nothing is ready and the peer has
    /// gone. Data written before the peer left is still delivered.
    ///
    /// When fewer bytes are ready than asked, it asks the peer for an event
    /// on its next write (as `libxenvchan_read`), so a caller may sleep on
    /// the event channel right after it. A caller that will look again
    /// before sleeping uses [`Channel::read_unarmed`] and arms only when it
    /// is about to sleep ([`Channel::data_ready`]).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Io, VchanError> {
        self.read_with(buf, true)
    }

    /// Like [`Channel::read`], but never asks the peer for an event: the
    /// peer's writes then cost it no signal while we keep up. Before
    /// sleeping on the event channel, call [`Channel::data_ready`] (which
    /// asks) and sleep only if it reports nothing.
    pub fn read_unarmed(&mut self, buf: &mut [u8]) -> Result<Io, VchanError> {
        self.read_with(buf, false)
    }

    pub(crate) fn read_with(&mut self, buf: &mut [u8], arm: bool) -> Result<Io, VchanError> {
        self.live()?;
        if buf.is_empty() {
            return Ok(Io { len: 0, notify: false });
        }
        let mut ready = self.ready()?;
        if arm && ready < buf.len() {
            // We will drain what is there: ask to hear about the next write,
            // then look again in case it happened before the request landed.
            self.request_notify(NOTIFY_WRITE);
            ready = self.ready()?;
        }
        if ready == 0 {
            return if self.peer_state() == PeerState::Gone {
                Err(VchanError::PeerClosed)
            } else {
                Ok(Io { len: 0, notify: false })
            };
        }
        let len = ready.min(buf.len());
        let dst = buf.get_mut(..len).ok_or(VchanError::BrokenPeer)?;
        self.copy_out(dst);
        // The data must be read before the slot is handed back.
        fence(Ordering::SeqCst);
        self.read_cons = self.read_cons.wrapping_add(len as u32);
        self.page.store_u32(self.role.read_dir().cons_offset(), self.read_cons);
        let notify = self.send_notify(NOTIFY_READ);
        Ok(Io { len, notify })
    }

    /// Writes up to `data.len()` bytes without blocking; `len: 0` means the
    /// ring is full. Fails with [`VchanError::PeerClosed`] once the peer has
    /// gone, like `libxenvchan_write`.
    ///
    /// When the ring has less room than `data` needs, it asks the peer for
    /// an event on its next read (as `libxenvchan_write`), so a caller may
    /// sleep right after it; see [`Channel::write_unarmed`].
    ///
    /// More than [`Channel::write_piece`] bytes are copied and published in
    /// pieces of that size (the producer index is stored after each), so a
    /// reader on another CPU can start on the first piece sooner; the peer
    /// sees an ordinary sequence of smaller writes.
    pub fn write(&mut self, data: &[u8]) -> Result<Io, VchanError> {
        self.write_with(data, true)
    }

    /// Like [`Channel::write`], but never asks the peer for an event. Before
    /// sleeping on the event channel, call [`Channel::buffer_space`] (which
    /// asks) and sleep only if it reports no room.
    pub fn write_unarmed(&mut self, data: &[u8]) -> Result<Io, VchanError> {
        self.write_with(data, false)
    }

    fn write_with(&mut self, data: &[u8], arm: bool) -> Result<Io, VchanError> {
        self.live()?;
        if self.peer_state() == PeerState::Gone {
            return Err(VchanError::PeerClosed);
        }
        if data.is_empty() {
            return Ok(Io { len: 0, notify: false });
        }
        let mut space = self.space()?;
        if arm && space < data.len() {
            // We will fill the ring: ask to hear when the peer consumes, then
            // look again in case it did so before the request landed.
            self.request_notify(NOTIFY_READ);
            space = self.space()?;
        }
        let len = space.min(data.len());
        if len == 0 {
            return Ok(Io { len: 0, notify: false });
        }
        let src = data.get(..len).ok_or(VchanError::BrokenPeer)?;
        // The index is published after each piece, so that a reader on
        // another CPU copies the first piece out while we copy the next in.
        let mut notify = false;
        let piece = self.write_piece();
        let mut done = 0;
        while let Some(chunk) = src.get(done..).filter(|rest| !rest.is_empty()) {
            let n = chunk.len().min(piece);
            self.copy_in(chunk.get(..n).unwrap_or_default());
            // The data must be visible before the index that publishes it.
            fence(Ordering::Release);
            self.write_prod = self.write_prod.wrapping_add(n as u32);
            self.page.store_u32(self.role.write_dir().prod_offset(), self.write_prod);
            // A sleeping peer is woken by the first piece. The check after
            // the last one is the one no request may slip past: a peer that
            // asks later sees the final index when it looks again.
            if done == 0 || n == chunk.len() {
                notify |= self.send_notify(NOTIFY_WRITE);
            }
            done += n;
        }
        Ok(Io { len, notify })
    }

    /// The most bytes one write copies before it publishes its index:
    /// a quarter of the write ring, and at least [`WRITE_PIECE_MIN`].
    pub fn write_piece(&self) -> usize {
        (self.write_ring_size() / WRITE_PIECES).max(WRITE_PIECE_MIN)
    }

    fn live(&self) -> Result<(), VchanError> {
        if self.closed {
            Err(VchanError::Closed)
        } else {
            Ok(())
        }
    }

    /// The peer broke the ring protocol: close, and say so.
    fn broken(&mut self) -> VchanError {
        self.close();
        VchanError::BrokenPeer
    }

    /// Bytes ready in the read ring: the peer's producer index is loaded
    /// once and validated against the private ring size.
    fn ready(&mut self) -> Result<usize, VchanError> {
        let prod = self.page.load_u32(self.role.read_dir().prod_offset());
        // Read the index before any data it covers.
        fence(Ordering::SeqCst);
        let ready = prod.wrapping_sub(self.read_cons) as usize;
        if ready > self.read_ring_size() {
            return Err(self.broken());
        }
        Ok(ready)
    }

    /// Free space in the write ring: the peer's consumer index is loaded
    /// once and validated against the private ring size.
    fn space(&mut self) -> Result<usize, VchanError> {
        let cons = self.page.load_u32(self.role.write_dir().cons_offset());
        // Read the index before overwriting the space it frees.
        fence(Ordering::SeqCst);
        let used = self.write_prod.wrapping_sub(cons) as usize;
        match self.write_ring_size().checked_sub(used) {
            Some(space) => Ok(space),
            None => Err(self.broken()),
        }
    }

    /// Bytes ready to read, without asking the peer for an event (a cheap
    /// look for a caller that polls before it sleeps).
    pub fn peek_ready(&mut self) -> Result<usize, VchanError> {
        self.live()?;
        self.ready()
    }

    /// Free space in the write ring, without asking the peer for an event.
    pub fn peek_space(&mut self) -> Result<usize, VchanError> {
        self.live()?;
        self.space()
    }

    /// Bytes we have written that the peer has not consumed yet (the peer's
    /// consumer index is loaded once and validated, as for a write).
    pub fn unconsumed(&mut self) -> Result<usize, VchanError> {
        self.live()?;
        let space = self.space()?;
        Ok(self.write_ring_size() - space)
    }

    /// Asks the peer for an event when it does `bit`.
    fn request_notify(&self, bit: u8) {
        self.page.fetch_or_u8(self.role.peer_notify(), bit);
        // The request must be visible before we look at the indexes again.
        fence(Ordering::SeqCst);
    }

    /// Consumes the peer's request for `bit`; true if it had asked.
    fn send_notify(&self, bit: u8) -> bool {
        // Our index update must be visible before we decide not to notify.
        fence(Ordering::SeqCst);
        let prev = self.page.fetch_and_u8(self.role.own_notify(), !bit);
        prev & bit != 0
    }

    /// Copies `dst.len()` (at most the ring size) bytes out of the read ring.
    fn copy_out(&self, dst: &mut [u8]) {
        let size = self.read_ring_size();
        let start = self.read_cons as usize & (size - 1);
        let first = dst.len().min(size - start);
        let (a, b) = dst.split_at_mut(first);
        let (mem, base) = ring_mem(&self.page, &self.read_buf);
        mem.read_bytes(base + start, a);
        if !b.is_empty() {
            mem.read_bytes(base, b);
        }
    }

    /// Copies `src` (at most the ring size) into the write ring.
    #[inline(never)]
    fn copy_in(&self, src: &[u8]) {
        let size = self.write_ring_size();
        let start = self.write_prod as usize & (size - 1);
        let first = src.len().min(size - start);
        let (a, b) = src.split_at(first);
        let (mem, base) = ring_mem(&self.page, &self.write_buf);
        mem.write_bytes(base + start, a);
        if !b.is_empty() {
            mem.write_bytes(base, b);
        }
    }
}

/// The memory holding a ring and the ring's offset in it.
fn ring_mem<'a, M>(page: &'a M, buf: &'a RingBuf<M>) -> (&'a M, usize) {
    match buf {
        RingBuf::InPage(off) => (page, *off),
        RingBuf::Pages(m) => (m, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::AtomicMem;
    use core::sync::atomic::AtomicU32;
    use std::{vec, vec::Vec};

    /// Shared memory that records every value stored at one offset.
    struct Recording<'a> {
        mem: AtomicMem<'a>,
        watch: usize,
        stores: core::cell::RefCell<Vec<u32>>,
    }

    impl SharedMem for Recording<'_> {
        fn len(&self) -> usize {
            self.mem.len()
        }
        fn load_u8(&self, off: usize) -> u8 {
            self.mem.load_u8(off)
        }
        fn store_u8(&self, off: usize, value: u8) {
            self.mem.store_u8(off, value)
        }
        fn load_u16(&self, off: usize) -> u16 {
            self.mem.load_u16(off)
        }
        fn store_u16(&self, off: usize, value: u16) {
            self.mem.store_u16(off, value)
        }
        fn load_u32(&self, off: usize) -> u32 {
            self.mem.load_u32(off)
        }
        fn store_u32(&self, off: usize, value: u32) {
            if off == self.watch {
                self.stores.borrow_mut().push(value);
            }
            self.mem.store_u32(off, value)
        }
        fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
            self.mem.fetch_or_u8(off, bits)
        }
        fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
            self.mem.fetch_and_u8(off, bits)
        }
        fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            self.mem.read_bytes(off, dst)
        }
        fn write_bytes(&self, off: usize, src: &[u8]) {
            self.mem.write_bytes(off, src)
        }
    }

    #[test]
    fn a_large_write_publishes_its_index_piece_by_piece() {
        let page_words: [AtomicU32; PAGE_SIZE / 4] = core::array::from_fn(|_| AtomicU32::new(0));
        let ring_words: [AtomicU32; 16384 / 4] = core::array::from_fn(|_| AtomicU32::new(0));
        let (page, ring) = (AtomicMem::new(&page_words), AtomicMem::new(&ring_words));
        let watch = Dir::Right.prod_offset();
        let rec_page = Recording { mem: page, watch, stores: Vec::new().into() };
        let rec_ring = Recording { mem: ring, watch: usize::MAX, stores: Vec::new().into() };
        // The server writes the right ring, order 14 (16 KiB): 4 KiB pieces.
        let g = Geometry::from_orders(10, 14).unwrap();
        let (left, right) = (RingBuf::InPage(1024), RingBuf::Pages(&rec_ring));
        let mut server = Channel::server(&rec_page, g, left, right).unwrap();
        assert_eq!(server.write_piece(), 4096);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(server.write_unarmed(&data).unwrap().len, 10_000);
        assert_eq!(*rec_page.stores.borrow(), [4096, 8192, 10_000]);

        // The reader gets the same bytes; the next write wraps the ring.
        let (left, right) = (RingBuf::InPage(1024), RingBuf::Pages(ring));
        let mut client = Channel::client(page, g, left, right).unwrap();
        client.announce_client();
        let mut out = vec![0u8; 16384];
        for round in 1..=2u32 {
            assert_eq!(client.read(&mut out).unwrap().len, 10_000);
            assert!(out[..10_000] == data[..], "round {round}");
            rec_page.stores.borrow_mut().clear();
            assert_eq!(server.write(&data).unwrap().len, 10_000);
            let end = 10_000 * (round + 1);
            assert_eq!(*rec_page.stores.borrow(), [end - 5904, end - 1808, end]);
        }

        // The in-page rings: order 10 is published whole, order 11 in halves.
        for (left, right, piece) in [(11, 10, 1024), (10, 11, 1024)] {
            let words: [AtomicU32; PAGE_SIZE / 4] = core::array::from_fn(|_| AtomicU32::new(0));
            let g = Geometry::from_orders(left, right).unwrap();
            let (l, r) = (RingBuf::InPage(1 << left), RingBuf::InPage(1 << right));
            let server = Channel::server(AtomicMem::new(&words), g, l, r).unwrap();
            assert_eq!(server.write_piece(), piece, "order {right}");
        }
    }

    #[test]
    fn indices_wrap_past_u32_max() {
        let words: [AtomicU32; PAGE_SIZE / 4] = core::array::from_fn(|_| AtomicU32::new(0));
        let page = AtomicMem::new(&words);
        let g = Geometry::from_orders(10, 11).unwrap();
        let mut server =
            Channel::server(page, g, RingBuf::InPage(1024), RingBuf::InPage(2048)).unwrap();
        // Both sides agree on indices just below the wrap point.
        let start = u32::MAX - 100;
        for off in [Dir::Left.cons_offset(), Dir::Left.prod_offset()] {
            page.store_u32(off, start);
        }
        server.read_cons = start;
        let mut client =
            Channel::client(page, g, RingBuf::InPage(1024), RingBuf::InPage(2048)).unwrap();
        client.announce_client();
        let mut out = [0u8; 1024];
        for round in 0..5u8 {
            let data = [round; 700];
            assert_eq!(client.write(&data).unwrap().len, 700);
            assert_eq!(server.data_ready().unwrap(), 700);
            assert_eq!(server.read(&mut out).unwrap().len, 700);
            assert!(out[..700].iter().all(|b| *b == round));
        }
        let end = start.wrapping_add(3500);
        assert!(end < start);
        assert_eq!(page.load_u32(Dir::Left.prod_offset()), end);
        assert_eq!(page.load_u32(Dir::Left.cons_offset()), end);
    }
}
