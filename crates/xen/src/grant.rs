//! Grant tables (version 1): granting our pages to a peer and mapping a
//! peer's grants.
//!
//! The table frames are mapped into the free guest-physical window with
//! `XENMEM_add_to_physmap(XENMAPSPACE_grant_table)`. Foreign grants are
//! mapped with `GNTTABOP_map_grant_ref` and `GNTMAP_host_map`; on PVH the
//! `host_addr` is the guest-physical address of a free window frame.

use core::sync::atomic::{fence, AtomicU16, Ordering};

use portcullis_vchan::{DomId, GrantRef, SharedMem};
use spin::mutex::SpinMutex;

use crate::abi::{self, gnttab as g};
use crate::hypercall::{self, XenError};
use crate::page::SharedPages;
use crate::xen;

/// Grant table frames this crate maps (512 entries each).
pub const TABLE_FRAMES: u64 = 4;
const ENTRIES: u32 = (TABLE_FRAMES as usize * abi::PAGE_SIZE / g::ENTRY_V1_SIZE) as u32;

/// A grant-table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Hypercall error.
    Xen(XenError),
    /// Xen reported a `GNTST_*` status for one reference.
    Status(i16),
    /// No free grant entries or window frames.
    Exhausted,
    /// The grant table is not set up (not on Xen).
    NotReady,
    /// The peer still has the page mapped; the page must not be reused.
    InUse,
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantError::Xen(e) => write!(f, "grant table: {e}"),
            GrantError::Status(s) => {
                write!(f, "grant operation status {}", portcullis_platform::Signed(i64::from(*s)))
            }
            GrantError::Exhausted => f.write_str("no free grant entries"),
            GrantError::NotReady => f.write_str("grant table not set up"),
            GrantError::InUse => f.write_str("grant still in use by the peer"),
        }
    }
}

impl core::error::Error for GrantError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            GrantError::Xen(e) => Some(e),
            _ => None,
        }
    }
}

struct Table {
    entries: SharedPages,
    used: [u64; (ENTRIES / 64) as usize],
}

static TABLE: SpinMutex<Option<Table>> = SpinMutex::new(None);

/// Maps the grant table frames. Idempotent.
pub fn init() -> Result<(), GrantError> {
    let mut table = TABLE.lock();
    if table.is_some() {
        return Ok(());
    }
    let pfn = xen::alloc_frames(TABLE_FRAMES).ok_or(GrantError::Exhausted)?;
    for i in 0..TABLE_FRAMES {
        if let Err(e) = xen::add_to_physmap(abi::memory::MAPSPACE_GRANT_TABLE, i, pfn + i) {
            xen::free_frames(pfn + i, TABLE_FRAMES - i);
            return Err(GrantError::Xen(e));
        }
    }
    // SAFETY: the frames were just mapped by Xen at these guest-physical
    // addresses (inside the identity map) and stay mapped for the life of
    // the domain.
    let entries = unsafe {
        SharedPages::new(
            (pfn as usize) << abi::PAGE_SHIFT,
            (TABLE_FRAMES as usize) * abi::PAGE_SIZE,
        )
    };
    let mut used = [0u64; (ENTRIES / 64) as usize];
    // The first entries are reserved for the toolstack.
    used[0] = (1u64 << g::NR_RESERVED_ENTRIES) - 1;
    *table = Some(Table { entries, used });
    Ok(())
}

impl Table {
    fn alloc(&mut self) -> Option<u32> {
        for (wi, w) in self.used.iter_mut().enumerate() {
            if *w != u64::MAX {
                let bit = (!*w).trailing_zeros();
                *w |= 1 << bit;
                return Some(wi as u32 * 64 + bit);
            }
        }
        None
    }

    fn release(&mut self, r: u32) {
        if let Some(w) = self.used.get_mut((r / 64) as usize) {
            *w &= !(1 << (r % 64));
        }
    }

    fn flags(&self, r: u32) -> &AtomicU16 {
        let off = r as usize * g::ENTRY_V1_SIZE;
        assert!(off + g::ENTRY_V1_SIZE <= self.entries.len());
        // SAFETY: `off` is an aligned entry inside the mapped table (checked
        // above); Xen updates `flags` with atomic operations too.
        unsafe { AtomicU16::from_ptr((self.entries.addr() + off) as *mut u16) }
    }
}

