//! Years of operation on the hosted platform: `portcullis demo --scenario
//! lifecycle` runs entropyd, cryptod, the audit collector, the unlock
//! agent and the unlocker as processes of one world, and drives `portcullis
//! admin` (a separate process, domain 0 of the world) against the running
//! cryptod: an operator reset, after which the old secret's code is refused
//! and the new one unlocks; regenerated recovery codes, one of which unlocks
//! once and is refused the second time; a replayed admin command refused;
//! signing keys rotated and revoked, a token revoked, the root rotated
//! (verifiers follow the chain); a second volume bound, listed, granted by
//! a replaced ACL, opened and removed; policy_pd's name revoked and
//! restored; a backup of the running cryptod's state restored on a "new
//! host" (a new KEK under another passphrase), a wrong recovery key
//! refused, and cryptod started from the restored directory unlocking the
//! same volume.

mod common;

const GUESTS: [&str; 4] = ["entropyd", "cryptod", "unlocker", "policy_pd"];

#[test]
fn lifecycle_against_a_running_cryptod() {
    let work = tempfile::tempdir().unwrap();
    let args = ["--totp-from-secret", "--no-qr", "--scenario", "lifecycle", "--step-timeout", "60"];
    let out = common::demo(work.path(), &GUESTS, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "[ok] operator-reset confirmed and applied",
        "[ok] the old secret's code is refused after the reset",
        "[ok] the new secret's code unlocks",
        "[ok] recovery-regenerate applied",
        "[ok] a recovery code unlocks",
        "[ok] the used recovery code is refused",
        "[ok] an out-of-sequence admin command is refused",
        "[ok] audit log complete",
        "[ok] every admin command and its effect is audited",
        // backup (issue 12)
        "[ok] backup create: the running cryptod's state, encrypted to a recovery key shown once",
        "[ok] backup restore with a wrong recovery key is refused",
        "[ok] backup restore on a new host (a new KEK, another passphrase)",
        "[ok] the restored cryptod starts with the new host's KEK",
        "[ok] the restored cryptod unlocks the same volume (same derived LUKS passphrase)",
        // keys
        "[ok] key-rotate applied",
        "[ok] after key-rotate a new kid signs",
        "[ok] the old key's token still verifies within the overlap",
        "[ok] key-revoke of the old kid applied",
        "[ok] a token signed by the revoked kid is refused by a verifier",
        "[ok] the new key's token still verifies",
        "[ok] revoking a kid no longer published is refused",
        "[ok] token-revoke applied",
        "[ok] the revoked token is refused by a verifier",
        "[ok] root-rotate applied",
        "[ok] a verifier pinned to the old root follows the chain to the new one",
        "[ok] admin commands naming the old root.pub still apply",
        "[ok] after root-rotate the unlocker still unlocks",
        "root chain: followed 1 root rotation(s)",
        // volumes (issue 12)
        "[ok] volume-add bound a second volume and enrolled its key slot",
        "[ok] volumes list shows the volume and its key slot",
        "[ok] acl-replace refuses an ACL that fails the lint, with its line",
        "[ok] acl-replace installed ACL version 1",
        "[ok] acl-replace refuses a version that is not higher",
        "[ok] the unlock agent opens the second volume with the operator's code",
        "[ok] volume-remove unbound the volume and wiped its key slot",
        "[ok] a removed volume's unlock is refused",
        "[ok] identity-revoke put policy_pd on the identity revocation list",
        "[ok] a revoked name's token request is refused",
        "[ok] identity-restore: policy_pd gets its token again",
        "[ok] identity-revoke --device put the unlocker's device on the list",
        "[ok] a revoked device's code is refused",
        "[ok] identity-restore --device: the same step's code then unlocks (none was used)",
        // Every area's checks: none failed.
        " passed, 0 failed",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}\n{stderr}");
    }
    // provision wrote the admin key private (0600), next to its public half.
    let prov = work.path().join("provisioned");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(prov.join("admin.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(prov.join("admin.pub").exists());
}
