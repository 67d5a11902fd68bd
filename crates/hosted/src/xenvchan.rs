//! Xen's own libxenvchan from a dom0 (or any Linux) process: the
//! `portcullis` tool's vchan links to the guests, byte-compatible by
//! construction because the other end of every guest link is Xen's C code.
//!
//! The library is loaded at run time (`dlopen`, the names in
//! [`LIBRARY_NAMES`] in order), so building needs no Xen headers or
//! libraries; where it is missing, [`XenVchanError::LibraryMissing`] says
//! what to install.
//!
//! [`XenVchan`] never blocks except in [`XenVchan::wait`]: its
//! [`Transport`] reads only what `libxenvchan_data_ready` reports and
//! writes only what `libxenvchan_buffer_space` allows. `wait` is `poll(2)`
//! on the event channel's descriptor with a timeout, then
//! `libxenvchan_wait` to consume the event.
//!
//! A libxenvchan server serves one connection: once its client has left,
//! drop it and create a new one (which publishes a fresh ring).

use std::ffi::CString;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use portcullis_vchan::{Transport, VchanError};

use crate::sys::{self, xenvchan::RawVchan};

/// The library file names tried, in order: Debian 13's Xen 4.20, Debian
/// 12's 4.17, then whatever the development symlink points at.
pub const LIBRARY_NAMES: [&str; 3] =
    ["libxenvchan.so.4.20", "libxenvchan.so.4.17", "libxenvchan.so"];

/// Longest xenstore path accepted: libxenvchan appends `/event-channel` in
/// a 64-byte buffer and would silently cut a longer path.
pub const MAX_PATH_LEN: usize = 64 - 1 - "/event-channel".len();

/// Largest ring libxenvchan accepts (`MAX_RING_SIZE`, 1 MiB).
pub const MAX_RING: usize = 1 << 20;

/// Which end a vchan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connects to a ring another domain published.
    Client,
    /// Publishes a ring for one client domain.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

/// What is wrong with a xenstore path given to [`XenVchan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// It does not start with `/`.
    NotAbsolute,
    /// It holds a NUL byte.
    InteriorNul,
    /// It is longer than [`MAX_PATH_LEN`].
    TooLong {
        /// Its length.
        len: usize,
    },
}

/// Why a libxenvchan operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XenVchanError {
    /// No libxenvchan could be loaded.
    LibraryMissing {
        /// The file names tried.
        tried: Vec<String>,
        /// `dlerror` for each, joined with `; `.
        detail: String,
    },
    /// The library lacks a function.
    SymbolMissing {
        /// The file loaded.
        library: String,
        /// The function missing.
        symbol: &'static str,
        /// `dlerror`'s message.
        detail: String,
    },
    /// The xenstore path is unusable.
    BadPath {
        /// The path (NUL bytes shown escaped).
        path: String,
        /// What is wrong with it.
        problem: PathProblem,
    },
    /// A server ring larger than [`MAX_RING`] was asked for.
    RingTooLarge {
        /// The size asked for.
        requested: usize,
    },
    /// `libxenvchan_client_init` or `libxenvchan_server_init` returned NULL
    /// (for a client, usually: the server has not published the ring yet).
    Init {
        /// Which end.
        role: Role,
        /// The peer domain.
        domid: u16,
        /// The xenstore path.
        path: String,
        /// `errno` after the call, if the library set one.
        errno: Option<i32>,
    },
    /// Waiting for an event failed.
    Wait {
        /// The call that failed: `poll` or `libxenvchan_wait`.
        call: &'static str,
        /// `errno`, if any.
        errno: Option<i32>,
    },
}

impl XenVchanError {
    /// Whether trying again later may help (the peer may publish, come
    /// back or be created again); `false` for a missing library or a bad
    /// argument.
    pub fn is_transient(&self) -> bool {
        matches!(self, XenVchanError::Init { .. } | XenVchanError::Wait { .. })
    }
}

fn errno_text(errno: Option<i32>) -> String {
    match errno {
        Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
        None => "no errno set".to_string(),
    }
}

