//! `portcullis demo --scenario admin`: the admin channel end to end on the
//! hosted platform. `portcullis admin` (a separate process speaking as the
//! world's domain 0, over cryptod's dom0 link) resets the operator's TOTP
//! secret and regenerates their recovery codes; the unlocker guest then
//! refuses the old secret's code, unlocks with the new one, unlocks once
//! with a recovery code and refuses it the second time; a replayed
//! (out-of-sequence) admin command is refused; the audit log verifies.

use crate::demo::{code_from_uri, settle, unix_now, Demo, Proc};
use crate::Failure;
use portcullis_platform::DomId;
use std::path::PathBuf;
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

/// `portcullis admin --world ... <rest>`, speaking as domain 0.
fn admin(demo: &Demo, prov: &std::path::Path, rest: &[&str]) -> Result<Proc, Failure> {
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

pub(crate) fn run(demo: &mut Demo, parts: Parts) -> Result<(), Failure> {
    let Parts { cryptod, collector, mut entropyd, mut agent, prov, uri } = parts;
    let mut checks: Vec<(String, bool)> = Vec::new();
    let t0 = Instant::now();

    // 1. A lost phone: a new secret, confirmed with a code from the "app".
    let mut reset = admin(demo, &prov, &["operator-reset", "--id", "operator", "--no-qr"])?;
    let (i, _) = reset.wait_for("otpauth://", 0, demo.step)?;
    let new_uri = reset.line(i).trim().to_string();
    reset.type_line(&code_from_uri(&new_uri, unix_now())?)?;
    let status = reset.wait_exit(demo.step)?;
    let ok = status == 0 && reset.wait_for("admin: ok", 0, demo.step).is_ok();
    checks.push(("operator-reset confirmed and applied".into(), ok));

    // 2. The old secret's code is refused at once; the new secret's works
    // (the next step's code: the confirming step is used up).
    let mut unlocker = demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, demo.step)?;
    let n = unlocker.count();
    unlocker.type_line(&code_from_uri(&uri, unix_now())?)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, demo.step)?;
    checks.push((
        "the old secret's code is refused after the reset".into(),
        l.contains("refused: fail"),
    ));
    let n = unlocker.count();
    unlocker.type_line(&code_from_uri(&new_uri, unix_now() + 30)?)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, demo.step)?;
    checks.push(("the new secret's code unlocks".into(), l.contains("unlocked")));
    let _ = unlocker.wait_exit(demo.step);
    demo.reap(&mut unlocker);

    // 3. Recovery codes: made by `portcullis admin`, one unlocks once.
    let codes_file = demo.dir.join("recovery-codes");
    let codes_arg = codes_file.to_string_lossy().to_string();
    let mut regen = admin(
        demo,
        &prov,
        &["recovery-regenerate", "--id", "operator", "--recovery-out", &codes_arg],
    )?;
    let status = regen.wait_exit(demo.step)?;
    checks.push(("recovery-regenerate applied".into(), status == 0));
    let codes = std::fs::read_to_string(&codes_file)
        .map_err(|e| format!("{}: {e}", codes_file.display()))?;
    let code = codes.lines().nth(2).ok_or("no recovery codes written")?.to_string();
    let mut unlocker = demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, demo.step)?;
    let n = unlocker.count();
    unlocker.type_line(&code)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, demo.step)?;
    checks.push(("a recovery code unlocks".into(), l.contains("unlocked")));
    let _ = unlocker.wait_exit(demo.step);
    demo.reap(&mut unlocker);
    let mut unlocker = demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, demo.step)?;
    let n = unlocker.count();
    unlocker.type_line(&code)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, demo.step)?;
    checks.push(("the used recovery code is refused".into(), l.contains("refused: replay")));
    demo.reap(&mut unlocker);

    // 4. An old sequence number (a replayed or reordered command): refused.
    let mut old = admin(demo, &prov, &["--seq", "1", "operator-remove", "--id", "operator"])?;
    let status = old.wait_exit(demo.step)?;
    let refused = old.wait_for("refused: replay", 0, demo.step).is_ok();
    checks.push(("an out-of-sequence admin command is refused".into(), status == 1 && refused));

    // 5. The audit log holds all of it and verifies.
    let acked = settle(&cryptod, &collector, demo.step)?;
    let (mut cryptod, mut collector) = (cryptod, collector);
    for p in [&mut cryptod, &mut entropyd, &mut agent, &mut collector] {
        p.kill();
    }
    let verified =
        crate::audit_cmd::verify_file(&prov.join("root.pub"), acked, &demo.dir.join("audit.log"));
    match &verified {
        Ok(s) => println!("== audit: {s}"),
        Err(e) => println!("== audit: FAILED: {e}"),
    }
    checks.push(("audit log complete".into(), verified.is_ok()));
    let log = std::fs::read(demo.dir.join("audit.log")).unwrap_or_default();
    let has = |what: &[u8]| log.windows(what.len()).any(|w| w == what);
    checks.push((
        "the admin commands and the recovery code use are audited".into(),
        has(b"operator_reset") && has(b"recovery_code_used"),
    ));

    println!();
    println!("== summary ({:.1} s)", t0.elapsed().as_secs_f64());
    crate::demo::verdict(&checks)
}
