//! The bounded CBOR codec under every message and payload of this crate: the
//! [`Reader`] and [`Writer`], the [`Field`] trait with its impls for the wire
//! types, the `text_enum!` and `wire_struct!` macros, and the codec errors.
//!
//! The codec is written by hand (over a byte slice) rather than through serde
//! so that it accepts exactly what `protocol/messages.cddl` allows: definite
//! lengths and preferred (shortest) integer heads only, no tags, no floats, no
//! unknown or duplicate keys. Every length is checked against the bytes
//! actually present before anything is allocated, so decoding allocates at
//! most a small constant times the input length, and never panics.

use crate::sorted::SortedMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::envelope::{MAX_DEPTH, MAX_MESSAGE_LEN};
use crate::msg::{ErrorCode, MAX_METADATA_ENTRIES, MAX_REVOKED};

/// Most items in any array of the schema (the longest is a revocation list's
/// `entries`); a longer array is refused before its items are read.
const MAX_LIST_LEN: usize = MAX_REVOKED;

/// A field whose value broke a rule of the schema (wrong type, size or value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's wire name.
    pub field: &'static str,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl FieldError {
    pub(crate) const fn new(field: &'static str, reason: &'static str) -> Self {
        FieldError { field, reason }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.reason)
    }
}

impl core::error::Error for FieldError {}

