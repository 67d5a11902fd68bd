//! Where the heap goes: the largest run of free RAM above the image, from
//! the domain's memory map.
//!
//! The loaded image is only code and data (and a small `.bss`); the heap is
//! not part of it, so Xen allocates and zeroes only what the image needs,
//! and a domain's `memory` setting decides how much heap it gets. The heap
//! takes RAM (E820 type 1) above the image and below the mapped limit,
//! minus every range something else lives in: any non-RAM entry of the
//! map, the loader's data and modules ([`StartInfo::occupied`]), and the
//! pages Xen shares with us (console and xenstore rings) in case the
//! toolstack put them inside RAM.
//!
//! Pure and bounded (at most [`MAX_MEMMAP`] entries and
//! [`MAX_AVOID`] avoided ranges, no allocation: it runs before the heap
//! exists), tested on the host.

use crate::start_info::{MemRange, Span, StartInfo, MAX_MEMMAP, WINDOW_LIMIT};

/// Smallest heap a guest boots with.
pub const MIN_HEAP: u64 = 128 * 1024;
/// Most ranges [`choose`] avoids besides the memory map's own.
pub const MAX_AVOID: usize = 16;
const PAGE: u64 = crate::abi::PAGE_SIZE as u64;

/// Why no heap could be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// The loader gave no memory map.
    NoMemoryMap,
    /// No RAM entry holds the whole image.
    ImageNotInRam {
        /// The image.
        image: Span,
    },
    /// A non-RAM entry of the map overlaps the image.
    ImageOverlapsReserved {
        /// The entry.
        entry: Span,
    },
    /// The largest free run of RAM above the image is smaller than [`MIN_HEAP`].
    TooSmall {
        /// Its size in bytes.
        largest: u64,
    },
    /// More ranges to avoid than [`MAX_AVOID`].
    TooManyAvoided,
}

impl core::fmt::Display for HeapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeapError::NoMemoryMap => f.write_str("heap: the loader gave no memory map"),
            HeapError::ImageNotInRam { image } => {
                write!(f, "heap: no RAM entry holds the image {:#x}..{:#x}", image.start, image.end)
            }
            HeapError::ImageOverlapsReserved { entry } => write!(
                f,
                "heap: memory-map entry {:#x}..{:#x} overlaps the image",
                entry.start, entry.end
            ),
            HeapError::TooSmall { largest } => write!(
                f,
                "heap: the largest free RAM above the image is {largest} bytes, less than \
                 {MIN_HEAP}; give the domain more memory"
            ),
            HeapError::TooManyAvoided => write!(f, "heap: more than {MAX_AVOID} ranges to avoid"),
        }
    }
}

impl core::error::Error for HeapError {}

/// The heap for a domain whose memory map is `map` and whose image is
/// `image`: the largest page-aligned run of RAM that lies above the image
/// and below [`WINDOW_LIMIT`] (the boot page tables map the low 4 GiB; the
/// free window and Xen's special pages sit above RAM) and overlaps neither
/// a non-RAM entry nor any span of `avoid`. Entries, sizes and spans are
/// untrusted: arithmetic saturates, inverted spans are empty.
pub fn choose(map: &[MemRange], image: Span, avoid: &[Span]) -> Result<Span, HeapError> {
    let map = map.get(..MAX_MEMMAP).unwrap_or(map);
    if avoid.len() > MAX_AVOID {
        return Err(HeapError::TooManyAvoided);
    }
    if map.is_empty() {
        return Err(HeapError::NoMemoryMap);
    }
    if let Some(r) = map.iter().find(|r| !r.is_ram() && r.span().overlaps(&image)) {
        return Err(HeapError::ImageOverlapsReserved { entry: r.span() });
    }
    let holds_image = |r: &&MemRange| {
        let s = r.span();
        r.is_ram() && s.start <= image.start && image.end <= s.end
    };
    if !map.iter().any(|r| holds_image(&r)) {
        return Err(HeapError::ImageNotInRam { image });
    }
    // What no heap byte may touch: non-RAM entries and the avoided spans.
    let obstacles =
        || map.iter().filter(|r| !r.is_ram()).map(MemRange::span).chain(avoid.iter().copied());
    let mut best = Span::default();
    for ram in map.iter().filter(|r| r.is_ram()) {
        let area = Span { start: ram.addr.max(image.end), end: ram.span().end.min(WINDOW_LIMIT) };
        if area.is_empty() {
            continue;
        }
        // A free run starts at the area's start or where an obstacle ends,
        // and runs to the nearest obstacle start after it.
        let starts = core::iter::once(area.start)
            .chain(obstacles().map(|o| o.end).filter(|&e| area.start < e && e < area.end));
        for start in starts {
            let start = align_up(start);
            if start >= area.end || obstacles().any(|o| o.start <= start && start < o.end) {
                continue;
            }
            let end = obstacles()
                .filter(|o| !o.is_empty())
                .map(|o| o.start)
                .filter(|&s| s > start)
                .fold(area.end, u64::min)
                & !(PAGE - 1);
            let run = Span { start, end };
            if run.len() > best.len() {
                best = run;
            }
        }
    }
    if best.len() < MIN_HEAP {
        return Err(HeapError::TooSmall { largest: best.len() });
    }
    Ok(best)
}

