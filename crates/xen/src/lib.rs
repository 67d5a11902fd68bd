//! The Xen platform: Portcullis guests as PVH unikernels.
//!
//! A guest binary links this crate, names its main function with
//! [`entry!`], and is booted by Xen (`type = "pvh"`) or directly by QEMU
//! (`-kernel`). The crate provides the PVH entry and boot page tables, a
//! heap, hypercalls, the PV console, Xen's clocks, event channels, grant
//! tables, a xenstore client, and [`XenPlatform`], the implementation of
//! `portcullis_platform::Platform`.
//!
//! Without Xen (plain QEMU) the console is the 0xe9 debug port and
//! shutdown exits QEMU through `isa-debug-exit`; the Xen services report
//! that they are unavailable.
//!
//! Pure parts (message codecs, ring arithmetic, clock conversion, line
//! editing, health tests) build and are tested on the host; the boot code,
//! allocator and panic handler exist only for `target_os = "none"`.
#![no_std]
// The workspace denies `unsafe_code`; this crate is the platform layer that
// needs it (hypercalls, page tables, port I/O, shared rings), each block
// with a `// SAFETY:` comment (clippy::undocumented_unsafe_blocks).
#![allow(unsafe_code)]

#[cfg(test)]
extern crate std;

extern crate alloc;

pub mod abi;
#[cfg(target_arch = "x86_64")]
pub mod arch;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod boot;
#[cfg(target_arch = "x86_64")]
pub mod console;
pub mod dom0;
pub mod entropy;
#[cfg(target_arch = "x86_64")]
pub mod evtchn;
#[cfg(target_arch = "x86_64")]
pub mod grant;
pub mod heap;
#[cfg(target_arch = "x86_64")]
pub mod hypercall;
pub mod page;
#[cfg(target_arch = "x86_64")]
mod platform;
pub mod reclaim;
pub mod start_info;
pub mod time;
#[cfg(target_arch = "x86_64")]
mod trap;
#[cfg(target_arch = "x86_64")]
pub mod xen;
pub mod xenstore;

#[cfg(target_arch = "x86_64")]
pub use platform::{
    pending_reclaim_pages, with_store, PlatformSetupError, XenBackend, XenMem, XenPlatform,
    MAX_PAGES,
};

#[cfg(target_arch = "x86_64")]
pub use runtime::*;

#[cfg(target_arch = "x86_64")]
mod runtime {
    use portcullis_vchan::Port;

    use crate::console::{self, Console, RingConsole};
    use crate::hypercall::{self, ShutdownReason, XenCpuid};
    use crate::page::SharedPages;
    use crate::start_info::{Span, StartInfo};
    use crate::{abi, arch, heap, xen};

    /// Exit code of a panic (a crash on Xen; QEMU exits with `2 * code + 1`).
    pub const PANIC_EXIT_CODE: u8 = 3;

    /// What the boot code found, handed to the guest's main function.
    #[derive(Debug)]
    pub struct Boot {
        /// The loader's start info.
        pub start_info: StartInfo,
        /// Xen's CPUID information, if we run on Xen.
        pub xen: Option<XenCpuid>,
        /// The RAM the heap was given (`crate::heap`).
        pub heap: Span,
        /// Xen's system time at the first clock reading, in `init` (a
        /// few hundred instructions after the entry): where the guest's
        /// boot-to-ready report starts. 0 when the clock could not be read
        /// yet (seen under Xen in QEMU: the clock parameters of a new
        /// vCPU are not always filled in before it first blocks);
        /// `XenPlatform` then starts the report at the configuration.
        pub started_ns: u64,
    }

