//! The lifecycle scenario's operator steps: an operator reset (the old
//! secret's code is refused at once, the new one unlocks), regenerated
//! recovery codes (one unlocks once and is refused the second time), and a
//! replayed (out-of-sequence) admin command refused.

use super::Ctx;
use crate::demo::{code_from_uri, unix_now};
use crate::Failure;

pub(crate) fn steps(cx: &mut Ctx) -> Result<(), Failure> {
    let (demo, prov, uri) = (&mut *cx.demo, cx.prov.clone(), cx.uri.clone());
    let checks = &mut cx.checks;

    // 1. A lost phone: a new secret, confirmed with a code from the "app".
    let mut reset = super::admin(demo, &prov, &["operator-reset", "--id", "operator", "--no-qr"])?;
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
    let mut regen = super::admin(
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
    let mut old =
        super::admin(demo, &prov, &["--seq", "1", "operator-remove", "--id", "operator"])?;
    let status = old.wait_exit(demo.step)?;
    let refused = old.wait_for("refused: replay", 0, demo.step).is_ok();
    checks.push(("an out-of-sequence admin command is refused".into(), status == 1 && refused));
    cx.uri = new_uri;
    Ok(())
}
