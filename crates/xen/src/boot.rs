//! The PVH entry: from the 32-bit protected-mode state Xen (or QEMU's PVH
//! loader) leaves us in, to 64-bit Rust.
//!
//! On entry paging is off, `cs` is a flat 32-bit code segment and `ebx`
//! holds the guest-physical address of `hvm_start_info`. The code below
//! zeroes `.bss`, builds identity page tables for the low 4 GiB with 2 MiB
//! pages, loads its own GDT, enables PAE and long mode, turns paging on,
//! far-jumps into 64-bit code, sets up the stack and calls [`kmain`].

use core::arch::global_asm;
use core::fmt::Write as _;
use core::panic::PanicInfo;

use crate::console;

/// Bytes of boot stack: the measured peak is under 17 KiB (issue 14),
/// so this leaves more than three times that.
pub const STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4, 8, {phys32_entry}
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4
    .long 4, 11, {guest_os}
    .asciz "Xen"
    .asciz "Portcullis"
    .balign 4
    .long 4, 8, {xen_version}
    .asciz "Xen"
    .asciz "xen-3.0"
    .balign 4

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4 * 4096
boot_stack: .skip {stack_size}
boot_stack_top:

    .section .data.boot, "aw"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff      /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff      /* 0x10: flat data, accessed */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .text.pvh_start32, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi                /* keep the start info address */

    /* Zero .bss (page tables and stack included). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    /* PML4[0] -> PDPT; PDPT[0..4] -> four page directories. */
    mov $boot_pdpt + 0x3, %eax
    mov %eax, boot_pml4
    mov $boot_pd + 0x3, %eax
    mov $boot_pdpt, %edi
    mov $4, %ecx
.Lpdpt:
    mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    dec %ecx
    jnz .Lpdpt

    /* 2048 entries of 2 MiB: present, writable, large page. */
    mov $boot_pd, %edi
    mov $0x83, %eax
    xor %edx, %edx
    mov $2048, %ecx
.Lpd:
    mov %eax, (%edi)
    mov %edx, 4(%edi)
    add $0x200000, %eax
    adc $0, %edx
    add $8, %edi
    dec %ecx
    jnz .Lpd

    lgdt boot_gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax                /* PAE */
    mov %eax, %cr4
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx         /* EFER */
    rdmsr
    or $0x100, %eax               /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax          /* PG | PE */
    mov %eax, %cr0
    ljmp $0x08, $.Lstart64

    .code64
.Lstart64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov %esi, %edi                /* kmain(start_info_paddr) */
    call {kmain}
.Lhang:
    cli
    hlt
    jmp .Lhang
    "#,
    phys32_entry = const crate::abi::elfnote::PHYS32_ENTRY,
    guest_os = const crate::abi::elfnote::GUEST_OS,
    xen_version = const crate::abi::elfnote::XEN_VERSION,
    stack_size = const STACK_SIZE,
    kmain = sym kmain,
    options(att_syntax)
);

/// The heap: empty in the image; [`claim_heap`] hands it the RAM the
/// memory map leaves free (`crate::heap`).
#[global_allocator]
static ALLOCATOR: talc::TalcLock<spin::mutex::SpinMutex<()>, talc::source::Manual> =
    talc::TalcLock::new(talc::source::Manual);

extern "C" {
    /// First byte of the loaded image (link.ld).
    static __image_start: u8;
    /// One past the last byte of the loaded image, `.bss` included (link.ld).
    static __image_end: u8;
}

/// The guest-physical bytes the image occupies, `.bss` included.
pub(crate) fn image_span() -> crate::start_info::Span {
    let start = (&raw const __image_start) as u64;
    let end = (&raw const __image_end) as u64;
    crate::start_info::Span { start, end }
}

/// Gives the allocator `heap`. Called once, before anything allocates.
///
/// # Safety
/// `heap` must be RAM inside the identity-mapped low 4 GiB that nothing
/// else uses for the life of the program (`crate::heap::for_domain`
/// chooses such a run).
pub(crate) unsafe fn claim_heap(heap: crate::start_info::Span) -> bool {
    let Ok(len) = usize::try_from(heap.len()) else { return false };
    // SAFETY: the caller guarantees the range is mapped, unused RAM; it is
    // claimed once and belongs to the allocator from now on.
    unsafe { ALLOCATOR.lock().claim(heap.start as usize as *mut u8, len) }.is_some()
}

extern "Rust" {
    /// The guest's main function, defined by [`crate::entry!`].
    fn __portcullis_xen_main(boot: crate::Boot) -> u8;
}

/// Called by the assembly entry with the start info address in rdi.
extern "C" fn kmain(start_info: u64) -> ! {
    // First: an exception from here on is reported, not a silent triple fault.
    crate::trap::install();
    let boot = crate::Boot::init(start_info);
    // SAFETY: `entry!` defines this symbol with exactly this signature; a
    // guest without `entry!` fails to link rather than reaching here.
    let code = unsafe { __portcullis_xen_main(boot) };
    crate::shutdown(code)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut msg = heapless_line::Line::new();
    let _ = writeln!(msg, "panic: {info}");
    console::emergency_write(msg.as_str());
    crate::shutdown(crate::PANIC_EXIT_CODE)
}

/// A fixed buffer for the panic message, so a panic in the allocator does
/// not recurse.
mod heapless_line {
    pub struct Line {
        buf: [u8; 512],
        len: usize,
    }

    impl Line {
        pub const fn new() -> Self {
            Line { buf: [0; 512], len: 0 }
        }

        pub fn as_str(&self) -> &str {
            let bytes = self.buf.get(..self.len).unwrap_or_default();
            match core::str::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => core::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or_default())
                    .unwrap_or_default(),
            }
        }
    }

    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &b in s.as_bytes() {
                match self.buf.get_mut(self.len) {
                    Some(slot) => *slot = b,
                    None => return Err(core::fmt::Error),
                }
                self.len += 1;
            }
            Ok(())
        }
    }
}
