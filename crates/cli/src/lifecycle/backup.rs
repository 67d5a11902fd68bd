//! The lifecycle scenario's backup steps: `portcullis backup create` backs
//! up the running cryptod's state (the sealed state it last made durable)
//! to a recovery key; `portcullis backup restore` opens it on a "new host"
//! (another directory, a KEK under another passphrase); a wrong recovery
//! key is refused; then cryptod is stopped and started again from the
//! restored directory, with the new host's KEK, and that cryptod answers an
//! unlock (a recovery code: the agent's `cryptsetup --test-passphrase` on
//! the same LUKS volume checks the derived passphrase). Its first audit
//! record says `restored_from`.

use super::Ctx;
use crate::demo::settle;
use crate::Failure;
use portcullis_platform::ConfigItem;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The "new host"'s KEK passphrase (public: the demo's).
const NEW_HOST_PASSPHRASE: &str = "lifecycle new host passphrase (public, demo only)";

fn run(exe: &Path, args: &[&std::ffi::OsStr], stdin: Option<&str>) -> Result<Output, Failure> {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    if let Some(mut i) = child.stdin.take() {
        if let Some(text) = stdin {
            let _ = writeln!(i, "{text}");
        }
    }
    child.wait_with_output().map_err(|e| Failure::Error(format!("{}: {e}", exe.display())))
}

fn say(what: &str, o: &Output) {
    for l in
        String::from_utf8_lossy(&o.stdout).lines().chain(String::from_utf8_lossy(&o.stderr).lines())
    {
        if !l.starts_with("recovery key: ") {
            println!("  [{what}] {l}");
        }
    }
}

pub(crate) fn steps(cx: &mut Ctx) -> Result<(), Failure> {
    println!("== backup: create from the running cryptod's state, restore on a new host");
    let step = cx.demo.step;
    let dir = cx.demo.dir.clone();
    let exe = cx.demo.exe().to_path_buf();
    // What cryptod last made durable: one consistent file (replaced atomically).
    settle(&cx.cryptod, &cx.collector, step)?;
    let live = cx.demo.world.dir().join("config/cryptod/sealed-state");
    let pass = dir.join("kek-pass.demo");
    std::fs::write(&pass, crate::provision::DEMO_PASSPHRASE)
        .map_err(|e| format!("{}: {e}", pass.display()))?;
    let file = dir.join("cryptod.pcbackup");
    let os = |s: &Path| s.as_os_str().to_owned();
    let o = run(
        &exe,
        &[
            "backup".as_ref(),
            "create".as_ref(),
            "--dir".as_ref(),
            &os(&cx.prov),
            "--state".as_ref(),
            &os(&live),
            "--out".as_ref(),
            &os(&file),
            "--kek-passphrase-file".as_ref(),
            &os(&pass),
        ],
        None,
    )?;
    say("create", &o);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let key = stdout.lines().find_map(|l| l.strip_prefix("recovery key: ")).map(str::to_string);
    cx.check(
        "backup create: the running cryptod's state, encrypted to a recovery key shown once",
        o.status.success() && key.is_some(),
    );
    let key = key.ok_or("backup create printed no recovery key")?;

    let new_pass = dir.join("kek-pass.newhost");
    std::fs::write(&new_pass, NEW_HOST_PASSPHRASE)
        .map_err(|e| format!("{}: {e}", new_pass.display()))?;
    let restore = |into: &Path, key: &str| {
        run(
            &exe,
            &[
                "backup".as_ref(),
                "restore".as_ref(),
                "--from".as_ref(),
                &os(&file),
                "--dir".as_ref(),
                &os(into),
                "--recovery-key-file".as_ref(),
                "-".as_ref(),
                "--kek".as_ref(),
                "passphrase".as_ref(),
                "--kek-passphrase-file".as_ref(),
                &os(&new_pass),
            ],
            Some(key),
        )
    };
    let other = portcullis_authority::backup::RecoveryKey::from_bytes([0x5a; 32]).to_text();
    let o = restore(&dir.join("wrong-key-host"), &other)?;
    say("restore, wrong key", &o);
    cx.check(
        "backup restore with a wrong recovery key is refused",
        o.status.code() == Some(1)
            && String::from_utf8_lossy(&o.stderr).contains("wrong recovery key"),
    );
    let newhost = dir.join("newhost");
    let o = restore(&newhost, &key)?;
    say("restore", &o);
    cx.check("backup restore on a new host (a new KEK, another passphrase)", o.status.success());
    if !o.status.success() {
        return Ok(());
    }

    // The new host: cryptod starts from the restored directory with its KEK.
    let new_kek = {
        let sealed = crate::kek::read(&newhost).map_err(|e| e.to_string())?;
        let how = crate::kek::Unlock {
            passphrase: crate::kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(
                NEW_HOST_PASSPHRASE.as_bytes().to_vec(),
            )),
            credentials: None,
        };
        crate::kek::unseal(&sealed, &how).map_err(|e| e.to_string())?
    };
    let state = std::fs::read(newhost.join("cryptod/sealed-state"))
        .map_err(|e| format!("restored sealed state: {e}"))?;
    settle(&cx.cryptod, &cx.collector, step)?;
    println!("== backup: stopping cryptod, starting it from the restored directory");
    cx.demo.reap(&mut cx.cryptod);
    let dom =
        cx.demo.world.resolve("cryptod").map_err(|e| format!("{e}"))?.ok_or("no domain cryptod")?;
    cx.demo
        .world
        .set_config(dom, ConfigItem::SealedState, &state)
        .map_err(|e| format!("cryptod config: {e}"))?;
    cx.demo.kek = new_kek;
    cx.cryptod = cx.demo.guest("cryptod")?;
    let ready = cx.cryptod.wait_for("cryptod: ready", 0, step).is_ok();
    cx.demo.forget_kek()?;
    cx.check("the restored cryptod starts with the new host's KEK", ready);

    // It answers an unlock: a recovery code (sealed in the backup) through
    // the agent, which tests the derived passphrase on the LUKS volume.
    let codes = std::fs::read_to_string(dir.join("recovery-codes")).unwrap_or_default();
    let code = codes.lines().nth(3).unwrap_or_default().to_string();
    let mut unlocker = cx.demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, step)?;
    let n = unlocker.count();
    unlocker.type_line(&code)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, step)?;
    cx.check(
        "the restored cryptod unlocks the same volume (same derived LUKS passphrase)",
        l.contains("unlocked"),
    );
    let _ = unlocker.wait_exit(step);
    cx.demo.reap(&mut unlocker);
    cx.audited.push("restored_from");
    Ok(())
}