    impl Boot {
        /// Reads the start info, finds Xen, maps shared info, gives the
        /// heap the free RAM the memory map leaves, and sets up the
        /// console. Called once by the entry code, before anything
        /// allocates.
        ///
        ///
        /// Failures here are fatal: they are printed on the debug port and
        /// the domain crashes.
        pub fn init(start_info_paddr: u64) -> Boot {
            // SAFETY: called once from the entry code with the address the
            // loader passed in ebx, after the low 4 GiB were identity-mapped.
            let start_info = match unsafe { StartInfo::read(start_info_paddr) } {
                Ok(info) => info,
                Err(e) => fatal(format_args!("boot: {e}")),
            };
            let xen = hypercall::detect();
            if let Some(cpuid) = &xen {
                if let Err(e) = xen::init(cpuid, &start_info) {
                    fatal(format_args!("boot: {e}"));
                }
            }
            let started_ns = xen::system_time_ns().unwrap_or(0);
            let heap = match heap::for_domain(&start_info, image_span(), &shared_pages()) {
                Ok(heap) => heap,
                Err(e) => fatal(format_args!("boot: {e}")),
            };
            // SAFETY: `for_domain` chose RAM in the identity-mapped low
            // 4 GiB that neither the image, the loader's data and modules,
            // a reserved range nor a page Xen shares with us occupies.
            if !unsafe { claim_heap(heap) } {
                fatal(format_args!(
                    "boot: the allocator refused the heap {:#x}..{:#x}",
                    heap.start, heap.end
                ));
            }
            if xen.is_some() {
                if let Some(c) = ring_console() {
                    console::install(c);
                }
            }
            Boot { start_info, xen, heap, started_ns }
        }
    }

    #[cfg(target_os = "none")]
    use crate::boot::{claim_heap, image_span};

    /// Off the guest target there is no image and no heap to claim.
    #[cfg(not(target_os = "none"))]
    fn image_span() -> Span {
        Span::default()
    }

    #[cfg(not(target_os = "none"))]
    unsafe fn claim_heap(_: Span) -> bool {
        false
    }

    /// The pages Xen shares with us through HVM parameters (console and
    /// xenstore rings), which the heap must not cover; empty off Xen.
    fn shared_pages() -> [Span; 2] {
        let page = |param| {
            hypercall::hvm_get_param(param)
                .ok()
                .filter(|&pfn| pfn != 0)
                .and_then(|pfn| pfn.checked_mul(abi::PAGE_SIZE as u64))
                .map_or(Span::default(), |addr| Span::at(addr, abi::PAGE_SIZE as u64))
        };
        [page(abi::hvm::PARAM_CONSOLE_PFN), page(abi::hvm::PARAM_STORE_PFN)]
    }

    fn ring_console() -> Option<Console> {
        let pfn = hypercall::hvm_get_param(abi::hvm::PARAM_CONSOLE_PFN).ok().filter(|&p| p != 0)?;
        let port = hypercall::hvm_get_param(abi::hvm::PARAM_CONSOLE_EVTCHN).ok()?;
        let addr = usize::try_from(pfn.checked_mul(abi::PAGE_SIZE as u64)?).ok()?;
        if addr >= 1 << 32 {
            return None;
        }
        // SAFETY: Xen names this frame as our console ring page; it lies in
        // the identity-mapped low 4 GiB and is never given out as memory.
        let page = unsafe { SharedPages::new(addr, abi::PAGE_SIZE) };
        Some(Console::Ring(RingConsole::new(page, Port(port as u32))))
    }

    fn fatal(args: core::fmt::Arguments<'_>) -> ! {
        let mut w = console::Writer;
        let _ = core::fmt::Write::write_fmt(&mut w, args);
        console::write_str("\n");
        shutdown(PANIC_EXIT_CODE)
    }

    /// Ends the domain. Code 0 powers off; anything else is a crash. Off
    /// Xen, writes the code to QEMU's `isa-debug-exit` (port 0xf4), so QEMU
    /// exits with status `2 * code + 1`.
    pub fn shutdown(code: u8) -> ! {
        if hypercall::available() {
            let reason = if code == 0 { ShutdownReason::Poweroff } else { ShutdownReason::Crash };
            let _ = hypercall::sched_shutdown(reason);
        }
        // SAFETY: port 0xf4 is QEMU's isa-debug-exit when configured, and
        // unassigned otherwise; neither touches guest memory.
        unsafe { arch::outl(0xf4, u32::from(code)) };
        loop {
            arch::halt();
        }
    }
}

/// Names the guest's main function: `fn main(boot: Boot) -> u8`, whose
/// return value is the exit code passed to [`shutdown`].
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // The one exported symbol `_start` calls; allowed here so guest
        // crates need no exemption from the workspace's `unsafe_code` lint.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        extern "Rust" fn __portcullis_xen_main(boot: $crate::Boot) -> u8 {
            let main: fn($crate::Boot) -> u8 = $main;
            main(boot)
        }
    };
}
