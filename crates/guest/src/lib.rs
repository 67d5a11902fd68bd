//! One `main` for a guest on both platforms, as MirageOS picks the unix or
//! xen target at build time: on `x86_64-unknown-none` the guest is a PVH
//! unikernel on `portcullis_xen`; elsewhere it is a Linux process on
//! `portcullis_hosted`. The application code is the same.
//!
//! ```ignore
//! portcullis_guest::guest!("cryptod", |p| match portcullis_apps::cryptod::run(p) {
//!     Ok(()) => 0,
//!     Err(e) => { portcullis_apps::say!(p, "cryptod: stopped: {e}"); 1 }
//! });
//! ```
//!
//! On Xen the body runs once dom0's `portcullis host` service has configured
//! the domain (`XenPlatform::wait_configured` in `portcullis-xen`):
//! a guest created with plain `xl create` before the service ran waits.
//!
//! The body gets `p: &mut impl Platform` and returns the exit code (0: clean
//! poweroff; on Xen anything else is a crash). After a non-zero code the
//! platform's last I/O failure, if any, is printed too
//! ([`report_last_io_error`]).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(not(target_os = "none"))]
pub use portcullis_hosted as hosted;
#[cfg(target_os = "none")]
pub use portcullis_xen as xen;

/// When a guest stops with an error: prints the platform's last I/O
/// failure, if it kept one (the vchan backend's store and event channel
/// errors name only a kind; this says which node and why).
pub fn report_last_io_error<P: portcullis_platform::Platform>(
    name: &str,
    p: &P,
    print: impl FnOnce(core::fmt::Arguments<'_>),
) {
    if let Some(detail) = p.last_io_error() {
        print(format_args!("{name}: last platform I/O failure: {detail}"));
    }
}

/// Defines the guest's entry point for the platform being built.
#[macro_export]
macro_rules! guest {
    ($name:literal, |$p:ident| $body:expr) => {
        #[cfg(target_os = "none")]
        mod __portcullis_guest {
            #[allow(unused_imports)]
            use super::*;

            $crate::xen::entry!(main);

            fn main(boot: $crate::xen::Boot) -> u8 {
                // The heap is what the domain's memory leaves (issue 14):
                // say how much, for sizing `memory =` in xen/*.cfg.
                let heap = &boot.heap;
                $crate::xen::println!(
                    "{}: heap {} KiB at {:#x}",
                    $name,
                    heap.len() / 1024,
                    heap.start
                );
                let mut platform = match $crate::xen::XenPlatform::new(&boot) {
                    Ok(p) => p,
                    Err(e) => {
                        $crate::xen::println!("{}: cannot start: {}", $name, e);
                        return 2;
                    }
                };
                // dom0's host service writes the items and names, then
                // `ready`: nothing is read before that.
                if let Err(e) = platform.wait_configured() {
                    $crate::xen::println!("{}: cannot start: {}", $name, e);
                    return 2;
                }
                let $p = &mut platform;
                let code: u8 = $body;
                if code != 0 {
                    $crate::report_last_io_error($name, &platform, |line| {
                        $crate::xen::println!("{}", line)
                    });
                }
                code
            }
        }

        #[cfg(not(target_os = "none"))]
        fn main() {
            let mut platform = match $crate::hosted::HostedPlatform::from_env() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{}: cannot start: {}", $name, e);
                    std::process::exit(2)
                }
            };
            let $p = &mut platform;
            let code: u8 = $body;
            if code != 0 {
                $crate::report_last_io_error($name, &platform, |line| println!("{}", line));
            }
            std::process::exit(i32::from(code))
        }
    };
}
