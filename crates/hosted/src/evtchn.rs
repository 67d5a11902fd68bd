//! Event channels over shared files and futexes.
//!
//! Port `p` of domain `d` is the file `<world>/evtchn/<d>-<p>`, mapped shared
//! by both ends:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `pending`: events received, bumped by the remote end |
//! | 4 | 4 | `seen`: the `pending` value the owner last consumed |
//! | 8 | 4 | `peer`: the domain allowed to bind (or bound) |
//! | 16 | 8 | `link`: 0 unbound, `CONNECTED | domid << 32 | port`, or all ones when closed |
//!
//! Every domain also has a doorbell, `<world>/evtchn/<d>.bell`: a futex word
//! that every notification to any of its ports bumps, and a count of
//! waiters, so that one futex wait covers any set of ports.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portcullis_vchan::{BackendError, DomId, Port};

use crate::sys::{self, Mapping};

const FILE_LEN: usize = 4096;
const PENDING: usize = 0;
const SEEN: usize = 4;
const PEER: usize = 8;
const LINK: usize = 16;
const BELL: usize = 0;
const WAITERS: usize = 4;

const CONNECTED: u64 = 1 << 63;
const CLOSED: u64 = u64::MAX;

/// The `link` value of a port connected to `port` in `dom`.
fn connected(dom: DomId, port: u32) -> u64 {
    CONNECTED | u64::from(dom.0) << 32 | u64::from(port)
}

/// The remote end named by a `link` value, if connected.
fn remote_of(link: u64) -> Option<(DomId, u32)> {
    if link == CLOSED || link & CONNECTED == 0 {
        return None;
    }
    let dom = u16::try_from((link >> 32) & 0xffff).ok()?;
    Some((DomId(dom), (link & 0xffff_ffff) as u32))
}

pub(crate) fn port_path(world: &Path, dom: DomId, port: u32) -> PathBuf {
    world.join("evtchn").join(format!("{}-{port}", dom.0))
}

fn bell_path(world: &Path, dom: DomId) -> PathBuf {
    world.join("evtchn").join(format!("{}.bell", dom.0))
}

/// A port file, mapped.
pub(crate) struct PortFile {
    map: Mapping,
}

impl PortFile {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < FILE_LEN as u64 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        Ok(PortFile { map: Mapping::file(&file, 0, FILE_LEN, true)? })
    }

    fn pending(&self) -> &AtomicU32 {
        self.map.u32_at(PENDING)
    }
    fn seen(&self) -> &AtomicU32 {
        self.map.u32_at(SEEN)
    }
    fn peer(&self) -> u32 {
        self.map.u32_at(PEER).load(Ordering::SeqCst)
    }
    fn link(&self) -> &AtomicU64 {
        self.map.u64_at(LINK)
    }

    /// Consumes a pending event, if there is one.
    fn take(&self) -> bool {
        let pending = self.pending().load(Ordering::SeqCst);
        let seen = self.seen().load(Ordering::SeqCst);
        pending != seen
            && self
                .seen()
                .compare_exchange(seen, pending, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }
}

/// A domain's doorbell, mapped.
pub(crate) struct Bell {
    map: Mapping,
}

impl Bell {
    /// Opens (creating if needed) the doorbell of `dom`.
    pub(crate) fn open(world: &Path, dom: DomId) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(bell_path(world, dom))?;
        if file.metadata()?.len() < FILE_LEN as u64 {
            // Only ever grows the file, so racing creators agree.
            file.set_len(FILE_LEN as u64)?;
        }
        Ok(Bell { map: Mapping::file(&file, 0, FILE_LEN, true)? })
    }

    fn counter(&self) -> &AtomicU32 {
        self.map.u32_at(BELL)
    }

    fn ring(&self) {
        self.counter().fetch_add(1, Ordering::SeqCst);
        if self.map.u32_at(WAITERS).load(Ordering::SeqCst) != 0 {
            sys::futex_wake(self.counter());
        }
    }
}

