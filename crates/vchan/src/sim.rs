//! An in-process stand-in for Xen (feature `std`): domains, grant tables,
//! event channels and a xenstore-like store, for tests, fuzzing and
//! benchmarks. Endpoints in different threads work; waits really block.
//!
//! It follows Xen where that matters to a vchan: grant references are per
//! granting domain, a granted page stays alive while mapped, notifying an
//! unbound port is silently dropped, closing one end of an interdomain
//! channel leaves the other end unbound, store entries are readable only by
//! their owner and the reader named when writing (a missing entry under one
//! the reader may not read is "permission denied", as in xenstored), and a
//! domain may only write under `/local/domain/<its id>/`.

use std::boxed::Box;
use std::collections::{BTreeMap, HashMap};
use std::string::{String, ToString};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::vec::Vec;

use crate::backend::{Backend, BackendError, DomId, GrantRef, Port, UnmapNotify, Wait};
use crate::layout::PAGE_SIZE;
use crate::shm::{AtomicMem, SharedMem};

type Page = Arc<Box<[AtomicU32]>>;

fn new_page() -> Page {
    Arc::new((0..PAGE_SIZE / 4).map(|_| AtomicU32::new(0)).collect())
}

/// A simulated machine. Cloning gives another handle to the same machine.
#[derive(Clone, Default)]
pub struct Hypervisor {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Signalled on every event and store change.
    changed: Condvar,
}

struct GrantEntry {
    peer: DomId,
    page: Page,
}

struct PortEntry {
    peer: DomId,
    remote: Option<(DomId, u32)>,
    pending: bool,
}

struct StoreEntry {
    value: String,
    owner: DomId,
    reader: DomId,
}

struct Notifier {
    dom: DomId,
    page: Page,
    offset: usize,
    port: u32,
}

#[derive(Default)]
struct State {
    next_gref: HashMap<DomId, u32>,
    grants: HashMap<(DomId, u32), GrantEntry>,
    next_port: HashMap<DomId, u32>,
    ports: HashMap<(DomId, u32), PortEntry>,
    store: BTreeMap<String, StoreEntry>,
    store_gen: u64,
    notifiers: Vec<Notifier>,
    /// Store writes still to fail, per domain (a busy xenstored).
    failing_writes: HashMap<DomId, u32>,
}

impl State {
    fn send(&mut self, dom: DomId, port: u32) -> bool {
        let remote = self.ports.get(&(dom, port)).and_then(|p| p.remote);
        match remote.and_then(|r| self.ports.get_mut(&r)) {
            Some(entry) => {
                entry.pending = true;
                true
            }
            None => false,
        }
    }

    fn unbind(&mut self, dom: DomId, port: u32) {
        if let Some(entry) = self.ports.remove(&(dom, port)) {
            if let Some(remote) = entry.remote.and_then(|r| self.ports.get_mut(&r)) {
                remote.remote = None;
            }
        }
        self.notifiers.retain(|n| !(n.dom == dom && n.port == port));
    }
}

impl Hypervisor {
    /// A machine with no domains.
    pub fn new() -> Self {
        Self::default()
    }

    /// The backend of domain `dom`.
    pub fn domain(&self, dom: DomId) -> SimBackend {
        SimBackend { hv: self.clone(), dom, seen_gen: 0 }
    }

