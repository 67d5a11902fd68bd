//! [`HostedBackend`]: grants, event channels and the store for one domain
//! running as a Linux process.
//!
//! Grants: [`Backend::share`] of `n` pages creates the directory
//! `<world>/grants/<owner>/<f>/` (its creation reserves the number `f`) and
//! in it the `n`-page file `to-<grantee>`. The pages get the references
//! `f << 8 | i`, so a reference alone names the file and the page, and only
//! the named grantee can open it. [`Backend::map`] reserves address space for
//! all the pages and maps each run of consecutive pages over it with
//! `MAP_FIXED`, so any list of references maps as one contiguous region.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_vchan::backend::UnmapNotify;
use portcullis_vchan::layout::{MAX_RING_SIZE, PAGE_SIZE};
use portcullis_vchan::{AtomicMem, Backend, BackendError, DomId, GrantRef, Port, SharedMem, Wait};

use crate::evtchn::Events;
use crate::mem::{HostedMem, NotifyRecord};
use crate::store::{Reader, Store};
use crate::sys::{self, Mapping};
use crate::HostedError;

/// Most pages one grant (one `share` call) may hold: a 1 MiB ring.
pub const MAX_GRANT_PAGES: usize = MAX_RING_SIZE / PAGE_SIZE;
/// Bits of a grant reference that index the page within its grant.
const PAGE_BITS: u32 = 8;
/// Grant numbers must leave room for the page bits.
const MAX_GRANT_NUMBER: u32 = u32::MAX >> PAGE_BITS;

/// One domain's view of the hosted world: a [`Backend`] over shared files
/// and futexes. Clones share their caches; each clone keeps its own store
/// watch position.
#[derive(Clone)]
pub struct HostedBackend {
    shared: Arc<Shared>,
    /// Store generation at the last `store_wait` return.
    seen_gen: u32,
}

struct Shared {
    world: PathBuf,
    dom: DomId,
    store: Store,
    events: Events,
    next_grant: AtomicU32,
}

/// `<world>/grants/<dom>`.
pub(crate) fn grants_dir(world: &Path, dom: DomId) -> PathBuf {
    world.join("grants").join(dom.0.to_string())
}

/// `<world>/notify/<dom>`.
pub(crate) fn notify_dir(world: &Path, dom: DomId) -> PathBuf {
    world.join("notify").join(dom.0.to_string())
}

/// The file of grant `number` from `owner` to `grantee`, relative to the world.
fn grant_file(owner: DomId, number: u32, grantee: DomId) -> PathBuf {
    Path::new("grants")
        .join(owner.0.to_string())
        .join(number.to_string())
        .join(format!("to-{}", grantee.0))
}

/// Performs the unmap notifications a dead domain left behind, as the kernel
/// would have done when its mappings went away.
pub(crate) fn fire_recorded(world: &Path, dom: DomId) {
    let dir = notify_dir(world, dom);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Some((file, page, offset, port)) = parse_record(&text) else {
            let _ = fs::remove_file(&path);
            continue;
        };
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(world.join(file)) else {
            let _ = fs::remove_file(&path);
            continue;
        };
        let page_at = u64::from(page) * PAGE_SIZE as u64;
        if let Ok(map) = Mapping::file(&f, page_at, PAGE_SIZE, true) {
            if offset < PAGE_SIZE {
                AtomicMem::new(map.words()).store_u8(offset, 0);
            }
        }
        let record =
            NotifyRecord { world: world.to_path_buf(), dom, file: path, offset, port: Port(port) };
        record.fire(None);
    }
}

/// Parses `<grant file> <page> <offset> <port>`; the grant file must be a
/// plain relative path under `grants/`.
fn parse_record(text: &str) -> Option<(&str, u32, usize, u32)> {
    let mut parts = text.split_whitespace();
    let file = parts.next()?;
    let page = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    let port = parts.next()?.parse().ok()?;
    let plain = file.starts_with("grants/")
        && file.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    (plain && parts.next().is_none()).then_some((file, page, offset, port))
}

