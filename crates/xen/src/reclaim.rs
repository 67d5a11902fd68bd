//! Pages we granted to a peer that could not be revoked yet.
//!
//! Ending foreign access fails while the peer still has a page mapped
//! (`GTF_reading`/`GTF_writing` set): a client that is closing unmaps a
//! moment after it clears its live byte, and a destroyed peer's mappings
//! go only when Xen finishes tearing the domain down. Such pages must not
//! go back to the allocator while mapped, but dropping them for good
//! leaked every vchan's pages (and grant entries) each time a peer was
//! recreated. Instead they wait here: every later share, unshare and wait
//! tries to end their grants again, and an allocation is freed once all
//! its grants have ended. The wait is bounded: past
//! [`MAX_PENDING_PAGES`], new shares are refused until pages come back.
//!
//! Pure bookkeeping over an "end this grant" function, tested on the host.

use alloc::alloc::Layout;
use alloc::vec::Vec;

use portcullis_vchan::GrantRef;

use crate::abi::PAGE_SIZE;

/// Most pages kept waiting for their grants to end (2 MiB; the heap is
/// sized from the domain's memory, see `crate::heap`, and a small domain
/// runs out of heap before this); while more are waiting,
/// [`Reclaimer::admits`] refuses new shares.
pub const MAX_PENDING_PAGES: usize = 512;

/// One heap allocation granted page by page to a peer.
#[derive(Debug, PartialEq, Eq)]
pub struct Granted {
    /// Start address.
    pub base: usize,
    /// The allocation's layout (size a multiple of the page size).
    pub layout: Layout,
    /// Grants not yet ended.
    pub refs: Vec<GrantRef>,
}

impl Granted {
    fn pages(&self) -> usize {
        self.layout.size() / PAGE_SIZE
    }
}

/// Allocations whose grants could not all be ended yet.
#[derive(Debug, Default)]
pub struct Reclaimer {
    /// Oldest first; a `Vec`, not a `VecDeque` (image size, issue 14).
    pending: Vec<Granted>,
    pages: usize,
    freed_late: u64,
}

impl Reclaimer {
    /// Nothing pending.
    pub const fn new() -> Self {
        Reclaimer { pending: Vec::new(), pages: 0, freed_late: 0 }
    }

    /// Ends every grant of `g` that `end` can end (`end` returns whether
    /// it did). Returns `g` when all are ended, for the caller to free;
    /// otherwise keeps it pending and returns `None`.
    pub fn release(
        &mut self,
        mut g: Granted,
        end: &mut impl FnMut(GrantRef) -> bool,
    ) -> Option<Granted> {
        g.refs.retain(|&r| !end(r));
        if g.refs.is_empty() {
            return Some(g);
        }
        self.pages = self.pages.saturating_add(g.pages());
        self.pending.push(g);
        None
    }

    /// Tries again to end the pending grants; hands every allocation whose
    /// grants have all ended to `free`. Returns how many pages were freed.
    pub fn retry(
        &mut self,
        end: &mut impl FnMut(GrantRef) -> bool,
        free: &mut impl FnMut(Granted),
    ) -> usize {
        let mut freed = 0;
        let mut i = 0;
        while let Some(g) = self.pending.get_mut(i) {
            g.refs.retain(|&r| !end(r));
            if g.refs.is_empty() {
                let g = self.pending.remove(i);
                let n = g.pages();
                self.pages = self.pages.saturating_sub(n);
                freed += n;
                self.freed_late = self.freed_late.saturating_add(1);
                free(g);
            } else {
                i += 1;
            }
        }
        freed
    }

    /// Pages waiting for their grants to end.
    pub fn pending_pages(&self) -> usize {
        self.pages
    }

    /// Allocations freed after having waited here.
    pub fn freed_late(&self) -> u64 {
        self.freed_late
    }

