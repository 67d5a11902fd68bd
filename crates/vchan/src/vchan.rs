//! A vchan endpoint over a [`Backend`]: setup as a server or client
//! (`tools/libs/vchan/init.c`), I/O with event notification, blocking helpers,
//! close and server re-initialisation.

use core::time::Duration;

use crate::backend::{
    parse_store_u32, Backend, BackendError, Decimal, DomId, GrantRef, Port, StorePath, UnmapNotify,
    Wait,
};
use crate::layout::{Dir, Geometry, Placement, CLI_LIVE, MAX_ORDER, PAGE_SHIFT, SRV_LIVE};
use crate::ring::{Channel, PeerState, RingBuf, Role};
use crate::shm::SharedMem;
use crate::VchanError;

/// Store key holding the control page's grant reference.
pub const RING_REF_KEY: &str = "ring-ref";
/// Store key holding the server's event channel port.
pub const EVENT_CHANNEL_KEY: &str = "event-channel";

/// How long [`Vchan::wait`] lets bytes we wrote sit unconsumed before it
/// signals the peer again; the interval then doubles up to [`REKICK_MAX`].
pub const REKICK_FIRST: Duration = Duration::from_millis(50);
/// The longest interval between repeated signals in [`Vchan::wait`].
pub const REKICK_MAX: Duration = Duration::from_secs(1);
/// The longest [`Vchan::wait`] sleeps before it asks the backend whether
/// a peer whose live byte says "connected" still holds its end of the
/// event channel ([`Backend::peer_bound`]): how late a destroyed peer
/// domain is noticed.
pub const PEER_CHECK: Duration = Duration::from_secs(1);

/// How many times the blocking helpers ([`Vchan::read_blocking`],
/// [`Vchan::write_all`]) look at the ring again before they ask the peer
/// for an event and sleep (see [`Vchan::set_spin`]).
pub const DEFAULT_SPIN: u32 = 100;

/// Most grant references one ring uses.
const MAX_RING_PAGES: usize = 1 << (MAX_ORDER - PAGE_SHIFT);

/// Parameters of a server endpoint, kept for [`Vchan::reinit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The client domain.
    pub client: DomId,
    /// The vchan port number (the last component of the store path).
    pub port: u32,
    /// Minimum size of the client-to-server ring.
    pub read_min: usize,
    /// Minimum size of the server-to-client ring.
    pub write_min: usize,
}

/// Parameters of a client endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The server domain.
    pub server: DomId,
    /// The vchan port number.
    pub port: u32,
}

/// A vchan endpoint owning its backend.
///
/// Dropping it closes it (as [`Vchan::shutdown`] does).
pub struct Vchan<B: Backend> {
    backend: B,
    kind: Kind,
    peer: DomId,
    /// The store directory the server published (removed on close).
    base: StorePath,
    conn: Option<Conn<B::Mem>>,
    /// Times [`Vchan::wait`] signalled the peer again.
    rekicks: u32,
    /// Looks at the ring before sleeping, in the blocking helpers.
    spin: u32,
    /// Events sent to the peer (answers to its requests, rekicks, close).
    signals: u64,
    /// Waits on the event channel that blocked (or timed out).
    sleeps: u64,
    /// Reads do not ask the peer for an event ([`Vchan::set_quiet`]).
    quiet: bool,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Server(ServerConfig),
    Client(ClientConfig),
}

struct Conn<M> {
    chan: Channel<M>,
    port: Port,
}

impl<B: Backend> Vchan<B> {
    /// Creates the shared page(s) and event channel for `config.client` and
    /// publishes them under `/local/domain/<us>/data/vchan/<client>/<port>`
    /// (`libxenvchan_server_init`).
    pub fn server(backend: B, config: ServerConfig) -> Result<Self, VchanError> {
        let geometry = Geometry::for_sizes(config.read_min, config.write_min)?;
        let base = StorePath::vchan_base(backend.domid(), config.client, config.port);
        let mut v = Vchan {
            backend,
            kind: Kind::Server(config),
            peer: config.client,
            base,
            conn: None,
            rekicks: 0,
            spin: DEFAULT_SPIN,
            signals: 0,
            sleeps: 0,
            quiet: false,
        };
        v.server_setup(geometry)?;
        Ok(v)
    }