/// Grants `peer` access to our frame `gfn`; returns the reference.
pub fn grant_access(peer: DomId, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
    let frame = u32::try_from(gfn).map_err(|_| GrantError::Exhausted)?;
    let mut guard = TABLE.lock();
    let table = guard.as_mut().ok_or(GrantError::NotReady)?;
    let r = table.alloc().ok_or(GrantError::Exhausted)?;
    let off = r as usize * g::ENTRY_V1_SIZE;
    table.entries.store_u16(off + 2, peer.0);
    table.entries.store_u32(off + 4, frame);
    // Xen must see domid and frame before the entry becomes valid.
    fence(Ordering::Release);
    let flags = g::GTF_PERMIT_ACCESS | if readonly { g::GTF_READONLY } else { 0 };
    table.flags(r).store(flags, Ordering::Release);
    Ok(GrantRef(r))
}

/// Revokes a grant if the peer does not have it mapped; then the entry is
/// free again. `InUse` means the page must be leaked, not reused.
pub fn end_access(r: GrantRef) -> Result<(), GrantError> {
    let mut guard = TABLE.lock();
    let table = guard.as_mut().ok_or(GrantError::NotReady)?;
    if r.0 < g::NR_RESERVED_ENTRIES || r.0 >= ENTRIES {
        return Err(GrantError::Exhausted);
    }
    let flags = table.flags(r.0);
    let mut cur = flags.load(Ordering::Acquire);
    loop {
        if cur & (g::GTF_READING | g::GTF_WRITING) != 0 {
            return Err(GrantError::InUse);
        }
        match flags.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(seen) => cur = seen,
        }
    }
    table.release(r.0);
    Ok(())
}

/// A foreign grant mapped into our address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Guest-physical address of the mapping.
    pub gpa: u64,
    /// Xen's handle, for unmapping.
    pub handle: u32,
}

/// Maps `peer`'s grant `r` at guest-physical address `gpa`.
pub fn map(peer: DomId, r: GrantRef, gpa: u64, writable: bool) -> Result<Mapping, GrantError> {
    #[repr(C)]
    struct MapGrantRef {
        host_addr: u64,
        flags: u32,
        r#ref: u32,
        dom: u16,
        status: i16,
        handle: u32,
        dev_bus_addr: u64,
    }
    let flags = g::GNTMAP_HOST_MAP | if writable { 0 } else { g::GNTMAP_READONLY };
    let mut m = MapGrantRef {
        host_addr: gpa,
        flags,
        r#ref: r.0,
        dom: peer.0,
        status: 0,
        handle: 0,
        dev_bus_addr: 0,
    };
    // SAFETY: one `gnttab_map_grant_ref` record (count 1), live for the call.
    unsafe {
        hypercall::hypercall3(
            abi::hypercall::GRANT_TABLE_OP,
            g::MAP_GRANT_REF,
            &mut m as *mut MapGrantRef as u64,
            1,
        )
    }
    .map_err(GrantError::Xen)?;
    if m.status != g::GNTST_OKAY {
        return Err(GrantError::Status(m.status));
    }
    Ok(Mapping { gpa, handle: m.handle })
}

/// Unmaps a mapping made by [`map`].
pub fn unmap(m: Mapping) -> Result<(), GrantError> {
    #[repr(C)]
    struct UnmapGrantRef {
        host_addr: u64,
        dev_bus_addr: u64,
        handle: u32,
        status: i16,
        _pad: u16,
    }
    let mut u =
        UnmapGrantRef { host_addr: m.gpa, dev_bus_addr: 0, handle: m.handle, status: 0, _pad: 0 };
    // SAFETY: one `gnttab_unmap_grant_ref` record (count 1), live for the call.
    unsafe {
        hypercall::hypercall3(
            abi::hypercall::GRANT_TABLE_OP,
            g::UNMAP_GRANT_REF,
            &mut u as *mut UnmapGrantRef as u64,
            1,
        )
    }
    .map_err(GrantError::Xen)?;
    if u.status != g::GNTST_OKAY {
        return Err(GrantError::Status(u.status));
    }
    Ok(())
}
