//! One CBOR item into a generic [`Value`], for the COSE and CWT parsers.
//!
//! It accepts what the COSE structures of other implementations may use
//! (any head length, indefinite lengths, tags, simple values, floats) and
//! builds the same `Value` that ciborium's serde deserializer builds
//! (`from_reader_with_recursion_limit`; a test checks the two agree),
//! without serde: serde's error messages format floats, and the guests that
//! verify tokens would link float formatting for them.
//!
//! Hostile input: every length is checked against the bytes present before
//! anything is allocated, nesting is bounded, nothing panics.

use alloc::boxed::Box;
use alloc::vec::Vec;

use coset::cbor::value::{Integer, Value};

/// CBOR tag of a positive bignum.
const BIGPOS: u64 = 2;
/// CBOR tag of a negative bignum.
const BIGNEG: u64 = 3;

/// One item's head: major type and argument (`None`: indefinite length).
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    info: u8,
    arg: Option<u64>,
}

struct Parser<'a> {
    buf: &'a [u8],
}

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(taken)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |v, &b| (v << 8) | u64::from(b)))
    }

    fn head(&mut self) -> Option<Head> {
        let initial = *self.take(1)?.first()?;
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24 => Some(self.be(1)?),
            25 => Some(self.be(2)?),
            26 => Some(self.be(4)?),
            27 => Some(self.be(8)?),
            31 if matches!(major, 2..=5 | 7) => None,
            _ => return None,
        };
        Some(Head { major, info, arg })
    }

    /// A length that the remaining bytes can hold, `per_item` bytes each.
    fn count(&self, len: u64, per_item: usize) -> Option<usize> {
        let len = usize::try_from(len).ok()?;
        (len.checked_mul(per_item)? <= self.buf.len()).then_some(len)
    }

    fn is_break(&self) -> bool {
        self.buf.first() == Some(&0xff)
    }

    /// The bytes of a byte or text string of major type `major` (the chunks
    /// of an indefinite one joined; each chunk of the same type, each text
    /// chunk valid UTF-8).
    fn string(&mut self, major: u8, arg: Option<u64>) -> Option<Vec<u8>> {
        match arg {
            Some(len) => {
                let len = self.count(len, 1)?;
                Some(self.take(len)?.to_vec())
            }
            None => {
                // Chunks until the matching break; like ciborium, a chunk
                // may itself be indefinite (a counter, not recursion).
                let mut out = Vec::new();
                let mut open = 1usize;
                while open > 0 {
                    if self.is_break() {
                        self.take(1)?;
                        open -= 1;
                        continue;
                    }
                    let chunk = self.head()?;
                    if chunk.major != major {
                        return None;
                    }
                    let Some(len) = chunk.arg else {
                        open = open.checked_add(1)?;
                        continue;
                    };
                    let len = self.count(len, 1)?;
                    let bytes = self.take(len)?;
                    if major == 3 {
                        core::str::from_utf8(bytes).ok()?;
                    }
                    out.extend_from_slice(bytes);
                }
                Some(out)
            }
        }
    }

    /// Items of an array or map until its length or its break.
    fn items(&mut self, arg: Option<u64>, per: usize, depth: usize) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        match arg {
            Some(len) => {
                let n = self.count(len, per)?.checked_mul(per)?;
                out.reserve_exact(n);
                for _ in 0..n {
                    out.push(self.item(depth)?);
                }
            }
            None => {
                while !self.is_break() {
                    out.push(self.item(depth)?);
                }
                self.take(1)?;
                if out.len() % per != 0 {
                    return None;
                }
            }
        }
        Some(out)
    }

    /// One item; `depth` more arrays, maps or tags may be entered.
    fn item(&mut self, depth: usize) -> Option<Value> {
        let h = self.head()?;
        Some(match (h.major, h.arg) {
            (0, Some(v)) => Value::Integer(v.into()),
            (1, Some(v)) => Value::Integer(Integer::try_from(-1 - i128::from(v)).ok()?),
            (2, arg) => Value::Bytes(self.string(2, arg)?),
            (3, arg) => Value::Text(alloc::string::String::from_utf8(self.string(3, arg)?).ok()?),
            (4, arg) => Value::Array(self.items(arg, 1, depth.checked_sub(1)?)?),
            (5, arg) => {
                let flat = self.items(arg, 2, depth.checked_sub(1)?)?;
                let mut map = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    map.push((k, v));
                }
                Value::Map(map)
            }
            (6, Some(tag)) => self.tagged(tag, depth)?,
            (7, Some(v)) => match h.info {
                25 => Value::Float(f16_to_f64(v as u16)),
                26 => Value::Float(f64::from(f32::from_bits(v as u32))),
                27 => Value::Float(f64::from_bits(v)),
                _ => match v {
                    20 => Value::Bool(false),
                    21 => Value::Bool(true),
                    22 | 23 => Value::Null,
                    _ => return None,
                },
            },
            _ => return None,
        })
    }

    /// A tagged item. A bignum (tag 2 or 3 around a definite byte string of
    /// at most 16 bytes) that fits a CBOR integer becomes that integer, as
    /// ciborium does; any other tag takes one level of nesting.
    fn tagged(&mut self, tag: u64, depth: usize) -> Option<Value> {
        if matches!(tag, BIGPOS | BIGNEG) {
            let mut peek = Parser { buf: self.buf };
            if let Some(Head { major: 2, arg: Some(len), .. }) = peek.head() {
                if len <= 16 {
                    let len = peek.count(len, 1)?;
                    let digits = peek.take(len)?;
                    self.buf = peek.buf;
                    let raw = digits.iter().fold(0u128, |v, &b| (v << 8) | u128::from(b));
                    return Some(if tag == BIGPOS {
                        match Integer::try_from(raw) {
                            Ok(i) => Value::Integer(i),
                            Err(_) => bignum(BIGPOS, raw),
                        }
                    } else {
                        let value = -1 - i128::try_from(raw).ok()?;
                        match Integer::try_from(value) {
                            Ok(i) => Value::Integer(i),
                            Err(_) => bignum(BIGNEG, raw),
                        }
                    });
                }
            }
        }
        let inner = self.item(depth.checked_sub(1)?)?;
        Some(Value::Tag(tag, Box::new(inner)))
    }
}

