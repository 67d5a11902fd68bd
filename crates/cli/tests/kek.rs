//! Issue 12: the KEK is never stored in plaintext. A provisioned directory
//! (by `provision` and by `demo --dir`) holds no file with the KEK's bytes;
//! a directory without its protector unlocks nothing; the TPM protector
//! works against swtpm and refuses after a PCR change.

mod common;

use common::kek::{self, KekError, Sealed};
use portcullis_authority::sealed;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn portcullis() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // Never the terminal or a systemd agent: a missing passphrase must fail.
    c.stdin(Stdio::null()).env_remove("INVOCATION_ID").env_remove("CREDENTIALS_DIRECTORY");
    c
}

/// Every file under `dir` (recursively), and whether any holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> (usize, Vec<PathBuf>) {
    let (mut n, mut hits) = (0, Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
                let bytes = std::fs::read(e.path()).unwrap();
                let hexed = hex::encode(needle);
                if bytes.windows(needle.len()).any(|w| w == needle)
                    || bytes.windows(hexed.len()).any(|w| w.eq_ignore_ascii_case(hexed.as_bytes()))
                {
                    hits.push(e.path());
                }
            }
        }
    }
    (n, hits)
}

fn assert_no_plaintext_kek(dir: &Path, kek: &[u8; 32]) {
    let (n, hits) = files_holding(dir, kek);
    assert!(n >= 4, "walked only {n} files under {}", dir.display());
    assert!(hits.is_empty(), "plaintext KEK in {hits:?}");
}

fn host_config(dir: &Path, state: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {state:?}\nxenstore = {:?}\n{extra}[guests.cryptod]\nrole = \"cryptod\"\n",
            dir.join("no-xenstore")
        ),
    )
    .unwrap();
    cfg
}