/// [`choose`] for a booted domain: its memory map, its loader data and
/// modules, and `shared` (the pages Xen shares with us).
pub fn for_domain(info: &StartInfo, image: Span, shared: &[Span]) -> Result<Span, HeapError> {
    let mut avoid = [Span::default(); MAX_AVOID];
    let mut n = 0;
    for span in info.occupied().chain(shared.iter().copied()).filter(|s| !s.is_empty()) {
        *avoid.get_mut(n).ok_or(HeapError::TooManyAvoided)? = span;
        n += 1;
    }
    choose(info.memmap(), image, avoid.get(..n).unwrap_or_default())
}

/// `v` rounded up to a page (saturating at the last page).
const fn align_up(v: u64) -> u64 {
    match v.checked_add(PAGE - 1) {
        Some(v) => v & !(PAGE - 1),
        None => !(PAGE - 1),
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString;

    use super::*;

    const MIB: u64 = 1 << 20;
    const IMAGE: Span = Span { start: MIB, end: MIB + 300 * 1024 };

    const fn ram(addr: u64, size: u64) -> MemRange {
        MemRange { addr, size, kind: 1 }
    }

    const fn reserved(addr: u64, size: u64) -> MemRange {
        MemRange { addr, size, kind: 2 }
    }

    /// What Xen gives a PVH domain with `memory = 4`: low RAM, RAM from
    /// 1 MiB, and the reserved special and ACPI pages high up.
    fn xen_map() -> [MemRange; 3] {
        [ram(0, 0xa0000), ram(MIB, 3 * MIB), reserved(0xfc00_0000, 0x400_0000)]
    }

    #[test]
    fn the_heap_is_the_ram_above_the_image() {
        let heap = choose(&xen_map(), IMAGE, &[]).unwrap();
        assert_eq!(heap, Span { start: IMAGE.end, end: 4 * MIB });
    }

    #[test]
    fn the_loaders_data_and_shared_pages_are_avoided() {
        // The start info block right after the image, a module further up:
        // the heap is the larger run between or after them.
        let info = Span::at(IMAGE.end, 0x1000);
        let module = Span::at(2 * MIB, 0x10000);
        let heap = choose(&xen_map(), IMAGE, &[info, module]).unwrap();
        assert_eq!(heap, Span { start: module.end, end: 4 * MIB });
        for s in [info, module, IMAGE] {
            assert!(!heap.overlaps(&s), "{s:?}");
        }
        // A ring page in the middle of RAM splits it; the larger side wins.
        let ring = Span::at(3 * MIB, 0x1000);
        assert_eq!(
            choose(&xen_map(), IMAGE, &[ring]).unwrap(),
            Span { start: IMAGE.end, end: 3 * MIB }
        );
        // Unaligned spans: the heap keeps to whole pages outside them.
        let odd = Span { start: IMAGE.end + 5, end: IMAGE.end + 0x1001 };
        let heap = choose(&xen_map(), IMAGE, &[odd]).unwrap();
        assert_eq!(heap, Span { start: IMAGE.end + 0x2000, end: 4 * MIB });
    }

    #[test]
    fn reserved_entries_inside_ram_are_avoided() {
        let map = [ram(MIB, 15 * MIB), reserved(2 * MIB, MIB)];
        assert_eq!(choose(&map, IMAGE, &[]).unwrap(), Span { start: 3 * MIB, end: 16 * MIB });
    }

    #[test]
    fn ram_below_the_image_and_above_the_limit_is_not_used() {
        let map = [ram(0, 0x9fc00), ram(MIB, MIB), ram(WINDOW_LIMIT - MIB, 64 * MIB)];
        let heap = choose(&map, IMAGE, &[]).unwrap();
        assert_eq!(heap, Span { start: WINDOW_LIMIT - MIB, end: WINDOW_LIMIT });
    }

    #[test]
    fn a_map_that_does_not_hold_the_image_is_refused() {
        assert_eq!(choose(&[], IMAGE, &[]), Err(HeapError::NoMemoryMap));
        let map = [ram(0, 0xa0000), ram(2 * MIB, 8 * MIB)];
        assert_eq!(choose(&map, IMAGE, &[]), Err(HeapError::ImageNotInRam { image: IMAGE }));
        // RAM that ends inside the image.
        assert_eq!(
            choose(&[ram(MIB, 200 * 1024)], IMAGE, &[]),
            Err(HeapError::ImageNotInRam { image: IMAGE })
        );
        let map = [ram(0, 16 * MIB), reserved(MIB + 0x1000, 0x1000)];
        assert_eq!(
            choose(&map, IMAGE, &[]),
            Err(HeapError::ImageOverlapsReserved { entry: Span::at(MIB + 0x1000, 0x1000) })
        );
    }

    #[test]
    fn too_little_ram_is_an_error_naming_what_there_is() {
        let map = [ram(MIB, 400 * 1024)];
        assert_eq!(choose(&map, IMAGE, &[]), Err(HeapError::TooSmall { largest: 100 * 1024 }));
        // Everything above the image avoided.
        let all = Span { start: IMAGE.end, end: u64::MAX };
        assert_eq!(choose(&xen_map(), IMAGE, &[all]), Err(HeapError::TooSmall { largest: 0 }));
    }

    #[test]
    fn hostile_sizes_do_not_overflow() {
        let map = [ram(0, u64::MAX), reserved(u64::MAX - 5, u64::MAX), ram(u64::MAX, 1)];
        let heap = choose(&map, IMAGE, &[Span::at(u64::MAX - 1, u64::MAX)]).unwrap();
        assert_eq!(heap, Span { start: IMAGE.end, end: WINDOW_LIMIT });
        // Inverted spans are empty and avoid nothing.
        let inverted = Span { start: 3 * MIB, end: 2 * MIB };
        assert_eq!(choose(&xen_map(), IMAGE, &[inverted]).unwrap().end, 4 * MIB);
        // Too many ranges to avoid.
        let many = [Span::at(8 * MIB, 1); MAX_AVOID + 1];
        assert_eq!(choose(&xen_map(), IMAGE, &many), Err(HeapError::TooManyAvoided));
        // Entries past MAX_MEMMAP are not looked at.
        let mut long = [reserved(0xfc00_0000, 1); MAX_MEMMAP + 1];
        long[0] = ram(MIB, 3 * MIB);
        long[MAX_MEMMAP] = reserved(2 * MIB, MIB);
        assert_eq!(choose(&long, IMAGE, &[]).unwrap().end, 4 * MIB);
    }

    #[test]
    fn errors_display() {
        let e = HeapError::TooSmall { largest: 4096 };
        assert!(e.to_string().contains("4096 bytes"), "{e}");
        assert!(HeapError::NoMemoryMap.to_string().contains("no memory map"));
    }
}
