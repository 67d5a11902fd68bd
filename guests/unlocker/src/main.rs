//! unlocker guest: a PVH unikernel on Xen (`x86_64-unknown-none`), a Linux
//! process on the hosted platform; the application is `portcullis_apps::unlocker`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]

use portcullis_apps::unlocker::Outcome;

portcullis_guest::guest!("unlocker", |p| match portcullis_apps::unlocker::run(p) {
    Ok(Outcome::Unlocked) => 0,
    Ok(Outcome::GaveUp) => {
        portcullis_apps::say!(p, "unlocker: giving up");
        3
    }
    Err(e) => {
        portcullis_apps::say!(p, "unlocker: stopped: {e}");
        1
    }
});
