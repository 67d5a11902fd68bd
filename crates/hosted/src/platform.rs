//! [`HostedPlatform`]: the [`Platform`] a guest gets when it runs as a
//! Linux process started by a [`crate::World`] launcher.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_platform::{ConfigItem, IoCause, IoDetail, IoOp, Platform, PlatformError};
use portcullis_vchan::{Backend, BackendError, DomId, Port};

use crate::sys;
use crate::{HostedBackend, HostedError, World, DOMID_ENV};

const STDIN: libc::c_int = 0;
const BACKSPACE: u8 = 0x08;
const DELETE: u8 = 0x7f;

/// A guest's platform on Linux: its backend, identity, clocks, console
/// (stdin/stdout), entropy (`getrandom`) and boot configuration (files).
pub struct HostedPlatform {
    world: World,
    backend: HostedBackend,
    name: String,
    started: Instant,
}

impl HostedPlatform {
    /// The platform of the domain a launcher started this process as
    /// (`PORTCULLIS_WORLD`, `PORTCULLIS_DOMID`).
    pub fn from_env() -> Result<Self, HostedError> {
        let world = World::from_env()?;
        let id = std::env::var(DOMID_ENV).map_err(|_| HostedError::Env(DOMID_ENV))?;
        let id = id.parse::<u16>().map_err(|_| HostedError::Env(DOMID_ENV))?;
        Self::open(world, DomId(id))
    }

    /// The platform of domain `dom` in `world`.
    pub fn open(world: World, dom: DomId) -> Result<Self, HostedError> {
        let name = world.domain_name(dom)?;
        let backend = world.backend(dom)?;
        Ok(HostedPlatform { world, backend, name, started: Instant::now() })
    }

    fn config_path(&self, item: ConfigItem) -> PathBuf {
        self.world.dir().join("config").join(&self.name).join(item.name())
    }
}

/// Reads at most `buf.len()` bytes of `path`; larger files are refused.
fn read_bounded(path: &Path, buf: &mut [u8]) -> Result<usize, PlatformError> {
    let mut file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PlatformError::MissingConfig),
        Err(_) => return Err(PlatformError::BadConfig),
    };
    let mut len = 0;
    loop {
        let Some(rest) = buf.get_mut(len..).filter(|r| !r.is_empty()) else {
            // Full: anything more means the item is too large.
            let mut probe = [0u8; 1];
            return match file.read(&mut probe) {
                Ok(0) => Ok(len),
                _ => Err(PlatformError::BadConfig),
            };
        };
        match file.read(rest) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(PlatformError::BadConfig),
        }
    }
}