impl fmt::Display for XenVchanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XenVchanError::LibraryMissing { tried, detail } => write!(
                f,
                "Xen's libxenvchan cannot be loaded (tried {}: {detail}); install xen-utils \
                 (Debian: xen-utils-4.17 or the host's version, which brings libxenvchan in \
                 libxenmisc)",
                tried.join(", ")
            ),
            XenVchanError::SymbolMissing { library, symbol, detail } => {
                write!(f, "{library} has no {symbol} ({detail}); is it Xen's libxenvchan?")
            }
            XenVchanError::BadPath { path, problem } => match problem {
                PathProblem::NotAbsolute => write!(f, "vchan path {path:?} is not absolute"),
                PathProblem::InteriorNul => write!(f, "vchan path {path:?} holds a NUL byte"),
                PathProblem::TooLong { len } => write!(
                    f,
                    "vchan path {path:?} is {len} bytes, over libxenvchan's {MAX_PATH_LEN}"
                ),
            },
            XenVchanError::RingTooLarge { requested } => {
                write!(
                    f,
                    "vchan ring of {requested} bytes asked for, over libxenvchan's {MAX_RING}"
                )
            }
            XenVchanError::Init { role, domid, path, errno } => write!(
                f,
                "libxenvchan {role} for domain {domid} at {path} failed: {}",
                errno_text(*errno)
            ),
            XenVchanError::Wait { call, errno } => {
                write!(f, "waiting on the vchan: {call} failed: {}", errno_text(*errno))
            }
        }
    }
}

impl std::error::Error for XenVchanError {}

/// The state of a vchan, as `libxenvchan_is_open` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VchanState {
    /// Both ends are open.
    Connected,
    /// A server whose client has not connected yet.
    Waiting,
    /// One end closed or crashed (or this end was aborted).
    Closed,
}

static LIB: OnceLock<Result<sys::xenvchan::Lib, XenVchanError>> = OnceLock::new();

/// The process's libxenvchan, loaded on first use.
fn library() -> Result<&'static sys::xenvchan::Lib, XenVchanError> {
    LIB.get_or_init(|| sys::xenvchan::load(&LIBRARY_NAMES)).as_ref().map_err(Clone::clone)
}

/// Loads libxenvchan now (once per process) and returns the file name that
/// was loaded: for a service to fail early, and to say which it uses.
pub fn load_library() -> Result<&'static str, XenVchanError> {
    library().map(|lib| lib.name.as_str())
}

/// Checks a xenstore path before it goes to C.
pub fn check_path(path: &str) -> Result<CString, XenVchanError> {
    let bad = |problem| XenVchanError::BadPath { path: path.escape_debug().to_string(), problem };
    if path.len() > MAX_PATH_LEN {
        return Err(bad(PathProblem::TooLong { len: path.len() }));
    }
    if !path.starts_with('/') {
        return Err(bad(PathProblem::NotAbsolute));
    }
    CString::new(path).map_err(|_| bad(PathProblem::InteriorNul))
}

/// The xenstore directory where `server` publishes the vchan on `port` for
/// `client`: `/local/domain/<server>/data/vchan/<client>/<port>`.
pub fn vchan_path(server: u16, client: u16, port: u32) -> String {
    format!("/local/domain/{server}/data/vchan/{client}/{port}")
}

/// One vchan end through Xen's libxenvchan; closed on drop.
pub struct XenVchan {
    raw: Option<RawVchan>,
    role: Role,
    domid: u16,
}

impl fmt::Debug for XenVchan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenVchan")
            .field("role", &self.role)
            .field("domid", &self.domid)
            .field("open", &self.raw.is_some())
            .finish()
    }
}

impl XenVchan {
    /// Connects to the vchan domain `domid` published at `path`.
    pub fn client(domid: u16, path: &str) -> Result<XenVchan, XenVchanError> {
        check_path(path)?;
        Self::client_on(library()?, domid, path)
    }

