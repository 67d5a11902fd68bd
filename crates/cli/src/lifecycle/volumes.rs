//! The lifecycle scenario's volumes steps (issue 12): a second volume is
//! bound (`admin volume-add` enrols its passphrase into a new LUKS2 file
//! and records the slot), listed (`volumes list`), granted by a replaced
//! ACL (a lint failure refused first) and opened by the unlock agent (dry
//! run) with the operator's code; then removed (slot wiped, no binding
//! left); policy_pd's name is revoked (its token request refused) and
//! restored.

use super::Ctx;
use crate::demo::{code_from_uri, unix_now, Proc};
use crate::Failure;
use portcullis_platform::ConfigItem;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The ACL the steps install: the default one, with `extra` granted.
const NEW_ACL: &str = "\
# lifecycle: the unlocker may also unlock the volume `extra`.
allow vm=unlocker  scopes=luks:unlock aud=unlock_agent volumes=data,extra
allow vm=policy_pd scopes=net:modify,net:read,token:revoke aud=policy_pd,netd,cryptod
deny  vm=*
";

/// Runs `portcullis volumes list FILE`; its output.
fn list(exe: &Path, file: &Path) -> String {
    Command::new(exe)
        .args(["volumes", "list"])
        .arg(file)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits for the next TOTP step, so a code for the step after it is one no
/// earlier step of the scenario used.
fn next_step() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    std::thread::sleep(Duration::from_millis(30_000 - now % 30_000 + 200));
}

/// Runs an admin command to its end: exit status, and whether `expect` was said.
fn admin(cx: &mut Ctx, rest: &[&str], expect: &str) -> Result<(i32, bool), Failure> {
    let mut p = super::admin(cx.demo, &cx.prov, rest)?;
    let status = p.wait_exit(cx.demo.step)?;
    let said = p.wait_for(expect, 0, Duration::from_secs(1)).is_ok();
    Ok((status, said))
}

