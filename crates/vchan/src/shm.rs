//! Access to memory shared with a peer domain.
//!
//! This crate has no `unsafe`, so it never touches shared memory through a
//! pointer. Platform crates implement [`SharedMem`] over their mappings with
//! volatile or atomic accesses; [`AtomicMem`] is a safe implementation over
//! ordinary atomics, used by tests, fuzzing and the in-process simulator.

use core::sync::atomic::{AtomicU32, Ordering};

/// A region of memory that a peer may change at any moment.
///
/// Every access is a single load or store of the given width (no tearing of
/// an aligned `u32`), and no value is cached: two loads of one offset may
/// return different values. Offsets are byte offsets from the start of the
/// region; `u16` offsets are 2-aligned and `u32` offsets 4-aligned.
///
/// This crate only issues accesses inside `0..len()`. Implementations must
/// still check, and panic rather than touch memory outside the region.
pub trait SharedMem {
    /// Length of the region in bytes.
    fn len(&self) -> usize;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads one byte.
    fn load_u8(&self, off: usize) -> u8;
    /// Stores one byte.
    fn store_u8(&self, off: usize, value: u8);
    /// Loads a native-endian `u16`.
    fn load_u16(&self, off: usize) -> u16;
    /// Stores a native-endian `u16`.
    fn store_u16(&self, off: usize, value: u16);
    /// Loads a native-endian `u32`.
    fn load_u32(&self, off: usize) -> u32;
    /// Stores a native-endian `u32`.
    fn store_u32(&self, off: usize, value: u32);
    /// Atomically ORs `bits` into a byte, returning its previous value.
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8;
    /// Atomically ANDs `bits` into a byte, returning its previous value.
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8;
    /// Copies `dst.len()` bytes starting at `off` out of the region.
    fn read_bytes(&self, off: usize, dst: &mut [u8]);
    /// Copies `src` into the region starting at `off`.
    fn write_bytes(&self, off: usize, src: &[u8]);
}

impl<M: SharedMem + ?Sized> SharedMem for &M {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load_u8(&self, off: usize) -> u8 {
        (**self).load_u8(off)
    }
    fn store_u8(&self, off: usize, value: u8) {
        (**self).store_u8(off, value)
    }
    fn load_u16(&self, off: usize) -> u16 {
        (**self).load_u16(off)
    }
    fn store_u16(&self, off: usize, value: u16) {
        (**self).store_u16(off, value)
    }
    fn load_u32(&self, off: usize) -> u32 {
        (**self).load_u32(off)
    }
    fn store_u32(&self, off: usize, value: u32) {
        (**self).store_u32(off, value)
    }
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        (**self).fetch_or_u8(off, bits)
    }
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        (**self).fetch_and_u8(off, bits)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        (**self).read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        (**self).write_bytes(off, src)
    }
}

/// Shared memory made of `AtomicU32` words, in native byte order.
///
/// Word-sized accesses are plain relaxed atomics; narrower stores and the
/// edges of byte copies are read-modify-write operations on the containing
/// word, so they never disturb the neighbouring bytes another thread owns.
#[derive(Clone, Copy, Debug)]
pub struct AtomicMem<'a> {
    words: &'a [AtomicU32],
}

impl<'a> AtomicMem<'a> {
    /// Wraps a slice of words; the region is `4 * words.len()` bytes.
    pub const fn new(words: &'a [AtomicU32]) -> Self {
        AtomicMem { words }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        match self.words.get(off / 4) {
            Some(w) => w,
            None => panic!("shared memory access at {off} outside {} bytes", self.len()),
        }
    }

    fn check(&self, off: usize, len: usize) {
        let end = off.checked_add(len);
        if end.is_none_or(|end| end > self.len()) {
            panic!("shared memory access at {off}+{len} outside {} bytes", self.len());
        }
    }

    /// Checks bounds and natural alignment of a `size`-byte field.
    fn check_field(&self, off: usize, size: usize) {
        self.check(off, size);
        if !off.is_multiple_of(size) {
            panic!("unaligned {size}-byte shared memory access at {off}");
        }
    }

    /// Replaces the bytes selected by `mask` (native order) in the word at `off`.
    fn update(&self, off: usize, mask: u32, value: u32) {
        let word = self.word(off);
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let new = (cur & !mask) | (value & mask);
            match word.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Mask and shifted value for `bytes` placed at byte `off % 4` of a word.
    fn placed(off: usize, bytes: &[u8]) -> (u32, u32) {
        let mut mask = [0u8; 4];
        let mut value = [0u8; 4];
        let start = off % 4;
        for (i, b) in bytes.iter().enumerate().take(4 - start) {
            mask[start + i] = 0xff;
            value[start + i] = *b;
        }
        (u32::from_ne_bytes(mask), u32::from_ne_bytes(value))
    }

    fn byte_of(word: u32, off: usize) -> u8 {
        word.to_ne_bytes()[off % 4]
    }
}

impl SharedMem for AtomicMem<'_> {
    fn len(&self) -> usize {
        self.words.len() * 4
    }

