//! A small ELF64 reader for what the build checks need from a guest image:
//! its type, its entry point and the notes of its `PT_NOTE` segments, in
//! particular Xen's `XEN_ELFNOTE_PHYS32_ENTRY` (the PVH entry point).
//!
//! The input is treated as hostile: every offset and size is checked against
//! the file and the segment before it is used, arithmetic cannot overflow,
//! nothing panics, and each failure is an [`ElfError`] saying what was out
//! of bounds and where. Only little-endian ELF64 is accepted (the guests are
//! x86-64).
#![no_std]
#![forbid(unsafe_code)]

use core::fmt;

/// `e_type` of a fixed-address executable.
pub const ET_EXEC: u16 = 2;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// The owner name of Xen's notes (`"Xen"`, NUL-terminated).
pub const XEN_NOTE_NAME: &[u8] = b"Xen\0";
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical PVH entry address.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const NOTE_HDR_LEN: usize = 12;

/// Why an image could not be read, with the offsets and sizes involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// The file is shorter than the 64-byte ELF64 header.
    TruncatedHeader {
        /// Bytes in the file.
        len: usize,
    },
    /// The first four bytes are not `\x7fELF`.
    NotElf,
    /// `EI_CLASS` is not 2 (ELF64).
    WrongClass(u8),
    /// `EI_DATA` is not 1 (little-endian).
    WrongByteOrder(u8),
    /// `e_phentsize` is not 56, the size of an ELF64 program header.
    ProgramHeaderSize(u16),
    /// The program header table (`e_phoff`, `e_phnum` entries) is not inside
    /// the file.
    ProgramHeadersOutOfFile {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
        /// Bytes in the file.
        file_len: usize,
    },
    /// A note segment's `p_offset..p_offset + p_filesz` is not inside the file.
    SegmentOutOfFile {
        /// Index of the program header.
        segment: u16,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
        /// Bytes in the file.
        file_len: usize,
    },
    /// A note's 12-byte header does not fit in what is left of its segment.
    TruncatedNoteHeader {
        /// Index of the program header.
        segment: u16,
        /// Offset of the note inside the segment.
        at: usize,
    },
    /// A note's name or descriptor (as its header sizes them, padded) runs
    /// past the end of its segment.
    NoteOutOfSegment {
        /// Index of the program header.
        segment: u16,
        /// Offset of the note inside the segment.
        at: usize,
        /// `n_namesz`.
        name_size: u32,
        /// `n_descsz`.
        desc_size: u32,
        /// Bytes of the segment.
        segment_size: usize,
    },
    /// No note segment has a `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY`.
    NoPvhNote,
    /// The PVH entry note's descriptor is neither 4 nor 8 bytes.
    PvhNoteSize(usize),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::TruncatedHeader { len } => {
                write!(f, "{len} bytes: shorter than an ELF64 header ({EHDR_LEN})")
            }
            ElfError::NotElf => write!(f, "not an ELF file (bad magic)"),
            ElfError::WrongClass(c) => write!(f, "ELF class {c}, not ELF64 (2)"),
            ElfError::WrongByteOrder(d) => {
                write!(f, "ELF data encoding {d}, not little-endian (1)")
            }
            ElfError::ProgramHeaderSize(s) => {
                write!(f, "program header size {s}, not {PHDR_LEN}")
            }
            ElfError::ProgramHeadersOutOfFile { offset, count, file_len } => write!(
                f,
                "{count} program headers at {offset:#x} do not fit in the file ({file_len} bytes)"
            ),
            ElfError::SegmentOutOfFile { segment, offset, size, file_len } => write!(
                f,
                "note segment {segment} ({size} bytes at {offset:#x}) is outside the file \
                 ({file_len} bytes)"
            ),
            ElfError::TruncatedNoteHeader { segment, at } => {
                write!(f, "note segment {segment}: truncated note header at offset {at}")
            }
            ElfError::NoteOutOfSegment { segment, at, name_size, desc_size, segment_size } => {
                write!(
                    f,
                    "note segment {segment}: the note at offset {at} (name {name_size} bytes, \
                     descriptor {desc_size} bytes) runs past the segment's {segment_size} bytes"
                )
            }
            ElfError::NoPvhNote => {
                write!(f, "no Xen PHYS32_ENTRY note (type {XEN_ELFNOTE_PHYS32_ENTRY}): not PVH")
            }
            ElfError::PvhNoteSize(n) => {
                write!(f, "the PHYS32_ENTRY note's descriptor is {n} bytes, not 4 or 8")
            }
        }
    }
}

