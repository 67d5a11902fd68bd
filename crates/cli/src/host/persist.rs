//! Durable files on dom0's disk: a persisted item replaces the old copy
//! only once it is entirely on disk (temporary file in the same directory,
//! written, fsynced, renamed over the old one, directory fsynced), so a
//! crash or power cut at any point leaves either the old or the new
//! content, never a mix. Only then may the guest be told (the ack).

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::Path;

/// Replaces `path` with `bytes` durably; the file's mode is 0600. On error
/// the old file (if any) is untouched and no temporary file is left.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{}: no file name", path.display()))
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // tempfile creates the file with mode 0600 and removes it on drop.
    let mut tmp = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Reads `path`, refusing files longer than `max` bytes (the error names
/// the file and the limit).
pub fn read_bounded(path: &Path, max: usize) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut out)?;
    if out.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is longer than {max} bytes", path.display()),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn content_is_replaced_with_mode_0600_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed-state");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_durably(&path, b"new state").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new state");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(entries(dir.path()), ["sealed-state"]);
        replace_durably(&path, b"").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_failure_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the
        // temporary file was written.
        let path = dir.path().join("sealed-state");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), b"old").unwrap();
        assert!(replace_durably(&path, b"new").is_err());
        assert_eq!(std::fs::read(path.join("keep")).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["sealed-state"], "no temporary file left");
        // A missing directory fails before anything is written.
        assert!(replace_durably(&dir.path().join("nope/x"), b"new").is_err());
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        std::fs::write(&path, [7u8; 33]).unwrap();
        assert_eq!(read_bounded(&path, 33).unwrap(), [7u8; 33]);
        let e = read_bounded(&path, 32).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("longer than 32 bytes"), "{e}");
        assert!(read_bounded(&dir.path().join("none"), 32).is_err());
    }
}
