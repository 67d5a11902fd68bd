//! The admin channel's rules: what an admin command may be, and the
//! operators' recovery codes. [`crate::Authority`] applies the commands;
//! see `docs/authority.md` ("Admin channel") for the whole path.
//!
//! - A command is a COSE_Sign1 by the admin key (made at provisioning and
//!   kept offline; only its public key is sealed), content type
//!   `admin_command`, payload [`AdminCommand`].
//! - It is accepted only from the link whose peer is [`ADMIN_DOMID`] (dom0,
//!   as Xen names the peer), for this cryptod (`state_id` is its root kid),
//!   with `admin_seq` strictly above the last accepted one (sealed), and at a
//!   time inside `issued_at - ADMIN_SKEW ..= expires_at`.
//! - A recovery code is 10 base32 characters (50 bits). cryptod stores only
//!   `salt (16) || SHA-256(domain || salt || code) (32)` per code, made by
//!   `portcullis admin`; it never sees the codes until one is typed.

use alloc::string::String;
use alloc::vec::Vec;

use portcullis_proto::msg::{
    normalize_recovery_code, AdminCommand, AdminOp, TotpAlg, RECOVERY_CODES, RECOVERY_HASH_LEN,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::registry::IdentityKind;
use crate::totp::{Algorithm, OperatorSecret};

/// The only peer domain whose admin commands are considered: dom0.
pub const ADMIN_DOMID: u32 = 0;
/// Most operators cryptod keeps.
pub const MAX_OPERATORS: usize = 16;
/// How far ahead of cryptod's clock `issued_at` may be, seconds.
pub const ADMIN_SKEW: u64 = 60;
/// Hash domain of a recovery code.
const RECOVERY_DOMAIN: &[u8] = b"portcullis recovery code v1";

/// A stored recovery code: `salt || SHA-256(domain || salt || code)`.
pub type RecoveryHash = [u8; RECOVERY_HASH_LEN];

/// The stored form of recovery code `code` (normalized, see
/// [`normalize_recovery_code`]) under `salt`.
pub fn recovery_hash(salt: &[u8; 16], code: &[u8]) -> RecoveryHash {
    let mut h = Sha256::new();
    h.update(RECOVERY_DOMAIN);
    h.update(salt);
    h.update(code);
    let mut out = [0u8; RECOVERY_HASH_LEN];
    out[..16].copy_from_slice(salt);
    out[16..].copy_from_slice(&h.finalize());
    out
}

/// One operator's recovery codes: their hashes and which are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryCodes {
    /// Exactly [`RECOVERY_CODES`] hashes.
    pub hashes: Vec<RecoveryHash>,
    /// Bit `i` set: code `i` is used.
    pub used: u8,
}

/// Every operator's recovery codes: at most one entry per configured
/// operator (so at most `MAX_OPERATORS`). A `Vec`, not a `BTreeMap`: each
/// map instance with removal costs kilobytes of guest image.
#[derive(Clone, Debug, Default)]
pub struct RecoveryTable(Vec<(String, RecoveryCodes)>);

impl RecoveryTable {
    /// `id`'s codes.
    pub fn get(&self, id: &str) -> Option<&RecoveryCodes> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, c)| c)
    }

    /// `id`'s codes, to check and mark.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut RecoveryCodes> {
        self.0.iter_mut().find(|(k, _)| k == id).map(|(_, c)| c)
    }

    /// Sets (or replaces) `id`'s codes.
    pub fn set(&mut self, id: &str, codes: RecoveryCodes) {
        match self.get_mut(id) {
            Some(c) => *c = codes,
            None => self.0.push((id.into(), codes)),
        }
    }

    /// Drops `id`'s codes.
    pub fn remove(&mut self, id: &str) {
        self.0.retain(|(k, _)| k != id);
    }

    /// Every operator's codes (for sealing).
    pub fn iter(&self) -> impl Iterator<Item = &(String, RecoveryCodes)> {
        self.0.iter()
    }
}

/// What a typed recovery code turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryCheck {
    /// Accepted and now used; how many unused codes remain.
    Accepted(u32),
    /// One of the codes, already used.
    Used,
    /// Not one of the codes (or not a recovery code at all).
    Fail,
}

