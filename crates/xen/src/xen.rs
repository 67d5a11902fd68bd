//! The per-domain Xen state set up at boot: the hypercall page, the
//! shared-info page, the free guest-physical window, and the clocks built
//! on them.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use spin::mutex::SpinMutex;

use crate::abi::{self, shared_info as shi, vcpu_time as vt};
use crate::arch;
use crate::hypercall::{self, XenCpuid, XenError, XenResult};
use crate::page::{FrameWindow, SharedPages};
use crate::start_info::StartInfo;
use crate::time::{read_consistent, TimeInfo, WallClock};

static SHARED_INFO: AtomicUsize = AtomicUsize::new(0);
static WINDOW: SpinMutex<Option<FrameWindow>> = SpinMutex::new(None);

/// Why Xen setup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// The memory map left no free window for foreign mappings.
    NoFreeWindow,
    /// Mapping the shared-info page failed.
    SharedInfo(XenError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::NoFreeWindow => f.write_str("no free guest-physical window"),
            SetupError::SharedInfo(e) => write!(f, "mapping shared_info: {e}"),
        }
    }
}

impl core::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            SetupError::SharedInfo(e) => Some(e),
            _ => None,
        }
    }
}

/// Installs the hypercall page, reserves the free window and maps the
/// shared-info page into it.
pub fn init(cpuid: &XenCpuid, info: &StartInfo) -> Result<(), SetupError> {
    hypercall::install(cpuid);
    let first = info.free_window().ok_or(SetupError::NoFreeWindow)?;
    let mut window = FrameWindow::new(first);
    let pfn = window.alloc(1).ok_or(SetupError::NoFreeWindow)?;
    add_to_physmap(abi::memory::MAPSPACE_SHARED_INFO, 0, pfn).map_err(SetupError::SharedInfo)?;
    *WINDOW.lock() = Some(window);
    SHARED_INFO.store((pfn as usize) << abi::PAGE_SHIFT, Ordering::Release);
    Ok(())
}

/// `XENMEM_add_to_physmap` for this domain: puts frame `idx` of `space` at `gpfn`.
pub fn add_to_physmap(space: u32, idx: u64, gpfn: u64) -> XenResult<()> {
    #[repr(C)]
    struct AddToPhysmap {
        domid: u16,
        size: u16,
        space: u32,
        idx: u64,
        gpfn: u64,
    }
    // SAFETY: `struct xen_add_to_physmap` (memory.h): domid_t, uint16_t
    // size, unsigned int space, xen_ulong_t idx, xen_pfn_t gpfn (24 bytes,
    // natural alignment); Xen only reads it.
    unsafe impl hypercall::HypercallArg for AddToPhysmap {
        const NR: u32 = abi::hypercall::MEMORY_OP;
        const CMD: u64 = abi::memory::ADD_TO_PHYSMAP;
    }
    const _: () = assert!(core::mem::size_of::<AddToPhysmap>() == 24);
    let mut a = AddToPhysmap { domid: abi::DOMID_SELF, size: 0, space, idx, gpfn };
    hypercall::op(&mut a).map(|_| ())
}

/// Allocates `n` contiguous frames of the free window.
pub fn alloc_frames(n: u64) -> Option<u64> {
    WINDOW.lock().as_mut()?.alloc(n)
}

/// Returns frames to the free window.
pub fn free_frames(pfn: u64, n: u64) {
    if let Some(w) = WINDOW.lock().as_mut() {
        w.free(pfn, n);
    }
}

/// The shared-info page, once mapped.
pub fn shared_info() -> Option<SharedPages> {
    let addr = SHARED_INFO.load(Ordering::Acquire);
    // SAFETY: `init` mapped the page at `addr` (inside the identity-mapped
    // low 4 GiB) and it stays mapped for the life of the domain; it is only
    // accessed through `SharedPages`' volatile and atomic operations.
    (addr != 0).then(|| unsafe { SharedPages::new(addr, abi::PAGE_SIZE) })
}

/// vCPU 0's time parameters, read consistently.
pub fn time_info() -> Option<TimeInfo> {
    let si = shared_info()?;
    let t = shi::VCPU_TIME;
    read_consistent(
        || (si.load_u64(t + vt::VERSION) & 0xffff_ffff) as u32,
        || {
            let mul_shift = si.load_u64(t + vt::TSC_TO_SYSTEM_MUL);
            TimeInfo {
                tsc_timestamp: si.load_u64(t + vt::TSC_TIMESTAMP),
                system_time: si.load_u64(t + vt::SYSTEM_TIME),
                tsc_to_system_mul: mul_shift as u32,
                tsc_shift: ((mul_shift >> 32) & 0xff) as u8 as i8,
            }
        },
        1000,
    )
}

/// The latest system time [`system_time_ns`] returned.
static LAST_SYSTEM_NS: AtomicU64 = AtomicU64::new(0);

/// Xen system time (ns since the hypervisor booted), or `None` off Xen.
///
/// Never earlier than a value it returned before: the guests run with
/// the native TSC (`tsc_mode = "native"` in xen/*.cfg, no VM exit per
/// read), and a vCPU moved to a physical CPU whose TSC lags can read a
/// time a little behind the last one until Xen refreshes the parameters.
pub fn system_time_ns() -> Option<u64> {
    // Read the TSC after the snapshot so the delta is never negative.
    let now = time_info().map(|t| t.system_time_at(arch::rdtsc()))?;
    Some(crate::time::not_before(&LAST_SYSTEM_NS, now))
}

/// The wall clock at system time zero.
pub fn wall_clock() -> Option<WallClock> {
    let si = shared_info()?;
    // wc_version and wc_sec share one aligned u64, wc_nsec and wc_sec_hi the next.
    read_consistent(
        || (si.load_u64(shi::WC_VERSION) & 0xffff_ffff) as u32,
        || {
            let a = si.load_u64(shi::WC_VERSION);
            let b = si.load_u64(shi::WC_NSEC);
            debug_assert_eq!(shi::WC_SEC, shi::WC_VERSION + 4);
            debug_assert_eq!(shi::WC_SEC_HI, shi::WC_NSEC + 4);
            WallClock { sec: (a >> 32) | ((b >> 32) << 32), nsec: b as u32 }
        },
        1000,
    )
}

/// Unix time in seconds from Xen's wall clock, or `None` off Xen.
pub fn unix_seconds() -> Option<u64> {
    let wc = wall_clock()?;
    Some(wc.unix_seconds_at(system_time_ns()?))
}