/// Why bytes could not be decoded into a message or payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is longer than [`MAX_MESSAGE_LEN`].
    TooLarge,
    /// The bytes are not well-formed CBOR of the accepted subset.
    Malformed(&'static str),
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left over after the top-level item.
    TrailingBytes,
    /// The envelope's `v` is not [`PROTOCOL_VERSION`](crate::envelope::PROTOCOL_VERSION).
    UnsupportedVersion(u64),
    /// The envelope's `type` is not a known message type.
    UnknownType,
    /// A map holds a key that its schema does not define.
    UnknownField,
    /// A map holds the same key twice.
    DuplicateField(&'static str),
    /// A required key is absent.
    MissingField(&'static str),
    /// A field has the wrong type, size or value.
    Invalid(FieldError),
}

impl DecodeError {
    /// The `error` message code a receiver should answer this failure with.
    pub const fn code(self) -> ErrorCode {
        match self {
            DecodeError::TooLarge => ErrorCode::TooLarge,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownType => ErrorCode::UnknownType,
            _ => ErrorCode::Malformed,
        }
    }
}

impl From<FieldError> for DecodeError {
    fn from(e: FieldError) -> Self {
        DecodeError::Invalid(e)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge => write!(f, "message longer than {MAX_MESSAGE_LEN} bytes"),
            DecodeError::Malformed(why) => write!(f, "malformed CBOR: {why}"),
            DecodeError::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH} levels"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes after the message"),
            DecodeError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            DecodeError::UnknownType => f.write_str("unknown message type"),
            DecodeError::UnknownField => f.write_str("unknown field"),
            DecodeError::DuplicateField(k) => write!(f, "duplicate field `{k}`"),
            DecodeError::MissingField(k) => write!(f, "missing field `{k}`"),
            DecodeError::Invalid(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DecodeError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a message or payload could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoding would be longer than [`MAX_MESSAGE_LEN`].
    TooLarge,
    /// A field breaks a rule of the schema, so a receiver would refuse it.
    Invalid(FieldError),
    /// The encoder's role does not send this type
    /// (`Message::encode_for`).
    NotSent(crate::envelope::MsgType),
}

impl From<FieldError> for EncodeError {
    fn from(e: FieldError) -> Self {
        EncodeError::Invalid(e)
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge => write!(f, "encoding longer than {MAX_MESSAGE_LEN} bytes"),
            EncodeError::Invalid(e) => e.fmt(f),
            EncodeError::NotSent(kind) => write!(f, "this role does not send {kind}"),
        }
    }
}

impl core::error::Error for EncodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            EncodeError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

const TRUNCATED: DecodeError = DecodeError::Malformed("truncated");

// CBOR major types (RFC 8949 §3.1).
const UINT: u8 = 0;
const NINT: u8 = 1;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
const TAG: u8 = 6;
const SIMPLE: u8 = 7;

/// A bounded reader over one CBOR buffer. Accepts definite lengths and
/// shortest-form heads only.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Whether every byte has been consumed.
    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(TRUNCATED)?;
        let bytes = self.buf.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(TRUNCATED)?;
        self.pos += 1;
        Ok(b)
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads an item head: the major type and its argument.
    fn head(&mut self) -> Result<(u8, u64), DecodeError> {
        let initial = self.byte()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let (arg, shortest) = match info {
            0..=23 => (u64::from(info), true),
            24 => {
                let v = u64::from(self.byte()?);
                (v, v >= 24)
            }
            25 => {
                let v = u64::from(u16::from_be_bytes(self.be()?));
                (v, v > 0xff)
            }
            26 => {
                let v = u64::from(u32::from_be_bytes(self.be()?));
                (v, v > 0xffff)
            }
            27 => {
                let v = u64::from_be_bytes(self.be()?);
                (v, v > 0xffff_ffff)
            }
            28..=30 => return Err(DecodeError::Malformed("reserved additional information")),
            _ => return Err(DecodeError::Malformed("indefinite length or break")),
        };
        // Floats (major 7, info 25..=27) carry bits, not a length: no shortest rule.
        if !shortest && major != SIMPLE {
            return Err(DecodeError::Malformed("non-shortest head"));
        }
        Ok((major, arg))
    }

    /// Reads a length and checks that at least `per_item * len` bytes remain.
    fn count(&self, arg: u64, per_item: usize) -> Result<usize, DecodeError> {
        let len = usize::try_from(arg).map_err(|_| TRUNCATED)?;
        match len.checked_mul(per_item) {
            Some(need) if need <= self.remaining() => Ok(len),
            _ => Err(TRUNCATED),
        }
    }

    fn expect(
        &mut self,
        want: u8,
        field: &'static str,
        what: &'static str,
    ) -> Result<u64, DecodeError> {
        match self.head()? {
            (major, arg) if major == want => Ok(arg),
            _ => Err(FieldError::new(field, what).into()),
        }
    }

    pub(crate) fn uint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.expect(UINT, field, "expected an unsigned integer")
    }

    pub(crate) fn int(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let out_of_range = FieldError::new(field, "integer out of range");
        match self.head()? {
            (UINT, v) => i64::try_from(v).map_err(|_| out_of_range.into()),
            // A negative integer encodes -1 - v.
            (NINT, v) => i64::try_from(v).map(|v| -1 - v).map_err(|_| out_of_range.into()),
            _ => Err(FieldError::new(field, "expected an integer").into()),
        }
    }

    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let arg = self.expect(BYTES, field, "expected a byte string")?;
        let len = self.count(arg, 1)?;
        self.take(len)
    }

    pub(crate) fn text(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let arg = self.expect(TEXT, field, "expected a text string")?;
        let len = self.count(arg, 1)?;
        core::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Malformed("invalid UTF-8"))
    }

    /// Reads an array head; every element takes at least one byte.
    pub(crate) fn array(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let arg = self.expect(ARRAY, field, "expected an array")?;
        self.count(arg, 1)
    }

    /// Reads a map head; every entry takes at least two bytes.
    pub(crate) fn map(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let arg = self.expect(MAP, field, "expected a map")?;
        self.count(arg, 2)
    }

    /// Reads a map key, which this protocol requires to be text.
    pub(crate) fn key(&mut self) -> Result<&'a str, DecodeError> {
        match self.head()? {
            (TEXT, arg) => {
                let len = self.count(arg, 1)?;
                core::str::from_utf8(self.take(len)?)
                    .map_err(|_| DecodeError::Malformed("invalid UTF-8"))
            }
            _ => Err(DecodeError::Malformed("map key is not a text string")),
        }
    }

    /// Skips one well-formed item whose nesting level is `depth`, returning the
    /// bytes it spans.
    pub(crate) fn skip(&mut self, depth: usize) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let (major, arg) = self.head()?;
        match major {
            UINT | NINT | SIMPLE => {}
            BYTES | TEXT => {
                let len = self.count(arg, 1)?;
                self.take(len)?;
            }
            ARRAY | MAP | TAG => {
                if depth > MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                let items = match major {
                    ARRAY => self.count(arg, 1)?,
                    MAP => self.count(arg, 2)? * 2,
                    _ => 1,
                };
                for _ in 0..items {
                    self.skip(depth + 1)?;
                }
            }
            _ => return Err(DecodeError::Malformed("unknown major type")),
        }
        self.buf.get(start..self.pos).ok_or(TRUNCATED)
    }
}

