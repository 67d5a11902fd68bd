//! Granted pages as this process maps them.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use portcullis_vchan::{AtomicMem, DomId, Port, SharedMem};

use crate::evtchn;
use crate::sys::Mapping;

/// An unmap notification registered with a mapping: when the mapping goes
/// away (or, through [`crate::World::reap`], when its domain dies) the byte
/// is cleared and the port signalled.
#[derive(Debug)]
pub(crate) struct NotifyRecord {
    pub(crate) world: PathBuf,
    /// The domain that registered it (and owns `port`).
    pub(crate) dom: DomId,
    /// The file in `<world>/notify/<domid>/` describing it to the reaper.
    pub(crate) file: PathBuf,
    pub(crate) offset: usize,
    pub(crate) port: Port,
}

impl NotifyRecord {
    /// Clears the byte (if `mem`, the notification's mapping, is writable)
    /// and signals the port, then forgets the record.
    pub(crate) fn fire(&self, mem: Option<&HostedMem>) {
        if let Some(m) = mem.filter(|m| m.writable) {
            m.store_u8(self.offset, 0);
        }
        evtchn::signal_from(&self.world, self.dom, self.port.0);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// One or more granted pages mapped contiguously, shared with another
/// process. Every access is an atomic load or store, bounds-checked;
/// writes through a read-only mapping panic instead of faulting. Dropping
/// it unmaps it and performs its unmap notification, if any.
pub struct HostedMem {
    pub(crate) map: Mapping,
    pub(crate) writable: bool,
    /// The sharer's grant directory, removed on unshare.
    pub(crate) grant_dir: Option<PathBuf>,
    pub(crate) notify: Option<NotifyRecord>,
}

impl HostedMem {
    fn atomic(&self) -> AtomicMem<'_> {
        AtomicMem::new(self.map.words())
    }

    fn writing(&self) -> AtomicMem<'_> {
        assert!(self.writable, "write through a read-only mapping");
        self.atomic()
    }
}

/// Splits a copy of `len` bytes at `off` into an unaligned head, a body of
/// whole 8-byte words and a tail. Panics if the copy leaves the region.
fn split(off: usize, len: usize, region: usize) -> (usize, usize, usize) {
    let end = off.checked_add(len);
    if end.is_none_or(|end| end > region) {
        panic!("shared memory copy at {off}+{len} outside {region} bytes");
    }
    let head = ((8 - off % 8) % 8).min(len);
    let body = (len - head) / 8 * 8;
    (head, body, len - head - body)
}

impl Drop for HostedMem {
    fn drop(&mut self) {
        if let Some(record) = self.notify.take() {
            record.fire(Some(self));
        }
    }
}

impl core::fmt::Debug for HostedMem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostedMem")
            .field("len", &self.map.len())
            .field("writable", &self.writable)
            .finish()
    }
}

impl SharedMem for HostedMem {
    fn len(&self) -> usize {
        self.map.len()
    }
    fn load_u8(&self, off: usize) -> u8 {
        self.atomic().load_u8(off)
    }
    fn store_u8(&self, off: usize, value: u8) {
        self.writing().store_u8(off, value)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.atomic().load_u16(off)
    }
    fn store_u16(&self, off: usize, value: u16) {
        self.writing().store_u16(off, value)
    }
    fn load_u32(&self, off: usize) -> u32 {
        self.atomic().load_u32(off)
    }
    fn store_u32(&self, off: usize, value: u32) {
        self.writing().store_u32(off, value)
    }
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        self.writing().fetch_or_u8(off, bits)
    }
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        self.writing().fetch_and_u8(off, bits)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let (head, body, _tail) = split(off, dst.len(), self.len());
        let (d_head, rest) = dst.split_at_mut(head);
        let (d_body, d_tail) = rest.split_at_mut(body);
        self.atomic().read_bytes(off, d_head);
        let words = &self.map.words64()[(off + head) / 8..][..body / 8];
        for (chunk, word) in d_body.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        self.atomic().read_bytes(off + head + body, d_tail);
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        let mem = self.writing();
        let (head, body, tail) = split(off, src.len(), self.len());
        let (s_head, rest) = src.split_at(head);
        let (s_body, s_tail) = rest.split_at(body);
        mem.write_bytes(off, s_head);
        let words = &self.map.words64()[(off + head) / 8..][..body / 8];
        for (chunk, word) in s_body.chunks_exact(8).zip(words) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
        }
        mem.write_bytes(off + head + body, s_tail);
        debug_assert_eq!(s_tail.len(), tail);
    }
}
