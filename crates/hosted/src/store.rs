//! The xenstore stand-in: one directory per node under `<world>/store/`,
//! the node's value and permissions in its `@node` file, replaced atomically
//! (write a temporary file, then rename). A process-shared generation
//! counter, bumped on every change, is what watches wait on.
//!
//! The permission rules are xenstore's, enforced by this API: a domain
//! writes only under `/local/domain/<its id>/` and never over a node another
//! domain owns; a node is readable by its owner, by the one reader named
//! when it was written (or by everyone, for the toolstack's `name` nodes),
//! and by dom0. All processes run as one user, so nothing stops a process
//! from bypassing this API and editing the files: the store is cooperative.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_vchan::{BackendError, DomId, Wait};

use crate::sys::{self, Mapping};

/// Longest store path accepted.
pub const MAX_PATH_LEN: usize = 256;
/// Longest value accepted (xenstore's limit).
pub const MAX_VALUE_LEN: usize = 4096;
/// The file in a node's directory that holds its permissions and value.
const NODE_FILE: &str = "@node";
/// The toolstack's domain.
pub(crate) const DOM0: DomId = DomId(0);

/// Who may read a node besides its owner and dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reader {
    /// One domain.
    Domain(DomId),
    /// Every domain (the toolstack's `name` nodes).
    Everyone,
}

/// A node as stored.
pub(crate) struct Node {
    pub(crate) owner: DomId,
    pub(crate) reader: Reader,
    pub(crate) value: Vec<u8>,
}

/// A world's store, as one domain uses it.
pub(crate) struct Store {
    root: PathBuf,
    generation: Mapping,
}

/// Checks a store path and turns it into its directory under `root`.
fn node_dir(root: &Path, path: &str) -> Result<PathBuf, BackendError> {
    let rest = path.strip_prefix('/').ok_or(BackendError::Store)?;
    if path.len() > MAX_PATH_LEN || rest.is_empty() {
        return Err(BackendError::Store);
    }
    let mut dir = root.to_path_buf();
    for part in rest.split('/') {
        let ok_chars =
            part.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if part.is_empty() || part == "." || part == ".." || !ok_chars {
            return Err(BackendError::Store);
        }
        dir.push(part);
    }
    Ok(dir)
}

/// Whether `dom` may create or change nodes at `path`.
fn may_write(dom: DomId, path: &str) -> bool {
    if dom == DOM0 {
        return true;
    }
    let home = format!("/local/domain/{}/", dom.0);
    path.starts_with(&home) && path.len() > home.len()
}

fn parse_node(bytes: &[u8]) -> Option<Node> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(bytes.get(..nl)?).ok()?;
    let (owner, reader) = header.split_once(' ')?;
    let owner = DomId(owner.parse().ok()?);
    let reader = match reader {
        "*" => Reader::Everyone,
        n => Reader::Domain(DomId(n.parse().ok()?)),
    };
    let value = bytes.get(nl + 1..)?.to_vec();
    (value.len() <= MAX_VALUE_LEN).then_some(Node { owner, reader, value })
}

impl Store {
    /// Opens the store of the world at `world` (created by `World::create`).
    pub(crate) fn open(world: &Path) -> io::Result<Self> {
        let file = fs::OpenOptions::new().read(true).write(true).open(world.join("store.gen"))?;
        let generation = Mapping::file(&file, 0, sys::page_size(), true)?;
        Ok(Store { root: world.join("store"), generation })
    }

    fn counter(&self) -> &AtomicU32 {
        self.generation.u32_at(0)
    }

    fn changed(&self) {
        self.counter().fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(self.counter());
    }

    /// The current generation (changes on every write or removal).
    pub(crate) fn generation(&self) -> u32 {
        self.counter().load(Ordering::SeqCst)
    }

