//! Measured launch: the SHA-256 of the kernel file xl loaded for a domain.
//!
//! The kernel's path is read from the domain's configuration as libxl
//! recorded it when it created the domain (its `libxl-json` userdata,
//! `/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json`: the whole
//! `libxl_domain_config` as JSON, NUL-terminated; the kernel is
//! `b_info.kernel`), never from our copy of the cfg file: what counts is
//! what xl was told to boot. Everything here is hostile input: the
//! directory listing, the JSON and the kernel file are bounded, parsed
//! strictly, and every error names the file.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Where libxl keeps its per-domain userdata (`XEN_LIB_DIR`).
pub const USERDATA_DIR: &str = "/var/lib/xen";
/// The userdata id of the domain configuration libxl records.
pub const USERDATA_ID: &str = "libxl-json";
/// Longest `libxl-json` file read (a domain's is a few KiB).
pub const MAX_USERDATA_LEN: u64 = 256 * 1024;
/// Most directory entries looked at in [`USERDATA_DIR`].
pub const MAX_DIR_ENTRIES: usize = 16 * 1024;
/// Largest kernel file hashed (a guest image is at most 256 KiB).
pub const MAX_IMAGE_LEN: u64 = 1024 * 1024;
/// Longest kernel path accepted.
pub const MAX_PATH_LEN: usize = 4096;

/// The name of `domid`'s `libxl-json` userdata among `entries` (a
/// directory listing): `userdata-d.<domid>.<uuid>.libxl-json` with a
/// canonical lowercase UUID. None, or more than one, is an error.
pub fn userdata_name<I: IntoIterator<Item = String>>(
    entries: I,
    domid: u16,
) -> Result<String, String> {
    let prefix = format!("userdata-d.{domid}.");
    let suffix = format!(".{USERDATA_ID}");
    let mut found: Vec<String> = Vec::new();
    for (n, entry) in entries.into_iter().enumerate() {
        if n >= MAX_DIR_ENTRIES {
            return Err(format!("more than {MAX_DIR_ENTRIES} entries"));
        }
        let uuid = entry.strip_prefix(&prefix).and_then(|r| r.strip_suffix(&suffix));
        if uuid.is_some_and(is_uuid) {
            found.push(entry);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("no {prefix}<uuid>{suffix} (xl has not recorded the domain yet)")),
        n => {
            Err(format!("{n} files {prefix}<uuid>{suffix}; which one is this domain's is unknown"))
        }
    }
}

/// `8-4-4-4-12` lowercase hex digits.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

#[derive(Deserialize)]
struct DomainConfig {
    b_info: BuildInfo,
}

#[derive(Deserialize)]
struct BuildInfo {
    kernel: Option<String>,
}

/// The kernel path in a `libxl-json` document (`bytes`, read from
/// `file`): valid UTF-8 JSON, at most one trailing NUL, `b_info.kernel`
/// an absolute path of at most [`MAX_PATH_LEN`] bytes without control
/// characters. Errors name `file`.
pub fn kernel_path(file: &Path, bytes: &[u8]) -> Result<PathBuf, String> {
    let bad = |why: &str| format!("{}: {why}", file.display());
    if bytes.len() as u64 > MAX_USERDATA_LEN {
        return Err(bad(&format!("more than {MAX_USERDATA_LEN} bytes")));
    }
    let json = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    let config: DomainConfig = serde_json::from_slice(json)
        .map_err(|e| bad(&format!("not libxl's domain config: {e}")))?;
    let kernel = config.b_info.kernel.ok_or_else(|| bad("b_info.kernel missing or null"))?;
    if kernel.is_empty() || kernel.len() > MAX_PATH_LEN {
        return Err(bad(&format!("b_info.kernel empty or longer than {MAX_PATH_LEN} bytes")));
    }
    if !kernel.starts_with('/') || kernel.chars().any(char::is_control) {
        return Err(bad("b_info.kernel is not an absolute path without control characters"));
    }
    Ok(PathBuf::from(kernel))
}

/// Reads at most `max` bytes of `path`; a longer file is an error.
fn read_at_most(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{}: more than {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// The SHA-256 of the file at `path`, refused if larger than
/// [`MAX_IMAGE_LEN`] or not a regular file.
pub fn hash_image(path: &Path) -> Result<[u8; 32], String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let bytes = read_at_most(path, MAX_IMAGE_LEN)?;
    Ok(Sha256::digest(&bytes).into())
}

/// What [`measure`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// The kernel file xl loaded.
    pub kernel: PathBuf,
    /// Its SHA-256.
    pub digest: [u8; 32],
}

