//! Ed25519 sign (`portcullis_proto::ed25519::sign`, as every signed object
//! is signed) and `verify_strict` of a 200-byte message, timed, for the
//! build it is compiled as. `cargo xtask bench` compiles it as the hosted
//! programs compile their Ed25519 (release, `fast` tables, the default
//! backend) and as the guests compile theirs (the `x86_64-unknown-none`
//! configuration of `.cargo/config.toml`: the serial curve backend, the
//! compact soft SHA-2, opt-level "z", fat LTO) with cryptod's run-time
//! table, with `fast` and with neither, and prints the figures side by side.
//!
//! ```text
//! cargo run --release -p portcullis-proto --features fast --example ed25519_speed -- LABEL [N]
//! ```
//!
//! Each signature is checked against ed25519-dalek's own before timing.
//!
//! Prints `figure: ed25519 build=LABEL sign_us=… verify_us=…`: the medians
//! of N (default 2000) signatures and verifications, after 50 unmeasured.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey};
use portcullis_proto::ed25519;

fn median(v: &mut [Duration]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let label = args.next().unwrap_or_else(|| "this-build".into());
    let n = match args.next().map(|a| a.parse::<usize>()) {
        None => 2000,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: ed25519_speed LABEL [N>0]");
            return ExitCode::from(2);
        }
    };
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key();
    let msg = [0x5au8; 200];
    if ed25519::sign(&key, &msg) != key.sign(&msg).to_bytes() {
        eprintln!("ed25519_speed: this build's signature is not ed25519-dalek's");
        return ExitCode::FAILURE;
    }
    let (mut sign, mut verify) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 50 {
        let t = Instant::now();
        let sig = Signature::from_bytes(&ed25519::sign(&key, black_box(&msg)));
        let signed = t.elapsed();
        let t = Instant::now();
        let ok = public.verify_strict(black_box(&msg), &sig).is_ok();
        let verified = t.elapsed();
        if !ok {
            eprintln!("ed25519_speed: a signature did not verify");
            return ExitCode::FAILURE;
        }
        if i >= 50 {
            sign.push(signed);
            verify.push(verified);
        }
    }
    println!(
        "figure: ed25519 build={label} sign_us={:.1} verify_us={:.1}",
        median(&mut sign),
        median(&mut verify)
    );
    ExitCode::SUCCESS
}