impl RecoveryCodes {
    /// Fresh (unused) codes from exactly [`RECOVERY_CODES`] hashes.
    pub fn new(hashes: Vec<RecoveryHash>) -> Option<RecoveryCodes> {
        (hashes.len() == RECOVERY_CODES).then_some(RecoveryCodes { hashes, used: 0 })
    }

    /// Unused codes left.
    pub fn remaining(&self) -> u32 {
        RECOVERY_CODES as u32 - (self.used.count_ones()).min(RECOVERY_CODES as u32)
    }

    /// Checks `typed` against every code (all of them, compared in
    /// constant time, no early exit) and marks a match used.
    pub fn check(&mut self, typed: &str) -> RecoveryCheck {
        let Some(code) = normalize_recovery_code(typed) else { return RecoveryCheck::Fail };
        let mut found = None;
        for (i, stored) in self.hashes.iter().enumerate() {
            let mut salt = [0u8; 16];
            salt.copy_from_slice(&stored[..16]);
            let candidate = Zeroizing::new(recovery_hash(&salt, &code));
            if bool::from(candidate[16..].ct_eq(&stored[16..])) {
                found = Some(i);
            }
        }
        let Some(i) = found else { return RecoveryCheck::Fail };
        let bit = 1u8 << i;
        if self.used & bit != 0 {
            return RecoveryCheck::Used;
        }
        self.used |= bit;
        RecoveryCheck::Accepted(self.remaining())
    }
}

/// An admin command cryptod can apply: one variant per kind of change
/// (volumes, ACL, keys and backups are new variants, with a new
/// [`AdminOp`]). No `Debug`: it holds secrets.
pub enum Command {
    /// Enrol a new operator, confirmed by `confirm` from the new app entry.
    OperatorAdd {
        /// The new operator's secret.
        op: OperatorSecret,
        /// The code the operator read from the app.
        confirm: Zeroizing<String>,
        /// Recovery codes to set with it, if any.
        codes: Option<Vec<RecoveryHash>>,
    },
    /// Replace an operator's secret (lost phone): the old one stops at once.
    OperatorReset {
        /// The operator's new secret.
        op: OperatorSecret,
        /// The code the operator read from the app.
        confirm: Zeroizing<String>,
        /// Recovery codes to set with it, if any.
        codes: Option<Vec<RecoveryHash>>,
    },
    /// Remove an operator (never the last one).
    OperatorRemove {
        /// The operator.
        id: String,
    },
    /// Replace an operator's recovery codes (all unused).
    RecoveryRegenerate {
        /// The operator.
        id: String,
        /// The new codes' hashes.
        codes: Vec<RecoveryHash>,
    },
    /// Rotate the token signing key now.
    KeyRotate,
    /// Revoke a published token signing key.
    KeyRevoke {
        /// Its kid.
        kid: Vec<u8>,
    },
    /// Rotate the root key.
    RootRotate,
    /// Revoke one token.
    TokenRevoke {
        /// Its cti.
        cti: Vec<u8>,
    },
    /// Register a volume and seal its passphrase to `epk`.
    VolumeAdd {
        /// The volume id.
        id: String,
        /// The admin tool's ephemeral X25519 key.
        epk: [u8; 32],
    },
    /// Unregister a volume.
    VolumeRemove {
        /// The volume id.
        id: String,
    },
    /// Replace the ACL.
    AclReplace {
        /// The new text (linted by cryptod again).
        text: String,
        /// Its version, above the current one.
        version: u64,
    },
    /// Revoke (`restore: false`) or restore a domain name or device id.
    Identity {
        /// What `name` names.
        kind: IdentityKind,
        /// The domain name or device id.
        name: String,
        /// Take it off the list instead.
        restore: bool,
    },
}

/// Whether `c` carries any field of the volume, ACL and identity commands.
fn has_registry_fields(c: &AdminCommand) -> bool {
    c.volume_id.is_some()
        || c.ephemeral_pubkey.is_some()
        || c.acl.is_some()
        || c.acl_version.is_some()
        || c.identity.is_some()
}

