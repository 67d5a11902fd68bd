//! Drives a vchan server and client over one shared page while the input
//! also plays a hostile peer, overwriting bytes of the page between
//! operations. Nothing may panic, and no transfer may exceed its request.
//! The body is `portcullis_vchan::fuzzing::ring_ops`, which the test suite
//! also runs over this target's corpus and regressions.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_vchan::fuzzing::ring_ops(data));
