//! The PVH `hvm_start_info` block whose address arrives in ebx.

use crate::abi::start_info as si;
use crate::page::FrameWindow;

/// Most boot modules kept.
pub const MAX_MODULES: usize = 8;
/// Most memory-map entries kept.
pub const MAX_MEMMAP: usize = 32;
/// Longest command line kept.
pub const MAX_CMDLINE: usize = 1024;

/// A range of guest-physical memory, `start..end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Span {
    /// `len` bytes at `start` (the end saturates at `u64::MAX`).
    pub const fn at(start: u64, len: u64) -> Span {
        Span { start, end: start.saturating_add(len) }
    }

    /// Bytes in the span (0 if it is inverted).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the span holds no byte.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the two spans share a byte.
    pub const fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

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

impl MemRange {
    /// The bytes the entry covers.
    pub const fn span(&self) -> Span {
        Span::at(self.addr, self.size)
    }

    /// Whether the entry is usable RAM.
    pub const fn is_ram(&self) -> bool {
        self.kind == si::MEMMAP_TYPE_RAM
    }
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
    pub memmap: [MemRange; MAX_MEMMAP],
    /// How many of `memmap` are set.
    pub nr_memmap: usize,
    /// Where the loader's own data lies in guest memory: the start info
    /// block, the command line, the module list and the memory map table
    /// (empty spans for what is absent). The heap must not cover them.
    pub loader: [Span; 4],
}

/// Why the start info was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The magic value did not match (not a PVH boot).
    BadMagic,
    /// The block, its module list or its memory map could not be read
    /// (an address outside the mapped memory, or a length overflowing).
    Unreadable(&'static str),
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StartInfoError::BadMagic => f.write_str("hvm_start_info magic mismatch"),
            StartInfoError::Unreadable(what) => write!(f, "hvm_start_info: cannot read {what}"),
        }
    }
}

impl core::error::Error for StartInfoError {}

/// The little-endian word at `off`; `None` past the end of `b`.
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The little-endian double word at `off`; `None` past the end of `b`.
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Guest memory as the parser sees it: `read(paddr, len)` is the `len`
/// bytes at guest-physical `paddr`, or `None` if they are not readable.
pub trait Memory {
    /// The `len` bytes at `paddr`.
    fn read(&self, paddr: u64, len: usize) -> Option<&'static [u8]>;
}

/// Parses the start info at `paddr` in `mem`. Pure: every address and count
/// comes from the (untrusted) block and is bounded here: at most
/// [`MAX_MODULES`] modules, [`MAX_MEMMAP`] memory-map entries and
/// [`MAX_CMDLINE`] bytes of command line are read.
pub fn parse(mem: &impl Memory, paddr: u64) -> Result<StartInfo, StartInfoError> {
    let unreadable = StartInfoError::Unreadable;
    let head = mem.read(paddr, si::SIZE).ok_or(unreadable("the block"))?;
    let field32 = |off| u32_at(head, off).ok_or(unreadable("the block"));
    let field64 = |off| u64_at(head, off).ok_or(unreadable("the block"));
    if field32(0)? != si::MAGIC {
        return Err(StartInfoError::BadMagic);
    }
    let version = field32(si::VERSION)?;
    let mut info = StartInfo {
        cmdline: "",
        modules: [Module::default(); MAX_MODULES],
        nr_modules: 0,
        memmap: [MemRange::default(); MAX_MEMMAP],
        nr_memmap: 0,
        loader: [
            Span::at(paddr, si::SIZE as u64),
            Span::default(),
            Span::default(),
            Span::default(),
        ],
    };

    let cmdline = field64(si::CMDLINE_PADDR)?;
    if cmdline != 0 {
        // The loader put a NUL-terminated string there; at most
        // MAX_CMDLINE bytes are looked at (fewer if the mapping ends first).
        let raw = (0..=MAX_CMDLINE.ilog2())
            .map(|shift| MAX_CMDLINE >> shift)
            .find_map(|len| mem.read(cmdline, len))
            .ok_or(unreadable("the command line"))?;
        let len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let text = raw.get(..len).unwrap_or_default();
        info.cmdline = match core::str::from_utf8(text) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(text.get(..e.valid_up_to()).unwrap_or_default())
                .unwrap_or_default(),
        };
        // The string and its NUL stay borrowed for the life of the program.
        info.loader[1] = Span::at(cmdline, (len as u64).saturating_add(1));
    }

    let list = field64(si::MODLIST_PADDR)?;
    let nr = (field32(si::NR_MODULES)? as usize).min(MAX_MODULES);
    if list != 0 && nr != 0 {
        let len = nr * si::MODLIST_ENTRY_SIZE;
        let raw = mem.read(list, len).ok_or(unreadable("the module list"))?;
        for (slot, e) in info.modules.iter_mut().zip(raw.chunks_exact(si::MODLIST_ENTRY_SIZE)) {
            *slot = Module {
                paddr: u64_at(e, 0).unwrap_or_default(),
                size: u64_at(e, 8).unwrap_or_default(),
            };
        }
        info.nr_modules = nr;
        info.loader[2] = Span::at(list, len as u64);
    }

    if version >= 1 {
        let map = field64(si::MEMMAP_PADDR)?;
        let n = (field32(si::MEMMAP_ENTRIES)? as usize).min(MAX_MEMMAP);
        if map != 0 && n != 0 {
            let len = n * si::MEMMAP_ENTRY_SIZE;
            let raw = mem.read(map, len).ok_or(unreadable("the memory map"))?;
            for (slot, e) in info.memmap.iter_mut().zip(raw.chunks_exact(si::MEMMAP_ENTRY_SIZE)) {
                *slot = MemRange {
                    addr: u64_at(e, 0).unwrap_or_default(),
                    size: u64_at(e, 8).unwrap_or_default(),
                    kind: u32_at(e, 16).unwrap_or_default(),
                };
            }
            info.nr_memmap = n;
            info.loader[3] = Span::at(map, len as u64);
        }
    }
    Ok(info)
}