/// Runs `portcullis host` until it exits or logs that it unsealed the KEK
/// (then it would go on trying to reach xenstore: it is killed).
fn host(cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = portcullis();
    cmd.args(["host", "--config", cfg.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    host_cmd(cmd)
}

fn host_cmd(mut cmd: Command) -> (Option<i32>, String) {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&all).contains("xenstore") {
                break;
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let text = reader.join().unwrap();
    let code = match child.try_wait().unwrap() {
        Some(s) => s.code(),
        None => {
            let t = Instant::now();
            loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s.code();
                }
                if t.elapsed() > Duration::from_secs(2) {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    (code, text)
}

#[test]
fn no_file_of_a_provisioned_directory_is_the_plaintext_kek() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    common::provision(&p, &["--save-otpauth"]);
    assert!(!p.join("cryptod/kek").exists());
    let text = std::fs::read_to_string(p.join(kek::FILE)).unwrap();
    assert!(
        text.starts_with("portcullis-kek-sealed 1\nprotector passphrase\nargon2id m=256 t=1 p=1\n")
    );
    let kek = common::kek_of(&p);
    // It is the KEK: the sealed state opens with it.
    sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &kek).unwrap();
    assert_no_plaintext_kek(&p, &kek);
    // The walk can fail: a plaintext copy is found.
    std::fs::write(p.join("cryptod/kek"), kek).unwrap();
    assert_eq!(files_holding(&p, &kek).1, [p.join("cryptod/kek")]);
}

#[test]
fn the_demo_directory_holds_no_plaintext_kek() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demo");
    let guests = ["entropyd", "cryptod", "unlocker", "policy_pd"];
    let args = ["--totp-from-secret", "--no-qr", "--scenario", "happy", "--step-timeout", "60"];
    let out = common::demo(&d, &guests, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PUBLIC test passphrase"), "{stdout}");
    let prov = d.join("provisioned");
    let sealed = kek::read(&prov).unwrap();
    let how = kek::Unlock {
        passphrase: kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(
            b"portcullis demo passphrase (public, demo only)".to_vec(),
        )),
        credentials: None,
    };
    let kek = kek::unseal(&sealed, &how).unwrap();
    assert_no_plaintext_kek(&d, &kek);
}

#[test]
fn a_directory_without_its_protector_unlocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    common::provision(&p, &[]);
    // No passphrase file, no terminal, not a systemd service.
    let cfg = host_config(dir.path(), &p, "");
    let (code, err) = host(&cfg, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot unseal the KEK"), "{err}");
    assert!(err.contains("no KEK passphrase: standard input is not a terminal"), "{err}");
    assert!(!err.contains("xenstore: connected"), "{err}");
    // A wrong passphrase.
    std::fs::write(dir.path().join("wrong"), "not the passphrase\n").unwrap();
    let wrong = format!("kek_passphrase_file = {:?}\n", dir.path().join("wrong"));
    let (code, err) = host(&host_config(dir.path(), &p, &wrong), &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the passphrase does not open the KEK"), "{err}");
    // The right one: the service unseals, then looks for xenstore.
    let right = format!("kek_passphrase_file = {:?}\n", dir.path().join("kek-pass"));
    let (code, err) = host(&host_config(dir.path(), &p, &right), &[]);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("KEK unsealed"), "{err}");
    // --kek-passphrase-file overrides the configuration's.
    let pass = dir.path().join("kek-pass");
    let mut cmd = portcullis();
    let cfg = host_config(dir.path(), &p, &wrong);
    cmd.args(["host", "--config", cfg.to_str().unwrap(), "--kek-passphrase-file"]).arg(&pass);
    let (code, err) = host_cmd(cmd);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("KEK unsealed"), "{err}");
    // A credential directory without the credential.
    let cred = dir.path().join("c");
    let o = portcullis()
        .args(["provision", "--out", cred.to_str().unwrap(), "--no-qr", "--no-image-binding"])
        .args(["--kek", "credential"])
        .output()
        .unwrap();
    if o.status.success() {
        assert!(!cred.join("cryptod/kek").exists());
        let (code, err) = host(&host_config(dir.path(), &cred, ""), &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("no KEK credential: $CREDENTIALS_DIRECTORY is not set"), "{err}");
        let credentials = dir.path().join("creds");
        std::fs::create_dir(&credentials).unwrap();
        let env = [("CREDENTIALS_DIRECTORY", credentials.to_str().unwrap())];
        let (code, err) = host(&host_config(dir.path(), &cred, ""), &env);
        assert_eq!(code, Some(2), "{err}");
        // The credential, decrypted as systemd would for the service.
        let d = Command::new("systemd-creds")
            .args(["decrypt", "--name=portcullis-kek"])
            .arg(cred.join("cryptod/kek.cred"))
            .arg(credentials.join("portcullis-kek"))
            .status()
            .unwrap();
        assert!(d.success());
        let (code, err) = host(&host_config(dir.path(), &cred, ""), &env);
        assert_eq!(code, None, "{err}");
        assert!(err.contains("KEK unsealed"), "{err}");
        std::fs::remove_dir_all(&credentials).unwrap();
    } else {
        // Only where systemd-creds cannot encrypt; say why.
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("systemd-creds"), "{e}");
    }
    // The TPM protector with no TPM: provision refuses before writing
    // anything and suggests the passphrase; so does the service.
    let port = free_port_pair();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let t = dir.path().join("t");
    let o = portcullis()
        .args(["provision", "--out", t.to_str().unwrap(), "--no-qr", "--no-image-binding"])
        .env("TPM2TOOLS_TCTI", &tcti)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no TPM 2.0 reachable") && e.contains("--kek passphrase"), "{e}");
    assert!(!t.exists(), "nothing provisioned");
}

/// Two free consecutive TCP ports on loopback (swtpm: server and control).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free consecutive ports");
}

fn tool_ok(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().map(|o| o.status.success()).unwrap_or(false)
}

/// swtpm on loopback with a fresh state dir; shut down (TPM2_Shutdown
/// first, so no dictionary-attack failure is counted) on drop.
struct Swtpm {
    child: Child,
    tcti: String,
    _state: tempfile::TempDir,
}