/// Delivers an event from port `port` of `from` (whose `link` is given) to
/// `remote`, if the two ends are really bound to each other; otherwise the
/// event is dropped, as Xen drops events on a half-closed channel.
fn deliver(from: DomId, port: u32, remote: &PortFile, bell: &Bell) {
    if remote.link().load(Ordering::SeqCst) != connected(from, port) {
        return;
    }
    remote.pending().fetch_add(1, Ordering::SeqCst);
    bell.ring();
}

/// Opens the remote end of `link` and its domain's doorbell.
fn open_remote(world: &Path, link: u64) -> Option<(PortFile, Bell)> {
    let (dom, port) = remote_of(link)?;
    let file = PortFile::open(&port_path(world, dom, port)).ok()?;
    let bell = Bell::open(world, dom).ok()?;
    Some((file, bell))
}

/// Sends an event from port `port` of `dom` without any cache (the reaper's
/// path, acting for a dead domain).
pub(crate) fn signal_from(world: &Path, dom: DomId, port: u32) {
    let Ok(own) = PortFile::open(&port_path(world, dom, port)) else {
        return;
    };
    let link = own.link().load(Ordering::SeqCst);
    if let Some((remote, bell)) = open_remote(world, link) {
        deliver(dom, port, &remote, &bell);
    }
}