/// A CBOR writer that always emits definite lengths and shortest heads.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn head(&mut self, major: u8, arg: u64) {
        let m = major << 5;
        if arg < 24 {
            self.buf.push(m | arg as u8);
        } else if arg <= 0xff {
            self.buf.extend_from_slice(&[m | 24, arg as u8]);
        } else if arg <= 0xffff {
            self.buf.push(m | 25);
            self.buf.extend_from_slice(&(arg as u16).to_be_bytes());
        } else if arg <= 0xffff_ffff {
            self.buf.push(m | 26);
            self.buf.extend_from_slice(&(arg as u32).to_be_bytes());
        } else {
            self.buf.push(m | 27);
            self.buf.extend_from_slice(&arg.to_be_bytes());
        }
    }

    pub(crate) fn uint(&mut self, v: u64) {
        self.head(UINT, v);
    }

    pub(crate) fn int(&mut self, v: i64) {
        match u64::try_from(v) {
            Ok(v) => self.head(UINT, v),
            Err(_) => self.head(NINT, v.unsigned_abs() - 1),
        }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.head(BYTES, b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn text(&mut self, s: &str) {
        self.head(TEXT, s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub(crate) fn array(&mut self, len: usize) {
        self.head(ARRAY, len as u64);
    }

    pub(crate) fn map(&mut self, len: usize) {
        self.head(MAP, len as u64);
    }

    pub(crate) fn tag(&mut self, tag: u64) {
        self.head(TAG, tag);
    }

    /// The bytes written, whatever their length (the caller bounds them).
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn finish(self) -> Result<Vec<u8>, EncodeError> {
        if self.buf.len() > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLarge);
        }
        Ok(self.buf)
    }
}

/// A value with a CBOR form in this protocol. `encode` refuses values that break
/// the schema, and `decode` checks them, so both sides enforce the same rules.
pub(crate) trait Field: Sized {
    /// Appends the encoding of `self`.
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError>;
    /// Reads one value; `field` names it in errors.
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

impl Field for u64 {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.uint(*self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.uint(field)
    }
}

impl Field for i64 {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.int(*self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.int(field)
    }
}

impl Field for String {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.text(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.text(field).map(String::from)
    }
}

impl Field for Vec<u8> {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.bytes(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.bytes(field).map(<[u8]>::to_vec)
    }
}

/// A fixed-size byte string; any other length is refused.
impl<const N: usize> Field for [u8; N] {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.bytes(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.bytes(field)?
            .try_into()
            .map_err(|_| FieldError::new(field, "wrong byte string length").into())
    }
}

/// An array of at most `MAX_LIST_LEN` values (tighter bounds are checked by
/// the owning struct).
impl<T: Field> Field for Vec<T> {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.array(self.len());
        self.iter().try_for_each(|item| item.encode(w))
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let len = r.array(field)?;
        if len > MAX_LIST_LEN {
            return Err(FieldError::new(field, "too many items").into());
        }
        // `len` is at most the bytes left (every item takes one) and at most
        // MAX_LIST_LEN, so this reserves O(input), and saves regrowing.
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(T::decode(r, field)?);
        }
        Ok(items)
    }
}

