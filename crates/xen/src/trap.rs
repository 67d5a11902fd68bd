//! CPU exceptions: one report line, then a crash.
//!
//! Without an IDT any exception is a triple fault, which tells nothing
//! about where it happened (Xen's dump of a triple-faulted HVM vCPU shows
//! Xen's own registers). The entry code loads, before anything else, an
//! IDT whose 32 exception vectors (the NMI included) land in
//! `trap_report`: it writes `exception <vector> error <code> at rip
//! <rip> rsp <rsp> cr2 <cr2>` (hex) to the console (its ring once set up, else
//! port 0xe9), then crashes the domain as the triple fault did
//! (`crate::shutdown` with a non-zero code: `SCHEDOP_shutdown`, reason
//! crash, so xl's `on_crash` still applies). An exception inside the
//! handler goes straight to a triple fault.

#[cfg(target_os = "none")]
pub(crate) use guest::install;

/// The boot GDT's 64-bit code selector (boot.rs).
const CODE_SELECTOR: u64 = 0x08;

#[cfg_attr(not(target_os = "none"), allow(dead_code))]
/// A present 64-bit interrupt gate (type 0xe, DPL 0) to `handler`: its
/// low and high words.
const fn gate(handler: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (CODE_SELECTOR << 16)
        | (0x8e_u64 << 40)
        | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicBool, Ordering};

    use super::{gate, report_line};

    // 32 stubs: each pushes a zero error code where the CPU pushes none (all
    // but 8, 10-14, 17, 21, 29, 30), then its vector, and jumps to the common
    // part, which hands the frame (vector, error code, then the CPU's rip, cs,
    // rflags, rsp, ss) to `trap_report` on an aligned stack. The table of
    // their addresses follows.
    global_asm!(
        r#"
        .section .text.trap, "ax"
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        portcullis_trap_\n:
        .if (\n-8)*(\n-10)*(\n-11)*(\n-12)*(\n-13)*(\n-14)*(\n-17)*(\n-21)*(\n-29)*(\n-30)
        push $0
        .endif
        push $\n
        jmp portcullis_trap_common
        .endr
    portcullis_trap_common:
        mov %rsp, %rdi
        and $-16, %rsp
        call {report}
        ud2

        .section .rodata.trap, "a"
        .balign 8
        .globl portcullis_trap_table
    portcullis_trap_table:
        .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .quad portcullis_trap_\n
        .endr
        "#,
        report = sym trap_report,
        options(att_syntax)
    );

    extern "C" {
        /// The stubs' addresses, by vector (the assembly above).
        static portcullis_trap_table: [u64; 32];
    }

    /// The IDT: 32 interrupt gates of 16 bytes (two words each), filled by
    /// [`install`].
    static mut IDT: [u64; 64] = [0; 64];

    /// Set while a report is being written: a second exception then goes
    /// straight to a triple fault.
    static IN_TRAP: AtomicBool = AtomicBool::new(false);

    /// Loads the IDT. Called once, first thing, by the entry code (interrupts
    /// are off and stay off: only exceptions and the NMI arrive).
    pub(crate) fn install() {
        // SAFETY: the table is the assembly's, 32 addresses, read-only.
        let stubs = unsafe { portcullis_trap_table };
        let mut table = [0u64; 64];
        for (pair, &stub) in table.chunks_exact_mut(2).zip(stubs.iter()) {
            let (low, high) = gate(stub);
            pair.copy_from_slice(&[low, high]);
        }
        let idt = &raw mut IDT;
        // SAFETY: single-threaded, once, before any exception can use it.
        unsafe { idt.write(table) };
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let ptr = Pointer { limit: (32 * 16 - 1) as u16, base: idt as u64 };
        // SAFETY: `ptr` describes the static IDT just filled, whose gates point
        // at the stubs above in the boot GDT's code segment.
        unsafe {
            asm!("lidt ({0})", in(reg) &raw const ptr, options(att_syntax, readonly, nostack))
        };
    }

    /// The common handler: `frame` is vector, error code, rip, cs, rflags,
    /// rsp, ss.
    extern "C" fn trap_report(frame: *const [u64; 7]) -> ! {
        if IN_TRAP.swap(true, Ordering::AcqRel) {
            triple_fault();
        }
        // SAFETY: the stub built these seven words on the stack just below
        // where `frame` points.
        let [vector, error, rip, _cs, _rflags, rsp, _ss] = unsafe { frame.read() };
        let cr2: u64;
        // SAFETY: reading cr2 has no side effect.
        unsafe { asm!("mov %cr2, {0}", out(reg) cr2, options(att_syntax, nomem, nostack)) };
        let mut buf = [0u8; 128];
        let n = report_line([vector, error, rip, rsp, cr2], &mut buf);
        if let Ok(text) = core::str::from_utf8(buf.get(..n).unwrap_or_default()) {
            crate::console::emergency_write(text);
        }
        crate::shutdown(crate::PANIC_EXIT_CODE)
    }

    /// An empty IDT, then an exception: the CPU shuts down (a crash to Xen).
    fn triple_fault() -> ! {
        let empty = [0u8; 10];
        // SAFETY: loading a zero-limit IDT and trapping ends this vCPU; nothing
        // after it runs.
        unsafe {
            asm!("lidt ({0})", "ud2", in(reg) empty.as_ptr(), options(att_syntax, noreturn));
        }
    }
}

#[cfg_attr(not(target_os = "none"), allow(dead_code))]
/// Writes `exception V error E at rip R rsp S cr2 C` (each in hex) and a
/// newline into `out`, without `core::fmt` (a few hundred bytes less in
/// every image); returns its length.
fn report_line(values: [u64; 5], out: &mut [u8; 128]) -> usize {
    const LABELS: [&[u8]; 5] = [b"exception ", b" error ", b" at rip ", b" rsp ", b" cr2 "];
    let mut n = 0;
    let mut put = |b: u8| {
        if let Some(slot) = out.get_mut(n) {
            *slot = b;
            n += 1;
        }
    };
    for (label, value) in LABELS.iter().zip(values) {
        label.iter().for_each(|&b| put(b));
        put(b'0');
        put(b'x');
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            put(b"0123456789abcdef"[((value >> (4 * i)) & 0xf) as usize]);
        }
    }
    put(b'\n');
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_report_line_is_hex() {
        let mut buf = [0u8; 128];
        let n = super::report_line([2, 0, 0x1603a8, 0x15aaf8, u64::MAX], &mut buf);
        assert_eq!(
            core::str::from_utf8(&buf[..n]).unwrap(),
            "exception 0x2 error 0x0 at rip 0x1603a8 rsp 0x15aaf8 cr2 0xffffffffffffffff\n"
        );
    }

    #[test]
    fn a_gate_splits_the_address() {
        let (low, high) = super::gate(0x1234_5678_9abc_def0);
        assert_eq!(low & 0xffff, 0xdef0);
        assert_eq!((low >> 16) & 0xffff, 0x08);
        assert_eq!((low >> 40) & 0xff, 0x8e);
        assert_eq!(low >> 48, 0x9abc);
        assert_eq!(high, 0x1234_5678);
    }
}