/// The volume, ACL and identity commands: each takes exactly its fields.
fn registry_command(c: &AdminCommand) -> Result<Command, &'static str> {
    let other = c.operator_id.is_some()
        || c.secret.is_some()
        || c.algorithm.is_some()
        || c.digits.is_some()
        || c.confirm_code.is_some()
        || c.code_hashes.is_some();
    let (vol, epk, acl, ver, ident) =
        (&c.volume_id, c.ephemeral_pubkey, &c.acl, c.acl_version, &c.identity);
    match (c.command, vol, epk, acl, ver, ident) {
        _ if other => Err("an operator field on a volume, acl or identity command"),
        (AdminOp::VolumeAdd, Some(id), Some(epk), None, None, None) => {
            Ok(Command::VolumeAdd { id: id.clone(), epk })
        }
        (AdminOp::VolumeAdd, ..) => Err("volume_add takes exactly volume_id and ephemeral_pubkey"),
        (AdminOp::VolumeRemove, Some(id), None, None, None, None) => {
            Ok(Command::VolumeRemove { id: id.clone() })
        }
        (AdminOp::VolumeRemove, ..) => Err("volume_remove takes exactly volume_id"),
        (AdminOp::AclReplace, None, None, Some(text), Some(version), None) => {
            Ok(Command::AclReplace { text: text.clone(), version })
        }
        (AdminOp::AclReplace, ..) => Err("acl_replace takes exactly acl and acl_version"),
        (
            op @ (AdminOp::IdentityRevoke
            | AdminOp::IdentityRestore
            | AdminOp::DeviceRevoke
            | AdminOp::DeviceRestore),
            None,
            None,
            None,
            None,
            Some(n),
        ) => Ok(Command::Identity {
            kind: if matches!(op, AdminOp::DeviceRevoke | AdminOp::DeviceRestore) {
                IdentityKind::Device
            } else {
                IdentityKind::Domain
            },
            name: n.clone(),
            restore: matches!(op, AdminOp::IdentityRestore | AdminOp::DeviceRestore),
        }),
        _ => Err("identity_revoke, identity_restore, device_revoke and device_restore take exactly identity"),
    }
}

