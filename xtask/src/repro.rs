//! `cargo xtask repro`: the guest images are reproducible. HEAD is cloned
//! into two fresh directories whose paths differ (in length too), each clone
//! builds its guest images with its own `cargo xtask build --target xen` and
//! its own target directory, and the SHA-256 of every image must match.
//! Neither image may hold the path it was built at or cargo's home.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{cargo_home, root, run, GUESTS, GUEST_TARGET};

/// The two clones, under one temporary directory: different lengths, so a
/// leaked path would also move everything after it.
const CLONES: [&str; 2] = ["a", "built-at-a-longer-path/b"];

pub fn repro() -> Result<(), String> {
    let start = Instant::now();
    let head = git_out(&root(), &["rev-parse", "HEAD"])?;
    let dirty = git_out(&root(), &["status", "--porcelain", "--untracked-files=no"])?;
    if !dirty.is_empty() {
        println!("note: uncommitted changes are not part of the comparison (it builds {head})");
    }
    let base = std::env::temp_dir().join(format!("portcullis-repro-{}", std::process::id()));
    if base.exists() {
        std::fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    }
    let cargo_home = cargo_home()?;
    let mut columns = Vec::new();
    for (i, rel) in CLONES.iter().enumerate() {
        let dir = base.join(rel);
        println!("--- build {} of 2 at {}", i + 1, dir.display());
        clone(&head, &dir)?;
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // Each clone builds into its own target/ (the default), never a shared one.
        c.current_dir(&dir)
            .env_remove("CARGO_TARGET_DIR")
            .args(["xtask", "build", "--target", "xen"]);
        run(&format!("cargo xtask build --target xen in {}", dir.display()), &mut c)?;
        let images = dir.join("target").join(GUEST_TARGET).join("guest");
        let mut hashes = Vec::new();
        for g in GUESTS {
            let path = images.join(g);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for leak in [&dir, &cargo_home] {
                let needle = leak.to_string_lossy();
                if contains(&bytes, needle.as_bytes()) {
                    return Err(format!(
                        "{} holds the path `{needle}`: a path is not remapped (kept {})",
                        path.display(),
                        base.display()
                    ));
                }
            }
            hashes.push(sha256(&path)?);
        }
        columns.push(hashes);
    }
    let differ = report(&columns[0], &columns[1]);
    println!("repro took {:.0} s", start.elapsed().as_secs_f64());
    if differ.is_empty() {
        std::fs::remove_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        println!("the {} guest images are bit-identical across both clones", GUESTS.len());
        Ok(())
    } else {
        Err(format!(
            "images differ between the two clones: {} (both trees kept under {}; compare them \
             with diffoscope)",
            differ.join(", "),
            base.display()
        ))
    }
}

/// Prints the two columns of hashes; returns the guests whose images differ.
fn report(a: &[String], b: &[String]) -> Vec<&'static str> {
    println!("{:<10} {:<64} {:<64} same", "image", "SHA-256 at clone 1", "SHA-256 at clone 2");
    let mut differ = Vec::new();
    for ((g, ha), hb) in GUESTS.iter().zip(a).zip(b) {
        let same = ha == hb;
        println!("{g:<10} {ha:<64} {hb:<64} {}", if same { "yes" } else { "NO" });
        if !same {
            differ.push(*g);
        }
    }
    differ
}

fn clone(head: &str, dir: &Path) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    run(
        &format!("git clone {} {}", root().display(), dir.display()),
        Command::new("git").args(["clone", "--quiet", "--no-checkout"]).arg(root()).arg(dir),
    )?;
    run(
        &format!("git checkout {head}"),
        Command::new("git").arg("-C").arg(dir).args(["checkout", "--quiet", "--detach", head]),
    )
}

fn git_out(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("git {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The lowercase hex SHA-256 of a file (coreutils' `sha256sum`).
pub(crate) fn sha256(path: &PathBuf) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg("--")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !out.status.success() {
        return Err(format!("sha256sum {}: {}", path.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text.split_whitespace().next().unwrap_or_default();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha256sum {}: unexpected output `{}`", path.display(), text.trim()));
    }
    Ok(hash.to_ascii_lowercase())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_clone_paths_differ_in_length() {
        assert_ne!(CLONES[0].len(), CLONES[1].len());
    }

    #[test]
    fn report_names_each_image_that_differs() {
        let a: Vec<String> = GUESTS.iter().map(|g| format!("{g}-hash")).collect();
        assert!(report(&a, &a).is_empty());
        let mut b = a.clone();
        b[1] = "other".into();
        assert_eq!(report(&a, &b), vec![GUESTS[1]]);
    }

    #[test]
    fn a_path_is_found_anywhere_in_an_image() {
        assert!(contains(b"xx/tmp/p/a/src/lib.rsyy", b"/tmp/p/a"));
        assert!(!contains(b"/tmp/p/", b"/tmp/p/a"));
        assert!(!contains(b"anything", b""));
    }
}