    /// [`XenVchan::client`] with the given library.
    fn client_on(
        lib: &'static sys::xenvchan::Lib,
        domid: u16,
        path: &str,
    ) -> Result<XenVchan, XenVchanError> {
        let c_path = check_path(path)?;
        let raw = RawVchan::client(lib, domid, &c_path).map_err(|errno| XenVchanError::Init {
            role: Role::Client,
            domid,
            path: path.to_string(),
            errno,
        })?;
        Ok(XenVchan { raw: Some(raw), role: Role::Client, domid })
    }

    /// Publishes a vchan at `path` for domain `domid` to connect to, with
    /// rings of at least `read_min` and `write_min` bytes (0: the smallest,
    /// inside the shared page).
    pub fn server(
        domid: u16,
        path: &str,
        read_min: usize,
        write_min: usize,
    ) -> Result<XenVchan, XenVchanError> {
        check_path(path)?;
        for requested in [read_min, write_min] {
            if requested > MAX_RING {
                return Err(XenVchanError::RingTooLarge { requested });
            }
        }
        Self::server_on(library()?, domid, path, read_min, write_min)
    }

    /// [`XenVchan::server`] with the given library.
    fn server_on(
        lib: &'static sys::xenvchan::Lib,
        domid: u16,
        path: &str,
        read_min: usize,
        write_min: usize,
    ) -> Result<XenVchan, XenVchanError> {
        let c_path = check_path(path)?;
        let raw = RawVchan::server(lib, domid, &c_path, read_min, write_min).map_err(|errno| {
            XenVchanError::Init { role: Role::Server, domid, path: path.to_string(), errno }
        })?;
        Ok(XenVchan { raw: Some(raw), role: Role::Server, domid })
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer domain.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The connection's state now.
    pub fn state(&mut self) -> VchanState {
        match self.raw.as_mut().map(RawVchan::is_open) {
            None | Some(0) => VchanState::Closed,
            Some(2) if self.role == Role::Server => VchanState::Waiting,
            Some(_) => VchanState::Connected,
        }
    }

    /// Whether the vchan is still usable (connected, or a server waiting
    /// for its client).
    pub fn is_open(&mut self) -> bool {
        self.state() != VchanState::Closed
    }

    /// Waits up to `timeout` for an event from the peer (data, room, a
    /// connection or a close). `Ok(false)`: the timeout passed first.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, XenVchanError> {
        let Some(raw) = self.raw.as_mut() else { return Ok(true) };
        let fd = raw.fd();
        let ready = sys::poll_readable(fd, Some(timeout))
            .map_err(|e| XenVchanError::Wait { call: "poll", errno: e.raw_os_error() })?;
        if !ready {
            return Ok(false);
        }
        if raw.wait() < 0 {
            return Err(XenVchanError::Wait {
                call: "libxenvchan_wait",
                errno: std::io::Error::last_os_error().raw_os_error(),
            });
        }
        Ok(true)
    }

    /// Bytes ready to read now (a hostile peer's count is bounded by the ring).
    fn ready(raw: &mut RawVchan) -> usize {
        usize::try_from(raw.data_ready()).unwrap_or(0)
    }
}

