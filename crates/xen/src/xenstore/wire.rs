//! The xenstore wire protocol (`io/xs_wire.h`): a 16-byte header
//! (`type`, `req_id`, `tx_id`, `len`, native-endian `u32`s) followed by
//! `len` payload bytes, at most [`PAYLOAD_MAX`].
//!
//! Pure and allocation-bounded: [`encode`] refuses oversized requests and
//! [`Reassembler`] refuses a header announcing more than [`PAYLOAD_MAX`]
//! before buffering any of its payload.

use alloc::vec::Vec;
use core::fmt;

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const PATH_MAX: usize = 3072;

/// Message types used here (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// List a node's children.
    Directory = 1,
    /// Read a value.
    Read = 2,
    /// Register a watch.
    Watch = 4,
    /// Remove a watch.
    Unwatch = 5,
    /// Start a transaction.
    TransactionStart = 6,
    /// Commit or abort a transaction.
    TransactionEnd = 7,
    /// Write a value.
    Write = 11,
    /// Remove a node and its children.
    Rm = 13,
    /// Set a node's permissions.
    SetPerms = 14,
    /// An asynchronous watch event (from the daemon).
    WatchEvent = 15,
    /// An error reply (from the daemon).
    Error = 16,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::Directory,
            2 => Op::Read,
            4 => Op::Watch,
            5 => Op::Unwatch,
            6 => Op::TransactionStart,
            7 => Op::TransactionEnd,
            11 => Op::Write,
            13 => Op::Rm,
            14 => Op::SetPerms,
            15 => Op::WatchEvent,
            16 => Op::Error,
            _ => return None,
        })
    }
}

/// Errors the daemon names in an `XS_ERROR` reply (`xsd_errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    /// `EINVAL`.
    Inval,
    /// `EACCES`.
    Acces,
    /// `EEXIST`.
    Exist,
    /// `EISDIR`.
    IsDir,
    /// `ENOENT`.
    NoEnt,
    /// `ENOMEM`.
    NoMem,
    /// `ENOSPC`.
    NoSpc,
    /// `EIO`.
    Io,
    /// `ENOTEMPTY`.
    NotEmpty,
    /// `ENOSYS`.
    NoSys,
    /// `EROFS`.
    RoFs,
    /// `EBUSY`.
    Busy,
    /// `EAGAIN` (a transaction must be retried).
    Again,
    /// `EISCONN`.
    IsConn,
    /// `E2BIG`.
    TooBig,
    /// `EPERM`.
    Perm,
    /// A name this client does not know.
    Other,
}

impl Errno {
    /// The error's name as xenstored spells it (`"ENOENT"`).
    pub const fn name(self) -> &'static str {
        match self {
            Errno::Inval => "EINVAL",
            Errno::Acces => "EACCES",
            Errno::Exist => "EEXIST",
            Errno::IsDir => "EISDIR",
            Errno::NoEnt => "ENOENT",
            Errno::NoMem => "ENOMEM",
            Errno::NoSpc => "ENOSPC",
            Errno::Io => "EIO",
            Errno::NotEmpty => "ENOTEMPTY",
            Errno::NoSys => "ENOSYS",
            Errno::RoFs => "EROFS",
            Errno::Busy => "EBUSY",
            Errno::Again => "EAGAIN",
            Errno::IsConn => "EISCONN",
            Errno::TooBig => "E2BIG",
            Errno::Perm => "EPERM",
            Errno::Other => "an error name this client does not know",
        }
    }

    /// Parses the error name of an `XS_ERROR` payload (`"ENOENT\0"`).
    pub fn parse(payload: &[u8]) -> Errno {
        let name = payload.split(|&b| b == 0).next().unwrap_or_default();
        match name {
            b"EINVAL" => Errno::Inval,
            b"EACCES" => Errno::Acces,
            b"EEXIST" => Errno::Exist,
            b"EISDIR" => Errno::IsDir,
            b"ENOENT" => Errno::NoEnt,
            b"ENOMEM" => Errno::NoMem,
            b"ENOSPC" => Errno::NoSpc,
            b"EIO" => Errno::Io,
            b"ENOTEMPTY" => Errno::NotEmpty,
            b"ENOSYS" => Errno::NoSys,
            b"EROFS" => Errno::RoFs,
            b"EBUSY" => Errno::Busy,
            b"EAGAIN" => Errno::Again,
            b"EISCONN" => Errno::IsConn,
            b"E2BIG" => Errno::TooBig,
            b"EPERM" => Errno::Perm,
            _ => Errno::Other,
        }
    }
}

/// The errno name, as the daemon sends it (`ENOENT`), from [`Errno::name`].
impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl core::error::Error for Errno {}