/// A bignum that does not fit a CBOR integer, with its leading zero bytes
/// dropped.
fn bignum(tag: u64, raw: u128) -> Value {
    let bytes = raw.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    Value::Tag(tag, Box::new(Value::Bytes(bytes.get(first..).unwrap_or_default().to_vec())))
}

/// IEEE 754 half precision to double.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let mant = f64::from(bits & 0x3ff);
    sign * match exp {
        0 => mant * pow2(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1024.0 + mant) * pow2(exp - 25),
    }
}

/// 2 to the power `e` (|e| small), exactly.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Decodes exactly one CBOR item from `bytes` with nesting limited to
/// `max_depth` arrays, maps and tags; `None` on any error or on trailing
/// bytes.
pub(crate) fn decode_value(bytes: &[u8], max_depth: usize) -> Option<Value> {
    let mut p = Parser { buf: bytes };
    let value = p.item(max_depth)?;
    p.buf.is_empty().then_some(value)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    const DEPTH: usize = 16;

    /// What ciborium's deserializer makes of `bytes` (the reference).
    fn reference(mut bytes: &[u8]) -> Option<Value> {
        let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut bytes, DEPTH).ok()?;
        bytes.is_empty().then_some(v)
    }

    /// Equal values, NaN equal to NaN.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Map(x), Value::Map(y)) => {
                x.len() == y.len()
                    && x.iter().zip(y).all(|((k, v), (l, w))| same(k, l) && same(v, w))
            }
            (Value::Tag(t, x), Value::Tag(u, y)) => t == u && same(x, y),
            _ => a == b,
        }
    }

    fn check(bytes: &[u8]) {
        let (ours, theirs) = (decode_value(bytes, DEPTH), reference(bytes));
        let agree = match (&ours, &theirs) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        };
        assert!(agree, "{bytes:02x?}: ours {ours:?}, ciborium {theirs:?}");
    }

    fn nested(open: u8, n: usize) -> Vec<u8> {
        let mut v = vec![open; n];
        v.push(0x00);
        v
    }

    #[test]
    fn edge_cases_agree_with_ciborium() {
        let cases: &[&[u8]] = &[
            &[0x00],
            &[0x17],
            &[0x18, 0x05],
            &[0x19, 0x00, 0x05],
            &[0x1b, 0, 0, 0, 0, 0, 0, 0, 5],
            &[0x20],
            &[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x1c],
            &[0x1f],
            &[0x40],
            &[0x43, 1, 2, 3],
            &[0x5f, 0x41, 1, 0x42, 2, 3, 0xff],
            &[0x5f, 0xff],
            &[0x5f, 0x61, 0x61, 0xff],
            &[0x5f, 0x5f, 0xff, 0xff],
            &[0x44, 1, 2],
            &[0x63, b'a', b'b', b'c'],
            &[0x62, 0xc3, 0x28],
            &[0x7f, 0x61, b'a', 0x61, b'b', 0xff],
            &[0x7f, 0x61, 0xc3, 0x61, 0xa9, 0xff],
            &[0x80],
            &[0x83, 1, 2, 3],
            &[0x9f, 1, 2, 0xff],
            &[0x9f, 0xff],
            &[0x9f, 1],
            &[0xa0],
            &[0xa1, 1, 2],
            &[0xbf, 1, 2, 0xff],
            &[0xbf, 1, 0xff],
            &[0xc0, 0x61, b'x'],
            &[0xd2, 0x80],
            &[0xc2, 0x41, 5],
            &[0xc2, 0x40],
            &[0xc3, 0x41, 5],
            &[0xc2, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xc3, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xc3, 0x48, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0xc3, 0x50, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xc2, 0x51, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0xc2, 0x5f, 0x41, 1, 0xff],
            &[0xc2, 0x61, b'a'],
            &[0xc2, 0x45, 1],
            &[0xf4],
            &[0xf5],
            &[0xf6],
            &[0xf7],
            &[0xf0],
            &[0xf8, 0x14],
            &[0xf8, 0x20],
            &[0xff],
            &[0xf9, 0x3c, 0x00],
            &[0xf9, 0x7c, 0x00],
            &[0xf9, 0x7e, 0x00],
            &[0xf9, 0x00, 0x01],
            &[0xf9, 0x83, 0xff],
            &[0xfa, 0x3f, 0x80, 0, 0],
            &[0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0],
            &[0xfc],
            &[0x01, 0x02],
            &[],
            &[0x18],
            &[0xa1, 0x9f, 0xff, 0x01],
        ];
        for case in cases {
            check(case);
        }
        for n in [15, 16, 17] {
            check(&nested(0x81, n));
            check(&nested(0xc6, n));
            check(&nested(0x9f, n));
        }
        // A huge declared length allocates nothing.
        assert_eq!(
            decode_value(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], DEPTH),
            None
        );
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(|v| Value::Integer(v.into())),
            any::<i64>().prop_map(|v| Value::Integer(v.into())),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Value::Bytes),
            ".{0,12}".prop_map(Value::Text),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            any::<f64>().prop_map(Value::Float),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                    .prop_map(Value::Map),
                (0u64..40, inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_bytes_agree_with_ciborium(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            check(&bytes);
        }

        /// Bytes drawn mostly from heads that open, close and tag items.
        #[test]
        fn structural_bytes_agree_with_ciborium(
            bytes in proptest::collection::vec(
                prop_oneof![
                    3 => proptest::sample::select(vec![
                        0x00u8, 0x18, 0x20, 0x40, 0x41, 0x5f, 0x60, 0x61, 0x7f, 0x80, 0x81, 0x82,
                        0x9f, 0xa0, 0xa1, 0xbf, 0xc2, 0xc3, 0xd2, 0xd8, 0xf4, 0xf6, 0xf7, 0xf9,
                        0xfa, 0xff,
                    ]),
                    1 => any::<u8>(),
                ],
                0..40,
            )
        ) {
            check(&bytes);
        }

        #[test]
        fn encoded_values_and_their_mutations_agree(
            value in arb_value(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in any::<usize>(),
        ) {
            let mut bytes = Vec::new();
            ciborium::ser::into_writer(&value, &mut bytes).unwrap();
            check(&bytes);
            for (at, b) in edits {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = b;
                }
            }
            check(&bytes);
            let cut = cut % (bytes.len() + 1);
            check(&bytes[..cut]);
        }
    }
}