    fn load_u8(&self, off: usize) -> u8 {
        Self::byte_of(self.word(off).load(Ordering::Relaxed), off)
    }

    fn store_u8(&self, off: usize, value: u8) {
        let (mask, value) = Self::placed(off, &[value]);
        self.update(off, mask, value);
    }

    fn load_u16(&self, off: usize) -> u16 {
        self.check_field(off, 2);
        let b = self.word(off).load(Ordering::Relaxed).to_ne_bytes();
        let i = off % 4;
        u16::from_ne_bytes([b[i], b[i + 1]])
    }

    fn store_u16(&self, off: usize, value: u16) {
        self.check_field(off, 2);
        let (mask, value) = Self::placed(off, &value.to_ne_bytes());
        self.update(off, mask, value);
    }

    fn load_u32(&self, off: usize) -> u32 {
        self.check_field(off, 4);
        self.word(off).load(Ordering::Relaxed)
    }

    fn store_u32(&self, off: usize, value: u32) {
        self.check_field(off, 4);
        self.word(off).store(value, Ordering::Relaxed)
    }

    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        let (_, value) = Self::placed(off, &[bits]);
        let old = self.word(off).fetch_or(value, Ordering::SeqCst);
        Self::byte_of(old, off)
    }

    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        let (mask, value) = Self::placed(off, &[bits]);
        let old = self.word(off).fetch_and(value | !mask, Ordering::SeqCst);
        Self::byte_of(old, off)
    }

    fn read_bytes(&self, mut off: usize, mut dst: &mut [u8]) {
        self.check(off, dst.len());
        while !dst.is_empty() {
            let word = self.word(off).load(Ordering::Relaxed).to_ne_bytes();
            let start = off % 4;
            let n = (4 - start).min(dst.len());
            let (head, rest) = dst.split_at_mut(n);
            head.copy_from_slice(&word[start..start + n]);
            dst = rest;
            off += n;
        }
    }

    fn write_bytes(&self, mut off: usize, mut src: &[u8]) {
        self.check(off, src.len());
        while !src.is_empty() {
            let start = off % 4;
            let n = (4 - start).min(src.len());
            let (head, rest) = src.split_at(n);
            if n == 4 {
                let mut w = [0u8; 4];
                w.copy_from_slice(head);
                self.word(off).store(u32::from_ne_bytes(w), Ordering::Relaxed);
            } else {
                let (mask, value) = Self::placed(off, head);
                self.update(off, mask, value);
            }
            src = rest;
            off += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize) -> [AtomicU32; 8] {
        assert!(n <= 8);
        Default::default()
    }

    #[test]
    fn narrow_accesses_leave_neighbours_alone() {
        let w = words(8);
        let m = AtomicMem::new(&w);
        m.write_bytes(0, &[0xaa; 32]);
        m.store_u8(5, 1);
        m.store_u16(18, 0x1234);
        assert_eq!(m.load_u8(4), 0xaa);
        assert_eq!(m.load_u8(5), 1);
        assert_eq!(m.load_u8(6), 0xaa);
        assert_eq!(m.load_u16(18), 0x1234);
        assert_eq!(m.load_u16(16), 0xaaaa);
        let mut b = [0u8; 2];
        m.read_bytes(18, &mut b);
        assert_eq!(b, 0x1234u16.to_ne_bytes());
        assert_eq!(m.fetch_or_u8(22, 0x01), 0xaa);
        assert_eq!(m.load_u8(22), 0xab);
        assert_eq!(m.fetch_and_u8(22, !0x02), 0xab);
        assert_eq!(m.load_u8(22), 0xa9);
        assert_eq!(m.load_u8(23), 0xaa);
        assert_eq!(m.load_u8(21), 0xaa);
    }

    #[test]
    fn unaligned_copies_round_trip() {
        let w = words(8);
        let m = AtomicMem::new(&w);
        let data: [u8; 13] = core::array::from_fn(|i| i as u8 + 1);
        m.write_bytes(3, &data);
        let mut out = [0u8; 13];
        m.read_bytes(3, &mut out);
        assert_eq!(out, data);
        assert_eq!(m.load_u8(2), 0);
        assert_eq!(m.load_u8(16), 0);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_range_panics() {
        let w = words(8);
        AtomicMem::new(&w).read_bytes(30, &mut [0u8; 3]);
    }
}
