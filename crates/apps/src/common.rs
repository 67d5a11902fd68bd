//! Pieces every guest uses: well-known vchan ports, settings, randomness,
//! timeouts and the error type.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;
use core::time::Duration;

use portcullis_platform::{Platform, PlatformError};
use portcullis_proto::msg::RequestId;
use portcullis_vchan::VchanError;

use crate::link::LinkError;
use crate::settings::SettingsError;

/// vchan port numbers (the last component of
/// `/local/domain/<server>/data/vchan/<client>/<port>`).
pub mod port {
    /// cryptod's request service (server: cryptod; clients: unlocker, policy_pd, dom0 agent).
    pub const CRYPTOD: u32 = 9001;
    /// entropyd's publication channel (server: entropyd; client: cryptod).
    pub const ENTROPY: u32 = 9002;
    /// The dom0 unlock agent (server: dom0; client: unlocker).
    pub const UNLOCK_AGENT: u32 = 9003;
    /// cryptod's audit shipping channel (server: cryptod; client: the dom0 collector).
    pub const AUDIT: u32 = 9005;
}

/// Ring sizes asked for by servers (each way).
pub const RING_BYTES: usize = 16 * 1024;
/// How long a single wait for a peer event may take.
pub const STEP: Duration = Duration::from_millis(200);
/// How long to wait for a peer to answer a request. cryptod answers only
/// once the state the answer depends on is durable in dom0 (each attempt
/// waits up to 5 s for dom0's acknowledgement, then is retried), so a busy
/// dom0 can delay an answer by several of those: a shorter patience made
/// the unlocker give up on answers that were on their way.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a guest stopped.
#[derive(Debug)]
pub enum AppError {
    /// A platform service failed.
    Platform(PlatformError),
    /// A link to a peer failed.
    Link(LinkError),
    /// The boot configuration is wrong.
    Config(String),
    /// The settings item is wrong (boxed: it is rare, and every
    /// `Result<_, AppError>` stays small).
    Settings(Box<SettingsError>),
    /// The peer answered with something unexpected.
    Protocol(String),
    /// The peer cannot answer yet: cryptod's `busy` error or an
    /// `unavailable` result (before its first seed, or its audit outbox
    /// full); ask again later. The reason it gave.
    Busy(String),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Platform(e) => write!(f, "platform: {e}"),
            AppError::Link(e) => write!(f, "link: {e}"),
            AppError::Config(e) => write!(f, "configuration: {e}"),
            AppError::Settings(e) => write!(f, "settings: {e}"),
            AppError::Protocol(e) => write!(f, "protocol: {e}"),
            AppError::Busy(e) => write!(f, "busy: {e}"),
        }
    }
}

impl core::error::Error for AppError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            AppError::Platform(e) => Some(e),
            AppError::Link(e) => Some(e),
            AppError::Settings(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<PlatformError> for AppError {
    fn from(e: PlatformError) -> Self {
        AppError::Platform(e)
    }
}

impl From<SettingsError> for AppError {
    fn from(e: SettingsError) -> Self {
        AppError::Settings(Box::new(e))
    }
}

impl From<LinkError> for AppError {
    fn from(e: LinkError) -> Self {
        AppError::Link(e)
    }
}

impl From<VchanError> for AppError {
    fn from(e: VchanError) -> Self {
        AppError::Link(LinkError::from(e))
    }
}

/// Resolves a domain name through the platform; `dom0` is domain 0.
pub fn resolve_dom<P: Platform>(
    p: &mut P,
    name: &str,
) -> Result<portcullis_platform::DomId, AppError> {
    if name == "dom0" {
        return Ok(portcullis_platform::DomId(0));
    }
    p.resolve(name).map_err(|e| AppError::Config(alloc::format!("domain \"{name}\": {e}")))
}

/// `N` bytes from the platform's hardware entropy source.
pub fn random<P: Platform, const N: usize>(p: &mut P) -> Result<[u8; N], AppError> {
    let mut b = [0u8; N];
    p.hw_entropy(&mut b)?;
    Ok(b)
}

/// A fresh request id (UUIDv4 layout).
pub fn request_id<P: Platform>(p: &mut P) -> Result<RequestId, AppError> {
    let mut b: [u8; 16] = random(p)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(RequestId(b))
}

/// Writes a line to the console.
pub fn say<P: Platform>(p: &mut P, args: fmt::Arguments<'_>) {
    let mut s = String::new();
    let _ = fmt::write(&mut s, args);
    s.push('\n');
    p.console_write(&s);
}

/// `say!(platform, "format", args...)`: one console line.
#[macro_export]
macro_rules! say {
    ($p:expr, $($arg:tt)*) => { $crate::common::say($p, format_args!($($arg)*)) };
}