impl core::error::Error for ElfError {}

/// One note: its owner name (as stored, NUL included), type and descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    /// The owner name, `n_namesz` bytes.
    pub name: &'a [u8],
    /// `n_type`.
    pub kind: u32,
    /// The descriptor, `n_descsz` bytes.
    pub desc: &'a [u8],
}

/// A checked view of an ELF64 little-endian image.
#[derive(Debug, Clone, Copy)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    e_type: u16,
    entry: u64,
    phoff: usize,
    phnum: u16,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// `n` rounded up to a multiple of `align` (a power of two), if it fits.
fn align_up(n: usize, align: usize) -> Option<usize> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

impl<'a> Elf<'a> {
    /// Checks the ELF header and that the program header table is inside
    /// the file.
    pub fn parse(bytes: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        let header = bytes.get(..EHDR_LEN).ok_or(ElfError::TruncatedHeader { len: bytes.len() })?;
        if header.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err(ElfError::NotElf);
        }
        let class = header.get(4).copied().unwrap_or(0);
        if class != 2 {
            return Err(ElfError::WrongClass(class));
        }
        let data = header.get(5).copied().unwrap_or(0);
        if data != 1 {
            return Err(ElfError::WrongByteOrder(data));
        }
        let truncated = ElfError::TruncatedHeader { len: bytes.len() };
        let e_type = u16_at(header, 16).ok_or(truncated.clone())?;
        let entry = u64_at(header, 24).ok_or(truncated.clone())?;
        let phoff64 = u64_at(header, 32).ok_or(truncated.clone())?;
        let phentsize = u16_at(header, 54).ok_or(truncated.clone())?;
        let phnum = u16_at(header, 56).ok_or(truncated)?;
        if phnum > 0 && usize::from(phentsize) != PHDR_LEN {
            return Err(ElfError::ProgramHeaderSize(phentsize));
        }
        let out_of_file = ElfError::ProgramHeadersOutOfFile {
            offset: phoff64,
            count: phnum,
            file_len: bytes.len(),
        };
        let phoff = usize::try_from(phoff64).map_err(|_| out_of_file.clone())?;
        let table_end = usize::from(phnum)
            .checked_mul(PHDR_LEN)
            .and_then(|len| phoff.checked_add(len))
            .ok_or(out_of_file.clone())?;
        if table_end > bytes.len() {
            return Err(out_of_file);
        }
        Ok(Elf { bytes, e_type, entry, phoff, phnum })
    }

    /// `e_type` ([`ET_EXEC`] for a fixed-address executable).
    pub fn e_type(&self) -> u16 {
        self.e_type
    }

    /// `e_entry`, the entry point address.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Calls `each` with the notes of the `PT_NOTE` segments, in file order,
    /// until it returns `Some`, and returns that. Every note segment is
    /// checked in full: a malformed segment or note is an error even after
    /// a match.
    pub fn find_note<T>(
        &self,
        mut each: impl FnMut(Note<'a>) -> Option<T>,
    ) -> Result<Option<T>, ElfError> {
        let mut found = None;
        for index in 0..self.phnum {
            // In bounds: `parse` checked the whole table.
            let ph = self.phoff + usize::from(index) * PHDR_LEN;
            let field = |off: usize| u64_at(self.bytes, ph + off).unwrap_or(0);
            if u32_at(self.bytes, ph) != Some(PT_NOTE) {
                continue;
            }
            let (offset, size, align) = (field(8), field(32), field(48));
            let out_of_file = ElfError::SegmentOutOfFile {
                segment: index,
                offset,
                size,
                file_len: self.bytes.len(),
            };
            let start = usize::try_from(offset).map_err(|_| out_of_file.clone())?;
            let len = usize::try_from(size).map_err(|_| out_of_file.clone())?;
            let segment = start
                .checked_add(len)
                .and_then(|end| self.bytes.get(start..end))
                .ok_or(out_of_file)?;
            // Notes are 4-aligned, or 8-aligned in a segment that says so.
            let align = if align == 8 { 8 } else { 4 };
            let here = walk_notes(segment, index, align, &mut each, found.is_none())?;
            found = found.or(here);
        }
        Ok(found)
    }

    /// The PVH entry address: the descriptor of the `Xen` note of type
    /// [`XEN_ELFNOTE_PHYS32_ENTRY`], 4 or 8 bytes little-endian.
    pub fn pvh_entry(&self) -> Result<u64, ElfError> {
        let desc = self
            .find_note(|n| {
                (n.name == XEN_NOTE_NAME && n.kind == XEN_ELFNOTE_PHYS32_ENTRY).then_some(n.desc)
            })?
            .ok_or(ElfError::NoPvhNote)?;
        match desc.len() {
            4 => u32_at(desc, 0).map(u64::from),
            8 => u64_at(desc, 0),
            _ => None,
        }
        .ok_or(ElfError::PvhNoteSize(desc.len()))
    }
}

