//! The PVH `hvm_start_info` block whose address arrives in ebx.

use crate::abi::start_info as si;
use crate::page::FrameWindow;

/// Most modules and memory-map entries this crate looks at.
pub const MAX_MODULES: usize = 8;
/// Longest command line kept.
pub const MAX_CMDLINE: usize = 1024;

/// A boot module (for example a configuration blob) loaded by the toolstack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Guest-physical address.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One entry of the E820-style memory map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRange {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

/// What the loader told us, copied out of guest memory.
#[derive(Clone, Debug)]
pub struct StartInfo {
    /// The kernel command line (`extra=` in xl, `-append` in QEMU).
    pub cmdline: &'static str,
    /// Boot modules.
    pub modules: [Module; MAX_MODULES],
    /// How many of `modules` are set.
    pub nr_modules: usize,
    /// Memory map entries.
    pub memmap: [MemRange; 32],
    /// How many of `memmap` are set.
    pub nr_memmap: usize,
}

/// Why the start info was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The magic value did not match (not a PVH boot).
    BadMagic,
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("hvm_start_info magic mismatch")
    }
}

impl core::error::Error for StartInfoError {}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

impl StartInfo {
    /// Reads the start info at guest-physical address `paddr`.
    ///
    /// # Safety
    /// `paddr` must be the address the loader passed in ebx, and the low
    /// 4 GiB must be identity-mapped. The command line is borrowed for the
    /// life of the program: the loader's memory is never reused.
    pub unsafe fn read(paddr: u64) -> Result<StartInfo, StartInfoError> {
        // SAFETY: the caller guarantees a valid, mapped start info block.
        let head = unsafe { core::slice::from_raw_parts(paddr as usize as *const u8, si::SIZE) };
        if u32_at(head, 0) != si::MAGIC {
            return Err(StartInfoError::BadMagic);
        }
        let version = u32_at(head, si::VERSION);
        let mut info = StartInfo {
            cmdline: "",
            modules: [Module::default(); MAX_MODULES],
            nr_modules: 0,
            memmap: [MemRange::default(); 32],
            nr_memmap: 0,
        };

        let cmdline = u64_at(head, si::CMDLINE_PADDR);
        if cmdline != 0 {
            // SAFETY: the loader put a NUL-terminated string there; we read
            // at most MAX_CMDLINE bytes of mapped memory.
            let raw =
                unsafe { core::slice::from_raw_parts(cmdline as usize as *const u8, MAX_CMDLINE) };
            let len = raw.iter().position(|&c| c == 0).unwrap_or(MAX_CMDLINE);
            let text = raw.get(..len).unwrap_or_default();
            info.cmdline = match core::str::from_utf8(text) {
                Ok(s) => s,
                Err(e) => core::str::from_utf8(text.get(..e.valid_up_to()).unwrap_or_default())
                    .unwrap_or_default(),
            };
        }

        let nr = (u32_at(head, si::NR_MODULES) as usize).min(MAX_MODULES);
        let list = u64_at(head, si::MODLIST_PADDR);
        if list != 0 {
            // SAFETY: the loader wrote `nr_modules` entries at `modlist_paddr`.
            let raw = unsafe {
                core::slice::from_raw_parts(list as usize as *const u8, nr * si::MODLIST_ENTRY_SIZE)
            };
            for (slot, e) in info.modules.iter_mut().zip(raw.chunks_exact(si::MODLIST_ENTRY_SIZE)) {
                *slot = Module { paddr: u64_at(e, 0), size: u64_at(e, 8) };
            }
            info.nr_modules = nr;
        }

        if version >= 1 {
            let map = u64_at(head, si::MEMMAP_PADDR);
            let n = (u32_at(head, si::MEMMAP_ENTRIES) as usize).min(info.memmap.len());
            if map != 0 {
                // SAFETY: version 1 start info carries `memmap_entries`
                // entries at `memmap_paddr`.
                let raw = unsafe {
                    core::slice::from_raw_parts(
                        map as usize as *const u8,
                        n * si::MEMMAP_ENTRY_SIZE,
                    )
                };
                for (slot, e) in info.memmap.iter_mut().zip(raw.chunks_exact(si::MEMMAP_ENTRY_SIZE))
                {
                    *slot =
                        MemRange { addr: u64_at(e, 0), size: u64_at(e, 8), kind: u32_at(e, 16) };
                }
                info.nr_memmap = n;
            }
        }
        Ok(info)
    }

    /// The boot modules.
    pub fn modules(&self) -> &[Module] {
        self.modules.get(..self.nr_modules).unwrap_or_default()
    }

    /// The memory map.
    pub fn memmap(&self) -> &[MemRange] {
        self.memmap.get(..self.nr_memmap).unwrap_or_default()
    }

    /// First pfn of a free window of [`FrameWindow::FRAMES`] frames.
    pub fn free_window(&self) -> Option<u64> {
        free_window(self.memmap(), FrameWindow::FRAMES)
    }
}

/// Highest usable address for the window: the boot page tables map 4 GiB,
/// and the top 256 MiB holds the LAPIC, IOAPIC and Xen's special pages.
const WINDOW_LIMIT: u64 = 0xf000_0000;

/// Finds `frames` free frames just above the highest RAM below 0xf000_0000
/// (the boot page tables map 4 GiB; the top 256 MiB holds the LAPIC, IOAPIC
/// and Xen's special pages), not overlapping any memory-map entry.
pub fn free_window(map: &[MemRange], frames: u64) -> Option<u64> {
    let want = frames.checked_mul(4096)?;
    let ram_top = map
        .iter()
        .filter(|r| r.kind == crate::abi::start_info::MEMMAP_TYPE_RAM && r.addr < WINDOW_LIMIT)
        .map(|r| r.addr.saturating_add(r.size).min(WINDOW_LIMIT))
        .max()?;
    // Align up to 2 MiB, then step past any entry we would overlap.
    let mut start = ram_top.checked_add(0x1f_ffff)? & !0x1f_ffff;
    loop {
        let end = start.checked_add(want)?;
        if end > WINDOW_LIMIT {
            return None;
        }
        match map.iter().find(|r| r.addr < end && start < r.addr.saturating_add(r.size)) {
            Some(r) => start = r.addr.saturating_add(r.size).checked_add(0x1f_ffff)? & !0x1f_ffff,
            None => return Some(start / 4096),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn r(addr: u64, size: u64, kind: u32) -> MemRange {
        MemRange { addr, size, kind }
    }

    #[test]
    fn window_sits_above_ram_and_avoids_reserved_ranges() {
        let map = [r(0, 0x9fc00, 1), r(0x100000, 0x3f00000, 1), r(0xfc000000, 0x1000, 2)];
        assert_eq!(free_window(&map, 4096), Some(0x4000000 / 4096));
        // A reserved range right after RAM pushes the window past it.
        let map = [r(0, 0x4000000, 1), r(0x4000000, 0x1234, 2)];
        assert_eq!(free_window(&map, 4096), Some(0x4200000 / 4096));
        // RAM near the limit leaves no room.
        let map = [r(0, 0xefff_0000, 1)];
        assert_eq!(free_window(&map, 4096), None);
        assert_eq!(free_window(&[], 4096), None);
        // Hostile sizes do not overflow.
        let map = [r(u64::MAX - 5, u64::MAX, 1), r(0, 0x100000, 1)];
        assert_eq!(free_window(&map, 4096), Some(0x200000 / 4096));
    }
}