    /// Connects to the vchan that `config.server` published for us
    /// (`libxenvchan_client_init`). Fails with [`VchanError::NotPublished`]
    /// if the server has not published it yet.
    pub fn client(backend: B, config: ClientConfig) -> Result<Self, VchanError> {
        let base = StorePath::vchan_base(config.server, backend.domid(), config.port);
        let mut v = Vchan {
            backend,
            kind: Kind::Client(config),
            peer: config.server,
            base,
            conn: None,
            rekicks: 0,
            spin: DEFAULT_SPIN,
            signals: 0,
            sleeps: 0,
            quiet: false,
        };
        v.client_setup()?;
        Ok(v)
    }

    /// Like [`Vchan::client`], but waits (watching the store) until the server
    /// has published the vchan. `timeout` bounds each wait for a change.
    pub fn client_wait(
        backend: B,
        config: ClientConfig,
        timeout: Option<Duration>,
    ) -> Result<Self, VchanError> {
        let base = StorePath::vchan_base(config.server, backend.domid(), config.port);
        let mut v = Vchan {
            backend,
            kind: Kind::Client(config),
            peer: config.server,
            base,
            conn: None,
            rekicks: 0,
            spin: DEFAULT_SPIN,
            signals: 0,
            sleeps: 0,
            quiet: false,
        };
        loop {
            match v.client_setup() {
                Err(VchanError::NotPublished) => {}
                other => return other.map(|()| v),
            }
            if v.backend.store_wait(base.as_str(), timeout)? == Wait::TimedOut {
                return Err(VchanError::Timeout);
            }
        }
    }