fn walk_notes<'a, T>(
    segment: &'a [u8],
    index: u16,
    align: usize,
    each: &mut impl FnMut(Note<'a>) -> Option<T>,
    mut searching: bool,
) -> Result<Option<T>, ElfError> {
    let mut found = None;
    let mut at = 0usize;
    while at < segment.len() {
        let header = at
            .checked_add(NOTE_HDR_LEN)
            .and_then(|end| segment.get(at..end))
            .ok_or(ElfError::TruncatedNoteHeader { segment: index, at })?;
        let (namesz, descsz, kind) = match (u32_at(header, 0), u32_at(header, 4), u32_at(header, 8))
        {
            (Some(n), Some(d), Some(k)) => (n, d, k),
            _ => return Err(ElfError::TruncatedNoteHeader { segment: index, at }),
        };
        let past = ElfError::NoteOutOfSegment {
            segment: index,
            at,
            name_size: namesz,
            desc_size: descsz,
            segment_size: segment.len(),
        };
        let name_at = at + NOTE_HDR_LEN;
        let name_len = usize::try_from(namesz).map_err(|_| past.clone())?;
        let desc_len = usize::try_from(descsz).map_err(|_| past.clone())?;
        let desc_at =
            name_at.checked_add(name_len).and_then(|e| align_up(e, align)).ok_or(past.clone())?;
        let desc_end = desc_at.checked_add(desc_len).ok_or(past.clone())?;
        let next = align_up(desc_end, align).ok_or(past.clone())?;
        let name = segment.get(name_at..name_at + name_len).ok_or(past.clone())?;
        let desc = segment.get(desc_at..desc_end).ok_or(past)?;
        if searching {
            found = each(Note { name, kind, desc });
            searching = found.is_none();
        }
        // The last note's padding may be cut by the segment's end.
        at = next;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// A note as the linker lays it out (4-aligned name and descriptor).
    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    /// An ELF64 executable: header, one PT_LOAD and one PT_NOTE program
    /// header, then the note segment (`filesz` overrides its size).
    fn elf(notes: &[u8], filesz: Option<u64>) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_LEN];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // ELFCLASS64
        b[5] = 1; // ELFDATA2LSB
        b[6] = 1; // EV_CURRENT
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        b[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_LEN as u64).to_le_bytes());
        b[52..54].copy_from_slice(&(EHDR_LEN as u16).to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let notes_at = (EHDR_LEN + 2 * PHDR_LEN) as u64;
        let mut load = vec![0u8; PHDR_LEN];
        load[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        b.extend_from_slice(&load);
        let mut ph = vec![0u8; PHDR_LEN];
        ph[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&notes_at.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.unwrap_or(notes.len() as u64).to_le_bytes());
        ph[48..56].copy_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&ph);
        b.extend_from_slice(notes);
        b
    }

    fn pvh_notes() -> Vec<u8> {
        let mut n = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        n.extend(note(XEN_NOTE_NAME, 6, b"Portcullis\0"));
        n.extend(note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY, &0x10_0000u64.to_le_bytes()));
        n
    }

    #[test]
    fn a_valid_pvh_image_gives_its_entry_and_header_fields() {
        let bytes = elf(&pvh_notes(), None);
        let e = Elf::parse(&bytes).unwrap();
        assert_eq!(e.e_type(), ET_EXEC);
        assert_eq!(e.entry(), 0x10_0000);
        assert_eq!(e.pvh_entry(), Ok(0x10_0000));
        let os = e.find_note(|n| (n.kind == 6).then_some(n.desc)).unwrap();
        assert_eq!(os, Some(b"Portcullis\0".as_slice()));
    }

    #[test]
    fn a_four_byte_entry_note_is_read_too() {
        let bytes = elf(&note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY, &[0, 0, 0x10, 0]), None);
        assert_eq!(Elf::parse(&bytes).unwrap().pvh_entry(), Ok(0x10_0000));
        let bytes = elf(&note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY, &[1, 2]), None);
        assert_eq!(Elf::parse(&bytes).unwrap().pvh_entry(), Err(ElfError::PvhNoteSize(2)));
    }

    #[test]
    fn an_image_without_the_note_is_not_pvh() {
        let bytes = elf(&note(b"GNU\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8]), None);
        assert_eq!(Elf::parse(&bytes).unwrap().pvh_entry(), Err(ElfError::NoPvhNote));
    }

    #[test]
    fn truncated_headers_are_errors() {
        let bytes = elf(&pvh_notes(), None);
        for len in [0, 4, 20, EHDR_LEN - 1] {
            assert_eq!(Elf::parse(&bytes[..len]).unwrap_err(), ElfError::TruncatedHeader { len });
        }
        // The program header table cut short.
        let cut = &bytes[..EHDR_LEN + PHDR_LEN + 10];
        assert!(matches!(Elf::parse(cut), Err(ElfError::ProgramHeadersOutOfFile { count: 2, .. })));
        // A note header cut by the segment's end.
        let mut notes = pvh_notes();
        notes.extend_from_slice(&[1, 0, 0, 0, 0]);
        let bytes = elf(&notes, None);
        let at = pvh_notes().len();
        assert_eq!(
            Elf::parse(&bytes).unwrap().pvh_entry(),
            Err(ElfError::TruncatedNoteHeader { segment: 1, at })
        );
    }

    #[test]
    fn a_note_or_segment_past_its_bounds_is_an_error() {
        // A descriptor size that runs past the segment.
        let mut notes = note(XEN_NOTE_NAME, XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8]);
        notes[4..8].copy_from_slice(&9u32.to_le_bytes());
        let bytes = elf(&notes, None);
        assert!(matches!(
            Elf::parse(&bytes).unwrap().pvh_entry(),
            Err(ElfError::NoteOutOfSegment { segment: 1, at: 0, desc_size: 9, .. })
        ));
        // Sizes near u32::MAX must not wrap.
        notes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        notes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let bytes = elf(&notes, None);
        assert!(matches!(
            Elf::parse(&bytes).unwrap().pvh_entry(),
            Err(ElfError::NoteOutOfSegment { .. })
        ));
        // A segment whose size runs past the file.
        let bytes = elf(&pvh_notes(), Some(u64::MAX));
        assert!(matches!(
            Elf::parse(&bytes).unwrap().pvh_entry(),
            Err(ElfError::SegmentOutOfFile { segment: 1, size: u64::MAX, .. })
        ));
    }

    #[test]
    fn wrong_magic_class_and_byte_order_are_refused() {
        let good = elf(&pvh_notes(), None);
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::NotElf);
        let mut b = good.clone();
        b[4] = 1; // ELFCLASS32
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::WrongClass(1));
        let mut b = good.clone();
        b[5] = 2; // big-endian
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::WrongByteOrder(2));
        let mut b = good;
        b[54] = 32;
        assert_eq!(Elf::parse(&b).unwrap_err(), ElfError::ProgramHeaderSize(32));
    }

    #[test]
    fn no_input_prefix_panics() {
        let good = elf(&pvh_notes(), None);
        for len in 0..=good.len() {
            if let Ok(e) = Elf::parse(&good[..len]) {
                let _ = e.pvh_entry();
            }
        }
        // Every single-byte corruption of the headers and the notes.
        for i in 0..good.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(e) = Elf::parse(&b) {
                    let _ = e.pvh_entry();
                }
            }
        }
    }
}