    /// Reads a node with its permissions, as the toolstack sees it.
    pub(crate) fn node(&self, path: &str) -> Result<Option<Node>, BackendError> {
        let file = node_dir(&self.root, path)?.join(NODE_FILE);
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return Err(BackendError::Store),
        };
        parse_node(&bytes).map(Some).ok_or(BackendError::Store)
    }

    /// Writes `value` at `path` as domain `dom`.
    pub(crate) fn write(
        &self,
        dom: DomId,
        path: &str,
        value: &[u8],
        reader: Reader,
    ) -> Result<(), BackendError> {
        let dir = node_dir(&self.root, path)?;
        if !may_write(dom, path) || value.len() > MAX_VALUE_LEN {
            return Err(BackendError::Denied);
        }
        if let Some(old) = self.node(path)? {
            if dom != DOM0 && old.owner != dom {
                return Err(BackendError::Denied);
            }
        }
        fs::create_dir_all(&dir).map_err(|_| BackendError::Store)?;
        let reader = match reader {
            Reader::Everyone => "*".to_string(),
            Reader::Domain(d) => d.0.to_string(),
        };
        let tmp = dir.join(format!("{NODE_FILE}.{}.tmp", crate::unique_suffix()));
        let written = fs::File::create(&tmp).and_then(|mut f| {
            writeln!(f, "{} {reader}", dom.0)?;
            f.write_all(value)
        });
        let renamed = written.and_then(|()| fs::rename(&tmp, dir.join(NODE_FILE)));
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
            return Err(BackendError::Store);
        }
        self.changed();
        Ok(())
    }

    /// Reads `path` as domain `dom` into `buf`; see `Backend::store_read`.
    pub(crate) fn read(
        &self,
        dom: DomId,
        path: &str,
        buf: &mut [u8],
    ) -> Result<Option<usize>, BackendError> {
        let Some(node) = self.node(path)? else {
            return Ok(None);
        };
        let allowed = dom == DOM0
            || node.owner == dom
            || node.reader == Reader::Everyone
            || node.reader == Reader::Domain(dom);
        if !allowed {
            return Err(BackendError::Denied);
        }
        let n = node.value.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), node.value.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(Some(node.value.len()))
    }

    /// Removes `path` and everything below it, as domain `dom`. Refused as a
    /// whole if any node there belongs to another domain.
    pub(crate) fn remove(&self, dom: DomId, path: &str) -> Result<(), BackendError> {
        let dir = node_dir(&self.root, path)?;
        if !may_write(dom, path) {
            return Err(BackendError::Denied);
        }
        if dom != DOM0 && !self.owned_by(&dir, dom)? {
            return Err(BackendError::Denied);
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => return Err(BackendError::Store),
        }
        self.changed();
        Ok(())
    }

    /// Removes every node at or below `path` that `owner` owns (the
    /// toolstack cleaning up after a dead domain).
    pub(crate) fn remove_owned(&self, path: &str, owner: DomId) -> Result<(), BackendError> {
        let dir = node_dir(&self.root, path)?;
        self.remove_owned_in(&dir, owner)?;
        self.changed();
        Ok(())
    }

    fn remove_owned_in(&self, dir: &Path, owner: DomId) -> Result<(), BackendError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(_) => return Err(BackendError::Store),
        };
        for entry in entries {
            let entry = entry.map_err(|_| BackendError::Store)?;
            let path = entry.path();
            if entry.file_name() == NODE_FILE {
                let bytes = fs::read(&path).map_err(|_| BackendError::Store)?;
                if parse_node(&bytes).is_none_or(|n| n.owner == owner) {
                    fs::remove_file(&path).map_err(|_| BackendError::Store)?;
                }
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.remove_owned_in(&path, owner)?;
                // Only succeeds once nothing is left below.
                let _ = fs::remove_dir(&path);
            }
        }
        Ok(())
    }

    /// Whether every node at or below `dir` belongs to `dom`.
    fn owned_by(&self, dir: &Path, dom: DomId) -> Result<bool, BackendError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(_) => return Err(BackendError::Store),
        };
        for entry in entries {
            let entry = entry.map_err(|_| BackendError::Store)?;
            let path = entry.path();
            if entry.file_name() == NODE_FILE {
                let bytes = fs::read(&path).map_err(|_| BackendError::Store)?;
                if parse_node(&bytes).is_none_or(|n| n.owner != dom) {
                    return Ok(false);
                }
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) && !self.owned_by(&path, dom)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The names of the children of `path` (toolstack view).
    pub(crate) fn children(&self, path: &str) -> Result<Vec<String>, BackendError> {
        let dir = node_dir(&self.root, path)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(_) => return Err(BackendError::Store),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|_| BackendError::Store)?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Waits until the generation differs from `*seen` (then records the new
    /// one) or `timeout` passes. Like a xenstore watch, any change anywhere
    /// wakes the waiter; spurious wake-ups are allowed by the contract.
    pub(crate) fn wait(&self, seen: &mut u32, timeout: Option<Duration>) -> Wait {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let now = self.generation();
            if now != *seen {
                *seen = now;
                return Wait::Event;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Wait::TimedOut,
                },
            };
            sys::futex_wait(self.counter(), now, left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        let root = Path::new("/w/store");
        assert_eq!(
            node_dir(root, "/local/domain/1/name").unwrap(),
            Path::new("/w/store/local/domain/1/name")
        );
        for bad in ["", "/", "local", "/a//b", "/a/../b", "/a/./b", "/a/@node", "/a/b/", "/a b"] {
            assert!(node_dir(root, bad).is_err(), "{bad:?}");
        }
        assert!(node_dir(root, &format!("/{}", "a".repeat(MAX_PATH_LEN))).is_err());
    }

    #[test]
    fn write_permission_follows_the_home_directory() {
        assert!(may_write(DomId(3), "/local/domain/3/data/x"));
        assert!(!may_write(DomId(3), "/local/domain/3/"));
        assert!(!may_write(DomId(3), "/local/domain/31/x"));
        assert!(!may_write(DomId(3), "/local/domain/4/x"));
        assert!(may_write(DOM0, "/anything"));
    }

    #[test]
    fn node_format_round_trips_and_rejects_garbage() {
        let n = parse_node(b"3 *\nhello\nworld").unwrap();
        assert_eq!((n.owner, n.reader), (DomId(3), Reader::Everyone));
        assert_eq!(n.value, b"hello\nworld");
        let n = parse_node(b"0 7\n").unwrap();
        assert_eq!(n.reader, Reader::Domain(DomId(7)));
        for bad in [&b""[..], b"3 *", b"x 1\n", b"1 -1\n", b"70000 1\n"] {
            assert!(parse_node(bad).is_none());
        }
    }
}