/// Measures domain `domid`: its `libxl-json` in `dir` (normally
/// [`USERDATA_DIR`]), the kernel path in it, the kernel's SHA-256.
pub fn measure(dir: &Path, domid: u16) -> Result<Measurement, String> {
    let listing = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let entries = listing
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .take(MAX_DIR_ENTRIES + 1);
    let name = userdata_name(entries, domid).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join(name);
    let bytes = read_at_most(&file, MAX_USERDATA_LEN)?;
    let kernel = kernel_path(&file, &bytes)?;
    let digest = hash_image(&kernel)?;
    Ok(Measurement { kernel, digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "0b6a6f3c-1d2e-4f50-8a9b-0c1d2e3f4a5b";

    /// A `libxl-json` as libxl 4.17 writes it for our cfg (abridged: the
    /// parser ignores what it does not need), NUL-terminated.
    fn libxl_json(kernel: &str) -> Vec<u8> {
        let mut v = format!(
            r#"{{
    "c_info": {{
        "type": "pvh",
        "name": "policy_pd",
        "uuid": "{UUID}",
        "run_hotplug_scripts": "True"
    }},
    "b_info": {{
        "max_vcpus": 1,
        "avail_vcpus": [0],
        "max_memkb": 2048,
        "target_memkb": 2048,
        "kernel": "{kernel}",
        "type.pvh": {{}},
        "arch_arm": {{}}
    }},
    "on_reboot": "restart",
    "on_crash": "restart"
}}
"#
        )
        .into_bytes();
        v.push(0);
        v
    }

    #[test]
    fn the_kernel_path_is_read_from_libxls_record() {
        let f = Path::new("/var/lib/xen/userdata-d.7.x.libxl-json");
        let path = kernel_path(f, &libxl_json("/usr/lib/portcullis/policy_pd")).unwrap();
        assert_eq!(path, Path::new("/usr/lib/portcullis/policy_pd"));
        // Without the NUL too.
        let mut plain = libxl_json("/k");
        plain.pop();
        assert_eq!(kernel_path(f, &plain).unwrap(), Path::new("/k"));
    }

    #[test]
    fn hostile_records_are_refused_naming_the_file() {
        let f = Path::new("/var/lib/xen/userdata-d.7.x.libxl-json");
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"not json".to_vec(),
            br#"{"b_info": {}}"#.to_vec(),
            br#"{"b_info": {"kernel": null}}"#.to_vec(),
            br#"{"b_info": {"kernel": 7}}"#.to_vec(),
            br#"{"c_info": {}}"#.to_vec(),
            libxl_json(""),
            libxl_json("relative/kernel"),
            libxl_json("/with\\nnewline"),
            [libxl_json("/k"), b"trailing".to_vec()].concat(),
            [b"[".repeat(200), b"]".repeat(200)].concat(),
            vec![b' '; MAX_USERDATA_LEN as usize + 1],
            libxl_json(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
        ];
        for bytes in cases {
            let e = kernel_path(f, &bytes).unwrap_err();
            assert!(e.starts_with("/var/lib/xen/userdata-d.7.x.libxl-json: "), "{e}");
        }
    }

    #[test]
    fn the_domains_own_record_is_found_exactly_once() {
        let own = format!("userdata-d.7.{UUID}.libxl-json");
        let list = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let entries = list(&[
            "userdata-d.17.0b6a6f3c-1d2e-4f50-8a9b-0c1d2e3f4a5b.libxl-json",
            "userdata-d.7.0b6a6f3c-1d2e-4f50-8a9b-0c1d2e3f4a5b.domain-userdata-lock",
            "userdata-d.7.../../etc.libxl-json",
            "userdata-d.7.0B6A6F3C-1D2E-4F50-8A9B-0C1D2E3F4A5B.libxl-json",
            &own,
        ]);
        assert_eq!(userdata_name(entries, 7).unwrap(), own);
        assert!(userdata_name(list(&["xl"]), 7).unwrap_err().contains("not recorded"));
        let other = format!("userdata-d.7.{}.libxl-json", UUID.replace('0', "1"));
        let two = list(&[&own, &other]);
        assert!(userdata_name(two, 7).unwrap_err().starts_with("2 files"));
        let many = (0..=MAX_DIR_ENTRIES).map(|i| i.to_string());
        assert!(userdata_name(many, 7).is_err());
    }

    #[test]
    fn a_domain_is_measured_from_its_recorded_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("policy_pd");
        fs::write(&kernel, b"the image").unwrap();
        let rec = dir.path().join(format!("userdata-d.7.{UUID}.libxl-json"));
        fs::write(&rec, libxl_json(kernel.to_str().unwrap())).unwrap();
        let m = measure(dir.path(), 7).unwrap();
        assert_eq!(m.kernel, kernel);
        assert_eq!(m.digest, <[u8; 32]>::from(Sha256::digest(b"the image")));
        // Another domain id has no record.
        assert!(measure(dir.path(), 8).unwrap_err().contains("userdata-d.8."));
        // An image over the bound is refused, naming it.
        fs::write(&kernel, vec![0u8; MAX_IMAGE_LEN as usize + 1]).unwrap();
        let e = measure(dir.path(), 7).unwrap_err();
        assert!(e.contains("policy_pd: more than 1048576 bytes"), "{e}");
        // A directory is not an image.
        fs::write(&rec, libxl_json(dir.path().to_str().unwrap())).unwrap();
        assert!(measure(dir.path(), 7).unwrap_err().contains("not a regular file"));
    }
}