/// The identity-mapped low 4 GiB, as [`Memory`] for [`parse`].
#[cfg(target_arch = "x86_64")]
struct Identity;

#[cfg(target_arch = "x86_64")]
impl Memory for Identity {
    fn read(&self, paddr: u64, len: usize) -> Option<&'static [u8]> {
        let end = paddr.checked_add(len as u64)?;
        if paddr == 0 || end > 1 << 32 {
            return None;
        }
        // SAFETY: the boot page tables identity-map the low 4 GiB, so the
        // range is mapped; the loader's memory is never written by us and
        // never reused (the heap avoids `StartInfo::loader`), so a shared
        // 'static borrow of it is sound.
        Some(unsafe { core::slice::from_raw_parts(paddr as usize as *const u8, len) })
    }
}

impl StartInfo {
    /// Reads the start info at guest-physical address `paddr`.
    ///
    /// # Safety
    /// `paddr` must be the address the loader passed in ebx, and the low
    /// 4 GiB must be identity-mapped. What the block points at is borrowed
    /// for the life of the program: the loader's memory is never reused.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn read(paddr: u64) -> Result<StartInfo, StartInfoError> {
        parse(&Identity, paddr)
    }

    /// Guest memory the loader's data and modules occupy: [`Self::loader`]
    /// and every module.
    pub fn occupied(&self) -> impl Iterator<Item = Span> + '_ {
        self.loader.iter().copied().chain(self.modules().iter().map(|m| Span::at(m.paddr, m.size)))
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
pub const WINDOW_LIMIT: u64 = 0xf000_0000;

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
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    use super::*;

    /// Guest memory: `BASE..BASE + len` of a leaked buffer.
    struct Fake(&'static [u8]);
    const BASE: u64 = 0x10_0000;

    impl Memory for Fake {
        fn read(&self, paddr: u64, len: usize) -> Option<&'static [u8]> {
            let off = usize::try_from(paddr.checked_sub(BASE)?).ok()?;
            self.0.get(off..off.checked_add(len)?)
        }
    }

    fn put(mem: &mut [u8], paddr: u64, bytes: &[u8]) {
        let off = (paddr - BASE) as usize;
        mem[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// A version-1 block at BASE: command line at +0x100, `nr_modules`
    /// modules listed at +0x600, `entries` memory-map entries at +0x800.
    fn image(cmdline: &[u8], nr_modules: u32, entries: u32) -> Vec<u8> {
        let mut mem = vec![0u8; 0x2000];
        put(&mut mem, BASE, &si::MAGIC.to_le_bytes());
        put(&mut mem, BASE + si::VERSION as u64, &1u32.to_le_bytes());
        put(&mut mem, BASE + si::NR_MODULES as u64, &nr_modules.to_le_bytes());
        put(&mut mem, BASE + si::MODLIST_PADDR as u64, &(BASE + 0x600).to_le_bytes());
        put(&mut mem, BASE + si::CMDLINE_PADDR as u64, &(BASE + 0x100).to_le_bytes());
        put(&mut mem, BASE + si::MEMMAP_PADDR as u64, &(BASE + 0x800).to_le_bytes());
        put(&mut mem, BASE + si::MEMMAP_ENTRIES as u64, &entries.to_le_bytes());
        put(&mut mem, BASE + 0x100, cmdline);
        for i in 0..u64::from(nr_modules.min(16)) {
            let e = BASE + 0x600 + i * si::MODLIST_ENTRY_SIZE as u64;
            put(&mut mem, e, &(0x40_0000 + i * 0x1000).to_le_bytes());
            put(&mut mem, e + 8, &0x800u64.to_le_bytes());
        }
        for i in 0..u64::from(entries.min(64)) {
            let e = BASE + 0x800 + i * si::MEMMAP_ENTRY_SIZE as u64;
            put(&mut mem, e, &(i << 24).to_le_bytes());
            put(&mut mem, e + 8, &(1u64 << 20).to_le_bytes());
            put(&mut mem, e + 16, &(1 + (i as u32 % 2)).to_le_bytes());
        }
        mem
    }

    fn parse_leaked(mem: Vec<u8>) -> Result<StartInfo, StartInfoError> {
        parse(&Fake(Box::leak(mem.into_boxed_slice())), BASE)
    }

    #[test]
    fn a_block_parses_with_its_loader_spans() {
        let info = parse_leaked(image(b"console=hvc0 panic\0junk", 2, 3)).unwrap();
        assert_eq!(info.cmdline, "console=hvc0 panic");
        assert_eq!(
            info.modules(),
            [Module { paddr: 0x40_0000, size: 0x800 }, Module { paddr: 0x40_1000, size: 0x800 }]
        );
        assert_eq!(info.memmap().len(), 3);
        assert_eq!(info.memmap()[1], MemRange { addr: 1 << 24, size: 1 << 20, kind: 2 });
        assert!(info.memmap()[0].is_ram() && !info.memmap()[1].is_ram());
        assert_eq!(
            info.loader,
            [
                Span::at(BASE, si::SIZE as u64),
                Span::at(BASE + 0x100, 19),
                Span::at(BASE + 0x600, 2 * si::MODLIST_ENTRY_SIZE as u64),
                Span::at(BASE + 0x800, 3 * si::MEMMAP_ENTRY_SIZE as u64),
            ]
        );
        let occupied: Vec<Span> = info.occupied().collect();
        assert_eq!(occupied.len(), 6);
        assert_eq!(occupied[5], Span::at(0x40_1000, 0x800));
    }

    #[test]
    fn counts_are_bounded() {
        // 1000 of each are claimed; only the first MAX_* are read (the
        // buffer holds no more than that).
        let info = parse_leaked(image(b"x\0", 1000, 1000)).unwrap();
        assert_eq!(info.modules().len(), MAX_MODULES);
        assert_eq!(info.memmap().len(), MAX_MEMMAP);
        assert_eq!(info.loader[3].len(), (MAX_MEMMAP * si::MEMMAP_ENTRY_SIZE) as u64);
    }

    #[test]
    fn a_command_line_without_its_nul_is_cut_where_memory_ends() {
        let mut mem = image(b"", 0, 0);
        let off = 0x100;
        mem.truncate(off + 10);
        mem[off..].copy_from_slice(b"abcdefghij");
        let info = parse_leaked(mem).unwrap();
        assert_eq!(info.cmdline, "abcdefgh");
        assert!(info.cmdline.len() <= MAX_CMDLINE);
        // Invalid UTF-8 keeps the valid prefix.
        let info = parse_leaked(image(b"ok\xff\xfe\0", 0, 0)).unwrap();
        assert_eq!(info.cmdline, "ok");
    }

    #[test]
    fn hostile_blocks_are_typed_errors() {
        let mut mem = image(b"\0", 0, 0);
        mem[0] ^= 1;
        assert_eq!(parse_leaked(mem).unwrap_err(), StartInfoError::BadMagic);
        assert_eq!(
            parse(&Fake(&[0; 8]), BASE).unwrap_err(),
            StartInfoError::Unreadable("the block")
        );
        let mut mem = image(b"\0", 1, 0);
        put(&mut mem, BASE + si::MODLIST_PADDR as u64, &u64::MAX.to_le_bytes());
        assert_eq!(parse_leaked(mem).unwrap_err(), StartInfoError::Unreadable("the module list"));
        let mut mem = image(b"\0", 0, 0);
        put(&mut mem, BASE + si::CMDLINE_PADDR as u64, &(BASE - 1).to_le_bytes());
        assert_eq!(parse_leaked(mem).unwrap_err(), StartInfoError::Unreadable("the command line"));
        // Version 0 has no memory map.
        let mut mem = image(b"\0", 0, 3);
        put(&mut mem, BASE + si::VERSION as u64, &0u32.to_le_bytes());
        assert!(parse_leaked(mem).unwrap().memmap().is_empty());
    }

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
