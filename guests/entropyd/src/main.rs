//! entropyd guest: a PVH unikernel on Xen (`x86_64-unknown-none`), a Linux
//! process on the hosted platform; the application is `portcullis_apps::entropyd`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]

portcullis_guest::guest!("entropyd", |p| match portcullis_apps::entropyd::run(p) {
    Ok(()) => 0,
    Err(e) => {
        portcullis_apps::say!(p, "entropyd: stopped: {e}");
        1
    }
});
