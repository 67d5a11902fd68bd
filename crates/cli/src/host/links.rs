//! Placeholder: the audit collector and the unlock agent over dom0's
//! libxenvchan are built on another branch (issue 11); the lead drops this
//! file when merging that branch.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::peers::Peers;

/// The audit collector's settings.
pub struct CollectorConfig {
    pub cryptod: String,
    pub log: PathBuf,
}

/// The unlock agent's settings.
pub struct AgentConfig {
    pub unlocker: String,
    pub cryptod: String,
    pub root: PathBuf,
    pub volumes: Vec<(String, PathBuf)>,
    pub skew: u64,
    pub dry_run: bool,
}

/// Runs until `stop`; follows `peers` (reconnects when the domid changes or the link ends).
pub fn run_collector(
    peers: Peers,
    cfg: CollectorConfig,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let _ = (peers, &cfg.cryptod, &cfg.log, stop);
    Err("links: built on another branch".into())
}

/// Runs until `stop`; follows `peers` (reconnects when the domid changes or the link ends).
pub fn run_agent(peers: Peers, cfg: AgentConfig, stop: Arc<AtomicBool>) -> Result<(), String> {
    let AgentConfig { unlocker, cryptod, root, volumes, skew, dry_run } = cfg;
    let _ = (peers, unlocker, cryptod, root, volumes, skew, dry_run, stop);
    Err("links: built on another branch".into())
}
