//! A hostile peer scribbling on the shared page between operations: no
//! panic, only the documented errors, and no access outside the header and
//! the rings.

use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::AtomicU32;

use portcullis_vchan::layout::{self, Dir, Placement};
use portcullis_vchan::ring::{Channel, RingBuf};
use portcullis_vchan::{AtomicMem, Geometry, SharedMem, VchanError};
use proptest::prelude::*;

/// Shared memory that records any access outside the allowed ranges.
struct Tracked<'a> {
    mem: AtomicMem<'a>,
    allowed: Vec<Range<usize>>,
    armed: Cell<bool>,
    violation: Cell<Option<(usize, usize)>>,
}

impl<'a> Tracked<'a> {
    fn new(mem: AtomicMem<'a>, allowed: Vec<Range<usize>>) -> Self {
        Tracked { mem, allowed, armed: Cell::new(false), violation: Cell::new(None) }
    }

    fn touch(&self, off: usize, len: usize) {
        if !self.armed.get() {
            return;
        }
        let ok = self.allowed.iter().any(|r| r.start <= off && off + len <= r.end);
        if !ok {
            self.violation.set(Some((off, len)));
        }
    }
}

impl SharedMem for Tracked<'_> {
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn load_u8(&self, off: usize) -> u8 {
        self.touch(off, 1);
        self.mem.load_u8(off)
    }
    fn store_u8(&self, off: usize, value: u8) {
        self.touch(off, 1);
        self.mem.store_u8(off, value)
    }
    fn load_u16(&self, off: usize) -> u16 {
        self.touch(off, 2);
        self.mem.load_u16(off)
    }
    fn store_u16(&self, off: usize, value: u16) {
        self.touch(off, 2);
        self.mem.store_u16(off, value)
    }
    fn load_u32(&self, off: usize) -> u32 {
        self.touch(off, 4);
        self.mem.load_u32(off)
    }
    fn store_u32(&self, off: usize, value: u32) {
        self.touch(off, 4);
        self.mem.store_u32(off, value)
    }
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        self.touch(off, 1);
        self.mem.fetch_or_u8(off, bits)
    }
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        self.touch(off, 1);
        self.mem.fetch_and_u8(off, bits)
    }
    fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        self.touch(off, dst.len());
        self.mem.read_bytes(off, dst)
    }
    fn write_bytes(&self, off: usize, src: &[u8]) {
        self.touch(off, src.len());
        self.mem.write_bytes(off, src)
    }
}

fn words(bytes: usize) -> Vec<AtomicU32> {
    (0..bytes / 4).map(|_| AtomicU32::new(0)).collect()
}

#[derive(Clone, Debug)]
enum Op {
    ServerRead(usize),
    ServerWrite(usize),
    ClientRead(usize),
    ClientWrite(usize),
    ServerSpace,
    ClientReady,
    /// The hostile peer writes a byte anywhere in the control page.
    Poke(usize, u8),
    /// The hostile peer writes an index, order or live/notify field.
    PokeField(usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..5000).prop_map(Op::ServerRead),
        (0usize..5000).prop_map(Op::ServerWrite),
        (0usize..5000).prop_map(Op::ClientRead),
        (0usize..5000).prop_map(Op::ClientWrite),
        Just(Op::ServerSpace),
        Just(Op::ClientReady),
        ((0usize..4096), any::<u8>()).prop_map(|(o, v)| Op::Poke(o, v)),
        ((0usize..6), any::<u32>()).prop_map(|(f, v)| Op::PokeField(f, v)),
    ]
}

fn ring_range(g: &Geometry, dir: Dir) -> Option<Range<usize>> {
    match g.placement(dir) {
        Placement::InPage(off) => Some(off..off + g.ring_size(dir)),
        Placement::Granted { .. } => None,
    }
}

fn ring_buf<'m>(g: &Geometry, dir: Dir, mem: &'m dyn SharedMem) -> RingBuf<&'m dyn SharedMem> {
    match g.placement(dir) {
        Placement::InPage(off) => RingBuf::InPage(off),
        Placement::Granted { .. } => RingBuf::Pages(mem),
    }
}

fn check(result: Result<usize, VchanError>, max: usize) -> Result<(), TestCaseError> {
    match result {
        Ok(n) => prop_assert!(n <= max),
        Err(VchanError::BrokenPeer | VchanError::PeerClosed | VchanError::Closed) => {}
        Err(e) => prop_assert!(false, "unexpected error {e:?}"),
    }
    Ok(())
}

fn run(left: u16, right: u16, ops: &[Op]) -> Result<(), TestCaseError> {
    let g = Geometry::from_orders(left, right).unwrap();
    let page_words = words(layout::PAGE_SIZE);
    let left_words = words(g.ring_size(Dir::Left));
    let right_words = words(g.ring_size(Dir::Right));
    let raw = AtomicMem::new(&page_words);
    let mut allowed = vec![Range { start: 0, end: layout::GRANTS + 4 * g.grant_count() }];
    allowed.extend(ring_range(&g, Dir::Left));
    allowed.extend(ring_range(&g, Dir::Right));
    let page = Tracked::new(raw, allowed);
    let left_mem = Tracked::new(
        AtomicMem::new(&left_words),
        vec![Range { start: 0, end: g.ring_size(Dir::Left) }],
    );
    let right_mem = Tracked::new(
        AtomicMem::new(&right_words),
        vec![Range { start: 0, end: g.ring_size(Dir::Right) }],
    );
    let buf = |dir, mem| ring_buf(&g, dir, mem);
    let page_ref: &dyn SharedMem = &page;
    let mut server =
        Channel::server(page_ref, g, buf(Dir::Left, &left_mem), buf(Dir::Right, &right_mem))
            .unwrap();
    let client_g = Geometry::read(&page_ref).unwrap();
    let mut client =
        Channel::client(page_ref, client_g, buf(Dir::Left, &left_mem), buf(Dir::Right, &right_mem))
            .unwrap();
    client.announce_client();
    for t in [&page, &left_mem, &right_mem] {
        t.armed.set(true);
    }

    let mut scratch = vec![0u8; 5000];
    for op in ops {
        match *op {
            Op::ServerRead(n) => check(server.read(&mut scratch[..n]).map(|io| io.len), n)?,
            Op::ServerWrite(n) => check(server.write(&scratch[..n]).map(|io| io.len), n)?,
            Op::ClientRead(n) => check(client.read(&mut scratch[..n]).map(|io| io.len), n)?,
            Op::ClientWrite(n) => check(client.write(&scratch[..n]).map(|io| io.len), n)?,
            Op::ServerSpace => check(server.buffer_space(), g.ring_size(Dir::Right))?,
            Op::ClientReady => check(client.data_ready(), g.ring_size(Dir::Right))?,
            Op::Poke(off, v) => raw.store_u8(off, v),
            Op::PokeField(f, v) => {
                let off = [0, 4, 8, 12, 16, 20][f];
                raw.store_u32(off, v);
            }
        }
        for t in [&page, &left_mem, &right_mem] {
            prop_assert_eq!(t.violation.get(), None);
        }
        // Once broken, an endpoint stays closed.
        for c in [&server, &client] {
            if c.is_closed() {
                prop_assert!(!c.is_open());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn hostile_page_in_page_rings(ops in prop::collection::vec(op(), 1..60)) {
        run(10, 11, &ops)?;
        run(11, 10, &ops)?;
    }

    #[test]
    fn hostile_page_granted_rings(ops in prop::collection::vec(op(), 1..60)) {
        run(12, 11, &ops)?;
        run(13, 12, &ops)?;
    }
}