/// A text-to-text map (`metadata`) of at most [`MAX_METADATA_ENTRIES`] entries;
/// a repeated key is refused.
impl Field for SortedMap<String, String> {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.map(self.len());
        for (k, v) in self.iter() {
            w.text(k);
            w.text(v);
        }
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let len = r.map(field)?;
        if len > MAX_METADATA_ENTRIES {
            return Err(FieldError::new(field, "too many entries").into());
        }
        let mut map = SortedMap::new();
        for _ in 0..len {
            let k = r.text(field)?;
            let v = r.text(field)?;
            if map.insert(String::from(k), String::from(v)).is_some() {
                return Err(DecodeError::DuplicateField(field));
            }
        }
        Ok(map)
    }
}

impl Field for zeroize::Zeroizing<Vec<u8>> {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.bytes(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.bytes(field).map(|b| zeroize::Zeroizing::new(b.to_vec()))
    }
}

impl Field for zeroize::Zeroizing<String> {
    fn encode(&self, w: &mut Writer) -> Result<(), FieldError> {
        w.text(self);
        Ok(())
    }
    fn decode(r: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.text(field).map(|s| zeroize::Zeroizing::new(String::from(s)))
    }
}

/// Stores a map entry's value, refusing a key seen before.
pub(crate) fn set_once<T>(
    slot: &mut Option<T>,
    key: &'static str,
    value: T,
) -> Result<(), DecodeError> {
    match slot.replace(value) {
        Some(_) => Err(DecodeError::DuplicateField(key)),
        None => Ok(()),
    }
}

/// Where a [`wire_struct!`] decoder keeps one field's value while it reads
/// the map: an `Option` of the field's type, `None` until its key comes.
pub(crate) trait Slot {
    /// Decodes the entry's value and stores it, refusing a key seen before
    /// (after decoding the value, as [`set_once`] after `T::decode`).
    fn fill(&mut self, r: &mut Reader<'_>, key: &'static str) -> Result<(), DecodeError>;
    /// Whether a value has been stored.
    fn is_set(&self) -> bool;
}

impl<T: Field> Slot for Option<T> {
    fn fill(&mut self, r: &mut Reader<'_>, key: &'static str) -> Result<(), DecodeError> {
        let value = T::decode(r, key)?;
        set_once(self, key, value)
    }

    fn is_set(&self) -> bool {
        self.is_some()
    }
}

/// Reads a map (named `field` in errors) whose keys are `names`
/// (NUL-terminated, as in [`position`]) into `slots`, one per name in the
/// same order: an unknown key is refused when it is read, a repeated one
/// after its value is decoded, and then a missing required one (the first
/// `required` slots), naming the first. One loop for every
/// [`wire_struct!`] decoder instead of one inlined per struct (image size,
/// issue 14).
#[inline(never)]
pub(crate) fn decode_map(
    r: &mut Reader<'_>,
    field: &'static str,
    names: &'static str,
    slots: &mut [&mut dyn Slot],
    required: usize,
) -> Result<(), DecodeError> {
    let len = r.map(field)?;
    for _ in 0..len {
        let key = r.key()?;
        let (i, name) = lookup(names, key).ok_or(DecodeError::UnknownField)?;
        let slot = slots.get_mut(i).ok_or(DecodeError::UnknownField)?;
        slot.fill(r, name)?;
    }
    match slots.iter().take(required).position(|slot| !slot.is_set()) {
        Some(i) => Err(DecodeError::MissingField(nth_name(names, i))),
        None => Ok(()),
    }
}

/// Where `key` is among `names`, if it is there. `names` holds each name
/// followed by a NUL (`"a\0b\0"`): one string per table instead of a
/// slice of `&str`s, 16 bytes an entry (image size, issue 14). Out of line:
/// the lookup of every [`wire_struct!`] decoder and [`text_enum!`] parser.
#[inline(never)]
pub(crate) fn position(names: &str, key: &str) -> Option<usize> {
    lookup(names, key).map(|(i, _)| i)
}