/// A xenstore operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsError {
    /// The daemon answered with an error.
    Daemon(Errno),
    /// A request would exceed [`PAYLOAD_MAX`], or a path or token is invalid.
    Request,
    /// The daemon sent something malformed (bad type, oversized length,
    /// unexpected reply).
    Protocol,
    /// The ring or its event channel failed, or we run without xenstore.
    Transport,
    /// No reply before the timeout.
    Timeout,
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsError::Daemon(e) => write!(f, "xenstore error {}", e.name()),
            XsError::Request => f.write_str("invalid xenstore request"),
            XsError::Protocol => f.write_str("malformed xenstore reply"),
            XsError::Transport => f.write_str("xenstore ring unavailable"),
            XsError::Timeout => f.write_str("xenstore timed out"),
        }
    }
}

impl core::error::Error for XsError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            XsError::Daemon(e) => Some(e),
            _ => None,
        }
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw message type.
    pub kind: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes a header; refuses lengths above [`PAYLOAD_MAX`].
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, XsError> {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header { kind: w(0), req_id: w(4), tx_id: w(8), len: w(12) };
        if h.len as usize > PAYLOAD_MAX {
            return Err(XsError::Protocol);
        }
        Ok(h)
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (chunk, v) in b.chunks_exact_mut(4).zip([self.kind, self.req_id, self.tx_id, self.len])
        {
            chunk.copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// Checks a path or token: non-empty, no NUL, at most [`PATH_MAX`] bytes.
pub fn check_name(name: &str) -> Result<(), XsError> {
    if name.is_empty() || name.len() > PATH_MAX || name.bytes().any(|b| b == 0) {
        return Err(XsError::Request);
    }
    Ok(())
}

/// A payload part: a string followed by NUL, or raw bytes (a written value).
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    /// Text with its terminating NUL.
    Str(&'a str),
    /// Raw bytes without terminator.
    Raw(&'a [u8]),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Str(s) => s.len() + 1,
            Part::Raw(b) => b.len(),
        }
    }
}

/// Encodes a request; refuses payloads over [`PAYLOAD_MAX`].
pub fn encode(op: Op, req_id: u32, tx_id: u32, parts: &[Part<'_>]) -> Result<Vec<u8>, XsError> {
    let len =
        parts.iter().try_fold(0usize, |acc, p| acc.checked_add(p.len())).ok_or(XsError::Request)?;
    if len > PAYLOAD_MAX {
        return Err(XsError::Request);
    }
    let header = Header { kind: op as u32, req_id, tx_id, len: len as u32 };
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&header.encode());
    for p in parts {
        match p {
            Part::Str(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Part::Raw(b) => out.extend_from_slice(b),
        }
    }
    Ok(out)
}

/// A complete message from the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its header (`len` equals `payload.len()`).
    pub header: Header,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// The message type, if known.
    pub fn op(&self) -> Option<Op> {
        Op::from_u32(self.header.kind)
    }

    /// The reply as a result: an `XS_ERROR` becomes [`XsError::Daemon`], a
    /// reply of another type than `expected` is a protocol error.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn into_reply(self, expected: Op) -> Result<Vec<u8>, XsError> {
        match self.op() {
            Some(Op::Error) => Err(XsError::Daemon(Errno::parse(&self.payload))),
            Some(op) if op == expected => Ok(self.payload),
            _ => Err(XsError::Protocol),
        }
    }

    /// A watch event's path and token.
    pub fn watch_event(&self) -> Option<(&str, &str)> {
        if self.op() != Some(Op::WatchEvent) {
            return None;
        }
        let mut fields = self.payload.split(|&b| b == 0);
        let path = core::str::from_utf8(fields.next()?).ok()?;
        let token = core::str::from_utf8(fields.next()?).ok()?;
        Some((path, token))
    }
}

/// Splits a `XS_DIRECTORY` reply into names (NUL-separated, NUL-terminated).
pub fn directory_entries(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|&b| b == 0).filter(|name| !name.is_empty())
}

/// Collects bytes read from the response ring into messages.
#[derive(Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
    header: Option<Header>,
}

impl Reassembler {
    /// How many more bytes the current message needs.
    pub fn wanted(&self) -> usize {
        match self.header {
            None => HEADER_LEN - self.buf.len(),
            Some(h) => h.len as usize - self.buf.len(),
        }
    }

