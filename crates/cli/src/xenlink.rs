//! Links from dom0 to the guests through Xen's own libxenvchan
//! ([`portcullis_hosted::xenvchan`]): [`XenChannel`] makes a libxenvchan
//! end a [`Channel`], so the same [`Framed`] link code runs over it as over
//! a guest's vchan or a UNIX socket.

use portcullis_apps::link::{Channel, Framed};
use portcullis_hosted::xenvchan::{vchan_path, VchanState, XenVchan, XenVchanError};
use portcullis_vchan::{Transport, VchanError};
use std::time::{Duration, Instant};

/// Ring sizes the dom0 servers ask for (0: the in-page rings, 1024 bytes
/// in and 2048 out). These are what Xen's `vchan-socket-proxy` asks for,
/// which the guests' vchan clients were checked against; the framing copes
/// with any ring size.
pub const SERVER_RING_MIN: (usize, usize) = (0, 0);

/// A libxenvchan end as a link channel.
pub struct XenChannel {
    v: XenVchan,
    /// The last wait failure, for the log (the channel reports it as the
    /// peer gone).
    failure: Option<XenVchanError>,
}

impl XenChannel {
    /// Wraps an end.
    pub fn new(v: XenVchan) -> XenChannel {
        XenChannel { v, failure: None }
    }

    /// The connection's state now.
    pub fn state(&mut self) -> VchanState {
        if self.failure.is_some() {
            return VchanState::Closed;
        }
        self.v.state()
    }
}

impl Transport for XenChannel {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        self.v.recv(buf)
    }
    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        self.v.send(data)
    }
    fn abort(&mut self) {
        self.v.abort();
    }
}

impl Channel for XenChannel {
    fn wait(&mut self, timeout: Duration) -> Result<(), VchanError> {
        if self.failure.is_some() {
            return Err(VchanError::Closed);
        }
        match self.v.wait(timeout) {
            Ok(true) => Ok(()),
            Ok(false) => Err(VchanError::Timeout),
            Err(e) => {
                eprintln!("warn: vchan with domain {}: {e}", self.v.domid());
                self.failure = Some(e);
                Err(VchanError::Closed)
            }
        }
    }
}

/// A framed link over libxenvchan.
pub type XenLink = Framed<XenChannel>;

/// Connects once as a client to the vchan `server` publishes for dom0 on
/// `port`.
pub fn client(server: u16, port: u32) -> Result<XenLink, XenVchanError> {
    XenVchan::client(server, &vchan_path(server, 0, port)).map(|v| Framed::new(XenChannel::new(v)))
}

/// Publishes a vchan on `port` for domain `client` (one connection).
pub fn server(client: u16, port: u32) -> Result<XenLink, XenVchanError> {
    let (read_min, write_min) = SERVER_RING_MIN;
    XenVchan::server(client, &vchan_path(0, client, port), read_min, write_min)
        .map(|v| Framed::new(XenChannel::new(v)))
}

/// Connects as a client, retrying while the server has not published the
/// ring, up to `patience`. A missing library or a bad path fails at once.
pub fn connect(server: u16, port: u32, patience: Duration) -> Result<XenLink, XenVchanError> {
    let deadline = Instant::now() + patience;
    loop {
        match client(server, port) {
            Ok(link) => return Ok(link),
            Err(e) if !e.is_transient() || Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