impl Swtpm {
    fn start() -> Swtpm {
        assert!(
            tool_ok("swtpm", "--version") && tool_ok("tpm2_getrandom", "--version"),
            "swtpm and tpm2-tools are required: apt-get install swtpm swtpm-tools tpm2-tools"
        );
        let state = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.path().display()))
            .args(["--server", &format!("type=tcp,bindaddr=127.0.0.1,port={port}")])
            .args(["--ctrl", &format!("type=tcp,bindaddr=127.0.0.1,port={}", port + 1)])
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let s = Swtpm { child, tcti: format!("swtpm:host=127.0.0.1,port={port}"), _state: state };
        let t = Instant::now();
        while !s.tool(&["tpm2_getrandom", "1"]).status.success() {
            assert!(t.elapsed() < Duration::from_secs(10), "swtpm did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn tool(&self, args: &[&str]) -> Output {
        Command::new(args[0]).args(&args[1..]).env("TPM2TOOLS_TCTI", &self.tcti).output().unwrap()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.tool(&["tpm2_shutdown", "-c"]);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tpm_protector_seals_to_swtpm_and_a_changed_pcr_refuses() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    let o = portcullis()
        .args(["provision", "--out", p.to_str().unwrap(), "--no-qr", "--no-image-binding"])
        .args(["--kek", "tpm", "--tpm-pcrs", "sha256:16"])
        .env("TPM2TOOLS_TCTI", &tpm.tcti)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("KEK sealed to the TPM"), "{stdout}");
    let sealed = kek::read(&p).unwrap();
    let Sealed::Tpm { pcrs, public, private } = &sealed else { panic!("{sealed:?}") };
    assert_eq!(pcrs.to_string(), "sha256:16");
    let tcti = Some(tpm.tcti.as_str());
    let key = kek::tpm::unseal(pcrs, public, private, tcti).unwrap();
    sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &key).unwrap();
    assert_no_plaintext_kek(&p, &key);
    let cfg = host_config(dir.path(), &p, "");
    let (code, err) = host(&cfg, &[("TPM2TOOLS_TCTI", &tpm.tcti)]);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("KEK unsealed"), "{err}");

    // A changed PCR: the TPM refuses, and the error names the policy.
    let digest = hex::encode([0x5a; 32]);
    assert!(tpm.tool(&["tpm2_pcrextend", &format!("16:sha256={digest}")]).status.success());
    match kek::tpm::unseal(pcrs, public, private, tcti) {
        Err(KekError::PcrPolicy { pcrs, .. }) => assert_eq!(pcrs, "sha256:16"),
        other => panic!("{:?}", other.map(|_| "a KEK")),
    }
    let (code, err) = host(&cfg, &[("TPM2TOOLS_TCTI", &tpm.tcti)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PCR policy sha256:16 does not match"), "{err}");
    // Back to the sealed value: it opens again (it was the PCR).
    assert!(tpm.tool(&["tpm2_pcrreset", "16"]).status.success());
    assert_eq!(*kek::tpm::unseal(pcrs, public, private, tcti).unwrap(), *key);
}

/// `portcullis kek reseal` (issue 12: a TPM added after provisioning): a
/// passphrase-protected installation moves to the TPM with the SAME KEK
/// (cryptod's sealed state still opens, the service unseals with no
/// passphrase); a wrong or missing passphrase, or no TPM, leaves the old
/// file as it was; the PCR policy then holds as for `provision --kek tpm`.
#[test]
fn kek_reseal_moves_a_passphrase_installation_to_the_tpm() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p");
    common::provision(&p, &[]);
    let kek_before = common::kek_of(&p);
    let old_file = std::fs::read(p.join(kek::FILE)).unwrap();
    let reseal = |pass: &Path, tcti: &str| {
        portcullis()
            .args(["kek", "reseal", "--dir", p.to_str().unwrap(), "--kek", "tpm"])
            .args(["--tpm-pcrs", "sha256:16", "--old-kek-passphrase-file"])
            .arg(pass)
            .env("TPM2TOOLS_TCTI", tcti)
            .output()
            .unwrap()
    };
    let untouched = || {
        assert_eq!(std::fs::read(p.join(kek::FILE)).unwrap(), old_file, "kek.sealed changed");
        let names: Vec<_> = std::fs::read_dir(p.join("cryptod"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "temporary file left: {names:?}");
    };

    // A wrong passphrase: refused, nothing written.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let o = reseal(&wrong, &tpm.tcti);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("cannot unseal the current KEK (passphrase)"), "{e}");
    assert!(e.contains("the passphrase does not open the KEK"), "{e}");
    untouched();
    // No passphrase at all (no terminal): refused, nothing written.
    let o = portcullis()
        .args(["kek", "reseal", "--dir", p.to_str().unwrap(), "--kek", "tpm"])
        .env("TPM2TOOLS_TCTI", &tpm.tcti)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no KEK passphrase"), "{e}");
    untouched();
    // No TPM behind the TCTI: refused before the KEK is unsealed.
    let pass = dir.path().join("kek-pass");
    let nowhere = format!("swtpm:host=127.0.0.1,port={}", free_port_pair());
    let o = reseal(&pass, &nowhere);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no TPM 2.0 reachable"), "{e}");
    untouched();

    // The right passphrase: the same KEK, now sealed to the TPM.
    let o = reseal(&pass, &tpm.tcti);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("KEK resealed: passphrase (Argon2id m=256 t=1 p=1) -> tpm"), "{out}");
    assert!(out.contains("remove kek_passphrase_file"), "{out}");
    let sealed = kek::read(&p).unwrap();
    let Sealed::Tpm { pcrs, public, private } = &sealed else { panic!("{sealed:?}") };
    assert_eq!(pcrs.to_string(), "sha256:16");
    let tcti = Some(tpm.tcti.as_str());
    let key = kek::tpm::unseal(pcrs, public, private, tcti).unwrap();
    assert_eq!(*key, kek_before, "a different KEK was sealed");
    sealed::unseal(&std::fs::read(p.join("cryptod/sealed-state")).unwrap(), &key).unwrap();
    assert_no_plaintext_kek(&p, &key);
    assert!(!p
        .join("cryptod")
        .read_dir()
        .unwrap()
        .any(|e| { e.unwrap().file_name().to_string_lossy().contains(".tmp") }));
    // The passphrase no longer matters: the service unseals from the TPM.
    let cfg = host_config(dir.path(), &p, "");
    let (code, err) = host(&cfg, &[("TPM2TOOLS_TCTI", &tpm.tcti)]);
    assert_eq!(code, None, "{err}");
    assert!(err.contains("KEK unsealed"), "{err}");
    // Resealing again needs the TPM, not a passphrase; back to a new
    // passphrase (a passphrase change works the same way).
    let tpm_file = std::fs::read(p.join(kek::FILE)).unwrap();
    let new_pass = dir.path().join("new-pass");
    std::fs::write(&new_pass, "another long passphrase\n").unwrap();
    // From the TPM to `new_pass` (the TPM unseals; no old passphrase).
    let reseal_to_new_pass = || {
        portcullis()
            .args(["kek", "reseal", "--dir", p.to_str().unwrap(), "--kek", "passphrase"])
            .args(["--kek-argon2", "m=256,t=1,p=1", "--kek-passphrase-file"])
            .arg(&new_pass)
            .env("TPM2TOOLS_TCTI", &tpm.tcti)
            .output()
            .unwrap()
    };
    let o = reseal_to_new_pass();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let back = kek::read(&p).unwrap();
    let how = kek::Unlock {
        passphrase: kek::PassphraseSource::File(new_pass.clone()),
        credentials: None,
    };
    assert_eq!(*kek::unseal(&back, &how).unwrap(), kek_before);
    std::fs::write(p.join(kek::FILE), &tpm_file).unwrap();

    // A changed PCR: the TPM refuses to unseal the current KEK, and the
    // reseal says so and leaves the file alone.
    let digest = hex::encode([0x5a; 32]);
    assert!(tpm.tool(&["tpm2_pcrextend", &format!("16:sha256={digest}")]).status.success());
    let o = reseal_to_new_pass();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("cannot unseal the current KEK (tpm)"), "{e}");
    assert!(e.contains("PCR policy sha256:16 does not match"), "{e}");
    assert_eq!(std::fs::read(p.join(kek::FILE)).unwrap(), tpm_file);
}
