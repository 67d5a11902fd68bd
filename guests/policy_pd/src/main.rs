//! policy_pd guest: a PVH unikernel on Xen (`x86_64-unknown-none`), a Linux
//! process on the hosted platform. The application is
//! `portcullis_apps::policy_pd`; this file only picks the platform.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]

#[cfg(target_os = "none")]
mod guest {
    use portcullis_xen::{println, Boot, XenPlatform};

    portcullis_xen::entry!(main);

    fn main(boot: Boot) -> u8 {
        let mut p = match XenPlatform::new(&boot) {
            Ok(p) => p,
            Err(e) => {
                println!("policy_pd: cannot start: {e}");
                return 2;
            }
        };
        match portcullis_apps::policy_pd::run(&mut p) {
            Ok(0) => 0,
            Ok(failed) => {
                println!("policy_pd: {failed} selftest check(s) failed");
                4
            }
            Err(e) => {
                println!("policy_pd: stopped: {e}");
                1
            }
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    let mut p = portcullis_hosted::HostedPlatform::from_env().unwrap_or_else(|e| {
        eprintln!("policy_pd: cannot start: {e}");
        std::process::exit(2)
    });
    match portcullis_apps::policy_pd::run(&mut p) {
        Ok(0) => {}
        Ok(failed) => {
            println!("policy_pd: {failed} selftest check(s) failed");
            std::process::exit(4);
        }
        Err(e) => {
            eprintln!("policy_pd: stopped: {e}");
            std::process::exit(1);
        }
    }
}
