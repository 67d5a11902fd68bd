//! `portcullis demo --scenario lifecycle`: years of operation on the hosted
//! platform, without re-provisioning. Everything is driven through
//! `portcullis admin` (a separate process speaking as the world's domain 0,
//! over cryptod's dom0 link) against one running cryptod, and checked from
//! the outside: by the guests' behaviour and by the audit log.
//!
//! Each area is a module with `steps(&mut Ctx)`, run in order:
//! - [`operators`]: operator reset, recovery codes, replayed commands;
//! - [`keys`]: signing-key rotation and revocation, root rotation, token
//!   revocation;
//! - [`volumes`]: volumes, the ACL, the identity revocation list;
//! - [`backup`]: backup, and restore on a new host.
//!
//! `--scenario admin` runs only [`operators`]. The scenario ends by checking
//! that the audit log is complete and verifies.

mod backup;
mod keys;
mod operators;
mod volumes;

use crate::demo::{settle, Demo, Proc, Scenario};
use crate::Failure;
use portcullis_platform::DomId;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The processes the scenario takes over from the demo's setup.
pub(crate) struct Parts {
    pub(crate) cryptod: Proc,
    pub(crate) collector: Proc,
    pub(crate) entropyd: Proc,
    pub(crate) agent: Proc,
    /// The provisioning directory (admin.key, root.pub).
    pub(crate) prov: PathBuf,
    /// The operator's provisioned otpauth URI (the old secret).
    pub(crate) uri: String,
}

/// What every step sees: the running world, and the checks so far.
pub(crate) struct Ctx<'a> {
    pub(crate) demo: &'a mut Demo,
    /// cryptod (a step that restarts it puts the new process here).
    pub(crate) cryptod: Proc,
    /// The audit collector (it writes `demo.dir/audit.log`).
    pub(crate) collector: Proc,
    pub(crate) entropyd: Proc,
    /// The dom0 unlock agent.
    pub(crate) agent: Proc,
    /// The provisioning directory (admin.key, admin.pub, root.pub, ...).
    pub(crate) prov: PathBuf,
    /// The operator's current otpauth URI (a reset replaces it).
    pub(crate) uri: String,
    /// Every check: what was expected, and whether it held.
    pub(crate) checks: Vec<(String, bool)>,
    /// Audit actions that must appear in the final log (each step adds
    /// the ones its commands produce).
    pub(crate) audited: Vec<&'static str>,
}

impl Ctx<'_> {
    /// Records one check.
    pub(crate) fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }
}

/// `portcullis admin --world ... <rest>`, speaking as domain 0.
pub(crate) fn admin(demo: &Demo, prov: &Path, rest: &[&str]) -> Result<Proc, Failure> {
    let mut cmd = Command::new(demo.exe());
    cmd.arg("admin")
        .arg("--world")
        .arg(demo.world.dir())
        .arg("--key")
        .arg(prov.join("admin.key"))
        .arg("--root")
        .arg(prov.join("root.pub"))
        .args(rest);
    Proc::spawn("admin", DomId(0), cmd)
}

pub(crate) fn run(demo: &mut Demo, parts: Parts, scenario: Scenario) -> Result<(), Failure> {
    let Parts { cryptod, collector, entropyd, agent, prov, uri } = parts;
    let t0 = Instant::now();
    let mut cx = Ctx {
        demo,
        cryptod,
        collector,
        entropyd,
        agent,
        prov,
        uri,
        checks: Vec::new(),
        audited: vec!["operator_reset", "recovery_code_used"],
    };
    operators::steps(&mut cx)?;
    if scenario == Scenario::Lifecycle {
        keys::steps(&mut cx)?;
        volumes::steps(&mut cx)?;
        backup::steps(&mut cx)?;
    }

    // Last: the audit log holds all of it and verifies.
    let acked = settle(&cx.cryptod, &cx.collector, cx.demo.step)?;
    for p in [&mut cx.cryptod, &mut cx.entropyd, &mut cx.agent, &mut cx.collector] {
        p.kill();
    }
    let log_path = cx.demo.dir.join("audit.log");
    let verified = crate::audit_cmd::verify_file(&cx.prov.join("root.pub"), acked, &log_path);
    match &verified {
        Ok(s) => println!("== audit: {s}"),
        Err(e) => println!("== audit: FAILED: {e}"),
    }
    cx.check("audit log complete", verified.is_ok());
    let log = std::fs::read(&log_path).unwrap_or_default();
    let has = |what: &[u8]| log.windows(what.len()).any(|w| w == what);
    let missing: Vec<&str> = cx.audited.iter().copied().filter(|a| !has(a.as_bytes())).collect();
    if !missing.is_empty() {
        println!("== audit: missing actions: {}", missing.join(", "));
    }
    cx.check("every admin command and its effect is audited", missing.is_empty());

    println!();
    println!("== summary ({:.1} s)", t0.elapsed().as_secs_f64());
    crate::demo::verdict(&cx.checks)
}