impl Transport for XenVchan {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        let Some(raw) = self.raw.as_mut() else { return Err(VchanError::Closed) };
        let mut ready = Self::ready(raw);
        if ready == 0 {
            if raw.is_open() != 0 {
                return Ok(0);
            }
            // Closed: hand out what the peer wrote before it left.
            ready = Self::ready(raw);
            if ready == 0 {
                return Err(VchanError::PeerClosed);
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = ready.min(buf.len());
        let Some(dst) = buf.get_mut(..want) else { return Ok(0) };
        match usize::try_from(raw.read(dst)) {
            Ok(n) if n <= want => Ok(n),
            Ok(_) => Err(VchanError::BrokenPeer),
            // Only a failed notification of a peer that is gone.
            Err(_) => Err(VchanError::PeerClosed),
        }
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        let Some(raw) = self.raw.as_mut() else { return Err(VchanError::Closed) };
        if raw.is_open() == 0 {
            return Err(VchanError::PeerClosed);
        }
        let space = usize::try_from(raw.buffer_space()).unwrap_or(0);
        let n = space.min(data.len());
        if n == 0 {
            return Ok(0);
        }
        let Some(src) = data.get(..n) else { return Ok(0) };
        match usize::try_from(raw.write(src)) {
            Ok(w) if w <= n => Ok(w),
            Ok(_) => Err(VchanError::BrokenPeer),
            Err(_) => Err(VchanError::PeerClosed),
        }
    }

    fn abort(&mut self) {
        self.raw = None; // closes it
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_what_to_install() {
        let names = ["libportcullis-no-such-library.so.0", "libportcullis-nor-this.so.1"];
        let Err(e) = sys::xenvchan::load(&names) else {
            panic!("a library that does not exist loaded");
        };
        let XenVchanError::LibraryMissing { tried, detail } = &e else {
            panic!("expected LibraryMissing, got {e:?}");
        };
        assert_eq!(tried, &names.map(String::from));
        // Why each one failed, not only the last.
        assert!(detail.contains(names[0]) && detail.contains(names[1]), "{detail}");
        let text = e.to_string();
        assert!(text.contains("xen-utils") && text.contains("libxenvchan"), "{text}");
        assert!(!e.is_transient());
    }

    #[test]
    fn a_library_without_the_functions_is_refused_by_name() {
        // The C library loads everywhere and has no libxenvchan functions.
        let Err(e) = sys::xenvchan::load(&["libportcullis-no-such-library.so.0", "libc.so.6"])
        else {
            panic!("libc bound as libxenvchan");
        };
        match &e {
            XenVchanError::SymbolMissing { library, symbol, .. } => {
                assert_eq!(library, "libc.so.6");
                assert_eq!(*symbol, "libxenvchan_client_init");
            }
            other => panic!("expected SymbolMissing, got {other:?}"),
        }
    }

    #[test]
    fn paths_are_checked_before_any_c_call() {
        let problem = |p: &str| match check_path(p) {
            Err(XenVchanError::BadPath { problem, .. }) => Some(problem),
            Err(e) => panic!("unexpected {e:?}"),
            Ok(_) => None,
        };
        assert_eq!(problem("/local/domain/0/data/vchan/5/9003"), None);
        assert_eq!(problem("local/domain/0"), Some(PathProblem::NotAbsolute));
        assert_eq!(problem("/local/domain/0\0/x"), Some(PathProblem::InteriorNul));
        let longest = vchan_path(32751, 32751, 65535);
        assert_eq!(problem(&longest), None, "{longest} must fit");
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(problem(&long), Some(PathProblem::TooLong { len: MAX_PATH_LEN + 1 }));
        // The public constructors refuse them too, whether or not the
        // library is installed.
        assert!(matches!(
            XenVchan::client(1, "/a\0b"),
            Err(XenVchanError::BadPath { problem: PathProblem::InteriorNul, .. })
        ));
        assert!(matches!(
            XenVchan::server(1, "relative", 0, 0),
            Err(XenVchanError::BadPath { problem: PathProblem::NotAbsolute, .. })
        ));
        assert_eq!(
            XenVchan::server(1, "/local/domain/0/data/vchan/1/9003", MAX_RING + 1, 0).err(),
            Some(XenVchanError::RingTooLarge { requested: MAX_RING + 1 })
        );
    }

    use crate::sys::xenvchan::fake;

    /// A server and its connected client over the fake library, at a path
    /// of their own.
    fn fake_pair(name: &str) -> (XenVchan, XenVchan, String) {
        let path = format!("/fake/{name}");
        let mut server = XenVchan::server_on(fake::lib(), 5, &path, 0, 0).unwrap();
        assert_eq!(server.state(), VchanState::Waiting);
        assert!(server.is_open());
        let mut client = XenVchan::client_on(fake::lib(), 0, &path).unwrap();
        assert_eq!(client.state(), VchanState::Connected);
        assert_eq!(server.state(), VchanState::Connected);
        (server, client, path)
    }

    /// Receives until `want` bytes arrived, waiting between tries.
    fn recv_all(v: &mut XenVchan, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 700];
        while got.len() < want {
            match v.recv(&mut buf).unwrap() {
                0 => assert!(v.wait(Duration::from_secs(5)).unwrap(), "no event"),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    }

    #[test]
    fn a_client_of_an_unpublished_vchan_fails_to_init() {
        match XenVchan::client_on(fake::lib(), 9, "/fake/nobody") {
            Err(XenVchanError::Init { role: Role::Client, domid: 9, path, .. }) => {
                assert_eq!(path, "/fake/nobody");
            }
            other => panic!("expected an init failure, got {other:?}"),
        }
    }

    #[test]
    fn bytes_cross_both_ways_in_ring_sized_pieces_without_a_blocking_call() {
        let (mut server, mut client, path) = fake_pair("cross");
        let up: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 4096];
        while got_up.len() < up.len() || got_down.len() < down.len() {
            sent_up += client.send(&up[sent_up..]).unwrap();
            sent_down += server.send(&down[sent_down..]).unwrap();
            let n = server.recv(&mut buf).unwrap();
            got_up.extend_from_slice(&buf[..n]);
            let n = client.recv(&mut buf).unwrap();
            got_down.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
        // A full ring took only what fit.
        assert!(client.send(&[0u8; 4096]).unwrap() <= 1024);
        assert_eq!(client.send(&[0u8; 4096]).unwrap(), 0);
        assert_eq!(fake::violations(&path), 0, "a call that could block was made");
    }

    #[test]
    fn wait_times_out_without_an_event_and_returns_on_one() {
        let (mut server, mut client, path) = fake_pair("wait");
        // Drain the connection event first.
        while server.wait(Duration::from_millis(1)).unwrap() {}
        let t = std::time::Instant::now();
        assert!(!server.wait(Duration::from_millis(50)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(client.send(b"ping").unwrap(), 4);
        assert!(server.wait(Duration::from_secs(5)).unwrap());
        assert_eq!(recv_all(&mut server, 4), b"ping");
        assert_eq!(fake::violations(&path), 0);
    }

    #[test]
    fn data_sent_before_a_close_is_delivered_then_the_end_is_reported() {
        let (mut server, mut client, path) = fake_pair("close");
        assert_eq!(client.send(b"last words").unwrap(), 10);
        drop(client);
        assert_eq!(server.state(), VchanState::Closed);
        assert_eq!(recv_all(&mut server, 10), b"last words");
        let mut buf = [0u8; 16];
        assert_eq!(server.recv(&mut buf), Err(VchanError::PeerClosed));
        assert_eq!(server.send(b"x"), Err(VchanError::PeerClosed));
        assert_eq!(fake::violations(&path), 0);
    }

    #[test]
    fn abort_closes_this_end_and_tells_the_peer() {
        let (mut server, mut client, path) = fake_pair("abort");
        client.abort();
        assert_eq!(client.state(), VchanState::Closed);
        let mut buf = [0u8; 4];
        assert_eq!(client.recv(&mut buf), Err(VchanError::Closed));
        assert_eq!(client.send(b"x"), Err(VchanError::Closed));
        assert_eq!(server.recv(&mut buf), Err(VchanError::PeerClosed));
        assert_eq!(fake::violations(&path), 0);
    }

    #[test]
    fn without_xen_a_client_fails_with_a_typed_error() {
        // Here either libxenvchan is absent, or it is present and finds no
        // Xen (no xenstore, no ring): never a vchan.
        match XenVchan::client(7, &vchan_path(7, 0, 9001)) {
            Err(XenVchanError::LibraryMissing { tried, .. }) => {
                assert_eq!(tried, LIBRARY_NAMES.map(String::from).to_vec());
            }
            Err(XenVchanError::Init { role, domid, path, .. }) => {
                assert_eq!((role, domid), (Role::Client, 7));
                assert_eq!(path, "/local/domain/7/data/vchan/0/9001");
            }
            other => panic!("expected a missing library or a failed init, got {other:?}"),
        }
    }
}
