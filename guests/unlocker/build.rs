//! Links the guest with portcullis-xen's linker script, as a fixed-address
//! (non-PIE) image, when building for the bare-metal target.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-Tportcullis-xen.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