/// Reads a line from stdin byte by byte (so nothing past the newline is
/// consumed), handling backspace and echoing if asked. The terminal, if
/// stdin is one, is in non-canonical no-echo mode for the duration.
fn read_line(
    buf: &mut [u8],
    echo: bool,
    timeout: Option<Duration>,
) -> Result<usize, PlatformError> {
    let tty = sys::is_tty(STDIN);
    let _raw = if tty {
        Some(sys::RawInput::enable(STDIN).map_err(|_| PlatformError::Console)?)
    } else {
        None
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut out = io::stdout();
    let mut len = 0usize;
    let mut overflow = false;
    loop {
        let left = match deadline {
            None => None,
            Some(d) => Some(
                d.checked_duration_since(Instant::now())
                    .filter(|l| !l.is_zero())
                    .ok_or(PlatformError::Timeout)?,
            ),
        };
        if !sys::poll_readable(STDIN, left).map_err(|_| PlatformError::Console)? {
            return Err(PlatformError::Timeout);
        }
        let byte = sys::read_byte(STDIN).map_err(|_| PlatformError::Console)?;
        match byte {
            None if len == 0 && !overflow => return Err(PlatformError::Console),
            None | Some(b'\n') | Some(b'\r') => break,
            Some(BACKSPACE | DELETE) => {
                if len > 0 {
                    len -= 1;
                    if echo && tty {
                        let _ = out.write_all(b"\x08 \x08");
                    }
                }
            }
            Some(b) => match buf.get_mut(len) {
                Some(slot) => {
                    *slot = b;
                    len += 1;
                    if echo && tty {
                        let _ = out.write_all(&[b]);
                    }
                }
                None => overflow = true,
            },
        }
        let _ = out.flush();
    }
    if tty {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    if overflow {
        // Never hand back a silently truncated line (it may be a passphrase).
        if let Some(filled) = buf.get_mut(..len) {
            filled.fill(0);
        }
        return Err(PlatformError::Console);
    }
    Ok(len)
}

/// The cause of a failed file operation: its errno when the OS gave one.
fn file_cause(e: &io::Error) -> IoCause {
    match e.raw_os_error() {
        Some(n) => IoCause::Errno(n),
        None => IoCause::Other("file operation failed"),
    }
}

/// The cause of a failed backend (event channel, store) operation.
fn backend_cause(e: BackendError) -> IoCause {
    IoCause::Other(e.as_str())
}

/// The cause of a failed world (store directory) operation.
fn world_cause(e: &HostedError) -> IoCause {
    match e {
        HostedError::Backend(b) => backend_cause(*b),
        HostedError::Io(_) => IoCause::Other("store file operation failed"),
        HostedError::BadMeasurement => IoCause::Other("not dom0's 64 lowercase hex digits"),
        _ => IoCause::Other("world unusable"),
    }
}

impl Platform for HostedPlatform {
    type Backend = HostedBackend;

    fn backend(&self) -> HostedBackend {
        self.backend.clone()
    }

    fn domid(&self) -> DomId {
        self.backend.domid()
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn now_unix(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }

    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn console_write(&mut self, text: &str) {
        let mut out = io::stdout();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    fn console_read_line(
        &mut self,
        buf: &mut [u8],
        echo: bool,
        timeout: Option<Duration>,
    ) -> Result<usize, PlatformError> {
        read_line(buf, echo, timeout)
    }

    /// The hosted stand-in for RDSEED: the kernel's CSPRNG via `getrandom(2)`.
    fn hw_entropy(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        sys::getrandom(buf).map_err(|_| PlatformError::NoEntropy)
    }

    fn config(&mut self, item: ConfigItem, buf: &mut [u8]) -> Result<usize, PlatformError> {
        read_bounded(&self.config_path(item), buf)
    }

    fn persist(&mut self, item: ConfigItem, bytes: &[u8]) -> Result<(), PlatformError> {
        let path = self.config_path(item);
        let shown = path.to_string_lossy();
        let fail = |cause| PlatformError::Io(IoDetail::new(IoOp::Persist, cause).on(&shown));
        let dir = path.parent().ok_or(fail(IoCause::Invalid))?;
        let tmp = dir.join(format!(".{}.persist", item.name()));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| fail(file_cause(&e)))
    }

    /// The launcher's measurement of `dom` (`World::set_measurement`),
    /// read again on every call; none is [`PlatformError::MissingConfig`].
    fn measurement(&mut self, dom: DomId) -> Result<[u8; 32], PlatformError> {
        let node = format!("/local/domain/{}/measurement", dom.0);
        self.world
            .measurement(dom)
            .map_err(|e| {
                PlatformError::Io(IoDetail::new(IoOp::StoreRead, world_cause(&e)).on(&node))
            })?
            .ok_or(PlatformError::MissingConfig)
    }

    fn resolve(&mut self, name: &str) -> Result<DomId, PlatformError> {
        self.world
            .resolve(name)
            .map_err(|e| PlatformError::Io(IoDetail::new(IoOp::Resolve, world_cause(&e)).on(name)))?
            .ok_or(PlatformError::UnknownDomain)
    }

    fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, PlatformError> {
        self.backend
            .wait_any(ports, timeout)
            .map_err(|e| PlatformError::Io(IoDetail::new(IoOp::EventWait, backend_cause(e))))
    }

    fn shutdown(&mut self, code: u8) -> ! {
        let _ = io::stdout().flush();
        std::process::exit(i32::from(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("item");
        assert_eq!(read_bounded(&path, &mut [0; 4]), Err(PlatformError::MissingConfig));
        fs::write(&path, b"abcd").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(read_bounded(&path, &mut buf), Ok(4));
        assert_eq!(&buf, b"abcd");
        assert_eq!(read_bounded(&path, &mut [0; 3]), Err(PlatformError::BadConfig));
        let mut big = [0u8; 10];
        assert_eq!(read_bounded(&path, &mut big), Ok(4));
    }

    #[test]
    fn io_failures_carry_their_cause() {
        let e = io::Error::from_raw_os_error(28);
        assert_eq!(file_cause(&e), IoCause::Errno(28));
        let detail = IoDetail::new(IoOp::Persist, file_cause(&e)).on("/w/config/cryptod/x");
        assert_eq!(
            PlatformError::Io(detail).to_string(),
            "platform I/O failed: persist /w/config/cryptod/x: errno 28"
        );
        assert_eq!(
            world_cause(&HostedError::Backend(BackendError::Store)),
            IoCause::Other("store operation failed")
        );
    }
}
