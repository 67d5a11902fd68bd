//! policy_pd guest: a PVH unikernel on Xen (`x86_64-unknown-none`), a Linux
//! process on the hosted platform; the application is `portcullis_apps::policy_pd`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]

portcullis_guest::guest!("policy_pd", |p| match portcullis_apps::policy_pd::run(p) {
    Ok(0) => 0,
    Ok(failed) => {
        portcullis_apps::say!(p, "policy_pd: {failed} selftest check(s) failed");
        4
    }
    Err(e) => {
        portcullis_apps::say!(p, "policy_pd: stopped: {e}");
        1
    }
});
