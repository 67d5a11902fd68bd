//! Puts the guest linker script where dependants' link steps find it:
//! a guest binary's own build script only has to add
//! `cargo:rustc-link-arg-bins=-Tportcullis-xen.ld` (and `--no-pie`).

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("link.ld", out.join("portcullis-xen.ld")).expect("copy link.ld");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rerun-if-changed=link.ld");
}
