//! Granted pages as this process maps them.

use std::path::PathBuf;

use portcullis_vchan::{AtomicMem, Port, SharedMem};

use crate::sys::Mapping;

/// An unmap notification registered with a mapping: on unshare/unmap (or,
/// through [`crate::World::reap`], on the domain's death) the byte is
/// cleared and the port signalled.
#[derive(Debug)]
pub(crate) struct NotifyRecord {
    /// The file in `<world>/notify/<domid>/` describing it to the reaper.
    pub(crate) file: PathBuf,
    pub(crate) offset: usize,
    pub(crate) port: Port,
}

/// One or more granted pages mapped contiguously, shared with another
/// process. Every access is an atomic load or store, bounds-checked;
/// writes through a read-only mapping panic instead of faulting.
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
        self.atomic().read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.writing().write_bytes(off, src)
    }
}