    /// Whether a new share may go ahead: fewer than
    /// [`MAX_PENDING_PAGES`] are waiting.
    pub fn admits(&self) -> bool {
        self.pages < MAX_PENDING_PAGES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec;

    fn alloc(base: usize, refs: &[u32]) -> Granted {
        Granted {
            base,
            layout: Layout::from_size_align(refs.len() * PAGE_SIZE, PAGE_SIZE).unwrap(),
            refs: refs.iter().map(|&r| GrantRef(r)).collect(),
        }
    }

    /// Grants a peer has mapped: ending them fails until it unmaps.
    struct Peer {
        mapped: BTreeSet<u32>,
        ended: Vec<u32>,
    }

    impl Peer {
        fn end(&mut self) -> impl FnMut(GrantRef) -> bool + '_ {
            |r| {
                if self.mapped.contains(&r.0) {
                    false
                } else {
                    self.ended.push(r.0);
                    true
                }
            }
        }
    }

    #[test]
    fn unmapped_pages_are_freed_at_once() {
        let mut rc = Reclaimer::new();
        let mut peer = Peer { mapped: BTreeSet::new(), ended: vec![] };
        let g = rc.release(alloc(0x1000, &[8, 9, 10]), &mut peer.end()).unwrap();
        assert_eq!(g.base, 0x1000);
        assert_eq!(peer.ended, [8, 9, 10]);
        assert_eq!(rc.pending_pages(), 0);
    }

    #[test]
    fn pages_still_mapped_are_freed_once_the_peer_lets_go() {
        let mut rc = Reclaimer::new();
        // A dying peer still maps the control page and one ring page.
        let mut peer = Peer { mapped: BTreeSet::from([8, 10]), ended: vec![] };
        assert_eq!(rc.release(alloc(0x10000, &[8, 9, 10, 11]), &mut peer.end()), None);
        assert_eq!(
            rc.release(alloc(0x20000, &[12]), &mut peer.end()).map(|g| g.base),
            Some(0x20000)
        );
        assert_eq!(rc.pending_pages(), 4);
        assert_eq!(peer.ended, [9, 11, 12]);
        let mut freed = vec![];
        // Still mapped: nothing to free, nothing ended twice.
        assert_eq!(rc.retry(&mut peer.end(), &mut |g| freed.push(g.base)), 0);
        assert_eq!(peer.ended, [9, 11, 12]);
        peer.mapped.remove(&8);
        assert_eq!(rc.retry(&mut peer.end(), &mut |g| freed.push(g.base)), 0);
        peer.mapped.remove(&10);
        assert_eq!(rc.retry(&mut peer.end(), &mut |g| freed.push(g.base)), 4);
        assert_eq!(freed, [0x10000]);
        assert_eq!(peer.ended, [9, 11, 12, 8, 10]);
        assert_eq!((rc.pending_pages(), rc.freed_late()), (0, 1));
    }

    #[test]
    fn peer_recreation_does_not_grow_the_pending_pages() {
        // Each incarnation of the peer maps a 9-page vchan and is destroyed;
        // its mappings go a little after the server tore the vchan down.
        let mut rc = Reclaimer::new();
        let mut freed_pages = 0;
        for round in 0..200u32 {
            let refs: Vec<u32> = (round * 9..round * 9 + 9).collect();
            let mut peer = Peer { mapped: refs.iter().copied().collect(), ended: vec![] };
            assert!(rc.admits());
            assert_eq!(rc.release(alloc(round as usize * 0x10000, &refs), &mut peer.end()), None);
            peer.mapped.clear();
            freed_pages += rc.retry(&mut peer.end(), &mut |_| {});
            assert_eq!(rc.pending_pages(), 0);
        }
        assert_eq!(freed_pages, 200 * 9);
    }

    #[test]
    fn the_loss_is_bounded() {
        let mut rc = Reclaimer::new();
        let mut stuck = Peer { mapped: (0..10_000).collect(), ended: vec![] };
        let mut n = 0u32;
        while rc.admits() {
            assert_eq!(rc.release(alloc(n as usize, &[n, n + 1, n + 2]), &mut stuck.end()), None);
            n += 3;
        }
        assert!(rc.pending_pages() >= MAX_PENDING_PAGES);
        assert!(rc.pending_pages() < MAX_PENDING_PAGES + 3);
    }
}