    fn server_setup(&mut self, geometry: Geometry) -> Result<(), VchanError> {
        let port = self.backend.alloc_unbound(self.peer)?;
        match self.server_share(geometry, port) {
            Ok(conn) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                self.backend.unbind(port);
                Err(e)
            }
        }
    }

    fn server_share(&mut self, geometry: Geometry, port: Port) -> Result<Conn<B::Mem>, VchanError> {
        let mut page_ref = [GrantRef(0)];
        let notify = UnmapNotify { offset: SRV_LIVE, port };
        let page = self.backend.share(self.peer, &mut page_ref, Some(notify))?;
        let mut refs = [GrantRef(0); MAX_RING_PAGES];
        let left = match self.share_ring(geometry, Dir::Left, &mut refs) {
            Ok(left) => left,
            Err(e) => {
                self.backend.unshare(page);
                return Err(e);
            }
        };
        let left_refs = refs;
        let right = match self.share_ring(geometry, Dir::Right, &mut refs) {
            Ok(right) => right,
            Err(e) => {
                self.release(left);
                self.backend.unshare(page);
                return Err(e);
            }
        };
        if let Err(e) = Channel::check(&page, geometry, &left, &right) {
            self.release(left);
            self.release(right);
            self.backend.unshare(page);
            return Err(e);
        }
        let chan = Channel::server(page, geometry, left, right)?;
        let conn = Conn { chan, port };
        let grants = left_refs
            .iter()
            .take(geometry.pages(Dir::Left))
            .chain(refs.iter().take(geometry.pages(Dir::Right)));
        for (i, gref) in grants.enumerate() {
            conn.chan.write_grant(i, gref.0)?;
        }
        if let Err(e) = self.publish(page_ref[0], port) {
            self.teardown_conn(conn);
            return Err(e);
        }
        Ok(conn)
    }

    fn share_ring(
        &mut self,
        geometry: Geometry,
        dir: Dir,
        refs: &mut [GrantRef; MAX_RING_PAGES],
    ) -> Result<RingBuf<B::Mem>, VchanError> {
        match geometry.placement(dir) {
            Placement::InPage(off) => Ok(RingBuf::InPage(off)),
            Placement::Granted { count, .. } => {
                let refs = refs.get_mut(..count).ok_or(VchanError::BadMapping)?;
                Ok(RingBuf::Pages(self.backend.share(self.peer, refs, None)?))
            }
        }
    }

    fn publish(&mut self, page_ref: GrantRef, port: Port) -> Result<(), VchanError> {
        let ring_ref = self.base.child(RING_REF_KEY).ok_or(VchanError::BadStoreValue)?;
        let event = self.base.child(EVENT_CHANNEL_KEY).ok_or(VchanError::BadStoreValue)?;
        self.backend.store_write(
            ring_ref.as_str(),
            Decimal::new(page_ref.0).as_str(),
            self.peer,
        )?;
        self.backend.store_write(event.as_str(), Decimal::new(port.0).as_str(), self.peer)?;
        Ok(())
    }

    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    fn client_setup(&mut self) -> Result<(), VchanError> {
        let page_ref = GrantRef(self.read_store_u32(RING_REF_KEY)?);
        let remote = Port(self.read_store_u32(EVENT_CHANNEL_KEY)?);
        let port = self.backend.bind_interdomain(self.peer, remote)?;
        match self.client_map(page_ref, port) {
            Ok(mut conn) => {
                conn.chan.announce_client();
                self.signals = self.signals.saturating_add(1);
                let sent = self.backend.notify(port);
                self.conn = Some(conn);
                sent.map_err(VchanError::from)
            }
            Err(e) => {
                self.backend.unbind(port);
                Err(e)
            }
        }
    }

    fn client_map(&mut self, page_ref: GrantRef, port: Port) -> Result<Conn<B::Mem>, VchanError> {
        let notify = UnmapNotify { offset: CLI_LIVE, port };
        let page = self.backend.map(self.peer, &[page_ref], true, Some(notify))?;
        // The orders are read exactly once; everything after uses this copy.
        let geometry = match Geometry::read(&page) {
            Ok(g) => g,
            Err(e) => {
                self.backend.unmap(page);
                return Err(e.into());
            }
        };
        let left = match self.map_ring(&page, geometry, Dir::Left, true) {
            Ok(left) => left,
            Err(e) => {
                self.backend.unmap(page);
                return Err(e);
            }
        };
        let right = match self.map_ring(&page, geometry, Dir::Right, false) {
            Ok(right) => right,
            Err(e) => {
                self.release(left);
                self.backend.unmap(page);
                return Err(e);
            }
        };
        if let Err(e) = Channel::check(&page, geometry, &left, &right) {
            self.release(left);
            self.release(right);
            self.backend.unmap(page);
            return Err(e);
        }
        let chan = Channel::client(page, geometry, left, right)?;
        Ok(Conn { chan, port })
    }

    fn map_ring(
        &mut self,
        page: &B::Mem,
        geometry: Geometry,
        dir: Dir,
        writable: bool,
    ) -> Result<RingBuf<B::Mem>, VchanError> {
        match geometry.placement(dir) {
            Placement::InPage(off) => Ok(RingBuf::InPage(off)),
            Placement::Granted { first, count } => {
                let mut refs = [GrantRef(0); MAX_RING_PAGES];
                let refs = refs.get_mut(..count).ok_or(VchanError::BadMapping)?;
                for (i, r) in refs.iter_mut().enumerate() {
                    *r = GrantRef(page.load_u32(crate::layout::grant_offset(first + i)));
                }
                Ok(RingBuf::Pages(self.backend.map(self.peer, refs, writable, None)?))
            }
        }
    }

    fn read_store_u32(&mut self, key: &str) -> Result<u32, VchanError> {
        let path = self.base.child(key).ok_or(VchanError::BadStoreValue)?;
        let mut buf = [0u8; 16];
        let len = match self.backend.store_read(path.as_str(), &mut buf) {
            Ok(Some(len)) => len,
            // xenstored answers EACCES, not ENOENT, for a node that does not
            // exist yet under the server's directory, which only the server
            // may read: not published (for us) yet. libxenvchan's callers
            // likewise retry `client_init` on any failure.
            Ok(None) | Err(BackendError::Denied) => return Err(VchanError::NotPublished),
            Err(e) => return Err(e.into()),
        };
        let text = buf.get(..len).ok_or(VchanError::BadStoreValue)?;
        parse_store_u32(text).ok_or(VchanError::BadStoreValue)
    }

    /// Gives back a ring's own pages, if it has any.
    fn release(&mut self, buf: RingBuf<B::Mem>) {
        if let RingBuf::Pages(mem) = buf {
            match self.kind {
                Kind::Server(_) => self.backend.unshare(mem),
                Kind::Client(_) => self.backend.unmap(mem),
            }
        }
    }

    /// Closes our side of a connection and returns its resources
    /// (`libxenvchan_close`).
    fn teardown_conn(&mut self, conn: Conn<B::Mem>) {
        let Conn { mut chan, port } = conn;
        if chan.close() {
            // Best effort: the peer also learns from the live byte.
            let _ = self.backend.notify(port);
        }
        let (page, read, write) = chan.into_parts();
        self.release(read);
        self.release(write);
        match self.kind {
            Kind::Server(_) => {
                self.backend.unshare(page);
                let _ = self.backend.store_remove(self.base.as_str());
            }
            Kind::Client(_) => self.backend.unmap(page),
        }
        self.backend.unbind(port);
    }

    /// Closes this endpoint: marks our side exited, signals the peer, and
    /// releases pages, port and (server) store entries. Idempotent.
    pub fn shutdown(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.teardown_conn(conn);
        }
    }

    /// Closes this endpoint (same as dropping it).
    pub fn close(mut self) {
        self.shutdown();
    }

    /// Server only: after the client has gone, tears the connection down and
    /// sets it up afresh (new pages, port and store entries) so that a new
    /// client can connect.
    pub fn reinit(&mut self) -> Result<(), VchanError> {
        let Kind::Server(config) = self.kind else {
            return Err(VchanError::NotServer);
        };
        self.shutdown();
        let geometry = Geometry::for_sizes(config.read_min, config.write_min)?;
        self.server_setup(geometry)
    }

    /// The peer's state as its live byte shows it now, while open.
    pub fn peer_state(&self) -> Option<PeerState> {
        self.conn.as_ref().map(|c| c.chan.peer_state())
    }

    /// Server only: removes the published store entries of the current
    /// ring while keeping the connection, so that no later client (a
    /// reconnecting domain included) can map this ring and see what was
    /// meant for the one connected now. The next [`Vchan::reinit`]
    /// publishes a fresh ring. Call it once the client has connected
    /// ([`Vchan::peer_state`] is no longer `Waiting`).
    pub fn unpublish(&mut self) -> Result<(), VchanError> {
        if !matches!(self.kind, Kind::Server(_)) {
            return Err(VchanError::NotServer);
        }
        self.backend.store_remove(self.base.as_str())?;
        Ok(())
    }

    /// Server only: waits until the client has connected.
    pub fn wait_connected(&mut self, timeout: Option<Duration>) -> Result<(), VchanError> {
        if !matches!(self.kind, Kind::Server(_)) {
            return Err(VchanError::NotServer);
        }
        loop {
            match self.conn()?.chan.peer_state() {
                PeerState::Waiting => self.wait(timeout)?,
                PeerState::Gone => return Err(VchanError::PeerClosed),
                PeerState::Connected | PeerState::Unknown(_) => return Ok(()),
            }
        }
    }

    /// The server parameters, on a server.
    pub fn server_config(&self) -> Option<ServerConfig> {
        match self.kind {
            Kind::Server(c) => Some(c),
            Kind::Client(_) => None,
        }
    }

    /// The client parameters, on a client.
    pub fn client_config(&self) -> Option<ClientConfig> {
        match self.kind {
            Kind::Client(c) => Some(c),
            Kind::Server(_) => None,
        }
    }

    /// How many times [`Vchan::wait`] has signalled the peer again because
    /// our bytes sat unconsumed (see [`REKICK_FIRST`]).
    pub fn rekicks(&self) -> u32 {
        self.rekicks
    }

    /// Events this endpoint has sent the peer: answers to the peer's
    /// notify requests, the client's announcement, and [`Vchan::wait`]'s
    /// repeated signals (not the close).
    pub fn signals(&self) -> u64 {
        self.signals
    }

    /// Waits on the event channel this endpoint has made (each may have
    /// blocked, or found an event already pending).
    pub fn sleeps(&self) -> u64 {
        self.sleeps
    }

    /// Sets how many times [`Vchan::read_blocking`] and [`Vchan::write_all`]
    /// look at the ring again (without asking the peer for an event) before
    /// they ask and sleep; 0 sleeps at once. A peer running on another CPU
    /// usually moves its index within that time, which saves both sides an
    /// event and a wake-up; a peer that does not costs this many looks.
    /// The default is [`DEFAULT_SPIN`].
    pub fn set_spin(&mut self, polls: u32) {
        self.spin = polls;
    }

    /// Quiet: the peer's writes stop waking us. The standing request for
    /// an event is withdrawn ([`Channel::disarm_read`]) and reads
    /// ([`Transport::recv`] included) no longer make one, so the peer sends
    /// no event for what it writes (at most one already on its way); the
    /// caller must look at the ring again on its own (a time-out, or a
    /// wake-up from another channel). Not quiet again: the request is made
    /// at once, so a write from then on sends an event, and what was written
    /// before is there for the next read. A closed endpoint is left as it is.
    ///
    /// [`Channel::disarm_read`]: crate::ring::Channel::disarm_read
    /// [`Transport::recv`]: crate::frame::Transport::recv
    pub fn set_quiet(&mut self, quiet: bool) {
        if self.quiet == quiet {
            return;
        }
        self.quiet = quiet;
        if let Some(conn) = self.conn.as_mut() {
            if quiet {
                conn.chan.disarm_read();
            } else {
                // Only the request matters here; the count is read again
                // by the caller's next read, and a broken peer shows there.
                let _ = conn.chan.data_ready();
            }
        }
    }

    /// Whether reads ask the peer for an event ([`Vchan::set_quiet`]).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// The peer domain.
    pub fn peer(&self) -> DomId {
        self.peer
    }

    /// Our role.
    pub fn role(&self) -> Role {
        match self.kind {
            Kind::Server(_) => Role::Server,
            Kind::Client(_) => Role::Client,
        }
    }

    /// The local event channel port, while open.
    pub fn port(&self) -> Option<Port> {
        self.conn.as_ref().map(|c| c.port)
    }

    /// The ring orders, while open.
    pub fn geometry(&self) -> Option<Geometry> {
        self.conn.as_ref().map(|c| c.chan.geometry())
    }

    /// The backend.
    pub fn backend(&mut self) -> &mut B {
        &mut self.backend
    }

    /// `libxenvchan_is_open`: we are open and the peer has not exited.
    pub fn is_open(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.chan.is_open())
    }

    fn conn(&mut self) -> Result<&mut Conn<B::Mem>, VchanError> {
        self.conn.as_mut().ok_or(VchanError::Closed)
    }

    /// Runs a channel operation; a broken peer closes the endpoint.
    fn op<T>(
        &mut self,
        f: impl FnOnce(&mut Channel<B::Mem>) -> Result<T, VchanError>,
    ) -> Result<T, VchanError> {
        let conn = self.conn()?;
        let result = f(&mut conn.chan);
        if matches!(result, Err(VchanError::BrokenPeer)) {
            self.shutdown();
        }
        result
    }

    /// Bytes ready to read (arms a notification for the next write).
    pub fn data_ready(&mut self) -> Result<usize, VchanError> {
        self.op(|c| c.data_ready())
    }

    /// Free space to write (arms a notification for the next read).
    pub fn buffer_space(&mut self) -> Result<usize, VchanError> {
        self.op(|c| c.buffer_space())
    }

    /// Reads what is available, up to `buf.len()`, without blocking.
    /// `Ok(0)` means nothing yet; [`VchanError::PeerClosed`] means nothing
    /// and never will be.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        self.read_with(buf, true)
    }

    /// [`Vchan::read`] (`arm`) or [`Vchan::read_unarmed`].
    pub(crate) fn read_with(&mut self, buf: &mut [u8], arm: bool) -> Result<usize, VchanError> {
        let io = self.op(|c| c.read_with(buf, arm))?;
        self.signal(io.notify)?;
        Ok(io.len)
    }

    /// Writes what fits, up to `data.len()`, without blocking; `Ok(0)`
    /// means the ring is full.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        let io = self.op(|c| c.write(data))?;
        self.signal(io.notify)?;
        Ok(io.len)
    }

    fn signal(&mut self, notify: bool) -> Result<(), VchanError> {
        if notify {
            let port = self.conn()?.port;
            self.signals = self.signals.saturating_add(1);
            self.backend.notify(port)?;
        }
        Ok(())
    }

    /// Waits for an event on our port; [`VchanError::Timeout`] if none
    /// arrives within `timeout` (`None`: wait forever).
    ///
    /// While bytes we wrote sit unconsumed in the ring, the peer is signalled
    /// again after [`REKICK_FIRST`], then at doubling intervals up to
    /// [`REKICK_MAX`]. A peer that missed our event (Xen's
    /// `vchan-socket-proxy` in server mode loses a client's first write when
    /// its event coalesces with the "connected" one) would otherwise never
    /// read them; a spurious event costs a libxenvchan peer one look at the
    /// ring.
    ///
    /// At least every [`PEER_CHECK`] it asks the backend whether a peer
    /// that looks connected still holds its end of the event channel: a
    /// destroyed domain leaves no other trace (its live byte still says
    /// "connected", and no event comes). Once it does not,
    /// [`VchanError::PeerClosed`], or `Ok` while the ring still has bytes
    /// from it to read (the next wait, once they are read, fails).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<(), VchanError> {
        let port = self.conn()?.port;
        let mut left = timeout;
        let mut interval = REKICK_FIRST;
        loop {
            let pending = self.op(|c| c.unconsumed())? > 0;
            let most = if pending { interval } else { PEER_CHECK };
            let slice = left.map_or(most, |l| l.min(most));
            self.sleeps = self.sleeps.saturating_add(1);
            if self.backend.wait(port, Some(slice))? == Wait::Event {
                return Ok(());
            }
            if self.peer_vanished()? {
                return match self.data_ready()? {
                    0 => Err(VchanError::PeerClosed),
                    _ => Ok(()),
                };
            }
            match left {
                Some(l) if slice >= l => return Err(VchanError::Timeout),
                Some(l) => left = Some(l - slice),
                None => {}
            }
            if pending {
                self.signals = self.signals.saturating_add(1);
                self.backend.notify(port)?;
                self.rekicks = self.rekicks.saturating_add(1);
                interval = (interval * 2).min(REKICK_MAX);
            }
        }
    }

    /// Whether the peer looks connected (its live byte) but no longer
    /// holds its end of our event channel: its domain was destroyed, or
    /// it closed the port without clearing its live byte. One
    /// [`Backend::peer_bound`] call; a backend error counts as "cannot
    /// tell", not as gone. For loops that wait on many ports themselves
    /// rather than in [`Vchan::wait`].
    pub fn peer_vanished(&mut self) -> Result<bool, VchanError> {
        let conn = self.conn()?;
        if conn.chan.peer_state() != PeerState::Connected {
            return Ok(false);
        }
        let port = conn.port;
        Ok(matches!(self.backend.peer_bound(port), Ok(false)))
    }

    /// Like [`Vchan::read`], but without asking the peer for an event
    /// ([`Channel::read_unarmed`]); call [`Vchan::data_ready`] before
    /// sleeping on the event channel.
    pub fn read_unarmed(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        self.read_with(buf, false)
    }

    /// Like [`Vchan::write`], but without asking the peer for an event
    /// ([`Channel::write_unarmed`]); call [`Vchan::buffer_space`] before
    /// sleeping on the event channel.
    pub fn write_unarmed(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        let io = self.op(|c| c.write_unarmed(data))?;
        self.signal(io.notify)?;
        Ok(io.len)
    }

    /// Looks at the ring up to `self.spin` times until `ready` holds.
    fn spin_until(
        &mut self,
        mut ready: impl FnMut(&mut Channel<B::Mem>) -> Result<bool, VchanError>,
    ) -> Result<bool, VchanError> {
        for _ in 0..self.spin {
            if self.op(&mut ready)? {
                return Ok(true);
            }
            self.backend.relax();
        }
        Ok(false)
    }

    /// Reads at least one byte, waiting for events as needed. `timeout`
    /// bounds each wait, not the whole call.
    ///
    /// The peer is asked for an event only when this is about to sleep: a
    /// read takes whatever is ready without asking, then the ring is looked
    /// at again up to [`Vchan::set_spin`] times, and only then is the
    /// request made ([`Vchan::data_ready`]) and the ring checked once more
    /// before the wait, so a write that lands in between is never missed.
    pub fn read_blocking(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<usize, VchanError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = self.read_unarmed(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let more = |c: &mut Channel<B::Mem>| {
                Ok(c.peek_ready()? > 0 || c.peer_state() == PeerState::Gone)
            };
            if self.spin_until(more)? || self.data_ready()? > 0 {
                continue;
            }
            // A peer that left before we asked sent its close event anyway;
            // one that leaves now sends it too.
            if self.peer_state() == Some(PeerState::Gone) {
                continue;
            }
            self.wait(timeout)?;
        }
    }

    /// Fills `buf` completely, waiting for events as needed.
    pub fn read_exact(
        &mut self,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> Result<(), VchanError> {
        let mut done = 0;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            done += self.read_blocking(rest, timeout)?;
        }
        Ok(())
    }

    /// Writes all of `data`, waiting for events as needed. `timeout`
    /// bounds each wait, not the whole call.
    ///
    /// Each write copies as much as the ring takes. The peer is asked for
    /// an event only when the ring is full and stays full for
    /// [`Vchan::set_spin`] looks: then the request is made
    /// ([`Vchan::buffer_space`]) and the space checked once more before
    /// the wait, so a read that frees space in between is never missed.
    pub fn write_all(&mut self, data: &[u8], timeout: Option<Duration>) -> Result<(), VchanError> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.write_unarmed(rest)?;
            rest = rest.get(n..).unwrap_or_default();
            if n > 0 {
                continue;
            }
            let room = |c: &mut Channel<B::Mem>| {
                Ok(c.peek_space()? > 0 || c.peer_state() == PeerState::Gone)
            };
            if self.spin_until(room)? || self.buffer_space()? > 0 {
                continue;
            }
            if self.peer_state() == Some(PeerState::Gone) {
                continue;
            }
            self.wait(timeout)?;
        }
        Ok(())
    }
}

impl<B: Backend> Drop for Vchan<B> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