/// Closes port file `path` of `dom`: marks it closed, returns the remote end
/// to the unbound state, and removes the file.
pub(crate) fn close_port_file(world: &Path, dom: DomId, port: u32) {
    let path = port_path(world, dom, port);
    if let Ok(own) = PortFile::open(&path) {
        let link = own.link().swap(CLOSED, Ordering::SeqCst);
        if let Some((remote, bell)) = open_remote(world, link) {
            let _ = remote.link().compare_exchange(
                connected(dom, port),
                0,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            bell.ring();
        }
    }
    let _ = fs::remove_file(&path);
}

/// One of our ports, with the remote end it was last seen linked to.
struct Local {
    file: Arc<PortFile>,
    remote: Option<(u64, Arc<PortFile>, Arc<Bell>)>,
}

/// One domain's event channels.
pub(crate) struct Events {
    world: PathBuf,
    dom: DomId,
    bell: Bell,
    next_port: AtomicU32,
    ports: Mutex<HashMap<u32, Local>>,
}

impl Events {
    pub(crate) fn open(world: &Path, dom: DomId) -> io::Result<Self> {
        Ok(Events {
            world: world.to_path_buf(),
            dom,
            bell: Bell::open(world, dom)?,
            next_port: AtomicU32::new(1),
            ports: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Local>> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and publishes a port file under the next free number.
    fn create(&self, peer: DomId, link: u64) -> Result<(u32, PortFile), BackendError> {
        let dir = self.world.join("evtchn");
        let tmp = dir.join(format!(".{}-{}.tmp", self.dom.0, crate::unique_suffix()));
        let result = self.publish(&tmp, peer, link);
        let _ = fs::remove_file(&tmp);
        result
    }

    fn publish(&self, tmp: &Path, peer: DomId, link: u64) -> Result<(u32, PortFile), BackendError> {
        let file = fs::File::create(tmp).map_err(|_| BackendError::EventChannel)?;
        file.set_len(FILE_LEN as u64).map_err(|_| BackendError::EventChannel)?;
        let port = PortFile::open(tmp).map_err(|_| BackendError::EventChannel)?;
        port.map.u32_at(PEER).store(u32::from(peer.0), Ordering::SeqCst);
        port.link().store(link, Ordering::SeqCst);
        loop {
            let n = self.next_port.fetch_add(1, Ordering::SeqCst);
            if n == 0 || n == u32::MAX {
                return Err(BackendError::Exhausted);
            }
            // A hard link fails if the name is taken (say, by a port a
            // previous process of this domain left behind).
            match fs::hard_link(tmp, port_path(&self.world, self.dom, n)) {
                Ok(()) => return Ok((n, port)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => return Err(BackendError::EventChannel),
            }
        }
    }

    pub(crate) fn alloc_unbound(&self, peer: DomId) -> Result<Port, BackendError> {
        let (n, file) = self.create(peer, 0)?;
        self.lock().insert(n, Local { file: Arc::new(file), remote: None });
        Ok(Port(n))
    }

    pub(crate) fn bind(&self, peer: DomId, remote: Port) -> Result<Port, BackendError> {
        let theirs = PortFile::open(&port_path(&self.world, peer, remote.0))
            .map_err(|_| BackendError::EventChannel)?;
        if theirs.peer() != u32::from(self.dom.0) {
            return Err(BackendError::Denied);
        }
        if theirs.link().load(Ordering::SeqCst) != 0 {
            return Err(BackendError::EventChannel);
        }
        let bell = Bell::open(&self.world, peer).map_err(|_| BackendError::EventChannel)?;
        let link = connected(peer, remote.0);
        let (n, ours) = self.create(peer, link)?;
        let claimed = theirs.link().compare_exchange(
            0,
            connected(self.dom, n),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        if claimed.is_err() {
            let _ = fs::remove_file(port_path(&self.world, self.dom, n));
            return Err(BackendError::EventChannel);
        }
        self.lock().insert(
            n,
            Local { file: Arc::new(ours), remote: Some((link, Arc::new(theirs), Arc::new(bell))) },
        );
        Ok(Port(n))
    }

    pub(crate) fn unbind(&self, port: Port) {
        if self.lock().remove(&port.0).is_some() {
            close_port_file(&self.world, self.dom, port.0);
            // Wakes our own waiters so they notice the port is gone.
            self.bell.ring();
        }
    }

    pub(crate) fn notify(&self, port: Port) -> Result<(), BackendError> {
        let (remote, bell) = {
            let mut ports = self.lock();
            let local = ports.get_mut(&port.0).ok_or(BackendError::EventChannel)?;
            let link = local.file.link().load(Ordering::SeqCst);
            let fresh = match &local.remote {
                Some((seen, _, _)) => *seen != link,
                None => true,
            };
            if fresh {
                local.remote = open_remote(&self.world, link)
                    .map(|(file, bell)| (link, Arc::new(file), Arc::new(bell)));
            }
            match &local.remote {
                Some((_, file, bell)) => (file.clone(), bell.clone()),
                // Unbound or closed at the other end: dropped.
                None => return Ok(()),
            }
        };
        deliver(self.dom, port.0, &remote, &bell);
        Ok(())
    }

    /// Waits until one of `ports` has a pending event and consumes it.
    pub(crate) fn wait_any(
        &self,
        ports: &[Port],
        timeout: Option<Duration>,
    ) -> Result<Option<Port>, BackendError> {
        let files = {
            let map = self.lock();
            ports
                .iter()
                .map(|p| map.get(&p.0).map(|l| (*p, l.file.clone())))
                .collect::<Option<Vec<_>>>()
                .ok_or(BackendError::EventChannel)?
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let waiters = self.bell.map.u32_at(WAITERS);
        waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            // Read the doorbell before the ports: a notification after this
            // load changes the doorbell, so the futex wait returns at once.
            let rung = self.bell.counter().load(Ordering::SeqCst);
            match poll(&files) {
                Ok(None) => {}
                found => break found,
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Ok(None),
                },
            };
            sys::futex_wait(self.bell.counter(), rung, left);
        };
        waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Consumes an event from the first of `files` that has one; fails if one
/// of them was closed.
fn poll(files: &[(Port, Arc<PortFile>)]) -> Result<Option<Port>, BackendError> {
    if let Some((port, _)) = files.iter().find(|(_, f)| f.take()) {
        return Ok(Some(*port));
    }
    if files.iter().any(|(_, f)| f.link().load(Ordering::SeqCst) == CLOSED) {
        return Err(BackendError::EventChannel);
    }
    Ok(None)
}

/// The port numbers `dom` has files for (for the reaper).
pub(crate) fn ports_of(world: &Path, dom: DomId) -> Vec<u32> {
    let prefix = format!("{}-", dom.0);
    let Ok(entries) = fs::read_dir(world.join("evtchn")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_encoding_round_trips() {
        let link = connected(DomId(65535), u32::MAX);
        assert_eq!(remote_of(link), Some((DomId(65535), u32::MAX)));
        assert_eq!(remote_of(connected(DomId(0), 1)), Some((DomId(0), 1)));
        assert_eq!(remote_of(0), None);
        assert_eq!(remote_of(CLOSED), None);
    }
}
