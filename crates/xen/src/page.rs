//! Volatile access to guest-physical memory the hypervisor or a peer shares
//! with us, and the frames of the free guest-physical window we map such
//! memory into.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use portcullis_vchan::SharedMem;

use crate::abi::PAGE_SIZE;

/// A region of identity-mapped guest-physical memory, accessed only through
/// volatile and atomic operations because another domain (or Xen) may
/// change it at any time.
#[derive(Debug)]
pub struct SharedPages {
    base: usize,
    len: usize,
}

impl SharedPages {
    /// Wraps `len` bytes at guest-physical (= virtual) address `base`.
    ///
    /// # Safety
    /// `base..base + len` must be mapped (the boot page tables map the low
    /// 4 GiB), stay valid for the life of the value, and never be accessed
    /// through Rust references.
    pub const unsafe fn new(base: usize, len: usize) -> Self {
        SharedPages { base, len }
    }

    /// Start address (guest-physical).
    pub fn addr(&self) -> usize {
        self.base
    }

    /// Address of `size` bytes at `off`, after a bounds and alignment check.
    fn at(&self, off: usize, size: usize) -> usize {
        let end = off.checked_add(size);
        if end.is_none_or(|end| end > self.len) || !off.is_multiple_of(size) {
            panic!("shared page access at {off}+{size} outside {} bytes", self.len);
        }
        self.base + off
    }

    /// Loads a native-endian `u64`.
    pub fn load_u64(&self, off: usize) -> u64 {
        let p = self.at(off, 8) as *const u64;
        // SAFETY: `at` checked that the aligned word lies in the region,
        // which the constructor's caller promised is mapped and live.
        unsafe { p.read_volatile() }
    }

    /// Atomically clears bit `bit` of the `u64` at `off`; returns whether it was set.
    pub fn test_and_clear_bit(&self, off: usize, bit: u32) -> bool {
        let p = self.at(off, 8) as *mut u64;
        // SAFETY: aligned, in bounds and live (as above); Xen updates these
        // words with locked instructions too, so an atomic view is sound.
        let word = unsafe { AtomicU64::from_ptr(p) };
        let mask = 1u64 << (bit % 64);
        word.fetch_and(!mask, Ordering::SeqCst) & mask != 0
    }

    /// Atomically sets bit `bit` of the `u64` at `off`.
    pub fn set_bit(&self, off: usize, bit: u32) {
        let p = self.at(off, 8) as *mut u64;
        // SAFETY: as for `test_and_clear_bit`.
        let word = unsafe { AtomicU64::from_ptr(p) };
        word.fetch_or(1u64 << (bit % 64), Ordering::SeqCst);
    }

    /// Tests bit `bit` of the `u64` at `off`.
    pub fn test_bit(&self, off: usize, bit: u32) -> bool {
        self.load_u64(off) & (1u64 << (bit % 64)) != 0
    }
}

impl SharedMem for SharedPages {
    fn len(&self) -> usize {
        self.len
    }

    fn load_u8(&self, off: usize) -> u8 {
        let p = self.at(off, 1) as *const u8;
        // SAFETY: in bounds of the live, mapped region (checked by `at`).
        unsafe { p.read_volatile() }
    }

    fn store_u8(&self, off: usize, value: u8) {
        let p = self.at(off, 1) as *mut u8;
        // SAFETY: as for `load_u8`.
        unsafe { p.write_volatile(value) }
    }

    fn load_u16(&self, off: usize) -> u16 {
        let p = self.at(off, 2) as *const u16;
        // SAFETY: aligned and in bounds (checked by `at`), mapped and live.
        unsafe { p.read_volatile() }
    }

    fn store_u16(&self, off: usize, value: u16) {
        let p = self.at(off, 2) as *mut u16;
        // SAFETY: as for `load_u16`.
        unsafe { p.write_volatile(value) }
    }

    fn load_u32(&self, off: usize) -> u32 {
        let p = self.at(off, 4) as *const u32;
        // SAFETY: aligned and in bounds (checked by `at`), mapped and live.
        unsafe { p.read_volatile() }
    }