    /// Takes bytes from `input` (no more than the current message needs);
    /// returns how many were used and the message if it is now complete.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Message>), XsError> {
        let take = self.wanted().min(input.len());
        self.buf.extend_from_slice(input.get(..take).unwrap_or_default());
        if self.wanted() == 0 {
            match self.header {
                None => {
                    let mut h = [0u8; HEADER_LEN];
                    h.copy_from_slice(&self.buf);
                    self.buf.clear();
                    let header = Header::decode(&h)?;
                    self.buf.reserve_exact(header.len as usize);
                    self.header = Some(header);
                    if header.len == 0 {
                        self.header = None;
                        return Ok((take, Some(Message { header, payload: Vec::new() })));
                    }
                }
                Some(header) => {
                    self.header = None;
                    let payload = core::mem::take(&mut self.buf);
                    return Ok((take, Some(Message { header, payload })));
                }
            }
        }
        Ok((take, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(r: &mut Reassembler, mut bytes: &[u8]) -> Result<Vec<Message>, XsError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (used, msg) = r.push(bytes)?;
            out.extend(msg);
            bytes = &bytes[used..];
        }
        Ok(out)
    }

    #[test]
    fn write_request_layout() {
        let m = encode(Op::Write, 7, 3, &[Part::Str("data/x"), Part::Raw(b"v\x00\x01")]).unwrap();
        let h = Header::decode(m[..16].try_into().unwrap()).unwrap();
        assert_eq!(h, Header { kind: 11, req_id: 7, tx_id: 3, len: 10 });
        assert_eq!(&m[16..], b"data/x\0v\x00\x01");
    }

    #[test]
    fn oversized_requests_are_refused() {
        let big = [b'a'; PAYLOAD_MAX];
        assert_eq!(
            encode(Op::Write, 1, 0, &[Part::Str("p"), Part::Raw(&big)]),
            Err(XsError::Request)
        );
        assert!(encode(Op::Write, 1, 0, &[Part::Raw(&big)]).is_ok());
        assert_eq!(check_name(""), Err(XsError::Request));
        assert_eq!(check_name("a\0b"), Err(XsError::Request));
        assert!(check_name("/local/domain/1/name").is_ok());
    }

    #[test]
    fn messages_survive_byte_by_byte_delivery() {
        let mut wire = encode(Op::Read, 1, 0, &[Part::Raw(b"hello")]).unwrap();
        wire.extend(encode(Op::Error, 2, 0, &[Part::Str("ENOENT")]).unwrap());
        wire.extend(encode(Op::TransactionStart, 3, 0, &[]).unwrap());
        let mut r = Reassembler::default();
        let mut msgs = Vec::new();
        for b in &wire {
            let (used, msg) = r.push(core::slice::from_ref(b)).unwrap();
            assert_eq!(used, 1);
            msgs.extend(msg);
        }
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].clone().into_reply(Op::Read).unwrap(), b"hello");
        assert_eq!(msgs[1].clone().into_reply(Op::Read), Err(XsError::Daemon(Errno::NoEnt)));
        assert_eq!(msgs[2].header.len, 0);
        assert_eq!(msgs[0].clone().into_reply(Op::Write), Err(XsError::Protocol));
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        let header = Header { kind: 2, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 + 1 }.encode();
        let mut r = Reassembler::default();
        assert_eq!(feed_all(&mut r, &header), Err(XsError::Protocol));
        let header = Header { kind: 2, req_id: 1, tx_id: 0, len: u32::MAX }.encode();
        assert_eq!(Header::decode(&header), Err(XsError::Protocol));
        // Exactly PAYLOAD_MAX is fine.
        let mut wire =
            Header { kind: 2, req_id: 1, tx_id: 0, len: PAYLOAD_MAX as u32 }.encode().to_vec();
        wire.extend([b'x'; PAYLOAD_MAX]);
        let msgs = feed_all(&mut Reassembler::default(), &wire).unwrap();
        assert_eq!(msgs[0].payload.len(), PAYLOAD_MAX);
    }

    #[test]
    fn watch_events_and_directories_parse() {
        let wire =
            encode(Op::WatchEvent, 0, 0, &[Part::Str("/local/domain/3/x"), Part::Str("tok1")])
                .unwrap();
        let msgs = feed_all(&mut Reassembler::default(), &wire).unwrap();
        assert_eq!(msgs[0].watch_event(), Some(("/local/domain/3/x", "tok1")));
        let names: Vec<&[u8]> = directory_entries(b"0\x001\x0012\x00").collect();
        assert_eq!(names, [&b"0"[..], b"1", b"12"]);
        assert_eq!(Errno::parse(b"EAGAIN\0"), Errno::Again);
        assert_eq!(Errno::parse(b"EWHAT\0"), Errno::Other);
        for name in ["EINVAL", "EACCES", "ENOENT", "EIO", "EAGAIN", "E2BIG", "EPERM", "ENOTEMPTY"] {
            assert_eq!(Errno::parse(name.as_bytes()).name(), name);
        }
    }
}
