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
//! The body gets `p: &mut impl Platform` and returns the exit code (0: clean
//! poweroff; on Xen anything else is a crash).
#![no_std]
#![forbid(unsafe_code)]

#[cfg(not(target_os = "none"))]
pub use portcullis_hosted as hosted;
#[cfg(target_os = "none")]
pub use portcullis_xen as xen;

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
                let mut platform = match $crate::xen::XenPlatform::new(&boot) {
                    Ok(p) => p,
                    Err(e) => {
                        $crate::xen::println!("{}: cannot start: {}", $name, e);
                        return 2;
                    }
                };
                let $p = &mut platform;
                $body
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
            std::process::exit(i32::from(code))
        }
    };
}