    fn store_u32(&self, off: usize, value: u32) {
        let p = self.at(off, 4) as *mut u32;
        // SAFETY: as for `load_u32`.
        unsafe { p.write_volatile(value) }
    }

    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        let p = self.at(off, 1) as *mut u8;
        // SAFETY: in bounds, mapped and live; the peer also uses atomic
        // (locked) operations on these notify bytes.
        unsafe { AtomicU8::from_ptr(p) }.fetch_or(bits, Ordering::SeqCst)
    }

    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        let p = self.at(off, 1) as *mut u8;
        // SAFETY: as for `fetch_or_u8`.
        unsafe { AtomicU8::from_ptr(p) }.fetch_and(bits, Ordering::SeqCst)
    }

    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        if !dst.is_empty() {
            self.at(off, dst.len().min(1));
            self.at(off + dst.len() - 1, 1);
        }
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: every byte of `off..off + dst.len()` was bounds-checked
            // above; volatile so each byte is read exactly once.
            *b = unsafe { ((self.base + off + i) as *const u8).read_volatile() };
        }
    }

    fn write_bytes(&self, off: usize, src: &[u8]) {
        if !src.is_empty() {
            self.at(off + src.len() - 1, 1);
        }
        for (i, b) in src.iter().enumerate() {
            // SAFETY: every byte of `off..off + src.len()` was bounds-checked
            // above.
            unsafe { ((self.base + off + i) as *mut u8).write_volatile(*b) };
        }
    }
}

/// Guest-physical frames with nothing behind them (outside RAM and every
/// reserved range), where foreign pages, the shared-info page and grant
/// table frames are mapped. A fixed-size bitmap allocator.
#[derive(Debug)]
pub struct FrameWindow {
    first_pfn: u64,
    used: [u64; Self::WORDS],
}

impl FrameWindow {
    const WORDS: usize = 64;
    /// Number of frames in a window (16 MiB).
    pub const FRAMES: u64 = (Self::WORDS * 64) as u64;

    /// A window of [`FrameWindow::FRAMES`] frames starting at `first_pfn`.
    pub const fn new(first_pfn: u64) -> Self {
        FrameWindow { first_pfn, used: [0; Self::WORDS] }
    }

    /// First frame of the window.
    pub fn first_pfn(&self) -> u64 {
        self.first_pfn
    }

    /// Allocates `n` contiguous frames; returns the first pfn.
    pub fn alloc(&mut self, n: u64) -> Option<u64> {
        if n == 0 || n > Self::FRAMES {
            return None;
        }
        let mut start = 0;
        while start + n <= Self::FRAMES {
            match (start..start + n).find(|&i| self.is_used(i)) {
                Some(busy) => start = busy + 1,
                None => {
                    (start..start + n).for_each(|i| self.set(i, true));
                    return Some(self.first_pfn + start);
                }
            }
        }
        None
    }

    /// Frees `n` frames starting at `pfn` (ignores frames outside the window).
    pub fn free(&mut self, pfn: u64, n: u64) {
        let start = pfn.max(self.first_pfn);
        let end = pfn.saturating_add(n).min(self.first_pfn + Self::FRAMES);
        for p in start..end {
            self.set(p - self.first_pfn, false);
        }
    }

    fn is_used(&self, i: u64) -> bool {
        self.used.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u64, used: bool) {
        if let Some(w) = self.used.get_mut((i / 64) as usize) {
            if used {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
}

/// Bytes in `n` pages.
pub const fn pages(n: usize) -> usize {
    n * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_allocates_contiguous_runs_and_reuses_freed_frames() {
        let mut w = FrameWindow::new(0x10000);
        assert_eq!(w.alloc(1), Some(0x10000));
        assert_eq!(w.alloc(3), Some(0x10001));
        assert_eq!(w.alloc(1), Some(0x10004));
        w.free(0x10001, 3);
        assert_eq!(w.alloc(2), Some(0x10001));
        assert_eq!(w.alloc(2), Some(0x10005));
        assert_eq!(w.alloc(0), None);
        assert_eq!(w.alloc(FrameWindow::FRAMES), None);
        w.free(0, 1 << 40); // outside: ignored, no overflow
        let mut full = FrameWindow::new(0);
        assert_eq!(full.alloc(FrameWindow::FRAMES), Some(0));
        assert_eq!(full.alloc(1), None);
    }
}
