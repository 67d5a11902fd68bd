//! Numbers in audit metadata, and any value's text, written by one
//! out-of-line function each.
//!
//! Image size (issue 14, `docs/benchmarks.md` "Guest images"): each
//! `.meta(key, &n.to_string())` inlined its own string building, formatting
//! call and drop; [`Num::num`] writes the same decimal text once. Each
//! `x.to_string()` of a type with its own `Display` was a copy of
//! `to_string` per type (and one per integer type); [`text_of`] is one copy
//! for all of them, through the value's `Display`.

use alloc::string::{String, ToString};
use core::fmt::Display;

use crate::audit::Event;
use crate::authority::hex;

/// `value.to_string()`: the same text (`Display`, as `format!("{value}")`
/// writes it), from one out-of-line function for every type.
#[inline(never)]
pub(crate) fn text_of(value: &dyn Display) -> String {
    value.to_string()
}

/// [`Event::meta`] and [`Event::target`] with bytes as their lowercase hex
/// text (`hex`, two digits a byte): one out-of-line copy of the hex
/// string's building and drop instead of one per call.
pub(crate) trait Hex {
    /// Adds the metadata entry `key` = `bytes` in lowercase hex.
    fn meta_hex(self, key: &str, bytes: &[u8]) -> Event;
    /// Sets the target to `bytes` in lowercase hex.
    fn target_hex(self, bytes: &[u8]) -> Event;
}

impl Hex for Event {
    #[inline(never)]
    fn meta_hex(self, key: &str, bytes: &[u8]) -> Event {
        self.meta(key, &hex(bytes))
    }

    #[inline(never)]
    fn target_hex(self, bytes: &[u8]) -> Event {
        self.target(&hex(bytes))
    }
}

/// [`Event::meta`] with a number's decimal text as the value.
pub(crate) trait Num {
    /// Adds the metadata entry `key` = `n` in decimal (the text
    /// `n.to_string()` gives for any unsigned integer type).
    fn num(self, key: &str, n: u64) -> Event;
}

impl Num for Event {
    #[inline(never)]
    fn num(self, key: &str, n: u64) -> Event {
        self.meta(key, &text_of(&n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::msg::{AuditAction, AuditResult};

    #[test]
    fn num_writes_what_to_string_wrote() {
        let ev = Event::new("vm", AuditAction::Admin, AuditResult::Ok)
            .num("zero", 0)
            .num("domid", u64::from(u32::MAX))
            .num("seq", u64::MAX);
        let want = [("domid", "4294967295"), ("seq", "18446744073709551615"), ("zero", "0")];
        let got: alloc::vec::Vec<_> =
            ev.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }
}