    /// Makes the next `n` store writes of domain `dom` fail with
    /// [`BackendError::Store`], as writes to a xenstored that timed out.
    pub fn fail_store_writes(&self, dom: DomId, n: u32) {
        self.lock().failing_writes.insert(dom, n);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Destroys domain `dom` as a Linux domain's vchan process dies: its
    /// kernel performs its unmap notifications (clearing the live byte
    /// and signalling the peer); then its ports close and its store
    /// directory goes. Pages it granted stay alive while others map them.
    pub fn destroy(&self, dom: DomId) {
        self.end(dom, true);
    }

    /// Destroys domain `dom` as `xl destroy` destroys a unikernel: nothing
    /// runs in it any more, so no unmap notification clears its live byte
    /// and no event reaches its peers. Its ports close (each peer's end is
    /// left unbound, as Xen leaves it), its grants and store directory go;
    /// pages it granted stay alive while others map them.
    pub fn kill(&self, dom: DomId) {
        self.end(dom, false);
    }

    fn end(&self, dom: DomId, notify: bool) {
        let mut st = self.lock();
        let notifiers: Vec<Notifier> = st
            .notifiers
            .iter()
            .filter(|n| notify && n.dom == dom)
            .map(|n| Notifier { dom: n.dom, page: n.page.clone(), offset: n.offset, port: n.port })
            .collect();
        for n in notifiers {
            AtomicMem::new(&n.page).store_u8(n.offset, 0);
            st.send(dom, n.port);
        }
        let ports: Vec<u32> = st.ports.keys().filter(|(d, _)| *d == dom).map(|(_, p)| *p).collect();
        for port in ports {
            st.unbind(dom, port);
        }
        st.grants.retain(|(owner, _), _| *owner != dom);
        let prefix = std::format!("/local/domain/{}/", dom.0);
        st.store.retain(|k, _| !k.starts_with(&prefix));
        st.store_gen += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Number of grants domain `dom` currently has outstanding.
    pub fn grant_count(&self, dom: DomId) -> usize {
        self.lock().grants.keys().filter(|(d, _)| *d == dom).count()
    }

    /// Number of event channel ports domain `dom` has open.
    pub fn port_count(&self, dom: DomId) -> usize {
        self.lock().ports.keys().filter(|(d, _)| *d == dom).count()
    }

    /// Reads a store value regardless of permissions (a toolstack's view).
    pub fn store_peek(&self, path: &str) -> Option<String> {
        self.lock().store.get(path).map(|e| e.value.clone())
    }

    /// Writes a store value as the toolstack (dom0), readable by `reader`.
    pub fn store_poke(&self, path: &str, value: &str, owner: DomId, reader: DomId) {
        let mut st = self.lock();
        st.store.insert(path.to_string(), StoreEntry { value: value.to_string(), owner, reader });
        st.store_gen += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Waits on the condition variable until `done` holds or the deadline.
    fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        mut done: impl FnMut(&mut State) -> Option<T>,
    ) -> Option<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if let Some(v) = done(&mut st) {
                return Some(v);
            }
            st = match deadline {
                None => self.inner.changed.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.inner
                        .changed
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// Pages as one domain maps them, contiguous in offset.
pub struct SimMem {
    pages: Vec<Page>,
    writable: bool,
    /// Grant references, for pages this domain shared.
    grants: Vec<u32>,
}

impl SimMem {
    /// The page holding `off`, and `off` within it.
    fn at(&self, off: usize) -> (AtomicMem<'_>, usize) {
        match self.pages.get(off / PAGE_SIZE) {
            Some(page) => (AtomicMem::new(page), off % PAGE_SIZE),
            None => panic!("access at {off} outside {} mapped bytes", self.len()),
        }
    }

    fn writing(&self) {
        assert!(self.writable, "write through a read-only mapping");
    }
}

impl SharedMem for SimMem {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }
    fn load_u8(&self, off: usize) -> u8 {
        let (m, o) = self.at(off);
        m.load_u8(o)
    }
    fn store_u8(&self, off: usize, value: u8) {
        self.writing();
        let (m, o) = self.at(off);
        m.store_u8(o, value)
    }
    fn load_u16(&self, off: usize) -> u16 {
        let (m, o) = self.at(off);
        m.load_u16(o)
    }
    fn store_u16(&self, off: usize, value: u16) {
        self.writing();
        let (m, o) = self.at(off);
        m.store_u16(o, value)
    }
    fn load_u32(&self, off: usize) -> u32 {
        let (m, o) = self.at(off);
        m.load_u32(o)
    }
    fn store_u32(&self, off: usize, value: u32) {
        self.writing();
        let (m, o) = self.at(off);
        m.store_u32(o, value)
    }
    fn fetch_or_u8(&self, off: usize, bits: u8) -> u8 {
        self.writing();
        let (m, o) = self.at(off);
        m.fetch_or_u8(o, bits)
    }
    fn fetch_and_u8(&self, off: usize, bits: u8) -> u8 {
        self.writing();
        let (m, o) = self.at(off);
        m.fetch_and_u8(o, bits)
    }
    fn read_bytes(&self, mut off: usize, mut dst: &mut [u8]) {
        while !dst.is_empty() {
            let (m, o) = self.at(off);
            let n = dst.len().min(PAGE_SIZE - o);
            let (head, rest) = dst.split_at_mut(n);
            m.read_bytes(o, head);
            dst = rest;
            off += n;
        }
    }
    fn write_bytes(&self, mut off: usize, mut src: &[u8]) {
        self.writing();
        while !src.is_empty() {
            let (m, o) = self.at(off);
            let n = src.len().min(PAGE_SIZE - o);
            let (head, rest) = src.split_at(n);
            m.write_bytes(o, head);
            src = rest;
            off += n;
        }
    }
}

/// One simulated domain's [`Backend`].
#[derive(Clone)]
pub struct SimBackend {
    hv: Hypervisor,
    dom: DomId,
    /// Store generation at the last `store_wait` return: a change after it
    /// wakes the next wait at once, like a xenstore watch.
    seen_gen: u64,
}

impl SimBackend {
    /// The machine this domain runs on.
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hv
    }

    fn register(&self, st: &mut State, page: &Page, notify: Option<UnmapNotify>) {
        if let Some(n) = notify {
            st.notifiers.push(Notifier {
                dom: self.dom,
                page: page.clone(),
                offset: n.offset,
                port: n.port.0,
            });
        }
    }

    fn forget(&self, st: &mut State, mem: &SimMem) {
        if let Some(first) = mem.pages.first() {
            st.notifiers.retain(|n| !(n.dom == self.dom && Arc::ptr_eq(&n.page, first)));
        }
    }
}

impl Backend for SimBackend {
    type Mem = SimMem;

    fn domid(&self) -> DomId {
        self.dom
    }

    fn share(
        &mut self,
        peer: DomId,
        refs: &mut [GrantRef],
        notify: Option<UnmapNotify>,
    ) -> Result<SimMem, BackendError> {
        let mut st = self.hv.lock();
        let mut pages = Vec::with_capacity(refs.len());
        let mut grants = Vec::with_capacity(refs.len());
        for slot in refs.iter_mut() {
            // Xen reserves the first few entries; start at 8 like a guest would.
            let next = st.next_gref.entry(self.dom).or_insert(8);
            let gref = *next;
            *next = next.checked_add(1).ok_or(BackendError::Exhausted)?;
            let page = new_page();
            st.grants.insert((self.dom, gref), GrantEntry { peer, page: page.clone() });
            *slot = GrantRef(gref);
            pages.push(page);
            grants.push(gref);
        }
        if let Some(first) = pages.first() {
            self.register(&mut st, first, notify);
        }
        Ok(SimMem { pages, writable: true, grants })
    }

    fn unshare(&mut self, mem: SimMem) {
        let mut st = self.hv.lock();
        self.forget(&mut st, &mem);
        for gref in &mem.grants {
            st.grants.remove(&(self.dom, *gref));
        }
    }

    fn map(
        &mut self,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<SimMem, BackendError> {
        let mut st = self.hv.lock();
        let mut pages = Vec::with_capacity(refs.len());
        for r in refs {
            match st.grants.get(&(peer, r.0)) {
                Some(g) if g.peer == self.dom => pages.push(g.page.clone()),
                _ => return Err(BackendError::Map),
            }
        }
        if let Some(first) = pages.first() {
            self.register(&mut st, first, notify);
        }
        Ok(SimMem { pages, writable, grants: Vec::new() })
    }

    fn unmap(&mut self, mem: SimMem) {
        let mut st = self.hv.lock();
        self.forget(&mut st, &mem);
    }

    fn alloc_unbound(&mut self, peer: DomId) -> Result<Port, BackendError> {
        let mut st = self.hv.lock();
        let next = st.next_port.entry(self.dom).or_insert(1);
        let port = *next;
        *next = next.checked_add(1).ok_or(BackendError::Exhausted)?;
        st.ports.insert((self.dom, port), PortEntry { peer, remote: None, pending: false });
        Ok(Port(port))
    }

    fn peer_bound(&mut self, port: Port) -> Result<bool, BackendError> {
        let st = self.hv.lock();
        Ok(st.ports.get(&(self.dom, port.0)).is_some_and(|e| e.remote.is_some()))
    }

    fn bind_interdomain(&mut self, peer: DomId, remote: Port) -> Result<Port, BackendError> {
        let mut st = self.hv.lock();
        match st.ports.get(&(peer, remote.0)) {
            Some(e) if e.peer == self.dom && e.remote.is_none() => {}
            _ => return Err(BackendError::EventChannel),
        }
        let next = st.next_port.entry(self.dom).or_insert(1);
        let port = *next;
        *next = next.checked_add(1).ok_or(BackendError::Exhausted)?;
        st.ports.insert(
            (self.dom, port),
            PortEntry { peer, remote: Some((peer, remote.0)), pending: false },
        );
        if let Some(e) = st.ports.get_mut(&(peer, remote.0)) {
            e.remote = Some((self.dom, port));
        }
        Ok(Port(port))
    }

    fn unbind(&mut self, port: Port) {
        self.hv.lock().unbind(self.dom, port.0);
        self.hv.inner.changed.notify_all();
    }

    fn notify(&mut self, port: Port) -> Result<(), BackendError> {
        let mut st = self.hv.lock();
        if !st.ports.contains_key(&(self.dom, port.0)) {
            return Err(BackendError::EventChannel);
        }
        if st.send(self.dom, port.0) {
            drop(st);
            self.hv.inner.changed.notify_all();
        }
        Ok(())
    }

    fn relax(&mut self) {
        // The peer is another thread of this process.
        std::thread::yield_now();
    }

    fn wait(&mut self, port: Port, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        let key = (self.dom, port.0);
        let got = self.hv.wait_until(timeout, |st| match st.ports.get_mut(&key) {
            None => Some(Err(BackendError::EventChannel)),
            Some(e) if e.pending => {
                e.pending = false;
                Some(Ok(Wait::Event))
            }
            Some(_) => None,
        });
        got.unwrap_or(Ok(Wait::TimedOut))
    }

    fn store_write(&mut self, path: &str, value: &str, reader: DomId) -> Result<(), BackendError> {
        let own = std::format!("/local/domain/{}/", self.dom.0);
        if !path.starts_with(&own) {
            return Err(BackendError::Denied);
        }
        if let Some(n) = self.hv.lock().failing_writes.get_mut(&self.dom).filter(|n| **n > 0) {
            *n -= 1;
            return Err(BackendError::Store);
        }
        self.hv.store_poke(path, value, self.dom, reader);
        Ok(())
    }

    fn store_read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        let st = self.hv.lock();
        let readable = |e: &StoreEntry| e.owner == self.dom || e.reader == self.dom;
        let Some(entry) = st.store.get(path) else {
            // Like xenstored: a missing node is EACCES when the nearest
            // existing ancestor is one we may not read.
            let mut at = path;
            while let Some(i) = at.rfind('/').filter(|i| *i > 0) {
                at = &at[..i];
                if let Some(e) = st.store.get(at) {
                    return if readable(e) { Ok(None) } else { Err(BackendError::Denied) };
                }
            }
            return Ok(None);
        };
        if !readable(entry) {
            return Err(BackendError::Denied);
        }
        let bytes = entry.value.as_bytes();
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(Some(bytes.len()))
    }

    fn store_remove(&mut self, path: &str) -> Result<(), BackendError> {
        let mut st = self.hv.lock();
        let below = std::format!("{path}/");
        let dom = self.dom;
        let mut denied = false;
        st.store.retain(|k, e| {
            let hit = k == path || k.starts_with(&below);
            if hit && e.owner != dom {
                denied = true;
            }
            !hit || e.owner != dom
        });
        st.store_gen += 1;
        drop(st);
        self.hv.inner.changed.notify_all();
        if denied {
            Err(BackendError::Denied)
        } else {
            Ok(())
        }
    }

    fn store_wait(&mut self, _path: &str, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        let seen = self.seen_gen;
        let changed =
            self.hv.wait_until(timeout, |st| (st.store_gen != seen).then_some(st.store_gen));
        Ok(match changed {
            Some(generation) => {
                self.seen_gen = generation;
                Wait::Event
            }
            None => Wait::TimedOut,
        })
    }
}
