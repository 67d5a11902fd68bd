//! [`World`]: the launcher's (toolstack's) view of one run.
//!
//! ```text
//! <world>/
//!   store.gen                      store generation (futex word)
//!   store/<path>/@node             store nodes: "<owner> <reader>\n<value>"
//!                                  (dom0 writes /local/domain/<id>/name and
//!                                  /local/domain/<id>/measurement)
//!   domains/<id>/                  domain id reservations
//!   config/<name>/<item>           boot-time configuration items
//!   grants/<owner>/<n>/to-<peer>   granted pages
//!   evtchn/<dom>-<port>, <dom>.bell  event channels and doorbells
//!   notify/<dom>/<id>              pending unmap notifications
//! ```

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_platform::ConfigItem;
use portcullis_vchan::DomId;

use crate::backend::{fire_recorded, grants_dir, notify_dir};
use crate::store::{Reader, Store, DOM0};
use crate::{evtchn, HostedBackend, HostedError, DOMID_ENV, WORLD_ENV};

/// Longest domain name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// One run's shared directory, as the launcher sees it.
#[derive(Debug, Clone)]
pub struct World {
    dir: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn name_path(dom: DomId) -> String {
    format!("/local/domain/{}/name", dom.0)
}

fn measurement_path(dom: DomId) -> String {
    format!("/local/domain/{}/measurement", dom.0)
}

impl World {
    /// Creates a world in `dir` (which may exist, but must not already hold
    /// a world). Dom0, the launcher itself, is named `Domain-0`.
    pub fn create(dir: &Path) -> Result<Self, HostedError> {
        if dir.join("store.gen").exists() {
            return Err(HostedError::Exists);
        }
        for sub in ["store", "domains", "config", "grants", "evtchn", "notify"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::File::create(dir.join("store.gen"))?.set_len(4096)?;
        let world = World { dir: dir.to_path_buf() };
        world.store()?.write(DOM0, &name_path(DOM0), b"Domain-0", Reader::Everyone)?;
        Ok(world)
    }

    /// Opens an existing world.
    pub fn open(dir: &Path) -> Result<Self, HostedError> {
        if !dir.join("store.gen").is_file() {
            return Err(HostedError::NoWorld);
        }
        Ok(World { dir: dir.to_path_buf() })
    }

    /// Opens the world named by `PORTCULLIS_WORLD`.
    pub fn from_env() -> Result<Self, HostedError> {
        let dir = std::env::var_os(WORLD_ENV).ok_or(HostedError::Env(WORLD_ENV))?;
        Self::open(Path::new(&dir))
    }

    /// The world directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn store(&self) -> Result<Store, HostedError> {
        Ok(Store::open(&self.dir)?)
    }

    /// Registers a domain called `name` and returns its id (the lowest free
    /// id from 1). Writes `/local/domain/<id>/name`, owned by dom0 and
    /// readable by every domain.
    pub fn add_domain(&self, name: &str) -> Result<DomId, HostedError> {
        if !valid_name(name) {
            return Err(HostedError::BadName);
        }
        if self.resolve(name)?.is_some() {
            return Err(HostedError::Exists);
        }
        for id in 1..=u16::MAX {
            match fs::create_dir(self.dir.join("domains").join(id.to_string())) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
            let dom = DomId(id);
            self.store()?.write(DOM0, &name_path(dom), name.as_bytes(), Reader::Everyone)?;
            fs::create_dir_all(self.dir.join("config").join(name))?;
            return Ok(dom);
        }
        Err(HostedError::Exhausted)
    }

    /// The name of domain `dom`.
    pub fn domain_name(&self, dom: DomId) -> Result<String, HostedError> {
        let node = self
            .store()?
            .node(&name_path(dom))?
            .filter(|n| n.owner == DOM0)
            .ok_or(HostedError::NoSuchDomain)?;
        String::from_utf8(node.value).map_err(|_| HostedError::BadName)
    }

