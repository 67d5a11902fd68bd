//! The few x86-64 instructions the platform needs, each behind a small
//! function with its own safety argument.

use core::arch::asm;

/// Writes one byte to an I/O port.
///
/// # Safety
/// The caller must know what the device at `port` does with the byte; on
/// the ports this crate uses (QEMU's debugcon 0xe9 and isa-debug-exit 0xf4,
/// Xen's 0xe9 log) writing has no effect on memory.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory; the caller vouches for the device.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches no memory; the caller vouches for the device.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Runs `cpuid` for `leaf` (subleaf 0); returns eax, ebx, ecx, edx.
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Writes a model-specific register.
///
/// # Safety
/// Writing an MSR changes processor or hypervisor state; the caller must
/// name an MSR that exists and a value whose effect it has accounted for.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR and value; `wrmsr` reads no
    // memory, but the hypervisor may write guest memory in response (the
    // hypercall page), so memory is not declared untouched.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `rdtsc` only reads the counter into eax:edx.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Stops the processor until the next interrupt (forever, with interrupts off).
pub fn halt() {
    // SAFETY: `hlt` has no memory effects; with interrupts disabled it
    // simply parks this vCPU.
    unsafe { asm!("cli; hlt", options(nomem, nostack)) }
}

/// Whether the CPU has RDRAND (CPUID.1:ECX bit 30).
pub fn has_rdrand() -> bool {
    cpuid(1)[2] & (1 << 30) != 0
}

/// Whether the CPU has RDSEED (CPUID.(7,0):EBX bit 18).
pub fn has_rdseed() -> bool {
    cpuid(0)[0] >= 7 && cpuid(7)[1] & (1 << 18) != 0
}

/// One RDSEED attempt: `None` if the instruction reported no data (CF=0).
/// The caller must have checked [`has_rdseed`].
pub fn rdseed() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: `rdseed` writes only the output register and the flags; the
    // caller checked CPUID, so the instruction exists.
    unsafe {
        asm!("rdseed {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    }
    (ok != 0).then_some(value)
}

/// One RDRAND attempt: `None` if the instruction reported no data (CF=0).
/// The caller must have checked [`has_rdrand`].
pub fn rdrand() -> Option<u64> {
    let value: u64;
    let ok: u8;
    // SAFETY: as for `rdseed`.
    unsafe {
        asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
    }
    (ok != 0).then_some(value)
}
