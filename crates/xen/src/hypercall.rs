//! Finding Xen and calling it.
//!
//! Xen announces itself in the CPUID hypervisor leaves. Leaf `base + 2`
//! names an MSR; writing a page's guest-physical address to it makes Xen
//! fill that page with 32-byte hypercall stubs. A hypercall is a `call` to
//! `page + 32 * nr` with the arguments in rdi, rsi, rdx, r10, r8 and the
//! result in rax (negative errno on failure).

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi;
use crate::arch;

/// A Xen hypercall returned a negative errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenError(pub i64);

impl XenError {
    /// `ENOSYS`: no hypervisor (or the call does not exist).
    pub const NO_XEN: XenError = XenError(-38);
}

impl fmt::Display for XenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `Signed`: no `i64` formatting linked (image size, issue 14).
        let errno = portcullis_platform::Signed(self.0.wrapping_neg());
        write!(f, "hypercall failed with errno {errno}")
    }
}

impl core::error::Error for XenError {}

/// Result of a hypercall.
pub type XenResult<T> = Result<T, XenError>;

#[repr(C, align(4096))]
struct Page([u8; abi::PAGE_SIZE]);

/// The page Xen fills with hypercall stubs. It lives in `.bss`, which the
/// boot code maps read-write-execute.
static mut HYPERCALL_PAGE: Page = Page([0; abi::PAGE_SIZE]);

/// Address of the hypercall page once installed, 0 before.
static PAGE_ADDR: AtomicU64 = AtomicU64::new(0);

/// What CPUID says about the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenCpuid {
    /// The base leaf at which the Xen signature was found.
    pub base: u32,
    /// Major and minor version (leaf base+1).
    pub version: (u16, u16),
    /// The MSR that installs the hypercall page (leaf base+2, ebx).
    pub hypercall_msr: u32,
}

/// Looks for Xen's CPUID signature at 0x40000000, 0x40000100, ...
pub fn detect() -> Option<XenCpuid> {
    // Without the hypervisor bit (CPUID.1:ECX[31]) the leaves are not ours.
    if arch::cpuid(1)[2] & (1 << 31) == 0 {
        return None;
    }
    let mut base = abi::cpuid::BASE;
    while base <= abi::cpuid::LAST {
        let [max, b, c, d] = arch::cpuid(base);
        if [b, c, d] == abi::cpuid::SIGNATURE && max >= base + 2 {
            let version = arch::cpuid(base + 1)[0];
            let [pages, msr, _, _] = arch::cpuid(base + 2);
            if pages == 0 {
                return None;
            }
            return Some(XenCpuid {
                base,
                version: ((version >> 16) as u16, version as u16),
                hypercall_msr: msr,
            });
        }
        base += abi::cpuid::STEP;
    }
    None
}

/// Installs the hypercall page. Idempotent.
pub fn install(cpuid: &XenCpuid) {
    if PAGE_ADDR.load(Ordering::Acquire) != 0 {
        return;
    }
    let addr = (&raw const HYPERCALL_PAGE) as u64;
    // SAFETY: the MSR comes from Xen's own CPUID leaf; the value is the
    // guest-physical address (identity-mapped) of a page-aligned page that
    // nothing else uses. Xen writes the stubs into it before returning.
    unsafe { arch::wrmsr(cpuid.hypercall_msr, addr) };
    PAGE_ADDR.store(addr, Ordering::Release);
}

/// Whether the hypercall page is installed (we run on Xen).
pub fn available() -> bool {
    PAGE_ADDR.load(Ordering::Acquire) != 0
}

fn entry(nr: u32) -> XenResult<u64> {
    let page = PAGE_ADDR.load(Ordering::Acquire);
    if page == 0 || nr >= (abi::PAGE_SIZE / 32) as u32 {
        return Err(XenError::NO_XEN);
    }
    Ok(page + 32 * u64::from(nr))
}

fn result(ret: i64) -> XenResult<u64> {
    if ret < 0 {
        Err(XenError(ret))
    } else {
        Ok(ret as u64)
    }
}

/// Makes hypercall `nr` with up to five arguments.
///
/// # Safety
/// The arguments must be valid for the call: any guest address passed must
/// point to memory of the size and layout the call expects, live and not
/// otherwise borrowed for the duration of the call (Xen may read and write
/// it).
pub unsafe fn hypercall5(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> XenResult<u64> {
    let stub = entry(nr)?;
    let ret: i64;
    // SAFETY: `stub` is inside the page Xen filled; the stubs follow the
    // documented register ABI and return with `ret`. The argument registers
    // and rcx/r11 are declared clobbered; memory is not declared untouched,
    // since Xen reads and writes what the caller's pointers name.
    unsafe {
        asm!(
            "call {stub}",
            stub = in(reg) stub,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r11") _,
        )
    }
    result(ret)
}

/// Hypercall with no arguments. See [`hypercall5`] for the safety contract.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall0(nr: u32) -> XenResult<u64> {
    // SAFETY: forwarded contract; unused argument registers are zero.
    unsafe { hypercall5(nr, 0, 0, 0, 0, 0) }
}