pub(crate) fn steps(cx: &mut Ctx) -> Result<(), Failure> {
    let dir = cx.demo.dir.clone();
    let exe = cx.demo.exe().to_path_buf();
    let extra = dir.join("extra.luks");
    let boot_key = dir.join("extra.bootstrap-key");
    let extra_s = extra.to_string_lossy().to_string();
    let boot_s = boot_key.to_string_lossy().to_string();

    // 1. A second volume: a LUKS2 file opened today by a bootstrap key;
    // volume-add enrols cryptod's passphrase for it next to that key.
    let mut boot = [0u8; 32];
    getrandom::fill(&mut boot).map_err(|e| format!("OS random source: {e}"))?;
    let boot = hex::encode(boot);
    crate::keyfile::write_file(&boot_key, boot.as_bytes(), true)?;
    crate::provision::create_file_volume(&extra, 16, boot.as_bytes())?;
    let add = ["volume-add", "--name", "extra", "--device", &extra_s, "--key-file", &boot_s];
    let (status, said) = admin(cx, &add, "enrolled volume \"extra\"")?;
    cx.check("volume-add bound a second volume and enrolled its key slot", status == 0 && said);
    let listed = list(&exe, &extra);
    cx.check("volumes list shows the volume and its key slot", listed.contains(": extra slot 1"));

    // 2. The ACL: a lint failure is refused with its line, before sending;
    // the new one (version 1) grants `extra`.
    let bad = dir.join("bad.acl");
    let new = dir.join("new.acl");
    std::fs::write(&bad, "allow vm=unlocker scopes=luks:unlock aud=unlock_agent volumes=\n")
        .map_err(|e| format!("{}: {e}", bad.display()))?;
    std::fs::write(&new, NEW_ACL).map_err(|e| format!("{}: {e}", new.display()))?;
    let bad_s = bad.to_string_lossy().to_string();
    let new_s = new.to_string_lossy().to_string();
    let (status, said) =
        admin(cx, &["acl-replace", "--file", &bad_s, "--version", "1"], "acl line 1")?;
    cx.check("acl-replace refuses an ACL that fails the lint, with its line", status != 0 && said);
    let (status, said) =
        admin(cx, &["acl-replace", "--file", &new_s, "--version", "1"], "admin: ok")?;
    cx.check("acl-replace installed ACL version 1", status == 0 && said);
    let (status, said) =
        admin(cx, &["acl-replace", "--file", &new_s, "--version", "1"], "refused: denied")?;
    cx.check("acl-replace refuses a version that is not higher", status != 0 && said);

    // 3. The unlock agent, told about the new volume, opens it (dry run:
    // cryptsetup --test-passphrase) with the operator's code.
    let vol_data = format!("data={}", dir.join("data.luks").display());
    let vol_extra = format!("extra={extra_s}");
    let world_dir = cx.demo.world.dir().to_string_lossy().to_string();
    let root = cx.prov.join("root.pub").to_string_lossy().to_string();
    cx.demo.reap(&mut cx.agent);
    let agent_args = [
        "unlock-agent",
        "--world",
        &world_dir,
        "--root",
        &root,
        "--volume",
        &vol_data,
        "--volume",
        &vol_extra,
        "--dry-run",
    ];
    cx.agent = cx.demo.tool("unlock_agent", &agent_args)?;
    cx.agent.wait_for("unlock-agent: ready", 0, cx.demo.step)?;
    set_unlocker_volume(cx, "extra")?;
    let opened = unlock(cx)?;
    cx.check("the unlock agent opens the second volume with the operator's code", opened);

    // 4. Removed: the slot is wiped, no binding is left, and cryptod no
    // longer derives its passphrase.
    let rm = ["volume-remove", "--name", "extra", "--device", &extra_s, "--kill-slot"];
    let rm: Vec<&str> = rm.iter().copied().chain(["--key-file", &boot_s]).collect();
    let (status, said) = admin(cx, &rm, "key slots wiped: 1")?;
    let listed = list(&exe, &extra);
    cx.check(
        "volume-remove unbound the volume and wiped its key slot",
        status == 0 && said && listed.contains("no volume bound"),
    );
    let opened = unlock(cx)?;
    cx.check("a removed volume's unlock is refused", !opened);
    set_unlocker_volume(cx, "data")?;

    // 5. policy_pd's name revoked: its token request is refused at once;
    // restored, it gets one again.
    let (status, said) = admin(cx, &["identity-revoke", "--name", "policy_pd"], "admin: ok")?;
    cx.check("identity-revoke put policy_pd on the identity revocation list", status == 0 && said);
    let mut policy = cx.demo.guest("policy_pd")?;
    let pats = ["policy_pd: stopped", "policy_pd: applied", "revoked"];
    let (_, _, line) = policy.wait_any(&pats, 0, cx.demo.step)?;
    cx.demo.reap(&mut policy);
    cx.check("a revoked name's token request is refused", line.contains("revoked"));
    let (status, said) = admin(cx, &["identity-restore", "--name", "policy_pd"], "admin: ok")?;
    let mut policy = cx.demo.guest("policy_pd")?;
    let applied = policy.wait_for("policy_pd: applied", 0, cx.demo.step).is_ok();
    cx.demo.reap(&mut policy);
    cx.check("identity-restore: policy_pd gets its token again", status == 0 && said && applied);

    // 6. The unlocker's device id revoked: its code is refused before it is
    // checked (the step stays unused); restored, the same code unlocks.
    let (status, said) = admin(cx, &["identity-revoke", "--device", "unlocker"], "admin: ok")?;
    cx.check("identity-revoke --device put the unlocker's device on the list", status == 0 && said);
    next_step();
    let line = unlock_line(cx)?;
    cx.check(
        "a revoked device's code is refused",
        line.contains("refused: denied (device revoked)"),
    );
    let (status, said) = admin(cx, &["identity-restore", "--device", "unlocker"], "admin: ok")?;
    let opened = unlock_line(cx)?.contains("unlocked");
    cx.check(
        "identity-restore --device: the same step's code then unlocks (none was used)",
        status == 0 && said && opened,
    );

    cx.audited.extend(["volume_add", "volume_remove", "acl_replace", "identity_revoke"]);
    cx.audited.extend(["identity_restore", "device_revoke", "device_restore"]);
    Ok(())
}

/// Points the unlocker's settings at `volume` (as host.toml would).
fn set_unlocker_volume(cx: &mut Ctx, volume: &str) -> Result<(), Failure> {
    let path = cx.demo.dir.join("host.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.replace("volume = \"data\"", &format!("volume = \"{volume}\""));
    let text = text.replace("volume = \"extra\"", &format!("volume = \"{volume}\""));
    let host = crate::host::config::parse(&path, &text).map_err(|e| e.to_string())?;
    let unlocker = host.guests.get("unlocker").ok_or("host.toml: no unlocker")?;
    let dom =
        cx.demo.world.resolve("unlocker").map_err(|e| format!("{e}"))?.ok_or("no unlocker")?;
    let settings = unlocker.settings.as_deref().unwrap_or_default();
    cx.demo
        .world
        .set_config(dom, ConfigItem::Settings, settings)
        .map_err(|e| Failure::Error(format!("unlocker config: {e}")))
}

/// The unlocker with a fresh code: whether it said "unlocked".
fn unlock(cx: &mut Ctx) -> Result<bool, Failure> {
    next_step();
    Ok(unlock_line(cx)?.contains("unlocked"))
}

/// The unlocker with the current step's code: the line that answered it.
fn unlock_line(cx: &mut Ctx) -> Result<String, Failure> {
    let mut unlocker: Proc = cx.demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, cx.demo.step)?;
    let n = unlocker.count();
    unlocker.type_line(&code_from_uri(&cx.uri, unix_now() + 30)?)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, cx.demo.step)?;
    cx.demo.reap(&mut unlocker);
    Ok(l)
}
