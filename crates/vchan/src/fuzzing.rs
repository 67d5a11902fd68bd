//! The `vchan_ring` fuzz target's body (feature `std`), shared with the
//! test that replays its committed corpus and regressions
//! (`tests/fuzz_replay.rs`): a server and a client over one shared page,
//! driven by the input while the input also plays a hostile peer,
//! overwriting bytes of the page between operations. Nothing may panic, and
//! no transfer may exceed its request.

use std::vec;
use std::vec::Vec;

use core::sync::atomic::AtomicU32;

use crate::layout::{Dir, Placement, PAGE_SIZE};
use crate::ring::{Channel, RingBuf};
use crate::{AtomicMem, Geometry, SharedMem, VchanError};

const GEOMETRIES: [(u16, u16); 5] = [(10, 11), (11, 10), (12, 11), (11, 13), (12, 12)];

fn words(bytes: usize) -> Vec<AtomicU32> {
    (0..bytes / 4).map(|_| AtomicU32::new(0)).collect()
}

fn ring_buf<'a>(g: &Geometry, dir: Dir, mem: AtomicMem<'a>) -> RingBuf<AtomicMem<'a>> {
    match g.placement(dir) {
        Placement::InPage(off) => RingBuf::InPage(off),
        Placement::Granted { .. } => RingBuf::Pages(mem),
    }
}

fn checked(result: Result<usize, VchanError>, max: usize) {
    match result {
        Ok(n) => assert!(n <= max),
        Err(VchanError::BrokenPeer | VchanError::PeerClosed | VchanError::Closed) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Runs one input: its first byte picks a ring geometry, then each 3-byte
/// group is an operation (a read or write by either end, a readiness query,
/// or a hostile write into the shared page). Panics if a transfer exceeds
/// its request or an error other than the peer's fault occurs.
pub fn ring_ops(data: &[u8]) {
    let Some((&pick, mut ops)) = data.split_first() else {
        return;
    };
    let (left, right) = GEOMETRIES[usize::from(pick) % GEOMETRIES.len()];
    let Ok(g) = Geometry::from_orders(left, right) else {
        return;
    };
    let page_words = words(PAGE_SIZE);
    let left_words = words(g.ring_size(Dir::Left));
    let right_words = words(g.ring_size(Dir::Right));
    let page = AtomicMem::new(&page_words);
    let lm = AtomicMem::new(&left_words);
    let rm = AtomicMem::new(&right_words);
    let Ok(mut server) =
        Channel::server(page, g, ring_buf(&g, Dir::Left, lm), ring_buf(&g, Dir::Right, rm))
    else {
        return;
    };
    let Ok(cg) = Geometry::read(&page) else {
        return;
    };
    let Ok(mut client) =
        Channel::client(page, cg, ring_buf(&cg, Dir::Left, lm), ring_buf(&cg, Dir::Right, rm))
    else {
        return;
    };
    client.announce_client();

    let mut scratch = vec![0u8; 1 << 14];
    while let [code, a, b, rest @ ..] = ops {
        ops = rest;
        let n = usize::from(u16::from_le_bytes([*a, *b])) % scratch.len();
        match code % 8 {
            0 => checked(server.read(&mut scratch[..n]).map(|io| io.len), n),
            1 => checked(server.write(&scratch[..n]).map(|io| io.len), n),
            2 => checked(client.read(&mut scratch[..n]).map(|io| io.len), n),
            3 => checked(client.write(&scratch[..n]).map(|io| io.len), n),
            4 => checked(server.data_ready(), g.ring_size(Dir::Left)),
            5 => checked(client.buffer_space(), g.ring_size(Dir::Left)),
            // The hostile peer: a byte anywhere in the page ...
            6 => page.store_u8(n % PAGE_SIZE, *a ^ *b),
            // ... or a whole header field.
            _ => page.store_u32((n % 6) * 4, u32::from_le_bytes([*a, *b, *a, *code])),
        }
    }
}