/// Hypercall with one argument.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall1(nr: u32, a1: u64) -> XenResult<u64> {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, 0, 0, 0, 0) }
}

/// Hypercall with two arguments.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall2(nr: u32, a1: u64, a2: u64) -> XenResult<u64> {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// Hypercall with three arguments.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall3(nr: u32, a1: u64, a2: u64, a3: u64) -> XenResult<u64> {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}

/// Hypercall with four arguments.
///
/// # Safety
/// As for [`hypercall5`].
pub unsafe fn hypercall4(nr: u32, a1: u64, a2: u64, a3: u64, a4: u64) -> XenResult<u64> {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, a4, 0) }
}

/// A `#[repr(C)]` hypercall argument: the type says which hypercall and
/// which command it is for, so [`op`] can make the call safely.
///
/// # Safety
///
/// An implementor promises that:
/// - its layout is exactly the structure Xen's public headers define for
///   command `CMD` of hypercall `NR` (field order, sizes, padding, alignment;
///   `#[repr(C)]` and only fixed-size integer fields or references);
/// - every bit pattern Xen may write into it is a valid value of the type
///   (plain integers: it writes only output fields);
/// - any memory a field names is a reference borrowed for at least the
///   value's lifetime, of the size Xen reads or writes through it.
///
/// Then a call with `&mut value`, live and exclusive for the call, touches no
/// memory but the value and what its references name.
pub(crate) unsafe trait HypercallArg {
    /// The hypercall number (`__HYPERVISOR_*`).
    const NR: u32;
    /// The command, the first argument (`EVTCHNOP_*`, `SCHEDOP_*`, ...).
    const CMD: u64;
}

/// Makes the hypercall `T` is the argument of, `HYPERVISOR_xxx_op(cmd, &arg)`.
pub(crate) fn op<T: HypercallArg>(arg: &mut T) -> XenResult<u64> {
    // SAFETY: `T: HypercallArg` guarantees the layout Xen expects for
    // (`T::NR`, `T::CMD`) and that whatever Xen writes is a valid `T`; `arg`
    // is a live, exclusive borrow for the duration of the call.
    unsafe { hypercall2(T::NR, T::CMD, arg as *mut T as u64) }
}

/// `HVMOP_get_param` for this domain.
pub fn hvm_get_param(index: u32) -> XenResult<u64> {
    #[repr(C)]
    struct HvmParam {
        domid: u16,
        _pad: u16,
        index: u32,
        value: u64,
    }
    // SAFETY: `struct xen_hvm_param` (hvm/hvm_op.h): domid_t, 2 bytes of
    // padding, uint32_t index, uint64_t value (16 bytes); Xen writes `value`.
    unsafe impl HypercallArg for HvmParam {
        const NR: u32 = abi::hypercall::HVM_OP;
        const CMD: u64 = abi::hvm::GET_PARAM;
    }
    const _: () = assert!(core::mem::size_of::<HvmParam>() == 16);
    let mut p = HvmParam { domid: abi::DOMID_SELF, _pad: 0, index, value: 0 };
    op(&mut p)?;
    Ok(p.value)
}

/// Why the domain stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// Clean poweroff.
    Poweroff,
    /// Crash (the toolstack may keep the domain for inspection).
    Crash,
}

/// `SCHEDOP_shutdown`. Returns only if Xen refused.
pub fn sched_shutdown(reason: ShutdownReason) -> XenError {
    #[repr(C)]
    struct SchedShutdown {
        reason: u32,
    }
    // SAFETY: `struct sched_shutdown` (sched.h): one uint32_t, read only.
    unsafe impl HypercallArg for SchedShutdown {
        const NR: u32 = abi::hypercall::SCHED_OP;
        const CMD: u64 = abi::sched::SHUTDOWN;
    }
    const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);
    let mut s = SchedShutdown {
        reason: match reason {
            ShutdownReason::Poweroff => abi::sched::SHUTDOWN_POWEROFF,
            ShutdownReason::Crash => abi::sched::SHUTDOWN_CRASH,
        },
    };
    match op(&mut s) {
        Ok(_) => XenError(0),
        Err(e) => e,
    }
}

/// `SCHEDOP_yield`.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no pointer argument.
    let _ = unsafe { hypercall2(abi::hypercall::SCHED_OP, abi::sched::YIELD, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn the_errno_reads_as_the_negated_i64_did() {
        for raw in [-38, -1, 0, 5, i64::MIN, i64::MAX, i64::MIN + 1] {
            let want = format!("hypercall failed with errno {}", raw.wrapping_neg());
            assert_eq!(format!("{}", XenError(raw)), want, "{raw}");
        }
    }
}