impl HostedBackend {
    /// Opens the world at `world` as domain `dom`.
    pub fn open(world: &Path, dom: DomId) -> Result<Self, HostedError> {
        if sys::page_size() != PAGE_SIZE {
            return Err(HostedError::PageSize);
        }
        let store = Store::open(world)?;
        let events = Events::open(world, dom)?;
        Ok(HostedBackend {
            shared: Arc::new(Shared {
                world: world.to_path_buf(),
                dom,
                store,
                events,
                next_grant: AtomicU32::new(1),
            }),
            seen_gen: 0,
        })
    }

    /// The world directory.
    pub fn world(&self) -> &Path {
        &self.shared.world
    }

    /// Waits until one of `ports` has a pending event and consumes it;
    /// `None` if `timeout` passed first.
    pub fn wait_any(
        &mut self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, BackendError> {
        self.shared.events.wait_any(ports, timeout)
    }

    /// Records an unmap notification for the reaper.
    fn record(
        &self,
        file: &Path,
        page: u32,
        notify: Option<UnmapNotify>,
    ) -> Result<Option<NotifyRecord>, io::Error> {
        let Some(n) = notify else { return Ok(None) };
        if n.offset >= PAGE_SIZE {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let dir = notify_dir(&self.shared.world, self.shared.dom);
        fs::create_dir_all(&dir)?;
        let path = dir.join(crate::unique_suffix());
        let mut f = fs::File::create(&path)?;
        writeln!(f, "{} {page} {} {}", file.display(), n.offset, n.port.0)?;
        Ok(Some(NotifyRecord {
            world: self.shared.world.clone(),
            dom: self.shared.dom,
            file: path,
            offset: n.offset,
            port: n.port,
        }))
    }

    /// Reserves a grant number by creating its directory.
    fn reserve_grant(&self) -> Result<(u32, PathBuf), BackendError> {
        let base = grants_dir(&self.shared.world, self.shared.dom);
        fs::create_dir_all(&base).map_err(|_| BackendError::Grant)?;
        loop {
            let number = self.shared.next_grant.fetch_add(1, Ordering::SeqCst);
            if number == 0 || number > MAX_GRANT_NUMBER {
                return Err(BackendError::Exhausted);
            }
            let dir = base.join(number.to_string());
            match fs::create_dir(&dir) {
                Ok(()) => return Ok((number, dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => return Err(BackendError::Grant),
            }
        }
    }

    fn share_in(
        &self,
        dir: &Path,
        number: u32,
        peer: DomId,
        refs: &mut [GrantRef],
        notify: Option<UnmapNotify>,
    ) -> io::Result<HostedMem> {
        let len = refs.len() * PAGE_SIZE;
        let rel = grant_file(self.shared.dom, number, peer);
        let tmp = dir.join(".tmp");
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&tmp)?;
        file.set_len(len as u64)?;
        let map = Mapping::file(&file, 0, len, true)?;
        fs::rename(&tmp, self.shared.world.join(&rel))?;
        for (i, slot) in (0u32..).zip(refs.iter_mut()) {
            *slot = GrantRef(number << PAGE_BITS | i);
        }
        let notify = self.record(&rel, 0, notify)?;
        Ok(HostedMem { map, writable: true, grant_dir: Some(dir.to_path_buf()), notify })
    }

    fn map_refs(
        &self,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> io::Result<HostedMem> {
        let mut map = Mapping::reserve(refs.len() * PAGE_SIZE)?;
        let mut first_file = None;
        let mut start = 0;
        while let Some(first) = refs.get(start) {
            let number = first.0 >> PAGE_BITS;
            let page = first.0 & ((1 << PAGE_BITS) - 1);
            // The run of references to consecutive pages of the same grant.
            let run = refs
                .get(start..)
                .unwrap_or_default()
                .iter()
                .zip(first.0..)
                .take_while(|(r, want)| r.0 == *want && r.0 >> PAGE_BITS == number)
                .count();
            let rel = grant_file(peer, number, self.shared.dom);
            let file = fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(self.shared.world.join(&rel))?;
            let end_page = u64::from(page) + run as u64;
            if file.metadata()?.len() < end_page * PAGE_SIZE as u64 {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            map.map_fixed(
                start * PAGE_SIZE,
                &file,
                u64::from(page) * PAGE_SIZE as u64,
                run * PAGE_SIZE,
                writable,
            )?;
            first_file.get_or_insert((rel, page));
            start += run;
        }
        let notify = match first_file {
            Some((rel, page)) => self.record(&rel, page, notify)?,
            None => None,
        };
        Ok(HostedMem { map, writable, grant_dir: None, notify })
    }

    /// Revokes a grant (if `mem` is ours) and drops the mapping, which
    /// performs its unmap notification.
    fn release(&mut self, mut mem: HostedMem) {
        if let Some(dir) = mem.grant_dir.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

impl Backend for HostedBackend {
    type Mem = HostedMem;

    fn domid(&self) -> DomId {
        self.shared.dom
    }

    fn share(
        &mut self,
        peer: DomId,
        refs: &mut [GrantRef],
        notify: Option<UnmapNotify>,
    ) -> Result<HostedMem, BackendError> {
        if refs.is_empty() || refs.len() > MAX_GRANT_PAGES {
            return Err(BackendError::Grant);
        }
        let (number, dir) = self.reserve_grant()?;
        self.share_in(&dir, number, peer, refs, notify).map_err(|_| {
            let _ = fs::remove_dir_all(&dir);
            BackendError::Grant
        })
    }

    fn unshare(&mut self, mem: HostedMem) {
        self.release(mem);
    }

    fn map(
        &mut self,
        peer: DomId,
        refs: &[GrantRef],
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<HostedMem, BackendError> {
        if refs.is_empty() || refs.len() > MAX_GRANT_PAGES {
            return Err(BackendError::Map);
        }
        self.map_refs(peer, refs, writable, notify).map_err(|_| BackendError::Map)
    }

    fn unmap(&mut self, mem: HostedMem) {
        self.release(mem);
    }

    fn alloc_unbound(&mut self, peer: DomId) -> Result<Port, BackendError> {
        self.shared.events.alloc_unbound(peer)
    }

    fn bind_interdomain(&mut self, peer: DomId, remote: Port) -> Result<Port, BackendError> {
        self.shared.events.bind(peer, remote)
    }

    fn unbind(&mut self, port: Port) {
        self.shared.events.unbind(port)
    }

    fn notify(&mut self, port: Port) -> Result<(), BackendError> {
        self.shared.events.notify(port)
    }

    fn relax(&mut self) {
        // The peer is another process, which on a busy host may be waiting
        // for this very CPU: let it run rather than spin against it.
        std::thread::yield_now();
    }

    fn wait(&mut self, port: Port, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        Ok(match self.shared.events.wait_any(&[port], timeout)? {
            Some(_) => Wait::Event,
            None => Wait::TimedOut,
        })
    }

    fn store_write(&mut self, path: &str, value: &str, reader: DomId) -> Result<(), BackendError> {
        let dom = self.shared.dom;
        self.shared.store.write(dom, path, value.as_bytes(), Reader::Domain(reader))
    }

    fn store_read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, BackendError> {
        self.shared.store.read(self.shared.dom, path, buf)
    }

    fn store_remove(&mut self, path: &str) -> Result<(), BackendError> {
        self.shared.store.remove(self.shared.dom, path)
    }

    fn store_wait(&mut self, _path: &str, timeout: Option<Duration>) -> Result<Wait, BackendError> {
        Ok(self.shared.store.wait(&mut self.seen_gen, timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_strictly() {
        assert_eq!(parse_record("grants/1/5/to-2 0 21 3\n"), Some(("grants/1/5/to-2", 0, 21, 3)));
        for bad in [
            "",
            "grants/1/5/to-2 0 21",
            "grants/1/5/to-2 0 21 3 4",
            "/etc/passwd 0 0 1",
            "grants/../../x 0 0 1",
            "grants//x 0 0 1",
            "grants/1/5/to-2 x 21 3",
        ] {
            assert_eq!(parse_record(bad), None, "{bad:?}");
        }
    }
}