/// Where `key` is among `names` (as in [`position`]), with the name as
/// `names` holds it. A plain byte walk: no `str` searcher, and one pass
/// where a position and then the name would take two (each decoded field
/// of every message goes through it).
#[inline(never)]
pub(crate) fn lookup<'n>(names: &'n str, key: &str) -> Option<(usize, &'n str)> {
    let mut at = 0;
    let mut i = 0;
    while let Some(name) = name_at(names, at) {
        if name == key {
            return Some((i, name));
        }
        at += name.len() + 1;
        i += 1;
    }
    None
}

/// Name `i` of `names` (NUL-terminated names, as in [`position`]); ""
/// if there are not that many.
#[inline(never)]
pub(crate) fn nth_name(names: &'static str, i: usize) -> &'static str {
    let mut at = 0;
    for _ in 0..i {
        match name_at(names, at) {
            Some(name) => at += name.len() + 1,
            None => return "",
        }
    }
    name_at(names, at).unwrap_or_default()
}

/// The name starting at byte `at` of `names`, up to its NUL or the end;
/// None at or past the end (as `split_terminator` ends: no empty last name).
fn name_at(names: &str, at: usize) -> Option<&str> {
    let rest = names.get(at..).filter(|r| !r.is_empty())?;
    let len = rest.bytes().position(|b| b == 0).unwrap_or(rest.len());
    rest.get(..len)
}

/// Encodes one value as a whole CBOR item (used for signed payloads).
pub(crate) fn to_cbor<T: Field>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::default();
    value.encode(&mut w)?;
    w.finish()
}

/// Decodes exactly one CBOR item of type `T` from `bytes` (used for signed payloads).
pub(crate) fn from_cbor<T: Field>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge);
    }
    // The structural pass bounds nesting before the typed pass reads anything.
    Reader::new(bytes).skip(1)?;
    let mut r = Reader::new(bytes);
    let value = T::decode(&mut r, what)?;
    if !r.at_end() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(value)
}

/// Declares a closed set of text values: the enum, its wire names and its codec.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire names, in declaration order, each followed by a
            /// NUL: one table for [`Self::as_str`] and [`Self::parse`]
            /// (image size, issue 14).
            const NAMES: &'static str = concat!($($text, "\0"),+);

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                $crate::cbor::nth_name($name::NAMES, self as usize)
            }

            /// Parses a wire name; `None` if it is not in the set.
            pub fn parse(name: &str) -> Option<$name> {
                // One table lookup (image size, issue 14).
                let i = $crate::cbor::position($name::NAMES, name)?;
                $name::ALL.get(i).copied()
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::cbor::Field for $name {
            fn encode(
                &self,
                w: &mut $crate::cbor::Writer,
            ) -> Result<(), $crate::cbor::FieldError> {
                w.text(self.as_str());
                Ok(())
            }
            fn decode(
                r: &mut $crate::cbor::Reader<'_>,
                field: &'static str,
            ) -> Result<Self, $crate::cbor::DecodeError> {
                let name = r.text(field)?;
                $name::parse(name).ok_or(
                    $crate::cbor::FieldError::new(field, "value not in the closed set").into(),
                )
            }
        }
    };
}
pub(crate) use text_enum;