impl Command {
    /// The command a verified payload describes, or why it is not one:
    /// every kind takes exactly its own fields.
    // Out of line: a smaller image (issue 14, docs/benchmarks.md).
    #[inline(never)]
    pub fn from_wire(c: &AdminCommand) -> Result<Command, &'static str> {
        let enrol = c.secret.is_some() || c.algorithm.is_some() || c.digits.is_some();
        let operator = || c.operator_id.clone().ok_or("operator_id is required");
        if let Some(keys) = Command::keys_from_wire(c, enrol) {
            return keys;
        }
        if c.kid.is_some() || c.cti.is_some() {
            return Err("kid and cti belong to the key commands");
        }
        let operator_op = matches!(
            c.command,
            AdminOp::OperatorAdd
                | AdminOp::OperatorReset
                | AdminOp::OperatorRemove
                | AdminOp::RecoveryRegenerate
        );
        if operator_op && has_registry_fields(c) {
            return Err("a volume, acl or identity field on an operator command");
        }
        match c.command {
            AdminOp::OperatorAdd | AdminOp::OperatorReset => {
                let (Some(secret), Some(alg), Some(digits), Some(confirm)) =
                    (&c.secret, c.algorithm, c.digits, &c.confirm_code)
                else {
                    return Err("secret, algorithm, digits and confirm_code are required");
                };
                let algorithm = match alg {
                    TotpAlg::Sha1 => Algorithm::Sha1,
                    TotpAlg::Sha256 => Algorithm::Sha256,
                    TotpAlg::Sha512 => Algorithm::Sha512,
                };
                let digits = u8::try_from(digits).map_err(|_| "digits must be 6 or 8")?;
                let op = OperatorSecret::new(&operator()?, secret, algorithm, digits)
                    .map_err(|_| "operator id or secret out of range")?;
                let confirm = Zeroizing::new(String::from(confirm.as_str()));
                let codes = c.code_hashes.clone();
                Ok(if c.command == AdminOp::OperatorAdd {
                    Command::OperatorAdd { op, confirm, codes }
                } else {
                    Command::OperatorReset { op, confirm, codes }
                })
            }
            AdminOp::OperatorRemove => {
                if enrol || c.confirm_code.is_some() || c.code_hashes.is_some() {
                    return Err("operator_remove takes only operator_id");
                }
                Ok(Command::OperatorRemove { id: operator()? })
            }
            AdminOp::RecoveryRegenerate => {
                if enrol || c.confirm_code.is_some() {
                    return Err("recovery_regenerate takes only operator_id and code_hashes");
                }
                let codes = c.code_hashes.clone().ok_or("code_hashes is required")?;
                Ok(Command::RecoveryRegenerate { id: operator()?, codes })
            }
            AdminOp::KeyRotate
            | AdminOp::KeyRevoke
            | AdminOp::TokenRevoke
            | AdminOp::RootRotate => Err("not an operator command"),
            AdminOp::VolumeAdd
            | AdminOp::VolumeRemove
            | AdminOp::AclReplace
            | AdminOp::IdentityRevoke
            | AdminOp::IdentityRestore
            | AdminOp::DeviceRevoke
            | AdminOp::DeviceRestore => registry_command(c),
        }
    }

    /// The key commands (`None`: not one): each takes only its own field.
    fn keys_from_wire(c: &AdminCommand, enrol: bool) -> Option<Result<Command, &'static str>> {
        let extra = enrol
            || c.operator_id.is_some()
            || c.confirm_code.is_some()
            || c.code_hashes.is_some()
            || has_registry_fields(c);
        let (kid, cti) = (c.kid.clone(), c.cti.clone());
        Some(match c.command {
            AdminOp::KeyRotate if extra || kid.is_some() || cti.is_some() => {
                Err("key_rotate takes no fields")
            }
            AdminOp::KeyRotate => Ok(Command::KeyRotate),
            AdminOp::RootRotate if extra || kid.is_some() || cti.is_some() => {
                Err("root_rotate takes no fields")
            }
            AdminOp::RootRotate => Ok(Command::RootRotate),
            AdminOp::KeyRevoke => match kid {
                Some(kid) if !extra && cti.is_none() => Ok(Command::KeyRevoke { kid }),
                _ => Err("key_revoke takes only kid"),
            },
            AdminOp::TokenRevoke => match cti {
                Some(cti) if !extra && kid.is_none() => Ok(Command::TokenRevoke { cti }),
                _ => Err("token_revoke takes only cti"),
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes() -> (Vec<&'static str>, RecoveryCodes) {
        let typed = alloc::vec![
            "AAAAA-BBBBB",
            "CCCCC-DDDDD",
            "EEEEE-FFFFF",
            "GGGGG-HHHHH",
            "IIIII-JJJJJ",
            "KKKKK-LLLLL",
            "MMMMM-NNNNN",
            "22222-77777",
        ];
        let hashes = typed
            .iter()
            .enumerate()
            .map(|(i, c)| recovery_hash(&[i as u8; 16], &normalize_recovery_code(c).unwrap()))
            .collect();
        (typed, RecoveryCodes::new(hashes).unwrap())
    }

    #[test]
    fn recovery_code_works_once() {
        let (typed, mut rc) = codes();
        assert_eq!(rc.check(typed[3]), RecoveryCheck::Accepted(7));
        assert_eq!(rc.check(typed[3]), RecoveryCheck::Used);
        // Lower case and without the dash is the same code.
        assert_eq!(rc.check("22222-77777"), RecoveryCheck::Accepted(6));
        assert_eq!(rc.check("aaaaabbbbb"), RecoveryCheck::Accepted(5));
        assert_eq!(rc.check("AAAAA-BBBBB"), RecoveryCheck::Used);
    }

    #[test]
    fn wrong_or_malformed_recovery_codes_fail() {
        let (_, mut rc) = codes();
        for bad in ["AAAAA-BBBBC", "AAAAA-BBBB", "AAAAABBBBB1", "AAAA1-BBBBB", "", "123456"] {
            assert_eq!(rc.check(bad), RecoveryCheck::Fail, "{bad}");
        }
        assert_eq!(rc.remaining(), 8);
    }

    #[test]
    fn salt_matters() {
        let code = normalize_recovery_code("AAAAA-BBBBB").unwrap();
        assert_ne!(recovery_hash(&[0; 16], &code), recovery_hash(&[1; 16], &code));
        assert_eq!(RecoveryCodes::new(alloc::vec![[0; RECOVERY_HASH_LEN]; 7]), None);
    }
}
