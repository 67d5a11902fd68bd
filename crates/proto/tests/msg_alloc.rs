//! Decoding allocates at most a small multiple of its input, whatever lengths
//! the input declares. A counting global allocator measures the bytes
//! requested while decoding (one test in this binary, so nothing else runs
//! concurrently on the counted thread).
// A counting `GlobalAlloc` cannot be written without `unsafe`; this test
// binary is the one exemption outside crates/xen and crates/hosted's `sys`.
#![allow(unsafe_code)]

mod msg_samples;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ciborium::Value;
use portcullis_proto::envelope::{Message, MsgType};
use portcullis_proto::msg::{AuditRecord, RevocationBody};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + new_size));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Total bytes requested from the allocator while running `f`.
fn allocated_by<T>(f: impl FnOnce() -> T) -> usize {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    let after = ALLOCATED.with(Cell::get);
    drop(out);
    after - before
}

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

/// Every byte of input may turn into at most this many bytes of allocation,
/// plus a fixed allowance. The worst case is a list of empty byte strings: one
/// input byte each, a 24-byte `Vec` header each.
const PER_INPUT_BYTE: usize = 32;
const FIXED: usize = 1024;

fn assert_bounded(what: &str, input: &[u8], allocated: usize) {
    assert!(
        allocated <= PER_INPUT_BYTE * input.len() + FIXED,
        "{what}: {allocated} bytes allocated for {} bytes of input",
        input.len()
    );
}

#[test]
fn decoding_allocates_in_proportion_to_the_input() {
    // Honest messages of every type.
    let mut worst = 0.0f64;
    for &kind in MsgType::ALL {
        for msg in msg_samples::samples(kind) {
            let bytes = msg.encode().unwrap();
            let n = allocated_by(|| Message::decode(&bytes).unwrap());
            assert_bounded(kind.as_str(), &bytes, n);
            worst = worst.max(n as f64 / bytes.len() as f64);
        }
    }
    println!("worst allocation per input byte over the samples: {worst:.2}");

    // Declared lengths of 2^60 for every container and string kind, at the top
    // level and in a field: refused with no allocation at all.
    for major in [2u8, 3, 4, 5] {
        let mut head = vec![(major << 5) | 27];
        head.extend_from_slice(&(1u64 << 60).to_be_bytes());
        let n = allocated_by(|| Message::decode(&head).unwrap_err());
        assert_eq!(n, 0, "major {major}");
        let n = allocated_by(|| AuditRecord::from_cbor(&head).unwrap_err());
        assert_eq!(n, 0, "major {major}");
    }

    // The cheapest items per allocated byte: a revocation list of minimal entries,
    // and an audit batch of empty records (refused, but after reading).
    let entry = Value::Map(vec![
        (Value::Text("cti".into()), Value::Bytes(vec![1])),
        (Value::Text("exp".into()), Value::Integer(0.into())),
    ]);
    let body = Value::Map(vec![
        (Value::Text("serial".into()), Value::Integer(1.into())),
        (Value::Text("issued_at".into()), Value::Integer(1.into())),
        (Value::Text("entries".into()), Value::Array(vec![entry; 1024])),
    ]);
    let bytes = to_bytes(&body);
    let n = allocated_by(|| RevocationBody::from_cbor(&bytes).unwrap());
    assert_bounded("1024 minimal revocation entries", &bytes, n);

    let msg = &msg_samples::samples(MsgType::AuditLog)[0];
    let good: Value = ciborium::de::from_reader(&msg.encode().unwrap()[..]).unwrap();
    let mut worst = 0.0f64;
    for count in [1024, 30_000] {
        let mut v = good.clone();
        let Value::Map(entries) = &mut v else { panic!() };
        let Value::Map(body) = &mut entries[2].1 else { panic!() };
        let (_, chain) = body.iter_mut().find(|(k, _)| k.as_text() == Some("records")).unwrap();
        *chain = Value::Array(vec![Value::Bytes(vec![]); count]);
        let bytes = to_bytes(&v);
        let n = allocated_by(|| Message::decode(&bytes).unwrap_err());
        assert_bounded("a long chain of empty byte strings", &bytes, n);
        worst = worst.max(n as f64 / bytes.len() as f64);
    }
    println!("worst allocation per input byte, hostile lists: {worst:.2}");
}
