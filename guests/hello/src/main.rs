//! Boot-test guest for the Xen platform.
//!
//! Prints what it found (hypervisor, command line, heap), then the ready
//! line `hello: ready`, and powers off. The command line selects extra
//! checks: `panic` panics (the test expects a crash exit).
//!
//! On the host this is an empty program, so workspace builds and tests work.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]

#[cfg(target_os = "none")]
mod guest {
    extern crate alloc;

    use alloc::vec::Vec;

    use portcullis_platform::Platform;
    use portcullis_xen::entropy::HwEntropy;
    use portcullis_xen::{println, Boot, XenPlatform};

    portcullis_xen::entry!(main);

    fn main(boot: Boot) -> u8 {
        match &boot.xen {
            Some(x) => {
                println!("hello: xen {}.{} at cpuid {:#x}", x.version.0, x.version.1, x.base)
            }
            None => println!("hello: no xen"),
        }
        println!("hello: cmdline {:?}", boot.start_info.cmdline);
        println!("hello: heap {} bytes at {:#x}", boot.heap.len(), boot.heap.start);
        let squares: Vec<u64> = (1..=1000u64).map(|i| i * i).collect();
        println!("hello: heap ok, sum {}", squares.iter().sum::<u64>());
        let mut seed = [0u8; 32];
        match HwEntropy::new().fill(&mut seed) {
            Ok(()) => println!("hello: entropy ok"),
            Err(e) => println!("hello: entropy unavailable: {e}"),
        }
        if boot.xen.is_some() {
            match XenPlatform::new(&boot) {
                Ok(p) => println!(
                    "hello: domain {} {:?}, unix time {}",
                    p.domid().0,
                    p.name(),
                    p.now_unix()
                ),
                Err(e) => println!("hello: platform setup failed: {e}"),
            }
        }
        if boot.start_info.cmdline.split_whitespace().any(|w| w == "panic") {
            panic!("requested by the command line");
        }
        println!("hello: ready");
        0
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
