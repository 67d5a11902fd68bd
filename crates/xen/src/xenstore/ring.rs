//! The two byte rings of `struct xenstore_domain_interface` (requests out,
//! responses in) over any [`SharedMem`], so the index arithmetic is tested
//! on the host. Indexes are free-running `u32`s; a producer more than one
//! ring ahead of its consumer is corruption and refused, never trusted.

use core::sync::atomic::{fence, Ordering};

use portcullis_vchan::SharedMem;

use super::wire::XsError;
use crate::abi::xenstore as ring;

/// Bytes between `cons` and `prod`, if that is a possible fill level.
fn used(prod: u32, cons: u32) -> Result<u32, XsError> {
    let used = prod.wrapping_sub(cons);
    if used <= ring::RING_SIZE {
        Ok(used)
    } else {
        Err(XsError::Protocol)
    }
}

/// Copies as much of `bytes` as fits into the request ring and publishes
/// it; returns how many bytes were written (0: the ring is full).
pub fn write_requests<M: SharedMem>(page: &M, bytes: &[u8]) -> Result<usize, XsError> {
    let cons = page.load_u32(ring::REQ_CONS);
    let prod = page.load_u32(ring::REQ_PROD);
    let free = (ring::RING_SIZE - used(prod, cons)?) as usize;
    let n = free.min(bytes.len());
    for (i, &b) in bytes.iter().take(n).enumerate() {
        let idx = prod.wrapping_add(i as u32) % ring::RING_SIZE;
        page.store_u8(ring::REQ + idx as usize, b);
    }
    // The daemon must see the bytes before the new producer index.
    fence(Ordering::Release);
    page.store_u32(ring::REQ_PROD, prod.wrapping_add(n as u32));
    Ok(n)
}

/// Copies up to `buf.len()` bytes out of the response ring and frees
/// their space; returns how many were read (0: nothing there).
pub fn read_responses<M: SharedMem>(page: &M, buf: &mut [u8]) -> Result<usize, XsError> {
    let cons = page.load_u32(ring::RSP_CONS);
    let prod = page.load_u32(ring::RSP_PROD);
    let n = (used(prod, cons)? as usize).min(buf.len());
    if n == 0 {
        return Ok(0);
    }
    // Read the bytes only after seeing the producer index that covers them.
    fence(Ordering::Acquire);
    for (i, slot) in buf.iter_mut().take(n).enumerate() {
        let idx = cons.wrapping_add(i as u32) % ring::RING_SIZE;
        *slot = page.load_u8(ring::RSP + idx as usize);
    }
    // Finish reading before handing the space back.
    fence(Ordering::Release);
    page.store_u32(ring::RSP_CONS, cons.wrapping_add(n as u32));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;
    use portcullis_vchan::AtomicMem;
    use std::vec::Vec;

    fn page() -> Vec<AtomicU32> {
        (0..1024).map(|_| AtomicU32::new(0)).collect()
    }

    #[test]
    fn requests_wrap_and_stop_when_full() {
        let words = page();
        let p = AtomicMem::new(&words);
        // Start near the u32 wrap and near the end of the ring.
        p.store_u32(ring::REQ_CONS, u32::MAX - 10);
        p.store_u32(ring::REQ_PROD, u32::MAX - 10);
        let data: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        assert_eq!(write_requests(&p, &data).unwrap(), ring::RING_SIZE as usize);
        assert_eq!(write_requests(&p, &data).unwrap(), 0);
        let start = (u32::MAX - 10) % ring::RING_SIZE;
        for i in 0..ring::RING_SIZE {
            let idx = start.wrapping_add(i) % ring::RING_SIZE;
            assert_eq!(p.load_u8(ring::REQ + idx as usize), i as u8);
        }
        // The daemon consumes 100: exactly 100 more fit.
        p.store_u32(ring::REQ_CONS, (u32::MAX - 10).wrapping_add(100));
        assert_eq!(write_requests(&p, &data).unwrap(), 100);
    }

    #[test]
    fn responses_are_read_in_order_and_freed() {
        let words = page();
        let p = AtomicMem::new(&words);
        p.store_u32(ring::RSP_CONS, 1022);
        p.store_u8(ring::RSP + 1022, b'a');
        p.store_u8(ring::RSP + 1023, b'b');
        p.store_u8(ring::RSP, b'c');
        p.store_u32(ring::RSP_PROD, 1025);
        let mut buf = [0u8; 2];
        assert_eq!(read_responses(&p, &mut buf).unwrap(), 2);
        assert_eq!(&buf, b"ab");
        assert_eq!(read_responses(&p, &mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'c');
        assert_eq!(p.load_u32(ring::RSP_CONS), 1025);
        assert_eq!(read_responses(&p, &mut buf).unwrap(), 0);
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let words = page();
        let p = AtomicMem::new(&words);
        p.store_u32(ring::RSP_PROD, ring::RING_SIZE + 1);
        assert_eq!(read_responses(&p, &mut [0u8; 8]), Err(XsError::Protocol));
        p.store_u32(ring::REQ_CONS, 5);
        assert_eq!(write_requests(&p, b"x"), Err(XsError::Protocol));
        assert_eq!(p.load_u32(ring::REQ_PROD), 0);
    }
}
