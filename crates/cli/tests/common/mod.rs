//! What the process-level tests share: the guest binaries they start.

use std::path::PathBuf;
use std::process::Command;

/// Builds `guests` (in the same profile as the test running) and returns the
/// directory that holds them next to `portcullis`.
pub fn guests_dir(guests: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet");
    for g in guests {
        cmd.args(["-p", g]);
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build for the guests");
    assert!(status.success(), "building the guests failed");
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_portcullis")).parent().unwrap().to_path_buf();
    for g in guests {
        assert!(dir.join(g).exists(), "guest {g} not found in {}", dir.display());
    }
    dir
}