/// Declares a message body or payload: a struct encoded as a CBOR map with text
/// keys equal to the field names. Required fields come first, then `optional`
/// ones (which become `Option`s and are omitted when `None`). The struct must
/// implement `Check`, which both encode and decode run.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )*
        }
        $( optional {
            $( $(#[$ometa:meta])* $ofield:ident : $oty:ty, )*
        } )?
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $($( $(#[$ometa])* pub $ofield: Option<$oty>, )*)?
        }

        impl $crate::cbor::Field for $name {
            fn encode(
                &self,
                w: &mut $crate::cbor::Writer,
            ) -> Result<(), $crate::cbor::FieldError> {
                $crate::cbor::Check::check(self)?;
                let len = [$(stringify!($field)),*].len()
                    $($( + usize::from(self.$ofield.is_some()) )*)?;
                w.map(len);
                $(
                    w.text(stringify!($field));
                    self.$field.encode(w)?;
                )*
                $($(
                    if let Some(value) = &self.$ofield {
                        w.text(stringify!($ofield));
                        value.encode(w)?;
                    }
                )*)?
                Ok(())
            }

            fn decode(
                r: &mut $crate::cbor::Reader<'_>,
                field: &'static str,
            ) -> Result<Self, $crate::cbor::DecodeError> {
                use $crate::cbor::DecodeError;
                $( let mut $field: Option<$ty> = None; )*
                $($( let mut $ofield: Option<$oty> = None; )*)?
                // The keys, one NUL-terminated name each, in the order of
                // the slots below (image size, issue 14).
                const NAMES: &str =
                    concat!($(stringify!($field), "\0",)* $($(stringify!($ofield), "\0",)*)?);
                // The map read by one loop over this table of slots, the
                // required fields first (image size, issue 14).
                $crate::cbor::decode_map(
                    r,
                    field,
                    NAMES,
                    &mut [
                        $( &mut $field as &mut dyn $crate::cbor::Slot, )*
                        $($( &mut $ofield as &mut dyn $crate::cbor::Slot, )*)?
                    ],
                    [$(stringify!($field)),*].len(),
                )?;
                #[allow(unreachable_patterns)]
                let ($($field,)*) = match ($($field,)*) {
                    ($(Some($field),)*) => ($($field,)*),
                    // Unreachable: `decode_map` refused a missing required
                    // field, naming the first one.
                    _ => return Err(DecodeError::MissingField("")),
                };
                let value = $name {
                    $( $field, )*
                    $($( $ofield, )*)?
                };
                $crate::cbor::Check::check(&value)?;
                Ok(value)
            }
        }
    };
}
pub(crate) use wire_struct;

/// The schema rules of a struct that its CBOR shape alone does not express.
pub(crate) trait Check {
    /// Returns the first field that breaks a rule.
    fn check(&self) -> Result<(), FieldError>;
}

#[cfg(test)]
mod tests {
    use super::{lookup, nth_name, position};
    use alloc::boxed::Box;
    use alloc::format;
    use alloc::string::String;
    use proptest::prelude::*;

    fn table(names: &[String]) -> &'static str {
        Box::leak(names.iter().map(|n| format!("{n}\0")).collect::<String>().into_boxed_str())
    }

    #[test]
    fn names_are_found_by_position_and_index() {
        let names = "kid\0alg\0\0exp\0";
        assert_eq!(lookup(names, "kid"), Some((0, "kid")));
        assert_eq!(lookup(names, "exp"), Some((3, "exp")));
        assert_eq!(lookup(names, ""), Some((2, "")));
        assert_eq!(position(names, "ex"), None);
        assert_eq!(position(names, "exp\0"), None);
        assert_eq!(position("", ""), None);
        assert_eq!(
            (nth_name(names, 1), nth_name(names, 3), nth_name(names, 4)),
            ("alg", "exp", "")
        );
        assert_eq!(position("a\0last", "last"), Some(1));
    }

    proptest! {
        /// The byte walk agrees with `split_terminator` on any table and key.
        #[test]
        fn lookup_agrees_with_split(names in proptest::collection::vec("[a-c_\u{e9}]{0,3}", 0..6),
                                    key in "[a-c_\u{e9}]{0,3}", i in 0usize..8) {
            let t = table(&names);
            let split = || t.split_terminator('\0');
            prop_assert_eq!(position(t, &key), split().position(|n| n == key));
            prop_assert_eq!(lookup(t, &key).map(|(_, n)| n), split().find(|n| *n == key));
            prop_assert_eq!(nth_name(t, i), split().nth(i).unwrap_or_default());
        }
    }
}