    /// The id of the domain called `name`, from the toolstack's name nodes.
    pub fn resolve(&self, name: &str) -> Result<Option<DomId>, HostedError> {
        let store = self.store()?;
        for child in store.children("/local/domain")? {
            let Ok(id) = child.parse::<u16>() else {
                continue;
            };
            let dom = DomId(id);
            let Some(node) = store.node(&name_path(dom))? else {
                continue;
            };
            if node.owner == DOM0 && node.value == name.as_bytes() {
                return Ok(Some(dom));
            }
        }
        Ok(None)
    }

    /// Publishes the launcher's measurement of the image domain `dom` runs
    /// (the SHA-256 of the executable it starts, the hosted analogue of
    /// the kernel xl loads): `/local/domain/<id>/measurement`, 64
    /// lowercase hex digits, owned by dom0 (a domain cannot change it).
    pub fn set_measurement(&self, dom: DomId, digest: &[u8; 32]) -> Result<(), HostedError> {
        self.domain_name(dom)?;
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.store()?.write(DOM0, &measurement_path(dom), hex.as_bytes(), Reader::Everyone)?;
        Ok(())
    }

    /// The measurement dom0 published for `dom`: `None` if there is none;
    /// a node not owned by dom0, or not 64 lowercase hex digits, is
    /// [`HostedError::BadMeasurement`].
    pub fn measurement(&self, dom: DomId) -> Result<Option<[u8; 32]>, HostedError> {
        let Some(node) = self.store()?.node(&measurement_path(dom))? else {
            return Ok(None);
        };
        if node.owner != DOM0 {
            return Err(HostedError::BadMeasurement);
        }
        portcullis_platform::parse_measurement_hex(&node.value)
            .map(Some)
            .ok_or(HostedError::BadMeasurement)
    }

    /// A command that runs `program` as domain `dom` of this world.
    pub fn command_for(&self, dom: DomId, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env(WORLD_ENV, &self.dir).env(DOMID_ENV, dom.0.to_string());
        cmd
    }

    /// Gives domain `dom` the configuration item `item` (replacing it).
    pub fn set_config(
        &self,
        dom: DomId,
        item: ConfigItem,
        bytes: &[u8],
    ) -> Result<(), HostedError> {
        let dir = self.dir.join("config").join(self.domain_name(dom)?);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{}.tmp", crate::unique_suffix()));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes));
        written.and_then(|()| fs::rename(&tmp, dir.join(item.name())))?;
        Ok(())
    }

    /// Removes configuration item `item` of `dom` (absent already is fine):
    /// a launcher that must not leave a secret item on disk clears it once
    /// the guest has read it.
    pub fn clear_config(&self, dom: DomId, item: ConfigItem) -> Result<(), HostedError> {
        let path = self.dir.join("config").join(self.domain_name(dom)?).join(item.name());
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// A backend acting as domain `dom` (for the launcher, tests and tools;
    /// guests use [`crate::HostedPlatform`]).
    pub fn backend(&self, dom: DomId) -> Result<HostedBackend, HostedError> {
        HostedBackend::open(&self.dir, dom)
    }

    /// Deletes the world directory and everything in it (every guest
    /// process of the run should have exited).
    pub fn remove(self) -> Result<(), HostedError> {
        Ok(fs::remove_dir_all(&self.dir)?)
    }

    /// Cleans up after domain `dom` died without closing (a crash or
    /// `SIGKILL`), as Xen does on domain destruction: performs its pending
    /// unmap notifications (clearing the live bytes its peers watch and
    /// signalling them), closes its event channels, revokes its grants
    /// (mappings its peers hold stay valid) and removes the store nodes it
    /// owned. The domain keeps its id and name, so it can be started again.
    pub fn reap(&self, dom: DomId) -> Result<(), HostedError> {
        if dom == DOM0 {
            return Err(HostedError::NoSuchDomain);
        }
        fire_recorded(&self.dir, dom);
        for port in evtchn::ports_of(&self.dir, dom) {
            evtchn::close_port_file(&self.dir, dom, port);
        }
        remove_if_present(&grants_dir(&self.dir, dom))?;
        remove_if_present(&notify_dir(&self.dir, dom))?;
        self.store()?.remove_owned(&format!("/local/domain/{}", dom.0), dom)?;
        Ok(())
    }
}

fn remove_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("cryptod"));
        assert!(valid_name("policy_pd-2"));
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
